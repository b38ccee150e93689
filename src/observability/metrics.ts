/**
 * A tiny Prometheus registry: counters, gauges and histograms with optional labels, rendered in
 * the text exposition format 0.0.4. Series per metric are bounded: label values can come from the
 * outside world (projects, bindings), and an unbounded metric is a memory leak. Label sets past
 * the bound are dropped (updates go nowhere) and counted in natsbind_metrics_dropped_series_total.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { NatsbindError } from "../errors.ts";

/** Misuse of the registry: a bad name, label set or value. A programming error, not a runtime one. */
export class MetricsError extends NatsbindError {}

export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";
export const DEFAULT_MAX_SERIES_PER_METRIC = 10_000;
export const DROPPED_SERIES_METRIC = "natsbind_metrics_dropped_series_total";

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

export type LabelValue = string | number;
export type Labels<L extends string> = Readonly<Record<L, LabelValue>>;

export interface MetricOptions<L extends string> {
  name: string;
  help: string;
  labelNames?: readonly L[];
}

export interface HistogramOptions<L extends string> extends MetricOptions<L> {
  /** Upper bounds (inclusive), strictly increasing; +Inf is implied. */
  buckets: readonly number[];
}

export interface CounterChild {
  /** Adds `value` (default 1), which must be finite and not negative. */
  inc(value?: number): void;
}

export interface GaugeChild {
  set(value: number): void;
  inc(value?: number): void;
  dec(value?: number): void;
}

export interface HistogramChild {
  observe(value: number): void;
}

/** Direct use (inc/set/observe) is for metrics without labels; labelled ones go through labels(). */
export interface Counter<L extends string = never> extends CounterChild {
  readonly name: string;
  labels(values: Labels<L>): CounterChild;
}

export interface Gauge<L extends string = never> extends GaugeChild {
  readonly name: string;
  labels(values: Labels<L>): GaugeChild;
}

export interface Histogram<L extends string = never> extends HistogramChild {
  readonly name: string;
  labels(values: Labels<L>): HistogramChild;
}

export interface RegistryOptions {
  /** Label sets a metric accepts; default 10,000. */
  maxSeriesPerMetric?: number;
}

/** `count` upper bounds starting at `start`, each `factor` times the previous. */
export function exponentialBuckets(start: number, factor: number, count: number): number[] {
  if (!(start > 0) || !(factor > 1) || !Number.isInteger(count) || count < 1)
    throw new MetricsError("exponentialBuckets: need start > 0, factor > 1 and an integer count >= 1");
  return Array.from({ length: count }, (_, i) => start * factor ** i);
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

function escapeHelp(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function escapeLabelValue(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function labelPairs(names: readonly string[], values: readonly string[]): string[] {
  return names.map((name, i) => `${name}="${escapeLabelValue(values[i]!)}"`);
}

function braces(pairs: readonly string[]): string {
  return pairs.length === 0 ? "" : `{${pairs.join(",")}}`;
}

interface Limits {
  maxSeries: number;
  onDrop(metric: string): void;
}

/** What differs between counters, gauges and histograms: their series and how they render. */
interface Kind<C> {
  type: "counter" | "gauge" | "histogram";
  /** Label names the type uses itself. */
  reserved: readonly string[];
  /** A new series, starting at zero. */
  create(): C;
  /** What a dropped label set gets: checks its arguments like a series, records nothing. */
  noop(): C;
  render(name: string, labels: readonly string[], series: C): string[];
}

/** One metric: its name, label names and series (one per label set seen, up to the limit). */
class Family<L extends string, C> {
  readonly name: string;
  readonly #help: string;
  readonly #labelNames: readonly L[];
  readonly #kind: Kind<C>;
  readonly #limits: Limits;
  readonly #series = new Map<string, { values: string[]; series: C }>();
  #noop: C | undefined;
  /** The one series of a metric without labels, created up front so it renders as 0. */
  readonly #unlabelled: C | undefined;

  constructor(opts: MetricOptions<L>, kind: Kind<C>, limits: Limits) {
    if (typeof opts.name !== "string" || !METRIC_NAME.test(opts.name))
      throw new MetricsError(`metric name ${JSON.stringify(opts.name)}: must match ${METRIC_NAME.source}`);
    if (typeof opts.help !== "string") throw new MetricsError(`metric ${opts.name}: help must be a string`);
    const labelNames = [...(opts.labelNames ?? [])];
    for (const label of labelNames) {
      if (typeof label !== "string" || !LABEL_NAME.test(label) || label.startsWith("__"))
        throw new MetricsError(
          `metric ${opts.name}: label name ${JSON.stringify(label)} must match ${LABEL_NAME.source} and not start with "__"`,
        );
      if (kind.reserved.includes(label))
        throw new MetricsError(`metric ${opts.name}: label name "${label}" is reserved for ${kind.type}s`);
    }
    if (new Set(labelNames).size !== labelNames.length)
      throw new MetricsError(`metric ${opts.name}: duplicate label names`);
    this.name = opts.name;
    this.#help = opts.help;
    this.#labelNames = labelNames;
    this.#kind = kind;
    this.#limits = limits;
    this.#unlabelled = labelNames.length === 0 ? kind.create() : undefined;
    if (this.#unlabelled) this.#series.set("[]", { values: [], series: this.#unlabelled });
  }

  labels(values: Labels<L>): C {
    const given = values === null || typeof values !== "object" ? [] : Object.keys(values);
    if (given.length !== this.#labelNames.length || !given.every((k) => this.#labelNames.includes(k as L))) {
      throw new MetricsError(
        `metric ${this.name}: expected labels {${this.#labelNames.join(", ")}}, got {${given.join(", ")}}`,
      );
    }
    const labelValues = this.#labelNames.map((name) => {
      const value: unknown = values[name];
      if (typeof value !== "string" && typeof value !== "number")
        throw new MetricsError(`metric ${this.name}: label ${name} must be a string or number`);
      return String(value);
    });
    const key = JSON.stringify(labelValues);
    const existing = this.#series.get(key);
    if (existing) return existing.series;
    if (this.#series.size >= this.#limits.maxSeries) {
      this.#limits.onDrop(this.name);
      this.#noop ??= this.#kind.noop();
      return this.#noop;
    }
    const series = this.#kind.create();
    this.#series.set(key, { values: labelValues, series });
    return series;
  }

  unlabelled(): C {
    if (!this.#unlabelled)
      throw new MetricsError(`metric ${this.name} has labels {${this.#labelNames.join(", ")}}: use labels()`);
    return this.#unlabelled;
  }

  render(): string[] {
    const lines = [`# HELP ${this.name} ${escapeHelp(this.#help)}`, `# TYPE ${this.name} ${this.#kind.type}`];
    for (const { values, series } of this.#series.values()) {
      lines.push(...this.#kind.render(this.name, labelPairs(this.#labelNames, values), series));
    }
    return lines;
  }
}

function checkIncrement(metric: string, value: number): void {
  if (typeof value !== "number" || Number.isNaN(value) || value < 0 || value === Infinity)
    throw new MetricsError(`counter ${metric}: increment must be a finite number >= 0, got ${value}`);
}

function checkNumber(metric: string, value: number): void {
  if (typeof value !== "number") throw new MetricsError(`gauge ${metric}: value must be a number`);
}

function checkObservation(metric: string, value: number): void {
  if (typeof value !== "number" || Number.isNaN(value))
    throw new MetricsError(`histogram ${metric}: observed value must be a number, got ${value}`);
}

type CounterSeries = CounterChild & { value: number };

function counterKind(name: string): Kind<CounterSeries> {
  return {
    type: "counter",
    reserved: [],
    create: () => ({
      value: 0,
      inc(value = 1) {
        checkIncrement(name, value);
        this.value += value;
      },
    }),
    noop: () => ({ value: 0, inc: (value = 1) => checkIncrement(name, value) }),
    render: (metric, labels, series) => [`${metric}${braces(labels)} ${formatValue(series.value)}`],
  };
}

type GaugeSeries = GaugeChild & { value: number };

function gaugeKind(name: string): Kind<GaugeSeries> {
  const check = (value: number): void => checkNumber(name, value);
  return {
    type: "gauge",
    reserved: [],
    create: () => ({
      value: 0,
      set(value) {
        check(value);
        this.value = value;
      },
      inc(value = 1) {
        check(value);
        this.value += value;
      },
      dec(value = 1) {
        check(value);
        this.value -= value;
      },
    }),
    noop: () => ({
      value: 0,
      set: check,
      inc: (value = 1) => check(value),
      dec: (value = 1) => check(value),
    }),
    render: (metric, labels, series) => [`${metric}${braces(labels)} ${formatValue(series.value)}`],
  };
}

interface HistogramSeries extends HistogramChild {
  /** Observations per bucket (not cumulative); the last one is +Inf. */
  counts: number[];
  sum: number;
  count: number;
}

function histogramKind(name: string, buckets: readonly number[]): Kind<HistogramSeries> {
  const bounds = [...(Array.isArray(buckets) ? buckets : [])];
  if (bounds.at(-1) === Infinity) bounds.pop();
  if (bounds.length === 0)
    throw new MetricsError(`histogram ${name}: buckets must hold at least one finite bound`);
  bounds.forEach((b, i) => {
    if (typeof b !== "number" || !Number.isFinite(b) || (i > 0 && b <= bounds[i - 1]!))
      throw new MetricsError(`histogram ${name}: buckets must be finite and strictly increasing`);
  });
  const le = bounds.map((b) => `le="${formatValue(b)}"`);
  return {
    type: "histogram",
    reserved: ["le"],
    create: () => ({
      counts: new Array<number>(bounds.length + 1).fill(0),
      sum: 0,
      count: 0,
      observe(value) {
        checkObservation(name, value);
        let i = 0;
        while (i < bounds.length && value > bounds[i]!) i += 1;
        this.counts[i]! += 1;
        this.sum += value;
        this.count += 1;
      },
    }),
    noop: () => ({ counts: [], sum: 0, count: 0, observe: (value) => checkObservation(name, value) }),
    render: (metric, labels, series) => {
      const lines: string[] = [];
      let cumulative = 0;
      le.forEach((bound, i) => {
        cumulative += series.counts[i]!;
        lines.push(`${metric}_bucket${braces([...labels, bound])} ${cumulative}`);
      });
      lines.push(`${metric}_bucket${braces([...labels, 'le="+Inf"'])} ${series.count}`);
      lines.push(`${metric}_sum${braces(labels)} ${formatValue(series.sum)}`);
      lines.push(`${metric}_count${braces(labels)} ${series.count}`);
      return lines;
    },
  };
}

export class Registry {
  readonly #families = new Map<string, Family<string, unknown>>();
  readonly #collectors: (() => void)[] = [];
  readonly #limits: Limits;

  constructor(options: RegistryOptions = {}) {
    const maxSeries = options.maxSeriesPerMetric ?? DEFAULT_MAX_SERIES_PER_METRIC;
    if (!Number.isInteger(maxSeries) || maxSeries < 1)
      throw new MetricsError("maxSeriesPerMetric must be an integer >= 1");
    // One series per metric name: bounded by the code, so it needs (and gets) no limit of its own.
    const dropped = this.#register(
      new Family<"metric", CounterSeries>(
        {
          name: DROPPED_SERIES_METRIC,
          help: "Label sets refused because their metric reached its series limit.",
          labelNames: ["metric"],
        },
        counterKind(DROPPED_SERIES_METRIC),
        { maxSeries: Infinity, onDrop: () => {} },
      ),
    );
    this.#limits = { maxSeries, onDrop: (metric) => dropped.labels({ metric }).inc() };
  }

  counter<L extends string = never>(opts: MetricOptions<L>): Counter<L> {
    const family = this.#register(new Family(opts, counterKind(opts.name), this.#limits));
    return {
      name: family.name,
      labels: (values) => family.labels(values),
      inc: (value) => family.unlabelled().inc(value),
    };
  }

  gauge<L extends string = never>(opts: MetricOptions<L>): Gauge<L> {
    const family = this.#register(new Family(opts, gaugeKind(opts.name), this.#limits));
    return {
      name: family.name,
      labels: (values) => family.labels(values),
      set: (value) => family.unlabelled().set(value),
      inc: (value) => family.unlabelled().inc(value),
      dec: (value) => family.unlabelled().dec(value),
    };
  }

  histogram<L extends string = never>(opts: HistogramOptions<L>): Histogram<L> {
    const family = this.#register(new Family(opts, histogramKind(opts.name, opts.buckets), this.#limits));
    return {
      name: family.name,
      labels: (values) => family.labels(values),
      observe: (value) => family.unlabelled().observe(value),
    };
  }

  /**
   * Runs `collect` at the start of every render(), to copy live numbers (queue depth, webhook
   * counters) into metrics. A collector that throws makes render() throw.
   */
  onCollect(collect: () => void): void {
    this.#collectors.push(collect);
  }

  render(): string {
    for (const collect of this.#collectors) collect();
    const lines: string[] = [];
    for (const family of this.#families.values()) lines.push(...family.render());
    return `${lines.join("\n")}\n`;
  }

  #register<L extends string, C>(family: Family<L, C>): Family<L, C> {
    if (this.#families.has(family.name))
      throw new MetricsError(`metric ${family.name} is already registered`);
    this.#families.set(family.name, family as unknown as Family<string, unknown>);
    return family;
  }
}

/** GET/HEAD handler serving `registry.render()`; a failed collection answers 500. */
export function metricsHandler(registry: Registry): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    req.resume();
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain; charset=utf-8" });
      res.end("method not allowed\n");
      return;
    }
    let body: string;
    try {
      body = registry.render();
    } catch {
      res.writeHead(500, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
      res.end("metrics collection failed\n");
      return;
    }
    res.writeHead(200, {
      "content-type": CONTENT_TYPE,
      "cache-control": "no-store",
      "content-length": Buffer.byteLength(body),
    });
    res.end(req.method === "HEAD" ? undefined : body);
  };
}
