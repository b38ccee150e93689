/**
 * The NATS auth callout door (issue 10, part 4): nats-server asks natsbind, on $SYS.REQ.USER.AUTH
 * of the callout account, whether a client that connected with an ID token may in; natsbind hands
 * the token to the one CredentialIssuer and answers with an authorization response holding a user
 * JWT for the client's connection key, or an error (the client sees "Authorization Violation").
 *
 * Who can publish requests here: nats-server itself, and users of the callout account with publish
 * permission on the subject. `natsbind init --callout` makes none such (the service user may only
 * answer, the sentinel is denied everything, any other user of the account is itself sent to the
 * callout), so a forged request needs someone who can mint callout-account users with publish
 * rights. Even then it gains nothing the token exchange would not give for the same ID token: the
 * issuer validates the token either way. So requests are checked for shape and self-consistency
 * (signed by the server key they name, for our account, bounded), not for which server sent them
 * (server keys are made fresh at every server start; natsbind cannot know them). What is malformed
 * gets no answer, is counted, and is logged at most once per interval (a flood cannot flood logs).
 *
 * Requests are handled concurrently, at most `maxConcurrent` at a time, with at most `maxPending`
 * waiting: past that they are dropped (nats-server refuses the client after its auth_timeout, the
 * client retries). The subscription is in a queue group: replicas share the requests, and each is
 * issued once (one audit line, one rate-limit count).
 *
 * Encrypted requests (the account JWT's authorization.xkey) are not supported: natsbind's callout
 * account has no xkey, so one arrives only from an account set up otherwise; it is counted and
 * logged, and left unanswered.
 */
import { encodeAuthorizationResponse } from "@nats-io/jwt";
import {
  connect,
  credsAuthenticator,
  type Msg,
  type NatsConnection,
  type Subscription,
} from "@nats-io/transport-node";
import { z } from "zod";
import {
  ConfigError,
  MAX_CREDS_FILE_BYTES,
  readConfigReferencedFile,
  type Config,
} from "../config/config.ts";
import { NatsbindError } from "../errors.ts";
import { decodeJwt } from "../nats/claims.ts";
import { parseCreds } from "../nats/creds.ts";
import { readSeedFile } from "../store/key-directory.ts";
import { isPublicKey, type NKeyPair } from "../nats/keys.ts";
import { hasControlCharacter } from "../nats/subjects.ts";
import type { Logger } from "../observability/logger.ts";
import { systemClock, type Clock } from "../runtime/clock.ts";
import { AUTH_CALLOUT_SUBJECT } from "./callout-account.ts";
import type { CredentialIssuer, IssueResult, RefusalCode } from "./types.ts";

export class CalloutError extends NatsbindError {}

/** Connections the callout answers on (credentials.callout.connections). */
export const DEFAULT_CALLOUT_CONNECTIONS = 2;
export const MAX_CALLOUT_CONNECTIONS = 16;

/** The `aud` nats-server gives its authorization requests. */
export const AUTH_REQUEST_AUDIENCE = "nats-authorization-request";
/** Header nats-server sets on an encrypted (xkey) request. */
const XKEY_HEADER = "Nats-Server-Xkey";
/**
 * A request carries the client's CONNECT options (the ID token, the sentinel JWT) and, over TLS,
 * its certificate chain as PEM: a few KiB, tens with long chains. Larger is not from a server.
 */
export const MAX_REQUEST_BYTES = 64 * 1024;
/** An ID token longer than this is refused before the issuer sees it (the exchange's bound). */
export const MAX_TOKEN_BYTES = 16 * 1024;
/** Role names are short (binding roles); a longer `user` is refused. */
const MAX_ROLE_LENGTH = 256;
/** Error text in a response (nats-server logs it). */
const MAX_ERROR_LENGTH = 256;
/** A malformed-request warning is logged at most once per this, per kind. */
const WARN_INTERVAL_MS = 10_000;

export interface CalloutOptions {
  servers: string | string[];
  /** Creds of natsbind's callout service user (an auth_users entry of the callout account). */
  credsText: string;
  /** Signs the responses: the callout account key or one of its signing keys. */
  signingKey: NKeyPair;
  /** The callout account's public key (A...). */
  calloutAccount: string;
  issuer: CredentialIssuer;
  log: Logger;
  /** Connect timeout, ms (default 5000). */
  timeoutMs?: number;
  /** Requests handled at once (default 64). */
  maxConcurrent?: number;
  /** Requests waiting for a slot; more are dropped (default 256). */
  maxPending?: number;
  /**
   * A request whose exp (now + the server's auth_timeout) passed longer ago than this is dropped:
   * the server stopped waiting. Allows for clock skew between natsbind and the servers.
   */
  clockSkewMs?: number;
  /** Queue group of the subscription (default "natsbind-callout"). */
  queue?: string;
  /**
   * Connections answering at once, each starting at another configured server (default 2): a
   * server that goes away never leaves the callout without a subscriber.
   */
  connections?: number;
  clock?: Clock;
  /** A CONNECT refused before the issuer was asked (no token, both token and password): for the audit log. */
  onRefused?: (refusal: { client: string; code: RefusalCode; reason: string; message: string }) => void;
}

export interface CalloutCounters {
  /** Messages received on $SYS.REQ.USER.AUTH. */
  received: number;
  /** Answered with a user JWT. */
  issued: number;
  /** Answered with an error (the issuer refused, or no usable token). */
  refused: number;
  /** Malformed, oversized, forged or stale requests: not answered. */
  invalid: number;
  /** Encrypted (xkey) requests: not supported, not answered. */
  encrypted: number;
  /** Dropped because maxPending requests were already waiting. */
  dropped: number;
  /** The issuer threw, or the response could not be signed or sent. */
  failed: number;
}

export interface Callout {
  /** Stops taking requests, finishes those taken, closes the connection. */
  stop(): Promise<void>;
  readonly counters: Readonly<CalloutCounters>;
}

const text = (max: number) => z.string().max(max);

/** What natsbind reads of an authorization request; everything else is ignored. */
const RequestClaims = z.looseObject({
  iss: z.string(),
  sub: z.string(),
  aud: z.string(),
  exp: z.number().optional(),
  nats: z.looseObject({
    type: z.literal("authorization_request"),
    server_id: z.looseObject({ id: z.string(), name: text(256).optional() }),
    user_nkey: z.string(),
    client_info: z.looseObject({ host: text(256).optional() }).optional(),
    connect_opts: z
      .looseObject({
        auth_token: z.string().optional(),
        user: z.string().optional(),
        pass: z.string().optional(),
      })
      .optional(),
  }),
});

interface AuthRequest {
  serverId: string;
  serverName: string;
  userNkey: string;
  client: string;
  connectOpts: { auth_token?: string | undefined; user?: string | undefined; pass?: string | undefined };
}

type Parsed =
  { ok: true; request: AuthRequest } | { ok: false; kind: "invalid" | "encrypted" | "stale"; why: string };

/** Checks one request; never throws. `why` never holds message content. */
function parseRequest(msg: Msg, calloutAccount: string, now: number, clockSkewMs: number): Parsed {
  if (msg.data.length > MAX_REQUEST_BYTES) {
    return { ok: false, kind: "invalid", why: `larger than ${MAX_REQUEST_BYTES} bytes (${msg.data.length})` };
  }
  if (!msg.reply) return { ok: false, kind: "invalid", why: "no reply subject" };
  // nats-server sends a JWT ("eyJ...") in the clear, or a sealed box with the xkey header.
  const looksLikeJwt =
    msg.data.length >= 3 && msg.data[0] === 0x65 && msg.data[1] === 0x79 && msg.data[2] === 0x4a;
  if (msg.headers?.has(XKEY_HEADER) || !looksLikeJwt) {
    return msg.headers?.has(XKEY_HEADER)
      ? { ok: false, kind: "encrypted", why: "encrypted with xkey (authorization.xkey): not supported" }
      : { ok: false, kind: "invalid", why: "not a JWT" };
  }
  let claims: z.output<typeof RequestClaims>;
  try {
    const parsed = RequestClaims.safeParse(
      decodeJwt(new TextDecoder().decode(msg.data), "authorization request"),
    );
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      return {
        ok: false,
        kind: "invalid",
        why: `not an authorization request (${issue?.path.join(".") || "claims"}: ${issue?.message})`,
      };
    }
    claims = parsed.data;
  } catch (err) {
    return { ok: false, kind: "invalid", why: (err as Error).message };
  }
  const n = claims.nats;
  if (claims.aud !== AUTH_REQUEST_AUDIENCE)
    return { ok: false, kind: "invalid", why: `aud is not ${AUTH_REQUEST_AUDIENCE}` };
  if (!isPublicKey(claims.iss, "server"))
    return { ok: false, kind: "invalid", why: "not issued by a server key" };
  // The response's aud is the server id: it must be the key that signed the request.
  if (n.server_id.id !== claims.iss)
    return { ok: false, kind: "invalid", why: "server_id.id is not the signing server key" };
  if (claims.sub !== calloutAccount) return { ok: false, kind: "invalid", why: "for another account" };
  if (!isPublicKey(n.user_nkey, "user"))
    return { ok: false, kind: "invalid", why: "user_nkey is not a user public key" };
  if (claims.exp !== undefined && claims.exp * 1000 + clockSkewMs < now) {
    return { ok: false, kind: "stale", why: "expired: the server stopped waiting for it" };
  }
  return {
    ok: true,
    request: {
      serverId: n.server_id.id,
      serverName: n.server_id.name ?? "",
      userNkey: n.user_nkey,
      client: n.client_info?.host || "unknown",
      connectOpts: n.connect_opts ?? {},
    },
  };
}

/** The ID token and role from CONNECT: `token`, or `user` (the role) and `pass` (the token). */
function credentialsOf(
  o: AuthRequest["connectOpts"],
): { token: string; role?: string } | { code: RefusalCode; reason: string; problem: string } {
  const token = o.auth_token ?? "";
  const pass = o.pass ?? "";
  const role = o.user ?? "";
  if (token !== "" && pass !== "") {
    return {
      code: "bad_request",
      reason: "ambiguous_token",
      problem: "send the ID token once: as token, or as password with the role as user",
    };
  }
  const idToken = token || pass;
  if (idToken === "") {
    return {
      code: "invalid_token",
      reason: "no_token",
      problem: "no ID token: connect with token <ID token>, or user <role> and password <ID token>",
    };
  }
  if (Buffer.byteLength(idToken) > MAX_TOKEN_BYTES) {
    return {
      code: "invalid_token",
      reason: "oversize_token",
      problem: `the ID token is larger than ${MAX_TOKEN_BYTES} bytes`,
    };
  }
  if (role.length > MAX_ROLE_LENGTH) {
    return {
      code: "bad_request",
      reason: "bad_role",
      problem: `the user (role) is longer than ${MAX_ROLE_LENGTH} characters`,
    };
  }
  return role === "" ? { token: idToken } : { token: idToken, role };
}

/** Short, single-line error text for the response: no control characters, never the token. */
function responseError(result: { code: string; reason: string; message: string }, token: string): string {
  let message = [...result.message].map((c) => (hasControlCharacter(c) ? " " : c)).join("");
  if (token.length >= 8 && message.includes(token)) message = "(message withheld)";
  const full = `${result.code} (${result.reason}): ${message}`;
  return full.length > MAX_ERROR_LENGTH ? `${full.slice(0, MAX_ERROR_LENGTH - 3)}...` : full;
}

/**
 * What startCallout needs from `credentials.callout`: the service user's creds, the response
 * signing key, and the callout account (the issuer_account of the service user's JWT, or its
 * issuer when the account key signed it). Files are read bounded; errors name the field and the
 * file, never the content.
 */
export async function readCalloutFiles(
  callout: Pick<NonNullable<NonNullable<Config["credentials"]>["callout"]>, "credsFile" | "signingKeyFile">,
): Promise<{ credsText: string; signingKey: NKeyPair; calloutAccount: string }> {
  const credsText = await readConfigReferencedFile(
    callout.credsFile,
    "credentials.callout.credsFile",
    MAX_CREDS_FILE_BYTES,
  );
  let calloutAccount: string;
  try {
    const claims = decodeJwt(parseCreds(credsText, callout.credsFile).jwt, "the callout user JWT");
    const account = claims.nats.issuer_account;
    calloutAccount = typeof account === "string" && account !== "" ? account : claims.iss;
  } catch (cause) {
    throw new ConfigError(`credentials.callout.credsFile ${callout.credsFile}: ${(cause as Error).message}`, {
      cause,
    });
  }
  if (!isPublicKey(calloutAccount, "account")) {
    throw new ConfigError(
      `credentials.callout.credsFile ${callout.credsFile}: the user is not issued by an account key`,
    );
  }
  let signingKey: NKeyPair;
  try {
    signingKey = await readSeedFile(callout.signingKeyFile, "account");
  } catch (cause) {
    throw new ConfigError(`credentials.callout.signingKeyFile: ${(cause as Error).message}`, { cause });
  }
  return { credsText, signingKey, calloutAccount };
}

export async function startCallout(opts: CalloutOptions): Promise<Callout> {
  const clock = opts.clock ?? systemClock;
  const log = opts.log.child({ component: "callout" });
  const maxConcurrent = opts.maxConcurrent ?? 64;
  const maxPending = opts.maxPending ?? 256;
  const clockSkewMs = opts.clockSkewMs ?? 60_000;
  if (!isPublicKey(opts.calloutAccount, "account")) {
    throw new CalloutError("callout: the callout account is not an account public key");
  }
  if (opts.signingKey.kind !== "account") {
    throw new CalloutError(
      `callout: the response signing key must be an account key, not ${opts.signingKey.kind}`,
    );
  }
  const signedByAccountKey = opts.signingKey.publicKey === opts.calloutAccount;

  const counters: CalloutCounters = {
    received: 0,
    issued: 0,
    refused: 0,
    invalid: 0,
    encrypted: 0,
    dropped: 0,
    failed: 0,
  };
  const lastWarn = new Map<string, { at: number; suppressed: number }>();
  const warnThrottled = (kind: string, fields: Record<string, unknown>, msg: string): void => {
    const now = clock.now();
    const last = lastWarn.get(kind);
    if (last && now - last.at < WARN_INTERVAL_MS) {
      last.suppressed += 1;
      return;
    }
    lastWarn.set(kind, { at: now, suppressed: 0 });
    log.warn({ ...fields, ...(last?.suppressed ? { suppressed: last.suppressed } : {}) }, msg);
  };

  const sign = async (request: AuthRequest, data: { jwt: string } | { error: string }): Promise<string> =>
    signedByAccountKey
      ? encodeAuthorizationResponse(request.userNkey, request.serverId, opts.signingKey, data, {})
      : encodeAuthorizationResponse(request.userNkey, request.serverId, opts.calloutAccount, data, {
          signer: opts.signingKey,
        });

  const answer = async (
    msg: Msg,
    request: AuthRequest,
    data: { jwt: string } | { error: string },
  ): Promise<boolean> => {
    try {
      return msg.respond(await sign(request, data));
    } catch (err) {
      counters.failed += 1;
      log.error(
        { error: err, server: request.serverName, user: request.userNkey },
        "callout: cannot send the response",
      );
      return false;
    }
  };

  const handle = async (msg: Msg): Promise<void> => {
    const parsed = parseRequest(msg, opts.calloutAccount, clock.now(), clockSkewMs);
    if (!parsed.ok) {
      counters[parsed.kind === "encrypted" ? "encrypted" : "invalid"] += 1;
      if (parsed.kind === "stale") log.debug({ why: parsed.why }, "callout: stale request dropped");
      else
        warnThrottled(
          parsed.kind,
          { why: parsed.why, bytes: msg.data.length },
          "callout: request not answered",
        );
      return;
    }
    const request = parsed.request;
    const fields = { server: request.serverName, user: request.userNkey, client: request.client };
    const credentials = credentialsOf(request.connectOpts);
    if ("problem" in credentials) {
      counters.refused += 1;
      log.debug({ ...fields, reason: credentials.reason }, "callout: refused before issuing");
      opts.onRefused?.({
        client: request.client,
        code: credentials.code,
        reason: credentials.reason,
        message: credentials.problem,
      });
      await answer(msg, request, {
        error: responseError(
          { code: credentials.code, reason: credentials.reason, message: credentials.problem },
          "",
        ),
      });
      return;
    }
    let result: IssueResult;
    try {
      result = await opts.issuer.issue({
        via: "callout",
        token: credentials.token,
        ...(credentials.role !== undefined ? { role: credentials.role } : {}),
        userPublicKey: request.userNkey,
        client: request.client,
      });
    } catch (err) {
      counters.failed += 1;
      log.error({ ...fields, error: err }, "callout: the issuer failed");
      await answer(msg, request, {
        error: "unavailable (issuer_error): natsbind could not issue credentials",
      });
      return;
    }
    if (result.kind === "refused") {
      counters.refused += 1;
      log.debug({ ...fields, code: result.code, reason: result.reason }, "callout: refused");
      await answer(msg, request, { error: responseError(result, credentials.token) });
      return;
    }
    result.userKey?.clear();
    if (result.userPublicKey !== request.userNkey) {
      counters.failed += 1;
      log.error(
        { ...fields, issuedFor: result.userPublicKey },
        "callout: the issuer signed another user key",
      );
      await answer(msg, request, {
        error: "unavailable (issuer_error): natsbind could not issue credentials",
      });
      return;
    }
    if (await answer(msg, request, { jwt: result.jwt })) {
      counters.issued += 1;
      log.debug(
        { ...fields, account: result.account, role: result.role, expiresAt: result.expiresAt },
        "callout: issued",
      );
    }
  };

  /**
   * One connection answering the callout. Each has the same queue subscription; the requests they
   * take share one concurrency bound. `taken` counts the requests it received and has not answered
   * yet (waiting or running): it is closed only once they are answered, on its own connection.
   */
  interface Member {
    index: number;
    nc: NatsConnection;
    sub: Subscription;
    taken: number;
    idle?: () => void;
    /** Being replaced (its server is in lame duck mode) or stopped: not replaced again. */
    leaving: boolean;
    retired?: Promise<void>;
  }
  const members = new Set<Member>();
  /** Replacements under way (stop() waits for them). */
  const moves = new Set<Promise<void>>();
  const pending: Array<{ msg: Msg; member: Member }> = [];
  let inFlight = 0;
  let idle: (() => void) | undefined;
  const settle = (member: Member): void => {
    member.taken -= 1;
    if (member.taken === 0) member.idle?.();
  };
  const run = (msg: Msg, member: Member): void => {
    inFlight += 1;
    void handle(msg)
      .catch((err: unknown) => {
        counters.failed += 1;
        log.error({ error: err }, "callout: request handling failed");
      })
      .finally(() => {
        inFlight -= 1;
        settle(member);
        const next = pending.shift();
        if (next) run(next.msg, next.member);
        else if (inFlight === 0) idle?.();
      });
  };
  const take = (member: Member, msg: Msg): void => {
    counters.received += 1;
    if (inFlight < maxConcurrent) {
      member.taken += 1;
      run(msg, member);
    } else if (pending.length < maxPending) {
      member.taken += 1;
      pending.push({ msg, member });
    } else {
      counters.dropped += 1;
      warnThrottled("dropped", { inFlight, pending: pending.length }, "callout: overloaded, request dropped");
    }
  };

  const configured = Array.isArray(opts.servers) ? opts.servers : [opts.servers];
  const hostPort = (url: string): string => url.replace(/^[a-z]+:\/\//i, "").replace(/\/.*$/, "");
  /**
   * Servers for connection `index`, starting at a different configured server for each, so the
   * connections spread over the servers (nats-server picks among a queue group's members at random
   * wherever they are: a server that goes away takes only its share). `avoid` (host:port) goes last.
   */
  const serversFor = (index: number, avoid?: string): string[] => {
    const order = configured.map((_, i) => configured[(index + i) % configured.length]!);
    if (avoid === undefined) return order;
    return [...order.filter((u) => hostPort(u) !== avoid), ...order.filter((u) => hostPort(u) === avoid)];
  };

  let stopping: Promise<void> | undefined;

  const open = async (index: number, avoid?: string): Promise<Member> => {
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers: serversFor(index, avoid),
        noRandomize: true,
        authenticator: credsAuthenticator(new TextEncoder().encode(opts.credsText)),
        name: "natsbind-callout",
        noAsyncTraces: true,
        timeout: opts.timeoutMs ?? 5_000,
        maxReconnectAttempts: -1,
      });
    } catch (cause) {
      throw new CalloutError(
        `callout: cannot connect to NATS at ${configured.join(",")}: ${(cause as Error).message}`,
        { cause },
      );
    }
    const member: Member = { index, nc, sub: undefined as unknown as Subscription, taken: 0, leaving: false };
    try {
      member.sub = nc.subscribe(AUTH_CALLOUT_SUBJECT, {
        queue: opts.queue ?? "natsbind-callout",
        callback: (err, msg) => {
          if (err) log.warn({ error: err }, "callout subscription error");
          else take(member, msg);
        },
      });
      // The server knows the subscription once the flush returns: requests reach natsbind from now on.
      await nc.flush();
    } catch (cause) {
      await nc.close().catch(() => undefined);
      throw new CalloutError(
        `callout: cannot subscribe to ${AUTH_CALLOUT_SUBJECT}: ${(cause as Error).message}`,
        { cause },
      );
    }
    members.add(member);
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === "ldm") {
          const moving = move(member);
          moves.add(moving);
          void moving.finally(() => moves.delete(moving));
        } else if (s.type === "disconnect" || s.type === "reconnect")
          log.info({ event: s.type, connection: index, server: s.server }, `callout connection: ${s.type}`);
        else if (s.type === "error")
          log.warn({ error: s.error, connection: index }, "callout connection error");
      }
    })().catch(() => undefined);
    // Each connection reconnects forever; it closes for good only when natsbind closes it, or on a
    // fatal error.
    void nc.closed().then((err) => {
      members.delete(member);
      if (!member.leaving && !stopping)
        log.error(
          { ...(err ? { error: err } : {}), connection: index, answering: members.size },
          "callout: connection closed, not answering on it",
        );
    });
    return member;
  };

  /** Answers what `member` took, on its connection, then closes it. */
  const retire = (member: Member): Promise<void> =>
    (member.retired ??= (async () => {
      member.leaving = true;
      await member.sub.drain().catch(() => undefined);
      if (member.taken > 0) await new Promise<void>((resolve) => (member.idle = resolve));
      // The last answers are on their way out: let them reach the server before closing.
      await member.nc.flush().catch(() => undefined);
      await member.nc.close().catch(() => undefined);
    })());

  /**
   * The member's server entered lame duck mode (a rolling restart): make before break. A new
   * connection subscribes elsewhere first; only then does the old one unsubscribe (requests already
   * routed to its server are forwarded to another member of the queue group) and close once it has
   * answered what it took. Nothing is lost, unlike waiting for the server to close the connection.
   */
  const move = async (member: Member): Promise<void> => {
    if (member.leaving || stopping) return;
    member.leaving = true;
    const from = member.nc.getServer();
    let next: Member | undefined;
    for (let attempt = 1; attempt <= 5 && !next && !stopping; attempt++) {
      try {
        next = await open(member.index, from);
      } catch (err) {
        log.warn(
          { error: err, connection: member.index, attempt },
          "callout: cannot open a replacement connection",
        );
        await new Promise((r) => setTimeout(r, 200 * attempt));
      }
    }
    if (!next) {
      // The old connection keeps answering until its server closes it, then reconnects elsewhere.
      member.leaving = false;
      return;
    }
    if (stopping) {
      await retire(next);
      return;
    }
    log.info(
      { connection: member.index, from, to: next.nc.getServer() },
      "callout: server entering lame duck mode, moved to another server",
    );
    await retire(member);
  };

  const connections = Math.max(1, opts.connections ?? DEFAULT_CALLOUT_CONNECTIONS);
  try {
    for (let i = 0; i < connections; i++) await open(i);
  } catch (err) {
    await Promise.all([...members].map((m) => ((m.leaving = true), m.nc.close().catch(() => undefined))));
    throw err;
  }
  log.info(
    {
      account: opts.calloutAccount,
      signingKey: opts.signingKey.publicKey,
      maxConcurrent,
      connections,
      servers: [...members].map((m) => m.nc.getServer()),
    },
    `callout: answering ${AUTH_CALLOUT_SUBJECT}`,
  );

  return {
    counters,
    stop() {
      stopping ??= (async () => {
        await Promise.all([...moves]);
        await Promise.all([...members].map((m) => retire(m)));
        if (inFlight > 0 || pending.length > 0) await new Promise<void>((resolve) => (idle = resolve));
        log.info({ ...counters }, "callout: stopped");
      })();
      return stopping;
    },
  };
}
