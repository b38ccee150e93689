/**
 * The token exchange door, POST /v1/credentials: a GitLab CI job sends its ID token as
 * `Authorization: Bearer <token>` and an optional JSON body `{"role","ttl","publicKey"}`, and gets
 * a short-lived NATS user JWT (JSON, or with `Accept: text/plain` the creds file itself, for
 * `curl -o`). This file only speaks HTTP: it bounds and validates the request, hands the issuer
 * an IssueRequest, and maps the IssueResult to a status. Verification, policy, rate limits and
 * audit are the issuer's.
 *
 * The token is a bearer credential: it is read from the Authorization header only (a token in the
 * body or the query is refused and never used), and it never reaches a log line or an answer.
 * Every answer is JSON `{"error","message"}` on refusal and carries `Cache-Control: no-store`.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import { describeError } from "../errors.ts";
import { canDrain, cutAfterAnswer, discardRest, header } from "../http/drain.ts";
import { jsonNestingProblem } from "../nesting.ts";
import { formatCreds } from "../nats/creds.ts";
import { isPublicKey } from "../nats/keys.ts";
import { systemClock } from "../runtime/clock.ts";
import type { Clock } from "../runtime/clock.ts";
import { MAX_DURATION_LENGTH, parseDuration } from "../units.ts";
import type { CredentialIssuer, IssueRequest, Issued, Refused } from "./types.ts";

export const CREDENTIALS_PATH = "/v1/credentials";
/** Longest request body; a JSON body of three short fields is well under 1 KiB. */
export const MAX_BODY_BYTES = 16 * 1024;
/**
 * Longest bearer token. GitLab's ID tokens are 1-2 KiB; the listener's header limit
 * (HttpServerOptions.maxHeaderBytes, 32 KiB by default) lets a longer one arrive so that it gets
 * this door's 401 rather than Node's bare 431.
 */
export const MAX_TOKEN_BYTES = 16 * 1024;
/** Longest ttl a request may name; the issuer caps it at credentials.maxTtl (never refuses for it). */
export const MAX_REQUEST_TTL_MS = 24 * 60 * 60 * 1000;
export const DEFAULT_BODY_TIMEOUT_MS = 5_000;
/** Requests being read or issued at once; more are answered 503 with Retry-After. */
export const DEFAULT_MAX_IN_FLIGHT = 256;
const MAX_MESSAGE_LENGTH = 1024;

export type ExchangeLogger = {
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
  error(obj: Record<string, unknown>, msg: string): void;
};

export type ExchangeHandlerOptions = {
  issuer: CredentialIssuer;
  log: ExchangeLogger;
  /**
   * The address a request is rate-limited and audited under. Default: the TCP peer's address
   * (IPv4-mapped IPv6 shown as IPv4). X-Forwarded-For is not trusted unless this says so.
   */
  clientAddress?: (req: IncomingMessage) => string;
  /** Time to receive the body once the headers are in; default 5 s (408 after it). */
  bodyTimeoutMs?: number;
  maxInFlight?: number;
  /**
   * A request this door refused itself, before the issuer saw it (bad method, body, header): for
   * the audit log, so every refusal has a line. No request content is passed.
   */
  onRefused?: (refusal: {
    client: string;
    status: number;
    error: ExchangeErrorCode;
    message: string;
  }) => void;
  /** Timers for the body deadline; default the system clock. */
  clock?: Clock;
};

/** Error codes of this door's answers: the issuer's RefusalCode and the HTTP-level ones. */
export type ExchangeErrorCode =
  | "invalid_token"
  | "forbidden"
  | "bad_request"
  | "rate_limited"
  | "unavailable"
  | "method_not_allowed"
  | "not_acceptable"
  | "request_timeout"
  | "payload_too_large"
  | "unsupported_media_type"
  | "internal";

export type ExchangeCounters = {
  requests: number;
  /** Answers by HTTP status ("200", "401", ...). */
  byStatus: Record<string, number>;
};

export type ExchangeHandler = ((req: IncomingMessage, res: ServerResponse) => void) & {
  readonly counters: Readonly<ExchangeCounters>;
};

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** The body, strict: an unknown field is refused by name. */
export const ExchangeBodySchema = z.strictObject({
  role: z
    .string("must be a string (a role name)")
    .regex(DNS_LABEL, 'must be a role name: lower-case letters, digits and "-", at most 63 characters')
    .optional(),
  ttl: z
    .string('must be a string (a duration such as "5m")')
    .max(MAX_DURATION_LENGTH, `must be at most ${MAX_DURATION_LENGTH} characters`)
    .transform((text, ctx) => {
      const parsed = parseDuration(text, MAX_REQUEST_TTL_MS);
      if ("problem" in parsed) {
        ctx.addIssue({ code: "custom", message: parsed.problem });
        return z.NEVER;
      }
      if (parsed.value <= 0) {
        ctx.addIssue({ code: "custom", message: "must be longer than 0" });
        return z.NEVER;
      }
      return parsed.value;
    })
    .optional(),
  publicKey: z
    .string("must be a string (a user public nkey)")
    .max(64, "must be a user public nkey (56 characters starting with U)")
    .refine((key) => isPublicKey(key, "user"), "must be a user public nkey (56 characters starting with U)")
    .optional(),
});

export type ExchangeBody = z.output<typeof ExchangeBodySchema>;

/** Field names that say "this is the token": refused in the body, the header is the only way in. */
const TOKEN_FIELD = /token|jwt|bearer|authori[sz]ation|password|creds/i;
/** A compact JWS (what a GitLab ID token is), wherever it appears in the body. */
const JWT_SHAPE = /^\s*eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\s*$/;
/** RFC 6750 b64token. */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

type Representation = "json" | "creds";

/**
 * What the client accepts, between the JSON answer and the creds file (text/plain). The most
 * specific matching media range gives each its q; JSON wins ties (and an absent Accept); neither
 * acceptable: undefined (406).
 */
export function chooseRepresentation(accept: string | undefined): Representation | undefined {
  if (accept === undefined || accept.trim() === "") return "json";
  const best = { json: { q: 0, specificity: -1 }, creds: { q: 0, specificity: -1 } };
  const targets: Record<Representation, [string, string]> = {
    json: ["application", "json"],
    creds: ["text", "plain"],
  };
  for (const range of accept.split(",").slice(0, 32)) {
    const [mediaType = "", ...params] = range.split(";");
    const [type = "", subtype = ""] = mediaType.trim().toLowerCase().split("/");
    let q = 1;
    for (const param of params) {
      const [name = "", value = ""] = param.split("=");
      if (name.trim().toLowerCase() !== "q") continue;
      q = /^\s*(0(\.[0-9]{0,3})?|1(\.0{0,3})?)\s*$/.test(value) ? Number(value) : 0;
    }
    for (const kind of ["json", "creds"] as const) {
      const [wantType, wantSubtype] = targets[kind];
      const specificity =
        type === wantType && subtype === wantSubtype
          ? 2
          : type === wantType && subtype === "*"
            ? 1
            : type === "*" && subtype === "*"
              ? 0
              : -1;
      if (specificity > best[kind].specificity) best[kind] = { q, specificity };
    }
  }
  if (best.json.q === 0 && best.creds.q === 0) return undefined;
  return best.creds.q > best.json.q ? "creds" : "json";
}

function isJsonContentType(value: string | undefined): boolean {
  if (value === undefined) return false;
  const mediaType = (value.split(";")[0] ?? "").trim().toLowerCase();
  return mediaType === "application/json" || /^[a-z0-9.+-]+\/[a-z0-9.+-]+\+json$/.test(mediaType);
}

/** The peer address as the rate limiter and the audit see it: "::ffff:10.0.0.1" is 10.0.0.1. */
export function socketAddress(req: IncomingMessage): string {
  const address = req.socket.remoteAddress ?? "unknown";
  return address.startsWith("::ffff:") && address.includes(".") ? address.slice(7) : address;
}

function shownName(name: string): string {
  return JSON.stringify(name.length > 64 ? `${name.slice(0, 64)}...` : name);
}

type Answer = {
  status: number;
  /** The error code of a refusal (for the log line), absent on success. */
  error?: ExchangeErrorCode;
  /** The refusal's message (for the audit line). */
  message?: string;
  body: string;
  contentType: string;
  headers: Record<string, string>;
};

function jsonAnswer(status: number, body: unknown, headers: Record<string, string> = {}): Answer {
  return { status, body: JSON.stringify(body), contentType: "application/json; charset=utf-8", headers };
}

function errorAnswer(
  status: number,
  error: ExchangeErrorCode,
  message: string,
  headers: Record<string, string> = {},
): Answer {
  return { ...jsonAnswer(status, { error, message }, headers), error, message };
}

const INVALID_TOKEN_CHALLENGE = { "www-authenticate": 'Bearer error="invalid_token"' };

function invalidToken(message: string): Answer {
  return errorAnswer(401, "invalid_token", message, INVALID_TOKEN_CHALLENGE);
}

/** The bearer token of the Authorization header, or the 401/400 answer saying what is wrong with it. */
function bearerToken(req: IncomingMessage): { token: string } | { answer: Answer } {
  let seen = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2)
    if (req.rawHeaders[i]!.toLowerCase() === "authorization") seen += 1;
  if (seen > 1) return { answer: errorAnswer(400, "bad_request", "more than one Authorization header") };
  const value = req.headers.authorization;
  if (value === undefined || value.trim() === "")
    return {
      answer: invalidToken(
        'missing Authorization header: send the ID token as "Authorization: Bearer <token>"',
      ),
    };
  if (value.length > MAX_TOKEN_BYTES + 64)
    return { answer: invalidToken(`bearer token longer than ${MAX_TOKEN_BYTES} bytes`) };
  const match = /^\s*([A-Za-z]+) +(\S+)\s*$/.exec(value);
  if (!match || match[1]!.toLowerCase() !== "bearer")
    return {
      answer: invalidToken('Authorization header must be "Bearer <token>" (one token, scheme Bearer)'),
    };
  const token = match[2]!;
  if (Buffer.byteLength(token) > MAX_TOKEN_BYTES)
    return { answer: invalidToken(`bearer token longer than ${MAX_TOKEN_BYTES} bytes`) };
  if (!B64TOKEN.test(token))
    return { answer: invalidToken("bearer token has characters a token cannot have") };
  return { token };
}

/** The body's options, or the 400 naming the field that is wrong. `text` is at most MAX_BODY_BYTES. */
function parseBody(text: string): { body: ExchangeBody } | { answer: Answer } {
  const bad = (message: string): { answer: Answer } => ({ answer: errorAnswer(400, "bad_request", message) });
  if (text.trim() === "") return { body: {} };
  const tooDeep = jsonNestingProblem(text);
  if (tooDeep !== undefined) return bad(`body ${tooDeep}`);
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch {
    return bad("body is not valid JSON");
  }
  if (typeof document !== "object" || document === null || Array.isArray(document))
    return bad('body must be a JSON object such as {"role": "ci", "ttl": "5m"}');
  for (const [name, value] of Object.entries(document)) {
    if (TOKEN_FIELD.test(name) || (typeof value === "string" && JWT_SHAPE.test(value)))
      return bad(
        `body field ${shownName(name)}: the ID token goes in the Authorization header ` +
          '("Authorization: Bearer <token>"), never in the body; this request was not used',
      );
  }
  const parsed = ExchangeBodySchema.safeParse(document);
  if (parsed.success) return { body: parsed.data };
  const issue = parsed.error.issues[0]!;
  if (issue.code === "unrecognized_keys")
    return bad(
      `body: unknown field ${shownName(String(issue.keys[0]))} (the fields are role, ttl and publicKey)`,
    );
  return bad(`body field ${shownName(issue.path.map(String).join("."))}: ${issue.message}`);
}

function positiveInt(value: number | undefined, fallback: number, name: string): number {
  const n = value ?? fallback;
  if (!Number.isSafeInteger(n) || n < 1) throw new TypeError(`exchange ${name}: must be a positive integer`);
  return n;
}

export function createExchangeHandler(opts: ExchangeHandlerOptions): ExchangeHandler {
  const { issuer, log } = opts;
  const clientAddress = opts.clientAddress ?? socketAddress;
  const clock = opts.clock ?? systemClock;
  const bodyTimeoutMs = positiveInt(opts.bodyTimeoutMs, DEFAULT_BODY_TIMEOUT_MS, "bodyTimeoutMs");
  const maxInFlight = positiveInt(opts.maxInFlight, DEFAULT_MAX_IN_FLIGHT, "maxInFlight");
  const counters: ExchangeCounters = { requests: 0, byStatus: {} };
  let inFlight = 0;

  const send = (res: ServerResponse, answer: Answer): void => {
    counters.byStatus[answer.status] = (counters.byStatus[answer.status] ?? 0) + 1;
    if (res.headersSent || res.destroyed) return;
    res.writeHead(answer.status, {
      "content-type": answer.contentType,
      "content-length": String(Buffer.byteLength(answer.body)),
      "cache-control": "no-store",
      ...answer.headers,
    });
    res.end(answer.body);
  };

  /** A refusal by this door (never the issuer's): logged with fixed fields, no request content. */
  const refuse = (res: ServerResponse, answer: Answer, client: string): void => {
    log.info({ status: answer.status, error: answer.error, client }, "credentials request refused");
    if (answer.error)
      opts.onRefused?.({ client, status: answer.status, error: answer.error, message: answer.message ?? "" });
    send(res, answer);
  };

  /** Answers before the body was read: drop what is left of it, up to a bound, then cut. */
  const refuseUnread = (req: IncomingMessage, res: ServerResponse, answer: Answer, client: string): void => {
    const drainable = canDrain(req);
    refuse(
      res,
      drainable ? answer : { ...answer, headers: { ...answer.headers, connection: "close" } },
      client,
    );
    if (drainable) discardRest(req);
    else cutAfterAnswer(req, res);
  };

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    counters.requests += 1;
    // A client that goes away mid-body must not become an unhandled 'error' event.
    req.on("error", () => {});
    let client: string;
    try {
      client = clientAddress(req);
    } catch (err) {
      log.error({ err: describeError(err) }, "credentials clientAddress threw");
      refuseUnread(
        req,
        res,
        errorAnswer(500, "internal", "internal error; natsbind's log has the details"),
        "unknown",
      );
      return;
    }
    if (req.method !== "POST") {
      refuseUnread(
        req,
        res,
        errorAnswer(405, "method_not_allowed", "only POST is allowed", { allow: "POST" }),
        client,
      );
      return;
    }
    // RFC 6750 allows a token in the query; here it would end up in access logs: refuse any query.
    if ((req.url ?? "").includes("?")) {
      refuseUnread(
        req,
        res,
        errorAnswer(
          400,
          "bad_request",
          `${CREDENTIALS_PATH} takes no query parameters: the ID token goes in the Authorization header, the options in a JSON body; this request was not used`,
        ),
        client,
      );
      return;
    }
    const representation = chooseRepresentation(header(req, "accept"));
    if (representation === undefined) {
      refuseUnread(
        req,
        res,
        errorAnswer(
          406,
          "not_acceptable",
          "Accept must allow application/json or text/plain (the creds file)",
        ),
        client,
      );
      return;
    }
    const declaredLength = header(req, "content-length");
    if (declaredLength !== undefined && !(Number(declaredLength) <= MAX_BODY_BYTES)) {
      refuseUnread(
        req,
        res,
        errorAnswer(413, "payload_too_large", `body larger than ${MAX_BODY_BYTES} bytes`),
        client,
      );
      return;
    }
    const hasBody =
      (declaredLength !== undefined && Number(declaredLength) > 0) ||
      req.headers["transfer-encoding"] !== undefined;
    if (hasBody && !isJsonContentType(header(req, "content-type"))) {
      refuseUnread(
        req,
        res,
        errorAnswer(
          415,
          "unsupported_media_type",
          "Content-Type must be application/json when there is a body",
        ),
        client,
      );
      return;
    }
    if (inFlight >= maxInFlight) {
      refuseUnread(
        req,
        res,
        errorAnswer(503, "unavailable", "too many credential requests in flight; retry", {
          "retry-after": "1",
        }),
        client,
      );
      return;
    }
    inFlight += 1;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      inFlight -= 1;
    };
    res.once("close", release);
    readBody(req, res, client, (text) => {
      void answerRequest(req, res, client, representation, text).finally(release);
    });
  };

  /** Reads the body under the size bound and the deadline; `then` gets it as text, or never. */
  const readBody = (
    req: IncomingMessage,
    res: ServerResponse,
    client: string,
    then: (text: string) => void,
  ): void => {
    const chunks: Buffer[] = [];
    let received = 0;
    let done = false;
    const stop = (): void => {
      done = true;
      clock.clearTimeout(deadline);
      req.off("data", onData);
      req.off("end", onEnd);
      chunks.length = 0;
    };
    const deadline = clock.setTimeout(() => {
      if (done) return;
      stop();
      refuse(
        res,
        errorAnswer(408, "request_timeout", `body not received within ${bodyTimeoutMs} ms`, {
          connection: "close",
        }),
        client,
      );
      cutAfterAnswer(req, res);
    }, bodyTimeoutMs);
    const onData = (chunk: Buffer): void => {
      received += chunk.length;
      if (received > MAX_BODY_BYTES) {
        stop();
        const tooLarge = errorAnswer(413, "payload_too_large", `body larger than ${MAX_BODY_BYTES} bytes`, {
          connection: "close",
        });
        refuse(res, tooLarge, client);
        discardRest(req, received);
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      const body = Buffer.concat(chunks, received);
      stop();
      let text: string;
      try {
        text = new TextDecoder("utf-8", { fatal: true }).decode(body);
      } catch {
        refuse(res, errorAnswer(400, "bad_request", "body is not valid UTF-8"), client);
        return;
      }
      then(text);
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("close", () => {
      if (!done) stop();
    });
  };

  const answerRequest = async (
    req: IncomingMessage,
    res: ServerResponse,
    client: string,
    representation: Representation,
    text: string,
  ): Promise<void> => {
    const body = parseBody(text);
    if ("answer" in body) return refuse(res, body.answer, client);
    const bearer = bearerToken(req);
    if ("answer" in bearer) return refuse(res, bearer.answer, client);
    const { token } = bearer;
    const options = body.body;
    // Decided before issuing, so a request that cannot be answered issues (and audits) nothing.
    if (representation === "creds" && options.publicKey !== undefined)
      return refuse(
        res,
        errorAnswer(
          406,
          "not_acceptable",
          "text/plain answers with a creds file, which needs the user seed: with publicKey natsbind returns " +
            'only the JWT, so ask for application/json and read "jwt" (your seed completes the creds file)',
        ),
        client,
      );
    const request: IssueRequest = { via: "exchange", token, client };
    if (options.role !== undefined) request.role = options.role;
    if (options.ttl !== undefined) request.ttlMs = options.ttl;
    if (options.publicKey !== undefined) request.userPublicKey = options.publicKey;
    const scrub = (s: string): string => s.split(token).join("[REDACTED]");
    let answer: Answer;
    try {
      const result = await issuer.issue(request);
      if (result.kind === "issued")
        answer = issuedAnswer(result, representation, options.publicKey !== undefined);
      else if (Object.hasOwn(REFUSAL_STATUS, result.code)) answer = refusedAnswer(result, scrub);
      else
        throw new Error(
          `issuer refused with an unknown code ${JSON.stringify(String(result.code).slice(0, 32))}`,
        );
    } catch (err) {
      log.error({ client, err: scrub(describeError(err)) }, "credential issuance failed");
      answer = errorAnswer(500, "internal", "internal error; natsbind's log has the details");
    }
    if (res.destroyed) {
      log.info({ client, status: answer.status }, "credentials client left before the answer");
      return;
    }
    send(res, answer);
  };

  return Object.assign(handler, { counters });
}

function issuedAnswer(issued: Issued, representation: Representation, keyFromJob: boolean): Answer {
  let creds: string | undefined;
  if (!keyFromJob) {
    // The issuer made the key pair: without it the job could not use the JWT.
    if (issued.userKey === undefined || issued.userKey.publicKey !== issued.userPublicKey)
      throw new Error("issuer returned no user key pair matching the user public key");
    creds = formatCreds(issued.jwt, issued.userKey);
  }
  if (representation === "creds")
    return { status: 200, body: creds!, contentType: "text/plain; charset=utf-8", headers: {} };
  return jsonAnswer(200, {
    account: issued.account,
    role: issued.role,
    user: issued.userPublicKey,
    jwt: issued.jwt,
    ...(creds !== undefined ? { creds } : {}),
    expiresAt: new Date(issued.expiresAt).toISOString().replace(/\.000Z$/, "Z"),
    servers: issued.servers,
  });
}

const REFUSAL_STATUS: Record<Refused["code"], number> = {
  invalid_token: 401,
  forbidden: 403,
  bad_request: 400,
  rate_limited: 429,
  unavailable: 503,
};

function refusedAnswer(refused: Refused, scrub: (s: string) => string): Answer {
  const status = REFUSAL_STATUS[refused.code];
  const message = scrub(refused.message).slice(0, MAX_MESSAGE_LENGTH);
  const headers: Record<string, string> = {};
  if (refused.code === "invalid_token") Object.assign(headers, INVALID_TOKEN_CHALLENGE);
  if (refused.code === "rate_limited" || refused.code === "unavailable") {
    const seconds = refused.retryAfterS;
    headers["retry-after"] = String(
      seconds !== undefined && Number.isFinite(seconds) ? Math.max(1, Math.ceil(seconds)) : 1,
    );
  }
  return errorAnswer(status, refused.code, message, headers);
}
