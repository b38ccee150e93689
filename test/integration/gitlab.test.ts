// The GitLab port (gitbeaker + our transport), the inventory and the webhook path against the
// GitLab simulator.
import { describe, it, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { GitbeakerGitLab, type GitLabRequestEvent, type GitLabRetryEvent } from "../../src/gitlab/client.ts";
import {
  GitLabAuthError,
  GitLabForbiddenError,
  GitLabNotFoundError,
  GitLabUnavailableError,
} from "../../src/gitlab/errors.ts";
import { ProjectInventory, changedProjectIds, type InventoryDiff } from "../../src/gitlab/inventory.ts";
import type { GitLabSignal } from "../../src/gitlab/signals.ts";
import { parseBindingSpec } from "../../src/api/v1alpha1/schema.ts";
import { ProjectInventories } from "../../src/controllers/binding/projects.ts";
import { systemClock } from "../../src/runtime/clock.ts";
import { createWebhookHandler, WEBHOOK_PATH } from "../../src/gitlab/webhook.ts";
import { startHttpServer, type HttpServer } from "../../src/http/server.ts";
import { GitLabSimulator } from "../support/gitlab-sim.ts";
import { freePort, waitFor } from "../support/process.ts";

const FAST_RETRY = { maxAttempts: 3, baseDelayMs: 5, maxDelayMs: 20, maxTotalMs: 5_000 };

describe("GitLab port against the simulator", { timeout: 120_000 }, () => {
  let sim: GitLabSimulator;
  let events: GitLabRequestEvent[];
  let retries: GitLabRetryEvent[];
  let gitlab: GitbeakerGitLab;

  before(async () => {
    sim = await GitLabSimulator.start();
  });
  after(async () => {
    await sim?.stop();
  });
  beforeEach(() => {
    sim.resetRequests();
    sim.clearFailures();
    events = [];
    retries = [];
    gitlab = new GitbeakerGitLab({
      url: sim.url,
      token: sim.token,
      retry: FAST_RETRY,
      onRequest: (e) => events.push(e),
      onRetry: (e) => retries.push(e),
    });
  });

  it("lists 2,500 projects in nested subgroups with one request per page", async () => {
    const { root, projects } = sim.populate({ rootPath: "big", projects: 2500, depth: 3, fanout: 4 });
    sim.resetRequests();
    const listed = await gitlab.groupProjects(root.id);
    assert.equal(listed.length, 2500);
    assert.deepEqual(new Set(listed.map((p) => p.id)), new Set(projects.map((p) => p.id)));
    const pages = sim.requests.filter((r) => r.path === `/api/v4/groups/${root.id}/projects`);
    assert.equal(pages.length, 25, "ceil(2500 / 100) pages");
    assert.equal(sim.requests.length, 25, "and nothing else");
    assert.ok(pages.every((r) => r.query.per_page === "100" && r.query.include_subgroups === "true"));
    const sample = listed.find((p) => p.id === projects[1234]!.id)!;
    assert.equal(sample.pathWithNamespace, sim.projectFullPath(sample.id));
    assert.ok(sample.pathWithNamespace.startsWith("big/"));
  });

  it("resolves groups and projects by id and by full path", async () => {
    const group = sim.createGroup({ name: "Resolve Me", path: "resolve" });
    const sub = sim.createGroup({ name: "Sub", path: "sub", parentId: group.id });
    const project = sim.createProject({ name: "API", path: "api", groupId: sub.id });
    sim.addEnvironment(project.id, { name: "production", tier: "production" });
    sim.addEnvironment(project.id, { name: "review/old", state: "stopped" });

    assert.deepEqual(await gitlab.group("resolve/sub"), {
      id: sub.id,
      name: "Sub",
      path: "sub",
      fullPath: "resolve/sub",
      parentId: group.id,
    });
    assert.equal((await gitlab.group(group.id)).fullPath, "resolve");
    const byPath = await gitlab.project("resolve/sub/api");
    assert.equal(byPath?.id, project.id);
    assert.equal(byPath?.namespaceId, sub.id);
    assert.equal((await gitlab.project(project.id))?.pathWithNamespace, "resolve/sub/api");
    assert.deepEqual(
      (await gitlab.descendantGroups(group.id)).map((g) => g.fullPath),
      ["resolve/sub"],
    );
    assert.deepEqual(
      (await gitlab.environments(project.id)).map((e) => [e.name, e.tier]),
      [["production", "production"]],
    );
    assert.equal(await gitlab.project(999_999), undefined);
  });

  it("says clearly what is wrong for 401, 403 and 404, without retrying", async () => {
    const badToken = new GitbeakerGitLab({ url: sim.url, token: "glpat-wrong", retry: FAST_RETRY });
    await assert.rejects(badToken.group(1), (err: Error) => {
      assert.ok(err instanceof GitLabAuthError, `${err.name}: ${err.message}`);
      assert.match(err.message, /rejected the token \(401: 401 Unauthorized\) for GET \/groups\/1/);
      assert.ok(!err.message.includes("glpat-wrong"));
      return true;
    });
    sim.addToken("glpat-noscope", { scopes: ["read_user"] });
    const noScope = new GitbeakerGitLab({ url: sim.url, token: "glpat-noscope", retry: FAST_RETRY });
    await assert.rejects(
      noScope.group(1),
      (err: Error) => err instanceof GitLabForbiddenError && /read_api/.test(err.message),
    );
    sim.resetRequests();
    await assert.rejects(gitlab.group("no/such/group"), (err: Error) => {
      assert.ok(err instanceof GitLabNotFoundError);
      assert.match(err.message, /GET \/groups\/no%2Fsuch%2Fgroup: 404 Group Not Found/);
      return true;
    });
    assert.equal(sim.requests.length, 1, "a 404 is not retried");
  });

  it("waits out a burst of 429s as Retry-After says instead of hammering", async () => {
    const group = sim.createGroup({ name: "Rate", path: "rate" });
    const waits: GitLabRetryEvent[] = [];
    const patient = new GitbeakerGitLab({ url: sim.url, token: sim.token, onRetry: (e) => waits.push(e) });
    sim.resetRequests();
    sim.failNext(2, { status: 429, retryAfterSeconds: 2, pathIncludes: `/groups/${group.id}` });
    assert.equal((await patient.group(group.id)).id, group.id);
    const times = sim.requests.map((r) => [r.status, r.atMs] as const);
    assert.deepEqual(
      times.map(([s]) => s),
      [429, 429, 200],
    );
    for (let i = 1; i < times.length; i++) {
      const gap = times[i]![1] - times[i - 1]![1];
      assert.ok(gap >= 2000, `request ${i + 1} came ${gap.toFixed(0)} ms after the previous one`);
      assert.ok(gap < 4000, `and not much later (${gap.toFixed(0)} ms)`);
    }
    // Each wait is reported before it starts (metrics: natsbind_gitlab_retry_wait_seconds_total).
    assert.deepEqual(
      waits.map((w) => [w.attempt, w.status, w.serverAsked]),
      [
        [1, 429, true],
        [2, 429, true],
      ],
    );
    for (const w of waits)
      assert.ok(w.delayMs >= 2000 && w.delayMs <= 3000, `waited ${w.delayMs} ms as asked`);
  });

  it("gives up on a 5xx outage with a typed error after its bounded retries", async () => {
    const group = sim.createGroup({ name: "Down", path: "down" });
    sim.failNext(50, { status: 503 });
    await assert.rejects(gitlab.groupProjects(group.id), (err: Error) => {
      assert.ok(err instanceof GitLabUnavailableError, `${err.name}: ${err.message}`);
      assert.match(
        err.message,
        /GET \/groups\/\d+\/projects at http:\/\/127\.0\.0\.1:\d+: 503 .*gave up after 3 attempts/,
      );
      return true;
    });
    assert.equal(sim.requests.length, 3);
    assert.deepEqual(
      events.map((e) => [e.attempt, e.status]),
      [
        [1, 503],
        [2, 503],
        [3, 503],
      ],
    );
    // Two waits (none after the last attempt), natsbind's own backoff: 503 sent no Retry-After.
    assert.deepEqual(
      retries.map((r) => [r.attempt, r.status, r.serverAsked]),
      [
        [1, 503, false],
        [2, 503, false],
      ],
    );
  });

  it("reports an unreachable GitLab as unavailable", async () => {
    const nowhere = new GitbeakerGitLab({
      url: `http://127.0.0.1:${await freePort()}`,
      token: "x",
      retry: FAST_RETRY,
    });
    await assert.rejects(
      nowhere.group(1),
      (err: Error) => err instanceof GitLabUnavailableError && /ECONNREFUSED/.test(err.message),
    );
  });
});

describe("inventory against the simulator", { timeout: 120_000 }, () => {
  let sim: GitLabSimulator;

  before(async () => {
    sim = await GitLabSimulator.start();
  });
  after(async () => {
    await sim?.stop();
  });

  it("keeps identity through rename and transfer, and counts a destroy only once GitLab confirms it", async () => {
    const top = sim.createGroup({ name: "Top", path: "top" });
    const a = sim.createGroup({ name: "A", path: "a", parentId: top.id });
    const b = sim.createGroup({ name: "B", path: "b", parentId: top.id });
    const p1 = sim.createProject({ name: "one", groupId: a.id });
    const p2 = sim.createProject({ name: "two", groupId: a.id });
    const p3 = sim.createProject({ name: "three", groupId: a.id });
    const gitlab = new GitbeakerGitLab({ url: sim.url, token: sim.token, retry: FAST_RETRY });
    const inventory = new ProjectInventory(gitlab, { groups: ["top"], projects: [] });
    assert.deepEqual(
      changedProjectIds(await inventory.resync()),
      [p1.id, p2.id, p3.id].sort((x, y) => x - y),
    );

    sim.renameProject(p1.id, { path: "uno", name: "uno" });
    sim.transferProject(p2.id, b.id);
    const diff = await inventory.resync();
    assert.deepEqual(
      diff.renamed.map((c) => [c.after.id, c.before.pathWithNamespace, c.after.pathWithNamespace]),
      [[p1.id, "top/a/one", "top/a/uno"]],
    );
    assert.deepEqual(
      diff.transferred.map((c) => [c.after.id, c.before.namespaceId, c.after.namespaceId]),
      [[p2.id, a.id, b.id]],
    );
    assert.equal(diff.created.length + diff.deleted.length, 0, "same ids: nothing created or deleted");

    // A 5xx outage during resync removes nothing.
    sim.failNext(50, { status: 502 });
    await assert.rejects(inventory.resync(), GitLabUnavailableError);
    assert.equal(inventory.snapshot().size, 3);
    sim.clearFailures();

    // A refresh of a project that still exists (GitLab answers 200) deletes nothing.
    assert.equal((await inventory.refreshProject(p3.id)).deleted.length, 0);
    sim.deleteProject(p3.id);
    const confirmed = await inventory.refreshProject(p3.id);
    assert.deepEqual(
      confirmed.deleted.map((p) => p.id),
      [p3.id],
    );
  });

  it("turns webhooks into targeted refreshes: each retried delivery processed once", async () => {
    const group = sim.createGroup({ name: "Hooked", path: "hooked" });
    const existing = sim.createProject({ name: "existing", groupId: group.id });
    const gitlab = new GitbeakerGitLab({ url: sim.url, token: sim.token, retry: FAST_RETRY });
    const changes: InventoryDiff[] = [];
    const signals: GitLabSignal[] = [];
    const inventories = new ProjectInventories({
      gitlab,
      clock: systemClock,
      resyncIntervalMs: 3_600_000,
      onChange: (_keys, d) => changes.push(d),
      onError: (e) => assert.fail(e as Error),
    });
    const pending: Promise<void>[] = [];
    const handler = createWebhookHandler({
      secretToken: "hook-secret",
      onSignal: (s) => {
        signals.push(s);
        pending.push(inventories.handle(s));
      },
    });
    const http: HttpServer = await startHttpServer({
      host: "127.0.0.1",
      port: 0,
      routes: { [WEBHOOK_PATH]: handler },
    });
    try {
      const spec = parseBindingSpec(
        { gitlab: { group: group.id }, roles: [{ name: "ci", publish: { allow: ["a.>"] } }] },
        "test",
      );
      assert.deepEqual(
        (await inventories.projects("hooked", spec)).map((p) => p.id),
        [existing.id],
      );
      inventories.start();
      sim.addSystemHook(`${http.url}${WEBHOOK_PATH}`, "hook-secret");

      const created = sim.createProject({ name: "fresh", groupId: group.id });
      sim.renameProject(existing.id, { path: "renamed" });
      const deliveries = await sim.deliverPending();
      assert.deepEqual(
        deliveries.map((d) => [d.eventName, d.status]),
        [
          ["project_create", 202],
          ["project_rename", 202],
        ],
      );
      const retried = await sim.redeliver(deliveries[0]!);
      assert.equal(retried.status, 200, "GitLab's retry is recognised");
      await waitFor(async () => pending.length === 2, {
        what: "two signals",
        timeoutMs: 5_000,
        intervalMs: 10,
      });
      await Promise.all(pending);
      assert.equal(signals.length, 2);
      assert.deepEqual(
        changes.map((d) => changedProjectIds(d)),
        [[created.id], [existing.id]],
      );
      assert.equal(changes[1]!.renamed[0]!.after.path, "renamed");

      sim.deleteProject(created.id);
      const [destroy] = await sim.deliverPending();
      assert.equal(destroy?.eventName, "project_destroy");
      await waitFor(async () => pending.length === 3, {
        what: "the destroy signal",
        timeoutMs: 5_000,
        intervalMs: 10,
      });
      await pending[2];
      assert.deepEqual(
        changes.at(-1)!.deleted.map((p) => p.id),
        [created.id],
      );

      // A wrong token is refused and changes nothing.
      const forged = await fetch(`${http.url}${WEBHOOK_PATH}`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "x-gitlab-token": "nope",
          "x-gitlab-event": "System Hook",
        },
        body: JSON.stringify({ event_name: "project_destroy", project_id: existing.id }),
      });
      assert.equal(forged.status, 401);
      assert.equal(signals.length, 3);
    } finally {
      inventories.stop();
      await http.close();
    }
  });
});
