// Shared helpers for tests that run real servers (nats-server, etcd, kube-apiserver): free ports,
// polling with a deadline, temp dirs, binary lookup, and a child-process wrapper that keeps the
// last lines of output for error messages and never outlives the test process.
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

/** The repository root (this file lives in test/support/). */
export const REPO_ROOT = resolve(import.meta.dirname, "..", "..");

/** Where `make tools` links the binaries. */
export const TOOLS_BIN_DIR = join(REPO_ROOT, ".cache", "bin");

export type ToolName =
  | "nats-server"
  | "nats-server-2.10"
  | "nats-server-2.11"
  | "kube-apiserver"
  | "etcd"
  | "nsc"
  | "kubectl"
  | "helm"
  | "promtool";

const TOOL_ENV: Record<ToolName, string> = {
  "nats-server": "NATS_SERVER_BIN",
  "nats-server-2.10": "NATS_SERVER_2_10_BIN",
  "nats-server-2.11": "NATS_SERVER_2_11_BIN",
  "kube-apiserver": "KUBE_APISERVER_BIN",
  etcd: "ETCD_BIN",
  nsc: "NSC_BIN",
  kubectl: "KUBECTL_BIN",
  helm: "HELM_BIN",
  promtool: "PROMTOOL_BIN",
};

/**
 * Path of a tool binary: the env override (NATS_SERVER_BIN, NATS_SERVER_2_10_BIN,
 * NATS_SERVER_2_11_BIN, KUBE_APISERVER_BIN, ETCD_BIN, NSC_BIN, KUBECTL_BIN, HELM_BIN, PROMTOOL_BIN)
 * if set, else .cache/bin/<name>. Throws a clear error when the binary is missing.
 */
export function toolBinary(name: ToolName): string {
  const envName = TOOL_ENV[name];
  const fromEnv = process.env[envName];
  const path = fromEnv && fromEnv.length > 0 ? fromEnv : join(TOOLS_BIN_DIR, name);
  if (!existsSync(path)) {
    const source = fromEnv ? `${envName}=${fromEnv}` : `${path} (override with ${envName})`;
    throw new Error(`${name} binary not found: ${source}; run "make tools" to build it`);
  }
  return path;
}

/** True when the tool binary can be resolved (for skipping tests on machines without it). */
export function hasToolBinary(name: ToolName): boolean {
  try {
    toolBinary(name);
    return true;
  } catch {
    return false;
  }
}

// Ports handed out by this process; never hand out the same one twice (Linux may return a port
// just released by bind(0) again).
const issuedPorts = new Set<number>();

function bindEphemeral(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen({ port: 0, host: "127.0.0.1", exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => (port > 0 ? resolvePort(port) : reject(new Error("no port from bind(0)"))));
    });
  });
}

/** A TCP port on 127.0.0.1 that was free a moment ago and was not handed out before by this process. */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = await bindEphemeral();
    if (!issuedPorts.has(port)) {
      issuedPorts.add(port);
      return port;
    }
  }
  throw new Error("freePort: no new free port after 100 attempts");
}

/** Several distinct free ports. */
export async function freePorts(n: number): Promise<number[]> {
  const ports: number[] = [];
  for (let i = 0; i < n; i++) ports.push(await freePort());
  return ports;
}

export interface WaitForOptions {
  /** Deadline in milliseconds (default 10_000). */
  timeoutMs?: number;
  /** Pause between checks (default 100). */
  intervalMs?: number;
  /** What is being waited for, used in the timeout error. */
  what: string;
  /** Checked before each attempt: a returned string aborts the wait at once with that reason. */
  failIf?: () => string | undefined;
}

/**
 * Polls `check` until it resolves true. A check that throws counts as "not yet"; on the deadline
 * the error names `what` and the last error seen.
 */
export async function waitFor(check: () => Promise<boolean>, opts: WaitForOptions): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const intervalMs = opts.intervalMs ?? 100;
  const started = Date.now();
  const deadline = started + timeoutMs;
  let lastError: unknown;
  for (;;) {
    const reason = opts.failIf?.();
    if (reason !== undefined) throw new Error(`gave up waiting for ${opts.what}: ${reason}`);
    try {
      if (await check()) return;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const last =
        lastError === undefined ? "check kept returning false" : `last error: ${describe(lastError)}`;
      throw new Error(`timed out after ${Date.now() - started} ms waiting for ${opts.what} (${last})`, {
        cause: lastError,
      });
    }
    await sleep(Math.max(0, Math.min(intervalMs, deadline - Date.now())));
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = err.cause instanceof Error ? ` (cause: ${err.cause.message})` : "";
    return `${err.message}${cause}`;
  }
  return String(err);
}

/** Keep temp dirs after stop() for debugging when NATSBIND_KEEP_TMP=1. */
export const KEEP_TMP = process.env.NATSBIND_KEEP_TMP === "1";

// Temp dirs not yet removed; removed synchronously when the test process exits.
const liveDirs = new Set<string>();

/**
 * A fresh directory under the OS temp dir, named natsbind-<prefix>-XXXXXX. Removed by removeDir(),
 * or at process exit if the test never got that far.
 */
export async function tempDir(prefix: string): Promise<string> {
  installExitHook();
  const dir = await mkdtemp(join(tmpdir(), `natsbind-${prefix}-`));
  liveDirs.add(dir);
  return dir;
}

/** Removes a directory tree (kept when NATSBIND_KEEP_TMP=1). */
export async function removeDir(dir: string): Promise<void> {
  liveDirs.delete(dir);
  if (KEEP_TMP) return;
  await rm(dir, { recursive: true, force: true, maxRetries: 3 });
}

// Every child still running. Killed synchronously when the test process exits, whatever the
// reason (assertion failure, uncaught error, test-runner timeout SIGTERM, Ctrl-C); leftover temp
// dirs are removed at the same time.
const live = new Set<ManagedProcess>();
let exitHookInstalled = false;

function killAllLive(): void {
  for (const p of live) {
    try {
      p.child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
  live.clear();
  if (!KEEP_TMP) {
    for (const dir of liveDirs) {
      try {
        rmSync(dir, { recursive: true, force: true });
      } catch {
        // best effort
      }
    }
  }
  liveDirs.clear();
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", killAllLive);
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    const onSignal = (): void => {
      killAllLive();
      // Restore default behaviour and die from the same signal, unless someone else handles it.
      process.removeListener(signal, onSignal);
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    };
    process.on(signal, onSignal);
  }
}

/** Number of children started through ManagedProcess that are still running. */
export function liveProcessCount(): number {
  return live.size;
}

/** Fixed-size buffer of the last output lines of a process. */
class LineRing {
  readonly #max: number;
  readonly #lines: string[] = [];
  #partial = "";
  #dropped = 0;

  constructor(max: number) {
    this.#max = max;
  }

  push(prefix: string, chunk: string): void {
    const text = this.#partial + chunk;
    const parts = text.split("\n");
    this.#partial = parts.pop() ?? "";
    for (const line of parts) this.#add(prefix + line);
    // A very long line without newline: flush it rather than growing forever.
    if (this.#partial.length > 64 * 1024) {
      this.#add(prefix + this.#partial);
      this.#partial = "";
    }
  }

  #add(line: string): void {
    this.#lines.push(line);
    if (this.#lines.length > this.#max) {
      this.#lines.shift();
      this.#dropped++;
    }
  }

  text(): string {
    const head = this.#dropped > 0 ? [`... (${this.#dropped} earlier lines dropped)`] : [];
    const tail = this.#partial.length > 0 ? [this.#partial] : [];
    return [...head, ...this.#lines, ...tail].join("\n");
  }
}

export interface ManagedProcessOptions {
  /** Short label used in error messages (default: the binary's file name). */
  name?: string;
  cwd?: string;
  /** Environment (default: inherit process.env). */
  env?: NodeJS.ProcessEnv;
  /** Number of output lines kept (default 200). */
  maxLogLines?: number;
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Set when the process could not be spawned at all (e.g. ENOENT). */
  error?: Error;
}

/**
 * A spawned child process whose stdout/stderr go into a ring buffer of the last lines. Registered
 * in a module-level set that is SIGKILLed when the test process exits.
 */
export class ManagedProcess {
  readonly name: string;
  readonly command: string;
  readonly args: readonly string[];
  readonly child: ChildProcess;
  readonly #ring: LineRing;
  readonly #exited: Promise<ExitStatus>;
  #status: ExitStatus | undefined;

  constructor(command: string, args: readonly string[], opts: ManagedProcessOptions = {}) {
    installExitHook();
    this.command = command;
    this.args = args;
    this.name = opts.name ?? command.split("/").pop() ?? command;
    this.#ring = new LineRing(opts.maxLogLines ?? 200);
    this.child = spawn(command, [...args], {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    live.add(this);
    this.child.stdout?.setEncoding("utf8").on("data", (chunk: string) => this.#ring.push("", chunk));
    this.child.stderr?.setEncoding("utf8").on("data", (chunk: string) => this.#ring.push("", chunk));
    // A forgotten child must not keep the test process alive: once the tests are done the process
    // exits and the exit hook kills whatever is still running.
    this.child.unref();
    for (const stream of [this.child.stdout, this.child.stderr]) {
      (stream as unknown as { unref?: () => void } | null)?.unref?.();
    }
    this.#exited = new Promise<ExitStatus>((resolveExit) => {
      const done = (status: ExitStatus): void => {
        if (this.#status) return;
        this.#status = status;
        live.delete(this);
        resolveExit(status);
      };
      this.child.once("error", (error) => done({ code: null, signal: null, error }));
      this.child.once("exit", (code, signal) => done({ code, signal }));
    });
  }

  /** Process id (undefined when spawning failed). */
  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Exit status once the process has ended, else undefined. */
  get exitStatus(): ExitStatus | undefined {
    return this.#status;
  }

  get running(): boolean {
    return this.#status === undefined;
  }

  /** Resolves when the process has exited (or failed to spawn). */
  exited(): Promise<ExitStatus> {
    return this.#exited;
  }

  /** The last captured output lines (stdout and stderr interleaved). */
  logs(): string {
    return this.#ring.text();
  }

  /** One-line description of how the process ended, or undefined while it runs. */
  exitReason(): string | undefined {
    const s = this.#status;
    if (!s) return undefined;
    if (s.error) return `${this.name} failed to start: ${s.error.message}`;
    return `${this.name} exited with ${s.signal ? `signal ${s.signal}` : `code ${s.code}`}`;
  }

  /** An Error carrying `message` plus the process's recent output. */
  error(message: string, cause?: unknown): Error {
    return new Error(`${message}\n--- last output of ${this.name} (pid ${this.pid}) ---\n${this.logs()}`, {
      cause,
    });
  }

  /** SIGTERM, then SIGKILL after `timeoutMs` (default 10s); resolves once the process is gone. */
  async stop(opts: { timeoutMs?: number; signal?: NodeJS.Signals } = {}): Promise<ExitStatus> {
    if (this.#status) return this.#status;
    this.child.kill(opts.signal ?? "SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const killed = new Promise<void>((resolveKill) => {
      timer = setTimeout(() => {
        this.child.kill("SIGKILL");
        resolveKill();
      }, opts.timeoutMs ?? 10_000);
    });
    try {
      await Promise.race([this.#exited, killed]);
      return await this.#exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Spawns `command` as a ManagedProcess. */
export function startProcess(
  command: string,
  args: readonly string[],
  opts: ManagedProcessOptions = {},
): ManagedProcess {
  return new ManagedProcess(command, args, opts);
}

export interface HttpResult {
  status: number;
  body: string;
}

/** GET over plain HTTP with a per-request timeout (default 2s). */
export async function httpGet(url: string, timeoutMs = 2_000): Promise<HttpResult> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, body: await res.text() };
}
