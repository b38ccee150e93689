/**
 * Helpers shared by the benchmarks: statistics, plain-text tables, process CPU, the
 * environment each run records and the results file it writes.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { availableParallelism, cpus } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { toolBinary } from "../test/support/process.ts";

/** BENCH_QUICK=1: fewer and smaller runs (a smoke test of a bench itself). */
export const QUICK = process.env.BENCH_QUICK === "1";

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

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Wall time of one call of `fn`, ms. */
export async function timed(fn: () => unknown): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
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

/**
 * Time (ms) one CPU spent since boot, from /proc/stat: `busy` running anything (user, nice,
 * system, irq, softirq) and `steal` (the hypervisor ran another guest on it); undefined off Linux.
 */
export function cpuTimeMs(cpu: number): { busy: number; steal: number } | undefined {
  try {
    const line = readFileSync("/proc/stat", "utf8")
      .split("\n")
      .find((l) => l.startsWith(`cpu${cpu} `));
    if (!line) return undefined;
    // user nice system idle iowait irq softirq steal (guest time is already in user and nice)
    const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1, 9).map(Number);
    return {
      busy: ((user! + nice! + system! + irq! + softirq!) * 1000) / CLK_TCK,
      steal: ((steal ?? 0) * 1000) / CLK_TCK,
    };
  } catch {
    return undefined;
  }
}

/** What a results file records about the machine and tools; `extra` goes before `quick`. */
export function benchEnv<E extends object = object>(
  extra?: E,
): {
  node: string;
  natsServer: string;
  cpus: number;
  cpuModel: string;
  availableParallelism: number;
  quick: boolean;
} & E {
  const cpuList = cpus();
  return {
    node: process.version,
    natsServer: execFileSync(toolBinary("nats-server"), ["--version"], { encoding: "utf8" }).trim(),
    cpus: cpuList.length,
    cpuModel: cpuList[0]?.model ?? "unknown",
    availableParallelism: availableParallelism(),
    ...(extra as E),
    quick: QUICK,
  };
}

/** Writes bench/results/<file> (git-ignored: figures belong to the machine and run that made them). */
export async function writeResults(file: string, out: unknown): Promise<void> {
  const dir = join(import.meta.dirname, "results");
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, file), `${JSON.stringify(out, null, 2)}\n`);
  log(`results: ${join("bench", "results", file)}`);
}
