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
import type { NatsBinding } from "../../src/api/v1alpha1/types.ts";
import { parseBindingSpec } from "../../src/api/v1alpha1/schema.ts";
import { ProjectInventories } from "../../src/controllers/binding/projects.ts";
import type { GitLabSignal } from "../../src/gitlab/signals.ts";
import { ManualClock } from "../../src/runtime/clock.ts";

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

const spec = (group: number): NatsBinding["spec"] =>
  parseBindingSpec({ gitlab: { group }, roles: [{ name: "ci", publish: { allow: ["a.>"] } }] }, "test");

/** Lets the async work a timer started run to its end. */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe("ProjectInventories", () => {
  it("lists on first use, resyncs every interval, refreshes on webhooks, keeps the snapshot on errors", async () => {
    const gitlab = new FakeGitLab();
    gitlab.projects.set(1, project(1, { namespaceFullPath: "top/a" }));
    const clock = new ManualClock(0);
    const changes: Array<[string[], number[]]> = [];
    const errors: string[] = [];
    const inventories = new ProjectInventories({
      gitlab,
      clock,
      resyncIntervalMs: 60_000,
      onChange: (keys, d) => changes.push([keys, changedProjectIds(d)]),
      onError: (e, what) => errors.push(`${what}: ${(e as Error).message}`),
    });
    // Two bindings with the same selector share one inventory: one listing.
    assert.deepEqual(
      (await inventories.projects("b", spec(1))).map((p) => p.id),
      [1],
    );
    assert.deepEqual(
      (await inventories.projects("a", spec(1))).map((p) => p.id),
      [1],
    );
    assert.equal(gitlab.calls.filter((c) => c.startsWith("list")).length, 1);
    inventories.start();

    gitlab.projects.set(2, project(2, { namespaceFullPath: "top/a" }));
    await inventories.handle({ kind: "project", projectId: 2, event: "project_create" } as GitLabSignal);
    assert.deepEqual(changes, [[["a", "b"], [2]]], "a webhook refreshes that project");

    gitlab.projects.delete(1);
    clock.advance(60_000);
    await settle();
    assert.deepEqual(changes.at(-1), [["a", "b"], [1]], "the periodic resync sees the deletion");

    gitlab.failListing = new Error("boom");
    clock.advance(60_000);
    await settle();
    assert.match(errors.join("\n"), /resync: .*boom/);
    assert.deepEqual(
      (await inventories.projects("a", spec(1))).map((p) => p.id),
      [2],
      "kept, not emptied",
    );
    gitlab.failListing = undefined;
    gitlab.projects.set(3, project(3, { namespaceFullPath: "top/a" }));
    clock.advance(60_000);
    await settle();
    assert.deepEqual(changes.at(-1), [["a", "b"], [3]], "the next resync is scheduled after a failure");

    inventories.forget("a");
    inventories.forget("b");
    assert.equal(inventories.knownProjects("a"), undefined, "a scope no binding uses is dropped");
    inventories.stop();
    const listings = gitlab.calls.length;
    clock.advance(600_000);
    await settle();
    assert.equal(gitlab.calls.length, listings, "stopped: no more resyncs");
  });
});
