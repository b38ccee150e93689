/**
 * Webhook signals from a follower to the leader. Both replicas sit behind one Service, so about
 * half of GitLab's deliveries reach a replica that does not reconcile. Every replica authenticates,
 * bounds, validates and de-duplicates a delivery itself (src/gitlab/webhook.ts) and answers 2xx at
 * once; a follower then sends only the parsed signal (a few ids and paths) to the leader, never the
 * raw body and never the webhook secret.
 *
 * Replica-to-replica requests (POST /webhooks/relay) carry an HMAC-SHA256 over
 * (version, time, nonce, sender, body) keyed by relayKey(webhook secret): an HKDF of the secret with
 * a fixed label, so the secret itself never leaves the process and a captured request reveals
 * nothing that would pass X-Gitlab-Token. The receiver checks the headers and Content-Length
 * before reading the body, the time against a freshness window, the MAC in constant time, the nonce
 * against a replay cache, and the signals against the same shape parseWebhook produces. Only a
 * replica that reconciles applies them; any other answers 503 and the sender keeps them (it never
 * relays them again: no loops while the lease moves).
 *
 * This module is pure apart from the request handler; the sender (pending queue, retries) is
 * relay-sender.ts and the leader's address is found by leader-pod.ts.
 */
import { createHmac, hkdfSync, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import { NatsbindError, TerminalError } from "../errors.ts";
import { GROUP_EVENTS, MAX_PATH_LENGTH, PROJECT_EVENTS, type GitLabSignal } from "../gitlab/signals.ts";

export const RELAY_PATH = "/webhooks/relay";
export const RELAY_VERSION = "v1";
/** Fixed HKDF label: a key for this purpose only, distinct from anything else derived from the secret. */
const HKDF_INFO = "natsbind webhook relay v1";
const HKDF_SALT = "natsbind.io";
export const HEADER_TIME = "x-natsbind-relay-time";
export const HEADER_NONCE = "x-natsbind-relay-nonce";
export const HEADER_FROM = "x-natsbind-relay-from";
export const HEADER_SIGNATURE = "x-natsbind-relay-signature";
/** Signals per request; the sender sends bigger queues in several requests. */
export const MAX_SIGNALS_PER_REQUEST = 64;
/** 64 signals with two 1,024-character paths each fit; anything larger is refused unread. */
export const MAX_RELAY_BODY_BYTES = 192 * 1024;
/** A request older or newer than this (by the sender's clock) is refused. */
export const DEFAULT_FRESHNESS_MS = 30_000;
export const DEFAULT_REPLAY_ENTRIES = 100_000;
const NONCE = /^[0-9a-f]{32}$/;
const SIGNATURE = /^v1=[0-9a-f]{64}$/;
const FROM = /^[A-Za-z0-9._@:[\]/-]{1,253}$/;

export class RelayConfigError extends TerminalError {}
export class RelayRejectedError extends NatsbindError {}

/** The relay's MAC key: HKDF-SHA256 of the webhook secret with a fixed label. */
export function relayKey(webhookSecret: string): Buffer {
  if (webhookSecret.length === 0) throw new RelayConfigError("webhook relay: the webhook secret is empty");
  return Buffer.from(hkdfSync("sha256", webhookSecret, HKDF_SALT, HKDF_INFO, 32));
}

export interface RelayEnvelope {
  time: number;
  nonce: string;
  from: string;
}

export function relaySignature(key: Buffer, envelope: RelayEnvelope, body: Buffer): string {
  const mac = createHmac("sha256", key);
  mac.update(`natsbind-relay-${RELAY_VERSION}\n${envelope.time}\n${envelope.nonce}\n${envelope.from}\n`);
  mac.update(body);
  return `v1=${mac.digest("hex")}`;
}

/** Headers and body of one relay request (the caller picks time and nonce: tests inject them). */
export function signRelayRequest(
  key: Buffer,
  envelope: RelayEnvelope,
  signals: readonly GitLabSignal[],
): { headers: Record<string, string>; body: Buffer } {
  const body = Buffer.from(JSON.stringify({ signals }), "utf8");
  return {
    headers: {
      "content-type": "application/json",
      [HEADER_TIME]: String(envelope.time),
      [HEADER_NONCE]: envelope.nonce,
      [HEADER_FROM]: envelope.from,
      [HEADER_SIGNATURE]: relaySignature(key, envelope, body),
    },
    body,
  };
}

// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;
const id = z.int().min(1);
const path = z
  .string()
  .min(1)
  .max(MAX_PATH_LENGTH)
  .refine((s) => !CONTROL_CHARS.test(s), { error: "must not contain control characters" });
/** The shapes parseWebhook produces, strictly: anything else in a relay request is refused. */
const SignalSchema = z.discriminatedUnion("kind", [
  z.strictObject({
    kind: z.literal("project"),
    event: z.enum(PROJECT_EVENTS),
    projectId: id,
    namespaceId: id.optional(),
    path: path.optional(),
    oldPath: path.optional(),
  }),
  z.strictObject({
    kind: z.literal("group"),
    event: z.enum(GROUP_EVENTS),
    groupId: id,
    fullPath: path.optional(),
    oldFullPath: path.optional(),
    parentGroupId: id.optional(),
  }),
]);
const BodySchema = z.strictObject({
  signals: z.array(SignalSchema).min(1).max(MAX_SIGNALS_PER_REQUEST),
});

/** Parses a relay body; the message names the first problem's field path. */
export function parseRelayBody(
  body: Buffer,
): { ok: true; signals: GitLabSignal[] } | { ok: false; message: string } {
  let document: unknown;
  try {
    document = JSON.parse(body.toString("utf8"));
  } catch {
    return { ok: false, message: "body is not valid JSON" };
  }
  const parsed = BodySchema.safeParse(document);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    return { ok: false, message: `${issue.path.join(".") || "(top level)"}: ${issue.message}` };
  }
  return { ok: true, signals: parsed.data.signals as GitLabSignal[] };
}

/**
 * Nonces seen within the freshness window. A nonce is kept until its request could no longer pass
 * the time check; when full of live nonces, new requests are refused (only a key holder can fill it).
 */
export class ReplayCache {
  readonly #maxEntries: number;
  /** nonce -> time after which it may be forgotten; insertion order ~ expiry order. */
  readonly #seen = new Map<string, number>();

  constructor(maxEntries: number) {
    this.#maxEntries = maxEntries;
  }

  get size(): number {
    return this.#seen.size;
  }

  /** "fresh" records the nonce; "replayed" and "full" record nothing. */
  check(nonce: string, forgetAfter: number, now: number): "fresh" | "replayed" | "full" {
    for (const [n, until] of this.#seen) {
      if (until > now) break;
      this.#seen.delete(n);
    }
    const until = this.#seen.get(nonce);
    if (until !== undefined && until > now) return "replayed";
    if (this.#seen.size >= this.#maxEntries) return "full";
    this.#seen.set(nonce, forgetAfter);
    return "fresh";
  }
}

export type RelayRejectReason =
  | "method-not-allowed"
  | "unauthenticated"
  | "stale"
  | "replayed"
  | "too-large"
  | "invalid"
  | "busy"
  | "not-leader"
  | "aborted";

export interface RelayReceiverOptions {
  key: Buffer;
  now: () => number;
  /** Applies signals when this replica reconciles and returns true; false: not the leader (503). */
  apply: (signals: GitLabSignal[], from: string) => boolean;
  freshnessMs?: number;
  replayEntries?: number;
  /** Relay requests whose bodies are read at once; more are answered 503 unread. */
  maxInFlight?: number;
  log?: { warn(obj: Record<string, unknown>, msg: string): void };
}

export type RelayReceiver = ((req: IncomingMessage, res: ServerResponse) => void) & {
  readonly counters: { received: number; applied: number; rejected: Record<RelayRejectReason, number> };
};

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === "string" ? v : undefined;
}

function send(res: ServerResponse, status: number, body: unknown, close = false): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": String(Buffer.byteLength(text)),
    "cache-control": "no-store",
    ...(close ? { connection: "close" } : {}),
  });
  res.end(text);
}

/** POST /webhooks/relay: see the module comment for the order of the checks. */
export function createRelayReceiver(o: RelayReceiverOptions): RelayReceiver {
  if (o.key.length < 32) throw new RelayConfigError("webhook relay: key must be at least 32 bytes");
  const freshnessMs = o.freshnessMs ?? DEFAULT_FRESHNESS_MS;
  const replay = new ReplayCache(o.replayEntries ?? DEFAULT_REPLAY_ENTRIES);
  const maxInFlight = o.maxInFlight ?? 4;
  let inFlight = 0;
  const counters = {
    received: 0,
    applied: 0,
    rejected: {
      "method-not-allowed": 0,
      unauthenticated: 0,
      stale: 0,
      replayed: 0,
      "too-large": 0,
      invalid: 0,
      busy: 0,
      "not-leader": 0,
      aborted: 0,
    } satisfies Record<RelayRejectReason, number>,
  };

  const reject = (
    req: IncomingMessage,
    res: ServerResponse,
    reason: RelayRejectReason,
    status: number,
    message: string,
    unread: boolean,
  ): void => {
    counters.rejected[reason] += 1;
    o.log?.warn({ reason, status, remoteAddress: req.socket.remoteAddress }, "webhook relay request refused");
    // An unread body is never read: the connection is cut once the answer is out.
    send(res, status, { error: message }, unread);
    if (unread) res.once("finish", () => req.socket.destroy());
  };

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    counters.received += 1;
    req.on("error", () => {});
    if (req.method !== "POST") return reject(req, res, "method-not-allowed", 405, "only POST", true);
    const time = Number(header(req, HEADER_TIME));
    const nonce = header(req, HEADER_NONCE) ?? "";
    const from = header(req, HEADER_FROM) ?? "";
    const signature = header(req, HEADER_SIGNATURE) ?? "";
    if (!Number.isSafeInteger(time) || !NONCE.test(nonce) || !FROM.test(from) || !SIGNATURE.test(signature))
      return reject(req, res, "unauthenticated", 401, "missing or malformed relay authentication", true);
    const declared = Number(header(req, "content-length"));
    if (!Number.isSafeInteger(declared) || declared < 0)
      return reject(req, res, "invalid", 411, "Content-Length is required", true);
    if (declared > MAX_RELAY_BODY_BYTES)
      return reject(req, res, "too-large", 413, `body larger than ${MAX_RELAY_BODY_BYTES} bytes`, true);
    const now = o.now();
    if (Math.abs(now - time) > freshnessMs)
      return reject(req, res, "stale", 401, "relay request outside the freshness window", true);
    if (inFlight >= maxInFlight) return reject(req, res, "busy", 503, "too many relay requests", true);

    inFlight += 1;
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      inFlight -= 1;
    };
    req.on("data", (chunk: Buffer) => {
      if (done) return;
      size += chunk.length;
      if (size > declared) {
        finish();
        chunks.length = 0;
        reject(req, res, "too-large", 413, "body longer than its Content-Length", true);
        return;
      }
      chunks.push(chunk);
    });
    req.on("close", () => {
      if (done) return;
      finish();
      counters.rejected.aborted += 1;
    });
    req.on("end", () => {
      if (done) return;
      finish();
      const body = Buffer.concat(chunks, size);
      const expected = Buffer.from(relaySignature(o.key, { time, nonce, from }, body), "utf8");
      const given = Buffer.from(signature, "utf8");
      if (given.length !== expected.length || !timingSafeEqual(given, expected))
        return reject(req, res, "unauthenticated", 401, "relay signature does not match", false);
      const seen = replay.check(nonce, time + freshnessMs + 1, o.now());
      if (seen === "replayed") return reject(req, res, "replayed", 401, "relay nonce already used", false);
      if (seen === "full") return reject(req, res, "busy", 503, "relay replay cache full", false);
      const parsed = parseRelayBody(body);
      if (!parsed.ok) return reject(req, res, "invalid", 400, parsed.message, false);
      if (!o.apply(parsed.signals, from))
        return reject(req, res, "not-leader", 503, "this replica does not reconcile", false);
      counters.applied += parsed.signals.length;
      send(res, 202, { applied: parsed.signals.length });
    });
  };
  return Object.assign(handler, { counters });
}
