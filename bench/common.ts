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
import type { Msg, NatsConnection } from "@nats-io/transport-node";
import { connectWithCreds } from "../test/support/operator.ts";
import { toolBinary } from "../test/support/process.ts";

/** BENCH_QUICK=1: fewer and smaller runs (a smoke test of a bench itself). */
export const QUICK = process.env.BENCH_QUICK === "1";

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export const round = (v: number, digits = 1): number => Math.round(v * 10 ** digits) / 10 ** digits;
export const mb = (bytes: number): number => bytes / (1024 * 1024);

export const fmt = (v: number, digits = 0): string =>
  v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });

export const fmtMs = (ms: number): string => (ms >= 10_000 ? `${fmt(ms / 1000, 2)} s` : `${fmt(ms, 1)} ms`);

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

/** read/write-family system calls a process made so far (/proc/<pid>/io); undefined off Linux. */
export function ioSyscalls(pid: number | "self" = "self"): { reads: number; writes: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/io`, "utf8");
    const field = (name: string): number => Number(new RegExp(`^${name}: (\\d+)$`, "m").exec(text)?.[1]);
    return { reads: field("syscr"), writes: field("syscw") };
  } catch {
    return undefined;
  }
}

/** VmRSS / VmHWM of a process, bytes; undefined when unreadable. */
export function procMemory(pid: number): { rss: number; hwm: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (name: string): number =>
      Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(text)?.[1]) * 1024;
    return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
  } catch {
    return undefined;
  }
}

/**
 * Counts resolver requests on the wire (system account): pushes and lookups, from any client,
 * without answering them. `onUpdate` sees every pushed JWT (e.g. to tell which projects went out).
 */
export class WireCounter {
  updates = 0;
  lookups = 0;
  /** performance.now() of the first and last push and lookup seen since reset(). */
  firstUpdateAt: number | undefined;
  lastUpdateAt: number | undefined;
  firstLookupAt: number | undefined;
  lastLookupAt: number | undefined;
  onUpdate: ((jwt: string) => void) | undefined;
  readonly #nc: NatsConnection;

  private constructor(nc: NatsConnection) {
    this.#nc = nc;
    nc.subscribe("$SYS.REQ.CLAIMS.UPDATE", {
      callback: (_err: unknown, msg: Msg) => {
        this.updates += 1;
        const now = performance.now();
        this.firstUpdateAt ??= now;
        this.lastUpdateAt = now;
        this.onUpdate?.(msg.string());
      },
    });
    nc.subscribe("$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP", {
      callback: () => {
        this.lookups += 1;
        const now = performance.now();
        this.firstLookupAt ??= now;
        this.lastLookupAt = now;
      },
    });
  }

  static async start(url: string, creds: Uint8Array): Promise<WireCounter> {
    const counter = new WireCounter(await connectWithCreds(url, creds));
    await counter.#nc.flush();
    return counter;
  }

  /** Counts since `reset()`, after a round trip so that everything sent before is counted. */
  async read(): Promise<{ updates: number; lookups: number }> {
    await this.#nc.flush();
    return { updates: this.updates, lookups: this.lookups };
  }

  reset(): void {
    this.updates = 0;
    this.lookups = 0;
    this.firstUpdateAt = undefined;
    this.lastUpdateAt = undefined;
    this.firstLookupAt = undefined;
    this.lastLookupAt = undefined;
  }

  close(): Promise<void> {
    return this.#nc.close();
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
