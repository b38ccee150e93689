// natsbind's resolver client on the NATS topologies users run (docs/nats-topologies.md), with real
// nats-servers: a super-cluster (two 3-server clusters joined by gateways, all full resolvers) and
// leaf nodes sharing its system account with a full, a cache and a memory resolver.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import type { NatsConnection } from "@nats-io/transport-node";
import { parseConfig } from "../../src/config/config.ts";
import { accountClaims, signJwt } from "../../src/nats/claims.ts";
import { connectResolver } from "../../src/nats/from-config.ts";
import { ResolverIncompleteError, type NatsResolver } from "../../src/nats/resolver.ts";
import type { NatsServer } from "../support/nats-server.ts";
import {
  startLeafNode,
  startSuperCluster,
  waitForSystemAccountReach,
  type SuperCluster,
} from "../support/nats-topology.ts";
import {
  connectWithCreds,
  createTestOperator,
  natsConfigSection,
  projectAccount,
  scopedUserCreds,
  watchStatus,
  type TestAccount,
  type TestOperator,
} from "../support/operator.ts";
import { waitFor } from "../support/process.ts";

const TIMEOUT = { timeout: 60_000 };

let op: TestOperator;
let superCluster: SuperCluster;
/** natsbind's resolver as `natsbind run` connects it: issued system users, through east-0 only. */
let resolver: NatsResolver;

/** natsbind's resolver connected through one server, as natsbind.yaml's nats section says. */
async function natsbindResolver(server: NatsServer, timeoutMs = 5_000): Promise<NatsResolver> {
  const config = parseConfig(
    { nats: { ...natsConfigSection(op, [server.url], { systemUser: "issued" }), timeoutMs } },
    "topologies test config",
    op.dir,
  );
  return (await connectResolver(config.nats)).resolver;
}

/** A project user on `server` answers a request it publishes itself (the account works there). */
async function roundTrip(server: NatsServer, creds: Uint8Array, project: number): Promise<string> {
  const nc = await connectWithCreds(server.url, creds);
  try {
    const sub = nc.subscribe(`build.${project}.ping`, { max: 1 });
    void (async () => {
      for await (const m of sub) m.respond(`pong from ${server.name}`);
    })();
    return (await nc.request(`build.${project}.ping`, "", { timeout: 2_000 })).string();
  } finally {
    await nc.close();
  }
}

const names = (servers: NatsServer[]): string[] => servers.map((s) => s.name).sort();

/** A newer JWT of the same account under another name, issued at `iat`. */
function renamed(acc: TestAccount, name: string, iat: number): string {
  return signJwt(accountClaims({ ...acc.desired, name }, op.signingKey.publicKey), op.signingKey, iat);
}

before(async () => {
  op = await createTestOperator();
  superCluster = await startSuperCluster(op.serverOptions, { systemCreds: op.systemCreds });
  resolver = await natsbindResolver(superCluster.servers[0]!);
});
after(async () => {
  await resolver?.close();
  await superCluster?.stop();
  await op?.remove();
});

describe(
  "a super-cluster: two 3-server clusters joined by gateways, every server a full resolver",
  TIMEOUT,
  () => {
    it("natsbind counts all 6 full resolvers across the gateway", async () => {
      assert.deepEqual(await resolver.servers(), names(superCluster.servers));
      assert.deepEqual(await resolver.topology(), { servers: 6, fullResolvers: 6 });
    });

    it("a push through one cluster is acked by every server of both clusters, and the account works everywhere", async () => {
      const acc = projectAccount(op, "group/everywhere");
      const outcome = await resolver.push(acc.jwt);
      assert.deepEqual(
        outcome.replies.map((r) => `${r.cluster}/${r.server}:${r.code} ${r.message}`).sort(),
        superCluster.servers.map((s) => `${s.name.split("-")[0]}/${s.name}:200 jwt updated`).sort(),
      );
      const creds = scopedUserCreds(acc, ["project:11"]);
      for (const s of superCluster.servers)
        assert.equal(await roundTrip(s, creds, 11), `pong from ${s.name}`, `account usable on ${s.name}`);

      // Within the account, messages cross the gateway: a subscriber in west, a publisher in east.
      const west = await connectWithCreds(superCluster.clusters[1]!.servers[2]!.url, creds);
      const east = await connectWithCreds(superCluster.clusters[0]!.servers[0]!.url, creds);
      try {
        const sub = west.subscribe("build.11.status", { max: 1 });
        const got = (async () => {
          for await (const m of sub) return m.string();
        })();
        await west.flush();
        await waitFor(
          async () => {
            east.publish("build.11.status", "green");
            await east.flush();
            return sub.getReceived() > 0;
          },
          { what: "the subscription's interest to cross the gateway", timeoutMs: 5_000, intervalMs: 50 },
        );
        assert.equal(await got, "green");
      } finally {
        await Promise.all([west.close(), east.close()]);
      }
    });

    it("drift lookups work across the gateway, and a server that missed a push cannot hide behind the first answer", async () => {
      const acc = projectAccount(op, "group/drift", 1_700_000_000);
      await resolver.push(acc.jwt);
      // natsbind connected through west sees what was pushed through east.
      const fromWest = await natsbindResolver(superCluster.clusters[1]!.servers[0]!, 1_500);
      const lagging = superCluster.clusters[1]!.servers[2]!;
      let stopped = false;
      try {
        assert.equal(await fromWest.lookup(acc.account.publicKey), acc.jwt);
        assert.deepEqual(await fromWest.lookupOnEveryServer(acc.account.publicKey), Array(6).fill(acc.jwt));

        // west-2 is down while a newer JWT is pushed: 5 of the 6 full resolvers ack, and natsbind
        // says the push is incomplete instead of calling it done.
        await fromWest.topology();
        const live = superCluster.servers.filter((s) => s !== lagging);
        await lagging.process().stop();
        stopped = true;
        // A server whose outbound gateway led to west-2 cannot answer across it until it has
        // reconnected to another west server: wait for that, as natsbind's retries would.
        await waitForSystemAccountReach(
          live,
          names(live),
          op.systemCreds,
          "the super-cluster without west-2",
        );
        const newerJwt = renamed(acc, "group/drift-v2", 1_700_000_100);
        await assert.rejects(fromWest.push(newerJwt), (err: Error) => {
          assert.ok(err instanceof ResolverIncompleteError, `${err.name}: ${err.message}`);
          assert.match(err.message, /5 of 6 full resolvers answered within 1500 ms/);
          return true;
        });

        // Back up with its old copy: the first answer may well be a current one, every-server
        // lookups show the stale copy, and a re-push (what natsbind's drift repair does) fixes it.
        await lagging.restart();
        stopped = false;
        await waitForSystemAccountReach(
          superCluster.servers,
          names(superCluster.servers),
          op.systemCreds,
          "west-2 back in the super-cluster",
        );
        const copies = await fromWest.lookupOnEveryServer(acc.account.publicKey);
        assert.deepEqual(
          copies.map((c) => (c === newerJwt ? "new" : c === acc.jwt ? "old" : String(c))).sort(),
          ["new", "new", "new", "new", "new", "old"],
        );
        const repushed = await fromWest.push(newerJwt);
        assert.equal(repushed.replies.filter((r) => r.code === 200).length, 6);
        assert.deepEqual(await fromWest.lookupOnEveryServer(acc.account.publicKey), Array(6).fill(newerJwt));
      } finally {
        await fromWest.close();
        // Leave the super-cluster whole for the tests after this one, whatever failed here.
        if (stopped) await lagging.restart();
      }
    });

    it("a delete reaches every server of both clusters and disconnects the account's users in each", async () => {
      const acc = projectAccount(op, "group/doomed");
      await resolver.push(acc.jwt);
      const creds = scopedUserCreds(acc, ["project:12"]);
      const users: Array<{ nc: NatsConnection; events: ReturnType<typeof watchStatus> }> = [];
      for (const cluster of superCluster.clusters) {
        const nc = await connectWithCreds(cluster.servers[1]!.url, creds);
        users.push({ nc, events: watchStatus(nc) });
      }
      const outcome = await resolver.delete([acc.account.publicKey]);
      assert.deepEqual(
        outcome.replies.map((r) => `${r.server}:${r.code} ${r.message}`).sort(),
        superCluster.servers.map((s) => `${s.name}:200 deleted 1 accounts`).sort(),
      );
      assert.deepEqual(await resolver.lookupOnEveryServer(acc.account.publicKey), Array(6).fill(undefined));
      for (const { nc, events } of users) {
        await waitFor(async () => nc.isClosed() || events.all.includes("disconnect"), {
          what: "the deleted account's user to be disconnected",
          timeoutMs: 5_000,
          intervalMs: 20,
        });
        await nc.close();
      }
      for (const s of superCluster.servers)
        await assert.rejects(
          connectWithCreds(s.url, creds),
          /Authorization Violation/,
          `refused on ${s.name}`,
        );
    });
  },
);

describe("leaf nodes sharing the super-cluster's system account", TIMEOUT, () => {
  let leafFull: NatsServer;
  let leafCache: NatsServer;
  let leafMemory: NatsServer;
  let leaves: NatsServer[];
  /** natsbind connected after the leaves joined, so it counts them from its first request. */
  let edge: NatsResolver;

  before(async () => {
    // Leaf nodes connect to east's leaf node listeners, binding the system account.
    const hub = superCluster.leafUrls.filter((_, i) => superCluster.servers[i]!.name.startsWith("east-"));
    const leaf = (name: string, kind: "full" | "cache" | "memory") =>
      startLeafNode(op.serverOptions, { hub, systemCreds: op.systemCreds, resolver: kind, name });
    [leafFull, leafCache, leafMemory] = await Promise.all([
      leaf("leaf-full", "full"),
      leaf("leaf-cache", "cache"),
      leaf("leaf-memory", "memory"),
    ]);
    leaves = [leafFull, leafCache, leafMemory];
    await waitForSystemAccountReach(
      [superCluster.servers[0]!, superCluster.servers[3]!, ...leaves],
      names([...superCluster.servers, ...leaves]),
      op.systemCreds,
      "super-cluster and leaf nodes",
    );
    edge = await natsbindResolver(superCluster.servers[4]!);
  });
  after(async () => {
    await edge?.close();
    await Promise.all((leaves ?? []).map((l) => l.stop()));
  });

  it("natsbind counts the leaf's full resolver, and neither the cache nor the memory resolver", async () => {
    // All 9 answer a PING; only full resolvers answer lookups (nats-server: DirAccResolver), so
    // counting PING answers would wait for 9 acks where 8 servers answer pushes.
    assert.deepEqual(await edge.servers(), names([...superCluster.servers, ...leaves]));
    assert.deepEqual(await edge.topology(), { servers: 9, fullResolvers: 7 });
  });

  it("natsbind may connect through a leaf node that shares the system account", async () => {
    const throughLeaf = await natsbindResolver(leafCache);
    try {
      assert.deepEqual(await throughLeaf.topology(), { servers: 9, fullResolvers: 7 });
      const acc = projectAccount(op, "group/via-the-leaf");
      const outcome = await throughLeaf.push(acc.jwt);
      assert.deepEqual(
        outcome.replies
          .filter((r) => !r.cache)
          .map((r) => r.server)
          .sort(),
        names([...superCluster.servers, leafFull]),
      );
      assert.equal(await throughLeaf.lookup(acc.account.publicKey), acc.jwt);
    } finally {
      await throughLeaf.close();
    }
  });

  it("a push is acked by the 7 full resolvers; the account works on the full and the cache leaf", async () => {
    const acc = projectAccount(op, "group/at-the-edge");
    const outcome = await edge.push(acc.jwt);
    assert.deepEqual(
      outcome.replies
        .filter((r) => !r.cache)
        .map((r) => `${r.server}:${r.code} ${r.message}`)
        .sort(),
      names([...superCluster.servers, leafFull]).map((n) => `${n}:200 jwt updated`),
    );
    for (const r of outcome.replies.filter((x) => x.cache))
      assert.deepEqual([r.server, r.code, r.message], ["leaf-cache", 200, "jwt update cache skipped"]);
    const creds = scopedUserCreds(acc, ["project:21"]);
    // leaf-full holds the pushed JWT; leaf-cache fetches it from a full resolver over the leaf
    // connection when the user connects.
    assert.equal(await roundTrip(leafFull, creds, 21), "pong from leaf-full");
    assert.equal(await roundTrip(leafCache, creds, 21), "pong from leaf-cache");
    // A memory resolver knows only its resolver_preload: natsbind's accounts never get there.
    await assert.rejects(connectWithCreds(leafMemory.url, creds), /Authorization Violation/);

    // Now that leaf-cache holds the account, it applies the next push too (and says so).
    const updated = renamed(acc, "group/at-the-edge-v2", Math.floor(Date.now() / 1000) + 1);
    await waitFor(
      async () => {
        const outcome = await edge.push(updated);
        return outcome.replies.some((r) => r.server === "leaf-cache" && r.message === "jwt updated cache");
      },
      {
        what: "leaf-cache to answer a push as a cache holding the account",
        timeoutMs: 5_000,
        intervalMs: 50,
      },
    );
  });

  it("a delete reaches the leaf nodes: their users are cut off and cannot connect again", async () => {
    const acc = projectAccount(op, "group/leaf-doomed");
    await edge.push(acc.jwt);
    const creds = scopedUserCreds(acc, ["project:22"]);
    const users: NatsConnection[] = [];
    for (const leaf of [leafFull, leafCache]) users.push(await connectWithCreds(leaf.url, creds));
    const statuses = users.map(watchStatus);
    const outcome = await edge.delete([acc.account.publicKey]);
    const answered = outcome.replies.map((r) => r.server);
    for (const n of names([...superCluster.servers, leafFull])) assert.ok(answered.includes(n), n);
    assert.ok(outcome.replies.every((r) => r.code === 200 && r.message === "deleted 1 accounts"));
    assert.deepEqual(await edge.lookupOnEveryServer(acc.account.publicKey), Array(7).fill(undefined));
    for (const [i, nc] of users.entries()) {
      await waitFor(async () => nc.isClosed() || statuses[i]!.all.includes("disconnect"), {
        what: `the user on ${[leafFull, leafCache][i]!.name} to be disconnected`,
        timeoutMs: 5_000,
        intervalMs: 20,
      });
      await nc.close();
    }
    for (const leaf of [leafFull, leafCache])
      await assert.rejects(connectWithCreds(leaf.url, creds), /Authorization Violation/, leaf.name);
  });
});
