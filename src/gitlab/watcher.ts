/**
 * Keeps a ProjectInventory current: a full resync at start and every `resyncIntervalMs` (the
 * safety net for missed webhooks), and a targeted refresh for each webhook signal. Reports each
 * non-empty diff; failures are reported and retried at the next trigger, never turned into
 * deletions.
 */
import { isEmptyDiff, type InventoryDiff, type ProjectInventory } from "./inventory.ts";

/** The part of a webhook signal the watcher needs (see signals.ts). */
export type InventoryTrigger = { kind: "project"; projectId: number } | { kind: "group"; groupId: number };

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

export interface InventoryWatcherOptions {
  inventory: ProjectInventory;
  resyncIntervalMs: number;
  onChange: (diff: InventoryDiff, cause: "resync" | "webhook") => void;
  onError: (err: unknown, cause: "resync" | "webhook") => void;
  timers?: Timers;
}

export class InventoryWatcher {
  readonly #opts: InventoryWatcherOptions;
  readonly #timers: Timers;
  #timer: unknown;
  #stopped = true;

  constructor(opts: InventoryWatcherOptions) {
    if (!(opts.resyncIntervalMs >= 1_000)) throw new RangeError("resyncIntervalMs must be at least 1000");
    this.#opts = opts;
    this.#timers = opts.timers ?? realTimers;
  }

  /** Runs the first resync now; resolves when it finished (successfully or not). */
  async start(): Promise<void> {
    this.#stopped = false;
    await this.#resync();
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) this.#timers.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  async #resync(): Promise<void> {
    if (this.#timer !== undefined) this.#timers.clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#run("resync", () => this.#opts.inventory.resync());
    if (!this.#stopped)
      this.#timer = this.#timers.setTimeout(() => void this.#resync(), this.#opts.resyncIntervalMs);
  }

  async #run(cause: "resync" | "webhook", op: () => Promise<InventoryDiff>): Promise<void> {
    try {
      const diff = await op();
      if (!isEmptyDiff(diff)) this.#opts.onChange(diff, cause);
    } catch (err) {
      this.#opts.onError(err, cause);
    }
  }

  /** A webhook said something changed: look at that project, or re-list for group events. */
  async handle(trigger: InventoryTrigger): Promise<void> {
    if (this.#stopped) return;
    if (trigger.kind === "project") {
      await this.#run("webhook", () => this.#opts.inventory.refreshProject(trigger.projectId));
    } else {
      await this.#run("webhook", () => this.#opts.inventory.resync());
    }
  }
}
