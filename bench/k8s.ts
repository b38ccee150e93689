/**
 * Kubernetes-path benchmark (`make bench`): 10,000 GitLab projects in ONE NatsBinding through
 * `natsbind run` in Kubernetes mode (its own process, as in a pod) against a real kube-apiserver +
 * etcd, nats-server and the GitLab simulator. Targets (issue 12): apiserver requests per account
 * <= 1.05 and the binding Ready < 60 s.
 *
 *  - Baseline, same run, same servers: `natsbind run` in local mode (key files, status files) on
 *    another group of the same size, from spawn until every account was pushed. The ratio is what
 *    the Kubernetes adapters add (a Secret create per account, status through the API, Events, the
 *    finalizer, informers).
 *  - Kubernetes mode: the child runs and holds the Lease (its informers synced) before the binding
 *    is created; from that create, time until every account's Secret exists (the bench's own watch
 *    on the account Secrets), until every account JWT was seen on the wire ($SYS.REQ.CLAIMS.UPDATE),
 *    and until Ready=True for the current generation (the bench's own watch on the binding).
 *  - Requests the controller made to the apiserver, from the apiserver's own counters
 *    (apiserver_request_total by verb and resource, read from /metrics before the create and at
 *    Ready): per account, split by verb/resource, so a poll loop or a per-account read or update
 *    shows up as counts growing with the accounts. The bench's own requests in that window (the
 *    create of the binding; its two watches are still open at Ready, and a watch is counted when it
 *    ends) are subtracted. Requests in the 3 s after Ready are reported apart (a trailing reconcile
 *    would show there).
 *  - Peak RSS (VmHWM and VmRSS sampled every 100 ms) and CPU of each natsbind child; how busy the
 *    machine was (load average, share of all CPUs busy during the Kubernetes run), since the
 *    apiserver and etcd share the machine with everything else.
 * Medians over RUNS runs, each on fresh directories / a fresh namespace and fresh projects.
 *
 * Knobs (environment; the defaults are what `make bench` reports):
 *   BENCH_K8S_PROJECTS        projects in the binding (default 10,000; BENCH_QUICK=1: 1,000)
 *   BENCH_K8S_LOCAL_PROJECTS  projects of the local-mode baseline (default: the same)
 *   BENCH_K8S_RUNS            runs per mode (default 1: one 10,000-project run is long, ~1-3 min)
 *   BENCH_K8S_CHILD_ARGS      node flags for the natsbind children (e.g. "--cpu-prof --cpu-prof-dir=DIR")
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import {
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  Watch,
  type KubeConfig,
  type V1Secret,
} from "@kubernetes/client-node";
import { stringify } from "yaml";
import { PLURAL } from "../src/api/v1alpha1/crd.ts";
import { GROUP, VERSION } from "../src/api/v1alpha1/types.ts";
import { NODE_FLAGS } from "../src/cli/node-flags.ts";
import type { BindingStatus } from "../src/controllers/binding/status.ts";
import { ACCOUNT_SECRET_SELECTOR } from "../src/k8s/secret-keystore.ts";
import { readJwt } from "../src/nats/claims.ts";
import { GitLabSimulator } from "../test/support/gitlab-sim.ts";
import {
  insecureGet,
  installNatsbindCrds,
  startKubeApiserver,
  type KubeApiserver,
} from "../test/support/kube.ts";
import { startNatsServer } from "../test/support/nats-server.ts";
import { connectWithCreds, createTestOperator, natsConfigSection } from "../test/support/operator.ts";
import { applyPermissivePolicy, waitForPolicyResolved } from "../test/support/policy.ts";
import { removeDir, tempDir, waitFor } from "../test/support/process.ts";
import {
  QUICK,
  benchEnv,
  cpuTimeMs,
  fmt,
  log,
  median,
  processCpuMs,
  procMemory,
  sleep,
  table,
  verdict,
  writeResults,
} from "./common.ts";

const PROJECTS = Number(process.env.BENCH_K8S_PROJECTS ?? (QUICK ? 1_000 : 10_000));
const LOCAL_PROJECTS = Number(process.env.BENCH_K8S_LOCAL_PROJECTS ?? PROJECTS);
const RUNS = Number(process.env.BENCH_K8S_RUNS ?? 1);
const READY_TARGET_MS = 60_000;
const REQUESTS_TARGET = 1.05;
const RUN_TIMEOUT_MS = 600_000;
const SETTLE_MS = 3_000;
const CLI = join(import.meta.dirname, "..", "src", "cli", "main.ts");
const CHILD_ARGS = (process.env.BENCH_K8S_CHILD_ARGS ?? "").split(" ").filter(Boolean);

function role(): Record<string, unknown> {
  return {
    name: "ci",
    publish: { allow: ["build.status.{{project.slug}}.>"] },
    subscribe: { allow: ["_INBOX.>"] },
  };
}

/** apiserver_request_total summed by "VERB resource[/subresource]", from the apiserver's /metrics. */
async function requestCounts(kube: KubeApiserver): Promise<Map<string, number>> {
  const { status, body } = await insecureGet(`${kube.server}/metrics`, kube.token, { timeoutMs: 10_000 });
  if (status !== 200) throw new Error(`apiserver /metrics: HTTP ${status}`);
  const counts = new Map<string, number>();
  for (const line of body.split("\n")) {
    if (!line.startsWith("apiserver_request_total{")) continue;
    const labels = Object.fromEntries([...line.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]));
    const key = `${labels.verb} ${labels.resource}${labels.subresource ? `/${labels.subresource}` : ""}`;
    counts.set(key, (counts.get(key) ?? 0) + Number(line.slice(line.lastIndexOf(" ") + 1)));
  }
  return counts;
}

function delta(after: Map<string, number>, before: Map<string, number>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [k, v] of after) {
    const d = v - (before.get(k) ?? 0);
    if (d > 0) out.set(k, d);
  }
  return out;
}

const sum = (m: Map<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0);
const mb = (bytes: number): number => bytes / 1024 / 1024;

/** Busy time of all CPUs so far (ms), from /proc/stat; undefined off Linux. */
function machineBusyMs(): number | undefined {
  let busy = 0;
  for (let cpu = 0; cpu < cpus().length; cpu++) {
    const t = cpuTimeMs(cpu);
    if (!t) return undefined;
    busy += t.busy;
  }
  return busy;
}

/** `natsbind run --config FILE` as a child: peak memory sampled, stderr's tail kept for errors. */
class NatsbindChild {
  readonly proc: ChildProcess;
  exited: string | undefined;
  #stderr = "";
  #peak = 0;
  readonly #sampler: ReturnType<typeof setInterval>;

  constructor(configFile: string) {
    this.proc = spawn(process.execPath, [...NODE_FLAGS, ...CHILD_ARGS, CLI, "run", "--config", configFile], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    this.proc.stderr!.setEncoding("utf8");
    this.proc.stderr!.on("data", (chunk: string) => (this.#stderr = (this.#stderr + chunk).slice(-8_192)));
    this.proc.once("exit", (code, signal) => (this.exited = `code ${code}, signal ${signal}`));
    this.#sampler = setInterval(() => this.#sample(), 100);
  }

  #sample(): void {
    const m = procMemory(this.proc.pid!);
    if (m) this.#peak = Math.max(this.#peak, m.rss, m.hwm);
  }

  /** Throws (with its stderr) when the child is gone. */
  check(): void {
    if (this.exited !== undefined) throw new Error(`natsbind run exited (${this.exited}):\n${this.#stderr}`);
  }

  /** Peak RSS so far (MB) and CPU used (ms, user + system). */
  usage(): { peakMb: number; cpuMs: number | undefined } {
    this.#sample();
    const cpu = processCpuMs(this.proc.pid!);
    return { peakMb: mb(this.#peak), cpuMs: cpu === undefined ? undefined : cpu.user + cpu.sys };
  }

  async stop(): Promise<void> {
    clearInterval(this.#sampler);
    if (this.exited !== undefined) return;
    const gone = new Promise<void>((r) => this.proc.once("exit", () => r()));
    this.proc.kill("SIGTERM");
    await Promise.race([gone, sleep(15_000)]);
    if (this.exited === undefined) this.proc.kill("SIGKILL");
  }
}

/** Project ids whose account JWT went over the wire ($SYS.REQ.CLAIMS.UPDATE), any binding. */
class WireCounter {
  readonly seen = new Set<number>();
  updates = 0;

  handle(data: string): void {
    this.updates += 1;
    try {
      const tags = (readJwt(data, "account JWT").claims.nats?.tags as string[] | undefined) ?? [];
      const tag = tags.find((t) => t.startsWith("gitlab-project-id:"));
      if (tag !== undefined) this.seen.add(Number(tag.slice("gitlab-project-id:".length)));
    } catch {
      // not an account JWT of ours
    }
  }

  count(ids: readonly number[]): number {
    let n = 0;
    for (const id of ids) if (this.seen.has(id)) n++;
    return n;
  }
}

async function waitUntil(
  what: string,
  child: NatsbindChild,
  t0: number,
  done: () => boolean,
  progress: () => string,
): Promise<number> {
  let lastLog = performance.now();
  while (!done()) {
    child.check();
    const now = performance.now();
    const state = progress(); // throws when the bench cannot measure any more
    if (now - t0 > RUN_TIMEOUT_MS)
      throw new Error(`${what}: timed out after ${fmt(RUN_TIMEOUT_MS)} ms (${state})`);
    if (now - lastLog >= 10_000) {
      lastLog = now;
      log(`  ${fmt((now - t0) / 1000)} s: ${state}`);
    }
    await sleep(20);
  }
  return performance.now() - t0;
}

/**
 * The bench's own watch of a collection: re-opened from the last resourceVersion when the apiserver
 * ends it (it closes the watches of consumers that fall behind, as this bench may on a busy
 * machine). A watch is counted in apiserver_request_total when it ends: `ends` of them fell in the
 * measured window and are subtracted. Any other failure stops the measurement (`failed`).
 */
class BenchWatch {
  ends = 0;
  failed: string | undefined;
  #version: string | undefined;
  #controller: AbortController | undefined;
  #stopped = false;
  readonly #watch: Watch;
  readonly path: string;
  readonly labelSelector: string | undefined;

  constructor(kc: KubeConfig, path: string, labelSelector?: string) {
    this.path = path;
    this.labelSelector = labelSelector;
    this.#watch = new Watch(kc);
    // client-node drops a watch after 30 s without bytes; the binding is quiet that long.
    (this.#watch as unknown as { requestTimeoutMs: number }).requestTimeoutMs = RUN_TIMEOUT_MS;
  }

  async start<T extends { metadata?: { resourceVersion?: string } }>(
    onEvent: (type: string, obj: T) => void,
  ): Promise<void> {
    this.#controller = await this.#watch.watch(
      this.path,
      {
        allowWatchBookmarks: true,
        ...(this.labelSelector ? { labelSelector: this.labelSelector } : {}),
        ...(this.#version ? { resourceVersion: this.#version } : {}),
      },
      (type: string, obj: T) => {
        if (type === "ERROR") {
          this.failed ??= `the bench's watch of ${this.path} got an ERROR event: ${JSON.stringify(obj).slice(0, 300)}`;
          return;
        }
        this.#version = obj.metadata?.resourceVersion ?? this.#version;
        if (type !== "BOOKMARK") onEvent(type, obj);
      },
      (err: unknown) => {
        if (this.#stopped) return;
        if (err) {
          this.failed ??= `the bench's watch of ${this.path} failed: ${err instanceof Error ? err.message : String(err)}`;
          return;
        }
        this.ends += 1;
        this.start(onEvent).catch((e: unknown) => (this.failed ??= `re-watch ${this.path}: ${String(e)}`));
      },
    );
  }

  stop(): void {
    this.#stopped = true;
    this.#controller?.abort();
  }
}

interface LocalRun {
  allPushedMs: number;
  peakMb: number;
  cpuMs: number | undefined;
  /** apiserver requests meanwhile: no client talks to it then, so they are its own (background). */
  apiserverOwn: Map<string, number>;
}

interface K8sRun {
  secretsMs: number;
  allPushedMs: number;
  readyMs: number;
  peakMb: number;
  cpuMs: number | undefined;
  /** Controller requests from the binding's create to Ready, by "VERB resource". */
  requests: Map<string, number>;
  /** Requests in the SETTLE_MS after Ready. */
  afterReady: Map<string, number>;
  benchRequests: Map<string, number>;
  loadBefore: number;
  loadAfter: number;
  /** Share of all CPUs busy from the create to Ready, and natsbind's part of it. */
  machineBusy: number | undefined;
  natsbindBusy: number | undefined;
}

async function main(): Promise<void> {
  const op = await createTestOperator();
  const kube = await startKubeApiserver();
  const sim = await GitLabSimulator.start();
  const server = await startNatsServer({ ...op.serverOptions, name: "bench-k8s" });
  const dir = await tempDir("bench-k8s");
  const wire = new WireCounter();
  const nc = await connectWithCreds(server.url, op.systemCreds);
  nc.subscribe("$SYS.REQ.CLAIMS.UPDATE", { callback: (_err, msg) => wire.handle(msg.string()) });
  await nc.flush();
  try {
    const kc = kube.kubeConfig();
    const core = kc.makeApiClient(CoreV1Api);
    const objects = kc.makeApiClient(CustomObjectsApi);
    const leases = kc.makeApiClient(CoordinationV1Api);
    await installNatsbindCrds(kc);
    await core.createNamespace({ body: { metadata: { name: "natsbind" } } });
    await writeFile(join(dir, "kubeconfig"), kc.exportConfig());
    await writeFile(join(dir, "token"), sim.token);
    const nats = natsConfigSection(op, [server.url]);
    const gitlab = { url: sim.url, tokenFile: "token", resyncInterval: "1h" };

    log(
      `natsbind Kubernetes-path bench: ${fmt(PROJECTS)} projects in one binding (local baseline ${fmt(LOCAL_PROJECTS)}), ` +
        `${RUNS} run(s) per mode, node ${process.version}, ${cpus().length} CPUs, load average ${loadavg()
          .map((l) => l.toFixed(2))
          .join(" ")}`,
    );
    const local: LocalRun[] = [];
    const k8s: K8sRun[] = [];
    for (let run = 0; run < RUNS; run++) {
      // --- baseline: natsbind run, local mode, on its own group ---
      {
        const group = `local${run}`;
        const { projects } = sim.populate({ rootPath: group, projects: LOCAL_PROJECTS, depth: 2, fanout: 5 });
        const ids = projects.map((p) => p.id);
        const runDir = join(dir, group);
        await mkdir(join(runDir, "bindings"), { recursive: true });
        await writeFile(join(runDir, "token"), sim.token);
        await writeFile(
          join(runDir, "bindings", "b.yaml"),
          stringify({
            apiVersion: `${GROUP}/${VERSION}`,
            kind: "NatsBinding",
            metadata: { name: group },
            spec: { gitlab: { group }, roles: [role()] },
          }),
        );
        const configFile = join(runDir, "natsbind.yaml");
        await writeFile(configFile, stringify({ nats, gitlab, http: { listen: "127.0.0.1:0" } }));
        log(`[local ${run}] natsbind run (local mode), ${fmt(LOCAL_PROJECTS)} projects`);
        const own0 = await requestCounts(kube);
        const t0 = performance.now();
        const child = new NatsbindChild(configFile);
        try {
          const allPushedMs = await waitUntil(
            "local: all pushed",
            child,
            t0,
            () => wire.count(ids) >= ids.length,
            () => `${fmt(wire.count(ids))} pushed`,
          );
          const { peakMb, cpuMs } = child.usage();
          const apiserverOwn = delta(await requestCounts(kube), own0);
          local.push({ allPushedMs, peakMb, cpuMs, apiserverOwn });
          log(`[local ${run}] all pushed ${fmt(allPushedMs)} ms, peak RSS ${fmt(peakMb)} MB`);
        } finally {
          await child.stop();
        }
      }
      // --- Kubernetes mode: its own namespace, group and Lease ---
      {
        const ns = `bench${run}`;
        const group = `k8s${run}`;
        const lease = `natsbind-${run}`;
        const { projects } = sim.populate({ rootPath: group, projects: PROJECTS, depth: 2, fanout: 5 });
        const ids = projects.map((p) => p.id);
        await core.createNamespace({ body: { metadata: { name: ns } } });
        // natsbind refuses bindings no NatsBindingPolicy grants.
        await applyPermissivePolicy(kc, group, [group]);
        const configFile = join(dir, `natsbind-${run}.yaml`);
        await writeFile(
          configFile,
          stringify({
            mode: "kubernetes",
            nats,
            gitlab,
            kubernetes: { kubeconfig: "kubeconfig", namespace: ns, leaderElection: { name: lease } },
            http: { listen: "127.0.0.1:0" },
          }),
        );
        log(
          `[k8s ${run}] natsbind run (Kubernetes mode), ${fmt(PROJECTS)} projects in binding ${ns}/${group}`,
        );
        const child = new NatsbindChild(configFile);
        const watches: BenchWatch[] = [];
        try {
          // Counting starts once it holds the lease (its informers synced by then) and the policy
          // has its group ids.
          await waitFor(
            async () => {
              child.check();
              const held = await leases
                .readNamespacedLease({ name: lease, namespace: "natsbind" })
                .catch(() => undefined);
              return (held?.spec?.holderIdentity ?? "") !== "";
            },
            { what: "k8s: lease held", timeoutMs: 60_000, intervalMs: 100 },
          );
          await waitForPolicyResolved(kc, group, [group]);

          // The bench's own watches: open for the whole measurement, so not counted in it.
          const secretNames = new Set<string>();
          let readyAt: number | undefined;
          let secretsAt: number | undefined;
          const secretWatch = new BenchWatch(kc, `/api/v1/namespaces/${ns}/secrets`, ACCOUNT_SECRET_SELECTOR);
          const bindingWatch = new BenchWatch(kc, `/apis/${GROUP}/${VERSION}/namespaces/${ns}/${PLURAL}`);
          watches.push(secretWatch, bindingWatch);
          await secretWatch.start((type, obj: V1Secret) => {
            if (type !== "ADDED" || !obj.metadata?.name) return;
            secretNames.add(obj.metadata.name);
            if (secretNames.size >= PROJECTS && secretsAt === undefined) secretsAt = performance.now();
          });
          await bindingWatch.start(
            (
              _type,
              obj: { metadata?: { generation?: number; resourceVersion?: string }; status?: BindingStatus },
            ) => {
              const ready = obj.status?.conditions?.find((c) => c.type === "Ready");
              if (
                readyAt === undefined &&
                ready?.status === "True" &&
                ready.observedGeneration === obj.metadata?.generation
              )
                readyAt = performance.now();
            },
          );

          const load0 = loadavg()[0]!;
          const busy0 = machineBusyMs();
          const cpu0 = child.usage().cpuMs;
          const before = await requestCounts(kube);
          const benchRequests = new Map<string, number>([["POST natsbindings", 1]]);
          const t0 = performance.now();
          await objects.createNamespacedCustomObject({
            group: GROUP,
            version: VERSION,
            namespace: ns,
            plural: PLURAL,
            body: {
              apiVersion: `${GROUP}/${VERSION}`,
              kind: "NatsBinding",
              metadata: { name: group },
              spec: { gitlab: { group }, roles: [role()] },
            },
          });
          const progress = (): string => {
            for (const w of watches) if (w.failed !== undefined) throw new Error(w.failed);
            return `${fmt(secretNames.size)} Secrets, ${fmt(wire.count(ids))} pushed`;
          };
          await waitUntil("k8s: all Secrets", child, t0, () => secretsAt !== undefined, progress);
          await waitUntil("k8s: all pushed", child, t0, () => wire.count(ids) >= ids.length, progress);
          const allPushedMs = performance.now() - t0;
          await waitUntil("k8s: Ready", child, t0, () => readyAt !== undefined, progress);
          const after = await requestCounts(kube);
          // The bench's watches that ended (and were re-opened) in the window are counted in it.
          if (secretWatch.ends > 0) benchRequests.set("WATCH secrets", secretWatch.ends);
          if (bindingWatch.ends > 0) benchRequests.set("WATCH natsbindings", bindingWatch.ends);
          const wall = performance.now() - t0;
          const busy1 = machineBusyMs();
          const { cpuMs: cpu1 } = child.usage();
          await sleep(SETTLE_MS);
          const settled = await requestCounts(kube);
          const { peakMb, cpuMs } = child.usage();
          const requests = delta(after, before);
          for (const [k, v] of benchRequests) requests.set(k, (requests.get(k) ?? 0) - v);
          for (const [k, v] of requests) if (v <= 0) requests.delete(k);
          const result: K8sRun = {
            secretsMs: secretsAt! - t0,
            allPushedMs,
            readyMs: readyAt! - t0,
            peakMb,
            cpuMs,
            requests,
            afterReady: delta(settled, after),
            benchRequests,
            loadBefore: load0,
            loadAfter: loadavg()[0]!,
            machineBusy:
              busy0 !== undefined && busy1 !== undefined
                ? (busy1 - busy0) / (wall * cpus().length)
                : undefined,
            natsbindBusy:
              cpu0 !== undefined && cpu1 !== undefined ? (cpu1 - cpu0) / (wall * cpus().length) : undefined,
          };
          k8s.push(result);
          log(
            `[k8s ${run}] Secrets ${fmt(result.secretsMs)} ms, all pushed ${fmt(allPushedMs)} ms, Ready ${fmt(result.readyMs)} ms, ` +
              `${fmt(sum(requests))} requests, peak RSS ${fmt(peakMb)} MB`,
          );
        } finally {
          for (const w of watches) w.stop();
          await child.stop();
        }
        // Untimed check: every account has its Secret.
        const secrets = await core.listNamespacedSecret({
          namespace: ns,
          labelSelector: ACCOUNT_SECRET_SELECTOR,
        });
        if (secrets.items.length !== PROJECTS)
          throw new Error(`${secrets.items.length} Secrets, expected ${PROJECTS}`);
      }
    }

    report(local, k8s);
    await writeResults("k8s.json", {
      date: new Date().toISOString(),
      env: benchEnv({ projects: PROJECTS, localProjects: LOCAL_PROJECTS, runs: RUNS }),
      local: local.map((r) => ({ ...r, apiserverOwn: Object.fromEntries(r.apiserverOwn) })),
      k8s: k8s.map((r) => ({
        ...r,
        requests: Object.fromEntries(r.requests),
        afterReady: Object.fromEntries(r.afterReady),
        benchRequests: Object.fromEntries(r.benchRequests),
      })),
    });
  } finally {
    await nc.close().catch(() => undefined);
    await server.stop();
    await sim.stop();
    await kube.stop();
    await op.remove();
    await removeDir(dir);
  }
}

function report(local: LocalRun[], k8s: K8sRun[]): void {
  const runs = (values: number[]): string => values.map((v) => fmt(v)).join(", ");
  const localMs = median(local.map((r) => r.allPushedMs));
  const perAccount = k8s.map((r) => sum(r.requests) / PROJECTS);
  const readyMs = median(k8s.map((r) => r.readyMs));
  const pushedMs = median(k8s.map((r) => r.allPushedMs));
  log(`\n== binding applied -> accounts pushed, Secrets stored, Ready (medians of ${k8s.length}) ==`);
  log(
    table(
      ["measure", "median", "runs", "vs baseline", "target"],
      [
        [
          `baseline: local mode, ${fmt(LOCAL_PROJECTS)} projects, spawn -> all pushed`,
          `${fmt(localMs)} ms`,
          runs(local.map((r) => r.allPushedMs)),
          LOCAL_PROJECTS === PROJECTS ? "1.00x" : "",
          "",
        ],
        [
          `Kubernetes mode, ${fmt(PROJECTS)} projects: created -> every Secret exists`,
          `${fmt(median(k8s.map((r) => r.secretsMs)))} ms`,
          runs(k8s.map((r) => r.secretsMs)),
          "",
          "",
        ],
        [
          "Kubernetes mode: created -> all pushed",
          `${fmt(pushedMs)} ms`,
          runs(k8s.map((r) => r.allPushedMs)),
          LOCAL_PROJECTS === PROJECTS ? `${fmt(pushedMs / localMs, 2)}x` : "",
          "",
        ],
        [
          "Kubernetes mode: created -> Ready=True",
          `${fmt(readyMs)} ms`,
          runs(k8s.map((r) => r.readyMs)),
          LOCAL_PROJECTS === PROJECTS ? `${fmt(readyMs / localMs, 2)}x` : "",
          `< ${fmt(READY_TARGET_MS)} ms ${verdict(readyMs < READY_TARGET_MS)}`,
        ],
        [
          "apiserver requests per account (controller, created -> Ready)",
          fmt(median(perAccount), 3),
          perAccount.map((v) => fmt(v, 3)).join(", "),
          "",
          `<= ${REQUESTS_TARGET} ${verdict(median(perAccount) <= REQUESTS_TARGET)}`,
        ],
        [
          "peak RSS of natsbind run: local / Kubernetes",
          `${fmt(median(local.map((r) => r.peakMb)))} / ${fmt(median(k8s.map((r) => r.peakMb)))} MB`,
          "",
          "",
          "",
        ],
        [
          "CPU of natsbind run (user+sys): local / Kubernetes",
          `${fmt(median(local.map((r) => r.cpuMs ?? NaN)))} / ${fmt(median(k8s.map((r) => r.cpuMs ?? NaN)))} ms`,
          "",
          "",
          "",
        ],
      ],
    ),
  );
  const last = k8s.at(-1)!;
  log(
    `\n== apiserver requests by the controller, binding created -> Ready (apiserver_request_total deltas, last run; ` +
      `the bench's own ${[...last.benchRequests].map(([k, v]) => `${v} ${k}`).join(", ")} subtracted) ==`,
  );
  log(
    table(
      ["verb resource", "requests", "per account"],
      [...last.requests.entries()]
        .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
        .map(([k, v]) => [k, fmt(v), fmt(v / PROJECTS, 4)]),
    ),
  );
  log(`total: ${fmt(sum(last.requests))} = ${fmt(sum(last.requests) / PROJECTS, 3)} per account`);
  // What the apiserver asks of itself (OpenAPI aggregation, ...) while no client talks to it, from the
  // local-mode run of the same round: in the total above, not the controller's.
  const own = local.at(-1)!;
  const ownPerSecond = (sum(own.apiserverOwn) * 1000) / own.allPushedMs;
  log(
    `of which the apiserver's own, about ${fmt(ownPerSecond * 60, 1)} per minute when nobody talks to it ` +
      `(${[...own.apiserverOwn].map(([k, v]) => `${v} ${k}`).join(", ") || "none"} during the local-mode run): ` +
      `~${fmt((ownPerSecond * last.readyMs) / 1000)} of the total; the controller's own then ` +
      `~${fmt((sum(last.requests) - (ownPerSecond * last.readyMs) / 1000) / PROJECTS, 3)} per account`,
  );
  log(
    `in the ${fmt(SETTLE_MS / 1000)} s after Ready: ${fmt(sum(last.afterReady))} request(s)` +
      (last.afterReady.size > 0 ? ` (${[...last.afterReady].map(([k, v]) => `${v} ${k}`).join(", ")})` : ""),
  );
  const pct = (v: number | undefined): string => (v === undefined ? "?" : `${fmt(v * 100)}%`);
  log(
    `machine during the Kubernetes runs: ${cpus().length} CPUs, 1-min load average ${k8s.map((r) => `${r.loadBefore.toFixed(1)} -> ${r.loadAfter.toFixed(1)}`).join(", ")}; ` +
      `all CPUs busy ${k8s.map((r) => pct(r.machineBusy)).join(", ")}, of which natsbind ${k8s.map((r) => pct(r.natsbindBusy)).join(", ")} ` +
      `(the rest: kube-apiserver, etcd, nats-server, the simulator, this bench, and anything else running)`,
  );
}

await main();
