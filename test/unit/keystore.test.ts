import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { createHash } from "node:crypto";
import { DirectoryKeyStore, KeyStoreError } from "../../src/keystore/directory.ts";
import { accountSecretLabels, accountSecretName, labelValue } from "../../src/k8s/secret-keystore.ts";
import { keyStoreContract } from "../support/keystore-contract.ts";
import { changeActivate, changeEmergency, changePrepare, changeRetire } from "../../src/rotation/phases.ts";
import { KeyDirectory, KeyDirectoryModeError, secureKeyDirectory } from "../../src/store/key-directory.ts";

let root: string;
let n = 0;
const freshDir = (): string => join(root, `store-${++n}`);

/** The seed file of `publicKey` in a key directory (KeyDirectory checks that it derives the key). */
async function storedSeed(dir: string, publicKey: string): Promise<string | undefined> {
  const key = await new KeyDirectory(dir).load(publicKey);
  return key && new TextDecoder().decode(key.getSeed());
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), "natsbind-keystore-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

describe("DirectoryKeyStore", () => {
  const ref = { binding: "natsbind/acme-ci", projectId: 42 };

  describe("as a plain reader", () => {
    keyStoreContract({
      async fresh() {
        const dir = freshDir();
        return {
          store: new DirectoryKeyStore(dir),
          reopen: async () => new DirectoryKeyStore(dir),
          bindings: ["natsbind/acme-ci", "natsbind/other"],
          storedSeed: (_ref, publicKey) => storedSeed(dir, publicKey),
        };
      },
    });
  });

  describe("as the owner of its directory (natsbind run)", () => {
    keyStoreContract({
      async fresh() {
        const dir = freshDir();
        return {
          store: new DirectoryKeyStore(dir, { owner: true }),
          reopen: async () => new DirectoryKeyStore(dir, { owner: true }),
          bindings: ["natsbind/acme-ci", "natsbind/other"],
          storedSeed: (_ref, publicKey) => storedSeed(dir, publicKey),
        };
      },
    });
  });

  it("forget() cut short before a seed is deleted leaves the key in discard: the next forget() deletes it, no retired seed stays behind", async () => {
    const dir = freshDir();
    const store = new DirectoryKeyStore(dir, { owner: true });
    await store.ensure(ref, ["ci"], 1_000);
    await store.update(ref, changePrepare("ci", 2_000));
    const active = await store.update(ref, changeActivate("ci", 3_000, { overlapMs: 1_000 }));
    const old = active.rotation!.ci!.retiring![0]!.key;
    await store.update(ref, changeRetire("ci", [old]));
    // The removal of the seed fails (rm refuses a non-empty directory), as if natsbind died there.
    const seedPath = join(dir, `${old}.nk`);
    const seed = await readFile(seedPath, "utf8");
    await rm(seedPath);
    await mkdir(join(seedPath, "x"), { recursive: true });
    await assert.rejects(store.forget(ref, [old]));
    await rm(seedPath, { recursive: true });
    await writeFile(seedPath, seed, { mode: 0o600 });
    const [slot] = await new DirectoryKeyStore(dir).list(ref.binding);
    assert.deepEqual(slot!.discard, [old], "still to be forgotten");
    await store.forget(ref, [old]);
    assert.equal(await storedSeed(dir, old), undefined, "the retired key's seed is gone");
    const [after] = await new DirectoryKeyStore(dir).list(ref.binding);
    assert.ok(!("discard" in after!));
  });

  it("get() beside emergency rotations never reports a seed missing (a read raced a forget)", async () => {
    // The rotation soak failed once in CI: an exchange read the slot, an emergency rotation of
    // another role dropped that role's key and forget() deleted its seed, and the read then found
    // the seed gone ("issuance failed", 503). Readers and a rotating writer run side by side here.
    const dir = freshDir();
    const store = new DirectoryKeyStore(dir, { owner: true });
    await store.ensure(ref, ["ci", "spare"], 1_000);
    let stop = false;
    let reads = 0;
    const failures: string[] = [];
    const reader = async (): Promise<void> => {
      while (!stop) {
        try {
          const keys = await store.get(ref);
          assert.ok(keys?.roleKeys.get("spare"));
          reads += 1;
        } catch (err) {
          failures.push((err as Error).message);
        }
      }
    };
    const readers = [reader(), reader(), reader(), reader()];
    for (let i = 0; i < 150; i++) {
      const slot = await store.update(ref, changeEmergency("spare", 2_000 + i));
      await store.forget(ref, slot.discard ?? []);
    }
    stop = true;
    await Promise.all(readers);
    assert.deepEqual(
      failures.slice(0, 3),
      [],
      `${failures.length} of ${reads + failures.length} reads failed`,
    );
    assert.ok(reads > 150, `the readers ran beside the writer (${reads} reads)`);
  });

  it("writes three seed files for an account with two roles, and nothing when the keys exist", async () => {
    const dir = freshDir();
    const store = new DirectoryKeyStore(dir);
    await store.ensure(ref, ["ci", "deploy"]);
    const files = await filesUnder(dir);
    assert.equal(files.filter((f) => f.endsWith(".nk")).length, 3);
    await new DirectoryKeyStore(dir).ensure(ref, ["ci", "deploy"]);
    assert.deepEqual(await filesUnder(dir), files, "nothing new written");
  });

  it("writes seeds 0600 and slot files without secrets", async () => {
    const dir = freshDir();
    const store = new DirectoryKeyStore(dir);
    const keys = await store.ensure(ref, ["ci"]);
    const seeds = [keys.accountKey, ...keys.roleKeys.values()].map((k) =>
      new TextDecoder().decode(k.getSeed()),
    );
    for (const file of await filesUnder(dir)) {
      assert.equal((await stat(join(dir, file))).mode & 0o777, 0o600, file);
      if (file.endsWith(".json")) {
        const text = await readFile(join(dir, file), "utf8");
        for (const seed of seeds) assert.ok(!text.includes(seed), `${file} holds a seed`);
        assert.deepEqual(JSON.parse(text), { ref, account: keys.account, roles: keys.roles });
      }
    }
  });

  it("after a crash between seed and slot writes, starts fresh; a slot with a lost seed is an error", async () => {
    const dir = freshDir();
    const store = new DirectoryKeyStore(dir);
    const before = await store.ensure(ref, ["ci"]);
    // The crash: seeds are on disk, the slot file never made it.
    const slotFile = (await filesUnder(dir)).find((f) => f.endsWith(".json"))!;
    await rm(join(dir, slotFile));
    const after = await store.ensure(ref, ["ci"]);
    assert.notEqual(after.account, before.account, "unnamed seeds are not reused: no JWT named them");

    // A seed named by a slot vanished: refuse rather than mint a different key.
    await rm(join(dir, `${after.roles.ci}.nk`));
    await assert.rejects(store.ensure(ref, ["ci"]), (err: Error) => {
      assert.ok(err instanceof KeyStoreError);
      assert.match(
        err.message,
        new RegExp(`names ${after.roles.ci}, whose seed is missing: restore it from backup`),
      );
      return true;
    });
  });

  it("reports a corrupt slot file with its path and field", async () => {
    const dir = freshDir();
    const store = new DirectoryKeyStore(dir);
    await store.ensure(ref, ["ci"]);
    const slotFile = join(
      dir,
      (await filesUnder(dir)).find((f) => f.endsWith(".json"))!,
    );
    await writeFile(slotFile, JSON.stringify({ ref, account: "not-a-key", roles: {} }));
    await assert.rejects(store.get(ref), /key store: .*\.json: account: /);
    await writeFile(slotFile, "{");
    await assert.rejects(store.get(ref), /is not JSON/);
    await writeFile(slotFile, `{"ref": ${"[".repeat(60_000)}`);
    await assert.rejects(
      store.get(ref),
      /key store: .*\.json nests deeper than 64 levels at line 1; not parsed/,
    );
  });

  it("removes the slot file and its seeds", async () => {
    const dir = freshDir();
    const store = new DirectoryKeyStore(dir);
    await store.ensure(ref, ["ci"]);
    await store.remove(ref);
    await store.remove(ref);
    assert.equal(await store.get(ref), undefined);
    assert.deepEqual(await filesUnder(dir), []);
  });

  it("caches slots only for the owning process; a plain reader sees the files as they are", async () => {
    const dir = freshDir();
    const owner = new DirectoryKeyStore(dir, { owner: true });
    const reader = new DirectoryKeyStore(dir);
    assert.deepEqual(await reader.list(ref.binding), []);
    assert.deepEqual(await owner.list(ref.binding), []);
    const keys = await owner.ensure(ref, ["ci"]);
    assert.deepEqual(
      (await owner.list(ref.binding)).map((s) => s.account),
      [keys.account],
      "the owner's cache follows its own writes",
    );
    assert.deepEqual(
      (await reader.list(ref.binding)).map((s) => s.account),
      [keys.account],
      "a reader that listed before the write still sees it",
    );
  });

  it("keeps hostile binding and environment names inside the directory", async () => {
    const dir = freshDir();
    const store = new DirectoryKeyStore(dir);
    await store.ensure({ binding: "../../etc/evil", projectId: 1, environment: "../../x y" }, ["ci"]);
    for (const file of await filesUnder(dir)) assert.ok(!file.startsWith(".."), file);
    assert.equal((await store.list("../../etc/evil")).length, 1);
  });
});

describe("secureKeyDirectory (natsbind run, local mode)", () => {
  const modeOf = async (path: string): Promise<number> => (await stat(path)).mode & 0o777;
  const ref = { binding: "natsbind/acme-ci", projectId: 42 };

  // Issue 9, finding 8: a key directory someone made 0777 stayed 0777, so any local user could
  // read, add or swap seed and slot files.
  it("tightens a 0777 key directory and the directories natsbind made in it to 0700, and says so", async () => {
    const dir = freshDir();
    const store = new DirectoryKeyStore(dir, { owner: true });
    await store.ensure(ref, ["ci"]);
    const bindingDir = join(dir, "accounts", (await readdir(join(dir, "accounts")))[0]!);
    for (const d of [dir, join(dir, "accounts"), bindingDir]) await chmod(d, 0o777);
    await mkdir(join(dir, "group-readable"), { mode: 0o750 });
    await chmod(join(dir, "group-readable"), 0o750);

    const changes = await secureKeyDirectory(dir);
    assert.deepEqual(
      changes.map((c) => [relative(dir, c.path), c.from, c.to]).sort(),
      [
        ["", "0777", "0700"],
        ["accounts", "0777", "0700"],
        [relative(dir, bindingDir), "0777", "0700"],
        ["group-readable", "0750", "0700"],
      ].sort(),
    );
    for (const d of [dir, join(dir, "accounts"), bindingDir, join(dir, "group-readable")]) {
      assert.equal(await modeOf(d), 0o700, d);
    }
    // Nothing else changed: the seeds are still there and readable by natsbind.
    const keys = await new DirectoryKeyStore(dir).get(ref);
    assert.ok(keys?.roleKeys.get("ci"), "the slot and its seeds are intact");
    // Idempotent: a second start changes nothing.
    assert.deepEqual(await secureKeyDirectory(dir), []);
  });

  it("creates a missing key directory 0700 and leaves a private one alone", async () => {
    const dir = join(freshDir(), "nested", "keys");
    assert.deepEqual(await secureKeyDirectory(dir), []);
    assert.equal(await modeOf(dir), 0o700);
    assert.deepEqual(await secureKeyDirectory(dir), []);
  });

  it("refuses to start when the directory cannot be made private, naming it and its mode", async () => {
    const dir = freshDir();
    await mkdir(dir);
    await chmod(dir, 0o777);
    // As root every chmod succeeds: the refusal (someone else's directory, a read-only mount) is
    // simulated by a chmod that fails as the kernel would.
    const eperm = async (): Promise<void> => {
      throw Object.assign(new Error("operation not permitted"), { code: "EPERM" });
    };
    await assert.rejects(
      secureKeyDirectory(dir, { chmod: eperm }),
      (err: unknown) =>
        err instanceof KeyDirectoryModeError &&
        err.message.includes(dir) &&
        /mode 0777/.test(err.message) &&
        /EPERM/.test(err.message),
    );
    assert.equal(await modeOf(dir), 0o777, "nothing changed");
  });

  it("refuses a key directory that is a file, and a directory link inside it", async () => {
    const file = join(freshDir());
    await writeFile(file, "not a directory");
    await assert.rejects(
      secureKeyDirectory(file),
      (err: unknown) => err instanceof KeyDirectoryModeError && /is not a directory/.test(err.message),
    );
    const dir = freshDir();
    const elsewhere = freshDir();
    await mkdir(dir, { mode: 0o700 });
    await mkdir(elsewhere, { mode: 0o777 });
    await symlink(elsewhere, join(dir, "accounts"));
    await assert.rejects(
      secureKeyDirectory(dir),
      (err: unknown) =>
        err instanceof KeyDirectoryModeError &&
        /accounts is a symbolic link to a directory/.test(err.message),
    );
    // The key directory itself may be a link: its target is what gets checked.
    const linked = freshDir();
    await symlink(elsewhere, linked);
    await chmod(elsewhere, 0o777);
    const changes = await secureKeyDirectory(linked);
    assert.equal(changes.length, 1);
    assert.equal(await modeOf(elsewhere), 0o700);
  });
});

describe("accountSecretName and the Secret labels (Kubernetes key store)", () => {
  const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
  const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
  const h8 = (v: string): string => createHash("sha256").update(v).digest("hex").slice(0, 8);

  it("names project slots nb-<binding>-<project> and environment slots with a readable part and a hash", () => {
    assert.equal(accountSecretName({ binding: "ns/acme-ci", projectId: 42 }), "nb-acme-ci-42");
    assert.equal(
      accountSecretName({ binding: "ns/acme-ci", projectId: 42, environment: "production" }),
      `nb-acme-ci-42-production-${h8("production")}`,
    );
    assert.equal(
      accountSecretName({ binding: "ns/acme-ci", projectId: 42, environment: "Review/Feature_X 1" }),
      `nb-acme-ci-42-review-feature-x-1-${h8("Review/Feature_X 1")}`,
    );
    assert.equal(
      accountSecretName({ binding: "ns/acme-ci", projectId: 42, environment: "ü" }),
      `nb-acme-ci-42-${h8("ü")}`,
    );
  });

  it("stays a DNS subdomain of at most 253 characters, and distinct, for the longest names", () => {
    const long = (c: string): string =>
      `${c.repeat(60)}.${"b".repeat(60)}.${"c".repeat(60)}.${"d".repeat(69)}`;
    const env = `${"E".repeat(200)}!${"x".repeat(54)}`;
    const names = new Set<string>();
    for (const binding of [`ns/${long("a")}`, `ns/${long("a")}x`, `ns/${long("z")}`]) {
      for (const environment of [undefined, env, `${env}2`, "-"]) {
        const name = accountSecretName({ binding, projectId: Number.MAX_SAFE_INTEGER, environment });
        assert.ok(name.length <= 253, `${name.length}`);
        assert.match(name, DNS_SUBDOMAIN);
        names.add(name);
      }
    }
    assert.equal(names.size, 12);
  });

  it("labels with the binding, project and environment, hashing values that are not label values", () => {
    assert.deepEqual(
      accountSecretLabels({ binding: "ns/acme-ci", projectId: 42, environment: "prod_1.eu" }),
      {
        "app.kubernetes.io/managed-by": "natsbind",
        "natsbind.io/binding": "acme-ci",
        "natsbind.io/project-id": "42",
        "natsbind.io/environment": "prod_1.eu",
      },
    );
    const longBinding = "b".repeat(100);
    for (const value of ["Prod EU/1", "-x-", "é", longBinding, "a".repeat(63) + "b", ""]) {
      const label = labelValue(value);
      assert.ok(label.length <= 63 && LABEL_VALUE.test(label), `${value} -> ${label}`);
      if (value !== "") assert.ok(label.endsWith(h8(value)), `${value} -> ${label}`);
    }
    assert.equal(labelValue("Prod EU/1"), `Prod-EU-1-${h8("Prod EU/1")}`);
    assert.equal(
      accountSecretLabels({ binding: `ns/${longBinding}`, projectId: 1 })["natsbind.io/binding"],
      labelValue(longBinding),
    );
  });

  it("refuses a binding key without a namespace", () => {
    assert.throws(() => accountSecretName({ binding: "acme-ci", projectId: 1 }), KeyStoreError);
    assert.throws(
      () => accountSecretName({ binding: "ns/Not_A_Name", projectId: 1 }),
      /is not "namespace\/name"/,
    );
  });
});
