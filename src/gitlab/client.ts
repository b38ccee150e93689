/**
 * GitLabPort over @gitbeaker/rest. gitbeaker builds the requests and follows pagination; the
 * transport underneath is ours (passed as gitbeaker's `requesterFn`): a timeout on every request,
 * retries only for 429/5xx/network failures as retry.ts decides, typed errors for the rest,
 * same-origin redirects only and a byte cap on every body (transport.ts).
 * Every response is validated before it becomes a GitLabProject/Group/Environment.
 */
import { Gitlab } from "@gitbeaker/rest";
import {
  createRequesterFn,
  type FormattedResponse,
  type ResponseBodyTypes,
} from "@gitbeaker/requester-utils";
import { z } from "zod";
import { describeError } from "../errors.ts";
import {
  GitLabAuthError,
  GitLabError,
  GitLabForbiddenError,
  GitLabNotFoundError,
  GitLabRequestError,
  GitLabResponseError,
  GitLabUnavailableError,
  type GitLabRequestInfo,
} from "./errors.ts";
import type { GitLabEnvironment, GitLabGroup, GitLabPort, GitLabProject } from "./port.ts";
import {
  DEFAULT_MAX_RESPONSE_BYTES,
  discardBody,
  fetchSameOrigin,
  readBodyCapped,
  readUpTo,
} from "./transport.ts";
import { decideRetry, isRetryableStatus, serverDelayMs, type RetryPolicy } from "./retry.ts";

export interface GitLabRequestEvent extends GitLabRequestInfo {
  attempt: number;
  durationMs: number;
  /** Set when the attempt failed without a response (timeout, connection refused). */
  error?: string;
}

export interface GitLabRetryEvent extends GitLabRequestInfo {
  /** The attempt that failed (1 = the first). */
  attempt: number;
  /** How long natsbind waits before the next attempt. */
  delayMs: number;
  /** Whether GitLab said how long (Retry-After / RateLimit-Reset) or natsbind backs off on its own. */
  serverAsked: boolean;
}

export interface GitLabClientOptions {
  /** GitLab base URL, e.g. https://gitlab.example.com (the API is below /api/v4). */
  url: string;
  /** Personal, group or project access token with read_api. */
  token: string;
  /** Deadline of one HTTP request. */
  timeoutMs?: number;
  retry?: RetryPolicy;
  /** Injected for tests. */
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
  random?: () => number;
  /** Byte cap of one response body (default DEFAULT_MAX_RESPONSE_BYTES, 16 MiB). */
  maxResponseBytes?: number;
  /** Called once per HTTP attempt: for logs and metrics. */
  onRequest?: (event: GitLabRequestEvent) => void;
  /** Called before each wait for another attempt (429, 5xx, no response): for metrics. */
  onRetry?: (event: GitLabRetryEvent) => void;
}

const MAX_ERROR_TEXT = 300;
const PER_PAGE = 100;
/** A listing longer than this is refused rather than read forever (1,000,000 projects). */
const MAX_PAGES = 10_000;

const idSchema = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
const nameSchema = z.string().min(1).max(1024);

const groupSchema = z.object({
  id: idSchema,
  name: nameSchema,
  path: nameSchema,
  full_path: nameSchema,
  parent_id: idSchema.nullable().optional(),
});

const projectSchema = z.object({
  id: idSchema,
  name: nameSchema,
  path: nameSchema,
  path_with_namespace: nameSchema,
  visibility: z.enum(["private", "internal", "public"]).default("private"),
  archived: z.boolean().default(false),
  web_url: z
    .string()
    .max(2048)
    .regex(/^https?:\/\/\S+$/)
    .optional()
    .catch(undefined),
  namespace: z.object({ id: idSchema, full_path: nameSchema, kind: z.string().optional() }),
});

const environmentSchema = z.object({
  id: idSchema,
  name: nameSchema,
  slug: z.string().max(1024).default(""),
  state: z.string().max(64),
  tier: z.string().max(64).nullable().optional(),
});

function toGroup(g: z.infer<typeof groupSchema>): GitLabGroup {
  return { id: g.id, name: g.name, path: g.path, fullPath: g.full_path, parentId: g.parent_id ?? null };
}

function toProject(p: z.infer<typeof projectSchema>): GitLabProject {
  return {
    id: p.id,
    name: p.name,
    path: p.path,
    pathWithNamespace: p.path_with_namespace,
    namespaceId: p.namespace.id,
    namespaceFullPath: p.namespace.full_path,
    visibility: p.visibility,
    archived: p.archived,
    ...(p.web_url ? { webUrl: p.web_url } : {}),
  };
}

function parseAll<T extends z.ZodTypeAny>(
  schema: T,
  body: unknown,
  request: GitLabRequestInfo,
): z.infer<T>[] {
  if (!Array.isArray(body))
    throw new GitLabResponseError(`${request.method} ${request.path}: expected a JSON array`, request);
  return body.map((item, i) => parseOne(schema, item, request, `[${i}]`));
}

function parseOne<T extends z.ZodTypeAny>(
  schema: T,
  body: unknown,
  request: GitLabRequestInfo,
  at = "",
): z.infer<T> {
  const result = schema.safeParse(body);
  if (!result.success) {
    const issue = result.error.issues[0];
    const path = `${at}${issue?.path.length ? `.${issue.path.join(".")}` : ""}`;
    throw new GitLabResponseError(
      `${request.method} ${request.path}: unexpected response${path ? ` at ${path}` : ""}: ${issue?.message}`,
      request,
    );
  }
  return result.data;
}

function decodeBody(response: Response, bytes: Buffer, request: GitLabRequestInfo): unknown {
  const type = (response.headers.get("content-type") ?? "").split(";")[0]!.trim();
  const text = bytes.toString("utf8");
  if (type !== "application/json") return text;
  if (text.trim() === "") return {};
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new GitLabResponseError(`${request.method} ${request.path}: response is not valid JSON`, {
      ...request,
      status: response.status,
    });
  }
}

/** GitLab's own words from an error body: {"message": ...} or {"error": ...}, bounded (4 KiB read). */
async function errorText(response: Response): Promise<string> {
  const text = await readUpTo(response, 4096).then(
    (r) => r.bytes.toString("utf8"),
    () => "",
  );
  let said: unknown = text;
  try {
    const json = JSON.parse(text) as { message?: unknown; error?: unknown; error_description?: unknown };
    said = json.error_description ?? json.message ?? json.error ?? text;
  } catch {
    // not JSON: keep the text
  }
  const line = (typeof said === "string" ? said : JSON.stringify(said)).replace(/\s+/g, " ").trim();
  return line.length > MAX_ERROR_TEXT ? `${line.slice(0, MAX_ERROR_TEXT)}...` : line;
}

function statusError(status: number, said: string, request: GitLabRequestInfo, baseUrl: string): GitLabError {
  const what = `${request.method} ${request.path}`;
  switch (status) {
    case 401:
      return new GitLabAuthError(
        `GitLab at ${baseUrl} rejected the token (401${said ? `: ${said}` : ""}) for ${what}: check that it is valid, unexpired and not revoked`,
        request,
      );
    case 403:
      return new GitLabForbiddenError(
        `GitLab at ${baseUrl} refused ${what} (403${said ? `: ${said}` : ""}): the token needs the read_api scope and access to it`,
        request,
      );
    case 404:
      return new GitLabNotFoundError(
        `${what}: ${said || "404 Not Found"} (absent, or not visible to this token)`,
        request,
      );
    default:
      return new GitLabRequestError(`${what} failed with ${status}${said ? `: ${said}` : ""}`, request);
  }
}

export class GitbeakerGitLab implements GitLabPort {
  readonly #api: InstanceType<typeof Gitlab>;
  readonly #opts: GitLabClientOptions;

  constructor(opts: GitLabClientOptions) {
    let base: URL;
    try {
      base = new URL(opts.url);
    } catch (cause) {
      throw new GitLabRequestError(
        `GitLab URL "${opts.url}" is not a URL`,
        { method: "-", path: "-" },
        { cause },
      );
    }
    if (base.protocol !== "https:" && base.protocol !== "http:") {
      throw new GitLabRequestError(`GitLab URL "${opts.url}" must be http(s)`, { method: "-", path: "-" });
    }
    this.#opts = opts;
    const requesterFn = createRequesterFn(
      (_, options) => Promise.resolve(options),
      (endpoint: string, options?: Record<string, unknown>) => this.#request(endpoint, options ?? {}),
    );
    this.#api = new Gitlab({
      host: base.origin + base.pathname.replace(/\/$/, ""),
      token: opts.token,
      requesterFn,
    });
  }

  async #request(endpoint: string, options: Record<string, unknown>): Promise<FormattedResponse> {
    const {
      prefixUrl,
      searchParams,
      method,
      headers,
      body: requestBody,
      signal,
    } = options as {
      prefixUrl?: string;
      searchParams?: string;
      method?: string;
      headers?: Record<string, string>;
      body?: string | FormData;
      signal?: AbortSignal;
    };
    const url = new URL(endpoint, prefixUrl?.endsWith("/") ? prefixUrl : `${prefixUrl}/`);
    if (searchParams) url.search = searchParams;
    const request: GitLabRequestInfo = { method: method ?? "GET", path: `/${endpoint.replace(/^\//, "")}` };
    const now = this.#opts.now ?? Date.now;
    const sleep = this.#opts.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
    const random = this.#opts.random ?? Math.random;
    const timeoutMs = this.#opts.timeoutMs ?? 30_000;
    const maxBytes = this.#opts.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    const started = now();

    for (let attempt = 1; ; attempt++) {
      const attemptStart = now();
      let response: Response | undefined;
      let body: Buffer | undefined;
      let failure: string | undefined;
      // Aborted past the byte cap: drops the connection instead of draining the rest.
      const dropped = new AbortController();
      try {
        const timeout = AbortSignal.timeout(timeoutMs);
        response = await fetchSameOrigin(
          url,
          {
            method: request.method,
            ...(headers ? { headers } : {}),
            ...(requestBody !== undefined ? { body: requestBody } : {}),
            signal: AbortSignal.any([dropped.signal, timeout, ...(signal ? [signal] : [])]),
          },
          request,
        );
        // The body is read under the same deadline; a body cut off by the network is retried.
        if (response.ok) body = await readBodyCapped(response, maxBytes, request, () => dropped.abort());
      } catch (cause) {
        if (cause instanceof GitLabError) {
          this.#opts.onRequest?.({
            ...cause.request,
            attempt,
            durationMs: now() - attemptStart,
            error: cause.name,
          });
          throw cause;
        }
        if (signal?.aborted)
          throw new GitLabError(`${request.method} ${request.path} was aborted`, request, { cause });
        const inner = (cause as { cause?: { code?: string; message?: string } }).cause;
        const code = inner?.code ?? inner?.message;
        failure =
          (cause as Error).name === "TimeoutError"
            ? `no response within ${timeoutMs} ms`
            : (code ?? describeError(cause));
        if (response) discardBody(response);
        response = undefined;
      }
      this.#opts.onRequest?.({
        ...request,
        ...(response ? { status: response.status } : {}),
        attempt,
        durationMs: now() - attemptStart,
        ...(failure ? { error: failure } : {}),
      });
      if (response?.ok && body) {
        return {
          body: decodeBody(response, body, request) as ResponseBodyTypes,
          headers: Object.fromEntries(response.headers.entries()),
          status: response.status,
        };
      }
      const info = { ...request, ...(response ? { status: response.status } : {}) };
      if (response && !isRetryableStatus(response.status)) {
        throw statusError(response.status, await errorText(response), info, this.#opts.url);
      }
      const said = response ? `${response.status} ${await errorText(response)}`.trim() : failure!;
      const asked = response
        ? serverDelayMs(
            {
              retryAfter: response.headers.get("retry-after"),
              rateLimitReset: response.headers.get("ratelimit-reset"),
            },
            now(),
          )
        : undefined;
      const decision = decideRetry({
        attempt,
        elapsedMs: now() - started,
        serverDelayMs: asked,
        random,
        ...(this.#opts.retry ? { policy: this.#opts.retry } : {}),
      });
      if (!decision.retry) {
        throw new GitLabUnavailableError(
          `${request.method} ${request.path} at ${this.#opts.url}: ${said}; ${decision.reason}`,
          info,
        );
      }
      this.#opts.onRetry?.({ ...info, attempt, delayMs: decision.delayMs, serverAsked: asked !== undefined });
      await sleep(decision.delayMs);
    }
  }

  #info(path: string): GitLabRequestInfo {
    return { method: "GET", path };
  }

  async group(idOrPath: number | string): Promise<GitLabGroup> {
    const body: unknown = await this.#api.Groups.show(idOrPath);
    return toGroup(
      parseOne(groupSchema, body, this.#info(`/groups/${encodeURIComponent(String(idOrPath))}`)),
    );
  }

  async project(idOrPath: number | string): Promise<GitLabProject | undefined> {
    try {
      const body: unknown = await this.#api.Projects.show(idOrPath);
      return toProject(
        parseOne(projectSchema, body, this.#info(`/projects/${encodeURIComponent(String(idOrPath))}`)),
      );
    } catch (err) {
      if (err instanceof GitLabNotFoundError) return undefined;
      throw err;
    }
  }

  async groupProjects(groupId: number): Promise<GitLabProject[]> {
    // Page by page (gitbeaker fetches one page when `page` is given): each page's raw JSON (~40
    // fields a project) becomes small GitLabProjects before the next is read, instead of all
    // pages' raw objects being held at once.
    const byId = new Map<number, GitLabProject>();
    const info = this.#info(`/groups/${groupId}/projects`);
    for (let page: number | null = 1, pages = 0; page !== null; pages++) {
      if (pages >= MAX_PAGES) {
        throw new GitLabResponseError(`${info.method} ${info.path}: more than ${MAX_PAGES} pages`, info);
      }
      const { data, paginationInfo } = (await this.#api.Groups.allProjects(groupId, {
        includeSubgroups: true,
        perPage: PER_PAGE,
        page,
        pagination: "offset",
        // GitLab's default order is created_at desc, which shifts pages while projects are created.
        orderBy: "id",
        sort: "asc",
        showExpanded: true,
      })) as unknown as { data: unknown; paginationInfo: { next: number | null } };
      // Offset pages can repeat an item when projects are created during the listing.
      for (const p of parseAll(projectSchema, data, info)) byId.set(p.id, toProject(p));
      const next = paginationInfo.next;
      page = typeof next === "number" && Number.isSafeInteger(next) && next > page ? next : null;
    }
    return [...byId.values()];
  }

  async descendantGroups(groupId: number): Promise<GitLabGroup[]> {
    const body: unknown = await this.#api.Groups.allDescendantGroups(groupId, {
      perPage: PER_PAGE,
      pagination: "offset",
    });
    return parseAll(groupSchema, body, this.#info(`/groups/${groupId}/descendant_groups`)).map(toGroup);
  }

  async environments(projectId: number): Promise<GitLabEnvironment[]> {
    const body: unknown = await this.#api.Environments.all(projectId, {
      states: "available",
      perPage: PER_PAGE,
    });
    return parseAll(environmentSchema, body, this.#info(`/projects/${projectId}/environments`)).map((e) => ({
      id: e.id,
      name: e.name,
      slug: e.slug,
      state: e.state,
      tier: e.tier ?? null,
    }));
  }
}
