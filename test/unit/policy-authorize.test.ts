// The NatsBindingPolicy gate: pure authorize() (each refusal reason, label selector operators, subgroup
// and project inside a grant, ceilings), group-id resolution over a fake GitLabPort (a rename keeps
// the grant, a re-created path does not inherit it), and the reconciler's gate (a refusal reads,
// creates and deletes nothing, and the status names no project).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parsePolicySpec, type LabelSelector, type PolicyCeilings } from "../../src/api/v1alpha1/policy.ts";
import { parseBinding, type NatsBindingSpecDocument } from "../../src/api/v1alpha1/schema.ts";
import type { NatsBinding } from "../../src/api/v1alpha1/types.ts";
import { BindingReconciler, type BindingEntry } from "../../src/controllers/binding/reconciler.ts";
import type { BindingStatus } from "../../src/controllers/binding/status.ts";
import { GitLabNotFoundError, GitLabUnavailableError } from "../../src/gitlab/errors.ts";
import type { GitLabGroup, GitLabPort, GitLabProject } from "../../src/gitlab/port.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { authorize, selectorMatches, type PolicyGrant } from "../../src/policy/authorize.ts";
import { ancestorChain, resolvePolicyGroups } from "../../src/policy/groups.ts";
import { ManualClock } from "../../src/runtime/clock.ts";

function binding(spec: NatsBindingSpecDocument, namespace = "team-a"): NatsBinding {
  return parseBinding(
    { apiVersion: "natsbind.io/v1alpha1", kind: "NatsBinding", metadata: { name: "b", namespace }, spec },
    "test",
  );
}

const REQ = { method: "GET", path: "/groups/x" };
const ALL: LabelSelector = { matchLabels: {}, matchExpressions: [] };
const teamA: LabelSelector = {
  matchLabels: { "kubernetes.io/metadata.name": "team-a" },
  matchExpressions: [],
};
const NS_A = { "kubernetes.io/metadata.name": "team-a", tier: "prod" };

function grant(
  name: string,
  groupIds: number[],
  selector = teamA,
  ceilings: PolicyCeilings = {},
): PolicyGrant {
  return { name, namespaceSelector: selector, groupIds, ceilings };
}

// acme (1) -> team-a (10) -> sub (11); acme -> team-b (20)
const A = [10, 1];
const SUB_OF_A = [11, 10, 1];
const B = [20, 1];

describe("selectorMatches (metav1.LabelSelector)", () => {
  const labels = { env: "prod", team: "a", "example.com/owner": "x" };
  const sel = (s: Partial<LabelSelector>): LabelSelector => ({ matchLabels: {}, matchExpressions: [], ...s });
  it("an empty selector selects every namespace", () => {
    assert.equal(selectorMatches(ALL, {}), true);
    assert.equal(selectorMatches(ALL, labels), true);
  });
  it("matchLabels: every pair must match", () => {
    assert.equal(selectorMatches(sel({ matchLabels: { env: "prod", team: "a" } }), labels), true);
    assert.equal(selectorMatches(sel({ matchLabels: { env: "prod", team: "b" } }), labels), false);
    assert.equal(selectorMatches(sel({ matchLabels: { missing: "" } }), labels), false);
    assert.equal(selectorMatches(sel({ matchLabels: { toString: "x" } }), {}), false, "no prototype keys");
  });
  it("In, NotIn, Exists, DoesNotExist", () => {
    const req = (key: string, operator: "In" | "NotIn" | "Exists" | "DoesNotExist", values: string[] = []) =>
      sel({ matchExpressions: [{ key, operator, values }] });
    assert.equal(selectorMatches(req("env", "In", ["prod", "stage"]), labels), true);
    assert.equal(selectorMatches(req("env", "In", ["stage"]), labels), false);
    assert.equal(selectorMatches(req("nope", "In", ["prod"]), labels), false, "In needs the key");
    assert.equal(selectorMatches(req("env", "NotIn", ["stage"]), labels), true);
    assert.equal(selectorMatches(req("env", "NotIn", ["prod"]), labels), false);
    assert.equal(
      selectorMatches(req("nope", "NotIn", ["prod"]), labels),
      true,
      "NotIn holds without the key",
    );
    assert.equal(selectorMatches(req("example.com/owner", "Exists"), labels), true);
    assert.equal(selectorMatches(req("nope", "Exists"), labels), false);
    assert.equal(selectorMatches(req("nope", "DoesNotExist"), labels), true);
    assert.equal(selectorMatches(req("env", "DoesNotExist"), labels), false);
  });
  it("all requirements and labels together", () => {
    const s = sel({
      matchLabels: { team: "a" },
      matchExpressions: [
        { key: "env", operator: "In", values: ["prod"] },
        { key: "frozen", operator: "DoesNotExist", values: [] },
      ],
    });
    assert.equal(selectorMatches(s, labels), true);
    assert.equal(selectorMatches(s, { ...labels, frozen: "yes" }), false);
  });
});

describe("authorize()", () => {
  const spec = binding({ gitlab: { group: "acme/team-a" } }).spec;
  const input = (over: Partial<Parameters<typeof authorize>[0]>) => ({
    namespace: "team-a",
    namespaceLabels: NS_A,
    spec,
    policies: [grant("team-a", [10])],
    ancestors: A,
    ...over,
  });

  it("allows a binding of the granted group, its subgroup, or a project inside (ancestor chain by id)", () => {
    assert.deepEqual(authorize(input({})), { allowed: true, policy: "team-a" });
    assert.deepEqual(authorize(input({ ancestors: SUB_OF_A })), { allowed: true, policy: "team-a" });
    // A project in team-a/sub: the chain is its namespace's (same as the subgroup's).
    const project = binding({ gitlab: { project: "acme/team-a/sub/api" } }).spec;
    assert.equal(authorize(input({ spec: project, ancestors: SUB_OF_A })).allowed, true);
  });

  it("refuses with NoPolicy when no policy's selector matches the namespace", () => {
    const v = authorize(
      input({ namespaceLabels: { "kubernetes.io/metadata.name": "team-c" }, namespace: "team-c" }),
    );
    assert.equal(v.allowed, false);
    assert.equal(!v.allowed && v.reason, "NoPolicy");
    assert.match(!v.allowed ? v.message : "", /no NatsBindingPolicy applies to namespace team-c/);
    assert.equal(authorize(input({ policies: [] })).allowed, false);
  });

  it("refuses another team's group and a project inside it (NotGranted), naming no path", () => {
    for (const ancestors of [B, [21, 20, 1]]) {
      const v = authorize(input({ ancestors }));
      assert.equal(v.allowed, false);
      assert.equal(!v.allowed && v.reason, "NotGranted");
      const message = !v.allowed ? v.message : "";
      assert.doesNotMatch(message, /acme|team-b|20|21/, message);
      assert.match(message, /no NatsBindingPolicy grants namespace team-a/);
    }
  });

  it("a grant of a subgroup does not grant its parent or siblings", () => {
    assert.equal(authorize(input({ policies: [grant("sub", [11])], ancestors: A })).allowed, false);
    assert.equal(authorize(input({ policies: [grant("sub", [11])], ancestors: SUB_OF_A })).allowed, true);
  });

  it("an unknown target (empty chain: not found, invisible, user namespace) is refused like a foreign one", () => {
    const v = authorize(input({ ancestors: [] }));
    const foreign = authorize(input({ ancestors: B }));
    assert.deepEqual(v, foreign, "no way to tell a missing group from another team's");
  });

  it("a policy for another namespace grants nothing here", () => {
    const other: LabelSelector = {
      matchLabels: { "kubernetes.io/metadata.name": "team-b" },
      matchExpressions: [],
    };
    const v = authorize(input({ policies: [grant("team-b", [10, 20], other)] }));
    assert.equal(!v.allowed && v.reason, "NoPolicy");
  });

  it("grants are ids: a re-created path (new id on the chain) is refused, a renamed group (same id) is not", () => {
    // Policy recorded id 10 for acme/team-a. After a rename the chain still holds 10.
    assert.equal(authorize(input({ ancestors: [10, 1] })).allowed, true);
    // acme/team-a deleted and re-created as id 30: the binding's chain is [30, 1].
    const v = authorize(input({ ancestors: [30, 1] }));
    assert.equal(!v.allowed && v.reason, "NotGranted");
  });

  it("enforces ceilings: deletionPolicy and limit maximums, unset (unlimited) counts as above", () => {
    const ceilings = parsePolicySpec(
      {
        namespaceSelector: {},
        gitlab: { groups: ["acme/team-a"] },
        ceilings: {
          deletionPolicies: ["Retain"],
          limits: { connections: 100, payload: "1Mi", jetstream: { disk: "1Gi", streams: 10 } },
        },
      },
      "test",
    ).ceilings;
    const policies = [grant("team-a", [10], teamA, ceilings)];
    const ok = binding({
      gitlab: { group: "acme/team-a" },
      deletionPolicy: "Retain",
      limits: { connections: 100, payload: "1Mi", jetstream: { disk: "512Mi", streams: 10 } },
    }).spec;
    assert.equal(authorize(input({ policies, spec: ok })).allowed, true);

    const cases: [NatsBindingSpecDocument, RegExp][] = [
      [
        {
          gitlab: { group: "acme/team-a" },
          deletionPolicy: "Delete",
          limits: { connections: 1, payload: 1 },
        },
        /deletionPolicy Delete is not allowed \(allowed: Retain\)/,
      ],
      [
        { gitlab: { group: "acme/team-a" }, limits: { connections: 101, payload: 1 } },
        /spec\.limits\.connections 101 is above the maximum 100/,
      ],
      [{ gitlab: { group: "acme/team-a" }, limits: { payload: 1 } }, /spec\.limits\.connections must be set/],
      [
        { gitlab: { group: "acme/team-a" }, limits: { connections: 1, payload: "2Mi" } },
        /spec\.limits\.payload 2097152 bytes is above the maximum 1048576 bytes/,
      ],
      [
        {
          gitlab: { group: "acme/team-a" },
          limits: { connections: 1, payload: 1, jetstream: { disk: "2Gi", streams: 1 } },
        },
        /jetstream\.disk .* above/,
      ],
      [
        {
          gitlab: { group: "acme/team-a" },
          limits: { connections: 1, payload: 1, jetstream: { disk: "1Mi" } },
        },
        /jetstream\.streams must be set/,
      ],
    ];
    for (const [doc, message] of cases) {
      const v = authorize(input({ policies, spec: binding(doc).spec }));
      assert.equal(!v.allowed && v.reason, "Ceiling", JSON.stringify(doc));
      assert.match(!v.allowed ? v.message : "", message);
      assert.match(!v.allowed ? v.message : "", /NatsBindingPolicy team-a/);
    }
    // Without JetStream the JetStream maximums hold.
    const noJs = binding({ gitlab: { group: "acme/team-a" }, limits: { connections: 1, payload: 1 } }).spec;
    assert.equal(authorize(input({ policies, spec: noJs })).allowed, true);
  });

  it("policies add up: one that grants within its ceilings is enough", () => {
    const strict = grant("a-strict", [10], teamA, { deletionPolicies: ["Retain"] });
    const loose = grant("b-loose", [10], teamA, {});
    const del = binding({ gitlab: { group: "acme/team-a" }, deletionPolicy: "Delete" }).spec;
    assert.deepEqual(authorize(input({ policies: [strict], spec: del })).allowed, false);
    assert.deepEqual(authorize(input({ policies: [strict, loose], spec: del })), {
      allowed: true,
      policy: "b-loose",
    });
  });
});

/** A GitLab with groups by id and path; `remove`/`rename` change it like GitLab would. */
class FakeGitLab implements GitLabPort {
  groups = new Map<number, GitLabGroup>();
  projects = new Map<number, GitLabProject>();
  calls = 0;
  down = false;
  addGroup(id: number, fullPath: string, parentId: number | null): void {
    const path = fullPath.split("/").pop()!;
    this.groups.set(id, { id, name: path, path, fullPath, parentId });
  }
  async group(ref: number | string): Promise<GitLabGroup> {
    this.calls += 1;
    if (this.down) throw new GitLabUnavailableError("GitLab unavailable", REQ);
    const g =
      typeof ref === "number"
        ? this.groups.get(ref)
        : [...this.groups.values()].find((x) => x.fullPath === ref);
    if (!g) throw new GitLabNotFoundError(`group ${ref} not found`, REQ);
    return g;
  }
  async project(ref: number | string): Promise<GitLabProject | undefined> {
    this.calls += 1;
    return typeof ref === "number"
      ? this.projects.get(ref)
      : [...this.projects.values()].find((p) => p.pathWithNamespace === ref);
  }
  async groupProjects(): Promise<GitLabProject[]> {
    throw new Error("not used");
  }
  async descendantGroups(): Promise<GitLabGroup[]> {
    throw new Error("not used");
  }
  async environments(): Promise<never[]> {
    return [];
  }
}

function acme(): FakeGitLab {
  const g = new FakeGitLab();
  g.addGroup(1, "acme", null);
  g.addGroup(10, "acme/team-a", 1);
  g.addGroup(11, "acme/team-a/sub", 10);
  g.addGroup(20, "acme/team-b", 1);
  const project = (id: number, path: string, namespaceId: number): GitLabProject => ({
    id,
    name: path,
    path,
    pathWithNamespace: `${g.groups.get(namespaceId)!.fullPath}/${path}`,
    namespaceId,
    namespaceFullPath: g.groups.get(namespaceId)!.fullPath,
    visibility: "private",
    archived: false,
  });
  g.projects.set(100, project(100, "api", 11));
  g.projects.set(200, project(200, "billing", 20));
  g.projects.set(300, { ...project(300, "mine", 1), namespaceId: 999, pathWithNamespace: "someone/mine" });
  return g;
}

describe("ancestorChain()", () => {
  it("a group: itself and its parents; a project: its namespace and parents; by path or id", async () => {
    const g = acme();
    assert.deepEqual(
      await ancestorChain(g, { kind: "group", group: "acme/team-a/sub", includeSubgroups: true }),
      [11, 10, 1],
    );
    assert.deepEqual(await ancestorChain(g, { kind: "group", group: 20, includeSubgroups: true }), [20, 1]);
    assert.deepEqual(await ancestorChain(g, { kind: "project", project: "acme/team-b/billing" }), [20, 1]);
    assert.deepEqual(await ancestorChain(g, { kind: "project", project: 100 }), [11, 10, 1]);
  });
  it("resolves the selector afresh every time (a path re-used by another group); parents may be cached", async () => {
    const g = acme();
    const links = new Map<number, number | null>();
    const cache = {
      get: (id: number) => links.get(id),
      set: (id: number, p: number | null) => void links.set(id, p),
    };
    const selector = { kind: "group" as const, group: "acme/team-a", includeSubgroups: true };
    assert.deepEqual(await ancestorChain(g, selector, cache), [10, 1]);
    g.addGroup(10, "acme/team-alpha", 1); // renamed away
    g.addGroup(30, "acme/team-a", 1); // someone else's group at the old path
    g.calls = 0;
    assert.deepEqual(await ancestorChain(g, selector, cache), [30, 1], "not the cached 10");
    assert.equal(g.calls, 1, "only the selector was looked up; acme's parent link came from the cache");
  });

  it("missing group or project, or a project in a user namespace: empty", async () => {
    const g = acme();
    assert.deepEqual(await ancestorChain(g, { kind: "group", group: "nope", includeSubgroups: true }), []);
    assert.deepEqual(await ancestorChain(g, { kind: "project", project: "acme/nope" }), []);
    assert.deepEqual(await ancestorChain(g, { kind: "project", project: 300 }), []);
  });
  it("a parent cycle (a lying server) grants nothing; GitLab outages throw", async () => {
    const g = acme();
    g.addGroup(1, "acme", 11); // acme's parent is its own descendant
    assert.deepEqual(await ancestorChain(g, { kind: "group", group: 11, includeSubgroups: true }), []);
    g.down = true;
    await assert.rejects(
      ancestorChain(g, { kind: "group", group: 10, includeSubgroups: true }),
      GitLabUnavailableError,
    );
  });
});

describe("resolvePolicyGroups()", () => {
  it("resolves new paths to ids; unknown paths are problems, not grants", async () => {
    const g = acme();
    const r = await resolvePolicyGroups(g, ["acme/team-a", "acme/ghost"], []);
    assert.deepEqual(r.groups, [{ path: "acme/team-a", id: 10, currentPath: "acme/team-a" }]);
    assert.equal(r.problems.length, 1);
    assert.match(r.problems[0]!, /acme\/ghost: no such GitLab group/);
  });

  it("a rename keeps the recorded id (and says where it is now)", async () => {
    const g = acme();
    const first = await resolvePolicyGroups(g, ["acme/team-a"], []);
    g.addGroup(10, "acme/team-alpha", 1);
    const again = await resolvePolicyGroups(g, ["acme/team-a"], first.groups);
    assert.deepEqual(again.groups, [{ path: "acme/team-a", id: 10, currentPath: "acme/team-alpha" }]);
    assert.deepEqual(again.problems, []);
  });

  it("a deleted and re-created path keeps the old id (granting nothing) and is reported", async () => {
    const g = acme();
    const first = await resolvePolicyGroups(g, ["acme/team-a"], []);
    g.groups.delete(10);
    g.addGroup(30, "acme/team-a", 1); // a new group at the same path
    const again = await resolvePolicyGroups(g, ["acme/team-a"], first.groups);
    assert.deepEqual(again.groups, [{ path: "acme/team-a", id: 10 }], "not re-resolved to 30");
    assert.match(again.problems[0]!, /group 10 no longer exists; a group now at that path is not granted/);
    // Removing the path from the spec and adding it again grants the new group.
    const removed = await resolvePolicyGroups(g, ["acme/team-b"], again.groups);
    assert.deepEqual(
      removed.groups.map((x) => x.id),
      [20],
    );
    const readded = await resolvePolicyGroups(g, ["acme/team-a"], removed.groups);
    assert.deepEqual(
      readded.groups.map((x) => x.id),
      [30],
    );
  });

  it("a GitLab outage throws and changes nothing", async () => {
    const g = acme();
    g.down = true;
    await assert.rejects(resolvePolicyGroups(g, ["acme/team-a"], []), GitLabUnavailableError);
  });
});

describe("BindingReconciler gate", () => {
  const forbidding = (message: string) => async () => ({ allowed: false as const, message });
  function reconciler(
    authorizeFn: () => Promise<{ allowed: boolean; message?: string }>,
    entry: BindingEntry,
  ) {
    const touched: string[] = [];
    const statuses: BindingStatus[] = [];
    const fail = (what: string) => () => {
      touched.push(what);
      throw new Error(`${what} must not be called`);
    };
    const r = new BindingReconciler({
      bindings: { get: () => entry, validKeys: () => ["team-a/b"], createdAt: () => undefined },
      projects: {
        projects: fail("projects"),
        knownProjects: fail("knownProjects"),
        environments: fail("environments"),
      },
      keys: {
        list: fail("keys.list"),
        get: fail("keys.get"),
        ensure: fail("keys.ensure"),
        remove: fail("keys.remove"),
        update: fail("keys.update"),
        forget: fail("keys.forget"),
        release: async () => void touched.push("keys.release"),
      },
      resolver: { push: fail("push"), lookup: fail("lookup"), list: fail("list"), delete: fail("delete") },
      statuses: {
        write: async (_k, s) => void statuses.push(s),
        remove: async () => undefined,
      },
      signer: NKeyPair.generate("operator"),
      clock: new ManualClock(Date.UTC(2026, 0, 1)),
      driftCheckMs: 60_000,
      authorize: authorizeFn as never,
    });
    return { r, touched, statuses };
  }

  it("refused: status Ready=False Forbidden, zero counts, no accounts; nothing read, created or deleted", async () => {
    const b = binding({ gitlab: { group: "acme/team-b" }, deletionPolicy: "Delete" });
    const { r, touched, statuses } = reconciler(
      forbidding("no NatsBindingPolicy grants namespace team-a ..."),
      {
        kind: "valid",
        binding: b,
        generation: 3,
      },
    );
    assert.deepEqual(await r.reconcile("team-a/b"), { requeueAfterMs: 60_000 });
    assert.deepEqual(touched, []);
    const s = statuses.at(-1)!;
    const ready = s.conditions.find((c) => c.type === "Ready")!;
    assert.deepEqual([ready.status, ready.reason, ready.observedGeneration], ["False", "Forbidden", 3]);
    assert.match(ready.message, /no NatsBindingPolicy grants/);
    assert.deepEqual(s.counts, {
      projects: 0,
      accounts: 0,
      pushed: 0,
      upToDate: 0,
      retained: 0,
      problems: 0,
    });
    assert.deepEqual(s.accounts, []);
    for (const c of s.conditions) assert.equal(c.reason, "Forbidden");
  });

  it("a refused binding being deleted with Delete does not delete (its spec was never authorized)", async () => {
    const b = binding({ gitlab: { group: "acme/team-b" }, deletionPolicy: "Delete" });
    const { r, touched } = reconciler(forbidding("ceiling"), { kind: "deleting", spec: b.spec });
    await r.reconcile("team-a/b");
    assert.deepEqual(touched, ["keys.release"], "Retain applies: keys released, nothing removed");
  });

  it("a gate that cannot answer (GitLab down) fails the reconcile for a retry, touching nothing", async () => {
    const b = binding({ gitlab: { group: "acme/team-a" } });
    const { r, touched, statuses } = reconciler(
      async () => {
        throw new GitLabUnavailableError("GitLab unavailable", REQ);
      },
      { kind: "valid", binding: b, generation: 1 },
    );
    await assert.rejects(r.reconcile("team-a/b"), GitLabUnavailableError);
    assert.deepEqual(touched, []);
    assert.equal(statuses.at(-1)!.conditions.find((c) => c.type === "Ready")!.reason, "GitLabError");
  });
});
