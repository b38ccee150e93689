// natsbind run in Kubernetes mode end to end: real kube-apiserver + etcd with the CRD from crds/,
// real nats-server, GitLab simulator. Bindings are applied as objects; accounts, Secrets (with
// ownerReferences), status, Events and the finalizer are read back from the apiserver.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CoreV1Api, CustomObjectsApi, type KubeConfig, type V1Secret } from "@kubernetes/client-node";
import { PLURAL } from "../../src/api/v1alpha1/crd.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import { parseConfig, type Config } from "../../src/config/config.ts";
import type { BindingStatus } from "../../src/controllers/binding/status.ts";
import { FINALIZER, type NatsBindingObject } from "../../src/k8s/bindings.ts";
import { KubeStatusWriter } from "../../src/k8s/status.ts";
import { accountSecretName, ANNOTATION_ACCOUNT } from "../../src/k8s/secret-keystore.ts";
import { decodeJwt } from "../../src/nats/claims.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { createLogger, nullLogger } from "../../src/observability/logger.ts";
import { runController, type RunningController } from "../../src/main.ts";
import { GitLabSimulator } from "../support/gitlab-sim.ts";
import { startKubeApiserver, installNatsbindCrds, type KubeApiserver } from "../support/kube.ts";
import { startKubeRig, type KubeRig } from "../support/k8s-rig.ts";
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
  deliverProjectCreate,
  leaseHolder,
  metric,
  startReplicas,
  type Replica,
} from "../support/replicas.ts";

const NS = "team-a";
const SECRET = "webhook-secret-for-k8s-tests";

function spec(group: string, deletionPolicy: "Delete" | "Retain" = "Delete"): Record<string, unknown> {
  return {
    gitlab: { group },
    roles: [
      {
        name: "ci",
        publish: { allow: ["build.status.{{project.slug}}.>"] },
        subscribe: { allow: ["_INBOX.>"] },
      },
    ],
    deletionPolicy,
  };
}

describe("natsbind run (Kubernetes mode)", { timeout: 300_000 }, () => {
  let op: TestOperator;
  let server: NatsServer;
  let sim: GitLabSimulator;
  let kube: KubeApiserver;
  let rig: KubeRig;
  let kc: KubeConfig;
  let dir: string;
  let config: Config;
  let resolver: NatsResolver;
  let controller: RunningController | undefined;
  let objects: CustomObjectsApi;
  let core: CoreV1Api;
  /** Projects of group acme that still exist. */
  const acmeProjects: number[] = [];

  const getBinding = (name: string): Promise<NatsBindingObject> =>
    objects.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: PLURAL,
      name,
    });

  const applyBinding = (name: string, body: Record<string, unknown>): Promise<NatsBindingObject> =>
    objects.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: PLURAL,
      body: { apiVersion: `${GROUP}/${VERSION}`, kind: "NatsBinding", metadata: { name }, spec: body },
    });

  const secretOf = async (binding: string, projectId: number): Promise<V1Secret | undefined> => {
    try {
      return await core.readNamespacedSecret({
        namespace: NS,
        name: accountSecretName({ binding: `${NS}/${binding}`, projectId }),
      });
    } catch {
      return undefined;
    }
  };

  async function waitForAccount(binding: string, projectId: number): Promise<string> {
    let account: string | undefined;
    await waitFor(
      async () => {
        account = (await secretOf(binding, projectId))?.metadata?.annotations?.[ANNOTATION_ACCOUNT];
        return account !== undefined && (await resolver.lookup(account)) !== undefined;
      },
      { what: `account of project ${projectId} on the server`, timeoutMs: 20_000, intervalMs: 50 },
    );
    return account!;
  }

  /** Deleted objects stay until natsbind removed its finalizer. */
  async function waitForBindingGone(name: string): Promise<void> {
    await waitFor(
      () =>
        getBinding(name).then(
          () => false,
          () => true,
        ),
      { what: `the ${name} binding gone (finalizer removed)`, timeoutMs: 15_000, intervalMs: 50 },
    );
  }

  async function readyStatus(name: string): Promise<BindingStatus | undefined> {
    const status = (await getBinding(name)).status as BindingStatus | undefined;
    return status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ? status : undefined;
  }

  before(async () => {
    rig = await startKubeRig({ namespaces: [NS, "natsbind"], name: "k8s-run", webhookSecret: SECRET });
    ({ op, kube, sim, server, kc, objects, core, dir, resolver } = rig);
    config = await rig.config({
      // Long enough to keep the lease through an apiserver restart (the two-replica suite below
      // uses short ones); a longer outage makes the leader stop, and the pod restart, by design.
      leaderElection: { leaseDuration: "60s", renewDeadline: "45s", retryPeriod: "2s" },
    });
  });

  after(async () => {
    await controller?.stop();
    await rig?.stop();
  });

  it("binding -> accounts pushed, Secrets owned by the binding, finalizer, Ready status, Events", async () => {
    const acme = sim.createGroup({ name: "Acme", path: "acme" });
    // Every binding needs a NatsBindingPolicy granting its group (these tests are not about policies).
    await applyPermissivePolicy(kc, "acme", ["acme"]);
    const api = sim.createProject({ name: "api", groupId: acme.id });
    const web = sim.createProject({ name: "web", groupId: acme.id });
    acmeProjects.push(api.id, web.id);
    const created = await applyBinding("acme", spec("acme"));

    controller = await runController(config, {
      log: process.env.K8S_TEST_LOG ? createLogger({ level: "debug" }) : nullLogger,
      identity: "in-process",
    });
    sim.addSystemHook(`${controller.url}/webhooks/gitlab`, SECRET);
    const apiAccount = await waitForAccount("acme", api.id);
    await waitForAccount("acme", web.id);
    const metrics = await (await fetch(`${controller.url}/metrics`)).text();
    assert.match(metrics, /^natsbind_reconciling 1$/m, "the leader says it reconciles");
    assert.equal(decodeJwt((await resolver.lookup(apiAccount))!).name, "acme/api");

    const secret = (await secretOf("acme", api.id))!;
    assert.deepEqual(
      secret.metadata?.ownerReferences?.map((o) => [o.kind, o.name, o.uid, o.controller]),
      [["NatsBinding", "acme", created.metadata!.uid, true]],
    );
    assert.equal(secret.metadata?.labels?.["natsbind.io/project-id"], String(api.id));
    assert.ok(secret.data?.["account.nk"], "the account seed is in the Secret");

    await waitFor(async () => (await readyStatus("acme")) !== undefined, {
      what: "Ready=True on acme",
      timeoutMs: 15_000,
      intervalMs: 50,
    });
    const obj = await getBinding("acme");
    const status = obj.status as BindingStatus;
    assert.equal(status.counts.accounts, 2);
    assert.equal(status.observedGeneration, obj.metadata!.generation);
    assert.ok(obj.metadata?.finalizers?.includes(FINALIZER), "the binding holds the cleanup finalizer");
    assert.ok(
      status.conditions.every((c) => c.status === "True"),
      JSON.stringify(status.conditions.map((c) => [c.type, c.status, c.reason])),
    );

    await waitFor(
      async () => {
        const events = await core.listNamespacedEvent({ namespace: NS });
        return events.items.some((e) => e.reason === "AccountsPushed" && e.involvedObject.name === "acme");
      },
      { what: "an AccountsPushed event", timeoutMs: 10_000, intervalMs: 50 },
    );
    // The Secret's data holds the seed; no Event or status may.
    const seed = Buffer.from(secret.data!["account.nk"]!, "base64").toString("utf8");
    const events = await core.listNamespacedEvent({ namespace: NS });
    assert.ok(!JSON.stringify(events).includes(seed) && !JSON.stringify(obj).includes(seed));
  });

  it("webhook create -> account live; rename keeps the key; destroy deletes account and Secret", async () => {
    const acme = sim.findGroupByPath("acme")!;
    const fresh = sim.createProject({ name: "worker", groupId: acme.id });
    await sim.deliverPending();
    const account = await waitForAccount("acme", fresh.id);

    sim.renameProject(fresh.id, { path: "worker-v2", name: "worker-v2" });
    await sim.deliverPending();
    await waitFor(async () => decodeJwt((await resolver.lookup(account))!).name === "acme/worker-v2", {
      what: "the renamed account",
      timeoutMs: 10_000,
      intervalMs: 50,
    });
    assert.equal(
      (await secretOf("acme", fresh.id))?.metadata?.annotations?.[ANNOTATION_ACCOUNT],
      account,
      "a rename keeps the account key",
    );

    sim.deleteProject(fresh.id);
    await sim.deliverPending();
    await waitFor(
      async () => (await resolver.lookup(account)) === undefined && !(await secretOf("acme", fresh.id)),
      {
        what: "the destroyed project's account and Secret gone",
        timeoutMs: 10_000,
        intervalMs: 50,
      },
    );
  });

  it("an overlapping binding reports Conflict (status and a Warning Event) and touches nothing", async () => {
    const before = await Promise.all(acmeProjects.map((id) => waitForAccount("acme", id)));
    await applyBinding("acme-dup", spec("acme"));
    await waitFor(
      async () => {
        const status = (await getBinding("acme-dup")).status as BindingStatus | undefined;
        return status?.conditions?.some((c) => c.type === "Ready" && c.reason === "Conflict") ?? false;
      },
      { what: "Conflict on acme-dup", timeoutMs: 15_000, intervalMs: 50 },
    );
    await waitFor(
      async () =>
        (await core.listNamespacedEvent({ namespace: NS })).items.some(
          (e) => e.reason === "Conflict" && e.type === "Warning" && e.involvedObject.name === "acme-dup",
        ),
      { what: "a Conflict event on acme-dup", timeoutMs: 10_000, intervalMs: 50 },
    );
    for (const id of acmeProjects)
      assert.equal(await secretOf("acme-dup", id), undefined, `no keys for ${id}`);
    assert.deepEqual(await Promise.all(acmeProjects.map((id) => waitForAccount("acme", id))), before);
    await objects.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: PLURAL,
      name: "acme-dup",
    });
  });

  it("a key Secret deleted by hand: a new account for the project and an AccountKeysLost Warning", async () => {
    const [projectId] = acmeProjects;
    const old = await waitForAccount("acme", projectId!);
    const name = accountSecretName({ binding: `${NS}/acme`, projectId: projectId! });
    await core.deleteNamespacedSecret({ namespace: NS, name });
    let fresh: string | undefined;
    await waitFor(
      async () => {
        fresh = (await secretOf("acme", projectId!))?.metadata?.annotations?.[ANNOTATION_ACCOUNT];
        return fresh !== undefined && fresh !== old && (await resolver.lookup(fresh)) !== undefined;
      },
      { what: "a new account for the project", timeoutMs: 15_000, intervalMs: 50 },
    );
    await waitFor(
      async () =>
        (await core.listNamespacedEvent({ namespace: NS })).items.some(
          (e) =>
            e.reason === "AccountKeysLost" &&
            e.type === "Warning" &&
            e.involvedObject.name === "acme" &&
            (e.message ?? "").includes(old),
        ),
      { what: "an AccountKeysLost event naming the old account", timeoutMs: 10_000, intervalMs: 50 },
    );
    assert.ok(await resolver.lookup(old), "the old account is left for a human to delete");
    await resolver.delete([old]);
  });

  it("survives an apiserver restart: a binding applied afterwards converges", async () => {
    const beta = sim.createGroup({ name: "Beta", path: "beta" });
    // Every binding needs a NatsBindingPolicy granting its group (these tests are not about policies).
    await applyPermissivePolicy(kc, "beta", ["beta"]);
    const one = sim.createProject({ name: "one", groupId: beta.id });
    await kube.restartApiserver();
    await applyBinding("beta", spec("beta", "Retain"));
    await waitForAccount("beta", one.id);
    await waitFor(async () => (await readyStatus("beta")) !== undefined, {
      what: "Ready=True on beta",
      timeoutMs: 15_000,
      intervalMs: 50,
    });
  });

  it("binding deletion runs the finalizer: Delete removes accounts and Secrets, then the object goes", async () => {
    const ids = [...acmeProjects];
    const accounts = await Promise.all(ids.map((id) => waitForAccount("acme", id)));
    await objects.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: PLURAL,
      name: "acme",
    });
    await waitForBindingGone("acme");
    for (const account of accounts) assert.equal(await resolver.lookup(account), undefined, account);
    for (const id of ids) assert.equal(await secretOf("acme", id), undefined, `Secret of project ${id}`);
  });

  it("retries a status write that conflicts (409) and stores it", async () => {
    const stale = await getBinding("beta");
    // Someone else changes the object: the cached resourceVersion is now stale.
    await objects.patchNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: PLURAL,
      name: "beta",
      body: [{ op: "add", path: "/metadata/labels", value: { touched: "yes" } }],
    });
    let upserted: NatsBindingObject | undefined;
    const writer = new KubeStatusWriter({
      api: objects,
      cache: { get: () => stale, upsert: (o) => (upserted = o) },
    });
    const status = { ...(stale.status as BindingStatus), observedGeneration: 99 };
    await writer.write(`${NS}/beta`, status);
    assert.equal(writer.conflicts, 1, "one 409, then a re-read and a successful write");
    assert.equal(((await getBinding("beta")).status as BindingStatus).observedGeneration, 99);
    assert.equal(upserted?.metadata?.labels?.touched, "yes");
  });

  it("binding deletion with Retain keeps accounts and keys, and frees the Secrets from the binding", async () => {
    const one = sim.findProjectByPath("beta/one")!;
    const account = await waitForAccount("beta", one.id);
    const uid = (await getBinding("beta")).metadata!.uid!;
    await objects.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: PLURAL,
      name: "beta",
    });
    await waitForBindingGone("beta");
    assert.ok(await resolver.lookup(account), "a retained account stays on the resolver");
    const secret = await secretOf("beta", one.id);
    assert.equal(secret?.metadata?.annotations?.[ANNOTATION_ACCOUNT], account, "its keys stay");
    assert.ok(
      !(secret?.metadata?.ownerReferences ?? []).some((o) => o.uid === uid),
      "no ownerReference left for garbage collection to follow",
    );
  });

  it("kubernetes.namespace scopes it: bindings elsewhere are left alone", async () => {
    await controller?.stop();
    controller = undefined;
    await core.createNamespace({ body: { metadata: { name: "team-b" } } });
    const gamma = sim.createGroup({ name: "Gamma", path: "gamma" });
    // Every binding needs a NatsBindingPolicy granting its group (these tests are not about policies).
    await applyPermissivePolicy(kc, "gamma", ["gamma"]);
    const project = sim.createProject({ name: "svc", groupId: gamma.id });
    await applyBinding("outside", spec("gamma")); // in team-a: not watched by the scoped controller
    await objects.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: "team-b",
      plural: PLURAL,
      body: {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "NatsBinding",
        metadata: { name: "inside" },
        spec: spec("gamma"),
      },
    });
    const scoped = parseConfig(
      {
        mode: "kubernetes",
        nats: natsConfigSection(op, [server.url]),
        gitlab: { url: sim.url, tokenFile: "token", resyncInterval: "1h" },
        kubernetes: {
          kubeconfig: "kubeconfig",
          namespace: "team-b",
          leaderElection: { name: "natsbind-team-b" },
        },
        http: { listen: "127.0.0.1:0" },
      },
      "scoped config",
      dir,
    );
    controller = await runController(scoped, { log: nullLogger, identity: "scoped" });
    await waitFor(
      async () => {
        try {
          const s = await core.readNamespacedSecret({
            namespace: "team-b",
            name: accountSecretName({ binding: "team-b/inside", projectId: project.id }),
          });
          const account = s.metadata?.annotations?.[ANNOTATION_ACCOUNT];
          return account !== undefined && (await resolver.lookup(account)) !== undefined;
        } catch {
          return false;
        }
      },
      { what: "the team-b binding's account", timeoutMs: 20_000, intervalMs: 50 },
    );
    const outside = await getBinding("outside");
    assert.equal(outside.status, undefined, "no status written outside team-b");
    assert.ok(!outside.metadata?.finalizers?.includes(FINALIZER), "no finalizer added outside team-b");
    assert.equal(await secretOf("outside", project.id), undefined, "no keys outside team-b");
  });
});

describe("natsbind run (Kubernetes mode): two replicas", { timeout: 300_000 }, () => {
  it("one leader reconciles; deliveries spread over both while the leader is SIGKILLed: all 2xx, all applied", async (t) => {
    // Built in its own suite so its processes and servers are its own.
    const op = await createTestOperator();
    const kube = await startKubeApiserver();
    const sim = await GitLabSimulator.start();
    const server = await startNatsServer(op.serverOptions);
    const dir = await tempDir("k8s-ha");
    let replicas: Replica[] = [];
    const resolver = await operatorResolver(op, server.url);
    try {
      const kc = kube.kubeConfig();
      const core = kc.makeApiClient(CoreV1Api);
      await installNatsbindCrds(kc);
      for (const name of [NS, "natsbind"]) await core.createNamespace({ body: { metadata: { name } } });
      await writeFile(join(dir, "kubeconfig"), kc.exportConfig());
      await writeFile(join(dir, "token"), sim.token);
      await writeFile(join(dir, "secret"), SECRET);
      const group = sim.createGroup({ name: "HA", path: "ha" });
      await applyPermissivePolicy(kc, "ha", ["ha"]);
      const first = sim.createProject({ name: "first", groupId: group.id });
      await kc.makeApiClient(CustomObjectsApi).createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: NS,
        plural: PLURAL,
        body: {
          apiVersion: `${GROUP}/${VERSION}`,
          kind: "NatsBinding",
          metadata: { name: "ha" },
          spec: spec("ha"),
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
      const [a, b] = replicas as [Replica, Replica];
      let deliveryId = 0;
      // Before any replica may have seen a holder: an authenticated delivery is answered 2xx by
      // each (it used to be 503 on a follower whose elector had not read the Lease yet).
      const early = sim.createProject({ name: "early", groupId: group.id });
      for (const r of replicas) {
        await waitFor(async () => (await fetch(`${r.url}/healthz`)).ok, {
          what: `replica ${r.index} listening`,
          timeoutMs: 30_000,
          intervalMs: 50,
        });
        const status = await deliverProjectCreate(
          r.url,
          SECRET,
          { id: early.id, path: `ha/${early.path}` },
          `early-${r.index}`,
        );
        assert.equal(status, 202, `replica ${r.index} answers an early delivery 2xx`);
      }

      const byIdentity = new Map(replicas.map((r) => [r.identity, r]));
      let leaderId: string | undefined;
      await waitFor(async () => byIdentity.has((leaderId = await leaseHolder(kc)) ?? ""), {
        what: "one replica holding the lease",
        timeoutMs: 30_000,
        intervalMs: 100,
      });
      const secretName = (projectId: number): string => accountSecretName({ binding: `${NS}/ha`, projectId });
      const accountOf = async (projectId: number): Promise<string | undefined> => {
        try {
          const s = await core.readNamespacedSecret({ namespace: NS, name: secretName(projectId) });
          return s.metadata?.annotations?.[ANNOTATION_ACCOUNT];
        } catch {
          return undefined;
        }
      };
      const live = async (projectId: number): Promise<boolean> => {
        const account = await accountOf(projectId);
        return account !== undefined && (await resolver.lookup(account)) !== undefined;
      };
      await waitFor(async () => (await live(first.id)) && (await live(early.id)), {
        what: "the first accounts live",
        timeoutMs: 30_000,
        intervalMs: 100,
      });

      // A delivery to the follower reaches the leader as a signal (resync is 1h: only the hook can).
      const leader = byIdentity.get(leaderId!)!;
      const follower = leader === a ? b : a;
      const followerMetrics = await (await fetch(`${follower.url}/metrics`)).text();
      assert.match(followerMetrics, /^natsbind_reconciling 0$/m, "the follower does not reconcile");
      sim.addSystemHook(`${follower.url}/webhooks/gitlab`, SECRET);
      const relayed = sim.createProject({ name: "relayed", groupId: group.id });
      const deliveries = await sim.deliverPending();
      assert.ok(
        deliveries.length > 0 && deliveries.every((d) => d.status === 202),
        JSON.stringify(deliveries),
      );
      await waitFor(() => live(relayed.id), {
        what: "the account of a project announced to the follower",
        timeoutMs: 15_000,
        intervalMs: 50,
      });
      assert.ok(
        (await metric(leader.url, 'natsbind_webhook_relay_received{outcome="applied"}')) >= 1,
        "the leader applied a relayed signal",
      );

      // Deliveries spread over both replicas; the leader dies (SIGKILL, the lease is not released)
      // half way. A delivery a dead replica cannot take is sent to the other one, as GitLab's retry
      // through the Service would. Every delivery must be answered 2xx, and every project applied.
      const answers: { project: number; replica: number; status: number }[] = [];
      const projects = Array.from({ length: 12 }, (_, i) =>
        sim.createProject({ name: `spread-${i}`, groupId: group.id }),
      );
      let killedAt = 0;
      for (const [i, p] of projects.entries()) {
        if (i === 6) {
          killedAt = performance.now();
          leader.child.kill("SIGKILL");
        }
        // Before the kill: alternately to each replica. After it: the survivor (the only endpoint).
        const target = replicas[i % 2]!;
        const order = i < 6 ? [target, target === a ? b : a] : [follower];
        for (const r of order) {
          try {
            const status = await deliverProjectCreate(
              r.url,
              SECRET,
              { id: p.id, path: `ha/${p.path}` },
              `spread-${++deliveryId}`,
            );
            answers.push({ project: p.id, replica: r.index, status });
            break;
          } catch {
            // The dead replica: the next one takes it.
          }
        }
      }
      const answeredWhileFollowing = (await leaseHolder(kc)) === leaderId;
      assert.deepEqual(
        answers.map((x) => x.project),
        projects.map((p) => p.id),
        "every delivery was answered",
      );
      assert.ok(
        answers.every((x) => x.status === 202),
        `every delivery answered 2xx: ${JSON.stringify(answers)}`,
      );
      await waitFor(async () => ((await leaseHolder(kc)) ?? leaderId) !== leaderId, {
        what: "the other replica holding the lease",
        timeoutMs: 15_000,
        intervalMs: 50,
      });
      const takeoverMs = performance.now() - killedAt;
      assert.ok(takeoverMs < 3_000 + 500 + 3_000, `took over in ${Math.round(takeoverMs)} ms`);
      assert.equal(await leaseHolder(kc), follower.identity, "the survivor leads");
      for (const p of projects) {
        await waitFor(() => live(p.id), {
          what: `the account of spread project ${p.path}`,
          timeoutMs: 30_000,
          intervalMs: 100,
        });
      }
      assert.ok(await live(first.id), "the first account is still there");
      if (answeredWhileFollowing) {
        // Deliveries the survivor took while the dead replica still held the lease were pending
        // there, and it applied them itself once it led.
        await waitFor(async () => (await metric(follower.url, "natsbind_webhook_relay_pending")) === 0, {
          what: "the survivor's pending signals drained",
          timeoutMs: 15_000,
          intervalMs: 50,
        });
        assert.ok(
          (await metric(follower.url, 'natsbind_webhook_relay_signals{outcome="applied_locally"}')) >= 1,
          "pending signals were applied by the new leader",
        );
      }
      t.diagnostic(
        `took over in ${Math.round(takeoverMs)} ms; survivor answered while following: ${answeredWhileFollowing}; ` +
          `applied from its queue: ${await metric(follower.url, 'natsbind_webhook_relay_signals{outcome="applied_locally"}')}`,
      );
      assert.equal(follower.child.exitCode, null, "the new leader is running");
    } finally {
      for (const r of replicas) r.child.kill("SIGKILL");
      await resolver.close();
      await server.stop();
      await sim.stop();
      await kube.stop();
      await op.remove();
      await removeDir(dir);
    }
  });
});
