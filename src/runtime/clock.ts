/**
 * Time as a dependency: the runtime reads the time and sets timers only through a Clock, so tests
 * drive queues, backoff and scheduled work with a ManualClock instead of sleeping on wall time.
 */

declare const timerHandleBrand: unique symbol;

/** Opaque: only the clock that returned it can clear it. */
export interface TimerHandle {
  readonly [timerHandleBrand]: true;
}

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

/** Node clamps longer delays to 1 ms (with a warning); longer waits are chained in steps. */
const MAX_NODE_DELAY_MS = 2 ** 31 - 1;

interface SystemTimer {
  timer: ReturnType<typeof setTimeout> | undefined;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const handle: SystemTimer = { timer: undefined };
    const schedule = (remainingMs: number): void => {
      const step = Math.min(remainingMs, MAX_NODE_DELAY_MS);
      handle.timer = setTimeout(() => {
        if (remainingMs > step) schedule(remainingMs - step);
        else fn();
      }, step);
    };
    schedule(Number.isFinite(ms) && ms > 0 ? ms : 0);
    return handle as unknown as TimerHandle;
  },
  clearTimeout(handle) {
    clearTimeout((handle as unknown as SystemTimer).timer);
  },
};

interface ManualTimer {
  readonly dueAt: number;
  readonly seq: number;
  readonly fn: () => void;
}

/**
 * A clock that moves only when told. `advance(ms)` fires every timer due by the new time,
 * synchronously, in due-time order (ties in the order they were set), with `now()` reading each
 * timer's due time while it runs; timers set by a firing timer fire too if they fall due in range.
 */
export class ManualClock implements Clock {
  #now: number;
  #seq = 0;
  readonly #timers = new Set<ManualTimer>();

  /** Starts at a fixed instant by default, so runs are reproducible. */
  constructor(startMs: number = Date.UTC(2026, 0, 1)) {
    this.#now = startMs;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const delay = Number.isFinite(ms) && ms > 0 ? ms : 0;
    const timer: ManualTimer = { dueAt: this.#now + delay, seq: this.#seq++, fn };
    this.#timers.add(timer);
    return timer as unknown as TimerHandle;
  }

  clearTimeout(handle: TimerHandle): void {
    this.#timers.delete(handle as unknown as ManualTimer);
  }

  /** Moves time forward by `ms`, firing due timers. A timer that throws stops the advance there. */
  advance(ms: number): void {
    if (!(ms >= 0) || !Number.isFinite(ms)) throw new RangeError(`advance: ms must be >= 0, got ${ms}`);
    const target = this.#now + ms;
    for (;;) {
      const next = this.#earliest();
      if (next === undefined || next.dueAt > target) break;
      this.#timers.delete(next);
      this.#now = Math.max(this.#now, next.dueAt);
      next.fn();
    }
    this.#now = target;
  }

  /** Due times (ms epoch) of the timers not yet fired or cleared, earliest first. */
  pendingTimers(): number[] {
    return [...this.#timers].sort(byDue).map((t) => t.dueAt);
  }

  #earliest(): ManualTimer | undefined {
    let best: ManualTimer | undefined;
    for (const t of this.#timers) if (best === undefined || byDue(t, best) < 0) best = t;
    return best;
  }
}

function byDue(a: ManualTimer, b: ManualTimer): number {
  return a.dueAt - b.dueAt || a.seq - b.seq;
}
