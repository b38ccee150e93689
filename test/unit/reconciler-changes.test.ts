// A reconcile that finds only a few projects changed since the last full one plans for those
// alone (BindingReconciler #reconcileChanges): it must do what a full reconcile would (same
// pushes, same status), and a full reconcile must run whenever anything else may have changed.
// Fakes: an in-memory resolver that records requests, a directory key store in a temp dir.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseBinding } from "../../src/api/v1alpha1/schema.ts";
import type { NatsBinding } from "../../src/api/v1alpha1/types.ts";
import { BindingReconciler, type BindingEntry } from "../../src/controllers/binding/reconciler.ts";
import type { BindingStatus } from "../../src/controllers/binding/status.ts";
import type { GitLabProject } from "../../src/gitlab/port.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import { decodeJwt } from "../../src/nats/claims.ts";
import type { AccountResolver, ResolverOutcome } from "../../src/nats/resolver.ts";
import { ManualClock } from "../../src/runtime/clock.ts";
import { fixedKeys } from "./fixed-keys.ts";

const KEY = "team-a/app";
const DRIFT_MS = 600_000;
const signer = fixedKeys.operatorSigning();

let root: string;
let n = 0;
before(async () => {
  root = await mkdtemp(join(tmpdir(), "natsbind-changes-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

function binding(publish = "ci.{{project.slug}}.>"): NatsBinding {
  return parseBinding(
    {
      apiVersion: "natsbind.io/v1alpha1",
      kind: "NatsBinding",
      metadata: { name: "app", namespace: "team-a" },
      spec: {
        gitlab: { group: "team-a" },
        deletionPolicy: "Delete",
        roles: [{ name: "ci", publish: { allow: [publish] } }],
      },
    },
    "test",
  );
}

function project(id: number, name = `p${id}`): GitLabProject {
  return {
    id,
    name,
    path: name,
    pathWithNamespace: `team-a/${name}`,
    namespaceId: 10,
    namespaceFullPath: "team-a",
    visibility: "private",
    archived: false,
  };
}

/** A full resolver in memory; `calls` records every request ("push <project id>", "lookup", ...). */
class FakeResolver implements AccountResolver {
  readonly held = new Map<string, string>();
  readonly calls: string[] = [];
  async push(jwt: string): Promise<ResolverOutcome> {
    const claims = decodeJwt(jwt);
    const tag = (claims.nats.tags as string[]).find((t) => t.startsWith("gitlab-project-id:"))!;
    this.calls.push(`push ${tag.slice("gitlab-project-id:".length)}`);
    this.held.set(claims.sub, jwt);
    return { accounts: [claims.sub], replies: [] };
  }
  async lookup(account: string): Promise<string | undefined> {
    this.calls.push("lookup");
    return this.held.get(account);
  }
  async list(): Promise<string[]> {
    return [...this.held.keys()].sort();
  }
  async delete(accounts: string[]): Promise<ResolverOutcome> {
    this.calls.push(`delete ${accounts.length}`);
    for (const a of accounts) this.held.delete(a);
    return { accounts, replies: [] };
  }
}

/** A key store whose list() can let time pass (a slow cold start). */
class SlowStore extends DirectoryKeyStore {
  beforeList: () => void = () => undefined;
  override async list(...args: Parameters<DirectoryKeyStore["list"]>): ReturnType<DirectoryKeyStore["list"]> {
    this.beforeList();
    return super.list(...args);
  }
}

function harness(projects: GitLabProject[]) {
  const dir = join(root, `keys-${++n}`);
  const resolver = new FakeResolver();
  const clock = new ManualClock(Date.UTC(2026, 10, 29));
  const statuses = new Map<string, BindingStatus>();
  let entry: BindingEntry = { kind: "valid", binding: binding(), generation: 1 };
  let selected: readonly GitLabProject[] = Object.freeze([...projects]);
  const store = new SlowStore(dir, { owner: true });
  const reconcilerOn = (keys: DirectoryKeyStore): BindingReconciler =>
    new BindingReconciler({
      bindings: { get: () => entry, validKeys: () => [KEY], createdAt: () => undefined },
      projects: {
        projects: async () => selected,
        knownProjects: () => selected,
        environments: async () => [],
      },
      keys,
      resolver,
      statuses: {
        write: async (key, status) => void statuses.set(key, structuredClone(status)),
        remove: async (key) => void statuses.delete(key),
      },
      signer,
      clock,
      driftCheckMs: DRIFT_MS,
    });
  const reconciler = reconcilerOn(store);
  return {
    resolver,
    store,
    clock,
    reconcile: async (): Promise<string[]> => {
      const from = resolver.calls.length;
      await reconciler.reconcile(KEY);
      return resolver.calls.slice(from);
    },
    status: () => statuses.get(KEY)!,
    /** What a full reconcile of a new natsbind on the same store and resolver writes. */
    fullStatus: async (): Promise<BindingStatus> => {
      await reconcilerOn(new DirectoryKeyStore(dir, { owner: true })).reconcile(KEY);
      return statuses.get(KEY)!;
    },
    /** The inventory's next snapshot: a webhook's refresh keeps the other project objects. */
    select: (p: readonly GitLabProject[]) => void (selected = Object.freeze([...p])),
    selected: () => selected,
    respec: (b: NatsBinding) => void (entry = { kind: "valid", binding: b, generation: 2 }),
  };
}

describe("a cold start", () => {
  it("pushes every new account once, also when it takes longer than the drift interval", async () => {
    // Issue 12's 100,000-project run pushed 16,000 accounts twice: those pushed more than
    // resyncInterval before the cold start's final plan were taken for missing, not looked up.
    const h = harness([1, 2, 3, 4].map((id) => project(id)));
    // The slots are listed again once the new accounts were pushed: a drift interval later.
    h.store.beforeList = () => {
      if (h.resolver.calls.length > 0) h.clock.advance(DRIFT_MS);
      if (h.resolver.calls.length > 0) h.store.beforeList = () => undefined;
    };
    const calls = await h.reconcile();
    assert.deepEqual(calls.filter((c) => c.startsWith("push")).sort(), [
      "push 1",
      "push 2",
      "push 3",
      "push 4",
    ]);
    assert.ok(calls.includes("lookup"), "accounts pushed a drift interval ago are checked, not pushed again");
    assert.equal(h.status().counts.pushed, 4);
  });
});

/** Status accounts without what differs by who pushed (pushedAt). */
const summaries = (s: BindingStatus): unknown[] => s.accounts.map(({ pushedAt: _p, ...rest }) => rest);

describe("a reconcile of a few changed projects (after a full one)", () => {
  it("pushes a created project's account alone, looks nothing up, and reports what a full reconcile would", async () => {
    const h = harness([1, 2, 3, 4, 5].map((id) => project(id)));
    assert.deepEqual((await h.reconcile()).sort(), ["push 1", "push 2", "push 3", "push 4", "push 5"]);
    assert.equal(h.status().counts.pushed, 5, "a cold start counts the accounts it pushed early");
    assert.equal(h.status().counts.upToDate, 0);

    h.select([...h.selected(), project(6)]);
    assert.deepEqual(await h.reconcile(), ["push 6"]);
    const quick = h.status();
    assert.deepEqual(quick.counts, {
      projects: 6,
      accounts: 6,
      pushed: 1,
      upToDate: 5,
      retained: 0,
      problems: 0,
    });

    const full = await h.fullStatus();
    assert.deepEqual(summaries(quick), summaries(full));
    assert.deepEqual(
      quick.conditions.find((c) => c.type === "Ready"),
      full.conditions.find((c) => c.type === "Ready"),
    );
  });

  it("pushes a renamed project's account again and nothing else", async () => {
    const h = harness([1, 2, 3].map((id) => project(id)));
    await h.reconcile();
    h.select(h.selected().map((p) => (p.id === 2 ? project(2, "renamed") : p)));
    assert.deepEqual(await h.reconcile(), ["push 2"]);
    assert.equal(h.status().accounts.find((a) => a.projectId === 2)?.projectPath, "team-a/renamed");
    h.select([...h.selected()]);
    assert.deepEqual(await h.reconcile(), [], "the same projects again: nothing to do");
  });

  it("plans in full when a project is gone, a drift check is due, or the spec changed", async () => {
    const h = harness([1, 2, 3].map((id) => project(id)));
    await h.reconcile();

    h.select(h.selected().filter((p) => p.id !== 3));
    assert.deepEqual(await h.reconcile(), ["lookup", "delete 1"], "a removal is a full reconcile's");
    assert.equal(h.status().counts.accounts, 2);

    h.clock.advance(DRIFT_MS);
    assert.deepEqual(await h.reconcile(), ["lookup", "lookup"], "the drift check looks every account up");

    h.respec(binding("ci.{{project.slug}}.other.>"));
    assert.deepEqual((await h.reconcile()).sort(), ["push 1", "push 2"], "a new spec changes every account");
    assert.deepEqual(summaries(h.status()), summaries(await h.fullStatus()));
  });
});
