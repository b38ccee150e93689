/**
 * The audit log of CI credentials: one JSON line per AuditEvent, `{"event", "time", ...}`, appended
 * to a file (credentials.audit.file) or written to standard output.
 *
 * What reaches a line is decided here, not by the caller: only the fields AuditEvent names, each
 * of its declared type (anything else is left out), every string through the logger's secret
 * redaction (redactSecrets: seeds, creds, JWTs, GitLab and bearer tokens) and cut at 2 KiB, at
 * most 64 tags. A token or a seed a caller put into a field by mistake becomes [REDACTED]; a field
 * AuditEvent does not have (`token`, `jwt`) never reaches the file.
 *
 * Lines are written in batches (group commit): the first event starts a write, and events that
 * arrive while a write and its fsync are in flight form the next batch, so a burst costs one fsync
 * per batch, not per line. The buffer is bounded (lines and bytes). When it is full, because the
 * disk or the stream stalls, a new event is DROPPED, never blocks the caller and is never lost
 * silently: it is counted (`dropped`), logged (at most once a minute), and the first line written
 * after the gap is `{"event":"audit.dropped","time":...,"dropped":N}` so the log itself shows the
 * hole. `accepting()` turns false before the buffer is full and while writes fail, so the issuer
 * can refuse to issue credentials it could not audit (503) instead of issuing them unlogged.
 * A failed write is retried (1 s, doubling to 30 s) from the byte where it stopped: no line is
 * written twice or half. `close()` makes one last attempt and counts what it could not write.
 */
import { constants as fsConstants } from "node:fs";
import { mkdir, open } from "node:fs/promises";
import { dirname } from "node:path";
import type { Writable } from "node:stream";
import { NatsbindError, describeError } from "../errors.ts";
import { redactSecrets, type Logger } from "../observability/logger.ts";
import type { Clock, TimerHandle } from "../runtime/clock.ts";
import type { AuditEvent, AuditSink } from "./types.ts";

/** The audit file cannot be opened or made private; natsbind does not start without its audit log. */
export class AuditSinkError extends NatsbindError {}

export const AUDIT_FILE_MODE = 0o600;
export const DEFAULT_MAX_BUFFERED_LINES = 10_000;
export const DEFAULT_MAX_BUFFERED_BYTES = 8 * 1024 * 1024;
/** close() waits this long for the last write (clock time). */
export const DEFAULT_CLOSE_TIMEOUT_MS = 10_000;
/** A batch holds at most this many bytes (one write + one fsync); the rest waits for the next. */
export const MAX_BATCH_BYTES = 1024 * 1024;
/** Strings in a line are cut here (a ref is at most 1 KiB). */
export const MAX_FIELD_CHARS = 2048;
export const MAX_TAGS = 64;
/** accepting() is false once the buffer is this full: room for what is already being issued. */
const ACCEPT_FRACTION = 0.9;
const RETRY_FIRST_MS = 1_000;
const RETRY_MAX_MS = 30_000;
const LOG_EVERY_MS = 60_000;

/** What the sink has done, for metrics (the coordinator exports them). */
export interface AuditSinkCounters {
  /** Event lines written (and, for a file, fsync'd). */
  written: number;
  /** Events not written: buffer full, sink closed, invalid event, or left over at close. */
  dropped: number;
  /** Write (+ fsync) rounds that completed. */
  batches: number;
  /** Writes or fsyncs that failed (each retried, except a failed fsync: see #flushOnce). */
  failures: number;
  /** `audit.dropped` lines written. */
  gaps: number;
}

export interface OpenedAuditSink extends AuditSink {
  readonly counters: Readonly<AuditSinkCounters>;
  /** Lines waiting to be written (including a batch being written). */
  readonly buffered: number;
  /**
   * False while the buffer is nearly full, writes are failing, or the sink is closed: an issuer
   * should then refuse ("unavailable") rather than issue credentials without an audit line.
   */
  accepting(): boolean;
  /** Resolves once every line buffered before the call is written (or given up at close). */
  flush(): Promise<void>;
  /** "file" or "stdout": where the lines go. */
  readonly target: string;
}

/** The part of a node:fs/promises FileHandle the file sink uses (tests wrap a real one). */
export interface AuditFileHandle {
  write(buffer: Uint8Array, offset: number, length: number): Promise<{ bytesWritten: number }>;
  sync(): Promise<void>;
  stat(): Promise<{ mode: number; isFile(): boolean }>;
  chmod(mode: number): Promise<void>;
  close(): Promise<void>;
}

export type OpenAuditFile = (path: string, flags: number, mode: number) => Promise<AuditFileHandle>;

export interface AuditSinkOptions {
  /** Append here (created 0600, an existing file with group/other bits is made 0600). */
  file?: string;
  /** Used when no file is given; default process.stdout. */
  stdout?: Writable;
  clock: Clock;
  log: Logger;
  /** Opens the audit file; default node:fs/promises open. */
  openFile?: OpenAuditFile;
  maxBufferedLines?: number;
  maxBufferedBytes?: number;
  closeTimeoutMs?: number;
}

// --- rendering ----------------------------------------------------------------------------------

type FieldKind = "string" | "number" | "boolean" | "strings" | "stats";
type CredentialEvent = Extract<AuditEvent, { event: "credentials.issued" | "credentials.refused" }>;
type ConnectionEvent = Extract<AuditEvent, { event: "nats.connect" | "nats.disconnect" }>;
type RevocationEvent = Extract<AuditEvent, { event: "credentials.revoked" }>;

/** Every field of AuditEvent, with its type: nothing else is written. */
const CREDENTIAL_FIELDS = {
  via: "string",
  client: "string",
  projectId: "number",
  projectPath: "string",
  pipelineId: "number",
  jobId: "number",
  ref: "string",
  refProtected: "boolean",
  user: "string",
  environment: "string",
  role: "string",
  account: "string",
  binding: "string",
  userPublicKey: "string",
  expiresAt: "string",
  code: "string",
  reason: "string",
  message: "string",
} as const satisfies Record<Exclude<keyof CredentialEvent, "event" | "time">, FieldKind>;

const CONNECTION_FIELDS = {
  account: "string",
  userPublicKey: "string",
  name: "string",
  tags: "strings",
  server: "string",
  clientAddress: "string",
  sent: "stats",
  received: "stats",
  reason: "string",
} as const satisfies Record<Exclude<keyof ConnectionEvent, "event" | "time">, FieldKind>;

const REVOCATION_FIELDS = {
  binding: "string",
  projectId: "number",
  environment: "string",
  account: "string",
  userPublicKey: "string",
  revokedAt: "string",
  jobId: "number",
  pipelineId: "number",
  source: "string",
} as const satisfies Record<Exclude<keyof RevocationEvent, "event" | "time">, FieldKind>;

const FIELDS_OF: Record<AuditEvent["event"], Record<string, FieldKind>> = {
  "credentials.issued": CREDENTIAL_FIELDS,
  "credentials.refused": CREDENTIAL_FIELDS,
  "nats.connect": CONNECTION_FIELDS,
  "nats.disconnect": CONNECTION_FIELDS,
  "credentials.revoked": REVOCATION_FIELDS,
};

const text = (value: string): string => redactSecrets(value, MAX_FIELD_CHARS);

function count(value: unknown): number | undefined {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

function renderField(kind: FieldKind, value: unknown): unknown {
  switch (kind) {
    case "string":
      return typeof value === "string" ? text(value) : undefined;
    case "number":
      return typeof value === "number" && Number.isFinite(value) ? value : undefined;
    case "boolean":
      return typeof value === "boolean" ? value : undefined;
    case "strings": {
      if (!Array.isArray(value)) return undefined;
      const items = value.filter((v): v is string => typeof v === "string");
      const out = items.slice(0, MAX_TAGS).map(text);
      if (items.length > MAX_TAGS) out.push(`[${items.length - MAX_TAGS} more]`);
      return out;
    }
    case "stats": {
      if (typeof value !== "object" || value === null) return undefined;
      const { msgs, bytes } = value as { msgs?: unknown; bytes?: unknown };
      const m = count(msgs);
      const b = count(bytes);
      return m === undefined || b === undefined ? undefined : { msgs: m, bytes: b };
    }
  }
}

/**
 * One audit line (with its newline), or undefined for an event of no known kind. `event` and
 * `time` come first; `time` is the event's own when it is an ISO time, else the clock's.
 */
export function renderAuditLine(event: AuditEvent, now: () => number): string | undefined {
  const kind = (event as { event?: unknown }).event;
  if (typeof kind !== "string" || !Object.hasOwn(FIELDS_OF, kind)) return undefined;
  const fields = FIELDS_OF[kind as AuditEvent["event"]];
  const record: Record<string, unknown> = { event: kind, time: lineTime(event.time, now) };
  for (const [name, fieldKind] of Object.entries(fields)) {
    const value = renderField(fieldKind, (event as unknown as Record<string, unknown>)[name]);
    if (value !== undefined) record[name] = value;
  }
  return `${JSON.stringify(record)}\n`;
}

const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z$/;

function lineTime(time: unknown, now: () => number): string {
  if (typeof time === "string" && ISO_TIME.test(time)) return time;
  return new Date(now()).toISOString();
}

// --- the sink ------------------------------------------------------------------------------------

/** Where batches go: a file (write + fsync) or a stream (write, wait for its callback). */
interface Backend {
  target: string;
  /** Writes buf[offset..] whole, or throws a PartialWriteError saying how far it got. */
  write(buf: Buffer, offset: number): Promise<void>;
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** A write that failed after `offset` bytes of the batch were written. */
class PartialWriteError extends Error {
  readonly offset: number;
  constructor(offset: number, cause: unknown) {
    super(describeError(cause), { cause });
    this.offset = offset;
  }
}

interface Pending {
  buf: Buffer;
  offset: number;
  /** Event lines in buf (markers not counted). */
  events: number;
  /** Lines in buf (events and markers): sequence numbers they cover. */
  lines: number;
}

interface Queued {
  line: string;
  bytes: number;
  isEvent: boolean;
}

class BufferedAuditSink implements OpenedAuditSink {
  readonly counters: AuditSinkCounters = { written: 0, dropped: 0, batches: 0, failures: 0, gaps: 0 };
  readonly #backend: Backend;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #maxLines: number;
  readonly #maxBytes: number;
  readonly #closeTimeoutMs: number;
  #queue: Queued[] = [];
  #queuedBytes = 0;
  /** A batch whose write failed part-way: written again from `offset` before anything else. */
  #pending: Pending | undefined;
  /** The batch being written now (counts in `buffered` and the bounds). */
  #inFlight: Pending | undefined;
  /** The write rounds in progress, if any (one at a time). */
  #current: Promise<void> | undefined;
  #scheduled = false;
  #failing = false;
  #retryMs = RETRY_FIRST_MS;
  #retryTimer: TimerHandle | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;
  /** close() gave up on a write that did not return: whatever it does later is not counted. */
  #abandoned = false;
  /** Sequence numbers: lines enqueued, lines done (written or given up), for flush(). */
  #enqueuedSeq = 0;
  #doneSeq = 0;
  #waiters: { seq: number; resolve: () => void }[] = [];
  #droppedSinceGap = 0;
  #lastDropLog = -Infinity;
  #droppedSinceLog = 0;

  constructor(backend: Backend, opts: AuditSinkOptions) {
    this.#backend = backend;
    this.#clock = opts.clock;
    this.#log = opts.log;
    this.#maxLines = positive(opts.maxBufferedLines, DEFAULT_MAX_BUFFERED_LINES, "maxBufferedLines");
    this.#maxBytes = positive(opts.maxBufferedBytes, DEFAULT_MAX_BUFFERED_BYTES, "maxBufferedBytes");
    this.#closeTimeoutMs = positive(opts.closeTimeoutMs, DEFAULT_CLOSE_TIMEOUT_MS, "closeTimeoutMs");
  }

  get target(): string {
    return this.#backend.target;
  }

  get buffered(): number {
    return this.#queue.length + (this.#inFlight?.lines ?? 0) + (this.#pending?.lines ?? 0);
  }

  #bufferedBytes(): number {
    const left = (p: Pending | undefined): number => (p ? p.buf.length - p.offset : 0);
    return this.#queuedBytes + left(this.#inFlight) + left(this.#pending);
  }

  accepting(): boolean {
    return (
      !this.#closed &&
      !this.#failing &&
      this.buffered < this.#maxLines * ACCEPT_FRACTION &&
      this.#bufferedBytes() < this.#maxBytes * ACCEPT_FRACTION
    );
  }

  write(event: AuditEvent): void {
    let line: string | undefined;
    try {
      line = renderAuditLine(event, () => this.#clock.now());
    } catch {
      line = undefined;
    }
    if (line === undefined) {
      this.#drop("not an audit event");
      return;
    }
    if (this.#closed) {
      this.#drop("the audit log is closed");
      return;
    }
    const bytes = Buffer.byteLength(line);
    if (this.buffered >= this.#maxLines || this.#bufferedBytes() + bytes > this.#maxBytes) {
      this.#drop("the audit buffer is full (the disk or stream is not keeping up)");
      return;
    }
    if (this.#droppedSinceGap > 0) {
      // The hole is recorded in the log itself, before the next line (the bound may be passed by it).
      const marker = `${JSON.stringify({
        event: "audit.dropped",
        time: new Date(this.#clock.now()).toISOString(),
        dropped: this.#droppedSinceGap,
      })}\n`;
      this.#droppedSinceGap = 0;
      this.#enqueue({ line: marker, bytes: Buffer.byteLength(marker), isEvent: false });
    }
    this.#enqueue({ line, bytes, isEvent: true });
  }

  #enqueue(item: Queued): void {
    this.#queue.push(item);
    this.#queuedBytes += item.bytes;
    this.#enqueuedSeq += 1;
    this.#schedule();
  }

  #drop(why: string): void {
    this.counters.dropped += 1;
    this.#droppedSinceGap += 1;
    this.#droppedSinceLog += 1;
    const now = this.#clock.now();
    if (now - this.#lastDropLog >= LOG_EVERY_MS) {
      this.#log.error(
        { dropped: this.#droppedSinceLog, droppedTotal: this.counters.dropped, target: this.target },
        `audit events dropped: ${why}`,
      );
      this.#lastDropLog = now;
      this.#droppedSinceLog = 0;
    }
  }

  /** Starts a write round soon: events written in the same turn share its batch. */
  #schedule(): void {
    if (this.#current || this.#scheduled || this.#retryTimer !== undefined) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      void this.#run();
    });
  }

  #run(): Promise<void> {
    this.#current ??= this.#rounds().finally(() => {
      this.#current = undefined;
    });
    return this.#current;
  }

  async #rounds(): Promise<void> {
    while (this.#pending || this.#queue.length > 0) {
      if (!(await this.#flushOnce())) {
        if (!this.#closed) this.#retryLater();
        return;
      }
    }
  }

  /**
   * One round: the failed batch's remainder, else a new batch from the queue; write, then fsync.
   * True when it went through. A failed write keeps its remainder for the retry. A failed fsync
   * is counted and logged but not retried by writing again: the bytes were written, writing them
   * twice would duplicate lines, and after an fsync error the kernel may already have dropped the
   * dirty pages, so a second fsync proves nothing (the error log is the record of it).
   */
  async #flushOnce(): Promise<boolean> {
    let batch = this.#pending;
    this.#pending = undefined;
    if (!batch) {
      let take = 0;
      let bytes = 0;
      let events = 0;
      for (const next of this.#queue) {
        if (take > 0 && bytes + next.bytes > MAX_BATCH_BYTES) break;
        take += 1;
        bytes += next.bytes;
        if (next.isEvent) events += 1;
      }
      const lines = this.#queue.splice(0, take);
      this.#queuedBytes -= bytes;
      batch = { buf: Buffer.from(lines.map((q) => q.line).join("")), offset: 0, events, lines: take };
    }
    this.#inFlight = batch;
    try {
      try {
        await this.#backend.write(batch.buf, batch.offset);
      } catch (err) {
        if (this.#abandoned) return false;
        const offset = err instanceof PartialWriteError ? err.offset : batch.offset;
        this.#pending = { ...batch, offset };
        this.counters.failures += 1;
        this.#failing = true;
        this.#log.error(
          {
            target: this.target,
            err: err instanceof PartialWriteError ? err.cause : err,
            buffered: this.buffered,
            failures: this.counters.failures,
          },
          "audit log write failed; retrying from where it stopped",
        );
        return false;
      }
      try {
        await this.#backend.sync();
      } catch (err) {
        this.counters.failures += 1;
        this.#log.error(
          { target: this.target, err, lines: batch.lines },
          "audit log fsync failed: the lines were written but may not be on disk",
        );
      }
    } finally {
      this.#inFlight = undefined;
    }
    // close() stopped waiting for this round and counted its lines as dropped.
    if (this.#abandoned) return false;
    this.counters.written += batch.events;
    this.counters.gaps += batch.lines - batch.events;
    this.counters.batches += 1;
    if (this.#failing) this.#log.info({ target: this.target }, "audit log writes work again");
    this.#failing = false;
    this.#retryMs = RETRY_FIRST_MS;
    this.#done(batch.lines);
    return true;
  }

  #done(lines: number): void {
    this.#doneSeq += lines;
    const waiting = this.#waiters;
    this.#waiters = [];
    for (const w of waiting) {
      if (w.seq <= this.#doneSeq) w.resolve();
      else this.#waiters.push(w);
    }
  }

  #retryLater(): void {
    const delay = this.#retryMs;
    this.#retryMs = Math.min(this.#retryMs * 2, RETRY_MAX_MS);
    this.#retryTimer = this.#clock.setTimeout(() => {
      this.#retryTimer = undefined;
      void this.#run();
    }, delay);
  }

  flush(): Promise<void> {
    const seq = this.#enqueuedSeq;
    if (this.#doneSeq >= seq) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ seq, resolve }));
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    if (this.#retryTimer !== undefined) {
      this.#clock.clearTimeout(this.#retryTimer);
      this.#retryTimer = undefined;
    }
    // The round in flight, then one last attempt at what is left (no backoff); a disk that does
    // not answer within closeTimeoutMs does not hold natsbind's shutdown.
    let timer: TimerHandle | undefined;
    const deadline = new Promise<"timeout">((resolve) => {
      timer = this.#clock.setTimeout(() => resolve("timeout"), this.#closeTimeoutMs);
    });
    const last = (async () => {
      while (this.#current || this.#scheduled) {
        await this.#current;
        await Promise.resolve();
      }
      await this.#run();
      return "done" as const;
    })();
    const outcome = await Promise.race([last, deadline]);
    if (timer !== undefined) this.#clock.clearTimeout(timer);
    if (outcome === "timeout") {
      this.#log.error(
        { target: this.target, timeoutMs: this.#closeTimeoutMs },
        "audit log: last write did not finish in time",
      );
    }
    const inFlight = outcome === "timeout" ? this.#inFlight : undefined;
    if (outcome === "timeout") this.#abandoned = true;
    const left =
      this.#queue.filter((q) => q.isEvent).length + (this.#pending?.events ?? 0) + (inFlight?.events ?? 0);
    const leftLines = this.#queue.length + (this.#pending?.lines ?? 0) + (inFlight?.lines ?? 0);
    if (leftLines > 0) {
      this.counters.dropped += left;
      this.#log.error(
        { target: this.target, dropped: left, droppedTotal: this.counters.dropped },
        "audit log closed with events it could not write",
      );
      this.#queue = [];
      this.#queuedBytes = 0;
      this.#pending = undefined;
      this.#done(leftLines);
    }
    try {
      await this.#backend.close();
    } catch (err) {
      this.#log.warn({ target: this.target, err }, "audit log: closing failed");
    }
  }
}

function positive(value: number | undefined, fallback: number, what: string): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1)
    throw new RangeError(`audit sink: ${what} must be a positive integer`);
  return value;
}

const octal = (mode: number): string => `0${(mode & 0o777).toString(8).padStart(3, "0")}`;
const codeOf = (err: unknown): string => (err as NodeJS.ErrnoException).code ?? describeError(err);

/**
 * O_APPEND: every write lands at the end, even with another writer (logrotate copytruncate).
 * O_NONBLOCK: a FIFO without a reader fails the open instead of hanging it (then refused as not a
 * regular file); it changes nothing for regular files.
 */
const APPEND_FLAGS =
  fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_CREAT | fsConstants.O_NONBLOCK;

/**
 * Opens the audit file for appending. Created 0600 (its directory 0700 when missing). An existing
 * file readable or writable by group or others is tightened to 0600 and the change logged, as the
 * key directory is: audit lines name every job and user key. One that cannot be tightened (owned by
 * someone else), that is not a regular file, or that cannot be opened stops the start.
 */
async function openFileBackend(path: string, opts: AuditSinkOptions): Promise<Backend> {
  const openFile: OpenAuditFile = opts.openFile ?? ((p, flags, mode) => open(p, flags, mode));
  const fail = (problem: string, cause?: unknown): never => {
    throw new AuditSinkError(`credentials.audit.file ${path}: ${problem}`, cause ? { cause } : undefined);
  };
  try {
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  } catch (err) {
    fail(`its directory cannot be created (${codeOf(err)})`, err);
  }
  let handle: AuditFileHandle;
  try {
    handle = await openFile(path, APPEND_FLAGS, AUDIT_FILE_MODE);
  } catch (err) {
    return fail(`cannot be opened for appending (${codeOf(err)})`, err);
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) fail("is not a regular file (leave `file` out to write to standard output)");
    if ((stat.mode & 0o077) !== 0) {
      try {
        await handle.chmod(AUDIT_FILE_MODE);
      } catch (err) {
        fail(
          `has mode ${octal(stat.mode)} (open to other users) and cannot be changed to 0600 (${codeOf(err)})`,
          err,
        );
      }
      opts.log.warn(
        { path, from: octal(stat.mode), to: octal(AUDIT_FILE_MODE) },
        "audit file was open to other users: made 0600",
      );
    }
  } catch (err) {
    await handle.close().catch(() => undefined);
    throw err;
  }
  return {
    target: "file",
    async write(buf, offset) {
      let at = offset;
      try {
        while (at < buf.length) {
          const { bytesWritten } = await handle.write(buf, at, buf.length - at);
          if (bytesWritten <= 0) throw new Error("write made no progress");
          at += bytesWritten;
        }
      } catch (err) {
        throw new PartialWriteError(at, err);
      }
    },
    sync: () => handle.sync(),
    close: () => handle.close(),
  };
}

function streamBackend(stream: Writable, log: Logger): Backend {
  // A broken pipe must not crash natsbind (an 'error' without a listener throws); the write
  // callback reports it to the sink, which counts and retries.
  const onError = (err: unknown): void => log.debug({ err }, "audit stream error");
  stream.on("error", onError);
  return {
    target: "stdout",
    write: (buf, offset) =>
      new Promise((resolve, reject) => {
        try {
          stream.write(buf.subarray(offset), (err) =>
            err ? reject(new PartialWriteError(offset, err)) : resolve(),
          );
        } catch (err) {
          reject(new PartialWriteError(offset, err));
        }
      }),
    sync: async () => undefined,
    close: async () => {
      stream.off("error", onError);
    },
  };
}

/**
 * The audit sink natsbind.yaml's credentials.audit describes: the file when `file` is set,
 * otherwise `stdout` (default process.stdout, which natsbind keeps for audit lines: its logs go to
 * standard error).
 */
export async function openAuditSink(opts: AuditSinkOptions): Promise<OpenedAuditSink> {
  const backend = opts.file
    ? await openFileBackend(opts.file, opts)
    : streamBackend(opts.stdout ?? process.stdout, opts.log);
  return new BufferedAuditSink(backend, opts);
}

export {
  IssuedUsers,
  startConnectionAudit,
  type ConnectionAudit,
  type ConnectionAuditCounters,
  type ConnectionAuditOptions,
  type IssuedUser,
  type IssuedUsersCounters,
  type SeenConnection,
} from "./audit-connections.ts";
