import { describe, it, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import {
  CONTENT_TYPE,
  DEFAULT_MAX_SERIES_PER_METRIC,
  DROPPED_SERIES_METRIC,
  MetricsError,
  Registry,
  exponentialBuckets,
  metricsHandler,
} from "../../src/observability/metrics.ts";

/** What every registry renders first: the drop counter, with no series until something is dropped. */
const DROPPED_HEADER = [
  `# HELP ${DROPPED_SERIES_METRIC} Label sets refused because their metric reached its series limit.`,
  `# TYPE ${DROPPED_SERIES_METRIC} counter`,
];

/** The exposition text of these lines as prom-client writes it: a blank line between metrics. */
function exposition(lines: string[]): string {
  return `${lines.map((line, i) => (i > 0 && line.startsWith("# HELP") ? `\n${line}` : line)).join("\n")}\n`;
}

function text(...lines: string[]): string {
  return exposition([...DROPPED_HEADER, ...lines]);
}

describe("metrics registry", () => {
  it("renders counters, with and without labels", async () => {
    const registry = new Registry();
    const reconciles = registry.counter({
      name: "natsbind_reconcile_total",
      help: "Reconciles by controller and result.",
      labelNames: ["controller", "result"],
    });
    const pushes = registry.counter({ name: "natsbind_account_pushes_total", help: "Account JWTs pushed." });
    reconciles.labels({ controller: "binding", result: "done" }).inc();
    reconciles.labels({ controller: "binding", result: "done" }).inc(2);
    reconciles.labels({ result: "error", controller: "binding" }).inc(0.5);
    pushes.inc();
    pushes.inc(4);
    assert.equal(
      await registry.render(),
      text(
        "# HELP natsbind_reconcile_total Reconciles by controller and result.",
        "# TYPE natsbind_reconcile_total counter",
        'natsbind_reconcile_total{controller="binding",result="done"} 3',
        'natsbind_reconcile_total{controller="binding",result="error"} 0.5',
        "# HELP natsbind_account_pushes_total Account JWTs pushed.",
        "# TYPE natsbind_account_pushes_total counter",
        "natsbind_account_pushes_total 5",
      ),
    );
  });

  it("renders an unlabelled metric as 0 before its first update, a labelled one with no series", async () => {
    const registry = new Registry();
    registry.counter({ name: "a_total", help: "A." });
    registry.gauge({ name: "b", help: "B.", labelNames: ["x"] });
    assert.equal(
      await registry.render(),
      text("# HELP a_total A.", "# TYPE a_total counter", "a_total 0", "# HELP b B.", "# TYPE b gauge"),
    );
  });

  it("renders gauges: set, inc, dec, and special values", async () => {
    const registry = new Registry();
    const depth = registry.gauge({
      name: "natsbind_queue_depth",
      help: "Keys waiting.",
      labelNames: ["queue"],
    });
    const leader = registry.gauge({ name: "natsbind_leader", help: "1 while this replica leads." });
    depth.labels({ queue: "bindings" }).set(7);
    depth.labels({ queue: "bindings" }).inc();
    depth.labels({ queue: "bindings" }).dec(3);
    depth.labels({ queue: "projects" }).dec();
    depth.labels({ queue: "inf" }).set(Infinity);
    depth.labels({ queue: "-inf" }).set(-Infinity);
    depth.labels({ queue: "nan" }).set(NaN);
    depth.labels({ queue: 2 }).set(1e21);
    leader.set(1);
    leader.dec(0.25);
    assert.equal(
      await registry.render(),
      text(
        "# HELP natsbind_queue_depth Keys waiting.",
        "# TYPE natsbind_queue_depth gauge",
        'natsbind_queue_depth{queue="bindings"} 5',
        'natsbind_queue_depth{queue="projects"} -1',
        'natsbind_queue_depth{queue="inf"} +Inf',
        'natsbind_queue_depth{queue="-inf"} -Inf',
        // prom-client's spelling; Prometheus parses the value case-insensitively (promtool accepts it).
        'natsbind_queue_depth{queue="nan"} Nan',
        'natsbind_queue_depth{queue="2"} 1e+21',
        "# HELP natsbind_leader 1 while this replica leads.",
        "# TYPE natsbind_leader gauge",
        "natsbind_leader 0.75",
      ),
    );
  });

  it("renders histograms: cumulative buckets with +Inf, _sum and _count", async () => {
    const registry = new Registry();
    const duration = registry.histogram({
      name: "natsbind_reconcile_duration_seconds",
      help: "Reconcile duration.",
      labelNames: ["controller"],
      buckets: [0.1, 0.5, 1],
    });
    const plain = registry.histogram({ name: "plain_seconds", help: "No labels.", buckets: [1, Infinity] });
    const binding = duration.labels({ controller: "binding" });
    for (const v of [0.05, 0.1, 0.3, 0.75, 2.5]) binding.observe(v);
    duration.labels({ controller: "gitlab" });
    plain.observe(-1);
    assert.equal(
      await registry.render(),
      text(
        "# HELP natsbind_reconcile_duration_seconds Reconcile duration.",
        "# TYPE natsbind_reconcile_duration_seconds histogram",
        'natsbind_reconcile_duration_seconds_bucket{le="0.1",controller="binding"} 2',
        'natsbind_reconcile_duration_seconds_bucket{le="0.5",controller="binding"} 3',
        'natsbind_reconcile_duration_seconds_bucket{le="1",controller="binding"} 4',
        'natsbind_reconcile_duration_seconds_bucket{le="+Inf",controller="binding"} 5',
        'natsbind_reconcile_duration_seconds_sum{controller="binding"} 3.7',
        'natsbind_reconcile_duration_seconds_count{controller="binding"} 5',
        'natsbind_reconcile_duration_seconds_bucket{le="0.1",controller="gitlab"} 0',
        'natsbind_reconcile_duration_seconds_bucket{le="0.5",controller="gitlab"} 0',
        'natsbind_reconcile_duration_seconds_bucket{le="1",controller="gitlab"} 0',
        'natsbind_reconcile_duration_seconds_bucket{le="+Inf",controller="gitlab"} 0',
        'natsbind_reconcile_duration_seconds_sum{controller="gitlab"} 0',
        'natsbind_reconcile_duration_seconds_count{controller="gitlab"} 0',
        "# HELP plain_seconds No labels.",
        "# TYPE plain_seconds histogram",
        'plain_seconds_bucket{le="1"} 1',
        'plain_seconds_bucket{le="+Inf"} 1',
        "plain_seconds_sum -1",
        "plain_seconds_count 1",
      ),
    );
  });

  it("escapes label values (backslash, quote, newline) and help text (backslash, newline)", async () => {
    const registry = new Registry();
    const c = registry.counter({
      name: "esc_total",
      help: 'Path C:\\dir\nsecond "line"',
      labelNames: ["path"],
    });
    c.labels({ path: 'a\\b"c"\nd' }).inc();
    assert.equal(
      await registry.render(),
      text(
        '# HELP esc_total Path C:\\\\dir\\nsecond "line"',
        "# TYPE esc_total counter",
        'esc_total{path="a\\\\b\\"c\\"\\nd"} 1',
      ),
    );
  });

  it("rejects invalid metric and label names, duplicates and bad buckets", async () => {
    const registry = new Registry();
    for (const name of ["", "1abc", "has-dash", "has space", "é", "a{b}"]) {
      assert.throws(
        () => registry.counter({ name, help: "h" }),
        MetricsError,
        `name ${JSON.stringify(name)}`,
      );
    }
    for (const name of ["ok_name", "_leading", "ns:sub:total", "A1"]) {
      assert.doesNotThrow(() => registry.gauge({ name, help: "h" }));
    }
    assert.throws(() => registry.gauge({ name: "ok_name", help: "h" }), /already registered/);
    assert.throws(() => registry.counter({ name: DROPPED_SERIES_METRIC, help: "h" }), /already registered/);
    for (const label of ["1x", "with-dash", "__reserved", "a:b"]) {
      assert.throws(
        () => registry.counter({ name: `l_${label.length}_total`, help: "h", labelNames: [label] }),
        MetricsError,
      );
    }
    assert.throws(
      () => registry.counter({ name: "dup_total", help: "h", labelNames: ["a", "a"] }),
      /duplicate/,
    );
    assert.throws(
      () => registry.histogram({ name: "h1", help: "h", labelNames: ["le"], buckets: [1] }),
      /reserved/,
    );
    for (const buckets of [[], [Infinity], [1, 1], [2, 1], [NaN], [0, -Infinity]]) {
      assert.throws(
        () => registry.histogram({ name: "h2", help: "h", buckets }),
        MetricsError,
        String(buckets),
      );
    }
    assert.throws(() => new Registry({ maxSeriesPerMetric: 0 }), MetricsError);
  });

  it("rejects wrong label sets and bad values", async () => {
    const registry = new Registry();
    const c = registry.counter({ name: "c_total", help: "h", labelNames: ["a", "b"] });
    const plain = registry.counter({ name: "p_total", help: "h" });
    const h = registry.histogram({ name: "h_seconds", help: "h", buckets: [1] });
    assert.throws(() => c.labels({ a: "1" } as never), /expected labels \{a, b\}, got \{a\}/);
    assert.throws(() => c.labels({ a: "1", b: "2", c: "3" } as never), MetricsError);
    assert.throws(() => c.labels({ a: "1", b: null } as never), /label b must be a string or number/);
    assert.throws(() => c.inc(), /has labels \{a, b\}: use labels\(\)/);
    assert.throws(() => plain.inc(-1), /increment must be a finite number >= 0/);
    assert.throws(() => plain.inc(NaN), MetricsError);
    assert.throws(() => plain.inc(Infinity), MetricsError);
    assert.throws(() => h.observe(NaN), MetricsError);
    assert.equal(plain.labels({}), plain.labels({}));
    plain.labels({}).inc(2);
    assert.match(await registry.render(), /^p_total 2$/m);
  });

  it("bounds series per metric: further label sets are dropped and counted", async () => {
    const registry = new Registry({ maxSeriesPerMetric: 2 });
    const c = registry.counter({ name: "per_project_total", help: "h", labelNames: ["project"] });
    const g = registry.gauge({ name: "per_project_gauge", help: "h", labelNames: ["project"] });
    c.labels({ project: "1" }).inc();
    c.labels({ project: "2" }).inc();
    c.labels({ project: "3" }).inc(); // dropped
    c.labels({ project: "4" }).inc(); // dropped
    c.labels({ project: "1" }).inc(); // existing series: still counted
    g.labels({ project: "1" }).set(1);
    g.labels({ project: "2" }).set(2);
    g.labels({ project: "3" }).set(3); // dropped
    assert.throws(
      () => c.labels({ project: "5" }).inc(-1),
      MetricsError,
      "a dropped series still checks values",
    );
    assert.equal(
      await registry.render(),
      exposition([
        ...DROPPED_HEADER,
        `${DROPPED_SERIES_METRIC}{metric="per_project_total"} 3`,
        `${DROPPED_SERIES_METRIC}{metric="per_project_gauge"} 1`,
        "# HELP per_project_total h",
        "# TYPE per_project_total counter",
        'per_project_total{project="1"} 2',
        'per_project_total{project="2"} 1',
        "# HELP per_project_gauge h",
        "# TYPE per_project_gauge gauge",
        'per_project_gauge{project="1"} 1',
        'per_project_gauge{project="2"} 2',
      ]),
    );
  });

  it("refuses the 10,001st label set by default", async () => {
    const registry = new Registry();
    const h = registry.histogram({ name: "big_seconds", help: "h", labelNames: ["id"], buckets: [1] });
    for (let i = 0; i < DEFAULT_MAX_SERIES_PER_METRIC + 5; i += 1) h.labels({ id: i }).observe(0.5);
    const rendered = await registry.render();
    assert.equal(DEFAULT_MAX_SERIES_PER_METRIC, 10_000);
    assert.equal(rendered.match(/^big_seconds_count\{/gm)?.length, 10_000);
    assert.match(rendered, /^big_seconds_count\{id="9999"\} 1$/m);
    assert.doesNotMatch(rendered, /id="10000"/);
    assert.match(rendered, new RegExp(`^${DROPPED_SERIES_METRIC}\\{metric="big_seconds"\\} 5$`, "m"));
  });

  it("runs collectors before rendering", async () => {
    const registry = new Registry();
    const depth = registry.gauge({ name: "depth", help: "h" });
    let live = 3;
    registry.onCollect(() => depth.set(live));
    assert.match(await registry.render(), /^depth 3$/m);
    live = 9;
    assert.match(await registry.render(), /^depth 9$/m);
  });

  it("exponentialBuckets", async () => {
    assert.deepEqual(exponentialBuckets(0.5, 2, 4), [0.5, 1, 2, 4]);
    assert.throws(() => exponentialBuckets(0, 2, 3), MetricsError);
    assert.throws(() => exponentialBuckets(1, 1, 3), MetricsError);
    assert.throws(() => exponentialBuckets(1, 2, 0), MetricsError);
  });
});

describe("metrics handler", () => {
  const servers: Server[] = [];
  after(async () => {
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  });

  async function serve(registry: Registry): Promise<string> {
    const server = createServer(metricsHandler(registry));
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`;
  }

  it("serves render() as text format 0.0.4 over HTTP", async () => {
    const registry = new Registry();
    const c = registry.counter({ name: "served_total", help: "Served.", labelNames: ["path"] });
    c.labels({ path: "/x" }).inc(2);
    const url = await serve(registry);
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), CONTENT_TYPE);
    assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    assert.equal(res.headers.get("cache-control"), "no-store");
    const body = await res.text();
    assert.equal(body, await registry.render());
    assert.match(body, /^served_total\{path="\/x"\} 2$/m);

    c.labels({ path: "/x" }).inc();
    assert.match(await (await fetch(url)).text(), /^served_total\{path="\/x"\} 3$/m);

    const head = await fetch(url, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get("content-type"), CONTENT_TYPE);
    assert.equal(await head.text(), "");
  });

  it("answers 405 to other methods and 500 when a collector throws", async () => {
    const registry = new Registry();
    let fail = false;
    registry.onCollect(() => {
      if (fail) throw new Error("collector broke");
    });
    const url = await serve(registry);
    const post = await fetch(url, { method: "POST", body: "x" });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
    await post.text();
    fail = true;
    const broken = await fetch(url);
    assert.equal(broken.status, 500);
    assert.equal(await broken.text(), "metrics collection failed\n");
  });
});

describe("process metrics (prom-client defaults)", () => {
  it("exports event loop lag, heap, GC and handles when asked, and nothing of the kind otherwise", async () => {
    const plain = await new Registry().render();
    assert.doesNotMatch(plain, /^(process|nodejs)_/m);
    const rendered = await new Registry({ processMetrics: true }).render();
    for (const name of [
      "process_cpu_seconds_total",
      "process_resident_memory_bytes",
      "nodejs_eventloop_lag_seconds",
      "nodejs_heap_size_used_bytes",
      "nodejs_gc_duration_seconds",
      "nodejs_active_handles_total",
    ])
      assert.match(rendered, new RegExp(`^# TYPE ${name} `, "m"), name);
  });
});
