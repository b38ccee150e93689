/**
 * A keyed work queue after client-go's workqueue (Type + delaying + rate-limiting in one):
 * - a key waiting is held once however often it is added (events only say "look at this soon");
 * - a key is handed to one worker at a time: added again while processing, it is marked dirty and
 *   queued once more when the worker calls done(key);
 * - addAfter schedules an add, keeping the earliest due time per key;
 * - addRateLimited backs off per key exponentially until forget(key).
 * Ready keys come out FIFO. All timing goes through the injected Clock.
 */
import { systemClock, type Clock, type TimerHandle } from "./clock.ts";

/** How long to wait before retrying a key, from its failure history (client-go's RateLimiter). */
export interface RateLimiter<K extends string> {
  /** Records one more failure of `key` and returns the delay before its retry, ms. */
  when(key: K): number;
  /** Failures recorded for `key` since it was last forgotten. */
  numRequeues(key: K): number;
  /** Clears the history of `key` (it succeeded, or gave up for good). */
  forget(key: K): void;
}

export const DEFAULT_BACKOFF = { baseDelayMs: 100, maxDelayMs: 5 * 60_000 } as const;

/** base * 2^failures, capped at max: 100, 200, 400, ... 300000 ms by default. */
export function exponentialFailureRateLimiter<K extends string>(opts?: {
  baseDelayMs?: number;
  maxDelayMs?: number;
}): RateLimiter<K> {
  const base = opts?.baseDelayMs ?? DEFAULT_BACKOFF.baseDelayMs;
  const max = opts?.maxDelayMs ?? DEFAULT_BACKOFF.maxDelayMs;
  if (!(base > 0) || !(max >= base)) throw new RangeError("backoff needs 0 < baseDelayMs <= maxDelayMs");
  const failures = new Map<K, number>();
  return {
    when(key) {
      const previous = failures.get(key) ?? 0;
      failures.set(key, previous + 1);
      // Beyond 2^52 the product is no longer meaningful; the cap applies long before anyway.
      return previous > 52 ? max : Math.min(max, base * 2 ** previous);
    },
    numRequeues: (key) => failures.get(key) ?? 0,
    forget(key) {
      failures.delete(key);
    },
  };
}

export interface WorkQueueOptions<K extends string> {
  /** Names the queue in metrics and logs. */
  name?: string;
  clock?: Clock;
  rateLimiter?: RateLimiter<K>;
}

export interface WorkQueueMetrics {
  name: string;
  /** Keys ready and waiting for a worker. */
  depth: number;
  /** Keys inserted into the ready queue (adds of a key already waiting are not counted). */
  adds: number;
  /** Calls of addRateLimited. */
  retries: number;
  /** Keys handed to a worker and not yet done. */
  inFlight: number;
  /** Keys scheduled by addAfter / addRateLimited and not yet due. */
  delayed: number;
  /** How long the oldest key in flight has been processing, ms (0 when none). */
  longestRunningMs: number;
}

export class WorkQueue<K extends string> {
  readonly name: string;
  readonly #clock: Clock;
  readonly #limiter: RateLimiter<K>;
  readonly #ready = new Fifo<K>();
  /** Keys that need processing: waiting in #ready, or re-added while in #processing. */
  readonly #dirty = new Set<K>();
  /** Keys handed to a worker, with the time they were handed out. */
  readonly #processing = new Map<K, number>();
  readonly #delayed = new Map<K, { dueAt: number; handle: TimerHandle }>();
  readonly #getters: Array<(key: K | undefined) => void> = [];
  readonly #drainWaiters: Array<() => void> = [];
  #shuttingDown = false;
  #adds = 0;
  #retries = 0;

  constructor(opts: WorkQueueOptions<K> = {}) {
    this.name = opts.name ?? "workqueue";
    this.#clock = opts.clock ?? systemClock;
    this.#limiter = opts.rateLimiter ?? exponentialFailureRateLimiter<K>();
  }

  /** Marks `key` for processing. Ignored after shutdown. */
  add(key: K): void {
    if (this.#shuttingDown || this.#dirty.has(key)) return;
    this.#dirty.add(key);
    // In flight: done(key) puts it back, so no two workers ever hold it.
    if (this.#processing.has(key)) return;
    this.#ready.push(key);
    this.#adds++;
    this.#dispatch();
  }

  /** Adds `key` after `ms` (now if <= 0); if it is already scheduled, the earlier due time wins. */
  addAfter(key: K, ms: number): void {
    if (Number.isNaN(ms) || ms === Infinity) throw new RangeError(`addAfter: invalid delay ${ms} ms`);
    if (this.#shuttingDown) return;
    if (ms <= 0) {
      this.add(key);
      return;
    }
    const dueAt = this.#clock.now() + ms;
    const existing = this.#delayed.get(key);
    if (existing !== undefined) {
      if (existing.dueAt <= dueAt) return;
      this.#clock.clearTimeout(existing.handle);
    }
    const handle = this.#clock.setTimeout(() => {
      this.#delayed.delete(key);
      this.add(key);
    }, ms);
    this.#delayed.set(key, { dueAt, handle });
  }

  /** Adds `key` after its backoff delay and records one more failure; returns the delay, ms. */
  addRateLimited(key: K): number {
    this.#retries++;
    const delay = this.#limiter.when(key);
    this.addAfter(key, delay);
    return delay;
  }

  /** Failures recorded for `key` since it was last forgotten. */
  numRequeues(key: K): number {
    return this.#limiter.numRequeues(key);
  }

  /** Resets the backoff of `key`. Does not cancel a scheduled add. */
  forget(key: K): void {
    this.#limiter.forget(key);
  }

  /**
   * The next ready key, marked in flight until done(key); waits while none is ready. Undefined once
   * the queue is shut down (keys still waiting then are not handed out).
   */
  get(): Promise<K | undefined> {
    if (this.#shuttingDown) return Promise.resolve(undefined);
    const key = this.#ready.shift();
    if (key !== undefined) {
      this.#startProcessing(key);
      return Promise.resolve(key);
    }
    return new Promise((resolve) => this.#getters.push(resolve));
  }

  /** Ends processing of `key`; re-queues it once if it was added meanwhile. */
  done(key: K): void {
    if (!this.#processing.delete(key)) return;
    if (this.#dirty.has(key)) {
      if (this.#shuttingDown) {
        this.#dirty.delete(key);
      } else {
        this.#ready.push(key);
        this.#adds++;
        this.#dispatch();
      }
    }
    if (this.#processing.size === 0) for (const wake of this.#drainWaiters.splice(0)) wake();
  }

  /** Keys ready and waiting for a worker. */
  len(): number {
    return this.#ready.length;
  }

  isShuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /** Stops handing out keys: pending and future get() resolve undefined, scheduled adds are dropped. */
  shutDown(): void {
    if (this.#shuttingDown) return;
    this.#shuttingDown = true;
    for (const { handle } of this.#delayed.values()) this.#clock.clearTimeout(handle);
    this.#delayed.clear();
    for (const resolve of this.#getters.splice(0)) resolve(undefined);
  }

  /** shutDown(), then resolves once every key in flight is done. */
  shutDownWithDrain(): Promise<void> {
    this.shutDown();
    if (this.#processing.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  metrics(): WorkQueueMetrics {
    const now = this.#clock.now();
    let longestRunningMs = 0;
    for (const since of this.#processing.values()) longestRunningMs = Math.max(longestRunningMs, now - since);
    return {
      name: this.name,
      depth: this.#ready.length,
      adds: this.#adds,
      retries: this.#retries,
      inFlight: this.#processing.size,
      delayed: this.#delayed.size,
      longestRunningMs,
    };
  }

  /** Hands ready keys straight to waiting getters, oldest getter first. */
  #dispatch(): void {
    while (this.#getters.length > 0 && this.#ready.length > 0) {
      const key = this.#ready.shift() as K;
      this.#startProcessing(key);
      (this.#getters.shift() as (key: K) => void)(key);
    }
  }

  #startProcessing(key: K): void {
    this.#dirty.delete(key);
    this.#processing.set(key, this.#clock.now());
  }
}

/** Array-backed FIFO with O(1) amortized shift. */
class Fifo<T> {
  #items: Array<T | undefined> = [];
  #head = 0;

  get length(): number {
    return this.#items.length - this.#head;
  }

  push(item: T): void {
    this.#items.push(item);
  }

  shift(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head++] = undefined;
    if (this.#head === this.#items.length) {
      this.#items = [];
      this.#head = 0;
    } else if (this.#head >= 1024 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }
}
