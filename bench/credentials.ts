/**
 * CI credentials benchmark (`make bench` runs `node bench/credentials.ts`): POST /v1/credentials of
 * a real `natsbind run` (local mode), as a child process pinned to ONE core, against the GitLab
 * simulator (OIDC discovery + JWKS) and one real nats-server (operator mode, full resolver), set up
 * like test/integration/credentials.test.ts: one binding on group "bench" with a `ci` role
 * (protected refs) over PROJECTS projects.
 *
 *  1. Token exchange, two request shapes:
 *       - without publicKey: natsbind generates the user key pair and returns the creds;
 *       - with publicKey: the job keeps its seed, natsbind signs the JWT for the given key.
 *     a) Capacity: CONCURRENCY keep-alive clients, each sending its next request when the last one
 *        was answered (closed loop): issuances per second, natsbind's CPU per request and its
 *        inverse (requests per CPU-second), p50/p99. With 64 always in flight, latency is queueing
 *        (64 / rate, Little's law): p99 < 20 ms at 64 in flight would need > 3,200/s.
 *     b) Latency at an offered rate: the same clients send TARGET_PER_SEC together (open loop, each
 *        request has a due time; latency counts from it, so waiting for a free client counts), and
 *        again at half that rate. This is where the p99 target is judged: ">= 2,000/s, p99 < 20 ms"
 *        is read as a capacity of at least 2,000/s (a) and p99 < 20 ms while 64 clients send
 *        2,000/s (b).
 *     Baseline, in the same run, from the same natsbind process, with the same client, clients and
 *     rates: GET /healthz (fixed body "ok"). /healthz rather than /readyz: both are built into the
 *     listener and answer two bytes, but /readyz first asks the mode whether it is ready and would
 *     answer 503 should natsbind leave readiness mid-run; /healthz answers the same bytes whatever
 *     the state, which is what "a plain endpoint returning a fixed body" is. Its requests carry the
 *     same Authorization (the same ID token bytes) and Accept headers as the exchange's, so Node
 *     parses the same request head; only the exchange's ~80-byte JSON body is missing. The load
 *     generator reaches its own core's limit before /healthz reaches natsbind's (the output says
 *     so), so the req/s ratio understates what an issuance costs; the CPU/req ratio does not.
 *     Every answer must be 200, or the bench fails; sampled issued JWTs are verified (signature,
 *     issuer = the project's ci key, account, user) and one issued creds file connects to the
 *     server. Runs are interleaved (every kind once per round, RUNS rounds) so that a machine
 *     getting busier affects all alike; figures are medians over the rounds. natsbind's RSS is
 *     read from /proc before and after the load.
 *
 * Set-up decisions the figures depend on:
 *   - Cores: natsbind runs under `taskset -c <first allowed CPU>` (checked from /proc once it
 *     runs); this process (load generator and simulator) and nats-server are moved to the other
 *     CPUs first. Without taskset or with one CPU nothing is pinned, and the output says so. What
 *     else ran on natsbind's CPU (other processes, and steal: a VM's CPU given to other guests) is
 *     read from /proc/stat and shown per run: on a shared machine, "req per CPU-s" is the figure
 *     to compare, req/s is what was left for natsbind.
 *   - ID tokens are minted before the measurements (RS256, 2048-bit, the simulator's
 *     mintIdToken): TOKENS distinct tokens, each with its own pipeline and job id, spread over the
 *     projects. They are reused across rounds: natsbind keeps no per-token state (no jti replay
 *     check), so a reused token costs what a new one does.
 *   - Rate limits: credentials.rateLimit is raised to its maximum (1,000,000 a minute per client
 *     and per project); every request comes from 127.0.0.1, so the defaults (1,200 a minute per
 *     client) would refuse almost everything. The output repeats this.
 *   - Audit: credentials.audit.file is set (one JSON line per issuance, batched write + fsync), as
 *     a production set-up would; connection audit stays on (its default), idle here.
 *
 * What limited the figures on the 2-core reference box (a VM, Xeon 2.8 GHz, Node 24), from
 * `--cpu-prof` of the child (BENCH_CPU_PROFILE) and the same calls timed alone on one core:
 *   - Before src/credentials/key-cache.ts, KeyStore.get() of the directory store ran on every
 *     issuance: three files read through the thread pool and two Ed25519 keys derived from their
 *     seeds (createPrivateKey, createPublicKey + export), ~1 ms of CPU, half of an issuance
 *     (~1.6-1.7 ms CPU, ~600/s). The issuer now keeps each slot's keys for 1 s: ~0.75 ms without
 *     publicKey, ~0.55 ms with (~1,300 and ~1,800 issuances per CPU-second).
 *   - What is left, per issuance: jose's jwtVerify (RS256 through WebCrypto, a thread-pool job)
 *     ~120 µs CPU where node:crypto.verify with a KeyObject takes ~40-50 µs; NKeyPair.generate
 *     ~145-170 µs (Ed25519 with DER export; generating a KeyObject takes ~70 µs); the Ed25519
 *     signature of the user JWT ~70-90 µs; HTTP ~60-90 µs (/healthz's whole cost); the audit line
 *     ~25 µs; body parsing (zod) and the JSON answer most of the rest. Main-thread profile shares:
 *     HTTP 23%, jwtVerify 18%, Ed25519 sign 13%, Ed25519 keygen 11%, zod/body 6%, audit 5%.
 *   - RSS grows with issuances: IssuedUsers (audit-connections.ts) keeps every issued user until
 *     its expiry + 5 min, up to 100,000 (~63 MB of heap for 100,000, measured alone); the full run
 *     goes from ~160 MB to ~510 MB over its 256,000 issuances (all within 15 minutes).
 *
 * Knobs (environment, for exploring only; the defaults are what `make bench` reports):
 *   BENCH_QUICK=1           fewer and smaller runs (a smoke test of the bench itself)
 *   BENCH_CPU_PROFILE=dir   natsbind runs with --cpu-prof --cpu-prof-dir=dir (written when it
 *                           exits on SIGTERM at the end; adds overhead, figures are not comparable)
 *   BENCH_CHILD_NODE_ARGS   node flags for the natsbind child (e.g. "--trace-gc"; its output is in
 *                           natsbind.log of the run's directory, kept with NATSBIND_KEEP_TMP=1)
 *   BENCH_CONCURRENCY=n     concurrent clients (default 64)
 *   BENCH_NO_PIN=1          do not pin anything (to see what pinning changes)
 *   TMPDIR=/dev/shm         key store, audit file and resolver dir on tmpfs
 *
 * The auth callout is measured by bench/callout.ts (its own nats-server with the callout set up).
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { openSync, closeSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import http from "node:http";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { stringify } from "yaml";
import { NODE_FLAGS } from "../src/cli/node-flags.ts";
import { DirectoryKeyStore } from "../src/keystore/directory.ts";
import { decodeJwt } from "../src/nats/claims.ts";
import { NKeyPair } from "../src/nats/keys.ts";
import { GitLabSimulator } from "../test/support/gitlab-sim.ts";
import { startNatsServer, type NatsServer } from "../test/support/nats-server.ts";
import {
  connectWithCreds,
  createTestOperator,
  natsConfigSection,
  type TestOperator,
} from "../test/support/operator.ts";
import { freePort, removeDir, tempDir, waitFor } from "../test/support/process.ts";
import {
  QUICK,
  benchEnv,
  cpuTimeMs,
  fmt,
  log,
  median,
  processCpuMs,
  procMemory,
  sleep,
  table,
  verdict,
  writeResults,
} from "./common.ts";

const AUDIENCE = "https://natsbind.bench";
const BINDING = "bench";
const PROJECTS = 4;
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 64);
/** Requests per measured run, for each of the three request kinds. */
const N = QUICK ? 2_000 : 10_000;
const RUNS = QUICK ? 2 : 5;
const WARMUP_N = QUICK ? 1_000 : 3_000;
/** Distinct ID tokens, used round robin (one run of N uses each at most once). */
const TOKENS = N;
/** Every SAMPLE_EVERY-th issued answer is kept and checked after its run (signature, claims). */
const SAMPLE_EVERY = 500;
/** The configuration's maximum: see the header. */
const RATE_LIMIT_PER_MINUTE = 1_000_000;
const REQUEST_TIMEOUT_MS = 30_000;
const START_TIMEOUT_MS = 60_000;
const PROFILE_DIR = process.env.BENCH_CPU_PROFILE;
// Extra node flags for the natsbind child (exploring, e.g. "--trace-gc"), as in bench/controller.ts.
const CHILD_NODE_ARGS = (process.env.BENCH_CHILD_NODE_ARGS ?? "").split(" ").filter(Boolean);
const NO_PIN = process.env.BENCH_NO_PIN === "1";

const TARGET_PER_SEC = 2_000;
/** Also offered: half the target, a load natsbind should carry without a queue. */
const HALF_PER_SEC = TARGET_PER_SEC / 2;
/** Requests per run at HALF_PER_SEC (as long a run as N at the target). */
const N_HALF = N / 2;
const TARGET_P99_MS = 20;

const BINDING_YAML = `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: ${BINDING}}
spec:
  gitlab: {group: ${BINDING}}
  roles:
    - name: ci
      publish: {allow: ["build.{{project.id}}.{{tag(pipeline)}}.>"]}
      subscribe: {allow: ["_INBOX.>", "build.{{project.id}}.>"]}
      ci: {refs: protected}
`;

// --- helpers -----------------------------------------------------------------------------------

/** Nearest-rank percentile (p in 0..100) of an unsorted array (copied). */
function percentile(values: ArrayLike<number>, p: number): number {
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

const mb = (bytes: number): number => bytes / (1024 * 1024);
const fmtMs = (ms: number): string => (ms >= 1 ? `${fmt(ms, 2)} ms` : `${fmt(ms * 1000, 0)} µs`);

/** The CPUs this process may run on (taskset's list), or undefined without taskset. */
function allowedCpus(): number[] | undefined {
  try {
    const out = execFileSync("taskset", ["-cp", String(process.pid)], { encoding: "utf8" });
    const list = out.slice(out.lastIndexOf(":") + 1).trim();
    const cpus: number[] = [];
    for (const part of list.split(",")) {
      const [from, to] = part.split("-").map(Number);
      for (let c = from!; c <= (to ?? from)!; c++) cpus.push(c);
    }
    return cpus.length > 0 && cpus.every(Number.isInteger) ? cpus : undefined;
  } catch {
    return undefined;
  }
}

interface Pinning {
  /** The CPU natsbind is pinned to (taskset -c), undefined: not pinned. */
  natsbind: number | undefined;
  /** CPUs this process and everything else it starts (nats-server) were moved to. */
  rest: string | undefined;
  note: string;
}

/**
 * natsbind gets the first allowed CPU; this process (all its threads) moves to the others, so
 * nats-server, started later, inherits them. Done before anything else starts.
 */
function pin(): Pinning {
  if (NO_PIN) return { natsbind: undefined, rest: undefined, note: "not pinned (BENCH_NO_PIN=1)" };
  const cpus = allowedCpus();
  if (!cpus) return { natsbind: undefined, rest: undefined, note: "not pinned (taskset not found)" };
  if (cpus.length < 2)
    return {
      natsbind: undefined,
      rest: undefined,
      note: `not pinned (one CPU allowed: ${cpus.join(",")}); natsbind shares it with the load generator`,
    };
  const natsbind = cpus[0]!;
  const rest = cpus.slice(1).join(",");
  execFileSync("taskset", ["-a", "-cp", rest, String(process.pid)], { stdio: "ignore" });
  return {
    natsbind,
    rest,
    note: `natsbind pinned to CPU ${natsbind} (taskset -c ${natsbind}); load generator, simulator and nats-server on CPU ${rest}`,
  };
}

// --- the world: operator, nats-server, simulator, natsbind run -----------------------------------

interface World {
  dir: string;
  op: TestOperator;
  server: NatsServer;
  sim: GitLabSimulator;
  projectIds: number[];
  child: ChildProcess;
  pid: number;
  /** The CPU natsbind is pinned to, if it is. */
  cpu: number | undefined;
  url: string;
  port: number;
  configFile: string;
  logFile: string;
  exited(): string | undefined;
}

async function startWorld(pinning: Pinning, cleanup: Array<() => Promise<unknown>>): Promise<World> {
  const op = await createTestOperator();
  cleanup.push(() => op.remove());
  const server = await startNatsServer({ ...op.serverOptions, name: "bench-credentials" });
  cleanup.push(() => server.stop());
  const sim = await GitLabSimulator.start();
  cleanup.push(() => sim.stop());
  const group = sim.createGroup({ name: "Bench", path: BINDING });
  const projectIds = Array.from(
    { length: PROJECTS },
    (_, i) => sim.createProject({ name: `p${i}`, groupId: group.id }).id,
  );

  const dir = await tempDir("bench-credentials");
  cleanup.push(() => removeDir(dir));
  await mkdir(join(dir, "bindings"));
  await writeFile(join(dir, "token"), sim.token);
  await writeFile(join(dir, "bindings", `${BINDING}.yaml`), BINDING_YAML);
  const port = await freePort();
  const configFile = join(dir, "natsbind.yaml");
  await writeFile(
    configFile,
    stringify({
      nats: natsConfigSection(op, [server.url]),
      gitlab: { url: sim.url, tokenFile: "token", resyncInterval: "1h" },
      http: { listen: `127.0.0.1:${port}` },
      credentials: {
        audience: AUDIENCE,
        audit: { file: "audit/credentials.log" },
        rateLimit: { perClientPerMinute: RATE_LIMIT_PER_MINUTE, perProjectPerMinute: RATE_LIMIT_PER_MINUTE },
      },
    }),
  );

  const logFile = join(dir, "natsbind.log");
  const out = openSync(logFile, "w");
  const nodeArgs = [
    ...NODE_FLAGS,
    ...CHILD_NODE_ARGS,
    ...(PROFILE_DIR ? ["--cpu-prof", `--cpu-prof-dir=${PROFILE_DIR}`] : []),
    join(import.meta.dirname, "..", "src", "cli", "main.ts"),
    "run",
    "--config",
    configFile,
  ];
  // taskset execs node: the pid is natsbind's.
  const child =
    pinning.natsbind !== undefined
      ? spawn("taskset", ["-c", String(pinning.natsbind), process.execPath, ...nodeArgs], {
          stdio: ["ignore", out, out],
        })
      : spawn(process.execPath, nodeArgs, { stdio: ["ignore", out, out] });
  closeSync(out);
  let exited: string | undefined;
  child.once("exit", (code, signal) => void (exited = `code ${code}, signal ${signal}`));
  cleanup.push(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    const gone = new Promise<void>((r) => child.once("exit", () => r()));
    // A CPU profile is written on the way out; give it time.
    if ((await Promise.race([gone.then(() => true), sleep(20_000).then(() => false)])) === false)
      child.kill("SIGKILL");
  });
  const world: World = {
    dir,
    op,
    server,
    sim,
    projectIds,
    child,
    pid: child.pid!,
    cpu: pinning.natsbind,
    url: `http://127.0.0.1:${port}`,
    port,
    configFile,
    logFile,
    exited: () => exited,
  };
  const failIf = (): string | undefined =>
    exited === undefined ? undefined : `natsbind run exited (${exited})`;
  try {
    await ready(world, failIf);
  } catch (err) {
    // The directory goes at clean-up: show the end of natsbind's log now.
    const tail = readFileSync(logFile, "utf8").split("\n").slice(-20).join("\n");
    throw new Error(`${(err as Error).message}\nend of natsbind's log:\n${tail}`, { cause: err });
  }
  if (pinning.natsbind !== undefined) {
    // Per-core figures only if the pinning took (checked once natsbind, not taskset, runs).
    const status = readFileSync(`/proc/${world.pid}/status`, "utf8");
    const allowed = /^Cpus_allowed_list:\s*(\S+)$/m.exec(status)?.[1];
    if (allowed !== String(pinning.natsbind))
      throw new Error(`natsbind may run on CPUs ${allowed}, not only on CPU ${pinning.natsbind}`);
  }
  return world;
}

/** natsbind answers /readyz, and every project's slot exists and its token exchange answers 200. */
async function ready(world: World, failIf: () => string | undefined): Promise<void> {
  const { sim, projectIds } = world;
  await waitFor(async () => (await fetch(`${world.url}/readyz`)).status === 200, {
    what: "natsbind run to be ready",
    timeoutMs: START_TIMEOUT_MS,
    intervalMs: 50,
    failIf,
  });
  const keys = new DirectoryKeyStore(join(world.dir, "keys"));
  for (const projectId of projectIds) {
    await waitFor(
      async () => (await keys.get({ binding: BINDING, projectId }))?.roleKeys.has("ci") === true,
      { what: `the key slot of project ${projectId}`, timeoutMs: START_TIMEOUT_MS, intervalMs: 50, failIf },
    );
    const token = sim.mintIdToken({ projectId, aud: AUDIENCE });
    await waitFor(
      async () => {
        const res = await fetch(`${world.url}/v1/credentials`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, accept: "application/json" },
        });
        await res.text();
        return res.status === 200;
      },
      { what: `an exchange for project ${projectId}`, timeoutMs: START_TIMEOUT_MS, intervalMs: 50, failIf },
    );
  }
}

// --- load ----------------------------------------------------------------------------------------

interface Shape {
  name: string;
  method: "GET" | "POST";
  path: string;
  /** The request's body for request i (undefined: none). */
  body(i: number): string | undefined;
  /** Answers kept for checking (every SAMPLE_EVERY-th); undefined: none kept. */
  sample: boolean;
}

interface RunOut {
  wallMs: number;
  latenciesMs: Float64Array;
  /** natsbind's CPU (user + sys) during the run, ms; undefined off Linux. */
  natsbindCpuMs: number | undefined;
  /** natsbind's CPU during the run (all processes, and steal), ms; undefined when not pinned. */
  core: { busy: number; steal: number } | undefined;
  /** This process's CPU during the run (load generator), ms. */
  clientCpuMs: number;
  /** Non-200 answers by status. */
  failures: Record<string, number>;
  samples: Array<{ i: number; body: string }>;
}

class Load {
  readonly #agent: http.Agent;
  readonly #world: World;
  readonly #tokens: readonly string[];

  constructor(world: World, tokens: readonly string[]) {
    this.#world = world;
    this.#tokens = tokens;
    this.#agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY, maxFreeSockets: CONCURRENCY });
  }

  close(): void {
    this.#agent.destroy();
  }

  #request(shape: Shape, i: number, keep: boolean): Promise<{ status: number; body: string }> {
    const body = shape.body(i);
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.#tokens[i % this.#tokens.length]!}`,
      accept: "application/json",
    };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      headers["content-length"] = String(Buffer.byteLength(body));
    }
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          agent: this.#agent,
          host: "127.0.0.1",
          port: this.#world.port,
          method: shape.method,
          path: shape.path,
          headers,
        },
        (res) => {
          if (!keep && res.statusCode === 200) {
            res.resume();
            res.once("end", () => resolve({ status: 200, body: "" }));
            return;
          }
          res.setEncoding("utf8");
          let text = "";
          res.on("data", (chunk: string) => (text += chunk));
          res.once("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
        },
      );
      req.setTimeout(REQUEST_TIMEOUT_MS, () =>
        req.destroy(new Error(`no answer in ${REQUEST_TIMEOUT_MS} ms`)),
      );
      req.once("error", reject);
      req.end(body);
    });
  }

  /**
   * `n` requests of `shape` (numbered from `first`) from CONCURRENCY clients. Closed loop without
   * `ratePerSec`: each client sends its next request when the last one was answered; latency is
   * send -> answer. Open loop with it: request k is due at start + k / ratePerSec, the next free
   * client sends it (at once when late); latency is due time -> answer, so time spent waiting for
   * a free client counts (no coordinated omission); a request a timer sent early counts from its send.
   */
  async run(shape: Shape, n: number, first = 0, ratePerSec?: number): Promise<RunOut> {
    const latencies = new Float64Array(n);
    const failures: Record<string, number> = {};
    const samples: RunOut["samples"] = [];
    let next = 0;
    const cpu0 = processCpuMs(this.#world.pid);
    const core = this.#world.cpu;
    const core0 = core === undefined ? undefined : cpuTimeMs(core);
    const client0 = process.cpuUsage();
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        for (let k = next++; k < n; k = next++) {
          const i = first + k;
          const keep = shape.sample && i % SAMPLE_EVERY === 0;
          let started = performance.now();
          if (ratePerSec !== undefined) {
            const due = t0 + (k * 1000) / ratePerSec;
            if (due > started) await sleep(due - started);
            // Late (no free client, or the timer): from the due time. Early (timers have 1 ms
            // granularity): from the send.
            started = Math.min(due, performance.now());
          }
          const answer = await this.#request(shape, i, keep);
          latencies[k] = performance.now() - started;
          if (answer.status !== 200) {
            failures[answer.status] = (failures[answer.status] ?? 0) + 1;
            if (Object.keys(failures).length === 1 && failures[answer.status] === 1)
              log(`  first non-200 answer (${shape.name}): ${answer.status} ${answer.body.slice(0, 300)}`);
          } else if (keep) samples.push({ i, body: answer.body });
        }
      }),
    );
    const wallMs = performance.now() - t0;
    const client = process.cpuUsage(client0);
    const cpu1 = processCpuMs(this.#world.pid);
    const core1 = core === undefined ? undefined : cpuTimeMs(core);
    return {
      wallMs,
      latenciesMs: latencies,
      natsbindCpuMs: cpu0 && cpu1 ? cpu1.user + cpu1.sys - cpu0.user - cpu0.sys : undefined,
      clientCpuMs: (client.user + client.system) / 1000,
      core: core0 && core1 ? { busy: core1.busy - core0.busy, steal: core1.steal - core0.steal } : undefined,
      failures,
      samples,
    };
  }
}

/** Checks a kept answer: a JWT signed by the project's ci key for its account, for the right user. */
function checkIssued(
  body: string,
  slots: ReadonlyMap<string, { account: string; ci: string }>,
  userKey: string | undefined,
): void {
  const answer = JSON.parse(body) as { account: string; user: string; jwt: string; creds?: string };
  const claims = decodeJwt(answer.jwt, "issued user JWT");
  const slot = slots.get(answer.account);
  if (!slot) throw new Error(`issued for account ${answer.account}, not one of the bench's projects`);
  if (claims.iss !== slot.ci) throw new Error("issued user JWT is not signed by the project's ci key");
  if (claims.nats.issuer_account !== slot.account) throw new Error("issued user JWT: wrong issuer_account");
  if (claims.sub !== answer.user) throw new Error("issued user JWT: sub is not the answer's user");
  if (userKey !== undefined && answer.user !== userKey)
    throw new Error("issued user JWT: not for the publicKey sent");
  if (userKey === undefined && !answer.creds?.includes(answer.jwt))
    throw new Error("issued answer without publicKey has no creds holding the JWT");
}

// --- section 1: exchange ------------------------------------------------------------------------

interface LoadFigures {
  n: number;
  runsMs: number[];
  /** Answers per second of the median run. */
  perSec: number;
  /** Medians over the runs of each run's percentile, ms. */
  p50Ms: number;
  p99Ms: number;
  /** Highest latency seen in any run, ms. */
  maxMs: number;
  /** natsbind CPU per request (median over runs), µs, and its share of one core during the runs. */
  natsbindCpuUs: number | undefined;
  natsbindBusy: number | undefined;
  /** Shares of natsbind's CPU that other processes and the hypervisor (steal) took during the runs. */
  othersOnCore: number | undefined;
  stealOnCore: number | undefined;
  /** 1 / natsbind CPU per request: what natsbind would answer per second with a core of its own. */
  perCpuSecond: number | undefined;
  /** Load generator (this process) CPU per request, µs, and its share of one core. */
  clientCpuUs: number;
  clientBusy: number;
}

function figures(n: number, runs: RunOut[]): LoadFigures {
  const walls = runs.map((r) => r.wallMs);
  const cpus = runs.map((r) => r.natsbindCpuMs);
  const complete = cpus.every((c) => c !== undefined);
  return {
    n,
    runsMs: walls.map((v) => Math.round(v * 10) / 10),
    perSec: (n * 1000) / median(walls),
    p50Ms: median(runs.map((r) => percentile(r.latenciesMs, 50))),
    p99Ms: median(runs.map((r) => percentile(r.latenciesMs, 99))),
    maxMs: Math.max(...runs.map((r) => percentile(r.latenciesMs, 100))),
    natsbindCpuUs: complete ? (median(cpus as number[]) * 1000) / n : undefined,
    natsbindBusy: complete ? median(runs.map((r) => r.natsbindCpuMs! / r.wallMs)) : undefined,
    othersOnCore:
      complete && runs.every((r) => r.core !== undefined)
        ? median(runs.map((r) => Math.max(0, r.core!.busy - r.natsbindCpuMs!) / r.wallMs))
        : undefined,
    stealOnCore: runs.every((r) => r.core !== undefined)
      ? median(runs.map((r) => r.core!.steal / r.wallMs))
      : undefined,
    perCpuSecond: complete ? (n * 1000) / median(cpus as number[]) : undefined,
    clientCpuUs: (median(runs.map((r) => r.clientCpuMs)) * 1000) / n,
    clientBusy: median(runs.map((r) => r.clientCpuMs / r.wallMs)),
  };
}

type ShapeKey = "baseline" | "generated" | "publicKey";
const SHAPE_KEYS: readonly ShapeKey[] = ["baseline", "generated", "publicKey"];

interface ShapeResults {
  name: string;
  /** Closed loop: CONCURRENCY requests always in flight (capacity). */
  saturated: LoadFigures;
  /** Open loop: TARGET_PER_SEC offered by CONCURRENCY clients (latency at the target rate). */
  atTarget: LoadFigures;
  /** Open loop: HALF_PER_SEC offered. */
  atHalf: LoadFigures;
  /** Issued answers checked (signature, issuer, account, user). */
  checked: number;
}

interface ExchangeResults {
  concurrency: number;
  runs: number;
  projects: number;
  tokens: number;
  rateLimitPerMinute: number;
  baseline: ShapeResults;
  generated: ShapeResults;
  publicKey: ShapeResults;
  /** Exchange capacity / baseline capacity (closed loop). */
  generatedVsBaseline: number;
  publicKeyVsBaseline: number;
  rss: { idleMb: number | undefined; afterMb: number | undefined; peakMb: number | undefined };
  issuedTotal: number;
  targetPerSec: number;
  halfPerSec: number;
  targetP99Ms: number;
  pass: { generated: boolean; publicKey: boolean };
}

async function benchExchange(w: World): Promise<ExchangeResults> {
  log(`[exchange] minting ${fmt(TOKENS)} ID tokens over ${PROJECTS} projects (untimed)`);
  const tokens: string[] = [];
  const mintStarted = performance.now();
  for (let i = 0; i < TOKENS; i++)
    tokens.push(w.sim.mintIdToken({ projectId: w.projectIds[i % PROJECTS]!, aud: AUDIENCE }));
  log(`[exchange]   ${fmt((performance.now() - mintStarted) / TOKENS, 2)} ms per token`);
  const userKeys = Array.from({ length: TOKENS }, () => NKeyPair.generate("user").publicKey);
  const store = new DirectoryKeyStore(join(w.dir, "keys"));
  const slots = new Map<string, { account: string; ci: string }>();
  for (const projectId of w.projectIds) {
    const slot = (await store.get({ binding: BINDING, projectId }))!;
    slots.set(slot.account, { account: slot.account, ci: slot.roles.ci! });
  }

  const shapes: Record<ShapeKey, Shape> = {
    baseline: { name: "GET /healthz", method: "GET", path: "/healthz", body: () => undefined, sample: false },
    generated: {
      name: "POST /v1/credentials",
      method: "POST",
      path: "/v1/credentials",
      body: () => '{"role":"ci"}',
      sample: true,
    },
    publicKey: {
      name: "POST /v1/credentials + publicKey",
      method: "POST",
      path: "/v1/credentials",
      body: (i) => JSON.stringify({ role: "ci", publicKey: userKeys[i % userKeys.length] }),
      sample: true,
    },
  };

  const idle = procMemory(w.pid);
  let peak = idle?.rss ?? 0;
  const sampler = setInterval(() => (peak = Math.max(peak, procMemory(w.pid)?.rss ?? 0)), 100);
  const load = new Load(w, tokens);
  let issued = 0;
  const checked: Record<ShapeKey, number> = { baseline: 0, generated: 0, publicKey: 0 };
  /** One run; fails the bench on any non-200 answer or a wrong issued JWT. */
  const runChecked = async (key: ShapeKey, n: number, first: number, rate?: number): Promise<RunOut> => {
    const shape = shapes[key];
    const out = await load.run(shape, n, first, rate);
    if (Object.keys(out.failures).length > 0)
      throw new Error(`${shape.name}: non-200 answers ${JSON.stringify(out.failures)}`);
    for (const s of out.samples)
      checkIssued(s.body, slots, key === "publicKey" ? userKeys[s.i % userKeys.length] : undefined);
    checked[key] += out.samples.length;
    if (shape.sample) issued += n;
    if (w.exited() !== undefined) throw new Error(`natsbind run exited (${w.exited()})`);
    return out;
  };
  const progress = (what: string, shape: Shape, out: RunOut): void => {
    const share = (ms: number | undefined): string =>
      ms === undefined ? "n/a" : `${fmt((100 * ms) / out.wallMs)}%`;
    const others =
      out.core !== undefined && out.natsbindCpuMs !== undefined
        ? `; its core: others ${share(Math.max(0, out.core.busy - out.natsbindCpuMs))}, steal ${share(out.core.steal)}`
        : "";
    log(
      `[exchange]   ${what}: ${shape.name}: ${fmt((out.latenciesMs.length * 1000) / out.wallMs)}/s, ` +
        `p50 ${fmtMs(percentile(out.latenciesMs, 50))}, p99 ${fmtMs(percentile(out.latenciesMs, 99))}, ` +
        `natsbind busy ${share(out.natsbindCpuMs)}${others}`,
    );
  };
  try {
    log(`[exchange] warm-up: ${fmt(WARMUP_N)} requests of each kind, ${CONCURRENCY} in flight`);
    for (const key of SHAPE_KEYS) await runChecked(key, WARMUP_N, 0);
    log(
      `[exchange] ${RUNS} rounds; each: ${fmt(N)} requests per kind with ${CONCURRENCY} always in flight ` +
        `(capacity), then ${fmt(N)} per kind offered at ${fmt(TARGET_PER_SEC)}/s and ${fmt(N_HALF)} at ` +
        `${fmt(HALF_PER_SEC)}/s by ${CONCURRENCY} clients (latency)`,
    );
    const saturated: Record<ShapeKey, RunOut[]> = { baseline: [], generated: [], publicKey: [] };
    const atTarget: Record<ShapeKey, RunOut[]> = { baseline: [], generated: [], publicKey: [] };
    const atHalf: Record<ShapeKey, RunOut[]> = { baseline: [], generated: [], publicKey: [] };
    for (let r = 0; r < RUNS; r++) {
      for (const key of SHAPE_KEYS) {
        const out = await runChecked(key, N, r * N);
        saturated[key].push(out);
        progress(`round ${r + 1}, ${CONCURRENCY} in flight`, shapes[key], out);
      }
      for (const key of SHAPE_KEYS) {
        const out = await runChecked(key, N, r * N, TARGET_PER_SEC);
        atTarget[key].push(out);
        progress(`round ${r + 1}, ${fmt(TARGET_PER_SEC)}/s offered`, shapes[key], out);
      }
      for (const key of SHAPE_KEYS) {
        const out = await runChecked(key, N_HALF, r * N, HALF_PER_SEC);
        atHalf[key].push(out);
        progress(`round ${r + 1}, ${fmt(HALF_PER_SEC)}/s offered`, shapes[key], out);
      }
    }
    const after = procMemory(w.pid);
    const results = Object.fromEntries(
      SHAPE_KEYS.map((key) => [
        key,
        {
          name: shapes[key].name,
          saturated: figures(N, saturated[key]),
          atTarget: figures(N, atTarget[key]),
          atHalf: figures(N_HALF, atHalf[key]),
          checked: checked[key],
        },
      ]),
    ) as Record<ShapeKey, ShapeResults>;

    // One issued creds file really connects (untimed): the server trusts what natsbind signs.
    const one = await fetch(`${w.url}/v1/credentials`, {
      method: "POST",
      headers: { authorization: `Bearer ${tokens[0]!}`, accept: "text/plain" },
    });
    const creds = await one.text();
    if (one.status !== 200)
      throw new Error(`creds for the connect check: ${one.status} ${creds.slice(0, 200)}`);
    const nc = await connectWithCreds(w.server.url, new TextEncoder().encode(creds));
    await nc.flush();
    await nc.close();

    const pass = (s: ShapeResults): boolean =>
      s.saturated.perSec >= TARGET_PER_SEC && s.atTarget.p99Ms < TARGET_P99_MS;
    return {
      concurrency: CONCURRENCY,
      runs: RUNS,
      projects: PROJECTS,
      tokens: TOKENS,
      rateLimitPerMinute: RATE_LIMIT_PER_MINUTE,
      ...results,
      generatedVsBaseline: results.generated.saturated.perSec / results.baseline.saturated.perSec,
      publicKeyVsBaseline: results.publicKey.saturated.perSec / results.baseline.saturated.perSec,
      rss: {
        idleMb: idle && mb(idle.rss),
        afterMb: after && mb(after.rss),
        peakMb: Math.max(mb(peak), after ? mb(after.hwm) : 0) || undefined,
      },
      issuedTotal: issued,
      targetPerSec: TARGET_PER_SEC,
      halfPerSec: HALF_PER_SEC,
      targetP99Ms: TARGET_P99_MS,
      pass: { generated: pass(results.generated), publicKey: pass(results.publicKey) },
    };
  } finally {
    clearInterval(sampler);
    load.close();
  }
}

function printExchange(e: ExchangeResults): void {
  log(
    `\n== 1. Token exchange: POST /v1/credentials, natsbind on one core, ${e.concurrency} clients, ${e.projects} projects ==`,
  );
  const cpu = (us: number | undefined): string => (us === undefined ? "n/a" : `${fmt(us)} µs`);
  const pct = (share: number | undefined): string => (share === undefined ? "n/a" : `${fmt(share * 100)}%`);
  const count = (v: number | undefined): string => (v === undefined ? "n/a" : fmt(v));
  const shapes = [e.baseline, e.generated, e.publicKey];
  const ratios = [1, e.generatedVsBaseline, e.publicKeyVsBaseline];
  log(
    `a) capacity: ${e.concurrency} requests always in flight, ${fmt(e.baseline.saturated.n)} per run, ${e.runs} runs`,
  );
  log(
    table(
      [
        "request",
        "req/s",
        "p50",
        "p99",
        "natsbind CPU/req",
        "req per CPU-s",
        "natsbind busy",
        "others/steal on its core",
        "client CPU/req",
        "req/s vs /healthz",
        "CPU/req vs /healthz",
      ],
      shapes.map((s, i) => [
        s.name,
        fmt(s.saturated.perSec),
        fmtMs(s.saturated.p50Ms),
        fmtMs(s.saturated.p99Ms),
        cpu(s.saturated.natsbindCpuUs),
        count(s.saturated.perCpuSecond),
        pct(s.saturated.natsbindBusy),
        `${pct(s.saturated.othersOnCore)} / ${pct(s.saturated.stealOnCore)}`,
        `${cpu(s.saturated.clientCpuUs)} (${pct(s.saturated.clientBusy)})`,
        `${fmt(ratios[i]!, 2)}x`,
        s.saturated.natsbindCpuUs !== undefined && e.baseline.saturated.natsbindCpuUs !== undefined
          ? `${fmt(s.saturated.natsbindCpuUs / e.baseline.saturated.natsbindCpuUs, 1)}x`
          : "n/a",
      ]),
    ),
  );
  log(
    `   latency here is queueing: with ${e.concurrency} in flight it is ${e.concurrency} / (req/s) on average (Little's law). ` +
      "req per CPU-s: 1 / natsbind CPU per request, what its core would answer with nothing else on it.",
  );
  if (e.baseline.saturated.clientBusy > 0.85)
    log(
      `   /healthz: the load generator was ${fmt(e.baseline.saturated.clientBusy * 100)}% busy, natsbind ` +
        `${fmt((e.baseline.saturated.natsbindBusy ?? NaN) * 100)}%: its req/s is the generator's limit, so the ` +
        "req/s ratios understate the exchange's cost; the CPU/req ratios do not depend on it.",
    );
  log(
    `b) latency at an offered rate: ${e.concurrency} clients together send ${fmt(e.targetPerSec)}/s ` +
      `(${fmt(e.baseline.atTarget.n)} per run) and ${fmt(e.halfPerSec)}/s (${fmt(e.baseline.atHalf.n)} per run), ${e.runs} runs each`,
  );
  const rows: string[][] = [];
  for (const [rate, pick] of [
    [e.targetPerSec, (s: ShapeResults) => s.atTarget],
    [e.halfPerSec, (s: ShapeResults) => s.atHalf],
  ] as const) {
    for (const s of shapes) {
      const f = pick(s);
      rows.push([
        s.name,
        `${fmt(rate)}/s`,
        fmt(f.perSec),
        fmtMs(f.p50Ms),
        fmtMs(f.p99Ms),
        fmtMs(f.maxMs),
        cpu(f.natsbindCpuUs),
        pct(f.natsbindBusy),
        `${pct(f.othersOnCore)} / ${pct(f.stealOnCore)}`,
        `${fmt(f.p99Ms / pick(e.baseline).p99Ms, 1)}x`,
      ]);
    }
  }
  log(
    table(
      [
        "request",
        "offered",
        "answered/s",
        "p50",
        "p99",
        "max",
        "natsbind CPU/req",
        "natsbind busy",
        "others/steal on its core",
        "p99 vs /healthz",
      ],
      rows,
    ),
  );
  log(
    "   latency from the request's due time to the answer read (a request waiting for a free client counts).",
  );
  log(
    "p50/p99: medians over the runs of each run's percentile; natsbind busy: its CPU time / wall time " +
      "(100% = its core saturated); others/steal on its core: the rest of that CPU's busy time (other " +
      "processes, interrupts) and the time the hypervisor gave to other guests (steal), from /proc/stat; " +
      "client: this process (the load generator).",
  );
  log(
    `natsbind RSS: ${fmt(e.rss.idleMb ?? NaN)} MB before the load, ${fmt(e.rss.afterMb ?? NaN)} MB after ` +
      `${fmt(e.issuedTotal)} issuances, peak ${fmt(e.rss.peakMb ?? NaN)} MB`,
  );
  log(
    `checked: ${fmt(e.generated.checked + e.publicKey.checked)} sampled user JWTs (signature, issuer, account, user), ` +
      "every answer 200; one issued creds file connected to nats-server",
  );
  for (const [label, s, ok] of [
    ["without publicKey", e.generated, e.pass.generated],
    ["with publicKey", e.publicKey, e.pass.publicKey],
  ] as const) {
    log(
      `target >= ${fmt(e.targetPerSec)}/s on one core (a) and p99 < ${e.targetP99Ms} ms at ${fmt(e.targetPerSec)}/s (b), ${label}: ` +
        `${fmt(s.saturated.perSec)}/s (${count(s.saturated.perCpuSecond)} per CPU-s), p99 ${fmtMs(s.atTarget.p99Ms)} -> ${verdict(ok)}`,
    );
  }
}

// --- main --------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const started = performance.now();
  // Before pinning: availableParallelism() follows this process's affinity.
  const env = benchEnv();
  const pinning = pin();
  log(
    `natsbind credentials bench: node ${env.node}, ${env.natsServer}, ${env.availableParallelism} cores (${env.cpuModel})`,
  );
  log(pinning.note);
  log(
    `rate limits raised for the bench: credentials.rateLimit perClientPerMinute and perProjectPerMinute = ${fmt(RATE_LIMIT_PER_MINUTE)} ` +
      "(every request comes from 127.0.0.1; the defaults would refuse)",
  );
  if (PROFILE_DIR)
    log(`CPU profile of natsbind into ${PROFILE_DIR} (figures include the profiler's overhead)`);
  log("");

  const cleanup: Array<() => Promise<unknown>> = [];
  let exchange: ExchangeResults;
  try {
    log("[setup] operator, nats-server, GitLab simulator, natsbind run (child process)");
    const world = await startWorld(pinning, cleanup);
    exchange = await benchExchange(world);
  } finally {
    for (const step of cleanup.reverse()) await step().catch(() => undefined);
  }

  printExchange(exchange);
  log("\n(the auth callout: bench/callout.ts)");

  const totalS = (performance.now() - started) / 1000;
  log(`\ntotal bench time: ${fmt(totalS, 1)} s`);
  await writeResults("credentials.json", {
    date: new Date().toISOString(),
    env: { ...env, pinning: pinning.note },
    exchange,
    totalSeconds: totalS,
  });
}

await main();
