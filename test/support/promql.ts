/**
 * The metric names a PromQL expression selects (as Grafana panels and Prometheus rules write them),
 * for tests that check a dashboard or a rule file only names metrics natsbind exports. promtool has
 * no query parser command, so this is a small lexer over the PromQL grammar, not a regex: it skips
 * strings, comments, label matchers ({...}, reading an exact __name__ matcher or a quoted name),
 * ranges and subqueries ([...]), numbers and durations, Grafana variables ($x, ${x}, [[x]]), function
 * and aggregation names (an identifier followed by "("), keywords, and the label lists after by,
 * without, on, ignoring, group_left and group_right. Whatever it cannot resolve to a name (a regex
 * __name__ matcher, an unknown character) is an error, never a silent miss.
 */

export class PromqlNameError extends Error {}

/** Binary operators, set operators and modifiers that are not metric names. */
const KEYWORDS = new Set(["and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"]);
/** Aggregation operators: `sum by (x) (...)` puts a label list between the name and its "(". */
const AGGREGATIONS = new Set([
  "sum",
  "avg",
  "min",
  "max",
  "count",
  "group",
  "stddev",
  "stdvar",
  "topk",
  "bottomk",
  "quantile",
  "count_values",
  "limitk",
  "limit_ratio",
]);
/** Keywords followed by a parenthesised list of label names. */
const LABEL_LIST_KEYWORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right"]);

const IDENT_START = /[A-Za-z_:]/;
const IDENT_PART = /[A-Za-z0-9_:]/;
const NUMBER = /^(?:0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(?:[a-zA-Z]+\d*)*/;
const OPERATOR_CHARS = "+-*/%^=!<>,()@";

/** Metric names of `expr`, in order of first appearance. */
export function metricNames(expr: string): string[] {
  const names: string[] = [];
  const add = (name: string): void => {
    if (!names.includes(name)) names.push(name);
  };
  let i = 0;
  const fail = (what: string): never => {
    throw new PromqlNameError(`${what} at offset ${i} of ${JSON.stringify(expr)}`);
  };
  const skipSpace = (): void => {
    for (;;) {
      while (i < expr.length && /\s/.test(expr[i]!)) i++;
      if (expr[i] !== "#") return;
      while (i < expr.length && expr[i] !== "\n") i++;
    }
  };
  const readString = (): string => {
    const quote = expr[i]!;
    let value = "";
    i++;
    while (i < expr.length && expr[i] !== quote) {
      if (expr[i] === "\\" && quote !== "`") {
        value += expr[i + 1] ?? "";
        i += 2;
      } else value += expr[i++];
    }
    if (i >= expr.length) fail("unterminated string");
    i++;
    return value;
  };
  const readIdent = (): string => {
    const start = i;
    while (i < expr.length && IDENT_PART.test(expr[i]!)) i++;
    return expr.slice(start, i);
  };
  /** A Grafana variable: $name, ${name...}, [[name]]. */
  const skipVariable = (): void => {
    if (expr.startsWith("[[", i)) {
      const end = expr.indexOf("]]", i);
      if (end < 0) fail("unterminated [[variable]]");
      i = end + 2;
      return;
    }
    i++; // $
    if (expr[i] === "{") {
      const end = expr.indexOf("}", i);
      if (end < 0) fail("unterminated ${variable}");
      i = end + 1;
    } else if (IDENT_START.test(expr[i] ?? "")) readIdent();
    else fail('"$" without a variable name');
  };
  /** [5m], [1h:1m], [$__rate_interval], [[[interval]]]: nothing in a range names a metric. */
  const skipRange = (): void => {
    i++; // [
    while (i < expr.length && expr[i] !== "]") {
      if (expr.startsWith("[[", i)) skipVariable();
      else i++;
    }
    if (i >= expr.length) fail("unterminated [range]");
    i++;
  };
  /** {label="v", __name__="m", "quoted.name"}: the metric name, if the matchers give one. */
  const readMatchers = (): string | undefined => {
    let name: string | undefined;
    i++; // {
    for (;;) {
      skipSpace();
      const c = expr[i];
      if (c === undefined) return fail("unterminated {matchers}");
      if (c === "}") {
        i++;
        return name;
      }
      if (c === ",") {
        i++;
        continue;
      }
      let label: string;
      if (c === '"' || c === "'" || c === "`") label = readString();
      else if (IDENT_START.test(c)) label = readIdent();
      else return fail(`unexpected ${JSON.stringify(c)} in label matchers`);
      skipSpace();
      const op = /^(=~|!~|!=|=)/.exec(expr.slice(i))?.[1];
      if (!op) {
        // A bare quoted string is the metric name (Prometheus 3's UTF-8 names: {"a.b", x="y"}).
        name = label;
        continue;
      }
      i += op.length;
      skipSpace();
      const q = expr[i];
      let value: string;
      if (q === '"' || q === "'" || q === "`") value = readString();
      else if (q === "$") {
        skipVariable();
        value = "";
      } else return fail("label matcher without a string value");
      if (label === "__name__") {
        if (op !== "=") fail(`__name__${op} selects names by pattern`);
        name = value;
      }
    }
  };
  /** ( label, label ) after by/without/on/ignoring/group_left/group_right, when present. */
  const skipLabelList = (): void => {
    skipSpace();
    if (expr[i] !== "(") return;
    const end = expr.indexOf(")", i);
    if (end < 0) fail("unterminated label list");
    i = end + 1;
  };

  while (i < expr.length) {
    skipSpace();
    if (i >= expr.length) break;
    const c = expr[i]!;
    if (c === '"' || c === "'" || c === "`") {
      readString();
    } else if (c === "$") {
      skipVariable();
    } else if (c === "[") {
      skipRange();
    } else if (c === "{") {
      const name = readMatchers();
      if (name === undefined) fail("a selector without a metric name");
      add(name!);
    } else if (/[0-9.]/.test(c)) {
      const m = NUMBER.exec(expr.slice(i));
      if (!m) fail(`unexpected ${JSON.stringify(c)}`);
      i += m![0].length;
    } else if (IDENT_START.test(c)) {
      const ident = readIdent();
      const lower = ident.toLowerCase();
      if (LABEL_LIST_KEYWORDS.has(lower)) {
        skipLabelList();
        continue;
      }
      if (KEYWORDS.has(lower)) continue;
      skipSpace();
      if (expr[i] === "(") continue; // a function or an aggregation
      if (AGGREGATIONS.has(lower) && /^(by|without)\b/i.test(expr.slice(i))) continue;
      if (expr[i] === "{") {
        const fromMatchers = readMatchers();
        if (fromMatchers !== undefined && fromMatchers !== ident)
          fail(`selector names both ${ident} and __name__ ${fromMatchers}`);
      }
      add(ident);
    } else if (OPERATOR_CHARS.includes(c)) {
      i++;
    } else {
      fail(`unexpected ${JSON.stringify(c)}`);
    }
  }
  return names;
}
