// The pure rotation phases (src/rotation/phases.ts) and revocations (src/rotation/revocations.ts):
// what is due when, and how a slot changes, checked against the port's invariants (checkSlotChange).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { checkSlotChange, listedRoleKeys, namedKeys, type StoredAccount } from "../../src/keystore/port.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import {
  changeActivate,
  changeAdopt,
  changeEmergency,
  changePrepare,
  changeRetire,
  decide,
  dueAt,
  emergencyVictims,
  jitterMs,
  satisfied,
  type RotationPolicy,
} from "../../src/rotation/phases.ts";
import { carries, changeRevocations, nextPruneAt, prunableAt } from "../../src/rotation/revocations.ts";

const DAY = 86_400_000;
const policy: RotationPolicy = { everyMs: 90 * DAY, gracePeriodMs: DAY };
const limits = { overlapMs: 16 * 60_000 };
const T0 = Date.parse("2026-01-01T00:00:00Z");

function key(): string {
  return NKeyPair.generate("account").publicKey;
}

function slot(extra: Partial<StoredAccount> = {}): StoredAccount {
  return {
    ref: { binding: "acme", projectId: 42 },
    account: NKeyPair.generate("account").publicKey,
    roles: { ci: key(), deploy: key() },
    rotation: { ci: { activeSince: T0 }, deploy: { activeSince: T0 } },
    ...extra,
  };
}

/** Applies a SlotChange as a store would: generate() makes real keys, checkSlotChange guards. */
function apply(
  current: StoredAccount,
  change: (s: StoredAccount, g: () => string) => StoredAccount | undefined,
) {
  const next = change(structuredClone(current), key);
  return next ? checkSlotChange(current, next) : current;
}

describe("rotation phases", () => {
  it("runs prepare -> activate -> retire, listing the right keys at each step and discarding the old one", () => {
    let s = slot();
    const first = s.roles.ci!;
    s = apply(s, changePrepare("ci", T0 + 90 * DAY));
    const prepared = s.rotation!.ci!.prepared!.key;
    assert.notEqual(prepared, first);
    assert.equal(s.roles.ci, first, "the old key still issues while the new one is only prepared");
    assert.deepEqual(listedRoleKeys(s, "ci").sort(), [first, prepared].sort());

    const at = T0 + 90 * DAY + 1000;
    s = apply(s, changeActivate("ci", at, limits));
    assert.equal(s.roles.ci, prepared, "the prepared key issues");
    assert.deepEqual(s.rotation!.ci!.retiring, [{ key: first, since: at, notBefore: at + limits.overlapMs }]);
    assert.equal(s.rotation!.ci!.activeSince, at);
    assert.equal(s.rotation!.ci!.prepared, undefined);
    assert.deepEqual(
      listedRoleKeys(s, "ci").sort(),
      [first, prepared].sort(),
      "activation lists the same keys",
    );

    s = apply(s, changeRetire("ci", [first]));
    assert.deepEqual(listedRoleKeys(s, "ci"), [prepared]);
    assert.deepEqual(s.discard, [first], "the retired key's seed waits for forget()");
    assert.ok(!namedKeys(s).includes(first));
    assert.equal(s.rotation!.deploy!.activeSince, T0, "other roles untouched");
  });

  it("emergency drops every key of the role (active, prepared, retiring) and activates a fresh one", () => {
    let s = slot();
    s = apply(s, changePrepare("ci", T0 + DAY));
    s = apply(s, changeActivate("ci", T0 + DAY, limits));
    s = apply(s, changePrepare("ci", T0 + 2 * DAY));
    const victims = emergencyVictims(s, "ci");
    assert.equal(victims.length, 3);
    const deploy = s.roles.deploy;
    s = apply(s, changeEmergency("ci", T0 + 3 * DAY));
    assert.ok(!victims.includes(s.roles.ci!));
    assert.deepEqual(listedRoleKeys(s, "ci"), [s.roles.ci]);
    assert.deepEqual([...s.discard!].sort(), [...victims].sort());
    assert.equal(s.roles.deploy, deploy);
    assert.deepEqual(s.rotation!.ci, { activeSince: T0 + 3 * DAY, emergencyAt: T0 + 3 * DAY });
  });

  it("adopts a slot of unknown age without changing keys, and changes nothing twice", () => {
    const s = slot({ rotation: undefined });
    const adopted = apply(s, changeAdopt("ci", T0));
    assert.equal(adopted.rotation!.ci!.activeSince, T0);
    assert.deepEqual(adopted.roles, s.roles);
    assert.equal(changeAdopt("ci", T0 + 1)(adopted), undefined);
    assert.equal(changePrepare("ci", T0)(apply(adopted, changePrepare("ci", T0)), key), undefined);
  });

  it("schedules rotation before `every` by a jitter fixed per account and role, spread over a tenth", () => {
    const s = slot();
    const due = dueAt(s, "ci", policy)!;
    assert.ok(due <= T0 + 90 * DAY && due >= T0 + 90 * DAY - 7 * DAY);
    assert.equal(dueAt(s, "ci", policy), due, "deterministic");
    const spread = new Set(
      Array.from({ length: 200 }, () => Math.floor(jitterMs(key(), "ci", 90 * DAY) / 3_600_000)),
    );
    assert.ok(spread.size > 100, `200 accounts spread over many hours (got ${spread.size} distinct)`);
    assert.equal(dueAt(s, "ci", { ...policy, everyMs: 0 }), undefined, "every: 0 schedules nothing");
  });

  it("decides: nothing before due, prepare when due, activate only once in sync", () => {
    const s = slot();
    const due = dueAt(s, "ci", policy)!;
    const before = decide({ slot: s, role: "ci", now: due - 1, policy, triggers: [], inSync: true });
    assert.deepEqual(before.steps, []);
    assert.equal(before.nextAt, due);
    const at = decide({ slot: s, role: "ci", now: due, policy, triggers: [], inSync: true });
    assert.deepEqual(at.steps, [{ kind: "prepare", cause: "scheduled" }]);
    const prepared = apply(s, changePrepare("ci", due));
    assert.deepEqual(
      decide({ slot: prepared, role: "ci", now: due, policy, triggers: [], inSync: false }).steps,
      [],
    );
    assert.deepEqual(
      decide({ slot: prepared, role: "ci", now: due, policy, triggers: [], inSync: true }).steps,
      [{ kind: "activate" }],
    );
  });

  it("retires after the overlap only when no connection uses the key, else after the grace period", () => {
    let s = slot();
    s = apply(s, changePrepare("ci", T0));
    s = apply(s, changeActivate("ci", T0, limits));
    const old = s.rotation!.ci!.retiring![0]!.key;
    const base = { slot: s, role: "ci", policy, triggers: [], inSync: true };
    assert.deepEqual(decide({ ...base, now: T0 + limits.overlapMs - 1 }).steps, []);
    const need = decide({ ...base, now: T0 + limits.overlapMs });
    assert.deepEqual(need.needConnections, [old], "connections are counted first");
    assert.deepEqual(
      decide({ ...base, now: T0 + limits.overlapMs, connections: new Map([[old, 0]]) }).steps,
      [{ kind: "retire", keys: [old], forced: [] }],
    );
    const busy = decide({ ...base, now: T0 + limits.overlapMs, connections: new Map([[old, 3]]) });
    assert.deepEqual(busy.steps, []);
    assert.deepEqual(busy.waiting, [{ key: old, connections: 3, until: T0 + DAY }]);
    assert.deepEqual(decide({ ...base, now: T0 + DAY, connections: new Map([[old, 3]]) }).steps, [
      { kind: "retire", keys: [old], forced: [old] },
    ]);
  });

  it("takes manual and emergency triggers as times: satisfied once the keys are newer, scoped by project and role", () => {
    const s = slot();
    const t = { at: T0 + DAY, emergency: false };
    const base = { slot: s, role: "ci", now: T0 + DAY, policy, inSync: true };
    assert.deepEqual(decide({ ...base, triggers: [t] }).steps, [{ kind: "prepare", cause: "manual" }]);
    assert.deepEqual(decide({ ...base, triggers: [{ ...t, projectId: 7 }] }).steps, []);
    assert.deepEqual(decide({ ...base, triggers: [{ ...t, role: "deploy" }] }).steps, []);
    const rotated = apply(apply(s, changePrepare("ci", T0 + DAY)), changeActivate("ci", T0 + DAY, limits));
    assert.ok(satisfied(t, rotated.rotation!.ci));
    assert.deepEqual(
      decide({ ...base, slot: rotated, triggers: [t] }).steps,
      [],
      "a satisfied trigger does nothing more",
    );
    // A trigger dated ahead applies from its time.
    const ahead = decide({ ...base, now: T0, triggers: [t] });
    assert.deepEqual(ahead.steps, []);
    assert.equal(ahead.nextAt, T0 + DAY);

    const e = { at: T0 + DAY, emergency: true };
    assert.deepEqual(
      decide({ ...base, slot: rotated, triggers: [e] }).steps,
      [{ kind: "emergency" }],
      "retiring keys remain",
    );
    const cleared = apply(rotated, changeEmergency("ci", T0 + DAY));
    assert.ok(satisfied(e, cleared.rotation!.ci));
  });

  it("an emergency trigger that was applied does not fire again when the role later rotates (its old key retires after the overlap)", () => {
    // The trigger stays where it was asked (request file, annotation): later rotations must not
    // read the key they retire as a leaked one, or each of them cuts off that key's users at once.
    const e = { at: T0 + DAY, emergency: true };
    const base = { role: "ci", policy, inSync: true, triggers: [e] };
    let s = apply(slot(), changeEmergency("ci", T0 + DAY));
    const afterEmergency = s.roles.ci!;
    const due = dueAt(s, "ci", policy)!;
    assert.deepEqual(decide({ ...base, slot: s, now: due }).steps, [{ kind: "prepare", cause: "scheduled" }]);
    s = apply(s, changePrepare("ci", due));
    assert.deepEqual(decide({ ...base, slot: s, now: due }).steps, [{ kind: "activate" }]);
    s = apply(s, changeActivate("ci", due, limits));
    assert.deepEqual(
      s.rotation!.ci!.retiring!.map((r) => r.key),
      [afterEmergency],
    );
    assert.ok(satisfied(e, s.rotation!.ci), "the emergency stays done");
    assert.deepEqual(
      decide({ ...base, slot: s, now: due + 1 }).steps,
      [],
      "nothing while the old key retires",
    );
    const later = due + limits.overlapMs;
    assert.deepEqual(
      decide({ ...base, slot: s, now: later, connections: new Map([[afterEmergency, 0]]) }).steps,
      [{ kind: "retire", keys: [afterEmergency], forced: [] }],
      "the old key retires normally",
    );
    s = apply(s, changeRetire("ci", [afterEmergency]));
    assert.ok(satisfied(e, s.rotation!.ci));
    // A newer emergency trigger still fires.
    const again = { at: later + 1, emergency: true };
    assert.deepEqual(decide({ ...base, slot: s, now: later + 1, triggers: [e, again] }).steps, [
      { kind: "emergency" },
    ]);
  });
});

describe("revocations", () => {
  it("merges entries (later time wins), prunes expired ones, and reports no change when there is none", () => {
    const user = NKeyPair.generate("user").publicKey;
    const now = T0;
    const sec = Math.floor(now / 1000);
    let s = slot();
    s = apply(s, changeRevocations({ [user]: sec }, now, limits.overlapMs));
    assert.deepEqual(s.revocations, { [user]: sec });
    assert.equal(changeRevocations({ [user]: sec - 10 }, now, limits.overlapMs)(s), undefined);
    s = apply(s, changeRevocations({ [user]: sec + 5, "*": sec }, now, limits.overlapMs));
    assert.deepEqual(s.revocations, { [user]: sec + 5, "*": sec });
    assert.ok(carries(s, { [user]: sec }, now, limits.overlapMs));
    assert.equal(nextPruneAt(s, limits.overlapMs), prunableAt(sec, limits.overlapMs));
    const later = prunableAt(sec + 5, limits.overlapMs);
    const pruned = apply(s, changeRevocations({}, later, limits.overlapMs));
    assert.equal(pruned.revocations, undefined, "every entry expired");
    assert.equal(
      changeRevocations({ [user]: sec }, later, limits.overlapMs)(pruned),
      undefined,
      "an expired request adds nothing",
    );
  });
});
