/**
 * natsbind's connection to the system account, as the resolver client and the connection audit
 * use it. Two kinds:
 * - fixed: one connection with the creds file of nats.systemCreds;
 * - renewing (nats.systemSigningKey): connections as users natsbind issues itself (system-user.ts).
 *
 * nats-server closes a connection when its user JWT expires ("User Authentication Expired",
 * verified on 2.15.2) and never re-authenticates a live one, so a renewing connection is replaced
 * before that: after a third of the lifetime a new user connects, subscriptions move over
 * (onRenew hooks), new requests go to the new connection, and the old one closes once its requests
 * in flight have settled (at the latest when its JWT expires). Every (re)connect presents a fresh
 * JWT, so a reconnect after a server restart, or after an expiry the renewal missed, still works.
 */
import { connect, jwtAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { NatsbindError, describeError } from "../errors.ts";
import type { Logger } from "../observability/logger.ts";
import type { Clock, TimerHandle } from "../runtime/clock.ts";
import type { SystemUser, SystemUserIssuer, SystemUserRole } from "./system-user.ts";

/** Could not connect, or used after close(). Never carries credentials. */
export class SystemConnectionError extends NatsbindError {}

export interface SystemConnection {
  /** The connection new work goes to (use onRenew to follow it with subscriptions). */
  readonly current: NatsConnection;
  /** Runs `fn` on the current connection, which stays open until `fn` settles. */
  use<T>(fn: (nc: NatsConnection) => Promise<T>): Promise<T>;
  /** `hook` runs with each new connection before the previous one closes (never for fixed ones). */
  onRenew(hook: (next: NatsConnection) => Promise<void>): void;
  close(): Promise<void>;
}

/** A connection that is never replaced (nats.systemCreds). */
export function fixedSystemConnection(nc: NatsConnection): SystemConnection {
  return {
    current: nc,
    use: (fn) => fn(nc),
    onRenew: () => undefined,
    async close() {
      if (!nc.isClosed()) await nc.drain().catch(() => nc.close());
    },
  };
}

export interface RenewingConnectionOptions {
  servers: string | string[];
  issuer: SystemUserIssuer;
  role: SystemUserRole;
  /** Connection name, as CONNZ shows it. */
  name: string;
  clock: Clock;
  log: Logger;
  connectTimeoutMs?: number;
}

export interface RenewingConnectionCounters {
  /** Connections replaced by a new one. */
  renewals: number;
  /** Attempts to connect a new user that failed (retried). */
  renewalFailures: number;
}

/** One connection as one issued user. */
interface Leg {
  nc: NatsConnection;
  user: SystemUser;
  /** exp of the JWT presented last (each reconnect presents a new one), unix ms. */
  expiresAt: number;
  inFlight: number;
  /** Set while retiring: called when inFlight drops to 0. */
  idle: (() => void) | undefined;
}

function serverList(servers: string | string[]): string {
  return (Array.isArray(servers) ? servers : [servers]).join(",");
}

export class RenewingSystemConnection implements SystemConnection {
  readonly counters: RenewingConnectionCounters = { renewals: 0, renewalFailures: 0 };
  readonly #opts: RenewingConnectionOptions;
  readonly #hooks: Array<(next: NatsConnection) => Promise<void>> = [];
  readonly #retiring = new Set<Leg>();
  #active: Leg;
  #timer: TimerHandle | undefined;
  #renewing: Promise<void> | undefined;
  #closed = false;

  private constructor(opts: RenewingConnectionOptions, first: Leg) {
    this.#opts = opts;
    this.#active = first;
    this.#watch(first);
    this.#schedule(this.#renewAfterMs);
  }

  /** Connects as a new user; throws SystemConnectionError when the servers refuse or are away. */
  static async start(opts: RenewingConnectionOptions): Promise<RenewingSystemConnection> {
    return new RenewingSystemConnection(opts, await connectLeg(opts));
  }

  get current(): NatsConnection {
    return this.#active.nc;
  }

  /** Public key of the user the current connection authenticates as. */
  get user(): string {
    return this.#active.user.key.publicKey;
  }

  /** When the current connection's JWT expires (unix ms). */
  get expiresAt(): number {
    return this.#active.expiresAt;
  }

  /** Connections replaced but still open, waiting for their requests in flight. */
  get retiring(): number {
    return this.#retiring.size;
  }

  get #renewAfterMs(): number {
    return Math.floor(this.#opts.issuer.lifetimeMs / 3);
  }

  get #retryMs(): number {
    return Math.min(30_000, Math.max(1_000, Math.floor(this.#opts.issuer.lifetimeMs / 20)));
  }

  async use<T>(fn: (nc: NatsConnection) => Promise<T>): Promise<T> {
    if (this.#closed) throw new SystemConnectionError(`${this.#opts.name}: the system connection is closed`);
    const leg = this.#active;
    leg.inFlight += 1;
    try {
      return await fn(leg.nc);
    } finally {
      leg.inFlight -= 1;
      if (leg.inFlight === 0) leg.idle?.();
    }
  }

  onRenew(hook: (next: NatsConnection) => Promise<void>): void {
    this.#hooks.push(hook);
  }

  /**
   * Replaces the current connection now (the timer calls it; tests may too). One renewal runs at
   * a time; a failed one is retried on the timer, and the current connection stays meanwhile.
   */
  renew(): Promise<void> {
    this.#renewing ??= this.#renew().finally(() => {
      this.#renewing = undefined;
    });
    return this.#renewing;
  }

  async #renew(): Promise<void> {
    if (this.#closed) return;
    this.#cancelTimer();
    let next: Leg;
    try {
      next = await connectLeg(this.#opts);
    } catch (err) {
      this.counters.renewalFailures += 1;
      if (this.#closed) return;
      const remainingMs = this.#active.expiresAt - this.#opts.clock.now();
      this.#opts.log.warn(
        { connection: this.#opts.name, err: describeError(err), retryInMs: this.#retryMs, remainingMs },
        "system connection: renewal failed; the current connection stays and renewal is retried",
      );
      this.#schedule(this.#retryMs);
      return;
    }
    if (this.#closed) {
      await next.nc.close().catch(() => undefined);
      return;
    }
    for (const hook of this.#hooks) {
      try {
        await hook(next.nc);
      } catch (err) {
        this.#opts.log.error(
          { connection: this.#opts.name, err: describeError(err) },
          "system connection: moving to the renewed connection failed",
        );
      }
    }
    const previous = this.#active;
    this.#active = next;
    this.#watch(next);
    this.counters.renewals += 1;
    this.#opts.log.debug(
      { connection: this.#opts.name, user: next.user.key.publicKey, expiresAt: next.expiresAt },
      "system connection: renewed",
    );
    this.#schedule(this.#renewAfterMs);
    void this.#retire(previous);
  }

  /** Closes a replaced connection once its requests in flight settled, or when its JWT expires. */
  async #retire(leg: Leg): Promise<void> {
    this.#retiring.add(leg);
    if (leg.inFlight > 0) {
      await new Promise<void>((resolve) => {
        const deadline = this.#opts.clock.setTimeout(
          () => resolve(),
          Math.max(0, leg.expiresAt - this.#opts.clock.now()),
        );
        leg.idle = () => {
          this.#opts.clock.clearTimeout(deadline);
          resolve();
        };
      });
    }
    await leg.nc.close().catch(() => undefined);
    this.#retiring.delete(leg);
  }

  /** The current connection closed for good (not by us): replace it at once. */
  #watch(leg: Leg): void {
    void leg.nc.closed().then((err) => {
      if (this.#closed || leg !== this.#active) return;
      this.#opts.log.warn(
        { connection: this.#opts.name, ...(err ? { err: describeError(err) } : {}) },
        "system connection: closed by the server or the client; connecting a new user",
      );
      void this.renew();
    });
  }

  #schedule(delayMs: number): void {
    this.#cancelTimer();
    if (this.#closed) return;
    this.#timer = this.#opts.clock.setTimeout(() => {
      this.#timer = undefined;
      void this.renew();
    }, delayMs);
  }

  #cancelTimer(): void {
    if (this.#timer !== undefined) this.#opts.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#cancelTimer();
    await this.#renewing?.catch(() => undefined);
    const legs = [this.#active, ...this.#retiring];
    for (const leg of legs) leg.idle?.();
    await Promise.all(
      legs.map(async (leg) => {
        if (!leg.nc.isClosed()) await leg.nc.drain().catch(() => leg.nc.close());
      }),
    );
  }
}

/** Connects as a new user of `opts.role`; errors name the user, key and account, never a secret. */
async function connectLeg(opts: RenewingConnectionOptions): Promise<Leg> {
  const user = opts.issuer.newUser(opts.role);
  const leg: Leg = {
    nc: undefined as unknown as NatsConnection,
    user,
    expiresAt: 0,
    inFlight: 0,
    idle: undefined,
  };
  try {
    leg.nc = await connect({
      servers: opts.servers,
      name: opts.name,
      // A fresh JWT at every (re)connect, so a reconnect never presents an expired one.
      authenticator: jwtAuthenticator(
        () => {
          const { jwt, expiresAt } = opts.issuer.jwtFor(user);
          leg.expiresAt = expiresAt;
          return jwt;
        },
        () => user.key.getSeed(),
      ),
      ...(user.inboxPrefix !== undefined ? { inboxPrefix: user.inboxPrefix } : {}),
      noAsyncTraces: true,
      timeout: opts.connectTimeoutMs ?? 5_000,
      maxReconnectAttempts: -1,
    });
  } catch (cause) {
    const text = describeError(cause);
    const hint = /authori[sz]ation/i.test(text)
      ? `: is ${opts.issuer.signingKeyPublic} an unscoped signing key in the JWT of system account ${opts.issuer.systemAccount}?`
      : "";
    throw new SystemConnectionError(
      `cannot connect to NATS at ${serverList(opts.servers)} as natsbind's system user ${user.key.publicKey} ` +
        `(signed by ${opts.issuer.signingKeyPublic}): ${text}${hint}`,
      { cause },
    );
  }
  return leg;
}
