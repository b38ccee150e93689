import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  DEFAULT_RETRY_POLICY,
  decideRetry,
  isRetryableStatus,
  serverDelayMs,
} from "../../src/gitlab/retry.ts";

const NOW = Date.parse("2026-11-25T12:00:00Z");

describe("GitLab retry policy", () => {
  it("retries rate limits and transient server errors only", () => {
    for (const s of [429, 500, 502, 503, 504]) assert.ok(isRetryableStatus(s), String(s));
    for (const s of [400, 401, 403, 404, 409, 422, 501]) assert.ok(!isRetryableStatus(s), String(s));
  });

  it("reads Retry-After as seconds or an HTTP date, and RateLimit-Reset as epoch seconds", () => {
    assert.equal(serverDelayMs({ retryAfter: "2" }, NOW), 2000);
    assert.equal(serverDelayMs({ retryAfter: new Date(NOW + 5000).toUTCString() }, NOW), 5000);
    assert.equal(serverDelayMs({ rateLimitReset: String(NOW / 1000 + 7) }, NOW), 7000);
    assert.equal(serverDelayMs({ rateLimitReset: "3" }, NOW), 3000);
    assert.equal(serverDelayMs({ retryAfter: "2", rateLimitReset: String(NOW / 1000 + 60) }, NOW), 2000);
    assert.equal(serverDelayMs({ retryAfter: "soon" }, NOW), undefined);
    assert.equal(serverDelayMs({}, NOW), undefined);
    assert.equal(serverDelayMs({ retryAfter: new Date(NOW - 5000).toUTCString() }, NOW), 0);
  });

  it("honours the server's delay, with at most 10% (<= 1 s) jitter", () => {
    const lo = decideRetry({ attempt: 1, elapsedMs: 0, serverDelayMs: 2000, random: () => 0 });
    const hi = decideRetry({ attempt: 1, elapsedMs: 0, serverDelayMs: 2000, random: () => 0.999 });
    assert.deepEqual(lo, { retry: true, delayMs: 2000 });
    assert.ok(hi.retry && hi.delayMs >= 2000 && hi.delayMs <= 2200, JSON.stringify(hi));
  });

  it("backs off exponentially with full jitter when the server says nothing", () => {
    const delays = [1, 2, 3, 4, 5].map((attempt) => {
      const d = decideRetry({ attempt, elapsedMs: 0, serverDelayMs: undefined, random: () => 1 });
      assert.ok(d.retry);
      return d.delayMs;
    });
    assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000]);
    const jittered = decideRetry({ attempt: 3, elapsedMs: 0, serverDelayMs: undefined, random: () => 0.25 });
    assert.deepEqual(jittered, { retry: true, delayMs: 500 });
    const capped = decideRetry({
      attempt: 9,
      elapsedMs: 0,
      serverDelayMs: undefined,
      random: () => 1,
      policy: { ...DEFAULT_RETRY_POLICY, maxAttempts: 20 },
    });
    assert.deepEqual(capped, { retry: true, delayMs: DEFAULT_RETRY_POLICY.maxDelayMs });
  });

  it("stops at the attempt limit and when the wait would exceed the time budget", () => {
    const last = decideRetry({ attempt: 6, elapsedMs: 0, serverDelayMs: undefined, random: () => 0 });
    assert.deepEqual(last, { retry: false, reason: "gave up after 6 attempts" });
    const tooLong = decideRetry({ attempt: 1, elapsedMs: 110_000, serverDelayMs: 20_000, random: () => 0 });
    assert.equal(tooLong.retry, false);
    assert.match((tooLong as { reason: string }).reason, /would exceed the 120000 ms budget/);
  });
});
