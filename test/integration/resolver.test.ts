// The resolver client against real nats-servers in operator mode with a full resolver.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server, type Socket } from "node:net";
import { connect } from "@nats-io/transport-node";
import { ClaimsError, accountClaims, signJwt, trustedOperatorFromJwt } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import {
  NatsResolver,
  ResolverIncompleteError,
  ResolverRejectedError,
  ResolverTimeoutError,
  ResolverUnavailableError,
} from "../../src/nats/resolver.ts";
import {
  startNatsCluster,
  startNatsServer,
  type NatsCluster,
  type NatsServer,
} from "../support/nats-server.ts";
import {
  connectWithCreds,
  createTestOperator,
  operatorResolver,
  projectAccount,
  scopedUserCreds,
  type TestOperator,
  watchStatus,
} from "../support/operator.ts";
import { freePort, waitFor } from "../support/process.ts";

const TIMEOUT = { timeout: 120_000 };

describe("resolver on one server", TIMEOUT, () => {
  let op: TestOperator;
  let server: NatsServer;
  let resolver: NatsResolver;

  before(async () => {
    op = await createTestOperator();
    server = await startNatsServer(op.serverOptions);
    resolver = await NatsResolver.connect({
      servers: server.url,
      creds: op.systemCreds,
      operatorSigningKey: op.signingKey,
      trustedOperator: trustedOperatorFromJwt(op.operatorJwt),
    });
  });
  after(async () => {
    await resolver?.close();
    await server?.stop();
    await op?.remove();
  });

  it("discovers the one server", async () => {
    assert.deepEqual(await resolver.servers(), [server.name]);
  });

  it("pushes an account, reports the server's answer, and the server serves it", async () => {
    const acc = projectAccount(op, "group/project-a");
    const outcome = await resolver.push(acc.jwt);
    assert.deepEqual(outcome.accounts, [acc.account.publicKey]);
    assert.deepEqual(
      outcome.replies.map((r) => [r.server, r.code, r.message]),
      [[server.name, 200, "jwt updated"]],
    );
    assert.equal(await resolver.lookup(acc.account.publicKey), acc.jwt);
    assert.ok((await resolver.list()).includes(acc.account.publicKey));
    assert.ok((await resolver.list()).includes(op.systemAccount));
  });

  it("returns undefined when looking up an account the resolver does not hold", async () => {
    assert.equal(await resolver.lookup(NKeyPair.generate("account").publicKey), undefined);
    await assert.rejects(
      resolver.lookup(NKeyPair.generate("user").publicKey),
      /lookup: account: expected an account key/,
    );
  });

  it("lets a scoped user do exactly what its role's template allows", async () => {
    const acc = projectAccount(op, "group/project-42");
    await resolver.push(acc.jwt);
    const nc = await connectWithCreds(server.url, scopedUserCreds(acc, ["project:42"]));
    const events = watchStatus(nc);
    try {
      const sub = nc.subscribe("build.42.>", { max: 1 });
      const received = (async () => {
        for await (const m of sub) return m.string();
      })();
      nc.publish("build.42.status", "ok");
      assert.equal(await received, "ok");

      // Publishing outside the template: the server answers with a permissions violation.
      nc.publish("build.43.status", "nope");
      await nc.flush();
      await events.next("a permissions violation", (e) => e.startsWith("error: "));
      assert.match(events.errors()[0]!, /Permissions Violation for Publish to "?build\.43\.status"?/);

      // Subscribing outside the template is refused too.
      const denied = nc.subscribe("build.43.>");
      const deniedDone = denied.closed;
      await nc.flush();
      const subErr = await deniedDone;
      assert.match(String(subErr), /Permissions Violation for Subscription to "?build\.43\.>"?/);
    } finally {
      await nc.close();
    }
  });

  it("refuses a user whose tag has no value for the template", async () => {
    const acc = projectAccount(op, "group/untagged");
    await resolver.push(acc.jwt);
    // No project tag: the template's allow entries drop out, so the user may not publish anything.
    const nc = await connectWithCreds(server.url, scopedUserCreds(acc, ["other:1"]));
    const events = watchStatus(nc);
    nc.publish("build.42.status", "x");
    await nc.flush();
    await events.next("a permissions violation", (e) => e.startsWith("error: "));
    assert.match(events.errors()[0]!, /Permissions Violation for Publish/);
    await nc.close();
  });

  it("deletes an account: lookup is empty and its clients are disconnected", async () => {
    const acc = projectAccount(op, "group/doomed");
    await resolver.push(acc.jwt);
    const nc = await connectWithCreds(server.url, scopedUserCreds(acc, ["project:7"]));
    const events = watchStatus(nc);
    const outcome = await resolver.delete([acc.account.publicKey]);
    assert.deepEqual(
      outcome.replies.map((r) => [r.server, r.code]),
      [[server.name, 200]],
    );
    assert.match(outcome.replies[0]!.message, /deleted 1 accounts?/);
    assert.equal(await resolver.lookup(acc.account.publicKey), undefined);
    assert.ok(!(await resolver.list()).includes(acc.account.publicKey));
    // The server cuts the account's clients off at once.
    await waitFor(async () => events.all.includes("disconnect"), {
      what: "the client's disconnect",
      timeoutMs: 5_000,
      intervalMs: 10,
    });
    assert.ok(events.all.includes("error: Account Authentication Expired"), events.all.join(", "));
    await nc.close();
    await assert.rejects(
      connectWithCreds(server.url, scopedUserCreds(acc, ["project:7"])),
      /Authorization Violation/,
    );
  });

  it("refuses to delete without an operator signing key", async () => {
    const bare = await NatsResolver.connect({ servers: server.url, creds: op.systemCreds });
    try {
      await assert.rejects(
        bare.delete([NKeyPair.generate("account").publicKey]),
        /no operator signing key configured/,
      );
    } finally {
      await bare.close();
    }
  });

  it("refuses an account JWT of a foreign operator, which the server itself would store", async () => {
    const foreign = NKeyPair.generate("operator");
    const account = NKeyPair.generate("account");
    const jwt = signJwt(
      accountClaims({ publicKey: account.publicKey, name: "intruder", signingKeys: [] }, foreign.publicKey),
      foreign,
      1,
    );
    await assert.rejects(resolver.push(jwt), (err: Error) => {
      assert.ok(err instanceof ClaimsError, `${err.name}: ${err.message}`);
      assert.match(
        err.message,
        new RegExp(
          `account JWT for ${account.publicKey} is signed by ${foreign.publicKey}, which is not a key of operator ${op.operator}`,
        ),
      );
      return true;
    });
    assert.equal(await resolver.lookup(account.publicKey), undefined);

    // Why the guard exists: without it nats-server 2.15's full resolver answers 200 and stores it.
    const unguarded = await NatsResolver.connect({ servers: server.url, creds: op.systemCreds });
    try {
      assert.equal((await unguarded.push(jwt)).replies[0]?.code, 200);
      assert.equal(await unguarded.lookup(account.publicKey), jwt);
    } finally {
      await unguarded.close();
    }
  });

  it("a JWT naming natsbind's signing key under a forged signature is refused by the server, never stored", async () => {
    // Why the ownership check (controllers/binding/ownership.ts) trusts the issuer of what the
    // resolver holds without verifying its signature again: the server verifies it before storing.
    const account = NKeyPair.generate("account");
    const mallory = NKeyPair.generate("operator");
    const claims = accountClaims(
      { publicKey: account.publicKey, name: "forged", tags: ["natsbind-binding:x"], signingKeys: [] },
      mallory.publicKey,
    );
    const [header, , signature] = signJwt(claims, mallory, 1).split(".");
    const body = Buffer.from(JSON.stringify({ ...claims, iss: op.signingKey.publicKey })).toString(
      "base64url",
    );
    // The client's guard checks the issuer only, so this reaches the server.
    await assert.rejects(resolver.push(`${header}.${body}.${signature}`), ResolverRejectedError);
    assert.equal(await resolver.lookup(account.publicKey), undefined);
  });

  it("is rejected with each server's reason when the server refuses the JWT", async () => {
    // An account that names itself as its own signing key is invalid to nats-server's jwt library.
    const account = NKeyPair.generate("account");
    const claims = accountClaims(
      { publicKey: account.publicKey, name: "odd", signingKeys: [] },
      op.signingKey.publicKey,
    );
    claims.nats.signing_keys = [NKeyPair.generate("user").publicKey];
    const jwt = signJwt(claims, op.signingKey, 1);
    await assert.rejects(resolver.push(jwt), (err: Error) => {
      assert.ok(err instanceof ResolverRejectedError, `${err.name}: ${err.message}`);
      assert.match(
        err.message,
        new RegExp(`push account ${account.publicKey} rejected by ${server.name}: 500 `),
      );
      assert.equal(err.replies[0]?.code, 500);
      return true;
    });
    assert.equal(await resolver.lookup(account.publicKey), undefined);
  });

  it("refuses to push what is not a valid account JWT, before sending it", async () => {
    await assert.rejects(
      resolver.push("not.a.jwt"),
      /account JWT has a header or body that is not base64url JSON/,
    );
    const user = NKeyPair.generate("user");
    const acc = projectAccount(op, "x");
    const notAccount = signJwt(
      { iss: acc.ciKey.publicKey, sub: user.publicKey, name: "u", nats: { type: "user", version: 2 } },
      acc.ciKey,
      1,
    );
    await assert.rejects(resolver.push(notAccount), /is a user JWT, not an account JWT/);
  });

  it("reports fewer answers than expected servers as incomplete", async () => {
    const expectsTwo = await NatsResolver.connect({
      servers: server.url,
      creds: op.systemCreds,
      expectedServers: 2,
      timeoutMs: 500,
    });
    try {
      const acc = projectAccount(op, "group/half");
      await assert.rejects(expectsTwo.push(acc.jwt), (err: Error) => {
        assert.ok(err instanceof ResolverIncompleteError, `${err.name}: ${err.message}`);
        assert.match(err.message, /1 of 2 full resolvers answered within 500 ms/);
        return true;
      });
    } finally {
      await expectsTwo.close();
    }
  });

  it("keeps credentials out of errors when authentication fails", async () => {
    const other = await createTestOperator();
    try {
      const seed = new TextDecoder().decode(other.systemCreds).match(/SU[A-Z2-7]{56}/)![0];
      await assert.rejects(
        NatsResolver.connect({ servers: server.url, creds: other.systemCreds }),
        (err: Error) => {
          assert.ok(err instanceof ResolverUnavailableError);
          assert.match(
            err.message,
            /cannot connect to NATS at nats:\/\/127\.0\.0\.1:\d+: .*Authorization Violation/,
          );
          const rendered = `${err.message} ${err.stack} ${JSON.stringify(err)} ${String(err.cause)}`;
          assert.ok(!rendered.includes(seed));
          assert.ok(!rendered.includes("eyJ"), "no JWT in the error");
          return true;
        },
      );
    } finally {
      await other.remove();
    }
  });
});

describe("resolver on a 3-node cluster", TIMEOUT, () => {
  let op: TestOperator;
  let cluster: NatsCluster;
  let resolver: NatsResolver;

  before(async () => {
    op = await createTestOperator();
    cluster = await startNatsCluster(3, op.serverOptions);
    await cluster.waitForRoutes();
    resolver = await operatorResolver(op, cluster.urls[0]!);
  });
  after(async () => {
    await resolver?.close();
    await cluster?.stop();
    await op?.remove();
  });

  it("collects one 200 per server for a push, and the account works on every server", async () => {
    assert.deepEqual(await resolver.servers(), cluster.servers.map((s) => s.name).sort());
    const acc = projectAccount(op, "group/clustered");
    const outcome = await resolver.push(acc.jwt);
    assert.deepEqual(
      outcome.replies.map((r) => `${r.server}:${r.code}`).sort(),
      cluster.servers.map((s) => `${s.name}:200`).sort(),
    );
    for (const s of cluster.servers) {
      const nc = await connectWithCreds(s.url, scopedUserCreds(acc, ["project:9"]));
      try {
        const reply = nc.subscribe("build.9.ping", { max: 1 });
        (async () => {
          for await (const m of reply) m.respond("pong");
        })();
        const res = await nc.request("build.9.ping", "", { timeout: 2_000 });
        assert.equal(res.string(), "pong", `account usable on ${s.name}`);
      } finally {
        await nc.close();
      }
    }
  });

  it("deletes from every server", async () => {
    const acc = projectAccount(op, "group/gone");
    await resolver.push(acc.jwt);
    const outcome = await resolver.delete([acc.account.publicKey]);
    assert.equal(outcome.replies.length, 3);
    assert.ok(outcome.replies.every((r) => r.code === 200));
    for (const s of cluster.servers) {
      const direct = await NatsResolver.connect({ servers: s.url, creds: op.systemCreds });
      try {
        assert.equal(await direct.lookup(acc.account.publicKey), undefined, `gone from ${s.name}`);
      } finally {
        await direct.close();
      }
    }
  });
});

describe("resolver failures without a resolver", TIMEOUT, () => {
  let op: TestOperator;
  let deadPort: number;
  let blackHole: Server;
  let blackHolePort: number;
  const sockets = new Set<Socket>();

  before(async () => {
    op = await createTestOperator();
    deadPort = await freePort();
    // Accepts TCP and never speaks NATS: the client's connect must time out.
    blackHole = createServer((socket) => sockets.add(socket));
    await new Promise<void>((r) => blackHole.listen(0, "127.0.0.1", r));
    blackHolePort = (blackHole.address() as { port: number }).port;
  });
  after(async () => {
    for (const socket of sockets) socket.destroy();
    blackHole?.close();
    await op?.remove();
  });

  it("reports an unreachable server as unavailable", async () => {
    await assert.rejects(
      NatsResolver.connect({
        servers: `nats://127.0.0.1:${deadPort}`,
        creds: op.systemCreds,
        connectTimeoutMs: 1_000,
      }),
      (err: Error) =>
        err instanceof ResolverUnavailableError &&
        new RegExp(`cannot connect to NATS at nats://127.0.0.1:${deadPort}`).test(err.message),
    );
  });

  it("reports a server that never answers the handshake as unavailable", async () => {
    await assert.rejects(
      NatsResolver.connect({
        servers: `nats://127.0.0.1:${blackHolePort}`,
        creds: op.systemCreds,
        connectTimeoutMs: 500,
      }),
      (err: Error) => err instanceof ResolverUnavailableError && /TIMEOUT|timeout/i.test(err.message),
    );
  });

  it("times out when a responder never answers, and finds no responders when none listens", async () => {
    // A server with no auth and no resolver: $SYS subjects are ordinary subjects there.
    const { ManagedProcess, toolBinary, tempDir, removeDir } = await import("../support/process.ts");
    const dir = await tempDir("plain");
    const port = await freePort();
    const proc = new ManagedProcess(toolBinary("nats-server"), ["-a", "127.0.0.1", "-p", String(port)], {
      name: "plain nats-server",
    });
    const url = `nats://127.0.0.1:${port}`;
    try {
      await waitFor(
        async () => {
          try {
            const nc = await connect({ servers: url, maxReconnectAttempts: 0 });
            await nc.close();
            return true;
          } catch {
            return false;
          }
        },
        { what: "plain nats-server", timeoutMs: 10_000, intervalMs: 50 },
      );
      const resolver = await NatsResolver.connect({
        servers: url,
        creds: op.systemCreds,
        expectedServers: 1,
        timeoutMs: 300,
      });
      try {
        const acc = projectAccount(op, "group/none");
        await assert.rejects(
          resolver.push(acc.jwt),
          (err: Error) =>
            err instanceof ResolverUnavailableError &&
            /no resolver answers \$SYS\.REQ\.CLAIMS\.UPDATE/.test(err.message),
        );

        const silent = await connect({ servers: url });
        silent.subscribe("$SYS.REQ.CLAIMS.UPDATE", { callback: () => {} });
        silent.subscribe("$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP", { callback: () => {} });
        await silent.flush();
        await assert.rejects(resolver.push(acc.jwt), (err: Error) => {
          assert.ok(err instanceof ResolverTimeoutError, `${err.name}: ${err.message}`);
          assert.match(err.message, /push account A[A-Z0-9]+: no resolver answered within 300 ms/);
          return true;
        });
        await assert.rejects(resolver.lookup(acc.account.publicKey), ResolverTimeoutError);
        await silent.close();
      } finally {
        await resolver.close();
      }
    } finally {
      await proc.stop();
      await removeDir(dir);
    }
  });
});
