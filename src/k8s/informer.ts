/**
 * A list+watch cache of one kind of Kubernetes object (a reflector), kept current for as long as
 * it runs.
 *
 * Why not client-node's makeInformer: it stops for good on a watch error, and the apiserver ends
 * every watch after a few minutes, restarts, or answers 410 Gone. This one never gives up:
 *
 *   list (pages of 500, remember the list's resourceVersion) -> replace the cache and report the
 *   difference to the previous cache as add/update/delete (so a relist after a gap reports the
 *   deletions that happened meanwhile) -> watch from that resourceVersion with bookmarks, moving
 *   the resourceVersion on with every event and bookmark.
 *
 *   - watch ended (the apiserver closes watches every 5-10 minutes): watch again from the last
 *     resourceVersion, at once;
 *   - 410 Gone / "too old resource version" (an ERROR event or an HTTP 410): list again;
 *   - any other failure (network, apiserver down, 5xx, 429): retry after an exponential, jittered
 *     backoff (initialMs 200 doubling to maxMs 30 s) timed by the Clock; the watch resumes from the
 *     last resourceVersion, and an ERROR event relists.
 *
 * Writers put their own successful writes into the cache at once with upsert()/forget(), so a read
 * right after the write sees it; a later version from the watch replaces it, the watch event of
 * the same version does not (same resourceVersion, same content: the writer's object, and what a
 * reader derived from it and keyed by it, stays). An older object never replaces a newer one:
 * resourceVersions are compared as numbers when both are decimal strings (as etcd's are),
 * otherwise the incoming object wins. upsert()/forget() emit no events: the writer knows what it
 * wrote.
 *
 * metadata.managedFields (server-side apply bookkeeping, about as large as the rest of a small
 * object, read by nothing here) is dropped from every object the cache takes, as client-go's
 * TransformStripManagedFields does: 10,000 account Secrets are held at once. A write that leaves
 * the field out keeps the apiserver's copy of it.
 */
import {
  ApiException,
  HttpMethod,
  IsomorphicFetchHttpLibrary,
  RequestContext,
  Watch,
} from "@kubernetes/client-node";
import type { KubeConfig, KubernetesObject } from "@kubernetes/client-node";
import { NatsbindError } from "../errors.ts";
import type { Logger } from "../observability/logger.ts";
import { nullLogger } from "../observability/logger.ts";
import { systemClock } from "../runtime/clock.ts";
import type { Clock, TimerHandle } from "../runtime/clock.ts";
import { apiStatus, isGone, KubernetesApiError } from "./api-errors.ts";

export type InformerEventType = "add" | "update" | "delete";
export type InformerHandler<T> = (type: InformerEventType, obj: T, old?: T) => void;

/** One page of a list: items, the list's resourceVersion, and the token of the next page if any. */
export interface ListPage<T> {
  items: T[];
  resourceVersion: string;
  continue?: string;
}

export interface ListParams {
  labelSelector?: string;
  limit?: number;
  continue?: string;
}

export interface InformerOptions<T extends KubernetesObject> {
  kubeConfig: KubeConfig;
  /**
   * Collection path: "/api/v1/secrets", "/api/v1/namespaces/NS/secrets",
   * "/apis/natsbind.io/v1alpha1/natsbindings", "/apis/natsbind.io/v1alpha1/namespaces/NS/natsbindings".
   */
  path: string;
  labelSelector?: string;
  /** Lists one page; default: GET `path` with the kubeConfig's credentials. */
  list?: (params: ListParams) => Promise<ListPage<T>>;
  /** Items per list page (default 500). */
  pageSize?: number;
  clock?: Clock;
  log?: Logger;
  backoff?: { initialMs?: number; maxMs?: number };
  /** Names the informer in logs and errors (default: the path). */
  name?: string;
  /** Deadline of one list page (default 60 s). */
  listTimeoutMs?: number;
  /**
   * A watch with no bytes for this long is dropped and restarted (default 90 s): the apiserver
   * sends a bookmark about once a minute, so only a dead connection stays silent that long.
   */
  watchIdleTimeoutMs?: number;
  /** Source of jitter in [0, 1) (default Math.random). */
  random?: () => number;
}

/** The informer was stopped before its first list completed. */
export class InformerStoppedError extends NatsbindError {}

const DEFAULT_BACKOFF = { initialMs: 200, maxMs: 30_000 };
const DEFAULT_PAGE_SIZE = 500;
const DEFAULT_LIST_TIMEOUT_MS = 60_000;
const DEFAULT_WATCH_IDLE_TIMEOUT_MS = 90_000;
/** Server-side watch timeout, randomised in [min, 2*min) like client-go so watches do not end in step. */
const MIN_WATCH_TIMEOUT_SECONDS = 300;
/** A watch that lasted at least this long without failing counts as healthy: the backoff resets. */
const HEALTHY_WATCH_MS = 10_000;

const DECIMAL = /^[0-9]{1,30}$/;

/** True when `a` is known to be older than `b` (both decimal resourceVersions). */
export function isOlderVersion(a: string | undefined, b: string | undefined): boolean {
  if (a === undefined || b === undefined || !DECIMAL.test(a) || !DECIMAL.test(b)) return false;
  return BigInt(a) < BigInt(b);
}

/** Cache key: "namespace/name", or "name" for cluster-scoped objects. */
export function objectKey(namespace: string | undefined, name: string): string {
  return namespace ? `${namespace}/${name}` : name;
}

function keyOf(obj: KubernetesObject): string | undefined {
  const name = obj.metadata?.name;
  return name ? objectKey(obj.metadata?.namespace, name) : undefined;
}

function versionOf(obj: KubernetesObject | undefined): string | undefined {
  return obj?.metadata?.resourceVersion;
}

/** Same object version: both carry the same resourceVersion. */
function sameVersion(a: KubernetesObject | undefined, b: KubernetesObject | undefined): boolean {
  const va = versionOf(a);
  return va !== undefined && va === versionOf(b);
}

/** Drops metadata.managedFields in place (see the file header); returns `obj`. */
function withoutManagedFields<T extends KubernetesObject>(obj: T): T {
  if (obj.metadata?.managedFields !== undefined) delete obj.metadata.managedFields;
  return obj;
}

interface WatchResult {
  /** ended: closed normally (or by stop()); gone: 410; error: failed request or ERROR event. */
  outcome: "ended" | "gone" | "error";
  error?: unknown;
  /** Object events delivered (bookmarks excluded). */
  events: number;
}

export class Informer<T extends KubernetesObject> {
  readonly name: string;
  readonly #kubeConfig: KubeConfig;
  readonly #path: string;
  readonly #labelSelector: string | undefined;
  readonly #listPage: (params: ListParams) => Promise<ListPage<T>>;
  readonly #pageSize: number;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #backoff: { initialMs: number; maxMs: number };
  readonly #listTimeoutMs: number;
  readonly #watchIdleTimeoutMs: number;
  readonly #random: () => number;

  #cache = new Map<string, T>();
  readonly #handlers: InformerHandler<T>[] = [];
  #resourceVersion: string | undefined;
  #synced = false;
  #running: Promise<void> | undefined;
  #stopped = false;
  // Whatever is in flight, so stop() can end it at once: a watch, a list request, a backoff timer.
  #abortWatch: (() => void) | undefined;
  #abortList: AbortController | undefined;
  #wake: (() => void) | undefined;
  #failures = 0;

  #lists = 0;
  #watches = 0;
  #restarts = 0;
  #relists = 0;
  #events = 0;

  constructor(opts: InformerOptions<T>) {
    this.name = opts.name ?? opts.path;
    this.#kubeConfig = opts.kubeConfig;
    this.#path = opts.path;
    this.#labelSelector = opts.labelSelector;
    this.#listPage = opts.list ?? ((params) => this.#getPage(params));
    this.#pageSize = opts.pageSize ?? DEFAULT_PAGE_SIZE;
    this.#clock = opts.clock ?? systemClock;
    this.#log = (opts.log ?? nullLogger).child({ informer: this.name });
    this.#backoff = { ...DEFAULT_BACKOFF, ...opts.backoff };
    this.#listTimeoutMs = opts.listTimeoutMs ?? DEFAULT_LIST_TIMEOUT_MS;
    this.#watchIdleTimeoutMs = opts.watchIdleTimeoutMs ?? DEFAULT_WATCH_IDLE_TIMEOUT_MS;
    this.#random = opts.random ?? Math.random;
  }

  /** List requests made (one per page). */
  get lists(): number {
    return this.#lists;
  }
  /** Watch requests made. */
  get watches(): number {
    return this.#watches;
  }
  /** Failures that were retried after a backoff. */
  get restarts(): number {
    return this.#restarts;
  }
  /** Relists after 410 Gone or an ERROR event. */
  get relists(): number {
    return this.#relists;
  }
  /** Watch events applied (bookmarks excluded). */
  get events(): number {
    return this.#events;
  }
  /** The resourceVersion the next watch starts from. */
  get resourceVersion(): string | undefined {
    return this.#resourceVersion;
  }

  /** Starts listing and watching; resolves once the first list is in the cache (synced). */
  start(): Promise<void> {
    if (this.#stopped) return Promise.reject(new InformerStoppedError(`informer ${this.name} was stopped`));
    if (this.#running) return this.#running;
    this.#running = new Promise<void>((resolveSynced, rejectSynced) => {
      void this.#run(resolveSynced).then(
        () => {
          if (!this.#synced)
            rejectSynced(new InformerStoppedError(`informer ${this.name} stopped before it synced`));
        },
        (err: unknown) => rejectSynced(err),
      );
    });
    return this.#running;
  }

  /** Stops watching and retrying. The cache keeps its last contents. */
  stop(): void {
    this.#stopped = true;
    this.#abortWatch?.();
    this.#abortList?.abort();
    this.#wake?.();
  }

  hasSynced(): boolean {
    return this.#synced;
  }

  get(namespace: string | undefined, name: string): T | undefined {
    return this.#cache.get(objectKey(namespace, name));
  }

  /** Cached objects, all or of one namespace. */
  list(namespace?: string): T[] {
    const all = [...this.#cache.values()];
    return namespace === undefined ? all : all.filter((o) => o.metadata?.namespace === namespace);
  }

  /** Registers a handler; it runs synchronously after the cache changed. Returns an unsubscribe function. */
  onEvent(fn: InformerHandler<T>): () => void {
    this.#handlers.push(fn);
    return () => {
      const at = this.#handlers.indexOf(fn);
      if (at !== -1) this.#handlers.splice(at, 1);
    };
  }

  /** Puts an object a writer just wrote into the cache, unless the cache holds a newer one. */
  upsert(obj: T): void {
    const key = keyOf(obj);
    if (key === undefined) return;
    const current = this.#cache.get(key);
    if (isOlderVersion(versionOf(obj), versionOf(current))) return;
    this.#cache.set(key, withoutManagedFields(obj));
  }

  /** Drops an object a writer just deleted from the cache. */
  forget(namespace: string | undefined, name: string): void {
    this.#cache.delete(objectKey(namespace, name));
  }

  #emit(type: InformerEventType, obj: T, old?: T): void {
    for (const handler of [...this.#handlers]) {
      try {
        handler(type, obj, old);
      } catch (err) {
        this.#log.error({ err, type, object: keyOf(obj) }, "informer event handler threw");
      }
    }
  }

  async #run(onSynced: () => void): Promise<void> {
    let needList = true;
    let justListed = false;
    while (!this.#stopped) {
      if (needList) {
        try {
          await this.#listAll();
        } catch (err) {
          if (this.#stopped) break;
          await this.#backOff(err);
          continue;
        }
        if (this.#stopped) break;
        needList = false;
        justListed = true;
        if (!this.#synced) {
          this.#synced = true;
          this.#log.info({ objects: this.#cache.size }, "informer synced");
          onSynced();
        }
      }
      const afterList = justListed;
      justListed = false;
      const started = this.#clock.now();
      const result = await this.#watchOnce();
      if (this.#stopped) break;
      const healthy = result.events > 0 || this.#clock.now() - started >= HEALTHY_WATCH_MS;
      if (healthy) this.#failures = 0;
      if (result.outcome === "gone") {
        this.#relists++;
        needList = true;
        this.#log.info({ resourceVersion: this.#resourceVersion }, "watch expired (410): relisting");
        // The watch of a fresh list expiring at once would spin: back off like any failure.
        if (afterList && !healthy) await this.#backOff(undefined);
      } else if (result.outcome === "error") {
        // An ERROR event means the stream cannot be trusted: relist. A failed request: re-watch.
        if (result.error instanceof WatchErrorEvent) needList = true;
        await this.#backOff(result.error);
      } else if (!healthy) {
        // Ended at once with nothing delivered: something is closing watches early; do not spin.
        await this.#backOff(undefined);
      }
    }
  }

  async #backOff(err: unknown): Promise<void> {
    this.#failures++;
    this.#restarts++;
    const exp = Math.min(
      this.#backoff.maxMs,
      this.#backoff.initialMs * 2 ** Math.min(this.#failures - 1, 30),
    );
    // Full jitter on the upper half: [exp/2, exp).
    const delayMs = Math.round(exp / 2 + (exp / 2) * this.#random());
    const fields = { failures: this.#failures, retryInMs: delayMs };
    if (err === undefined) this.#log.debug(fields, "watch ended early: retrying after backoff");
    else if (this.#failures === 1)
      this.#log.info({ ...fields, err: describe(err) }, "list/watch failed: retrying");
    else this.#log.warn({ ...fields, err: describe(err) }, "list/watch failed again: retrying");
    await new Promise<void>((resolveSleep) => {
      let timer: TimerHandle | undefined = undefined;
      const wake = (): void => {
        if (timer !== undefined) this.#clock.clearTimeout(timer);
        this.#wake = undefined;
        resolveSleep();
      };
      this.#wake = wake;
      if (this.#stopped) return wake();
      timer = this.#clock.setTimeout(wake, delayMs);
    });
  }

  /** Lists every page and replaces the cache, reporting the difference as events. */
  async #listAll(): Promise<void> {
    const items: T[] = [];
    let resourceVersion: string | undefined;
    let token: string | undefined;
    let limit: number | undefined = this.#pageSize;
    while (!this.#stopped) {
      let page: ListPage<T>;
      try {
        this.#lists++;
        page = await this.#listPage({ labelSelector: this.#labelSelector, limit, continue: token });
      } catch (err) {
        // An expired continue token: fall back to one unpaged list, as client-go does.
        if (token !== undefined && isGone(err)) {
          items.length = 0;
          resourceVersion = undefined;
          token = undefined;
          limit = undefined;
          continue;
        }
        throw err;
      }
      items.push(...page.items);
      resourceVersion ??= page.resourceVersion;
      token = page.continue || undefined;
      if (token === undefined) break;
    }
    if (this.#stopped) return;
    if (!resourceVersion) throw new NatsbindError(`list ${this.#path}: answer has no resourceVersion`);
    this.#replace(items, resourceVersion);
  }

  #replace(items: T[], listVersion: string): void {
    const previous = this.#cache;
    const next = new Map<string, T>();
    for (const item of items) {
      const key = keyOf(item);
      if (key !== undefined) next.set(key, withoutManagedFields(item));
    }
    // Objects a writer upserted after the list's snapshot stay until the watch speaks for them;
    // an unchanged object stays the same object.
    for (const [key, old] of previous) {
      const listed = next.get(key);
      if (
        listed
          ? isOlderVersion(versionOf(listed), versionOf(old)) || sameVersion(listed, old)
          : isOlderVersion(listVersion, versionOf(old))
      )
        next.set(key, old);
    }
    this.#cache = next;
    this.#resourceVersion = listVersion;
    for (const [key, obj] of next) {
      const old = previous.get(key);
      if (!old) this.#emit("add", obj);
      else if (old !== obj && versionOf(old) !== versionOf(obj)) this.#emit("update", obj, old);
    }
    for (const [key, old] of previous) if (!next.has(key)) this.#emit("delete", old);
  }

  /** Applies one watch event to the cache and reports it. */
  #apply(type: string, obj: T): void {
    const key = keyOf(obj);
    if (key === undefined) return;
    const current = this.#cache.get(key);
    // Stale: the cache already holds a newer version (a writer's upsert).
    if (isOlderVersion(versionOf(obj), versionOf(current))) return;
    if (type === "DELETED") {
      this.#cache.delete(key);
      if (current) this.#emit("delete", obj);
      return;
    }
    // The version the cache holds (a writer's upsert): nothing changed.
    if (current && sameVersion(obj, current)) return;
    this.#cache.set(key, withoutManagedFields(obj));
    if (!current) this.#emit("add", obj);
    else if (versionOf(current) !== versionOf(obj)) this.#emit("update", obj, current);
  }

  /** One watch from the current resourceVersion; resolves when it ends, however it ends. */
  #watchOnce(): Promise<WatchResult> {
    const watch = new Watch(this.#kubeConfig);
    // client-node aborts a watch after 30 s without bytes; bookmarks come about once a minute.
    (watch as unknown as { requestTimeoutMs: number }).requestTimeoutMs = this.#watchIdleTimeoutMs;
    const timeoutSeconds = MIN_WATCH_TIMEOUT_SECONDS + Math.floor(this.#random() * MIN_WATCH_TIMEOUT_SECONDS);
    let events = 0;
    this.#watches++;
    return new Promise((resolveWatch) => {
      let settled = false;
      let controller: AbortController | undefined;
      const finish = (result: Omit<WatchResult, "events">): void => {
        if (settled) return;
        settled = true;
        this.#abortWatch = undefined;
        controller?.abort();
        resolveWatch({ ...result, events });
      };
      this.#abortWatch = () => finish({ outcome: "ended" });
      const onEvent = (type: string, obj: unknown): void => {
        if (settled) return;
        if (type === "ERROR") {
          if (isGone(obj)) finish({ outcome: "gone" });
          else finish({ outcome: "error", error: new WatchErrorEvent(this.#path, obj) });
          return;
        }
        const object = obj as T;
        const version = versionOf(object);
        if (version) this.#resourceVersion = version;
        if (type === "BOOKMARK") return;
        if (type !== "ADDED" && type !== "MODIFIED" && type !== "DELETED") return;
        events++;
        this.#events++;
        this.#apply(type, object);
      };
      const onDone = (err: unknown): void => {
        if (err === null || err === undefined) return finish({ outcome: "ended" });
        if (isGone(err)) return finish({ outcome: "gone" });
        finish({ outcome: "error", error: new KubernetesApiError("watch", this.#describePath(), err) });
      };
      watch
        .watch(
          this.#path,
          {
            resourceVersion: this.#resourceVersion,
            allowWatchBookmarks: true,
            labelSelector: this.#labelSelector,
            timeoutSeconds,
          },
          onEvent,
          onDone,
        )
        .then(
          (c) => {
            controller = c;
            if (settled) c.abort();
          },
          (err: unknown) =>
            finish({ outcome: "error", error: new KubernetesApiError("watch", this.#describePath(), err) }),
        );
    });
  }

  #describePath(): string {
    return this.#labelSelector ? `${this.#path}?labelSelector=${this.#labelSelector}` : this.#path;
  }

  /** The default lister, with a deadline on the Clock and aborted by stop(). */
  async #getPage(params: ListParams): Promise<ListPage<T>> {
    const abort = new AbortController();
    this.#abortList = abort;
    const timer = this.#clock.setTimeout(
      () => abort.abort(new DOMException(`no answer within ${this.#listTimeoutMs} ms`, "TimeoutError")),
      this.#listTimeoutMs,
    );
    try {
      return await listPage<T>(this.#kubeConfig, this.#path, params, abort.signal);
    } finally {
      this.#clock.clearTimeout(timer);
      if (this.#abortList === abort) this.#abortList = undefined;
    }
  }
}

/**
 * GET one page of a collection `path` as JSON with the kubeConfig's credentials and TLS settings.
 * Items get the kind and apiVersion of their list (the apiserver leaves them out). Failures are
 * KubernetesApiError.
 */
export async function listPage<T extends KubernetesObject>(
  kubeConfig: KubeConfig,
  path: string,
  params: ListParams,
  signal?: AbortSignal,
): Promise<ListPage<T>> {
  const what = params.labelSelector ? `${path}?labelSelector=${params.labelSelector}` : path;
  try {
    const cluster = kubeConfig.getCurrentCluster();
    if (!cluster) throw new NatsbindError("the kubeconfig has no current cluster");
    const url = new URL(cluster.server + path);
    if (params.labelSelector) url.searchParams.set("labelSelector", params.labelSelector);
    if (params.limit !== undefined) url.searchParams.set("limit", String(params.limit));
    if (params.continue) url.searchParams.set("continue", params.continue);
    const ctx = new RequestContext(url.toString(), HttpMethod.GET);
    ctx.setHeaderParam("Accept", "application/json");
    await kubeConfig.applySecurityAuthentication(ctx);
    if (signal) ctx.setSignal(signal);
    const response = await new IsomorphicFetchHttpLibrary().send(ctx).toPromise();
    const text = await response.body.text();
    if (response.httpStatusCode !== 200)
      throw new ApiException(response.httpStatusCode, "list failed", text, response.headers);
    const list = JSON.parse(text) as {
      kind?: string;
      apiVersion?: string;
      metadata?: { resourceVersion?: string; continue?: string };
      items?: T[];
    };
    const kind = list.kind?.endsWith("List") ? list.kind.slice(0, -4) : undefined;
    const items = (list.items ?? []).map((item) => ({
      ...item,
      kind: item.kind ?? kind,
      apiVersion: item.apiVersion ?? list.apiVersion,
    }));
    return {
      items,
      resourceVersion: list.metadata?.resourceVersion ?? "",
      continue: list.metadata?.continue,
    };
  } catch (err) {
    throw new KubernetesApiError("list", what, err);
  }
}

/** An ERROR event other than 410 on a watch: the stream cannot be trusted, so the informer relists. */
class WatchErrorEvent extends NatsbindError {
  constructor(path: string, status: unknown) {
    const s = apiStatus(status);
    super(`watch ${path}: ERROR event ${s?.code ?? ""} ${s?.reason ?? ""} ${s?.message ?? ""}`.trim());
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
