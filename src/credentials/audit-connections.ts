/**
 * `nats.connect` / `nats.disconnect` audit lines for the users natsbind issued, from the events
 * nats-server publishes in the system account: `$SYS.ACCOUNT.<account>.CONNECT` (ConnectEventMsg)
 * and `.DISCONNECT` (DisconnectEventMsg: `sent` / `received` {msgs, bytes} from the client's side,
 * `reason` such as "Client Closed" or "Authentication Expired"), as nats-server's
 * server/events.go defines them. Every server of a cluster publishes its own clients' events and
 * the system account carries them to all, so one subscription sees the whole cluster.
 *
 * Who the user is: the event's `client.user` is NOT trusted. For a JWT user nats-server reports
 * the CONNECT's `nkey` or `user` field there when the client sends one, and a client may send any
 * (verified against nats-server 2.15: a user connecting with its own JWT and `nkey: <someone
 * else's key>` shows up as that someone else). The user key is taken from the user JWT the server
 * verified, which the event carries in `client.jwt`: its `sub`. The JWT is read for that and
 * dropped; it never reaches a line. The account (`client.acc`, and the subject's account token,
 * which must agree) and `client.issuer_key` (the signing key that issued the user) are the
 * server's own; isIssued() checks them against what natsbind issued.
 *
 * Users of the auth callout carry no JWT in the event (nats-server clears it) and no tags; their
 * `client.user` is the `name` of the user JWT natsbind's callout response gave them (the server
 * overrides whatever the client sent with it). Those are matched through `calloutUser(name)`.
 *
 * Every message is bounded (64 KiB) and validated (zod); a malformed one is dropped, counted and
 * logged (at most once a minute). Events are trusted as far as the system account is: any
 * system-account user can publish on these subjects.
 *
 * With nats.systemSigningKey the system connection is renewed (src/nats/system-connection.ts):
 * moveTo() subscribes on the new connection before leaving the old one, so no event is missed; one
 * published in between arrives on both, and the second copy (same `id`, other connection) is
 * dropped. Only copies across the two connections are: ids are never compared otherwise.
 */
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import { z } from "zod";
import { readJwt } from "../nats/claims.ts";
import type { SystemUserRole } from "../nats/system-user.ts";
import { isPublicKey } from "../nats/keys.ts";
import { jsonNestingProblem } from "../nesting.ts";
import type { Logger } from "../observability/logger.ts";
import { systemClock, type Clock } from "../runtime/clock.ts";
import type { AuditEvent, AuditSink } from "./types.ts";
import { NatsbindError } from "../errors.ts";

export const CONNECT_SUBJECT = "$SYS.ACCOUNT.*.CONNECT";
export const DISCONNECT_SUBJECT = "$SYS.ACCOUNT.*.DISCONNECT";
export const CONNECT_EVENT_TYPE = "io.nats.server.advisory.v1.client_connect";
export const DISCONNECT_EVENT_TYPE = "io.nats.server.advisory.v1.client_disconnect";
/** natsbind's system user for the audit, when it issues its own: these two subscriptions, nothing else. */
export const CONNECTION_AUDIT_USER_ROLE: SystemUserRole = {
  name: "natsbind-audit",
  publish: [],
  subscribe: [CONNECT_SUBJECT, DISCONNECT_SUBJECT],
  inbox: false,
};
/** Event ids remembered, per side, while moving between connections (the overlap lasts two flushes). */
const MAX_OVERLAP_IDS = 4_096;
/** How long a move waits for the old connection's flush (it may be reconnecting). */
const MOVE_FLUSH_DEADLINE_MS = 5_000;

/** `promise`, or nothing after `ms` (on `clock`); a rejection counts as done. */
function withDeadline(promise: Promise<unknown>, ms: number, clock: Clock): Promise<void> {
  return new Promise((resolve) => {
    const timer = clock.setTimeout(resolve, ms);
    void promise
      .catch(() => undefined)
      .then(() => {
        clock.clearTimeout(timer);
        resolve();
      });
  });
}
/** Larger event messages are dropped: natsbind's user JWTs are ~1 KiB, events ~2 KiB. */
export const MAX_EVENT_BYTES = 64 * 1024;
/** Events nest 3 levels; anything deeper is not parsed. */
const MAX_EVENT_NESTING = 8;
const LOG_EVERY_MS = 60_000;

// --- issued users --------------------------------------------------------------------------------

/** A user natsbind issued, as the issuer records it. */
export interface IssuedUser {
  userPublicKey: string;
  /** The account the user belongs to. */
  account: string;
  /** The key that signed the user JWT (the role's scoped signing key). */
  issuer: string;
  /** The user JWT's name: for callout users, what the connection events show as `client.user`. */
  name?: string;
  /** The user JWT's tags (written on lines of callout users, whose events carry none). */
  tags?: readonly string[];
  /** The user JWT's expiry, unix milliseconds. */
  expiresAt: number;
}

/** What the server says about a connection: the facts isIssued() checks. */
export interface SeenConnection {
  account: string;
  /** client.issuer_key: the key that signed the user JWT. */
  issuerKey?: string;
}

export interface IssuedUsersCounters {
  added: number;
  /** Removed after expiresAt + margin. */
  expired: number;
  /** Removed, oldest first, because the set was full. */
  evicted: number;
}

export class IssuedUserError extends NatsbindError {}

export const DEFAULT_MAX_ISSUED_USERS = 100_000;
/** Entries outlive the JWT by this much: the disconnect at expiry arrives after it. */
export const DEFAULT_ISSUED_MARGIN_MS = 5 * 60_000;
const SWEEP_EVERY_MS = 60_000;

/**
 * The user public keys natsbind issued and that have not expired (plus a margin), bounded: at
 * `maxEntries` the oldest is evicted (counted in `evicted`; its connections then go unlogged). The
 * issuer add()s every user it issues; the connection audit asks isIssued(). In memory: a restarted
 * replica does not know the users issued before (their connection lines are missing until they
 * expire); each replica knows only its own. About 0.5 KiB per entry: ~50 MiB at 100k.
 */
export class IssuedUsers {
  readonly counters: IssuedUsersCounters = { added: 0, expired: 0, evicted: 0 };
  readonly #clock: Clock;
  readonly #max: number;
  readonly #marginMs: number;
  /** By user key, in insertion order (oldest first). */
  readonly #byKey = new Map<string, IssuedUser>();
  /** Callout users: "account issuer name" -> user key of the latest user issued with that name. */
  readonly #byName = new Map<string, string>();
  #nextSweep: number;

  constructor(opts: { clock: Clock; maxEntries?: number; marginMs?: number }) {
    this.#clock = opts.clock;
    this.#max = opts.maxEntries ?? DEFAULT_MAX_ISSUED_USERS;
    this.#marginMs = opts.marginMs ?? DEFAULT_ISSUED_MARGIN_MS;
    if (!Number.isSafeInteger(this.#max) || this.#max < 1)
      throw new RangeError("IssuedUsers: maxEntries must be >= 1");
    if (!(this.#marginMs >= 0)) throw new RangeError("IssuedUsers: marginMs must be >= 0");
    this.#nextSweep = this.#clock.now() + SWEEP_EVERY_MS;
  }

  get size(): number {
    return this.#byKey.size;
  }

  add(user: IssuedUser): void {
    if (!isPublicKey(user.userPublicKey, "user"))
      throw new IssuedUserError("issued user: userPublicKey is not a user public key");
    if (!isPublicKey(user.account, "account"))
      throw new IssuedUserError("issued user: account is not an account public key");
    if (!isPublicKey(user.issuer, "account"))
      throw new IssuedUserError("issued user: issuer is not an account public key");
    if (!Number.isFinite(user.expiresAt)) throw new IssuedUserError("issued user: expiresAt is not a time");
    const entry: IssuedUser = {
      userPublicKey: user.userPublicKey,
      account: user.account,
      issuer: user.issuer,
      expiresAt: user.expiresAt,
      ...(user.name !== undefined ? { name: user.name } : {}),
      ...(user.tags !== undefined ? { tags: [...user.tags] } : {}),
    };
    this.#remove(entry.userPublicKey);
    this.#byKey.set(entry.userPublicKey, entry);
    if (entry.name !== undefined)
      this.#byName.set(nameKey(entry.account, entry.issuer, entry.name), entry.userPublicKey);
    this.counters.added += 1;
    const now = this.#clock.now();
    if (now >= this.#nextSweep) this.#sweep(now);
    while (this.#byKey.size > this.#max) {
      const oldest = this.#byKey.keys().next().value as string;
      this.#remove(oldest);
      this.counters.evicted += 1;
    }
  }

  /** The live entry for a user key, if natsbind issued it (and, given `seen`, it matches). */
  get(userPublicKey: string, seen?: SeenConnection): IssuedUser | undefined {
    const entry = this.#byKey.get(userPublicKey);
    if (!entry) return undefined;
    if (this.#clock.now() > entry.expiresAt + this.#marginMs) {
      this.#remove(userPublicKey);
      this.counters.expired += 1;
      return undefined;
    }
    if (seen && !matches(entry, seen)) return undefined;
    return entry;
  }

  /** For startConnectionAudit's isIssued: the user key was issued by natsbind in that account, by that key. */
  isIssued(userPublicKey: string, seen?: SeenConnection): boolean {
    return this.get(userPublicKey, seen) !== undefined;
  }

  /** For startConnectionAudit's calloutUser: the latest user issued under this name there. */
  calloutUser(name: string, seen: SeenConnection): IssuedUser | undefined {
    if (seen.issuerKey === undefined) return undefined;
    const key = this.#byName.get(nameKey(seen.account, seen.issuerKey, name));
    return key === undefined ? undefined : this.get(key, seen);
  }

  #remove(userPublicKey: string): void {
    const entry = this.#byKey.get(userPublicKey);
    if (!entry) return;
    this.#byKey.delete(userPublicKey);
    if (entry.name !== undefined) {
      const k = nameKey(entry.account, entry.issuer, entry.name);
      if (this.#byName.get(k) === userPublicKey) this.#byName.delete(k);
    }
  }

  /** Expired entries anywhere in the set (TTLs differ, so they are not all at the front). */
  #sweep(now: number): void {
    this.#nextSweep = now + SWEEP_EVERY_MS;
    for (const [key, entry] of this.#byKey) {
      if (now > entry.expiresAt + this.#marginMs) {
        this.#remove(key);
        this.counters.expired += 1;
      }
    }
  }
}

function nameKey(account: string, issuer: string, name: string): string {
  return `${account} ${issuer} ${name}`;
}

function matches(entry: IssuedUser, seen: SeenConnection): boolean {
  return entry.account === seen.account && (seen.issuerKey === undefined || entry.issuer === seen.issuerKey);
}

// --- events --------------------------------------------------------------------------------------

const bounded = (max: number) => z.string().max(max);
const Count = z.int().min(0).max(Number.MAX_SAFE_INTEGER);
const Stats = z.looseObject({ msgs: Count, bytes: Count });
const Time = z
  .string()
  .max(64)
  .refine((t) => !Number.isNaN(Date.parse(t)), "is not a time");

const ClientInfo = z.looseObject({
  /** Account public key ("$G" and the like without operator mode). */
  acc: bounded(256).min(1),
  user: bounded(1024).optional(),
  /** The connection name: chosen by the client. */
  name: bounded(1024).optional(),
  host: bounded(256).optional(),
  jwt: bounded(16 * 1024).optional(),
  issuer_key: bounded(64).optional(),
  tags: z.array(bounded(1024)).max(128).optional(),
  kind: bounded(32).optional(),
});

const ServerInfo = z.looseObject({ name: bounded(256), id: bounded(128) });

const ConnectEvent = z.looseObject({
  type: z.literal(CONNECT_EVENT_TYPE),
  /** Unique per event (a nuid): the same event seen twice is dropped. */
  id: bounded(64).optional(),
  timestamp: Time,
  server: ServerInfo,
  client: ClientInfo,
});

const DisconnectEvent = ConnectEvent.extend({
  type: z.literal(DISCONNECT_EVENT_TYPE),
  sent: Stats,
  received: Stats,
  reason: bounded(256),
});

type Kind = "connect" | "disconnect";

export interface ConnectionAuditCounters {
  /** Event messages received on both subjects. */
  received: number;
  /** Dropped: too large, not JSON, not the documented shape, or inconsistent. */
  malformed: number;
  /** Well-formed events of users natsbind did not issue (no line). */
  ignored: number;
  /** Lines handed to the sink. */
  written: number;
  /** Events received on both connections while the subscriptions moved (the second copy). */
  duplicates: number;
}

export interface ConnectionAuditOptions {
  /** A connection as a system-account user (nats.systemCreds, or one of CONNECTION_AUDIT_USER_ROLE). */
  nc: NatsConnection;
  sink: AuditSink;
  /** Whether natsbind issued this user key, in this account, with this signing key. */
  isIssued: (userPublicKey: string, seen: SeenConnection) => boolean;
  /** Callout users (no JWT in the event): the user natsbind issued under this name, if any. */
  calloutUser?: (name: string, seen: SeenConnection) => IssuedUser | undefined;
  log: Logger;
  clock?: Clock;
  /**
   * Queue group of the subscriptions. Leave out when each replica checks only the users it
   * issued itself (IssuedUsers): every replica must see every event. Set it only when isIssued
   * can answer for users any replica issued, so each event is logged once across replicas.
   */
  queue?: string;
}

export interface ConnectionAudit {
  readonly counters: Readonly<ConnectionAuditCounters>;
  /**
   * Subscribes on `nc` and then leaves the current connection (which stays open: it is the
   * caller's). For a renewed system connection (SystemConnection.onRenew).
   */
  moveTo(nc: NatsConnection): Promise<void>;
  /** Unsubscribes (the connection stays open: it is the caller's). */
  stop(): Promise<void>;
}

class Malformed extends Error {}

/** The server's event, checked; throws Malformed with what is wrong. */
function parseEvent(kind: Kind, subject: string, data: Uint8Array) {
  if (data.length > MAX_EVENT_BYTES) throw new Malformed(`larger than ${MAX_EVENT_BYTES} bytes`);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(data);
  } catch {
    throw new Malformed("not UTF-8");
  }
  const nesting = jsonNestingProblem(text, MAX_EVENT_NESTING);
  if (nesting) throw new Malformed(nesting);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Malformed("not JSON");
  }
  const parsed = (kind === "connect" ? ConnectEvent : DisconnectEvent).safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new Malformed(`${issue.path.join(".") || "(root)"}: ${issue.message}`);
  }
  const event = parsed.data as z.infer<typeof DisconnectEvent> | z.infer<typeof ConnectEvent>;
  const subjectAccount = subject.split(".")[2];
  if (subjectAccount !== event.client.acc)
    throw new Malformed("client.acc differs from the subject's account");
  return event;
}

/** The user key a JWT user's event proves: the verified JWT's subject, issued by issuer_key. */
function jwtUser(jwt: string, issuerKey: string | undefined): string {
  let claims;
  try {
    claims = readJwt(jwt, "client.jwt").claims;
  } catch {
    throw new Malformed("client.jwt is not a NATS JWT");
  }
  if (!isPublicKey(claims.sub, "user")) throw new Malformed("client.jwt's subject is not a user key");
  if (issuerKey !== undefined && claims.iss !== issuerKey)
    throw new Malformed("client.jwt's issuer differs from client.issuer_key");
  return claims.sub;
}

/**
 * Subscribes to the connect and disconnect events and writes a line for each event of a user
 * natsbind issued. The system user needs subscribe permission on both subjects (natsbind init's
 * system.creds has no limits; CONNECTION_AUDIT_USER_ROLE allows exactly these two).
 */
export function startConnectionAudit(opts: ConnectionAuditOptions): ConnectionAudit {
  const clock = opts.clock ?? systemClock;
  const counters: ConnectionAuditCounters = {
    received: 0,
    malformed: 0,
    ignored: 0,
    written: 0,
    duplicates: 0,
  };
  /** Subscriptions of a newer connection carry a higher generation. */
  let generation = 0;
  /**
   * The last move: ids the old subscriptions delivered while both were subscribed (their copies on
   * the new ones are dropped, also later), and ids the new ones delivered meanwhile (the old
   * copies are dropped).
   */
  let overlap: { oldGeneration: number; old: Set<string>; fresh: Set<string>; open: boolean } | undefined;
  const seenOnOtherSide = (id: string | undefined, from: number): boolean => {
    if (id === undefined || overlap === undefined) return false;
    const fromOld = from === overlap.oldGeneration;
    if ((fromOld ? overlap.fresh : overlap.old).has(id)) return true;
    const mine = fromOld ? overlap.old : overlap.fresh;
    if (overlap.open && mine.size < MAX_OVERLAP_IDS) mine.add(id);
    return false;
  };
  let lastLog = -Infinity;
  let malformedSinceLog = 0;

  const handle = (kind: Kind, msg: Msg, from: number): void => {
    counters.received += 1;
    try {
      const event = parseEvent(kind, msg.subject, msg.data);
      if (seenOnOtherSide(event.id, from)) {
        counters.duplicates += 1;
        return;
      }
      const client = event.client;
      const seen: SeenConnection = {
        account: client.acc,
        ...(client.issuer_key ? { issuerKey: client.issuer_key } : {}),
      };
      let userPublicKey: string | undefined;
      let tags: readonly string[] | undefined = client.tags;
      if (client.jwt) {
        const key = jwtUser(client.jwt, client.issuer_key);
        if (opts.isIssued(key, seen)) userPublicKey = key;
      } else if (client.user && opts.calloutUser) {
        const issued = opts.calloutUser(client.user, seen);
        if (issued) {
          userPublicKey = issued.userPublicKey;
          tags = issued.tags;
        }
      }
      if (userPublicKey === undefined) {
        counters.ignored += 1;
        return;
      }
      const base = {
        time: new Date(Date.parse(event.timestamp)).toISOString(),
        account: client.acc,
        userPublicKey,
        ...(client.name ? { name: client.name } : {}),
        ...(tags && tags.length > 0 ? { tags: [...tags] } : {}),
        server: event.server.name,
        ...(client.host ? { clientAddress: client.host } : {}),
      };
      let line: AuditEvent;
      if (kind === "connect") {
        line = { event: "nats.connect", ...base };
      } else {
        const d = event as z.infer<typeof DisconnectEvent>;
        line = {
          event: "nats.disconnect",
          ...base,
          sent: { msgs: d.sent.msgs, bytes: d.sent.bytes },
          received: { msgs: d.received.msgs, bytes: d.received.bytes },
          reason: d.reason,
        };
      }
      opts.sink.write(line);
      counters.written += 1;
    } catch (err) {
      if (!(err instanceof Malformed)) throw err;
      counters.malformed += 1;
      malformedSinceLog += 1;
      const now = clock.now();
      if (now - lastLog >= LOG_EVERY_MS) {
        opts.log.warn(
          { subject: msg.subject.slice(0, 256), problem: err.message, malformed: malformedSinceLog },
          "connection audit: dropped a malformed system event",
        );
        lastLog = now;
        malformedSinceLog = 0;
      }
    }
  };

  const subscribe = (nc: NatsConnection, subject: string, kind: Kind, from: number): Subscription =>
    nc.subscribe(subject, {
      ...(opts.queue ? { queue: opts.queue } : {}),
      callback: (err, msg) => {
        if (err) {
          opts.log.error(
            { subject, err },
            "connection audit: subscription failed (permissions of the system user?)",
          );
          return;
        }
        try {
          handle(kind, msg, from);
        } catch (e) {
          // A bug here must not end the subscription (nats.js closes it when a callback throws).
          opts.log.error({ subject, err: e }, "connection audit: event not handled");
        }
      },
    });

  const subscribeAll = (nc: NatsConnection, from: number): Subscription[] => [
    subscribe(nc, CONNECT_SUBJECT, "connect", from),
    subscribe(nc, DISCONNECT_SUBJECT, "disconnect", from),
  ];
  let nc = opts.nc;
  let subs = subscribeAll(nc, generation);
  return {
    counters,
    async moveTo(next) {
      const move = {
        oldGeneration: generation,
        old: new Set<string>(),
        fresh: new Set<string>(),
        open: true,
      };
      overlap = move;
      generation += 1;
      const nextSubs = subscribeAll(next, generation);
      const previous = nc;
      try {
        // The server has the new subscriptions once the flush returns. An event it sent before
        // then went to the old connection only and may still be on its way: a flush there too
        // (the server answers after what it queued for that connection) before leaving it.
        await next.flush();
        if (!previous.isClosed()) await withDeadline(previous.flush(), MOVE_FLUSH_DEADLINE_MS, clock);
      } finally {
        // Even when the flush failed: the old connection is going away, the new one resubscribes.
        for (const sub of subs) sub.unsubscribe();
        // The old subscriptions deliver nothing more: only the ids they delivered are still needed.
        move.open = false;
        move.fresh.clear();
        nc = next;
        subs = nextSubs;
      }
    },
    async stop() {
      for (const sub of subs) sub.unsubscribe();
      if (!nc.isClosed()) await nc.flush().catch(() => undefined);
    },
  };
}
