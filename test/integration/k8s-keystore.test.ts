// SecretKeyStore against a real etcd + kube-apiserver: the KeyStore contract DirectoryKeyStore
// passes, the Secret's name/labels/annotations/ownerReference, reloading from the apiserver, two
// stores racing for one slot (AlreadyExists and Conflict paths), tampered Secrets reported by name,
// and no seed in any error.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { inspect } from "node:util";
import { after, before, describe, it } from "node:test";
import { CoreV1Api } from "@kubernetes/client-node";
import type { V1Secret } from "@kubernetes/client-node";
import type { Informer } from "../../src/k8s/informer.ts";
import {
  accountSecretName,
  bindingKeyOfSecret,
  KeyStoreError,
  SecretKeyStore,
} from "../../src/k8s/secret-keystore.ts";
import type { AccountRef, SlotChange } from "../../src/keystore/port.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { encodeWithChecksum } from "../../src/nats/encoding.ts";
import {
  activate,
  keyStoreContract,
  prepare,
  retire,
  revoke,
  seedsOf,
} from "../support/keystore-contract.ts";
import { startKubeApiserver } from "../support/kube.ts";
import type { KubeApiserver } from "../support/kube.ts";
import { waitFor } from "../support/process.ts";

const SEED_SHAPE = /S[OAUNCPX][A-Z2-7]{56}/;

/** Every way an error may be rendered (message, stack, causes, inspect), for looking for secrets. */
function renderings(err: unknown): string {
  return [String(err), (err as Error).stack ?? "", inspect(err, { depth: 10 }), JSON.stringify(err)].join(
    "\n",
  );
}

function assertNoSeed(err: unknown, seeds: readonly string[] = []): void {
  const text = renderings(err);
  assert.doesNotMatch(text, SEED_SHAPE);
  for (const seed of seeds) assert.ok(!text.includes(seed), "a seed in the error");
}

/** The seed in any *.nk entry of a Secret that derives `publicKey`, whatever the entry is called. */
function storedSeed(secret: V1Secret | undefined, publicKey: string): string | undefined {
  for (const [name, value] of Object.entries(secret?.data ?? {})) {
    if (!name.endsWith(".nk")) continue;
    const seed = Buffer.from(value, "base64").toString("utf8").trim();
    try {
      if (NKeyPair.fromSeed(seed, "account").publicKey === publicKey) return seed;
    } catch {
      // not an account seed: not the one looked for
    }
  }
  return undefined;
}

/** A well-formed user public key (no seed made: 10,000 of these are needed fast). */
function userKey(): string {
  const bytes = new Uint8Array(33);
  bytes[0] = 20 << 3;
  crypto.getRandomValues(bytes.subarray(1));
  return encodeWithChecksum(bytes);
}

/** The public key a seed entry of a Secret derives. */
function keyOf(secret: V1Secret, entry: string): string {
  return NKeyPair.fromSeed(Buffer.from(secret.data![entry]!, "base64").toString("utf8"), "account").publicKey;
}

describe("SecretKeyStore", { timeout: 120_000 }, () => {
  let kube: KubeApiserver;
  let core: CoreV1Api;
  let nsCount = 0;
  const informers: Informer<V1Secret>[] = [];
  // binding key -> owner (a NatsBinding need not exist: without a controller-manager nothing checks).
  const owners = new Map<string, { name: string; uid: string }>();

  before(async () => {
    kube = await startKubeApiserver();
    core = kube.kubeConfig().makeApiClient(CoreV1Api);
  });

  after(async () => {
    for (const informer of informers) informer.stop();
    await kube?.stop();
  });

  async function namespace(): Promise<string> {
    const name = `keys-${++nsCount}`;
    await core.createNamespace({ body: { metadata: { name } } });
    for (const binding of ["acme-ci", "other"])
      owners.set(`${name}/${binding}`, { name: binding, uid: randomUUID() });
    return name;
  }

  async function open(
    ns: string,
    coreApi?: CoreV1Api,
  ): Promise<{ store: SecretKeyStore; informer: Informer<V1Secret> }> {
    const informer = SecretKeyStore.informer({ kubeConfig: kube.kubeConfig(), namespace: ns });
    informers.push(informer);
    await informer.start();
    const store = new SecretKeyStore({
      kubeConfig: kube.kubeConfig(),
      secrets: informer,
      owner: (binding) => owners.get(binding),
      core: coreApi,
    });
    return { store, informer };
  }

  /** The slot's Secret as the apiserver has it (not through any store). */
  function readSlotSecret(ns: string, ref: AccountRef): Promise<V1Secret | undefined> {
    return core.readNamespacedSecret({ namespace: ns, name: accountSecretName(ref) }).catch(() => undefined);
  }

  /** A CoreV1Api whose calls are counted. */
  function instrumented() {
    const calls: string[] = [];
    const real = kube.kubeConfig().makeApiClient(CoreV1Api);
    const api = new Proxy(real, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (typeof value !== "function" || typeof prop !== "string") return value;
        return async (...args: unknown[]) => {
          try {
            const result = await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
            calls.push(`${prop} ok`);
            return result;
          } catch (err) {
            calls.push(`${prop} ${(err as { code?: number }).code}`);
            throw err;
          }
        };
      },
    });
    return { api, calls };
  }

  describe("contract", () => {
    keyStoreContract({
      async fresh() {
        const ns = await namespace();
        return {
          store: (await open(ns)).store,
          reopen: async () => (await open(ns)).store,
          bindings: [`${ns}/acme-ci`, `${ns}/other`],
          storedSeed: async (ref, publicKey) => storedSeed(await readSlotSecret(ns, ref), publicKey),
        };
      },
    });
  });

  it("writes one Opaque Secret per slot: predictable name, labels, annotations, owner, seeds", async () => {
    const ns = await namespace();
    const { store } = await open(ns);
    const keys = await store.ensure({ binding: `${ns}/acme-ci`, projectId: 42 }, ["ci", "deploy"]);
    const secret = await core.readNamespacedSecret({ namespace: ns, name: "nb-acme-ci-42" });
    assert.equal(secret.type, "Opaque");
    assert.deepEqual(secret.metadata?.labels, {
      "app.kubernetes.io/managed-by": "natsbind",
      "natsbind.io/binding": "acme-ci",
      "natsbind.io/project-id": "42",
    });
    assert.deepEqual(secret.metadata?.annotations, {
      "natsbind.io/binding": "acme-ci",
      "natsbind.io/account": keys.account,
      "natsbind.io/roles": JSON.stringify(keys.roles),
    });
    assert.deepEqual(
      secret.metadata?.ownerReferences?.map((o) => ({ ...o })),
      [
        {
          apiVersion: "natsbind.io/v1alpha1",
          kind: "NatsBinding",
          name: "acme-ci",
          uid: owners.get(`${ns}/acme-ci`)!.uid,
          controller: true,
          blockOwnerDeletion: false,
        },
      ],
    );
    assert.equal(bindingKeyOfSecret(secret), `${ns}/acme-ci`);
    const data = secret.data ?? {};
    assert.deepEqual(Object.keys(data).sort(), ["account.nk", "role-ci.nk", "role-deploy.nk"]);
    const seed = (k: string): string => Buffer.from(data[k]!, "base64").toString("utf8");
    assert.equal(NKeyPair.fromSeed(seed("account.nk"), "account").publicKey, keys.account);
    assert.equal(NKeyPair.fromSeed(seed("role-ci.nk"), "account").publicKey, keys.roles.ci);
    assert.equal(NKeyPair.fromSeed(seed("role-deploy.nk"), "account").publicKey, keys.roles.deploy);
    for (const s of seedsOf(keys))
      assert.ok(!JSON.stringify(secret.metadata).includes(s), "seed in metadata");

    const env = { binding: `${ns}/acme-ci`, projectId: 42, environment: "Prod EU/1" };
    await store.ensure(env, ["ci"]);
    const envSecret = await core.readNamespacedSecret({ namespace: ns, name: accountSecretName(env) });
    assert.match(envSecret.metadata!.name!, /^nb-acme-ci-42-prod-eu-1-[0-9a-f]{8}$/);
    assert.match(envSecret.metadata!.labels!["natsbind.io/environment"]!, /^Prod-EU-1-[0-9a-f]{8}$/);
    assert.equal(envSecret.metadata!.annotations!["natsbind.io/environment"], "Prod EU/1");
  });

  it("answers from its informer: no request for keys it has, one write for keys it makes", async () => {
    const ns = await namespace();
    const { api, calls } = instrumented();
    const { store } = await open(ns, api);
    const ref = { binding: `${ns}/acme-ci`, projectId: 1 };
    await store.ensure(ref, ["ci"]);
    // A synced cache without the Secret: create at once (a create cannot overwrite anything).
    assert.deepEqual(calls, ["createNamespacedSecret ok"]);
    calls.length = 0;
    await store.ensure(ref, ["ci"]);
    assert.equal((await store.list(ref.binding)).length, 1, "the write is in the cache at once");
    assert.ok(await store.get(ref));
    assert.deepEqual(calls, [], "everything from the cache");
    await store.ensure(ref, ["ci", "deploy"]);
    // The cached object's resourceVersion guards the update: no read first.
    assert.deepEqual(calls, ["replaceNamespacedSecret ok"]);
  });

  it("two stores racing for one slot end with one set of keys (AlreadyExists, then Conflict)", async () => {
    const ns = await namespace();
    const ref: AccountRef = { binding: `${ns}/acme-ci`, projectId: 7 };
    // Both caches are empty when both start: both generate keys and create; one create wins, the
    // other gets AlreadyExists, reads the Secret and takes its keys.
    const b = instrumented();
    const c = instrumented();
    const storeA = (await open(ns, b.api)).store;
    const storeB = (await open(ns, c.api)).store;
    const [ka, kb] = await Promise.all([storeA.ensure(ref, ["ci"]), storeB.ensure(ref, ["ci"])]);
    assert.equal(ka.account, kb.account);
    assert.equal(ka.roles.ci, kb.roles.ci);
    assert.deepEqual(seedsOf(ka), seedsOf(kb));
    const creates = [...b.calls, ...c.calls]
      .filter((call) => call.startsWith("createNamespacedSecret"))
      .sort();
    assert.deepEqual(creates, ["createNamespacedSecret 409", "createNamespacedSecret ok"]);

    // Both add a different role to the version their caches hold: one replace conflicts, reads the
    // Secret again and is retried.
    const a2 = instrumented();
    const b2 = instrumented();
    const storeA2 = (await open(ns, a2.api)).store;
    const storeB2 = (await open(ns, b2.api)).store;
    const both = Promise.all([storeA2.ensure(ref, ["ci", "x"]), storeB2.ensure(ref, ["ci", "y"])]);
    const [kx, ky] = await both;
    const replaces = [...a2.calls, ...b2.calls].filter((c) => c.startsWith("replaceNamespacedSecret")).sort();
    assert.deepEqual(replaces, [
      "replaceNamespacedSecret 409",
      "replaceNamespacedSecret ok",
      "replaceNamespacedSecret ok",
    ]);
    assert.equal(kx.account, ka.account);
    assert.equal(kx.roles.ci, ka.roles.ci);
    assert.equal(ky.roles.ci, ka.roles.ci);
    const final = await (await open(ns)).store.get(ref);
    assert.deepEqual(Object.keys(final!.roles).sort(), ["ci", "x", "y"]);
    assert.equal(final!.roles.x, kx.roles.x);
    assert.equal(final!.roles.y, ky.roles.y);
  });

  it("stores rotation state in annotations and other seeds as key-<PUB>.nk; activation moves both seeds in one write", async () => {
    const ns = await namespace();
    const { api, calls } = instrumented();
    const { store } = await open(ns, api);
    const ref = { binding: `${ns}/acme-ci`, projectId: 11 };
    const read = (): Promise<V1Secret> =>
      core.readNamespacedSecret({ namespace: ns, name: accountSecretName(ref) });
    const annotation = (s: V1Secret, name: string): unknown => {
      const text = s.metadata?.annotations?.[name];
      return text === undefined ? undefined : JSON.parse(text);
    };
    const start = await store.ensure(ref, ["ci", "deploy"], 1_000);
    const old = start.roles.ci!;
    let secret = await read();
    assert.deepEqual(annotation(secret, "natsbind.io/rotation"), {
      ci: { activeSince: 1_000 },
      deploy: { activeSince: 1_000 },
    });
    assert.equal(annotation(secret, "natsbind.io/discard"), undefined);

    calls.length = 0;
    const prepared = await store.update(ref, prepare("ci", 2_000));
    assert.deepEqual(calls, ["replaceNamespacedSecret ok"], "from the informer: one write, no read");
    const next = prepared.rotation!.ci!.prepared!.key;
    secret = await read();
    assert.deepEqual(Object.keys(secret.data!).sort(), [
      "account.nk",
      `key-${next}.nk`,
      "role-ci.nk",
      "role-deploy.nk",
    ]);
    assert.equal(keyOf(secret, `key-${next}.nk`), next);
    assert.equal(keyOf(secret, "role-ci.nk"), old, "the active key's seed stays where it was");
    assert.deepEqual(annotation(secret, "natsbind.io/rotation"), prepared.rotation);
    assert.deepEqual(annotation(secret, "natsbind.io/roles"), start.roles);

    calls.length = 0;
    await store.update(ref, activate("ci", 3_000, 4_000));
    assert.deepEqual(calls, ["replaceNamespacedSecret ok"], "both seeds and the slot move in one write");
    secret = await read();
    assert.deepEqual(Object.keys(secret.data!).sort(), [
      "account.nk",
      `key-${old}.nk`,
      "role-ci.nk",
      "role-deploy.nk",
    ]);
    assert.equal(keyOf(secret, "role-ci.nk"), next);
    assert.equal(keyOf(secret, `key-${old}.nk`), old);
    assert.deepEqual(annotation(secret, "natsbind.io/roles"), { ...start.roles, ci: next });

    await store.update(ref, retire("ci", old));
    secret = await read();
    assert.deepEqual(annotation(secret, "natsbind.io/discard"), [old]);
    assert.equal(keyOf(secret, `key-${old}.nk`), old, "kept until forget()");

    const user = userKey();
    await store.update(ref, revoke({ [user]: 1_700_000_000, "*": 1_700_000_001 }));
    secret = await read();
    assert.equal(
      Buffer.from(secret.data!["revocations.json"]!, "base64").toString("utf8"),
      JSON.stringify({ [user]: 1_700_000_000, "*": 1_700_000_001 }),
      "compact JSON in the data",
    );

    calls.length = 0;
    await store.forget(ref, [old]);
    assert.deepEqual(calls, ["replaceNamespacedSecret ok"]);
    secret = await read();
    assert.deepEqual(Object.keys(secret.data!).sort(), [
      "account.nk",
      "revocations.json",
      "role-ci.nk",
      "role-deploy.nk",
    ]);
    assert.equal(secret.metadata?.annotations?.["natsbind.io/discard"], undefined);
    calls.length = 0;
    await store.forget(ref, [old]);
    await store.update(ref, (slot) => ({ ...slot }));
    await store.update(ref, () => undefined);
    assert.deepEqual(calls, [], "nothing to forget or change: no request");
  });

  it("an update over a stale informer conflicts, reads again and applies the change again; racing stores lose nothing", async () => {
    const ns = await namespace();
    const { store: writer, informer } = await open(ns);
    const ref: AccountRef = { binding: `${ns}/acme-ci`, projectId: 13 };
    const name = accountSecretName(ref);
    await writer.ensure(ref, ["ci"]);
    const snapshot = informer.get(ns, name)!;
    const { api, calls } = instrumented();
    // A store whose informer never saw what followed `snapshot`.
    const stale = new SecretKeyStore({
      kubeConfig: kube.kubeConfig(),
      secrets: {
        hasSynced: () => true,
        get: () => snapshot,
        list: () => [snapshot],
        upsert: () => undefined,
        forget: () => undefined,
      },
      owner: (binding) => owners.get(binding),
      core: api,
    });
    const [alice, bob] = [userKey(), userKey()];
    await writer.update(ref, revoke({ [alice]: 1 }));

    const made: string[] = [];
    const result = await stale.update(ref, (slot, generate) =>
      prepare("ci", 5)(revoke({ [bob]: 2 })(slot, generate)!, () => {
        made.push(generate());
        return made.at(-1)!;
      }),
    );
    assert.deepEqual(calls, [
      "replaceNamespacedSecret 409",
      "readNamespacedSecret ok",
      "replaceNamespacedSecret ok",
    ]);
    assert.equal(made.length, 2, "the change ran again on the Secret as it is now");
    assert.deepEqual(result.revocations, { [alice]: 1, [bob]: 2 }, "the other writer's change is kept");
    assert.equal(result.rotation?.ci?.prepared?.key, made[1]);
    const secret = await core.readNamespacedSecret({ namespace: ns, name });
    assert.equal(storedSeed(secret, made[0]!), undefined, "a key made for a write that failed is not stored");
    assert.ok(storedSeed(secret, made[1]!));

    // Two stores (two processes) at once: whatever the order, every change lands.
    const a = (await open(ns)).store;
    const b = (await open(ns)).store;
    const users = Array.from({ length: 6 }, () => userKey());
    await Promise.all(users.map((user, i) => (i % 2 === 0 ? a : b).update(ref, revoke({ [user]: 10 + i }))));
    const final = await (await open(ns)).store.get(ref);
    assert.deepEqual(Object.keys(final!.revocations!).sort(), [alice, bob, ...users].sort());
    assert.equal(final!.rotation?.ci?.prepared?.key, made[1]);
  });

  it("stores 10,000 revocations; refuses one more, and a Secret over 900 KiB, naming it and writing nothing", async () => {
    const ns = await namespace();
    const { store } = await open(ns);
    const ref = { binding: `${ns}/acme-ci`, projectId: 12 };
    const name = accountSecretName(ref);
    const read = (): Promise<V1Secret> => core.readNamespacedSecret({ namespace: ns, name });
    const roles = Array.from({ length: 64 }, (_, i) => `r${i}`);
    await store.ensure(ref, roles, 1);
    // The longest values there are: 16 digits.
    const revocations = Object.fromEntries(
      Array.from({ length: 10_000 }, () => [userKey(), Number.MAX_SAFE_INTEGER]),
    );
    const stored = await store.update(ref, revoke(revocations));
    assert.equal(Object.keys(stored.revocations!).length, 10_000);
    assert.deepEqual((await (await open(ns)).store.get(ref))?.revocations, revocations, "read back");

    /** A prepared key and `retiring` retiring keys for every role. */
    const rotateAll =
      (retiring: number): SlotChange =>
      (slot, generate) => ({
        ...slot,
        rotation: Object.fromEntries(
          roles.map((role) => [
            role,
            {
              activeSince: 1,
              prepared: { key: generate(), since: 1 },
              retiring: Array.from({ length: retiring }, () => ({ key: generate(), since: 1, notBefore: 1 })),
            },
          ]),
        ),
      });
    // Just under the bound: the apiserver takes it (its limit is 1 MiB).
    const large = await store.update(ref, rotateAll(13));
    const secret = await read();
    const bytes =
      Object.values(secret.data!).reduce((n, v) => n + Buffer.byteLength(v, "base64"), 0) +
      Object.entries(secret.metadata!.annotations!).reduce((n, [k, v]) => n + k.length + v.length, 0);
    assert.ok(bytes > 880 * 1024 && bytes <= 900 * 1024, `${bytes} bytes`);
    assert.equal(Object.keys(secret.data!).length, 1 + 64 * 15 + 1);

    const refused = async (change: SlotChange, pattern: RegExp): Promise<void> => {
      await assert.rejects(store.update(ref, change), (err: Error) => {
        assert.ok(err instanceof KeyStoreError, String(err));
        assert.match(err.message, new RegExp(`key store: Secret ${ns}/${name} `));
        assert.match(err.message, pattern);
        assertNoSeed(err);
        return true;
      });
      assert.equal((await read()).metadata?.resourceVersion, secret.metadata?.resourceVersion, "not written");
    };
    await refused(
      revoke({ [userKey()]: 1 }),
      /not written, it would not be trusted: revocations.json: \(top level\): more than 10000 entries/,
    );
    await refused(
      rotateAll(16),
      /would hold \d+ bytes, more than the 921600 natsbind writes into one Secret/,
    );
    const after = await store.get(ref);
    assert.deepEqual(after?.rotation, large.rotation);
    assert.equal(Object.keys(after!.revocations!).length, 10_000);
  });

  it("update() refuses and forget() leaves alone a Secret it does not trust", async () => {
    const ns = await namespace();
    const { store, informer } = await open(ns);
    const ref = { binding: `${ns}/acme-ci`, projectId: 14 };
    const name = accountSecretName(ref);
    const keys = await store.ensure(ref, ["ci"]);
    await store.update(ref, prepare("ci", 1));
    await store.update(ref, activate("ci", 2, 3));
    await store.update(ref, retire("ci", keys.roles.ci!));
    // The tenant lists a prepared key whose seed the Secret does not hold.
    const live = await core.readNamespacedSecret({ namespace: ns, name });
    const stranger = NKeyPair.generate("account").publicKey;
    const rotation = JSON.parse(live.metadata!.annotations!["natsbind.io/rotation"]!) as Record<
      string,
      object
    >;
    live.metadata!.annotations!["natsbind.io/rotation"] = JSON.stringify({
      ci: { ...rotation.ci, prepared: { key: stranger, since: 4 } },
    });
    const written = await core.replaceNamespacedSecret({ namespace: ns, name, body: live });
    await waitFor(
      async () => informer.get(ns, name)?.metadata?.resourceVersion === written.metadata?.resourceVersion,
      { what: "the informer to see the change" },
    );
    await assert.rejects(
      store.update(ref, revoke({ [userKey()]: 1 })),
      new RegExp(`key store: Secret ${ns}/${name}: names ${stranger} but has no key-${stranger}.nk`),
    );
    await store.forget(ref, [keys.roles.ci!]);
    const after = await core.readNamespacedSecret({ namespace: ns, name });
    assert.equal(after.metadata?.resourceVersion, written.metadata?.resourceVersion, "left as it was");
    assert.ok(storedSeed(after, keys.roles.ci!), "the discarded seed is still there");
  });

  it("reports a tampered Secret by name, never showing a seed, and never overwrites it", async () => {
    const ns = await namespace();
    const { store, informer } = await open(ns);
    const ref = { binding: `${ns}/acme-ci`, projectId: 3 };
    const keys = await store.ensure(ref, ["ci"]);
    const seeds = seedsOf(keys);
    const name = "nb-acme-ci-3";
    const what = new RegExp(`key store: Secret ${ns}/${name}: `);

    const tamper = async (change: (s: V1Secret) => void): Promise<void> => {
      const live = await core.readNamespacedSecret({ namespace: ns, name });
      change(live);
      const written = await core.replaceNamespacedSecret({ namespace: ns, name, body: live });
      await waitFor(
        async () => informer.get(ns, name)?.metadata?.resourceVersion === written.metadata?.resourceVersion,
        {
          what: "the informer to see the change",
        },
      );
    };
    const expectFailure = async (pattern: RegExp): Promise<void> => {
      // From the cache (get, ensure of known roles) and from a live read (ensure of a new role).
      for (const attempt of [store.get(ref), store.ensure(ref, ["ci"]), store.ensure(ref, ["ci", "new"])]) {
        await assert.rejects(attempt, (err: Error) => {
          assert.ok(err instanceof KeyStoreError, String(err));
          assert.match(err.message, what);
          assert.match(err.message, pattern);
          assertNoSeed(err, seeds);
          return true;
        });
      }
    };

    const stranger = NKeyPair.generate("account").publicKey;
    await tamper((s) => (s.metadata!.annotations!["natsbind.io/account"] = stranger));
    await expectFailure(new RegExp(`account.nk holds the seed of ${keys.account}, not ${stranger}`));

    await tamper((s) => (s.metadata!.annotations!["natsbind.io/account"] = keys.account));
    await tamper((s) => (s.metadata!.annotations!["natsbind.io/roles"] = "{"));
    await expectFailure(/annotation natsbind.io\/roles is not JSON/);

    await tamper((s) => (s.metadata!.annotations!["natsbind.io/roles"] = JSON.stringify(keys.roles)));
    // One character changed: the checksum no longer matches.
    const seed = seeds[0]!;
    const broken = `${seed.slice(0, 10)}${seed[10] === "A" ? "B" : "A"}${seed.slice(11)}`;
    await tamper((s) => (s.data!["account.nk"] = Buffer.from(broken).toString("base64")));
    await expectFailure(/account.nk is not a valid nkey seed/);

    await tamper((s) => (s.data!["account.nk"] = Buffer.from(seeds[0]!).toString("base64")));
    await tamper((s) => delete s.data!["role-ci.nk"]);
    await expectFailure(/has no role-ci.nk: restore it from backup/);

    await tamper((s) => (s.data!["role-ci.nk"] = Buffer.from(seeds[1]!).toString("base64")));
    await tamper((s) => (s.metadata!.labels!["natsbind.io/project-id"] = "4"));
    await expectFailure(/its name is not the name of its slot/);
    const after = await core.readNamespacedSecret({ namespace: ns, name });
    assert.equal(after.metadata?.labels?.["natsbind.io/project-id"], "4", "left as it was");
  });

  it("refuses a Secret of the slot's name that natsbind did not write", async () => {
    const ns = await namespace();
    const { store } = await open(ns);
    await core.createNamespacedSecret({
      namespace: ns,
      body: { metadata: { name: "nb-acme-ci-9" }, stringData: { "account.nk": "not ours" } },
    });
    await assert.rejects(
      store.ensure({ binding: `${ns}/acme-ci`, projectId: 9 }, ["ci"]),
      new RegExp(`Secret ${ns}/nb-acme-ci-9: was not written by natsbind`),
    );
    await assert.rejects(
      store.remove({ binding: `${ns}/acme-ci`, projectId: 9 }),
      /was not written by natsbind/,
    );
    const still = await core.readNamespacedSecret({ namespace: ns, name: "nb-acme-ci-9" });
    assert.deepEqual(Object.keys(still.data ?? {}), ["account.nk"]);
  });

  it("writes nothing for a binding it cannot own, and names API failures without data", async () => {
    const ns = await namespace();
    const { store } = await open(ns);
    await assert.rejects(store.ensure({ binding: `${ns}/unknown`, projectId: 1 }, ["ci"]), (err: Error) => {
      assert.ok(err instanceof KeyStoreError);
      assert.match(
        err.message,
        new RegExp(`binding ${ns}/unknown is not known \\(yet\\): cannot write Secret ${ns}/nb-unknown-1`),
      );
      return true;
    });
    await assert.rejects(core.readNamespacedSecret({ namespace: ns, name: "nb-unknown-1" }), { code: 404 });

    // A namespace that does not exist: the create fails; the error names the call, not the body.
    owners.set("missing-ns/acme-ci", { name: "acme-ci", uid: randomUUID() });
    await assert.rejects(
      store.ensure({ binding: "missing-ns/acme-ci", projectId: 1 }, ["ci"]),
      (err: Error) => {
        assert.ok(err instanceof KeyStoreError);
        assert.match(
          err.message,
          /^key store: create Secret missing-ns\/nb-acme-ci-1: HTTP 404 NotFound namespaces "missing-ns" not found$/,
        );
        assertNoSeed(err);
        return true;
      },
    );
  });

  it("release() drops the binding's ownerReference (deletionPolicy Retain); a later write adopts again", async () => {
    const ns = await namespace();
    const { store } = await open(ns);
    const binding = `${ns}/acme-ci`;
    const one = await store.ensure({ binding, projectId: 1 }, ["ci"]);
    await store.ensure({ binding, projectId: 2, environment: "prod" }, ["ci"]);
    await store.ensure({ binding: `${ns}/other`, projectId: 1 }, ["ci"]);
    assert.equal(await store.release(binding), 2);
    assert.equal(await store.release(binding), 0, "idempotent");
    const owned = async (name: string): Promise<string[]> =>
      ((await core.readNamespacedSecret({ namespace: ns, name })).metadata?.ownerReferences ?? []).map(
        (o) => o.name,
      );
    assert.deepEqual(await owned("nb-acme-ci-1"), []);
    assert.deepEqual(await owned("nb-other-1"), ["other"]);
    assert.deepEqual(
      (await store.list(binding)).map((s) => s.account)[0],
      one.account,
      "released Secrets still read as the binding's slots",
    );
    // The binding comes back (new uid) and needs another role: its Secret is adopted.
    owners.set(binding, { name: "acme-ci", uid: randomUUID() });
    const again = await store.ensure({ binding, projectId: 1 }, ["ci", "deploy"]);
    assert.equal(again.account, one.account);
    const refs = (await core.readNamespacedSecret({ namespace: ns, name: "nb-acme-ci-1" })).metadata
      ?.ownerReferences;
    assert.deepEqual(
      refs?.map((o) => o.uid),
      [owners.get(binding)!.uid],
    );
  });

  it("will not read from an informer that has not synced", async () => {
    const ns = await namespace();
    const informer = SecretKeyStore.informer({ kubeConfig: kube.kubeConfig(), namespace: ns });
    const store = new SecretKeyStore({
      kubeConfig: kube.kubeConfig(),
      secrets: informer,
      owner: () => undefined,
    });
    await assert.rejects(store.list(`${ns}/acme-ci`), /the Secret informer has not synced yet/);
    await assert.rejects(store.get({ binding: `${ns}/acme-ci`, projectId: 1 }), /has not synced yet/);
  });
});
