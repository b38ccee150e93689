// nats.connect / nats.disconnect audit lines from a real nats-server in operator mode (full
// resolver): users issued natsbind-style (scoped signing key of a pushed account) connect, publish,
// disconnect and expire; users natsbind did not issue, impostors and forged events yield no line.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { connect, credsAuthenticator, type Msg, type NatsConnection } from "@nats-io/transport-node";
import {
  IssuedUsers,
  openAuditSink,
  startConnectionAudit,
  type ConnectionAudit,
  type OpenedAuditSink,
} from "../../src/credentials/audit.ts";
import { MAX_EVENT_BYTES } from "../../src/credentials/audit-connections.ts";
import { parseCreds } from "../../src/nats/creds.ts";
import type { NKeyPair } from "../../src/nats/keys.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { systemClock } from "../../src/runtime/clock.ts";
import { startNatsServer, type NatsServer } from "../support/nats-server.ts";
import {
  createTestOperator,
  operatorResolver,
  projectAccount,
  roleUserCreds,
  type TestAccount,
  type TestOperator,
} from "../support/operator.ts";
import { removeDir, tempDir, waitFor } from "../support/process.ts";

const TIMEOUT = { timeout: 120_000 };
const TAGS = ["project:42", "pipeline:7", "job:1001", "ref:main", "user:alice"];

interface Job {
  creds: Uint8Array;
  jwt: string;
  user: NKeyPair;
  expiresAt: number;
}

describe("connection audit against nats-server", TIMEOUT, () => {
  let op: TestOperator;
  let server: NatsServer;
  let acc: TestAccount;
  let sys: NatsConnection;
  let dir: string;
  let file: string;
  let sink: OpenedAuditSink;
  let issuedUsers: IssuedUsers;
  let audit: ConnectionAudit;
  const logLines: string[] = [];
  /** Every event on the subjects, seen by a second subscription on the same connection. */
  const witnessed: { subject: string; user: string; sub?: string }[] = [];
  const secrets: string[] = [];

  /** A user of the account's "ci" role, as natsbind's issuer makes one; recorded when `issue`. */
  function job(opts: { issue: boolean; ttlS?: number; tags?: string[] }): Job {
    const expiresAt = Math.floor(Date.now() / 1000) + (opts.ttlS ?? 600);
    const creds = roleUserCreds(acc.account.publicKey, acc.ciKey, {
      name: "group/project#1001",
      tags: opts.tags ?? TAGS,
      expiresAt,
    });
    const { jwt, user } = parseCreds(new TextDecoder().decode(creds));
    secrets.push(jwt, new TextDecoder().decode(user.getSeed()));
    if (opts.issue) {
      issuedUsers.add({
        userPublicKey: user.publicKey,
        account: acc.account.publicKey,
        issuer: acc.ciKey.publicKey,
        expiresAt: expiresAt * 1000,
      });
    }
    return { creds, jwt, user, expiresAt };
  }

  const connectJob = (j: Job, name: string): Promise<NatsConnection> =>
    connect({
      servers: server.url,
      name,
      authenticator: credsAuthenticator(j.creds),
      maxReconnectAttempts: 0,
      timeout: 5_000,
    });

  async function auditLines(): Promise<Record<string, unknown>[]> {
    await sink.flush();
    const text = await readFile(file, "utf8");
    return text
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  const linesOf = async (user: string): Promise<Record<string, unknown>[]> =>
    (await auditLines()).filter((l) => l.userPublicKey === user);

  /** Waits until the witness subscription saw `count` events of kind for `user` (by JWT subject). */
  const witness = (kind: "CONNECT" | "DISCONNECT", user: string, count = 1): Promise<void> =>
    waitFor(
      async () => witnessed.filter((w) => w.subject.endsWith(`.${kind}`) && w.sub === user).length >= count,
      {
        what: `${kind} event of ${user}`,
        timeoutMs: 10_000,
        intervalMs: 20,
      },
    );

  before(async () => {
    op = await createTestOperator();
    server = await startNatsServer(op.serverOptions);
    acc = projectAccount(op, "group/project");
    const resolver = await operatorResolver(op, server.url);
    const pushed = await resolver.push(acc.jwt);
    assert.ok(pushed.replies.every((r) => r.code === 200));
    await resolver.close();

    dir = await tempDir("audit");
    file = join(dir, "audit", "audit.log");
    const log = createLogger({ level: "debug", write: (l) => logLines.push(l) });
    sink = await openAuditSink({ file, clock: systemClock, log });
    issuedUsers = new IssuedUsers({ clock: systemClock });
    // natsbind's own system user, as `natsbind init` makes it (test/support/operator.ts).
    sys = await connect({ servers: server.url, authenticator: credsAuthenticator(op.systemCreds) });
    audit = startConnectionAudit({
      nc: sys,
      sink,
      isIssued: (key, seen) => issuedUsers.isIssued(key, seen),
      calloutUser: (name, seen) => issuedUsers.calloutUser(name, seen),
      log,
    });
    const record = (_err: unknown, msg: Msg): void => {
      try {
        const e = JSON.parse(msg.string()) as { client?: { user?: string; jwt?: string } };
        const jwt = e.client?.jwt;
        const sub = jwt
          ? (JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString()) as { sub: string }).sub
          : undefined;
        witnessed.push({ subject: msg.subject, user: e.client?.user ?? "", ...(sub ? { sub } : {}) });
      } catch {
        witnessed.push({ subject: msg.subject, user: "" });
      }
    };
    // Subscribed after the audit's, on the same connection: it sees each event after the audit did.
    sys.subscribe("$SYS.ACCOUNT.*.CONNECT", { callback: record });
    sys.subscribe("$SYS.ACCOUNT.*.DISCONNECT", { callback: record });
    await sys.flush();
  });

  after(async () => {
    await audit?.stop();
    await sys?.close();
    await sink?.close();
    await server?.stop();
    await op?.remove();
    if (dir) await removeDir(dir);
  });

  it("an issued user connects, publishes N messages, disconnects: nats.connect and nats.disconnect with key, tags, counts, reason", async () => {
    const j = job({ issue: true });
    const nc = await connectJob(j, "ci-job-1001");
    const received: string[] = [];
    nc.subscribe("build.42.>", {
      callback: (_e, m) => {
        received.push(m.string());
      },
    });
    const N = 5;
    for (let i = 0; i < N; i++) nc.publish(`build.42.step${i}`, "0123456789");
    await nc.flush();
    await waitFor(async () => received.length === N, {
      what: "own messages back",
      timeoutMs: 5_000,
      intervalMs: 10,
    });
    await nc.close();
    await witness("DISCONNECT", j.user.publicKey);

    const got = await linesOf(j.user.publicKey);
    assert.deepEqual(
      got.map((l) => l.event),
      ["nats.connect", "nats.disconnect"],
    );
    const [connected, disconnected] = got as [Record<string, unknown>, Record<string, unknown>];
    const common = {
      account: acc.account.publicKey,
      userPublicKey: j.user.publicKey,
      name: "ci-job-1001",
      tags: TAGS,
      server: server.name,
      clientAddress: "127.0.0.1",
    };
    assert.deepEqual(
      { ...connected, time: undefined },
      { event: "nats.connect", time: undefined, ...common },
    );
    assert.deepEqual(
      { ...disconnected, time: undefined },
      {
        event: "nats.disconnect",
        time: undefined,
        ...common,
        // From the client's side: what it published, and what the server delivered to it.
        sent: { msgs: N, bytes: N * 10 },
        received: { msgs: N, bytes: N * 10 },
        reason: "Client Closed",
      },
    );
    for (const line of got) assert.match(String(line.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.ok(Date.parse(String(disconnected.time)) >= Date.parse(String(connected.time)));
  });

  it("a user natsbind did not issue (same account and role key) yields no line", async () => {
    const stranger = job({ issue: false });
    const before = audit.counters.ignored;
    const nc = await connectJob(stranger, "not-issued");
    nc.publish("build.42.x", "hi");
    await nc.close();
    await witness("DISCONNECT", stranger.user.publicKey);
    assert.deepEqual(await linesOf(stranger.user.publicKey), []);
    assert.ok(audit.counters.ignored >= before + 2);
  });

  it("an impostor claiming an issued user's key in CONNECT's nkey or user field yields no line", async () => {
    const victim = job({ issue: true });
    const impostor = job({ issue: false });
    const linesBefore = (await linesOf(victim.user.publicKey)).length;
    for (const claim of [{ nkey: victim.user.publicKey }, { user: victim.user.publicKey }]) {
      const nc = await connect({
        servers: server.url,
        maxReconnectAttempts: 0,
        authenticator: (nonce?: string) => ({
          jwt: impostor.jwt,
          sig: Buffer.from(impostor.user.sign(new TextEncoder().encode(nonce ?? ""))).toString("base64url"),
          ...claim,
        }),
      });
      await nc.close();
    }
    await witness("DISCONNECT", impostor.user.publicKey, 2);
    // The server does report the impostor under the victim's key: the reason isIssued is asked
    // about the JWT's subject instead.
    const spoofed = witnessed.filter((w) => w.sub === impostor.user.publicKey);
    assert.ok(spoofed.length >= 4 && spoofed.every((w) => w.user === victim.user.publicKey));
    assert.equal((await linesOf(victim.user.publicKey)).length, linesBefore);
    assert.deepEqual(await linesOf(impostor.user.publicKey), []);
  });

  it('a user JWT that expires is disconnected with reason "Authentication Expired"', async () => {
    const j = job({ issue: true, ttlS: 2 });
    const nc = await connectJob(j, "short-lived");
    const closed = nc.closed();
    await witness("DISCONNECT", j.user.publicKey);
    await closed;
    const got = await linesOf(j.user.publicKey);
    const disconnect = got.find((l) => l.event === "nats.disconnect");
    assert.ok(disconnect, "a nats.disconnect line");
    assert.equal(disconnect.reason, "Authentication Expired");
    assert.ok(Date.parse(String(disconnect.time)) >= j.expiresAt * 1000 - 1_000, "at the JWT's expiry");
  });

  it("malformed and forged system events are dropped and counted; a callout user is found by its name", async () => {
    const account = acc.account.publicKey;
    const subject = `$SYS.ACCOUNT.${account}.CONNECT`;
    const callout = job({ issue: false });
    issuedUsers.add({
      userPublicKey: callout.user.publicKey,
      account,
      issuer: acc.ciKey.publicKey,
      name: "group/project#2002",
      tags: ["project:42", "job:2002"],
      expiresAt: callout.expiresAt * 1000,
    });
    const good = {
      type: "io.nats.server.advisory.v1.client_connect",
      id: "x",
      timestamp: new Date().toISOString(),
      server: { name: server.name, id: "NID" },
      client: {
        acc: account,
        user: "group/project#2002",
        issuer_key: acc.ciKey.publicKey,
        host: "10.1.2.3",
        kind: "Client",
      },
    };
    const victim = job({ issue: true });
    const bad: [string, Uint8Array | string][] = [
      ["not JSON", "{"],
      ["not UTF-8", new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])],
      ["too large", JSON.stringify({ ...good, pad: "x".repeat(MAX_EVENT_BYTES) })],
      ["nested", `${"[".repeat(100)}${"]".repeat(100)}`],
      ["wrong type", JSON.stringify({ ...good, type: "io.nats.server.advisory.v1.client_disconnect" })],
      ["account differs", JSON.stringify({ ...good, client: { ...good.client, acc: "AOTHER" } })],
      ["garbage JWT", JSON.stringify({ ...good, client: { ...good.client, jwt: "eyJnot.a.jwt" } })],
      ["tags not strings", JSON.stringify({ ...good, client: { ...good.client, tags: [1, 2] } })],
      ["bad time", JSON.stringify({ ...good, timestamp: "soon" })],
      // A JWT whose subject is an issued user, presented under another issuer key.
      [
        "issuer differs",
        JSON.stringify({
          ...good,
          client: { ...good.client, jwt: victim.jwt, issuer_key: acc.account.publicKey },
        }),
      ],
    ];
    const malformedBefore = audit.counters.malformed;
    const writtenBefore = audit.counters.written;
    for (const [, payload] of bad) sys.publish(subject, payload);
    // Without a JWT, a user key in client.user proves nothing: no line.
    sys.publish(
      subject,
      JSON.stringify({ ...good, client: { ...good.client, user: victim.user.publicKey } }),
    );
    // A callout user: no JWT, no tags, client.user is the name natsbind's response gave it.
    sys.publish(subject, JSON.stringify(good));
    await sys.flush();
    await waitFor(async () => audit.counters.written === writtenBefore + 1, {
      what: "the callout line",
      timeoutMs: 5_000,
      intervalMs: 10,
    });
    assert.equal(audit.counters.malformed - malformedBefore, bad.length, "every bad message counted once");
    const lines = await linesOf(callout.user.publicKey);
    assert.equal(lines.length, 1);
    assert.deepEqual(
      { ...lines[0], time: undefined },
      {
        event: "nats.connect",
        time: undefined,
        account,
        userPublicKey: callout.user.publicKey,
        tags: ["project:42", "job:2002"],
        server: server.name,
        clientAddress: "10.1.2.3",
      },
    );
    assert.equal((await linesOf(victim.user.publicKey)).length, 0);
    const warnings = logLines.filter((l) => l.includes("connection audit: dropped a malformed system event"));
    assert.equal(warnings.length, 1, "logged once a minute, not once per message");
  });

  it("no line and no log record holds a user JWT or a seed", async () => {
    const text = await readFile(file, "utf8");
    assert.ok(text.length > 0);
    const logs = logLines.join("");
    for (const secret of secrets) {
      assert.ok(!text.includes(secret), "a secret in the audit file");
      assert.ok(!logs.includes(secret), "a secret in the log");
    }
    assert.doesNotMatch(text, /eyJ|S[UAO][A-Z2-7]{56}/);
  });

  it("stop() unsubscribes", async () => {
    await audit.stop();
    const before = audit.counters.received;
    const j = job({ issue: true });
    const nc = await connectJob(j, "after-stop");
    await nc.close();
    await witness("DISCONNECT", j.user.publicKey);
    assert.equal(audit.counters.received, before);
    assert.deepEqual(await linesOf(j.user.publicKey), []);
  });
});
