// Issue 9, finding 4: every group owner with a group hook knows the webhook secret, and one
// delivery used to resync every binding (20 deliveries with unrelated group ids: 400 GitLab
// requests for 5 bindings x 250 projects). Real parts: the webhook receiver on natsbind's HTTP
// listener, ProjectInventories, GitbeakerGitLab, against the GitLab simulator, which counts every
// API request it serves. (No NATS: nothing on this path reaches the resolver.)
import { describe, it, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { GitbeakerGitLab } from "../../src/gitlab/client.ts";
import { changedProjectIds } from "../../src/gitlab/inventory.ts";
import { parseBindingSpec } from "../../src/api/v1alpha1/schema.ts";
import { ProjectInventories } from "../../src/controllers/binding/projects.ts";
import { systemClock } from "../../src/runtime/clock.ts";
import { createWebhookHandler, WEBHOOK_PATH } from "../../src/gitlab/webhook.ts";
import { startHttpServer, type HttpServer } from "../../src/http/server.ts";
import { GitLabSimulator } from "../support/gitlab-sim.ts";
import type { SimGroup, SimProject } from "../support/gitlab-sim/types.ts";
import { waitFor } from "../support/process.ts";

const SECRET = "shared-by-every-group-owner";
const BINDINGS = 5;
const PROJECTS = 250;

describe("hostile webhooks: no amplification", { timeout: 120_000 }, () => {
  let sim: GitLabSimulator;
  let http: HttpServer;
  let inventories: ProjectInventories;
  let pending: Promise<void>[];
  let changes: Array<{ keys: string[]; ids: number[] }>;
  const roots: SimGroup[] = [];
  const subgroups: SimGroup[][] = [];
  const projects: SimProject[][] = [];
  const outsider: { group?: SimGroup } = {};

  before(async () => {
    sim = await GitLabSimulator.start();
    for (let i = 0; i < BINDINGS; i++) {
      const {
        root,
        groups,
        projects: listed,
      } = sim.populate({ rootPath: `team-${i}`, projects: PROJECTS, depth: 1, fanout: 4 });
      roots.push(root);
      subgroups.push(groups.slice(1));
      projects.push(listed);
    }
    outsider.group = sim.createGroup({ name: "Outsider", path: "outsider" });
    sim.createProject({ name: "stray", groupId: outsider.group.id });

    const gitlab = new GitbeakerGitLab({ url: sim.url, token: sim.token });
    pending = [];
    changes = [];
    inventories = new ProjectInventories({
      gitlab,
      clock: systemClock,
      resyncIntervalMs: 3_600_000, // the backstop exists; these tests do not wait for it
      onChange: (keys, d) => changes.push({ keys, ids: changedProjectIds(d) }),
      onError: (e) => assert.fail(e as Error),
    });
    const handler = createWebhookHandler({
      secretToken: SECRET,
      onSignal: (s) => void pending.push(inventories.handle(s)),
    });
    http = await startHttpServer({ host: "127.0.0.1", port: 0, routes: { [WEBHOOK_PATH]: handler } });
    for (const [i, root] of roots.entries()) {
      const spec = parseBindingSpec(
        { gitlab: { group: root.id }, roles: [{ name: "ci", publish: { allow: ["a.>"] } }] },
        `team-${i}`,
      );
      assert.equal((await inventories.projects(`team-${i}`, spec)).length, PROJECTS);
    }
    inventories.start();
  });
  after(async () => {
    inventories?.stop();
    await http?.close();
    await sim?.stop();
  });
  beforeEach(() => {
    sim.resetRequests();
    sim.setLatency(0);
    pending.length = 0;
    changes.length = 0;
  });

  /** A delivery anyone holding the secret can send: its own Idempotency-Key, so none is a duplicate. */
  function deliver(event: string, payload: Record<string, unknown>): Promise<Response> {
    return fetch(`${http.url}${WEBHOOK_PATH}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-gitlab-token": SECRET,
        "x-gitlab-event": event,
        "idempotency-key": randomUUID(),
      },
      body: JSON.stringify(payload),
    });
  }

  async function settled(signals: number): Promise<void> {
    await waitFor(async () => pending.length >= signals, {
      what: `${signals} signals`,
      timeoutMs: 10_000,
      intervalMs: 5,
    });
    await Promise.all(pending);
  }

  /** API requests that list or resolve scope `i`'s root group. */
  const scopeRequests = (i: number): number =>
    sim.requests.filter((r) => r.path.startsWith(`/api/v4/groups/${roots[i]!.id}`)).length;

  it("20 deliveries with unrelated group ids cost no GitLab request", async () => {
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, n) =>
        n % 2 === 0
          ? deliver("System Hook", {
              event_name: "group_rename",
              group_id: 900_000 + n,
              full_path: `elsewhere-${n}`,
              old_full_path: `gone-${n}`,
            })
          : deliver("Subgroup Hook", {
              event_name: "subgroup_create",
              group_id: 900_000 + n,
              full_path: `outsider/sub-${n}`,
              parent_group_id: outsider.group!.id,
            }),
      ),
    );
    assert.deepEqual(new Set(answers.map((a) => a.status)), new Set([202]), "each delivery is accepted");
    await settled(20);
    assert.equal(sim.requests.length, 0, "no GitLab request at all");
    assert.deepEqual(changes, []);
  });

  it("unrelated project events cost nothing either, also with a scope's path as a prefix", async () => {
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, n) =>
        deliver("System Hook", {
          event_name: "project_create",
          project_id: 800_000 + n,
          project_namespace_id: 700_000 + n,
          path_with_namespace: `team-0x/p${n}`, // "team-0x" is not "team-0"
        }),
      ),
    );
    assert.deepEqual(new Set(answers.map((a) => a.status)), new Set([202]));
    await settled(20);
    assert.equal(sim.requests.length, 0);
  });

  it("a burst of 20 deliveries for a group inside one scope resyncs it at most twice, others untouched", async () => {
    // Slow answers keep the first resync in flight while the whole burst arrives.
    sim.setLatency(100);
    const inside = subgroups[2]![1]!;
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, n) =>
        deliver("Subgroup Hook", {
          event_name: "subgroup_create",
          group_id: 600_000 + n,
          full_path: `${sim.groupFullPath(inside.id)}/new-${n}`,
          parent_group_id: inside.id,
        }),
      ),
    );
    assert.deepEqual(new Set(answers.map((a) => a.status)), new Set([202]));
    await settled(20);
    // One resync: GET /groups/:id and ceil(250 / 100) = 3 pages.
    const perResync = 1 + Math.ceil(PROJECTS / 100);
    const hit = scopeRequests(2);
    assert.ok(hit >= perResync && hit <= 2 * perResync, `scope team-2: ${hit} requests`);
    for (const i of [0, 1, 3, 4]) assert.equal(scopeRequests(i), 0, `scope team-${i} untouched`);
    assert.equal(sim.requests.length, hit, "nothing else was requested");
  });

  it("20 deliveries about one project fetch it at most twice", async () => {
    sim.setLatency(100);
    const target = projects[1]![17]!;
    const answers = await Promise.all(
      Array.from({ length: 20 }, () =>
        deliver("System Hook", {
          event_name: "project_update",
          project_id: target.id,
          path_with_namespace: sim.projectFullPath(target.id),
        }),
      ),
    );
    assert.deepEqual(new Set(answers.map((a) => a.status)), new Set([202]));
    await settled(20);
    const fetches = sim.requests.filter((r) => r.path === `/api/v4/projects/${target.id}`).length;
    assert.ok(fetches >= 1 && fetches <= 2, `${fetches} fetches`);
    assert.equal(sim.requests.length, fetches, "and no resync");
  });

  it("real deliveries still find a project in a new subgroup, a transfer in and a destroy", async () => {
    sim.addSystemHook(`${http.url}${WEBHOOK_PATH}`, SECRET);
    sim.addGroupHook(roots[3]!.id, `${http.url}${WEBHOOK_PATH}`, SECRET);

    // A subgroup natsbind never listed, then a project in it.
    const fresh = sim.createGroup({ name: "Fresh", path: "fresh", parentId: subgroups[3]![0]!.id });
    const created = sim.createProject({ name: "new-service", groupId: fresh.id });
    // A project moved from the outsider group into team-4, and one of team-0 destroyed.
    const stray = sim.createProject({ name: "mover", groupId: outsider.group!.id });
    sim.transferProject(stray.id, subgroups[4]![2]!.id);
    const doomed = projects[0]![42]!;
    sim.deleteProject(doomed.id);
    const deliveries = await sim.deliverPending();
    assert.ok(
      deliveries.every((d) => d.status === 202),
      JSON.stringify(deliveries.map((d) => d.status)),
    );
    await settled(deliveries.length);

    const seen = (key: string): number[] => changes.filter((c) => c.keys.includes(key)).flatMap((c) => c.ids);
    assert.deepEqual(seen("team-3"), [created.id]);
    assert.deepEqual(seen("team-4"), [stray.id]);
    assert.deepEqual(seen("team-0"), [doomed.id]);
    assert.deepEqual(seen("team-1").concat(seen("team-2")), []);
    // Targeted: no scope was relisted (group_create/subgroup_create of "fresh" did resync team-3,
    // at most twice), every other request was a single project fetch.
    for (const i of [0, 1, 2, 4]) assert.equal(scopeRequests(i), 0, `team-${i} not relisted`);
    assert.ok(scopeRequests(3) <= 2 * (1 + Math.ceil(PROJECTS / 100)));
  });
});
