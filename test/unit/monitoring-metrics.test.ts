// The metrics natsbind exports for deploy/monitoring's alerts and dashboard: GitLab traffic, the
// resolver wrapper, binding status, rotation and work-queue gauges, and the webhook timing wrapper.
// Each is read back from the registry's text exposition, as Prometheus would.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer, request, type Server } from "node:http";
import { once } from "node:events";
import { bindingStatusMetrics } from "../../src/controllers/binding/status-metrics.ts";
import type { BindingStatus } from "../../src/controllers/binding/status.ts";
import { gitlabMetrics, retryReason } from "../../src/gitlab/metrics.ts";
import { timedHandler } from "../../src/http/timing.ts";
import { measuredResolver } from "../../src/nats/resolver-metrics.ts";
import {
  ResolverIncompleteError,
  ResolverTimeoutError,
  type AccountResolver,
  type ResolverOutcome,
} from "../../src/nats/resolver.ts";
import { Registry } from "../../src/observability/metrics.ts";
import { registerRotationGauges } from "../../src/rotation/metrics.ts";
import type { RotationPolicy } from "../../src/rotation/phases.ts";
import { ManualClock } from "../../src/runtime/clock.ts";
import { registerQueueGauges } from "../../src/runtime/queue-metrics.ts";
import { WorkQueue } from "../../src/runtime/workqueue.ts";
import type { RotationStatus } from "../../src/controllers/binding/status.ts";

/** Samples of a rendered registry: "name{labels}" -> value. */
async function samples(registry: Registry): Promise<Map<string, number>> {
  const text = await registry.render();
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

describe("GitLab metrics", () => {
  it("counts attempts by status code, retries and waits by reason, and failed listings", async () => {
    const registry = new Registry();
    const m = gitlabMetrics(registry);
    const before = await samples(registry);
    assert.equal(
      before.get('natsbind_gitlab_retries_total{reason="rate_limited"}'),
      0,
      "known reasons start at 0",
    );
    assert.equal(before.get("natsbind_gitlab_inventory_failures_total"), 0);

    const request = { method: "GET", path: "/groups/1/projects" };
    m.onRequest({ ...request, status: 200, attempt: 1, durationMs: 40 });
    m.onRequest({ ...request, status: 429, attempt: 1, durationMs: 10 });
    m.onRequest({ ...request, attempt: 2, durationMs: 30_000, error: "no response within 30000 ms" });
    m.onRetry({ ...request, status: 429, attempt: 1, delayMs: 2_000, serverAsked: true });
    m.onRetry({ ...request, status: 503, attempt: 2, delayMs: 500, serverAsked: false });
    m.onRetry({ ...request, attempt: 3, delayMs: 250, serverAsked: false });
    m.inventoryFailed();

    const s = await samples(registry);
    assert.equal(s.get('natsbind_gitlab_requests_total{code="200"}'), 1);
    assert.equal(s.get('natsbind_gitlab_requests_total{code="429"}'), 1);
    assert.equal(s.get('natsbind_gitlab_requests_total{code="none"}'), 1, "no response: code none");
    assert.equal(s.get("natsbind_gitlab_request_duration_seconds_count"), 3);
    assert.equal(s.get("natsbind_gitlab_request_duration_seconds_sum"), 30.05);
    assert.equal(s.get('natsbind_gitlab_request_duration_seconds_bucket{le="0.05"}'), 2);
    assert.equal(s.get('natsbind_gitlab_retries_total{reason="rate_limited"}'), 1);
    assert.equal(s.get('natsbind_gitlab_retries_total{reason="server_error"}'), 1);
    assert.equal(s.get('natsbind_gitlab_retries_total{reason="no_response"}'), 1);
    assert.equal(s.get('natsbind_gitlab_retry_wait_seconds_total{reason="rate_limited"}'), 2);
    assert.equal(s.get('natsbind_gitlab_retry_wait_seconds_total{reason="server_error"}'), 0.5);
    assert.equal(s.get("natsbind_gitlab_inventory_failures_total"), 1);
  });

  it("names the retry reason from the status", () => {
    assert.equal(retryReason(429), "rate_limited");
    assert.equal(retryReason(502), "server_error");
    assert.equal(retryReason(undefined), "no_response");
  });
});

class FakeResolver implements AccountResolver {
  pushError: Error | undefined;
  async push(): Promise<ResolverOutcome> {
    if (this.pushError) throw this.pushError;
    return { accounts: ["A"], replies: [] };
  }
  async lookup(account: string): Promise<string | undefined> {
    return account === "known" ? "jwt" : undefined;
  }
  async list(): Promise<string[]> {
    return [];
  }
  async delete(accounts: string[]): Promise<ResolverOutcome> {
    throw new ResolverIncompleteError(`delete ${accounts.length}: 2 of 3 servers answered`);
  }
}

describe("measuredResolver", () => {
  it("counts each operation by outcome, times it, and passes results and errors through unchanged", async () => {
    const registry = new Registry();
    const inner = new FakeResolver();
    const resolver = measuredResolver(inner, registry);
    const zero = await samples(registry);
    assert.equal(zero.get('natsbind_resolver_requests_total{operation="push",outcome="timeout"}'), 0);

    assert.deepEqual(await resolver.push("jwt"), { accounts: ["A"], replies: [] });
    const timeout = new ResolverTimeoutError("push account A: no resolver answered within 5000 ms");
    inner.pushError = timeout;
    await assert.rejects(resolver.push("jwt"), (err) => err === timeout);
    inner.pushError = new Error("a bug");
    await assert.rejects(resolver.push("jwt"), /a bug/);
    assert.equal(await resolver.lookup("known"), "jwt");
    assert.equal(await resolver.lookup("other"), undefined);
    await assert.rejects(resolver.delete(["A"]), ResolverIncompleteError);

    const s = await samples(registry);
    assert.equal(s.get('natsbind_resolver_requests_total{operation="push",outcome="ok"}'), 1);
    assert.equal(s.get('natsbind_resolver_requests_total{operation="push",outcome="timeout"}'), 1);
    assert.equal(s.get('natsbind_resolver_requests_total{operation="push",outcome="error"}'), 1);
    assert.equal(s.get('natsbind_resolver_requests_total{operation="lookup",outcome="ok"}'), 2);
    assert.equal(s.get('natsbind_resolver_requests_total{operation="delete",outcome="incomplete"}'), 1);
    assert.equal(s.get('natsbind_resolver_request_duration_seconds_count{operation="push"}'), 3);
    assert.equal(s.get('natsbind_resolver_request_duration_seconds_count{operation="lookup"}'), 2);
  });
});

function status(ready: "True" | "False", accounts: number): BindingStatus {
  const condition = (type: "Ready" | "GitLabSynced" | "ResolverSynced", s: "True" | "False") => ({
    type,
    status: s,
    reason: s === "True" ? "Reconciled" : "GitLabError",
    message: "",
    observedGeneration: 1,
    lastTransitionTime: "2026-01-01T00:00:00.000Z",
  });
  return {
    observedGeneration: 1,
    conditions: [condition("GitLabSynced", ready), condition("Ready", ready)],
    counts: { projects: accounts + 1, accounts, pushed: 0, upToDate: accounts, retained: 0, problems: 1 },
    accounts: [],
  };
}

describe("binding status metrics", () => {
  it("one series per condition and status (1 for the current one), counts; zeros once the binding is gone", async () => {
    const registry = new Registry();
    const m = bindingStatusMetrics(registry);
    const series = (b: string, c: string, s: string) =>
      `natsbind_binding_condition{binding="${b}",condition="${c}",status="${s}"}`;

    m.observe("team-a/orders", status("True", 3));
    let s = await samples(registry);
    assert.equal(s.get(series("team-a/orders", "Ready", "True")), 1);
    assert.equal(s.get(series("team-a/orders", "Ready", "False")), 0);
    assert.equal(s.get(series("team-a/orders", "Ready", "Unknown")), 0);
    assert.equal(s.get(series("team-a/orders", "GitLabSynced", "True")), 1);
    // A condition the status does not have: 0 for every status.
    assert.equal(s.get(series("team-a/orders", "ResolverSynced", "True")), 0);
    assert.equal(s.get(series("team-a/orders", "ResolverSynced", "False")), 0);
    assert.equal(s.get('natsbind_binding_accounts{binding="team-a/orders"}'), 3);
    assert.equal(s.get('natsbind_binding_projects{binding="team-a/orders"}'), 4);
    assert.equal(s.get('natsbind_binding_account_problems{binding="team-a/orders"}'), 1);

    m.observe("team-a/orders", status("False", 3));
    s = await samples(registry);
    assert.equal(s.get(series("team-a/orders", "Ready", "True")), 0);
    assert.equal(s.get(series("team-a/orders", "Ready", "False")), 1);

    m.observe("team-a/orders", undefined);
    s = await samples(registry);
    for (const [name, value] of s) {
      if (name.includes('binding="team-a/orders"')) assert.equal(value, 0, `${name} after the binding went`);
    }
  });
});

describe("rotation gauges", () => {
  it("age, policy, next, waiting and phases per binding; a binding that is gone drops to 0", async () => {
    const clock = new ManualClock(Date.UTC(2026, 0, 10));
    const statuses = new Map<string, RotationStatus>();
    const policies = new Map<string, RotationPolicy>();
    const rotator = { statuses: () => statuses, policies: () => policies };
    const registry = new Registry();
    registerRotationGauges(registry, clock, () => [rotator]);
    statuses.set("team-a/orders", {
      oldestActiveKeySince: new Date(Date.UTC(2026, 0, 1)).toISOString(),
      nextRotation: new Date(Date.UTC(2026, 3, 1)).toISOString(),
      accounts: { active: 2, prepared: 1, retiring: 0 },
      waitingConnections: 4,
    });
    policies.set("team-a/orders", { everyMs: 90 * 86_400_000, gracePeriodMs: 86_400_000 });

    let s = await samples(registry);
    assert.equal(
      s.get('natsbind_rotation_oldest_active_key_age_seconds{binding="team-a/orders"}'),
      9 * 86_400,
    );
    assert.equal(s.get('natsbind_rotation_every_seconds{binding="team-a/orders"}'), 90 * 86_400);
    assert.equal(
      s.get('natsbind_rotation_next_timestamp_seconds{binding="team-a/orders"}'),
      Date.UTC(2026, 3, 1) / 1000,
    );
    assert.equal(s.get('natsbind_rotation_waiting_connections{binding="team-a/orders"}'), 4);
    assert.equal(s.get('natsbind_rotation_accounts{binding="team-a/orders",phase="prepared"}'), 1);
    clock.advance(3_600_000);
    s = await samples(registry);
    assert.equal(
      s.get('natsbind_rotation_oldest_active_key_age_seconds{binding="team-a/orders"}'),
      9 * 86_400 + 3600,
    );

    statuses.delete("team-a/orders");
    policies.delete("team-a/orders");
    s = await samples(registry);
    for (const [name, value] of s) {
      if (name.includes('binding="team-a/orders"')) assert.equal(value, 0, `${name} after the binding went`);
    }
  });
});

describe("work queue gauges", () => {
  it("waiting, in flight, scheduled and the longest running reconcile", async () => {
    const clock = new ManualClock(Date.UTC(2026, 0, 1));
    const queue = new WorkQueue<string>({ name: "bindings", clock });
    const registry = new Registry();
    registerQueueGauges(registry, queue);
    queue.add("a");
    queue.add("b");
    queue.addAfter("c", 60_000);
    const taken = await queue.get();
    assert.ok(taken !== undefined);
    clock.advance(90_000);
    const s = await samples(registry);
    assert.equal(s.get("natsbind_workqueue_in_flight"), 1);
    assert.equal(s.get("natsbind_workqueue_longest_running_seconds"), 90);
    assert.ok((s.get("natsbind_workqueue_depth") ?? 0) >= 1, "b waits");
    queue.shutDown();
  });
});

describe("timedHandler", () => {
  it("observes each answer's duration by status code", async () => {
    const registry = new Registry();
    const histogram = registry.histogram({
      name: "test_request_duration_seconds",
      help: "test",
      labelNames: ["code"],
      buckets: [1],
    });
    const server: Server = createServer(
      timedHandler((req, res) => {
        res.writeHead(req.url === "/bad" ? 401 : 202);
        res.end();
      }, histogram),
    );
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as { port: number };
    const get = (path: string) =>
      new Promise<number>((resolve, reject) => {
        request({ host: "127.0.0.1", port, path, method: "POST" }, (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode!));
        })
          .on("error", reject)
          .end();
      });
    assert.equal(await get("/"), 202);
    assert.equal(await get("/"), 202);
    assert.equal(await get("/bad"), 401);
    server.close();
    await once(server, "close");
    const s = await samples(registry);
    assert.equal(s.get('test_request_duration_seconds_count{code="202"}'), 2);
    assert.equal(s.get('test_request_duration_seconds_count{code="401"}'), 1);
  });
});
