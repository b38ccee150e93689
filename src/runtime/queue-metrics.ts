/**
 * The binding work queue as gauges, read at scrape time: what waits, what runs, what is scheduled,
 * and how long the oldest reconcile in flight has been running (the "reconcile stuck" alert).
 */
import type { Registry } from "../observability/metrics.ts";
import type { WorkQueue } from "./workqueue.ts";

/** The binding work queue's state (read at scrape time). */
export function registerQueueGauges(metrics: Registry, queue: WorkQueue<string>): void {
  const depth = metrics.gauge({
    name: "natsbind_workqueue_depth",
    help: "Bindings waiting for a reconcile worker.",
  });
  const inFlight = metrics.gauge({
    name: "natsbind_workqueue_in_flight",
    help: "Bindings being reconciled now.",
  });
  const delayed = metrics.gauge({
    name: "natsbind_workqueue_delayed",
    help: "Bindings scheduled for a later reconcile (resync, rotation, backoff after an error).",
  });
  const longest = metrics.gauge({
    name: "natsbind_workqueue_longest_running_seconds",
    help: "How long the longest reconcile in flight has been running.",
  });
  metrics.onCollect(() => {
    const m = queue.metrics();
    depth.set(m.depth);
    inFlight.set(m.inFlight);
    delayed.set(m.delayed);
    longest.set(m.longestRunningMs / 1000);
  });
}
