/**
 * Metrics of natsbind's GitLab traffic: every HTTP attempt (by status code), the waits between
 * attempts (rate limiting, server errors, no answer) and inventory refreshes that failed. Wired to
 * GitbeakerGitLab's onRequest/onRetry and ProjectInventories' onError in src/main.ts; the alerts of
 * deploy/monitoring read them (GitLab unreachable, token rejected, listing failing).
 */
import type { Registry } from "../observability/metrics.ts";
import type { GitLabRequestEvent, GitLabRetryEvent } from "./client.ts";

/** Why natsbind waited before another attempt: the values of the `reason` label. */
export type GitLabRetryReason = "rate_limited" | "server_error" | "no_response";

const RETRY_REASONS: readonly GitLabRetryReason[] = ["rate_limited", "server_error", "no_response"];

export interface GitLabMetrics {
  onRequest(event: GitLabRequestEvent): void;
  onRetry(event: GitLabRetryEvent): void;
  /** An inventory listing or project refresh failed (after the client's own retries). */
  inventoryFailed(): void;
}

export function retryReason(status: number | undefined): GitLabRetryReason {
  if (status === undefined) return "no_response";
  return status === 429 ? "rate_limited" : "server_error";
}

export function gitlabMetrics(registry: Registry): GitLabMetrics {
  const requests = registry.counter({
    name: "natsbind_gitlab_requests_total",
    help: 'GitLab API HTTP attempts (retries included), by status code ("none": no response: timeout, network error).',
    labelNames: ["code"],
  });
  const duration = registry.histogram({
    name: "natsbind_gitlab_request_duration_seconds",
    help: "Time of one GitLab API HTTP attempt, response body included.",
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  });
  const retries = registry.counter({
    name: "natsbind_gitlab_retries_total",
    help: "GitLab API attempts retried after a wait, by reason (rate_limited: 429, server_error: 5xx, no_response).",
    labelNames: ["reason"],
  });
  const waited = registry.counter({
    name: "natsbind_gitlab_retry_wait_seconds_total",
    help: "Time spent waiting before GitLab API retries (Retry-After / RateLimit-Reset when GitLab sent one), by reason.",
    labelNames: ["reason"],
  });
  const inventoryFailures = registry.counter({
    name: "natsbind_gitlab_inventory_failures_total",
    help: "GitLab inventory listings and project refreshes that failed after the client's retries.",
  });
  // Known label values start at 0: rate() sees the first retry, and the series exist to query.
  for (const reason of RETRY_REASONS) {
    retries.labels({ reason }).inc(0);
    waited.labels({ reason }).inc(0);
  }
  return {
    onRequest(event) {
      requests.labels({ code: event.status !== undefined ? String(event.status) : "none" }).inc();
      duration.observe(Math.max(0, event.durationMs) / 1000);
    },
    onRetry(event) {
      const reason = retryReason(event.status);
      retries.labels({ reason }).inc();
      waited.labels({ reason }).inc(Math.max(0, event.delayMs) / 1000);
    },
    inventoryFailed() {
      inventoryFailures.inc();
    },
  };
}
