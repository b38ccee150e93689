/**
 * What test/integration/monitoring.test.ts compares: the names a Prometheus text exposition
 * exports, and every PromQL query of a Grafana dashboard (panels, rows' panels, template variables).
 */

export interface ExportedNames {
  /** Is `name` a series name the exposition exports (declared family or sample)? */
  has(name: string): boolean;
  /** Families by TYPE. */
  readonly families: ReadonlyMap<string, string>;
}

/**
 * Names from `# TYPE` lines and samples. A family counts with no sample yet (a labelled metric
 * before its first event): a counter or gauge by its name, a histogram by name_bucket, name_sum and
 * name_count (never the bare name, which no series has), a summary by name, name_sum and name_count.
 */
export function exportedNames(exposition: string): ExportedNames {
  const families = new Map<string, string>();
  const samples = new Set<string>();
  for (const line of exposition.split("\n")) {
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$/.exec(line);
    if (type) families.set(type[1]!, type[2]!);
    else if (line !== "" && !line.startsWith("#")) {
      const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0];
      if (!name) throw new Error(`not an exposition line: ${JSON.stringify(line)}`);
      samples.add(name);
    }
  }
  const series = new Set(samples);
  for (const [name, type] of families) {
    if (type === "histogram") for (const suffix of ["_bucket", "_sum", "_count"]) series.add(name + suffix);
    else if (type === "summary") for (const suffix of ["", "_sum", "_count"]) series.add(name + suffix);
    else series.add(name);
  }
  return { has: (name) => series.has(name), families };
}

export interface DashboardQuery {
  /** Where it is: the panel title (or "variable <name>"). */
  panel: string;
  expr: string;
}

interface Panel {
  title?: string;
  targets?: Array<{ expr?: unknown }>;
  panels?: Panel[];
}

/**
 * Every PromQL expression of a dashboard: each panel target's expr (rows' nested panels too) and
 * each query variable's query (Grafana's label_values(<selector>, label) and query_result(<expr>)
 * are unwrapped; any other variable function is refused, since its names cannot be checked).
 */
export function dashboardExpressions(dashboard: unknown): DashboardQuery[] {
  const out: DashboardQuery[] = [];
  const d = dashboard as { panels?: Panel[]; templating?: { list?: Array<Record<string, unknown>> } };
  const walk = (panels: readonly Panel[] | undefined): void => {
    for (const panel of panels ?? []) {
      for (const target of panel.targets ?? []) {
        if (typeof target.expr !== "string" || target.expr.trim() === "")
          throw new Error(`panel ${JSON.stringify(panel.title)}: a target without an expr`);
        out.push({ panel: panel.title ?? "(untitled)", expr: target.expr });
      }
      walk(panel.panels);
    }
  };
  walk(d.panels);
  for (const variable of d.templating?.list ?? []) {
    if (variable.type !== "query") continue;
    const raw = variable.query;
    const query = typeof raw === "string" ? raw : (raw as { query?: unknown } | undefined)?.query;
    if (typeof query !== "string") throw new Error(`variable ${String(variable.name)}: no query string`);
    const where = `variable ${String(variable.name)}`;
    const labelValues = /^\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$/s.exec(query);
    const queryResult = /^\s*query_result\((.*)\)\s*$/s.exec(query);
    if (labelValues) out.push({ panel: where, expr: labelValues[1]! });
    else if (queryResult) out.push({ panel: where, expr: queryResult[1]! });
    else
      throw new Error(
        `${where}: ${JSON.stringify(query)} is not label_values(<selector>, label) or query_result(<expr>)`,
      );
  }
  return out;
}
