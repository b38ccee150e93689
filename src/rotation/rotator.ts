/**
 * The reconciler's rotation step: runs the phases of src/rotation/phases.ts (and revocations) on a
 * binding's key slots. Every change is written to the key store BEFORE anything is pushed, so a
 * crash anywhere resumes from what is stored:
 *
 *   beforePush  adopt (record an old slot's key age), emergency, prepare (manual, or scheduled and
 *               rate-limited), activate (when the JWT listing the prepared key is already on every
 *               server), retire (overlap passed; CONNZ shows no connection on the key, or the grace
 *               period is over), revocations merged and pruned, forget() of discarded seeds whose
 *               removal every server acked. The reconciler then plans again and pushes.
 *   afterPush   for accounts just pushed (acked by every server): activate prepared keys and forget
 *               discarded seeds. So prepare -> push -> activate takes one reconcile, and each phase
 *               that changes the JWT costs one push per account.
 *
 * It only reads and writes slots through the KeyStore and counts connections through
 * AccountConnectionReader; pushes stay the reconciler's.
 */
import type { NatsBindingSpec } from "../api/v1alpha1/types.ts";
import { describeError } from "../errors.ts";
import type { AccountRef, KeyStore, StoredAccount } from "../keystore/port.ts";
import { refKey } from "../keystore/port.ts";
import type { AccountConnection, AccountConnectionReader } from "../nats/resolver.ts";
import type { Clock } from "../runtime/clock.ts";
import { mapLimit } from "../runtime/concurrency.ts";
import { RateLimiter } from "../credentials/ratelimit.ts";
import type { RotationStatus } from "../controllers/binding/status.ts";
import {
  changeActivate,
  changeAdopt,
  changeEmergency,
  changePrepare,
  changeRetire,
  decide,
  dueAt,
  emergencyVictims,
  phaseOf,
  type RotationLimits,
  type RotationPolicy,
  type RotationTrigger,
} from "./phases.ts";
import { carries, changeRevocations, nextPruneAt, type RevocationRequest } from "./revocations.ts";

/** What was asked of a binding besides its spec: rotations and revocations (CLI, annotations). */
export interface BindingRequests {
  triggers: readonly RotationTrigger[];
  revocations: readonly RevocationRequest[];
  /** Requests that could not be read (a malformed annotation): reported, ignored. */
  problems?: readonly string[];
}

export interface RequestSource {
  /** The binding's open requests; throws when they cannot be read (the reconcile is retried). */
  requests(binding: string): Promise<BindingRequests>;
}

export type RotationPhaseEvent =
  | "KeyPrepared"
  | "KeyActivated"
  | "KeyRetired"
  | "KeyRetirementWaiting"
  | "KeyRetirementForced"
  | "EmergencyRotation"
  | "UsersRevoked"
  | "RotationFailed"
  | "RotationRequestInvalid";

/** One phase change of one account role: public data only (keys, counts, connection names/tags). */
export interface RotationEvent {
  phase: RotationPhaseEvent;
  /** The account concerned (absent for a request that concerns the binding). */
  ref?: AccountRef;
  account?: string;
  role?: string;
  message: string;
  /** Warning-worthy (a stuck or forced retirement, an emergency, a failure). */
  warning: boolean;
  /** Connections involved (closed by an emergency, keeping a key, cut off by a forced retirement). */
  connections?: number;
}

export interface RotatorOptions {
  keys: KeyStore;
  connections?: AccountConnectionReader;
  clock: Clock;
  /** natsbind.yaml's rotation defaults (spec.rotation overrides them). */
  defaults: RotationPolicy;
  limits: RotationLimits;
  /** Scheduled rotations started per minute (all bindings of this process). */
  maxStartsPerMinute: number;
  requests?: RequestSource;
  onEvent?: (binding: string, event: RotationEvent) => void;
  /** Slot writes in flight. */
  concurrency?: number;
}

/** What one account needs after the push (the reconciler passes which accounts it pushed). */
interface Outcome {
  changed: boolean;
  /** Slots whose step failed (reported as events and in status.rotation.lastFailure). */
  failed?: number;
  nextAt?: number;
}

const MAX_NAMES_IN_MESSAGE = 5;

export class KeyRotator {
  readonly #o: RotatorOptions;
  readonly #starts: RateLimiter;
  readonly #status = new Map<string, RotationStatus>();
  /** The policy each binding's last status was computed with (metrics: the rotation-overdue alert). */
  readonly #policies = new Map<string, RotationPolicy>();
  readonly #lastEmergency = new Map<string, NonNullable<RotationStatus["lastEmergency"]>>();
  /** Waiting retirements already reported, per binding: reported once, not at every reconcile. */
  readonly #reportedWaiting = new Map<string, Set<string>>();
  /** The last failed step per binding (kept until a later one fails: status shows the last). */
  readonly #failures = new Map<string, NonNullable<RotationStatus["lastFailure"]>>();
  readonly #waiting = new Map<string, number>();
  readonly #reportedProblems = new Map<string, Set<string>>();

  get #retention(): number {
    return this.#o.limits.revocationRetentionMs ?? this.#o.limits.overlapMs;
  }

  constructor(o: RotatorOptions) {
    this.#o = o;
    this.#starts = new RateLimiter(o.maxStartsPerMinute, 1);
  }

  policyOf(spec: NatsBindingSpec): RotationPolicy {
    return {
      everyMs: spec.rotation?.everyMs ?? this.#o.defaults.everyMs,
      gracePeriodMs: spec.rotation?.gracePeriodMs ?? this.#o.defaults.gracePeriodMs,
    };
  }

  async requests(binding: string): Promise<BindingRequests> {
    return (await this.#o.requests?.requests(binding)) ?? { triggers: [], revocations: [] };
  }

  /**
   * Slot changes due before this reconcile's push. `managed`: the binding's desired, trusted slots;
   * `inSync`: accounts whose JWT on the resolver is what their slot describes.
   */
  async beforePush(
    binding: string,
    spec: NatsBindingSpec,
    managed: readonly StoredAccount[],
    inSync: { has(account: string): boolean },
    requests: BindingRequests,
  ): Promise<Outcome> {
    const now = this.#o.clock.now();
    const policy = this.policyOf(spec);
    const roles = spec.roles.map((r) => r.name);
    let changed = false;
    let nextAt: number | undefined;
    const soon = (at: number | undefined): void => {
      if (at !== undefined && (nextAt === undefined || at < nextAt)) nextAt = at;
    };
    const failures: string[] = [];
    const waitingNow = new Set<string>();
    const reported = this.#reportedWaiting.get(binding) ?? new Set<string>();
    const emergencies = { accounts: 0, connections: 0 };
    const reportedProblems = this.#reportedProblems.get(binding);
    for (const problem of requests.problems ?? []) {
      if (reportedProblems?.has(problem)) continue;
      this.#o.onEvent?.(binding, { phase: "RotationRequestInvalid", message: problem, warning: true });
    }
    this.#reportedProblems.set(binding, new Set(requests.problems ?? []));
    let waitingConnections = 0;

    // Most slots have nothing due: decided here, synchronously; only the others take the async
    // path below (a binding of 100,000 slots used to await 100,000 functions per reconcile).
    const idle = (slot: StoredAccount): boolean => {
      if (
        this.#revocationsFor(slot, requests.revocations) ||
        nextPruneAt(slot, this.#retention) !== undefined
      )
        return false;
      if (slot.discard && slot.discard.length > 0 && inSync.has(slot.account)) return false;
      const nextAts: number[] = [];
      for (const role of roles) {
        if (slot.roles[role] === undefined) continue;
        const state = slot.rotation?.[role];
        if (
          requests.triggers.length === 0 &&
          state?.activeSince !== undefined &&
          !state.prepared &&
          (state.retiring ?? []).length === 0
        ) {
          // What decide() says of a role with one key, unasked: prepare when due, else wait for it.
          const due = dueAt(slot, role, policy);
          if (due !== undefined && now >= due) return false;
          if (due !== undefined) nextAts.push(due);
          continue;
        }
        const d = decide({
          slot,
          role,
          now,
          policy,
          triggers: requests.triggers,
          // Read only for a prepared key (whether it may issue yet).
          inSync: state?.prepared !== undefined && inSync.has(slot.account),
          overlapMs: this.#o.limits.overlapMs,
        });
        if (d.steps.length > 0 || d.needConnections.length > 0 || d.waiting.length > 0) return false;
        if (d.nextAt !== undefined) nextAts.push(d.nextAt);
      }
      for (const at of nextAts) soon(at);
      return true;
    };
    await mapLimit(
      managed.filter((slot) => !idle(slot)),
      this.#o.concurrency ?? 32,
      async (slot) => {
        try {
          let current = slot;
          const update = async (change: Parameters<KeyStore["update"]>[1]): Promise<void> => {
            const before = current;
            current = await this.#o.keys.update(current.ref, change);
            if (current !== before) changed = true;
          };
          // Revocations first: they are the most urgent change a push can carry.
          const revoke = this.#revocationsFor(slot, requests.revocations);
          if (revoke || nextPruneAt(slot, this.#retention) !== undefined) {
            const change = changeRevocations(revoke ?? {}, now, this.#retention);
            if (change(current)) {
              await update(change);
              if (revoke) {
                const n = Object.keys(revoke).length;
                this.#emit(binding, current, undefined, "UsersRevoked", false, `${n} revocation(s) added`);
              }
            }
            soon(nextPruneAt(current, this.#retention));
          }
          let conns: AccountConnection[] | undefined;
          const connections = async (): Promise<AccountConnection[]> =>
            (conns ??= (await this.#o.connections?.connections(current.account)) ?? []);

          for (const role of roles) {
            if (current.roles[role] === undefined) continue;
            let d = decide({
              slot: current,
              role,
              now,
              policy,
              triggers: requests.triggers,
              inSync: inSync.has(current.account),
              overlapMs: this.#o.limits.overlapMs,
            });
            if (d.needConnections.length > 0) {
              const live = await connections();
              const counts = new Map(d.needConnections.map((k) => [k, 0]));
              for (const c of live)
                if (counts.has(c.issuerKey)) counts.set(c.issuerKey, counts.get(c.issuerKey)! + 1);
              d = decide({
                slot: current,
                role,
                now,
                policy,
                triggers: requests.triggers,
                inSync: inSync.has(current.account),
                connections: counts,
                overlapMs: this.#o.limits.overlapMs,
              });
            }
            soon(d.nextAt);
            for (const step of d.steps) {
              switch (step.kind) {
                case "adopt":
                  await update(changeAdopt(role, now));
                  break;
                case "emergency": {
                  const victims = new Set(emergencyVictims(current, role));
                  // Counting is for the report only: the keys go even when the servers cannot be asked.
                  const closed = await connections().then(
                    (live) => live.filter((c) => victims.has(c.issuerKey)).length,
                    () => undefined,
                  );
                  await update(changeEmergency(role, now));
                  emergencies.accounts += 1;
                  emergencies.connections += closed ?? 0;
                  this.#emit(
                    binding,
                    current,
                    role,
                    "EmergencyRotation",
                    true,
                    `every key of role ${role} replaced at once; ${
                      closed === undefined ? "an unknown number of" : closed
                    } connection(s) on them will be closed`,
                    ...(closed !== undefined ? [closed] : []),
                  );
                  break;
                }
                case "prepare":
                  if (step.cause === "scheduled" && !this.#starts.take("scheduled", now).allowed) {
                    soon(now + 60_000 / this.#o.maxStartsPerMinute);
                    break;
                  }
                  await update(changePrepare(role, now));
                  this.#emit(
                    binding,
                    current,
                    role,
                    "KeyPrepared",
                    false,
                    `new signing key ${current.rotation?.[role]?.prepared?.key} of role ${role} listed (${step.cause})`,
                  );
                  break;
                case "activate":
                  await this.#activate(binding, role, now, update, () => current);
                  break;
                case "retire": {
                  const forced =
                    step.forced.length > 0 ? await this.#describeLive(step.forced, await connections()) : "";
                  await update(changeRetire(role, step.keys));
                  this.#emit(
                    binding,
                    current,
                    role,
                    step.forced.length > 0 ? "KeyRetirementForced" : "KeyRetired",
                    step.forced.length > 0,
                    step.forced.length > 0
                      ? `signing key(s) ${step.forced.join(", ")} of role ${role} removed after the grace period although connections still used them: ${forced}`
                      : `signing key(s) ${step.keys.join(", ")} of role ${role} removed`,
                  );
                  break;
                }
              }
            }
            for (const w of d.waiting) {
              waitingConnections += w.connections;
              const id = `${current.account}/${w.key}`;
              waitingNow.add(id);
              if (reported.has(id)) continue;
              const names = await this.#describeLive([w.key], await connections());
              this.#emit(
                binding,
                current,
                role,
                "KeyRetirementWaiting",
                true,
                `signing key ${w.key} of role ${role} stays listed: ${w.connections} live connection(s) it issued ` +
                  `(${names}); removed when they are gone or at ${new Date(w.until).toISOString()} (gracePeriod)`,
                w.connections,
              );
            }
          }
          // Seeds of keys every server already dropped can go now.
          if (
            current.discard &&
            current.discard.length > 0 &&
            inSync.has(current.account) &&
            current === slot
          ) {
            await this.#o.keys.forget(current.ref, current.discard);
          }
        } catch (err) {
          failures.push(`${refKey(slot.ref)}: ${describeError(err)}`);
          this.#emit(binding, slot, undefined, "RotationFailed", true, describeError(err));
        }
      },
    );
    this.#reportedWaiting.set(binding, waitingNow);
    if (emergencies.accounts > 0) {
      this.#lastEmergency.set(binding, {
        time: new Date(now).toISOString(),
        accounts: emergencies.accounts,
        connectionsClosed: emergencies.connections,
      });
    }
    if (failures.length > 0) {
      this.#failures.set(binding, {
        time: new Date(now).toISOString(),
        message: `${failures.length} rotation step(s) failed; first: ${failures[0]}`,
      });
    }
    this.#waiting.set(binding, waitingConnections);
    return { changed, failed: failures.length, ...(nextAt !== undefined ? { nextAt } : {}) };
  }

  /**
   * After the push: accounts in `pushed` are on every server as their slots describe, so their
   * prepared keys may issue and their discarded seeds may go.
   */
  async afterPush(
    binding: string,
    spec: NatsBindingSpec,
    managed: readonly StoredAccount[],
    pushed: ReadonlySet<string>,
  ): Promise<Outcome> {
    const now = this.#o.clock.now();
    const roles = spec.roles.map((r) => r.name);
    let changed = false;
    let failed = 0;
    let nextAt: number | undefined;
    // Keys just replaced retire after the overlap: look again then. Only slots with a prepared key
    // or discarded seeds need a write (a cold start pushes every account, and has neither).
    const soon = (slot: StoredAccount): void => {
      for (const role of roles)
        for (const r of slot.rotation?.[role]?.retiring ?? [])
          if (nextAt === undefined || r.notBefore < nextAt) nextAt = r.notBefore;
    };
    const writes = managed.filter((slot) => {
      if (!pushed.has(slot.account)) return false;
      const write =
        (slot.discard?.length ?? 0) > 0 ||
        roles.some((role) => slot.rotation?.[role]?.prepared !== undefined);
      if (!write) soon(slot);
      return write;
    });
    await mapLimit(writes, this.#o.concurrency ?? 32, async (slot) => {
      try {
        let current = slot;
        for (const role of roles) {
          if (!current.rotation?.[role]?.prepared) continue;
          await this.#activate(
            binding,
            role,
            now,
            async (change) => {
              current = await this.#o.keys.update(current.ref, change);
              changed = true;
            },
            () => current,
          );
        }
        if (current.discard && current.discard.length > 0)
          await this.#o.keys.forget(current.ref, current.discard);
        soon(current);
      } catch (err) {
        failed += 1;
        this.#failures.set(binding, {
          time: new Date(now).toISOString(),
          message: `${refKey(slot.ref)}: ${describeError(err)}`,
        });
        this.#emit(binding, slot, undefined, "RotationFailed", true, describeError(err));
      }
    });
    return { changed, failed, ...(nextAt !== undefined ? { nextAt } : {}) };
  }

  async #activate(
    binding: string,
    role: string,
    now: number,
    update: (change: Parameters<KeyStore["update"]>[1]) => Promise<void>,
    current: () => StoredAccount,
  ): Promise<void> {
    const prepared = current().rotation?.[role]?.prepared?.key;
    await update(changeActivate(role, now, this.#o.limits));
    this.#emit(
      binding,
      current(),
      role,
      "KeyActivated",
      false,
      `signing key ${prepared} of role ${role} issues from now on`,
    );
  }

  #revocationsFor(
    slot: StoredAccount,
    requests: readonly RevocationRequest[],
  ): Record<string, number> | undefined {
    let out: Record<string, number> | undefined;
    for (const r of requests) {
      if (r.projectId !== slot.ref.projectId) continue;
      if (r.environment !== undefined && r.environment !== slot.ref.environment) continue;
      if (carries(slot, r.entries, this.#o.clock.now(), this.#retention)) continue;
      out ??= {};
      for (const [k, v] of Object.entries(r.entries)) out[k] = Math.max(out[k] ?? -1, v);
    }
    return out;
  }

  async #describeLive(keys: readonly string[], live: readonly AccountConnection[]): Promise<string> {
    const on = live.filter((c) => keys.includes(c.issuerKey));
    const shown = on
      .slice(0, MAX_NAMES_IN_MESSAGE)
      .map(
        (c) => `${c.name || "(unnamed)"} on ${c.server}${c.tags.length > 0 ? ` [${c.tags.join(",")}]` : ""}`,
      );
    return on.length > MAX_NAMES_IN_MESSAGE
      ? `${shown.join("; ")}; and ${on.length - MAX_NAMES_IN_MESSAGE} more`
      : shown.join("; ");
  }

  #emit(
    binding: string,
    slot: StoredAccount,
    role: string | undefined,
    phase: RotationPhaseEvent,
    warning: boolean,
    message: string,
    connections?: number,
  ): void {
    this.#o.onEvent?.(binding, {
      phase,
      ref: slot.ref,
      account: slot.account,
      ...(role !== undefined ? { role } : {}),
      message,
      warning,
      ...(connections !== undefined ? { connections } : {}),
    });
  }

  /** status.rotation of the binding from its slots as they are now. */
  status(binding: string, spec: NatsBindingSpec, slots: readonly StoredAccount[]): RotationStatus {
    const waitingConnections = this.#waiting.get(binding) ?? 0;
    const policy = this.policyOf(spec);
    const accounts = { active: 0, prepared: 0, retiring: 0 };
    let oldest: number | undefined;
    let next: number | undefined;
    for (const slot of slots) {
      accounts[phaseOf(slot)] += 1;
      for (const role of Object.keys(slot.roles)) {
        const since = slot.rotation?.[role]?.activeSince;
        if (since !== undefined && (oldest === undefined || since < oldest)) oldest = since;
        const due = dueAt(slot, role, policy);
        if (due !== undefined && (next === undefined || due < next)) next = due;
      }
    }
    const status: RotationStatus = {
      accounts,
      waitingConnections,
      ...(next !== undefined ? { nextRotation: new Date(next).toISOString() } : {}),
      ...(oldest !== undefined ? { oldestActiveKeySince: new Date(oldest).toISOString() } : {}),
      ...(this.#failures.get(binding) ? { lastFailure: this.#failures.get(binding)! } : {}),
      ...(this.#lastEmergency.get(binding) ? { lastEmergency: this.#lastEmergency.get(binding)! } : {}),
    };
    this.#status.set(binding, status);
    this.#policies.set(binding, policy);
    return status;
  }

  /** The last status per binding, for metrics. */
  statuses(): ReadonlyMap<string, RotationStatus> {
    return this.#status;
  }

  /** The rotation policy of each binding with a status (spec.rotation over the defaults), for metrics. */
  policies(): ReadonlyMap<string, RotationPolicy> {
    return this.#policies;
  }

  forgetBinding(binding: string): void {
    this.#status.delete(binding);
    this.#policies.delete(binding);
    this.#failures.delete(binding);
    this.#waiting.delete(binding);
    this.#lastEmergency.delete(binding);
    this.#reportedWaiting.delete(binding);
    this.#reportedProblems.delete(binding);
  }
}
