/**
 * Each binding's status as metrics (the reconciler's `status` event): its conditions in
 * kube-state-metrics' style (one series per condition and status, 1 for the one it has, 0 for the
 * others) and its counts. A binding that goes away gets 0 everywhere rather than losing its series
 * (the registry cannot remove one), so "not Ready" alerts stop for it and sums ignore it.
 */
import type { Registry } from "../../observability/metrics.ts";
import { CONDITION, type BindingStatus, type Condition } from "./status.ts";

const CONDITIONS = Object.values(CONDITION);
const STATUSES: readonly Condition["status"][] = ["True", "False", "Unknown"];

export interface BindingStatusMetrics {
  /** The binding's status as just computed, or undefined when the binding is gone. */
  observe(binding: string, status: BindingStatus | undefined): void;
}

export function bindingStatusMetrics(registry: Registry): BindingStatusMetrics {
  const condition = registry.gauge({
    name: "natsbind_binding_condition",
    help: "Conditions of each binding (Ready, GitLabSynced, ResolverSynced): 1 for the status it has (True, False, Unknown), 0 for the others.",
    labelNames: ["binding", "condition", "status"],
  });
  const projects = registry.gauge({
    name: "natsbind_binding_projects",
    help: "GitLab projects each binding selects, as of its last reconcile.",
    labelNames: ["binding"],
  });
  const accounts = registry.gauge({
    name: "natsbind_binding_accounts",
    help: "NATS accounts each binding manages (pushed, up to date or retained), as of its last reconcile.",
    labelNames: ["binding"],
  });
  const problems = registry.gauge({
    name: "natsbind_binding_account_problems",
    help: "Accounts of each binding that cannot be built, are not natsbind's, or whose key slot is not trusted.",
    labelNames: ["binding"],
  });
  return {
    observe(binding, status) {
      for (const type of CONDITIONS) {
        const has = status?.conditions.find((c) => c.type === type)?.status;
        for (const s of STATUSES)
          condition.labels({ binding, condition: type, status: s }).set(has === s ? 1 : 0);
      }
      projects.labels({ binding }).set(status?.counts.projects ?? 0);
      accounts.labels({ binding }).set(status?.counts.accounts ?? 0);
      problems.labels({ binding }).set(status?.counts.problems ?? 0);
    },
  };
}
