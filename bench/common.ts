/** Helpers shared by the benchmarks: statistics, plain-text tables, a bounded pool, process CPU. */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export const fmt = (v: number, digits = 0): string =>
  v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });

export const verdict = (ok: boolean): string => (ok ? "PASS" : "MISS");

/** First column left-aligned, the others right-aligned, a dashed rule under the header. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  return [line(headers), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}

export function log(text = ""): void {
  process.stdout.write(`${text}\n`);
}

/** Runs `fn` over `items` with at most `concurrency` calls in flight. */
export async function pool<T>(
  items: readonly T[],
  concurrency: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
}

const CLK_TCK = ((): number => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** CPU time (ms, user and system) the processes used so far, from /proc; undefined off Linux. */
export function processCpuMs(...pids: number[]): { user: number; sys: number } | undefined {
  try {
    let user = 0;
    let sys = 0;
    for (const pid of pids) {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      // Fields after "(comm) ": state is field 3, so utime (14) and stime (15) are at 11 and 12.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      user += Number(fields[11]);
      sys += Number(fields[12]);
    }
    return { user: (user * 1000) / CLK_TCK, sys: (sys * 1000) / CLK_TCK };
  } catch {
    return undefined;
  }
}
