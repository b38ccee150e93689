// SlotKeyCache over a real DirectoryKeyStore (counted): reads shared within the TTL, changes seen
// after it, a new role and a new slot seen at once, failures and misses never kept, bounded size.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SlotKeyCache } from "../../src/credentials/key-cache.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import type { AccountKeys, AccountRef, KeyStore, SlotChange } from "../../src/keystore/port.ts";
import { ManualClock, type Clock } from "../../src/runtime/clock.ts";

let root: string;
let n = 0;

before(async () => {
  root = await mkdtemp(join(tmpdir(), "natsbind-key-cache-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A real directory store whose get() calls are counted. */
class CountedStore implements KeyStore {
  readonly inner: DirectoryKeyStore;
  gets = 0;
  constructor(dir: string) {
    this.inner = new DirectoryKeyStore(dir);
  }
  list(binding: string) {
    return this.inner.list(binding);
  }
  get(ref: AccountRef): Promise<AccountKeys | undefined> {
    this.gets += 1;
    return this.inner.get(ref);
  }
  ensure(ref: AccountRef, roles: readonly string[]) {
    return this.inner.ensure(ref, roles);
  }
  remove(ref: AccountRef) {
    return this.inner.remove(ref);
  }
  update(ref: AccountRef, change: SlotChange) {
    return this.inner.update(ref, change);
  }
  forget(ref: AccountRef, keys: readonly string[]) {
    return this.inner.forget(ref, keys);
  }
}

function fresh(): { store: CountedStore; dir: string } {
  const dir = join(root, `store-${++n}`);
  return { store: new CountedStore(dir), dir };
}

const ref: AccountRef = { binding: "acme", projectId: 42 };

describe("SlotKeyCache", () => {
  it("reads a slot once per TTL, for sequential and concurrent requests, and again after it", async () => {
    const { store } = fresh();
    const made = await store.ensure(ref, ["ci"]);
    const clock = new ManualClock();
    const cache = new SlotKeyCache({ clock, ttlMs: 1_000 });
    const together = await Promise.all(Array.from({ length: 20 }, () => cache.get(store, ref, "ci")));
    assert.equal(store.gets, 1, "20 concurrent requests share one read");
    for (const keys of together) assert.equal(keys?.roleKeys.get("ci")?.publicKey, made.roles.ci);
    clock.advance(999);
    await cache.get(store, ref, "ci");
    assert.equal(store.gets, 1, "still within the TTL");
    clock.advance(1);
    const again = await cache.get(store, ref, "ci");
    assert.equal(store.gets, 2, "read again once the TTL has passed");
    assert.equal(again?.account, made.account);
  });

  it("sees a role added to the slot at once, and a removed slot after the TTL", async () => {
    const { store } = fresh();
    await store.ensure(ref, ["ci"]);
    const clock = new ManualClock();
    const cache = new SlotKeyCache({ clock, ttlMs: 1_000 });
    assert.equal((await cache.get(store, ref, "ci"))?.roleKeys.has("deploy"), false);
    const added = await store.ensure(ref, ["ci", "deploy"]);
    const withRole = await cache.get(store, ref, "deploy");
    assert.equal(withRole?.roleKeys.get("deploy")?.publicKey, added.roles.deploy, "new role seen at once");
    assert.equal(store.gets, 2);

    await store.remove(ref);
    assert.ok(await cache.get(store, ref, "ci"), "a removed slot may be served for up to the TTL");
    clock.advance(1_000);
    assert.equal(await cache.get(store, ref, "ci"), undefined, "gone once the TTL has passed");
  });

  it("keeps neither a missing slot nor a failed read", async () => {
    const { store, dir } = fresh();
    const clock = new ManualClock();
    const cache = new SlotKeyCache({ clock, ttlMs: 1_000 });
    assert.equal(await cache.get(store, ref, "ci"), undefined);
    await store.ensure(ref, ["ci"]);
    assert.ok(await cache.get(store, ref, "ci"), "a slot created after a miss is found at once");
    assert.equal(store.gets, 2);

    // A slot file the store refuses (not JSON): the error reaches the caller and is not kept.
    const other: AccountRef = { binding: "acme", projectId: 7 };
    const made = await store.ensure(other, ["ci"]);
    const files = await readdir(join(dir, "accounts"), { recursive: true });
    const path = files.find((f) => /(^|\/)7-[0-9a-f]{12}\.json$/.test(f));
    assert.ok(path, "slot file of project 7");
    const good = await readFile(join(dir, "accounts", path), "utf8");
    await writeFile(join(dir, "accounts", path), "{not json");
    await assert.rejects(cache.get(store, other, "ci"), /is not JSON/);
    await writeFile(join(dir, "accounts", path), good);
    assert.equal((await cache.get(store, other, "ci"))?.account, made.account, "read again after a failure");
  });

  it("does not share slots between stores", async () => {
    const a = fresh();
    const b = fresh();
    const inA = await a.store.ensure(ref, ["ci"]);
    const inB = await b.store.ensure(ref, ["ci"]);
    const cache = new SlotKeyCache({ clock: new ManualClock() });
    assert.equal((await cache.get(a.store, ref, "ci"))?.account, inA.account);
    assert.equal((await cache.get(b.store, ref, "ci"))?.account, inB.account);
    assert.equal((await cache.get(a.store, ref, "ci"))?.account, inA.account);
  });

  it("holds at most maxEntries slots and drops expired ones", async () => {
    const { store } = fresh();
    const refs = Array.from({ length: 5 }, (_, i) => ({ binding: "acme", projectId: i + 1 }));
    for (const r of refs) await store.ensure(r, ["ci"]);
    const clock = new ManualClock();
    const cache = new SlotKeyCache({ clock, ttlMs: 1_000, maxEntries: 3 });
    for (const r of refs) await cache.get(store, r, "ci");
    assert.equal(cache.size, 3);
    await cache.get(store, refs[4]!, "ci");
    assert.equal(store.gets, 5, "the newest is kept");
    await cache.get(store, refs[0]!, "ci");
    assert.equal(store.gets, 6, "the oldest was dropped");
    clock.advance(1_000);
    await cache.get(store, refs[1]!, "ci");
    assert.equal(cache.size, 1, "expired slots dropped; only the one just read is left");
  });

  it("reads again when the clock is set back", async () => {
    const { store } = fresh();
    await store.ensure(ref, ["ci"]);
    let now = Date.UTC(2026, 0, 1);
    const clock: Clock = { now: () => now, setTimeout: () => 0 as never, clearTimeout: () => {} };
    const cache = new SlotKeyCache({ clock, ttlMs: 1_000 });
    await cache.get(store, ref, "ci");
    await cache.get(store, ref, "ci");
    assert.equal(store.gets, 1);
    now -= 3_600_000;
    await cache.get(store, ref, "ci");
    assert.equal(store.gets, 2, "an entry from the clock's future is not fresh");
  });

  it("with ttlMs 0 reads the store every time", async () => {
    const { store } = fresh();
    await store.ensure(ref, ["ci"]);
    const cache = new SlotKeyCache({ clock: new ManualClock(), ttlMs: 0 });
    await Promise.all([cache.get(store, ref, "ci"), cache.get(store, ref, "ci")]);
    await cache.get(store, ref, "ci");
    assert.equal(store.gets, 3);
    assert.throws(() => new SlotKeyCache({ clock: new ManualClock(), ttlMs: -1 }), RangeError);
    assert.throws(() => new SlotKeyCache({ clock: new ManualClock(), maxEntries: 0 }), RangeError);
  });
});
