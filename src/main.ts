/**
 * Composition root of `natsbind run`: config -> adapters -> controller -> HTTP -> graceful stop.
 * Everything that talks to the outside world is built here (local mode) or in src/k8s/mode.ts
 * (Kubernetes mode) and nowhere else. Both modes share the GitLab inventories, the work queue, the
 * binding reconciler and the HTTP listener; they differ in where bindings, keys and status live,
 * and Kubernetes mode reconciles only while it holds the leader lease.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { readSecretFile, type Config } from "./config/config.ts";
import {
  BindingReconciler,
  type BindingEntry,
  type BindingLookup,
  type ReconcilerEvents,
} from "./controllers/binding/reconciler.ts";
import { ProjectInventories } from "./controllers/binding/projects.ts";
import { bindingStatusMetrics } from "./controllers/binding/status-metrics.ts";
import { NatsbindError } from "./errors.ts";
import { GitbeakerGitLab } from "./gitlab/client.ts";
import { gitlabMetrics } from "./gitlab/metrics.ts";
import type { GitLabSignal } from "./gitlab/signals.ts";
import { WEBHOOK_PATH, createWebhookHandler } from "./gitlab/webhook.ts";
import { startHttpServer, type HttpServer } from "./http/server.ts";
import { timedHandler } from "./http/timing.ts";
import { RELAY_PATH, createRelayReceiver, relayKey } from "./k8s/webhook-relay.ts";
import type { CredentialSources } from "./credentials/directory.ts";
import { setupCredentials } from "./credentials/start.ts";
import { DirectoryKeyStore } from "./keystore/directory.ts";
import { connectLiveResolver } from "./nats/from-config.ts";
import { SigningGate } from "./operator/live-keys.ts";
import { measuredResolver } from "./nats/resolver-metrics.ts";
import { createLogger } from "./observability/logger.ts";
import { Registry, metricsHandler } from "./observability/metrics.ts";
import { systemClock } from "./runtime/clock.ts";
import { Controller } from "./runtime/controller.ts";
import { WorkQueue } from "./runtime/workqueue.ts";
import { BindingFiles, type BindingSnapshot } from "./store/binding-files.ts";
import { BindingFirstSeen } from "./store/binding-first-seen.ts";
import { secureKeyDirectory } from "./store/key-directory.ts";
import { StatusFiles } from "./store/status-files.ts";
import { acquireRunLock, RunLockHeldError } from "./store/run-lock.ts";
import { KeyRotator } from "./rotation/rotator.ts";
import { RequestFiles } from "./rotation/request-files.ts";
import { registerRotationGauges } from "./rotation/metrics.ts";
import { registerQueueGauges } from "./runtime/queue-metrics.ts";

export class StartupError extends NatsbindError {}

import type { ModeContext, RunningMode, RunOptions } from "./mode.ts";

export type { RunOptions };

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

export interface RunningController {
  url: string;
  stop(): Promise<void>;
  /**
   * Resolves with a reason when natsbind stopped reconciling on its own (Kubernetes: the leader
   * lease was lost); `natsbind run` then exits non-zero so the pod restarts as a follower.
   */
  stopped: Promise<string>;
}

export async function runController(config: Config, opts: RunOptions = {}): Promise<RunningController> {
  const clock = opts.clock ?? systemClock;
  const log = opts.log ?? createLogger({ base: { app: "natsbind" } });
  if (!config.gitlab) throw new StartupError("natsbind run needs the gitlab section of the configuration");
  const metrics = new Registry({ processMetrics: true });
  const gitlabObserved = gitlabMetrics(metrics);
  const gitlab = new GitbeakerGitLab({
    url: config.gitlab.url,
    token: await readSecretFile(config.gitlab.tokenFile, "GitLab token"),
    timeoutMs: config.gitlab.requestTimeout,
    onRequest: gitlabObserved.onRequest,
    onRetry: gitlabObserved.onRetry,
  });
  const webhookSecret = config.gitlab.webhookSecretFile
    ? await readSecretFile(config.gitlab.webhookSecretFile, "webhook secret")
    : undefined;
  // The operator signing key is swapped between reconciles when `natsbind operator activate`
  // replaces its file (src/operator/live-keys.ts).
  const signingGate = new SigningGate();
  const { resolver, keys: operatorKeys } = await connectLiveResolver(config.nats, {
    log,
    clock,
    exclusive: (fn) => signingGate.exclusive(fn),
  });
  const signer = operatorKeys.signer;

  const reconciles = metrics.counter({
    name: "natsbind_reconcile_total",
    help: "Reconciles by outcome.",
    labelNames: ["outcome"],
  });
  const reconcileSeconds = metrics.histogram({
    name: "natsbind_reconcile_duration_seconds",
    help: "Time of one reconcile of a binding, by outcome (done, requeue, error, terminal).",
    labelNames: ["outcome"],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
  });
  const bindingStatuses = bindingStatusMetrics(metrics);
  const pushes = metrics.counter({ name: "natsbind_account_pushes_total", help: "Account JWTs pushed." });
  const deletes = metrics.counter({ name: "natsbind_account_deletes_total", help: "Accounts deleted." });
  const rotationSteps = metrics.counter({
    name: "natsbind_rotation_steps_total",
    help: "Signing-key rotation steps and revocations by phase (KeyPrepared, KeyActivated, KeyRetired, RotationFailed, ...).",
    labelNames: ["phase"],
  });
  const rotators: KeyRotator[] = [];
  registerRotationGauges(metrics, clock, () => rotators);
  const reconcilingGauge = metrics.gauge({
    name: "natsbind_reconciling",
    help: "1 while this replica reconciles (local mode: always; Kubernetes mode: while it holds the lease).",
  });

  const queue = new WorkQueue<string>({ name: "bindings", clock });
  registerQueueGauges(metrics, queue);
  const inventories = new ProjectInventories({
    gitlab,
    clock,
    resyncIntervalMs: config.gitlab.resyncInterval,
    onChange: (keys) => keys.forEach((k) => queue.add(k)),
    onError: (err, what) => {
      gitlabObserved.inventoryFailed();
      log.warn({ err }, `gitlab inventory: ${what}`);
    },
  });
  const events: ReconcilerEvents = {
    pushed: (key, account, ref) => {
      pushes.inc();
      log.info({ binding: key, account, projectId: ref.projectId }, "account pushed");
      opts.onPushed?.(key, account, ref.projectId);
    },
    deleted: (key, account, ref) => {
      deletes.inc();
      log.info({ binding: key, account, projectId: ref.projectId }, "account deleted");
    },
    refused: (key, { reason, message, account, ref }) => {
      log.warn({ binding: key, reason, account, projectId: ref?.projectId }, message);
    },
    status: (key, status) => bindingStatuses.observe(key, status),
  };

  let reconciling = false;
  let credentialSources: CredentialSources | undefined;
  let followerSignals: ((signal: GitLabSignal) => void) | undefined;
  const routes: Record<string, Handler> = {
    "/metrics": metricsHandler(metrics),
  };
  const relay = webhookSecret && config.mode === "kubernetes" ? relayKey(webhookSecret) : undefined;
  if (webhookSecret) {
    // Every replica authenticates, bounds, validates and de-duplicates a delivery and answers 2xx;
    // a replica that does not reconcile (a follower) hands the signal to its mode (Kubernetes: the
    // relay to the leader, src/k8s/relay-sender.ts).
    const handler = createWebhookHandler({
      secretToken: webhookSecret,
      onSignal: (signal) => {
        if (reconciling || !followerSignals) void inventories.handle(signal);
        else {
          followerSignals(signal);
          // A follower that issues CI credentials keeps its own inventories current as well.
          if (config.credentials) void inventories.handle(signal);
        }
      },
      log,
    });
    routes[WEBHOOK_PATH] = timedHandler(
      handler,
      metrics.histogram({
        name: "natsbind_webhook_request_duration_seconds",
        help: "Time to answer a GitLab webhook request (authenticate, read, validate, de-duplicate), by HTTP status.",
        labelNames: ["code"],
        buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      }),
    );
    const deliveries = metrics.gauge({
      name: "natsbind_webhook_deliveries",
      help: "GitLab webhook requests received by this replica since it started, by outcome.",
      labelNames: ["outcome"],
    });
    metrics.onCollect(() => {
      const c = handler.counters;
      deliveries.labels({ outcome: "received" }).set(c.received);
      deliveries.labels({ outcome: "accepted" }).set(c.accepted);
      deliveries.labels({ outcome: "duplicate" }).set(c.duplicates);
      deliveries.labels({ outcome: "ignored" }).set(c.ignored);
      for (const [reason, n] of Object.entries(c.rejected)) deliveries.labels({ outcome: reason }).set(n);
    });
  }
  if (relay) {
    // Signals relayed by a follower: applied only while this replica reconciles, never relayed on.
    const receiver = createRelayReceiver({
      key: relay,
      now: () => clock.now(),
      apply: (signals) => {
        if (!reconciling) return false;
        for (const signal of signals) void inventories.handle(signal);
        return true;
      },
      log,
    });
    routes[RELAY_PATH] = receiver;
    const relayed = metrics.gauge({
      name: "natsbind_webhook_relay_received",
      help: "Relay requests from other replicas since start: received, signals applied, refused by reason.",
      labelNames: ["outcome"],
    });
    metrics.onCollect(() => {
      const c = receiver.counters;
      relayed.labels({ outcome: "received" }).set(c.received);
      relayed.labels({ outcome: "applied" }).set(c.applied);
      for (const [reason, n] of Object.entries(c.rejected)) relayed.labels({ outcome: reason }).set(n);
    });
  }
  const [host, port] = [
    config.http.listen.slice(0, config.http.listen.lastIndexOf(":")).replace(/^\[|\]$/g, ""),
    Number(config.http.listen.slice(config.http.listen.lastIndexOf(":") + 1)),
  ];
  let ready = false;
  // CI credentials (config.credentials): POST /v1/credentials here; callout and audit once the mode runs.
  const credentials = await setupCredentials({
    config: opts.credentials === false ? { ...config, credentials: undefined } : config,
    clock,
    log,
    metrics,
    projects: inventories,
    sources: () => credentialSources,
    resolver,
  });
  Object.assign(routes, credentials?.routes);
  let http: HttpServer;
  try {
    http = await startHttpServer({
      host: host!,
      port: port!,
      routes,
      readiness: () => ready,
      log,
      ...(config.http.tls ? { tls: config.http.tls } : {}),
    });
  } catch (err) {
    await credentials?.stop();
    operatorKeys.close();
    await resolver.close();
    throw err;
  }

  let stoppedOnItsOwn!: (reason: string) => void;
  const stopped = new Promise<string>((resolve) => (stoppedOnItsOwn = resolve));
  const ctx: ModeContext = {
    config,
    clock,
    log,
    opts,
    queue,
    inventories,
    gitlab,
    // Counted here: Kubernetes mode's leader fence wraps this, so a follower's refusal is not counted.
    resolver: measuredResolver(resolver, metrics),
    signer,
    trustedIssuers: operatorKeys.issuers,
    events,
    metrics,
    startController(reconciler) {
      const controller = new Controller<string>({
        name: "binding",
        reconciler: {
          reconcile: (key, signal) => signingGate.shared(() => reconciler.reconcile(key, signal)),
        },
        queue,
        workers: opts.workers ?? 2,
        clock,
        log,
        onResult: (key, outcome) => {
          reconciles.labels({ outcome: outcome.kind }).inc();
          reconcileSeconds.labels({ outcome: outcome.kind }).observe(outcome.durationMs / 1000);
          opts.onReconciled?.(key, outcome.kind);
        },
      });
      controller.start();
      inventories.start();
      return {
        async stop() {
          inventories.stop();
          await controller.stop();
        },
      };
    },
    url: http.url,
    setReconciling(on) {
      reconciling = on;
      reconcilingGauge.set(on ? 1 : 0);
    },
    relayKey: relay,
    setFollowerSignals(sink) {
      followerSignals = sink;
    },
    stoppedOnItsOwn: (reason) => stoppedOnItsOwn(reason),
    setCredentialSources(sources) {
      credentialSources = sources;
    },
    makeRotator(keys, requests, onEvent) {
      const rotator = new KeyRotator({
        keys,
        connections: resolver,
        clock,
        defaults: { everyMs: config.rotation.every, gracePeriodMs: config.rotation.gracePeriod },
        limits: {
          overlapMs: rotationOverlapMs(config),
          revocationRetentionMs: revocationRetentionMs(config),
        },
        maxStartsPerMinute: config.rotation.maxStartsPerMinute,
        requests,
        onEvent: (key, event) => {
          rotationSteps.labels({ phase: event.phase }).inc();
          const fields = {
            binding: key,
            phase: event.phase,
            ...(event.account ? { account: event.account, projectId: event.ref?.projectId } : {}),
            ...(event.role ? { role: event.role } : {}),
          };
          if (event.warning) log.warn(fields, event.message);
          else log.info(fields, event.message);
          onEvent?.(key, event);
          opts.onRotation?.(key, event);
        },
      });
      rotators.push(rotator);
      return rotator;
    },
  };

  let mode: RunningMode;
  let started: RunningMode | undefined;
  try {
    // Loaded only when used: @kubernetes/client-node alone adds ~55 MB RSS to a local-mode process.
    mode =
      config.mode === "kubernetes"
        ? await (await import("./k8s/mode.ts")).startKubernetesMode(ctx)
        : await startLocalMode(ctx);
    started = mode;
    if (credentials) {
      // Every replica issues: its inventories list and resync whether or not it reconciles.
      inventories.start();
      await credentials.startNats();
    }
  } catch (err) {
    await started?.stop();
    await http.close();
    await credentials?.stop();
    inventories.stop();
    operatorKeys.close();
    await resolver.close();
    throw err;
  }
  operatorKeys.watch();
  ready = true;
  log.info({ url: http.url, mode: config.mode }, "natsbind running");

  return {
    url: http.url,
    stopped,
    async stop() {
      ready = false;
      reconciling = false;
      await mode.stop();
      inventories.stop();
      await http.close();
      await credentials?.stop();
      operatorKeys.close();
      await resolver.close();
      log.info({}, "natsbind stopped");
    },
  };
}

/** Local mode: bindings from a directory of YAML files, keys in a directory, status files. */
async function startLocalMode(ctx: ModeContext): Promise<RunningMode> {
  const { config, queue, inventories } = ctx;
  for (const change of await secureKeyDirectory(config.keys.directory)) {
    ctx.log.warn({ ...change }, "key directory was open to other users: mode tightened");
  }
  // One writer per key directory: a second natsbind run (or a CLI doing the work itself) waits.
  const lock = await acquireRunLock(config.keys.directory).catch((err: unknown) => {
    if (err instanceof RunLockHeldError) throw new StartupError(err.message);
    throw err;
  });
  try {
    return await startLocalModeLocked(ctx);
  } catch (err) {
    await lock.release();
    throw err;
  }

  async function startLocalModeLocked(ctx: ModeContext): Promise<RunningMode> {
    const files = new BindingFiles(config.bindings.directory);
    // Overlapping bindings are ordered by age; a file's age is when natsbind first saw it.
    const firstSeen = await BindingFirstSeen.load(config.keys.directory, ctx.clock);
    const presentKeys = (s: BindingSnapshot): string[] => [
      ...s.bindings.keys(),
      ...s.invalid.flatMap((i) => (i.key ? [i.key] : [])),
    ];
    let snapshot: BindingSnapshot = await files.scan();
    await firstSeen.observe(presentKeys(snapshot));
    const lookup: BindingLookup = {
      get(key): BindingEntry | undefined {
        const valid = snapshot.bindings.get(key);
        if (valid) return { kind: "valid", binding: valid.binding, generation: valid.generation };
        const invalid = snapshot.invalid.find((i) => i.key === key);
        return invalid
          ? { kind: "invalid", message: `${invalid.source}: ${invalid.message}`, generation: 0 }
          : undefined;
      },
      validKeys: () => [...snapshot.bindings.keys()],
      createdAt(key) {
        const explicit = snapshot.bindings.get(key)?.binding.metadata.creationTimestamp;
        return explicit !== undefined ? Date.parse(explicit) : firstSeen.get(key);
      },
    };
    const keys = new DirectoryKeyStore(config.keys.directory, { owner: true });
    // Rotation and revocation requests of the CLI: read at each reconcile, watched below.
    const requests = new RequestFiles(config.keys.directory);
    const reconciler = new BindingReconciler({
      bindings: lookup,
      projects: inventories,
      keys,
      resolver: ctx.resolver,
      statuses: new StatusFiles(config.state.directory),
      signer: ctx.signer,
      trustedIssuers: ctx.trustedIssuers,
      clock: ctx.clock,
      driftCheckMs: config.gitlab!.resyncInterval,
      events: ctx.events,
      requeue: (key) => queue.add(key),
      rotator: ctx.makeRotator(keys, requests),
    });
    // The watcher scanned already: take its snapshot rather than reading the directory again.
    const watcher = files.watch(async (keys, scanned) => {
      snapshot = scanned;
      // New keys are the youngest until recorded (memory at once); enqueue once the file has them.
      await firstSeen
        .observe(presentKeys(scanned))
        .catch((err: unknown) => ctx.log.warn({ err }, "recording when bindings were first seen failed"));
      for (const key of keys) {
        if (!snapshot.bindings.has(key)) inventories.forget(key);
        queue.add(key);
      }
    });
    // `natsbind rotate` and `natsbind credentials revoke` hand their requests over in files: a
    // change there is looked at at once (the binding is named inside the file).
    const requestWatcher = await requests.watch(
      (key) => queue.add(key),
      (err) => ctx.log.warn({ err }, "request files"),
    );
    const controller = ctx.startController(reconciler);
    ctx.setReconciling(true);
    ctx.setCredentialSources({ bindings: lookup, keys, ready: () => true });
    for (const key of presentKeys(snapshot)) queue.add(key);
    ctx.log.info(
      { bindings: snapshot.bindings.size, invalid: snapshot.invalid.length },
      "local bindings loaded",
    );
    return {
      async stop() {
        watcher.close();
        requestWatcher.close();
        await controller.stop();
        await lock.release();
      },
    };
  }
}

/**
 * How long a replaced signing key stays listed at least: the longest lifetime of a user JWT
 * natsbind issues (credentials.maxTtl) plus the clock leeway, plus a few seconds for the issuer's
 * key cache (src/credentials/key-cache.ts keeps a slot's keys 1 s) and replicas reading the new
 * state. Without a credentials section natsbind issues no user JWTs: only the margin. Keys other
 * tools' users still connect with are kept by the live-connection check (gracePeriod).
 */
export function rotationOverlapMs(config: Config): number {
  const margin = 5_000;
  if (!config.credentials) return margin;
  return config.credentials.maxTtl + config.credentials.leeway + margin;
}

/**
 * How long a revocation stays in the account JWT after its time: revocations.retention, else the
 * longest life of a user JWT natsbind issues plus the margin (rotationOverlapMs) when it issues
 * them, else 7 days: without a credentials section natsbind does not know how long the users it
 * would cut off live, and a revocation that lapses lets them back in.
 */
export function revocationRetentionMs(config: Config): number {
  if (config.revocations.retention !== undefined) return config.revocations.retention;
  return config.credentials ? rotationOverlapMs(config) : 7 * 86_400_000;
}
