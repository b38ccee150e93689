/**
 * A NatsBinding as the controller uses it, after validation and normalisation: quantities are bytes,
 * durations milliseconds, defaults applied, subject templates in canonical spelling. The document
 * form users write is described by the zod schema in schema.ts (the one source of truth).
 */

export const GROUP = "natsbind.io";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}` as const;
export const KIND = "NatsBinding";

/** A GitLab group or project: numeric id or full path ("acme/platform"). */
export type GitLabRef = number | string;

export type GitLabSelector =
  { kind: "group"; group: GitLabRef; includeSubgroups: boolean } | { kind: "project"; project: GitLabRef };

export type AccountPer = "project" | "environment";

/** Which environments get an account; present exactly when accountPer is "environment". */
export type EnvironmentSource = { kind: "list"; names: string[] } | { kind: "gitlab" };

/** Subject templates (see templates.ts); empty lists mean "not set". */
export interface SubjectRules {
  allow: string[];
  deny: string[];
}

export interface ResponsePermission {
  max: number;
  ttlMs: number;
}

/**
 * Which GitLab CI jobs may get credentials of a role (src/credentials/). A role without it is never
 * issued to a job.
 */
export interface CiIssuance {
  /** "protected": only jobs whose ref is protected (ref_protected "true"); "any": every ref. */
  refs: "protected" | "any";
  /** Absent: branches and tags. */
  refTypes?: Array<"branch" | "tag">;
  /** Absent: any job (with or without an environment). Set: the job deploys to one of these, protected. */
  environments?: string[];
  /** false (default): refuse jobs running in a fork (job_project_id / job_namespace_id differ). */
  allowForkMergeRequests: boolean;
}

export interface Role {
  name: string;
  publish: SubjectRules;
  subscribe: SubjectRules;
  responses?: ResponsePermission;
  ci?: CiIssuance;
}

export interface JetStreamBindingLimits {
  /** Bytes; 0 when not set (no memory storage). */
  memory: number;
  /** Bytes; 0 when not set (no file storage). */
  disk: number;
  /** Absent: unlimited. */
  streams?: number;
  /** Absent: unlimited. */
  consumers?: number;
}

/** Absent fields are unlimited; absent jetstream means JetStream is disabled. */
export interface BindingLimits {
  connections?: number;
  subscriptions?: number;
  /** Bytes. */
  payload?: number;
  /** Bytes. */
  data?: number;
  jetstream?: JetStreamBindingLimits;
}

export type DeletionPolicy = "Retain" | "Delete";

export interface NatsBindingSpec {
  gitlab: GitLabSelector;
  accountPer: AccountPer;
  environments?: EnvironmentSource;
  roles: Role[];
  limits: BindingLimits;
  /** Signing-key rotation; absent fields take natsbind.yaml's rotation defaults. */
  rotation?: { everyMs?: number; gracePeriodMs?: number };
  deletionPolicy: DeletionPolicy;
}

export interface BindingMetadata {
  name: string;
  namespace?: string;
  generation?: number;
  uid?: string;
  /** RFC 3339; orders overlapping bindings (the older keeps the projects). */
  creationTimestamp?: string;
}

export interface NatsBinding {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: BindingMetadata;
  spec: NatsBindingSpec;
}
