// The GitLab simulator against @gitbeaker/rest, unmodified, plus raw HTTP where gitbeaker hides
// the wire (headers, error bodies), a throwaway webhook receiver and JWT verification with node:crypto.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import {
  createHmac,
  createPublicKey,
  generateKeyPairSync,
  verify as cryptoVerify,
  type JsonWebKey,
} from "node:crypto";
import { Gitlab, GitbeakerRequestError } from "@gitbeaker/rest";
import {
  GitLabSimulator,
  type Delivery,
  type PublicJwk,
  type SimGroup,
  type SimProject,
} from "../support/gitlab-sim.ts";
import { waitFor } from "../support/process.ts";

const TIMEOUT = { timeout: 120_000 };
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const HOOK_TIME_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;

async function get(
  sim: GitLabSimulator,
  pathAndQuery: string,
  headers: Record<string, string> = { "PRIVATE-TOKEN": sim.token },
): Promise<{ status: number; headers: Headers; body: unknown }> {
  const res = await fetch(`${sim.url}${pathAndQuery}`, { headers, signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  const body = (res.headers.get("content-type") ?? "").startsWith("application/json")
    ? JSON.parse(text)
    : text;
  return { status: res.status, headers: res.headers, body };
}

function linkRels(link: string | null): string[] {
  return [...(link ?? "").matchAll(/rel="([^"]+)"/g)].map((m) => m[1] as string);
}

async function requestError(promise: Promise<unknown>): Promise<GitbeakerRequestError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof GitbeakerRequestError, `expected GitbeakerRequestError, got ${String(err)}`);
    return err;
  }
  assert.fail("expected the call to fail");
}

function responseStatus(err: GitbeakerRequestError): number {
  const cause = err.cause as { response?: Response } | undefined;
  return cause?.response?.status ?? -1;
}

describe("gitlab-sim: pagination with gitbeaker", TIMEOUT, () => {
  let sim: GitLabSimulator;
  let api: InstanceType<typeof Gitlab>;
  let root: SimGroup;
  let projects: SimProject[];

  before(async () => {
    sim = await GitLabSimulator.start();
    api = new Gitlab({ host: sim.url, token: sim.token });
    ({ root, projects } = sim.populate({ rootPath: "bench", projects: 2500, depth: 2, fanout: 5 }));
  });
  after(async () => {
    await sim?.stop();
  });

  it("lists 2,500 projects of nested subgroups in exactly 25 requests of 100", async () => {
    sim.resetRequests();
    const listed = await api.Groups.allProjects(root.id, { includeSubgroups: true, perPage: 100 });
    assert.equal(listed.length, 2500);
    assert.deepEqual(new Set(listed.map((p) => p.id)), new Set(projects.map((p) => p.id)));
    assert.equal(new Set(listed.map((p) => p.namespace.id)).size, 31, "projects of root + 30 subgroups");

    const listRequests = sim.requests.filter((r) => /^\/api\/v4\/groups\/[^/]+\/projects$/.test(r.path));
    assert.equal(listRequests.length, 25);
    assert.equal(sim.requests.length, 25);
    assert.deepEqual(
      listRequests.map((r) => r.query.page ?? "1"),
      Array.from({ length: 25 }, (_, i) => String(i + 1)),
    );
    for (const r of listRequests) {
      assert.equal(r.status, 200);
      assert.equal(r.query.per_page, "100");
      assert.equal(r.query.include_subgroups, "true");
      assert.equal(r.headers["private-token"], sim.token);
    }
    // GitLab's default order for group projects is created_at desc.
    assert.equal(listed[0]?.id, projects[projects.length - 1]?.id);
    assert.equal(listed[2499]?.id, projects[0]?.id);
  });

  it("follows Link rel=next, which carries the route id and declared defaults like GitLab's", async () => {
    const first = await get(sim, `/api/v4/groups/${root.id}/projects?include_subgroups=true&per_page=100`);
    assert.equal(first.status, 200);
    assert.equal(first.headers.get("x-total"), "2500");
    assert.equal(first.headers.get("x-total-pages"), "25");
    assert.equal(first.headers.get("x-page"), "1");
    assert.equal(first.headers.get("x-per-page"), "100");
    assert.equal(first.headers.get("x-next-page"), "2");
    assert.equal(first.headers.get("x-prev-page"), "");
    assert.deepEqual(linkRels(first.headers.get("link")), ["next", "first", "last"]);
    const next = /<([^>]+)>; rel="next"/.exec(first.headers.get("link") ?? "")?.[1] ?? "";
    const nextUrl = new URL(next);
    assert.equal(nextUrl.origin, sim.url);
    assert.equal(nextUrl.pathname, `/api/v4/groups/${root.id}/projects`);
    assert.equal(nextUrl.searchParams.get("page"), "2");
    assert.equal(nextUrl.searchParams.get("per_page"), "100");
    assert.equal(nextUrl.searchParams.get("include_subgroups"), "true");
    assert.equal(nextUrl.searchParams.get("id"), String(root.id));
    const keys = [...nextUrl.searchParams.keys()];
    assert.deepEqual(keys, [...keys].sort(), "query keys sorted like Ruby's to_query");

    const last = await get(
      sim,
      `/api/v4/groups/${root.id}/projects?include_subgroups=true&per_page=100&page=25`,
    );
    assert.equal(last.headers.get("x-next-page"), "");
    assert.equal(last.headers.get("x-prev-page"), "24");
    assert.deepEqual(linkRels(last.headers.get("link")), ["prev", "first", "last"]);

    const beyond = await get(
      sim,
      `/api/v4/groups/${root.id}/projects?include_subgroups=true&per_page=100&page=99`,
    );
    assert.deepEqual(beyond.body, []);
    assert.equal(beyond.headers.get("x-prev-page"), "");

    const capped = await get(sim, `/api/v4/groups/${root.id}/projects?include_subgroups=true&per_page=500`);
    assert.equal(capped.headers.get("x-per-page"), "100");
    assert.equal((capped.body as unknown[]).length, 100);
    const defaults = await get(sim, `/api/v4/groups/${root.id}/projects`);
    assert.equal(defaults.headers.get("x-per-page"), "20");
    assert.equal(
      defaults.headers.get("x-total"),
      String(projects.filter((p) => p.groupId === root.id).length),
    );
  });

  it("lists descendant groups (default per_page 20, ordered by name) across pages", async () => {
    sim.resetRequests();
    // gitbeaker's typings want an options object here.
    const groups = await api.Groups.allDescendantGroups(root.id, {});
    assert.equal(groups.length, 30);
    assert.equal(sim.requests.length, 2);
    const names = groups.map((g) => g.name);
    assert.deepEqual(names, [...names].sort());
    for (const g of groups) assert.match(String(g.full_path), /^bench\/g1-\d(\/g2-\d)?$/);
  });

  it("orders by id asc when asked", async () => {
    const page = await api.Groups.allProjects(root.id, {
      includeSubgroups: true,
      perPage: 100,
      orderBy: "id",
      sort: "asc",
      maxPages: 1,
    });
    assert.deepEqual(
      page.map((p) => p.id),
      projects.slice(0, 100).map((p) => p.id),
    );
  });
});

describe("gitlab-sim: more than 10,000 records", TIMEOUT, () => {
  let sim: GitLabSimulator;
  let big: SimGroup;
  let exact: SimGroup;

  before(async () => {
    sim = await GitLabSimulator.start();
    big = sim.populate({ rootPath: "big", projects: 10_001, depth: 1, fanout: 4 }).root;
    exact = sim.populate({ rootPath: "exact", projects: 10_000, depth: 1, fanout: 4 }).root;
  });
  after(async () => {
    await sim?.stop();
  });

  it("drops X-Total, X-Total-Pages and rel=last above 10,000 records", async () => {
    const first = await get(sim, `/api/v4/groups/${big.id}/projects?include_subgroups=true&per_page=100`);
    assert.equal(first.status, 200);
    assert.equal((first.body as unknown[]).length, 100);
    assert.equal(first.headers.get("x-total"), null);
    assert.equal(first.headers.get("x-total-pages"), null);
    assert.equal(first.headers.get("x-next-page"), "2");
    assert.equal(first.headers.get("x-page"), "1");
    assert.deepEqual(linkRels(first.headers.get("link")), ["next", "first"]);

    const last = await get(
      sim,
      `/api/v4/groups/${big.id}/projects?include_subgroups=true&per_page=100&page=101`,
    );
    assert.equal((last.body as unknown[]).length, 1);
    assert.equal(last.headers.get("x-next-page"), "");
    assert.equal(last.headers.get("x-total"), null);
    assert.deepEqual(linkRels(last.headers.get("link")), ["prev", "first"]);
  });

  it("keeps them at exactly 10,000", async () => {
    const res = await get(sim, `/api/v4/groups/${exact.id}/projects?include_subgroups=true&per_page=100`);
    assert.equal(res.headers.get("x-total"), "10000");
    assert.equal(res.headers.get("x-total-pages"), "100");
    assert.deepEqual(linkRels(res.headers.get("link")), ["next", "first", "last"]);
  });

  it("gitbeaker's showExpanded then reports total NaN", async () => {
    const api = new Gitlab({ host: sim.url, token: sim.token });
    const res = await api.Groups.allProjects(big.id, {
      includeSubgroups: true,
      perPage: 100,
      maxPages: 1,
      showExpanded: true,
    });
    assert.equal(res.data.length, 100);
    assert.ok(Number.isNaN(res.paginationInfo.total));
    assert.ok(Number.isNaN(res.paginationInfo.totalPages));
    assert.equal(res.paginationInfo.next, 2);
  });
});

describe("gitlab-sim: lookups, environments, errors", TIMEOUT, () => {
  let sim: GitLabSimulator;
  let api: InstanceType<typeof Gitlab>;
  let acme: SimGroup;
  let platform: SimGroup;
  let project: SimProject;

  before(async () => {
    sim = await GitLabSimulator.start({ token: "glpat-main-token" });
    api = new Gitlab({ host: sim.url, token: sim.token });
    acme = sim.createGroup({ name: "Acme", path: "acme" });
    platform = sim.createGroup({ name: "Platform", path: "platform", parentId: acme.id });
    project = sim.createProject({ name: "API", path: "api", groupId: platform.id, visibility: "internal" });
    sim.addEnvironment(project.id, { name: "production" });
    sim.addEnvironment(project.id, { name: "review/feature-x" });
    sim.addEnvironment(project.id, { name: "staging", state: "stopped" });
  });
  after(async () => {
    await sim?.stop();
  });

  it("finds groups and projects by URL-encoded full path and by id", async () => {
    sim.resetRequests();
    const g = await api.Groups.show("acme/platform");
    assert.equal(g.id, platform.id);
    assert.equal(g.full_path, "acme/platform");
    assert.equal(g.full_name, "Acme / Platform");
    assert.equal(g.parent_id, acme.id);
    assert.equal(g.web_url, `${sim.url}/groups/acme/platform`);
    assert.equal(sim.requests[0]?.path, "/api/v4/groups/acme%2Fplatform");

    const p = await api.Projects.show("acme/platform/api");
    assert.equal(sim.requests[1]?.path, "/api/v4/projects/acme%2Fplatform%2Fapi");
    assert.equal(p.id, project.id);
    assert.equal(p.path_with_namespace, "acme/platform/api");
    assert.equal(p.name_with_namespace, "Acme / Platform / API");
    assert.equal(p.visibility, "internal");
    assert.equal(p.default_branch, "main");
    assert.equal(p.archived, false);
    assert.deepEqual(p.namespace, {
      id: platform.id,
      name: "Platform",
      path: "platform",
      kind: "group",
      full_path: "acme/platform",
      parent_id: acme.id,
      avatar_url: null,
      web_url: `${sim.url}/groups/acme/platform`,
    });
    assert.equal((await api.Projects.show(project.id)).path, "api");
    assert.equal((await api.Projects.show("ACME/Platform/API")).id, project.id, "paths are case-insensitive");
    assert.equal((await api.Groups.show(acme.id)).full_path, "acme");

    const unencoded = await get(sim, "/api/v4/groups/acme/platform");
    assert.equal(unencoded.status, 404);
    assert.deepEqual(unencoded.body, { error: "404 Not Found" });
  });

  it("lists environments with the states filter", async () => {
    const available = await api.Environments.all(project.id, { states: "available" });
    assert.deepEqual(
      available.map((e) => [e.name, e.state, e.tier]),
      [
        ["production", "available", "production"],
        ["review/feature-x", "available", "development"],
      ],
    );
    const review = available[1];
    assert.ok(review);
    assert.match(review.slug, /^review-feature-x-[a-z0-9]{6}$/);
    assert.equal(available[0]?.slug, "production");
    assert.deepEqual(Object.keys(available[0] ?? {}).slice(0, 5), [
      "id",
      "name",
      "slug",
      "description",
      "external_url",
    ]);
    const stopped = await api.Environments.all("acme/platform/api", { states: "stopped" });
    assert.deepEqual(
      stopped.map((e) => e.name),
      ["staging"],
    );
    const bad = await get(sim, `/api/v4/projects/${project.id}/environments?states=bogus`);
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.body, { error: "states does not have a valid value" });
  });

  it("follows project redirects after a rename (not for groups), until the path is reclaimed", async () => {
    const g = sim.createGroup({ name: "Tmp", path: "tmp" });
    const moved = sim.createProject({ name: "Svc", path: "svc", groupId: g.id });
    sim.renameProject(moved.id, { path: "svc-v2" });
    const viaOld = await api.Projects.show("tmp/svc");
    assert.equal(viaOld.id, moved.id);
    assert.equal(viaOld.path_with_namespace, "tmp/svc-v2");
    const squatter = sim.createProject({ name: "Svc", path: "svc", groupId: g.id });
    assert.equal((await api.Projects.show("tmp/svc")).id, squatter.id, "a new project reclaims the old path");

    sim.renameGroup(g.id, { path: "tmp2" });
    const err = await requestError(api.Groups.show("tmp"));
    assert.equal(err.message, "404 Group Not Found");
    assert.equal(
      (await api.Projects.show("tmp/svc-v2")).id,
      moved.id,
      "projects below follow the group rename",
    );
    sim.deleteGroup(g.id);
  });

  it("answers 401 / 403 / 404 with GitLab's bodies", async () => {
    const bad = await get(sim, `/api/v4/groups/${acme.id}`, { "PRIVATE-TOKEN": "glpat-wrong" });
    assert.equal(bad.status, 401);
    assert.deepEqual(bad.body, { message: "401 Unauthorized" });
    const badBearer = await get(sim, `/api/v4/groups/${acme.id}`, { Authorization: "Bearer glpat-wrong" });
    assert.equal(badBearer.status, 401);
    const bearer = await get(sim, `/api/v4/groups/${acme.id}`, { Authorization: `Bearer ${sim.token}` });
    assert.equal(bearer.status, 200);

    sim.addToken("glpat-read-user", { scopes: ["read_user"] });
    const scoped = await get(sim, `/api/v4/groups/${acme.id}`, { "PRIVATE-TOKEN": "glpat-read-user" });
    assert.equal(scoped.status, 403);
    assert.deepEqual(scoped.body, {
      error: "insufficient_scope",
      error_description: "The request requires higher privileges than provided by the access token.",
      scope: "api read_api",
    });
    assert.match(scoped.headers.get("www-authenticate") ?? "", /error="insufficient_scope"/);
    const scopedApi = new Gitlab({ host: sim.url, token: "glpat-read-user" });
    const scopedErr = await requestError(scopedApi.Groups.show(acme.id));
    assert.equal(scopedErr.message, "insufficient_scope");
    assert.equal(responseStatus(scopedErr), 403);
    sim.addToken("glpat-read-api", { scopes: ["read_api"] });
    assert.equal(
      (await get(sim, `/api/v4/groups/${acme.id}`, { "PRIVATE-TOKEN": "glpat-read-api" })).status,
      200,
    );

    const noGroup = await get(sim, "/api/v4/groups/999999");
    assert.equal(noGroup.status, 404);
    assert.deepEqual(noGroup.body, { message: "404 Group Not Found" });
    const noProject = await get(sim, `/api/v4/projects/${encodeURIComponent("acme/nope")}`);
    assert.deepEqual(noProject.body, { message: "404 Project Not Found" });
    const err = await requestError(api.Projects.show(999999));
    assert.equal(err.message, "404 Project Not Found");
    assert.equal(responseStatus(err), 404);
    const envErr = await requestError(api.Environments.all(999999));
    assert.equal(envErr.message, "404 Project Not Found");

    // No token at all is anonymous, not 401: private and internal things are simply not found.
    const anonymous = await get(sim, `/api/v4/groups/${acme.id}`, {});
    assert.equal(anonymous.status, 404);
    assert.deepEqual(anonymous.body, { message: "404 Group Not Found" });
    const open = sim.createGroup({ name: "Open", path: "open", visibility: "public" });
    assert.equal((await get(sim, `/api/v4/groups/${open.id}`, {})).status, 200);

    sim.addToken("glpat-revoked");
    sim.removeToken("glpat-revoked");
    assert.equal(
      (await get(sim, `/api/v4/groups/${acme.id}`, { "PRIVATE-TOKEN": "glpat-revoked" })).status,
      401,
    );

    const unknown = await get(sim, "/api/v4/nothing/here");
    assert.deepEqual([unknown.status, unknown.body], [404, { error: "404 Not Found" }]);
    const invalid = await get(sim, `/api/v4/groups/${acme.id}/projects?include_subgroups=maybe`);
    assert.deepEqual([invalid.status, invalid.body], [400, { error: "include_subgroups is invalid" }]);
  });
});

describe("gitlab-sim: fault injection and latency", TIMEOUT, () => {
  let sim: GitLabSimulator;
  let api: InstanceType<typeof Gitlab>;
  let project: SimProject;

  before(async () => {
    sim = await GitLabSimulator.start();
    api = new Gitlab({ host: sim.url, token: sim.token });
    const g = sim.createGroup({ name: "Acme", path: "acme" });
    project = sim.createProject({ name: "API", groupId: g.id });
  });
  after(async () => {
    await sim?.stop();
  });

  it("injects 429 with Retry-After and RateLimit-* headers", async () => {
    const reset = Math.floor(Date.now() / 1000) + 7;
    sim.failNext(1, { status: 429, retryAfterSeconds: 7, rateLimitResetEpochS: reset });
    const res = await get(sim, `/api/v4/projects/${project.id}`);
    assert.equal(res.status, 429);
    assert.equal(res.headers.get("retry-after"), "7");
    assert.equal(res.headers.get("ratelimit-limit"), "600");
    assert.equal(res.headers.get("ratelimit-remaining"), "0");
    assert.equal(res.headers.get("ratelimit-reset"), String(reset));
    assert.equal(res.headers.get("ratelimit-resettime"), new Date(reset * 1000).toUTCString());
    assert.equal(res.body, "Retry later\n");
    assert.equal(
      (await get(sim, `/api/v4/projects/${project.id}`)).status,
      200,
      "only the next request fails",
    );
  });

  it("gitbeaker retries 429 and 502 within milliseconds, ignoring Retry-After", async () => {
    sim.resetRequests();
    sim.failNext(2, { status: 429, retryAfterSeconds: 60 });
    sim.failNext(1, { status: 502 });
    const started = performance.now();
    const p = await api.Projects.show(project.id);
    const elapsed = performance.now() - started;
    assert.equal(p.id, project.id);
    assert.deepEqual(
      sim.requests.map((r) => r.status),
      [429, 429, 502, 200],
    );
    assert.ok(elapsed < 5_000, `retried without honouring Retry-After: ${elapsed.toFixed(0)} ms`);
  });

  it("gitbeaker does not retry 500 or 503", async () => {
    for (const status of [500, 503] as const) {
      sim.resetRequests();
      sim.failNext(1, { status, retryAfterSeconds: 3 });
      const err = await requestError(api.Projects.show(project.id));
      assert.equal(responseStatus(err), status);
      assert.equal(err.message, status === 500 ? "500 Internal Server Error" : "503 Service Unavailable");
      assert.equal(sim.requests.length, 1);
    }
    sim.failNext(1, { status: 503, retryAfterSeconds: 3 });
    const raw = await get(sim, `/api/v4/projects/${project.id}`);
    assert.deepEqual(
      [raw.status, raw.body, raw.headers.get("retry-after")],
      [503, { message: "503 Service Unavailable" }, "3"],
    );
  });

  it("pathIncludes limits the fault to matching requests", async () => {
    sim.failNext(1, { status: 500, pathIncludes: "/environments" });
    assert.equal((await get(sim, `/api/v4/projects/${project.id}`)).status, 200);
    assert.equal((await get(sim, `/api/v4/projects/${project.id}/environments`)).status, 500);
    assert.equal((await get(sim, `/api/v4/projects/${project.id}/environments`)).status, 200);
  });

  it("delays API answers by the configured latency", async () => {
    sim.setLatency(120);
    const started = performance.now();
    assert.equal((await get(sim, `/api/v4/projects/${project.id}`)).status, 200);
    const elapsed = performance.now() - started;
    sim.setLatency(0);
    assert.ok(elapsed >= 110, `latency ${elapsed.toFixed(0)} ms`);
  });
});

interface Received {
  path: string;
  headers: IncomingHttpHeaders;
  body: Record<string, unknown>;
}

describe("gitlab-sim: webhooks", TIMEOUT, () => {
  let sim: GitLabSimulator;
  let receiver: Server;
  let receiverUrl: string;
  const received: Received[] = [];
  let flakyFailures = 1;

  before(async () => {
    sim = await GitLabSimulator.start();
    receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const path = req.url ?? "/";
        received.push({
          path,
          headers: req.headers,
          body: JSON.parse(Buffer.concat(chunks).toString("utf8")),
        });
        if (path === "/flaky" && flakyFailures > 0) {
          flakyFailures -= 1;
          res.writeHead(500).end("boom");
          return;
        }
        res.writeHead(200).end("ok");
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
    receiverUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
  });
  after(async () => {
    await sim?.stop();
    receiver?.closeAllConnections();
    await new Promise<void>((resolve) => (receiver ? receiver.close(() => resolve()) : resolve()));
  });

  it("delivers system hook and group webhook events with GitLab's headers and payloads", async () => {
    const acme = sim.createGroup({ name: "Acme", path: "acme" });
    assert.equal(sim.pendingDeliveries().length, 0, "no hooks yet, nothing queued");
    sim.addSystemHook(`${receiverUrl}/system`, "sys-secret");
    sim.addGroupHook(acme.id, `${receiverUrl}/group`, "grp-secret");

    const platform = sim.createGroup({ name: "Platform", path: "platform", parentId: acme.id });
    const p = sim.createProject({ name: "API", path: "api", groupId: platform.id, visibility: "internal" });
    sim.renameProject(p.id, { path: "api-v2" });
    sim.renameProject(p.id, { name: "API v2" });
    const other = sim.createGroup({ name: "Other", path: "other" });
    sim.transferProject(p.id, other.id);
    sim.deleteProject(p.id);
    const q = sim.createProject({ name: "Worker", path: "worker", groupId: platform.id });
    sim.deleteGroup(platform.id);
    sim.renameGroup(other.id, { name: "Other Two", path: "other2" });

    const deliveries = await sim.deliverPending();
    assert.equal(sim.pendingDeliveries().length, 0);
    const summary = deliveries.map((d) => `${new URL(d.url).pathname} ${d.event} ${d.eventName}`);
    assert.deepEqual(summary, [
      "/system System Hook group_create",
      "/group Subgroup Hook subgroup_create",
      "/system System Hook project_create",
      "/group Project Hook project_create",
      "/system System Hook project_rename",
      "/system System Hook project_update",
      "/system System Hook group_create",
      "/system System Hook project_transfer",
      "/system System Hook project_destroy",
      "/system System Hook project_create",
      "/group Project Hook project_create",
      "/system System Hook project_destroy",
      "/group Project Hook project_destroy",
      "/system System Hook group_destroy",
      "/group Subgroup Hook subgroup_destroy",
      "/system System Hook group_rename",
    ]);
    assert.ok(deliveries.every((d) => d.status === 200 && d.attempt === 1));
    assert.equal(received.length, deliveries.length);

    // Headers.
    for (const [i, r] of received.entries()) {
      const d = deliveries[i] as Delivery;
      assert.equal(r.headers["content-type"], "application/json");
      assert.equal(r.headers["user-agent"], "GitLab/17.6.0");
      assert.equal(r.headers["x-gitlab-event"], d.event);
      assert.equal(r.headers["x-gitlab-token"], r.path === "/system" ? "sys-secret" : "grp-secret");
      assert.equal(r.headers["x-gitlab-instance"], sim.url);
      assert.match(String(r.headers["x-gitlab-webhook-uuid"]), UUID_RE);
      assert.equal(r.headers["x-gitlab-event-uuid"], d.uuid);
      assert.equal(r.headers["idempotency-key"], d.idempotencyKey);
      assert.deepEqual(r.body, d.payload);
      assert.match(String(r.body.created_at), HOOK_TIME_RE);
      assert.match(String(r.body.updated_at), HOOK_TIME_RE);
    }
    // One mutation, one X-Gitlab-Event-UUID; every delivery its own Idempotency-Key.
    assert.equal(deliveries[2]?.uuid, deliveries[3]?.uuid);
    assert.notEqual(deliveries[3]?.uuid, deliveries[4]?.uuid);
    assert.equal(new Set(deliveries.slice(11, 15).map((d) => d.uuid)).size, 1, "deleteGroup is one mutation");
    assert.equal(new Set(deliveries.map((d) => d.idempotencyKey)).size, deliveries.length);

    const body = (i: number): Record<string, unknown> => (received[i] as Received).body;
    assert.deepEqual(body(0), {
      created_at: body(0).created_at,
      updated_at: body(0).updated_at,
      event_name: "group_create",
      name: "Platform",
      path: "platform",
      full_path: "acme/platform",
      group_id: platform.id,
    });
    assert.deepEqual(body(1), {
      created_at: body(1).created_at,
      updated_at: body(1).updated_at,
      event_name: "subgroup_create",
      name: "Platform",
      path: "platform",
      full_path: "acme/platform",
      group_id: platform.id,
      parent_group_id: acme.id,
      parent_name: "Acme",
      parent_path: "acme",
      parent_full_path: "acme",
    });
    assert.deepEqual(Object.keys(body(2)).sort(), [
      "created_at",
      "event_name",
      "name",
      "owner_email",
      "owner_name",
      "owners",
      "path",
      "path_with_namespace",
      "project_id",
      "project_namespace_id",
      "project_visibility",
      "updated_at",
    ]);
    assert.equal(body(2).project_id, p.id);
    assert.equal(body(2).path_with_namespace, "acme/platform/api");
    assert.equal(body(2).project_visibility, "internal");
    assert.equal(body(2).owner_name, "Platform");
    assert.equal(body(2).project_namespace_id, p.projectNamespaceId);
    assert.notEqual(body(2).project_namespace_id, platform.id, "project namespace, not the group");
    assert.deepEqual(body(3), {
      event_name: "project_create",
      created_at: body(3).created_at,
      updated_at: body(3).updated_at,
      name: "API",
      path: "api",
      path_with_namespace: "acme/platform/api",
      project_id: p.id,
      project_namespace_id: p.projectNamespaceId,
      owners: [{ name: "Administrator", email: "admin@example.com" }],
      project_visibility: "internal",
    });
    assert.equal(body(4).path_with_namespace, "acme/platform/api-v2");
    assert.equal(body(4).old_path_with_namespace, "acme/platform/api");
    assert.equal(body(5).name, "API v2");
    assert.equal(body(5).old_path_with_namespace, undefined);
    assert.equal(body(7).path_with_namespace, "other/api-v2");
    assert.equal(body(7).old_path_with_namespace, "acme/platform/api-v2");
    assert.equal(body(8).project_id, p.id);
    assert.equal(body(8).path_with_namespace, "other/api-v2");
    assert.equal(body(12).project_id, q.id);
    assert.equal(body(14).group_id, platform.id);
    assert.equal(body(14).parent_full_path, "acme");
    assert.deepEqual(body(15), {
      created_at: body(15).created_at,
      updated_at: body(15).updated_at,
      event_name: "group_rename",
      name: "Other Two",
      path: "other2",
      full_path: "other2",
      group_id: other.id,
      old_path: "other",
      old_full_path: "other",
    });
  });

  it("redelivers with the same Idempotency-Key and X-Gitlab-Event-UUID", async () => {
    received.length = 0;
    const hookId = sim.addSystemHook(`${receiverUrl}/flaky`, "");
    sim.createGroup({ name: "Third", path: "third" });
    const deliveries = await sim.deliverPending();
    const flaky = deliveries.find((d) => d.hookId === hookId);
    assert.ok(flaky);
    assert.equal(flaky.status, 500);
    const again = await sim.redeliver(flaky);
    assert.equal(again.status, 200);
    assert.equal(again.attempt, 2);
    assert.equal(again.idempotencyKey, flaky.idempotencyKey);
    assert.equal(again.uuid, flaky.uuid);
    assert.notEqual(again.webhookUuid, flaky.webhookUuid);
    const atFlaky = received.filter((r) => r.path === "/flaky");
    assert.equal(atFlaky.length, 2);
    assert.equal(atFlaky[0]?.headers["idempotency-key"], atFlaky[1]?.headers["idempotency-key"]);
    assert.equal(atFlaky[0]?.headers["x-gitlab-event-uuid"], atFlaky[1]?.headers["x-gitlab-event-uuid"]);
    assert.equal(atFlaky[0]?.headers["x-gitlab-token"], undefined, "no secret, no X-Gitlab-Token");
    assert.deepEqual(atFlaky[0]?.body, atFlaky[1]?.body);
  });

  it("reports a receiver that cannot be reached with status 0", async () => {
    const dead = createServer();
    await new Promise<void>((resolve) => dead.listen(0, "127.0.0.1", resolve));
    const deadUrl = `http://127.0.0.1:${(dead.address() as AddressInfo).port}/hook`;
    await new Promise<void>((resolve) => dead.close(() => resolve()));
    const g = sim.createGroup({ name: "Fourth", path: "fourth" });
    await sim.deliverPending();
    sim.addGroupHook(g.id, deadUrl, "x");
    sim.createProject({ name: "P", groupId: g.id });
    const deliveries = await sim.deliverPending();
    const failed = deliveries.filter((d) => d.url === deadUrl);
    assert.equal(failed.length, 1);
    assert.equal(failed[0]?.status, 0);
    assert.ok(failed[0]?.error);
  });
});

describe("gitlab-sim: OIDC and CI ID tokens", TIMEOUT, () => {
  let sim: GitLabSimulator;
  let group: SimGroup;
  let project: SimProject;

  before(async () => {
    sim = await GitLabSimulator.start();
    const acme = sim.createGroup({ name: "Acme", path: "acme" });
    group = sim.createGroup({ name: "Platform", path: "platform", parentId: acme.id });
    project = sim.createProject({ name: "API", path: "api", groupId: group.id, visibility: "internal" });
    sim.addEnvironment(project.id, { name: "production" });
  });
  after(async () => {
    await sim?.stop();
  });

  async function jwks(): Promise<PublicJwk[]> {
    const res = await fetch(`${sim.url}/oauth/discovery/keys`);
    assert.equal(res.status, 200);
    return ((await res.json()) as { keys: PublicJwk[] }).keys;
  }

  function decode(token: string): { header: Record<string, unknown>; claims: Record<string, unknown> } {
    const [h, p] = token.split(".");
    return {
      header: JSON.parse(Buffer.from(h ?? "", "base64url").toString("utf8")),
      claims: JSON.parse(Buffer.from(p ?? "", "base64url").toString("utf8")),
    };
  }

  function verifyWith(keys: PublicJwk[], token: string): boolean {
    const [h, p, s] = token.split(".");
    const { header } = decode(token);
    const jwk = keys.find((k) => k.kid === header.kid);
    if (!jwk || header.alg !== "RS256") return false;
    const key = createPublicKey({ key: { ...jwk } satisfies JsonWebKey, format: "jwk" });
    return cryptoVerify("sha256", Buffer.from(`${h}.${p}`), key, Buffer.from(s ?? "", "base64url"));
  }

  it("serves discovery and JWKS without authentication, outside fault injection", async () => {
    sim.failNext(1, { status: 503 });
    const res = await fetch(`${sim.url}/.well-known/openid-configuration`);
    assert.equal(res.status, 200);
    const doc = (await res.json()) as Record<string, unknown>;
    assert.equal(doc.issuer, sim.url);
    assert.equal(sim.issuer, sim.url);
    assert.equal(doc.jwks_uri, `${sim.url}/oauth/discovery/keys`);
    assert.deepEqual(doc.id_token_signing_alg_values_supported, ["RS256"]);
    assert.deepEqual(doc.subject_types_supported, ["public"]);
    const keys = await jwks();
    assert.equal(keys.length, 1);
    assert.deepEqual(Object.keys(keys[0] ?? {}).sort(), ["alg", "e", "kid", "kty", "n", "use"]);
    assert.equal(keys[0]?.kid, sim.signingKeyId);
    assert.deepEqual(
      sim.oidcRequests.map((r) => [r.path, r.status]),
      [
        ["/.well-known/openid-configuration", 200],
        ["/oauth/discovery/keys", 200],
      ],
    );
    assert.equal(
      (await get(sim, `/api/v4/projects/${project.id}`)).status,
      503,
      "the fault waited for the API",
    );
  });

  it("mints RS256 ID tokens that verify against the JWKS and carry GitLab's claims", async () => {
    const nowS = Math.floor(Date.now() / 1000);
    const token = sim.mintIdToken({
      projectId: project.id,
      aud: "https://natsbind.example",
      environment: "production",
      environmentProtected: true,
      nowS,
    });
    const keys = await jwks();
    assert.ok(verifyWith(keys, token));
    const [h, p, s] = token.split(".");
    const tampered = `${h}.${Buffer.from(JSON.stringify({ ...decode(token).claims, project_id: "999999" })).toString("base64url")}.${s}`;
    assert.equal(verifyWith(keys, tampered), false);
    assert.ok(p);

    const { header, claims } = decode(token);
    assert.deepEqual(header, { kid: sim.signingKeyId, typ: "JWT", alg: "RS256" });
    assert.equal(claims.iss, sim.url);
    assert.equal(claims.aud, "https://natsbind.example");
    assert.equal(claims.sub, "project_path:acme/platform/api:ref_type:branch:ref:main");
    assert.equal(claims.project_id, String(project.id));
    assert.equal(claims.project_path, "acme/platform/api");
    assert.equal(claims.namespace_id, String(group.id));
    assert.equal(claims.namespace_path, "acme/platform");
    assert.equal(claims.ref, "main");
    assert.equal(claims.ref_type, "branch");
    assert.equal(claims.ref_path, "refs/heads/main");
    assert.equal(claims.ref_protected, "true");
    assert.equal(claims.environment, "production");
    assert.equal(claims.environment_protected, "true");
    assert.equal(claims.deployment_tier, "production");
    assert.equal(claims.environment_action, "start");
    assert.equal(claims.project_visibility, "internal");
    assert.equal(claims.runner_environment, "self-hosted");
    assert.equal(
      claims.ci_config_ref_uri,
      `${new URL(sim.url).host}/acme/platform/api//.gitlab-ci.yml@refs/heads/main`,
    );
    assert.match(String(claims.sha), /^[0-9a-f]{40}$/);
    assert.equal(claims.ci_config_sha, claims.sha);
    assert.match(String(claims.jti), UUID_RE);
    for (const name of ["namespace_id", "project_id", "user_id", "pipeline_id", "job_id"]) {
      assert.equal(typeof claims[name], "string", name);
      assert.match(String(claims[name]), /^\d+$/, name);
    }
    for (const name of ["user_login", "user_email", "user_access_level", "pipeline_source"]) {
      assert.equal(typeof claims[name], "string", name);
    }
    assert.equal(typeof claims.runner_id, "number", "GitLab sends runner_id as a number");
    assert.equal(claims.iat, nowS);
    assert.equal(claims.nbf, nowS - 5);
    assert.equal(claims.exp, nowS + 3600);
  });

  it("varies ref, tag, audience list, expiry and extra claims", () => {
    const { claims } = decode(
      sim.mintIdToken({
        projectId: project.id,
        aud: ["a", "b"],
        ref: "v1.2.3",
        refType: "tag",
        expiresInS: 300,
        nowS: 1_700_000_000,
        extra: { user_login: "alice", custom: "x" },
      }),
    );
    assert.deepEqual(claims.aud, ["a", "b"]);
    assert.equal(claims.sub, "project_path:acme/platform/api:ref_type:tag:ref:v1.2.3");
    assert.equal(claims.ref_path, "refs/tags/v1.2.3");
    assert.equal(claims.ref_protected, "false");
    assert.equal(claims.exp, 1_700_000_300);
    assert.equal(claims.user_login, "alice");
    assert.equal(claims.custom, "x");
    for (const name of ["environment", "environment_protected", "deployment_tier", "environment_action"]) {
      assert.equal(name in claims, false, `${name} only when the job has an environment`);
    }
    const feature = decode(sim.mintIdToken({ projectId: project.id, aud: "x", ref: "feature" })).claims;
    assert.equal(feature.ref_protected, "false");
    assert.notEqual(feature.job_id, claims.job_id);
  });

  it("rotates the signing key; the JWKS serves old and new", async () => {
    const oldKid = sim.signingKeyId;
    const before = sim.mintIdToken({ projectId: project.id, aud: "x" });
    sim.rotateSigningKey();
    assert.notEqual(sim.signingKeyId, oldKid);
    const after = sim.mintIdToken({ projectId: project.id, aud: "x" });
    assert.equal(decode(after).header.kid, sim.signingKeyId);
    const keys = await jwks();
    assert.deepEqual(keys.map((k) => k.kid).sort(), [oldKid, sim.signingKeyId].sort());
    assert.ok(verifyWith(keys, before));
    assert.ok(verifyWith(keys, after));

    sim.rotateSigningKey({ keepOld: false });
    const only = await jwks();
    assert.equal(only.length, 1);
    assert.equal(verifyWith(only, after), false, "retired kid is gone");
  });

  it("publicJwks() is what the JWKS endpoint serves, without a logged request", async () => {
    sim.resetRequests();
    const served = await jwks();
    assert.equal(sim.oidcRequests.length, 1);
    assert.deepEqual(sim.publicJwks().keys, served);
    assert.equal(sim.oidcRequests.length, 1);
  });

  it("mints with a caller-given header and signer (hostile tokens)", async () => {
    const keys = await jwks();
    const parts = (token: string): string[] => token.split(".");

    const unsigned = sim.mintIdToken({ projectId: project.id, aud: "x", signWith: "unsigned" });
    assert.deepEqual(decode(unsigned).header, { kid: sim.signingKeyId, typ: "JWT", alg: "none" });
    assert.equal(parts(unsigned)[2], "");

    const hs = sim.mintIdToken({ projectId: project.id, aud: "x", signWith: { hmacSecret: "s3cret" } });
    assert.equal(decode(hs).header.alg, "HS256");
    const [h, p, s] = parts(hs);
    assert.equal(s, createHmac("sha256", "s3cret").update(`${h}.${p}`).digest("base64url"));

    const { privateKey: ecKey, publicKey: ecPublic } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const es = sim.mintIdToken({ projectId: project.id, aud: "x", signWith: { ecKey } });
    assert.equal(decode(es).header.alg, "ES256");
    const [eh, ep, esig] = parts(es);
    assert.equal(Buffer.from(esig ?? "", "base64url").length, 64, "JWS (IEEE P1363) signature");
    assert.ok(
      cryptoVerify(
        "sha256",
        Buffer.from(`${eh}.${ep}`),
        { key: ecPublic, dsaEncoding: "ieee-p1363" },
        Buffer.from(esig ?? "", "base64url"),
      ),
    );

    const { privateKey: rsaKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const foreign = sim.mintIdToken({ projectId: project.id, aud: "x", signWith: { rsaKey } });
    assert.deepEqual(decode(foreign).header, { kid: sim.signingKeyId, typ: "JWT", alg: "RS256" });
    assert.equal(verifyWith(keys, foreign), false, "GitLab's kid, someone else's key");

    const lying = sim.mintIdToken({
      projectId: project.id,
      aud: "x",
      header: { alg: "HS256", kid: undefined, typ: undefined, extra: 1 },
      extra: { nbf: undefined },
    });
    assert.deepEqual(decode(lying).header, { alg: "HS256", extra: 1 });
    assert.equal("nbf" in decode(lying).claims, false);
    const kid = decode(lying).header.kid;
    assert.equal(kid, undefined);
    // Still signed with GitLab's RSA key, whatever the header says.
    const [lh, lp, ls] = parts(lying);
    const gitlabKey = createPublicKey({ key: { ...keys.at(-1)! } satisfies JsonWebKey, format: "jwk" });
    assert.ok(
      cryptoVerify("sha256", Buffer.from(`${lh}.${lp}`), gitlabKey, Buffer.from(ls ?? "", "base64url")),
    );
  });

  it("fails OIDC requests on demand: status, body, chunked body, redirect, hang; count and path", async () => {
    sim.resetRequests();
    const keysUrl = `${sim.url}/oauth/discovery/keys`;
    const discoveryUrl = `${sim.url}/.well-known/openid-configuration`;

    sim.failOidc({ status: 503, pathIncludes: "/oauth/discovery/keys", count: 1 });
    const down = await fetch(keysUrl);
    assert.equal(down.status, 503);
    assert.deepEqual(await down.json(), { message: "503 Service Unavailable" });
    assert.equal((await fetch(discoveryUrl)).status, 200, "another path is not affected");
    assert.equal((await fetch(keysUrl)).status, 200, "count 1 is used up");

    sim.failOidc({ body: "<html>", contentType: "text/html" });
    for (const url of [keysUrl, discoveryUrl]) {
      const res = await fetch(url);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("content-type"), "text/html");
      assert.equal(await res.text(), "<html>");
    }
    sim.clearOidcFaults();
    const restored = (await (await fetch(keysUrl)).json()) as { keys: PublicJwk[] };
    assert.deepEqual(restored, sim.publicJwks());

    const big = "x".repeat(300_000);
    sim.failOidc({ body: big, count: 1 });
    const sized = await fetch(keysUrl);
    assert.equal(sized.headers.get("content-length"), String(big.length));
    assert.equal((await sized.text()).length, big.length);
    sim.failOidc({ body: big, chunked: true, count: 1 });
    const chunked = await fetch(keysUrl);
    assert.equal(chunked.headers.get("content-length"), null);
    assert.equal(chunked.headers.get("transfer-encoding"), "chunked");
    assert.equal(await chunked.text(), big);

    sim.failOidc({ redirectTo: "https://elsewhere.example/keys", count: 1 });
    const moved = await fetch(keysUrl, { redirect: "manual" });
    assert.equal(moved.status, 302);
    assert.equal(moved.headers.get("location"), "https://elsewhere.example/keys");

    sim.failOidc({ hang: true, count: 1 });
    const abort = new AbortController();
    const hung = fetch(keysUrl, { signal: abort.signal });
    await waitFor(async () => sim.oidcRequests.at(-1)?.status === 0, { what: "the hung request" });
    abort.abort();
    await assert.rejects(hung, { name: "AbortError" });

    assert.deepEqual(
      sim.oidcRequests.map((r) => [r.path, r.status]),
      [
        ["/oauth/discovery/keys", 503],
        ["/.well-known/openid-configuration", 200],
        ["/oauth/discovery/keys", 200],
        ["/oauth/discovery/keys", 200],
        ["/.well-known/openid-configuration", 200],
        ["/oauth/discovery/keys", 200],
        ["/oauth/discovery/keys", 200],
        ["/oauth/discovery/keys", 200],
        ["/oauth/discovery/keys", 302],
        ["/oauth/discovery/keys", 0],
      ],
    );
    assert.equal((await fetch(keysUrl)).status, 200);
    assert.throws(() => sim.failOidc({ status: 500, count: 0 }), /count must be >= 1/);
  });
});
