/**
 * The AccountResolver port with metrics: requests by operation and outcome, and their duration.
 * src/main.ts hands the reconciler this wrapper (Kubernetes mode puts its leader fence around it,
 * so a follower's refused write is not counted as a resolver failure). The "pushes failing" alert
 * of deploy/monitoring reads natsbind_resolver_requests_total{operation="push"}.
 */
import type { Registry } from "../observability/metrics.ts";
import {
  ResolverIncompleteError,
  ResolverRejectedError,
  ResolverTimeoutError,
  ResolverUnavailableError,
  type AccountResolver,
} from "./resolver.ts";

export type ResolverOperation = "push" | "lookup" | "list" | "delete";

/** The `outcome` label: ok, or what kind of failure (bounded: one value per error class). */
export type ResolverOutcomeLabel = "ok" | "timeout" | "rejected" | "incomplete" | "unavailable" | "error";

const OPERATIONS: readonly ResolverOperation[] = ["push", "lookup", "list", "delete"];
const OUTCOMES: readonly ResolverOutcomeLabel[] = [
  "ok",
  "timeout",
  "rejected",
  "incomplete",
  "unavailable",
  "error",
];

export function outcomeOf(err: unknown): ResolverOutcomeLabel {
  if (err instanceof ResolverTimeoutError) return "timeout";
  if (err instanceof ResolverRejectedError) return "rejected";
  if (err instanceof ResolverIncompleteError) return "incomplete";
  if (err instanceof ResolverUnavailableError) return "unavailable";
  return "error";
}

export function measuredResolver(inner: AccountResolver, registry: Registry): AccountResolver {
  const requests = registry.counter({
    name: "natsbind_resolver_requests_total",
    help: "Requests to the NATS account resolver by operation (push, lookup, list, delete) and outcome (ok, timeout, rejected, incomplete, unavailable, error).",
    labelNames: ["operation", "outcome"],
  });
  const duration = registry.histogram({
    name: "natsbind_resolver_request_duration_seconds",
    help: "Time of one NATS account resolver request (every server's answer awaited), by operation.",
    labelNames: ["operation"],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  });
  // Every request series starts at 0, so an alert on errors sees the first one as an increase.
  for (const operation of OPERATIONS) {
    for (const outcome of OUTCOMES) requests.labels({ operation, outcome }).inc(0);
  }
  const measure = async <T>(operation: ResolverOperation, call: () => Promise<T>): Promise<T> => {
    const started = performance.now();
    let outcome: ResolverOutcomeLabel = "ok";
    try {
      return await call();
    } catch (err) {
      outcome = outcomeOf(err);
      throw err;
    } finally {
      requests.labels({ operation, outcome }).inc();
      duration.labels({ operation }).observe((performance.now() - started) / 1000);
    }
  };
  return {
    push: (jwt) => measure("push", () => inner.push(jwt)),
    lookup: (account) => measure("lookup", () => inner.lookup(account)),
    list: () => measure("list", () => inner.list()),
    delete: (accounts) => measure("delete", () => inner.delete(accounts)),
  };
}
