// Signing-key rotation in Kubernetes mode end to end: real kube-apiserver + etcd (natsbind's CRDs,
// a NatsBindingPolicy), real nats-server in operator mode with a full resolver, GitLab simulator.
// Rotations are asked as kubectl would ask them (annotations on the NatsBinding); what natsbind did
// is read back from the apiserver (account Secrets, status.rotation as the CRD schema kept it,
// Events) and from the resolver (the account JWT's signing keys), and felt by connected users.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { PatchStrategy, setHeaderOptions, type CoreV1Event, type V1Secret } from "@kubernetes/client-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { PLURAL } from "../../src/api/v1alpha1/crd.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import type { BindingStatus } from "../../src/controllers/binding/status.ts";
import type { NatsBindingObject } from "../../src/k8s/bindings.ts";
import { ANNOTATION_ROTATE, ANNOTATION_ROTATE_EMERGENCY } from "../../src/k8s/rotation-requests.ts";
import {
  accountSecretName,
  ANNOTATION_ACCOUNT,
  ANNOTATION_DISCARD,
  ANNOTATION_ROLES,
  ANNOTATION_ROTATION,
} from "../../src/k8s/secret-keystore.ts";
import type { RoleRotation } from "../../src/keystore/port.ts";
import { decodeJwt, readJwt } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { nullLogger } from "../../src/observability/logger.ts";
import { runController, type RunningController } from "../../src/main.ts";
import { startKubeRig, type KubeRig } from "../support/k8s-rig.ts";
import { connectWithCreds, natsConfigSection, roleUserCreds, watchStatus } from "../support/operator.ts";
import { applyPermissivePolicy } from "../support/policy.ts";
import { waitFor } from "../support/process.ts";
import { leaseHolder, startReplicas, type Replica } from "../support/replicas.ts";

const NS = "team-r";
const BINDING = "rot";
const AUDIENCE = "https://natsbind.rotation.test";

/**
 * An annotation value as `kubectl annotate ... natsbind.io/rotate=$(date -u +%FT%T.%3NZ)` writes it:
 * with milliseconds, since keys made earlier in the same second (the accounts were just created)
 * would count as newer than a whole-second time, and that rotation would already be done.
 */
function now(scope = ""): string {
  return `${new Date().toISOString()}${scope ? ` ${scope}` : ""}`;
}

interface Slot {
  secret: V1Secret;
  account: string;
  roles: Record<string, string>;
  rotation: Record<string, RoleRotation>;
  discard: string[];
}

describe("signing-key rotation (Kubernetes mode)", { timeout: 300_000 }, () => {
  let rig: KubeRig;
  let controller: RunningController | undefined;
  let reconciles = 0;
  /** Reconciles finished before the one that reported an invalid request (it was under way). */
  let invalidReportedAt = -1;
  let api: number;
  let web: number;
  const open: NatsConnection[] = [];

  const getBinding = (): Promise<NatsBindingObject> =>
    rig.objects.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: PLURAL,
      name: BINDING,
    });

  const annotate = (annotations: Record<string, string | null>): Promise<unknown> =>
    rig.objects.patchNamespacedCustomObject(
      {
        group: GROUP,
        version: VERSION,
        namespace: NS,
        plural: PLURAL,
        name: BINDING,
        body: { metadata: { annotations } },
      },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );

  const slotOf = async (projectId: number): Promise<Slot> => {
    const secret = await rig.core.readNamespacedSecret({
      namespace: NS,
      name: accountSecretName({ binding: `${NS}/${BINDING}`, projectId }),
    });
    const a = secret.metadata?.annotations ?? {};
    return {
      secret,
      account: a[ANNOTATION_ACCOUNT]!,
      roles: JSON.parse(a[ANNOTATION_ROLES] ?? "{}") as Record<string, string>,
      rotation: JSON.parse(a[ANNOTATION_ROTATION] ?? "{}") as Record<string, RoleRotation>,
      discard: JSON.parse(a[ANNOTATION_DISCARD] ?? "[]") as string[],
    };
  };

  const seedIn = (slot: Slot, dataKey: string): string | undefined => {
    const value = slot.secret.data?.[dataKey];
    return value === undefined ? undefined : Buffer.from(value, "base64").toString("utf8").trim();
  };

  /** The signing keys of `role` the resolver's account JWT lists, sorted. */
  const heldKeys = async (account: string, role?: string): Promise<string[]> => {
    const jwt = await rig.resolver.lookup(account);
    const keys = (readJwt(jwt!, "held").claims.nats.signing_keys ?? []) as Array<{
      key: string;
      role?: string;
    }>;
    return keys
      .filter((k) => role === undefined || k.role === role)
      .map((k) => k.key)
      .sort();
  };

  /** A user of the slot's active `role` key, connected (kept open until the suite ends). */
  const userOf = async (projectId: number, role: string): Promise<NatsConnection> => {
    const slot = await slotOf(projectId);
    const key = NKeyPair.fromSeed(seedIn(slot, `role-${role}.nk`)!, "account");
    assert.equal(key.publicKey, slot.roles[role], "role-<role>.nk holds the active key");
    const nc = await connectWithCreds(
      rig.server.url,
      roleUserCreds(slot.account, key, { name: `${role}-${projectId}`, tags: [`job:${projectId}`] }),
    );
    open.push(nc);
    return nc;
  };

  const events = async (reason?: string): Promise<CoreV1Event[]> =>
    (await rig.core.listNamespacedEvent({ namespace: NS })).items.filter(
      (e) =>
        e.involvedObject.kind === "NatsBinding" &&
        e.involvedObject.name === BINDING &&
        (reason === undefined || e.reason === reason),
    );
  const eventCount = async (reason: string): Promise<number> =>
    (await events(reason)).reduce((n, e) => n + (e.count ?? 1), 0);
  /** Role keys the summed Normal Events of `reason` report ("...: 3 role key(s) (GitLab project ids 1, 2)"). */
  const roleKeysIn = async (reason: string): Promise<number> =>
    (await events(reason)).reduce(
      (n, e) => n + (e.count ?? 1) * Number(/: (\d+) role key\(s\)/.exec(e.message ?? "")?.[1] ?? NaN),
      0,
    );
  const describeEvents = async (): Promise<string> =>
    JSON.stringify((await events()).map((e) => [e.type, e.reason, e.message]));

  const rotationStatus = async (): Promise<BindingStatus | undefined> =>
    (await getBinding()).status as BindingStatus | undefined;

  before(async () => {
    rig = await startKubeRig({
      namespaces: [NS, "natsbind"],
      name: "k8s-rotation",
      webhookSecret: "rot-secret",
    });
    const group = rig.sim.createGroup({ name: "Rot", path: "rot" });
    api = rig.sim.createProject({ name: "api", groupId: group.id }).id;
    web = rig.sim.createProject({ name: "web", groupId: group.id }).id;
    await applyPermissivePolicy(rig.kc, "rot", ["rot"]);
    await rig.objects.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: PLURAL,
      body: {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "NatsBinding",
        metadata: { name: BINDING },
        spec: {
          gitlab: { group: "rot" },
          roles: [
            {
              name: "ci",
              publish: { allow: ["build.{{project.id}}.>"] },
              subscribe: { allow: ["_INBOX.>", "build.{{project.id}}.>"] },
              ci: {},
            },
            {
              name: "deploy",
              publish: { allow: ["deploy.{{project.id}}.>"] },
              subscribe: { allow: ["_INBOX.>"] },
            },
          ],
          rotation: { every: "90d", gracePeriod: "1h" },
        },
      },
    });
    // No credentials section: natsbind issues no user JWTs, so a replaced key's overlap is 5 s.
    const config = await rig.config();
    controller = await runController(config, {
      log: nullLogger,
      identity: "in-process",
      onReconciled: () => (reconciles += 1),
      onRotation: (_key, event) => {
        if (event.phase === "RotationRequestInvalid") invalidReportedAt = reconciles;
      },
    });
    await waitFor(
      async () => {
        for (const id of [api, web]) {
          const slot = await slotOf(id).catch(() => undefined);
          if (!slot?.account || (await rig.resolver.lookup(slot.account)) === undefined) return false;
        }
        return true;
      },
      { what: "both accounts on the server", timeoutMs: 30_000, intervalMs: 100 },
    );
  });

  after(async () => {
    for (const nc of open) await nc.close().catch(() => undefined);
    await controller?.stop();
    await rig?.stop();
  });

  it("natsbind.io/rotate: new keys listed, then issuing; old keys retire after the overlap once no connection uses them; status and Events", async () => {
    const before = { api: await slotOf(api), web: await slotOf(web) };
    for (const s of Object.values(before))
      for (const role of ["ci", "deploy"])
        assert.ok(s.rotation[role]?.activeSince, `${role}: key age recorded`);
    const oldCi = before.api.roles.ci!;
    const oldUser = await userOf(api, "ci");
    const oldStatus = watchStatus(oldUser);
    const sub = oldUser.subscribe(`build.${api}.>`);

    const asked = Date.now();
    await annotate({ [ANNOTATION_ROTATE]: now() });

    // Every role of every account: a new key in the Secret, issuing only after the push.
    let rotated = before;
    await waitFor(
      async () => {
        rotated = { api: await slotOf(api), web: await slotOf(web) };
        return Object.entries(rotated).every(([name, s]) =>
          ["ci", "deploy"].every((role) => s.roles[role] !== before[name as "api" | "web"].roles[role]),
        );
      },
      {
        what: `new active keys in both Secrets (events: ${await describeEvents()})`,
        timeoutMs: 30_000,
        intervalMs: 100,
      },
    );
    const slot = rotated.api;
    const newCi = slot.roles.ci!;
    assert.equal(slot.account, before.api.account, "the account key stays");
    assert.equal(NKeyPair.fromSeed(seedIn(slot, "role-ci.nk")!, "account").publicKey, newCi);
    assert.equal(
      NKeyPair.fromSeed(seedIn(slot, `key-${oldCi}.nk`)!, "account").publicKey,
      oldCi,
      "the replaced key's seed stays in the Secret while it is listed",
    );
    assert.deepEqual(
      slot.rotation.ci?.retiring?.map((r) => r.key),
      [oldCi],
    );
    assert.deepEqual(await heldKeys(slot.account, "ci"), [newCi, oldCi].sort(), "both ci keys on the server");

    // A user of the new key works; the old key's user is still connected and gets its messages.
    const fresh = await userOf(api, "ci");
    fresh.publish(`build.${api}.1`, "from the new key");
    await fresh.flush();
    const got = await (async () => {
      for await (const m of sub) return m.string();
    })();
    assert.equal(got, "from the new key");

    // Past the overlap (5 s): the old ci key of api waits for its live connection, reported on the
    // binding and in status; web's old keys (no connection) are removed.
    await waitFor(
      async () =>
        (await events("KeyRetirementWaiting")).some(
          (e) => e.type === "Warning" && e.message?.includes(oldCi) && e.message.includes(`job:${api}`),
        ),
      {
        what: `a KeyRetirementWaiting Warning naming the connection (events: ${await describeEvents()})`,
        timeoutMs: 30_000,
        intervalMs: 200,
      },
    );
    await waitFor(
      async () => {
        const status = await rotationStatus();
        const summary = status?.accounts.find((a) => a.projectId === api);
        return status?.rotation?.waitingConnections === 1 && summary?.keyPhase === "retiring";
      },
      {
        what: "status.rotation.waitingConnections 1 and api's keyPhase retiring",
        timeoutMs: 20_000,
        intervalMs: 100,
      },
    );
    await waitFor(
      async () =>
        (await heldKeys(rotated.web.account)).join() ===
        [rotated.web.roles.ci!, rotated.web.roles.deploy!].sort().join(),
      { what: "web's old keys removed from its JWT", timeoutMs: 30_000, intervalMs: 200 },
    );
    assert.ok((await heldKeys(slot.account, "ci")).includes(oldCi), "api's old ci key is still listed");
    assert.equal(oldUser.isClosed(), false);
    assert.deepEqual(oldStatus.errors(), [], "no error on the old key's connection");

    // Once its user is gone, the old key goes, and then its seed.
    await oldUser.close();
    await waitFor(async () => !(await heldKeys(slot.account, "ci")).includes(oldCi), {
      what: "the old ci key removed from api's JWT",
      timeoutMs: 30_000,
      intervalMs: 200,
    });
    await waitFor(
      async () => {
        const s = await slotOf(api);
        return (
          seedIn(s, `key-${oldCi}.nk`) === undefined && s.discard.length === 0 && !s.rotation.ci?.retiring
        );
      },
      {
        what: "the old key's seed deleted from the Secret after the push",
        timeoutMs: 20_000,
        intervalMs: 100,
      },
    );
    assert.equal(fresh.isClosed(), false, "the new key's user was never cut off");
    await fresh.close();

    // status.rotation as the apiserver stored it (fields the CRD schema lacked would be gone).
    let status: BindingStatus | undefined;
    await waitFor(
      async () => {
        status = await rotationStatus();
        return (
          status?.rotation?.accounts.active === 2 &&
          status.rotation.waitingConnections === 0 &&
          status.accounts.every((a) => a.keyPhase === "active")
        );
      },
      {
        what: `status.rotation back to every account active (${JSON.stringify(status?.rotation)})`,
        timeoutMs: 20_000,
        intervalMs: 100,
      },
    );
    const r = status!.rotation!;
    assert.deepEqual(r.accounts, { active: 2, prepared: 0, retiring: 0 });
    const activeSince = Date.parse(r.oldestActiveKeySince!);
    assert.ok(activeSince >= asked - 1000, `every key was replaced: ${r.oldestActiveKeySince}`);
    const next = Date.parse(r.nextRotation!);
    assert.ok(
      next > Date.now() + 80 * 86_400_000 && next <= activeSince + 90 * 86_400_000,
      `next rotation in 81-90 days (jitter): ${r.nextRotation}`,
    );
    for (const a of status!.accounts) {
      assert.ok(a.keysActiveSince && Date.parse(a.keysActiveSince) >= activeSince, JSON.stringify(a));
      assert.equal(a.keyPhase, "active");
    }
    assert.equal(r.lastFailure, undefined);

    // Normal Events per phase, summed per reconcile ("N role key(s) (GitLab project ids ...)"): the
    // 4 role keys (2 accounts x 2 roles) went through each phase.
    for (const reason of ["KeyPrepared", "KeyActivated", "KeyRetired"]) {
      const list = await events(reason);
      assert.ok(
        list.every((e) => e.type === "Normal"),
        reason,
      );
      assert.equal(await roleKeysIn(reason), 4, `${reason}: ${await describeEvents()}`);
      const ids = list.map((e) => /GitLab project ids ([0-9, ]+)\)/.exec(e.message ?? "")?.[1]).join(", ");
      for (const id of [api, web])
        assert.ok(ids.split(", ").includes(String(id)), `${reason} names project ${id}`);
    }
    // Public keys only: no seed of any key in Events or status.
    const seeds = [
      seedIn(slot, "role-ci.nk")!,
      seedIn(before.api, "role-ci.nk")!,
      seedIn(slot, "account.nk")!,
    ];
    const shown = JSON.stringify(await events()) + JSON.stringify(await getBinding());
    for (const seed of seeds) assert.equal(shown.includes(seed), false);
  });

  it("natsbind.io/rotate-emergency cuts off the role's users at once; a rotation later does not repeat it", async () => {
    const ciUser = await userOf(api, "ci");
    const ciEvents = watchStatus(ciUser);
    const deployUser = await userOf(api, "deploy");
    const webUser = await userOf(web, "ci");
    const before = await slotOf(api);

    await annotate({ [ANNOTATION_ROTATE_EMERGENCY]: now(`project=${api} role=ci`) });
    await waitFor(async () => ciUser.isClosed() || ciEvents.errors().length > 0, {
      what: "the leaked key's user to be cut off",
      timeoutMs: 20_000,
      intervalMs: 50,
    });
    const after = await slotOf(api);
    assert.notEqual(after.roles.ci, before.roles.ci);
    assert.equal(after.roles.deploy, before.roles.deploy, "the other role keeps its key");
    assert.deepEqual(await heldKeys(after.account), [after.roles.ci!, after.roles.deploy!].sort());
    assert.equal(after.rotation.ci?.activeSince, after.rotation.ci?.emergencyAt, "recorded as an emergency");
    await deployUser.flush();
    await webUser.flush();
    assert.equal(deployUser.isClosed(), false, "the deploy role's user is untouched");
    assert.equal(webUser.isClosed(), false, "the other project's user is untouched");

    await waitFor(async () => (await eventCount("EmergencyRotation")) === 1, {
      what: `an EmergencyRotation Event (events: ${await describeEvents()})`,
      timeoutMs: 10_000,
      intervalMs: 100,
    });
    const emergency = (await events("EmergencyRotation"))[0]!;
    assert.equal(emergency.type, "Warning");
    assert.match(
      emergency.message ?? "",
      /role ci replaced at once; 1 connection\(s\) on them will be closed/,
    );
    await waitFor(async () => (await rotationStatus())?.rotation?.lastEmergency !== undefined, {
      what: "status.rotation.lastEmergency",
      timeoutMs: 10_000,
      intervalMs: 100,
    });
    const last = (await rotationStatus())!.rotation!.lastEmergency!;
    assert.equal(last.accounts, 1);
    assert.equal(last.connectionsClosed, 1);
    assert.ok(Date.parse(last.time) > Date.now() - 60_000);

    // The emergency annotation stays (as kubectl leaves it). A later rotation of the same role makes
    // a retiring key; that must not count as a leaked key still there (a second emergency).
    const survivor = await userOf(api, "ci");
    const survivorStatus = watchStatus(survivor);
    const key = after.roles.ci!;
    await annotate({ [ANNOTATION_ROTATE]: now(`project=${api} role=ci`) });
    await waitFor(
      async () =>
        (await events("KeyRetirementWaiting")).some(
          (e) => e.message?.includes(key) && e.message.includes(`job:${api}`),
        ),
      {
        what: `the post-emergency key waiting for its user (events: ${await describeEvents()})`,
        timeoutMs: 30_000,
        intervalMs: 200,
        failIf: () =>
          survivor.isClosed() || survivorStatus.errors().length > 0
            ? `its user was cut off (a second emergency): ${survivorStatus.all.join(", ")}`
            : undefined,
      },
    );
    assert.equal(survivor.isClosed(), false, "the user of the key made by the emergency is not cut off");
    assert.deepEqual(survivorStatus.errors(), []);
    assert.ok((await heldKeys(after.account, "ci")).includes(key));
    assert.equal(await eventCount("EmergencyRotation"), 1, "no second emergency");
    await survivor.close();
    await waitFor(async () => !(await heldKeys(after.account, "ci")).includes(key), {
      what: "the post-emergency key retired once unused",
      timeoutMs: 30_000,
      intervalMs: 200,
    });
    await waitFor(async () => (await slotOf(api)).discard.length === 0, {
      what: "its seed deleted",
      timeoutMs: 20_000,
      intervalMs: 100,
    });
  });

  it("a malformed annotation is reported as a RotationRequestInvalid Warning and changes nothing", async () => {
    const versions = async () =>
      Promise.all([api, web].map(async (id) => (await slotOf(id)).secret.metadata?.resourceVersion));
    const jwts = async () =>
      Promise.all([api, web].map(async (id) => rig.resolver.lookup((await slotOf(id)).account)));
    const beforeVersions = await versions();
    const beforeJwts = await jwts();
    await annotate({
      [ANNOTATION_ROTATE]: "yesterday",
      [ANNOTATION_ROTATE_EMERGENCY]: now("project=api"),
    });
    await waitFor(
      async () => {
        const list = await events("RotationRequestInvalid");
        return (
          list.some((e) => e.message?.includes(`annotation ${ANNOTATION_ROTATE}:`)) &&
          list.some((e) => e.message?.includes(`annotation ${ANNOTATION_ROTATE_EMERGENCY}:`))
        );
      },
      {
        what: `two RotationRequestInvalid Events (events: ${await describeEvents()})`,
        timeoutMs: 20_000,
        intervalMs: 100,
      },
    );
    for (const e of await events("RotationRequestInvalid")) {
      assert.equal(e.type, "Warning");
      assert.match(e.message ?? "", /is not an RFC 3339 time|is not a project id/);
    }
    // The reconcile that reported them ran to its end; nothing was written or pushed.
    await waitFor(async () => invalidReportedAt >= 0 && reconciles > invalidReportedAt, {
      what: "the reporting reconcile to finish",
      timeoutMs: 10_000,
      intervalMs: 50,
    });
    assert.deepEqual(await versions(), beforeVersions, "no Secret written");
    assert.deepEqual(await jwts(), beforeJwts, "nothing pushed");
    assert.equal(await eventCount("EmergencyRotation"), 1);
  });

  it("a follower replica keeps issuing credentials through a rotation, from the new key once it is active", async (t) => {
    await controller?.stop();
    controller = undefined;
    let replicas: Replica[] = [];
    try {
      replicas = await startReplicas({
        kc: rig.kc,
        dir: rig.dir,
        count: 2,
        config: {
          mode: "kubernetes",
          nats: natsConfigSection(rig.op, [rig.server.url]),
          gitlab: { url: rig.sim.url, tokenFile: "token", webhookSecretFile: "secret", resyncInterval: "1h" },
          kubernetes: {
            kubeconfig: "kubeconfig",
            leaderElection: { leaseDuration: "3s", renewDeadline: "2s", retryPeriod: "500ms" },
          },
          credentials: { audience: AUDIENCE },
        },
      });
      let holder: string | undefined;
      await waitFor(async () => !!(holder = await leaseHolder(rig.kc)) && holder !== "in-process", {
        what: "a leader among the replicas",
        timeoutMs: 30_000,
        intervalMs: 100,
      });
      const follower = replicas.find((r) => r.identity !== holder)!;
      assert.ok(
        replicas.some((r) => r.identity === holder),
        `holder ${holder} is one of the replicas`,
      );

      /** Credentials from the follower for a job of `api`: its creds and the key that signed them. */
      const issue = async (): Promise<{
        creds: Uint8Array;
        issuer: string;
        status: number;
        text: string;
      }> => {
        const res = await fetch(`${follower.url}/v1/credentials`, {
          method: "POST",
          headers: {
            authorization: `Bearer ${rig.sim.mintIdToken({ projectId: api, aud: AUDIENCE })}`,
            accept: "text/plain",
          },
          signal: AbortSignal.timeout(10_000),
        });
        const text = await res.text();
        const jwt = /-----BEGIN NATS USER JWT-----\n([^\n]+)\n/.exec(text)?.[1];
        return {
          creds: new TextEncoder().encode(text),
          issuer: jwt ? decodeJwt(jwt).iss : "",
          status: res.status,
          text,
        };
      };
      let first = await issue();
      await waitFor(async () => (first = await issue()).status === 200, {
        what: "credentials from the follower",
        timeoutMs: 30_000,
        intervalMs: 200,
      });
      const old = (await slotOf(api)).roles.ci!;
      assert.equal(first.issuer, old);
      const before = await connectWithCreds(rig.server.url, first.creds);
      open.push(before);

      await annotate({
        [ANNOTATION_ROTATE]: now(`project=${api} role=ci`),
        [ANNOTATION_ROTATE_EMERGENCY]: null,
      });
      // Ask all along: every answer is credentials that connect, until they come from the new key.
      let issued = 0;
      let newKey = "";
      await waitFor(
        async () => {
          const got = await issue();
          assert.equal(got.status, 200, `the follower kept issuing: ${got.text}`);
          const nc = await connectWithCreds(rig.server.url, got.creds);
          await nc.flush();
          await nc.close();
          issued += 1;
          newKey = (await slotOf(api)).roles.ci!;
          return newKey !== old && got.issuer === newKey;
        },
        { what: "credentials signed by the new key from the follower", timeoutMs: 30_000, intervalMs: 100 },
      );
      t.diagnostic(`${issued} credentials issued by the follower during the rotation, all working`);
      await before.flush();
      assert.equal(before.isClosed(), false, "credentials issued before the rotation still work");
      assert.ok(
        (await heldKeys((await slotOf(api)).account, "ci")).includes(old),
        "the old key stays listed",
      );
    } finally {
      for (const r of replicas) r.child.kill("SIGKILL");
    }
  });
});
