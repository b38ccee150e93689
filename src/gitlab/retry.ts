/**
 * When to retry a GitLab request and how long to wait: a pure policy, so tests can drive it
 * with a fixed clock and random source.
 *
 * gitbeaker's own requester retries 429/502 ten times at 2^i * 250 ms and ignores Retry-After;
 * natsbind replaces it (see client.ts) with this: honour Retry-After / RateLimit-Reset, otherwise
 * exponential backoff with full jitter, bounded in attempts and in total time.
 */

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  maxAttempts: number;
  baseDelayMs: number;
  /** Cap of one computed backoff (a server-sent Retry-After is honoured as sent). */
  maxDelayMs: number;
  /** Budget for all attempts and waits of one request. */
  maxTotalMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxAttempts: 6,
  baseDelayMs: 500,
  maxDelayMs: 30_000,
  maxTotalMs: 120_000,
};

/** Statuses worth another try: rate limiting and transient server-side failures. */
export function isRetryableStatus(status: number): boolean {
  return status === 429 || status === 500 || status === 502 || status === 503 || status === 504;
}

/**
 * Milliseconds the server asked us to wait, from Retry-After (seconds or HTTP date) or GitLab's
 * RateLimit-Reset (epoch seconds); undefined when it said nothing usable.
 */
export function serverDelayMs(
  headers: { retryAfter?: string | null; rateLimitReset?: string | null },
  nowMs: number,
): number | undefined {
  const retryAfter = headers.retryAfter?.trim();
  if (retryAfter) {
    if (/^\d{1,7}$/.test(retryAfter)) return Number(retryAfter) * 1000;
    const date = Date.parse(retryAfter);
    if (!Number.isNaN(date)) return Math.max(0, date - nowMs);
  }
  const reset = headers.rateLimitReset?.trim();
  if (reset && /^\d{1,12}$/.test(reset)) {
    const value = Number(reset);
    // GitLab sends an epoch timestamp; small values are read as a delay in seconds.
    return value > 1_000_000_000 ? Math.max(0, value * 1000 - nowMs) : value * 1000;
  }
  return undefined;
}

export type RetryDecision = { retry: true; delayMs: number } | { retry: false; reason: string };

/**
 * Decides after failed attempt number `attempt` (1 = the first request) that started
 * `elapsedMs` after the first one.
 */
export function decideRetry(o: {
  attempt: number;
  elapsedMs: number;
  serverDelayMs: number | undefined;
  random: () => number;
  policy?: RetryPolicy;
}): RetryDecision {
  const policy = o.policy ?? DEFAULT_RETRY_POLICY;
  if (o.attempt >= policy.maxAttempts) return { retry: false, reason: `gave up after ${o.attempt} attempts` };
  const backoff = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (o.attempt - 1));
  const delayMs =
    o.serverDelayMs !== undefined
      ? // As asked, plus a little jitter so many clients do not return in the same millisecond.
        Math.ceil(o.serverDelayMs + o.random() * Math.min(1000, o.serverDelayMs * 0.1))
      : Math.ceil(o.random() * backoff);
  if (o.elapsedMs + delayMs > policy.maxTotalMs) {
    return {
      retry: false,
      reason: `waiting ${delayMs} ms more would exceed the ${policy.maxTotalMs} ms budget (after ${o.attempt} attempts)`,
    };
  }
  return { retry: true, delayMs };
}
