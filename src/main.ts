/**
 * Composition root of `natsbind run` (local mode): config -> adapters -> controller -> HTTP ->
 * graceful stop. Everything that talks to the outside world is built here and nowhere else.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { readSecretFile, type Config } from "./config/config.ts";
import {
  BindingReconciler,
  type BindingEntry,
  type BindingLookup,
} from "./controllers/binding/reconciler.ts";
import { ProjectInventories } from "./controllers/binding/projects.ts";
import { NatsbindError } from "./errors.ts";
import { GitbeakerGitLab } from "./gitlab/client.ts";
import { WEBHOOK_PATH, createWebhookHandler } from "./gitlab/webhook.ts";
import { startHttpServer, type HttpServer } from "./http/server.ts";
import { DirectoryKeyStore } from "./keystore/directory.ts";
import { connectResolver } from "./nats/from-config.ts";
import { createLogger, type Logger } from "./observability/logger.ts";
import { Registry, metricsHandler } from "./observability/metrics.ts";
import { systemClock, type Clock } from "./runtime/clock.ts";
import { Controller } from "./runtime/controller.ts";
import { WorkQueue } from "./runtime/workqueue.ts";
import { BindingFiles, type BindingSnapshot } from "./store/binding-files.ts";
import { StatusFiles } from "./store/status-files.ts";

export class StartupError extends NatsbindError {}

export interface RunOptions {
  clock?: Clock;
  log?: Logger;
  workers?: number;
  /** Called after every reconcile: for tests and the demo. */
  onReconciled?: (key: string, outcome: string) => void;
  /** Called when an account was pushed: for tests and the demo. */
  onPushed?: (key: string, account: string, projectId: number) => void;
}

export interface RunningController {
  url: string;
  stop(): Promise<void>;
}

export async function runController(config: Config, opts: RunOptions = {}): Promise<RunningController> {
  const clock = opts.clock ?? systemClock;
  const log = opts.log ?? createLogger({ base: { app: "natsbind" } });
  if (!config.gitlab) throw new StartupError("natsbind run needs the gitlab section of the configuration");
  const gitlab = new GitbeakerGitLab({
    url: config.gitlab.url,
    token: await readSecretFile(config.gitlab.tokenFile, "GitLab token"),
    timeoutMs: config.gitlab.requestTimeout,
  });
  const webhookSecret = config.gitlab.webhookSecretFile
    ? await readSecretFile(config.gitlab.webhookSecretFile, "webhook secret")
    : undefined;
  const { resolver, signer } = await connectResolver(config.nats);

  const metrics = new Registry();
  const reconciles = metrics.counter({
    name: "natsbind_reconcile_total",
    help: "Reconciles by outcome.",
    labelNames: ["outcome"],
  });
  const pushes = metrics.counter({ name: "natsbind_account_pushes_total", help: "Account JWTs pushed." });
  const deletes = metrics.counter({ name: "natsbind_account_deletes_total", help: "Accounts deleted." });

  const files = new BindingFiles(config.bindings.directory);
  let snapshot: BindingSnapshot = await files.scan();
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
  };

  const queue = new WorkQueue<string>({ name: "bindings", clock });
  const inventories = new ProjectInventories({
    gitlab,
    clock,
    resyncIntervalMs: config.gitlab.resyncInterval,
    onChange: (keys) => keys.forEach((k) => queue.add(k)),
    onError: (err, what) => log.warn({ err }, `gitlab inventory: ${what}`),
  });
  const reconciler = new BindingReconciler({
    bindings: lookup,
    projects: inventories,
    keys: new DirectoryKeyStore(config.keys.directory, { owner: true }),
    resolver,
    statuses: new StatusFiles(config.state.directory),
    signer,
    clock,
    driftCheckMs: config.gitlab.resyncInterval,
    events: {
      pushed: (key, account, ref) => {
        pushes.inc();
        log.info({ binding: key, account, projectId: ref.projectId }, "account pushed");
        opts.onPushed?.(key, account, ref.projectId);
      },
      deleted: (key, account, ref) => {
        deletes.inc();
        log.info({ binding: key, account, projectId: ref.projectId }, "account deleted");
      },
    },
  });
  const controller = new Controller<string>({
    name: "binding",
    reconciler,
    queue,
    workers: opts.workers ?? 2,
    clock,
    log,
    onResult: (key, outcome) => {
      reconciles.labels({ outcome: outcome.kind }).inc();
      opts.onReconciled?.(key, outcome.kind);
    },
  });

  const routes: Record<string, (req: IncomingMessage, res: ServerResponse) => void> = {
    "/metrics": metricsHandler(metrics),
  };
  if (webhookSecret) {
    routes[WEBHOOK_PATH] = createWebhookHandler({
      secretToken: webhookSecret,
      onSignal: (signal) => void inventories.handle(signal),
      log,
    });
  }
  const [host, port] = [
    config.http.listen.slice(0, config.http.listen.lastIndexOf(":")).replace(/^\[|\]$/g, ""),
    Number(config.http.listen.slice(config.http.listen.lastIndexOf(":") + 1)),
  ];
  let ready = false;
  const http: HttpServer = await startHttpServer({
    host: host!,
    port: port!,
    routes,
    readiness: () => ready,
  });

  // The watcher scanned already: take its snapshot rather than reading the directory again.
  const watcher = files.watch((keys, scanned) => {
    snapshot = scanned;
    for (const key of keys) {
      if (!snapshot.bindings.has(key)) inventories.forget(key);
      queue.add(key);
    }
  });
  controller.start();
  inventories.start();
  for (const key of [
    ...snapshot.bindings.keys(),
    ...snapshot.invalid.flatMap((i) => (i.key ? [i.key] : [])),
  ]) {
    queue.add(key);
  }
  ready = true;
  log.info(
    { url: http.url, bindings: snapshot.bindings.size, invalid: snapshot.invalid.length },
    "natsbind running",
  );

  return {
    url: http.url,
    async stop() {
      ready = false;
      watcher.close();
      inventories.stop();
      await controller.stop();
      await http.close();
      await resolver.close();
      log.info({}, "natsbind stopped");
    },
  };
}
