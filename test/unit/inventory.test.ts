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
import type { GroupSignal, ProjectSignal } from "../../src/gitlab/signals.ts";
import { signalConcerns, type ScopeView } from "../../src/gitlab/relevance.ts";
import { Coalescer } from "../../src/runtime/concurrency.ts";
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
  /** While set, listings wait for it (to hold requests in flight). */
  gate: Promise<void> | undefined;
  /** While set, project fetches wait for it, answering with what GitLab held when asked. */
  projectGate: Promise<void> | undefined;

  async group(idOrPath: number | string): Promise<GitLabGroup> {
    this.calls.push(`group ${idOrPath}`);
    const g = this.groups.get(idOrPath);
    if (!g)
      throw new GitLabNotFoundError("404 Group Not Found", { method: "GET", path: `/groups/${idOrPath}` });
    return g;
  }
  async project(id: number | string): Promise<GitLabProject | undefined> {
    this.calls.push(`project ${id}`);
    const answer = this.projects.get(Number(id));
    await this.projectGate;
    return answer;
  }
  async groupProjects(groupId: number): Promise<GitLabProject[]> {
    this.calls.push(`list ${groupId}`);
    await this.gate;
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
    await inventories.handle({ kind: "project", projectId: 2, event: "project_create", path: "top/a/p2" });
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

function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

/** Runs pending callbacks until `check` holds (the fakes answer within a few turns). */
async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (check()) return;
    await settle();
  }
  assert.fail(`never happened: ${what}`);
}

const scopeSpec = (group: number, includeSubgroups = true): NatsBinding["spec"] =>
  parseBindingSpec(
    { gitlab: { group, includeSubgroups }, roles: [{ name: "ci", publish: { allow: ["a.>"] } }] },
    "test",
  );

/** Groups top (1) > top/a (3), and other (2); projects in top/a and other. */
function world(): FakeGitLab {
  const gitlab = new FakeGitLab();
  gitlab.groups.set(2, { id: 2, name: "other", path: "other", fullPath: "other", parentId: null });
  gitlab.groups.set(3, { id: 3, name: "a", path: "a", fullPath: "top/a", parentId: 1 });
  gitlab.projects.set(5, project(5, { namespaceFullPath: "top/a", namespaceId: 3 }));
  gitlab.projects.set(6, project(6, { namespaceFullPath: "other", namespaceId: 2 }));
  return gitlab;
}

async function inventoriesOver(
  gitlab: FakeGitLab,
  bindings: Record<string, NatsBinding["spec"]>,
): Promise<{ inventories: ProjectInventories; changes: Array<[string[], number[]]>; errors: string[] }> {
  const changes: Array<[string[], number[]]> = [];
  const errors: string[] = [];
  const inventories = new ProjectInventories({
    gitlab,
    clock: new ManualClock(0),
    resyncIntervalMs: 60_000,
    onChange: (keys, d) => changes.push([keys, changedProjectIds(d)]),
    onError: (e, what) => errors.push(`${what}: ${(e as Error).message}`),
  });
  for (const [key, s] of Object.entries(bindings)) await inventories.projects(key, s);
  gitlab.calls.length = 0;
  return { inventories, changes, errors };
}

describe("signalConcerns", () => {
  const view = (o: Partial<ScopeView> = {}): ScopeView => ({
    roots: [{ id: 1, fullPath: "top" }],
    directOnly: false,
    groupIds: new Set([1, 3]),
    projectIds: new Set([5]),
    singleIds: new Set<number>(),
    singlePaths: [],
    ...o,
  });
  const group = (o: Partial<GroupSignal>): GroupSignal => ({
    kind: "group",
    event: "group_rename",
    groupId: 99,
    ...o,
  });
  const proj = (o: Partial<ProjectSignal>): ProjectSignal => ({
    kind: "project",
    event: "project_create",
    projectId: 99,
    ...o,
  });

  it("ignores groups and projects outside the scope, by id and by path", () => {
    for (const s of [
      group({}),
      group({ fullPath: "topology", oldFullPath: "elsewhere/top" }),
      group({ event: "subgroup_create", groupId: 98, parentGroupId: 97, fullPath: "other/x" }),
      proj({}),
      proj({ namespaceId: 97, path: "topology/p", oldPath: "elsewhere/top/p" }),
      proj({ path: "top" }), // a project at the root of the instance called "top" is not in group top
    ])
      assert.equal(signalConcerns(s, view()), false, JSON.stringify(s));
  });

  it("concerns the scope for its groups, their descendants and ancestors, and its projects", () => {
    for (const s of [
      group({ groupId: 1 }),
      group({ groupId: 3, event: "group_destroy" }),
      group({ event: "subgroup_create", parentGroupId: 3 }),
      group({ event: "subgroup_create", fullPath: "Top/empty/new" }), // below an empty subgroup: path
      group({ fullPath: "acme/top", oldFullPath: "top" }), // the root itself moved
      group({ fullPath: "renamed", oldFullPath: "parent" }),
      proj({ projectId: 5, event: "project_destroy" }),
      proj({ namespaceId: 3 }),
      proj({ path: "top/new/p9" }), // created in a subgroup natsbind has not seen
      proj({ event: "project_transfer", path: "top/a/p9", oldPath: "other/p9" }),
    ]) {
      const v =
        s.kind === "group" && s.oldFullPath === "parent"
          ? view({ roots: [{ id: 1, fullPath: "parent/top" }] })
          : view();
      assert.equal(signalConcerns(s, v), true, JSON.stringify(s));
    }
  });

  it("with direct projects only, a subgroup's events and projects do not concern the scope", () => {
    const direct = view({ directOnly: true, groupIds: new Set([1]) });
    assert.equal(
      signalConcerns(group({ event: "subgroup_create", parentGroupId: 1, fullPath: "top/x" }), direct),
      false,
    );
    assert.equal(signalConcerns(proj({ path: "top/a/p9" }), direct), false);
    assert.equal(signalConcerns(proj({ path: "top/p9" }), direct), true);
    assert.equal(signalConcerns(group({ groupId: 1 }), direct), true);
  });

  it("single projects: by id, by configured or current path, and when an ancestor group moves", () => {
    const single = view({
      roots: [],
      groupIds: new Set([8]),
      projectIds: new Set([7]),
      singleIds: new Set([7]),
      singlePaths: ["solo/app"],
    });
    assert.equal(signalConcerns(proj({ projectId: 7 }), single), true);
    assert.equal(signalConcerns(proj({ path: "Solo/App" }), single), true);
    assert.equal(signalConcerns(group({ oldFullPath: "solo" }), single), true);
    assert.equal(signalConcerns(proj({ path: "solo/other" }), single), false);
    assert.equal(signalConcerns(group({ fullPath: "solo/app-group" }), single), false);
  });
});

describe("Coalescer", () => {
  it("runs a burst as one run in flight plus one queued, each started after its callers asked", async () => {
    const coalescer = new Coalescer<string, number>();
    let runs = 0;
    const held = gate();
    const first = coalescer.run("k", async () => {
      runs++;
      await held.promise;
      return runs;
    });
    await until(() => runs === 1, "the first run starts");
    const burst = Array.from({ length: 19 }, () => coalescer.run("k", async () => ++runs));
    assert.equal(new Set(burst).size, 1, "all later calls share the queued run");
    assert.equal(runs, 1, "and it waits for the one in flight");
    held.open();
    assert.deepEqual(await Promise.all([first, ...burst.slice(0, 1)]), [1, 2]);
    assert.equal(runs, 2);
    assert.equal(coalescer.size, 0);
    assert.equal(await coalescer.run("k", async () => ++runs), 3, "a later call runs again");
  });
});

describe("webhook amplification (issue 9, finding 4)", () => {
  it("a burst of resyncs on one inventory costs one listing in flight and one queued", async () => {
    const gitlab = world();
    const inventory = new ProjectInventory(gitlab, { groups: [1], projects: [] });
    await inventory.resync();
    const held = gate();
    gitlab.gate = held.promise;
    gitlab.calls.length = 0;
    const burst = [inventory.resync()];
    await until(() => gitlab.calls.includes("list 1"), "the first listing is in flight");
    for (let i = 0; i < 19; i++) burst.push(inventory.resync());
    gitlab.gate = undefined;
    held.open();
    await Promise.all(burst);
    assert.equal(gitlab.calls.filter((c) => c === "list 1").length, 2);
  });

  it("signals about groups and projects outside every scope cost no GitLab request", async () => {
    const gitlab = world();
    const { inventories, changes } = await inventoriesOver(gitlab, { a: scopeSpec(1), b: scopeSpec(2) });
    for (let i = 0; i < 20; i++) {
      await inventories.handle({
        kind: "group",
        event: "group_rename",
        groupId: 1000 + i,
        fullPath: `x${i}`,
      });
      await inventories.handle({
        kind: "group",
        event: "subgroup_create",
        groupId: 2000 + i,
        parentGroupId: 3000 + i,
        fullPath: `topology/y${i}`,
      });
      await inventories.handle({
        kind: "project",
        event: "project_create",
        projectId: 4000 + i,
        namespaceId: 5000 + i,
        path: `nowhere/p${i}`,
      });
    }
    assert.deepEqual(gitlab.calls, []);
    assert.deepEqual(changes, []);
  });

  it("a burst of group signals for one scope resyncs it at most twice and leaves the others alone", async () => {
    const gitlab = world();
    const { inventories } = await inventoriesOver(gitlab, { a: scopeSpec(1), b: scopeSpec(2) });
    const held = gate();
    gitlab.gate = held.promise;
    const signal = (): Promise<void> =>
      inventories.handle({ kind: "group", event: "subgroup_create", groupId: 50, parentGroupId: 3 });
    const burst = [signal()];
    await until(() => gitlab.calls.includes("list 1"), "a listing in flight");
    for (let i = 0; i < 19; i++) burst.push(signal());
    gitlab.gate = undefined;
    held.open();
    await Promise.all(burst);
    assert.deepEqual(gitlab.calls, ["group 1", "list 1", "group 1", "list 1"]);
  });

  it("a burst of signals for one project fetches it once in flight and once queued, for all scopes", async () => {
    const gitlab = world();
    // Two scopes hold project 5: top (with subgroups) and top/a.
    const { inventories, changes } = await inventoriesOver(gitlab, { top: scopeSpec(1), a: scopeSpec(3) });
    gitlab.projects.set(5, project(5, { namespaceFullPath: "top/a", namespaceId: 3, visibility: "public" }));
    const held = gate();
    gitlab.projectGate = held.promise;
    const signal = (): Promise<void> =>
      inventories.handle({ kind: "project", event: "project_update", projectId: 5 });
    const burst = [signal()];
    await until(() => gitlab.calls.length === 1, "one fetch in flight");
    for (let i = 0; i < 19; i++) burst.push(signal());
    gitlab.projectGate = undefined;
    held.open();
    await Promise.all(burst);
    assert.deepEqual(gitlab.calls, ["project 5", "project 5"]);
    assert.deepEqual(changes, [
      [["top"], [5]],
      [["a"], [5]],
    ]);
  });

  it("still picks up what the signals say: new subgroup projects, transfers in, renamed ancestors", async () => {
    const gitlab = world();
    const { inventories, changes } = await inventoriesOver(gitlab, {
      top: scopeSpec(1),
      direct: scopeSpec(1, false),
      a: scopeSpec(3),
    });
    // Created in a subgroup natsbind never saw (namespace id unknown): found by its path.
    gitlab.groups.set(77, { id: 77, name: "new", path: "new", fullPath: "top/new", parentId: 1 });
    gitlab.projects.set(9, project(9, { namespaceFullPath: "top/new", namespaceId: 77 }));
    await inventories.handle({ kind: "project", event: "project_create", projectId: 9, path: "top/new/p9" });
    assert.deepEqual(changes.splice(0), [[["top"], [9]]]);
    assert.deepEqual(gitlab.calls.splice(0), ["project 9"]);

    // Transferred from other into top/a: both scopes holding top/a see it, one fetch.
    gitlab.projects.set(6, project(6, { namespaceFullPath: "top/a", namespaceId: 3 }));
    await inventories.handle({
      kind: "project",
      event: "project_transfer",
      projectId: 6,
      namespaceId: 3,
      path: "top/a/p6",
      oldPath: "other/p6",
    });
    assert.deepEqual(changes.splice(0), [
      [["top"], [6]],
      [["a"], [6]],
    ]);
    assert.deepEqual(gitlab.calls.splice(0), ["project 6"]);

    // A project created straight in top reaches the direct-only scope too.
    gitlab.projects.set(10, project(10, { namespaceFullPath: "top", namespaceId: 1 }));
    await inventories.handle({
      kind: "project",
      event: "project_create",
      projectId: 10,
      namespaceId: 1,
      path: "top/p10",
    });
    assert.deepEqual(changes.splice(0), [
      [["top"], [10]],
      [["direct"], [10]],
    ]);
    gitlab.calls.length = 0;

    // The parent of top/a renamed: the scopes below it resync and see the new paths.
    gitlab.groups.set(1, { id: 1, name: "top", path: "top2", fullPath: "top2", parentId: null });
    gitlab.groups.set(3, { id: 3, name: "a", path: "a", fullPath: "top2/a", parentId: 1 });
    for (const id of [5, 6, 9, 10]) {
      const p = gitlab.projects.get(id)!;
      const ns = p.namespaceFullPath.replace(/^top/, "top2");
      gitlab.projects.set(id, project(id, { namespaceFullPath: ns, namespaceId: p.namespaceId }));
    }
    await inventories.handle({
      kind: "group",
      event: "group_rename",
      groupId: 1,
      fullPath: "top2",
      oldFullPath: "top",
    });
    assert.deepEqual(
      changes.map(([keys]) => keys[0]).sort(),
      ["a", "direct", "top"],
      "every scope at or below the renamed group",
    );
    assert.equal(gitlab.calls.filter((c) => c.startsWith("list")).length, 3);
  });

  it("drops a fetched project when a listing started after the fetch (the listing is newer)", async () => {
    const gitlab = world();
    const { inventories, changes } = await inventoriesOver(gitlab, { a: scopeSpec(3) });
    const held = gate();
    gitlab.projectGate = held.promise;
    const signal = inventories.handle({ kind: "project", event: "project_update", projectId: 5 });
    await until(() => gitlab.calls.includes("project 5"), "the fetch is in flight");
    gitlab.projects.set(5, project(5, { namespaceFullPath: "other", namespaceId: 2 }));
    await inventories.resyncAll();
    assert.deepEqual(changes.splice(0), [[["a"], [5]]], "the listing sees it moved out");
    gitlab.projectGate = undefined;
    held.open();
    await signal;
    assert.deepEqual(changes, [], "the older fetch does not bring it back");
    assert.deepEqual(inventories.knownProjects("a"), []);
  });
});
