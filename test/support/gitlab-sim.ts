// GitLabSimulator: an in-process HTTP server that answers the subset of GitLab's REST API v4 natsbind
// uses (groups, descendant groups, group projects, projects, environments) the way GitLab does, so
// @gitbeaker/rest talks to it unmodified; plus system hooks / group webhooks and the OIDC side of
// CI ID tokens. See docs/gitlab-simulator.md for exactly what is (and is not) simulated.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { randomBytes, randomUUID } from "node:crypto";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import { HookQueue } from "./gitlab-sim/hooks.ts";
import { OidcKeys, discoveryDocument, mintIdToken, type PublicJwk } from "./gitlab-sim/oidc.ts";
import { BadRequest, paginate, parsePaging } from "./gitlab-sim/pagination.ts";
import { environmentJson, groupJson, projectJson } from "./gitlab-sim/render.ts";
import {
  SimStore,
  type NewEnvironment,
  type NewGroup,
  type NewProject,
  type Rename,
} from "./gitlab-sim/store.ts";
import type {
  Delivery,
  MintIdTokenOptions,
  PopulateOptions,
  PopulateResult,
  SimEnvironment,
  SimEnvironmentState,
  SimFailure,
  SimGroup,
  SimOidcFault,
  SimOidcRequest,
  SimProject,
  SimRequest,
  SimVisibility,
  StartOptions,
} from "./gitlab-sim/types.ts";

export type * from "./gitlab-sim/types.ts";
export type { PublicJwk } from "./gitlab-sim/oidc.ts";
export { COUNT_LIMIT, DEFAULT_PER_PAGE, MAX_PER_PAGE } from "./gitlab-sim/pagination.ts";

const API_PREFIX = "/api/v4/";
const INTEGER_ID = /^-?\d+$/;
const TRUE_VALUES = new Set(["true", "1", "yes", "t", "y", "on"]);
const FALSE_VALUES = new Set(["false", "0", "no", "f", "n", "off"]);
const READ_SCOPES = ["api", "read_api"];
/** Listings kept for their next pages (a listing of another query or store version drops the oldest). */
const MAX_CACHED_LISTINGS = 8;
const INSUFFICIENT_SCOPE = "The request requires higher privileges than provided by the access token.";

/** Extra params Grape puts into `params`, hence into GitLab's Link URLs (route id + declared defaults). */
const GROUP_PROJECTS_LINK_DEFAULTS = {
  include_ancestor_namespaces: "false",
  include_subgroups: "false",
  order_by: "created_at",
  owned: "false",
  simple: "false",
  sort: "desc",
  starred: "false",
  with_custom_attributes: "false",
  with_issues_enabled: "false",
  with_merge_requests_enabled: "false",
  with_security_reports: "false",
  with_shared: "true",
};
const GROUP_LIST_LINK_DEFAULTS = {
  order_by: "name",
  sort: "asc",
  statistics: "false",
  with_custom_attributes: "false",
};

interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
  /** Send body as text/plain instead of JSON. */
  text?: boolean;
}

type Principal = { kind: "anonymous" } | { kind: "token"; token: string };

function json(status: number, body: unknown, headers?: Record<string, string>): Reply {
  return headers ? { status, body, headers } : { status, body };
}

/** `fallback` when the parameter is absent or empty (pass undefined to tell absence apart). */
function boolParam<F extends boolean | undefined>(
  query: URLSearchParams,
  name: string,
  fallback: F,
): boolean | F {
  const raw = query.get(name);
  if (raw === null || raw === "") return fallback;
  const v = raw.toLowerCase();
  if (TRUE_VALUES.has(v)) return true;
  if (FALSE_VALUES.has(v)) return false;
  throw new BadRequest({ error: `${name} is invalid` });
}

function enumParam<T extends string, F extends T | undefined>(
  query: URLSearchParams,
  name: string,
  allowed: readonly T[],
  fallback: F,
): T | F {
  const raw = query.get(name);
  if (raw === null || raw === "") return fallback;
  if (!(allowed as readonly string[]).includes(raw)) {
    throw new BadRequest({ error: `${name} does not have a valid value` });
  }
  return raw as T;
}

function compareBy<T>(
  key: (x: T) => string | number,
  id: (x: T) => number,
  desc: boolean,
): (a: T, b: T) => number {
  return (a, b) => {
    const ka = key(a);
    const kb = key(b);
    let c = ka < kb ? -1 : ka > kb ? 1 : 0;
    if (c === 0) c = id(a) - id(b);
    return desc ? -c : c;
  };
}

/** GitLab's `search` on groups and projects: a case-insensitive substring of name or path. */
function matchesSearch(x: { name: string; path: string }, search: string): boolean {
  return search === "" || x.name.toLowerCase().includes(search) || x.path.toLowerCase().includes(search);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class GitLabSimulator {
  private readonly store: SimStore;
  private readonly hooks: HookQueue;
  private readonly oidc = new OidcKeys();
  private readonly server: Server;
  private readonly tokens = new Map<string, { scopes: string[] }>();
  private readonly log: SimRequest[] = [];
  private readonly oidcLog: SimOidcRequest[] = [];
  private readonly faults: Array<{ remaining: number; spec: SimFailure }> = [];
  private readonly oidcFaults: Array<{ remaining: number; spec: SimOidcFault }> = [];
  private readonly hookSettings: { instanceUrl: string; version: string; timeoutMs: number };
  private readonly counters = { pipeline: 0, job: 0 };
  /** Sorted group-project listings by query (and store version), oldest first. */
  private readonly listings = new Map<string, SimProject[]>();
  private latencyMs: number;
  private baseUrl = "";
  private stopped = false;
  /** The version /api/v4/version reports and the webhook User-Agent carries. */
  readonly version: string;
  /** Accepted as PRIVATE-TOKEN header or `Authorization: Bearer`; scope `api`. */
  readonly token: string;

  private constructor(opts: StartOptions) {
    this.version = opts.version ?? "17.6.0";
    this.token = opts.token ?? `glpat-${randomBytes(15).toString("base64url")}`;
    this.tokens.set(this.token, { scopes: ["api"] });
    this.latencyMs = opts.latencyMs ?? 0;
    this.hookSettings = {
      instanceUrl: "",
      version: this.version,
      timeoutMs: opts.webhookTimeoutMs ?? 10_000,
    };
    this.hooks = new HookQueue(this.hookSettings);
    this.store = new SimStore((events) => this.hooks.enqueue(events));
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) res.writeHead(500, { "Content-Type": "application/json" });
        res.end(JSON.stringify({ message: `500 Internal Server Error (simulator: ${String(err)})` }));
      });
    });
  }

  /** Starts the HTTP server on 127.0.0.1 on a free port. */
  static async start(opts: StartOptions = {}): Promise<GitLabSimulator> {
    const sim = new GitLabSimulator(opts);
    await new Promise<void>((resolve, reject) => {
      sim.server.once("error", reject);
      sim.server.listen({ port: 0, host: "127.0.0.1" }, () => {
        sim.server.off("error", reject);
        resolve();
      });
    });
    const { port } = sim.server.address() as AddressInfo;
    sim.baseUrl = `http://127.0.0.1:${port}`;
    sim.hookSettings.instanceUrl = sim.baseUrl;
    return sim;
  }

  /** http://127.0.0.1:PORT (gitbeaker's `host`; the API is under /api/v4). */
  get url(): string {
    return this.baseUrl;
  }

  /** The OIDC issuer, equal to url. */
  get issuer(): string {
    return this.baseUrl;
  }

  // ------------------------------------------------------------------ tokens

  /** Registers a token; without `api` or `read_api` in scopes, API calls get 403 insufficient_scope. */
  addToken(token: string, opts: { scopes?: string[] } = {}): void {
    this.tokens.set(token, { scopes: [...(opts.scopes ?? ["api"])] });
  }

  /** Revokes a token: requests carrying it get 401 from now on. */
  removeToken(token: string): void {
    this.tokens.delete(token);
  }

  // ------------------------------------------------------------------ state

  createGroup(o: NewGroup): SimGroup {
    return this.store.createGroup(o);
  }

  createProject(o: NewProject): SimProject {
    return this.store.createProject(o);
  }

  /** Path change: project_rename + redirect from the old path; name only: project_update. */
  renameProject(id: number, o: Rename): void {
    this.store.renameProject(id, o);
  }

  /** project_transfer (system hooks only) + redirect from the old path. */
  transferProject(id: number, newGroupId: number): void {
    this.store.transferProject(id, newGroupId);
  }

  deleteProject(id: number): void {
    this.store.deleteProject(id);
  }

  renameGroup(id: number, o: Rename): void {
    this.store.renameGroup(id, o);
  }

  /** Deletes subgroups and projects too (each fires its destroy events); drops their group hooks. */
  deleteGroup(id: number): void {
    const { removedGroupIds } = this.store.deleteGroup(id);
    this.hooks.removeGroupHooks(removedGroupIds);
  }

  addEnvironment(projectId: number, o: NewEnvironment): SimEnvironment {
    return this.store.addEnvironment(projectId, o);
  }

  setEnvironmentState(projectId: number, environmentId: number, state: SimEnvironmentState): void {
    this.store.setEnvironmentState(projectId, environmentId, state);
  }

  /** Bulk helper: a new top-level group, `depth` levels of `fanout` subgroups, projects round-robin. */
  populate(o: PopulateOptions): PopulateResult {
    return this.store.populate(o);
  }

  getGroup(id: number): SimGroup | undefined {
    return this.store.groups.get(id);
  }

  getProject(id: number): SimProject | undefined {
    return this.store.projects.get(id);
  }

  groupFullPath(id: number): string {
    return this.store.groupFullPath(this.store.group(id));
  }

  projectFullPath(id: number): string {
    return this.store.projectFullPath(this.store.project(id));
  }

  /** Case-insensitive, no redirects (like the API). */
  findGroupByPath(fullPath: string): SimGroup | undefined {
    return this.store.groupByFullPath(fullPath);
  }

  /** Case-insensitive, follows redirects of renamed/transferred projects (like the API). */
  findProjectByPath(fullPath: string): SimProject | undefined {
    return this.store.projectByFullPath(fullPath);
  }

  get groupCount(): number {
    return this.store.groups.size;
  }

  get projectCount(): number {
    return this.store.projects.size;
  }

  // ------------------------------------------------------------------ faults, latency, log

  /** The next `count` API requests (matching pathIncludes, if given) fail with `status`. Calls queue up. */
  failNext(count: number, o: SimFailure): void {
    if (!Number.isInteger(count) || count < 1) throw new Error("gitlab-sim: failNext count must be >= 1");
    this.faults.push({ remaining: count, spec: { ...o } });
  }

  clearFailures(): void {
    this.faults.length = 0;
  }

  setLatency(ms: number): void {
    this.latencyMs = Math.max(0, ms);
  }

  /** Every API request, in arrival order (status 0 while the answer is still pending). */
  get requests(): ReadonlyArray<SimRequest> {
    return this.log;
  }

  resetRequests(): void {
    this.log.length = 0;
    this.oidcLog.length = 0;
  }

  /**
   * Makes discovery and JWKS requests (those whose path contains `pathIncludes`, if given) fail as
   * `fault` says: every one until clearOidcFaults(), or the next `count`. Calls queue up; the first
   * matching fault is used. API requests are not affected (failNext is theirs).
   */
  failOidc(fault: SimOidcFault): void {
    const count = fault.count ?? Infinity;
    if (!(count >= 1)) throw new Error("gitlab-sim: failOidc count must be >= 1");
    this.oidcFaults.push({ remaining: count, spec: { ...fault } });
  }

  clearOidcFaults(): void {
    this.oidcFaults.length = 0;
  }

  /** Discovery and JWKS requests, in arrival order. */
  get oidcRequests(): ReadonlyArray<SimOidcRequest> {
    return this.oidcLog;
  }

  // ------------------------------------------------------------------ webhooks

  /** System hook: project_create/destroy/rename/transfer/update, group_create/destroy/rename. */
  addSystemHook(url: string, secretToken: string): number {
    return this.hooks.addSystemHook(url, secretToken).id;
  }

  /**
   * Group webhook with project and subgroup events: "Project Hook" project_create/project_destroy for
   * projects in the group or below, "Subgroup Hook" subgroup_create/subgroup_destroy for groups below.
   */
  addGroupHook(groupId: number, url: string, secretToken: string): number {
    this.store.group(groupId);
    return this.hooks.addGroupHook(groupId, url, secretToken).id;
  }

  /** Queued deliveries (event header, event_name, url), oldest first. */
  pendingDeliveries(): Array<{ event: string; eventName: string; url: string }> {
    return this.hooks.pendingSummary();
  }

  /** POSTs every queued event in order, one at a time; a failed POST is reported, not retried. */
  deliverPending(): Promise<Delivery[]> {
    return this.hooks.deliverPending();
  }

  /** Sends a delivered event again with the same Idempotency-Key and X-Gitlab-Event-UUID. */
  redeliver(d: Delivery): Promise<Delivery> {
    return this.hooks.redeliver(d);
  }

  // ------------------------------------------------------------------ OIDC

  /** kid of the key that signs new ID tokens. */
  get signingKeyId(): string {
    return this.oidc.currentKid;
  }

  /** RS256 CI ID token with GitLab's claim set for a job of `projectId`. */
  mintIdToken(o: MintIdTokenOptions): string {
    return mintIdToken(this.store, this.oidc, this.issuer, this.counters, o);
  }

  /** The JWKS as `/oauth/discovery/keys` serves it now (without a request in oidcRequests). */
  publicJwks(): { keys: PublicJwk[] } {
    return this.oidc.jwks();
  }

  /** New signing key (new kid). The JWKS serves old and new unless keepOld is false. */
  rotateSigningKey(opts: { keepOld?: boolean } = {}): void {
    this.oidc.rotate(opts.keepOld ?? true);
  }

  // ------------------------------------------------------------------ lifecycle

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  // ------------------------------------------------------------------ HTTP

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const atMs = performance.now();
    const rawUrl = req.url ?? "/";
    const qIndex = rawUrl.indexOf("?");
    const rawPath = qIndex === -1 ? rawUrl : rawUrl.slice(0, qIndex);
    const query = new URLSearchParams(qIndex === -1 ? "" : rawUrl.slice(qIndex + 1));
    const method = req.method ?? "GET";

    if (
      rawPath === "/.well-known/openid-configuration" ||
      rawPath === "/oauth/discovery/keys" ||
      rawPath === "/-/jwks"
    ) {
      const entry: SimOidcRequest = { path: rawPath, status: 200, atMs };
      this.oidcLog.push(entry);
      if (method !== "GET" && method !== "HEAD") {
        entry.status = 405;
        return this.send(res, json(405, { error: "405 Method Not Allowed" }));
      }
      req.resume();
      const fault = this.takeOidcFault(rawPath);
      if (fault) return this.sendOidcFault(res, entry, fault);
      const body = rawPath.startsWith("/.well-known") ? discoveryDocument(this.issuer) : this.oidc.jwks();
      return this.send(res, json(200, body, { "Cache-Control": "max-age=86400, public" }));
    }

    if (!rawPath.startsWith(API_PREFIX)) {
      return this.send(res, { status: 404, body: "Not Found\n", text: true });
    }

    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(", ") : v;
    }
    const entry: SimRequest = {
      method,
      path: rawPath,
      query: Object.fromEntries(query),
      status: 0,
      atMs,
      headers,
    };
    this.log.push(entry);
    req.resume();

    if (this.latencyMs > 0) await sleep(this.latencyMs);
    let reply = this.takeFault(rawPath);
    if (!reply) {
      try {
        reply = this.route(method, rawPath, query, req);
      } catch (err) {
        if (!(err instanceof BadRequest)) throw err;
        reply = json(400, err.body);
      }
    }
    entry.status = reply.status;
    this.send(res, reply);
  }

  private send(res: ServerResponse, reply: Reply): void {
    const body = reply.text ? String(reply.body) : JSON.stringify(reply.body);
    res.writeHead(reply.status, {
      "Content-Type": reply.text ? "text/plain; charset=utf-8" : "application/json",
      "Cache-Control": "max-age=0, private, must-revalidate",
      "X-Content-Type-Options": "nosniff",
      "X-Frame-Options": "SAMEORIGIN",
      "X-Request-Id": randomUUID().replace(/-/g, "").slice(0, 26).toUpperCase(),
      Vary: "Origin",
      ...reply.headers,
    });
    res.end(body);
  }

  private takeFault(rawPath: string): Reply | undefined {
    const i = this.faults.findIndex(
      (f) => f.spec.pathIncludes === undefined || rawPath.includes(f.spec.pathIncludes),
    );
    if (i === -1) return undefined;
    const fault = this.faults[i] as { remaining: number; spec: SimFailure };
    fault.remaining -= 1;
    if (fault.remaining <= 0) this.faults.splice(i, 1);
    const { status, retryAfterSeconds, rateLimitResetEpochS } = fault.spec;
    if (status === 429) {
      const retryAfter = retryAfterSeconds ?? 60;
      const reset = rateLimitResetEpochS ?? Math.floor(Date.now() / 1000) + retryAfter;
      return {
        status,
        text: true,
        body: "Retry later\n",
        headers: {
          "Retry-After": String(retryAfter),
          "RateLimit-Name": "throttle_authenticated_api",
          "RateLimit-Limit": "600",
          "RateLimit-Observed": "601",
          "RateLimit-Remaining": "0",
          "RateLimit-Reset": String(reset),
          "RateLimit-ResetTime": new Date(reset * 1000).toUTCString(),
        },
      };
    }
    const text = { 500: "500 Internal Server Error", 502: "502 Bad Gateway", 503: "503 Service Unavailable" }[
      status
    ];
    return json(
      status,
      { message: text },
      retryAfterSeconds === undefined ? undefined : { "Retry-After": String(retryAfterSeconds) },
    );
  }

  private takeOidcFault(rawPath: string): SimOidcFault | undefined {
    const i = this.oidcFaults.findIndex(
      (f) => f.spec.pathIncludes === undefined || rawPath.includes(f.spec.pathIncludes),
    );
    if (i === -1) return undefined;
    const fault = this.oidcFaults[i] as { remaining: number; spec: SimOidcFault };
    fault.remaining -= 1;
    if (fault.remaining <= 0) this.oidcFaults.splice(i, 1);
    return fault.spec;
  }

  private sendOidcFault(res: ServerResponse, entry: SimOidcRequest, fault: SimOidcFault): void {
    if ("hang" in fault) {
      entry.status = 0;
      return;
    }
    if ("redirectTo" in fault) {
      entry.status = 302;
      res.writeHead(302, { Location: fault.redirectTo, "Content-Type": "text/html; charset=utf-8" });
      res.end(`<html><body>You are being <a href="${fault.redirectTo}">redirected</a>.</body></html>`);
      return;
    }
    if ("status" in fault) {
      entry.status = fault.status;
      const message = {
        404: "404 Not Found",
        500: "500 Internal Server Error",
        502: "502 Bad Gateway",
        503: "503 Service Unavailable",
      }[fault.status];
      return this.send(res, json(fault.status, { message }));
    }
    entry.status = 200;
    const contentType = fault.contentType ?? "application/json; charset=utf-8";
    if (!fault.chunked) {
      res.writeHead(200, { "Content-Type": contentType, "Content-Length": Buffer.byteLength(fault.body) });
      res.end(fault.body);
      return;
    }
    res.writeHead(200, { "Content-Type": contentType, "Transfer-Encoding": "chunked" });
    const CHUNK = 64 * 1024;
    const write = (offset: number): void => {
      if (res.destroyed) return;
      if (offset >= fault.body.length) {
        res.end();
        return;
      }
      const more = res.write(fault.body.slice(offset, offset + CHUNK));
      if (more) setImmediate(() => write(offset + CHUNK));
      else res.once("drain", () => write(offset + CHUNK));
    };
    write(0);
  }

  /** PRIVATE-TOKEN, Authorization: Bearer, or the private_token query parameter. */
  private authenticate(req: IncomingMessage, query: URLSearchParams): Principal | Reply {
    const header = req.headers["private-token"];
    const auth = req.headers.authorization;
    let token: string | undefined;
    if (typeof header === "string" && header !== "") token = header;
    else if (typeof auth === "string" && /^Bearer\s+/i.test(auth)) token = auth.replace(/^Bearer\s+/i, "");
    else if (query.get("private_token")) token = query.get("private_token") ?? undefined;
    if (token === undefined) return { kind: "anonymous" };
    const known = this.tokens.get(token);
    if (!known) return json(401, { message: "401 Unauthorized" });
    if (!known.scopes.some((s) => READ_SCOPES.includes(s))) {
      return json(
        403,
        { error: "insufficient_scope", error_description: INSUFFICIENT_SCOPE, scope: "api read_api" },
        {
          "WWW-Authenticate": `Bearer realm="Protected by OAuth 2.0", error="insufficient_scope", error_description="${INSUFFICIENT_SCOPE}", scope="api read_api"`,
        },
      );
    }
    return { kind: "token", token };
  }

  private route(method: string, rawPath: string, query: URLSearchParams, req: IncomingMessage): Reply {
    const notFound = json(404, { error: "404 Not Found" });
    let segments: string[];
    try {
      segments = rawPath
        .slice(API_PREFIX.length)
        .split("/")
        .map((s) => decodeURIComponent(s));
    } catch {
      return notFound;
    }
    const [resource, id, sub, subId, ...rest] = segments;
    if (rest.length > 0 || id === "" || sub === "" || subId === "") return notFound;

    let handler: ((p: Principal) => Reply) | undefined;
    if (resource === "version" && id === undefined) {
      handler = () =>
        json(200, {
          version: this.version,
          revision: "0000000000a",
          kas: { enabled: false },
          enterprise: true,
        });
    } else if (resource === "groups" && id !== undefined) {
      if (sub === undefined) handler = (p) => this.showGroup(p, id, query);
      else if (subId === undefined && sub === "descendant_groups")
        handler = (p) => this.listGroups(p, id, query, rawPath, true);
      else if (subId === undefined && sub === "subgroups")
        handler = (p) => this.listGroups(p, id, query, rawPath, false);
      else if (subId === undefined && sub === "projects")
        handler = (p) => this.listGroupProjects(p, id, query, rawPath);
    } else if (resource === "projects" && id !== undefined) {
      if (sub === undefined) handler = (p) => this.showProject(p, id);
      else if (sub === "environments") handler = (p) => this.environments(p, id, subId, query, rawPath);
    }
    if (!handler) return notFound;
    if (method !== "GET" && method !== "HEAD") return json(405, { error: "405 Method Not Allowed" });
    const principal = this.authenticate(req, query);
    if ("status" in principal) return principal;
    return handler(principal);
  }

  private canSee(p: Principal, visibility: SimVisibility): boolean {
    return p.kind === "token" || visibility === "public";
  }

  private findGroup(p: Principal, id: string): SimGroup | undefined {
    const g = INTEGER_ID.test(id) ? this.store.groups.get(Number(id)) : this.store.groupByFullPath(id);
    return g && this.canSee(p, g.visibility) ? g : undefined;
  }

  private findProject(p: Principal, id: string): SimProject | undefined {
    let project: SimProject | undefined;
    if (INTEGER_ID.test(id)) project = this.store.projects.get(Number(id));
    else if (id.includes("/")) project = this.store.projectByFullPath(id);
    return project && this.canSee(p, project.visibility) ? project : undefined;
  }

  private showGroup(p: Principal, id: string, query: URLSearchParams): Reply {
    const withProjects = boolParam(query, "with_projects", true);
    const g = this.findGroup(p, id);
    if (!g) return json(404, { message: "404 Group Not Found" });
    const body = groupJson(this.store, this.baseUrl, g);
    if (withProjects) {
      body.projects = this.store
        .projectsOf(g.id, false)
        .filter((proj) => this.canSee(p, proj.visibility))
        .sort((a, b) => a.id - b.id)
        .slice(0, 100)
        .map((proj) => projectJson(this.store, this.baseUrl, proj));
      body.shared_projects = [];
    }
    return json(200, body);
  }

  private listGroups(
    p: Principal,
    id: string,
    query: URLSearchParams,
    rawPath: string,
    descendants: boolean,
  ): Reply {
    const orderBy = enumParam(query, "order_by", ["name", "path", "id", "similarity"], "name");
    const desc = enumParam(query, "sort", ["asc", "desc"], "asc") === "desc";
    const search = (query.get("search") ?? "").toLowerCase();
    parsePaging(query);
    const g = this.findGroup(p, id);
    if (!g) return json(404, { message: "404 Group Not Found" });
    const ids = descendants ? this.store.descendantGroupIds(g.id) : this.store.directSubgroupIds(g.id);
    const key = (x: SimGroup): string | number =>
      orderBy === "path" ? x.path : orderBy === "id" ? x.id : x.name;
    const groups = ids
      .map((gid) => this.store.group(gid))
      .filter((x) => this.canSee(p, x.visibility))
      .filter((x) => matchesSearch(x, search))
      .sort(compareBy(key, (x) => x.id, desc));
    const page = paginate(groups, {
      base: this.baseUrl,
      rawPath,
      query,
      linkParams: { id, ...GROUP_LIST_LINK_DEFAULTS },
    });
    return json(
      200,
      page.items.map((x) => groupJson(this.store, this.baseUrl, x)),
      page.headers,
    );
  }

  private listGroupProjects(p: Principal, id: string, query: URLSearchParams, rawPath: string): Reply {
    const includeSubgroups = boolParam(query, "include_subgroups", false);
    const simple = boolParam(query, "simple", false);
    boolParam(query, "with_shared", true);
    const archived = boolParam(query, "archived", undefined);
    const orderBy = enumParam(
      query,
      "order_by",
      ["id", "name", "path", "created_at", "updated_at", "last_activity_at", "similarity", "star_count"],
      "created_at",
    );
    const desc = enumParam(query, "sort", ["asc", "desc"], "desc") === "desc";
    const visibility = enumParam(query, "visibility", ["private", "internal", "public"], undefined);
    const search = (query.get("search") ?? "").toLowerCase();
    parsePaging(query);
    const g = this.findGroup(p, id);
    if (!g) return json(404, { message: "404 Group Not Found" });

    const key = (x: SimProject): string | number => {
      switch (orderBy) {
        case "id":
          return x.id;
        case "name":
          return x.name;
        case "path":
          return x.path;
        case "updated_at":
        case "last_activity_at":
          return x.updatedAt;
        default:
          return x.createdAt;
      }
    };
    // Every page of a listing filters and sorts the same projects: kept until the store changes,
    // so listing 100,000 projects (1,000 pages) does not sort them 1,000 times.
    const listingKey = JSON.stringify([
      this.store.version,
      p.kind,
      g.id,
      includeSubgroups,
      archived ?? null,
      visibility ?? null,
      search,
      orderBy,
      desc,
    ]);
    let projects = this.listings.get(listingKey);
    if (!projects) {
      projects = this.store
        .projectsOf(g.id, includeSubgroups)
        .filter((x) => this.canSee(p, x.visibility))
        .filter((x) => archived === undefined || x.archived === archived)
        .filter((x) => visibility === undefined || x.visibility === visibility)
        .filter((x) => matchesSearch(x, search))
        .sort(compareBy(key, (x) => x.id, desc));
      if (this.listings.size >= MAX_CACHED_LISTINGS) this.listings.delete(this.listings.keys().next().value!);
      this.listings.set(listingKey, projects);
    }
    const page = paginate(projects, {
      base: this.baseUrl,
      rawPath,
      query,
      linkParams: { id, ...GROUP_PROJECTS_LINK_DEFAULTS },
    });
    return json(
      200,
      page.items.map((x) => projectJson(this.store, this.baseUrl, x, simple)),
      page.headers,
    );
  }

  private showProject(p: Principal, id: string): Reply {
    const project = this.findProject(p, id);
    if (!project) return json(404, { message: "404 Project Not Found" });
    return json(200, projectJson(this.store, this.baseUrl, project));
  }

  private environments(
    p: Principal,
    id: string,
    environmentId: string | undefined,
    query: URLSearchParams,
    rawPath: string,
  ): Reply {
    if (environmentId !== undefined) {
      const project = this.findProject(p, id);
      if (!project) return json(404, { message: "404 Project Not Found" });
      const env = INTEGER_ID.test(environmentId)
        ? project.environments.find((e) => e.id === Number(environmentId))
        : undefined;
      if (!env) return json(404, { message: "404 Not found" });
      return json(200, environmentJson(env));
    }
    const states = enumParam(query, "states", ["available", "stopping", "stopped"], undefined);
    const name = query.get("name");
    const search = (query.get("search") ?? "").toLowerCase();
    parsePaging(query);
    const project = this.findProject(p, id);
    if (!project) return json(404, { message: "404 Project Not Found" });
    const envs = project.environments
      .filter((e) => states === undefined || e.state === states)
      .filter((e) => name === null || e.name === name)
      .filter((e) => search === "" || e.name.toLowerCase().includes(search))
      .sort((a, b) => a.id - b.id);
    const page = paginate(envs, { base: this.baseUrl, rawPath, query, linkParams: { id } });
    return json(200, page.items.map(environmentJson), page.headers);
  }
}
