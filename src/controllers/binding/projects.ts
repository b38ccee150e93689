/**
 * The projects each binding selects, kept current: one ProjectInventory per distinct GitLab scope
 * (bindings with the same selector share it), a periodic full resync of all of them, and
 * webhook-triggered targeted refreshes. Whenever a scope's snapshot changes, the bindings using it
 * are reported through `onChange` so the controller can enqueue them.
 *
 * Webhooks cannot amplify: a signal touches only the scopes it concerns (relevance.ts), so one
 * for an unrelated group costs no GitLab request; group signals resync those scopes and project
 * signals fetch that one project once for all of them; and both are coalesced (a burst costs at
 * most one run in flight and one queued per scope or project id). The periodic resync remains
 * the backstop for anything a signal did not say.
 */
import type { GitLabSelector, NatsBinding } from "../../api/v1alpha1/types.ts";
import { describeError } from "../../errors.ts";
import { ProjectInventory, isEmptyDiff, type InventoryDiff, type Snapshot } from "../../gitlab/inventory.ts";
import type { GitLabPort, GitLabProject } from "../../gitlab/port.ts";
import { signalConcerns } from "../../gitlab/relevance.ts";
import type { GitLabSignal } from "../../gitlab/signals.ts";
import type { Clock, TimerHandle } from "../../runtime/clock.ts";
import { Coalescer } from "../../runtime/concurrency.ts";
import type { ProjectSource } from "./reconciler.ts";

function scopeKey(s: GitLabSelector): string {
  return s.kind === "group"
    ? `group:${s.group}:${s.includeSubgroups ? "all" : "direct"}`
    : `project:${s.project}`;
}

interface Scope {
  inventory: ProjectInventory;
  bindings: Set<string>;
  /** The resync being reported: callers that joined it (ProjectInventory.resync) report it once. */
  reporting?: { run: Promise<InventoryDiff>; done: Promise<void> };
  /** A first listing started by projectOf(): one at a time, retried at most every 10 s. */
  firstListing?: { atMs: number; inFlight: boolean };
}

const FIRST_LISTING_RETRY_MS = 10_000;

/** One fetch of a project for every scope a signal concerns, with each scope's listing count then. */
interface Fetched {
  project: GitLabProject | undefined;
  listingsBefore: Map<ProjectInventory, number>;
  /** Inventories it was applied to: signals that joined the same fetch apply it once. */
  applied: Set<ProjectInventory>;
}

export interface ProjectInventoriesOptions {
  gitlab: GitLabPort;
  clock: Clock;
  resyncIntervalMs: number;
  /** Bindings whose selected projects changed. */
  onChange: (bindingKeys: string[], diff: InventoryDiff) => void;
  onError?: (err: unknown, what: string) => void;
}

export class ProjectInventories implements ProjectSource {
  readonly #o: ProjectInventoriesOptions;
  readonly #scopes = new Map<string, Scope>();
  readonly #bindingScope = new Map<string, string>();
  readonly #fetches = new Coalescer<number, Fetched | undefined>();
  readonly #lists = new WeakMap<Snapshot, readonly GitLabProject[]>();
  #timer: TimerHandle | undefined;
  #stopped = false;

  constructor(o: ProjectInventoriesOptions) {
    this.#o = o;
  }

  #scopeFor(key: string, spec: NatsBinding["spec"]): Scope {
    const sk = scopeKey(spec.gitlab);
    const previous = this.#bindingScope.get(key);
    if (previous && previous !== sk) this.#scopes.get(previous)?.bindings.delete(key);
    this.#bindingScope.set(key, sk);
    let scope = this.#scopes.get(sk);
    if (!scope) {
      const g = spec.gitlab;
      scope = {
        inventory: new ProjectInventory(
          this.#o.gitlab,
          g.kind === "group"
            ? { groups: [g.group], projects: [], directOnly: !g.includeSubgroups }
            : { groups: [], projects: [g.project] },
        ),
        bindings: new Set(),
      };
      this.#scopes.set(sk, scope);
    }
    scope.bindings.add(key);
    return scope;
  }

  async projects(key: string, spec: NatsBinding["spec"]): Promise<readonly GitLabProject[]> {
    const scope = this.#scopeFor(key, spec);
    if (!scope.inventory.synced) await scope.inventory.resync();
    return this.#list(scope.inventory.snapshot());
  }

  /** A snapshot's projects as an array, made once per snapshot (snapshots are replaced, not changed). */
  #list(snapshot: Snapshot): readonly GitLabProject[] {
    let list = this.#lists.get(snapshot);
    if (!list) this.#lists.set(snapshot, (list = Object.freeze([...snapshot.values()])));
    return list;
  }

  /**
   * The project with this id among those the binding selects, from the scope's last complete
   * listing (a Map lookup: credential issuance asks this per request). "unsynced": the scope was
   * never listed; its first listing is started (at most one at a time) and the caller answers later.
   */
  projectOf(
    key: string,
    spec: NatsBinding["spec"],
    projectId: number,
  ): GitLabProject | undefined | "unsynced" {
    const scope = this.#scopeFor(key, spec);
    if (scope.inventory.synced) return scope.inventory.snapshot().get(projectId);
    const now = this.#o.clock.now();
    if (
      !scope.firstListing?.inFlight &&
      now - (scope.firstListing?.atMs ?? -Infinity) >= FIRST_LISTING_RETRY_MS
    ) {
      const attempt = { atMs: now, inFlight: true };
      scope.firstListing = attempt;
      void this.#resync(scope, "first listing (credentials)").finally(() => (attempt.inFlight = false));
    }
    return "unsynced";
  }

  knownProjects(key: string): readonly GitLabProject[] | undefined {
    const scope = this.#scopes.get(this.#bindingScope.get(key) ?? "");
    return scope?.inventory.synced ? this.#list(scope.inventory.snapshot()) : undefined;
  }

  environments(projectId: number): Promise<readonly string[]> {
    return this.#o.gitlab.environments(projectId).then((envs) => envs.map((e) => e.name));
  }

  /** A binding was removed: stop tracking it (its scope goes when no binding uses it). */
  forget(key: string): void {
    const sk = this.#bindingScope.get(key);
    this.#bindingScope.delete(key);
    const scope = sk ? this.#scopes.get(sk) : undefined;
    scope?.bindings.delete(key);
    if (sk && scope && scope.bindings.size === 0) this.#scopes.delete(sk);
  }

  #report(scope: Scope, diff: InventoryDiff): void {
    if (!isEmptyDiff(diff) && scope.bindings.size > 0) this.#o.onChange([...scope.bindings].sort(), diff);
  }

  /** Resyncs a scope and reports the diff once, however many callers joined the same resync. */
  #resync(scope: Scope, why: string): Promise<void> {
    const run = scope.inventory.resync();
    if (scope.reporting?.run === run) return scope.reporting.done;
    const done = run.then(
      (diff) => this.#report(scope, diff),
      (err: unknown) => this.#o.onError?.(err, `${why}: ${describeError(err)}`),
    );
    scope.reporting = { run, done };
    return done;
  }

  /** One GET /projects/:id per burst of signals for that id, shared by every scope (errors logged once). */
  #fetchProject(projectId: number, why: string): Promise<Fetched | undefined> {
    return this.#fetches.run(projectId, async () => {
      const listingsBefore = new Map(
        [...this.#scopes.values()].map((s) => [s.inventory, s.inventory.listingsStarted] as const),
      );
      try {
        return { project: await this.#o.gitlab.project(projectId), listingsBefore, applied: new Set() };
      } catch (err) {
        this.#o.onError?.(err, `${why}: ${describeError(err)}`);
        return undefined;
      }
    });
  }

  /**
   * A webhook said something changed: resync the scopes a group signal concerns, or refresh the
   * project a project signal names in the scopes it concerns. Signals that concern no scope cost
   * nothing; scopes not listed yet are left to their first listing.
   */
  async handle(signal: GitLabSignal): Promise<void> {
    const why = `refresh after ${signal.event}`;
    const concerned = [...this.#scopes.values()]
      .filter((scope) => scope.inventory.synced)
      .map((scope) => ({ scope, view: scope.inventory.view() }))
      .filter(({ view }) => signalConcerns(signal, view));
    if (concerned.length === 0) return;
    if (signal.kind === "group") {
      await Promise.all(concerned.map(({ scope }) => this.#resync(scope, why)));
      return;
    }
    // A scope of single projects relists them (one request each), which also finds one named by
    // a path that did not exist before; a group scope applies the one shared fetch.
    const singles = concerned.filter(({ view }) => view.roots.length === 0);
    const grouped = concerned.filter(({ view }) => view.roots.length > 0);
    await Promise.all([
      ...singles.map(({ scope }) => this.#resync(scope, why)),
      (async () => {
        if (grouped.length === 0) return;
        const fetched = await this.#fetchProject(signal.projectId, why);
        if (!fetched) return;
        for (const { scope } of grouped) {
          if (fetched.applied.has(scope.inventory)) continue;
          fetched.applied.add(scope.inventory);
          const before = fetched.listingsBefore.get(scope.inventory) ?? -1;
          try {
            this.#report(
              scope,
              await scope.inventory.applyProject(signal.projectId, fetched.project, before),
            );
          } catch (err) {
            this.#o.onError?.(err, `${why}: ${describeError(err)}`);
          }
        }
      })(),
    ]);
  }

  /** Starts the periodic full resync of every scope. */
  /** Starts the periodic full resync of every scope (again after stop(); a no-op while running). */
  start(): void {
    if (!this.#stopped && this.#timer !== undefined) return;
    this.#stopped = false;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = this.#o.clock.setTimeout(
      () => void this.resyncAll().finally(() => this.#schedule()),
      this.#o.resyncIntervalMs,
    );
  }

  async resyncAll(): Promise<void> {
    for (const scope of [...this.#scopes.values()]) await this.#resync(scope, "resync");
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
