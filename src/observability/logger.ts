/**
 * Structured logs, written by pino: one JSON object per line,
 * `{"level","time", ...base, ...bindings, ...obj, "msg"}`.
 * One child logger per reconcile carries controller/namespace/name; callers log public keys and
 * hashes, never secrets.
 *
 * Redaction is defence in depth behind that rule: every string in a record (message, values and
 * keys, at any depth up to MAX_DEPTH, arrays included) has nkey seeds and private keys (also
 * base64- or hex-encoded, as in a Secret's data), creds and PEM blocks, JWTs, GitLab tokens, bearer
 * tokens, URL passwords and sensitive query parameters (`?private_token=`, `access_token=`, ...)
 * replaced by [REDACTED], and any value under a key that names a secret (token, password, secret,
 * seed, creds, authorization, private, ...) is replaced whatever it is: object and Map keys,
 * Headers, and names in lists (`["Private-Token", "x"]`, raw header lists) alike. Errors render as {name, message} (plus the cause's
 * name and message), never stack or attached fields: gitbeaker errors carry request headers.
 *
 * Logging never throws: a value that cannot be read renders as a placeholder, a record that cannot
 * be rendered becomes a short fallback line, and a sink that throws is ignored.
 */

import { pino, type DestinationStream, type Logger as PinoBase } from "pino";

export type LogLevel = "debug" | "info" | "warn" | "error";

export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

export interface Logger {
  debug(obj: Record<string, unknown>, msg: string): void;
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
  error(obj: Record<string, unknown>, msg: string): void;
  /** A logger whose records carry `bindings` (after the parent's, before each record's fields). */
  child(bindings: Record<string, unknown>): Logger;
}

export interface LoggerOptions {
  /** Records below this level are dropped; default "info". */
  level?: LogLevel;
  /** Receives each record as one JSON line ending in "\n"; default: process.stderr. */
  write?: (line: string) => void;
  /** Source of the `time` field (ms since the epoch); default Date.now. */
  clock?: { now(): number };
  /** Fields on every record (e.g. service, version). */
  base?: Record<string, unknown>;
}

export const REDACTED = "[REDACTED]";
/** Strings (values, keys and the message) longer than this are cut. */
export const MAX_STRING_LENGTH = 4096;
/** Containers nested deeper than this render as "[Object]" / "[Array]"; record fields are depth 1. */
export const MAX_DEPTH = 6;
/** Entries kept per object, array, Map or Set; the rest are summarised. */
export const MAX_ENTRIES = 1000;

const SEVERITY: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
/** Fields the logger writes itself; a field of the same name is kept as `_time`, `_level`, `_msg`. */
const RESERVED = new Set(["time", "level", "msg"]);

const SENSITIVE_KEY = /token|password|passwd|secret|seed|creds|authorization|cookie|private|api[-_]?key/i;

/**
 * Secret-shaped text, in the order applied; JWTs are handled by redactJwtsInToken. Whole blocks go first,
 * so a creds file collapses to its boilerplate. Every pattern is written to run in linear time
 * (no unbounded quantifier before a literal), and on at most MAX_STRING_LENGTH + WINDOW_MARGIN chars.
 */
const SECRET_PATTERNS: readonly [RegExp, string][] = [
  // NATS creds / nsc export blocks and PEM private keys, to their END line or the end of the text.
  [
    /BEGIN (?:NATS [A-Z]+ JWT|[A-Z]+ NKEY SEED|(?:[A-Z]+ )?PRIVATE KEY)[\s\S]*?(?:END (?:NATS [A-Z]+ JWT|[A-Z]+ NKEY SEED|(?:[A-Z]+ )?PRIVATE KEY)-*|$)/g,
    REDACTED,
  ],
  // nkeys private key ("P" + 107 base32 characters) and seeds (S + key type + 56).
  [/P[A-Z2-7]{107}/g, REDACTED],
  [/S[OAUNCPX][A-Z2-7]{56}/g, REDACTED],
  // GitLab personal/project/group, deploy, runner, OAuth, trigger, feed, ... tokens.
  [/gl(?:pat|oas|dt|rt|cbt|ptt|ft|imt|agent|soat|ffct|wt)-[0-9A-Za-z_-]{20,}/g, REDACTED],
  [/\bBearer\s+[^\s"',;]+/gi, `Bearer ${REDACTED}`],
  // user:password@ in URLs (scheme length bounded to keep the scan linear).
  [/\b([a-z][a-z0-9+.-]{0,31}:\/\/)[^\s/@:]*:[^\s/@]*@/gi, `$1${REDACTED}@`],
];

/**
 * `name=value` with a sensitive name, in query strings, form bodies and messages
 * (`?private_token=…`, `&access_token=…`, `token=…`). The name is bounded, so the scan is linear.
 */
const PARAMETER = /(^|[?&;\s"'(])([A-Za-z0-9_.-]{1,64})=([^&#\s"',;)]+)/g;

function redactParameters(text: string): string {
  if (!text.includes("=")) return text;
  return text.replace(PARAMETER, (whole: string, before: string, name: string) =>
    isSensitiveKey(name) ? `${before}${name}=${REDACTED}` : whole,
  );
}

/**
 * Encoded secrets: a seed put through base64 (a Kubernetes Secret's `data`, a creds file in an
 * env var) or hex no longer looks like a seed. Runs long enough to hold one (58 characters encode
 * to 78 in base64, 116 in hex) are decoded at each alignment and replaced whole when the bytes hold
 * secret-shaped text. One greedy character class per run: linear.
 */
const BASE64_RUN = /[A-Za-z0-9+/_-]{76,}={0,2}/g;
const HEX_RUN = /[0-9A-Fa-f]{116,}/g;
const DECODED_SECRET =
  /S[OAUNCPX][A-Z2-7]{56}|P[A-Z2-7]{107}|NKEY SEED|PRIVATE KEY|gl(?:pat|oas|dt|rt|cbt|ptt|ft|imt|agent|soat|ffct|wt)-[0-9A-Za-z_-]{20}/;

function holdsEncodedSecret(run: string, encoding: "base64" | "hex"): boolean {
  const alignments = encoding === "base64" ? 4 : 2;
  for (let offset = 0; offset < alignments; offset++) {
    if (DECODED_SECRET.test(Buffer.from(run.slice(offset), encoding).toString("latin1"))) return true;
  }
  return false;
}

function redactEncoded(text: string): string {
  let out = text;
  if (out.length >= 76) {
    out = out.replace(BASE64_RUN, (run: string) => (holdsEncodedSecret(run, "base64") ? REDACTED : run));
  }
  if (out.length >= 116) {
    out = out.replace(HEX_RUN, (run: string) => (holdsEncodedSecret(run, "hex") ? REDACTED : run));
  }
  return out;
}

/** Runs of base64url characters and dots: where JWTs live. Linear: one greedy class, no backtracking. */
const JWT_TOKEN = /[A-Za-z0-9_.-]+/g;

/**
 * Within one token, replaces what /eyJ[\w-]{10,}\.eyJ[\w-]{10,}\.[\w-]+/ would match, scanning the
 * dot-separated segments once (the regex itself backtracks quadratically on "eyJeyJeyJ…").
 * `dangling`: the token was cut off at the end of the text, so a JWT missing its end counts too.
 */
function redactJwtsInToken(token: string, dangling: boolean): string {
  const segments = token.split(".");
  const pieces: string[] = [];
  let i = 0;
  while (i < segments.length) {
    const segment = segments[i]!;
    const at = segment.indexOf("eyJ");
    const claims = segments[i + 1];
    const signature = segments[i + 2];
    if (
      at !== -1 &&
      segment.length - at >= 13 &&
      claims?.startsWith("eyJ") &&
      claims.length >= 13 &&
      signature
    ) {
      pieces.push(segment.slice(0, at) + REDACTED);
      i += 3;
    } else {
      pieces.push(segment);
      i += 1;
    }
  }
  let out = pieces.join(".");
  if (dangling) {
    const last = out.lastIndexOf(REDACTED);
    const at = out.indexOf("eyJ", last === -1 ? 0 : last + REDACTED.length);
    if (at !== -1) out = out.slice(0, at) + REDACTED;
  }
  return out;
}

function redactAll(text: string, cutAtEnd: boolean): string {
  let out = text;
  for (const [pattern, replacement] of SECRET_PATTERNS) out = out.replace(pattern, replacement);
  out = redactEncoded(redactParameters(out));
  if (!out.includes("eyJ")) return out;
  const source = out;
  return source.replace(JWT_TOKEN, (token: string, offset: number) =>
    token.includes("eyJ")
      ? redactJwtsInToken(token, cutAtEnd && offset + token.length === source.length)
      : token,
  );
}

/**
 * Text past the cut that is still scanned, so a secret straddling MAX_STRING_LENGTH is recognised
 * whole (the longest fixed-size one, a private key, is 108 characters).
 */
const WINDOW_MARGIN = 1024;

function isTokenChar(code: number): boolean {
  return (
    (code >= 0x30 && code <= 0x39) || // 0-9
    (code >= 0x41 && code <= 0x5a) || // A-Z
    (code >= 0x61 && code <= 0x7a) || // a-z
    code === 0x5f || // _
    code === 0x2d || // -
    code === 0x2e // .
  );
}

/**
 * Replaces secret-shaped text with [REDACTED] and cuts the result at `maxLength`. The scan is
 * bounded: text beyond `maxLength` + 1 KiB is dropped before patterns run.
 */
export function redactSecrets(text: string, maxLength = MAX_STRING_LENGTH): string {
  if (text.length <= maxLength) return redactAll(text, false);
  const window = text.slice(0, maxLength + WINDOW_MARGIN);
  const windowCut = window.length < text.length;
  let out = redactAll(window, windowCut);
  if (out.length > maxLength) {
    let end = maxLength;
    const last = out.charCodeAt(end - 1);
    if (last >= 0xd800 && last <= 0xdbff) end -= 1; // do not split a surrogate pair
    out = out.slice(0, end);
  } else if (windowCut) {
    // Redaction shrank the window so its end shows; the token there was cut and may be part of a secret.
    let end = out.length;
    while (end > 0 && isTokenChar(out.charCodeAt(end - 1))) end -= 1;
    out = out.slice(0, end);
  }
  return `${out}…[truncated, ${text.length} chars]`;
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

/** Plain objects without a prototype: a "__proto__" key stays a key. */
function newObject(): JsonObject {
  return Object.create(null) as JsonObject;
}

function describeError(err: Error, withCause: boolean): JsonObject {
  const out = newObject();
  out.name = safeString(() => String(err.name));
  out.message = safeString(() => String(err.message));
  if (withCause) {
    const cause = safeRead(() => err.cause);
    if (cause instanceof Error) out.cause = describeError(cause, false);
    else if (cause !== undefined) out.cause = { message: safeString(() => String(cause)) };
  }
  return out;
}

function safeRead(read: () => unknown): unknown {
  try {
    return read();
  } catch {
    return undefined;
  }
}

function safeString(read: () => string): string {
  try {
    return redactSecrets(read());
  } catch {
    return "[Unreadable]";
  }
}

function isSensitiveKey(key: string): boolean {
  return SENSITIVE_KEY.test(key);
}

/** Renders `value` as JSON-safe data; `undefined` means "leave the field out". */
function sanitize(value: unknown, depth: number, ancestors: Set<object>): Json | undefined {
  try {
    switch (typeof value) {
      case "undefined":
        return undefined;
      case "boolean":
        return value;
      case "number":
        return Number.isFinite(value) ? value : String(value);
      case "bigint":
        return String(value);
      case "string":
        return redactSecrets(value);
      case "symbol":
        return redactSecrets(String(value));
      case "function":
        return "[Function]";
    }
    if (value === null) return null;
    const obj = value as object;
    if (ancestors.has(obj)) return "[Circular]";
    if (obj instanceof Error) return describeError(obj, true);
    if (obj instanceof Date) return Number.isNaN(obj.getTime()) ? "Invalid Date" : obj.toISOString();
    // Bytes may be an encoded seed (NKeyPair.getSeed() is one): size only.
    if (ArrayBuffer.isView(obj) || obj instanceof ArrayBuffer || obj instanceof SharedArrayBuffer) {
      return `[${obj.constructor?.name ?? "Bytes"} ${obj.byteLength} bytes]`;
    }
    if (depth > MAX_DEPTH) return Array.isArray(obj) || obj instanceof Set ? "[Array]" : "[Object]";
    ancestors.add(obj);
    try {
      if (Array.isArray(obj)) return sanitizeList(obj, obj.length, depth, ancestors);
      if (obj instanceof Set) return sanitizeList(obj, obj.size, depth, ancestors);
      if (obj instanceof Map) return sanitizeEntries(obj.entries(), obj.size, depth, ancestors);
      // fetch Headers keep their fields out of sight of Object.keys.
      if (typeof Headers === "function" && obj instanceof Headers) {
        const entries = [...obj.entries()];
        return sanitizeEntries(entries, entries.length, depth, ancestors);
      }
      const toJSON = (obj as { toJSON?: unknown }).toJSON;
      if (typeof toJSON === "function") {
        const json: unknown = toJSON.call(obj);
        if (json !== obj) return sanitize(json, depth, ancestors);
      }
      const keys = Object.keys(obj);
      const entries = (function* () {
        for (const key of keys) yield [key, safeReadProperty(obj, key)] as [unknown, unknown];
      })();
      return sanitizeEntries(entries, keys.length, depth, ancestors);
    } finally {
      ancestors.delete(obj);
    }
  } catch {
    return "[Unreadable]";
  }
}

const UNREADABLE = Symbol("unreadable");

function safeReadProperty(obj: object, key: string): unknown {
  try {
    return (obj as Record<string, unknown>)[key];
  } catch {
    return UNREADABLE;
  }
}

/** A string that reads as a header or field name (no spaces), as in `["Private-Token", value]`. */
const NAME_LIKE = /^[A-Za-z0-9_.:-]{1,64}$/;

/**
 * Headers and fields also come as lists: pairs (`[["PRIVATE-TOKEN", "x"]]`, Headers entries) and
 * flat raw header lists (`["Private-Token", "x", "Accept", "*"]`, Node's rawHeaders). After a
 * string naming a secret, the next item is replaced whatever it is.
 */
function sanitizeList(items: Iterable<unknown>, size: number, depth: number, ancestors: Set<object>): Json[] {
  const out: Json[] = [];
  let afterSensitiveName = false;
  for (const item of items) {
    if (out.length === MAX_ENTRIES) {
      out.push(`[${size - MAX_ENTRIES} more]`);
      break;
    }
    out.push(afterSensitiveName ? REDACTED : (sanitize(item, depth + 1, ancestors) ?? null));
    afterSensitiveName =
      !afterSensitiveName && typeof item === "string" && NAME_LIKE.test(item) && isSensitiveKey(item);
  }
  return out;
}

function sanitizeEntries(
  entries: Iterable<[unknown, unknown]>,
  size: number,
  depth: number,
  ancestors: Set<object>,
): JsonObject {
  const out = newObject();
  let count = 0;
  for (const [rawKey, value] of entries) {
    if (count === MAX_ENTRIES) {
      out["[more]"] = `${size - MAX_ENTRIES} more entries`;
      break;
    }
    count += 1;
    const key = typeof rawKey === "string" ? rawKey : safeString(() => String(rawKey));
    const rendered =
      value === UNREADABLE
        ? "[Unreadable]"
        : isSensitiveKey(key)
          ? REDACTED
          : sanitize(value, depth + 1, ancestors);
    if (rendered !== undefined) out[redactSecrets(key)] = rendered;
  }
  return out;
}

/** Top-level fields of a record: an Error passed as the whole object is logged as `err`. */
function sanitizeFields(obj: unknown): JsonObject {
  if (obj instanceof Error) return Object.assign(newObject(), { err: describeError(obj, true) });
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
    const value = sanitize(obj, 1, new Set());
    return value === undefined ? newObject() : Object.assign(newObject(), { value });
  }
  const rendered = sanitize(obj, 0, new Set());
  return typeof rendered === "object" && rendered !== null && !Array.isArray(rendered)
    ? rendered
    : newObject();
}

function isoTime(clock: { now(): number }): string {
  let ms: number | undefined;
  try {
    ms = clock.now();
    return new Date(ms).toISOString();
  } catch {
    return String(ms);
  }
}

/**
 * The record's fields, bindings first and the record's own after (a later one wins, once: pino's
 * own child() would write a field bound twice twice), with names pino writes itself renamed.
 */
function recordFields(bindings: JsonObject, obj: unknown): JsonObject {
  const fields = Object.assign(newObject(), bindings, sanitizeFields(obj));
  const out = newObject();
  for (const key of Object.keys(fields)) out[RESERVED.has(key) ? `_${key}` : key] = fields[key]!;
  return out;
}

/** One line, whatever went wrong above it. */
function fallbackLine(time: string, level: LogLevel): string {
  return `${JSON.stringify({ level, time, msg: "log record could not be rendered" })}\n`;
}

/**
 * A Logger over pino. Redaction is pino's logMethod hook: every record's fields and message are
 * sanitised (above) before pino serialises them, and child bindings when the child is made, so
 * nothing reaches pino's serialiser that was not redacted and bounded first.
 */
class PinoLogger implements Logger {
  readonly #pino: PinoInstance;
  readonly #bindings: JsonObject;
  readonly #clock: { now(): number };

  constructor(instance: PinoInstance, bindings: JsonObject, clock: { now(): number }) {
    this.#pino = instance;
    this.#bindings = bindings;
    this.#clock = clock;
  }

  debug(obj: Record<string, unknown>, msg: string): void {
    this.#emit("debug", obj, msg);
  }

  info(obj: Record<string, unknown>, msg: string): void {
    this.#emit("info", obj, msg);
  }

  warn(obj: Record<string, unknown>, msg: string): void {
    this.#emit("warn", obj, msg);
  }

  error(obj: Record<string, unknown>, msg: string): void {
    this.#emit("error", obj, msg);
  }

  child(bindings: Record<string, unknown>): Logger {
    let merged: JsonObject;
    try {
      merged = Object.assign(newObject(), this.#bindings, sanitizeFields(bindings));
    } catch {
      merged = this.#bindings;
    }
    return new PinoLogger(this.#pino, merged, this.#clock);
  }

  #emit(level: LogLevel, obj: unknown, msg: unknown): void {
    if (!this.#pino.isLevelEnabled(level)) return;
    try {
      this.#pino[level]({ [BINDINGS]: this.#bindings, [FIELDS]: obj }, msg as string);
    } catch {
      // The hook and pino's serialiser are not expected to throw; the sink's own failures are
      // caught where it writes. Should either fail, the caller still must not.
    }
  }
}

/** Where #emit hands the raw fields and bindings to the logMethod hook, which sanitises them. */
const BINDINGS = Symbol("bindings");
const FIELDS = Symbol("fields");
type RawRecord = { [BINDINGS]: JsonObject; [FIELDS]: unknown };

type PinoInstance = PinoBase<never, boolean>;

export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? "info";
  if (!Object.hasOwn(SEVERITY, level)) {
    throw new TypeError(`log level ${JSON.stringify(level)}: expected one of ${LOG_LEVELS.join(", ")}`);
  }
  const clock = options.clock ?? { now: () => Date.now() };
  const write = options.write ?? ((line: string) => process.stderr.write(line));
  // A sink that throws (closed pipe, full disk) must not break the caller. process.stderr, not
  // pino.destination(): it writes synchronously to files and pipes, so nothing is lost at exit.
  const stream: DestinationStream = {
    write(line: string) {
      try {
        write(line);
      } catch {
        // dropped
      }
    },
  };
  const instance = pino(
    {
      level,
      base: undefined,
      messageKey: "msg",
      // Errors were rendered by sanitize() already ({name, message, cause}); pino's own err
      // serializer would add the stack and fields this logger leaves out on purpose.
      serializers: { err: (value: unknown) => value },
      timestamp: () => `,"time":${JSON.stringify(isoTime(clock))}`,
      formatters: { level: (label) => ({ level: label }) },
      hooks: {
        logMethod(args, method, levelNumber) {
          const [raw, msg] = args as unknown as [RawRecord, unknown];
          let fields: JsonObject;
          let text: string;
          try {
            fields = recordFields(raw[BINDINGS], raw[FIELDS]);
            text = typeof msg === "string" ? redactSecrets(msg) : safeString(() => String(msg));
          } catch {
            stream.write(fallbackLine(isoTime(clock), instance.levels.labels[levelNumber] as LogLevel));
            return;
          }
          method.apply(this, [fields as object, text] as never);
        },
      },
    },
    stream,
  );
  const base = options.base ? sanitizeFields(options.base) : newObject();
  return new PinoLogger(instance, base, clock);
}

/** Discards everything; for tests and callers that take an optional logger. */
export const nullLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child() {
    return nullLogger;
  },
};
