// Attacks on the follower's webhook path (issue 9, finding 3), against two real `natsbind run`
// replicas in Kubernetes mode (kube-apiserver + etcd, nats-server, GitLab simulator):
// - an unauthenticated flood of 1 MiB POSTs to the follower must not grow its memory nor reach
//   the leader;
// - a Lease whose holderIdentity an attacker rewrote to name their own listener (directly, or
//   through a pod that is not natsbind's) must get nothing, and so no secret.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, request, type IncomingHttpHeaders, type Server } from "node:http";
import { readFile, writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import {
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  V1MicroTime,
  type KubeConfig,
} from "@kubernetes/client-node";
import { PLURAL } from "../../src/api/v1alpha1/crd.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import { ANNOTATION_ACCOUNT, accountSecretName } from "../../src/k8s/secret-keystore.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { GitLabSimulator } from "../support/gitlab-sim.ts";
import { installNatsbindCrds, startKubeApiserver, type KubeApiserver } from "../support/kube.ts";
import { applyPermissivePolicy } from "../support/policy.ts";
import { startNatsServer, type NatsServer } from "../support/nats-server.ts";
import {
  createTestOperator,
  natsConfigSection,
  operatorResolver,
  type TestOperator,
} from "../support/operator.ts";
import { removeDir, tempDir, waitFor } from "../support/process.ts";
import {
  POD_NAMESPACE,
  deliverProjectCreate,
  leaseHolder,
  metric,
  registerPod,
  startReplicas,
  type Replica,
} from "../support/replicas.ts";

const NS = "team-a";
const SECRET = "webhook-secret-for-hostile-relay";
const MiB = 1024 * 1024;

/** VmRSS of a process, in bytes. */
async function rss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
  assert.ok(kb, `VmRSS of ${pid}`);
  return Number(kb) * 1024;
}

/** One POST of `size` bytes; resolves with the status, or "reset" if the server cut it first. */
function postBody(url: string, headers: Record<string, string>, size: number): Promise<number | "reset"> {
  return new Promise((resolve) => {
    const req = request(url, {
      method: "POST",
      headers: { ...headers, "content-length": String(size) },
    });
    req.on("response", (res) => {
      res.resume();
      resolve(res.statusCode!);
      req.destroy();
    });
    req.on("error", () => resolve("reset"));
    req.end(Buffer.alloc(size, 0x7b));
  });
}

interface Recorder {
  server: Server;
  port: number;
  seen: { method?: string; url?: string; headers: IncomingHttpHeaders }[];
}

async function attackerListener(): Promise<Recorder> {
  const seen: Recorder["seen"] = [];
  const server = createServer((req, res) => {
    seen.push({ method: req.method, url: req.url, headers: req.headers });
    req.resume();
    res.writeHead(202).end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, port: (server.address() as AddressInfo).port, seen };
}

describe("hostile: the follower's webhook path", { timeout: 300_000 }, () => {
  let op: TestOperator;
  let kube: KubeApiserver;
  let sim: GitLabSimulator;
  let server: NatsServer;
  let resolver: NatsResolver;
  let dir: string;
  let kc: KubeConfig;
  let core: CoreV1Api;
  let replicas: Replica[] = [];
  let leader: Replica;
  let follower: Replica;
  let groupId: number;

  const live = async (projectId: number): Promise<boolean> => {
    try {
      const s = await core.readNamespacedSecret({
        namespace: NS,
        name: accountSecretName({ binding: `${NS}/acme`, projectId }),
      });
      const account = s.metadata?.annotations?.[ANNOTATION_ACCOUNT];
      return account !== undefined && (await resolver.lookup(account)) !== undefined;
    } catch {
      return false;
    }
  };

  before(async () => {
    [op, kube, sim] = await Promise.all([
      createTestOperator(),
      startKubeApiserver(),
      GitLabSimulator.start(),
    ]);
    server = await startNatsServer(op.serverOptions);
    resolver = await operatorResolver(op, server.url);
    kc = kube.kubeConfig();
    core = kc.makeApiClient(CoreV1Api);
    await installNatsbindCrds(kc);
    for (const name of [NS, POD_NAMESPACE]) await core.createNamespace({ body: { metadata: { name } } });
    dir = await tempDir("hostile-relay");
    await writeFile(join(dir, "kubeconfig"), kc.exportConfig());
    await writeFile(join(dir, "token"), sim.token);
    await writeFile(join(dir, "secret"), SECRET);
    const acme = sim.createGroup({ name: "Acme", path: "acme" });
    groupId = acme.id;
    await applyPermissivePolicy(kc, "acme", ["acme"]);
    const first = sim.createProject({ name: "first", groupId });
    await kc.makeApiClient(CustomObjectsApi).createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: PLURAL,
      body: {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "NatsBinding",
        metadata: { name: "acme" },
        spec: { gitlab: { group: "acme" }, roles: [{ name: "ci", subscribe: { allow: ["_INBOX.>"] } }] },
      },
    });
    replicas = await startReplicas({
      kc,
      dir,
      count: 2,
      config: {
        mode: "kubernetes",
        nats: natsConfigSection(op, [server.url]),
        gitlab: { url: sim.url, tokenFile: "token", webhookSecretFile: "secret", resyncInterval: "1h" },
        kubernetes: {
          kubeconfig: "kubeconfig",
          leaderElection: { leaseDuration: "3s", renewDeadline: "2s", retryPeriod: "500ms" },
        },
      },
    });
    let holder: string | undefined;
    await waitFor(
      async () => {
        holder = await leaseHolder(kc);
        return replicas.some((r) => r.identity === holder);
      },
      {
        what: "a replica holding the lease",
        timeoutMs: 30_000,
        intervalMs: 100,
      },
    );
    leader = replicas.find((r) => r.identity === holder)!;
    follower = replicas.find((r) => r !== leader)!;
    await waitFor(() => live(first.id), {
      what: "the first account live",
      timeoutMs: 30_000,
      intervalMs: 100,
    });
  });

  after(async () => {
    for (const r of replicas) r.child.kill("SIGKILL");
    await resolver?.close();
    await server?.stop();
    await sim?.stop();
    await kube?.stop();
    await op?.remove();
    if (dir) await removeDir(dir);
  });

  it("400 unauthenticated 1 MiB POSTs to the follower: its RSS stays bounded and none reaches the leader", async (t) => {
    const pid = follower.child.pid!;
    const baseline = await rss(pid);
    let peak = baseline;
    const sampler = setInterval(() => {
      void rss(pid).then(
        (v) => (peak = Math.max(peak, v)),
        () => undefined,
      );
    }, 20);
    const outcomes = new Map<string, number>();
    try {
      const total = 400;
      let next = 0;
      // 16 at a time, on loopback only.
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          while (next < total) {
            const i = next++;
            const headers: Record<string, string> = {
              "content-type": "application/json",
              "x-gitlab-event": "System Hook",
            };
            if (i % 2 === 0) headers["x-gitlab-token"] = `wrong-${i}`;
            const outcome = String(await postBody(`${follower.url}/webhooks/gitlab`, headers, MiB));
            outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
          }
        }),
      );
      peak = Math.max(peak, await rss(pid));
    } finally {
      clearInterval(sampler);
    }
    const growth = peak - baseline;
    t.diagnostic(
      `follower RSS baseline ${(baseline / MiB).toFixed(1)} MiB, peak ${(peak / MiB).toFixed(1)} MiB; ` +
        `outcomes ${JSON.stringify([...outcomes])}`,
    );
    assert.ok(
      growth < 64 * MiB,
      `follower RSS grew by ${Math.round(growth / MiB)} MiB (baseline ${Math.round(baseline / MiB)} MiB)`,
    );
    const answered = [...outcomes].filter(([o]) => o !== "reset");
    assert.deepEqual(
      answered.filter(([o]) => o !== "401"),
      [],
      `only 401s (or connections cut after the 401): ${JSON.stringify([...outcomes])}`,
    );
    await waitFor(
      async () => (await metric(follower.url, 'natsbind_webhook_deliveries{outcome="unauthorized"}')) === 400,
      { what: "400 unauthorized deliveries counted by the follower", timeoutMs: 10_000, intervalMs: 50 },
    );
    assert.equal(await metric(follower.url, 'natsbind_webhook_deliveries{outcome="accepted"}'), 0);
    assert.equal(await metric(follower.url, "natsbind_webhook_relay_pending"), 0);
    assert.equal(await metric(follower.url, 'natsbind_webhook_relay_signals{outcome="sent"}'), 0);
    // The leader saw none of it: no delivery and no relay request.
    assert.equal(await metric(leader.url, 'natsbind_webhook_deliveries{outcome="received"}'), 0);
    assert.equal(await metric(leader.url, 'natsbind_webhook_relay_received{outcome="received"}'), 0);

    // Control: an authenticated delivery to the follower does reach the leader (as a signal).
    const fresh = sim.createProject({ name: "after-flood", groupId });
    assert.equal(
      await deliverProjectCreate(follower.url, SECRET, { id: fresh.id, path: "acme/after-flood" }, "ok-1"),
      202,
    );
    await waitFor(() => live(fresh.id), {
      what: "the announced project's account",
      timeoutMs: 15_000,
      intervalMs: 50,
    });
    assert.equal(await metric(leader.url, 'natsbind_webhook_relay_received{outcome="applied"}'), 1);
    assert.equal(await metric(leader.url, 'natsbind_webhook_deliveries{outcome="received"}'), 0);
  });

  it("a Lease holder rewritten to name the attacker's listener, or a pod that is not natsbind's, receives nothing", async () => {
    const attacker = await attackerListener();
    try {
      // The attacker may create pods in natsbind's namespace, but not with natsbind's labels.
      await registerPod(core, { name: "evil", port: attacker.port, labels: { app: "evil" } });
      const leases = kc.makeApiClient(CoordinationV1Api);
      const rewrite = async (holderIdentity: string): Promise<void> => {
        await waitFor(
          async () => {
            const lease = await leases.readNamespacedLease({ name: "natsbind", namespace: POD_NAMESPACE });
            lease.spec = {
              ...lease.spec,
              holderIdentity,
              leaseDurationSeconds: 3600,
              renewTime: new V1MicroTime(),
              acquireTime: new V1MicroTime(),
            };
            await leases.replaceNamespacedLease({ name: "natsbind", namespace: POD_NAMESPACE, body: lease });
            return true;
          },
          { what: `the Lease rewritten to ${holderIdentity}`, timeoutMs: 10_000, intervalMs: 50 },
        );
      };
      const sentBefore = await metric(follower.url, 'natsbind_webhook_relay_signals{outcome="sent"}');

      await rewrite("evil_1");
      // The real leader sees another holder and stops (natsbind run exits), so from here on only
      // the attacker's listener could take a signal.
      await waitFor(async () => leader.child.exitCode !== null || leader.child.signalCode !== null, {
        what: "the replaced leader stopping",
        timeoutMs: 15_000,
        intervalMs: 50,
      });
      const one = sim.createProject({ name: "one", groupId });
      assert.equal(
        await deliverProjectCreate(follower.url, SECRET, { id: one.id, path: "acme/one" }, "evil-1"),
        202,
      );
      await waitFor(async () => follower.log().includes("pod evil lacks label"), {
        what: "the follower refusing the pod the Lease names",
        timeoutMs: 15_000,
        intervalMs: 50,
      });

      await rewrite(`x_1@http://127.0.0.1:${attacker.port}`);
      const two = sim.createProject({ name: "two", groupId });
      assert.equal(
        await deliverProjectCreate(follower.url, SECRET, { id: two.id, path: "acme/two" }, "evil-2"),
        202,
      );
      await waitFor(async () => follower.log().includes("the lease holder does not name a pod"), {
        what: "the follower refusing a holder that is an address",
        timeoutMs: 15_000,
        intervalMs: 50,
      });

      assert.deepEqual(attacker.seen, [], "the attacker's listener received no request (so no secret)");
      assert.equal(await metric(follower.url, 'natsbind_webhook_relay_signals{outcome="sent"}'), sentBefore);
      assert.equal(
        await metric(follower.url, "natsbind_webhook_relay_pending"),
        2,
        "both kept for a real leader",
      );
      assert.ok(!follower.log().includes(SECRET) && !leader.log().includes(SECRET), "no secret in any log");
    } finally {
      attacker.server.close();
    }
  });
});
