/**
 * Kubernetes-path benchmark (`make bench` runs it last): 1,000 GitLab projects through natsbind
 * run in Kubernetes mode against a real kube-apiserver + etcd, nats-server and the GitLab
 * simulator.
 *
 *  - Baseline, same run, same servers: natsbind run in local mode (key files, status files) on
 *    another group of the same size. The ratio is what the Kubernetes adapters add (one Secret
 *    create per account, status through the API, Events, the finalizer, informers).
 *  - Kubernetes mode: time from applying the NatsBinding until every account was pushed (onPushed)
 *    and until every account Secret exists; then Ready=True on the binding.
 *  - Requests the controller made to the apiserver, from the apiserver's own counters
 *    (apiserver_request_total by verb and resource, read from /metrics before and after): per
 *    account, and split by verb/resource, so a poll loop would show up as list/get counts growing
 *    with the accounts. The bench's own requests (one create, status reads while waiting) are
 *    counted separately and subtracted.
 * Medians over RUNS runs, each on fresh directories / a fresh namespace and fresh projects.
 */
import { writeFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { CoordinationV1Api, CoreV1Api, CustomObjectsApi } from "@kubernetes/client-node";
import { stringify } from "yaml";
import { PLURAL } from "../src/api/v1alpha1/crd.ts";
import { GROUP, VERSION } from "../src/api/v1alpha1/types.ts";
import { parseConfig } from "../src/config/config.ts";
import type { BindingStatus } from "../src/controllers/binding/status.ts";
import { runController } from "../src/main.ts";
import { nullLogger } from "../src/observability/logger.ts";
import { GitLabSimulator } from "../test/support/gitlab-sim.ts";
import {
  insecureGet,
  startKubeApiserver,
  installNatsbindCrds,
  type KubeApiserver,
} from "../test/support/kube.ts";
import { startNatsServer } from "../test/support/nats-server.ts";
import { applyPermissivePolicy, waitForPolicyResolved } from "../test/support/policy.ts";
import { createTestOperator, natsConfigSection } from "../test/support/operator.ts";
import { removeDir, tempDir, waitFor } from "../test/support/process.ts";
import { fmt, log, median, table, writeResults } from "./common.ts";

const PROJECTS = Number(process.env.BENCH_K8S_PROJECTS ?? 1_000);
const RUNS = 3;

function role(): Record<string, unknown> {
  return {
    name: "ci",
    publish: { allow: ["build.status.{{project.slug}}.>"] },
    subscribe: { allow: ["_INBOX.>"] },
  };
}

/** apiserver_request_total summed by "VERB resource", from the apiserver's /metrics. */
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

interface RunResult {
  allPushedMs: number;
  secretsMs: number;
  readyMs: number;
  requests: Map<string, number>;
  benchRequests: number;
}

async function main(): Promise<void> {
  const op = await createTestOperator();
  const kube = await startKubeApiserver();
  const sim = await GitLabSimulator.start();
  const server = await startNatsServer({ ...op.serverOptions, name: "bench-k8s" });
  const dir = await tempDir("bench-k8s");
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
      `natsbind Kubernetes-path bench: ${fmt(PROJECTS)} projects, ${RUNS} runs per mode, node ${process.version}`,
    );
    const local: number[] = [];
    const k8s: RunResult[] = [];
    for (let run = 0; run < RUNS; run++) {
      // --- baseline: local mode on its own group ---
      {
        const group = `local${run}`;
        sim.populate({ rootPath: group, projects: PROJECTS, depth: 2, fanout: 5 });
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
        const config = parseConfig({ nats, gitlab, http: { listen: "127.0.0.1:0" } }, "bench local", runDir);
        let pushed = 0;
        const t0 = performance.now();
        const running = await runController(config, { log: nullLogger, onPushed: () => (pushed += 1) });
        await waitFor(async () => pushed >= PROJECTS, {
          what: "local: all pushed",
          timeoutMs: 300_000,
          intervalMs: 10,
        });
        local.push(performance.now() - t0);
        await running.stop();
        log(`[local ${run}] ${fmt(local.at(-1)!)} ms`);
      }
      // --- Kubernetes mode: its own namespace and group ---
      {
        const ns = `bench${run}`;
        const group = `k8s${run}`;
        sim.populate({ rootPath: group, projects: PROJECTS, depth: 2, fanout: 5 });
        await core.createNamespace({ body: { metadata: { name: ns } } });
        // natsbind refuses bindings no NatsBindingPolicy grants.
        await applyPermissivePolicy(kc, group, [group]);
        const document = {
          mode: "kubernetes",
          nats,
          gitlab,
          kubernetes: {
            kubeconfig: "kubeconfig",
            namespace: ns,
            leaderElection: { name: `natsbind-${run}` },
          },
          http: { listen: "127.0.0.1:0" },
        };
        const config = parseConfig(document, "bench k8s", dir);
        let pushed = 0;
        const running = await runController(config, {
          log: nullLogger,
          identity: `bench-${run}`,
          onPushed: () => (pushed += 1),
        });
        // Counting starts once it holds the lease (its informers are listing by then).
        await waitFor(
          async () =>
            (
              await leases
                .readNamespacedLease({ name: `natsbind-${run}`, namespace: "natsbind" })
                .catch(() => undefined)
            )?.spec?.holderIdentity === `bench-${run}`,
          { what: "k8s: lease held", timeoutMs: 30_000, intervalMs: 50 },
        );
        await waitForPolicyResolved(kc, group, [group]);
        const before = await requestCounts(kube);
        let benchRequests = 0;
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
        benchRequests += 1;
        await waitFor(async () => pushed >= PROJECTS, {
          what: "k8s: all pushed",
          timeoutMs: 300_000,
          intervalMs: 10,
        });
        const allPushedMs = performance.now() - t0;
        // Keys are stored before pushes: every Secret exists once every account is pushed.
        const secretsMs = allPushedMs;
        let readyMs = 0;
        await waitFor(
          async () => {
            benchRequests += 1;
            const obj = (await objects.getNamespacedCustomObject({
              group: GROUP,
              version: VERSION,
              namespace: ns,
              plural: PLURAL,
              name: group,
            })) as { status?: BindingStatus };
            const ready =
              obj.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ?? false;
            if (ready) readyMs = performance.now() - t0;
            return ready;
          },
          { what: "k8s: Ready", timeoutMs: 60_000, intervalMs: 100 },
        );
        const after = await requestCounts(kube);
        // Untimed check: every account has its Secret.
        const secrets = await core.listNamespacedSecret({
          namespace: ns,
          labelSelector: "app.kubernetes.io/managed-by=natsbind",
        });
        if (secrets.items.length !== PROJECTS)
          throw new Error(`${secrets.items.length} Secrets, expected ${PROJECTS}`);
        await running.stop();
        const requests = delta(after, before);
        k8s.push({ allPushedMs, secretsMs, readyMs, requests, benchRequests });
        log(`[k8s ${run}] all pushed ${fmt(allPushedMs)} ms, Ready ${fmt(readyMs)} ms`);
      }
    }

    const localMs = median(local);
    const pushedMs = median(k8s.map((r) => r.allPushedMs));
    const readyMs = median(k8s.map((r) => r.readyMs));
    log(`\n== ${fmt(PROJECTS)} projects: binding applied -> every account pushed (medians of ${RUNS}) ==`);
    log(
      table(
        ["measure", "median", "runs (ms)", "vs baseline"],
        [
          [
            "baseline: local mode (key files), runController -> all pushed",
            `${fmt(localMs)} ms`,
            local.map((v) => fmt(v)).join(", "),
            "1.00x",
          ],
          [
            "Kubernetes mode: binding created -> all pushed (Secrets written first)",
            `${fmt(pushedMs)} ms`,
            k8s.map((r) => fmt(r.allPushedMs)).join(", "),
            `${fmt(pushedMs / localMs, 2)}x`,
          ],
          [
            "Kubernetes mode: binding created -> Ready=True in status",
            `${fmt(readyMs)} ms`,
            k8s.map((r) => fmt(r.readyMs)).join(", "),
            "",
          ],
        ],
      ),
    );
    const last = k8s.at(-1)!;
    const total = (r: RunResult): number =>
      [...r.requests.values()].reduce((a, b) => a + b, 0) - r.benchRequests;
    log(
      `\n== apiserver requests during a run (apiserver_request_total deltas; last run; bench's own ${last.benchRequests} subtracted from the total) ==`,
    );
    log(
      table(
        ["verb resource", "requests", "per account"],
        [...last.requests.entries()]
          .sort((a, b) => b[1] - a[1])
          .map(([k, v]) => [k, fmt(v), fmt(v / PROJECTS, 3)]),
      ),
    );
    log(
      `total by the controller: ${fmt(total(last))} = ${fmt(total(last) / PROJECTS, 2)} per account (median over runs: ${fmt(median(k8s.map((r) => total(r) / PROJECTS)), 2)})`,
    );
    await writeResults("k8s.json", {
      date: new Date().toISOString(),
      projects: PROJECTS,
      localMs: local,
      k8s: k8s.map((r) => ({ ...r, requests: Object.fromEntries(r.requests) })),
    });
  } finally {
    await server.stop();
    await sim.stop();
    await kube.stop();
    await op.remove();
    await removeDir(dir);
  }
}

await main();
