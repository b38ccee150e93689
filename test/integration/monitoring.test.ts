// deploy/monitoring against the real tools and a real natsbind:
// - `promtool check rules` on charts/natsbind/files/prometheus-rules.yaml (the one source of the
//   alerts) and `promtool test rules` on deploy/monitoring/tests/*.yaml (every alert fires and
//   stays quiet on synthetic series);
// - a running `natsbind run` (local mode, the real CLI in its own process, against a real
//   nats-server, the GitLab simulator, webhooks, the token exchange and the auth callout): its
//   /metrics passes `promtool check metrics`, and every metric the Grafana dashboard's queries and
//   the alert rules name is one it exports (histograms: their _bucket/_sum/_count series).
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parse, stringify } from "yaml";
import { NODE_FLAGS } from "../../src/cli/node-flags.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import { connect, jwtAuthenticator } from "@nats-io/transport-node";
import { startLocalRig, type LocalRig } from "../support/local-rig.ts";
import { natsConfigSection } from "../support/operator.ts";
import { metricNames } from "../support/promql.ts";
import {
  REPO_ROOT,
  freePort,
  httpGet,
  startProcess,
  toolBinary,
  waitFor,
  type ManagedProcess,
} from "../support/process.ts";
import { dashboardExpressions, exportedNames, type ExportedNames } from "../support/monitoring.ts";

const RULES_FILE = join(REPO_ROOT, "charts", "natsbind", "files", "prometheus-rules.yaml");
const RULE_TESTS_DIR = join(REPO_ROOT, "deploy", "monitoring", "tests");
const DASHBOARD_FILE = join(REPO_ROOT, "deploy", "monitoring", "grafana-dashboard.json");
const AUDIENCE = "https://natsbind.monitoring.test";
/**
 * What promtool check metrics (Prometheus v0.316.0) says about prom-client 15's default metrics:
 * gauges named _total. Not natsbind's names, and not renamable here; any other line fails the test.
 */
const PROM_CLIENT_LINT = [
  'nodejs_active_handles_total non-counter metrics should not have "_total" suffix',
  'nodejs_active_requests_total non-counter metrics should not have "_total" suffix',
  'nodejs_active_resources_total non-counter metrics should not have "_total" suffix',
];
const WEBHOOK_SECRET = "monitoring-webhook-secret";

function promtool(args: readonly string[], input?: string): { status: number | null; output: string } {
  const result = spawnSync(toolBinary("promtool"), args, {
    cwd: REPO_ROOT,
    encoding: "utf8",
    timeout: 60_000,
    ...(input !== undefined ? { input } : {}),
  });
  if (result.error) throw result.error;
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

describe("Prometheus rules (promtool)", { timeout: 120_000 }, () => {
  it("promtool check rules accepts the rule file", () => {
    const { status, output } = promtool(["check", "rules", RULES_FILE]);
    assert.equal(status, 0, output);
    const groups = (parse(readFileSync(RULES_FILE, "utf8")) as { groups: Array<{ rules: unknown[] }> })
      .groups;
    const rules = groups.reduce((n, g) => n + g.rules.length, 0);
    assert.match(output, new RegExp(`SUCCESS: ${rules} rules found`), output);
  });

  it("promtool test rules: every alert fires on its synthetic series and stays quiet without", async () => {
    const files = (await readdir(RULE_TESTS_DIR)).filter((f) => f.endsWith(".yaml")).sort();
    assert.ok(files.length > 0, "deploy/monitoring/tests holds rule tests");
    const { status, output } = promtool(["test", "rules", ...files.map((f) => join(RULE_TESTS_DIR, f))]);
    assert.equal(status, 0, output);
    assert.doesNotMatch(output, /FAILED/, output);
  });
});

describe(
  "a running natsbind's /metrics (promtool check metrics, dashboard and rule names)",
  { timeout: 180_000 },
  () => {
    let rig: LocalRig | undefined;
    let natsbind: ManagedProcess | undefined;
    let url: string;
    let exposition: string;
    let exported: ExportedNames;

    before(async () => {
      rig = await startLocalRig({ name: "monitoring", callout: true });
      const { op, server, sim, dir } = rig;
      const port = await freePort();
      url = `http://127.0.0.1:${port}`;
      await writeFile(join(dir, "webhook-secret"), WEBHOOK_SECRET);
      const config = {
        nats: natsConfigSection(op, [server.url]),
        gitlab: {
          url: sim.url,
          tokenFile: "token",
          webhookSecretFile: "webhook-secret",
          resyncInterval: "1h",
        },
        http: { listen: `127.0.0.1:${port}` },
        credentials: {
          audience: AUDIENCE,
          audit: { file: "audit/credentials.log" },
          callout: { credsFile: op.callout!.credsFile, signingKeyFile: op.callout!.signingKeyFile },
        },
      };
      await writeFile(join(dir, "natsbind.yaml"), stringify(config));
      const acme = sim.createGroup({ name: "Acme", path: "acme" });
      const api = sim.createProject({ name: "api", groupId: acme.id });
      await writeFile(
        join(dir, "bindings", "acme.yaml"),
        stringify({
          apiVersion: "natsbind.io/v1alpha1",
          kind: "NatsBinding",
          metadata: { name: "acme" },
          spec: {
            gitlab: { group: "acme" },
            roles: [
              { name: "ci", publish: { allow: ["build.{{project.id}}.>"] }, ci: { refs: "protected" } },
            ],
          },
        }),
      );
      // One 429 with Retry-After on the first listing: the retry and its wait are counted.
      sim.failNext(1, { status: 429, retryAfterSeconds: 1, pathIncludes: "/projects" });
      natsbind = startProcess(
        process.execPath,
        [
          ...NODE_FLAGS,
          join(REPO_ROOT, "src", "cli", "main.ts"),
          "run",
          "--config",
          join(dir, "natsbind.yaml"),
        ],
        { name: "natsbind", cwd: dir },
      );
      const keys = new DirectoryKeyStore(join(dir, "keys"));
      await waitFor(
        async () => {
          if (!natsbind!.running) throw natsbind!.error(natsbind!.exitReason()!);
          const slot = await keys.get({ binding: "acme", projectId: api.id });
          return slot !== undefined && (await rig!.resolver.lookup(slot.account)) !== undefined;
        },
        { what: "the project's account on the server", timeoutMs: 30_000, intervalMs: 50 },
      );

      // A webhook delivery (a project created after the hook was added), answered and counted.
      sim.addSystemHook(`${url}/webhooks/gitlab`, WEBHOOK_SECRET);
      const web = sim.createProject({ name: "web", groupId: acme.id });
      const deliveries = await sim.deliverPending();
      assert.ok(
        deliveries.length > 0 && deliveries.every((d) => d.status === 202),
        JSON.stringify(deliveries),
      );
      await waitFor(async () => (await keys.get({ binding: "acme", projectId: web.id })) !== undefined, {
        what: "the webhook's project to get an account",
        timeoutMs: 20_000,
        intervalMs: 50,
      });

      // Credentials: one issued and one refused through the exchange, one through the callout.
      const token = sim.mintIdToken({ projectId: api.id, aud: AUDIENCE });
      const issued = await fetch(`${url}/v1/credentials`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ role: "ci" }),
      });
      assert.equal(issued.status, 200, await issued.text());
      const refused = await fetch(`${url}/v1/credentials`, {
        method: "POST",
        headers: { authorization: "Bearer not-a-token", "content-type": "application/json" },
        body: JSON.stringify({ role: "ci" }),
      });
      assert.equal(refused.status, 401, await refused.text());
      const nc = await connect({
        servers: server.url,
        authenticator: jwtAuthenticator(op.callout!.sentinelJwt),
        user: "ci",
        pass: sim.mintIdToken({ projectId: api.id, aud: AUDIENCE }),
        maxReconnectAttempts: 0,
        timeout: 10_000,
      });
      await nc.close();

      const metrics = await httpGet(`${url}/metrics`);
      assert.equal(metrics.status, 200, metrics.body);
      exposition = metrics.body;
      exported = exportedNames(exposition);
    });

    after(async () => {
      await natsbind?.stop();
      await rig?.stop();
    });

    it("promtool check metrics finds no problem in natsbind's /metrics", () => {
      const { status, output } = promtool(["check", "metrics"], exposition);
      const problems = output.split("\n").filter((line) => line.trim() !== "");
      const ours = problems.filter((line) => !PROM_CLIENT_LINT.includes(line));
      assert.deepEqual(ours, [], `promtool check metrics:\n${output}`);
      // 0: no problem; 3: lint problems (here only prom-client's own, listed above).
      assert.equal(status, problems.length === 0 ? 0 : 3, output);
    });

    it("every metric the Grafana dashboard queries is exported by natsbind", async () => {
      const dashboard = JSON.parse(await readFile(DASHBOARD_FILE, "utf8")) as unknown;
      const exprs = dashboardExpressions(dashboard);
      assert.ok(exprs.length >= 20, `the dashboard has queries (${exprs.length})`);
      const missing = new Map<string, string[]>();
      for (const { panel, expr } of exprs) {
        for (const name of metricNames(expr)) {
          if (!exported.has(name)) missing.set(name, [...(missing.get(name) ?? []), panel]);
        }
      }
      assert.deepEqual(
        Object.fromEntries(missing),
        {},
        "metric -> panels naming it, not exported by natsbind",
      );
    });

    it("every metric the alert rules name is exported by natsbind", async () => {
      const { groups } = parse(await readFile(RULES_FILE, "utf8")) as {
        groups: Array<{ rules: Array<{ alert: string; expr: string }> }>;
      };
      const missing: string[] = [];
      for (const rule of groups.flatMap((g) => g.rules)) {
        for (const name of metricNames(rule.expr))
          if (!exported.has(name)) missing.push(`${rule.alert}: ${name}`);
      }
      assert.deepEqual(missing, []);
    });

    it("what the test drove shows in the metrics (so the name checks saw live series)", () => {
      const value = (series: string): number => {
        const line = exposition.split("\n").find((l) => l.startsWith(`${series} `));
        assert.ok(line, `${series} in /metrics`);
        return Number(line.slice(series.length + 1));
      };
      assert.ok(value('natsbind_binding_condition{binding="acme",condition="Ready",status="True"}') === 1);
      assert.ok(value('natsbind_binding_accounts{binding="acme"}') === 2);
      assert.ok(value('natsbind_resolver_requests_total{operation="push",outcome="ok"}') >= 2);
      assert.ok(value('natsbind_gitlab_retries_total{reason="rate_limited"}') === 1);
      assert.ok(value('natsbind_gitlab_retry_wait_seconds_total{reason="rate_limited"}') >= 1);
      assert.ok(value('natsbind_webhook_deliveries{outcome="accepted"}') >= 1);
      assert.ok(value('natsbind_webhook_request_duration_seconds_count{code="202"}') >= 1);
      assert.ok(value('natsbind_credentials_issued_total{via="exchange",role="ci"}') === 1);
      assert.ok(value('natsbind_credentials_issued_total{via="callout",role="ci"}') === 1);
      assert.ok(
        value(
          'natsbind_credentials_refused_total{via="exchange",code="invalid_token",reason="malformed"}',
        ) === 1,
      );
      assert.ok(value('natsbind_rotation_every_seconds{binding="acme"}') === 90 * 86_400);
      assert.equal(value("natsbind_reconciling"), 1);
    });
  },
);
