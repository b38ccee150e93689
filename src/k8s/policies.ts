/**
 * NatsBindingPolicy in Kubernetes mode (issue 9, finding 2): the gate the reconciler asks before
 * anything else, and the controller that records each granted path's GitLab group id in the
 * policy's status.
 *
 * - KubePolicyGate.authorize(key, spec): namespace labels (namespace informer), policies (policy
 *   informer; grants are the ids in status.groups for paths still in the spec), the ancestor chain
 *   of what the binding selects (GitLab, cached briefly and dropped whenever a policy or namespace
 *   changes) -> the pure authorize() in src/policy/authorize.ts.
 * - PolicyStatusReconciler: per policy, resolves new paths to ids once, re-checks recorded ids
 *   (renamed: still granted; gone: reported, and the path is not looked up again), writes status.
 *   Runs on the leader only; its writes pass the same fence as every other write.
 */
import { isDeepStrictEqual } from "node:util";
import type { CustomObjectsApi, KubeConfig, KubernetesObject, V1Namespace } from "@kubernetes/client-node";
import {
  POLICY_KIND,
  POLICY_PLURAL,
  POLICY_REASON,
  parsePolicySpec,
  policyGroupsOf,
  type NatsBindingPolicySpec,
  type NatsBindingPolicyStatus,
  type PolicyCondition,
} from "../api/v1alpha1/policy.ts";
import { GROUP, VERSION, type NatsBinding } from "../api/v1alpha1/types.ts";
import type { GateVerdict } from "../controllers/binding/reconciler.ts";
import { NatsbindError, describeError } from "../errors.ts";
import type { GitLabPort } from "../gitlab/port.ts";
import type { Logger } from "../observability/logger.ts";
import { nullLogger } from "../observability/logger.ts";
import { authorize, type PolicyGrant } from "../policy/authorize.ts";
import { ancestorChain, resolvePolicyGroups } from "../policy/groups.ts";
import type { Clock } from "../runtime/clock.ts";
import type { ReconcileResult, Reconciler } from "../runtime/controller.ts";
import { apiStatusCode } from "./api-errors.ts";
import { splitBindingKey } from "./bindings.ts";
import { Informer } from "./informer.ts";

export const POLICIES_PATH = `/apis/${GROUP}/${VERSION}/${POLICY_PLURAL}`;
export const NAMESPACES_PATH = "/api/v1/namespaces";
/**
 * How long a group's parent link is reused (also dropped on any policy or namespace change): a group
 * transferred out of a granted group is refused at most this long after. The group or project a
 * binding selects is looked up on every authorization.
 */
export const CHAIN_TTL_MS = 30_000;
const MAX_CACHED_PARENTS = 10_000;

export interface NatsBindingPolicyObject extends KubernetesObject {
  spec?: unknown;
  status?: unknown;
}

export function policyInformer(o: { kubeConfig: KubeConfig; clock: Clock; log: Logger }) {
  return new Informer<NatsBindingPolicyObject>({ ...o, path: POLICIES_PATH, name: "natsbindingpolicies" });
}

export function namespaceInformer(o: { kubeConfig: KubeConfig; clock: Clock; log: Logger }) {
  return new Informer<V1Namespace>({ ...o, path: NAMESPACES_PATH, name: "namespaces" });
}

interface Cache<T> {
  get(namespace: string | undefined, name: string): T | undefined;
  list(): T[];
}

type ParsedPolicy = { spec: NatsBindingPolicySpec } | { problem: string };

export interface KubePolicyGateOptions {
  policies: Cache<NatsBindingPolicyObject>;
  namespaces: Cache<V1Namespace>;
  gitlab: GitLabPort;
  clock: Clock;
  log?: Logger;
  chainTtlMs?: number;
}

export class KubePolicyGate {
  readonly #o: KubePolicyGateOptions;
  readonly #parsed = new Map<string, { resourceVersion: string | undefined; parsed: ParsedPolicy }>();
  /** Parent links of groups (never the binding's own selector, which is resolved on every call). */
  readonly #parents = new Map<number, { parentId: number | null; at: number }>();

  constructor(o: KubePolicyGateOptions) {
    this.#o = o;
  }

  /** A policy or a namespace changed: forget cached parent links (re-authorize from scratch). */
  invalidate(): void {
    this.#parents.clear();
  }

  /** A policy's spec, validated once per resourceVersion. */
  parse(obj: NatsBindingPolicyObject): ParsedPolicy {
    const name = obj.metadata?.name ?? "";
    const rv = obj.metadata?.resourceVersion;
    const cached = this.#parsed.get(name);
    if (cached && rv !== undefined && cached.resourceVersion === rv) return cached.parsed;
    let parsed: ParsedPolicy;
    try {
      parsed = { spec: parsePolicySpec(obj.spec, `${POLICY_KIND} ${name}`) };
    } catch (err) {
      parsed = { problem: describeError(err) };
    }
    this.#parsed.set(name, { resourceVersion: rv, parsed });
    return parsed;
  }

  /** Valid policies with the ids recorded for paths still in their spec; invalid ones grant nothing. */
  grants(): PolicyGrant[] {
    const names = new Set<string>();
    const out: PolicyGrant[] = [];
    for (const obj of this.#o.policies.list()) {
      const name = obj.metadata?.name ?? "";
      names.add(name);
      const parsed = this.parse(obj);
      if (!("spec" in parsed)) continue;
      const paths = new Set(parsed.spec.groups);
      out.push({
        name,
        namespaceSelector: parsed.spec.namespaceSelector,
        groupIds: policyGroupsOf(obj.status)
          .filter((g) => paths.has(g.path))
          .map((g) => g.id),
        ceilings: parsed.spec.ceilings,
      });
    }
    for (const name of this.#parsed.keys()) if (!names.has(name)) this.#parsed.delete(name);
    return out;
  }

  #chain(spec: NatsBinding["spec"]): Promise<number[]> {
    const ttl = this.#o.chainTtlMs ?? CHAIN_TTL_MS;
    const parents = this.#parents;
    const clock = this.#o.clock;
    if (parents.size > MAX_CACHED_PARENTS) parents.clear();
    return ancestorChain(this.#o.gitlab, spec.gitlab, {
      get(id) {
        const hit = parents.get(id);
        return hit && clock.now() - hit.at < ttl ? hit.parentId : undefined;
      },
      set(id, parentId) {
        parents.set(id, { parentId, at: clock.now() });
      },
    });
  }

  /** The reconciler's gate. Throws when GitLab cannot answer (retried); refuses otherwise. */
  async authorize(key: string, spec: NatsBinding["spec"]): Promise<GateVerdict> {
    const { namespace } = splitBindingKey(key);
    const ns = this.#o.namespaces.get(undefined, namespace);
    if (!ns) {
      return { allowed: false, message: `namespace ${namespace} is not known yet: no policy can apply` };
    }
    const policies = this.grants();
    // No policy could apply: refuse without asking GitLab anything.
    const ancestors = policies.length === 0 ? [] : await this.#chain(spec);
    const verdict = authorize({
      namespace,
      namespaceLabels: ns.metadata?.labels ?? {},
      spec,
      policies,
      ancestors,
    });
    if (verdict.allowed) return { allowed: true };
    (this.#o.log ?? nullLogger).info({ binding: key, reason: verdict.reason }, "binding refused by policy");
    return { allowed: false, message: verdict.message };
  }
}

/** Paths of a policy that do not resolve to a group yet: retried with backoff. */
export class PolicyGroupsPendingError extends NatsbindError {}
export class PolicyStatusWriteError extends NatsbindError {}

export interface PolicyStatusReconcilerOptions {
  cache: Cache<NatsBindingPolicyObject> & { upsert(obj: NatsBindingPolicyObject): void };
  api: CustomObjectsApi;
  gate: KubePolicyGate;
  gitlab: GitLabPort;
  clock: Clock;
  /** How often recorded ids are checked again (rename, deletion). */
  recheckMs: number;
  mayWrite?: () => boolean;
  log?: Logger;
  /**
   * A status was written (new ids): the informer's upsert emits no event, so the writer says it,
   * and every binding is authorized again.
   */
  onWritten?: (name: string) => void;
}

function conditionsOf(status: unknown): PolicyCondition[] {
  const c = (status as { conditions?: unknown } | undefined)?.conditions;
  return Array.isArray(c) ? (c as PolicyCondition[]).filter((x) => x?.type === "Ready") : [];
}

export class PolicyStatusReconciler implements Reconciler<string> {
  readonly #o: PolicyStatusReconcilerOptions;
  /** Status writes made; for tests. */
  writes = 0;

  constructor(o: PolicyStatusReconcilerOptions) {
    this.#o = o;
  }

  async reconcile(name: string): Promise<ReconcileResult> {
    const obj = this.#o.cache.get(undefined, name);
    if (!obj) return;
    const generation = obj.metadata?.generation ?? 0;
    const parsed = this.#o.gate.parse(obj);
    const previous = policyGroupsOf(obj.status);
    if (!("spec" in parsed)) {
      // Keep the recorded ids: a fixed spec must not re-resolve paths that were already granted.
      await this.#write(obj, {
        groups: previous,
        ready: "False",
        reason: POLICY_REASON.InvalidSpec,
        message: parsed.problem,
        generation,
      });
      return;
    }
    const { groups, problems } = await resolvePolicyGroups(this.#o.gitlab, parsed.spec.groups, previous);
    const granted = groups.filter((g) => g.currentPath !== undefined).length;
    await this.#write(obj, {
      groups,
      ready: problems.length === 0 ? "True" : "False",
      reason: problems.length === 0 ? POLICY_REASON.Resolved : POLICY_REASON.GroupNotFound,
      message: problems.length === 0 ? `${granted} group(s) granted` : problems.join("; "),
      generation,
    });
    const unresolved = parsed.spec.groups.filter((p) => !groups.some((g) => g.path === p));
    if (unresolved.length > 0) {
      throw new PolicyGroupsPendingError(
        `${POLICY_KIND} ${name}: ${unresolved.length} path(s) not resolved yet`,
      );
    }
    return { requeueAfterMs: this.#o.recheckMs };
  }

  async #write(
    obj: NatsBindingPolicyObject,
    s: {
      groups: NatsBindingPolicyStatus["groups"];
      ready: PolicyCondition["status"];
      reason: string;
      message: string;
      generation: number;
    },
  ): Promise<void> {
    const name = obj.metadata!.name!;
    const before = conditionsOf(obj.status)[0];
    const now = new Date(this.#o.clock.now()).toISOString();
    const status: NatsBindingPolicyStatus = {
      observedGeneration: s.generation,
      groups: s.groups,
      conditions: [
        {
          type: "Ready",
          status: s.ready,
          reason: s.reason,
          message: s.message.slice(0, 4096),
          observedGeneration: s.generation,
          lastTransitionTime: before && before.status === s.ready ? before.lastTransitionTime : now,
        },
      ],
    };
    const wanted = JSON.parse(JSON.stringify(status)) as NatsBindingPolicyStatus;
    if (isDeepStrictEqual(obj.status, wanted)) return;
    if (this.#o.mayWrite && !this.#o.mayWrite()) {
      throw new PolicyStatusWriteError(`status of ${POLICY_KIND} ${name}: not the leader, not written`);
    }
    try {
      const written = (await this.#o.api.replaceClusterCustomObjectStatus({
        group: GROUP,
        version: VERSION,
        plural: POLICY_PLURAL,
        name,
        body: { ...obj, status: wanted },
      })) as NatsBindingPolicyObject;
      this.writes += 1;
      this.#o.cache.upsert(written);
      this.#o.onWritten?.(name);
    } catch (err) {
      if (apiStatusCode(err) === 404) return; // deleted meanwhile
      // 409: the watch brings the newer object and enqueues the policy again; the retry backs off.
      throw new PolicyStatusWriteError(`write status of ${POLICY_KIND} ${name}`, { cause: err });
    }
  }
}
