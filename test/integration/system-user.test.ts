// natsbind's own system users on a real nats-server in operator mode (issue 11, part 4): with the
// system account's signing key natsbind issues itself users that can make every request it makes
// and nothing else, live at most an hour, and are renewed without a failed request; the server
// closes a connection whose user JWT expired, which is what renewal avoids.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  connect,
  credsAuthenticator,
  jwtAuthenticator,
  type Msg,
  type NatsConnection,
} from "@nats-io/transport-node";
import { INIT_LAYOUT } from "../../src/cli/init.ts";
import type { Config } from "../../src/config/config.ts";
import {
  CONNECTION_AUDIT_USER_ROLE,
  IssuedUsers,
  startConnectionAudit,
} from "../../src/credentials/audit-connections.ts";
import type { AuditEvent } from "../../src/credentials/types.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import { runController, type RunningController } from "../../src/main.ts";
import { decodeJwt, signJwt, userClaims } from "../../src/nats/claims.ts";
import { parseCreds } from "../../src/nats/creds.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { NatsResolver } from "../../src/nats/resolver.ts";
import { RenewingSystemConnection, SystemConnectionError } from "../../src/nats/system-connection.ts";
import { RESOLVER_USER_ROLE, SystemUserIssuer, type SystemUserRole } from "../../src/nats/system-user.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { ManualClock, systemClock, type Clock } from "../../src/runtime/clock.ts";
import { readSeedFile } from "../../src/store/key-directory.ts";
import { startLocalRig, type LocalRig } from "../support/local-rig.ts";
import { startNatsServer, type NatsServer } from "../support/nats-server.ts";
import {
  createTestOperator,
  natsConfigSection,
  operatorResolver,
  projectAccount,
  roleUserCreds,
  watchStatus,
  type TestAccount,
  type TestOperator,
} from "../support/operator.ts";
import { httpGet, waitFor } from "../support/process.ts";

const TIMEOUT = { timeout: 180_000 };

interface ConnzEntry {
  name?: string;
  authorized_user?: string;
  jwt?: string;
  issuer_key?: string;
}

describe("natsbind's own system users (nats.systemSigningKey)", TIMEOUT, () => {
  let op: TestOperator;
  let server: NatsServer;
  let signingKey: NKeyPair;
  let acc: TestAccount;
  /** Every log line of every connection started here: no seed may appear in one. */
  const logLines: string[] = [];
  const log = createLogger({ level: "debug", write: (l) => void logLines.push(l) });
  const started: RenewingSystemConnection[] = [];
  const seeds: string[] = [];

  function issuer(lifetimeMs = 3_600_000, clock: Clock = systemClock, key = signingKey): SystemUserIssuer {
    return new SystemUserIssuer({ systemAccount: op.systemAccount, signingKey: key, lifetimeMs, clock });
  }

  async function startAs(
    role: SystemUserRole,
    o: { lifetimeMs?: number; clock?: Clock; url?: string; timeoutMs?: number } = {},
  ): Promise<RenewingSystemConnection> {
    const clock = o.clock ?? systemClock;
    const conn = await RenewingSystemConnection.start({
      servers: o.url ?? server.url,
      issuer: issuer(o.lifetimeMs, clock),
      role,
      name: role.name,
      clock,
      log,
      connectTimeoutMs: o.timeoutMs ?? 2_000,
    });
    started.push(conn);
    return conn;
  }

  function resolverOver(conn: RenewingSystemConnection, timeoutMs = 2_000): Promise<NatsResolver> {
    return NatsResolver.connect({
      servers: server.url,
      connection: conn,
      operatorSigningKey: op.signingKey,
      trustedOperator: { publicKey: op.operator, signingKeys: [op.signingKey.publicKey] },
      timeoutMs,
    });
  }

  async function connz(target: NatsServer = server): Promise<ConnzEntry[]> {
    const res = await httpGet(`${target.monitorUrl}/connz?auth=true&limit=1000&acc=${op.systemAccount}`);
    assert.equal(res.status, 200, res.body);
    return (JSON.parse(res.body) as { connections?: ConnzEntry[] | null }).connections ?? [];
  }

  /** A user of `acc` (its scoped ci key), connected: something for CONNZ and connect events. */
  async function accountUser(name = "job"): Promise<{ nc: NatsConnection; key: string }> {
    const creds = roleUserCreds(acc.account.publicKey, acc.ciKey, { name });
    const nc = await connect({ servers: server.url, authenticator: credsAuthenticator(creds), name });
    return { nc, key: parseCreds(new TextDecoder().decode(creds)).user.publicKey };
  }

  before(async () => {
    op = await createTestOperator();
    server = await startNatsServer(op.serverOptions);
    signingKey = await readSeedFile(join(op.dir, INIT_LAYOUT.systemAccountSigningKey), "account");
    seeds.push(new TextDecoder().decode(signingKey.getSeed()));
    acc = projectAccount(op, "system-user-test", Math.floor(Date.now() / 1000));
    // On the server before any test, so each can run alone (the first pushes it again, as natsbind).
    const setup = await operatorResolver(op, server.url);
    await setup.push(acc.jwt);
    await setup.close();
  });

  after(async () => {
    for (const conn of started) await conn.close();
    await server?.stop();
    await op?.remove();
    const leaked = logLines.filter(
      (l) => seeds.some((s) => l.includes(s)) || /\bS[AU][A-Z2-7]{56}\b/.test(l),
    );
    assert.deepEqual(leaked, [], "no seed in any log line");
  });

  it("the resolver's user makes every request natsbind makes: push, lookup, list, ping, CONNZ, delete", async () => {
    const conn = await startAs(RESOLVER_USER_ROLE);
    const resolver = await resolverOver(conn);
    const pushed = await resolver.push(acc.jwt);
    assert.deepEqual(
      pushed.replies.map((r) => [r.server, r.code]),
      [[server.name, 200]],
    );
    assert.equal(await resolver.lookup(acc.account.publicKey), acc.jwt);
    assert.ok((await resolver.list()).includes(acc.account.publicKey));
    assert.deepEqual(await resolver.servers(), [server.name]);
    const job = await accountUser("connz-job");
    try {
      const live = await resolver.connections(acc.account.publicKey);
      assert.deepEqual(
        live.map((c) => [c.user, c.issuerKey, c.name]),
        [[job.key, acc.ciKey.publicKey, "connz-job"]],
      );
    } finally {
      await job.nc.close();
    }
    const doomed = projectAccount(op, "system-user-doomed", Math.floor(Date.now() / 1000));
    await resolver.push(doomed.jwt);
    const deleted = await resolver.delete([doomed.account.publicKey]);
    assert.deepEqual(
      deleted.replies.map((r) => r.code),
      [200],
    );
    assert.ok(!(await resolver.list()).includes(doomed.account.publicKey));
    // Who the server saw: the issued user, signed by the system account's signing key.
    const entry = (await connz()).find((c) => c.authorized_user === conn.user);
    assert.ok(entry, "the issued user is connected");
    assert.equal(entry.name, "natsbind-resolver");
    assert.equal(entry.issuer_key, signingKey.publicKey);
  });

  it("... and nothing else: the server refuses any other publish and subscription", async () => {
    const conn = await startAs(RESOLVER_USER_ROLE);
    const nc = conn.current;
    const status = watchStatus(nc);
    const other = issuer().newUser(RESOLVER_USER_ROLE);
    for (const subject of [
      "$SYS.REQ.SERVER.PING.SUBSZ",
      "$SYS.REQ.SERVER.PING.CONNZ",
      `$SYS.REQ.ACCOUNT.${acc.account.publicKey}.CLAIMS.UPDATE`,
      `$SYS.REQ.ACCOUNT.${acc.account.publicKey}.SUBSZ`,
      "$SYS.REQ.USER.AUTH",
      `$SYS.ACCOUNT.${acc.account.publicKey}.CONNECT`,
      "natsbind.anything",
      `${other.inboxPrefix}.x`,
    ]) {
      nc.publish(subject, "{}");
      await status.next(`a violation for publishing ${subject}`, (e) =>
        e.includes(`Permissions Violation for Publish to "${subject}"`),
      );
    }
    for (const subject of [
      "_INBOX.>",
      "_INBOX_natsbind.>",
      `${other.inboxPrefix}.>`,
      "$SYS.ACCOUNT.*.CONNECT",
      "$SYS.REQ.CLAIMS.UPDATE",
      ">",
    ]) {
      const refused = await new Promise<string>((resolve) => {
        nc.subscribe(subject, { callback: (err) => resolve(err?.message ?? "delivered") });
      });
      assert.match(
        refused,
        new RegExp(`Permissions Violation for Subscription to "${subject.replace(/[$.*>]/g, "\\$&")}"`),
      );
    }
    // Not a subject that does not exist: the unrestricted system.creds gets an answer to SUBSZ.
    const unrestricted = await connect({
      servers: server.url,
      authenticator: credsAuthenticator(op.systemCreds),
    });
    try {
      const varz = await unrestricted.request("$SYS.REQ.SERVER.PING.SUBSZ", "{}", { timeout: 2_000 });
      assert.ok(varz.json<{ data?: unknown }>().data);
    } finally {
      await unrestricted.close();
    }
    // The refusals did not cost the connection: requests still work on it.
    const resolver = await resolverOver(conn);
    assert.deepEqual(await resolver.servers(), [server.name]);
  });

  it("the connection audit's user receives connect events and may do nothing else", async () => {
    const conn = await startAs(CONNECTION_AUDIT_USER_ROLE);
    const nc = conn.current;
    const status = watchStatus(nc);
    const events: string[] = [];
    nc.subscribe(`$SYS.ACCOUNT.${acc.account.publicKey}.CONNECT`, {
      callback: (err, msg) => void events.push(err ? `error: ${err.message}` : msg.subject),
    });
    await nc.flush();
    const job = await accountUser("audited-job");
    await job.nc.close();
    await waitFor(async () => events.length > 0, {
      what: "a connect event",
      timeoutMs: 5_000,
      intervalMs: 20,
    });
    assert.deepEqual(events, [`$SYS.ACCOUNT.${acc.account.publicKey}.CONNECT`]);
    for (const subject of ["$SYS.REQ.SERVER.PING", "$SYS.REQ.CLAIMS.LIST", "anything"]) {
      nc.publish(subject);
      await status.next(`a violation for publishing ${subject}`, (e) =>
        e.includes(`Permissions Violation for Publish to "${subject}"`),
      );
    }
    for (const subject of ["_INBOX.>", "$SYS.ACCOUNT.*.LEAFNODE.CONNECT", "$SYS.REQ.>"]) {
      const refused = await new Promise<string>((resolve) => {
        nc.subscribe(subject, { callback: (err) => resolve(err?.message ?? "delivered") });
      });
      assert.match(refused, /Permissions Violation for Subscription to/);
    }
  });

  it("the JWT the server holds lives at most the lifetime: 1 hour by default, 10 s when configured so", async () => {
    for (const lifetimeMs of [3_600_000, 10_000]) {
      const conn = await startAs(RESOLVER_USER_ROLE, { lifetimeMs });
      const entry = (await connz()).find((c) => c.authorized_user === conn.user);
      assert.ok(entry?.jwt, "CONNZ shows the user JWT");
      const claims = decodeJwt(entry.jwt);
      assert.equal(claims.iss, signingKey.publicKey);
      assert.equal(claims.nats.issuer_account, op.systemAccount);
      assert.ok(claims.exp !== undefined && claims.iat !== undefined);
      assert.ok(claims.exp - claims.iat <= lifetimeMs / 1000, `exp - iat <= ${lifetimeMs / 1000} s`);
      assert.ok(claims.exp * 1000 <= Date.now() + lifetimeMs);
      assert.equal(conn.expiresAt, claims.exp * 1000);
      await conn.close();
    }
  });

  it("nats-server closes a connection when its user JWT expires, and says so (what renewal avoids)", async () => {
    const user = NKeyPair.generate("user");
    const now = Math.floor(Date.now() / 1000);
    const jwt = signJwt(
      userClaims({
        publicKey: user.publicKey,
        name: "expiring",
        account: op.systemAccount,
        issuer: signingKey.publicKey,
        scoped: false,
        permissions: { pub: { deny: [">"] }, sub: { deny: [">"] } },
        expiresAt: now + 2,
      }),
      signingKey,
      now,
    );
    const watcher = await connect({ servers: server.url, authenticator: credsAuthenticator(op.systemCreds) });
    const reasons: string[] = [];
    watcher.subscribe(`$SYS.ACCOUNT.${op.systemAccount}.DISCONNECT`, {
      callback: (_e, msg: Msg) => {
        const event = msg.json<{ client?: { name?: string }; reason?: string }>();
        if (event.client?.name === "expiring") reasons.push(event.reason ?? "");
      },
    });
    await watcher.flush();
    try {
      const nc = await connect({
        servers: server.url,
        name: "expiring",
        authenticator: jwtAuthenticator(jwt, user.getSeed()),
        maxReconnectAttempts: 0,
      });
      const status = watchStatus(nc);
      await waitFor(async () => nc.isClosed(), {
        what: "the server to close the expired user",
        timeoutMs: 10_000,
        intervalMs: 50,
      });
      assert.ok(
        status.errors().some((e) => /User Authentication Expired/.test(e)),
        status.all.join(", "),
      );
      await waitFor(async () => reasons.length > 0, {
        what: "the disconnect event",
        timeoutMs: 5_000,
        intervalMs: 20,
      });
      // nats.js may reconnect once within the expiry second; the server ends that one too.
      assert.ok(
        reasons.every((r) => r === "Authentication Expired"),
        reasons.join(", "),
      );
    } finally {
      await watcher.close();
    }
  });

  it("renewal with a 10 s lifetime: concurrent pushes and lookups across 3 renewals, zero failed requests", async () => {
    const conn = await startAs(RESOLVER_USER_ROLE, { lifetimeMs: 10_000 });
    const resolver = await resolverOver(conn, 2_000);
    const users = new Set<string>([conn.user]);
    const expired: string[] = [];
    const watcher = await connect({ servers: server.url, authenticator: credsAuthenticator(op.systemCreds) });
    watcher.subscribe(`$SYS.ACCOUNT.${op.systemAccount}.DISCONNECT`, {
      callback: (_e, msg: Msg) => {
        const event = msg.json<{ client?: { name?: string }; reason?: string }>();
        if (event.client?.name === "natsbind-resolver" && event.reason !== "Client Closed")
          expired.push(event.reason ?? "");
      },
    });
    await watcher.flush();
    const accounts = [0, 1, 2, 3].map((i) =>
      projectAccount(op, `renewal-${i}`, Math.floor(Date.now() / 1000)),
    );
    for (const a of accounts) await resolver.push(a.jwt);
    let ok = 0;
    const failures: string[] = [];
    let stop = false;
    const worker = async (i: number): Promise<void> => {
      const a = accounts[i % accounts.length]!;
      for (let n = 0; !stop; n++) {
        try {
          if (n % 2 === 0) await resolver.push(a.jwt);
          else assert.equal(await resolver.lookup(a.account.publicKey), a.jwt);
          if (n % 25 === 0) await resolver.list();
          ok += 1;
          users.add(conn.user);
        } catch (err) {
          failures.push(err instanceof Error ? err.message : String(err));
        }
      }
    };
    const workers = [0, 1, 2, 3, 4, 5].map(worker);
    try {
      await waitFor(async () => conn.counters.renewals >= 3 || failures.length > 0, {
        what: "three renewals",
        timeoutMs: 30_000,
        intervalMs: 100,
      });
    } finally {
      stop = true;
      await Promise.all(workers);
    }
    assert.deepEqual(failures, [], "no request failed");
    assert.ok(conn.counters.renewals >= 3);
    assert.equal(conn.counters.renewalFailures, 0);
    assert.ok(users.size >= 4, `requests went out as ${users.size} users`);
    assert.ok(ok > 100, `${ok} requests`);
    // Each replaced connection was closed by natsbind, never expired by the server.
    await waitFor(async () => conn.retiring === 0, {
      what: "old connections closed",
      timeoutMs: 10_000,
      intervalMs: 50,
    });
    const resolvers = (await connz()).filter(
      (c) => c.name === "natsbind-resolver" && c.authorized_user !== undefined,
    );
    assert.deepEqual(
      resolvers.filter((c) => users.has(c.authorized_user!)).map((c) => c.authorized_user),
      [conn.user],
      "only the current user is still connected",
    );
    await watcher.flush();
    await watcher.close();
    assert.deepEqual(expired, [], "no natsbind connection ended other than by natsbind");
  });

  it("renewal under a ManualClock: the old connection stays for its requests in flight, then closes; at its expiry at the latest", async () => {
    const clock = new ManualClock(Date.now());
    const conn = await startAs(RESOLVER_USER_ROLE, { clock });
    const resolver = await resolverOver(conn);
    const first = conn.current;
    const firstUser = conn.user;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    // A request in flight on the first connection when the renewal comes.
    const inFlight = conn.use(async (nc) => {
      await gate;
      return (await nc.request("$SYS.REQ.SERVER.PING", undefined, { timeout: 2_000 })).json<{
        server: { name: string };
      }>();
    });
    clock.advance(19 * 60_000);
    assert.equal(conn.counters.renewals, 0, "not before a third of the lifetime");
    clock.advance(60_000);
    await waitFor(async () => conn.counters.renewals === 1, {
      what: "the renewal",
      timeoutMs: 5_000,
      intervalMs: 10,
    });
    assert.notEqual(conn.user, firstUser);
    assert.notEqual(conn.current, first);
    assert.equal(first.isClosed(), false, "kept open for its request in flight");
    assert.equal(conn.retiring, 1);
    // New requests go out on the new connection meanwhile.
    assert.ok((await resolver.list()).length > 0);
    release();
    assert.equal((await inFlight).server.name, server.name, "the old request completed");
    await waitFor(async () => first.isClosed() && conn.retiring === 0, {
      what: "the first connection closed",
      timeoutMs: 5_000,
      intervalMs: 10,
    });

    // A request that never settles does not keep a replaced connection past its JWT's expiry.
    const second = conn.current;
    const stuck = conn.use(() => new Promise<never>(() => undefined));
    void stuck;
    clock.advance(20 * 60_000);
    await waitFor(async () => conn.counters.renewals === 2, {
      what: "the second renewal",
      timeoutMs: 5_000,
      intervalMs: 10,
    });
    assert.equal(second.isClosed(), false);
    clock.advance(40 * 60_000 - 1_000);
    await new Promise((r) => setImmediate(r));
    assert.equal(second.isClosed(), false, "open until its JWT expires");
    clock.advance(1_000);
    await waitFor(async () => second.isClosed(), {
      what: "the second connection closed at expiry",
      timeoutMs: 5_000,
      intervalMs: 10,
    });
    assert.deepEqual(await resolver.servers(), [server.name], "the current connection works");
  });

  it("the connection audit follows renewals: each connect and disconnect logged exactly once", async () => {
    const conn = await startAs(CONNECTION_AUDIT_USER_ROLE, { lifetimeMs: 10_000 });
    const lines: AuditEvent[] = [];
    const issued = new IssuedUsers({ clock: systemClock });
    const audit = startConnectionAudit({
      nc: conn.current,
      sink: { write: (e) => void lines.push(e), close: async () => undefined },
      isIssued: (key, seen) => issued.isIssued(key, seen),
      log,
    });
    conn.onRenew((next) => audit.moveTo(next));
    const keys: string[] = [];
    try {
      while (conn.counters.renewals < 2) {
        const creds = roleUserCreds(acc.account.publicKey, acc.ciKey, { name: "churn" });
        const key = parseCreds(new TextDecoder().decode(creds)).user.publicKey;
        issued.add({
          userPublicKey: key,
          account: acc.account.publicKey,
          issuer: acc.ciKey.publicKey,
          expiresAt: Date.now() + 60_000,
        });
        const nc = await connect({
          servers: server.url,
          authenticator: credsAuthenticator(creds),
          name: "churn",
        });
        await nc.close();
        keys.push(key);
        assert.ok(keys.length < 5_000, "renewals keep coming");
      }
      // A timeout here is reported by the comparison below, which names what is missing.
      await waitFor(async () => lines.length >= keys.length * 2, {
        what: "a line for every connect and disconnect",
        timeoutMs: 10_000,
        intervalMs: 20,
      }).catch(() => undefined);
      const seen = lines.map((l) => `${l.event} ${(l as { userPublicKey?: string }).userPublicKey}`).sort();
      const expected = keys.flatMap((k) => [`nats.connect ${k}`, `nats.disconnect ${k}`]).sort();
      assert.deepEqual(seen, expected, "none missing, none twice");
      assert.equal(audit.counters.malformed, 0);
    } finally {
      await audit.stop();
    }
  });

  it("an event delivered on both connections while the audit moves is logged once; the same id on one connection is not a copy", async () => {
    const unrestricted = (): Promise<NatsConnection> =>
      connect({ servers: server.url, authenticator: credsAuthenticator(op.systemCreds) });
    const [oldNc, newNc, publisher] = await Promise.all([unrestricted(), unrestricted(), unrestricted()]);
    const lines: AuditEvent[] = [];
    const issued = new IssuedUsers({ clock: systemClock });
    const calloutUser = NKeyPair.generate("user").publicKey;
    issued.add({
      userPublicKey: calloutUser,
      account: acc.account.publicKey,
      issuer: acc.ciKey.publicKey,
      name: "moving#1",
      expiresAt: Date.now() + 60_000,
    });
    const audit = startConnectionAudit({
      nc: oldNc,
      sink: { write: (e) => void lines.push(e), close: async () => undefined },
      isIssued: () => false,
      calloutUser: (name, seen) => issued.calloutUser(name, seen),
      log,
    });
    const subject = `$SYS.ACCOUNT.${acc.account.publicKey}.CONNECT`;
    const event = (id: string): string =>
      JSON.stringify({
        type: "io.nats.server.advisory.v1.client_connect",
        id,
        timestamp: new Date().toISOString(),
        server: { name: server.name, id: "NID" },
        client: { acc: acc.account.publicKey, user: "moving#1", issuer_key: acc.ciKey.publicKey },
      });
    try {
      await oldNc.flush();
      // The same id twice on one connection: two events (ids are compared only across a move).
      publisher.publish(subject, event("same"));
      publisher.publish(subject, event("same"));
      await publisher.flush();
      await waitFor(async () => audit.counters.written === 2, {
        what: "two lines",
        timeoutMs: 5_000,
        intervalMs: 10,
      });
      // While both connections are subscribed (the move waits on the new one's flush), one event.
      let moved = false;
      const moving = new Proxy(newNc, {
        get(target, prop, receiver) {
          if (prop !== "flush" || moved) return Reflect.get(target, prop, receiver) as unknown;
          return async () => {
            moved = true;
            await target.flush();
            publisher.publish(subject, event("both"));
            await publisher.flush();
            await waitFor(async () => audit.counters.received === 4, {
              what: "the event on both connections",
              timeoutMs: 5_000,
              intervalMs: 10,
            });
          };
        },
      });
      await audit.moveTo(moving);
      assert.equal(audit.counters.duplicates, 1);
      assert.equal(audit.counters.written, 3, "logged once");
      // After the move, events arrive on the new connection only.
      publisher.publish(subject, event("after"));
      await publisher.flush();
      await waitFor(async () => audit.counters.written === 4, {
        what: "the next line",
        timeoutMs: 5_000,
        intervalMs: 10,
      });
      assert.equal(audit.counters.received, 5);
      assert.equal(lines.length, 4);
    } finally {
      await audit.stop();
      await Promise.all([oldNc.close(), newNc.close(), publisher.close()]);
    }
  });

  it("a signing key the system account does not list is refused at connect, with a hint and no seed", async () => {
    const stranger = NKeyPair.generate("account");
    const seed = new TextDecoder().decode(stranger.getSeed());
    seeds.push(seed);
    await assert.rejects(
      RenewingSystemConnection.start({
        servers: server.url,
        issuer: issuer(3_600_000, systemClock, stranger),
        role: RESOLVER_USER_ROLE,
        name: "natsbind-resolver",
        clock: systemClock,
        log,
        connectTimeoutMs: 2_000,
      }),
      (err: unknown) =>
        err instanceof SystemConnectionError &&
        /Authorization Violation/.test(err.message) &&
        err.message.includes(
          `is ${stranger.publicKey} an unscoped signing key in the JWT of system account ${op.systemAccount}?`,
        ) &&
        !err.message.includes(seed) &&
        !/\bS[AU][A-Z2-7]{56}\b/.test(err.message),
    );
  });

  it("a failed renewal keeps the current connection and is retried; a restarted server gets a fresh JWT", async () => {
    const own = await startNatsServer(op.serverOptions);
    try {
      const clock = new ManualClock(Date.now());
      const conn = await startAs(RESOLVER_USER_ROLE, { clock, url: own.url, lifetimeMs: 600_000 });
      const first = conn.current;
      const warnings = (): string[] => logLines.filter((l) => l.includes("renewal failed"));
      const before = warnings().length;
      await own.process().stop();
      clock.advance(200_000);
      await waitFor(async () => conn.counters.renewalFailures >= 1, {
        what: "a failed renewal",
        timeoutMs: 10_000,
        intervalMs: 20,
      });
      assert.equal(conn.current, first, "the current connection stays");
      assert.equal(first.isClosed(), false, "and keeps reconnecting");
      assert.ok(warnings().length > before, "the failure is logged");
      await own.restart();
      // Reconnected with a JWT issued now (the ManualClock's now), and renewed on the retry timer.
      clock.advance(30_000);
      await waitFor(async () => conn.counters.renewals === 1, {
        what: "the retried renewal",
        timeoutMs: 15_000,
        intervalMs: 50,
      });
      const resolver = await NatsResolver.connect({ servers: own.url, connection: conn, timeoutMs: 2_000 });
      assert.deepEqual(await resolver.servers(), [own.name]);
      await waitFor(async () => first.isClosed(), {
        what: "the old connection closed",
        timeoutMs: 5_000,
        intervalMs: 20,
      });
    } finally {
      await own.stop();
    }
  });
});

const AUDIENCE = "https://natsbind.test";
const BINDING = `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: acme}
spec:
  gitlab: {group: acme}
  roles:
    - name: ci
      publish: {allow: ["build.{{project.id}}.>"]}
      subscribe: {allow: ["_INBOX.>", "build.{{project.id}}.>"]}
      ci: {refs: protected}
`;

describe("natsbind run with nats.systemSigningKey (what natsbind init configures)", TIMEOUT, () => {
  let rig: LocalRig | undefined;
  let controller: RunningController | undefined;
  let config: Config;
  let project: { id: number };
  const logLines: string[] = [];

  before(async () => {
    rig = await startLocalRig({ name: "system-user-run" });
    config = rig.config({
      nats: natsConfigSection(rig.op, [rig.server.url], { systemUser: "issued" }),
      credentials: { audience: AUDIENCE, audit: { file: "audit/credentials.log" } },
    });
    assert.equal(config.nats.systemCreds, undefined);
    const acme = rig.sim.createGroup({ name: "Acme", path: "acme" });
    project = rig.sim.createProject({ name: "api", groupId: acme.id });
    await writeFile(join(rig.dir, "bindings", "acme.yaml"), BINDING);
    controller = await runController(config, { log: createLogger({ write: (l) => void logLines.push(l) }) });
  });

  after(async () => {
    await controller?.stop();
    await rig?.stop();
  });

  it("pushes accounts, issues CI credentials and audits their connections, all as issued least-privilege users", async () => {
    const { op, server, sim, resolver } = rig!;
    const keys = new DirectoryKeyStore(config.keys.directory);
    let account = "";
    await waitFor(
      async () => {
        const slot = await keys.get({ binding: "acme", projectId: project.id });
        account = slot?.account ?? "";
        return slot !== undefined && (await resolver.lookup(slot.account)) !== undefined;
      },
      { what: "the project's account pushed by natsbind", timeoutMs: 15_000, intervalMs: 25 },
    );

    const token = sim.mintIdToken({ projectId: project.id, aud: AUDIENCE, extra: { job_id: "31" } });
    const answer = await fetch(`${controller!.url}/v1/credentials`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, accept: "text/plain", "content-type": "application/json" },
      body: JSON.stringify({ role: "ci" }),
    });
    const creds = await answer.text();
    assert.equal(answer.status, 200, creds);
    const job = parseCreds(creds);
    const nc = await connect({
      servers: server.url,
      authenticator: credsAuthenticator(new TextEncoder().encode(creds)),
    });
    await nc.flush();
    await nc.close();
    const auditFile = join(rig!.dir, "audit", "credentials.log");
    await waitFor(
      async () =>
        (await readFile(auditFile, "utf8"))
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l) as { event: string; userPublicKey?: string })
          .some((l) => l.event === "nats.disconnect" && l.userPublicKey === job.user.publicKey),
      { what: "the job's connection in the audit log", timeoutMs: 10_000, intervalMs: 25 },
    );
    assert.ok(account);

    // natsbind's own connections: issued by the system account's signing key, none as system.creds
    // (the one system.creds user connected is this test's own resolver, rig.resolver).
    const sysSigning = await readSeedFile(join(op.dir, INIT_LAYOUT.systemAccountSigningKey), "account");
    const credsUser = parseCreds(new TextDecoder().decode(op.systemCreds)).user.publicKey;
    const res = await httpGet(`${server.monitorUrl}/connz?auth=true&acc=${op.systemAccount}`);
    const connections = (JSON.parse(res.body) as { connections: ConnzEntry[] }).connections ?? [];
    assert.equal(connections.filter((c) => c.authorized_user === credsUser).length, 1, "the test's resolver");
    const natsbind = connections.filter((c) => c.authorized_user !== credsUser);
    assert.deepEqual(natsbind.map((c) => c.name).sort(), ["natsbind-audit", "natsbind-resolver"]);
    for (const c of natsbind) {
      assert.equal(c.issuer_key, sysSigning.publicKey, c.name);
      const claims = decodeJwt(c.jwt!);
      assert.ok(claims.exp! - claims.iat! <= 3_600, `${c.name} lives at most 1 h`);
    }
    const seed = new TextDecoder().decode(sysSigning.getSeed());
    assert.ok(!logLines.some((l) => l.includes(seed)), "the signing key's seed is never logged");
  });
});
