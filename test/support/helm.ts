// The Helm chart (charts/natsbind) next to deploy/: real `helm` and `kubectl kustomize` runs, and the
// comparison that keeps the two in step (chartDrift): every object deploy/ defines must render from
// the chart with the same fields, and a difference is reported by object and field path.
import { spawn } from "node:child_process";
import { join } from "node:path";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { parseConfig } from "../../src/config/config.ts";
import { REPO_ROOT, toolBinary } from "./process.ts";

export const CHART_DIR = join(REPO_ROOT, "charts", "natsbind");

export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a short-lived command to completion (killed after timeoutMs); `input` goes to its stdin. */
export function runCommand(
  command: string,
  args: readonly string[],
  opts: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<CommandResult> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(command, [...args], {
      stdio: ["pipe", "pipe", "pipe"],
      env: opts.env ?? process.env,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      if (signal) stderr += `\n(killed by ${signal}${signal === "SIGKILL" ? ` after ${timeoutMs} ms` : ""})`;
      resolveRun({ code, stdout, stderr });
    });
    child.stdin.end(opts.input ?? "");
  });
}

/**
 * `helm ARGS`. Helm's own state (repositories, registry logins, cache) is kept out of the user's
 * home: in `home` when given (install, upgrade), else a path that does not exist, so lint and
 * template cannot depend on anything there.
 */
export function helm(args: readonly string[], opts: { home?: string } = {}): Promise<CommandResult> {
  const home = opts.home ?? "/nonexistent/helm-home";
  return runCommand(toolBinary("helm"), args, {
    env: {
      ...process.env,
      HELM_CACHE_HOME: join(home, "cache"),
      HELM_CONFIG_HOME: join(home, "config"),
      HELM_DATA_HOME: join(home, "data"),
    },
  });
}

export type Manifest = { apiVersion: string; kind: string; metadata: Record<string, unknown> } & Record<
  string,
  unknown
>;

/** The documents of a YAML stream (empty ones, as `helm template` emits for disabled templates, skipped). */
export function parseManifests(text: string, source: string): Manifest[] {
  const out: Manifest[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`${source}: ${doc.errors.map((e) => e.message).join("; ")}`);
    const value = doc.toJS() as unknown;
    if (value === null || value === undefined) continue;
    const m = value as Manifest;
    if (typeof m.kind !== "string" || typeof m.apiVersion !== "string" || typeof m.metadata !== "object")
      throw new Error(`${source}: a document without apiVersion, kind and metadata`);
    out.push(m);
  }
  return out;
}

export interface RenderOptions {
  release?: string;
  namespace?: string;
  /** Values files (-f), in order. */
  valuesFiles?: string[];
  /** --set-json pairs: path -> value. */
  set?: Record<string, unknown>;
}

export function templateArgs(opts: RenderOptions = {}): string[] {
  return [
    "template",
    opts.release ?? "natsbind",
    CHART_DIR,
    "--namespace",
    opts.namespace ?? "natsbind",
    ...(opts.valuesFiles ?? []).flatMap((f) => ["--values", f]),
    ...Object.entries(opts.set ?? {}).flatMap(([k, v]) => ["--set-json", `${k}=${JSON.stringify(v)}`]),
  ];
}

/** `helm template` of the chart; throws with helm's stderr when it refuses. */
export async function renderChart(opts: RenderOptions = {}): Promise<{ text: string; objects: Manifest[] }> {
  const result = await helm(templateArgs(opts));
  if (result.code !== 0) throw new Error(`helm template failed (${result.code}): ${result.stderr.trim()}`);
  return { text: result.stdout, objects: parseManifests(result.stdout, "helm template") };
}

/** `kubectl kustomize DIR`: what `kubectl apply -k DIR` sends. */
export async function kustomize(dir: string): Promise<Manifest[]> {
  const result = await runCommand(toolBinary("kubectl"), ["kustomize", dir]);
  if (result.code !== 0) throw new Error(`kubectl kustomize ${dir} failed: ${result.stderr.trim()}`);
  return parseManifests(result.stdout, `kubectl kustomize ${dir}`);
}

export function describeObject(o: Manifest): string {
  const ns = typeof o.metadata.namespace === "string" ? `${o.metadata.namespace}/` : "";
  return `${o.kind} ${ns}${String(o.metadata.name)}`;
}

function apiGroup(o: Manifest): string {
  return o.apiVersion.includes("/") ? o.apiVersion.split("/")[0]! : "";
}

function identity(o: Manifest): string {
  return `${apiGroup(o)}|${describeObject(o)}`;
}

/** Labels Helm charts add (and the chart's selectors carry, for releases side by side). */
export const HELM_LABELS = [
  "app.kubernetes.io/instance",
  "app.kubernetes.io/managed-by",
  "app.kubernetes.io/version",
  "helm.sh/chart",
];
/** Annotations only the chart has: the config checksum that rolls the pods on a change. */
const HELM_ANNOTATIONS = ["checksum/config"];

export interface DriftOptions {
  /** deploy/ objects the chart does not render, with why (e.g. the Namespace: helm --create-namespace). */
  notInChart: Record<string, string>;
  /** Chart objects deploy/ does not have, with why. */
  chartOnly: Record<string, string>;
}

/**
 * Every difference between the chart's objects and deploy/'s, one line each naming the object and
 * the field: `Deployment natsbind/natsbind: spec.replicas: chart 3, deploy/ 2`. Empty: they agree.
 * Compared after removing what only Helm adds (HELM_LABELS, checksum/config); natsbind.yaml is
 * compared as natsbind reads it (parseConfig: defaults filled in), not as text.
 */
export function chartDrift(chart: Manifest[], deploy: Manifest[], opts: DriftOptions): string[] {
  const drifts: string[] = [];
  const chartById = new Map(chart.map((o) => [identity(o), o]));
  const deployIds = new Set(deploy.map(identity));
  for (const o of chart) {
    if (!deployIds.has(identity(o)) && !(describeObject(o) in opts.chartOnly))
      drifts.push(`${describeObject(o)}: rendered by the chart, not in deploy/`);
  }
  for (const want of deploy) {
    const name = describeObject(want);
    if (name in opts.notInChart) continue;
    const got = chartById.get(identity(want));
    if (!got) {
      drifts.push(`${name}: in deploy/, not rendered by the chart`);
      continue;
    }
    diff(normalize(got), normalize(want), "", (path, g, w) =>
      drifts.push(`${name}: ${path || "(object)"}: chart ${show(g)}, deploy/ ${show(w)}`),
    );
  }
  for (const name of Object.keys(opts.notInChart)) {
    if (!deploy.some((o) => describeObject(o) === name))
      drifts.push(`${name}: listed as not in the chart, but deploy/ has no such object`);
  }
  return drifts;
}

function show(v: unknown): string {
  return v === undefined ? "(absent)" : JSON.stringify(v);
}

function withoutKeys(map: unknown, keys: readonly string[]): unknown {
  if (typeof map !== "object" || map === null) return map;
  const out = Object.fromEntries(Object.entries(map).filter(([k]) => !keys.includes(k)));
  return Object.keys(out).length > 0 ? out : undefined;
}

/** A copy without Helm's labels and annotations, natsbind.yaml parsed. */
function normalize(o: Manifest): unknown {
  const walk = (v: unknown, key: string): unknown => {
    if (Array.isArray(v)) return v.map((x) => walk(x, ""));
    if (typeof v !== "object" || v === null) return v;
    let entries = Object.entries(v).map(([k, x]) => [k, walk(x, k)] as const);
    if (key === "labels" || key === "matchLabels" || key === "podLabels")
      return withoutKeys(Object.fromEntries(entries), HELM_LABELS);
    if (key === "annotations") return withoutKeys(Object.fromEntries(entries), HELM_ANNOTATIONS);
    entries = entries.filter(([, x]) => x !== undefined);
    return Object.fromEntries(entries);
  };
  const copy = structuredClone(o) as Manifest;
  if (copy.kind === "Service") {
    const spec = copy.spec as { selector?: unknown };
    spec.selector = withoutKeys(spec.selector, HELM_LABELS);
  }
  if (copy.kind === "ConfigMap") {
    const data = copy.data as Record<string, string>;
    const text = data["natsbind.yaml"];
    if (text !== undefined) {
      const config = parseConfig(
        parseYaml(text),
        `${describeObject(o)} natsbind.yaml`,
        "/etc/natsbind/config",
      );
      (data as Record<string, unknown>)["natsbind.yaml"] = JSON.parse(JSON.stringify(config)) as unknown;
    }
  }
  return walk(copy, "");
}

/** Lists of objects that all have a name are compared by name (a missing volume names itself). */
function byName(list: unknown[]): Map<string, unknown> | undefined {
  if (list.length === 0) return undefined;
  const map = new Map<string, unknown>();
  for (const item of list) {
    const name = (item as { name?: unknown } | null)?.name;
    if (typeof name !== "string" || map.has(name)) return undefined;
    map.set(name, item);
  }
  return map;
}

function diff(
  got: unknown,
  want: unknown,
  path: string,
  report: (p: string, g: unknown, w: unknown) => void,
): void {
  if (Array.isArray(got) && Array.isArray(want)) {
    const g = byName(got);
    const w = byName(want);
    if (g && w) {
      const order = (m: Map<string, unknown>): string => [...m.keys()].join(",");
      const sorted = (m: Map<string, unknown>): string => [...m.keys()].sort().join(",");
      if (sorted(g) === sorted(w) && order(g) !== order(w))
        report(`${path} (order)`, [...g.keys()], [...w.keys()]);
      for (const name of new Set([...w.keys(), ...g.keys()]))
        diff(g.get(name), w.get(name), `${path}[${name}]`, report);
      return;
    }
    for (let i = 0; i < Math.max(got.length, want.length); i++)
      diff(got[i], want[i], `${path}[${i}]`, report);
    return;
  }
  const isMap = (v: unknown): v is Record<string, unknown> =>
    typeof v === "object" && v !== null && !Array.isArray(v);
  if (isMap(got) && isMap(want)) {
    for (const key of new Set([...Object.keys(want), ...Object.keys(got)])) {
      const sub = /^[A-Za-z_][\w]*$/.test(key)
        ? `${path ? `${path}.` : ""}${key}`
        : `${path}[${JSON.stringify(key)}]`;
      diff(got[key], want[key], sub, report);
    }
    return;
  }
  if (JSON.stringify(got) !== JSON.stringify(want)) report(path, got, want);
}
