/**
 * A follower's side of the webhook relay. Signals a follower accepted wait in a bounded queue that
 * coalesces by project id / group id (a signal only says "look again", so the latest one per id
 * is enough); a pump sends them, signed (webhook-relay.ts), to the verified leader (leader-pod.ts)
 * and retries with jittered backoff while there is no leader or it does not take them. When this
 * replica reconciles itself, the pump applies what is pending locally. A full queue drops its
 * oldest signal and counts it; the periodic resync is the backstop for anything dropped.
 */
import { randomBytes } from "node:crypto";
import type { GitLabSignal } from "../gitlab/signals.ts";
import type { Logger } from "../observability/logger.ts";
import type { Clock, TimerHandle } from "../runtime/clock.ts";
import { MAX_SIGNALS_PER_REQUEST, RELAY_PATH, signRelayRequest } from "./webhook-relay.ts";

export const DEFAULT_MAX_PENDING = 10_000;
const SEND_TIMEOUT_MS = 5_000;

export function signalKey(s: GitLabSignal): string {
  return s.kind === "project" ? `project:${s.projectId}` : `group:${s.groupId}`;
}

/** Insertion-ordered, one entry per project/group id, at most `max` entries. */
export class PendingSignals {
  readonly #max: number;
  readonly #byKey = new Map<string, GitLabSignal>();
  /** Signals dropped because the queue was full. */
  dropped = 0;

  constructor(max = DEFAULT_MAX_PENDING) {
    this.#max = max;
  }

  get size(): number {
    return this.#byKey.size;
  }

  /** Adds (or replaces the pending signal for the same id); a full queue drops its oldest. */
  add(signal: GitLabSignal): void {
    const key = signalKey(signal);
    if (!this.#byKey.delete(key) && this.#byKey.size >= this.#max) {
      const oldest = this.#byKey.keys().next().value!;
      this.#byKey.delete(oldest);
      this.dropped += 1;
    }
    this.#byKey.set(key, signal);
  }

  /** Removes and returns up to `n` of the oldest signals. */
  take(n: number): GitLabSignal[] {
    const out: GitLabSignal[] = [];
    for (const [key, signal] of this.#byKey) {
      if (out.length >= n) break;
      this.#byKey.delete(key);
      out.push(signal);
    }
    return out;
  }

  /** Puts back signals that could not be sent, unless a newer one for the same id arrived. */
  putBack(signals: readonly GitLabSignal[]): void {
    for (const s of signals) if (!this.#byKey.has(signalKey(s))) this.add(s);
  }
}

export type PostRelay = (url: string, headers: Record<string, string>, body: Buffer) => Promise<number>;

/** fetch without redirects (a 3xx is a failure) and with a timeout; the answer body is dropped. */
export const postRelay: PostRelay = async (url, headers, body) => {
  const res = await fetch(url, {
    method: "POST",
    headers,
    body,
    redirect: "manual",
    signal: AbortSignal.timeout(SEND_TIMEOUT_MS),
  });
  await res.body?.cancel();
  return res.status;
};

export interface SignalRelayOptions {
  key: Buffer;
  /** This replica's identity, sent (and signed) as the sender. */
  self: string;
  /** The verified leader URL (LeaderAddress.resolve). */
  leader: () => Promise<{ url: string } | { refused: string }>;
  /** Set while this replica reconciles: pending signals are applied here instead of sent. */
  local: () => ((signal: GitLabSignal) => void) | undefined;
  clock: Clock;
  maxPending?: number;
  post?: PostRelay;
  random?: () => number;
  backoff?: { initialMs: number; maxMs: number };
  nonce?: () => string;
  log?: Logger;
}

export class SignalRelay {
  readonly #o: SignalRelayOptions;
  readonly pending: PendingSignals;
  readonly counters = { sent: 0, appliedLocally: 0, failures: 0 };
  #timer: TimerHandle | undefined;
  #running: Promise<void> | undefined;
  #failures = 0;
  #stopped = false;
  #lastRefusal: string | undefined;
  /** kick() during an attempt: try again right after it (e.g. this replica just became leader). */
  #again = false;

  constructor(o: SignalRelayOptions) {
    this.#o = o;
    this.pending = new PendingSignals(o.maxPending);
  }

  submit(signal: GitLabSignal): void {
    if (this.#stopped) return;
    this.pending.add(signal);
    // While backing off, new signals wait for the scheduled attempt; a running attempt takes
    // them too (it loops while any are pending).
    if (this.#timer === undefined && !this.#running) this.kick();
  }

  /** Tries now (e.g. this replica just became the leader), or right after the current attempt. */
  kick(): void {
    if (this.#stopped) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    if (this.#timer !== undefined) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#running = this.#pump().finally(() => {
      this.#running = undefined;
      if (this.#again) {
        this.#again = false;
        this.kick();
      }
    });
  }

  /** Resolves when the current attempt (if any) finished: for tests. */
  async idle(): Promise<void> {
    while (this.#running) await this.#running;
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  async #pump(): Promise<void> {
    while (!this.#stopped && this.pending.size > 0) {
      const local = this.#o.local();
      if (local) {
        for (const s of this.pending.take(this.pending.size)) {
          this.counters.appliedLocally += 1;
          local(s);
        }
        this.#failures = 0;
        return;
      }
      const leader = await this.#o.leader();
      if ("refused" in leader) return this.#retryLater(leader.refused);
      const batch = this.pending.take(MAX_SIGNALS_PER_REQUEST);
      let status: number;
      try {
        const nonce = this.#o.nonce?.() ?? randomBytes(16).toString("hex");
        const { headers, body } = signRelayRequest(
          this.#o.key,
          { time: this.#o.clock.now(), nonce, from: this.#o.self },
          batch,
        );
        status = await (this.#o.post ?? postRelay)(`${leader.url}${RELAY_PATH}`, headers, body);
      } catch (err) {
        this.pending.putBack(batch);
        return this.#retryLater(`leader ${leader.url} did not answer: ${(err as Error).name}`);
      }
      if (status < 200 || status > 299) {
        this.pending.putBack(batch);
        return this.#retryLater(`leader ${leader.url} answered ${status}`);
      }
      this.counters.sent += batch.length;
      this.#failures = 0;
      this.#lastRefusal = undefined;
    }
  }

  #retryLater(why: string): void {
    this.counters.failures += 1;
    if (why !== this.#lastRefusal) {
      this.#o.log?.info({ pending: this.pending.size, why }, "webhook relay: signals kept for later");
      this.#lastRefusal = why;
    }
    const { initialMs, maxMs } = this.#o.backoff ?? { initialMs: 200, maxMs: 5_000 };
    const delay = Math.min(maxMs, initialMs * 2 ** Math.min(this.#failures, 20));
    this.#failures += 1;
    const jittered = delay * (0.5 + (this.#o.random ?? Math.random)() / 2);
    if (this.#stopped) return;
    this.#timer = this.#o.clock.setTimeout(() => {
      this.#timer = undefined;
      this.kick();
    }, jittered);
  }
}
