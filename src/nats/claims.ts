/**
 * NATS JWT claims (nats-server's v2 format): pure builders from desired state, a signer, a verifying
 * decoder and the normalized claims hash that decides whether a push is needed.
 *
 * Builders do no I/O and read no clock: the same input always gives the same claims. Only signJwt
 * adds time (iat, from the caller) and a signature.
 */
import { createHash } from "node:crypto";
import type { KeyPair } from "@nats-io/nkeys";
import { TerminalError } from "../errors.ts";
import { base32Encode, base64UrlEncode } from "./encoding.ts";
import { isPublicKey, parsePublicKey, verifyWithPublicKey, type KeyKind } from "./keys.ts";
import { hasControlCharacter, subjectProblem } from "./subjects.ts";

/** Invalid desired state or an undecodable / unverifiable JWT. */
export class ClaimsError extends TerminalError {}

/** -1 means unlimited, as in nats-server. */
export interface JetStreamLimits {
  memoryStorage: number;
  diskStorage: number;
  streams: number;
  consumers: number;
  maxAckPending?: number;
  memoryMaxStreamBytes?: number;
  diskMaxStreamBytes?: number;
  maxBytesRequired?: boolean;
}

export interface AccountLimits {
  connections?: number;
  leafNodeConnections?: number;
  subscriptions?: number;
  /** Bytes in flight; -1 unlimited. */
  data?: number;
  /** Largest message payload in bytes; -1 unlimited. */
  payload?: number;
  imports?: number;
  exports?: number;
  wildcardExports?: boolean;
  /** Absent: JetStream disabled for the account. */
  jetstream?: JetStreamLimits;
}

export interface SubjectPermission {
  allow?: string[];
  deny?: string[];
}

/** What every user signed by a scoped signing key may do; subjects may use template functions. */
export interface PermissionTemplate {
  pub?: SubjectPermission;
  sub?: SubjectPermission;
  /** Allow replies to received requests: at most `max` replies within `ttlMs`. */
  responses?: { max: number; ttlMs: number };
  subscriptions?: number;
  data?: number;
  payload?: number;
  bearerToken?: boolean;
  allowedConnectionTypes?: string[];
}

export interface ScopedSigningKey {
  key: string;
  role: string;
  description?: string;
  template: PermissionTemplate;
}

export type SigningKey = string | ScopedSigningKey;

export interface AccountExport {
  name: string;
  subject: string;
  type: "stream" | "service";
  tokenRequired?: boolean;
  description?: string;
}

export interface AccountImport {
  name: string;
  subject: string;
  account: string;
  type: "stream" | "service";
  localSubject?: string;
}

/**
 * Auth callout (nats-server 2.10+): every user of the account except `authUsers` is sent to the
 * callout service, which answers with a user JWT of one of `allowedAccounts`.
 */
export interface ExternalAuthorization {
  /** Users ("U…") that bypass the callout: the callout service's own connections. */
  authUsers: string[];
  /** Accounts the service may place users in: ["*"] (any) or account public keys, never both. */
  allowedAccounts: string[];
}

export interface DesiredAccount {
  /** The account's identity public key ("A…"). */
  publicKey: string;
  name: string;
  description?: string;
  tags?: string[];
  limits?: AccountLimits;
  signingKeys: SigningKey[];
  exports?: AccountExport[];
  imports?: AccountImport[];
  /** Unix seconds; absent: never expires. */
  expiresAt?: number;
  /** Where to read more about the account (e.g. the GitLab project page). */
  infoUrl?: string;
  /** Makes this a callout account. */
  authorization?: ExternalAuthorization;
  /**
   * Revoked users: user public key ("U…") or "*" (every user) -> unix seconds. nats-server refuses,
   * and closes on push, every user whose JWT `iat` <= that time (the same second counts).
   */
  revocations?: Record<string, number>;
}

/** Claims as they appear in a JWT body (snake_case is nats-server's). */
export interface JwtClaims {
  jti?: string;
  iat?: number;
  exp?: number;
  iss: string;
  sub: string;
  name: string;
  aud?: string;
  nats: Record<string, unknown> & { type: string; version: 2 };
}

export const MAX_JWT_BYTES = 1024 * 1024;
const MAX_NAME = 256;
const MAX_TAGS = 64;
/** Bounds the account JWT: one entry is ~70 bytes, so 10,000 stay well under MAX_JWT_BYTES. */
export const MAX_REVOCATIONS = 10_000;
/** The revocations key that revokes every user of the account. */
export const REVOKE_ALL = "*";

function fail(path: string, problem: string): never {
  throw new ClaimsError(`${path} ${problem}`);
}

function checkName(path: string, value: string): void {
  if (typeof value !== "string" || value.trim().length === 0) fail(path, "is empty");
  if (value.length > MAX_NAME) fail(path, `is longer than ${MAX_NAME} characters`);
  if (hasControlCharacter(value)) fail(path, "contains a control character");
}

function checkKey(path: string, value: string, kind: KeyKind): void {
  if (!isPublicKey(value, kind))
    fail(
      path,
      `is not ${kind === "user" ? "a user" : kind === "server" ? "a server" : `an ${kind}`} public key`,
    );
}

function checkSubjects(path: string, subjects: string[] | undefined): string[] | undefined {
  if (subjects === undefined) return undefined;
  subjects.forEach((s, i) => {
    const problem = typeof s === "string" ? subjectProblem(s) : "is not a string";
    if (problem) fail(`${path}[${i}]`, `"${String(s).slice(0, 80)}" ${problem}`);
  });
  return [...subjects];
}

function checkLimit(path: string, value: number | undefined): number {
  if (value === undefined) return -1;
  if (!Number.isSafeInteger(value) || value < -1) fail(path, "must be an integer >= -1 (-1 is unlimited)");
  return value;
}

function permission(path: string, p: SubjectPermission | undefined): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  const allow = checkSubjects(`${path}.allow`, p?.allow);
  const deny = checkSubjects(`${path}.deny`, p?.deny);
  if (allow?.length) out.allow = allow;
  if (deny?.length) out.deny = deny;
  return out;
}

function templateClaims(path: string, t: PermissionTemplate): Record<string, unknown> {
  const out: Record<string, unknown> = {
    pub: permission(`${path}.pub`, t.pub),
    sub: permission(`${path}.sub`, t.sub),
    subs: checkLimit(`${path}.subscriptions`, t.subscriptions),
    data: checkLimit(`${path}.data`, t.data),
    payload: checkLimit(`${path}.payload`, t.payload),
  };
  if (t.responses) {
    if (!Number.isSafeInteger(t.responses.max) || t.responses.max < 1)
      fail(`${path}.responses.max`, "must be >= 1");
    if (!Number.isSafeInteger(t.responses.ttlMs) || t.responses.ttlMs < 0)
      fail(`${path}.responses.ttlMs`, "must be >= 0");
    out.resp = { max: t.responses.max, ttl: t.responses.ttlMs * 1_000_000 };
  }
  if (t.bearerToken) out.bearer_token = true;
  if (t.allowedConnectionTypes?.length) out.allowed_connection_types = [...t.allowedConnectionTypes];
  return out;
}

function limitsClaims(l: AccountLimits | undefined): Record<string, unknown> {
  const js = l?.jetstream;
  const out: Record<string, unknown> = {
    subs: checkLimit("limits.subscriptions", l?.subscriptions),
    data: checkLimit("limits.data", l?.data),
    payload: checkLimit("limits.payload", l?.payload),
    imports: checkLimit("limits.imports", l?.imports),
    exports: checkLimit("limits.exports", l?.exports),
    wildcards: l?.wildcardExports ?? true,
    conn: checkLimit("limits.connections", l?.connections),
    leaf: checkLimit("limits.leafNodeConnections", l?.leafNodeConnections),
    mem_storage: js ? checkLimit("limits.jetstream.memoryStorage", js.memoryStorage) : 0,
    disk_storage: js ? checkLimit("limits.jetstream.diskStorage", js.diskStorage) : 0,
  };
  if (js) {
    if (js.memoryStorage === 0 && js.diskStorage === 0) {
      fail(
        "limits.jetstream",
        "enables JetStream with no storage: set memoryStorage or diskStorage (-1 unlimited)",
      );
    }
    out.streams = checkLimit("limits.jetstream.streams", js.streams);
    out.consumer = checkLimit("limits.jetstream.consumers", js.consumers);
    if (js.maxAckPending !== undefined)
      out.max_ack_pending = checkLimit("limits.jetstream.maxAckPending", js.maxAckPending);
    if (js.memoryMaxStreamBytes !== undefined) {
      out.mem_max_stream_bytes = checkLimit("limits.jetstream.memoryMaxStreamBytes", js.memoryMaxStreamBytes);
    }
    if (js.diskMaxStreamBytes !== undefined) {
      out.disk_max_stream_bytes = checkLimit("limits.jetstream.diskMaxStreamBytes", js.diskMaxStreamBytes);
    }
    if (js.maxBytesRequired) out.max_bytes_required = true;
  }
  return out;
}

function authorizationClaims(a: ExternalAuthorization | undefined): Record<string, unknown> {
  if (a === undefined) return {};
  if (a.authUsers.length === 0) fail("authorization.authUsers", "is empty: the callout service needs a user");
  a.authUsers.forEach((u, i) => checkKey(`authorization.authUsers[${i}]`, u, "user"));
  if (a.allowedAccounts.length === 0) fail("authorization.allowedAccounts", "is empty");
  if (a.allowedAccounts.includes("*")) {
    // nats-server refuses "*" next to account keys.
    if (a.allowedAccounts.length > 1)
      fail("authorization.allowedAccounts", 'holds "*" and more: "*" stands alone');
  } else {
    a.allowedAccounts.forEach((k, i) => checkKey(`authorization.allowedAccounts[${i}]`, k, "account"));
  }
  return { auth_users: [...a.authUsers], allowed_accounts: [...a.allowedAccounts] };
}

function revocationsClaims(r: Record<string, number> | undefined): Record<string, number> | undefined {
  if (r === undefined) return undefined;
  if (typeof r !== "object" || r === null || Array.isArray(r)) fail("revocations", "must be an object");
  const keys = Object.keys(r);
  if (keys.length === 0) return undefined;
  if (keys.length > MAX_REVOCATIONS) fail("revocations", `has more than ${MAX_REVOCATIONS} entries`);
  // Sorted so the JWT body, not only claimsHash, is the same for the same revocations.
  keys.sort();
  const out: Record<string, number> = {};
  for (const key of keys) {
    const path = `revocations[${JSON.stringify(key.slice(0, 80))}]`;
    if (key !== REVOKE_ALL) checkKey(path, key, "user");
    const at = r[key];
    if (typeof at !== "number" || !Number.isSafeInteger(at) || at <= 0)
      fail(path, "must be a positive integer (unix seconds)");
    out[key] = at;
  }
  return out;
}

function tagsClaims(tags: string[] | undefined): string[] | undefined {
  if (!tags?.length) return undefined;
  if (tags.length > MAX_TAGS) fail("tags", `has more than ${MAX_TAGS} entries`);
  const out = tags.map((t, i) => {
    if (typeof t !== "string" || t.length === 0 || t.length > MAX_NAME || /\s/u.test(t)) {
      fail(`tags[${i}]`, "must be a non-empty string without whitespace");
    }
    // nats-server's jwt lower-cases tags; doing it here keeps hashes stable across a round trip.
    return t.toLowerCase();
  });
  return [...new Set(out)];
}

/**
 * Account claims for `desired`, issued by `issuer` (an operator signing public key). Pure: throws a
 * ClaimsError naming the offending field for invalid input.
 */
export function accountClaims(desired: DesiredAccount, issuer: string): JwtClaims {
  checkKey("publicKey", desired.publicKey, "account");
  checkKey("issuer", issuer, "operator");
  checkName("name", desired.name);
  // A role may have several keys only while one rotates (same template on each): role -> template.
  const roles = new Map<string, string>();
  const keys = new Set<string>();
  const signingKeys = desired.signingKeys.map((sk, i) => {
    const key = typeof sk === "string" ? sk : sk.key;
    checkKey(`signingKeys[${i}].key`, key, "account");
    if (keys.has(key)) fail(`signingKeys[${i}].key`, "is listed twice");
    if (key === desired.publicKey) fail(`signingKeys[${i}].key`, "must differ from the account identity key");
    keys.add(key);
    if (typeof sk === "string") return key;
    checkName(`signingKeys[${i}].role`, sk.role);
    const template = templateClaims(`signingKeys[${i}].template`, sk.template);
    const same = roles.get(sk.role);
    if (same !== undefined && same !== JSON.stringify(template))
      fail(`signingKeys[${i}].role`, `"${sk.role}" is used by two signing keys with different templates`);
    roles.set(sk.role, JSON.stringify(template));
    const scoped: Record<string, unknown> = { kind: "user_scope", key, role: sk.role, template };
    if (sk.description) scoped.description = sk.description;
    return scoped;
  });

  const nats: JwtClaims["nats"] = {
    limits: limitsClaims(desired.limits),
    signing_keys: signingKeys,
    default_permissions: { pub: {}, sub: {} },
    authorization: authorizationClaims(desired.authorization),
    type: "account",
    version: 2,
  };
  if (desired.description) {
    if (desired.description.length > 4096) fail("description", "is longer than 4096 characters");
    nats.description = desired.description;
  }
  const tags = tagsClaims(desired.tags);
  if (tags) nats.tags = tags;
  const revocations = revocationsClaims(desired.revocations);
  if (revocations) nats.revocations = revocations;
  if (desired.infoUrl) {
    if (!/^https?:\/\/\S+$/.test(desired.infoUrl) || desired.infoUrl.length > 2048) {
      fail("infoUrl", "must be an http(s) URL of at most 2048 characters");
    }
    nats.info_url = desired.infoUrl;
  }
  if (desired.exports?.length) {
    nats.exports = desired.exports.map((e, i) => {
      checkName(`exports[${i}].name`, e.name);
      checkSubjects(`exports[${i}].subject`, [e.subject]);
      const out: Record<string, unknown> = { name: e.name, subject: e.subject, type: e.type };
      if (e.tokenRequired) out.token_req = true;
      if (e.description) out.description = e.description;
      return out;
    });
  }
  if (desired.imports?.length) {
    nats.imports = desired.imports.map((imp, i) => {
      checkName(`imports[${i}].name`, imp.name);
      checkKey(`imports[${i}].account`, imp.account, "account");
      checkSubjects(`imports[${i}].subject`, [imp.subject]);
      const out: Record<string, unknown> = {
        name: imp.name,
        subject: imp.subject,
        account: imp.account,
        type: imp.type,
      };
      if (imp.localSubject)
        out.local_subject = checkSubjects(`imports[${i}].localSubject`, [imp.localSubject])![0];
      return out;
    });
  }
  const claims: JwtClaims = { iss: issuer, sub: desired.publicKey, name: desired.name, nats };
  if (desired.expiresAt !== undefined) claims.exp = desired.expiresAt;
  return claims;
}

export interface DesiredOperator {
  publicKey: string;
  name: string;
  signingKeys: string[];
  systemAccount: string;
  accountServerUrl?: string;
  serviceUrls?: string[];
  /** Refuse accounts signed by the identity key: only signing keys may issue accounts. */
  strictSigningKeyUsage?: boolean;
}

/** Operator claims, self-signed by the operator identity key (iss == sub). */
export function operatorClaims(desired: DesiredOperator): JwtClaims {
  checkKey("publicKey", desired.publicKey, "operator");
  checkName("name", desired.name);
  desired.signingKeys.forEach((k, i) => checkKey(`signingKeys[${i}]`, k, "operator"));
  checkKey("systemAccount", desired.systemAccount, "account");
  const nats: JwtClaims["nats"] = {
    signing_keys: [...desired.signingKeys],
    system_account: desired.systemAccount,
    type: "operator",
    version: 2,
  };
  if (desired.accountServerUrl) nats.account_server_url = desired.accountServerUrl;
  if (desired.serviceUrls?.length) nats.operator_service_urls = [...desired.serviceUrls];
  if (desired.strictSigningKeyUsage) nats.strict_signing_key_usage = true;
  return { iss: desired.publicKey, sub: desired.publicKey, name: desired.name, nats };
}

export interface DesiredUser {
  publicKey: string;
  name: string;
  /** The account the user belongs to. */
  account: string;
  /** Public key of the signer: the account identity key or one of its signing keys. */
  issuer: string;
  /** Signed by a scoped signing key: the user carries no permissions or limits of its own. */
  scoped: boolean;
  tags?: string[];
  permissions?: PermissionTemplate;
  expiresAt?: number;
}

export function userClaims(desired: DesiredUser): JwtClaims {
  checkKey("publicKey", desired.publicKey, "user");
  checkKey("account", desired.account, "account");
  checkKey("issuer", desired.issuer, "account");
  checkName("name", desired.name);
  let nats: JwtClaims["nats"];
  if (desired.scoped) {
    if (desired.permissions) fail("permissions", "must be empty for a user of a scoped signing key");
    nats = { type: "user", version: 2 };
  } else {
    nats = { ...templateClaims("permissions", desired.permissions ?? {}), type: "user", version: 2 };
  }
  const tags = tagsClaims(desired.tags);
  if (tags) nats.tags = tags;
  if (desired.issuer !== desired.account) nats.issuer_account = desired.account;
  const claims: JwtClaims = { iss: desired.issuer, sub: desired.publicKey, name: desired.name, nats };
  if (desired.expiresAt !== undefined) claims.exp = desired.expiresAt;
  return claims;
}

/** The generic claim nats-server's full resolver accepts on $SYS.REQ.CLAIMS.DELETE. */
export function deleteAccountsClaims(accounts: string[], operatorSigningKey: string): JwtClaims {
  checkKey("operatorSigningKey", operatorSigningKey, "operator");
  if (accounts.length === 0) fail("accounts", "is empty");
  accounts.forEach((a, i) => checkKey(`accounts[${i}]`, a, "account"));
  return {
    iss: operatorSigningKey,
    sub: operatorSigningKey,
    name: "delete",
    aud: "NATS",
    nats: { accounts: [...accounts], type: "generic", version: 2 },
  };
}

const HEADER = base64UrlEncode(JSON.stringify({ typ: "JWT", alg: "ed25519-nkey" }));

/**
 * Signs claims with `signer`, whose public key must be `claims.iss`. `issuedAt` is unix seconds
 * from the caller's clock. jti is a base32 SHA-256 of the claims: unique per signing, checked by
 * no server (nats-io/jwt hashes differently; only uniqueness matters).
 */
export function signJwt(claims: JwtClaims, signer: KeyPair, issuedAt: number): string {
  if (signer.getPublicKey() !== claims.iss) {
    throw new ClaimsError(`signer ${signer.getPublicKey()} is not the claims issuer ${claims.iss}`);
  }
  const body: JwtClaims = { ...claims, jti: "", iat: issuedAt };
  body.jti = base32Encode(createHash("sha256").update(JSON.stringify(body)).digest());
  const signingInput = `${HEADER}.${base64UrlEncode(JSON.stringify(body))}`;
  const signature = signer.sign(Buffer.from(signingInput));
  return `${signingInput}.${base64UrlEncode(signature)}`;
}

/**
 * Parses a NATS JWT's header and claims WITHOUT verifying the signature: for JWTs this process
 * just signed, or that a server will verify anyway. Checks size, shape and algorithm.
 */
export function readJwt(jwt: string, what = "JWT"): { claims: JwtClaims; parts: [string, string, string] } {
  if (typeof jwt !== "string" || jwt.length === 0) throw new ClaimsError(`${what} is empty`);
  if (jwt.length > MAX_JWT_BYTES) throw new ClaimsError(`${what} is larger than ${MAX_JWT_BYTES} bytes`);
  const parts = jwt.trim().split(".");
  if (parts.length !== 3) throw new ClaimsError(`${what} is not a JWT (expected 3 dot-separated parts)`);
  let header: { alg?: unknown; typ?: unknown };
  let claims: JwtClaims;
  try {
    header = JSON.parse(Buffer.from(parts[0]!, "base64url").toString("utf8"));
    claims = JSON.parse(Buffer.from(parts[1]!, "base64url").toString("utf8"));
  } catch (cause) {
    throw new ClaimsError(`${what} has a header or body that is not base64url JSON`, { cause });
  }
  if (header?.alg !== "ed25519-nkey") {
    throw new ClaimsError(`${what} uses algorithm ${String(header?.alg)}, not ed25519-nkey`);
  }
  if (
    typeof claims !== "object" ||
    claims === null ||
    typeof claims.iss !== "string" ||
    typeof claims.sub !== "string" ||
    typeof claims.nats !== "object" ||
    claims.nats === null
  ) {
    throw new ClaimsError(`${what} is not a NATS JWT (missing iss, sub or nats)`);
  }
  return { claims, parts: parts as [string, string, string] };
}

/** Decodes a NATS JWT and verifies its signature against its issuer. Does NOT check exp. */
export function decodeJwt(jwt: string, what = "JWT"): JwtClaims {
  const { claims, parts } = readJwt(jwt, what);
  let verified: boolean;
  try {
    parsePublicKey(claims.iss, undefined, `${what} issuer`);
    verified = verifyWithPublicKey(
      claims.iss,
      Buffer.from(`${parts[0]}.${parts[1]}`),
      Buffer.from(parts[2], "base64url"),
    );
  } catch (cause) {
    throw new ClaimsError(`${what} has an invalid issuer key`, { cause });
  }
  if (!verified) throw new ClaimsError(`${what} signature does not verify against its issuer ${claims.iss}`);
  return claims;
}

/** Who may issue account JWTs: the operator identity key and its signing keys. */
export interface TrustedOperator {
  publicKey: string;
  signingKeys: readonly string[];
}

/** Reads who an operator JWT trusts; the JWT must be a self-signed operator JWT. */
export function trustedOperatorFromJwt(jwt: string, what = "operator JWT"): TrustedOperator {
  const claims = decodeJwt(jwt, what);
  if (claims.nats.type !== "operator")
    throw new ClaimsError(`${what} is a ${claims.nats.type} JWT, not an operator JWT`);
  if (claims.iss !== claims.sub)
    throw new ClaimsError(`${what} is not self-signed by its operator ${claims.sub}`);
  const keys = claims.nats.signing_keys;
  const signingKeys = Array.isArray(keys) ? keys.filter((k): k is string => typeof k === "string") : [];
  return { publicKey: claims.sub, signingKeys };
}

/** Throws unless the account JWT was issued by `operator` (identity or signing key). */
export function assertIssuedBy(claims: JwtClaims, operator: TrustedOperator, what = "account JWT"): void {
  if (claims.iss !== operator.publicKey && !operator.signingKeys.includes(claims.iss)) {
    throw new ClaimsError(
      `${what} for ${claims.sub} is signed by ${claims.iss}, which is not a key of operator ${operator.publicKey}`,
    );
  }
}

/**
 * JSON with object keys sorted (by UTF-16 code units) and undefined members left out. Built by
 * concatenation: a restart of 100,000 accounts hashes 200,000 claims (desired and held).
 */
function canonical(value: unknown): string {
  if (Array.isArray(value)) {
    let out = "[";
    for (let i = 0; i < value.length; i++) {
      if (i > 0) out += ",";
      // As JSON.stringify in an array: undefined (or a function) is written as nothing.
      out += canonical(value[i]) ?? "";
    }
    return `${out}]`;
  }
  if (value !== null && typeof value === "object") {
    const record = value as Record<string, unknown>;
    let out = "{";
    let first = true;
    for (const key of Object.keys(record).sort()) {
      const member = record[key];
      if (member === undefined) continue;
      out += `${first ? "" : ","}${JSON.stringify(key)}:${canonical(member)}`;
      first = false;
    }
    return `${out}}`;
  }
  return JSON.stringify(value);
}

/**
 * Hash of what the claims say, ignoring when and how often they were signed (iat, jti): equal
 * hashes mean a push would change nothing. Key order does not matter.
 */
export function claimsHash(claims: JwtClaims): string {
  const { iat: _iat, jti: _jti, ...rest } = claims;
  return createHash("sha256").update(canonical(rest)).digest("hex");
}

/** The claims hash of an encoded JWT, without verifying it. */
export function jwtClaimsHash(jwt: string): string {
  const body = jwt.split(".")[1] ?? "";
  return claimsHash(JSON.parse(Buffer.from(body, "base64url").toString("utf8")) as JwtClaims);
}
