/**
 * Per-key rate limits (token buckets refilled continuously: `perMinute` requests a minute, bursts
 * up to `perMinute`). The map of buckets is bounded: past `maxKeys`, the bucket idle longest goes
 * (a full bucket forgets nothing; a drained one evicted early gives that key a fresh budget, which
 * only happens when more than `maxKeys` keys are active at once).
 */
export interface RateLimitVerdict {
  allowed: boolean;
  /** When refused: seconds until one request is allowed again. */
  retryAfterS: number;
}

interface Bucket {
  tokens: number;
  atMs: number;
}

export class RateLimiter {
  readonly #perMinute: number;
  readonly #maxKeys: number;
  // Map order = least recently used first (a touched key is re-inserted).
  readonly #buckets = new Map<string, Bucket>();
  evicted = 0;

  constructor(perMinute: number, maxKeys = 100_000) {
    this.#perMinute = perMinute;
    this.#maxKeys = maxKeys;
  }

  take(key: string, nowMs: number): RateLimitVerdict {
    const ratePerMs = this.#perMinute / 60_000;
    let bucket = this.#buckets.get(key);
    if (bucket) {
      this.#buckets.delete(key);
      bucket.tokens = Math.min(this.#perMinute, bucket.tokens + Math.max(0, nowMs - bucket.atMs) * ratePerMs);
      bucket.atMs = nowMs;
    } else {
      bucket = { tokens: this.#perMinute, atMs: nowMs };
      if (this.#buckets.size >= this.#maxKeys) {
        const oldest = this.#buckets.keys().next().value;
        if (oldest !== undefined) this.#buckets.delete(oldest);
        this.evicted++;
      }
    }
    this.#buckets.set(key, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return { allowed: true, retryAfterS: 0 };
    }
    return { allowed: false, retryAfterS: Math.max(1, Math.ceil((1 - bucket.tokens) / ratePerMs / 1000)) };
  }

  get size(): number {
    return this.#buckets.size;
  }
}
