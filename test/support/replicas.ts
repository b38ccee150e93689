/**
 * Two (or more) `natsbind run` replicas in Kubernetes mode as child processes, each registered as
 * a Pod of natsbind's Deployment in the test apiserver. There is no kubelet: the test writes the
 * Pod objects (labels of deploy/base, a container port named "http" with the replica's own port)
 * and their status (Running, pod IP 127.0.0.1), which is what a follower checks before it relays
 * to the Lease holder (src/k8s/leader-pod.ts).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { CoordinationV1Api, CoreV1Api, type KubeConfig } from "@kubernetes/client-node";
import { writeFile } from "node:fs/promises";
import { stringify } from "yaml";
import { NODE_FLAGS } from "../../src/cli/node-flags.ts";
import { REPO_ROOT, freePort } from "./process.ts";

export const POD_NAMESPACE = "natsbind";
export const POD_LABELS = {
  "app.kubernetes.io/name": "natsbind",
  "app.kubernetes.io/component": "controller",
};

export interface Replica {
  index: number;
  podName: string;
  port: number;
  url: string;
  child: ChildProcess;
  /** Its holderIdentity: "<pod name>_<pid>". */
  identity: string;
  /** What it logged so far (JSON lines). */
  log(): string;
}

/** Creates Pod `name` with natsbind's labels and marks it Running at 127.0.0.1 (no kubelet here). */
export async function registerPod(
  core: CoreV1Api,
  o: { name: string; port: number; labels?: Record<string, string>; namespace?: string },
): Promise<void> {
  const namespace = o.namespace ?? POD_NAMESPACE;
  const pod = await core.createNamespacedPod({
    namespace,
    body: {
      metadata: { name: o.name, labels: o.labels ?? POD_LABELS },
      spec: {
        containers: [
          { name: "natsbind", image: "natsbind:test", ports: [{ name: "http", containerPort: o.port }] },
        ],
      },
    },
  });
  pod.status = { phase: "Running", podIP: "127.0.0.1", podIPs: [{ ip: "127.0.0.1" }] };
  await core.replaceNamespacedPodStatus({ name: o.name, namespace, body: pod });
}

export interface StartReplicasOptions {
  kc: KubeConfig;
  dir: string;
  count: number;
  /** natsbind.yaml without http and kubernetes.relay.podName (set per replica). */
  config: Record<string, unknown>;
}

export async function startReplicas(o: StartReplicasOptions): Promise<Replica[]> {
  const core = o.kc.makeApiClient(CoreV1Api);
  const replicas: Replica[] = [];
  for (let index = 0; index < o.count; index += 1) {
    const port = await freePort();
    const podName = `natsbind-${index}`;
    await registerPod(core, { name: podName, port });
    const kubernetes = (o.config.kubernetes ?? {}) as Record<string, unknown>;
    const file = join(o.dir, `natsbind-${index}.yaml`);
    await writeFile(
      file,
      stringify({
        ...o.config,
        kubernetes: { ...kubernetes, relay: { podName } },
        http: { listen: `127.0.0.1:${port}` },
      }),
    );
    const logFile = join(o.dir, `natsbind-${index}.log`);
    const child = spawn(
      process.execPath,
      [...NODE_FLAGS, join(REPO_ROOT, "src", "cli", "main.ts"), "run", "--config", file],
      { stdio: ["ignore", openSync(logFile, "w"), openSync(logFile, "a")] },
    );
    replicas.push({
      index,
      podName,
      port,
      url: `http://127.0.0.1:${port}`,
      child,
      identity: `${podName}_${child.pid}`,
      log: () => readFileSync(logFile, "utf8"),
    });
  }
  return replicas;
}

/** The Lease holder identity (namespace/name natsbind/natsbind unless told). */
export async function leaseHolder(kc: KubeConfig, name = "natsbind"): Promise<string | undefined> {
  try {
    const lease = await kc
      .makeApiClient(CoordinationV1Api)
      .readNamespacedLease({ name, namespace: POD_NAMESPACE });
    return lease.spec?.holderIdentity;
  } catch {
    return undefined;
  }
}

/** A gauge or counter value from a replica's /metrics (0 when absent). */
export async function metric(url: string, series: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

/** A GitLab system-hook project_create delivery, as GitLab sends it. */
export async function deliverProjectCreate(
  url: string,
  secret: string | undefined,
  project: { id: number; path: string },
  deliveryId: string,
): Promise<number> {
  const res = await fetch(`${url}/webhooks/gitlab`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "x-gitlab-event": "System Hook",
      "idempotency-key": deliveryId,
      ...(secret === undefined ? {} : { "x-gitlab-token": secret }),
    },
    body: JSON.stringify({
      event_name: "project_create",
      project_id: project.id,
      path_with_namespace: project.path,
    }),
    signal: AbortSignal.timeout(10_000),
  });
  await res.body?.cancel();
  return res.status;
}
