/**
 * Which projects exist in a binding's scope, keyed by immutable project id.
 *
 * A snapshot is replaced only by a complete, successful listing: a failed or partial listing
 * throws and leaves the last snapshot as it was, so an outage never reads as "projects deleted".
 * A project counts as deleted when GitLab says so: a 404 on GET /projects/:id, or its absence
 * from a complete listing (destroyed, or transferred out of the scope).
 */
import type { GitLabGroup, GitLabPort, GitLabProject } from "./port.ts";
import type { ScopeView } from "./relevance.ts";

export type Snapshot = ReadonlyMap<number, GitLabProject>;

export interface ProjectChange {
  before: GitLabProject;
  after: GitLabProject;
}

export interface InventoryDiff {
  created: GitLabProject[];
  deleted: GitLabProject[];
  /** Same namespace, new path or name. */
  renamed: ProjectChange[];
  /** New namespace (the path may have changed too). */
  transferred: ProjectChange[];
  /** Same place, other attributes changed (visibility, archived). */
  updated: ProjectChange[];
}

export function emptyDiff(): InventoryDiff {
  return { created: [], deleted: [], renamed: [], transferred: [], updated: [] };
}

export function isEmptyDiff(d: InventoryDiff): boolean {
  return (
    !d.created.length && !d.deleted.length && !d.renamed.length && !d.transferred.length && !d.updated.length
  );
}

/** Ids of every project the diff touches, sorted. */
export function changedProjectIds(d: InventoryDiff): number[] {
  const ids = new Set<number>([
    ...d.created.map((p) => p.id),
    ...d.deleted.map((p) => p.id),
    ...[...d.renamed, ...d.transferred, ...d.updated].map((c) => c.after.id),
  ]);
  return [...ids].sort((a, b) => a - b);
}

/** Adds to `diff` what changed from `prev` to `next` (one project id; either may be absent). */
function diffProject(
  prev: GitLabProject | undefined,
  next: GitLabProject | undefined,
  diff: InventoryDiff,
): void {
  if (!next) {
    if (prev) diff.deleted.push(prev);
  } else if (!prev) diff.created.push(next);
  else if (prev.namespaceId !== next.namespaceId) diff.transferred.push({ before: prev, after: next });
  else if (
    prev.path !== next.path ||
    prev.name !== next.name ||
    prev.pathWithNamespace !== next.pathWithNamespace
  ) {
    diff.renamed.push({ before: prev, after: next });
  } else if (
    prev.visibility !== next.visibility ||
    prev.archived !== next.archived ||
    prev.namespaceFullPath !== next.namespaceFullPath
  ) {
    diff.updated.push({ before: prev, after: next });
  }
}

/** Pure: what changed from `before` to `after`. Entries are ordered by project id. */
export function diffSnapshots(before: Snapshot, after: Snapshot): InventoryDiff {
  const diff = emptyDiff();
  for (const [id, next] of after) diffProject(before.get(id), next, diff);
  for (const [id, prev] of before) if (!after.has(id)) diff.deleted.push(prev);
  const byId = (a: { id: number }, b: { id: number }): number => a.id - b.id;
  const byAfterId = (a: ProjectChange, b: ProjectChange): number => a.after.id - b.after.id;
  diff.created.sort(byId);
  diff.deleted.sort(byId);
  diff.renamed.sort(byAfterId);
  diff.transferred.sort(byAfterId);
  diff.updated.sort(byAfterId);
  return diff;
}

export function snapshotOf(projects: Iterable<GitLabProject>): Snapshot {
  return new Map([...projects].map((p) => [p.id, p]));
}

/** What a binding selects: groups (with all subgroups) and single projects, by id or full path. */
export interface InventoryScope {
  groups: Array<number | string>;
  projects: Array<number | string>;
  /** Only projects directly in the groups, not in their subgroups. */
  directOnly?: boolean;
}

/** Is a project (by its namespace) inside the group, or directly in it when `directOnly`? */
function within(project: GitLabProject, group: GitLabGroup, directOnly: boolean): boolean {
  if (directOnly) return project.namespaceId === group.id;
  return (
    project.namespaceFullPath === group.fullPath || project.namespaceFullPath.startsWith(`${group.fullPath}/`)
  );
}

export class ProjectInventory {
  readonly #gitlab: GitLabPort;
  readonly #scope: InventoryScope;
  #snapshot: Snapshot = new Map();
  #roots: GitLabGroup[] = [];
  #directIds = new Set<number>();
  #groupIds = new Set<number>();
  #synced = false;
  // Operations run one at a time so a refresh never interleaves with a resync.
  #tail: Promise<unknown> = Promise.resolve();
  /** A resync asked for but not started yet: later requests join it (see resync()). */
  #queuedResync: Promise<InventoryDiff> | undefined;
  #listingsStarted = 0;

  constructor(gitlab: GitLabPort, scope: InventoryScope) {
    this.#gitlab = gitlab;
    this.#scope = scope;
  }

  snapshot(): Snapshot {
    return this.#snapshot;
  }

  /** True once a full listing has succeeded. */
  get synced(): boolean {
    return this.#synced;
  }

  /** Listings started so far: a project fetched before the latest one started is not newer than it. */
  get listingsStarted(): number {
    return this.#listingsStarted;
  }

  /** What the last listing says the scope contains, for deciding which signals concern it. */
  view(): ScopeView {
    const singlePaths = new Set<string>();
    const singleIds = new Set<number>(this.#directIds);
    for (const ref of this.#scope.projects) {
      if (typeof ref === "number") singleIds.add(ref);
      else singlePaths.add(ref.toLowerCase());
    }
    for (const id of this.#directIds) {
      const p = this.#snapshot.get(id);
      if (p) singlePaths.add(p.pathWithNamespace.toLowerCase());
    }
    return {
      roots: this.#roots.map((g) => ({ id: g.id, fullPath: g.fullPath.toLowerCase() })),
      directOnly: this.#scope.directOnly ?? false,
      groupIds: this.#groupIds,
      projectIds: this.#snapshot,
      singleIds,
      singlePaths: [...singlePaths],
    };
  }

  #serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(op, op);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  /**
   * Full listing of the scope; replaces the snapshot only when every request succeeded.
   * Coalesced: while one resync waits to start, further calls get that same resync (it starts
   * after all of them, so it sees what each caller wanted seen). Hence at most one listing runs
   * and one waits, however many callers ask.
   */
  resync(): Promise<InventoryDiff> {
    if (this.#queuedResync) return this.#queuedResync;
    const run = this.#serial(() => {
      this.#queuedResync = undefined;
      this.#listingsStarted++;
      return this.#list();
    });
    this.#queuedResync = run;
    return run;
  }

  async #list(): Promise<InventoryDiff> {
    const roots = await Promise.all(this.#scope.groups.map((g) => this.#gitlab.group(g)));
    const listed = await Promise.all(roots.map((g) => this.#gitlab.groupProjects(g.id)));
    const direct = await Promise.all(this.#scope.projects.map((p) => this.#gitlab.project(p)));
    const next = new Map<number, GitLabProject>();
    const directOnly = this.#scope.directOnly ?? false;
    const groupIds = new Set(roots.map((g) => g.id));
    listed.forEach((list, i) => {
      for (const p of list) {
        if (!within(p, roots[i]!, directOnly)) continue;
        next.set(p.id, p);
        groupIds.add(p.namespaceId);
      }
    });
    const directIds = new Set<number>();
    for (const p of direct) {
      if (!p) continue; // a configured project GitLab says is gone: absent, hence deleted if known
      next.set(p.id, p);
      directIds.add(p.id);
      groupIds.add(p.namespaceId);
    }
    const diff = diffSnapshots(this.#snapshot, next);
    this.#snapshot = next;
    this.#roots = roots;
    this.#directIds = directIds;
    this.#groupIds = groupIds;
    this.#synced = true;
    return diff;
  }

  /**
   * Targeted fetch of one project, e.g. after a webhook. A 404 confirms a deletion; a project
   * now outside the scope leaves the snapshot. Before the first resync there is no scope to
   * judge by, so this resyncs instead.
   */
  refreshProject(projectId: number): Promise<InventoryDiff> {
    if (!this.#synced) return this.resync();
    return this.#serial(async () => this.#apply(projectId, await this.#gitlab.project(projectId)));
  }

  /**
   * Applies a project fetched elsewhere (one fetch shared by every scope a signal concerns).
   * `listingsBefore` is listingsStarted as read when the fetch began: if a listing started since,
   * the snapshot is at least as new as the fetch, and the fetch is dropped.
   */
  applyProject(
    projectId: number,
    project: GitLabProject | undefined,
    listingsBefore: number,
  ): Promise<InventoryDiff> {
    return this.#serial(async () =>
      this.#synced && this.#listingsStarted === listingsBefore
        ? this.#apply(projectId, project)
        : emptyDiff(),
    );
  }

  #apply(projectId: number, project: GitLabProject | undefined): InventoryDiff {
    const inScope =
      project !== undefined &&
      (this.#directIds.has(project.id) ||
        this.#roots.some((g) => within(project, g, this.#scope.directOnly ?? false)));
    const after = project && inScope ? project : undefined;
    // Only this id can differ: diffed alone, and the snapshot copied only when it changed.
    const before = this.#snapshot.get(projectId);
    const diff = emptyDiff();
    diffProject(before, after, diff);
    // Unchanged (webUrl is not a change the diff reports, but the claims carry it): nothing to copy.
    if (isEmptyDiff(diff) && before?.webUrl === after?.webUrl) return diff;
    const next = new Map(this.#snapshot);
    if (after) {
      next.set(after.id, after);
      this.#groupIds.add(after.namespaceId);
    } else next.delete(projectId);
    this.#snapshot = next;
    return diff;
  }
}
