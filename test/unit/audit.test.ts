// The audit sink (file and stream) and the set of issued users, against a real file system.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmod, mkdir, mkdtemp, open, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import {
  AuditSinkError,
  IssuedUsers,
  openAuditSink,
  renderAuditLine,
  type AuditFileHandle,
  type OpenAuditFile,
  type OpenedAuditSink,
} from "../../src/credentials/audit.ts";
import type { AuditEvent } from "../../src/credentials/types.ts";
import { formatCreds } from "../../src/nats/creds.ts";
import { signJwt, userClaims } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { createLogger, type Logger } from "../../src/observability/logger.ts";
import { ManualClock } from "../../src/runtime/clock.ts";

let root: string;
let n = 0;
const freshFile = (): string => join(root, `audit-${++n}`, "audit.log");

before(async () => {
  root = await mkdtemp(join(tmpdir(), "natsbind-audit-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

function capture(): { log: Logger; records: () => Record<string, unknown>[] } {
  const lines: string[] = [];
  return {
    log: createLogger({ level: "debug", write: (l) => lines.push(l) }),
    records: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

type CredentialEvent = Extract<AuditEvent, { event: "credentials.issued" | "credentials.refused" }>;

function issued(i: number, extra: Partial<CredentialEvent> = {}): CredentialEvent {
  return {
    event: "credentials.issued",
    time: "2026-01-01T00:00:00.000Z",
    via: "exchange",
    client: "10.0.0.1",
    projectId: 42,
    projectPath: "group/project",
    pipelineId: 7,
    jobId: 1000 + i,
    ref: "main",
    refProtected: true,
    user: "alice",
    role: "ci",
    account: "A".padEnd(56, "B"),
    userPublicKey: "U".padEnd(56, "C"),
    expiresAt: "2026-01-01T00:10:00.000Z",
    ...extra,
  };
}

async function lines(file: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(file, "utf8");
  assert.ok(text === "" || text.endsWith("\n"), "the file ends with a whole line");
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/**
 * A real file handle with counters and controls: stall the next write until released, fail
 * writes (optionally after writing part of the buffer), fail fsync, fail chmod.
 */
class FileProbe {
  writes = 0;
  syncs = 0;
  /** Bytes handed to each write call. */
  writeSizes: number[] = [];
  stall: { entered: ReturnType<typeof deferred>; release: ReturnType<typeof deferred> } | undefined;
  /** Fail the next N writes; with `partialBytes`, the first of them writes that many bytes first. */
  failWrites = 0;
  partialBytes = 0;
  failSync = 0;
  failChmod = false;
  chmods: number[] = [];

  stallNextWrite(): { entered: Promise<void>; release: () => void } {
    const s = { entered: deferred(), release: deferred() };
    this.stall = s;
    return { entered: s.entered.promise, release: s.release.resolve };
  }

  readonly openFile: OpenAuditFile = async (path, flags, mode) => {
    const real = await open(path, flags, mode);
    const handle: AuditFileHandle = {
      write: async (buffer, offset, length) => {
        this.writes += 1;
        this.writeSizes.push(length);
        const stall = this.stall;
        if (stall) {
          this.stall = undefined;
          stall.entered.resolve();
          await stall.release.promise;
        }
        if (this.failWrites > 0) {
          this.failWrites -= 1;
          if (this.partialBytes > 0) {
            const part = this.partialBytes;
            this.partialBytes = 0;
            return real.write(buffer, offset, Math.min(part, length));
          }
          throw Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
        }
        return real.write(buffer, offset, length);
      },
      sync: async () => {
        this.syncs += 1;
        if (this.failSync > 0) {
          this.failSync -= 1;
          throw Object.assign(new Error("EIO: i/o error"), { code: "EIO" });
        }
        await real.sync();
      },
      stat: () => real.stat(),
      chmod: async (m) => {
        this.chmods.push(m);
        if (this.failChmod)
          throw Object.assign(new Error("EPERM: operation not permitted"), { code: "EPERM" });
        await real.chmod(m);
      },
      close: () => real.close(),
    };
    return handle;
  };
}

/** Lets queued microtasks and I/O callbacks run. */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

async function until(what: string, check: () => boolean): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (check()) return;
    await settle();
  }
  assert.fail(`never happened: ${what}`);
}

describe("audit file sink", () => {
  it("creates the file 0600 (and its directory 0700) and writes one JSON line per event, event and time first", async () => {
    const file = freshFile();
    const clock = new ManualClock();
    const sink = await openAuditSink({ file, clock, log: capture().log });
    sink.write(issued(1));
    sink.write({
      event: "nats.disconnect",
      time: "2026-01-01T00:05:00.000Z",
      account: "A".padEnd(56, "B"),
      userPublicKey: "U".padEnd(56, "C"),
      tags: ["project:42", "job:1001"],
      sent: { msgs: 3, bytes: 30 },
      received: { msgs: 1, bytes: 5 },
      reason: "Client Closed",
    });
    await sink.close();
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.equal((await stat(join(file, ".."))).mode & 0o777, 0o700);
    const text = await readFile(file, "utf8");
    for (const line of text.trimEnd().split("\n")) assert.match(line, /^\{"event":"[a-z.]+","time":"[^"]+",/);
    const [a, b] = await lines(file);
    assert.deepEqual(a, { ...issued(1) });
    assert.deepEqual(b, {
      event: "nats.disconnect",
      time: "2026-01-01T00:05:00.000Z",
      account: "A".padEnd(56, "B"),
      userPublicKey: "U".padEnd(56, "C"),
      tags: ["project:42", "job:1001"],
      sent: { msgs: 3, bytes: 30 },
      received: { msgs: 1, bytes: 5 },
      reason: "Client Closed",
    });
    assert.deepEqual(sink.counters, { written: 2, dropped: 0, batches: 1, failures: 0, gaps: 0 });
  });

  it("appends across reopen, never truncates", async () => {
    const file = freshFile();
    const clock = new ManualClock();
    const first = await openAuditSink({ file, clock, log: capture().log });
    first.write(issued(1));
    first.write(issued(2));
    await first.close();
    const second = await openAuditSink({ file, clock, log: capture().log });
    second.write(issued(3));
    await second.close();
    assert.deepEqual(
      (await lines(file)).map((l) => l.jobId),
      [1001, 1002, 1003],
    );
  });

  it("tightens an existing file open to others to 0600 and logs it", async () => {
    const file = freshFile();
    const first = await openAuditSink({ file, clock: new ManualClock(), log: capture().log });
    await first.close();
    await chmod(file, 0o644);
    const { log, records } = capture();
    const sink = await openAuditSink({ file, clock: new ManualClock(), log });
    await sink.close();
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    const warn = records().find((r) => r.msg === "audit file was open to other users: made 0600");
    assert.ok(warn, "the change is logged");
    assert.equal(warn.from, "0644");
    assert.equal(warn.to, "0600");
  });

  it("refuses to start when an open file cannot be made 0600", async () => {
    const file = freshFile();
    await (await openAuditSink({ file, clock: new ManualClock(), log: capture().log })).close();
    await chmod(file, 0o666);
    const probe = new FileProbe();
    probe.failChmod = true;
    await assert.rejects(
      openAuditSink({ file, clock: new ManualClock(), log: capture().log, openFile: probe.openFile }),
      (err: unknown) =>
        err instanceof AuditSinkError &&
        err.message.includes(file) &&
        err.message.includes("0666") &&
        err.message.includes("EPERM"),
    );
  });

  it("refuses what is not a regular file: a directory, a FIFO without a reader (without hanging)", async () => {
    const dir = join(root, `dir-${++n}`);
    await mkdir(dir);
    await assert.rejects(
      openAuditSink({ file: dir, clock: new ManualClock(), log: capture().log }),
      (err: unknown) => err instanceof AuditSinkError && /EISDIR|not a regular file/.test(err.message),
    );
    const fifo = join(root, `fifo-${++n}`);
    execFileSync("mkfifo", [fifo]);
    await assert.rejects(
      openAuditSink({ file: fifo, clock: new ManualClock(), log: capture().log }),
      (err: unknown) => err instanceof AuditSinkError && /ENXIO|not a regular file/.test(err.message),
    );
  });

  it("group commit: events written in one turn share a batch; events arriving during a write+fsync form the next", async () => {
    const file = freshFile();
    const probe = new FileProbe();
    const sink = await openAuditSink({
      file,
      clock: new ManualClock(),
      log: capture().log,
      openFile: probe.openFile,
    });
    for (let i = 1; i <= 5; i++) sink.write(issued(i));
    await sink.flush();
    assert.equal(probe.writes, 1);
    assert.equal(probe.syncs, 1);
    assert.equal(sink.counters.batches, 1);

    const stall = probe.stallNextWrite();
    sink.write(issued(6));
    await stall.entered; // batch 2 (one line) is in flight
    for (let i = 7; i <= 20; i++) sink.write(issued(i));
    await settle();
    assert.equal(probe.writes, 2, "nothing else is written while a batch is in flight");
    assert.equal(sink.buffered, 15);
    stall.release();
    await sink.flush();
    assert.equal(probe.writes, 3, "the 14 events that waited went out in one write");
    assert.equal(probe.syncs, 3, "one fsync per batch");
    assert.equal(sink.counters.batches, 3);
    assert.equal(sink.counters.written, 20);
    await sink.close();
    assert.deepEqual(
      (await lines(file)).map((l) => l.jobId),
      Array.from({ length: 20 }, (_, i) => 1001 + i),
    );
  });

  it("bounded buffer: when the disk stalls, new events are dropped, counted, logged, and the gap is written into the log", async () => {
    const file = freshFile();
    const probe = new FileProbe();
    const { log, records } = capture();
    const clock = new ManualClock();
    const sink = await openAuditSink({ file, clock, log, openFile: probe.openFile, maxBufferedLines: 5 });
    const stall = probe.stallNextWrite();
    sink.write(issued(1));
    await stall.entered;
    assert.equal(sink.accepting(), true);
    for (let i = 2; i <= 10; i++) sink.write(issued(i));
    assert.equal(sink.buffered, 5, "the bound holds");
    assert.equal(sink.counters.dropped, 5);
    assert.equal(sink.accepting(), false, "the issuer is told to stop issuing");
    const drops = records().filter(
      (r) =>
        r.msg === "audit events dropped: the audit buffer is full (the disk or stream is not keeping up)",
    );
    assert.equal(drops.length, 1, "logged once, not once per event");
    assert.equal(drops[0]!.level, "error");

    stall.release();
    await sink.flush();
    assert.equal(sink.accepting(), true);
    sink.write(issued(11));
    await sink.close();
    const written = await lines(file);
    assert.deepEqual(
      written.map((l) => (l.event === "audit.dropped" ? `gap ${String(l.dropped)}` : l.jobId)),
      [1001, 1002, 1003, 1004, 1005, "gap 5", 1011],
    );
    assert.equal(written[5]!.time, new Date(clock.now()).toISOString());
    assert.deepEqual(sink.counters, { written: 6, dropped: 5, batches: 3, failures: 0, gaps: 1 });
  });

  it("bounds bytes too", async () => {
    const probe = new FileProbe();
    const big = (i: number): AuditEvent => issued(i, { message: "x".repeat(800) });
    const lineBytes = Buffer.byteLength(renderAuditLine(big(1), () => 0)!);
    const sink = await openAuditSink({
      file: freshFile(),
      clock: new ManualClock(),
      log: capture().log,
      openFile: probe.openFile,
      maxBufferedBytes: 2 * lineBytes + 10,
    });
    const stall = probe.stallNextWrite();
    sink.write(big(1));
    await stall.entered;
    sink.write(big(2));
    sink.write(big(3));
    assert.equal(sink.counters.dropped, 1);
    stall.release();
    await sink.close();
    assert.equal(sink.counters.written, 2);
  });

  it("a failed write is retried with backoff from the byte where it stopped: no line lost, doubled or cut", async () => {
    const file = freshFile();
    const probe = new FileProbe();
    const clock = new ManualClock();
    const { log, records } = capture();
    const sink = await openAuditSink({ file, clock, log, openFile: probe.openFile });
    // A short write of 37 bytes, then ENOSPC; the retry fails again; the second retry succeeds.
    probe.failWrites = 3;
    probe.partialBytes = 37;
    for (let i = 1; i <= 3; i++) sink.write(issued(i));
    await until("the first write fails", () => sink.counters.failures === 1);
    assert.equal(sink.accepting(), false, "failing writes: stop issuing");
    assert.equal(sink.counters.written, 0);
    assert.deepEqual(clock.pendingTimers(), [clock.now() + 1_000], "retry in 1 s");
    sink.write(issued(4)); // queued behind the failed batch
    clock.advance(1_000);
    await until("the second write fails", () => sink.counters.failures === 2);
    assert.deepEqual(clock.pendingTimers(), [clock.now() + 2_000], "then 2 s");
    clock.advance(2_000);
    await sink.flush();
    assert.equal(sink.accepting(), true);
    assert.equal(probe.syncs, 2, "the retried batch and the next one");
    await sink.close();
    assert.deepEqual(
      (await lines(file)).map((l) => l.jobId),
      [1001, 1002, 1003, 1004],
    );
    const [whole, ...rest] = probe.writeSizes;
    assert.deepEqual(
      rest.slice(0, 3).map((size) => whole! - size),
      [37, 37, 37],
      "every retry starts at byte 37 of the batch",
    );
    assert.equal(probe.writeSizes.length, 5, "then the batch of the event that waited");
    assert.ok(records().some((r) => r.msg === "audit log write failed; retrying from where it stopped"));
    assert.ok(records().some((r) => r.msg === "audit log writes work again"));
  });

  it("a failed fsync is counted and logged; the lines are not written twice", async () => {
    const file = freshFile();
    const probe = new FileProbe();
    const { log, records } = capture();
    const sink = await openAuditSink({ file, clock: new ManualClock(), log, openFile: probe.openFile });
    probe.failSync = 1;
    sink.write(issued(1));
    await sink.flush();
    sink.write(issued(2));
    await sink.close();
    assert.equal(sink.counters.failures, 1);
    assert.deepEqual(
      (await lines(file)).map((l) => l.jobId),
      [1001, 1002],
    );
    assert.ok(
      records().some((r) => r.level === "error" && String(r.msg).startsWith("audit log fsync failed")),
    );
  });

  it("close() flushes what is buffered; later writes are dropped and counted", async () => {
    const file = freshFile();
    const probe = new FileProbe();
    const sink = await openAuditSink({
      file,
      clock: new ManualClock(),
      log: capture().log,
      openFile: probe.openFile,
    });
    const stall = probe.stallNextWrite();
    sink.write(issued(1));
    await stall.entered;
    sink.write(issued(2));
    sink.write(issued(3));
    const closing = sink.close();
    assert.equal(sink.accepting(), false);
    sink.write(issued(4));
    stall.release();
    await closing;
    assert.deepEqual(
      (await lines(file)).map((l) => l.jobId),
      [1001, 1002, 1003],
    );
    assert.equal(sink.counters.written, 3);
    assert.equal(sink.counters.dropped, 1);
    assert.equal(probe.syncs, 2);
  });

  it("close() on a dead disk gives up after one last attempt and counts what it could not write", async () => {
    const probe = new FileProbe();
    const clock = new ManualClock();
    const { log, records } = capture();
    const sink = await openAuditSink({ file: freshFile(), clock, log, openFile: probe.openFile });
    probe.failWrites = 100;
    sink.write(issued(1));
    sink.write(issued(2));
    await until("the write fails", () => sink.counters.failures === 1);
    await sink.close();
    assert.equal(sink.counters.failures, 2, "one last attempt at close, no backoff");
    assert.equal(sink.counters.dropped, 2);
    assert.equal(sink.buffered, 0);
    assert.deepEqual(clock.pendingTimers(), []);
    assert.ok(
      records().some((r) => r.msg === "audit log closed with events it could not write" && r.dropped === 2),
    );
  });

  it("close() does not wait forever for a write that never returns", async () => {
    const probe = new FileProbe();
    const clock = new ManualClock();
    const sink = await openAuditSink({
      file: freshFile(),
      clock,
      log: capture().log,
      openFile: probe.openFile,
    });
    const stall = probe.stallNextWrite();
    sink.write(issued(1));
    await stall.entered;
    sink.write(issued(2));
    const closing = sink.close();
    await settle();
    clock.advance(10_000);
    await closing;
    assert.equal(sink.counters.dropped, 2);
    stall.release(); // the stuck write may finish later; nothing breaks
    await settle();
  });

  it("redaction: a seed, creds, a JWT or a token planted in a field never reaches the file; fields AuditEvent lacks are not written", async () => {
    const file = freshFile();
    const account = NKeyPair.generate("account");
    const user = NKeyPair.generate("user");
    const jwt = signJwt(
      userClaims({
        publicKey: user.publicKey,
        name: "u",
        account: account.publicKey,
        issuer: account.publicKey,
        scoped: false,
      }),
      account,
      1_700_000_000,
    );
    const seed = new TextDecoder().decode(user.getSeed());
    const accountSeed = new TextDecoder().decode(account.getSeed());
    const creds = formatCreds(jwt, user);
    const glpat = "glpat-abcdefghij0123456789XYZ";
    const idToken = `eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwcm9qZWN0X3BhdGg6Zy9wIn0.${"s".repeat(40)}`;
    const sink = await openAuditSink({ file, clock: new ManualClock(), log: capture().log });
    sink.write(
      issued(1, {
        projectPath: `group/${seed}`,
        message: `bad token ${idToken} and ${jwt}`,
        ref: glpat,
        user: accountSeed,
        environment: Buffer.from(seed).toString("base64"),
      }),
    );
    sink.write({
      event: "nats.connect",
      time: "2026-01-01T00:00:00.000Z",
      account: account.publicKey,
      userPublicKey: user.publicKey,
      name: creds,
      tags: [`ref:${seed}`, "project:42", `Bearer ${idToken}`],
      // Not AuditEvent fields: a caller that cast its way past the type.
      ...({ token: idToken, jwt, seed, creds } as object),
    } as AuditEvent);
    await sink.close();
    const text = await readFile(file, "utf8");
    for (const secret of [seed, accountSeed, jwt, idToken, glpat, creds, jwt.split(".")[1]!, "NKEY SEED"]) {
      assert.ok(!text.includes(secret), `secret in the audit file: ${secret.slice(0, 12)}…`);
    }
    const [a, b] = await lines(file);
    assert.equal(a!.projectPath, "group/[REDACTED]");
    assert.equal(a!.ref, "[REDACTED]");
    assert.equal(a!.user, "[REDACTED]");
    assert.equal(a!.environment, "[REDACTED]");
    assert.equal(b!.userPublicKey, user.publicKey, "public keys are kept");
    assert.equal(b!.account, account.publicKey);
    assert.deepEqual(b!.tags, ["ref:[REDACTED]", "project:42", "Bearer [REDACTED]"]);
    for (const field of ["token", "jwt", "seed", "creds"])
      assert.ok(!(field in b!), `${field} is not written`);
  });

  it("fields of the wrong type are left out, strings are cut, tags bounded, an unknown event is dropped and counted", async () => {
    const clock = new ManualClock();
    const line = renderAuditLine(
      {
        ...issued(1),
        time: "yesterday",
        projectId: "42" as unknown as number,
        refProtected: "true" as unknown as boolean,
        projectPath: "p".repeat(10_000),
      },
      () => clock.now(),
    );
    const parsed = JSON.parse(line!) as Record<string, unknown>;
    assert.equal(
      parsed.time,
      new Date(clock.now()).toISOString(),
      "a time that is not ISO is replaced by the clock's",
    );
    assert.ok(!("projectId" in parsed) && !("refProtected" in parsed));
    assert.ok(String(parsed.projectPath).length < 2_100);
    const tags = JSON.parse(
      renderAuditLine(
        {
          event: "nats.connect",
          time: "2026-01-01T00:00:00Z",
          account: "A",
          userPublicKey: "U",
          tags: Array.from({ length: 100 }, (_, i) => `t${i}`),
          sent: { msgs: -1, bytes: 2 },
        },
        () => 0,
      )!,
    ) as { tags: string[]; sent?: unknown };
    assert.equal(tags.tags.length, 65);
    assert.equal(tags.tags[64], "[36 more]");
    assert.equal(tags.sent, undefined, "negative counts are not written");

    const sink = await openAuditSink({ file: freshFile(), clock, log: capture().log });
    sink.write({ event: "credentials.whatever", time: "x" } as unknown as AuditEvent);
    await sink.close();
    assert.equal(sink.counters.dropped, 1);
    assert.equal(sink.counters.written, 0);
  });
});

describe("audit stream sink (stdout)", () => {
  it("writes one JSON line per event to the stream", async () => {
    const out = new PassThrough();
    const chunks: Buffer[] = [];
    out.on("data", (c: Buffer) => chunks.push(c));
    const sink: OpenedAuditSink = await openAuditSink({
      stdout: out,
      clock: new ManualClock(),
      log: capture().log,
    });
    assert.equal(sink.target, "stdout");
    for (let i = 1; i <= 3; i++) sink.write(issued(i));
    await sink.close();
    const text = Buffer.concat(chunks).toString("utf8");
    const got = text.trimEnd().split("\n");
    assert.equal(got.length, 3);
    for (const l of got)
      assert.match(l, /^\{"event":"credentials.issued","time":"2026-01-01T00:00:00.000Z",/);
    assert.equal(sink.counters.written, 3);
    assert.equal(out.listenerCount("error"), 0, "its error listener is removed at close");
  });

  it("a broken stream does not throw into the caller: writes fail, are retried, and the buffer bound holds", async () => {
    const out = new PassThrough();
    out.destroy(); // writes now fail (ERR_STREAM_DESTROYED)
    const clock = new ManualClock();
    const sink = await openAuditSink({ stdout: out, clock, log: capture().log, maxBufferedLines: 3 });
    for (let i = 1; i <= 5; i++) sink.write(issued(i));
    await until("the write fails", () => sink.counters.failures >= 1);
    assert.equal(sink.counters.dropped, 2);
    assert.equal(sink.accepting(), false);
    await sink.close();
    assert.equal(sink.counters.dropped, 5);
  });
});

describe("IssuedUsers", () => {
  const account = NKeyPair.generate("account").publicKey;
  const role = NKeyPair.generate("account").publicKey;
  const other = NKeyPair.generate("account").publicKey;
  const userKey = (): string => NKeyPair.generate("user").publicKey;

  it("knows an issued user in its account and signing key until exp + margin", () => {
    const clock = new ManualClock();
    const users = new IssuedUsers({ clock, marginMs: 60_000 });
    const u = userKey();
    users.add({ userPublicKey: u, account, issuer: role, expiresAt: clock.now() + 600_000 });
    assert.equal(users.isIssued(u), true);
    assert.equal(users.isIssued(u, { account, issuerKey: role }), true);
    assert.equal(users.isIssued(u, { account: other, issuerKey: role }), false, "another account");
    assert.equal(users.isIssued(u, { account, issuerKey: other }), false, "another signing key");
    assert.equal(users.isIssued(userKey(), { account, issuerKey: role }), false);
    clock.advance(660_000);
    assert.equal(users.isIssued(u), true, "still within the margin");
    clock.advance(1);
    assert.equal(users.isIssued(u), false);
    assert.equal(users.size, 0);
    assert.equal(users.counters.expired, 1);
  });

  it("is bounded: the oldest entry is evicted first and counted; re-adding makes an entry young", () => {
    const clock = new ManualClock();
    const users = new IssuedUsers({ clock, maxEntries: 3 });
    const keys = Array.from({ length: 5 }, userKey);
    const add = (k: string): void =>
      users.add({ userPublicKey: k, account, issuer: role, expiresAt: clock.now() + 600_000 });
    add(keys[0]!);
    add(keys[1]!);
    add(keys[2]!);
    add(keys[0]!); // now the youngest
    add(keys[3]!);
    assert.equal(users.size, 3);
    assert.deepEqual(
      keys.map((k) => users.isIssued(k)),
      [true, false, true, true, false],
    );
    assert.equal(users.counters.evicted, 1);
  });

  it("sweeps expired entries wherever they are, at most once a minute", () => {
    const clock = new ManualClock();
    const users = new IssuedUsers({ clock, marginMs: 0 });
    const long = userKey();
    users.add({ userPublicKey: long, account, issuer: role, expiresAt: clock.now() + 3_600_000 });
    for (let i = 0; i < 10; i++)
      users.add({ userPublicKey: userKey(), account, issuer: role, expiresAt: clock.now() + 1_000 });
    assert.equal(users.size, 11);
    clock.advance(61_000);
    users.add({ userPublicKey: userKey(), account, issuer: role, expiresAt: clock.now() + 1_000 });
    assert.equal(users.size, 2);
    assert.equal(users.counters.expired, 10);
    assert.equal(users.isIssued(long), true);
  });

  it("finds callout users by the name natsbind gave them, in their account and signing key, latest first", () => {
    const clock = new ManualClock();
    const users = new IssuedUsers({ clock });
    const first = userKey();
    const second = userKey();
    const exp = clock.now() + 600_000;
    users.add({
      userPublicKey: first,
      account,
      issuer: role,
      name: "group/p#1",
      tags: ["job:1"],
      expiresAt: exp,
    });
    users.add({
      userPublicKey: second,
      account,
      issuer: role,
      name: "group/p#1",
      tags: ["job:1"],
      expiresAt: exp,
    });
    assert.equal(users.calloutUser("group/p#1", { account, issuerKey: role })?.userPublicKey, second);
    assert.deepEqual(users.calloutUser("group/p#1", { account, issuerKey: role })?.tags, ["job:1"]);
    assert.equal(users.calloutUser("group/p#1", { account: other, issuerKey: role }), undefined);
    assert.equal(users.calloutUser("group/p#1", { account }), undefined, "no issuer key: no match");
    assert.equal(users.calloutUser("group/p#2", { account, issuerKey: role }), undefined);
  });

  it("refuses entries that are not keys", () => {
    const users = new IssuedUsers({ clock: new ManualClock() });
    assert.throws(
      () => users.add({ userPublicKey: account, account, issuer: role, expiresAt: 1 }),
      /userPublicKey/,
    );
    assert.throws(
      () => users.add({ userPublicKey: userKey(), account: "x", issuer: role, expiresAt: 1 }),
      /account/,
    );
    assert.throws(
      () => users.add({ userPublicKey: userKey(), account, issuer: "y", expiresAt: 1 }),
      /issuer/,
    );
    assert.throws(
      () => users.add({ userPublicKey: userKey(), account, issuer: role, expiresAt: NaN }),
      /expiresAt/,
    );
  });
});
