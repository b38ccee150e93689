import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm, writeFile, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { DirectoryKeyStore, KeyStoreError } from "../../src/keystore/directory.ts";

let root: string;
let n = 0;
const freshDir = (): string => join(root, `store-${++n}`);

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

  it("generates the account and role keys once, persists them, and hands the same keys back", async () => {
    const dir = freshDir();
    const store = new DirectoryKeyStore(dir);
    const first = await store.ensure(ref, ["ci", "deploy"]);
    assert.equal(first.accountKey.publicKey, first.account);
    assert.deepEqual(Object.keys(first.roles).sort(), ["ci", "deploy"]);
    const files = await filesUnder(dir);
    assert.equal(files.filter((f) => f.endsWith(".nk")).length, 3);

    const reopened = new DirectoryKeyStore(dir);
    const again = await reopened.ensure(ref, ["ci", "deploy"]);
    assert.equal(again.account, first.account);
    assert.deepEqual(again.roles, first.roles);
    assert.deepEqual(await filesUnder(dir), files, "nothing new written");
    assert.equal((await reopened.get(ref))?.roleKeys.get("ci")?.publicKey, first.roles.ci);
  });

  it("adds a missing role key without touching the others, and keeps roles no longer listed", async () => {
    const store = new DirectoryKeyStore(freshDir());
    const first = await store.ensure(ref, ["ci"]);
    const second = await store.ensure(ref, ["ci", "deploy"]);
    assert.equal(second.account, first.account);
    assert.equal(second.roles.ci, first.roles.ci);
    assert.ok(second.roles.deploy);
    const third = await store.ensure(ref, ["deploy"]);
    assert.deepEqual(third.roles, second.roles);
  });

  it("keeps project and environment slots apart and lists a binding's slots in order", async () => {
    const store = new DirectoryKeyStore(freshDir());
    const prod = await store.ensure({ ...ref, environment: "production" }, ["ci"]);
    const staging = await store.ensure({ ...ref, environment: "staging" }, ["ci"]);
    const other = await store.ensure({ ...ref, projectId: 7 }, ["ci"]);
    await store.ensure({ binding: "natsbind/other", projectId: 1 }, ["ci"]);
    assert.notEqual(prod.account, staging.account);
    assert.deepEqual(
      (await store.list(ref.binding)).map((s) => [s.ref.projectId, s.ref.environment, s.account]),
      [
        [7, undefined, other.account],
        [42, "production", prod.account],
        [42, "staging", staging.account],
      ],
    );
    assert.equal(await store.get(ref), undefined);
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

  it("never lets two concurrent ensures of one slot create two account keys", async () => {
    const store = new DirectoryKeyStore(freshDir());
    const results = await Promise.all(Array.from({ length: 10 }, () => store.ensure(ref, ["ci"])));
    assert.equal(new Set(results.map((r) => r.account)).size, 1);
    assert.equal(new Set(results.map((r) => r.roles.ci)).size, 1);
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
  });

  it("removes a slot and its seeds, idempotently", async () => {
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
