// NatsResolver.connections(): who is connected to an account, on which server, issued by which key
// (the fact signing-key retirement waits on), read from a real 3-node cluster.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { accountClaims, signJwt, type DesiredAccount } from "../../src/nats/claims.ts";
import { parseCreds } from "../../src/nats/creds.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { NatsResolver, type AccountConnection } from "../../src/nats/resolver.ts";
import { startNatsCluster, type NatsCluster } from "../support/nats-server.ts";
import { createTestOperator, projectAccount, roleUserCreds, type TestOperator } from "../support/operator.ts";
import { httpGet, waitFor } from "../support/process.ts";

const TIMEOUT = { timeout: 120_000 };

describe("resolver connections() on a 3-node cluster", TIMEOUT, () => {
  let op: TestOperator;
  let cluster: NatsCluster;
  let resolver: NatsResolver;
  const clients: NatsConnection[] = [];

  // An account with two scoped signing keys, as during a rotation's overlap.
  const account = NKeyPair.generate("account");
  const k1 = NKeyPair.generate("account");
  const k2 = NKeyPair.generate("account");

  before(async () => {
    op = await createTestOperator();
    cluster = await startNatsCluster(3, op.serverOptions);
    // The system user `natsbind init` writes, as natsbind uses it: it may ask CONNZ.
    resolver = await NatsResolver.connect({ servers: cluster.urls[0]!, creds: op.systemCreds });
    const template = { pub: { allow: ["build.>"] }, sub: { allow: ["build.>", "_INBOX.>"] } };
    const desired: DesiredAccount = {
      publicKey: account.publicKey,
      name: "group/rotating",
      signingKeys: [
        { key: k1.publicKey, role: "ci", template },
        { key: k2.publicKey, role: "deploy", template },
      ],
    };
    await resolver.push(
      signJwt(accountClaims(desired, op.signingKey.publicKey), op.signingKey, 1_700_000_000),
    );
  });
  after(async () => {
    await Promise.all(clients.map((nc) => nc.close().catch(() => {})));
    await resolver?.close();
    await cluster?.stop();
    await op?.remove();
  });

  async function connectUser(
    server: number,
    key: NKeyPair,
    name: string,
    tags: string[],
  ): Promise<{ nc: NatsConnection; user: string }> {
    const creds = roleUserCreds(account.publicKey, key, { name, tags });
    const user = parseCreds(new TextDecoder().decode(creds)).user.publicKey;
    const nc = await connect({
      servers: cluster.urls[server]!,
      authenticator: credsAuthenticator(creds),
      name,
      maxReconnectAttempts: 0,
      timeout: 5_000,
    });
    clients.push(nc);
    return { nc, user };
  }

  const view = (c: AccountConnection) => ({
    server: c.server,
    user: c.user,
    issuerKey: c.issuerKey,
    name: c.name,
    tags: c.tags,
    kind: c.kind,
  });

  it("reports each connection with its server and the signing key that issued it", async () => {
    const s = cluster.servers.map((x) => x.name);
    const a = await connectUser(0, k1, "job-a", ["project:1"]);
    const b = await connectUser(1, k2, "job-b", ["project:2"]);
    const c = await connectUser(2, k1, "job-c", ["project:3"]);
    const d = await connectUser(2, k2, "job-d", ["project:4"]);
    const expected = [
      {
        server: s[0]!,
        user: a.user,
        issuerKey: k1.publicKey,
        name: "job-a",
        tags: ["project:1"],
        kind: "Client",
      },
      {
        server: s[1]!,
        user: b.user,
        issuerKey: k2.publicKey,
        name: "job-b",
        tags: ["project:2"],
        kind: "Client",
      },
      {
        server: s[2]!,
        user: c.user,
        issuerKey: k1.publicKey,
        name: "job-c",
        tags: ["project:3"],
        kind: "Client",
      },
      {
        server: s[2]!,
        user: d.user,
        issuerKey: k2.publicKey,
        name: "job-d",
        tags: ["project:4"],
        kind: "Client",
      },
    ];
    const sortKey = (x: { server: string; name: string }) => `${x.server}/${x.name}`;
    const got = await resolver.connections(account.publicKey);
    assert.deepEqual(
      got.map(view).sort((x, y) => sortKey(x).localeCompare(sortKey(y))),
      expected.sort((x, y) => sortKey(x).localeCompare(sortKey(y))),
    );
    for (const conn of got) {
      assert.ok(Number.isSafeInteger(conn.cid) && conn.cid > 0, `cid ${conn.cid}`);
      assert.ok(!Number.isNaN(Date.parse(conn.start)), `start ${conn.start}`);
      // The reply's user JWT is not handed on.
      assert.equal(JSON.stringify(conn).includes("eyJ"), false);
    }

    // Closing one: it disappears from its server's list, the others stay.
    await c.nc.close();
    await waitFor(
      async () => !(await resolver.connections(account.publicKey)).some((x) => x.user === c.user),
      { what: "job-c to leave CONNZ", timeoutMs: 5_000, intervalMs: 20 },
    );
    const after = (await resolver.connections(account.publicKey)).map((x) => x.name).sort();
    assert.deepEqual(after, ["job-a", "job-b", "job-d"]);
  });

  it("reads a server completely when it has more connections than a page", async () => {
    const paging = await NatsResolver.connect({
      servers: cluster.urls[1]!,
      creds: op.systemCreds,
      connzPageSize: 2,
    });
    try {
      const before = await paging.connections(account.publicKey);
      const added: string[] = [];
      for (let i = 0; i < 5; i++) added.push((await connectUser(0, k2, `many-${i}`, [])).user);
      const got = await paging.connections(account.publicKey);
      assert.equal(got.length, before.length + 5);
      const onZero = got.filter((x) => x.server === cluster.servers[0]!.name);
      for (const u of added)
        assert.ok(
          onZero.some((x) => x.user === u && x.issuerKey === k2.publicKey),
          u,
        );
      assert.equal(new Set(got.map((x) => `${x.server}/${x.cid}`)).size, got.length, "no connection twice");
      // Same answer as one big page.
      assert.deepEqual(
        got.map((x) => `${x.server}/${x.cid}`),
        (await resolver.connections(account.publicKey)).map((x) => `${x.server}/${x.cid}`),
      );
    } finally {
      await paging.close();
    }
  });

  it("gives [] for an account without connections, and for one no server holds", async () => {
    const idle = projectAccount(op, "group/idle");
    await resolver.push(idle.jwt);
    assert.deepEqual(await resolver.connections(idle.account.publicKey), []);
    assert.deepEqual(await resolver.connections(NKeyPair.generate("account").publicKey), []);
  });

  it("leaves an account without connections unloaded on every server (CONNZ would make each fetch and keep it)", async () => {
    // A server answers CONNZ of an account by fetching it from its resolver and keeping it loaded,
    // connected or not: asking it for every account whose key retires made every server hold every
    // account (10,000 accounts: ~400 MB on one server, and each push to them ~20x slower).
    const idle = projectAccount(op, "group/never-connected");
    await resolver.push(idle.jwt);
    const loaded = async (): Promise<string[]> => {
      const out: string[] = [];
      for (const server of cluster.servers) {
        const accountz = JSON.parse((await httpGet(`${server.monitorUrl}/accountz`)).body) as {
          accounts?: string[];
        };
        if ((accountz.accounts ?? []).includes(idle.account.publicKey)) out.push(server.name);
      }
      return out;
    };
    assert.deepEqual(await loaded(), [], "a push alone loads nothing");
    assert.deepEqual(await resolver.connections(idle.account.publicKey), []);
    assert.deepEqual(await loaded(), [], "no server loaded the account to answer");
  });

  it("refuses a key that is not an account key, and an account over maxConnections", async () => {
    await assert.rejects(
      resolver.connections(NKeyPair.generate("user").publicKey),
      /connections: account: expected an account key/,
    );
    await assert.rejects(resolver.connections("$SYS.>"), /connections: account/);
    const capped = await NatsResolver.connect({
      servers: cluster.urls[0]!,
      creds: op.systemCreds,
      maxConnections: 2,
    });
    try {
      await assert.rejects(capped.connections(account.publicKey), /more than 2 live connections/);
    } finally {
      await capped.close();
    }
  });
});
