/**
 * Signing-key rotation gauges per binding, from each rotator's last status (read at scrape time):
 * the oldest active key's age next to the binding's rotation.every (the "rotation overdue" alert),
 * the next due time, connections on replaced keys and accounts per phase. The step counter
 * (natsbind_rotation_steps_total) is counted where the steps are reported (src/main.ts).
 */
import type { Registry } from "../observability/metrics.ts";
import type { Clock } from "../runtime/clock.ts";
import type { KeyRotator } from "./rotator.ts";

export function registerRotationGauges(
  metrics: Registry,
  clock: Clock,
  rotators: () => readonly Pick<KeyRotator, "statuses" | "policies">[],
): void {
  const age = metrics.gauge({
    name: "natsbind_rotation_oldest_active_key_age_seconds",
    help: "Age of the oldest active role signing key of the binding's accounts.",
    labelNames: ["binding"],
  });
  const next = metrics.gauge({
    name: "natsbind_rotation_next_timestamp_seconds",
    help: "When the next scheduled signing-key rotation of the binding is due (unix seconds).",
    labelNames: ["binding"],
  });
  const waiting = metrics.gauge({
    name: "natsbind_rotation_waiting_connections",
    help: "Live connections on replaced signing keys kept past their overlap (gracePeriod).",
    labelNames: ["binding"],
  });
  const phases = metrics.gauge({
    name: "natsbind_rotation_accounts",
    help: "Accounts of the binding per rotation phase (active, prepared, retiring).",
    labelNames: ["binding", "phase"],
  });
  const every = metrics.gauge({
    name: "natsbind_rotation_every_seconds",
    help: "The binding's rotation.every: a role signing key is replaced this long after it became active (0: only when asked).",
    labelNames: ["binding"],
  });
  // Bindings shown at the last scrape: one that is gone gets zeros (the registry cannot remove a
  // series), so a deleted binding's last numbers do not keep an alert firing.
  let shown = new Set<string>();
  metrics.onCollect(() => {
    const now = clock.now();
    const current = new Set<string>();
    for (const rotator of rotators()) {
      const policies = rotator.policies();
      for (const [binding, s] of rotator.statuses()) {
        current.add(binding);
        if (s.oldestActiveKeySince)
          age.labels({ binding }).set(Math.max(0, (now - Date.parse(s.oldestActiveKeySince)) / 1000));
        if (s.nextRotation) next.labels({ binding }).set(Date.parse(s.nextRotation) / 1000);
        waiting.labels({ binding }).set(s.waitingConnections);
        for (const [phase, n] of Object.entries(s.accounts)) phases.labels({ binding, phase }).set(n);
        const policy = policies.get(binding);
        if (policy) every.labels({ binding }).set(policy.everyMs / 1000);
      }
    }
    for (const binding of shown) {
      if (current.has(binding)) continue;
      for (const gauge of [age, next, waiting, every]) gauge.labels({ binding }).set(0);
      for (const phase of ["active", "prepared", "retiring"]) phases.labels({ binding, phase }).set(0);
    }
    shown = current;
  });
}
