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
import { NKeyPair } from "../../src/nats/keys.ts";

const SEED_SHAPE = /S[OAUNCPX][A-Z2-7]{56}/;
const finance = NKeyPair.generate("account");
const attacker = NKeyPair.generate("account");

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

    await writeFile(slot2, `{"ref":${JSON.stringify(ref(2))},"pad":"${"x".repeat(2_100_000)}"}`);
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
