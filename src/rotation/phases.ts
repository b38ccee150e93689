/**
 * Signing-key rotation of one account role, as PURE functions: what is due (`decide`) and how a
 * slot changes for each step (`change*`, KeyStore SlotChange functions). No I/O, no clock: the
 * reconciler passes `now` and the facts it read (is the account's JWT on every server, live
 * connections of keys waiting to retire).
 *
 * Phases of a role's keys (docs/rotation.md):
 *   active             one key issues credentials; `activeSince` is its age
 *   prepared           a new key is saved and listed beside the active one; it issues nothing until
 *                      every server acked a JWT listing it
 *   active + retiring  the new key issues; the old one stays listed until nothing it issued can
 *                      still be valid (`notBefore`) and, if CONNZ still shows connections it issued,
 *                      until the grace period after it stopped issuing has passed too
 *   (retired)          the old key is dropped from the JWT; its seed goes once that push is acked
 * An emergency rotation (a leak) drops every key of the role at once and activates a fresh one.
 */
import { createHash } from "node:crypto";
import type { RoleRotation, StoredAccount } from "../keystore/port.ts";

/** The rotation policy of a binding (spec.rotation over natsbind.yaml's rotation defaults). */
export interface RotationPolicy {
  /** Rotate the active key once it is this old (ms); 0: never on a schedule (manual only). */
  everyMs: number;
  /**
   * Keys with live connections natsbind did not expect (users issued elsewhere, or clocks far off)
   * are kept at most this long after they stopped issuing (ms).
   */
  gracePeriodMs: number;
}

/** Things outside the policy that bound the overlap: how long natsbind's own users live. */
export interface RotationLimits {
  /** Longest lifetime of a user JWT natsbind issues, plus leeway and caches (ms). */
  overlapMs: number;
  /** How long a revocation entry stays after its time (ms); default overlapMs. */
  revocationRetentionMs?: number;
}

/**
 * A request to rotate now (a CLI run or an annotation), satisfied once every key of the role it
 * covers is newer than `at`: for a manual rotation the active or prepared key, for an emergency
 * every key of the role. Being a time, a trigger is idempotent: repeating it changes nothing more.
 */
export interface RotationTrigger {
  /** ms since the epoch. */
  at: number;
  emergency: boolean;
  /** Limits it to one project (all environments of it unless `environment` is set). */
  projectId?: number;
  environment?: string;
  /** Limits it to one role. */
  role?: string;
}

export type RotationStep =
  /** The slot predates rotation: record now as the active key's start (no push). */
  | { kind: "adopt" }
  /** Generate a new key and list it (a push follows). `scheduled` ones are rate-limited. */
  | { kind: "prepare"; cause: "scheduled" | "manual" }
  /** The prepared key is on every server: it issues from now on; the old one starts retiring. */
  | { kind: "activate" }
  /** Drop these retiring keys from the JWT (a push follows). */
  | { kind: "retire"; keys: string[]; forced: string[] }
  /** Drop every key of the role and activate a fresh one (a push follows). */
  | { kind: "emergency" };

export interface RoleDecision {
  steps: RotationStep[];
  /** Retiring keys past their overlap whose live connections must be counted before they go. */
  needConnections: string[];
  /** Keys kept although their overlap passed, because connections still use them (reported). */
  waiting: Array<{ key: string; connections: number; until: number }>;
  /** When something is next due for this role (ms), if anything is. */
  nextAt?: number;
}

const DAY_MS = 86_400_000;

/**
 * How much earlier than `everyMs` this account's role rotates: up to a tenth of the period (at
 * most 7 days), fixed per account key and role, so accounts created on the same day spread out.
 */
export function jitterMs(account: string, role: string, everyMs: number): number {
  const spread = Math.min(Math.floor(everyMs / 10), 7 * DAY_MS);
  if (spread <= 0) return 0;
  const digest = createHash("sha256").update(`${account}\u0000${role}`).digest();
  return Math.floor((digest.readUInt32BE(0) / 2 ** 32) * spread);
}

/** When the role's active key is due for a scheduled rotation, or undefined (never / unknown age). */
export function dueAt(slot: StoredAccount, role: string, policy: RotationPolicy): number | undefined {
  const since = slot.rotation?.[role]?.activeSince;
  if (policy.everyMs <= 0 || since === undefined) return undefined;
  return since + policy.everyMs - slotJitterMs(slot, role, policy.everyMs);
}

/**
 * jitterMs of a slot's role, kept per slot object: every reconcile asks it of every slot (twice),
 * and a SHA-256 per slot and role was a large part of a reconcile of 100,000 slots.
 */
const jitters = new WeakMap<StoredAccount, Array<{ role: string; everyMs: number; jitter: number }>>();
function slotJitterMs(slot: StoredAccount, role: string, everyMs: number): number {
  let known = jitters.get(slot);
  if (!known) jitters.set(slot, (known = []));
  const hit = known.find((j) => j.role === role && j.everyMs === everyMs);
  if (hit) return hit.jitter;
  const jitter = jitterMs(slot.account, role, everyMs);
  known.push({ role, everyMs, jitter });
  return jitter;
}

/** Does `trigger` cover this slot and role? */
export function covers(trigger: RotationTrigger, slot: StoredAccount, role: string): boolean {
  if (trigger.projectId !== undefined && trigger.projectId !== slot.ref.projectId) return false;
  if (trigger.environment !== undefined && trigger.environment !== slot.ref.environment) return false;
  if (trigger.role !== undefined && trigger.role !== role) return false;
  return true;
}

/** Is the trigger satisfied for this role: every key it asks to replace is gone or replaced? */
export function satisfied(trigger: RotationTrigger, state: RoleRotation | undefined): boolean {
  const since = state?.activeSince;
  if (trigger.emergency) {
    // An emergency since `at` replaced every key there was; keys rotated in later retire normally
    // (without this, every later rotation's retiring key read as a leaked one: the trigger fired
    // again at each rotation and cut off the old key's users during their overlap).
    if (state?.emergencyAt !== undefined && state.emergencyAt >= trigger.at) return true;
    // Otherwise (a slot made after the trigger): nothing older than `at` may be listed.
    return (
      since !== undefined &&
      since >= trigger.at &&
      (state?.retiring ?? []).length === 0 &&
      (state?.prepared === undefined || state.prepared.since >= trigger.at)
    );
  }
  return (since !== undefined && since >= trigger.at) || (state?.prepared?.since ?? -1) >= trigger.at;
}

export interface DecideInput {
  slot: StoredAccount;
  role: string;
  now: number;
  policy: RotationPolicy;
  /** Triggers of the binding (filtered here by covers()). */
  triggers: readonly RotationTrigger[];
  /** Does every server hold the account JWT as the slot now describes it (all listed keys)? */
  inSync: boolean;
  /** Live connections per retiring key, for the keys in needConnections (absent: not counted yet). */
  connections?: ReadonlyMap<string, number>;
  /** RotationLimits.overlapMs: paces re-checks of keys kept for live connections. */
  overlapMs?: number;
}

/** What is due for one role of one slot. */
export function decide(input: DecideInput): RoleDecision {
  const { slot, role, now, policy } = input;
  const state = slot.rotation?.[role];
  const out: RoleDecision = { steps: [], needConnections: [], waiting: [] };
  const next = (at: number | undefined): void => {
    if (at !== undefined && (out.nextAt === undefined || at < out.nextAt)) out.nextAt = at;
  };
  // A trigger dated later than now (a clock ahead, or a planned time) applies from that time.
  for (const t of input.triggers) if (t.at > now && covers(t, slot, role)) next(t.at);
  const triggers = input.triggers.filter((t) => t.at <= now && covers(t, slot, role) && !satisfied(t, state));

  if (triggers.some((t) => t.emergency)) {
    out.steps.push({ kind: "emergency" });
    return out;
  }
  if (state?.activeSince === undefined) {
    out.steps.push({ kind: "adopt" });
    return out;
  }
  if (state.prepared) {
    // Issuing with a key some server does not list would fail: only after the push was acked.
    if (input.inSync) out.steps.push({ kind: "activate" });
  } else if (triggers.length > 0) {
    out.steps.push({ kind: "prepare", cause: "manual" });
  } else {
    const due = dueAt(slot, role, policy);
    if (due !== undefined && now >= due) out.steps.push({ kind: "prepare", cause: "scheduled" });
    else next(due);
  }

  const retire: string[] = [];
  const forced: string[] = [];
  for (const r of state.retiring ?? []) {
    if (now < r.notBefore) {
      next(r.notBefore);
      continue;
    }
    const live = input.connections?.get(r.key);
    if (live === undefined) {
      out.needConnections.push(r.key);
      continue;
    }
    const graceEnd = r.since + policy.gracePeriodMs;
    if (live === 0) retire.push(r.key);
    else if (now >= graceEnd) {
      retire.push(r.key);
      forced.push(r.key);
    } else {
      out.waiting.push({ key: r.key, connections: live, until: graceEnd });
      next(Math.min(graceEnd, now + recheckMs(input.overlapMs ?? 5 * 60_000)));
    }
  }
  if (retire.length > 0) out.steps.push({ kind: "retire", keys: retire, forced });
  return out;
}

/**
 * A key kept past its overlap because of live connections is looked at again after this long: the
 * overlap itself, within 10 s to 5 min.
 */
export function recheckMs(overlapMs: number): number {
  return Math.min(5 * 60_000, Math.max(10_000, overlapMs));
}

function withRole(slot: StoredAccount, role: string, state: RoleRotation | undefined): StoredAccount {
  const rotation = { ...slot.rotation };
  if (state) rotation[role] = state;
  else delete rotation[role];
  const { rotation: _r, ...rest } = slot;
  return Object.keys(rotation).length > 0 ? { ...rest, rotation } : rest;
}

/** SlotChange: record `now` as the active key's start, if unknown. */
export function changeAdopt(role: string, now: number) {
  return (slot: StoredAccount): StoredAccount | undefined => {
    if (slot.roles[role] === undefined || slot.rotation?.[role]?.activeSince !== undefined) return undefined;
    return withRole(slot, role, { ...slot.rotation?.[role], activeSince: now });
  };
}

/** SlotChange: generate a key and list it as prepared (no-op if one is prepared already). */
export function changePrepare(role: string, now: number) {
  return (slot: StoredAccount, generate: () => string): StoredAccount | undefined => {
    const state = slot.rotation?.[role];
    if (slot.roles[role] === undefined || state?.prepared) return undefined;
    return withRole(slot, role, { ...state, prepared: { key: generate(), since: now } });
  };
}

/**
 * SlotChange: the prepared key becomes the active one; the old active key retires, not before
 * `now + overlapMs` (it may have issued credentials until this moment).
 */
export function changeActivate(role: string, now: number, limits: RotationLimits) {
  return (slot: StoredAccount): StoredAccount | undefined => {
    const state = slot.rotation?.[role];
    const old = slot.roles[role];
    if (!state?.prepared || old === undefined) return undefined;
    const retiring = [...(state.retiring ?? []), { key: old, since: now, notBefore: now + limits.overlapMs }];
    const activated = withRole({ ...slot, roles: { ...slot.roles, [role]: state.prepared.key } }, role, {
      activeSince: now,
      retiring,
      ...(state.emergencyAt !== undefined ? { emergencyAt: state.emergencyAt } : {}),
    });
    return activated;
  };
}

/** SlotChange: drop these retiring keys (they land in `discard` until the push is acked). */
export function changeRetire(role: string, keys: readonly string[]) {
  return (slot: StoredAccount): StoredAccount | undefined => {
    const state = slot.rotation?.[role];
    const retiring = (state?.retiring ?? []).filter((r) => !keys.includes(r.key));
    if (!state || retiring.length === (state.retiring ?? []).length) return undefined;
    const { retiring: _r, ...rest } = state;
    return withRole(slot, role, retiring.length > 0 ? { ...rest, retiring } : rest);
  };
}

/** SlotChange: every key of the role goes at once; a fresh key is active from `now`. */
export function changeEmergency(role: string, now: number) {
  return (slot: StoredAccount, generate: () => string): StoredAccount | undefined => {
    if (slot.roles[role] === undefined) return undefined;
    return withRole({ ...slot, roles: { ...slot.roles, [role]: generate() } }, role, {
      activeSince: now,
      emergencyAt: now,
    });
  };
}

/** The keys of a role an emergency rotation cuts off (every key the JWT lists for it now). */
export function emergencyVictims(slot: StoredAccount, role: string): string[] {
  const state = slot.rotation?.[role];
  const active = slot.roles[role];
  return [
    ...(active !== undefined ? [active] : []),
    ...(state?.prepared ? [state.prepared.key] : []),
    ...(state?.retiring ?? []).map((r) => r.key),
  ];
}

/** Counts for status: accounts whose role keys are in each phase (an account counts once, in its furthest phase). */
export function phaseOf(slot: StoredAccount): "active" | "prepared" | "retiring" {
  const states = Object.values(slot.rotation ?? {});
  if (states.some((s) => s.prepared)) return "prepared";
  if (states.some((s) => (s.retiring ?? []).length > 0)) return "retiring";
  return "active";
}
