/**
 * Which role, if any, a CI job may get (PURE: no I/O, no clock). One policy for both doors. Input:
 * the verified identity, the binding that owns the job's project (directory.ts found it by the
 * token's immutable project_id in natsbind's GitLab inventory) and the role the job asked for.
 * Output: the role and the account's environment, or a refusal with a machine reason and a message
 * that names what the job must change (never a token, never another tenant's name).
 */
import type { NatsBinding, Role } from "../api/v1alpha1/types.ts";
import type { GitLabProject } from "../gitlab/port.ts";
import type { CiIdentity } from "./identity.ts";

export interface OwningBinding {
  key: string;
  binding: NatsBinding;
  /** The project as natsbind's inventory knows it (found by id). */
  project: GitLabProject;
}

export type PolicyDecision =
  | { allowed: true; role: Role; environment?: string }
  | { allowed: false; code: "forbidden" | "bad_request"; reason: string; message: string; role?: string };

type Refusal = Extract<PolicyDecision, { allowed: false }>;

const forbidden = (reason: string, message: string, role?: string): Refusal => ({
  allowed: false,
  code: "forbidden",
  reason,
  message,
  ...(role !== undefined ? { role } : {}),
});

/** Why `role` may not be issued to this job, or undefined when it may. */
export function roleRefusal(role: Role, identity: CiIdentity): Refusal | undefined {
  const ci = role.ci;
  const name = role.name;
  if (!ci)
    return forbidden("role_not_issuable", `role ${name} is not issued to CI jobs (no ci section)`, name);
  const jobProject = identity.jobProjectId ?? identity.projectId;
  const jobNamespace = identity.jobNamespaceId ?? identity.namespaceId;
  if (
    !ci.allowForkMergeRequests &&
    (jobProject !== identity.projectId || jobNamespace !== identity.namespaceId)
  ) {
    return forbidden(
      "fork_merge_request",
      `the job runs in another project (a fork merge request); role ${name} does not allow fork merge requests`,
      name,
    );
  }
  if (ci.refs === "protected" && !identity.refProtected) {
    return forbidden("unprotected_ref", `role ${name} is issued only to jobs on protected refs`, name);
  }
  if (ci.refTypes && !ci.refTypes.includes(identity.refType)) {
    return forbidden(
      "ref_type_not_allowed",
      `role ${name} is issued only to jobs of ${ci.refTypes.join(" or ")} refs, not ${identity.refType}`,
      name,
    );
  }
  if (ci.environments) {
    const env = identity.environment;
    if (!env) {
      return forbidden(
        "environment_required",
        `role ${name} is issued only to jobs deploying to ${ci.environments.join(", ")}; the job has no environment`,
        name,
      );
    }
    if (!ci.environments.includes(env.name)) {
      return forbidden(
        "environment_not_allowed",
        `role ${name} is issued only to jobs deploying to ${ci.environments.join(", ")}`,
        name,
      );
    }
    if (!env.protected) {
      return forbidden(
        "environment_unprotected",
        `role ${name} needs a protected environment; GitLab does not mark this job's environment protected`,
        name,
      );
    }
  }
  return undefined;
}

export function decide(
  identity: CiIdentity,
  owner: OwningBinding | undefined,
  requestedRole?: string,
): PolicyDecision {
  if (!owner) {
    return forbidden("project_not_bound", `no NatsBinding selects GitLab project ${identity.projectId}`);
  }
  // The id found the project; its namespace must agree too (a token is about one project, in one place).
  if (owner.project.namespaceId !== identity.namespaceId) {
    return forbidden(
      "namespace_mismatch",
      `the token's namespace_id ${identity.namespaceId} is not the namespace natsbind knows for project ` +
        `${identity.projectId}; if the project was just transferred, retry after natsbind has seen it`,
    );
  }
  const spec = owner.binding.spec;
  let role: Role;
  if (requestedRole !== undefined) {
    const found = spec.roles.find((r) => r.name === requestedRole);
    if (!found)
      return forbidden("role_unknown", `the project's binding has no role ${requestedRole}`, requestedRole);
    const refusal = roleRefusal(found, identity);
    if (refusal) return refusal;
    role = found;
  } else {
    const issuable = spec.roles.filter((r) => r.ci);
    const verdicts = issuable.map((r) => ({ role: r, refusal: roleRefusal(r, identity) }));
    const allowed = verdicts.filter((v) => !v.refusal).map((v) => v.role);
    if (allowed.length === 0) {
      if (issuable.length === 0) {
        return forbidden("no_issuable_role", "the project's binding has no role issued to CI jobs");
      }
      // Keep the real reason when every role says the same (an unprotected ref, a fork MR).
      const refusals = verdicts.map((v) => v.refusal!);
      const reasons = new Set(refusals.map((r) => r.reason));
      if (reasons.size === 1) {
        const only = refusals[0]!;
        return issuable.length === 1
          ? only
          : forbidden(
              only.reason,
              `none of the roles ${issuable.map((r) => r.name).join(", ")} is issued to this job: ${only.message}`,
            );
      }
      return forbidden(
        "no_issuable_role",
        `none of the roles is issued to this job: ${refusals.map((r) => `${r.role} (${r.reason})`).join(", ")}`,
      );
    }
    if (allowed.length > 1) {
      return {
        allowed: false,
        code: "bad_request",
        reason: "role_required",
        message: `several roles are issuable to this job (${allowed.map((r) => r.name).join(", ")}): name one in "role"`,
      };
    }
    role = allowed[0]!;
  }
  if (spec.accountPer !== "environment") return { allowed: true, role };
  const env = identity.environment;
  if (!env) {
    return forbidden(
      "environment_required",
      "the binding makes one account per environment and the job has no environment",
      role.name,
    );
  }
  if (spec.environments?.kind === "list" && !spec.environments.names.includes(env.name)) {
    return forbidden(
      "environment_not_bound",
      `the binding makes no account for environment ${env.name}`,
      role.name,
    );
  }
  return { allowed: true, role, environment: env.name };
}
