/**
 * The projects each binding selects, kept current: one ProjectInventory per distinct GitLab scope
 * (bindings with the same selector share it), a periodic full resync of all of them, and
 * webhook-triggered targeted refreshes. Whenever a scope's snapshot changes, the bindings using it
 * are reported through `onChange` so the controller can enqueue them.
 */
import type { GitLabSelector, NatsBinding } from "../../api/v1alpha1/types.ts";
import { describeError } from "../../errors.ts";
import { ProjectInventory, isEmptyDiff, type InventoryDiff } from "../../gitlab/inventory.ts";
import type { GitLabPort, GitLabProject } from "../../gitlab/port.ts";
import type { GitLabSignal } from "../../gitlab/signals.ts";
import type { Clock, TimerHandle } from "../../runtime/clock.ts";
import type { ProjectSource } from "./reconciler.ts";

function scopeKey(s: GitLabSelector): string {
  return s.kind === "group"
    ? `group:${s.group}:${s.includeSubgroups ? "all" : "direct"}`
    : `project:${s.project}`;
}

interface Scope {
  inventory: ProjectInventory;
  bindings: Set<string>;
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
    return [...scope.inventory.snapshot().values()];
  }

  knownProjects(key: string): readonly GitLabProject[] | undefined {
    const scope = this.#scopes.get(this.#bindingScope.get(key) ?? "");
    return scope?.inventory.synced ? [...scope.inventory.snapshot().values()] : undefined;
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

  /** A webhook said something changed: refresh that project (or resync on group events). */
  async handle(signal: GitLabSignal): Promise<void> {
    for (const scope of [...this.#scopes.values()]) {
      if (!scope.inventory.synced) continue;
      try {
        const diff =
          signal.kind === "project"
            ? await scope.inventory.refreshProject(signal.projectId)
            : await scope.inventory.resync();
        this.#report(scope, diff);
      } catch (err) {
        this.#o.onError?.(err, `refresh after ${signal.event}: ${describeError(err)}`);
      }
    }
  }

  /** Starts the periodic full resync of every scope. */
  start(): void {
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
    for (const scope of [...this.#scopes.values()]) {
      try {
        this.#report(scope, await scope.inventory.resync());
      } catch (err) {
        this.#o.onError?.(err, `resync: ${describeError(err)}`);
      }
    }
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
