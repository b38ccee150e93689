/**
 * The GitLab CI identity an ID token proves, after its signature and time claims were verified
 * (idtoken.ts). GitLab sends ids and booleans as strings ("42", "true"); every claim natsbind reads
 * is checked here with its type and bound, and a token with a claim of the wrong type is refused
 * as a whole. Claims natsbind does not read are ignored.
 */
import { z } from "zod";

/** A GitLab database id as GitLab's tokens carry it: a decimal string. */
const id = z
  .string()
  .regex(/^[1-9][0-9]{0,15}$/, 'must be a positive id as a decimal string, e.g. "42"')
  .transform(Number);
/** GitLab's token booleans: "true" or "false". */
const flag = z.enum(["true", "false"], 'must be "true" or "false"').transform((v) => v === "true");
const text = (max: number) => z.string().min(1, "must not be empty").max(max, `must be at most ${max} characters`);

export const MAX_REF_LENGTH = 1024;

export const CiClaimsSchema = z.looseObject({
  iss: text(2048),
  sub: text(4096),
  aud: z.union([text(2048), z.array(text(2048)).min(1).max(16)]),
  exp: z.int().positive(),
  iat: z.int().positive(),
  nbf: z.int().positive().optional(),
  jti: text(256).optional(),
  namespace_id: id,
  namespace_path: text(1024),
  project_id: id,
  project_path: text(1024),
  user_id: id.optional(),
  user_login: text(255),
  pipeline_id: id,
  pipeline_source: text(64),
  job_id: id,
  ref: text(MAX_REF_LENGTH),
  ref_type: z.enum(["branch", "tag"], 'must be "branch" or "tag"'),
  ref_protected: flag,
  environment: text(255).optional(),
  environment_protected: flag.optional(),
  deployment_tier: text(64).optional(),
  environment_action: text(64).optional(),
  // Fork merge-request pipelines (GitLab 18.2.2+): where the job runs, when not the project itself.
  job_project_id: id.optional(),
  job_project_path: text(1024).optional(),
  job_namespace_id: id.optional(),
  job_namespace_path: text(1024).optional(),
  runner_environment: text(64).optional(),
});

export interface CiEnvironment {
  name: string;
  protected: boolean;
  tier?: string;
  action?: string;
}

/** Who a verified ID token says the job is. Ids are numbers; everything else as GitLab sent it. */
export interface CiIdentity {
  issuer: string;
  subject: string;
  tokenId?: string;
  /** Unix seconds. */
  issuedAt: number;
  /** Unix seconds. */
  expiresAt: number;
  projectId: number;
  projectPath: string;
  namespaceId: number;
  namespacePath: string;
  userLogin: string;
  userId?: number;
  pipelineId: number;
  pipelineSource: string;
  jobId: number;
  ref: string;
  refType: "branch" | "tag";
  refProtected: boolean;
  environment?: CiEnvironment;
  /** Where the job runs when GitLab says so (fork merge requests); else the project itself. */
  jobProjectId?: number;
  jobProjectPath?: string;
  jobNamespaceId?: number;
}

export type IdentityResult = { identity: CiIdentity } | { problem: string };

/** Checks the claims of an already verified token; the problem names the claim, never its value. */
export function identityFromClaims(claims: unknown): IdentityResult {
  const parsed = CiClaimsSchema.safeParse(claims);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = issue.path.length ? issue.path.map(String).join(".") : "claims";
    const missing = issue.code === "invalid_type" && /received undefined$/.test(issue.message);
    return { problem: `claim ${where} ${missing ? "is missing" : issue.message}` };
  }
  const c = parsed.data;
  if (c.environment === undefined && c.environment_protected !== undefined) {
    return { problem: "claim environment_protected is set without environment" };
  }
  const identity: CiIdentity = {
    issuer: c.iss,
    subject: c.sub,
    issuedAt: c.iat,
    expiresAt: c.exp,
    projectId: c.project_id,
    projectPath: c.project_path,
    namespaceId: c.namespace_id,
    namespacePath: c.namespace_path,
    userLogin: c.user_login,
    pipelineId: c.pipeline_id,
    pipelineSource: c.pipeline_source,
    jobId: c.job_id,
    ref: c.ref,
    refType: c.ref_type,
    refProtected: c.ref_protected,
  };
  if (c.jti !== undefined) identity.tokenId = c.jti;
  if (c.user_id !== undefined) identity.userId = c.user_id;
  if (c.environment !== undefined) {
    identity.environment = { name: c.environment, protected: c.environment_protected ?? false };
    if (c.deployment_tier !== undefined) identity.environment.tier = c.deployment_tier;
    if (c.environment_action !== undefined) identity.environment.action = c.environment_action;
  }
  if (c.job_project_id !== undefined) identity.jobProjectId = c.job_project_id;
  if (c.job_project_path !== undefined) identity.jobProjectPath = c.job_project_path;
  if (c.job_namespace_id !== undefined) identity.jobNamespaceId = c.job_namespace_id;
  return { identity };
}
