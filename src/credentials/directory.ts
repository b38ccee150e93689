/**
 * Which binding owns a GitLab project, for credential issuance: by the token's immutable project id,
 * looked up in natsbind's GitLab inventory (never by path). Overlaps resolve as in the reconciler:
 * among bindings the policy gate allows, the oldest owns the project (overlap.ts).
 */
import { compareAge } from "../controllers/binding/overlap.ts";
import type { BindingLookup, GateVerdict } from "../controllers/binding/reconciler.ts";
import type { NatsBinding } from "../api/v1alpha1/types.ts";
import type { GitLabProject } from "../gitlab/port.ts";
import type { KeyStore } from "../keystore/port.ts";
import type { OwningBinding } from "./policy.ts";

/** What a mode hands the issuer: where bindings and keys are, and whether they are loaded. */
export interface CredentialSources {
  bindings: BindingLookup;
  keys: KeyStore;
  /** Kubernetes mode: the NatsBindingPolicy gate (a binding no policy allows owns nothing). */
  authorize?: (key: string, spec: NatsBinding["spec"]) => Promise<GateVerdict>;
  /** False until bindings and keys are loaded (Kubernetes: informers listed). */
  ready(): boolean;
}

export interface ProjectIndex {
  projectOf(
    key: string,
    spec: NatsBinding["spec"],
    projectId: number,
  ): GitLabProject | undefined | "unsynced";
}

export type Ownership =
  { kind: "owned"; owner: OwningBinding } | { kind: "none" } | { kind: "not_ready"; message: string };

export async function owningBinding(
  sources: CredentialSources,
  projects: ProjectIndex,
  projectId: number,
): Promise<Ownership> {
  if (!sources.ready()) return { kind: "not_ready", message: "natsbind is still loading bindings and keys" };
  const candidates: OwningBinding[] = [];
  let unsynced = false;
  for (const key of sources.bindings.validKeys()) {
    const entry = sources.bindings.get(key);
    if (entry?.kind !== "valid") continue;
    const project = projects.projectOf(key, entry.binding.spec, projectId);
    if (project === "unsynced") unsynced = true;
    else if (project) candidates.push({ key, binding: entry.binding, project });
  }
  // A binding whose scope was never listed could select the project: answer once it has been.
  if (candidates.length === 0) {
    return unsynced
      ? { kind: "not_ready", message: "natsbind is still listing the GitLab projects of its bindings" }
      : { kind: "none" };
  }
  let allowed = candidates;
  if (sources.authorize) {
    const verdicts = await Promise.all(candidates.map((c) => sources.authorize!(c.key, c.binding.spec)));
    allowed = candidates.filter((_, i) => verdicts[i]!.allowed);
  }
  if (allowed.length === 0) return { kind: "none" };
  const age = (c: OwningBinding) => ({ key: c.key, createdAt: sources.bindings.createdAt(c.key) });
  return { kind: "owned", owner: allowed.reduce((a, b) => (compareAge(age(a), age(b)) <= 0 ? a : b)) };
}
