// Overlapping bindings: the older binding keeps the projects (not the first key in sort order),
// and a conflict never deletes, releases or retains-away an account. The BindingReconciler runs
// here over a real DirectoryKeyStore (temp dir), an in-memory resolver that verifies and keeps
// the JWTs pushed to it, and a fake GitLab source.
import { afterEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BindingValidationError, parseBinding } from "../../src/api/v1alpha1/schema.ts";
import type { NatsBinding } from "../../src/api/v1alpha1/types.ts";
import { compareAge, conflictMessage, holderLabel } from "../../src/controllers/binding/overlap.ts";
import {
  BindingReconciler,
  type BindingEntry,
  type BindingLookup,
  type ProjectSource,
  type StatusWriter,
} from "../../src/controllers/binding/reconciler.ts";
import type { BindingStatus } from "../../src/controllers/binding/status.ts";
import { GitLabNotFoundError } from "../../src/gitlab/errors.ts";
import type { GitLabProject } from "../../src/gitlab/port.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import type { KeyStore } from "../../src/keystore/port.ts";
import { decodeJwt } from "../../src/nats/claims.ts";
import type { AccountResolver, ResolverOutcome } from "../../src/nats/resolver.ts";
import { ManualClock } from "../../src/runtime/clock.ts";
import { BindingFirstSeen, FIRST_SEEN_FILE, FirstSeenError } from "../../src/store/binding-first-seen.ts";
import { fixedKeys } from "./fixed-keys.ts";

const T0 = Date.UTC(2026, 0, 1);
const HOUR = 3_600_000;

function project(id: number, group = "team-b"): GitLabProject {
  return {
    id,
    name: `p${id}`,
    path: `p${id}`,
    pathWithNamespace: `${group}/p${id}`,
    namespaceId: 7,
    namespaceFullPath: group,
    visibility: "private",
    archived: false,
  };
}

function binding(key: string, group: string, extra: Record<string, unknown> = {}): NatsBinding {
  const slash = key.indexOf("/");
  return parseBinding(
    {
      apiVersion: "natsbind.io/v1alpha1",
      kind: "NatsBinding",
      metadata: slash < 0 ? { name: key } : { namespace: key.slice(0, slash), name: key.slice(slash + 1) },
      spec: {
        gitlab: { group },
        roles: [{ name: "ci", publish: { allow: ["build.{{project.slug}}.>"] } }],
        ...extra,
      },
    },
    key,
  );
}

/** The resolver as the servers behave: keeps verified JWTs by account; records every call. */
class MemoryResolver implements AccountResolver {
  readonly jwts = new Map<string, string>();
  readonly pushed: string[] = [];
  readonly deleted: string[] = [];
  async push(jwt: string): Promise<ResolverOutcome> {
    const account = decodeJwt(jwt).sub as string;
    this.jwts.set(account, jwt);
    this.pushed.push(account);
    return { accounts: [account], replies: [] };
  }
  async lookup(account: string): Promise<string | undefined> {
    return this.jwts.get(account);
  }
  async list(): Promise<string[]> {
    return [...this.jwts.keys()];
  }
  async delete(accounts: string[]): Promise<ResolverOutcome> {
    for (const a of accounts) this.jwts.delete(a);
    this.deleted.push(...accounts);
    return { accounts, replies: [] };
  }
}

class Bindings implements BindingLookup {
  readonly entries = new Map<string, { binding: NatsBinding; createdAt: number | undefined }>();
  set(key: string, b: NatsBinding, createdAt: number | undefined): void {
    this.entries.set(key, { binding: b, createdAt });
  }
  get(key: string): BindingEntry | undefined {
    const e = this.entries.get(key);
    return e ? { kind: "valid", binding: e.binding, generation: 1 } : undefined;
  }
  validKeys(): string[] {
    return [...this.entries.keys()];
  }
  createdAt(key: string): number | undefined {
    return this.entries.get(key)?.createdAt;
  }
}

/** GitLab groups -> projects; a binding's projects are "known" once listed (as the inventories do). */
class Projects implements ProjectSource {
  readonly groups = new Map<string, GitLabProject[]>();
  readonly failing = new Set<string>();
  readonly #listed = new Map<string, string>();
  listings: string[] = [];
  async projects(key: string, spec: NatsBinding["spec"]): Promise<readonly GitLabProject[]> {
    const group = spec.gitlab.kind === "group" ? String(spec.gitlab.group) : "";
    this.listings.push(key);
    if (this.failing.has(group))
      throw new GitLabNotFoundError(`group ${group} not found`, {
        method: "GET",
        path: `/groups/${encodeURIComponent(group)}/projects`,
      });
    this.#listed.set(key, group);
    return this.groups.get(group) ?? [];
  }
  knownProjects(key: string): readonly GitLabProject[] | undefined {
    const group = this.#listed.get(key);
    return group === undefined ? undefined : (this.groups.get(group) ?? []);
  }
  forget(key: string): void {
    this.#listed.delete(key);
  }
  async environments(): Promise<readonly string[]> {
    return [];
  }
}

class Statuses implements StatusWriter {
  readonly byKey = new Map<string, BindingStatus>();
  async write(key: string, status: BindingStatus): Promise<void> {
    this.byKey.set(key, structuredClone(status));
  }
  async remove(key: string): Promise<void> {
    this.byKey.delete(key);
  }
  ready(key: string) {
    return this.byKey.get(key)?.conditions.find((c) => c.type === "Ready");
  }
}

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function rig(
  authorize?: (key: string) => Promise<{ allowed: true } | { allowed: false; message: string }>,
) {
  const dir = await mkdtemp(join(tmpdir(), "natsbind-overlap-"));
  dirs.push(dir);
  const clock = new ManualClock(T0 + 10 * HOUR);
  const bindings = new Bindings();
  const projects = new Projects();
  const resolver = new MemoryResolver();
  const statuses = new Statuses();
  const directory = new DirectoryKeyStore(join(dir, "keys"), { owner: true });
  const released: string[] = [];
  const keys: KeyStore = {
    list: (b) => directory.list(b),
    get: (r) => directory.get(r),
    ensure: (r, roles) => directory.ensure(r, roles),
    remove: (r) => directory.remove(r),
    update: (r, change) => directory.update(r, change),
    forget: (r, k) => directory.forget(r, k),
    release: async (b) => void released.push(b),
  };
  const requeued: string[] = [];
  /** The reconciler's status events (what the status metrics see), in order. */
  const statusEvents: Array<[string, BindingStatus | undefined]> = [];
  const reconciler = new BindingReconciler({
    bindings,
    projects,
    keys,
    resolver,
    statuses,
    signer: fixedKeys.operatorSigning(),
    clock,
    driftCheckMs: HOUR,
    requeue: (key) => requeued.push(key),
    events: { status: (key, status) => statusEvents.push([key, status && structuredClone(status)]) },
    ...(authorize ? { authorize } : {}),
  });
  // What another process reading the key directory sees (not the reconciler's cache).
  const onDisk = (b: string) => new DirectoryKeyStore(join(dir, "keys")).list(b);
  return {
    dir,
    clock,
    bindings,
    projects,
    resolver,
    statuses,
    keys,
    released,
    requeued,
    statusEvents,
    reconciler,
    onDisk,
  };
}

type Rig = Awaited<ReturnType<typeof rig>>;

/** Accounts of a binding, by project id, as stored on disk. */
async function accountsOf(r: Rig, key: string): Promise<Map<number, string>> {
  return new Map((await r.onDisk(key)).map((s) => [s.ref.projectId, s.account]));
}

describe("overlap ordering (pure)", () => {
  it("orders by creation time first, then by key; unknown times are the youngest", () => {
    const prod = { key: "team-b/prod", createdAt: T0 };
    const aaa = { key: "team-a/aaa", createdAt: T0 + 1000 };
    assert.ok(compareAge(prod, aaa) < 0, "older wins although its key sorts after");
    assert.ok(compareAge({ key: "b/y", createdAt: T0 }, { key: "a/x", createdAt: T0 }) > 0, "tie: by key");
    assert.ok(compareAge({ key: "a/x", createdAt: undefined }, { key: "z/z", createdAt: T0 + HOUR }) > 0);
    assert.equal(compareAge(prod, { ...prod }), 0);
  });

  it("names the holding binding only within the same namespace", () => {
    assert.equal(holderLabel("team-a/aaa", "team-a/prod"), "binding prod");
    assert.equal(holderLabel("team-a/aaa", "team-b/prod"), "another binding");
    assert.equal(holderLabel("aaa", "prod"), "binding prod", "local keys share one namespace");
    const text = conflictMessage(
      "team-a/aaa",
      new Map([
        [12, "team-b/prod"],
        [3, "team-a/old"],
      ]),
    );
    assert.match(text, /^2 selected project\(s\) belong to an older binding/);
    assert.match(text, /3 \(binding old\), 12 \(another binding\)/);
    assert.doesNotMatch(text, /team-b|prod/);
    const many = conflictMessage(
      "a/x",
      new Map(Array.from({ length: 8 }, (_, i) => [i + 1, "b/y"] as const)),
    );
    assert.match(many, /, and 3 more;/);
  });

  it("reads metadata.creationTimestamp (RFC 3339) and names it when malformed", () => {
    const doc = (creationTimestamp: unknown) => ({
      apiVersion: "natsbind.io/v1alpha1",
      kind: "NatsBinding",
      metadata: { name: "prod", creationTimestamp },
      spec: { gitlab: { group: "g" }, roles: [{ name: "ci", publish: { allow: ["a.>"] } }] },
    });
    assert.equal(
      parseBinding(doc("2025-03-01T10:00:00Z"), "f").metadata.creationTimestamp,
      "2025-03-01T10:00:00Z",
    );
    assert.equal(
      parseBinding(doc(new Date(T0)), "f").metadata.creationTimestamp,
      new Date(T0).toISOString(),
      "a Date from a typed client is taken as its ISO form",
    );
    assert.throws(
      () => parseBinding(doc("yesterday"), "f"),
      (err: unknown) =>
        err instanceof BindingValidationError && /metadata\.creationTimestamp/.test(err.message),
    );
  });
});

describe("BindingReconciler: overlapping bindings", () => {
  it("the older binding keeps the projects although the younger one's key sorts first", async () => {
    const r = await rig();
    r.projects.groups.set("team-b", [project(1), project(2)]);
    r.bindings.set("team-b/prod", binding("team-b/prod", "team-b"), T0);
    r.bindings.set("team-a/aaa", binding("team-a/aaa", "team-b", { deletionPolicy: "Delete" }), T0 + HOUR);

    // aaa first, before prod's projects are known: they are listed, not assumed absent.
    await r.reconciler.reconcile("team-a/aaa");
    assert.ok(r.projects.listings.includes("team-b/prod"), "the older binding's projects were listed");
    assert.deepEqual(await r.onDisk("team-a/aaa"), [], "no keys for projects an older binding holds");
    assert.deepEqual(r.resolver.pushed, []);
    const ready = r.statuses.ready("team-a/aaa")!;
    assert.equal(ready.status, "False");
    assert.equal(ready.reason, "Conflict");
    assert.match(ready.message, /1 \(another binding\), 2 \(another binding\)/);
    assert.doesNotMatch(JSON.stringify(r.statuses.byKey.get("team-a/aaa")), /prod|team-b\/prod/);

    await r.reconciler.reconcile("team-b/prod");
    assert.equal(r.statuses.ready("team-b/prod")!.status, "True");
    assert.equal((await accountsOf(r, "team-b/prod")).size, 2);
    assert.equal(r.resolver.jwts.size, 2);
    assert.deepEqual(r.resolver.deleted, []);
  });

  it("under Delete, the younger binding's existing accounts are not deleted, pushed or changed", async () => {
    const r = await rig();
    r.projects.groups.set("team-b", [project(1), project(2)]);
    r.projects.groups.set("team-b/sub", [project(2)]);
    // aaa held project 2 alone (prod selected something else), with Delete.
    r.bindings.set(
      "team-a/aaa",
      binding("team-a/aaa", "team-b/sub", { deletionPolicy: "Delete" }),
      T0 + HOUR,
    );
    r.bindings.set("team-b/prod", binding("team-b/prod", "other"), T0);
    await r.reconciler.reconcile("team-b/prod");
    await r.reconciler.reconcile("team-a/aaa");
    const before = await accountsOf(r, "team-a/aaa");
    assert.equal(before.size, 1);
    const aaaAccount = before.get(2)!;
    const jwtBefore = r.resolver.jwts.get(aaaAccount)!;
    assert.equal(r.statuses.ready("team-a/aaa")!.status, "True");

    // prod (older) now selects team-b, which holds project 2 too: it takes it.
    r.bindings.set("team-b/prod", binding("team-b/prod", "team-b"), T0);
    r.requeued.length = 0;
    await r.reconciler.reconcile("team-b/prod");
    assert.deepEqual(r.requeued, ["team-a/aaa"], "the younger binding is told to look again");
    const prodAccounts = await accountsOf(r, "team-b/prod");
    assert.equal(prodAccounts.size, 2);
    assert.notEqual(prodAccounts.get(2), aaaAccount, "prod has its own account for project 2");

    // aaa also changes its spec: its held account would be stale, and still is not pushed.
    r.bindings.set(
      "team-a/aaa",
      binding("team-a/aaa", "team-b/sub", { deletionPolicy: "Delete", limits: { connections: 5 } }),
      T0 + HOUR,
    );
    const pushes = r.resolver.pushed.length;
    await r.reconciler.reconcile("team-a/aaa");
    assert.deepEqual(r.resolver.deleted, [], "nothing deleted from the resolver");
    assert.equal(r.resolver.pushed.length, pushes, "nothing pushed");
    assert.equal(r.resolver.jwts.get(aaaAccount), jwtBefore, "aaa's account is exactly as it was");
    assert.deepEqual(await accountsOf(r, "team-a/aaa"), before, "aaa's keys are still stored");
    const status = r.statuses.byKey.get("team-a/aaa")!;
    const ready = status.conditions.find((c) => c.type === "Ready")!;
    assert.equal(ready.reason, "Conflict");
    assert.deepEqual(
      status.accounts.map((a) => [a.projectId, a.account, a.state, a.projectPath]),
      [[2, aaaAccount, "Conflict", "team-b/p2"]],
    );
    assert.match(status.accounts[0]!.message!, /older another binding; this account is left as it is/);
    assert.equal(status.counts.retained, 0);
    // prod's accounts are untouched by all this.
    for (const account of prodAccounts.values()) assert.ok(r.resolver.jwts.has(account));
  });

  it("under Retain, the younger binding's accounts are not retained-away or released", async () => {
    const r = await rig();
    r.projects.groups.set("g", [project(1), project(2)]);
    r.bindings.set("aaa", binding("aaa", "g"), T0 + HOUR); // Retain is the default
    await r.reconciler.reconcile("aaa");
    const before = await accountsOf(r, "aaa");
    assert.equal(before.size, 2);
    // An older binding appears (local file with an explicit creationTimestamp) and takes both.
    r.bindings.set("prod", binding("prod", "g"), T0);
    await r.reconciler.reconcile("prod");
    await r.reconciler.reconcile("aaa");
    const status = r.statuses.byKey.get("aaa")!;
    assert.deepEqual(
      status.accounts.map((a) => a.state),
      ["Conflict", "Conflict"],
    );
    assert.equal(status.counts.retained, 0, "not counted as retained (which would stop managing them)");
    assert.deepEqual(r.released, []);
    assert.deepEqual(await accountsOf(r, "aaa"), before);
    for (const account of before.values()) assert.ok(r.resolver.jwts.has(account));
    assert.match(status.conditions.find((c) => c.type === "Ready")!.message, /1 \(binding prod\)/);
    assert.match(
      status.conditions.find((c) => c.type === "ResolverSynced")!.message,
      /2 left as they are \(conflict\)/,
    );
  });

  it("when the older binding goes, the younger takes the projects over with its own accounts", async () => {
    const r = await rig();
    r.projects.groups.set("g", [project(1), project(2)]);
    r.bindings.set("aaa", binding("aaa", "g", { deletionPolicy: "Delete" }), T0 + HOUR);
    await r.reconciler.reconcile("aaa");
    const aaaAccounts = await accountsOf(r, "aaa");
    r.bindings.set("prod", binding("prod", "g", { deletionPolicy: "Delete" }), T0);
    await r.reconciler.reconcile("prod");
    await r.reconciler.reconcile("aaa");
    assert.equal(r.statuses.ready("aaa")!.reason, "Conflict");
    const prodAccounts = await accountsOf(r, "prod");

    r.bindings.entries.delete("prod");
    r.projects.forget("prod");
    r.requeued.length = 0;
    await r.reconciler.reconcile("prod");
    assert.deepEqual(r.requeued, ["aaa"], "the binding that yielded is requeued");
    for (const account of prodAccounts.values())
      assert.ok(!r.resolver.jwts.has(account), "prod's Delete ran");
    await r.reconciler.reconcile("aaa");
    assert.equal(r.statuses.ready("aaa")!.status, "True");
    assert.deepEqual(await accountsOf(r, "aaa"), aaaAccounts, "the same accounts as before");
    for (const account of aaaAccounts.values()) assert.ok(r.resolver.jwts.has(account));
  });

  it("breaks a tie in creation time by key, and counts an unknown time as the youngest", async () => {
    const r = await rig();
    r.projects.groups.set("g", [project(1)]);
    r.bindings.set("b-second", binding("b-second", "g"), T0);
    r.bindings.set("a-first", binding("a-first", "g"), T0);
    r.bindings.set("unknown-age", binding("unknown-age", "g"), undefined);
    for (const key of ["unknown-age", "b-second", "a-first"]) await r.reconciler.reconcile(key);
    assert.equal(r.statuses.ready("a-first")!.status, "True");
    assert.match(r.statuses.ready("b-second")!.message, /1 \(binding a-first\)/);
    assert.match(r.statuses.ready("unknown-age")!.message, /1 \(binding a-first\)/);
    assert.deepEqual(await r.onDisk("b-second"), []);
    assert.deepEqual(await r.onDisk("unknown-age"), []);
  });

  it("an older binding the policy gate refuses holds no project: the younger allowed one keeps them", async () => {
    // Kubernetes mode: team-a created a binding on team-b's group first; no policy grants it.
    const refused = new Set(["team-a/squat"]);
    const asked: string[] = [];
    const r = await rig(async (key) => {
      asked.push(key);
      return refused.has(key) ? { allowed: false, message: "not granted" } : { allowed: true };
    });
    r.projects.groups.set("team-b", [project(1), project(2)]);
    r.bindings.set("team-a/squat", binding("team-a/squat", "team-b", { deletionPolicy: "Delete" }), T0);
    r.bindings.set("team-b/prod", binding("team-b/prod", "team-b"), T0 + HOUR);

    // prod is reconciled before the squatter ever was: the gate is asked about it, not assumed.
    await r.reconciler.reconcile("team-b/prod");
    assert.ok(asked.includes("team-a/squat"), "the older binding's verdict was asked for");
    assert.ok(!r.projects.listings.includes("team-a/squat"), "a refused binding's projects are not listed");
    assert.equal(r.statuses.ready("team-b/prod")!.status, "True");
    assert.equal((await accountsOf(r, "team-b/prod")).size, 2);

    await r.reconciler.reconcile("team-a/squat");
    assert.equal(r.statuses.ready("team-a/squat")!.reason, "Forbidden");
    assert.deepEqual(await r.onDisk("team-a/squat"), []);

    // Granted later: the squatter is older, so it now holds the projects; prod keeps its accounts.
    refused.clear();
    await r.reconciler.reconcile("team-a/squat");
    assert.ok(r.requeued.includes("team-b/prod"), "the younger binding is looked at again");
    await r.reconciler.reconcile("team-b/prod");
    assert.equal(r.statuses.ready("team-b/prod")!.reason, "Conflict");
    assert.equal((await accountsOf(r, "team-b/prod")).size, 2, "a conflict deletes nothing");
    assert.deepEqual(r.resolver.deleted, []);
  });

  it("fails, creating nothing, when an older binding's projects cannot be listed; no other tenant's names", async () => {
    const r = await rig();
    r.projects.groups.set("team-a", [project(1, "team-a")]);
    r.projects.failing.add("team-b-secret-group");
    r.bindings.set("team-b/prod", binding("team-b/prod", "team-b-secret-group"), T0);
    r.bindings.set("team-a/aaa", binding("team-a/aaa", "team-a"), T0 + HOUR);
    await assert.rejects(r.reconciler.reconcile("team-a/aaa"), /cannot check overlaps/);
    assert.deepEqual(await r.onDisk("team-a/aaa"), []);
    assert.deepEqual(r.resolver.pushed, []);
    const ready = r.statuses.ready("team-a/aaa")!;
    assert.equal(ready.reason, "GitLabError");
    assert.match(ready.message, /another binding, older than this one/);
    assert.doesNotMatch(JSON.stringify(r.statuses.byKey.get("team-a/aaa")), /secret-group|prod/);
  });
});

describe("BindingReconciler: status events (metrics)", () => {
  it("reports every status it writes, failed reconciles too, and undefined once the binding is gone", async () => {
    const r = await rig();
    r.projects.groups.set("g", [project(1), project(2)]);
    r.bindings.set("prod", binding("prod", "g"), T0);
    await r.reconciler.reconcile("prod");
    assert.deepEqual(r.statusEvents, [["prod", r.statuses.byKey.get("prod")]], "the status it wrote");
    assert.equal(r.statusEvents[0]![1]!.counts.accounts, 2);

    r.projects.failing.add("g");
    await assert.rejects(r.reconciler.reconcile("prod"), GitLabNotFoundError);
    const failed = r.statusEvents.at(-1)!;
    assert.deepEqual(failed, ["prod", r.statuses.byKey.get("prod")]);
    assert.equal(failed[1]!.conditions.find((c) => c.type === "Ready")!.status, "False");

    r.bindings.entries.delete("prod");
    await r.reconciler.reconcile("prod");
    assert.deepEqual(r.statusEvents.at(-1), ["prod", undefined]);
    assert.equal(r.statuses.byKey.has("prod"), false);
  });
});

describe("BindingFirstSeen (local mode ages)", () => {
  it("records first sight, keeps it across a restart, and forgets removed bindings", async () => {
    const dir = await mkdtemp(join(tmpdir(), "natsbind-first-seen-"));
    dirs.push(dir);
    const clock = new ManualClock(T0);
    const first = await BindingFirstSeen.load(dir, clock);
    await first.observe(["prod"]);
    clock.advance(5000);
    await first.observe(["prod", "aaa"]);
    assert.equal(first.get("prod"), T0);
    assert.equal(first.get("aaa"), T0 + 5000);

    // A restart: a new instance on the same directory, with a clock far later.
    const later = new ManualClock(T0 + 24 * HOUR);
    const again = await BindingFirstSeen.load(dir, later);
    assert.equal(again.get("prod"), T0, "the older binding stays older");
    assert.equal(again.get("aaa"), T0 + 5000);
    await again.observe(["aaa"]);
    await again.observe(["aaa", "prod"]);
    assert.equal(again.get("prod"), T0 + 24 * HOUR, "removed and added again: a new binding");
    assert.equal((await BindingFirstSeen.load(dir, later)).get("prod"), T0 + 24 * HOUR);
  });

  it("refuses a corrupt or mistyped file, naming it", async () => {
    const dir = await mkdtemp(join(tmpdir(), "natsbind-first-seen-"));
    dirs.push(dir);
    const clock = new ManualClock(T0);
    const path = join(dir, FIRST_SEEN_FILE);
    await writeFile(path, "{not json");
    await assert.rejects(BindingFirstSeen.load(dir, clock), (err: unknown) => {
      assert.ok(err instanceof FirstSeenError);
      assert.match(err.message, new RegExp(`${FIRST_SEEN_FILE} is not valid JSON`));
      return true;
    });
    await writeFile(path, JSON.stringify({ version: 1, firstSeen: { prod: "last tuesday" } }));
    await assert.rejects(BindingFirstSeen.load(dir, clock), /firstSeen\.prod: .*fix or remove the file/);
    await writeFile(path, JSON.stringify({ version: 2, firstSeen: {} }));
    await assert.rejects(BindingFirstSeen.load(dir, clock), /version/);
  });
});
