// A key slot is trusted only when its seeds derive the public keys it names and it lives where its
// ref puts it. Both stores: forged account and role keys (the issue 9 attack: a tenant points its
// slot at an account natsbind never managed), seeds of another key, misplaced, mistyped and
// oversized slots. Untrusted slots are left out of list() and reported by name, never with data.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import type { CoreV1Api, KubeConfig, V1Secret } from "@kubernetes/client-node";
import { DirectoryKeyStore, KeyStoreError } from "../../src/keystore/directory.ts";
import {
  accountSecretLabels,
  accountSecretName,
  checkAccountSecret,
  SecretKeyStore,
  type SecretCache,
} from "../../src/k8s/secret-keystore.ts";
import type { AccountKeys, AccountRef, UntrustedSlot } from "../../src/keystore/port.ts";
import { encodeWithChecksum } from "../../src/nats/encoding.ts";
import { NKeyPair } from "../../src/nats/keys.ts";

const SEED_SHAPE = /S[OAUNCPX][A-Z2-7]{56}/;
const finance = NKeyPair.generate("account");
const attacker = NKeyPair.generate("account");

/** A well-formed user public key, without making a key pair (thousands are needed). */
function userKey(): string {
  const bytes = new Uint8Array(33);
  bytes[0] = 20 << 3;
  crypto.getRandomValues(bytes.subarray(1));
  return encodeWithChecksum(bytes);
}

function seedText(key: NKeyPair): string {
  return new TextDecoder().decode(key.getSeed());
}

function assertNoSeed(value: unknown): void {
  const text = [String(value), JSON.stringify(value), inspect(value, { depth: 10 })].join("\n");
  assert.doesNotMatch(text, SEED_SHAPE);
}

let root: string;
let n = 0;
before(async () => {
  root = await mkdtemp(join(tmpdir(), "natsbind-trust-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("DirectoryKeyStore trusts only slots whose seeds derive their keys", () => {
  const binding = "acme";
  const ref = (projectId: number): AccountRef => ({ binding, projectId });

  async function setup() {
    const dir = join(root, `dir-${++n}`);
    const store = new DirectoryKeyStore(dir);
    const good = await store.ensure(ref(1), ["ci"]);
    const victim = await store.ensure(ref(2), ["ci"]);
    const slotFiles = await readdir(join(dir, "accounts", (await readdir(join(dir, "accounts")))[0]!));
    const fileOf = async (account: string): Promise<string> => {
      const bindingDir = join(dir, "accounts", (await readdir(join(dir, "accounts")))[0]!);
      for (const name of slotFiles) {
        const path = join(bindingDir, name);
        if (JSON.parse(await readFile(path, "utf8")).account === account) return path;
      }
      throw new Error("no slot file");
    };
    return { dir, store, good, victim, slot2: await fileOf(victim.account) };
  }

  async function listed(store: DirectoryKeyStore) {
    const untrusted: UntrustedSlot[] = [];
    const slots = await store.list(binding, untrusted);
    return { accounts: slots.map((s) => s.account), untrusted };
  }

  it("leaves out a slot that names an account it has no seed for, and reports it by path", async () => {
    const { store, good, victim, slot2 } = await setup();
    await writeFile(slot2, JSON.stringify({ ref: ref(2), account: finance.publicKey, roles: victim.roles }));
    const { accounts, untrusted } = await listed(store);
    assert.deepEqual(accounts, [good.account], "the other slot is still listed");
    assert.equal(untrusted.length, 1);
    assert.equal(untrusted[0]!.source, slot2);
    assert.deepEqual(untrusted[0]!.ref, ref(2));
    assert.match(untrusted[0]!.message, new RegExp(`names ${finance.publicKey}, whose seed is missing`));
    await assert.rejects(store.get(ref(2)), KeyStoreError);
    await assert.rejects(store.ensure(ref(2), ["ci"]), KeyStoreError);
    assertNoSeed(untrusted);
  });

  it("leaves out a slot whose role key is the attacker's, even with the attacker's seed stored for it", async () => {
    const { dir, store, victim, slot2 } = await setup();
    // The role seed derives the claimed role key; the account still is finance's.
    await writeFile(join(dir, `${attacker.publicKey}.nk`), `${seedText(attacker)}\n`);
    await writeFile(
      slot2,
      JSON.stringify({ ref: ref(2), account: finance.publicKey, roles: { ci: attacker.publicKey } }),
    );
    const { untrusted } = await listed(store);
    assert.match(untrusted[0]!.message, new RegExp(`names ${finance.publicKey}`));
    // The account is its own, the role key is not backed by a seed.
    const stranger = NKeyPair.generate("account").publicKey;
    await writeFile(slot2, JSON.stringify({ ref: ref(2), account: victim.account, roles: { ci: stranger } }));
    const again = await listed(new DirectoryKeyStore(dir));
    assert.match(again.untrusted[0]!.message, new RegExp(`names ${stranger}, whose seed is missing`));
  });

  it("refuses to hand out a seed that does not derive the key it is stored under", async () => {
    const { dir, store, victim, slot2 } = await setup();
    // finance's name, the attacker's seed. list() sees that every named key has a seed file and
    // does not derive them all (that cost ~4 s per start at 10,000 projects; the directory is the
    // admin's, kept 0700): the seed is checked when loaded, before it can sign. Pushing over or
    // deleting finance is refused by the resolver-side ownership check (reconciler tests).
    await writeFile(join(dir, `${finance.publicKey}.nk`), `${seedText(attacker)}\n`);
    await writeFile(slot2, JSON.stringify({ ref: ref(2), account: finance.publicKey, roles: victim.roles }));
    const holdsOther = new RegExp(`holds the seed of ${attacker.publicKey}, not ${finance.publicKey}`);
    for (const attempt of [() => store.get(ref(2)), () => store.ensure(ref(2), ["ci", "deploy"])]) {
      await assert.rejects(attempt(), (err: Error) => {
        assert.ok(err instanceof KeyStoreError);
        assert.match(err.message, holdsOther);
        assertNoSeed([err.message, err.stack]);
        return true;
      });
    }
  });

  it("leaves out a slot stored in another slot's file, and mistyped or oversized slot files", async () => {
    const { store, good, victim, slot2 } = await setup();
    // A valid slot of project 1, copied into project 2's file (a delete of it would hit project 1).
    await writeFile(slot2, JSON.stringify({ ref: ref(1), account: good.account, roles: good.roles }));
    let { untrusted } = await listed(store);
    assert.match(untrusted[0]!.message, /names a slot that does not belong in this file/);
    assert.equal(untrusted[0]!.ref, undefined, "a misplaced slot is no slot of this place");

    await writeFile(slot2, JSON.stringify({ ref: ref(2), account: victim.account, roles: { ci: 42 } }));
    ({ untrusted } = await listed(store));
    assert.match(untrusted[0]!.message, /roles\.ci: /);

    await writeFile(slot2, JSON.stringify({ ref: ref(2), account: "A".repeat(1000), roles: {} }));
    ({ untrusted } = await listed(store));
    assert.match(untrusted[0]!.message, /account: /);

    // The bound leaves room for 10,000 revocations (~800 KB).
    await writeFile(slot2, `{"ref":${JSON.stringify(ref(2))},"pad":"${"x".repeat(2_200_000)}"}`);
    ({ untrusted } = await listed(store));
    assert.match(untrusted[0]!.message, /is larger than 2097152 bytes/);
    assert.deepEqual(
      (await store.list(binding)).map((s) => s.account),
      [good.account],
    );
  });

  it("the owner's cache reports untrusted slots on every list, not only the first", async () => {
    const dir = join(root, `dir-${++n}`);
    await mkdir(dir, { recursive: true });
    const owner = new DirectoryKeyStore(dir, { owner: true });
    const keys = await owner.ensure(ref(3), ["ci"]);
    await rm(join(dir, `${keys.account}.nk`));
    const fresh = new DirectoryKeyStore(dir, { owner: true });
    for (let i = 0; i < 2; i++) {
      const { accounts, untrusted } = await listed(fresh);
      assert.deepEqual(accounts, []);
      assert.equal(untrusted.length, 1);
    }
  });
});

describe("SecretKeyStore trusts only Secrets whose seeds derive their annotations", () => {
  const ns = "team-a";
  const ref: AccountRef = { binding: `${ns}/app`, projectId: 7 };

  function secretOf(keys: { account: NKeyPair; roles: Record<string, NKeyPair> }, r = ref): V1Secret {
    const data: Record<string, string> = {
      "account.nk": Buffer.from(seedText(keys.account)).toString("base64"),
    };
    for (const [role, key] of Object.entries(keys.roles))
      data[`role-${role}.nk`] = Buffer.from(seedText(key)).toString("base64");
    return {
      metadata: {
        name: accountSecretName(r),
        namespace: ns,
        uid: `uid-${++n}`,
        labels: accountSecretLabels(r),
        annotations: {
          "natsbind.io/binding": "app",
          "natsbind.io/account": keys.account.publicKey,
          "natsbind.io/roles": JSON.stringify(
            Object.fromEntries(Object.entries(keys.roles).map(([role, k]) => [role, k.publicKey])),
          ),
        },
        ownerReferences: [
          {
            apiVersion: "natsbind.io/v1alpha1",
            kind: "NatsBinding",
            name: "app",
            uid: "b",
            controller: true,
          },
        ],
      },
      type: "Opaque",
      data,
    };
  }

  const own = () => ({ account: NKeyPair.generate("account"), roles: { ci: NKeyPair.generate("account") } });

  function rejects(secret: V1Secret, pattern: RegExp): void {
    assert.throws(
      () => checkAccountSecret(secret),
      (err: Error) => {
        assert.ok(err instanceof KeyStoreError, String(err));
        assert.match(err.message, new RegExp(`key store: Secret ${ns}/${secret.metadata!.name}: `));
        assert.match(err.message, pattern);
        assertNoSeed(err);
        return true;
      },
    );
  }

  it("accepts the Secret natsbind writes", () => {
    const keys = own();
    assert.equal(checkAccountSecret(secretOf(keys)).account, keys.account.publicKey);
  });

  it("refuses an account annotation naming an account it has no seed for (the finance attack)", () => {
    const secret = secretOf(own());
    secret.metadata!.annotations!["natsbind.io/account"] = finance.publicKey;
    secret.metadata!.annotations!["natsbind.io/roles"] = JSON.stringify({ ci: attacker.publicKey });
    rejects(secret, new RegExp(`account.nk holds the seed of A[A-Z2-7]+, not ${finance.publicKey}`));
  });

  it("refuses a role annotation naming a key its role seed does not derive", () => {
    const secret = secretOf(own());
    secret.metadata!.annotations!["natsbind.io/roles"] = JSON.stringify({ ci: attacker.publicKey });
    rejects(secret, new RegExp(`role-ci.nk holds the seed of A[A-Z2-7]+, not ${attacker.publicKey}`));
  });

  it("refuses the attacker's own role seed when the account seed does not derive the claimed account", () => {
    const keys = own();
    const secret = secretOf({ account: keys.account, roles: { ci: attacker } });
    assert.equal(checkAccountSecret(secret).roles.ci, attacker.publicKey, "role seed and key agree");
    secret.metadata!.annotations!["natsbind.io/account"] = finance.publicKey;
    rejects(secret, new RegExp(`not ${finance.publicKey}`));
  });

  it("refuses the seed of another key, a missing seed, and a seed of the wrong kind", () => {
    const keys = own();
    const secret = secretOf(keys);
    secret.data!["account.nk"] = Buffer.from(seedText(attacker)).toString("base64");
    rejects(secret, new RegExp(`holds the seed of ${attacker.publicKey}, not ${keys.account.publicKey}`));
    delete secret.data!["account.nk"];
    rejects(secret, /has no account.nk/);
    secret.data!["account.nk"] = Buffer.from(seedText(NKeyPair.generate("user"))).toString("base64");
    rejects(secret, /account.nk/);
  });

  it("refuses mistyped and oversized values", () => {
    const cases: Array<[(s: V1Secret) => void, RegExp]> = [
      [(s) => (s.metadata!.annotations!["natsbind.io/roles"] = "[1]"), /is not a JSON object/],
      [(s) => (s.metadata!.annotations!["natsbind.io/roles"] = '{"ci":7}'), /role ci is not an account/],
      [(s) => (s.metadata!.annotations!["natsbind.io/roles"] = "x".repeat(20_000)), /larger than 16384/],
      [
        (s) => (s.metadata!.annotations!["natsbind.io/account"] = "A".repeat(5000)),
        /not an account public key/,
      ],
      [(s) => (s.data!["account.nk"] = "QUFB".repeat(1000)), /is not a seed \(larger than 128 bytes\)/],
      [(s) => (s.metadata!.annotations!["natsbind.io/environment"] = "e".repeat(300)), /1 to 255 characters/],
      [(s) => (s.metadata!.labels!["natsbind.io/project-id"] = "7 "), /is not a project id/],
    ];
    for (const [change, pattern] of cases) {
      const secret = secretOf(own());
      change(secret);
      rejects(secret, pattern);
    }
  });

  it("refuses a Secret that claims a binding other than the one that owns it", () => {
    const secret = secretOf(own());
    secret.metadata!.ownerReferences![0]!.name = "other";
    rejects(secret, /it is owned by binding "other", not app/);
    // Released (no owner) is fine: deletionPolicy Retain drops the ownerReference.
    secret.metadata!.ownerReferences = [];
    assert.doesNotThrow(() => checkAccountSecret(secret));
  });

  const b64 = (text: string): string => Buffer.from(text).toString("base64");
  const user = NKeyPair.generate("user").publicKey;

  /** A Secret natsbind could have written mid-rotation: ci has a prepared and a retiring key. */
  function rotating(): {
    secret: V1Secret;
    keys: ReturnType<typeof own>;
    prepared: NKeyPair;
    retiring: NKeyPair;
  } {
    const keys = own();
    const prepared = NKeyPair.generate("account");
    const retiring = NKeyPair.generate("account");
    const secret = secretOf(keys);
    secret.metadata!.annotations!["natsbind.io/rotation"] = JSON.stringify({
      ci: {
        activeSince: 1,
        prepared: { key: prepared.publicKey, since: 2 },
        retiring: [{ key: retiring.publicKey, since: 1, notBefore: 3 }],
      },
    });
    secret.data![`key-${prepared.publicKey}.nk`] = b64(seedText(prepared));
    secret.data![`key-${retiring.publicKey}.nk`] = b64(seedText(retiring));
    secret.data!["revocations.json"] = b64(JSON.stringify({ [user]: 5, "*": 6 }));
    return { secret, keys, prepared, retiring };
  }

  it("accepts a Secret mid-rotation whose every named key has its seed", () => {
    const { secret, keys, prepared, retiring } = rotating();
    const discarded = NKeyPair.generate("account").publicKey;
    secret.metadata!.annotations!["natsbind.io/discard"] = JSON.stringify([discarded]);
    assert.deepEqual(checkAccountSecret(secret), {
      ref,
      account: keys.account.publicKey,
      roles: { ci: keys.roles.ci.publicKey },
      rotation: {
        ci: {
          activeSince: 1,
          prepared: { key: prepared.publicKey, since: 2 },
          retiring: [{ key: retiring.publicKey, since: 1, notBefore: 3 }],
        },
      },
      revocations: { [user]: 5, "*": 6 },
      discard: [discarded],
    });
  });

  it("refuses a prepared or retiring key without its seed, or with the seed of another key", () => {
    const cases: Array<
      [(r: ReturnType<typeof rotating>) => void, (r: ReturnType<typeof rotating>) => RegExp]
    > = [
      [
        (r) => delete r.secret.data![`key-${r.prepared.publicKey}.nk`],
        (r) => new RegExp(`names ${r.prepared.publicKey} but has no key-${r.prepared.publicKey}.nk`),
      ],
      [
        (r) => delete r.secret.data![`key-${r.retiring.publicKey}.nk`],
        (r) => new RegExp(`names ${r.retiring.publicKey} but has no key-${r.retiring.publicKey}.nk`),
      ],
      [
        (r) => (r.secret.data![`key-${r.retiring.publicKey}.nk`] = b64(seedText(attacker))),
        (r) =>
          new RegExp(
            `key-${r.retiring.publicKey}.nk holds the seed of ${attacker.publicKey}, not ${r.retiring.publicKey}`,
          ),
      ],
      [
        // The attacker's key as the prepared key, with the attacker's seed under a role's file name.
        (r) => {
          const rotation = JSON.parse(r.secret.metadata!.annotations!["natsbind.io/rotation"]!);
          rotation.ci.prepared.key = attacker.publicKey;
          r.secret.metadata!.annotations!["natsbind.io/rotation"] = JSON.stringify(rotation);
          r.secret.data!["role-ops.nk"] = b64(seedText(attacker));
        },
        () => new RegExp(`names ${attacker.publicKey} but has no key-${attacker.publicKey}.nk`),
      ],
      [
        (r) => (r.secret.data![`key-${r.prepared.publicKey}.nk`] = b64(seedText(NKeyPair.generate("user")))),
        (r) => new RegExp(`key-${r.prepared.publicKey}.nk`),
      ],
    ];
    for (const [change, pattern] of cases) {
      const r = rotating();
      change(r);
      rejects(r.secret, pattern(r));
    }
  });

  it("refuses malformed, oversized or inconsistent rotation and discard annotations, never showing a seed", () => {
    const rotationOf = (value: unknown) => (s: V1Secret) =>
      (s.metadata!.annotations!["natsbind.io/rotation"] =
        typeof value === "string" ? value : JSON.stringify(value));
    const discardOf = (value: unknown) => (s: V1Secret) =>
      (s.metadata!.annotations!["natsbind.io/discard"] =
        typeof value === "string" ? value : JSON.stringify(value));
    const seed = seedText(attacker);
    const cases: Array<[(s: V1Secret, active: string) => void, RegExp]> = [
      [rotationOf("{"), /annotation natsbind.io\/rotation is not JSON/],
      [rotationOf([]), /annotation natsbind.io\/rotation: \(top level\): /],
      [rotationOf({ ops: { activeSince: 1 } }), /rotation: role ops has no active key in natsbind.io\/roles/],
      [rotationOf({ ci: { activeSince: -1 } }), /rotation: ci.activeSince: /],
      [rotationOf({ ci: { activeSince: "1" } }), /rotation: ci.activeSince: /],
      [rotationOf({ ci: { owner: "attacker" } }), /rotation: ci: unknown field\(s\) owner/],
      [rotationOf({ ci: { [seed]: 1 } }), /rotation: ci: unknown field\(s\) \(key\)/],
      [
        rotationOf({ ci: { prepared: { key: seed, since: 1 } } }),
        /rotation: ci.prepared.key: not an account public key/,
      ],
      [rotationOf({ [seed]: { activeSince: 1 } }), /rotation: \(key\): /],
      [
        rotationOf({
          ci: {
            retiring: Array.from({ length: 17 }, () => ({ key: attacker.publicKey, since: 1, notBefore: 1 })),
          },
        }),
        /rotation: ci.retiring: /,
      ],
      [rotationOf("x".repeat(140_000)), /annotation natsbind.io\/rotation is larger than 131072 characters/],
      [rotationOf(`${"[".repeat(100)}`), /rotation nests deeper than 64 levels/],
      [
        (s, active) => rotationOf({ ci: { prepared: { key: active, since: 1 } } })(s),
        /names key A[A-Z2-7]{55} twice/,
      ],
      [discardOf({}), /annotation natsbind.io\/discard: \(top level\): /],
      [discardOf([seed]), /discard: 0: not an account public key/],
      [discardOf(Array.from({ length: 257 }, () => attacker.publicKey)), /discard: \(top level\): /],
      [discardOf("x".repeat(20_000)), /discard is larger than 16384 characters/],
      [
        (s, active) => discardOf([active])(s),
        /annotation natsbind.io\/discard lists A[A-Z2-7]{55}, which the slot names/,
      ],
      [
        discardOf([attacker.publicKey, attacker.publicKey]),
        /discard lists A[A-Z2-7]{55}, which the slot names/,
      ],
    ];
    for (const [change, pattern] of cases) {
      const keys = own();
      const secret = secretOf(keys);
      change(secret, keys.roles.ci.publicKey);
      rejects(secret, pattern);
    }
  });

  it("refuses an oversized or mistyped revocations.json, never showing what it holds", () => {
    const seed = seedText(attacker);
    const many = Object.fromEntries(Array.from({ length: 10_001 }, () => [userKey(), 1]));
    const cases: Array<[string, RegExp]> = [
      ["x".repeat(900_000), /revocations.json is larger than 819200 bytes/],
      ["{", /revocations.json is not JSON/],
      ["[]", /revocations.json: \(top level\): /],
      [JSON.stringify({ [user]: -1 }), new RegExp(`revocations.json: ${user}: `)],
      [JSON.stringify({ [user]: "1" }), new RegExp(`revocations.json: ${user}: `)],
      [JSON.stringify({ [user]: 1.5 }), new RegExp(`revocations.json: ${user}: `)],
      [JSON.stringify({ [attacker.publicKey]: 1 }), /revocations.json: .*not a user public key or "\*"/],
      [JSON.stringify({ [seed]: 1 }), /revocations.json: \(key\): .*not a user public key or "\*"/],
      [JSON.stringify({ [seed]: "x" }), /revocations.json: \(key\)/],
      [JSON.stringify(many), /revocations.json: \(top level\): more than 10000 entries/],
      [`{"a":${"[".repeat(100)}`, /revocations.json nests deeper than 64 levels/],
    ];
    for (const [text, pattern] of cases) {
      const secret = secretOf(own());
      secret.data!["revocations.json"] = b64(text);
      rejects(secret, pattern);
    }
  });

  it("list() reports a Secret with forged rotation state and leaves it out; get() refuses it", async () => {
    const good = rotating();
    const forged = rotating();
    forged.secret.metadata!.name = accountSecretName({ ...ref, projectId: 8 });
    forged.secret.metadata!.labels = accountSecretLabels({ ...ref, projectId: 8 });
    delete forged.secret.data![`key-${forged.prepared.publicKey}.nk`];
    const objects = [good.secret, forged.secret];
    const store = new SecretKeyStore({
      kubeConfig: {} as KubeConfig,
      core: {} as CoreV1Api,
      secrets: {
        hasSynced: () => true,
        get: (namespace, name) =>
          objects.find((o) => o.metadata?.namespace === namespace && o.metadata?.name === name),
        list: (namespace) => objects.filter((o) => o.metadata?.namespace === namespace),
        upsert: () => undefined,
        forget: () => undefined,
      },
      owner: () => undefined,
    });
    const untrusted: UntrustedSlot[] = [];
    const slots = await store.list(ref.binding, untrusted);
    assert.deepEqual(
      slots.map((s) => s.rotation?.ci?.prepared?.key),
      [good.prepared.publicKey],
    );
    assert.deepEqual(
      untrusted.map((u) => [u.source, u.ref?.projectId]),
      [[`Secret ${ns}/${forged.secret.metadata!.name}`, 8]],
    );
    assert.match(untrusted[0]!.message, new RegExp(`has no key-${forged.prepared.publicKey}.nk`));
    assertNoSeed(untrusted);
    await assert.rejects(store.get({ ...ref, projectId: 8 }), KeyStoreError);
    await assert.rejects(
      store.update({ ...ref, projectId: 8 }, (s) => s),
      KeyStoreError,
    );
    await store.forget({ ...ref, projectId: 8 }, [forged.prepared.publicKey]); // no-op: no request made
  });

  it("list() leaves forged Secrets out and reports them by name; the binding's other slots stay", async () => {
    const keys = own();
    const good = secretOf(keys);
    const forged = secretOf(own(), { ...ref, projectId: 8 });
    forged.metadata!.annotations!["natsbind.io/account"] = finance.publicKey;
    // A fake slot of a project outside the binding, naming an account it has no seed for.
    const billing = NKeyPair.generate("account").publicKey;
    const fake = secretOf(own(), { ...ref, projectId: 999 });
    fake.metadata!.annotations!["natsbind.io/account"] = billing;
    // Relabelled to another project: it claims project 10 but sits in project 9's place.
    const mislabelled = secretOf(own(), { ...ref, projectId: 9 });
    mislabelled.metadata!.labels!["natsbind.io/project-id"] = "10";
    const objects = [good, forged, mislabelled, fake];
    const cache: SecretCache = {
      hasSynced: () => true,
      get: (namespace, name) =>
        objects.find((o) => o.metadata?.namespace === namespace && o.metadata?.name === name),
      list: (namespace) => objects.filter((o) => o.metadata?.namespace === namespace),
      upsert: () => undefined,
      forget: () => undefined,
    };
    const store = new SecretKeyStore({
      kubeConfig: {} as KubeConfig,
      core: {} as CoreV1Api,
      secrets: cache,
      owner: () => undefined,
    });
    const untrusted: UntrustedSlot[] = [];
    const slots = await store.list(ref.binding, untrusted);
    assert.deepEqual(
      slots.map((s) => s.account),
      [keys.account.publicKey],
    );
    assert.deepEqual(
      untrusted.map((u) => [u.source, u.ref?.projectId]),
      [
        [`Secret ${ns}/${forged.metadata!.name}`, 8],
        [`Secret ${ns}/${mislabelled.metadata!.name}`, undefined],
        [`Secret ${ns}/${fake.metadata!.name}`, 999],
      ],
    );
    assert.match(untrusted[1]!.message, /its name is not the name of its slot/);
    assert.match(untrusted[2]!.message, new RegExp(`not ${billing}`));
    assertNoSeed(untrusted);
    // get() and remove() refuse it as well: never used to sign or to delete.
    await assert.rejects(store.get({ ...ref, projectId: 8 }), KeyStoreError);
    const other: AccountKeys | undefined = await store.get(ref);
    assert.equal(other?.account, keys.account.publicKey);
  });
});
