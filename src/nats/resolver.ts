/**
 * Client for nats-server's full account resolver, over a system-account connection.
 *
 * Every full-resolver server in the system (clusters, gateways, leaf nodes sharing the system
 * account) answers $SYS.REQ.CLAIMS.UPDATE/DELETE/LIST itself, so requests collect one reply per
 * full resolver and succeed only when every expected one said 200. Servers with another resolver
 * are not counted (docs/nats-topologies.md). Errors name the account and servers involved, never
 * the credentials.
 */
import { connect, credsAuthenticator, type Msg, type NatsConnection } from "@nats-io/transport-node";
import type { KeyPair } from "@nats-io/nkeys";
import { NatsbindError, describeError } from "../errors.ts";
import {
  MAX_JWT_BYTES,
  assertIssuedBy,
  deleteAccountsClaims,
  readJwt,
  signJwt,
  type TrustedOperator,
} from "./claims.ts";
import { NKeyPair, parsePublicKey } from "./keys.ts";
import {
  FEATURE_VERSIONS,
  describeServers,
  functionsInsideTokens,
  serversBelow,
  type ServerVersion,
} from "./server-versions.ts";
import { fixedSystemConnection, type SystemConnection } from "./system-connection.ts";

/** What a resolver can do for the controller: the narrow port the reconciler depends on. */
export interface AccountResolver {
  push(jwt: string): Promise<ResolverOutcome>;
  lookup(account: string): Promise<string | undefined>;
  list(): Promise<string[]>;
  delete(accounts: string[]): Promise<ResolverOutcome>;
}

/**
 * Reads which users are connected to an account, on every server: a separate port from
 * AccountResolver because it only reads (no fence needed) and only key rotation uses it.
 */
export interface AccountConnectionReader {
  connections(account: string): Promise<AccountConnection[]>;
}

/** One live connection of an account, as a server's CONNZ reports it (no user JWT kept). */
export interface AccountConnection {
  /** server_name of the server the client is connected to. */
  server: string;
  /** Connection id, unique per server only. */
  cid: number;
  /** "Client" or "Leafnode". */
  kind: string;
  /** The user's public key (U...). */
  user: string;
  /** The key that signed the user JWT: a signing key of the account, or the account key itself. */
  issuerKey: string;
  /** Client-chosen connection name ("" when none). */
  name: string;
  /** The user JWT's tags. */
  tags: string[];
  /** When the connection started, RFC 3339 as the server reports it. */
  start: string;
}

/** The operators one server trusts, as it reports them in VARZ. */
export interface ServerOperators {
  /** server_name (or id when unnamed). */
  server: string;
  /** The operator JWTs from the server's configuration, undecoded. */
  operatorJwts: string[];
}

export interface ServerReply {
  /** server_name, or the server id when unnamed. */
  server: string;
  cluster?: string;
  code: number;
  message: string;
  /**
   * A cache resolver's answer to a push ("jwt updated cache", "jwt update cache skipped"): not
   * counted toward the full resolvers that must answer.
   */
  cache?: true;
}

/** What natsbind hears on the system account (ResolverOptions.expectedServers fixes fullResolvers). */
export interface ResolverTopology {
  /** Servers answering $SYS.REQ.SERVER.PING: every server that shares the system account. */
  servers: number;
  /** Full resolvers: the servers answering an account lookup ($SYS.REQ.ACCOUNT.<id>.CLAIMS.LOOKUP). */
  fullResolvers: number;
}

export interface ResolverOutcome {
  /** The accounts the request was about. */
  accounts: string[];
  replies: ServerReply[];
}

export class ResolverError extends NatsbindError {
  readonly replies: ServerReply[];
  constructor(message: string, options?: { cause?: unknown; replies?: ServerReply[] }) {
    super(message, options);
    this.replies = options?.replies ?? [];
  }
}
/** Could not connect, or no resolver listens on the system account. */
export class ResolverUnavailableError extends ResolverError {}
/** No reply at all within the deadline. */
export class ResolverTimeoutError extends ResolverError {}
/** At least one server answered with an error. */
export class ResolverRejectedError extends ResolverError {}
/** Fewer servers answered than expected: the change may be on some servers only. */
export class ResolverIncompleteError extends ResolverError {}
/** Some server runs a nats-server too old for what was asked (server-versions.ts); nothing was sent. */
export class ResolverUnsupportedError extends ResolverError {}

export interface ResolverOptions {
  servers: string | string[];
  /** Creds (user JWT + seed) of a system-account user. Kept only inside the connection. */
  creds?: Uint8Array;
  /** Instead of creds: a system connection opened elsewhere (system-connection.ts); close() closes it. */
  connection?: SystemConnection;
  /**
   * Fixed number of full-resolver servers that must answer pushes, deletes and lookups; default:
   * discovered as the servers answering an account lookup (only full resolvers do).
   */
  expectedServers?: number;
  /** Deadline of each request, ms. */
  timeoutMs?: number;
  /** How long a discovered server count (servers, full resolvers) is trusted, ms. */
  discoveryTtlMs?: number;
  /**
   * The operator whose account JWTs push() accepts. nats-server's full resolver stores (and
   * answers 200 for) an account JWT of any operator, so the check has to happen here.
   */
  trustedOperator?: TrustedOperator;
  /** Operator signing key for deletes (delete claims must be operator-signed). */
  operatorSigningKey?: KeyPair;
  /** Wall clock in ms, injected for tests; used for the iat of delete claims. */
  now?: () => number;
  connectTimeoutMs?: number;
  /** Connections per CONNZ page (default 100; each carries the user JWT, ~1-2 KiB). */
  connzPageSize?: number;
  /** connections() refuses an account with more live connections than this (default 100,000). */
  maxConnections?: number;
}

const DEFAULT_TIMEOUT_MS = 5_000;
/** At least this long for $SYS.REQ.CLAIMS.LIST, whose one reply grows with the accounts held. */
const LIST_TIMEOUT_MS = 60_000;
const DEFAULT_DISCOVERY_TTL_MS = 30_000;
const PING_STALL_MS = 250;
const DEFAULT_CONNZ_PAGE_SIZE = 100;
const DEFAULT_MAX_CONNECTIONS = 100_000;
/** A CONNZ page larger than this is refused: pages are bounded by count, this bounds odd entries. */
const MAX_CONNZ_REPLY_BYTES = 8 * 1024 * 1024;
/** A VARZ reply is ~3.5 KiB with one operator; this bounds a hostile or odd one. */
const MAX_VARZ_REPLY_BYTES = 1024 * 1024;
/** nats-server's `operator` option takes a list; more than this is not a real deployment. */
const MAX_TRUSTED_OPERATORS = 16;
/** Restarts of one server's paging when connections closed under it (see #readServer). */
const CONNZ_PAGING_ATTEMPTS = 3;

interface ConnzPage {
  server: string;
  total: number;
  connections: AccountConnection[];
}

function isStringArray(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === "string");
}

/**
 * Parses one server's reply to $SYS.REQ.ACCOUNT.<id>.CONNZ ({server, data: Connz} or
 * {server, error}). Errors name the server and the field, never a value (entries hold user JWTs).
 */
function parseConnzReply(msg: Msg, account: string): ConnzPage {
  if (msg.data.length > MAX_CONNZ_REPLY_BYTES)
    throw new ResolverError(
      `connections of account ${account}: CONNZ reply larger than ${MAX_CONNZ_REPLY_BYTES} bytes`,
    );
  const reply = parseReply(msg);
  if (reply.code !== 200)
    throw new ResolverRejectedError(`connections of account ${account} rejected by ${summarize([reply])}`, {
      replies: [{ server: reply.server, code: reply.code, message: reply.message }],
    });
  const bad = (what: string): ResolverError =>
    new ResolverError(`connections of account ${account}: CONNZ reply of ${reply.server}: ${what}`);
  const data = reply.data as { total?: unknown; connections?: unknown } | undefined;
  if (!data || typeof data !== "object") throw bad("no data");
  // A server that cannot load the account answers an empty Connz (connections null, total 0).
  const total = data.total ?? 0;
  if (typeof total !== "number" || !Number.isSafeInteger(total) || total < 0)
    throw bad("total is not a count");
  const raw = data.connections ?? [];
  if (!Array.isArray(raw)) throw bad("connections is not a list");
  const connections = raw.map((entry: unknown, i): AccountConnection => {
    const c = entry as Record<string, unknown> | null;
    if (!c || typeof c !== "object") throw bad(`connection ${i} is not an object`);
    if (typeof c.cid !== "number" || !Number.isSafeInteger(c.cid))
      throw bad(`connection ${i}: cid is not a number`);
    if (typeof c.authorized_user !== "string") throw bad(`connection ${i}: no authorized_user`);
    if (typeof c.issuer_key !== "string") throw bad(`connection ${i}: no issuer_key`);
    if (typeof c.start !== "string") throw bad(`connection ${i}: no start`);
    if (c.name !== undefined && typeof c.name !== "string")
      throw bad(`connection ${i}: name is not a string`);
    if (c.kind !== undefined && typeof c.kind !== "string")
      throw bad(`connection ${i}: kind is not a string`);
    if (c.tags !== undefined && c.tags !== null && !isStringArray(c.tags))
      throw bad(`connection ${i}: tags is not a list of strings`);
    return {
      server: reply.server,
      cid: c.cid,
      kind: (c.kind as string | undefined) ?? "Client",
      user: c.authorized_user,
      issuerKey: c.issuer_key,
      name: (c.name as string | undefined) ?? "",
      tags: (c.tags as string[] | null | undefined) ?? [],
      start: c.start,
    };
  });
  return { server: reply.server, total, connections };
}

function serverList(servers: string | string[]): string {
  return (Array.isArray(servers) ? servers : [servers]).join(",");
}

type ParsedReply = ServerReply & { account?: string; data?: unknown };

function parseReply(msg: Msg): ParsedReply {
  let body: {
    server?: { name?: string; id?: string; cluster?: string };
    data?: unknown;
    error?: { account?: string; code?: number; description?: string };
  };
  try {
    body = msg.json();
  } catch (cause) {
    throw new ResolverError("resolver reply is not JSON", { cause });
  }
  const server = body.server?.name || body.server?.id || "unknown";
  const base = { server, ...(body.server?.cluster ? { cluster: body.server.cluster } : {}) };
  if (body.error) {
    return {
      ...base,
      code: body.error.code ?? 500,
      message: body.error.description ?? "error",
      account: body.error.account,
    };
  }
  const data = body.data as { account?: string; code?: number; message?: string } | undefined;
  if (data && typeof data === "object" && !Array.isArray(data)) {
    return { ...base, code: data.code ?? 200, message: data.message ?? "", account: data.account, data };
  }
  return { ...base, code: 200, message: "", data: body.data };
}

/** A cache resolver says so in every answer to a push; a full resolver never does (nats-server accounts.go). */
const CACHE_ANSWER = /\bcache\b/;

function summarize(replies: ServerReply[]): string {
  return replies.map((r) => `${r.server}: ${r.code} ${r.message}`).join("; ");
}

/** A collect strategy: nats.js's, or "until" (see #collect). */
type CollectStrategy =
  | { strategy: "count"; maxMessages: number }
  | { strategy: "stall"; stall: number }
  | {
      strategy: "until";
      /** Stop as soon as the replies so far are enough. */
      enough: (msgs: Msg[]) => boolean;
      /** Once true, wait at most PING_STALL_MS longer for more replies. */
      linger?: (msgs: Msg[]) => boolean;
    };

interface Counted {
  count: number;
  at: number;
}

interface ServersSeen extends Counted {
  versions: ServerVersion[];
}

export class NatsResolver implements AccountResolver, AccountConnectionReader {
  readonly #connection: SystemConnection;
  readonly #opts: ResolverOptions;
  #fullResolvers: Counted | undefined;
  #serverCount: ServersSeen | undefined;
  /** An account no server holds: looking it up makes every full resolver answer, with nothing. */
  readonly #probeAccount = NKeyPair.generate("account").publicKey;

  private constructor(connection: SystemConnection, opts: ResolverOptions) {
    this.#connection = connection;
    this.#opts = opts;
  }

  static async connect(opts: ResolverOptions): Promise<NatsResolver> {
    if (opts.connection) return new NatsResolver(opts.connection, opts);
    if (!opts.creds) throw new ResolverError("resolver: neither creds nor a system connection given");
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers: opts.servers,
        authenticator: credsAuthenticator(opts.creds),
        name: "natsbind-resolver",
        // No per-request stack capture: the resolver's errors carry their own context.
        noAsyncTraces: true,
        timeout: opts.connectTimeoutMs ?? 5_000,
        maxReconnectAttempts: -1,
      });
    } catch (cause) {
      throw new ResolverUnavailableError(
        `cannot connect to NATS at ${serverList(opts.servers)}: ${describeError(cause)}`,
        {
          cause,
        },
      );
    }
    return new NatsResolver(fixedSystemConnection(nc), opts);
  }

  get #timeoutMs(): number {
    return this.#opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  #now(): number {
    return (this.#opts.now ?? Date.now)();
  }

  /** Names of the servers answering on the system account right now. */
  async servers(): Promise<string[]> {
    return (await this.serverVersions()).map((s) => s.server);
  }

  /**
   * Every server answering on the system account right now, with its nats-server version (the
   * `ver` each reply carries), sorted by name. Refreshes the cached server count.
   */
  async serverVersions(): Promise<ServerVersion[]> {
    const replies = await this.#collect("$SYS.REQ.SERVER.PING", undefined, {
      strategy: "stall",
      stall: PING_STALL_MS,
    });
    const versions = replies
      .map((m): ServerVersion => {
        const reply = parseReply(m);
        const ver = (m.json<{ server?: { ver?: unknown } }>().server?.ver ?? "") as unknown;
        return { server: reply.server, version: typeof ver === "string" ? ver.slice(0, 64) : "" };
      })
      .sort((a, b) => (a.server < b.server ? -1 : a.server > b.server ? 1 : 0));
    if (versions.length > 0) this.#serverCount = { count: versions.length, versions, at: this.#now() };
    return versions;
  }

  /** Cached server versions (refreshed after the discovery TTL). */
  async #serversSeen(): Promise<ServersSeen> {
    const ttl = this.#opts.discoveryTtlMs ?? DEFAULT_DISCOVERY_TTL_MS;
    const seen = this.#serverCount;
    if (seen && this.#now() - seen.at < ttl) return seen;
    if ((await this.serverVersions()).length === 0)
      throw new ResolverUnavailableError("no NATS server answered $SYS.REQ.SERVER.PING");
    return this.#serverCount!;
  }

  /**
   * Throws ResolverUnsupportedError naming every server older than `minimum`: `what` cannot work
   * there, and natsbind says so instead of sending it.
   */
  async #requireVersion(minimum: string, what: string, fix: string): Promise<void> {
    const old = serversBelow((await this.#serversSeen()).versions, minimum);
    if (old.length > 0)
      throw new ResolverUnsupportedError(
        `${what}, which needs nats-server >= ${minimum}; older: ${describeServers(old)}. ${fix}`,
      );
  }

  /**
   * How many servers share the system account, and how many of them are full resolvers, counted
   * now (and trusted for the discovery TTL). Only full resolvers answer lookups; every server
   * answers PING.
   */
  async topology(): Promise<ResolverTopology> {
    const [servers, fullResolvers] = await Promise.all([this.servers(), this.#discoverFullResolvers()]);
    this.#fullResolvers = { count: fullResolvers, at: this.#now() };
    return { servers: servers.length, fullResolvers };
  }

  async #discoverFullResolvers(): Promise<number> {
    let msgs: Msg[];
    try {
      msgs = await this.#collect(`$SYS.REQ.ACCOUNT.${this.#probeAccount}.CLAIMS.LOOKUP`, undefined, {
        strategy: "stall",
        stall: PING_STALL_MS,
      });
    } catch (cause) {
      if (!(cause instanceof ResolverUnavailableError)) throw cause;
      msgs = [];
    }
    if (msgs.length === 0)
      throw new ResolverUnavailableError(
        "no full resolver answers account lookups ($SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP): natsbind needs " +
          "nats-servers with `resolver: {type: full}` sharing the system account (docs/nats-topologies.md)",
      );
    return msgs.length;
  }

  #fresh(counted: Counted | undefined): number | undefined {
    const ttl = this.#opts.discoveryTtlMs ?? DEFAULT_DISCOVERY_TTL_MS;
    return counted && this.#now() - counted.at < ttl ? counted.count : undefined;
  }

  /** Full resolvers that must answer a push, delete or lookup-on-every-server (cached). */
  async #expectedResolvers(): Promise<number> {
    if (this.#opts.expectedServers !== undefined) return this.#opts.expectedServers;
    const cached = this.#fresh(this.#fullResolvers);
    if (cached !== undefined) return cached;
    const count = await this.#discoverFullResolvers();
    this.#fullResolvers = { count, at: this.#now() };
    return count;
  }

  /** Servers that answer the monitoring requests (VARZ, STATZ, CONNZ): all of them (cached). */
  async #expectedServers(): Promise<number> {
    return (await this.#serversSeen()).count;
  }

  /** Forget the counts: fewer servers answered than expected, so ask again next time. */
  #rediscover(): void {
    this.#fullResolvers = undefined;
    this.#serverCount = undefined;
  }

  async #collect(
    subject: string,
    payload: string | undefined,
    strategy: CollectStrategy,
    maxWait = this.#timeoutMs,
  ): Promise<Msg[]> {
    const out: Msg[] = [];
    let linger: ReturnType<typeof setTimeout> | undefined;
    try {
      // The request stays on one connection, which a renewal keeps open until the replies are in.
      await this.#connection.use(async (nc) => {
        const replies = (await nc.requestMany(
          subject,
          payload,
          strategy.strategy === "until" ? { strategy: "timer", maxWait } : { ...strategy, maxWait },
        )) as AsyncIterable<Msg> & { stop?: () => void };
        for await (const msg of replies) {
          // A no-responders status arrives as an empty message with a 503 header.
          if (msg.headers?.code === 503) throw new ResolverUnavailableError(`no resolver answers ${subject}`);
          out.push(msg);
          if (strategy.strategy !== "until") continue;
          if (strategy.enough(out)) break;
          if (linger === undefined && strategy.linger?.(out))
            linger = setTimeout(() => replies.stop?.(), PING_STALL_MS);
        }
      });
    } catch (cause) {
      if (cause instanceof ResolverError) throw cause;
      const text = describeError(cause);
      if (/no responders/i.test(text))
        throw new ResolverUnavailableError(`no resolver answers ${subject}`, { cause });
      throw new ResolverError(`request ${subject} failed: ${text}`, { cause });
    } finally {
      clearTimeout(linger);
    }
    return out;
  }

  /**
   * Sends to every resolver and checks that each expected full resolver answered 200. Cache
   * resolvers answer pushes too, saying so: those answers are kept but not counted. Their answers
   * to deletes and lists look like a full resolver's, so there every answer counts, and when more
   * servers share the system account than there are full resolvers, natsbind waits a moment
   * longer for the rest (docs/nats-topologies.md).
   */
  async #broadcast(
    subject: string,
    payload: string,
    accounts: string[],
    what: string,
    answers: "marked" | "unmarked",
  ): Promise<ResolverOutcome> {
    const expected = await this.#expectedResolvers();
    const replies = (await this.#collectResolvers(subject, payload, expected, answers)).map(
      ({ server, cluster, code, message }): ServerReply => ({
        server,
        ...(cluster ? { cluster } : {}),
        code,
        message,
        ...(answers === "marked" && CACHE_ANSWER.test(message) ? { cache: true as const } : {}),
      }),
    );
    const label = accounts.length === 1 ? `account ${accounts[0]}` : `${accounts.length} accounts`;
    if (replies.length === 0) {
      throw new ResolverTimeoutError(`${what} ${label}: no resolver answered within ${this.#timeoutMs} ms`);
    }
    const failed = replies.filter((r) => r.code !== 200);
    if (failed.length > 0) {
      throw new ResolverRejectedError(`${what} ${label} rejected by ${summarize(failed)}`, { replies });
    }
    const full = replies.filter((r) => !r.cache);
    if (full.length < expected) {
      this.#rediscover();
      throw new ResolverIncompleteError(
        `${what} ${label}: ${full.length} of ${expected} full resolvers answered within ${this.#timeoutMs} ms (${summarize(replies)})`,
        { replies },
      );
    }
    return { accounts, replies };
  }

  /**
   * Replies of the resolvers to a request every full and cache resolver answers. "marked": stop
   * once `expected` answers are not a cache's. "unmarked": stop at `expected` answers when every
   * server is a full resolver, else linger for the others (at most every server's).
   */
  async #collectResolvers(
    subject: string,
    payload: string,
    expected: number,
    answers: "marked" | "unmarked",
    maxWait = this.#timeoutMs,
  ): Promise<ParsedReply[]> {
    if (answers === "marked") {
      const parsed: ParsedReply[] = [];
      let full = 0;
      await this.#collect(
        subject,
        payload,
        {
          strategy: "until",
          enough: (msgs) => {
            const reply = parseReply(msgs[msgs.length - 1]!);
            parsed.push(reply);
            if (!CACHE_ANSWER.test(reply.message)) full += 1;
            return full >= expected;
          },
        },
        maxWait,
      );
      return parsed;
    }
    const servers = await this.#expectedServers().catch(() => expected);
    const msgs =
      servers <= expected
        ? await this.#collect(subject, payload, { strategy: "count", maxMessages: expected }, maxWait)
        : await this.#collect(
            subject,
            payload,
            {
              strategy: "until",
              enough: (m) => m.length >= servers,
              linger: (m) => m.length >= expected,
            },
            maxWait,
          );
    return msgs.map(parseReply);
  }

  /**
   * Pushes an account JWT to every resolver server. The signature is left to the servers, which
   * verify it anyway (verifying here too cost more than signing: see bench/run.ts).
   */
  async push(jwt: string): Promise<ResolverOutcome> {
    const { claims } = readJwt(jwt, "account JWT");
    if (claims.nats.type !== "account")
      throw new ResolverError(`push: JWT for ${claims.sub} is a ${claims.nats.type} JWT, not an account JWT`);
    if (this.#opts.trustedOperator) assertIssuedBy(claims, this.#opts.trustedOperator);
    const inside = functionsInsideTokens(claims.nats);
    if (inside.length > 0)
      await this.#requireVersion(
        FEATURE_VERSIONS.functionInsideToken,
        `push account ${claims.sub}: role "${inside[0]!.role}" subject "${inside[0]!.subject}" has a NATS ` +
          `function inside a subject token (older servers keep it as literal text and deny the role's users)`,
        "Make the function a whole subject token, or upgrade those servers.",
      );
    return this.#broadcast("$SYS.REQ.CLAIMS.UPDATE", jwt, [claims.sub], "push", "marked");
  }

  /** The account JWT the resolver holds, or undefined when it has none. */
  async lookup(account: string): Promise<string | undefined> {
    parsePublicKey(account, "account", "lookup: account");
    const subject = `$SYS.REQ.ACCOUNT.${account}.CLAIMS.LOOKUP`;
    let msg: Msg;
    try {
      msg = await this.#connection.use((nc) => nc.request(subject, undefined, { timeout: this.#timeoutMs }));
    } catch (cause) {
      const text = describeError(cause);
      if (/no responders/i.test(text))
        throw new ResolverUnavailableError(`no resolver answers ${subject}`, { cause });
      if (/timeout/i.test(text)) {
        throw new ResolverTimeoutError(
          `lookup account ${account}: no resolver answered within ${this.#timeoutMs} ms`,
          { cause },
        );
      }
      throw new ResolverError(`lookup account ${account}: ${text}`, { cause });
    }
    if (msg.data.length === 0) return undefined;
    if (msg.data.length > MAX_JWT_BYTES)
      throw new ResolverError(`lookup account ${account}: reply larger than ${MAX_JWT_BYTES} bytes`);
    return msg.string();
  }

  /**
   * The account JWT as each full resolver holds it: one entry per full resolver (undefined where
   * one has none). Every full-resolver server answers a lookup, with an empty message when it has no JWT
   * (verified on nats-server 2.15.2), so a server holding an old copy cannot hide behind the first
   * answer as it can with lookup(). Replies carry no server name: callers get counts, not names.
   */
  async lookupOnEveryServer(account: string): Promise<Array<string | undefined>> {
    parsePublicKey(account, "account", "lookup: account");
    const expected = await this.#expectedResolvers();
    const msgs = await this.#collect(`$SYS.REQ.ACCOUNT.${account}.CLAIMS.LOOKUP`, undefined, {
      strategy: "count",
      maxMessages: expected,
    });
    if (msgs.length < expected) {
      this.#rediscover();
      throw new ResolverIncompleteError(
        `lookup account ${account}: ${msgs.length} of ${expected} full resolvers answered within ${this.#timeoutMs} ms`,
      );
    }
    return msgs.map((msg) => {
      if (msg.data.length === 0) return undefined;
      if (msg.data.length > MAX_JWT_BYTES)
        throw new ResolverError(`lookup account ${account}: reply larger than ${MAX_JWT_BYTES} bytes`);
      return msg.string();
    });
  }

  /**
   * The operator JWTs each server trusts, read from its VARZ through the system account
   * ($SYS.REQ.SERVER.PING.VARZ: `trusted_operators_jwt`, what the server read from its config at
   * start; a config reload does not change it). Sorted by server name. The JWTs are not verified
   * here: callers decode them.
   */
  async trustedOperators(): Promise<ServerOperators[]> {
    const expected = await this.#expectedServers();
    const msgs = await this.#collect("$SYS.REQ.SERVER.PING.VARZ", undefined, {
      strategy: "count",
      maxMessages: expected,
    });
    const out = msgs.map((msg): ServerOperators => {
      if (msg.data.length > MAX_VARZ_REPLY_BYTES)
        throw new ResolverError(`VARZ reply larger than ${MAX_VARZ_REPLY_BYTES} bytes`);
      const reply = parseReply(msg);
      if (reply.code !== 200) throw new ResolverRejectedError(`VARZ rejected by ${summarize([reply])}`);
      const jwts =
        (reply.data as { trusted_operators_jwt?: unknown } | undefined)?.trusted_operators_jwt ?? [];
      if (!isStringArray(jwts) || jwts.length > MAX_TRUSTED_OPERATORS)
        throw new ResolverError(
          `VARZ reply of ${reply.server}: trusted_operators_jwt is not a list of at most ${MAX_TRUSTED_OPERATORS} JWTs`,
        );
      return { server: reply.server, operatorJwts: jwts };
    });
    if (out.length < expected) {
      this.#rediscover();
      throw new ResolverIncompleteError(
        `VARZ: ${out.length} of ${expected} servers answered within ${this.#timeoutMs} ms (${out.map((s) => s.server).join(", ")})`,
      );
    }
    return out.sort((a, b) => (a.server < b.server ? -1 : a.server > b.server ? 1 : 0));
  }

  /** Every account any resolver server holds (union over full and cache resolvers), sorted. */
  async list(): Promise<string[]> {
    const expected = await this.#expectedResolvers();
    // One reply holds every account id: 100,000 accounts took a server ~15 s to answer (2.15.2).
    const maxWait = Math.max(this.#timeoutMs, LIST_TIMEOUT_MS);
    const replies = await this.#collectResolvers("$SYS.REQ.CLAIMS.LIST", "", expected, "unmarked", maxWait);
    if (replies.length === 0)
      throw new ResolverTimeoutError(`list accounts: no resolver answered within ${maxWait} ms`);
    const accounts = new Set<string>();
    for (const reply of replies) {
      if (reply.code !== 200)
        throw new ResolverRejectedError(`list accounts rejected by ${summarize([reply])}`);
      if (Array.isArray(reply.data)) for (const a of reply.data) if (typeof a === "string") accounts.add(a);
    }
    return [...accounts].sort();
  }

  /**
   * Deletes accounts from every resolver (needs `allow_delete: true`); the servers zero their
   * limits and disconnect their clients. Signed with the operator signing key.
   */
  async delete(accounts: string[]): Promise<ResolverOutcome> {
    const signer = this.#opts.operatorSigningKey;
    if (!signer) throw new ResolverError("delete accounts: no operator signing key configured");
    const jwt = signJwt(
      deleteAccountsClaims(accounts, signer.getPublicKey()),
      signer,
      Math.floor(this.#now() / 1000),
    );
    return this.#broadcast("$SYS.REQ.CLAIMS.DELETE", jwt, accounts, "delete", "unmarked");
  }

  /**
   * The live connections of `account` on every server, read with $SYS.REQ.ACCOUNT.<id>.CONNZ
   * (`auth: true` for user, issuer_key and tags). Every server answers, with or without
   * connections; one that has more than a page is paged on by server name. Sorted by server, cid.
   */
  async connections(account: string): Promise<AccountConnection[]> {
    parsePublicKey(account, "account", "connections: account");
    // A server answers CONNZ of an account it has not loaded by fetching it from its resolver and
    // keeping it loaded: asking every idle account made every server hold every account (10,000
    // accounts: ~400 MB on one server, and every later push to them far slower). STATZ reads only
    // what a server has loaded, so CONNZ is asked only when some server has a connection.
    if (!(await this.#hasConnections(account))) return [];
    const subject = `$SYS.REQ.ACCOUNT.${account}.CONNZ`;
    const expected = await this.#expectedServers();
    const msgs = await this.#collect(subject, JSON.stringify(this.#connzRequest(0)), {
      strategy: "count",
      maxMessages: expected,
    });
    if (msgs.length === 0)
      throw new ResolverTimeoutError(
        `connections of account ${account}: no server answered within ${this.#timeoutMs} ms`,
      );
    const firstPages = msgs.map((m) => parseConnzReply(m, account));
    if (firstPages.length < expected) {
      this.#rediscover();
      const answered = firstPages.map((p) => p.server).join(", ");
      throw new ResolverIncompleteError(
        `connections of account ${account}: ${firstPages.length} of ${expected} servers answered within ${this.#timeoutMs} ms (${answered})`,
        { replies: firstPages.map((p) => ({ server: p.server, code: 200, message: "" })) },
      );
    }
    const max = this.#opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    if (firstPages.reduce((n, p) => n + p.total, 0) > max)
      throw new ResolverError(`connections of account ${account}: more than ${max} live connections`);
    const perServer = await Promise.all(firstPages.map((page) => this.#readServer(subject, account, page)));
    return perServer
      .flat()
      .sort((a, b) => (a.server < b.server ? -1 : a.server > b.server ? 1 : a.cid - b.cid));
  }

  /**
   * Does any server have a client or leaf node connection of `account`? From
   * $SYS.REQ.ACCOUNT.PING.STATZ (include_unused: every server answers, listing the account only
   * when it has it loaded; a server never fetches an account to answer it).
   */
  async #hasConnections(account: string): Promise<boolean> {
    const expected = await this.#expectedServers();
    const msgs = await this.#collect(
      "$SYS.REQ.ACCOUNT.PING.STATZ",
      JSON.stringify({ accounts: [account], include_unused: true }),
      { strategy: "count", maxMessages: expected },
    );
    const replies = msgs.map(parseReply);
    if (replies.length < expected) {
      this.#rediscover();
      throw new ResolverIncompleteError(
        `connections of account ${account}: ${replies.length} of ${expected} servers answered STATZ within ${this.#timeoutMs} ms`,
        { replies },
      );
    }
    const failed = replies.filter((r) => r.code !== 200);
    if (failed.length > 0)
      throw new ResolverRejectedError(
        `connections of account ${account}: STATZ rejected by ${summarize(failed)}`,
        {
          replies,
        },
      );
    return replies.some((reply) => {
      const stats = (reply.data as { account_statz?: unknown } | undefined)?.account_statz;
      if (stats !== undefined && stats !== null && !Array.isArray(stats))
        throw new ResolverError(
          `connections of account ${account}: STATZ reply of ${reply.server} is malformed`,
        );
      return ((stats ?? []) as Array<{ acc?: unknown; conns?: unknown; leafnodes?: unknown }>).some(
        (s) =>
          s?.acc === account &&
          ((typeof s.conns === "number" && s.conns > 0) ||
            (typeof s.leafnodes === "number" && s.leafnodes > 0)),
      );
    });
  }

  get #connzPageSize(): number {
    // Pages overlap by one entry, so a page of one would never advance.
    return Math.max(2, this.#opts.connzPageSize ?? DEFAULT_CONNZ_PAGE_SIZE);
  }

  #connzRequest(offset: number, server?: string): Record<string, unknown> {
    return {
      auth: true,
      sort: "cid",
      offset,
      limit: this.#connzPageSize,
      // Pages after the first go to one server: the filter makes the others stay silent.
      ...(server !== undefined ? { server_name: server, exact_match: true } : {}),
    };
  }

  /**
   * The rest of one server's connections after its first page. Pages are offsets into a list
   * sorted by cid, and cids only grow, so a new connection lands at the end; a closed one before
   * the offset shifts the rest down and would hide one. Each page therefore starts one entry
   * early and must repeat the last cid read; if it does not, the server is read again.
   */
  async #readServer(subject: string, account: string, first: ConnzPage): Promise<AccountConnection[]> {
    let page = first;
    for (let attempt = 1; ; attempt++) {
      const read = [...page.connections];
      let total = page.total;
      let shifted = false;
      while (read.length < total && page.connections.length > 0) {
        const last = read[read.length - 1]!;
        page = await this.#serverPage(subject, account, first.server, read.length - 1);
        if (page.connections[0]?.cid !== last.cid) {
          shifted = true;
          break;
        }
        read.push(...page.connections.slice(1));
        total = page.total;
        if (read.length > (this.#opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS))
          throw new ResolverError(
            `connections of account ${account}: more than ${this.#opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS} live connections`,
          );
        if (page.connections.length <= 1) break;
      }
      if (!shifted) return read;
      if (attempt >= CONNZ_PAGING_ATTEMPTS)
        throw new ResolverIncompleteError(
          `connections of account ${account}: connections on ${first.server} kept changing while paging (${attempt} attempts)`,
        );
      page = await this.#serverPage(subject, account, first.server, 0);
    }
  }

  async #serverPage(subject: string, account: string, server: string, offset: number): Promise<ConnzPage> {
    const msgs = await this.#collect(subject, JSON.stringify(this.#connzRequest(offset, server)), {
      strategy: "count",
      maxMessages: 1,
    });
    if (msgs.length === 0)
      throw new ResolverTimeoutError(
        `connections of account ${account}: ${server} did not answer page at offset ${offset} within ${this.#timeoutMs} ms`,
      );
    const page = parseConnzReply(msgs[0]!, account);
    if (page.server !== server)
      throw new ResolverError(
        `connections of account ${account}: page request for ${server} answered by ${page.server}`,
      );
    return page;
  }

  async close(): Promise<void> {
    await this.#connection.close();
  }
}
