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
import type { NatsBinding } from "../../api/v1alpha1/types.ts";
import { TerminalError, describeError } from "../../errors.ts";
import type { GitLabProject } from "../../gitlab/port.ts";
import type { AccountRef, KeyStore, StoredAccount, UntrustedSlot } from "../../keystore/port.ts";
import { KeyStoreError } from "../../store/key-directory.ts";
import { jwtClaimsHash, signJwt } from "../../nats/claims.ts";
import type { KeyPair } from "@nats-io/nkeys";
import type { AccountResolver } from "../../nats/resolver.ts";
import type { ReconcileResult, Reconciler } from "../../runtime/controller.ts";
import type { Clock } from "../../runtime/clock.ts";
import { mapLimit } from "../../runtime/concurrency.ts";
import { heldOwner, notOwnedProblem, ownerKey, type HeldOwner } from "./ownership.ts";
import { plan, type Plan } from "./plan.ts";
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
   * Add the operator's other keys only if they never sign accounts natsbind must not touch.
   */
  trustedIssuers?: readonly string[];
  events?: ReconcilerEvents;
}

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
  readonly #held = new Map<string, { hash: string; checkedAt: number; owner: HeldOwner }>();
  /** Refusals reported per binding by its last reconcile: each is reported once, not every time. */
  readonly #refusals = new Map<string, Set<string>>();
  readonly #issuers: ReadonlySet<string>;
  readonly #pushedAt = new Map<string, string>();
  /** Last valid spec per binding: what to apply when the binding disappears. */
  readonly #lastSpec = new Map<string, NatsBinding["spec"]>();
  readonly #statuses = new Map<string, BindingStatus>();
  /** Built claims per binding and account, reused while their inputs are unchanged. */
  readonly #memo = new Map<string, Map<string, { inputs: string; hash: string }>>();

  constructor(o: BindingReconcilerOptions) {
    this.#o = o;
    this.#issuers = new Set(o.trustedIssuers ?? [o.signer.getPublicKey()]);
  }

  #nowIso(): string {
    return new Date(this.#o.clock.now()).toISOString();
  }

  async reconcile(key: string): Promise<ReconcileResult> {
    const entry = this.#o.bindings.get(key);
    if (!entry) return this.#bindingGone(key);
    if (entry.kind === "deleting") return this.#bindingGone(key, entry.spec);
    if (entry.kind === "invalid") {
      await this.#writeStatus(key, entry.generation, [
        { type: CONDITION.Ready, status: "False", reason: REASON.InvalidSpec, message: entry.message },
      ]);
      throw new TerminalError(entry.message);
    }
    const { binding, generation } = entry;
    this.#lastSpec.set(key, binding.spec);

    let projects: readonly GitLabProject[];
    const environments = new Map<number, readonly string[]>();
    try {
      projects = await this.#o.projects.projects(key, binding.spec);
      if (binding.spec.accountPer === "environment" && binding.spec.environments?.kind === "gitlab") {
        for (const p of projects) environments.set(p.id, await this.#o.projects.environments(p.id));
      }
    } catch (err) {
      return this.#fail(key, generation, new StepError(REASON.GitLabError, CONDITION.GitLabSynced, err));
    }

    // First binding (by key) wins a project selected by several; the others report Conflict.
    const conflicts = this.#conflicts(key, projects);
    const owned = projects.filter((p) => !conflicts.has(p.id));

    try {
      let untrusted: UntrustedSlot[] = [];
      let slots = await this.#o.keys.list(key, untrusted);
      let current = await this.#plan(key, binding, owned, environments, slots, untrusted);
      if (current.ensureKeys.length > 0) {
        // Accounts whose keys ensure() just generated cannot be on the resolver: no lookup for
        // them. Keys it found (another writer's, maybe not natsbind's) are looked up as any.
        const fresh = new Set<string>();
        // Each ensure is durable before it resolves (fsync); many in flight share the disk's time.
        await mapLimit(current.ensureKeys, this.#o.keyConcurrency ?? 32, async ({ ref, roles }) => {
          const keys = await this.#o.keys.ensure(ref, roles);
          if (keys.created) fresh.add(keys.account);
        });
        untrusted = [];
        slots = await this.#o.keys.list(key, untrusted);
        current = await this.#plan(key, binding, owned, environments, slots, untrusted, fresh);
      }
      await this.#apply(key, current);
      this.#reportRefusals(key, current);
      const status = this.#status(key, generation, owned, projects.length, conflicts, current);
      await this.#o.statuses.write(key, status);
      return { requeueAfterMs: this.#o.driftCheckMs };
    } catch (err) {
      if (err instanceof StepError) return this.#fail(key, generation, err);
      const reason = err instanceof KeyStoreError ? REASON.KeyStoreError : REASON.ResolverError;
      return this.#fail(key, generation, new StepError(reason, CONDITION.ResolverSynced, err));
    }
  }

  #conflicts(key: string, projects: readonly GitLabProject[]): Map<number, string> {
    const conflicts = new Map<number, string>();
    const ids = new Set(projects.map((p) => p.id));
    for (const other of this.#o.bindings.validKeys().sort()) {
      if (other >= key) break;
      for (const p of this.#o.projects.knownProjects(other) ?? []) {
        if (ids.has(p.id) && !conflicts.has(p.id)) conflicts.set(p.id, other);
      }
    }
    return conflicts;
  }

  /** What the resolver holds for `slots` (hash and owner), from lookups cached until the drift check. */
  async #resolverHashes(
    slots: readonly StoredAccount[],
    fresh: ReadonlySet<string>,
  ): Promise<{ hashes: Map<string, string>; owners: Map<string, HeldOwner> }> {
    const now = this.#o.clock.now();
    const hashes = new Map<string, string>();
    const owners = new Map<string, HeldOwner>();
    const stale = slots.filter((s) => {
      if (fresh.has(s.account)) return false;
      const held = this.#held.get(s.account);
      if (held && now - held.checkedAt < this.#o.driftCheckMs) {
        hashes.set(s.account, held.hash);
        owners.set(s.account, held.owner);
        return false;
      }
      return true;
    });
    try {
      await mapLimit(stale, 32, async (s) => {
        const jwt = await this.#o.resolver.lookup(s.account);
        if (jwt === undefined) {
          this.#held.delete(s.account);
          return;
        }
        const owner = heldOwner(jwt, s.account, this.#issuers);
        const hash = jwtClaimsHash(jwt);
        this.#held.set(s.account, { hash, checkedAt: now, owner });
        hashes.set(s.account, hash);
        owners.set(s.account, owner);
      });
    } catch (err) {
      throw new StepError(REASON.ResolverError, CONDITION.ResolverSynced, err);
    }
    return { hashes, owners };
  }

  async #plan(
    key: string,
    binding: NatsBinding,
    projects: readonly GitLabProject[],
    environments: ReadonlyMap<number, readonly string[]>,
    slots: readonly StoredAccount[],
    untrusted: readonly UntrustedSlot[],
    fresh: ReadonlySet<string> = new Set(),
  ): Promise<Plan> {
    const held = await this.#resolverHashes(slots, fresh);
    return plan({
      bindingKey: key,
      binding,
      projects,
      environments,
      slots,
      untrusted,
      resolverHashes: held.hashes,
      resolverOwners: held.owners,
      issuer: this.#o.signer.getPublicKey(),
      memo: this.#memoFor(key),
    });
  }

  #memoFor(key: string): Map<string, { inputs: string; hash: string }> {
    let memo = this.#memo.get(key);
    if (!memo) this.#memo.set(key, (memo = new Map()));
    return memo;
  }

  async #apply(key: string, p: Plan): Promise<void> {
    const iat = Math.floor(this.#o.clock.now() / 1000);
    try {
      await mapLimit(p.push, this.#o.pushConcurrency ?? 16, async (push) => {
        await this.#o.resolver.push(signJwt(push.claims(), this.#o.signer, iat));
        this.#held.set(push.account, {
          hash: push.hash,
          checkedAt: this.#o.clock.now(),
          owner: { owner: ownerKey(key, push.ref) },
        });
        this.#pushedAt.set(push.account, this.#nowIso());
        this.#o.events?.pushed?.(key, push.account, push.ref);
      });
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
        this.#held.delete(slot.account);
        return refused;
      }
    }
    // Resolver first: if that fails the keys stay, and the next reconcile tries again.
    await this.#o.resolver.delete([slot.account]);
    await this.#o.keys.remove(slot.ref);
    this.#held.delete(slot.account);
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

  /** The binding is gone: apply its last known deletionPolicy (Retain when unknown). */
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
      const none: Plan = {
        ensureKeys: [],
        push: [],
        upToDate: [],
        remove: [],
        retain: [],
        problems: [],
        notOwned,
        untrusted,
      };
      this.#reportRefusals(key, none, true);
    } else {
      // Retain, or a policy never seen: the accounts stay, and so must their keys.
      await this.#o.keys.release?.(key);
    }
    this.#lastSpec.delete(key);
    this.#refusals.delete(key);
    this.#statuses.delete(key);
    this.#memo.delete(key);
    await this.#o.statuses.remove(key);
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
    await this.#o.statuses.write(key, status);
  }

  #status(
    key: string,
    generation: number,
    owned: readonly GitLabProject[],
    selected: number,
    conflicts: ReadonlyMap<number, string>,
    p: Plan,
  ): BindingStatus {
    const byId = new Map(owned.map((x) => [x.id, x]));
    const summary = (
      ref: AccountRef,
      account: string,
      state: AccountSummary["state"],
      extra: Partial<AccountSummary> = {},
    ) => {
      const pushedAt = this.#pushedAt.get(account);
      return {
        projectId: ref.projectId,
        projectPath: byId.get(ref.projectId)?.pathWithNamespace ?? "(not in scope)",
        ...(ref.environment !== undefined ? { environment: ref.environment } : {}),
        account,
        ...(this.#held.get(account) ? { claimsHash: this.#held.get(account)!.hash } : {}),
        ...(pushedAt ? { pushedAt } : {}),
        state,
        ...extra,
      } satisfies AccountSummary;
    };
    const accounts: AccountSummary[] = [
      ...p.push.map((x) => summary(x.ref, x.account, "Ready")),
      ...p.upToDate.map((x) => summary(x.ref, x.account, "Ready")),
      ...p.retain.map((x) =>
        summary(x.ref, x.account, "Retained", {
          message: "no longer selected; kept (deletionPolicy Retain)",
        }),
      ),
      ...p.problems.map((x) => ({ ...summary(x.ref, "", "Problem"), message: x.message })),
      ...p.notOwned.map((x) => ({ ...summary(x.ref, x.account, "Problem"), message: x.message })),
      ...p.untrusted.flatMap((u) =>
        u.ref
          ? [{ ...summary(u.ref, "", "Problem"), message: `${u.message}: natsbind does not use this slot` }]
          : [],
      ),
    ].sort((a, b) => a.projectId - b.projectId || (a.environment ?? "").localeCompare(b.environment ?? ""));

    const now = this.#nowIso();
    const previous = this.#statuses.get(key)?.conditions ?? [];
    const problems = p.problems.length + p.notOwned.length + p.untrusted.length;
    const conflictMessage =
      conflicts.size > 0
        ? `${conflicts.size} selected project(s) belong to another binding: ${[...conflicts]
            .slice(0, 5)
            .map(([id, other]) => `${id} (${other})`)
            .join(", ")}`
        : "";
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
        message: `${p.push.length} pushed, ${p.upToDate.length} up to date, ${p.remove.length} removed`,
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
              conflictMessage,
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
        pushed: p.push.length,
        upToDate: p.upToDate.length,
        retained: p.retain.length,
        problems,
      },
      accounts: accounts.slice(0, MAX_ACCOUNT_SUMMARIES),
      ...(accounts.length > MAX_ACCOUNT_SUMMARIES
        ? { accountsTruncated: accounts.length - MAX_ACCOUNT_SUMMARIES }
        : {}),
    };
    this.#statuses.set(key, status);
    return status;
  }
}

/** The Ready reason for a plan with problems: refusals first, they need a human most. */
function problemReason(p: Plan): string {
  if (p.notOwned.length > 0) return REASON.AccountNotOwned;
  if (p.untrusted.length > 0) return REASON.UntrustedKeys;
  return REASON.AccountProblems;
}
