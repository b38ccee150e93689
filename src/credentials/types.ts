/**
 * The contract between natsbind's one credential issuer (service.ts) and its two doors: the token
 * exchange (exchange.ts, POST /v1/credentials) and the NATS auth callout (callout.ts). Both hand the
 * issuer an ID token and get back either credentials or a refusal with a code they map to their
 * own protocol (HTTP status, callout error). Nothing here carries a token or a seed except
 * `Issued.user`, which only the exchange reads (to write a creds file for the job).
 */
import type { NKeyPair } from "../nats/keys.ts";
import type { CiIdentity } from "./identity.ts";

export type Via = "exchange" | "callout";

export interface IssueRequest {
  via: Via;
  /** The GitLab CI ID token (a bearer credential: never logged, never echoed). */
  token: string;
  /** Role name; absent: the one role issuable to this job, if there is exactly one. */
  role?: string;
  /** Requested lifetime; capped at credentials.maxTtl and the token's exp (never refused for it). */
  ttlMs?: number;
  /** The job's own user public key (U...): only the JWT is returned. Absent: natsbind makes the key. */
  userPublicKey?: string;
  /** Client address (rate limit key, audit): IP of the HTTP peer or of the NATS client. */
  client: string;
}

/**
 * Why a request was refused. HTTP mapping (exchange.ts): invalid_token 401, forbidden 403,
 * rate_limited 429, unavailable 503, bad_request 400.
 */
export type RefusalCode = "invalid_token" | "forbidden" | "rate_limited" | "unavailable" | "bad_request";

export interface Issued {
  kind: "issued";
  account: string;
  role: string;
  /** User public key. */
  userPublicKey: string;
  /** The signed user JWT. */
  jwt: string;
  /** Set when natsbind generated the user key pair (no userPublicKey in the request). */
  userKey?: NKeyPair;
  /** Unix milliseconds (whole seconds: the JWT's exp). */
  expiresAt: number;
  /** NATS URLs for the job (credentials.servers, default nats.servers). */
  servers: readonly string[];
  identity: CiIdentity;
  /** The binding whose account this is ("namespace/name", or the name in local mode). */
  binding: string;
}

export interface Refused {
  kind: "refused";
  code: RefusalCode;
  /** Machine-readable detail for audit and metrics, e.g. "expired", "unprotected_ref", "unknown_kid". */
  reason: string;
  /** For the client: says what is wrong, never contains the token. */
  message: string;
  /** rate_limited / unavailable: seconds until a retry may succeed. */
  retryAfterS?: number;
  /** What the token said, when it verified (for the audit line). */
  identity?: CiIdentity;
  /** Set when the refusal came after a role was chosen. */
  role?: string;
}

export type IssueResult = Issued | Refused;

export interface CredentialIssuer {
  issue(request: IssueRequest): Promise<IssueResult>;
}

/** One audit line (audit.ts writes it as JSON). Never a token, a seed or a whole user JWT. */
export type AuditEvent = CredentialAuditEvent | ConnectionAuditEvent | RevocationAuditEvent;

export interface CredentialAuditEvent {
  event: "credentials.issued" | "credentials.refused";
  time: string;
  via: Via;
  client: string;
  projectId?: number;
  projectPath?: string;
  pipelineId?: number;
  jobId?: number;
  ref?: string;
  refProtected?: boolean;
  user?: string;
  environment?: string;
  role?: string;
  account?: string;
  binding?: string;
  userPublicKey?: string;
  expiresAt?: string;
  /** Refusals: the issuer's RefusalCode, or a door's own (e.g. payload_too_large), and the reason. */
  code?: RefusalCode | (string & {});
  reason?: string;
  message?: string;
}

export interface ConnectionAuditEvent {
  event: "nats.connect" | "nats.disconnect";
  time: string;
  account: string;
  userPublicKey: string;
  name?: string;
  tags?: string[];
  server?: string;
  clientAddress?: string;
  sent?: { msgs: number; bytes: number };
  received?: { msgs: number; bytes: number };
  reason?: string;
}

/**
 * A user key (or "*": every user of the account) revoked in an account by `natsbind credentials
 * revoke`: written when the revocation is stored as desired state, one line per key and account.
 */
export interface RevocationAuditEvent {
  event: "credentials.revoked";
  time: string;
  binding: string;
  projectId: number;
  environment?: string;
  account: string;
  /** The revoked user's public key, or "*" (every user issued at or before revokedAt). */
  userPublicKey: string;
  /** User JWTs issued at or before this second are refused (RFC 3339). */
  revokedAt: string;
  /** Set when the keys were found by job or pipeline. */
  jobId?: number;
  pipelineId?: number;
  /** Who asked: "cli" (natsbind credentials revoke). */
  source: "cli";
}

export interface AuditSink {
  write(event: AuditEvent): void;
  /**
   * False while the sink cannot take lines (buffer nearly full, writes failing, closed): the
   * issuer refuses ("unavailable") rather than issue credentials it cannot audit. Absent: always.
   */
  accepting?(): boolean;
  /** Flushes what is buffered (fsync for a file) and closes. */
  close(): Promise<void>;
}
