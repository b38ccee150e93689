// NatsBindingPolicy helpers for Kubernetes-mode tests: natsbind refuses every NatsBinding that no
// policy grants, so end-to-end tests that are not about policies apply a permissive one (every
// namespace may bind the listed groups) and wait until natsbind recorded the group ids.
import { CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { POLICY_KIND, POLICY_PLURAL, policyGroupsOf } from "../../src/api/v1alpha1/policy.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import { waitFor } from "./process.ts";

export interface PolicyBody {
  namespaceSelector?: Record<string, unknown>;
  gitlab: { groups: string[] };
  ceilings?: Record<string, unknown>;
}

/** Creates a cluster-scoped NatsBindingPolicy (default selector: every namespace). */
export async function createPolicy(kc: KubeConfig, name: string, spec: PolicyBody): Promise<void> {
  await kc.makeApiClient(CustomObjectsApi).createClusterCustomObject({
    group: GROUP,
    version: VERSION,
    plural: POLICY_PLURAL,
    body: {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: POLICY_KIND,
      metadata: { name },
      spec: { namespaceSelector: {}, ...spec },
    },
  });
}

/** The group ids natsbind recorded in the policy's status, by path. */
export async function policyGroupIds(kc: KubeConfig, name: string): Promise<Map<string, number>> {
  const obj = (await kc.makeApiClient(CustomObjectsApi).getClusterCustomObject({
    group: GROUP,
    version: VERSION,
    plural: POLICY_PLURAL,
    name,
  })) as { status?: unknown };
  return new Map(policyGroupsOf(obj.status).map((g) => [g.path, g.id]));
}

/** Waits until natsbind (running) recorded an id for each of `paths` in the policy's status. */
export async function waitForPolicyResolved(
  kc: KubeConfig,
  name: string,
  paths: readonly string[],
): Promise<void> {
  await waitFor(
    async () => {
      const ids = await policyGroupIds(kc, name);
      return paths.every((p) => ids.has(p));
    },
    { what: `NatsBindingPolicy ${name} resolved (${paths.join(", ")})`, timeoutMs: 20_000, intervalMs: 50 },
  );
}

/**
 * A permissive policy, as deploy/samples/natsbindingpolicy-permissive.yaml: every namespace may
 * bind `groups` (which must exist in GitLab: natsbind resolves them when it sees the policy).
 */
export async function applyPermissivePolicy(kc: KubeConfig, name: string, groups: string[]): Promise<void> {
  await createPolicy(kc, name, { gitlab: { groups } });
}
