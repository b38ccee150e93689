// The KeyStore contract (src/keystore/port.ts) as tests every adapter must pass: DirectoryKeyStore
// (test/unit/keystore.test.ts) and SecretKeyStore (test/integration/k8s-keystore.test.ts). Call
// keyStoreContract() inside a describe(); each test asks the fixture for empty storage.
import assert from "node:assert/strict";
import { inspect } from "node:util";
import { it } from "node:test";
import type {
  AccountKeys,
  AccountRef,
  KeyStore,
  SlotChange,
  StoredAccount,
} from "../../src/keystore/port.ts";
import { namedKeys } from "../../src/keystore/port.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { KeyStoreError } from "../../src/keystore/port.ts";

export interface KeyStoreUnderTest {
  store: KeyStore;
  /** Another store instance over the same storage (a restarted process). */
  reopen(): Promise<KeyStore>;
  /** Two binding keys valid for this adapter, e.g. "ns/acme-ci" and "ns/other". */
  bindings: readonly [string, string];
  /**
   * The encoded seed the storage holds for `publicKey` in the slot's storage (read directly, not
   * through the store), checked to derive it; undefined when there is none.
   */
  storedSeed(ref: AccountRef, publicKey: string): Promise<string | undefined>;
}

export interface KeyStoreContractFixture {
  /** A store over fresh, empty storage. */
  fresh(): Promise<KeyStoreUnderTest>;
}

/** The encoded seeds of a slot's keys, for looking for them where they must not be. */
export function seedsOf(keys: AccountKeys): string[] {
  return [keys.accountKey, ...keys.roleKeys.values()].map((k) => new TextDecoder().decode(k.getSeed()));
}

/** A rotation's first phase: a new key for `role`, listed beside the active one. */
export function prepare(role: string, since: number): SlotChange {
  return (slot, generate) => ({
    ...slot,
    rotation: {
      ...slot.rotation,
      [role]: { ...slot.rotation?.[role], prepared: { key: generate(), since } },
    },
  });
}

/** The prepared key of `role` issues from `at`; the former active key retires until `notBefore`. */
export function activate(role: string, at: number, notBefore: number): SlotChange {
  return (slot) => {
    const state = slot.rotation?.[role];
    if (!state?.prepared) return undefined;
    const retiring = [...(state.retiring ?? []), { key: slot.roles[role]!, since: at, notBefore }];
    return {
      ...slot,
      roles: { ...slot.roles, [role]: state.prepared.key },
      rotation: { ...slot.rotation, [role]: { activeSince: at, retiring } },
    };
  };
}

/** `key` of `role` stops being listed. */
export function retire(role: string, key: string): SlotChange {
  return (slot) => {
    const { retiring = [], ...state } = slot.rotation?.[role] ?? {};
    const left = retiring.filter((k) => k.key !== key);
    return {
      ...slot,
      rotation: { ...slot.rotation, [role]: left.length > 0 ? { ...state, retiring: left } : state },
    };
  };
}

/** Adds revocations (user public key or "*" -> unix seconds). */
export function revoke(entries: Record<string, number>): SlotChange {
  return (slot) => ({ ...slot, revocations: { ...slot.revocations, ...entries } });
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

  it("contract: ensure(at) records when the role keys it generates started issuing, and only for those", async () => {
    const { store, reopen, bindings } = await fixture.fresh();
    const ref = { binding: bindings[0], projectId: 42 };
    const first = await store.ensure(ref, ["ci"], 1_000);
    assert.deepEqual(first.rotation, { ci: { activeSince: 1_000 } });
    const second = await store.ensure(ref, ["ci", "deploy"], 2_000);
    const expected = { ci: { activeSince: 1_000 }, deploy: { activeSince: 2_000 } };
    assert.deepEqual(second.rotation, expected, "an existing key keeps its age");
    const third = await store.ensure(ref, ["ci", "deploy", "ops"]);
    assert.deepEqual(third.rotation, expected, "no `at`: no age recorded for ops");
    for (const reader of [store, await reopen()]) {
      assert.deepEqual((await reader.list(ref.binding))[0]?.rotation, expected);
      assert.deepEqual((await reader.get(ref))?.rotation, expected);
    }
    // A slot without any rotation state shows none (no empty fields).
    const plain = await store.ensure({ ...ref, projectId: 43 }, ["ci"]);
    const listed = (await store.list(ref.binding)).find((s) => s.ref.projectId === 43)!;
    for (const slot of [plain, listed])
      for (const field of ["rotation", "revocations", "discard"])
        assert.ok(!(field in slot), `${field} left out when there is none`);
  });

  it("contract: rotates one role: prepare, activate, retire, forget; the other role and the account stay", async () => {
    const { store, reopen, bindings, storedSeed } = await fixture.fresh();
    const ref = { binding: bindings[0], projectId: 42 };
    const start = await store.ensure(ref, ["ci", "deploy"], 1_000);
    const old = start.roles.ci!;
    const deploy = { key: start.roles.deploy!, rotation: start.rotation?.deploy };

    const prepared = await store.update(ref, prepare("ci", 2_000));
    const next = prepared.rotation?.ci?.prepared?.key;
    assert.ok(next !== undefined && next !== old, "a new key was made");
    assert.deepEqual(prepared.rotation?.ci, { activeSince: 1_000, prepared: { key: next, since: 2_000 } });
    assert.deepEqual(prepared.roles, start.roles, "the active keys stay until activation");
    assert.ok(await storedSeed(ref, next), "the prepared key's seed is stored with the slot");
    for (const reader of [store, await reopen()]) {
      assert.deepEqual(await reader.list(ref.binding), [prepared]);
      const got = await reader.get(ref);
      assert.equal(got?.roleKeys.get("ci")?.publicKey, old, "credentials still come from the old key");
      assert.deepEqual(got?.rotation, prepared.rotation);
    }

    const active = await store.update(ref, activate("ci", 3_000, 4_000));
    assert.equal(active.roles.ci, next);
    assert.deepEqual(active.rotation?.ci, {
      activeSince: 3_000,
      retiring: [{ key: old, since: 3_000, notBefore: 4_000 }],
    });
    assert.equal(active.roles.deploy, deploy.key);
    assert.deepEqual(active.rotation?.deploy, deploy.rotation);
    assert.equal(active.account, start.account);
    assert.ok(!("discard" in active), "nothing discarded: the old key is still listed");
    for (const reader of [store, await reopen()]) {
      assert.deepEqual(await reader.list(ref.binding), [active]);
      const got = await reader.get(ref);
      assert.equal(got?.roleKeys.get("ci")?.publicKey, next, "credentials now come from the new key");
      const data = new TextEncoder().encode("natsbind");
      assert.ok(got!.roleKeys.get("ci")!.verify(data, got!.roleKeys.get("ci")!.sign(data)));
      assert.deepEqual(seedsOf(got!)[0], seedsOf(start)[0], "the same account seed");
    }
    assert.ok(await storedSeed(ref, old), "the retiring key's seed is kept");

    const retired = await store.update(ref, retire("ci", old));
    assert.deepEqual(retired.rotation?.ci, { activeSince: 3_000 });
    assert.deepEqual(retired.discard, [old], "no longer listed, seed still stored");
    assert.ok(await storedSeed(ref, old), "a discarded key's seed stays until forget()");
    for (const reader of [store, await reopen()]) assert.deepEqual(await reader.list(ref.binding), [retired]);

    // Keys that are not discarded (still named, or unknown) are left alone.
    await store.forget(ref, [old, deploy.key, start.account, next]);
    assert.equal(await storedSeed(ref, old), undefined, "the discarded seed is gone");
    for (const key of [start.account, next, deploy.key]) assert.ok(await storedSeed(ref, key), key);
    const { discard: _d, ...forgotten } = retired;
    for (const reader of [store, await reopen()]) {
      assert.deepEqual(await reader.list(ref.binding), [forgotten]);
      assert.deepEqual((await reader.get(ref))?.roles, retired.roles);
    }
    await store.forget(ref, [old]);
    await store.forget({ ...ref, projectId: 999 }, [old]);
    assert.deepEqual(await store.list(ref.binding), [forgotten], "nothing to forget: nothing changes");
  });

  it("contract: keeps when an emergency rotation last replaced a role's keys, across restarts", async () => {
    const { store, reopen, bindings, storedSeed } = await fixture.fresh();
    const ref = { binding: bindings[0], projectId: 43 };
    const start = await store.ensure(ref, ["ci"], 1_000);
    const replaced = await store.update(ref, (slot, generate) => ({
      ...slot,
      roles: { ...slot.roles, ci: generate() },
      rotation: { ci: { activeSince: 5_000, emergencyAt: 5_000 } },
    }));
    assert.deepEqual(replaced.rotation?.ci, { activeSince: 5_000, emergencyAt: 5_000 });
    assert.deepEqual(replaced.discard, [start.roles.ci]);
    assert.ok(await storedSeed(ref, replaced.roles.ci!));
    for (const reader of [store, await reopen()]) {
      assert.deepEqual(await reader.list(ref.binding), [replaced]);
      assert.deepEqual((await reader.get(ref))?.rotation, replaced.rotation);
    }
  });

  it("contract: stores revocations with the slot, across restarts; a change returning undefined writes nothing", async () => {
    const { store, reopen, bindings } = await fixture.fresh();
    const ref = { binding: bindings[0], projectId: 42 };
    const keys = await store.ensure(ref, ["ci"]);
    assert.equal(keys.revocations, undefined);
    const [alice, bob] = [NKeyPair.generate("user").publicKey, NKeyPair.generate("user").publicKey];
    const revoked = await store.update(ref, revoke({ [alice]: 100, "*": 200 }));
    assert.deepEqual(revoked.revocations, { [alice]: 100, "*": 200 });
    for (const reader of [store, await reopen()]) {
      assert.deepEqual((await reader.list(ref.binding))[0]?.revocations, revoked.revocations);
      assert.deepEqual((await reader.get(ref))?.revocations, revoked.revocations);
    }
    const restarted = await reopen();
    const more = await restarted.update(ref, revoke({ [bob]: 300 }));
    assert.deepEqual(more.revocations, { [alice]: 100, "*": 200, [bob]: 300 });
    let seen: StoredAccount | undefined;
    const same = await restarted.update(ref, (slot) => {
      seen = slot;
      return undefined;
    });
    assert.deepEqual(same, more);
    assert.deepEqual(seen, more, "the change gets the slot as stored");
    const pruned = await restarted.update(ref, (slot) => {
      const { revocations: _r, ...rest } = slot;
      return rest;
    });
    assert.ok(!("revocations" in pruned));
    assert.ok(!("revocations" in (await (await reopen()).list(ref.binding))[0]!), "none left: none stored");
  });

  it("contract: refuses a change of the account or ref, a key listed twice, a key it has no seed for, or no slot; nothing changes", async () => {
    const { store, reopen, bindings } = await fixture.fresh();
    const ref = { binding: bindings[0], projectId: 42 };
    const keys = await store.ensure(ref, ["ci", "deploy"], 1_000);
    await store.update(ref, prepare("ci", 2_000));
    const before = await store.list(ref.binding);
    const stranger = NKeyPair.generate("account").publicKey;
    const bad: Array<[string, SlotChange]> = [
      ["another account key", (slot) => ({ ...slot, account: stranger })],
      ["another ref", (slot) => ({ ...slot, ref: { ...slot.ref, projectId: 43 } })],
      ["one key for two roles", (slot) => ({ ...slot, roles: { ...slot.roles, deploy: slot.roles.ci! } })],
      [
        "the active key of one role prepared for another",
        (slot) => ({
          ...slot,
          rotation: { ...slot.rotation, deploy: { prepared: { key: slot.roles.ci!, since: 1 } } },
        }),
      ],
      [
        "a generated key listed twice",
        (slot, generate) => {
          const key = generate();
          return {
            ...slot,
            rotation: {
              ci: { prepared: { key, since: 1 } },
              deploy: { retiring: [{ key, since: 1, notBefore: 2 }] },
            },
          };
        },
      ],
      ["a key it has no seed for", (slot) => ({ ...slot, roles: { ...slot.roles, ci: stranger } })],
      [
        "rotation state of a role without a key",
        (slot) => ({ ...slot, rotation: { ops: { activeSince: 1 } } }),
      ],
    ];
    for (const [what, change] of bad) {
      await assert.rejects(store.update(ref, change), Error, what);
      for (const reader of [store, await reopen()])
        assert.deepEqual(await reader.list(ref.binding), before, `${what}: nothing changed`);
    }
    assert.equal((await store.get(ref))?.roleKeys.get("ci")?.publicKey, keys.roles.ci);
    await assert.rejects(
      store.update({ ...ref, projectId: 999 }, (slot) => slot),
      KeyStoreError,
    );
    assert.equal(await store.get({ ...ref, projectId: 999 }), undefined, "update makes no slot");
  });

  it("contract: concurrent updates of one slot never lose a change", async () => {
    const { store, reopen, bindings } = await fixture.fresh();
    const ref = { binding: bindings[0], projectId: 42 };
    await store.ensure(ref, ["ci"]);
    const users = Array.from({ length: 8 }, () => NKeyPair.generate("user").publicKey);
    await Promise.all([
      ...users.map((user, i) => store.update(ref, revoke({ [user]: i + 1 }))),
      store.update(ref, prepare("ci", 5)),
      store.ensure(ref, ["ci", "deploy"], 6),
    ]);
    for (const reader of [store, await reopen()]) {
      const [slot] = await reader.list(ref.binding);
      assert.deepEqual(Object.keys(slot?.revocations ?? {}).sort(), [...users].sort());
      assert.ok(slot?.rotation?.ci?.prepared, "the prepared key is there too");
      assert.deepEqual(slot?.rotation?.deploy, { activeSince: 6 });
    }
  });

  it("contract: shows no seed of any key (active, prepared, retiring, discarded) in what it lists, returns or renders", async () => {
    const { store, bindings, storedSeed } = await fixture.fresh();
    const ref = { binding: bindings[0], projectId: 5, environment: "prod" };
    const results: unknown[] = [await store.ensure(ref, ["ci", "deploy"], 1)];
    results.push(await store.update(ref, prepare("ci", 2)));
    results.push(await store.update(ref, activate("ci", 3, 4)));
    results.push(await store.update(ref, prepare("ci", 5)));
    results.push(await store.update(ref, prepare("deploy", 2)));
    const deployOld = (await store.get(ref))!.roles.deploy!;
    results.push(await store.update(ref, activate("deploy", 3, 4)));
    results.push(await store.update(ref, retire("deploy", deployOld)));
    results.push(await store.get(ref), await store.list(bindings[0]));
    const slot = (await store.list(bindings[0]))[0]!;
    assert.ok(
      slot.rotation?.ci?.prepared && slot.rotation.ci.retiring?.length === 1 && slot.discard?.length === 1,
    );
    const keys = [...namedKeys(slot), ...slot.discard];
    const seeds = await Promise.all(keys.map((key) => storedSeed(ref, key)));
    const renderings = results.flatMap((r) => [JSON.stringify(r), inspect(r, { depth: 10 })]).join("\n");
    for (const [i, seed] of seeds.entries()) {
      assert.ok(seed, `the seed of ${keys[i]} is stored`);
      assert.ok(!renderings.includes(seed), `the seed of ${keys[i]} is shown`);
    }
  });
}
