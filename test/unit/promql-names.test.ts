// The PromQL metric-name extractor that test/integration/monitoring.test.ts runs over the Grafana
// dashboard and the alert rules: tricky expressions, and what it must refuse rather than miss.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { metricNames, PromqlNameError } from "../support/promql.ts";

describe("metricNames (PromQL)", () => {
  const cases: Array<[string, string[]]> = [
    ["up", ["up"]],
    ['up{job="natsbind"}', ["up"]],
    [
      'histogram_quantile(0.99, sum by (le) (rate(natsbind_credentials_issue_seconds_bucket{via=~"$via"}[$__rate_interval])))',
      ["natsbind_credentials_issue_seconds_bucket"],
    ],
    // by/without/on/ignoring/group_left/group_right lists hold label names, not metrics.
    ["sum(rate(a_total[5m])) by (job, le) / on (job) group_left (instance) b", ["a_total", "b"]],
    ["sum without (instance, pod) (x) * ignoring (le) group_right y", ["x", "y"]],
    ["a * on (x) group_left b", ["a", "b"]],
    // Strings (label_replace's arguments, $1, regexes) name nothing.
    ['label_replace(up{job="x"}, "foo", "$1", "bar", "(.*)")', ["up"]],
    ['count_values("version", nodejs_version_info)', ["nodejs_version_info"]],
    // The metric name as a matcher, and Prometheus 3's quoted UTF-8 names.
    ['{__name__="foo", job="x"}', ["foo"]],
    ["{'foo_total'}", ["foo_total"]],
    ['{"my.metric", a="b"}', ["my.metric"]],
    ['foo{__name__="foo"}', ["foo"]],
    // Ranges, subqueries, offsets, @ modifiers, durations like 1h30m.
    ["max_over_time(a[1h:5m] offset 1d @ end())", ["a"]],
    ["rate(b[1h30m] offset -5m @ 1609746000)", ["b"]],
    ["deriv(c[$__range])", ["c"]],
    ["rate(d[${__interval}])", ["d"]],
    ["rate(e[[[interval]]])", ["e"]],
    // Set operators, bool, numbers of every shape, unary minus, scalar functions.
    ["a and on () b or c unless d", ["a", "b", "c", "d"]],
    ["a > bool 0.5e-3", ["a"]],
    ["-a + 0x1F - .5 * 5. / Inf + NaN", ["a"]],
    ["time() - process_start_time_seconds", ["process_start_time_seconds"]],
    ["vector(0) or scalar(x)", ["x"]],
    ['absent(natsbind_reconciling{job="a"})', ["natsbind_reconciling"]],
    ["topk(5, x) + quantile(0.9, y) + limitk(2, z)", ["x", "y", "z"]],
    // Matcher values may hold }, quotes and escapes.
    ['x{label="}", other="a\\"}b", re=~`[{}]`}', ["x"]],
    // Comments, newlines, repeated names once, colons in recording-rule names.
    ["# sum(not_a_metric)\n  job:requests:rate5m\n  + job:requests:rate5m", ["job:requests:rate5m"]],
    // Identifiers that start like keywords are metrics.
    [
      "on_call_total + bytes_total + offset_seconds + android",
      ["on_call_total", "bytes_total", "offset_seconds", "android"],
    ],
    // A Grafana variable where a number goes.
    ["topk($n, x)", ["x"]],
    // The alert rules' own shapes.
    [
      "(natsbind_rotation_oldest_active_key_age_seconds - natsbind_rotation_every_seconds > 3600) and natsbind_rotation_every_seconds > 0",
      ["natsbind_rotation_oldest_active_key_age_seconds", "natsbind_rotation_every_seconds"],
    ],
    [
      'sum by (namespace, job, reason) (rate(r_total{code="unavailable"}[5m])) / on (namespace, job) group_left sum by (namespace, job) (rate(h_count[5m])) > 0.1',
      ["r_total", "h_count"],
    ],
  ];
  for (const [expr, names] of cases) {
    it(`${JSON.stringify(expr)} -> ${names.join(", ")}`, () => {
      assert.deepEqual(metricNames(expr), names);
    });
  }

  it("refuses what it cannot resolve to names instead of missing them", () => {
    for (const expr of [
      '{__name__=~"natsbind_.*"}',
      '{__name__!="x", job="a"}',
      '{job="a"}',
      'a{b="c"',
      'a{b="c}',
      "rate(a[5m)",
      "a ? b",
      'foo{__name__="bar"}',
      "rate(x[${interval)",
    ]) {
      assert.throws(() => metricNames(expr), PromqlNameError, expr);
    }
  });
});
