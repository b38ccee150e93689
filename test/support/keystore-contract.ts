// The KeyStore contract (src/keystore/port.ts) as tests every adapter must pass: DirectoryKeyStore
// (test/unit/keystore.test.ts) and SecretKeyStore (test/integration/k8s-keystore.test.ts). Call
// keyStoreContract() inside a describe(); each test asks the fixture for empty storage.
import assert from "node:assert/strict";
import { inspect } from "node:util";
import { it } from "node:test";
import type { AccountKeys, KeyStore } from "../../src/keystore/port.ts";

export interface KeyStoreUnderTest {
  store: KeyStore;
  /** Another store instance over the same storage (a restarted process). */
  reopen(): Promise<KeyStore>;
  /** Two binding keys valid for this adapter, e.g. "ns/acme-ci" and "ns/other". */
  bindings: readonly [string, string];
}

export interface KeyStoreContractFixture {
  /** A store over fresh, empty storage. */
  fresh(): Promise<KeyStoreUnderTest>;
}

/** The encoded seeds of a slot's keys, for looking for them where they must not be. */
export function seedsOf(keys: AccountKeys): string[] {
  return [keys.accountKey, ...keys.roleKeys.values()].map((k) => new TextDecoder().decode(k.getSeed()));
}

export function keyStoreContract(fixture: KeyStoreContractFixture): void {
  it("contract: generates the account and role keys once and hands the same keys back, also to a new instance", async () => {
    const { store, reopen, bindings } = await fixture.fresh();
    const ref = { binding: bindings[0], projectId: 42 };
    assert.equal(await store.get(ref), undefined);
    const first = await store.ensure(ref, ["ci", "deploy"]);
    assert.equal(first.accountKey.publicKey, first.account);
    assert.deepEqual(first.ref, ref);
    assert.deepEqual(Object.keys(first.roles).sort(), ["ci", "deploy"]);
    for (const [role, key] of first.roleKeys) assert.equal(key.publicKey, first.roles[role]);
    assert.equal(new Set([first.account, ...Object.values(first.roles)]).size, 3, "three distinct keys");

    const again = await store.ensure(ref, ["ci", "deploy"]);
    assert.equal(again.account, first.account);
    // Only a generated account key is "created" (the reconciler skips the resolver lookup for it).
    assert.equal(first.created, true);
    assert.ok(!again.created, "keys found, not created");
    assert.deepEqual(again.roles, first.roles);

    const reopened = await reopen();
    const fromNew = await reopened.ensure(ref, ["ci", "deploy"]);
    assert.equal(fromNew.account, first.account);
    assert.deepEqual(fromNew.roles, first.roles);
    const got = await reopened.get(ref);
    assert.equal(got?.account, first.account);
    assert.equal(got?.roleKeys.get("ci")?.publicKey, first.roles.ci);
    assert.deepEqual(seedsOf(got!), seedsOf(first), "the same seeds, not only the same public keys");
    // The keys work: a signature by the stored key verifies against the published public key.
    const data = new TextEncoder().encode("natsbind");
    assert.ok(got!.accountKey.verify(data, got!.accountKey.sign(data)));
  });

  it("contract: adds a missing role key without touching the others, and keeps roles no longer listed", async () => {
    const { store, reopen, bindings } = await fixture.fresh();
    const ref = { binding: bindings[0], projectId: 42 };
    const first = await store.ensure(ref, ["ci"]);
    const second = await store.ensure(ref, ["ci", "deploy"]);
    assert.ok(!second.created, "a new role key, not a new account key");
    assert.equal(second.account, first.account);
    assert.equal(second.roles.ci, first.roles.ci);
    assert.ok(second.roles.deploy);
    const third = await store.ensure(ref, ["deploy"]);
    assert.deepEqual(third.roles, second.roles);
    const listed = await (await reopen()).list(ref.binding);
    assert.deepEqual(
      listed.map((s) => s.roles),
      [second.roles],
    );
  });

  it("contract: keeps project and environment slots apart and lists a binding's slots in order", async () => {
    const { store, reopen, bindings } = await fixture.fresh();
    const ref = { binding: bindings[0], projectId: 42 };
    const prod = await store.ensure({ ...ref, environment: "production" }, ["ci"]);
    const staging = await store.ensure({ ...ref, environment: "staging" }, ["ci"]);
    const other = await store.ensure({ ...ref, projectId: 7 }, ["ci"]);
    const otherBinding = await store.ensure({ binding: bindings[1], projectId: 42 }, ["ci"]);
    assert.equal(new Set([prod.account, staging.account, other.account, otherBinding.account]).size, 4);
    const expected = [
      [7, undefined, other.account],
      [42, "production", prod.account],
      [42, "staging", staging.account],
    ];
    for (const reader of [store, await reopen()]) {
      assert.deepEqual(
        (await reader.list(ref.binding)).map((s) => [s.ref.projectId, s.ref.environment, s.account]),
        expected,
      );
      assert.deepEqual(
        (await reader.list(bindings[1])).map((s) => s.account),
        [otherBinding.account],
      );
      assert.equal(await reader.get(ref), undefined, "no project slot: only environment slots");
      assert.equal((await reader.get({ ...ref, environment: "staging" }))?.account, staging.account);
    }
  });

  it("contract: keeps environments that differ only in case or punctuation apart", async () => {
    const { store, bindings } = await fixture.fresh();
    const names = ["Prod", "prod", "prod!", "PROD EU/1", "prod-eu-1", "ü", "é"];
    const accounts = [];
    for (const environment of names)
      accounts.push(
        (await store.ensure({ binding: bindings[0], projectId: 1, environment }, ["ci"])).account,
      );
    assert.equal(new Set(accounts).size, names.length);
    const listed = await store.list(bindings[0]);
    assert.deepEqual(listed.map((s) => s.ref.environment).sort(), [...names].sort());
    for (const slot of listed) assert.equal(slot.account, accounts[names.indexOf(slot.ref.environment!)]);
  });

  it("contract: never lets concurrent ensures of one slot create two account keys", async () => {
    const { store, bindings } = await fixture.fresh();
    const ref = { binding: bindings[0], projectId: 42 };
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => store.ensure(ref, i % 2 === 0 ? ["ci"] : ["ci", "deploy"])),
    );
    assert.equal(new Set(results.map((r) => r.account)).size, 1);
    assert.equal(new Set(results.map((r) => r.roles.ci)).size, 1);
    const final = await store.ensure(ref, ["ci", "deploy"]);
    for (const r of results) if (r.roles.deploy) assert.equal(r.roles.deploy, final.roles.deploy);
  });

  it("contract: removes a slot, idempotently, and leaves the others", async () => {
    const { store, reopen, bindings } = await fixture.fresh();
    const ref = { binding: bindings[0], projectId: 42 };
    const kept = await store.ensure({ ...ref, projectId: 43 }, ["ci"]);
    const removed = await store.ensure(ref, ["ci"]);
    await store.remove(ref);
    await store.remove(ref);
    await store.remove({ ...ref, projectId: 999 });
    for (const reader of [store, await reopen()]) {
      assert.equal(await reader.get(ref), undefined);
      assert.deepEqual(
        (await reader.list(ref.binding)).map((s) => s.account),
        [kept.account],
      );
    }
    const recreated = await store.ensure(ref, ["ci"]);
    assert.notEqual(recreated.account, removed.account, "a removed slot starts over with new keys");
  });

  it("contract: shows no seed in what it lists or how keys render", async () => {
    const { store, bindings } = await fixture.fresh();
    const keys = await store.ensure({ binding: bindings[0], projectId: 5, environment: "prod" }, ["ci"]);
    const renderings = [
      JSON.stringify(await store.list(bindings[0])),
      JSON.stringify(keys),
      inspect(keys, { depth: 10 }),
      String(keys.accountKey),
    ];
    for (const seed of seedsOf(keys)) for (const text of renderings) assert.ok(!text.includes(seed));
  });
}
