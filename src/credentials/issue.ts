/**
 * The user JWT a CI job gets: issued by its role's scoped signing key for the project's account,
 * with no permissions or limits of its own (the scope's template applies), named after the job and
 * tagged with its pipeline identity. Tag values are ids or safe tokens (templates.ts safeToken), so
 * a template such as `build.{{tag(pipeline)}}.>` can never expand into a wildcard or extra tokens.
 */
import { safeToken } from "../api/v1alpha1/templates.ts";
import { signJwt, userClaims } from "../nats/claims.ts";
import type { NKeyPair } from "../nats/keys.ts";
import type { CiIdentity } from "./identity.ts";

export const MAX_USER_NAME_PATH = 200;

/** Lifetime in seconds: min(now + ttl, token exp, now + maxTtl), in whole seconds. */
export function userExpiry(nowMs: number, ttlMs: number, maxTtlMs: number, tokenExpS: number): number {
  return Math.min(Math.floor((nowMs + Math.min(ttlMs, maxTtlMs)) / 1000), tokenExpS);
}

/** Tags naming the job: project, pipeline, job, ref, user, environment (NATS-safe). */
export function jobTags(identity: CiIdentity, role: string): string[] {
  const tags = [
    `project:${identity.projectId}`,
    `pipeline:${identity.pipelineId}`,
    `job:${identity.jobId}`,
    `ref:${safeToken(identity.ref)}`,
    `ref_type:${identity.refType}`,
    `user:${safeToken(identity.userLogin)}`,
    `role:${role}`,
    "natsbind:ci",
  ];
  if (identity.environment) tags.push(`environment:${safeToken(identity.environment.name)}`);
  return tags;
}

/** "<project path>#<job id>", the path cut to fit a JWT name. */
export function jobName(identity: CiIdentity): string {
  return `${identity.projectPath.slice(0, MAX_USER_NAME_PATH)}#${identity.jobId}`;
}

export interface UserJwtInput {
  identity: CiIdentity;
  role: string;
  account: string;
  signingKey: NKeyPair;
  userPublicKey: string;
  /** Unix seconds. */
  expiresAtS: number;
  /** Unix seconds. */
  issuedAtS: number;
}

export function signUserJwt(i: UserJwtInput): string {
  const claims = userClaims({
    publicKey: i.userPublicKey,
    name: jobName(i.identity),
    account: i.account,
    issuer: i.signingKey.getPublicKey(),
    scoped: true,
    tags: jobTags(i.identity, i.role),
    expiresAt: i.expiresAtS,
  });
  return signJwt(claims, i.signingKey, i.issuedAtS);
}
