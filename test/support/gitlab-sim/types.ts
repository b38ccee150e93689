// Public types of the GitLab simulator (test/support/gitlab-sim.ts re-exports them).
import type { KeyObject } from "node:crypto";

export type SimVisibility = "private" | "internal" | "public";
export type SimEnvironmentState = "available" | "stopped";

/**
 * A group as the simulator holds it. Objects handed out are live views of the simulator's state
 * (they follow renames and transfers): read them, change them only through the simulator's methods.
 */
export interface SimGroup {
  /** From the namespaces sequence, which project namespaces share (like GitLab). */
  id: number;
  name: string;
  path: string;
  parentId: number | null;
  visibility: SimVisibility;
  description: string;
  /** ISO 8601 with milliseconds, strictly increasing across everything the simulator creates. */
  createdAt: string;
  updatedAt: string;
}

export interface SimProject {
  /** From the projects sequence: a project and a group can have the same numeric id. */
  id: number;
  name: string;
  path: string;
  groupId: number;
  visibility: SimVisibility;
  environments: SimEnvironment[];
  /**
   * Id of the project's own ProjectNamespace (namespaces sequence), sent as `project_namespace_id`
   * in hooks. Not the group id: that one is `namespace.id` in the API and `namespace_id` in ID tokens.
   */
  projectNamespaceId: number;
  description: string;
  defaultBranch: string;
  archived: boolean;
  createdAt: string;
  updatedAt: string;
}

export interface SimEnvironment {
  id: number;
  name: string;
  state: SimEnvironmentState;
  /** production | staging | testing | development | other */
  tier: string;
  /** GitLab's environment slug (lowercase, <= 24 chars, suffixed when the name had to change). */
  slug: string;
  externalUrl: string | null;
  createdAt: string;
  updatedAt: string;
}

/** One API request (under /api/v4) as the simulator saw and answered it. */
export interface SimRequest {
  method: string;
  /** Raw path without the query, still percent-encoded: `/api/v4/groups/a%2Fb`. */
  path: string;
  /** Query parameters (the last value wins when a key repeats). */
  query: Record<string, string>;
  status: number;
  /** performance.now() when the request arrived. */
  atMs: number;
  /** Request headers, lower-case names (node:http). */
  headers: Record<string, string>;
}

/** An OIDC request (discovery document or JWKS); only failOidc() fails them, nothing delays them. */
export interface SimOidcRequest {
  path: string;
  /** 0 while unanswered (a `hang` fault). */
  status: number;
  atMs: number;
}

export interface SimFailure {
  status: 429 | 500 | 502 | 503;
  /** Retry-After seconds (default 60 for 429; only sent for 5xx when given). */
  retryAfterSeconds?: number;
  /** RateLimit-Reset as Unix seconds (default now + retryAfterSeconds). 429 only. */
  rateLimitResetEpochS?: number;
  /** Only requests whose raw path (without query) contains this string fail. */
  pathIncludes?: string;
}

export interface StartOptions {
  /** The token start() registers with scope `api` (default: a random `glpat-...`). */
  token?: string;
  /** Delay before every API response (not OIDC, not webhook deliveries). */
  latencyMs?: number;
  /** Timeout of one webhook POST (default 10_000 ms, like GitLab's default). */
  webhookTimeoutMs?: number;
  /** GitLab version in /api/v4/version and the webhook User-Agent (default 17.6.0). */
  version?: string;
}

/** One webhook POST the simulator made (or tried to make). */
export interface Delivery {
  /** X-Gitlab-Event-UUID: one per simulator mutation, shared by every delivery it caused. */
  uuid: string;
  /** Idempotency-Key: one per (hook, event), kept by redeliver(). */
  idempotencyKey: string;
  /** X-Gitlab-Event: "System Hook" | "Project Hook" | "Subgroup Hook". */
  event: string;
  /** event_name of the payload, e.g. "project_create". */
  eventName: string;
  url: string;
  /** HTTP status of the receiver's answer; 0 when there was none (refused, timed out). */
  status: number;
  /** X-Gitlab-Webhook-UUID: new for every attempt (GitLab generates it per request). */
  webhookUuid: string;
  hookId: number;
  /** 1 for the first attempt, +1 for every redeliver(). */
  attempt: number;
  payload: Record<string, unknown>;
  /** Headers sent with the POST. */
  headers: Record<string, string>;
  /** Why there was no status (network error, timeout). */
  error?: string;
}

export interface MintIdTokenOptions {
  projectId: number;
  aud: string | string[];
  /** Default: the project's default branch ("main"). */
  ref?: string;
  refType?: "branch" | "tag";
  /** Default: true for the default branch, false otherwise. */
  refProtected?: boolean;
  /** Adds environment, environment_protected, deployment_tier and environment_action. */
  environment?: string;
  environmentProtected?: boolean;
  /** exp - iat (default 3600: GitLab uses the job timeout, 5 min when the job has none). */
  expiresInS?: number;
  /** iat (default: now). nbf is iat - 5, as GitLab does. */
  nowS?: number;
  /** Claims added last: they override any claim above; a claim set to undefined is left out. */
  extra?: Record<string, unknown>;
  /**
   * Header fields over `{kid: <current kid>, typ: "JWT", alg: <signWith's alg>}`; a field set to
   * undefined is left out. The header may lie about the signature (hostile tests).
   */
  header?: Record<string, unknown>;
  /** How to sign (default: the simulator's current RSA key). */
  signWith?: SimTokenSigner;
}

/**
 * How a minted token is signed, and the header's default alg: `rsaKey` (a private RSA key) RS256,
 * `ecKey` (a private P-256 key) ES256, `hmacSecret` HS256, "unsigned" alg "none" with an empty
 * signature.
 */
export type SimTokenSigner =
  { rsaKey: KeyObject } | { ecKey: KeyObject } | { hmacSecret: string | Uint8Array } | "unsigned";

/**
 * What failOidc() makes discovery and JWKS requests answer. Every matching request fails until
 * `count` are used up (default: until clearOidcFaults()).
 */
export type SimOidcFault = {
  /** Only requests whose raw path contains this string (e.g. "/oauth/discovery/keys"). */
  pathIncludes?: string;
  count?: number;
} & (SimOidcStatusFault | SimOidcHangFault | SimOidcBodyFault | SimOidcRedirectFault);

/** GitLab's JSON error body with this status. */
export interface SimOidcStatusFault {
  status: 404 | 500 | 502 | 503;
}

/** Never answers, until the client gives up or the simulator stops. */
export interface SimOidcHangFault {
  hang: true;
}

/** 200 with this body instead of the document. */
export interface SimOidcBodyFault {
  body: string;
  /** Default application/json; charset=utf-8. */
  contentType?: string;
  /** Sent in chunks without Content-Length: a client must bound what it reads itself. */
  chunked?: boolean;
}

/** 302 to this URL. */
export interface SimOidcRedirectFault {
  redirectTo: string;
}

export interface PopulateOptions {
  /** Path (and name) of the new top-level group. */
  rootPath: string;
  projects: number;
  /** Levels of subgroups below the root (default 2). */
  depth?: number;
  /** Subgroups per group (default 5). */
  fanout?: number;
}

export interface PopulateResult {
  root: SimGroup;
  /** Every group created, the root first, then breadth-first. */
  groups: SimGroup[];
  /** In creation (id) order; spread round-robin over `groups`. */
  projects: SimProject[];
}
