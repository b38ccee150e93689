/**
 * Receiver for GitLab system hooks and group webhooks (POST /webhooks/gitlab). It authenticates,
 * bounds and validates a delivery, answers at once, and only then hands a signal to `onSignal`,
 * which must just enqueue: GitLab retries slow or failing deliveries and disables hooks that keep
 * failing. Retries are recognised by Idempotency-Key (or X-Gitlab-Event-UUID) and answered 200.
 * The token and the body are never logged.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { canDrain, cutAfterAnswer, discardRest, header } from "../http/drain.ts";
import { TerminalError, describeError } from "../errors.ts";
import { jsonNestingProblem } from "../nesting.ts";
import { parseWebhook } from "./signals.ts";
import type { GitLabSignal } from "./signals.ts";

export const WEBHOOK_PATH = "/webhooks/gitlab";
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;
export const DEFAULT_DEDUPE_ENTRIES = 10_000;
export const DEFAULT_DEDUPE_TTL_MS = 24 * 60 * 60 * 1000;
/** Longest Idempotency-Key / X-Gitlab-Event-UUID kept for dedupe; GitLab sends UUIDs. */
export const MAX_DELIVERY_KEY_LENGTH = 256;
/**
 * Authenticated bodies read at the same time and their total size (declared, or maxBodyBytes when
 * chunked): a flood by a sender that knows the secret costs bounded memory. Requests over the
 * budget wait unread (the kernel's socket buffers hold their bytes) in a bounded line.
 */
export const DEFAULT_IN_FLIGHT = { maxRequests: 8, maxBytes: 8 * 1024 * 1024, maxWaiting: 256 };

export type WebhookLogger = {
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
};

export type WebhookHandlerOptions = {
  /** Shared secret GitLab sends in X-Gitlab-Token. */
  secretToken: string;
  maxBodyBytes?: number;
  dedupe?: { maxEntries?: number; ttlMs?: number };
  /** Clock for dedupe expiry, ms. */
  now?: () => number;
  /** Called after the response is sent; must only enqueue. A throw is logged and counted. */
  onSignal: (signal: GitLabSignal) => void;
  log?: WebhookLogger;
  inFlight?: { maxRequests?: number; maxBytes?: number; maxWaiting?: number };
};

export type WebhookRejectReason =
  | "method-not-allowed"
  | "unauthorized"
  | "unsupported-media-type"
  | "too-large"
  | "malformed-json"
  | "invalid-payload"
  /** Over the in-flight budget with a full waiting line (503, unread). */
  | "busy"
  /** The client went away before the body was complete. */
  | "aborted";

export type WebhookCounters = {
  /** Every request that reached the handler. */
  received: number;
  /** Deliveries turned into a signal. */
  accepted: number;
  /** Retries of an accepted delivery, answered 200 and not emitted again. */
  duplicates: number;
  /** Well-formed deliveries of events natsbind does not use (202). */
  ignored: number;
  rejected: Record<WebhookRejectReason, number>;
  /** Times onSignal threw. */
  sinkErrors: number;
};

export type WebhookHandler = ((req: IncomingMessage, res: ServerResponse) => void) & {
  /** Live counters, for metrics. */
  readonly counters: Readonly<Omit<WebhookCounters, "rejected">> & {
    readonly rejected: Readonly<Record<WebhookRejectReason, number>>;
  };
};

/**
 * Remembers delivery keys for `ttlMs`, at most `maxEntries` of them (least recently seen dropped
 * first). Time comes from the caller, so tests drive expiry with a fake clock.
 */
export class DeliveryDedupe {
  readonly #maxEntries: number;
  readonly #ttlMs: number;
  /** key -> first-seen time; Map order is least recently seen first. */
  readonly #seen = new Map<string, number>();

  constructor(maxEntries: number, ttlMs: number) {
    this.#maxEntries = maxEntries;
    this.#ttlMs = ttlMs;
  }

  get size(): number {
    return this.#seen.size;
  }

  /** True if `key` was recorded within the TTL; refreshes its recency but not its expiry. */
  has(key: string, now: number): boolean {
    const seenAt = this.#seen.get(key);
    if (seenAt === undefined) return false;
    this.#seen.delete(key);
    if (now - seenAt >= this.#ttlMs) return false;
    this.#seen.set(key, seenAt);
    return true;
  }

  add(key: string, now: number): void {
    this.#seen.delete(key);
    this.#seen.set(key, now);
    // Oldest-first order is close to expiry order, so expired entries gather at the front.
    for (const [k, seenAt] of this.#seen) {
      if (this.#seen.size <= this.#maxEntries && now - seenAt < this.#ttlMs) break;
      this.#seen.delete(k);
    }
  }
}

function isJsonContentType(value: string | undefined): boolean {
  if (value === undefined) return false;
  const mediaType = (value.split(";")[0] ?? "").trim().toLowerCase();
  return mediaType === "application/json" || /^[a-z0-9.+-]+\/[a-z0-9.+-]+\+json$/.test(mediaType);
}

function positiveInt(value: number | undefined, fallback: number, name: string): number {
  const n = value ?? fallback;
  if (!Number.isSafeInteger(n) || n < 1)
    throw new TerminalError(`webhook ${name}: must be a positive integer`);
  return n;
}

function send(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": String(Buffer.byteLength(text)),
    "cache-control": "no-store",
    ...headers,
  });
  res.end(text);
}

export function createWebhookHandler(opts: WebhookHandlerOptions): WebhookHandler {
  if (opts.secretToken.length === 0) throw new TerminalError("webhook secretToken: must not be empty");
  const maxBodyBytes = positiveInt(opts.maxBodyBytes, DEFAULT_MAX_BODY_BYTES, "maxBodyBytes");
  const dedupe = new DeliveryDedupe(
    positiveInt(opts.dedupe?.maxEntries, DEFAULT_DEDUPE_ENTRIES, "dedupe.maxEntries"),
    positiveInt(opts.dedupe?.ttlMs, DEFAULT_DEDUPE_TTL_MS, "dedupe.ttlMs"),
  );
  const now = opts.now ?? Date.now;
  const maxInFlight = positiveInt(
    opts.inFlight?.maxRequests,
    DEFAULT_IN_FLIGHT.maxRequests,
    "inFlight.maxRequests",
  );
  const maxInFlightBytes = positiveInt(
    opts.inFlight?.maxBytes,
    Math.max(DEFAULT_IN_FLIGHT.maxBytes, maxBodyBytes),
    "inFlight.maxBytes",
  );
  const maxWaiting = positiveInt(
    opts.inFlight?.maxWaiting,
    DEFAULT_IN_FLIGHT.maxWaiting,
    "inFlight.maxWaiting",
  );
  if (maxInFlightBytes < maxBodyBytes)
    throw new TerminalError("webhook inFlight.maxBytes: must be at least maxBodyBytes");
  let inFlight = 0;
  let inFlightBytes = 0;
  const waiting: { charge: number; start: () => void; cancelled: boolean }[] = [];
  const fits = (charge: number): boolean =>
    inFlight < maxInFlight && inFlightBytes + charge <= maxInFlightBytes;
  const release = (charge: number): void => {
    inFlight -= 1;
    inFlightBytes -= charge;
    while (waiting.length > 0) {
      const next = waiting[0]!;
      if (next.cancelled) {
        waiting.shift();
        continue;
      }
      if (!fits(next.charge)) break;
      waiting.shift();
      next.start();
    }
  };
  const log = opts.log;
  // Comparing fixed-size digests keeps the comparison constant-time whatever the lengths are.
  const secretDigest = createHash("sha256").update(opts.secretToken, "utf8").digest();
  const tokenMatches = (token: string | undefined): boolean =>
    token !== undefined && timingSafeEqual(createHash("sha256").update(token, "utf8").digest(), secretDigest);

  const counters: WebhookCounters = {
    received: 0,
    accepted: 0,
    duplicates: 0,
    ignored: 0,
    rejected: {
      "method-not-allowed": 0,
      unauthorized: 0,
      "unsupported-media-type": 0,
      "too-large": 0,
      "malformed-json": 0,
      "invalid-payload": 0,
      busy: 0,
      aborted: 0,
    },
    sinkErrors: 0,
  };

  const reject = (
    req: IncomingMessage,
    res: ServerResponse,
    reason: WebhookRejectReason,
    status: number,
    message: string,
    headers: Record<string, string> = {},
  ): void => {
    counters.rejected[reason] += 1;
    log?.warn(
      { reason, status, remoteAddress: req.socket.remoteAddress, message },
      "gitlab webhook rejected",
    );
    send(res, status, { error: message }, headers);
  };

  /** Answers before the body was read: drop what is left of it, up to a bound, then cut. */
  const rejectUnread = (
    req: IncomingMessage,
    res: ServerResponse,
    reason: WebhookRejectReason,
    status: number,
    message: string,
    headers: Record<string, string> = {},
  ): void => {
    const drainable = canDrain(req);
    reject(req, res, reason, status, message, drainable ? headers : { ...headers, connection: "close" });
    // Too much to drain: an unauthenticated sender cannot make this replica read it at all.
    if (drainable) discardRest(req);
    else cutAfterAnswer(req, res);
  };

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    counters.received += 1;
    // A client that goes away mid-body must not become an unhandled 'error' event.
    req.on("error", () => {});
    if (req.method !== "POST") {
      rejectUnread(req, res, "method-not-allowed", 405, "only POST is allowed", { allow: "POST" });
      return;
    }
    if (!tokenMatches(header(req, "x-gitlab-token"))) {
      rejectUnread(req, res, "unauthorized", 401, "missing or wrong X-Gitlab-Token");
      return;
    }
    if (!isJsonContentType(header(req, "content-type"))) {
      rejectUnread(req, res, "unsupported-media-type", 415, "Content-Type must be application/json");
      return;
    }
    const declaredLength = header(req, "content-length");
    if (declaredLength !== undefined && Number(declaredLength) > maxBodyBytes) {
      rejectUnread(req, res, "too-large", 413, `body larger than ${maxBodyBytes} bytes`);
      return;
    }
    const idempotencyKey = header(req, "idempotency-key");
    const eventUuid = header(req, "x-gitlab-event-uuid");
    const deliveryKey =
      idempotencyKey !== undefined
        ? `idempotency-key:${idempotencyKey}`
        : eventUuid !== undefined
          ? `event-uuid:${eventUuid}`
          : undefined;
    if (
      (idempotencyKey?.length ?? 0) > MAX_DELIVERY_KEY_LENGTH ||
      (eventUuid?.length ?? 0) > MAX_DELIVERY_KEY_LENGTH
    ) {
      rejectUnread(
        req,
        res,
        "invalid-payload",
        400,
        `Idempotency-Key and X-Gitlab-Event-UUID must be at most ${MAX_DELIVERY_KEY_LENGTH} characters`,
      );
      return;
    }

    const declared = declaredLength === undefined ? NaN : Number(declaredLength);
    const charge = Number.isSafeInteger(declared) && declared >= 0 ? declared : maxBodyBytes;
    const start = (): void => {
      inFlight += 1;
      inFlightBytes += charge;
      readBody(req, res, charge, deliveryKey);
    };
    if (fits(charge)) return start();
    if (waiting.length >= maxWaiting) {
      rejectUnread(req, res, "busy", 503, "too many webhook deliveries in flight");
      return;
    }
    const entry = { charge, start, cancelled: false };
    waiting.push(entry);
    req.on("close", () => {
      if (!req.complete) entry.cancelled = true;
    });
  };

  const readBody = (
    req: IncomingMessage,
    res: ServerResponse,
    charge: number,
    deliveryKey: string | undefined,
  ): void => {
    const chunks: Buffer[] = [];
    let received = 0;
    let done = false;
    const onData = (chunk: Buffer): void => {
      received += chunk.length;
      if (received > maxBodyBytes) {
        done = true;
        release(charge);
        req.off("data", onData);
        req.off("end", onEnd);
        chunks.length = 0;
        reject(req, res, "too-large", 413, `body larger than ${maxBodyBytes} bytes`);
        discardRest(req);
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      done = true;
      release(charge);
      finish(req, res, header(req, "x-gitlab-event"), Buffer.concat(chunks, received), deliveryKey);
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("close", () => {
      if (done) return;
      done = true;
      release(charge);
      counters.rejected.aborted += 1;
      log?.warn({ remoteAddress: req.socket.remoteAddress }, "gitlab webhook aborted by the client");
    });
  };

  const finish = (
    req: IncomingMessage,
    res: ServerResponse,
    eventHeader: string | undefined,
    body: Buffer,
    deliveryKey: string | undefined,
  ): void => {
    const text = body.toString("utf8");
    // GitLab's payloads nest a few levels; deeper is refused before JSON.parse builds it.
    const tooDeep = jsonNestingProblem(text);
    if (tooDeep !== undefined) {
      reject(req, res, "malformed-json", 400, `body ${tooDeep}`);
      return;
    }
    let document: unknown;
    try {
      document = JSON.parse(text);
    } catch {
      reject(req, res, "malformed-json", 400, "body is not valid JSON");
      return;
    }
    const parsed = parseWebhook(eventHeader, document);
    if (!parsed.ok) {
      if (parsed.reason === "invalid") {
        reject(req, res, "invalid-payload", 400, parsed.message);
        return;
      }
      counters.ignored += 1;
      log?.info({ message: parsed.message }, "gitlab webhook ignored");
      send(res, 202, { status: "ignored" });
      return;
    }
    const at = now();
    if (deliveryKey !== undefined && dedupe.has(deliveryKey, at)) {
      counters.duplicates += 1;
      log?.info({ deliveryKey }, "gitlab webhook retry ignored");
      send(res, 200, { status: "duplicate" });
      return;
    }
    if (deliveryKey !== undefined) dedupe.add(deliveryKey, at);
    counters.accepted += 1;
    const { signal } = parsed;
    log?.info(
      {
        event: signal.event,
        ...(signal.kind === "project" ? { projectId: signal.projectId } : { groupId: signal.groupId }),
        deliveryKey,
      },
      "gitlab webhook accepted",
    );
    send(res, 202, { status: "accepted" });
    // After the answer: a slow or throwing sink must not hold up GitLab or break the listener.
    try {
      opts.onSignal(signal);
    } catch (err) {
      counters.sinkErrors += 1;
      log?.warn({ event: signal.event, err: describeError(err) }, "gitlab webhook signal sink threw");
    }
  };

  return Object.assign(handler, { counters });
}
