/**
 * Kubernetes mode: NatsBindings and account Secrets from informers, status through the status
 * subresource, Events, the natsbind.io/cleanup finalizer, and leader election. Informers run on
 * every replica (a new leader starts with a warm cache); only the leader reconciles, and every
 * write it makes passes a fence that turns false the moment the lease cannot be renewed in time.
 * A replica that loses the lease stops reconciling at once and reports it; `natsbind run` then
 * exits so the pod restarts as a follower (as client-go controllers do).
 */
import { hostname } from "node:os";
import { isDeepStrictEqual } from "node:util";
import { CoreV1Api, CustomObjectsApi, KubeConfig, type V1Secret } from "@kubernetes/client-node";
import { BindingReconciler } from "../controllers/binding/reconciler.ts";
import { ConfigError, MAX_KUBECONFIG_BYTES, readConfigReferencedFile } from "../config/config.ts";
import type { ModeContext, RunningMode } from "../mode.ts";
import { isPublicKey } from "../nats/keys.ts";
import { systemClock } from "../runtime/clock.ts";
import { Controller, type ReconcileResult, type Reconciler } from "../runtime/controller.ts";
import { WorkQueue } from "../runtime/workqueue.ts";
import { LeaderElector, leaseClient } from "../runtime/leader.ts";
import {
  GROUP,
  PLURAL,
  VERSION,
  KubeBindings,
  bindingKeyOf,
  isDeleting,
  splitBindingKey,
  type NatsBindingObject,
} from "./bindings.ts";
import { reuseConnections } from "./connections.ts";
import { EventRecorder } from "./events.ts";
import { ANNOTATION_ROTATE, ANNOTATION_ROTATE_EMERGENCY, AnnotationRequests } from "./rotation-requests.ts";
import { fencedKeyStore, fencedResolver, type Fence } from "./fence.ts";
import { FinalizerStep } from "./finalizer.ts";
import { Informer } from "./informer.ts";
import {
  ANNOTATION_ACCOUNT,
  LABEL_PROJECT_ID,
  SecretKeyStore,
  bindingKeyOfSecret,
} from "./secret-keystore.ts";
import { KubePolicyGate, PolicyStatusReconciler, namespaceInformer, policyInformer } from "./policies.ts";
import { KubeStatusWriter } from "./status.ts";
import { startFollowerRelay } from "./follower-relay.ts";
import { leaderIdentity } from "./leader-pod.ts";
import type { SignalRelay } from "./relay-sender.ts";

/**
 * The kubeconfig natsbind.yaml names, read bounded like every file natsbind reads; none: in-cluster
 * (or $KUBECONFIG). A parse error names the file only: client-node's message may quote its content.
 */
export async function kubeConfigFrom(path: string | undefined): Promise<KubeConfig> {
  const kc = new KubeConfig();
  // Keep-alive connections shared by every client, watch and list (src/k8s/connections.ts).
  reuseConnections(kc);
  if (!path) {
    kc.loadFromDefault();
    return kc;
  }
  const text = await readConfigReferencedFile(path, "kubernetes.kubeconfig", MAX_KUBECONFIG_BYTES);
  try {
    kc.loadFromString(text);
  } catch {
    throw new ConfigError(`kubernetes.kubeconfig file ${path} is not a valid kubeconfig`);
  }
  return kc;
}

const ROTATION_EVENT_TEXT: Record<string, string> = {
  KeyPrepared: "new signing keys listed beside the active ones",
  KeyActivated: "new signing keys issue from now on",
  KeyRetired: "replaced signing keys removed",
  UsersRevoked: "revocations added",
};

/** Events about pushes, deletions and rotation phases, one per reconcile and kind rather than per account. */
class AccountEvents {
  readonly #recorder: EventRecorder;
  readonly #bindings: KubeBindings;
  readonly pending = new Map<string, Record<string, number[]>>();

  constructor(recorder: EventRecorder, bindings: KubeBindings) {
    this.#recorder = recorder;
    this.#bindings = bindings;
  }

  /** `kind`: "pushed", "deleted", or a rotation phase (KeyPrepared, KeyActivated, ...). */
  note(key: string, kind: string, projectId: number): void {
    let p = this.pending.get(key);
    if (!p) this.pending.set(key, (p = {}));
    (p[kind] ??= []).push(projectId);
  }

  /** `inner`, flushing the events noted during each of its reconciles. */
  around(inner: Reconciler<string>): Reconciler<string> {
    return {
      reconcile: async (key: string, signal: AbortSignal): Promise<ReconcileResult> => {
        try {
          return await inner.reconcile(key, signal);
        } finally {
          this.#flush(key);
        }
      },
    };
  }

  #flush(key: string): void {
    const p = this.pending.get(key);
    this.pending.delete(key);
    if (!p) return;
    const { namespace, name } = splitBindingKey(key);
    const uid = this.#bindings.object(key)?.metadata?.uid;
    const target = { namespace, name, ...(uid ? { uid } : {}) };
    const list = (ids: number[]): string =>
      `${ids.slice(0, 10).join(", ")}${ids.length > 10 ? ` and ${ids.length - 10} more` : ""}`;
    const { pushed = [], deleted = [], ...rotation } = p;
    if (pushed.length > 0) {
      this.#recorder.normal(
        target,
        "AccountsPushed",
        `${pushed.length} account(s) pushed to the NATS resolver (GitLab project ids ${list(pushed)})`,
      );
    }
    if (deleted.length > 0) {
      this.#recorder.normal(
        target,
        "AccountsDeleted",
        `${deleted.length} account(s) deleted from the NATS resolver (GitLab project ids ${list(deleted)})`,
      );
    }
    for (const [phase, ids] of Object.entries(rotation)) {
      this.#recorder.normal(
        target,
        phase,
        `${ROTATION_EVENT_TEXT[phase] ?? phase}: ${ids.length} role key(s) (GitLab project ids ${list([...new Set(ids)])})`,
      );
    }
  }
}

export async function startKubernetesMode(ctx: ModeContext): Promise<RunningMode> {
  const { config, log, queue, inventories } = ctx;
  const k = config.kubernetes;
  const kc = await kubeConfigFrom(k.kubeconfig);
  const customObjects = kc.makeApiClient(CustomObjectsApi);
  const core = kc.makeApiClient(CoreV1Api);
  const identity = ctx.opts.identity ?? leaderIdentity(k.relay.podName ?? hostname(), process.pid);
  const klog = log.child({ identity });

  const bindingInformer = new Informer<NatsBindingObject>({
    kubeConfig: kc,
    path: k.namespace
      ? `/apis/${GROUP}/${VERSION}/namespaces/${k.namespace}/${PLURAL}`
      : `/apis/${GROUP}/${VERSION}/${PLURAL}`,
    name: "natsbindings",
    clock: systemClock,
    log: klog,
  });
  const secretInformer: Informer<V1Secret> = SecretKeyStore.informer({
    kubeConfig: kc,
    ...(k.namespace ? { namespace: k.namespace } : {}),
    clock: systemClock,
    log: klog,
  });
  const bindings = new KubeBindings(bindingInformer);
  // NatsBindingPolicy gate: policies and namespace labels from informers, group ids from GitLab.
  const policies = policyInformer({ kubeConfig: kc, clock: systemClock, log: klog });
  const namespaces = namespaceInformer({ kubeConfig: kc, clock: systemClock, log: klog });
  const gate = new KubePolicyGate({
    policies,
    namespaces,
    gitlab: ctx.gitlab,
    clock: ctx.clock,
    log: klog,
  });
  const policyQueue = new WorkQueue<string>({ name: "policies", clock: ctx.clock });

  let elector: LeaderElector | undefined;
  const fence: Fence = () => elector === undefined || elector.isLeader();
  const recorder = new EventRecorder({
    core,
    clock: ctx.clock,
    log: klog,
    instance: identity,
    mayWrite: fence,
  });
  // Watch events only say "look at this key": level-based, the reconcile re-reads everything.
  bindingInformer.onEvent((type, obj, old) => {
    const key = bindingKeyOf(obj);
    if (type === "delete") {
      inventories.forget(key);
      queue.add(key);
      return;
    }
    const changed =
      type === "add" ||
      obj.metadata?.generation !== old?.metadata?.generation ||
      isDeleting(obj) !== (old ? isDeleting(old) : false) ||
      // A rotation asked through natsbind.io/rotate(-emergency) starts at once.
      obj.metadata?.annotations?.[ANNOTATION_ROTATE] !== old?.metadata?.annotations?.[ANNOTATION_ROTATE] ||
      obj.metadata?.annotations?.[ANNOTATION_ROTATE_EMERGENCY] !==
        old?.metadata?.annotations?.[ANNOTATION_ROTATE_EMERGENCY];
    if (changed) queue.add(key);
  });
  // A policy changed (grants, ceilings, resolved ids): every binding is authorized again. Its status
  // is resolved again when it is new, its spec changed, or an admin touched its annotations.
  policies.onEvent((type, obj, old) => {
    gate.invalidate();
    const name = obj.metadata?.name;
    if (
      name &&
      type !== "delete" &&
      (type === "add" ||
        obj.metadata?.generation !== old?.metadata?.generation ||
        !isDeepStrictEqual(obj.metadata?.annotations, old?.metadata?.annotations))
    ) {
      policyQueue.add(name);
    }
    for (const b of bindingInformer.list()) queue.add(bindingKeyOf(b));
  });
  // A namespace's labels decide which policies apply to its bindings.
  namespaces.onEvent((type, obj, old) => {
    if (type === "update" && isDeepStrictEqual(obj.metadata?.labels, old?.metadata?.labels)) return;
    gate.invalidate();
    for (const b of bindingInformer.list(obj.metadata?.name)) queue.add(bindingKeyOf(b));
  });
  // natsbind forgets the Secrets it deletes before the watch reports them, so a "delete" here is
  // someone else's: the account's keys are gone. The binding looks again (a new account for the
  // project) and says so; the old account stays on the resolver for a human to delete.
  secretInformer.onEvent((type, obj) => {
    const binding = bindingKeyOfSecret(obj);
    if (!binding) return;
    queue.add(binding);
    // natsbind's own writes enter the cache first and raise no event: an add or update is someone
    // else's Secret, looked at now (a forged one is reported at once, not at the next resync).
    if (type !== "delete") return;
    const owner = bindings.object(binding);
    if (!owner || isDeleting(owner)) return;
    // Annotations of a deleted object are not trusted into an Event: public key and id shapes only.
    const annotated = obj.metadata?.annotations?.[ANNOTATION_ACCOUNT] ?? "";
    const account = isPublicKey(annotated, "account") ? annotated : "(unknown)";
    const labelled = obj.metadata?.labels?.[LABEL_PROJECT_ID] ?? "";
    const projectId = /^[0-9]{1,15}$/.test(labelled) ? labelled : "(unknown)";
    const message =
      `Secret ${obj.metadata?.namespace}/${obj.metadata?.name} with the keys of account ${account} ` +
      `(GitLab project ${projectId}) was deleted outside natsbind: the project gets a new account; ` +
      `${account} stays on the NATS resolver until deleted (natsbind accounts delete ${account})`;
    klog.warn({ binding, account, projectId }, "account keys deleted outside natsbind");
    const { namespace, name } = splitBindingKey(binding);
    const uid = owner.metadata?.uid;
    recorder.warning({ namespace, name, ...(uid ? { uid } : {}) }, "AccountKeysLost", message);
  });

  const keys = new SecretKeyStore({
    kubeConfig: kc,
    core,
    secrets: secretInformer,
    owner: (key) => bindings.owner(key),
    log: klog,
  });
  const statuses = new KubeStatusWriter({
    api: customObjects,
    cache: bindingInformer,
    events: recorder,
    mayWrite: fence,
  });
  const accountEvents = new AccountEvents(recorder, bindings);
  const reconciler = new BindingReconciler({
    bindings,
    projects: inventories,
    keys: fencedKeyStore(keys, fence),
    resolver: fencedResolver(ctx.resolver, fence),
    statuses,
    signer: ctx.signer,
    trustedIssuers: ctx.trustedIssuers,
    clock: ctx.clock,
    driftCheckMs: config.gitlab!.resyncInterval,
    requeue: (key) => queue.add(key),
    authorize: (key, spec) => gate.authorize(key, spec),
    // Phase changes, stuck retirements and emergencies: an Event on the binding each.
    rotator: ctx.makeRotator(
      fencedKeyStore(keys, fence),
      new AnnotationRequests((key) => bindings.object(key)?.metadata?.annotations, ctx.clock),
      (key, event) => {
        // Routine phase changes are summed per reconcile (10,000 accounts rotating are 3 Events,
        // not 30,000); warnings (waiting, forced, emergency, failures) are one Event each.
        if (!event.warning && event.ref) {
          accountEvents.note(key, event.phase, event.ref.projectId);
          return;
        }
        const { namespace, name } = splitBindingKey(key);
        const uid = bindings.object(key)?.metadata?.uid;
        const target = { namespace, name, ...(uid ? { uid } : {}) };
        const message = event.account
          ? `account ${event.account} (project ${event.ref?.projectId}): ${event.message}`
          : event.message;
        if (event.warning) recorder.warning(target, event.phase, message);
        else recorder.normal(target, event.phase, message);
      },
    ),
    events: {
      // The shared events (status metrics, ...) as they are; these three add Kubernetes Events.
      ...ctx.events,
      pushed: (key, account, ref) => {
        ctx.events.pushed?.(key, account, ref);
        accountEvents.note(key, "pushed", ref.projectId);
      },
      deleted: (key, account, ref) => {
        ctx.events.deleted?.(key, account, ref);
        accountEvents.note(key, "deleted", ref.projectId);
      },
      // Forged key Secrets and accounts natsbind does not own: a Warning on the binding.
      refused: (key, refusal) => {
        ctx.events.refused?.(key, refusal);
        const { namespace, name } = splitBindingKey(key);
        const uid = bindings.object(key)?.metadata?.uid;
        recorder.warning({ namespace, name, ...(uid ? { uid } : {}) }, refusal.reason, refusal.message);
      },
    },
  });
  const step = new FinalizerStep({
    inner: accountEvents.around(reconciler),
    bindings,
    api: customObjects,
    upsert: (obj) => bindingInformer.upsert(obj),
    mayWrite: fence,
  });

  const policyStatus = new PolicyStatusReconciler({
    cache: policies,
    api: customObjects,
    gate,
    gitlab: ctx.gitlab,
    clock: ctx.clock,
    recheckMs: config.gitlab!.resyncInterval,
    mayWrite: fence,
    log: klog,
    onWritten: () => {
      gate.invalidate();
      for (const b of bindingInformer.list()) queue.add(bindingKeyOf(b));
    },
  });

  let stopping = false;
  let controller: { stop(): Promise<void> } | undefined;
  let policyController: Controller<string> | undefined;
  const synced = Promise.all([
    bindingInformer.start(),
    secretInformer.start(),
    policies.start(),
    namespaces.start(),
  ]);
  let relay: SignalRelay | undefined;
  synced.catch(() => undefined); // stop() before the first list: nothing to report
  // Every replica issues CI credentials (issuance only reads bindings, Secrets and policies).
  let loaded = false;
  void synced.then(() => (loaded = true)).catch(() => undefined);
  ctx.setCredentialSources({
    bindings,
    keys,
    authorize: (key, spec) => gate.authorize(key, spec),
    ready: () => loaded,
  });

  const lead = async (): Promise<void> => {
    await synced;
    if (stopping || !fence()) return;
    policyController = new Controller<string>({
      name: "policy",
      reconciler: policyStatus,
      queue: policyQueue,
      clock: ctx.clock,
      log: klog,
    });
    policyController.start();
    for (const p of policies.list()) if (p.metadata?.name) policyQueue.add(p.metadata.name);
    controller = ctx.startController(step);
    ctx.setReconciling(true);
    relay?.kick(); // signals accepted while following: applied here now
    for (const obj of bindingInformer.list()) queue.add(bindingKeyOf(obj));
    klog.info({ bindings: bindingInformer.list().length }, "leading: reconciling NatsBindings");
  };
  const lose = async (reason: string): Promise<void> => {
    ctx.setReconciling(false);
    if (stopping) return;
    klog.error({ reason }, "lost the leader lease: stopping");
    await controller?.stop();
    controller = undefined;
    await policyController?.stop();
    policyController = undefined;
    ctx.stoppedOnItsOwn(`lost the leader lease (${reason})`);
  };

  const le = k.leaderElection;
  if (le.enabled && ctx.relayKey) {
    const sender = startFollowerRelay({
      kubernetes: k,
      core,
      key: ctx.relayKey,
      identity,
      holder: () => elector?.holder(),
      local: () => (controller && fence() ? (signal) => void inventories.handle(signal) : undefined),
      clock: systemClock,
      metrics: ctx.metrics,
      log: klog,
    });
    relay = sender;
    ctx.setFollowerSignals((signal) => sender.submit(signal));
  }
  if (le.enabled) {
    elector = new LeaderElector({
      leases: leaseClient(kc),
      namespace: le.namespace,
      name: le.name,
      identity,
      leaseDurationMs: le.leaseDuration,
      renewDeadlineMs: le.renewDeadline,
      retryPeriodMs: le.retryPeriod,
      clock: systemClock,
      log: klog,
      onStartedLeading: () => void lead().catch((err) => klog.error({ err }, "cannot start reconciling")),
      onStoppedLeading: (reason) => void lose(reason),
    });
    elector.start();
  } else {
    void lead().catch((err) => klog.error({ err }, "cannot start reconciling"));
  }

  return {
    async stop() {
      stopping = true;
      relay?.stop();
      ctx.setReconciling(false);
      await controller?.stop();
      await policyController?.stop();
      await elector?.stop({ release: true });
      bindingInformer.stop();
      secretInformer.stop();
      policies.stop();
      namespaces.stop();
    },
  };
}
