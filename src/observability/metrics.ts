/**
 * Metrics: prom-client, behind a thin wrapper. Series per metric are bounded: label values can
 * come from the outside world (projects, bindings), and an unbounded metric is a memory leak.
 * Label sets past the bound are dropped (updates go nowhere) and counted in
 * natsbind_metrics_dropped_series_total.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import * as client from "prom-client";
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
  /**
   * prom-client's default metrics of this process (process_*, nodejs_*: CPU, RSS, heap, event loop
   * lag, GC, handles). Off by default: only the registry `natsbind run` serves wants them.
   */
  processMetrics?: boolean;
}

/** `count` upper bounds starting at `start`, each `factor` times the previous. */
export function exponentialBuckets(start: number, factor: number, count: number): number[] {
  if (!(start > 0) || !(factor > 1) || !Number.isInteger(count) || count < 1)
    throw new MetricsError("exponentialBuckets: need start > 0, factor > 1 and an integer count >= 1");
  return Array.from({ length: count }, (_, i) => start * factor ** i);
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

/** The checks prom-client would make too, as MetricsErrors naming the metric (and a few it does not). */
function checkDefinition(opts: MetricOptions<string>, reserved: readonly string[], type: string): string[] {
  if (typeof opts.name !== "string" || !METRIC_NAME.test(opts.name))
    throw new MetricsError(`metric name ${JSON.stringify(opts.name)}: must match ${METRIC_NAME.source}`);
  if (typeof opts.help !== "string") throw new MetricsError(`metric ${opts.name}: help must be a string`);
  const labelNames = [...(opts.labelNames ?? [])];
  for (const label of labelNames) {
    if (typeof label !== "string" || !LABEL_NAME.test(label) || label.startsWith("__"))
      throw new MetricsError(
        `metric ${opts.name}: label name ${JSON.stringify(label)} must match ${LABEL_NAME.source} and not start with "__"`,
      );
    if (reserved.includes(label))
      throw new MetricsError(`metric ${opts.name}: label name "${label}" is reserved for ${type}s`);
  }
  if (new Set(labelNames).size !== labelNames.length)
    throw new MetricsError(`metric ${opts.name}: duplicate label names`);
  return labelNames;
}

function checkBuckets(name: string, buckets: readonly number[]): number[] {
  const bounds = [...(Array.isArray(buckets) ? buckets : [])];
  if (bounds.at(-1) === Infinity) bounds.pop();
  if (bounds.length === 0)
    throw new MetricsError(`histogram ${name}: buckets must hold at least one finite bound`);
  bounds.forEach((b, i) => {
    if (typeof b !== "number" || !Number.isFinite(b) || (i > 0 && b <= bounds[i - 1]!))
      throw new MetricsError(`histogram ${name}: buckets must be finite and strictly increasing`);
  });
  return bounds;
}

/**
 * The bound on a metric's series: label values come from the outside world (projects,
 * bindings), and prom-client keeps every label set it is given. Admitted label sets get a child
 * (kept, so a hot path's labels() is one map lookup); past the limit the label set is counted as
 * dropped and gets `noop`, which checks its arguments like a series and records nothing.
 */
class SeriesBound<L extends string, C> {
  readonly #name: string;
  readonly #labelNames: readonly L[];
  readonly #max: number;
  readonly #onDrop: () => void;
  readonly #make: (labels: Record<string, string>) => C;
  readonly #noop: C;
  readonly #children = new Map<string, C>();

  constructor(
    name: string,
    labelNames: readonly L[],
    limits: { max: number; onDrop: () => void },
    make: (labels: Record<string, string>) => C,
    noop: C,
  ) {
    this.#name = name;
    this.#labelNames = labelNames;
    this.#max = limits.max;
    this.#onDrop = limits.onDrop;
    this.#make = make;
    this.#noop = noop;
  }

  labels(values: Labels<L>): C {
    const given = values === null || typeof values !== "object" ? [] : Object.keys(values);
    if (given.length !== this.#labelNames.length || !given.every((k) => this.#labelNames.includes(k as L))) {
      throw new MetricsError(
        `metric ${this.#name}: expected labels {${this.#labelNames.join(", ")}}, got {${given.join(", ")}}`,
      );
    }
    const labels: Record<string, string> = {};
    for (const name of this.#labelNames) {
      const value: unknown = values[name];
      if (typeof value !== "string" && typeof value !== "number")
        throw new MetricsError(`metric ${this.#name}: label ${name} must be a string or number`);
      labels[name] = String(value);
    }
    const key = JSON.stringify(this.#labelNames.map((name) => labels[name]));
    const existing = this.#children.get(key);
    if (existing) return existing;
    if (this.#children.size >= this.#max) {
      this.#onDrop();
      return this.#noop;
    }
    const child = this.#make(labels);
    this.#children.set(key, child);
    return child;
  }

  unlabelled(): C {
    if (this.#labelNames.length > 0)
      throw new MetricsError(
        `metric ${this.#name} has labels {${this.#labelNames.join(", ")}}: use labels()`,
      );
    return this.labels({} as Labels<L>);
  }
}

/**
 * natsbind's metrics registry: prom-client metrics (one prom-client Registry per instance, never
 * the global one) behind a small API with a bound on label sets per metric, and prom-client's
 * default Node process metrics (event loop lag, heap, GC, handles) when asked for.
 */
export class Registry {
  readonly #registry = new client.Registry();
  readonly #collectors: (() => void)[] = [];
  readonly #maxSeries: number;
  readonly #dropped: client.Counter<"metric">;

  constructor(options: RegistryOptions = {}) {
    const maxSeries = options.maxSeriesPerMetric ?? DEFAULT_MAX_SERIES_PER_METRIC;
    if (!Number.isInteger(maxSeries) || maxSeries < 1)
      throw new MetricsError("maxSeriesPerMetric must be an integer >= 1");
    this.#maxSeries = maxSeries;
    // One series per metric name: bounded by the code, so it needs (and gets) no limit of its own.
    this.#dropped = new client.Counter({
      name: DROPPED_SERIES_METRIC,
      help: "Label sets refused because their metric reached its series limit.",
      labelNames: ["metric"],
      registers: [this.#registry],
    });
    if (options.processMetrics) client.collectDefaultMetrics({ register: this.#registry });
  }

  #limits(name: string): { max: number; onDrop: () => void } {
    return { max: this.#maxSeries, onDrop: () => this.#dropped.labels({ metric: name }).inc() };
  }

  #unique(name: string): void {
    if (this.#registry.getSingleMetric(name)) throw new MetricsError(`metric ${name} is already registered`);
  }

  counter<L extends string = never>(opts: MetricOptions<L>): Counter<L> {
    const labelNames = checkDefinition(opts, [], "counter") as L[];
    const name = opts.name;
    this.#unique(name);
    const metric = new client.Counter({ name, help: opts.help, labelNames, registers: [this.#registry] });
    const bound = new SeriesBound<L, CounterChild>(
      name,
      labelNames,
      this.#limits(name),
      (labels) => {
        const series = metric.labels(labels as Partial<Record<L, string>>);
        series.inc(0); // rendered from the first labels() call on, as 0
        return {
          inc: (value = 1) => {
            checkIncrement(name, value);
            series.inc(value);
          },
        };
      },
      { inc: (value = 1) => checkIncrement(name, value) },
    );
    return { name, labels: (values) => bound.labels(values), inc: (value) => bound.unlabelled().inc(value) };
  }

  gauge<L extends string = never>(opts: MetricOptions<L>): Gauge<L> {
    const labelNames = checkDefinition(opts, [], "gauge") as L[];
    const name = opts.name;
    this.#unique(name);
    const metric = new client.Gauge({ name, help: opts.help, labelNames, registers: [this.#registry] });
    const check = (value: number): void => checkNumber(name, value);
    const bound = new SeriesBound<L, GaugeChild>(
      name,
      labelNames,
      this.#limits(name),
      (labels) => {
        const series = metric.labels(labels as Partial<Record<L, string>>);
        series.inc(0);
        return {
          set: (value) => {
            check(value);
            series.set(value);
          },
          inc: (value = 1) => {
            check(value);
            series.inc(value);
          },
          dec: (value = 1) => {
            check(value);
            series.dec(value);
          },
        };
      },
      { set: check, inc: (value = 1) => check(value), dec: (value = 1) => check(value) },
    );
    return {
      name,
      labels: (values) => bound.labels(values),
      set: (value) => bound.unlabelled().set(value),
      inc: (value) => bound.unlabelled().inc(value),
      dec: (value) => bound.unlabelled().dec(value),
    };
  }

  histogram<L extends string = never>(opts: HistogramOptions<L>): Histogram<L> {
    const labelNames = checkDefinition(opts, ["le"], "histogram") as L[];
    const name = opts.name;
    const buckets = checkBuckets(name, opts.buckets);
    this.#unique(name);
    const metric = new client.Histogram({
      name,
      help: opts.help,
      labelNames,
      buckets,
      registers: [this.#registry],
    });
    const bound = new SeriesBound<L, HistogramChild>(
      name,
      labelNames,
      this.#limits(name),
      (labels) => {
        metric.zero(labels as Partial<Record<L, string>>);
        const series = metric.labels(labels as Partial<Record<L, string>>);
        return {
          observe: (value) => {
            checkObservation(name, value);
            series.observe(value);
          },
        };
      },
      { observe: (value) => checkObservation(name, value) },
    );
    return {
      name,
      labels: (values) => bound.labels(values),
      observe: (value) => bound.unlabelled().observe(value),
    };
  }

  /**
   * Runs `collect` at the start of every render(), to copy live numbers (queue depth, webhook
   * counters) into metrics. A collector that throws makes render() reject.
   */
  onCollect(collect: () => void): void {
    this.#collectors.push(collect);
  }

  /** The text exposition format (0.0.4) of every metric. */
  async render(): Promise<string> {
    for (const collect of this.#collectors) collect();
    return this.#registry.metrics();
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
    registry.render().then(
      (body) => {
        res.writeHead(200, {
          "content-type": CONTENT_TYPE,
          "cache-control": "no-store",
          "content-length": Buffer.byteLength(body),
        });
        res.end(req.method === "HEAD" ? undefined : body);
      },
      () => {
        res.writeHead(500, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
        res.end("metrics collection failed\n");
      },
    );
  };
}
