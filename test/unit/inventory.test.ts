import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GitLabNotFoundError, GitLabUnavailableError } from "../../src/gitlab/errors.ts";
import {
  ProjectInventory,
  changedProjectIds,
  diffSnapshots,
  isEmptyDiff,
  snapshotOf,
} from "../../src/gitlab/inventory.ts";
import type { GitLabGroup, GitLabPort, GitLabProject } from "../../src/gitlab/port.ts";
import { InventoryWatcher, type Timers } from "../../src/gitlab/watcher.ts";

function project(id: number, o: Partial<GitLabProject> = {}): GitLabProject {
  const path = o.path ?? `p${id}`;
  const ns = o.namespaceFullPath ?? "top/team";
  return {
    id,
    name: o.name ?? path,
    path,
    pathWithNamespace: o.pathWithNamespace ?? `${ns}/${path}`,
    namespaceId: o.namespaceId ?? 10,
    namespaceFullPath: ns,
    visibility: o.visibility ?? "private",
    archived: o.archived ?? false,
  };
}

describe("diffSnapshots", () => {
  it("classifies created, deleted, renamed, transferred and updated by project id", () => {
    const before = snapshotOf([project(1), project(2), project(3), project(4), project(5)]);
    const after = snapshotOf([
      project(1),
      project(2, { path: "renamed" }),
      project(3, { namespaceId: 11, namespaceFullPath: "top/other" }),
      project(4, { visibility: "internal" }),
      project(6),
    ]);
    const diff = diffSnapshots(before, after);
    assert.deepEqual(
      diff.created.map((p) => p.id),
      [6],
    );
    assert.deepEqual(
      diff.deleted.map((p) => p.id),
      [5],
    );
    assert.deepEqual(
      diff.renamed.map((c) => [c.before.pathWithNamespace, c.after.pathWithNamespace]),
      [["top/team/p2", "top/team/renamed"]],
    );
    assert.deepEqual(
      diff.transferred.map((c) => [c.after.id, c.before.namespaceId, c.after.namespaceId]),
      [[3, 10, 11]],
    );
    assert.deepEqual(
      diff.updated.map((c) => [c.after.id, c.after.visibility]),
      [[4, "internal"]],
    );
    assert.deepEqual(changedProjectIds(diff), [2, 3, 4, 5, 6]);
    assert.ok(isEmptyDiff(diffSnapshots(after, after)));
  });

  it("keeps identity through a rename that reuses another project's old path", () => {
    // Project 1 is renamed away and project 2 takes its old path: ids decide, not paths.
    const before = snapshotOf([project(1, { path: "api" }), project(2, { path: "api-v2" })]);
    const after = snapshotOf([project(1, { path: "api-legacy" }), project(2, { path: "api" })]);
    const diff = diffSnapshots(before, after);
    assert.deepEqual(
      diff.renamed.map((c) => [c.after.id, c.before.path, c.after.path]),
      [
        [1, "api", "api-legacy"],
        [2, "api-v2", "api"],
      ],
    );
    assert.equal(diff.created.length + diff.deleted.length, 0);
  });
});

class FakeGitLab implements GitLabPort {
  groups = new Map<number | string, GitLabGroup>([
    [1, { id: 1, name: "top", path: "top", fullPath: "top", parentId: null }],
  ]);
  projects = new Map<number, GitLabProject>();
  failListing: Error | undefined;
  calls: string[] = [];

  async group(idOrPath: number | string): Promise<GitLabGroup> {
    this.calls.push(`group ${idOrPath}`);
    const g = this.groups.get(idOrPath);
    if (!g)
      throw new GitLabNotFoundError("404 Group Not Found", { method: "GET", path: `/groups/${idOrPath}` });
    return g;
  }
  async project(id: number | string): Promise<GitLabProject | undefined> {
    this.calls.push(`project ${id}`);
    return this.projects.get(Number(id));
  }
  async groupProjects(groupId: number): Promise<GitLabProject[]> {
    this.calls.push(`list ${groupId}`);
    if (this.failListing) throw this.failListing;
    const root = [...this.groups.values()].find((g) => g.id === groupId)!;
    return [...this.projects.values()].filter((p) => p.pathWithNamespace.startsWith(`${root.fullPath}/`));
  }
  async descendantGroups(): Promise<GitLabGroup[]> {
    return [];
  }
  async environments(): Promise<never[]> {
    return [];
  }
}

describe("ProjectInventory", () => {
  it("lists the scope and reports changes between resyncs", async () => {
    const gitlab = new FakeGitLab();
    gitlab.projects.set(1, project(1, { namespaceFullPath: "top/a" }));
    gitlab.projects.set(2, project(2, { namespaceFullPath: "top/a/b" }));
    const inventory = new ProjectInventory(gitlab, { groups: [1], projects: [] });
    const first = await inventory.resync();
    assert.deepEqual(
      first.created.map((p) => p.id),
      [1, 2],
    );
    gitlab.projects.set(2, project(2, { namespaceFullPath: "top/a/b", path: "new" }));
    gitlab.projects.delete(1);
    const second = await inventory.resync();
    assert.deepEqual(
      second.renamed.map((c) => c.after.id),
      [2],
    );
    assert.deepEqual(
      second.deleted.map((p) => p.id),
      [1],
    );
  });

  it("keeps the last snapshot when a listing fails: an outage deletes nothing", async () => {
    const gitlab = new FakeGitLab();
    gitlab.projects.set(1, project(1, { namespaceFullPath: "top/a" }));
    const inventory = new ProjectInventory(gitlab, { groups: [1], projects: [] });
    await inventory.resync();
    gitlab.failListing = new GitLabUnavailableError("503", { method: "GET", path: "/groups/1/projects" });
    await assert.rejects(inventory.resync(), GitLabUnavailableError);
    assert.deepEqual([...inventory.snapshot().keys()], [1]);
  });

  it("fails the resync when a scope group cannot be resolved, changing nothing", async () => {
    const gitlab = new FakeGitLab();
    gitlab.projects.set(1, project(1, { namespaceFullPath: "top/a" }));
    const inventory = new ProjectInventory(gitlab, { groups: [1, "missing/group"], projects: [] });
    await assert.rejects(inventory.resync(), /404 Group Not Found/);
    assert.equal(inventory.snapshot().size, 0);
    assert.equal(inventory.synced, false);
  });

  it("confirms a deletion with a 404 and drops projects transferred out of scope", async () => {
    const gitlab = new FakeGitLab();
    gitlab.projects.set(1, project(1, { namespaceFullPath: "top/a" }));
    gitlab.projects.set(2, project(2, { namespaceFullPath: "top/a" }));
    const inventory = new ProjectInventory(gitlab, { groups: [1], projects: [] });
    await inventory.resync();

    gitlab.projects.delete(1);
    const gone = await inventory.refreshProject(1);
    assert.deepEqual(
      gone.deleted.map((p) => p.id),
      [1],
    );

    gitlab.projects.set(2, project(2, { namespaceId: 99, namespaceFullPath: "elsewhere" }));
    const moved = await inventory.refreshProject(2);
    assert.deepEqual(
      moved.deleted.map((p) => p.id),
      [2],
    );

    gitlab.projects.set(3, project(3, { namespaceFullPath: "top/new" }));
    const created = await inventory.refreshProject(3);
    assert.deepEqual(
      created.created.map((p) => p.id),
      [3],
    );
    // Not in scope: "topology/x" shares a prefix with "top" but is another group.
    gitlab.projects.set(4, project(4, { namespaceFullPath: "topology" }));
    assert.ok(isEmptyDiff(await inventory.refreshProject(4)));
  });

  it("includes single projects named in the scope", async () => {
    const gitlab = new FakeGitLab();
    gitlab.projects.set(7, project(7, { namespaceFullPath: "solo" }));
    const inventory = new ProjectInventory(gitlab, { groups: [], projects: [7, 8] });
    const diff = await inventory.resync();
    assert.deepEqual(
      diff.created.map((p) => p.id),
      [7],
    );
    gitlab.projects.set(7, project(7, { namespaceFullPath: "solo", path: "renamed" }));
    const renamed = await inventory.refreshProject(7);
    assert.deepEqual(
      renamed.renamed.map((c) => c.after.path),
      ["renamed"],
    );
  });
});

class ManualTimers implements Timers {
  pending: Array<{ fn: () => void; ms: number; cancelled: boolean }> = [];
  setTimeout(fn: () => void, ms: number): unknown {
    const t = { fn, ms, cancelled: false };
    this.pending.push(t);
    return t;
  }
  clearTimeout(handle: unknown): void {
    (handle as { cancelled: boolean }).cancelled = true;
  }
  fire(): void {
    const due = this.pending.filter((t) => !t.cancelled);
    this.pending = [];
    for (const t of due) t.fn();
  }
}

describe("InventoryWatcher", () => {
  it("resyncs at start and on every interval, refreshes on webhooks, reports errors", async () => {
    const gitlab = new FakeGitLab();
    gitlab.projects.set(1, project(1, { namespaceFullPath: "top/a" }));
    const timers = new ManualTimers();
    const changes: Array<[string, number[]]> = [];
    const errors: string[] = [];
    const watcher = new InventoryWatcher({
      inventory: new ProjectInventory(gitlab, { groups: [1], projects: [] }),
      resyncIntervalMs: 60_000,
      timers,
      onChange: (d, cause) => changes.push([cause, changedProjectIds(d)]),
      onError: (e, cause) => errors.push(`${cause}: ${(e as Error).message}`),
    });
    await watcher.start();
    assert.deepEqual(changes, [["resync", [1]]]);
    assert.deepEqual(
      timers.pending.map((t) => t.ms),
      [60_000],
    );

    gitlab.projects.set(2, project(2, { namespaceFullPath: "top/a" }));
    await watcher.handle({ kind: "project", projectId: 2 });
    assert.deepEqual(changes.at(-1), ["webhook", [2]]);

    gitlab.failListing = new Error("boom");
    timers.fire();
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(errors, ["resync: boom"]);
    assert.equal(
      timers.pending.filter((t) => !t.cancelled).length,
      1,
      "the next resync is scheduled after a failure",
    );

    watcher.stop();
    assert.equal(timers.pending.filter((t) => !t.cancelled).length, 0);
    await watcher.handle({ kind: "project", projectId: 3 });
    assert.equal(changes.length, 2, "a stopped watcher ignores signals");
  });
});
