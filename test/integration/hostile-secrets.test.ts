// Issue 9, finding 1, end to end: a tenant who may edit Secrets in its own namespace forges key
// Secrets to take over or delete accounts natsbind never managed. Real kube-apiserver + etcd (CRD
// from crds/), real nats-server (operator mode, full resolver), GitLab simulator, natsbind run in
// Kubernetes mode. Each attack is run as the issue saw it and must now do no harm: the foreign
// account's JWT is unchanged and keeps working, the attacker's users cannot connect to it, the
// binding's own accounts keep working, and status + a Warning Event say what was refused.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import type { CoreV1Api, CustomObjectsApi, KubeConfig, V1Secret } from "@kubernetes/client-node";
import { PLURAL } from "../../src/api/v1alpha1/crd.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import type { Config } from "../../src/config/config.ts";
import type { BindingStatus } from "../../src/controllers/binding/status.ts";
import type { NatsBindingObject } from "../../src/k8s/bindings.ts";
import { ANNOTATION_ACCOUNT, accountSecretLabels, accountSecretName } from "../../src/k8s/secret-keystore.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { createLogger, nullLogger } from "../../src/observability/logger.ts";
import { runController, type RunningController } from "../../src/main.ts";
import type { GitLabSimulator } from "../support/gitlab-sim.ts";
import { startKubeRig, type KubeRig } from "../support/k8s-rig.ts";
import { applyPermissivePolicy } from "../support/policy.ts";
import type { NatsServer } from "../support/nats-server.ts";
import {
  connectWithCreds,
  projectAccount,
  roleUserCreds,
  scopedUserCreds,
  type TestAccount,
  type TestOperator,
} from "../support/operator.ts";
import { waitFor } from "../support/process.ts";

const NS = "team-a";
const BINDING = "app";
const SECRET = "webhook-secret-for-hostile-tests";
const SEED_SHAPE = /S[OAUNCPX][A-Z2-7]{56}/;

const ready = (obj: NatsBindingObject) =>
  (obj.status as BindingStatus | undefined)?.conditions?.find((c) => c.type === "Ready");

const b64 = (key: NKeyPair): string => Buffer.from(key.getSeed()).toString("base64");

describe("hostile tenant: forged key Secrets (issue 9, finding 1)", { timeout: 300_000 }, () => {
  let op: TestOperator;
  let server: NatsServer;
  let sim: GitLabSimulator;
  let rig: KubeRig;
  let kc: KubeConfig;
  let config: Config;
  let resolver: NatsResolver;
  let controller: RunningController | undefined;
  let objects: CustomObjectsApi;
  let core: CoreV1Api;
  /** The binding's own projects: their accounts must keep working through every attack. */
  const projects: number[] = [];

  const getBinding = (): Promise<NatsBindingObject> =>
    objects.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: PLURAL,
      name: BINDING,
    });

  const secretName = (projectId: number): string =>
    accountSecretName({ binding: `${NS}/${BINDING}`, projectId });
  const readSecret = (projectId: number): Promise<V1Secret> =>
    core.readNamespacedSecret({ namespace: NS, name: secretName(projectId) });

  async function waitForAccount(projectId: number): Promise<string> {
    let account: string | undefined;
    await waitFor(
      async () => {
        const secret = await readSecret(projectId).catch(() => undefined);
        account = secret?.metadata?.annotations?.[ANNOTATION_ACCOUNT];
        return account !== undefined && (await resolver.lookup(account)) !== undefined;
      },
      { what: `account of project ${projectId} on the server`, timeoutMs: 20_000, intervalMs: 50 },
    );
    return account!;
  }

  /** The admin's account, made with the operator (same signing key natsbind uses), no natsbind tags. */
  async function adminAccount(name: string): Promise<TestAccount> {
    const acc = projectAccount(op, name);
    await resolver.push(acc.jwt);
    await assertUsable(acc);
    return acc;
  }

  /** A user of the admin's account connects (the account works). */
  async function assertUsable(acc: TestAccount): Promise<void> {
    const nc = await connectWithCreds(server.url, scopedUserCreds(acc, ["project:x"]));
    await nc.flush();
    await nc.close();
  }

  /** Every account of the binding's own projects is on the resolver and a user of its ci key connects. */
  async function assertOwnAccountsWork(): Promise<void> {
    for (const id of projects) {
      const secret = await readSecret(id);
      const account = secret.metadata!.annotations![ANNOTATION_ACCOUNT]!;
      assert.ok(await resolver.lookup(account), `account of project ${id} on the resolver`);
      const ci = NKeyPair.fromSeed(Buffer.from(secret.data!["role-ci.nk"]!, "base64"), "account");
      const nc = await connectWithCreds(server.url, roleUserCreds(account, ci));
      await nc.flush();
      await nc.close();
    }
  }

  /** How often Warning Events of `reason` naming every needle were recorded so far (counts included). */
  async function warnings(reason: string, needles: string[]): Promise<number> {
    return (await core.listNamespacedEvent({ namespace: NS })).items
      .filter(
        (e) =>
          e.type === "Warning" &&
          e.reason === reason &&
          e.involvedObject.name === BINDING &&
          needles.every((n) => (e.message ?? "").includes(n)),
      )
      .reduce((sum, e) => sum + (e.count ?? 1), 0);
  }

  /**
   * Status says Ready=False for `reason`, and a Warning Event of that reason naming every needle
   * was recorded after `before` (warnings() taken before the attack): this attack's, not an older one's.
   */
  async function assertReported(reason: string, needles: string[], before: number): Promise<BindingStatus> {
    await waitFor(async () => (await warnings(reason, needles)) > before, {
      what: `a new ${reason} Warning naming ${needles.join(", ")}`,
      timeoutMs: 20_000,
      intervalMs: 50,
    });
    let status: BindingStatus | undefined;
    await waitFor(
      async () => {
        status = (await getBinding()).status as BindingStatus | undefined;
        const r = status?.conditions?.find((c) => c.type === "Ready");
        return r?.status === "False" && r.reason === reason;
      },
      { what: `Ready=False ${reason}`, timeoutMs: 20_000, intervalMs: 50 },
    );
    const events = await core.listNamespacedEvent({ namespace: NS });
    assert.doesNotMatch(JSON.stringify(events), SEED_SHAPE, "no seed in any Event");
    assert.doesNotMatch(JSON.stringify(status), SEED_SHAPE, "no seed in the status");
    return status!;
  }

  /** The tenant puts its Secret back: trusted again, the binding Ready, its accounts working. */
  async function restore(original: V1Secret): Promise<void> {
    const name = original.metadata!.name!;
    const live = await core.readNamespacedSecret({ namespace: NS, name });
    await core.replaceNamespacedSecret({
      namespace: NS,
      name,
      body: {
        ...live,
        metadata: { ...live.metadata, annotations: original.metadata!.annotations },
        data: original.data,
      },
    });
    await waitFor(async () => ready(await getBinding())?.status === "True", {
      what: "Ready=True again",
      timeoutMs: 20_000,
      intervalMs: 50,
    });
    await assertOwnAccountsWork();
  }

  async function refused(acc: TestAccount, key: NKeyPair): Promise<void> {
    await assert.rejects(
      connectWithCreds(server.url, roleUserCreds(acc.account.publicKey, key)),
      /Authorization Violation/i,
      "a user signed by the attacker's key cannot connect to the foreign account",
    );
  }

  before(async () => {
    // natsbind (the Lease) and the tenant.
    rig = await startKubeRig({ namespaces: [NS, "natsbind"], name: "hostile", webhookSecret: SECRET });
    ({ op, sim, server, kc, objects, core, resolver } = rig);
    config = await rig.config({
      leaderElection: { leaseDuration: "60s", renewDeadline: "45s", retryPeriod: "2s" },
    });

    const group = sim.createGroup({ name: "Team A", path: "team-a" });
    for (const name of ["web", "api"]) projects.push(sim.createProject({ name, groupId: group.id }).id);
    await applyPermissivePolicy(kc, "team-a", ["team-a"]);
    await objects.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: PLURAL,
      body: {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "NatsBinding",
        metadata: { name: BINDING },
        spec: {
          gitlab: { group: "team-a" },
          roles: [
            { name: "ci", publish: { allow: ["ci.{{project.slug}}.>"] }, subscribe: { allow: ["_INBOX.>"] } },
          ],
          deletionPolicy: "Delete",
        },
      },
    });
    controller = await runController(config, {
      log: process.env.K8S_TEST_LOG ? createLogger({ level: "debug" }) : nullLogger,
      identity: "in-process",
    });
    sim.addSystemHook(`${controller.url}/webhooks/gitlab`, SECRET);
    for (const id of projects) await waitForAccount(id);
    await assertOwnAccountsWork();
  });

  after(async () => {
    await controller?.stop();
    await rig?.stop();
  });

  it("(a) a slot Secret pointed at finance's account with the attacker's ci key takes nothing", async () => {
    const finance = await adminAccount("finance");
    const attacker = NKeyPair.generate("account");
    const victim = projects[0]!;
    const original = await readSecret(victim);
    const ownAccount = original.metadata!.annotations![ANNOTATION_ACCOUNT]!;
    const ownJwt = await resolver.lookup(ownAccount);

    // As seen in the issue: annotations only. Then the variant with the attacker's own role seed,
    // which derives the claimed role key, while account.nk still does not derive finance's key.
    const variants: Array<{ what: string; data?: Record<string, string> }> = [
      { what: "annotations only" },
      { what: "with the attacker's role seed", data: { "role-ci.nk": b64(attacker) } },
    ];
    for (const variant of variants) {
      const needles = [`Secret ${NS}/${secretName(victim)}`, finance.account.publicKey];
      const before = await warnings("UntrustedKeys", needles);
      const live = await readSecret(victim);
      live.metadata!.annotations![ANNOTATION_ACCOUNT] = finance.account.publicKey;
      live.metadata!.annotations!["natsbind.io/roles"] = JSON.stringify({ ci: attacker.publicKey });
      live.data = { ...live.data, ...variant.data };
      await core.replaceNamespacedSecret({ namespace: NS, name: secretName(victim), body: live });

      const status = await assertReported("UntrustedKeys", needles, before);
      const problem = status.accounts.find((a) => a.projectId === victim);
      assert.equal(problem?.state, "Problem", variant.what);
      assert.match(problem?.message ?? "", new RegExp(`not ${finance.account.publicKey}`), variant.what);
      assert.equal(
        await resolver.lookup(finance.account.publicKey),
        finance.jwt,
        `finance unchanged (${variant.what})`,
      );
      await refused(finance, attacker);
      await assertUsable(finance);
      assert.equal(await resolver.lookup(ownAccount), ownJwt, "the slot's own account is left as it was");
      await restore(original);
    }
  });

  it("(a') a consistent slot holding the seed of an account natsbind does not own: AccountNotOwned", async () => {
    // The tenant holds the seed of "shared", an account the admin made and handed over. Its seeds
    // derive every key it names, so only the resolver's JWT (no natsbind tags) says it is not ours.
    const shared = await adminAccount("shared");
    const attacker = NKeyPair.generate("account");
    const victim = projects[1]!;
    const original = await readSecret(victim);
    const needles = [shared.account.publicKey];
    const before = await warnings("AccountNotOwned", needles);
    const live = await readSecret(victim);
    live.metadata!.annotations![ANNOTATION_ACCOUNT] = shared.account.publicKey;
    live.metadata!.annotations!["natsbind.io/roles"] = JSON.stringify({ ci: attacker.publicKey });
    live.data = { "account.nk": b64(shared.account), "role-ci.nk": b64(attacker) };
    await core.replaceNamespacedSecret({ namespace: NS, name: secretName(victim), body: live });

    const status = await assertReported("AccountNotOwned", needles, before);
    const problem = status.accounts.find((a) => a.projectId === victim);
    assert.equal(problem?.account, shared.account.publicKey);
    assert.equal(problem?.state, "Problem");
    assert.equal(await resolver.lookup(shared.account.publicKey), shared.jwt, "shared unchanged");
    await refused(shared, attacker);
    await assertUsable(shared);
    await restore(original);
  });

  it("(c) forged rotation state (a listed key without its seed, another key's seed, bad revocations) takes nothing", async () => {
    const attacker = NKeyPair.generate("account");
    const other = NKeyPair.generate("account");
    const victim = projects[0]!;
    const original = await readSecret(victim);
    const ownAccount = original.metadata!.annotations![ANNOTATION_ACCOUNT]!;
    const ownJwt = await resolver.lookup(ownAccount);
    const seed = new TextDecoder().decode(attacker.getSeed());
    const variants: Array<{
      what: string;
      annotations?: Record<string, string>;
      data?: Record<string, string>;
      needle: string;
      message: RegExp;
    }> = [
      {
        what: "the attacker's key listed as prepared, without its seed",
        annotations: {
          "natsbind.io/rotation": JSON.stringify({ ci: { prepared: { key: attacker.publicKey, since: 1 } } }),
        },
        needle: attacker.publicKey,
        message: new RegExp(`has no key-${attacker.publicKey}.nk`),
      },
      {
        what: "a retiring key stored with the seed of another key",
        annotations: {
          "natsbind.io/rotation": JSON.stringify({
            ci: { retiring: [{ key: attacker.publicKey, since: 1, notBefore: 2 }] },
          }),
        },
        data: { [`key-${attacker.publicKey}.nk`]: b64(other) },
        needle: attacker.publicKey,
        message: new RegExp(`holds the seed of ${other.publicKey}, not ${attacker.publicKey}`),
      },
      {
        what: "revocations.json holding a seed where a user key belongs",
        data: { "revocations.json": Buffer.from(JSON.stringify({ [seed]: 1 })).toString("base64") },
        needle: "revocations.json",
        message: /revocations.json: \(key\): not a user public key/,
      },
      {
        what: "an oversized revocations.json",
        data: { "revocations.json": Buffer.from("x".repeat(850_000)).toString("base64") },
        needle: "revocations.json",
        message: /revocations.json is larger than 819200 bytes/,
      },
    ];
    for (const variant of variants) {
      const needles = [`Secret ${NS}/${secretName(victim)}`, variant.needle];
      const before = await warnings("UntrustedKeys", needles);
      const live = await readSecret(victim);
      live.metadata!.annotations = { ...live.metadata!.annotations, ...variant.annotations };
      live.data = { ...live.data, ...variant.data };
      await core.replaceNamespacedSecret({ namespace: NS, name: secretName(victim), body: live });

      const status = await assertReported("UntrustedKeys", needles, before);
      const problem = status.accounts.find((a) => a.projectId === victim);
      assert.equal(problem?.state, "Problem", variant.what);
      assert.match(problem?.message ?? "", variant.message, variant.what);
      assert.equal(
        await resolver.lookup(ownAccount),
        ownJwt,
        `the account is left as it was (${variant.what})`,
      );
      assert.ok(!(ownJwt ?? "").includes(attacker.publicKey));
      await assert.rejects(
        connectWithCreds(server.url, roleUserCreds(ownAccount, attacker)),
        /Authorization Violation/i,
        "the attacker's key signs no user of the account",
      );
      await restore(original); // and the slot's own keys work again
    }
  });

  it("(b) fake slot Secrets for a project outside the binding, under Delete, delete nothing", async () => {
    const billing = await adminAccount("billing");
    const ledger = await adminAccount("ledger");
    const fake = (projectId: number, account: NKeyPair, data: Record<string, string>): V1Secret => {
      const ref = { binding: `${NS}/${BINDING}`, projectId };
      return {
        metadata: {
          name: accountSecretName(ref),
          namespace: NS,
          labels: accountSecretLabels(ref),
          annotations: {
            "natsbind.io/binding": BINDING,
            [ANNOTATION_ACCOUNT]: account.publicKey,
            "natsbind.io/roles": "{}",
          },
        },
        type: "Opaque",
        data,
      };
    };
    const billingNeedles = [`Secret ${NS}/${secretName(990_001)}`, billing.account.publicKey];
    const ledgerNeedles = [ledger.account.publicKey];
    const beforeBilling = await warnings("UntrustedKeys", billingNeedles);
    const beforeLedger = await warnings("AccountNotOwned", ledgerNeedles);
    // As seen in the issue: a slot naming billing, with no seed for it (here: a seed of another key).
    await core.createNamespacedSecret({
      namespace: NS,
      body: fake(990_001, billing.account, { "account.nk": b64(NKeyPair.generate("account")) }),
    });
    // With ledger's real seed (handed over by the admin): a trusted slot, so the ownership check
    // on the resolver is what refuses the delete.
    await core.createNamespacedSecret({
      namespace: NS,
      body: fake(990_002, ledger.account, { "account.nk": b64(ledger.account) }),
    });

    await waitFor(async () => (await warnings("UntrustedKeys", billingNeedles)) > beforeBilling, {
      what: "an UntrustedKeys Warning naming the fake billing slot",
      timeoutMs: 20_000,
      intervalMs: 50,
    });
    const status = await assertReported("AccountNotOwned", ledgerNeedles, beforeLedger);
    const message = status.conditions.find((c) => c.type === "Ready")!.message;
    assert.match(message, new RegExp(`account ${ledger.account.publicKey} on the NATS resolver is not`));
    assert.match(message, /1 key slot\(s\) not trusted/, "the billing slot is in the Ready message too");
    assert.equal(await resolver.lookup(billing.account.publicKey), billing.jwt, "billing still there");
    assert.equal(await resolver.lookup(ledger.account.publicKey), ledger.jwt, "ledger still there");
    await assertUsable(billing);
    await assertUsable(ledger);
    for (const id of [990_001, 990_002])
      assert.ok(await readSecret(id), "the fake Secrets are left as they are");
    await assertOwnAccountsWork();

    // The binding goes, deletionPolicy Delete: its own accounts go, billing and ledger stay.
    const own = await Promise.all(projects.map((id) => waitForAccount(id)));
    await objects.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: PLURAL,
      name: BINDING,
    });
    await waitFor(
      () =>
        getBinding().then(
          () => false,
          () => true,
        ),
      { what: "the binding gone (finalizer removed)", timeoutMs: 20_000, intervalMs: 50 },
    );
    for (const account of own)
      assert.equal(await resolver.lookup(account), undefined, `own ${account} deleted`);
    assert.equal(
      await resolver.lookup(billing.account.publicKey),
      billing.jwt,
      "billing survives the binding",
    );
    assert.equal(await resolver.lookup(ledger.account.publicKey), ledger.jwt, "ledger survives the binding");
    await assertUsable(billing);
    await assertUsable(ledger);
  });
});
