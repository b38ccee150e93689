/**
 * Client for nats-server's full account resolver, over a system-account connection.
 *
 * Every full-resolver server in the cluster answers $SYS.REQ.CLAIMS.UPDATE/DELETE/LIST itself, so
 * requests collect one reply per server and succeed only when every expected server said 200.
 * Errors name the account and servers involved, never the credentials.
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
import { parsePublicKey } from "./keys.ts";

/** What a resolver can do for the controller: the narrow port the reconciler depends on. */
export interface AccountResolver {
  push(jwt: string): Promise<ResolverOutcome>;
  lookup(account: string): Promise<string | undefined>;
  list(): Promise<string[]>;
  delete(accounts: string[]): Promise<ResolverOutcome>;
}

export interface ServerReply {
  /** server_name, or the server id when unnamed. */
  server: string;
  cluster?: string;
  code: number;
  message: string;
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

export interface ResolverOptions {
  servers: string | string[];
  /** Creds (user JWT + seed) of a system-account user. Kept only inside the connection. */
  creds: Uint8Array;
  /** Fixed number of resolver servers; default: discovered with $SYS.REQ.SERVER.PING. */
  expectedServers?: number;
  /** Deadline of each request, ms. */
  timeoutMs?: number;
  /** How long a discovered server count is trusted, ms. */
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
}

const DEFAULT_TIMEOUT_MS = 5_000;
const DEFAULT_DISCOVERY_TTL_MS = 30_000;
const PING_STALL_MS = 250;

function serverList(servers: string | string[]): string {
  return (Array.isArray(servers) ? servers : [servers]).join(",");
}

function parseReply(msg: Msg): ServerReply & { account?: string; data?: unknown } {
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

function summarize(replies: ServerReply[]): string {
  return replies.map((r) => `${r.server}: ${r.code} ${r.message}`).join("; ");
}

export class NatsResolver implements AccountResolver {
  readonly #nc: NatsConnection;
  readonly #opts: ResolverOptions;
  #expected: { count: number; at: number } | undefined;

  private constructor(nc: NatsConnection, opts: ResolverOptions) {
    this.#nc = nc;
    this.#opts = opts;
  }

  static async connect(opts: ResolverOptions): Promise<NatsResolver> {
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
    return new NatsResolver(nc, opts);
  }

  get #timeoutMs(): number {
    return this.#opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  #now(): number {
    return (this.#opts.now ?? Date.now)();
  }

  /** Names of the servers answering on the system account right now. */
  async servers(): Promise<string[]> {
    const replies = await this.#collect("$SYS.REQ.SERVER.PING", undefined, {
      strategy: "stall",
      stall: PING_STALL_MS,
    });
    return replies.map((m) => parseReply(m).server).sort();
  }

  async #expectedServers(): Promise<number> {
    if (this.#opts.expectedServers !== undefined) return this.#opts.expectedServers;
    const ttl = this.#opts.discoveryTtlMs ?? DEFAULT_DISCOVERY_TTL_MS;
    if (this.#expected && this.#now() - this.#expected.at < ttl) return this.#expected.count;
    const count = (await this.servers()).length;
    if (count === 0) throw new ResolverUnavailableError("no NATS server answered $SYS.REQ.SERVER.PING");
    this.#expected = { count, at: this.#now() };
    return count;
  }

  async #collect(
    subject: string,
    payload: string | undefined,
    strategy: { strategy: "count"; maxMessages: number } | { strategy: "stall"; stall: number },
  ): Promise<Msg[]> {
    const out: Msg[] = [];
    try {
      const replies = await this.#nc.requestMany(subject, payload, { ...strategy, maxWait: this.#timeoutMs });
      for await (const msg of replies) {
        // A no-responders status arrives as an empty message with a 503 header.
        if (msg.headers?.code === 503) throw new ResolverUnavailableError(`no resolver answers ${subject}`);
        out.push(msg);
      }
    } catch (cause) {
      if (cause instanceof ResolverError) throw cause;
      const text = describeError(cause);
      if (/no responders/i.test(text))
        throw new ResolverUnavailableError(`no resolver answers ${subject}`, { cause });
      throw new ResolverError(`request ${subject} failed: ${text}`, { cause });
    }
    return out;
  }

  /** Sends to every resolver and checks that each expected server answered 200. */
  async #broadcast(
    subject: string,
    payload: string,
    accounts: string[],
    what: string,
  ): Promise<ResolverOutcome> {
    const expected = await this.#expectedServers();
    const msgs = await this.#collect(subject, payload, { strategy: "count", maxMessages: expected });
    const replies = msgs.map(parseReply).map(({ server, cluster, code, message }) => ({
      server,
      ...(cluster ? { cluster } : {}),
      code,
      message,
    }));
    const label = accounts.length === 1 ? `account ${accounts[0]}` : `${accounts.length} accounts`;
    if (replies.length === 0) {
      throw new ResolverTimeoutError(`${what} ${label}: no resolver answered within ${this.#timeoutMs} ms`);
    }
    const failed = replies.filter((r) => r.code !== 200);
    if (failed.length > 0) {
      throw new ResolverRejectedError(`${what} ${label} rejected by ${summarize(failed)}`, { replies });
    }
    if (replies.length < expected) {
      this.#expected = undefined;
      throw new ResolverIncompleteError(
        `${what} ${label}: ${replies.length} of ${expected} servers answered within ${this.#timeoutMs} ms (${summarize(replies)})`,
        { replies },
      );
    }
    return { accounts, replies };
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
    return this.#broadcast("$SYS.REQ.CLAIMS.UPDATE", jwt, [claims.sub], "push");
  }

  /** The account JWT the resolver holds, or undefined when it has none. */
  async lookup(account: string): Promise<string | undefined> {
    parsePublicKey(account, "account", "lookup: account");
    const subject = `$SYS.REQ.ACCOUNT.${account}.CLAIMS.LOOKUP`;
    let msg: Msg;
    try {
      msg = await this.#nc.request(subject, undefined, { timeout: this.#timeoutMs });
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

  /** Every account any resolver server holds (union over servers), sorted. */
  async list(): Promise<string[]> {
    const expected = await this.#expectedServers();
    const msgs = await this.#collect("$SYS.REQ.CLAIMS.LIST", "", {
      strategy: "count",
      maxMessages: expected,
    });
    if (msgs.length === 0)
      throw new ResolverTimeoutError(`list accounts: no resolver answered within ${this.#timeoutMs} ms`);
    const accounts = new Set<string>();
    for (const msg of msgs) {
      const reply = parseReply(msg);
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
    return this.#broadcast("$SYS.REQ.CLAIMS.DELETE", jwt, accounts, "delete");
  }

  async close(): Promise<void> {
    if (!this.#nc.isClosed()) await this.#nc.drain().catch(() => this.#nc.close());
  }
}
