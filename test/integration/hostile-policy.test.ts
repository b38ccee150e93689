// Issue 9, finding 2 (the policy part), as an attacker runs it: a tenant who may create NatsBindings
// in namespace team-a tries to bind team B's GitLab group and one of its projects, to exceed the
// ceilings of its policy, and to use a group re-created at a granted path. Real kube-apiserver +
// etcd (both CRDs), real nats-server (operator mode, full resolver), GitLab simulator, natsbind run
// in Kubernetes mode. Each attack must end Forbidden with nothing created, pushed or deleted, and no
// status naming a project of team B; a granted binding works; a rename keeps the grant.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  PatchStrategy,
  setHeaderOptions,
  type CoreV1Api,
  type CustomObjectsApi,
  type KubeConfig,
} from "@kubernetes/client-node";
import { PLURAL } from "../../src/api/v1alpha1/crd.ts";
import { POLICY_PLURAL } from "../../src/api/v1alpha1/policy.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import type { BindingStatus, Condition } from "../../src/controllers/binding/status.ts";
import type { NatsBindingObject } from "../../src/k8s/bindings.ts";
import { ANNOTATION_ACCOUNT, LABEL_BINDING, accountSecretName } from "../../src/k8s/secret-keystore.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { createLogger, nullLogger } from "../../src/observability/logger.ts";
import { runController, type RunningController } from "../../src/main.ts";
import type { GitLabSimulator } from "../support/gitlab-sim.ts";
import { startKubeRig, type KubeRig } from "../support/k8s-rig.ts";
import { createPolicy, policyGroupIds, waitForPolicyResolved } from "../support/policy.ts";
import { waitFor } from "../support/process.ts";

const SECRET = "webhook-secret-for-policy-tests";
const WAIT = { timeoutMs: 20_000, intervalMs: 50 };

describe("NatsBindingPolicy against a hostile tenant (Kubernetes mode)", { timeout: 300_000 }, () => {
  let sim: GitLabSimulator;
  let rig: KubeRig;
  let kc: KubeConfig;
  let resolver: NatsResolver;
  let controller: RunningController | undefined;
  let objects: CustomObjectsApi;
  let core: CoreV1Api;
  // acme -> team-a (api), acme -> team-b (billing, ledger)
  let teamA: { id: number };
  let teamB: { id: number };
  let api: { id: number };
  let billing: { id: number };
  let ledger: { id: number };

  const spec = (gitlab: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
    gitlab,
    roles: [{ name: "ci", publish: { allow: ["build.{{project.slug}}.>"] } }],
    deletionPolicy: "Delete",
    limits: { connections: 50 },
    ...extra,
  });

  const applyBinding = (namespace: string, name: string, body: Record<string, unknown>) =>
    objects.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural: PLURAL,
      body: { apiVersion: `${GROUP}/${VERSION}`, kind: "NatsBinding", metadata: { name }, spec: body },
    });

  const getBinding = (namespace: string, name: string): Promise<NatsBindingObject> =>
    objects.getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL, name });

  const ready = async (namespace: string, name: string): Promise<Condition | undefined> =>
    ((await getBinding(namespace, name)).status as BindingStatus | undefined)?.conditions?.find(
      (c) => c.type === "Ready",
    );

  async function waitForReason(namespace: string, name: string, reason: string): Promise<BindingStatus> {
    await waitFor(async () => (await ready(namespace, name))?.reason === reason, {
      what: `${namespace}/${name} Ready reason ${reason}`,
      ...WAIT,
    });
    return (await getBinding(namespace, name)).status as BindingStatus;
  }

  async function accountOf(
    namespace: string,
    binding: string,
    projectId: number,
  ): Promise<string | undefined> {
    try {
      const s = await core.readNamespacedSecret({
        namespace,
        name: accountSecretName({ binding: `${namespace}/${binding}`, projectId }),
      });
      return s.metadata?.annotations?.[ANNOTATION_ACCOUNT];
    } catch {
      return undefined;
    }
  }

  async function waitForLiveAccount(namespace: string, binding: string, projectId: number): Promise<string> {
    let account: string | undefined;
    await waitFor(
      async () =>
        (account = await accountOf(namespace, binding, projectId)) !== undefined &&
        (await resolver.lookup(account)) !== undefined,
      { what: `account of project ${projectId} (${namespace}/${binding}) live`, ...WAIT },
    );
    return account!;
  }

  const secretsOf = async (namespace: string, binding: string) =>
    (await core.listNamespacedSecret({ namespace, labelSelector: `${LABEL_BINDING}=${binding}` })).items;

  /**
   * A Forbidden binding: no project, no account in its status, no key Secret (or, for one that had
   * accounts while it was granted, the same Secrets as before), a Warning Event; returns the status
   * and Events as text.
   */
  async function assertForbidden(
    namespace: string,
    name: string,
    message: RegExp,
    secretsBefore: string[] = [],
  ): Promise<string> {
    const status = await waitForReason(namespace, name, "Forbidden");
    const readyCondition = status.conditions.find((c) => c.type === "Ready")!;
    assert.equal(readyCondition.status, "False");
    assert.match(readyCondition.message, message);
    assert.deepEqual(status.accounts, [], "the status lists no account and no project");
    assert.deepEqual(status.counts, {
      projects: 0,
      accounts: 0,
      pushed: 0,
      upToDate: 0,
      retained: 0,
      problems: 0,
    });
    assert.deepEqual(
      (await secretsOf(namespace, name)).map((x) => x.metadata?.name).sort(),
      secretsBefore,
      "no key Secret was created or deleted",
    );
    await waitFor(
      async () =>
        (await core.listNamespacedEvent({ namespace })).items.some(
          (e) => e.reason === "Forbidden" && e.type === "Warning" && e.involvedObject.name === name,
        ),
      { what: `a Warning Event Forbidden on ${namespace}/${name}`, ...WAIT },
    );
    const events = (await core.listNamespacedEvent({ namespace })).items.filter(
      (e) => e.involvedObject.name === name,
    );
    return JSON.stringify(status) + JSON.stringify(events);
  }

  /** Touching a policy's annotations makes natsbind check its granted ids again (rename, deletion). */
  async function touchPolicy(name: string, value: string): Promise<void> {
    await objects.patchClusterCustomObject(
      {
        group: GROUP,
        version: VERSION,
        plural: POLICY_PLURAL,
        name,
        body: { metadata: { annotations: { "example.com/recheck": value } } },
      },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
  }

  before(async () => {
    rig = await startKubeRig({
      namespaces: ["team-a", "team-b", "team-c", "natsbind"],
      name: "hostile-policy",
      webhookSecret: SECRET,
    });
    ({ sim, kc, objects, core, resolver } = rig);

    const acme = sim.createGroup({ name: "Acme", path: "acme" });
    teamA = sim.createGroup({ name: "Team A", path: "team-a", parentId: acme.id });
    teamB = sim.createGroup({ name: "Team B", path: "team-b", parentId: acme.id });
    api = sim.createProject({ name: "api", groupId: teamA.id });
    billing = sim.createProject({ name: "billing", groupId: teamB.id });
    ledger = sim.createProject({ name: "ledger", groupId: teamB.id });

    const config = await rig.config();
    controller = await runController(config, {
      log: process.env.K8S_TEST_LOG ? createLogger({ level: "debug" }) : nullLogger,
      identity: "policy-test",
    });
    sim.addSystemHook(`${controller.url}/webhooks/gitlab`, SECRET);
  });

  after(async () => {
    await controller?.stop();
    await rig?.stop();
  });

  it("a binding with no policy at all is Forbidden; once a policy grants its group it works", async () => {
    const accountsBefore = new Set(await resolver.list());
    // Team A binds its own group by id (so that a rename later changes nothing it wrote).
    await applyBinding("team-a", "own", spec({ group: teamA.id }));
    const text = await assertForbidden("team-a", "own", /no NatsBindingPolicy applies to namespace team-a/);
    assert.doesNotMatch(text, /acme\/team-a\/api/, "no project path in status or Events");
    assert.deepEqual(new Set(await resolver.list()), accountsBefore, "no account pushed");

    // The admin grants team-a its group, with a ceiling on connections.
    await createPolicy(kc, "team-a", {
      namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "team-a" } },
      gitlab: { groups: ["acme/team-a"] },
      ceilings: { deletionPolicies: ["Delete", "Retain"], limits: { connections: 100 } },
    });
    await waitForPolicyResolved(kc, "team-a", ["acme/team-a"]);
    assert.equal((await policyGroupIds(kc, "team-a")).get("acme/team-a"), teamA.id, "the grant is the id");
    // Retried because the policy changed (no edit of the binding).
    await waitForLiveAccount("team-a", "own", api.id);
    await waitForReason("team-a", "own", "Reconciled");
  });

  it("team A binding team B's group or one of its projects: Forbidden; team B keeps its accounts", async () => {
    // Team B, granted by its own policy, owns its projects' accounts.
    await createPolicy(kc, "team-b", {
      namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "team-b" } },
      gitlab: { groups: ["acme/team-b"] },
    });
    await waitForPolicyResolved(kc, "team-b", ["acme/team-b"]);
    await applyBinding("team-b", "b", spec({ group: "acme/team-b" }));
    const billingAccount = await waitForLiveAccount("team-b", "b", billing.id);
    const ledgerAccount = await waitForLiveAccount("team-b", "b", ledger.id);
    await waitForReason("team-b", "b", "Reconciled");
    const jwtsBefore = await Promise.all([billingAccount, ledgerAccount].map((a) => resolver.lookup(a)));
    const accountsBefore = new Set(await resolver.list());

    // The attack: "team-a/..." sorts before "team-b/b", which used to win the overlap, and Delete
    // used to remove the loser's accounts. By path, by id, and a single project.
    await applyBinding("team-a", "steal-group", spec({ group: "acme/team-b" }));
    await applyBinding("team-a", "steal-group-id", spec({ group: teamB.id }));
    await applyBinding("team-a", "steal-project", spec({ project: "acme/team-b/billing" }));
    await applyBinding("team-a", "steal-project-id", spec({ project: billing.id }));
    // A group that does not exist reads exactly like a foreign one: nothing to probe.
    await applyBinding("team-a", "probe-missing", spec({ group: "acme/no-such-group" }));
    const messages = new Set<string>();
    for (const name of [
      "steal-group",
      "steal-group-id",
      "steal-project",
      "steal-project-id",
      "probe-missing",
    ]) {
      const text = await assertForbidden("team-a", name, /no NatsBindingPolicy grants namespace team-a/);
      assert.doesNotMatch(text, /billing|ledger|acme\/team-b\//, `${name}: no project of team B named`);
      for (const id of [billing.id, ledger.id]) {
        assert.ok(!text.includes(`"projectId":${id}`), `${name}: no project id of team B`);
      }
      messages.add((await ready("team-a", name))!.message);
    }
    assert.equal(messages.size, 1, "every refusal reads the same");

    // Team B is untouched: same accounts, same JWTs, still Ready (no Conflict from the refused bindings).
    assert.deepEqual(new Set(await resolver.list()), accountsBefore, "no account pushed or deleted");
    assert.deepEqual(
      await Promise.all([billingAccount, ledgerAccount].map((a) => resolver.lookup(a))),
      jwtsBefore,
    );
    // A webhook makes team B's binding look again with the refused ones present: no Conflict.
    const extra = sim.createProject({ name: "reports", groupId: teamB.id });
    await sim.deliverPending();
    await waitForLiveAccount("team-b", "b", extra.id);
    assert.equal((await ready("team-b", "b"))?.reason, "Reconciled");
    assert.equal(await accountOf("team-a", "steal-group", extra.id), undefined);
  });

  it("a binding above its policy's ceilings is Forbidden and creates nothing", async () => {
    await applyBinding("team-a", "greedy", spec({ group: "acme/team-a" }, { limits: { connections: 1000 } }));
    await assertForbidden("team-a", "greedy", /spec\.limits\.connections 1000 is above the maximum 100/);
    await applyBinding("team-a", "unlimited", spec({ group: "acme/team-a" }, { limits: {} }));
    await assertForbidden("team-a", "unlimited", /spec\.limits\.connections must be set \(at most 100\)/);
    assert.equal(await accountOf("team-a", "greedy", api.id), undefined);
  });

  it("a namespace gains a policy by its labels: relabelling it retries its bindings", async () => {
    const teamC = sim.createGroup({
      name: "Team C",
      path: "team-c",
      parentId: sim.findGroupByPath("acme")!.id,
    });
    const tool = sim.createProject({ name: "tool", groupId: teamC.id });
    await createPolicy(kc, "by-label", {
      namespaceSelector: { matchExpressions: [{ key: "example.com/team", operator: "In", values: ["c"] }] },
      gitlab: { groups: ["acme/team-c"] },
    });
    await waitForPolicyResolved(kc, "by-label", ["acme/team-c"]);
    await applyBinding("team-c", "c", spec({ group: "acme/team-c" }));
    await assertForbidden("team-c", "c", /no NatsBindingPolicy applies to namespace team-c/);
    await core.patchNamespace(
      { name: "team-c", body: { metadata: { labels: { "example.com/team": "c" } } } },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    await waitForLiveAccount("team-c", "c", tool.id);
  });

  it("a rename of the granted group keeps the grant (it is the group id)", async () => {
    sim.renameGroup(teamA.id, { path: "team-alpha", name: "Team Alpha" });
    await sim.deliverPending();
    await touchPolicy("team-a", "after-rename");
    await waitFor(
      async () => {
        const obj = (await objects.getClusterCustomObject({
          group: GROUP,
          version: VERSION,
          plural: POLICY_PLURAL,
          name: "team-a",
        })) as { status?: { groups?: { path: string; id: number; currentPath?: string }[] } };
        return obj.status?.groups?.[0]?.currentPath === "acme/team-alpha";
      },
      { what: "the policy's status showing the group's new path", ...WAIT },
    );
    assert.equal((await policyGroupIds(kc, "team-a")).get("acme/team-a"), teamA.id, "same id, still granted");
    // The binding keeps working in the renamed group: a new project gets its account.
    const worker = sim.createProject({ name: "worker", groupId: teamA.id });
    await sim.deliverPending();
    await waitForLiveAccount("team-a", "own", worker.id);
    assert.equal((await ready("team-a", "own"))?.reason, "Reconciled");
  });

  it("a group re-created at the granted path (a new id) is not granted; a deleted grant is reported", async () => {
    // acme/team-a is free since the rename: someone creates a new group there.
    const imposter = sim.createGroup({
      name: "Team A",
      path: "team-a",
      parentId: sim.findGroupByPath("acme")!.id,
    });
    assert.notEqual(imposter.id, teamA.id);
    const bait = sim.createProject({ name: "bait", groupId: imposter.id });
    await sim.deliverPending();
    await applyBinding("team-a", "recreated", spec({ group: "acme/team-a" }));
    await assertForbidden("team-a", "recreated", /no NatsBindingPolicy grants namespace team-a/);
    assert.equal(await accountOf("team-a", "recreated", bait.id), undefined);

    // The original group is deleted: the policy keeps its id (granting nothing) and says so.
    const ownAccounts = await Promise.all([api.id].map((id) => accountOf("team-a", "own", id)));
    const ownSecrets = (await secretsOf("team-a", "own")).map((x) => x.metadata?.name ?? "").sort();
    assert.equal(ownSecrets.length, 2, "api and worker");
    sim.deleteGroup(teamA.id);
    await touchPolicy("team-a", "after-delete");
    await waitFor(
      async () => {
        const obj = (await objects.getClusterCustomObject({
          group: GROUP,
          version: VERSION,
          plural: POLICY_PLURAL,
          name: "team-a",
        })) as { status?: { conditions?: Condition[] } };
        return obj.status?.conditions?.find((c) => c.type === "Ready")?.reason === "GroupNotFound";
      },
      { what: "the policy reporting GroupNotFound", ...WAIT },
    );
    assert.equal(
      (await policyGroupIds(kc, "team-a")).get("acme/team-a"),
      teamA.id,
      "not re-resolved to the new group",
    );
    // The re-created group is still not granted, even after the policy was looked at again.
    await assertForbidden("team-a", "recreated", /no NatsBindingPolicy grants namespace team-a/);
    // The binding that lost its group lost its grant: Forbidden, and its accounts stay as they are.
    await assertForbidden("team-a", "own", /no NatsBindingPolicy grants namespace team-a/, ownSecrets);
    for (const account of ownAccounts) {
      assert.ok(
        account && (await resolver.lookup(account)) !== undefined,
        "accounts made while granted stay",
      );
    }
  });
});
