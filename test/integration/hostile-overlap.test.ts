// Overlapping bindings, as an attacker (or a mistake) would make them, against real servers:
// nats-server (operator mode, full resolver), the GitLab simulator, natsbind's reconciler, and in
// Kubernetes mode a real kube-apiserver + etcd. Before the fix the binding whose key sorted first
// won, so a new binding named "aaa" took the projects of "prod" and, under deletionPolicy Delete,
// deleted prod's accounts from the resolver. Now the older binding keeps its projects, the younger
// reports Conflict, and a conflict deletes nothing on either side.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CoreV1Api, CustomObjectsApi, type KubeConfig, type V1Secret } from "@kubernetes/client-node";
import { stringify } from "yaml";
import { PLURAL } from "../../src/api/v1alpha1/crd.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import { parseConfig, type Config } from "../../src/config/config.ts";
import type { BindingStatus } from "../../src/controllers/binding/status.ts";
import type { NatsBindingObject } from "../../src/k8s/bindings.ts";
import { accountSecretName, ANNOTATION_ACCOUNT, ANNOTATION_ROLES } from "../../src/k8s/secret-keystore.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { nullLogger } from "../../src/observability/logger.ts";
import { runController, type RunningController } from "../../src/main.ts";
import { ManualClock } from "../../src/runtime/clock.ts";
import { StatusFiles } from "../../src/store/status-files.ts";
import { FIRST_SEEN_FILE } from "../../src/store/binding-first-seen.ts";
import { GitLabSimulator } from "../support/gitlab-sim.ts";
import { installNatsbindCrds, startKubeApiserver, type KubeApiserver } from "../support/kube.ts";
import { applyPermissivePolicy } from "../support/policy.ts";
import { startNatsServer, type NatsServer } from "../support/nats-server.ts";
import {
  connectWithCreds,
  createTestOperator,
  natsConfigSection,
  operatorResolver,
  roleUserCreds,
  type TestOperator,
} from "../support/operator.ts";
import { removeDir, tempDir, waitFor } from "../support/process.ts";

const SECRET = "webhook-secret-for-overlap-tests";
const WAIT = { timeoutMs: 20_000, intervalMs: 25 };

const ROLES = [
  {
    name: "ci",
    publish: { allow: ["build.status.{{project.slug}}.>"] },
    subscribe: { allow: ["_INBOX.>", "build.status.{{project.slug}}.>"] },
  },
];

function bindingYaml(name: string, group: string, deletionPolicy: "Delete" | "Retain"): string {
  return stringify({
    apiVersion: "natsbind.io/v1alpha1",
    kind: "NatsBinding",
    metadata: { name },
    spec: { gitlab: { group }, roles: ROLES, deletionPolicy },
  });
}

/** A user of the account's ci role publishes and receives on its project's subject. */
async function accountWorks(server: string, creds: Uint8Array, slug: string): Promise<void> {
  const nc = await connectWithCreds(server, creds);
  try {
    const sub = nc.subscribe(`build.status.${slug}.>`, { max: 1 });
    const got = (async () => {
      for await (const m of sub) return m.string();
    })();
    nc.publish(`build.status.${slug}.main`, "green");
    assert.equal(await got, "green");
  } finally {
    await nc.close();
  }
}

const readyOf = (status: BindingStatus | undefined) => status?.conditions?.find((c) => c.type === "Ready");

describe(
  "overlapping bindings, local mode (real nats-server and GitLab simulator)",
  { timeout: 240_000 },
  () => {
    let op: TestOperator;
    let server: NatsServer;
    let sim: GitLabSimulator;
    let dir: string;
    let config: Config;
    let resolver: NatsResolver;
    let controller: RunningController | undefined;
    const reconciled: string[] = [];
    // Controller time (first sight of a binding, requeues) is driven by the test.
    const clock = new ManualClock(Date.now());
    const started = clock.now();

    const keys = (): DirectoryKeyStore => new DirectoryKeyStore(config.keys.directory);
    const status = (key: string) => new StatusFiles(config.state.directory).read(key);
    const accountsOf = async (binding: string) =>
      new Map((await keys().list(binding)).map((s) => [s.ref.projectId, s.account]));
    const start = async () => {
      controller = await runController(config, {
        clock,
        log: nullLogger,
        onReconciled: (key) => reconciled.push(key),
      });
    };
    const credsOf = async (binding: string, projectId: number) => {
      const slot = (await keys().get({ binding, projectId }))!;
      return roleUserCreds(slot.account, slot.roleKeys.get("ci")!, { name: "job" });
    };
    async function waitForAccounts(binding: string, ids: number[]): Promise<Map<number, string>> {
      let accounts = new Map<number, string>();
      await waitFor(
        async () => {
          accounts = await accountsOf(binding);
          for (const id of ids) {
            const account = accounts.get(id);
            if (account === undefined || (await resolver.lookup(account)) === undefined) return false;
          }
          return true;
        },
        { what: `accounts of ${binding} for projects ${ids.join(", ")} on the server`, ...WAIT },
      );
      return accounts;
    }
    async function waitForReason(key: string, reason: string): Promise<BindingStatus> {
      await waitFor(async () => readyOf(await status(key))?.reason === reason, {
        what: `Ready reason ${reason} on ${key}`,
        ...WAIT,
      });
      return (await status(key))!;
    }

    before(async () => {
      op = await createTestOperator();
      server = await startNatsServer(op.serverOptions);
      sim = await GitLabSimulator.start();
      dir = await tempDir("overlap-local");
      await mkdir(join(dir, "bindings"));
      await writeFile(join(dir, "token"), sim.token);
      await writeFile(join(dir, "secret"), SECRET);
      config = parseConfig(
        {
          nats: natsConfigSection(op, [server.url]),
          gitlab: { url: sim.url, tokenFile: "token", webhookSecretFile: "secret", resyncInterval: "1h" },
          http: { listen: "127.0.0.1:0" },
        },
        "test config",
        dir,
      );
      resolver = await operatorResolver(op, server.url);
    });

    after(async () => {
      await controller?.stop();
      await resolver?.close();
      await sim?.stop();
      await server?.stop();
      await op?.remove();
      if (dir) await removeDir(dir);
    });

    it('a new binding "aaa" with Delete over prod\'s group takes nothing and deletes nothing, also after a restart', async () => {
      const payments = sim.createGroup({ name: "Payments", path: "payments" });
      const ledger = sim.createProject({ name: "ledger", groupId: payments.id });
      const gateway = sim.createProject({ name: "gateway", groupId: payments.id });
      const ids = [ledger.id, gateway.id];
      await writeFile(join(dir, "bindings", "prod.yaml"), bindingYaml("prod", "payments", "Delete"));
      await start();
      const prod = await waitForAccounts("prod", ids);
      await waitForReason("prod", "Reconciled");

      // Later (controller time), someone adds a binding whose name sorts first, over the same group.
      clock.advance(1000);
      await writeFile(join(dir, "bindings", "aaa.yaml"), bindingYaml("aaa", "payments", "Delete"));
      const conflict = await waitForReason("aaa", "Conflict");
      assert.match(readyOf(conflict)!.message, new RegExp(`${Math.min(...ids)} \\(binding prod\\)`));
      assert.deepEqual(await keys().list("aaa"), [], "aaa got no keys for prod's projects");
      for (const [id, account] of prod) {
        assert.ok(await resolver.lookup(account), `prod's account for ${id} is still on the resolver`);
        await accountWorks(server.url, await credsOf("prod", id), id === ledger.id ? "ledger" : "gateway");
      }
      assert.deepEqual(await accountsOf("prod"), prod, "prod's keys are all there");
      assert.equal(readyOf(await status("prod"))?.status, "True");

      // A restart keeps the order (first sight is stored in the key directory), whichever binding
      // the new process reconciles first.
      await controller!.stop();
      controller = undefined;
      reconciled.length = 0;
      await start();
      await waitFor(async () => reconciled.includes("aaa") && reconciled.includes("prod"), {
        what: "both bindings reconciled after the restart",
        ...WAIT,
      });
      assert.equal(readyOf(await status("aaa"))?.reason, "Conflict");
      assert.deepEqual(await keys().list("aaa"), []);
      for (const account of prod.values()) assert.ok(await resolver.lookup(account));
      assert.deepEqual(await accountsOf("prod"), prod);

      await rm(join(dir, "bindings", "aaa.yaml"));
      await waitFor(async () => (await status("aaa")) === undefined, { what: "aaa's status gone", ...WAIT });
      for (const account of prod.values())
        assert.ok(await resolver.lookup(account), "aaa's removal took nothing");
    });

    it("a younger binding that had accounts before the overlap keeps them untouched, and takes over when the older goes", async () => {
      const shop = sim.createGroup({ name: "Shop", path: "shop" });
      const team = sim.createGroup({ name: "Team", path: "team", parentId: shop.id });
      const cart = sim.createProject({ name: "cart", groupId: team.id });
      const ops = sim.createGroup({ name: "Ops", path: "ops" });
      const infra = sim.createProject({ name: "infra", groupId: ops.id });
      // "zz-old" is first seen now; "aaa-young" later, with accounts of its own for shop/team.
      await writeFile(join(dir, "bindings", "zz-old.yaml"), bindingYaml("zz-old", "ops", "Delete"));
      await waitForAccounts("zz-old", [infra.id]);
      clock.advance(1000);
      await writeFile(
        join(dir, "bindings", "aaa-young.yaml"),
        bindingYaml("aaa-young", "shop/team", "Delete"),
      );
      const young = await waitForAccounts("aaa-young", [cart.id]);
      const youngCart = young.get(cart.id)!;
      const jwtBefore = await resolver.lookup(youngCart);
      const youngCreds = await credsOf("aaa-young", cart.id);
      await accountWorks(server.url, youngCreds, "cart");

      // The older binding now selects all of shop (the cart project included): it takes the project.
      await writeFile(join(dir, "bindings", "zz-old.yaml"), bindingYaml("zz-old", "shop", "Delete"));
      const old = await waitForAccounts("zz-old", [cart.id]);
      assert.notEqual(old.get(cart.id), youngCart, "the older binding makes its own account");
      const conflict = await waitForReason("aaa-young", "Conflict");
      assert.deepEqual(
        conflict.accounts.map((a) => [a.projectId, a.account, a.state]),
        [[cart.id, youngCart, "Conflict"]],
      );
      // Under Delete, yet the younger binding's account stays exactly as it was, keys included.
      assert.equal(await resolver.lookup(youngCart), jwtBefore, "not deleted, not re-pushed");
      assert.deepEqual(await accountsOf("aaa-young"), young);
      await accountWorks(server.url, youngCreds, "cart");
      await accountWorks(server.url, await credsOf("zz-old", cart.id), "cart");

      // The older binding goes (its Delete removes its own accounts): the younger takes over, with
      // the account it had.
      const oldAccounts = [...old.values()];
      await rm(join(dir, "bindings", "zz-old.yaml"));
      await waitForReason("aaa-young", "Reconciled");
      await waitFor(
        async () => {
          for (const a of oldAccounts) if ((await resolver.lookup(a)) !== undefined) return false;
          return true;
        },
        { what: "zz-old's accounts deleted by its own Delete", ...WAIT },
      );
      assert.deepEqual(await accountsOf("aaa-young"), young, "same account key as before");
      assert.ok(await resolver.lookup(youngCart));
      await accountWorks(server.url, youngCreds, "cart");
      await rm(join(dir, "bindings", "aaa-young.yaml"));
    });

    it("a file's explicit metadata.creationTimestamp orders it: an older one takes prod's projects, prod (Delete) keeps its accounts", async () => {
      const prod = await accountsOf("prod");
      assert.equal(prod.size, 2);
      const jwts = await Promise.all([...prod.values()].map((a) => resolver.lookup(a)));
      await writeFile(
        join(dir, "bindings", "zz-admin.yaml"),
        bindingYaml("zz-admin", "payments", "Retain").replace(
          "name: zz-admin",
          'name: zz-admin\n  creationTimestamp: "2020-01-01T00:00:00Z"',
        ),
      );
      const conflict = await waitForReason("prod", "Conflict");
      assert.deepEqual(
        conflict.accounts.map((a) => a.state),
        ["Conflict", "Conflict"],
      );
      await waitForAccounts("zz-admin", [...prod.keys()]);
      assert.deepEqual(await accountsOf("prod"), prod, "prod's keys stay");
      assert.deepEqual(
        await Promise.all([...prod.values()].map((a) => resolver.lookup(a))),
        jwts,
        "prod's accounts stay on the resolver, unchanged",
      );
      await rm(join(dir, "bindings", "zz-admin.yaml"));
      await waitForReason("prod", "Reconciled");
      assert.deepEqual(await accountsOf("prod"), prod, "prod takes its projects back with the same accounts");
    });

    it("keeps first sight in the key directory (0600): prod's from the first start, removed bindings forgotten", async () => {
      const path = join(config.keys.directory, FIRST_SEEN_FILE);
      assert.equal((await stat(path)).mode & 0o777, 0o600);
      await waitFor(
        async () =>
          Object.keys((JSON.parse(await readFile(path, "utf8")) as { firstSeen: object }).firstSeen)
            .length === 1,
        { what: "removed bindings forgotten", ...WAIT },
      );
      const saved = JSON.parse(await readFile(path, "utf8")) as {
        version: number;
        firstSeen: Record<string, string>;
      };
      assert.deepEqual(saved, { version: 1, firstSeen: { prod: new Date(started).toISOString() } });
    });
  },
);

describe("overlapping bindings, Kubernetes mode (real kube-apiserver)", { timeout: 300_000 }, () => {
  // The attacker's namespace and name sort before the victim's: team-a/aaa < team-b/prod.
  const VICTIM_NS = "team-b";
  const ATTACKER_NS = "team-a";
  let op: TestOperator;
  let server: NatsServer;
  let sim: GitLabSimulator;
  let kube: KubeApiserver;
  let kc: KubeConfig;
  let dir: string;
  let config: Config;
  let resolver: NatsResolver;
  let controller: RunningController | undefined;
  let objects: CustomObjectsApi;
  let core: CoreV1Api;

  const getBinding = (namespace: string, name: string): Promise<NatsBindingObject> =>
    objects.getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL, name });
  const applyBinding = (
    namespace: string,
    name: string,
    group: string,
    deletionPolicy: "Delete" | "Retain",
  ) =>
    objects.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural: PLURAL,
      body: {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "NatsBinding",
        metadata: { name },
        spec: { gitlab: { group }, roles: ROLES, deletionPolicy },
      },
    }) as Promise<NatsBindingObject>;
  const statusOf = async (namespace: string, name: string) =>
    (await getBinding(namespace, name)).status as BindingStatus | undefined;
  const secretOf = async (
    namespace: string,
    binding: string,
    projectId: number,
  ): Promise<V1Secret | undefined> =>
    core
      .readNamespacedSecret({
        namespace,
        name: accountSecretName({ binding: `${namespace}/${binding}`, projectId }),
      })
      .catch(() => undefined);
  async function accountOf(namespace: string, binding: string, projectId: number): Promise<string> {
    let account: string | undefined;
    await waitFor(
      async () => {
        account = (await secretOf(namespace, binding, projectId))?.metadata?.annotations?.[
          ANNOTATION_ACCOUNT
        ];
        return account !== undefined && (await resolver.lookup(account)) !== undefined;
      },
      { what: `account of ${namespace}/${binding} for project ${projectId} on the server`, ...WAIT },
    );
    return account!;
  }
  /** A ci user of the account whose keys the Secret holds. */
  async function credsFromSecret(namespace: string, binding: string, projectId: number): Promise<Uint8Array> {
    const secret = (await secretOf(namespace, binding, projectId))!;
    const roles = JSON.parse(secret.metadata!.annotations![ANNOTATION_ROLES]!) as Record<string, string>;
    const seed = Buffer.from(secret.data!["role-ci.nk"]!, "base64").toString("utf8");
    const key = NKeyPair.fromSeed(seed, "account");
    assert.equal(key.publicKey, roles.ci);
    return roleUserCreds(secret.metadata!.annotations![ANNOTATION_ACCOUNT]!, key, { name: "job" });
  }

  before(async () => {
    [op, kube, sim] = await Promise.all([
      createTestOperator(),
      startKubeApiserver(),
      GitLabSimulator.start(),
    ]);
    server = await startNatsServer(op.serverOptions);
    kc = kube.kubeConfig();
    objects = kc.makeApiClient(CustomObjectsApi);
    core = kc.makeApiClient(CoreV1Api);
    await installNatsbindCrds(kc);
    for (const name of [VICTIM_NS, ATTACKER_NS, "natsbind"])
      await core.createNamespace({ body: { metadata: { name } } });
    dir = await tempDir("overlap-k8s");
    await writeFile(join(dir, "kubeconfig"), kc.exportConfig());
    await writeFile(join(dir, "token"), sim.token);
    await writeFile(join(dir, "secret"), SECRET);
    config = parseConfig(
      {
        mode: "kubernetes",
        nats: natsConfigSection(op, [server.url]),
        gitlab: { url: sim.url, tokenFile: "token", webhookSecretFile: "secret", resyncInterval: "1h" },
        kubernetes: {
          kubeconfig: "kubeconfig",
          leaderElection: { leaseDuration: "60s", renewDeadline: "45s", retryPeriod: "2s" },
        },
        http: { listen: "127.0.0.1:0" },
      },
      "test config",
      dir,
    );
    resolver = await operatorResolver(op, server.url);
  });

  after(async () => {
    await controller?.stop();
    await resolver?.close();
    await sim?.stop();
    await server?.stop();
    await kube?.stop();
    await op?.remove();
    if (dir) await removeDir(dir);
  });

  it('team-a\'s binding "aaa" (Delete) created after team-b\'s "prod" over the same group: prod keeps everything', async () => {
    const payments = sim.createGroup({ name: "Payments", path: "payments" });
    const ledger = sim.createProject({ name: "ledger", groupId: payments.id });
    const gateway = sim.createProject({ name: "gateway", groupId: payments.id });
    const ids = [ledger.id, gateway.id];
    // A policy that lets every namespace bind payments (a mistake, or a shared group): overlap by
    // age is then the line of defence this test is about.
    await applyPermissivePolicy(kc, "payments", ["payments"]);
    const prodObj = await applyBinding(VICTIM_NS, "prod", "payments", "Delete");
    controller = await runController(config, { log: nullLogger, identity: "overlap-test" });
    const prod = await Promise.all(ids.map((id) => accountOf(VICTIM_NS, "prod", id)));
    await waitFor(async () => readyOf(await statusOf(VICTIM_NS, "prod"))?.status === "True", {
      what: "prod Ready",
      ...WAIT,
    });
    // creationTimestamp has 1 s resolution: the attacker's binding must be created in a later
    // second to be younger (the same second would be a tie, broken by key).
    const prodCreated = Date.parse(prodObj.metadata!.creationTimestamp as unknown as string);
    await waitFor(async () => Date.now() >= prodCreated + 1000, { what: "the next second", ...WAIT });

    await applyBinding(ATTACKER_NS, "aaa", "payments", "Delete");
    await waitFor(async () => readyOf(await statusOf(ATTACKER_NS, "aaa"))?.reason === "Conflict", {
      what: "Conflict on team-a/aaa",
      ...WAIT,
    });
    await waitFor(
      async () =>
        (await core.listNamespacedEvent({ namespace: ATTACKER_NS })).items.some(
          (e) => e.reason === "Conflict" && e.type === "Warning" && e.involvedObject.name === "aaa",
        ),
      { what: "a Conflict Warning event on team-a/aaa", ...WAIT },
    );
    // Nothing about team-b leaks into team-a: not in status, not in Events.
    const attackerView = JSON.stringify([
      await statusOf(ATTACKER_NS, "aaa"),
      (await core.listNamespacedEvent({ namespace: ATTACKER_NS })).items.map((e) => e.message),
    ]);
    assert.match(attackerView, /another binding/);
    assert.doesNotMatch(attackerView, /team-b|\bprod\b/);
    assert.deepEqual(
      (await core.listNamespacedSecret({ namespace: ATTACKER_NS })).items.map((s) => s.metadata?.name),
      [],
      "no keys in team-a",
    );

    // prod keeps everything: accounts on the resolver, Secrets, Ready, working users.
    assert.deepEqual(await Promise.all(ids.map((id) => accountOf(VICTIM_NS, "prod", id))), prod);
    assert.equal(readyOf(await statusOf(VICTIM_NS, "prod"))?.status, "True");
    await accountWorks(server.url, await credsFromSecret(VICTIM_NS, "prod", ledger.id), "ledger");

    // Deleting the attacker's binding (Delete) takes nothing of prod's either.
    await objects.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ATTACKER_NS,
      plural: PLURAL,
      name: "aaa",
    });
    await waitFor(
      () =>
        getBinding(ATTACKER_NS, "aaa").then(
          () => false,
          () => true,
        ),
      { what: "team-a/aaa gone", ...WAIT },
    );
    for (const account of prod) assert.ok(await resolver.lookup(account), `${account} still on the resolver`);
    await accountWorks(server.url, await credsFromSecret(VICTIM_NS, "prod", gateway.id), "gateway");
  });
});
