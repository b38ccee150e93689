/**
 * The controller loop after controller-runtime: N workers take keys from a WorkQueue and call
 * reconcile(key, signal); one switch maps what happened to queue operations:
 *   throw TerminalError    -> forget; no retry until an event adds the key again      ("terminal")
 *   throw anything else    -> addRateLimited: per-key exponential backoff              ("error")
 *   return {requeueAfterMs} -> forget + addAfter: scheduled work (resync, rotation)   ("requeue")
 *   return nothing          -> forget                                                  ("done")
 * A reconcile gets only the key and re-reads the world (level-based); the queue guarantees that no
 * two workers reconcile one key at once.
 */
import { TerminalError } from "../errors.ts";
import { systemClock, type Clock } from "./clock.ts";
import type { WorkQueue } from "./workqueue.ts";

export type ReconcileResult = void | { requeueAfterMs: number };

export interface Reconciler<K extends string> {
  /** `signal` aborts when the controller stops; long I/O should pass it on. */
  reconcile(key: K, signal: AbortSignal): Promise<ReconcileResult>;
}

export type ReconcileOutcome =
  | { kind: "done"; durationMs: number }
  | { kind: "requeue"; durationMs: number; requeueAfterMs: number }
  /** `attempt`: failures in a row of this key, this one included; retried after `retryInMs`. */
  | { kind: "error"; durationMs: number; error: unknown; attempt: number; retryInMs: number }
  | { kind: "terminal"; durationMs: number; error: TerminalError };

export interface ControllerLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface ControllerOptions<K extends string> {
  name: string;
  reconciler: Reconciler<K>;
  queue: WorkQueue<K>;
  /** Concurrent reconciles of distinct keys; default 1. */
  workers?: number;
  clock?: Clock;
  log?: ControllerLogger;
  /** Called once per reconcile, after the queue was updated; must not throw (a throw is logged). */
  onResult?: (key: K, outcome: ReconcileOutcome) => void;
}

/** Error messages are bounded in logs; they come from our own errors, which carry no secrets. */
const MAX_LOGGED_MESSAGE = 1000;

export class Controller<K extends string> {
  readonly name: string;
  readonly queue: WorkQueue<K>;
  readonly #reconciler: Reconciler<K>;
  readonly #workers: number;
  readonly #clock: Clock;
  readonly #log: ControllerLogger | undefined;
  readonly #onResult: ((key: K, outcome: ReconcileOutcome) => void) | undefined;
  readonly #abort = new AbortController();
  #running: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;

  constructor(opts: ControllerOptions<K>) {
    const workers = opts.workers ?? 1;
    if (!Number.isInteger(workers) || workers < 1) throw new RangeError("workers must be an integer >= 1");
    this.name = opts.name;
    this.queue = opts.queue;
    this.#reconciler = opts.reconciler;
    this.#workers = workers;
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.log;
    this.#onResult = opts.onResult;
  }

  /** Starts the worker loops. A controller starts once; after stop() it cannot be restarted. */
  start(): void {
    if (this.#running !== undefined) throw new Error(`controller ${this.name} already started`);
    const loops = Array.from({ length: this.#workers }, () => this.#worker());
    this.#running = Promise.all(loops).then(() => undefined);
  }

  /**
   * Aborts the signal of reconciles in flight, shuts the queue down (no new keys are handed out)
   * and resolves when every worker has returned. Safe to call more than once.
   */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#abort.abort();
      this.queue.shutDown();
      await this.#running;
    })();
    return this.#stopping;
  }

  async #worker(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      try {
        await this.#process(key);
      } catch (err) {
        // Only a broken queue or rate limiter gets here; keep the loop alive and say so.
        this.#log?.error({ controller: this.name, key, err: safeError(err) }, "controller worker error");
      }
    }
  }

  async #process(key: K): Promise<void> {
    const signal = this.#abort.signal;
    const started = this.#clock.now();
    let outcome: ReconcileOutcome;
    try {
      try {
        const result = await this.#reconciler.reconcile(key, signal);
        outcome = this.#settle(key, result, this.#clock.now() - started);
      } catch (error) {
        outcome = this.#fail(key, error, this.#clock.now() - started);
      }
    } finally {
      this.queue.done(key);
    }
    this.#report(key, outcome, signal.aborted);
  }

  /** The one place that turns a reconcile's return or throw into queue operations. */
  #settle(key: K, result: ReconcileResult, durationMs: number): ReconcileOutcome {
    if (result === undefined) {
      this.queue.forget(key);
      return { kind: "done", durationMs };
    }
    const ms = result.requeueAfterMs;
    if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0) {
      return this.#fail(
        key,
        new RangeError(`reconcile returned an invalid requeueAfterMs: ${ms}`),
        durationMs,
      );
    }
    this.queue.forget(key);
    this.queue.addAfter(key, ms);
    return { kind: "requeue", durationMs, requeueAfterMs: ms };
  }

  #fail(key: K, error: unknown, durationMs: number): ReconcileOutcome {
    if (error instanceof TerminalError) {
      this.queue.forget(key);
      return { kind: "terminal", durationMs, error };
    }
    const retryInMs = this.queue.addRateLimited(key);
    return { kind: "error", durationMs, error, attempt: this.queue.numRequeues(key), retryInMs };
  }

  #report(key: K, outcome: ReconcileOutcome, stopping: boolean): void {
    try {
      const base = { controller: this.name, key, outcome: outcome.kind, durationMs: outcome.durationMs };
      switch (outcome.kind) {
        case "done":
          this.#log?.info(base, "reconciled");
          break;
        case "requeue":
          this.#log?.info(
            { ...base, requeueAfterMs: outcome.requeueAfterMs },
            "reconciled, requeue scheduled",
          );
          break;
        case "terminal":
          this.#log?.warn({ ...base, err: safeError(outcome.error) }, "reconcile failed, not retrying");
          break;
        case "error":
          if (stopping) {
            this.#log?.info({ ...base, err: safeError(outcome.error) }, "reconcile interrupted by stop");
          } else {
            this.#log?.error(
              {
                ...base,
                attempt: outcome.attempt,
                retryInMs: outcome.retryInMs,
                err: safeError(outcome.error),
              },
              "reconcile failed, will retry",
            );
          }
          break;
      }
      this.#onResult?.(key, outcome);
    } catch (err) {
      // A failing observer must not kill the worker loop.
      try {
        this.#log?.error(
          { controller: this.name, key, err: safeError(err) },
          "reconcile result observer threw",
        );
      } catch {
        // Nothing left to tell.
      }
    }
  }
}

/** Name and message only: never the cause chain, stack or attached request/response objects. */
function safeError(err: unknown): { name: string; message: string } {
  if (err instanceof Error) return { name: err.name, message: err.message.slice(0, MAX_LOGGED_MESSAGE) };
  const message =
    typeof err === "string" ? err.slice(0, MAX_LOGGED_MESSAGE) : `non-Error ${typeof err} thrown`;
  return { name: "NonError", message };
}
