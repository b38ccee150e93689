// The auth callout through a rolling restart of a 3-node cluster (operator mode, full resolver).
//
// nats-server hands each authorization request to one member of the queue group on
// $SYS.REQ.USER.AUTH, picked at random wherever it is connected, and refuses the client when no
// answer comes within its auth_timeout: it never asks again. So a request routed to a server that
// is stopping is lost, and so is every request while natsbind has no subscriber at all. natsbind
// answers on two connections spread over the servers, and when a server enters lame duck mode (how
// a rolling restart stops it: `nats-server --signal ldm`, the NATS Helm chart's preStop) it moves
// that connection first (make before break). Clients connecting to the servers that stay up are
// never refused; only connections to the server being restarted fail, as they must.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { connect } from "@nats-io/transport-node";
import { startCallout, type Callout } from "../../src/credentials/callout.ts";
import type { CiIdentity } from "../../src/credentials/identity.ts";
import type { CredentialIssuer, IssueRequest, IssueResult } from "../../src/credentials/types.ts";
import { signJwt, userClaims } from "../../src/nats/claims.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { startNatsCluster, type NatsCluster } from "../support/nats-server.ts";
import {
  createTestOperator,
  operatorResolver,
  projectAccount,
  type TestAccount,
  type TestOperator,
} from "../support/operator.ts";

const WORKERS = 4;
const ROUNDS = 2;

/** Issues a user of the project account for every request (the door is under test, not the issuer). */
function issuerFor(acc: TestAccount): CredentialIssuer & { asked: number } {
  return {
    asked: 0,
    async issue(r: IssueRequest): Promise<IssueResult> {
      this.asked += 1;
      const now = Math.floor(Date.now() / 1000);
      const account = acc.account.publicKey;
      const jwt = signJwt(
        userClaims({
          publicKey: r.userPublicKey!,
          name: "job",
          account,
          issuer: acc.ciKey.publicKey,
          scoped: true,
          tags: ["project:42"],
          expiresAt: now + 600,
        }),
        acc.ciKey,
        now,
      );
      return {
        kind: "issued",
        account,
        role: "ci",
        userPublicKey: r.userPublicKey!,
        jwt,
        expiresAt: (now + 600) * 1000,
        servers: [],
        // The callout never reads the identity.
        identity: {} as CiIdentity,
        binding: "test",
      };
    },
  };
}

interface Attempt {
  node: number;
  start: number;
  end: number;
  error?: string;
}

describe("auth callout through a rolling restart (3 nodes, lame duck mode)", { timeout: 180_000 }, () => {
  let op: TestOperator;
  let cluster: NatsCluster;
  let resolver: NatsResolver;
  let callout: Callout | undefined;
  const logLines: string[] = [];

  before(async () => {
    op = await createTestOperator({ callout: true });
    cluster = await startNatsCluster(3, op.serverOptions);
    resolver = await operatorResolver(op, cluster.urls);
  });
  after(async () => {
    await callout?.stop();
    await resolver?.close();
    await cluster?.stop();
    await op?.remove();
  });

  it("refuses no client of a server that stays up, while every server is restarted twice", async () => {
    const acc = projectAccount(op, "group/project");
    await resolver.push(acc.jwt);
    const issuer = issuerFor(acc);
    callout = await startCallout({
      servers: cluster.urls,
      credsText: op.callout!.serviceCreds,
      signingKey: op.callout!.signingKey,
      calloutAccount: op.callout!.account,
      issuer,
      log: createLogger({ level: "info", write: (l) => void logLines.push(l) }),
    });

    // Restart windows per node: from the lame duck signal until the node is routed to every peer.
    const windows: Array<Array<[number, number]>> = cluster.servers.map(() => []);
    const restarting = new Set<number>();
    const attempts: Attempt[] = [];
    let stop = false;
    const workers = Array.from({ length: WORKERS }, async () => {
      while (!stop) {
        const node = Math.floor(Math.random() * cluster.servers.length);
        if (restarting.has(node)) {
          await new Promise((r) => setTimeout(r, 5));
          continue;
        }
        const attempt: Attempt = { node, start: performance.now(), end: 0 };
        try {
          const nc = await connect({
            servers: cluster.urls[node]!,
            token: "an-id-token",
            maxReconnectAttempts: 0,
            ignoreClusterUpdates: true,
            timeout: 5_000,
          });
          await nc.close();
        } catch (err) {
          attempt.error = (err as Error).message;
        }
        attempt.end = performance.now();
        attempts.push(attempt);
      }
    });

    await new Promise((r) => setTimeout(r, 500));
    for (let round = 0; round < ROUNDS; round++)
      for (const [node, server] of cluster.servers.entries()) {
        restarting.add(node);
        const from = performance.now();
        await server.restart({ lameDuck: true });
        await cluster.waitForRoutes(30_000);
        windows[node]!.push([from, performance.now()]);
        restarting.delete(node);
        await new Promise((r) => setTimeout(r, 500));
      }
    stop = true;
    await Promise.all(workers);

    const planned = (a: Attempt): boolean => windows[a.node]!.some(([s, e]) => a.start <= e && a.end >= s);
    const failed = attempts.filter((a) => a.error !== undefined);
    const unplanned = failed.filter((a) => !planned(a));
    const ok = attempts.length - failed.length;
    console.log(
      `callout through ${ROUNDS * cluster.servers.length} lame duck restarts: ${ok} clients in, ` +
        `${failed.length - unplanned.length} refused by the server being restarted, ${unplanned.length} others refused`,
    );
    assert.deepEqual(
      unplanned.map((a) => `node ${a.node} at ${Math.round(a.start)} ms: ${a.error}`),
      [],
      "no client of a server staying up is refused",
    );
    assert.ok(ok >= 200, `${ok} clients got in`);
    const moves = logLines.filter((l) => /moved to another server/.test(l)).length;
    // Each restart moves every connection on that server (at least one of the two, often both).
    assert.ok(moves >= ROUNDS * cluster.servers.length - 1, `${moves} moves`);
    assert.equal(callout.counters.failed, 0);
    assert.equal(callout.counters.dropped, 0);
    assert.ok(callout.counters.issued >= ok, "every client that got in was issued by natsbind");
    assert.ok(!logLines.some((l) => /connection closed, not answering/.test(l)), "no connection was lost");
  });
});
