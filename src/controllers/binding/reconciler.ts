/**
 * Reconcile one binding: gather (read everything) -> plan (pure) -> apply (keys first, then
 * pushes, then removals, then status). Level-based: it gets only a key and re-reads the world.
 *
 * Outcomes (see src/runtime/controller.ts): an invalid binding writes its status and throws a
 * TerminalError (no retry until it changes); a GitLab, key store or resolver failure writes status
 * and throws (retried with backoff), having deleted nothing; success returns
 * `{requeueAfterMs: driftCheckMs}` so accounts are re-checked against the resolver (drift repair).
 *
 * Ownership (ownership.ts): an account the resolver holds is pushed over or deleted only when its
 * JWT is natsbind's own for the slot (trusted issuer, this binding's, project's and environment's
 * tags). The check rides on the claims-hash lookups (no extra request in the steady state); a
 * delete looks the account up again first. Refused accounts and slots the key store does not
 * trust change nothing: they show in status (Ready=False, AccountNotOwned / UntrustedKeys) and
 * are reported once through events.refused.
 */
import { createHash } from "node:crypto";
import type { NatsBinding } from "../../api/v1alpha1/types.ts";
import { NatsbindError, TerminalError, describeError } from "../../errors.ts";
import type { GitLabProject } from "../../gitlab/port.ts";
import type { AccountRef, KeyStore, StoredAccount, UntrustedSlot } from "../../keystore/port.ts";
import { KeyStoreError } from "../../keystore/port.ts";
import { claimsHash, readJwt, signJwt } from "../../nats/claims.ts";
import type { KeyPair } from "@nats-io/nkeys";
import type { AccountResolver } from "../../nats/resolver.ts";
import type { ReconcileResult, Reconciler } from "../../runtime/controller.ts";
import type { Clock } from "../../runtime/clock.ts";
import { mapLimit } from "../../runtime/concurrency.ts";
import { compareAge, conflictMessage, holderLabel } from "./overlap.ts";
import { heldOwner, heldOwnerOfClaims, notOwnedProblem, ownerKey, type HeldOwner } from "./ownership.ts";
import { emptyPlan, plan, type Plan, type PlanMemoEntry, type PlannedPush } from "./plan.ts";
import type { KeyRotator } from "../../rotation/rotator.ts";
import { phaseOf } from "../../rotation/phases.ts";
import { refKey } from "../../keystore/port.ts";
import {
  CONDITION,
  MAX_ACCOUNT_SUMMARIES,
  REASON,
  setCondition,
  type AccountSummary,
  type BindingStatus,
  type Condition,
} from "./status.ts";

export type BindingEntry =
  | { kind: "valid"; binding: NatsBinding; generation: number }
  | { kind: "invalid"; message: string; generation: number }
  /**
   * Being deleted (Kubernetes: deletionTimestamp set, our finalizer still on it). `spec` is the
   * object's own spec when valid; otherwise the last valid spec seen applies, or nothing is deleted.
   */
  | { kind: "deleting"; spec?: NatsBinding["spec"] };

/** Where bindings come from (files in local mode, the informer in Kubernetes mode). */
export interface BindingLookup {
  get(key: string): BindingEntry | undefined;
  /** Keys of all valid bindings: used to decide which binding owns a project. */
  validKeys(): string[];
  /**
   * When the binding was created, ms since the epoch (Kubernetes: metadata.creationTimestamp;
   * local mode: metadata.creationTimestamp of the file, else when natsbind first saw it). The
   * older binding keeps a project several select (overlap.ts). Undefined: unknown (youngest).
   */
  createdAt(key: string): number | undefined;
}

/** The projects a binding selects, from a complete inventory listing (throws rather than guess). */
export interface ProjectSource {
  projects(key: string, spec: NatsBinding["spec"]): Promise<readonly GitLabProject[]>;
  /** Last complete listing of another binding's scope, if known: for conflict detection. */
  knownProjects(key: string): readonly GitLabProject[] | undefined;
  environments(projectId: number): Promise<readonly string[]>;
}

export interface StatusWriter {
  write(key: string, status: BindingStatus): Promise<void>;
  remove(key: string): Promise<void>;
}

/** Something natsbind refused to touch: public text only (account keys, Secret names, paths). */
export interface Refusal {
  reason: "AccountNotOwned" | "UntrustedKeys";
  message: string;
  account?: string;
  ref?: AccountRef;
}

export interface ReconcilerEvents {
  pushed?(key: string, account: string, ref: AccountRef): void;
  deleted?(key: string, account: string, ref: AccountRef): void;
  /** A refusal not reported for this binding by its previous reconcile (a Warning, a log line). */
  refused?(key: string, refusal: Refusal): void;
  /**
   * The binding's status as this reconcile is about to write it (metrics), or undefined once the
   * binding is gone and its status removed.
   */
  status?(key: string, status: BindingStatus | undefined): void;
}

export interface BindingReconcilerOptions {
  bindings: BindingLookup;
  projects: ProjectSource;
  keys: KeyStore;
  resolver: AccountResolver;
  statuses: StatusWriter;
  /** Operator signing key: issues the account JWTs. */
  signer: KeyPair;
  clock: Clock;
  /** How often each binding's accounts are compared with the resolver again. */
  driftCheckMs: number;
  /** Pushes in flight per reconcile. */
  pushConcurrency?: number;
  /** Key slots created in parallel per reconcile. */
  keyConcurrency?: number;
  /**
   * Keys whose account JWTs natsbind takes as its own (with its tags): default the signer alone.
   * A live set (src/operator/live-keys.ts: the operator JWT's signing keys, re-read on change).
   */
  trustedIssuers?: ReadonlySet<string>;
  events?: ReconcilerEvents;
  /**
   * Asks for another reconcile of a binding soon (wired to the work queue): a binding that left
   * projects to an older one is looked at again when that one lets them go or newly takes them.
   */
  requeue?: (key: string) => void;
  /**
   * Kubernetes mode: may this binding select what it selects (NatsBindingPolicy)? Asked before
   * anything else; a refusal reconciles nothing. Absent (local mode: admin-owned files): allowed.
   * Throws when it cannot tell (GitLab unavailable): retried like a GitLab failure.
   */
  authorize?: (key: string, spec: NatsBinding["spec"]) => Promise<GateVerdict>;
  /** Signing-key rotation and revocations (src/rotation/rotator.ts); absent: keys never change. */
  rotator?: KeyRotator;
}

/** The projects of an older, possibly overlapping binding could not be listed. */
export class OverlapCheckError extends NatsbindError {}

export type GateVerdict = { allowed: true } | { allowed: false; message: string };

class StepError extends Error {
  readonly reason: string;
  readonly condition: "GitLabSynced" | "ResolverSynced";
  constructor(reason: string, condition: "GitLabSynced" | "ResolverSynced", cause: unknown) {
    super(describeError(cause), { cause });
    this.reason = reason;
    this.condition = condition;
  }
}

export class BindingReconciler implements Reconciler<string> {
  readonly #o: BindingReconcilerOptions;
  /**
   * account -> claims hash the resolver was last seen or made to hold, and whose that JWT is
   * (ownership.ts); cleared by drift checks.
   */
  readonly #held = new Map<string, HeldAccount>();
  /** Entries removed from #held so far: a slots array checked before a removal is checked again. */
  #forgotten = 0;
  /** Slots arrays (as the key store handed them out) whose entries were all current, until when. */
  readonly #checked = new WeakMap<readonly StoredAccount[], { until: number; forgotten: number }>();
  /** Per binding, what its last full reconcile saw and planned, while that stays current. */
  readonly #steady = new Map<string, Steady>();
  /** Refusals reported per binding by its last reconcile: each is reported once, not every time. */
  readonly #refusals = new Map<string, Set<string>>();
  readonly #issuers: ReadonlySet<string>;
  #issuersSeen = "";
  readonly #pushedAt = new Map<string, string>();
  /** Last valid spec per binding: what to apply when the binding disappears. */
  readonly #lastSpec = new Map<string, NatsBinding["spec"]>();
  readonly #statuses = new Map<string, BindingStatus>();
  /** Built claims per binding and account, reused while their inputs are unchanged. */
  readonly #memo = new Map<string, Map<string, PlanMemoEntry>>();
  /** binding -> (project id -> older binding holding it), as of the binding's last reconcile. */
  readonly #yielded = new Map<string, ReadonlyMap<number, string>>();
  /** binding -> the gate's last verdict (Kubernetes mode): a refused binding holds no project. */
  readonly #allowed = new Map<string, boolean>();

  constructor(o: BindingReconcilerOptions) {
    this.#o = o;
    this.#issuers = o.trustedIssuers ?? new Set([o.signer.getPublicKey()]);
  }

  #forget(account: string): void {
    if (this.#held.delete(account)) this.#forgotten += 1;
  }

  /**
   * The trusted issuers as one string, the same string while they do not change: a held JWT's owner
   * was judged under them (the set is live: `natsbind operator activate` changes it).
   */
  #issuersKey(): string {
    const now = [...this.#issuers].sort().join(",");
    if (now !== this.#issuersSeen) this.#issuersSeen = now;
    return this.#issuersSeen;
  }

  #nowIso(): string {
    return new Date(this.#o.clock.now()).toISOString();
  }

  async reconcile(key: string): Promise<ReconcileResult> {
    const entry = this.#o.bindings.get(key);
    if (!entry) return this.#bindingGone(key);
    if (entry.kind === "deleting") return this.#bindingGone(key, await this.#authorizedSpec(key, entry.spec));
    if (entry.kind === "invalid") {
      await this.#writeStatus(key, entry.generation, [
        { type: CONDITION.Ready, status: "False", reason: REASON.InvalidSpec, message: entry.message },
      ]);
      throw new TerminalError(entry.message);
    }
    const { binding, generation } = entry;
    if (this.#o.authorize) {
      let verdict: GateVerdict;
      try {
        verdict = await this.#o.authorize(key, binding.spec);
      } catch (err) {
        return this.#fail(key, generation, new StepError(REASON.GitLabError, CONDITION.GitLabSynced, err));
      }
      this.#allowed.set(key, verdict.allowed);
      if (!verdict.allowed) {
        // Projects it held in overlaps go to the next oldest binding.
        this.#overlapsChanged(key, undefined);
        return this.#forbidden(key, generation, verdict.message);
      }
    }
    // Only an authorized spec is remembered: it is what applies when the binding goes.
    this.#lastSpec.set(key, binding.spec);
    const quick = await this.#reconcileChanges(key, binding, generation);
    if (quick) return quick;

    // What the resolver holds for the stored slots does not depend on the projects: it is read
    // beside the GitLab listing (after a restart, 100,000 accounts took ~15 s to list and as long
    // to look up, one after the other). Only reads; a failure shows again when planning below.
    const prefetched = this.#o.keys
      .list(key)
      .then((slots) => this.#resolverHashes(slots, new Set()))
      .catch(() => undefined);

    let projects: readonly GitLabProject[];
    const environments = new Map<number, readonly string[]>();
    try {
      projects = await this.#o.projects.projects(key, binding.spec);
      if (binding.spec.accountPer === "environment" && binding.spec.environments?.kind === "gitlab") {
        for (const p of projects) environments.set(p.id, await this.#o.projects.environments(p.id));
      }
    } catch (err) {
      await prefetched; // no reads left running after the reconcile
      return this.#fail(key, generation, new StepError(REASON.GitLabError, CONDITION.GitLabSynced, err));
    }

    // The oldest binding keeps a project selected by several; the others report Conflict and
    // leave their own accounts for it exactly as they are (plan: `conflict`).
    let conflicts: Map<number, string>;
    try {
      conflicts = await this.#conflicts(key, projects);
    } catch (err) {
      await prefetched; // no reads left running after the reconcile
      return this.#fail(key, generation, new StepError(REASON.GitLabError, CONDITION.GitLabSynced, err));
    }
    this.#yielded.set(key, conflicts);
    const owned = conflicts.size > 0 ? projects.filter((p) => !conflicts.has(p.id)) : projects;
    const held = new Set(conflicts.keys());

    try {
      await prefetched;
      let untrusted: UntrustedSlot[] = [];
      let slots = await this.#o.keys.list(key, untrusted);
      let current = await this.#plan(key, binding, owned, environments, slots, untrusted, undefined, held);
      // Accounts created and pushed before the final plan (which finds them up to date).
      const early = new Set<string>();
      // The slots the plan manages, worked out once per (slots, plan) pair.
      let managedOf:
        { slots: readonly StoredAccount[]; plan: Plan; managed: readonly StoredAccount[] } | undefined;
      const managed = (): readonly StoredAccount[] => {
        if (managedOf?.slots !== slots || managedOf.plan !== current)
          managedOf = { slots, plan: current, managed: managedSlots(slots, current) };
        return managedOf.managed;
      };
      if (current.ensureKeys.length > 0) {
        const fresh = await this.#createAndPush(key, binding, owned, environments, current.ensureKeys, early);
        untrusted = [];
        slots = await this.#o.keys.list(key, untrusted);
        current = await this.#plan(key, binding, owned, environments, slots, untrusted, fresh, held);
      }
      // Rotation and revocations change slots first (stored before any push), then plan again.
      const rotator = this.#o.rotator;
      let nextAt: number | undefined;
      if (rotator) {
        const requests = await rotator.requests(key);
        const before = await rotator.beforePush(key, binding.spec, managed(), inSyncOf(current), requests);
        nextAt = before.nextAt;
        // A failed step (the key store or the servers said no) is tried again soon, not at the
        // next drift check.
        if (before.failed) nextAt = Math.min(nextAt ?? Infinity, this.#o.clock.now() + ROTATION_RETRY_MS);
        if (before.changed) {
          untrusted = [];
          slots = await this.#o.keys.list(key, untrusted);
          current = await this.#plan(key, binding, owned, environments, slots, untrusted, undefined, held);
        }
      }
      await this.#apply(key, current);
      if (rotator) {
        const pushed = new Set([...early, ...current.push.map((x) => x.account)]);
        const after = await rotator.afterPush(key, binding.spec, managed(), pushed);
        if (after.changed) slots = await this.#o.keys.list(key);
        if (after.nextAt !== undefined && (nextAt === undefined || after.nextAt < nextAt))
          nextAt = after.nextAt;
        if (after.failed) nextAt = Math.min(nextAt ?? Infinity, this.#o.clock.now() + ROTATION_RETRY_MS);
      }
      this.#reportRefusals(key, current);
      await this.#writeReconciled(key, generation, binding, projects, conflicts, current, early, managed());
      this.#overlapsChanged(key, owned);
      const now = this.#o.clock.now();
      // Until then (every account's lookup current, no rotation step due), a reconcile that only
      // finds a few projects changed can plan for those alone (#reconcileChanges).
      const resolverUntil = this.#checked.get(slots)?.until;
      if (conflicts.size === 0 && untrusted.length === 0 && resolverUntil !== undefined)
        this.#steady.set(key, {
          spec: binding.spec,
          generation,
          issuers: this.#issuersKey(),
          projects,
          slots,
          plan: current,
          until: Math.min(resolverUntil, nextAt ?? Infinity),
        });
      const untilNext = nextAt !== undefined ? Math.max(1_000, nextAt - now) : Infinity;
      return { requeueAfterMs: Math.min(this.#o.driftCheckMs, untilNext) };
    } catch (err) {
      if (err instanceof StepError) return this.#fail(key, generation, err);
      const reason = err instanceof KeyStoreError ? REASON.KeyStoreError : REASON.ResolverError;
      return this.#fail(key, generation, new StepError(reason, CONDITION.ResolverSynced, err));
    }
  }

  /**
   * A binding being deleted: its own spec applies only if the gate allows it (a refused spec, e.g.
   * deletionPolicy Delete above a Retain-only ceiling, must not delete on the way out); otherwise
   * undefined, so the last authorized spec (or Retain) applies.
   */
  async #authorizedSpec(
    key: string,
    spec: NatsBinding["spec"] | undefined,
  ): Promise<NatsBinding["spec"] | undefined> {
    if (!spec || !this.#o.authorize) return spec;
    return (await this.#o.authorize(key, spec)).allowed ? spec : undefined;
  }

  /**
   * Refused by the gate: status says Forbidden and why, with no project, no account and zero
   * counts; nothing is created or deleted, and accounts made while it was allowed stay as they are.
   * Looked at again when a policy or the namespace changes, and at the drift interval.
   */
  async #forbidden(key: string, generation: number, message: string): Promise<ReconcileResult> {
    const now = this.#nowIso();
    let conditions = this.#statuses.get(key)?.conditions ?? [];
    const notChecked = "not checked: the binding is not authorized (see Ready)";
    for (const c of [
      { type: CONDITION.Ready, status: "False" as const, message },
      { type: CONDITION.GitLabSynced, status: "Unknown" as const, message: notChecked },
      { type: CONDITION.ResolverSynced, status: "Unknown" as const, message: notChecked },
    ]) {
      conditions = setCondition(
        conditions,
        { ...c, reason: REASON.Forbidden, observedGeneration: generation },
        now,
      );
    }
    const status: BindingStatus = {
      observedGeneration: generation,
      conditions,
      counts: { projects: 0, accounts: 0, pushed: 0, upToDate: 0, retained: 0, problems: 0 },
      accounts: [],
    };
    this.#statuses.set(key, status);
    await this.#publish(key, status);
    return { requeueAfterMs: this.#o.driftCheckMs };
  }

  #age(key: string): { key: string; createdAt: number | undefined } {
    return { key, createdAt: this.#o.bindings.createdAt(key) };
  }

  /**
   * Selected project id -> the oldest older binding that selects it too. An older binding whose
   * projects are not known yet (e.g. right after a restart) is listed first, so a younger binding
   * never takes projects because it happened to be reconciled first; if that listing fails, this
   * reconcile fails (retried) having changed nothing.
   */
  async #conflicts(key: string, projects: readonly GitLabProject[]): Promise<Map<number, string>> {
    const conflicts = new Map<number, string>();
    if (projects.length === 0) return conflicts;
    const self = this.#age(key);
    const older = this.#o.bindings
      .validKeys()
      .filter((other) => other !== key)
      .map((other) => this.#age(other))
      .filter((other) => compareAge(other, self) < 0)
      .sort(compareAge);
    if (older.length === 0) return conflicts;
    const ids = new Set(projects.map((p) => p.id));
    for (const { key: other } of older) {
      // Age counts only among bindings the gate allows: a refused binding (e.g. created early by
      // a tenant naming someone else's group) must not block the rightful one.
      if (!(await this.#isAllowed(key, other))) continue;
      for (const p of await this.#projectsOf(key, other)) {
        if (ids.has(p.id) && !conflicts.has(p.id)) conflicts.set(p.id, other);
      }
    }
    return conflicts;
  }

  /** The gate's verdict on another binding: its last one, or asked now when there is none yet. */
  async #isAllowed(self: string, other: string): Promise<boolean> {
    if (!this.#o.authorize) return true;
    const known = this.#allowed.get(other);
    if (known !== undefined) return known;
    const entry = this.#o.bindings.get(other);
    if (entry?.kind !== "valid") return false;
    try {
      const verdict = await this.#o.authorize(other, entry.binding.spec);
      this.#allowed.set(other, verdict.allowed);
      return verdict.allowed;
    } catch (err) {
      throw new OverlapCheckError(
        `cannot check overlaps: whether ${holderLabel(self, other)}, older than this one, may bind its ` +
          `projects could not be decided`,
        { cause: err },
      );
    }
  }

  async #projectsOf(self: string, other: string): Promise<readonly GitLabProject[]> {
    const known = this.#o.projects.knownProjects(other);
    if (known) return known;
    const entry = this.#o.bindings.get(other);
    if (entry?.kind !== "valid") return [];
    try {
      return await this.#o.projects.projects(other, entry.binding.spec);
    } catch (err) {
      // The cause may name another tenant's GitLab group: only the same namespace sees it.
      const label = holderLabel(self, other);
      const detail = label === "another binding" ? "" : `: ${describeError(err)}`;
      throw new OverlapCheckError(
        `cannot check overlaps: the projects of ${label}, older than this one, could not be listed${detail}`,
        { cause: err },
      );
    }
  }

  /**
   * After `key` was reconciled (owning `owned`) or went away (undefined): requeue the bindings
   * whose overlap with it changed, so a younger binding takes projects over, or reports that it
   * leaves them, without waiting for its next drift check.
   */
  #overlapsChanged(key: string, ownedProjects: readonly GitLabProject[] | undefined): void {
    const requeue = this.#o.requeue;
    if (!requeue) return;
    // Alone (no other binding, none yielded): nothing to requeue, and no set of every project id.
    const alone = (keys: Iterable<string>): boolean => [...keys].every((k) => k === key);
    if (alone(this.#yielded.keys()) && alone(this.#o.bindings.validKeys())) return;
    const owned = ownedProjects && new Set(ownedProjects.map((p) => p.id));
    const wanted = new Set<string>();
    for (const [other, held] of this.#yielded) {
      if (other === key) continue;
      for (const [id, holder] of held) {
        if (holder === key && !owned?.has(id)) {
          wanted.add(other);
          break;
        }
      }
    }
    if (owned && owned.size > 0) {
      const self = this.#age(key);
      for (const other of this.#o.bindings.validKeys()) {
        if (other === key || wanted.has(other) || compareAge(this.#age(other), self) <= 0) continue;
        const held = this.#yielded.get(other);
        const known = this.#o.projects.knownProjects(other) ?? [];
        if (known.some((p) => owned.has(p.id) && !held?.has(p.id))) wanted.add(other);
      }
    }
    for (const other of [...wanted].sort()) requeue(other);
  }

  /**
   * What the resolver holds for `slots` (hash and owner), from lookups cached until the drift
   * check: views of the cache (every slot's entry is current once the stale ones were looked up),
   * not maps copied per reconcile.
   */
  async #resolverHashes(
    slots: readonly StoredAccount[],
    fresh: ReadonlySet<string>,
  ): Promise<{
    hashes: Pick<ReadonlyMap<string, string>, "get" | "has">;
    owners: Pick<ReadonlyMap<string, HeldOwner>, "get">;
  }> {
    const now = this.#o.clock.now();
    const current = (account: string): HeldAccount | undefined => {
      const held = this.#held.get(account);
      return held && now - held.checkedAt < this.#o.driftCheckMs ? held : undefined;
    };
    const views = {
      hashes: { get: (a: string) => current(a)?.hash, has: (a: string) => current(a) !== undefined },
      owners: { get: (a: string) => current(a)?.owner },
    };
    // The same slots (the key store hands out one array until it changes), every one of them current
    // when last asked and none forgotten since: nothing to look up, and no pass over 100,000 slots.
    const known = this.#checked.get(slots);
    if (known && now < known.until && known.forgotten === this.#forgotten) return views;
    // Accounts just made are not looked up (the resolver cannot hold them) unless they were pushed
    // longer than a drift interval ago (a cold start slower than that): then they are checked.
    const stale = slots.filter(
      (s) => !current(s.account) && !(fresh.has(s.account) && !this.#held.has(s.account)),
    );
    const issuers = this.#issuersKey();
    try {
      await mapLimit(stale, 32, async (s) => {
        const jwt = await this.#o.resolver.lookup(s.account);
        if (jwt === undefined) {
          this.#forget(s.account);
          return;
        }
        // The very JWT seen (or pushed) before, under the same issuers: the same hash and owner,
        // without decoding it again (a drift check of 100,000 accounts decoded 100,000 JWTs).
        const digest = jwtDigest(jwt);
        const before = this.#held.get(s.account);
        if (before?.jwt === digest && before.issuers === issuers) {
          this.#held.set(s.account, { ...before, checkedAt: now });
          return;
        }
        // One read of the JWT for both: its claims hash and whose account it is.
        let owner: HeldOwner;
        let hash: string;
        try {
          const { claims } = readJwt(jwt, `account JWT of ${s.account} on the resolver`);
          owner = heldOwnerOfClaims(claims, s.account, this.#issuers);
          hash = claimsHash(claims);
        } catch (err) {
          owner = { problem: describeError(err) };
          hash = "";
        }
        this.#held.set(s.account, { hash, checkedAt: now, owner, jwt: digest, issuers });
      });
    } catch (err) {
      throw new StepError(REASON.ResolverError, CONDITION.ResolverSynced, err);
    }
    let until = Infinity;
    for (const s of slots) {
      const held = this.#held.get(s.account);
      // An account the resolver lacks (or one just made, not pushed yet) is asked again next time.
      if (!held) {
        until = -Infinity;
        break;
      }
      until = Math.min(until, held.checkedAt + this.#o.driftCheckMs);
    }
    if (until > now) this.#checked.set(slots, { until, forgotten: this.#forgotten });
    return views;
  }

  async #plan(
    key: string,
    binding: NatsBinding,
    projects: readonly GitLabProject[],
    environments: ReadonlyMap<number, readonly string[]>,
    slots: readonly StoredAccount[],
    untrusted: readonly UntrustedSlot[],
    fresh: ReadonlySet<string> = new Set(),
    heldElsewhere: ReadonlySet<number> = new Set(),
  ): Promise<Plan> {
    // Slots of projects an older binding holds are left alone: not even looked up.
    const managed = heldElsewhere.size > 0 ? slots.filter((s) => !heldElsewhere.has(s.ref.projectId)) : slots;
    const held = await this.#resolverHashes(managed, fresh);
    const planned = plan({
      bindingKey: key,
      binding,
      projects,
      heldElsewhere,
      environments,
      slots,
      untrusted,
      resolverHashes: held.hashes,
      resolverOwners: held.owners,
      issuer: this.#o.signer.getPublicKey(),
      memo: this.#memoFor(key),
    });
    planInputs.set(planned, slots);
    return planned;
  }

  #memoFor(key: string): Map<string, PlanMemoEntry> {
    let memo = this.#memo.get(key);
    if (!memo) this.#memo.set(key, (memo = new Map()));
    return memo;
  }

  /**
   * Creates the keys of `ensure` in chunks, and pushes each chunk's new accounts while the next
   * chunk's keys are made and stored: a cold start pushes from its first chunk on instead of after
   * every key is stored, and holds one chunk of pushes at a time. Only accounts ensure() created
   * go early: no JWT can name their keys yet, so there is nothing to look up and no owner to
   * check; slots it completed with a missing role key are planned with the others. Each account
   * pushed goes into `early`; returns the accounts created (not to be looked up).
   */
  async #createAndPush(
    key: string,
    binding: NatsBinding,
    projects: readonly GitLabProject[],
    environments: ReadonlyMap<number, readonly string[]>,
    ensure: Plan["ensureKeys"],
    early: Set<string>,
  ): Promise<Set<string>> {
    const fresh = new Set<string>();
    const byId = new Map(projects.map((p) => [p.id, p]));
    // Each ensure is durable before it resolves; side by side they share the key store's commits.
    const at = this.#o.clock.now();
    let pushing: Promise<void> = Promise.resolve();
    for (let i = 0; i < ensure.length; i += CREATE_CHUNK) {
      const created: StoredAccount[] = [];
      try {
        await mapLimit(
          ensure.slice(i, i + CREATE_CHUNK),
          this.#o.keyConcurrency ?? this.#o.keys.ensureConcurrency ?? 32,
          async ({ ref, roles }) => {
            const {
              accountKey: _a,
              roleKeys: _r,
              created: isNew,
              ...slot
            } = await this.#o.keys.ensure(ref, roles, at);
            if (!isNew) return;
            fresh.add(slot.account);
            created.push(slot);
          },
        );
      } catch (err) {
        await pushing.catch(() => undefined);
        throw err;
      }
      await pushing;
      const chunkProjects = [...new Set(created.map((s) => s.ref.projectId))].flatMap((id) => {
        const project = byId.get(id);
        return project ? [project] : [];
      });
      const p = plan({
        bindingKey: key,
        binding,
        projects: chunkProjects,
        environments,
        slots: created,
        resolverHashes: new Map(),
        issuer: this.#o.signer.getPublicKey(),
        memo: this.#memoFor(key),
      });
      pushing = this.#push(key, p.push, early);
      // Awaited at the next chunk (or below); meanwhile a failure must not count as unhandled.
      pushing.catch(() => undefined);
    }
    try {
      await pushing;
    } catch (err) {
      throw new StepError(REASON.ResolverError, CONDITION.ResolverSynced, err);
    }
    return fresh;
  }

  /** Status of a reconcile that succeeded (with the rotation of its managed slots), written. */
  async #writeReconciled(
    key: string,
    generation: number,
    binding: NatsBinding,
    projects: readonly GitLabProject[],
    conflicts: ReadonlyMap<number, string>,
    p: Plan,
    early: ReadonlySet<string>,
    managed: readonly StoredAccount[],
  ): Promise<void> {
    const status = this.#status(key, generation, projects, projects.length, conflicts, p, early);
    if (this.#o.rotator) {
      status.rotation = this.#o.rotator.status(key, binding.spec, managed);
      const listed = new Set(status.accounts.map((a) => a.account));
      const byAccount = new Map(
        managed.filter((slot) => listed.has(slot.account)).map((slot) => [slot.account, slot]),
      );
      for (const summary of status.accounts) {
        const slot = byAccount.get(summary.account);
        if (!slot) continue;
        const since = Object.keys(slot.roles)
          .map((role) => slot.rotation?.[role]?.activeSince)
          .filter((t): t is number => t !== undefined);
        if (since.length > 0) summary.keysActiveSince = new Date(Math.min(...since)).toISOString();
        summary.keyPhase = phaseOf(slot);
      }
    }
    await this.#publish(key, status);
  }

  /**
   * A reconcile that finds only a few projects changed (created, renamed: a webhook) since the
   * last full one, with nothing else to do, plans for those projects alone and keeps the last
   * plan for the others: their inputs are the same objects (projects, slots, spec), their lookups
   * current and no rotation step due, so a full plan would find them as they were. A binding of
   * 100,000 accounts took ~1 s of CPU per webhook to plan them all again. Returns undefined when
   * anything else may have changed (then the full reconcile runs): another binding, another spec
   * or issuer, a drift check or rotation step due, a slot changed or distrusted, a request for
   * the binding, a project gone, environments from GitLab, or too many changes.
   */
  async #reconcileChanges(
    key: string,
    binding: NatsBinding,
    generation: number,
  ): Promise<ReconcileResult | undefined> {
    const steady = this.#steady.get(key);
    this.#steady.delete(key);
    const now = this.#o.clock.now();
    if (
      !steady ||
      steady.spec !== binding.spec ||
      steady.generation !== generation ||
      now >= steady.until ||
      steady.issuers !== this.#issuersKey() ||
      (binding.spec.accountPer === "environment" && binding.spec.environments?.kind === "gitlab") ||
      this.#o.bindings.validKeys().some((other) => other !== key)
    )
      return undefined;
    const untrusted: UntrustedSlot[] = [];
    const slots = await this.#o.keys.list(key, untrusted);
    if (slots !== steady.slots || untrusted.length > 0) return undefined;
    const requests = this.#o.rotator ? await this.#o.rotator.requests(key) : undefined;
    if (
      requests &&
      (requests.triggers.length > 0 || requests.revocations.length > 0 || requests.problems?.length)
    )
      return undefined;
    let projects: readonly GitLabProject[];
    try {
      projects = await this.#o.projects.projects(key, binding.spec);
    } catch {
      return undefined;
    }
    const changed = changedProjects(steady.projects, projects, MAX_CHANGES);
    if (!changed) return undefined;

    // From here on this reconcile writes: any failure is reported as the full reconcile's would be.
    try {
      const ids = new Set(changed.map((p) => p.id));
      const slotsOf = (all: readonly StoredAccount[]): StoredAccount[] =>
        all.filter((s) => ids.has(s.ref.projectId));
      const environments = new Map<number, readonly string[]>();
      const early = new Set<string>();
      let current = await this.#plan(key, binding, changed, environments, slotsOf(slots), [], undefined);
      let latest = slots;
      if (current.ensureKeys.length > 0) {
        const fresh = await this.#createAndPush(
          key,
          binding,
          changed,
          environments,
          current.ensureKeys,
          early,
        );
        latest = await this.#o.keys.list(key);
        current = await this.#plan(key, binding, changed, environments, slotsOf(latest), [], fresh);
      }
      const rotator = this.#o.rotator;
      let nextAt: number | undefined;
      // A rotation step changed slots: the next reconcile is a full one.
      let rotated = false;
      if (rotator && requests) {
        const before = await rotator.beforePush(
          key,
          binding.spec,
          managedSlots(slotsOf(latest), current),
          inSyncOf(current),
          requests,
        );
        nextAt = before.nextAt;
        if (before.failed) nextAt = Math.min(nextAt ?? Infinity, now + ROTATION_RETRY_MS);
        if (before.changed) {
          rotated = true;
          latest = await this.#o.keys.list(key);
          current = await this.#plan(key, binding, changed, environments, slotsOf(latest), []);
        }
      }
      if (current.remove.length > 0 || current.retain.length > 0 || current.conflict.length > 0)
        throw new TypeError("a plan of changed projects found slots of projects it was not given");
      await this.#apply(key, current);
      if (rotator) {
        const pushed = new Set([...early, ...current.push.map((x) => x.account)]);
        const after = await rotator.afterPush(
          key,
          binding.spec,
          managedSlots(slotsOf(latest), current),
          pushed,
        );
        if (after.changed) {
          rotated = true;
          latest = await this.#o.keys.list(key);
        }
        if (after.nextAt !== undefined && (nextAt === undefined || after.nextAt < nextAt))
          nextAt = after.nextAt;
        if (after.failed) nextAt = Math.min(nextAt ?? Infinity, now + ROTATION_RETRY_MS);
      }
      const merged = mergePlans(steady.plan, current, ids);
      planInputs.set(merged, latest);
      this.#yielded.set(key, new Map());
      this.#reportRefusals(key, merged);
      await this.#writeReconciled(
        key,
        generation,
        binding,
        projects,
        new Map(),
        merged,
        early,
        managedSlots(latest, merged),
      );
      // The others' lookups are as they were; the changed projects' accounts were just looked up
      // or pushed (one the resolver lacks is asked again by the next full reconcile).
      let until = Math.min(steady.until, nextAt ?? Infinity);
      for (const slot of slotsOf(latest)) {
        const held = this.#held.get(slot.account);
        until = held ? Math.min(until, held.checkedAt + this.#o.driftCheckMs) : -Infinity;
        if (!held) break;
      }
      if (!rotated && until > this.#o.clock.now())
        this.#steady.set(key, { ...steady, projects, slots: latest, plan: merged, until });
      // As a full reconcile would: the drift check its requeue scheduled stays due (the earlier
      // of two requeues wins), and then finds the lookups stale (`until`).
      const untilNext = nextAt !== undefined ? Math.max(1_000, nextAt - this.#o.clock.now()) : Infinity;
      return { requeueAfterMs: Math.min(this.#o.driftCheckMs, untilNext) };
    } catch (err) {
      if (err instanceof StepError) return this.#fail(key, generation, err);
      const reason = err instanceof KeyStoreError ? REASON.KeyStoreError : REASON.ResolverError;
      return this.#fail(key, generation, new StepError(reason, CONDITION.ResolverSynced, err));
    }
  }

  /** Signs and pushes `pushes` (pushConcurrency in flight); records each one pushed in `done`. */
  async #push(key: string, pushes: readonly PlannedPush[], done?: Set<string>): Promise<void> {
    const iat = Math.floor(this.#o.clock.now() / 1000);
    const issuers = this.#issuersKey();
    await mapLimit(pushes, this.#o.pushConcurrency ?? 16, async (push) => {
      const jwt = signJwt(push.claims(), this.#o.signer, iat);
      await this.#o.resolver.push(jwt);
      this.#held.set(push.account, {
        hash: push.hash,
        checkedAt: this.#o.clock.now(),
        owner: { owner: ownerKey(key, push.ref) },
        jwt: jwtDigest(jwt),
        issuers,
      });
      this.#pushedAt.set(push.account, this.#nowIso());
      done?.add(push.account);
      this.#o.events?.pushed?.(key, push.account, push.ref);
    });
  }

  async #apply(key: string, p: Plan): Promise<void> {
    try {
      await this.#push(key, p.push);
      const removed: StoredAccount[] = [];
      for (const slot of p.remove) {
        const refused = await this.#removeAccount(key, slot);
        if (refused) p.notOwned.push({ ref: slot.ref, account: slot.account, message: refused });
        else removed.push(slot);
      }
      p.remove = removed;
    } catch (err) {
      throw new StepError(REASON.ResolverError, CONDITION.ResolverSynced, err);
    }
  }

  /**
   * Deletes the slot's account from the resolver, then its keys; returns why not when the account
   * the resolver holds is not natsbind's own for this slot (then nothing is changed). Deletes are
   * rare and final, so the owner is looked up afresh rather than taken from the cache.
   */
  async #removeAccount(key: string, slot: StoredAccount): Promise<string | undefined> {
    const jwt = await this.#o.resolver.lookup(slot.account);
    if (jwt !== undefined) {
      const owner = heldOwner(jwt, slot.account, this.#issuers);
      const refused = notOwnedProblem(slot.account, key, slot.ref, owner);
      if (refused) {
        this.#forget(slot.account);
        return refused;
      }
    }
    // Resolver first: if that fails the keys stay, and the next reconcile tries again.
    await this.#o.resolver.delete([slot.account]);
    await this.#o.keys.remove(slot.ref);
    this.#forget(slot.account);
    this.#pushedAt.delete(slot.account);
    this.#o.events?.deleted?.(key, slot.account, slot.ref);
    return undefined;
  }

  /** Reports the plan's refusals that the binding's previous reconcile did not report. */
  #reportRefusals(key: string, p: Plan, all = false): void {
    const refusals: Refusal[] = [
      ...p.notOwned.map((x) => ({
        reason: REASON.AccountNotOwned,
        message: x.message,
        account: x.account,
        ref: x.ref,
      })),
      ...p.untrusted.map((u) => ({
        reason: REASON.UntrustedKeys,
        message: `${u.message}: natsbind does not use this slot`,
        ...(u.ref ? { ref: u.ref } : {}),
      })),
    ];
    const before = this.#refusals.get(key) ?? new Set<string>();
    const now = new Set(refusals.map((r) => r.message));
    if (now.size > 0) this.#refusals.set(key, now);
    else this.#refusals.delete(key);
    for (const r of refusals) if (all || !before.has(r.message)) this.#o.events?.refused?.(key, r);
  }

  /**
   * The binding is gone (or being deleted): apply its deletionPolicy. The last spec is forgotten
   * only once that succeeded, so a failed removal is retried with the same policy.
   */
  async #bindingGone(key: string, spec = this.#lastSpec.get(key)): Promise<ReconcileResult> {
    if (spec?.deletionPolicy === "Delete") {
      // Only trusted slots, and only accounts that are this binding's own: the rest is reported.
      const untrusted: UntrustedSlot[] = [];
      const notOwned: Plan["notOwned"] = [];
      for (const slot of await this.#o.keys.list(key, untrusted)) {
        const refused = await this.#removeAccount(key, slot);
        if (refused) notOwned.push({ ref: slot.ref, account: slot.account, message: refused });
      }
      this.#reportRefusals(key, { ...emptyPlan(), notOwned, untrusted }, true);
    } else {
      // Retain, or a policy never seen: the accounts stay, and so must their keys.
      await this.#o.keys.release?.(key);
    }
    this.#lastSpec.delete(key);
    this.#steady.delete(key);
    this.#o.rotator?.forgetBinding(key);
    this.#refusals.delete(key);
    this.#statuses.delete(key);
    this.#memo.delete(key);
    this.#yielded.delete(key);
    this.#allowed.delete(key);
    await this.#o.statuses.remove(key);
    this.#o.events?.status?.(key, undefined);
    this.#overlapsChanged(key, undefined);
  }

  async #fail(key: string, generation: number, err: StepError): Promise<never> {
    const conditions: Array<Omit<Condition, "lastTransitionTime" | "observedGeneration">> = [
      { type: CONDITION.Ready, status: "False", reason: err.reason, message: err.message },
      { type: err.condition, status: "False", reason: err.reason, message: err.message },
    ];
    await this.#writeStatus(key, generation, conditions).catch(() => undefined);
    throw err.cause instanceof Error ? err.cause : err;
  }

  async #writeStatus(
    key: string,
    generation: number,
    updates: Array<Omit<Condition, "lastTransitionTime" | "observedGeneration">>,
  ): Promise<void> {
    const previous = this.#statuses.get(key);
    let conditions = previous?.conditions ?? [];
    for (const u of updates)
      conditions = setCondition(conditions, { ...u, observedGeneration: generation }, this.#nowIso());
    const status: BindingStatus = {
      observedGeneration: generation,
      conditions,
      counts: previous?.counts ?? {
        projects: 0,
        accounts: 0,
        pushed: 0,
        upToDate: 0,
        retained: 0,
        problems: 0,
      },
      accounts: previous?.accounts ?? [],
    };
    this.#statuses.set(key, status);
    await this.#publish(key, status);
  }

  /** Reports the status (even if writing it fails: it is what natsbind knows), then writes it. */
  async #publish(key: string, status: BindingStatus): Promise<void> {
    this.#o.events?.status?.(key, status);
    await this.#o.statuses.write(key, status);
  }

  #status(
    key: string,
    generation: number,
    projects: readonly GitLabProject[],
    selected: number,
    conflicts: ReadonlyMap<number, string>,
    p: Plan,
    early: ReadonlySet<string> = new Set(),
  ): BindingStatus {
    // Status lists MAX_ACCOUNT_SUMMARIES accounts, lowest project ids first: only those are built
    // (a binding of 100,000 accounts used to build, sort and drop 100,000 summaries per reconcile).
    const listed: Array<{
      ref: AccountRef;
      account: string;
      state: AccountSummary["state"];
      message?: string;
    }> = [];
    const top = new SmallestK<{ ref: AccountRef; source: number; index: number }>(
      MAX_ACCOUNT_SUMMARIES,
      (a, b) =>
        a.ref.projectId - b.ref.projectId ||
        (a.ref.environment ?? "").localeCompare(b.ref.environment ?? "") ||
        a.source - b.source ||
        a.index - b.index,
    );
    const sources: ReadonlyArray<ReadonlyArray<{ ref?: AccountRef }>> = [
      p.push,
      p.upToDate,
      p.retain,
      p.conflict,
      p.problems,
      p.notOwned,
      p.untrusted,
    ];
    let total = 0;
    sources.forEach((list, source) =>
      list.forEach((x, index) => {
        if (!x.ref) return;
        total += 1;
        top.offer({ ref: x.ref, source, index });
      }),
    );
    for (const { ref, source, index } of top.sorted()) {
      switch (source) {
        case 0:
          listed.push({ ref, account: p.push[index]!.account, state: "Ready" });
          break;
        case 1:
          listed.push({ ref, account: p.upToDate[index]!.account, state: "Ready" });
          break;
        case 2:
          listed.push({
            ref,
            account: p.retain[index]!.account,
            state: "Retained",
            message: "no longer selected; kept (deletionPolicy Retain)",
          });
          break;
        case 3:
          listed.push({
            ref,
            account: p.conflict[index]!.account,
            state: "Conflict",
            message:
              `project held by an older ${holderLabel(key, conflicts.get(ref.projectId) ?? "")}; ` +
              "this account is left as it is (not updated, not deleted)",
          });
          break;
        case 4:
          listed.push({ ref, account: "", state: "Problem", message: p.problems[index]!.message });
          break;
        case 5:
          listed.push({
            ref,
            account: p.notOwned[index]!.account,
            state: "Problem",
            message: p.notOwned[index]!.message,
          });
          break;
        default:
          listed.push({
            ref,
            account: "",
            state: "Problem",
            message: `${p.untrusted[index]!.message}: natsbind does not use this slot`,
          });
      }
    }
    const wantedIds = new Set(listed.map((x) => x.ref.projectId));
    const paths = new Map<number, string>();
    for (const project of projects)
      if (wantedIds.has(project.id)) paths.set(project.id, project.pathWithNamespace);
    const accounts: AccountSummary[] = listed.map(({ ref, account, state, message }) => {
      const pushedAt = account ? this.#pushedAt.get(account) : undefined;
      const held = account ? this.#held.get(account) : undefined;
      return {
        projectId: ref.projectId,
        projectPath: paths.get(ref.projectId) ?? "(not in scope)",
        ...(ref.environment !== undefined ? { environment: ref.environment } : {}),
        account,
        ...(held ? { claimsHash: held.hash } : {}),
        ...(pushedAt ? { pushedAt } : {}),
        state,
        ...(message !== undefined ? { message } : {}),
      } satisfies AccountSummary;
    });
    // Accounts created and pushed before the final plan count as pushed, as they were.
    const pushedEarly = early.size > 0 ? p.upToDate.filter((x) => early.has(x.account)).length : 0;
    const pushedCount = p.push.length + pushedEarly;
    const upToDateCount = p.upToDate.length - pushedEarly;

    const now = this.#nowIso();
    const previous = this.#statuses.get(key)?.conditions ?? [];
    const problems = p.problems.length + p.notOwned.length + p.untrusted.length;
    const conflictText = conflicts.size > 0 ? conflictMessage(key, conflicts) : "";
    const ready = problems === 0 && conflicts.size === 0;
    let conditions = setCondition(
      previous,
      {
        type: CONDITION.GitLabSynced,
        status: "True",
        reason: REASON.Reconciled,
        message: `${selected} project(s) selected`,
        observedGeneration: generation,
      },
      now,
    );
    conditions = setCondition(
      conditions,
      {
        type: CONDITION.ResolverSynced,
        status: "True",
        reason: REASON.Reconciled,
        message:
          `${pushedCount} pushed, ${upToDateCount} up to date, ${p.remove.length} removed` +
          (p.conflict.length > 0 ? `, ${p.conflict.length} left as they are (conflict)` : ""),
        observedGeneration: generation,
      },
      now,
    );
    conditions = setCondition(
      conditions,
      {
        type: CONDITION.Ready,
        status: ready ? "True" : "False",
        reason: ready ? REASON.Reconciled : conflicts.size > 0 ? REASON.Conflict : problemReason(p),
        message: ready
          ? `${p.push.length + p.upToDate.length} account(s) ready`
          : [
              conflictText,
              p.notOwned.length
                ? `${p.notOwned.length} account(s) left alone: ${p.notOwned[0]!.message}`
                : "",
              p.untrusted.length
                ? `${p.untrusted.length} key slot(s) not trusted: ${p.untrusted[0]!.message}`
                : "",
              p.problems.length
                ? `${p.problems.length} account(s) cannot be built: ${p.problems[0]!.message}`
                : "",
            ]
              .filter(Boolean)
              .join("; "),
        observedGeneration: generation,
      },
      now,
    );
    const status: BindingStatus = {
      observedGeneration: generation,
      conditions,
      counts: {
        projects: selected,
        accounts: p.push.length + p.upToDate.length + p.retain.length,
        pushed: pushedCount,
        upToDate: upToDateCount,
        retained: p.retain.length,
        problems,
      },
      accounts,
      ...(total > MAX_ACCOUNT_SUMMARIES ? { accountsTruncated: total - MAX_ACCOUNT_SUMMARIES } : {}),
    };
    this.#statuses.set(key, status);
    return status;
  }
}

/** What a binding's last full reconcile saw and planned (see #reconcileChanges). */
interface Steady {
  spec: NatsBinding["spec"];
  generation: number;
  issuers: string;
  /** The projects and slots as handed out (the same arrays mean nothing changed). */
  projects: readonly GitLabProject[];
  slots: readonly StoredAccount[];
  plan: Plan;
  /** Until then every account's lookup is current and no rotation step is due. */
  until: number;
}

/** Changed projects one reconcile plans for alone; more (a listing) get a full plan. */
const MAX_CHANGES = 256;

/**
 * The projects of `after` that are new or changed since `before` (the inventory's snapshots, in
 * its order: a refreshed project keeps its place, a new one comes last); undefined when a project
 * is gone, the order differs, or more than `max` changed.
 */
function changedProjects(
  before: readonly GitLabProject[],
  after: readonly GitLabProject[],
  max: number,
): GitLabProject[] | undefined {
  if (after.length < before.length) return undefined;
  const changed: GitLabProject[] = [];
  for (let i = 0; i < after.length; i++) {
    const next = after[i]!;
    if (i < before.length) {
      if (before[i] === next) continue;
      if (before[i]!.id !== next.id) return undefined;
    }
    changed.push(next);
    if (changed.length > max) return undefined;
  }
  return changed;
}

/**
 * The last full plan with the entries of the projects `ids` replaced by `delta`'s (a plan of
 * those projects alone). What it pushed then is up to date now, as a full plan would find it.
 */
function mergePlans(last: Plan, delta: Plan, ids: ReadonlySet<number>): Plan {
  const keep = <T extends { ref?: AccountRef }>(list: readonly T[]): T[] =>
    list.filter((x) => !x.ref || !ids.has(x.ref.projectId));
  const byRef = <T extends { ref: AccountRef }>(list: T[]): T[] =>
    list.sort(
      (a, b) =>
        a.ref.projectId - b.ref.projectId || (a.ref.environment ?? "").localeCompare(b.ref.environment ?? ""),
    );
  return {
    ensureKeys: delta.ensureKeys,
    push: delta.push,
    upToDate: byRef([
      ...keep(last.upToDate),
      ...keep(last.push).map(({ ref, account, hash }) => ({ ref, account, hash })),
      ...delta.upToDate,
    ]),
    remove: [],
    retain: last.retain,
    conflict: last.conflict,
    problems: byRef([...keep(last.problems), ...delta.problems]),
    notOwned: byRef([...keep(last.notOwned), ...delta.notOwned]),
    untrusted: last.untrusted,
  };
}

/** What the resolver was last seen (or made) to hold for an account. */
interface HeldAccount {
  /** Claims hash of that JWT ("" when it did not decode). */
  hash: string;
  checkedAt: number;
  /** Whose the JWT is (ownership.ts), judged under `issuers`. */
  owner: HeldOwner;
  /** Digest of the JWT itself: the same JWT again needs no decoding. */
  jwt?: string;
  issuers?: string;
}

function jwtDigest(jwt: string): string {
  return createHash("sha256").update(jwt).digest("base64");
}

/**
 * Accounts of the plan whose JWT on the resolver is what their slot says, made into a set only
 * when asked (the rotator asks of slots with a prepared key or discarded seeds: few, usually none).
 */
function inSyncOf(p: Plan): { has(account: string): boolean } {
  let accounts: Set<string> | undefined;
  return { has: (account) => (accounts ??= new Set(p.upToDate.map((x) => x.account))).has(account) };
}

/**
 * The k smallest of the items offered, by `compare` (a total order): a bounded max-heap, so most
 * offers of a long, mostly ascending sequence cost one comparison.
 */
class SmallestK<T> {
  readonly #k: number;
  readonly #compare: (a: T, b: T) => number;
  readonly #heap: T[] = [];

  constructor(k: number, compare: (a: T, b: T) => number) {
    this.#k = k;
    this.#compare = compare;
  }

  offer(item: T): void {
    const heap = this.#heap;
    if (heap.length < this.#k) {
      heap.push(item);
      this.#up(heap.length - 1);
    } else if (this.#k > 0 && this.#compare(item, heap[0]!) < 0) {
      heap[0] = item;
      this.#down(0);
    }
  }

  sorted(): T[] {
    return [...this.#heap].sort(this.#compare);
  }

  #up(i: number): void {
    const heap = this.#heap;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.#compare(heap[i]!, heap[parent]!) <= 0) return;
      [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
      i = parent;
    }
  }

  #down(i: number): void {
    const heap = this.#heap;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let largest = i;
      if (left < heap.length && this.#compare(heap[left]!, heap[largest]!) > 0) largest = left;
      if (right < heap.length && this.#compare(heap[right]!, heap[largest]!) > 0) largest = right;
      if (largest === i) return;
      [heap[i], heap[largest]] = [heap[largest]!, heap[i]!];
      i = largest;
    }
  }
}

/** The Ready reason for a plan with problems: refusals first, they need a human most. */
function problemReason(p: Plan): string {
  if (p.notOwned.length > 0) return REASON.AccountNotOwned;
  if (p.untrusted.length > 0) return REASON.UntrustedKeys;
  return REASON.AccountProblems;
}

/**
 * Slots created per step of a cold start (#createAndPush): the first pushes start after this many
 * slots are stored, and one step's pushes run beside the next step's key generation.
 */
const CREATE_CHUNK = 1_000;

/** How soon a binding whose rotation step failed is reconciled again. */
const ROTATION_RETRY_MS = 30_000;

/** The slots each plan was made from (see managedSlots). */
const planInputs = new WeakMap<Plan, readonly StoredAccount[]>();

/** The slots a plan manages (pushed or up to date): the ones rotation and revocations act on. */
function managedSlots(slots: readonly StoredAccount[], p: Plan): readonly StoredAccount[] {
  // Each pushed or up-to-date account is a distinct slot of those the plan was made from: as many
  // as there are slots means all of them (the usual case), without a pass over them.
  if (planInputs.get(p) === slots && p.push.length + p.upToDate.length === slots.length) return slots;
  // By account, then ref (an entry's account is its slot's): no key strings for 100,000 slots.
  const refs = new Map<string, AccountRef>();
  for (const x of [p.push, p.upToDate].flat()) {
    if (refs.has(x.account)) {
      // Two slots naming one account (copied files): match by ref key.
      const keys = new Set([...p.push, ...p.upToDate].map((y) => refKey(y.ref)));
      return slots.filter((slot) => keys.has(refKey(slot.ref)));
    }
    refs.set(x.account, x.ref);
  }
  return slots.filter((slot) => {
    const ref = refs.get(slot.account);
    return (
      ref !== undefined &&
      ref.projectId === slot.ref.projectId &&
      ref.environment === slot.ref.environment &&
      ref.binding === slot.ref.binding
    );
  });
}
