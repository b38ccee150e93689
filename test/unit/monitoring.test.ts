// deploy/monitoring without the tools: the PrometheusRule is what scripts/gen-monitoring.ts makes
// of the one rule file; every alert has a severity, a summary, a description and a runbook_url to a
// page that exists; docs/monitoring.md describes every alert; the promtool tests cover every alert
// firing and not firing; the dashboard is well-formed and every query parses; the ServiceMonitor
// selects deploy/base's Service.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { parse, parseAllDocuments } from "yaml";
import {
  PROMETHEUS_RULE_FILE,
  RULES_FILE,
  groupsBlock,
  renderPrometheusRule,
} from "../../scripts/gen-monitoring.ts";
import { dashboardExpressions } from "../support/monitoring.ts";
import { metricNames } from "../support/promql.ts";
import { REPO_ROOT } from "../support/process.ts";

const MONITORING_DIR = join(REPO_ROOT, "deploy", "monitoring");
const SEVERITIES = new Set(["critical", "warning", "info"]);

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
type Groups = Array<{ name: string; rules: Rule[] }>;

async function ruleGroups(): Promise<Groups> {
  return (parse(await readFile(RULES_FILE, "utf8")) as { groups: Groups }).groups;
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes. */
function anchors(markdown: string): Set<string> {
  const out = new Set<string>();
  for (const line of markdown.split("\n")) {
    const heading = /^#{1,6}\s+(.*)$/.exec(line);
    if (heading)
      out.add(
        heading[1]!
          .trim()
          .toLowerCase()
          .replace(/[^\p{L}\p{N}\s_-]/gu, "")
          .replace(/\s/g, "-"),
      );
  }
  return out;
}

describe("deploy/monitoring: the alert rules", () => {
  it("prometheusrule.yaml is exactly what scripts/gen-monitoring.ts renders from the rule file (run make monitoring)", async () => {
    const rules = await readFile(RULES_FILE, "utf8");
    assert.equal(await readFile(PROMETHEUS_RULE_FILE, "utf8"), await renderPrometheusRule(rules));
    const [doc, ...more] = parseAllDocuments(await readFile(PROMETHEUS_RULE_FILE, "utf8"));
    assert.equal(more.length, 0);
    const object = doc!.toJS() as { apiVersion: string; kind: string; spec: { groups: Groups } };
    assert.equal(object.apiVersion, "monitoring.coreos.com/v1");
    assert.equal(object.kind, "PrometheusRule");
    assert.deepEqual(object.spec.groups, await ruleGroups(), "the same groups as the rule file");
    assert.throws(() => groupsBlock("# no groups here\nfoo: 1\n"), /no top-level "groups:"/);
  });

  it("every alert: unique name, a severity, summary, description and a runbook_url to an existing page", async () => {
    const names = new Set<string>();
    for (const group of await ruleGroups()) {
      assert.match(group.name, /^natsbind\./);
      for (const rule of group.rules) {
        assert.ok(rule.alert, `group ${group.name}: only alerting rules (${rule.record ?? rule.expr})`);
        assert.match(rule.alert, /^Natsbind[A-Z][A-Za-z]+$/);
        assert.ok(!names.has(rule.alert), `${rule.alert} is unique`);
        names.add(rule.alert);
        assert.ok(
          SEVERITIES.has(rule.labels?.severity ?? ""),
          `${rule.alert}: severity critical, warning or info`,
        );
        for (const key of ["summary", "description", "runbook_url"])
          assert.ok(rule.annotations?.[key]?.trim(), `${rule.alert}: annotation ${key}`);
        // Every metric the expression names is one of natsbind's (the integration test checks
        // that a running natsbind exports each).
        for (const name of metricNames(rule.expr)) assert.match(name, /^natsbind_/, `${rule.alert}: ${name}`);
        const url = rule.annotations!.runbook_url!;
        const [path, anchor] = url.split("#");
        assert.match(path!, /^docs\/[a-z0-9/-]+\.md$/, `${rule.alert}: runbook_url ${url}`);
        assert.ok(existsSync(join(REPO_ROOT, path!)), `${rule.alert}: ${path} exists`);
        if (anchor)
          assert.ok(
            anchors(await readFile(join(REPO_ROOT, path!), "utf8")).has(anchor),
            `${rule.alert}: ${url}`,
          );
        // A runbook where one matches, else the alert's own section of docs/monitoring.md.
        if (path === "docs/monitoring.md") assert.equal(anchor, rule.alert.toLowerCase());
        else assert.match(path!, /^docs\/runbooks\//);
      }
    }
    assert.ok(names.size >= 15, `${names.size} alerts`);
  });

  it("docs/monitoring.md has a section and a table row for every alert", async () => {
    const doc = await readFile(join(REPO_ROOT, "docs", "monitoring.md"), "utf8");
    const sections = anchors(doc);
    for (const rule of (await ruleGroups()).flatMap((g) => g.rules)) {
      assert.ok(sections.has(rule.alert!.toLowerCase()), `### ${rule.alert}`);
      const row = doc.split("\n").find((l) => l.startsWith(`| [${rule.alert}](#`));
      assert.ok(row, `table row of ${rule.alert}`);
      assert.ok(row.includes(`| ${rule.labels!.severity} `), `${rule.alert}: severity in its row`);
    }
  });

  it("the promtool tests fire every alert and also expect it quiet somewhere", async () => {
    const fired = new Set<string>();
    const quiet = new Set<string>();
    const files = (await readdir(join(MONITORING_DIR, "tests"))).filter((f) => f.endsWith(".yaml"));
    for (const file of files) {
      const test = parse(await readFile(join(MONITORING_DIR, "tests", file), "utf8")) as {
        rule_files: string[];
        tests: Array<{ alert_rule_test?: Array<{ alertname: string; exp_alerts?: unknown[] }> }>;
      };
      assert.deepEqual(test.rule_files, ["../../../charts/natsbind/files/prometheus-rules.yaml"], file);
      for (const group of test.tests)
        for (const t of group.alert_rule_test ?? [])
          ((t.exp_alerts ?? []).length > 0 ? fired : quiet).add(t.alertname);
    }
    const alerts = (await ruleGroups()).flatMap((g) => g.rules.map((r) => r.alert!));
    assert.deepEqual(
      alerts.filter((a) => !fired.has(a)),
      [],
      "alerts no test fires",
    );
    assert.deepEqual(
      alerts.filter((a) => !quiet.has(a)),
      [],
      "alerts no test expects quiet",
    );
    assert.deepEqual(
      [...fired, ...quiet].filter((a) => !alerts.includes(a)),
      [],
      "tests of unknown alerts",
    );
  });
});

describe("deploy/monitoring: the Grafana dashboard", () => {
  interface Panel {
    id: number;
    type: string;
    title: string;
    description?: string;
    gridPos: { x: number; y: number; w: number; h: number };
    datasource?: { type: string; uid: string };
    targets?: Array<{ datasource?: { uid: string }; expr: string; refId: string }>;
    panels?: Panel[];
  }

  it("panels: unique ids, on the 24-column grid without overlap, described, every query on $datasource and parseable", async () => {
    const dashboard = JSON.parse(await readFile(join(MONITORING_DIR, "grafana-dashboard.json"), "utf8")) as {
      uid: string;
      title: string;
      panels: Panel[];
      templating: { list: Array<{ name: string }> };
    };
    assert.ok(dashboard.uid && dashboard.title);
    assert.deepEqual(
      dashboard.templating.list.map((v) => v.name),
      ["datasource", "job", "binding"],
    );
    const ids = new Set<number>();
    const cells = new Map<string, string>();
    for (const panel of dashboard.panels) {
      assert.ok(!ids.has(panel.id), `panel id ${panel.id} is unique`);
      ids.add(panel.id);
      const { x, y, w, h } = panel.gridPos;
      assert.ok(x >= 0 && w > 0 && x + w <= 24 && h > 0, `${panel.title}: inside 24 columns`);
      for (let row = y; row < y + h; row++)
        for (let col = x; col < x + w; col++) {
          const key = `${row}:${col}`;
          assert.ok(!cells.has(key), `${panel.title} overlaps ${cells.get(key)}`);
          cells.set(key, panel.title);
        }
      if (panel.type === "row") continue;
      assert.ok(panel.description?.trim(), `${panel.title}: a description`);
      assert.equal(panel.datasource?.uid, "${datasource}", `${panel.title}: the datasource variable`);
      assert.ok((panel.targets ?? []).length > 0, `${panel.title}: queries`);
      for (const target of panel.targets ?? []) assert.equal(target.datasource?.uid, "${datasource}");
    }
    const queries = dashboardExpressions(dashboard);
    for (const { panel, expr } of queries) assert.ok(metricNames(expr).length > 0, `${panel}: ${expr}`);
  });
});

describe("deploy/monitoring: the ServiceMonitor and kustomization", () => {
  it("selects deploy/base's Service by its labels and scrapes its http port's /metrics", async () => {
    const service = parse(await readFile(join(REPO_ROOT, "deploy", "base", "service.yaml"), "utf8")) as {
      metadata: { namespace: string; labels: Record<string, string> };
      spec: { ports: Array<{ name: string }> };
    };
    const monitor = parse(await readFile(join(MONITORING_DIR, "servicemonitor.yaml"), "utf8")) as {
      metadata: { namespace: string };
      spec: {
        selector: { matchLabels: Record<string, string> };
        endpoints: Array<{ port: string; path: string }>;
      };
    };
    assert.equal(monitor.metadata.namespace, service.metadata.namespace);
    for (const [k, v] of Object.entries(monitor.spec.selector.matchLabels))
      assert.equal(service.metadata.labels[k], v, `Service label ${k}`);
    assert.deepEqual(
      monitor.spec.endpoints.map((e) => [e.port, e.path]),
      [["http", "/metrics"]],
    );
    assert.ok(service.spec.ports.some((p) => p.name === "http"));
    const kustomization = parse(await readFile(join(MONITORING_DIR, "kustomization.yaml"), "utf8")) as {
      resources: string[];
    };
    assert.deepEqual(kustomization.resources.sort(), ["prometheusrule.yaml", "servicemonitor.yaml"]);
  });
});
