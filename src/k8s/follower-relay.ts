/**
 * Wiring of the webhook relay for Kubernetes mode: the leader's verified address (leader-pod.ts)
 * from the elector's holder and a pod read in natsbind's namespace, the sender (relay-sender.ts),
 * and its metrics. Kept out of mode.ts so that file stays a list of parts.
 */
import type { CoreV1Api } from "@kubernetes/client-node";
import type { Config } from "../config/config.ts";
import type { GitLabSignal } from "../gitlab/signals.ts";
import type { Logger } from "../observability/logger.ts";
import type { Registry } from "../observability/metrics.ts";
import type { Clock } from "../runtime/clock.ts";
import { isNotFound } from "./api-errors.ts";
import { LeaderAddress } from "./leader-pod.ts";
import { SignalRelay } from "./relay-sender.ts";

export interface FollowerRelayOptions {
  kubernetes: Config["kubernetes"];
  core: CoreV1Api;
  key: Buffer;
  identity: string;
  /** The Lease holder last seen by this replica's elector. */
  holder: () => string | undefined;
  /** Set while this replica reconciles: signals are applied here. */
  local: () => ((signal: GitLabSignal) => void) | undefined;
  clock: Clock;
  metrics: Registry;
  log: Logger;
}

export function startFollowerRelay(o: FollowerRelayOptions): SignalRelay {
  const { relay, leaderElection } = o.kubernetes;
  const namespace = relay.namespace ?? leaderElection.namespace;
  const address = new LeaderAddress({
    holder: o.holder,
    self: o.identity,
    labels: relay.podLabels,
    portName: relay.portName,
    clock: o.clock,
    readPod: async (name) => {
      try {
        return await o.core.readNamespacedPod({ name, namespace });
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    },
  });
  const sender = new SignalRelay({
    key: o.key,
    self: o.identity,
    leader: () => address.resolve(),
    local: o.local,
    clock: o.clock,
    log: o.log,
  });
  const pending = o.metrics.gauge({
    name: "natsbind_webhook_relay_pending",
    help: "Accepted webhook signals this replica holds until a leader takes them.",
  });
  const signals = o.metrics.gauge({
    name: "natsbind_webhook_relay_signals",
    help: "Signals of this replica's relay since start: sent to the leader, applied here after becoming leader, dropped (queue full).",
    labelNames: ["outcome"],
  });
  o.metrics.onCollect(() => {
    pending.set(sender.pending.size);
    signals.labels({ outcome: "sent" }).set(sender.counters.sent);
    signals.labels({ outcome: "applied_locally" }).set(sender.counters.appliedLocally);
    signals.labels({ outcome: "dropped" }).set(sender.pending.dropped);
  });
  return sender;
}
