/**
 * natsbind's own system-account users (issue 11, part 4). Given a signing key of the system account,
 * natsbind issues itself one user per connection instead of holding a long-lived creds file: the
 * user may publish only the `$SYS.REQ...` subjects natsbind requests (as `nsc push` does) and
 * subscribe only to its own inbox prefix (or, for the connection audit, only to the connect events),
 * and its JWT lives at most 1 hour. A leaked one is worth little and soon worth nothing.
 *
 * Pure but for key generation: the JWTs are signed with the injected clock's time. The signing key
 * and the users' seeds never leave this module except to the connection that authenticates.
 */
import { randomBytes } from "node:crypto";
import { TerminalError } from "../errors.ts";
import type { Clock } from "../runtime/clock.ts";
import { signJwt, userClaims, type PermissionTemplate } from "./claims.ts";
import { base32Encode } from "./encoding.ts";
import { NKeyPair, isPublicKey } from "./keys.ts";
import { subjectProblem } from "./subjects.ts";

export class SystemUserError extends TerminalError {}

/** The longest lifetime of an issued system user (issue 11: at most 1 hour). */
export const MAX_SYSTEM_USER_LIFETIME_MS = 3_600_000;
/** The shortest: renewal happens after a third of it, so below this natsbind would mostly reconnect. */
export const MIN_SYSTEM_USER_LIFETIME_MS = 10_000;
export const DEFAULT_SYSTEM_USER_LIFETIME_MS = MAX_SYSTEM_USER_LIFETIME_MS;

/**
 * Every subject NatsResolver requests (src/nats/resolver.ts): servers() and the server count,
 * push(), delete(), list(), lookup() and connections(). test/unit/system-user.test.ts fails when
 * resolver.ts requests a subject not covered here.
 */
export const RESOLVER_REQUEST_SUBJECTS: readonly string[] = [
  "$SYS.REQ.SERVER.PING",
  // natsbind run checks every server trusts a new operator signing key (operator/live-keys.ts).
  "$SYS.REQ.SERVER.PING.VARZ",
  "$SYS.REQ.CLAIMS.UPDATE",
  "$SYS.REQ.CLAIMS.DELETE",
  "$SYS.REQ.CLAIMS.LIST",
  "$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP",
  "$SYS.REQ.ACCOUNT.*.CONNZ",
  // connections() asks which servers have an account loaded with connections before CONNZ.
  "$SYS.REQ.ACCOUNT.PING.STATZ",
];

/** What one kind of natsbind system connection may do. */
export interface SystemUserRole {
  /** The user JWT's name: what CONNZ and connect events show. */
  name: string;
  /** Subjects it may publish to; empty: none at all. */
  publish: readonly string[];
  /** Subjects it may subscribe to, besides its inbox; empty (and no inbox): none at all. */
  subscribe: readonly string[];
  /** It makes requests: it may subscribe to an inbox prefix of its own, and nothing else's. */
  inbox: boolean;
}

/** The resolver client's user: the requests above and replies to its own inbox. */
export const RESOLVER_USER_ROLE: SystemUserRole = {
  name: "natsbind-resolver",
  publish: RESOLVER_REQUEST_SUBJECTS,
  subscribe: [],
  inbox: true,
};

/** One issued user: the key a connection authenticates with, and its private inbox prefix. */
export interface SystemUser {
  readonly role: SystemUserRole;
  readonly key: NKeyPair;
  /** The connection's `inboxPrefix` (undefined when the role makes no requests). */
  readonly inboxPrefix: string | undefined;
}

export interface SystemUserJwt {
  jwt: string;
  /** The JWT's exp, unix milliseconds. */
  expiresAt: number;
}

export interface SystemUserIssuerOptions {
  /** The system account's public key (A...): the users' account. */
  systemAccount: string;
  /** A signing key of the system account (or its identity key without strict signing key usage). */
  signingKey: NKeyPair;
  /** Lifetime of each JWT, ms (MIN_ to MAX_SYSTEM_USER_LIFETIME_MS). */
  lifetimeMs: number;
  clock: Clock;
}

/** Prefix of natsbind's inboxes; each user adds a random token of its own. */
const INBOX_ROOT = "_INBOX_natsbind";

function rolePermissions(role: SystemUserRole, inboxPrefix: string | undefined): PermissionTemplate {
  const subscribe = [...role.subscribe, ...(inboxPrefix !== undefined ? [`${inboxPrefix}.>`] : [])];
  // An empty allow list in a user JWT means "everything": "nothing" is a deny of ">".
  return {
    pub: role.publish.length > 0 ? { allow: [...role.publish] } : { deny: [">"] },
    sub: subscribe.length > 0 ? { allow: subscribe } : { deny: [">"] },
    // Only client connections: no websocket, leaf node or MQTT with these credentials.
    allowedConnectionTypes: ["STANDARD"],
  };
}

function checkRole(role: SystemUserRole): void {
  for (const [what, subjects] of [
    ["publish", role.publish],
    ["subscribe", role.subscribe],
  ] as const) {
    for (const s of subjects) {
      const problem = subjectProblem(s);
      if (problem) throw new SystemUserError(`system user role ${role.name}: ${what} subject ${problem}`);
      if (s === ">" || s.startsWith("_INBOX"))
        throw new SystemUserError(
          `system user role ${role.name}: ${what} ${s} is broader than natsbind needs`,
        );
    }
  }
}

/** Issues natsbind's system users: one key per connection, a fresh short-lived JWT per (re)connect. */
export class SystemUserIssuer {
  readonly systemAccount: string;
  readonly lifetimeMs: number;
  readonly #signingKey: NKeyPair;
  readonly #clock: Clock;

  constructor(opts: SystemUserIssuerOptions) {
    if (!isPublicKey(opts.systemAccount, "account"))
      throw new SystemUserError("system user issuer: systemAccount is not an account public key");
    if (opts.signingKey.kind !== "account")
      throw new SystemUserError(
        `system user issuer: the signing key must be an account key, got a ${opts.signingKey.kind} key`,
      );
    if (
      !Number.isSafeInteger(opts.lifetimeMs) ||
      opts.lifetimeMs < MIN_SYSTEM_USER_LIFETIME_MS ||
      opts.lifetimeMs > MAX_SYSTEM_USER_LIFETIME_MS
    )
      throw new SystemUserError(
        `system user issuer: lifetime must be ${MIN_SYSTEM_USER_LIFETIME_MS} to ${MAX_SYSTEM_USER_LIFETIME_MS} ms`,
      );
    this.systemAccount = opts.systemAccount;
    this.lifetimeMs = opts.lifetimeMs;
    this.#signingKey = opts.signingKey;
    this.#clock = opts.clock;
  }

  /** Public key of the signing key (for error messages: which key the servers must know). */
  get signingKeyPublic(): string {
    return this.#signingKey.publicKey;
  }

  /** A new user for one connection: a fresh key and a random inbox prefix of its own. */
  newUser(role: SystemUserRole): SystemUser {
    checkRole(role);
    const inboxPrefix = role.inbox ? `${INBOX_ROOT}.${base32Encode(randomBytes(15))}` : undefined;
    return { role, key: NKeyPair.generate("user"), inboxPrefix };
  }

  /** A JWT for `user`, issued now, expiring after the lifetime (whole seconds, never later). */
  jwtFor(user: SystemUser): SystemUserJwt {
    const now = this.#clock.now();
    const issuedAt = Math.floor(now / 1000);
    // Whole seconds, rounded down: exp - iat and exp - now never exceed the lifetime.
    const exp = issuedAt + Math.floor(this.lifetimeMs / 1000);
    const jwt = signJwt(
      userClaims({
        publicKey: user.key.publicKey,
        name: user.role.name,
        account: this.systemAccount,
        issuer: this.#signingKey.publicKey,
        scoped: false,
        permissions: rolePermissions(user.role, user.inboxPrefix),
        expiresAt: exp,
      }),
      this.#signingKey,
      issuedAt,
    );
    return { jwt, expiresAt: exp * 1000 };
  }
}
