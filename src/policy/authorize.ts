/**
 * The NatsBindingPolicy gate, pure: may this binding, in this namespace, select what it selects?
 * Kubernetes mode asks it before a reconcile reads GitLab projects or touches a key or an account
 * (src/k8s/policies.ts gathers the inputs). Local mode has no gate: binding files are admin-owned.
 *
 * A binding is allowed when some policy whose namespaceSelector matches the namespace's labels
 * grants (by GitLab group id) a group on the ancestor chain of what the binding selects (its group,
 * or its project's namespace), and the binding stays within that policy's ceilings. Policies add up:
 * any one that grants and whose ceilings hold is enough.
 *
 * Refusal messages name the namespace, the reason and the policy's own ceilings, never a GitLab
 * path or project: a tenant probing another team's group learns nothing but "not granted", the same
 * answer as for a group that does not exist.
 */
import type { BindingLimits, NatsBindingSpec } from "../api/v1alpha1/types.ts";
import type { LabelSelector, PolicyCeilings } from "../api/v1alpha1/policy.ts";

/** A policy as the gate sees it: the grant is group ids (resolved paths), never paths. */
export interface PolicyGrant {
  name: string;
  namespaceSelector: LabelSelector;
  groupIds: readonly number[];
  ceilings: PolicyCeilings;
}

export interface AuthorizeInput {
  namespace: string;
  /** Labels of the binding's namespace (kubernetes.io/metadata.name included, as the apiserver sets it). */
  namespaceLabels: Readonly<Record<string, string>>;
  spec: NatsBindingSpec;
  policies: readonly PolicyGrant[];
  /**
   * GitLab group ids from what the binding selects up to the top-level group: the selected group
   * and its parents, or the project's namespace and its parents. Empty when it does not exist or
   * is not in a group (a user's namespace).
   */
  ancestors: readonly number[];
}

export type RefusalReason = "NoPolicy" | "NotGranted" | "Ceiling";

export type Authorization =
  { allowed: true; policy: string } | { allowed: false; reason: RefusalReason; message: string };

/** metav1.LabelSelector semantics: every matchLabels pair and every requirement must hold. */
export function selectorMatches(selector: LabelSelector, labels: Readonly<Record<string, string>>): boolean {
  for (const [key, value] of Object.entries(selector.matchLabels)) {
    if (!Object.hasOwn(labels, key) || labels[key] !== value) return false;
  }
  for (const r of selector.matchExpressions) {
    const has = Object.hasOwn(labels, r.key);
    switch (r.operator) {
      case "In":
        if (!has || !r.values.includes(labels[r.key]!)) return false;
        break;
      case "NotIn":
        if (has && r.values.includes(labels[r.key]!)) return false;
        break;
      case "Exists":
        if (!has) return false;
        break;
      case "DoesNotExist":
        if (has) return false;
        break;
      default:
        return false; // an operator this code does not know selects nothing
    }
  }
  return true;
}

/** What in `spec` exceeds `ceilings`; empty when within them. */
export function ceilingViolations(spec: NatsBindingSpec, ceilings: PolicyCeilings): string[] {
  const out: string[] = [];
  const allowed = ceilings.deletionPolicies;
  if (allowed && !allowed.includes(spec.deletionPolicy)) {
    out.push(`deletionPolicy ${spec.deletionPolicy} is not allowed (allowed: ${allowed.join(", ")})`);
  }
  const max = ceilings.limits;
  if (!max) return out;
  const check = (field: string, value: number | undefined, limit: number | undefined, bytes = false) => {
    if (limit === undefined) return;
    const show = bytes ? (n: number) => `${n} bytes` : String;
    if (value === undefined) out.push(`spec.limits.${field} must be set (at most ${show(limit)})`);
    else if (value > limit)
      out.push(`spec.limits.${field} ${show(value)} is above the maximum ${show(limit)}`);
  };
  const l: BindingLimits = spec.limits;
  check("connections", l.connections, max.connections);
  check("subscriptions", l.subscriptions, max.subscriptions);
  check("payload", l.payload, max.payload, true);
  check("data", l.data, max.data, true);
  if (l.jetstream && max.jetstream) {
    check("jetstream.memory", l.jetstream.memory, max.jetstream.memory, true);
    check("jetstream.disk", l.jetstream.disk, max.jetstream.disk, true);
    check("jetstream.streams", l.jetstream.streams, max.jetstream.streams);
    check("jetstream.consumers", l.jetstream.consumers, max.jetstream.consumers);
  }
  return out;
}

/** The gate. Pure: same inputs, same answer. */
export function authorize(input: AuthorizeInput): Authorization {
  const applying = input.policies
    .filter((p) => selectorMatches(p.namespaceSelector, input.namespaceLabels))
    .sort((a, b) => a.name.localeCompare(b.name));
  if (applying.length === 0) {
    return {
      allowed: false,
      reason: "NoPolicy",
      message: `no NatsBindingPolicy applies to namespace ${input.namespace}: ask a cluster admin for one`,
    };
  }
  const chain = new Set(input.ancestors);
  const granting = applying.filter((p) => p.groupIds.some((id) => chain.has(id)));
  if (granting.length === 0) {
    return {
      allowed: false,
      reason: "NotGranted",
      message:
        `no NatsBindingPolicy grants namespace ${input.namespace} the GitLab group or project this binding ` +
        `selects (policies applying: ${applying.map((p) => p.name).join(", ")})`,
    };
  }
  const refused: string[] = [];
  for (const p of granting) {
    const violations = ceilingViolations(input.spec, p.ceilings);
    if (violations.length === 0) return { allowed: true, policy: p.name };
    refused.push(`NatsBindingPolicy ${p.name}: ${violations.join("; ")}`);
  }
  return { allowed: false, reason: "Ceiling", message: `outside the ceilings of ${refused.join(" | ")}` };
}
