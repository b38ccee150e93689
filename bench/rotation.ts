/**
 * Signing-key rotation benchmark (`make bench` runs `node bench/rotation.ts`; issue 11, part 7):
 * one role rotated on 10,000 accounts through every phase, by `natsbind run` in its own process
 * (local mode, launched with NODE_FLAGS as every launcher does), against ONE real nats-server
 * (full resolver) and the GitLab simulator holding 10,000 projects in nested subgroups, selected by
 * one binding with one role.
 *
 *  0. Cold start (for information): spawn until every account's JWT was seen on the wire and the
 *     binding's status was written.
 *  1. Baseline, measured in the same run against the same server, process and accounts: pushes of
 *     the same 10,000 accounts without rotation. The binding file changes (limits.connections + 1),
 *     so every account's claims change and each is pushed once: time from the file write until the
 *     status file shows that reconcile done. BASELINE_RUNS runs, median.
 *  2. Rotation of role `ci` on every account, asked as `natsbind rotate --role ci` asks it (a
 *     trigger in the binding's request file), ROTATION_RUNS runs:
 *     a. prepare + push + activate (one reconcile): from the request file write until the status
 *        shows every account with its new key issuing and its old key retiring.
 *     b. retire + push + forget: from the moment the old keys may go (their `notBefore`: the overlap
 *        after activation, 5 s without a credentials section) until the status shows every old key
 *        gone (its removal pushed, its seed deleted). This phase also asks every server for the
 *        account's connections on the old key (CONNZ) before removing it.
 *     Ratios: each phase's time over the baseline's median.
 *  Pushes per account per phase: $SYS.REQ.CLAIMS.UPDATE messages on the wire, counted per account
 *  by a system-account subscriber (the target is one per account per phase that changes the JWT);
 *  lookups and CONNZ requests are counted the same way. Peak RSS of the natsbind process: the
 *  kernel's high-water mark (VmHWM, reset through /proc/<pid>/clear_refs before each section) and
 *  VmRSS sampled every 100 ms; CPU time of the natsbind process per phase.
 *
 * Knobs (environment, for exploring only; the defaults are what `make bench` reports):
 *   BENCH_QUICK=1   1,000 projects, one run each (a smoke test of the bench itself)
 *   TMPDIR=/dev/shm key directory and the server's resolver dir on tmpfs (removes the fsync cost)
 */
import { spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { stringify } from "yaml";
import type { NatsConnection } from "@nats-io/transport-node";
import { INIT_LAYOUT } from "../src/cli/init.ts";
import { NODE_FLAGS } from "../src/cli/node-flags.ts";
import { parseConfig, type Config } from "../src/config/config.ts";
import { DirectoryKeyStore } from "../src/keystore/directory.ts";
import { RequestFiles } from "../src/rotation/request-files.ts";
import type { BindingStatus } from "../src/controllers/binding/status.ts";
import { StatusFiles } from "../src/store/status-files.ts";
import { GitLabSimulator } from "../test/support/gitlab-sim.ts";
import { startNatsServer, type NatsServer } from "../test/support/nats-server.ts";
import { connectWithCreds, createTestOperator, type TestOperator } from "../test/support/operator.ts";
import { removeDir, tempDir } from "../test/support/process.ts";
import {
  QUICK,
  benchEnv,
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

const PROJECTS = QUICK ? 1_000 : 10_000;
const BINDING = "bench";
const ROLE = "ci";
const BASELINE_RUNS = QUICK ? 1 : 3;
const ROTATION_RUNS = QUICK ? 1 : 3;
const STEP_TIMEOUT_MS = 300_000;
/** The target: each phase that changes an account's JWT pushes it once. */
const PUSHES_PER_ACCOUNT_TARGET = 1;

const mb = (bytes: number): number => bytes / (1024 * 1024);
const fmtMs = (ms: number): string => (ms >= 10_000 ? `${fmt(ms / 1000, 2)} s` : `${fmt(ms, 0)} ms`);

function bindingYaml(connections: number): string {
  return `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: ${BINDING}}
spec:
  gitlab: {group: bench, includeSubgroups: true}
  accountPer: project
  roles:
    - name: ${ROLE}
      publish: {allow: ["build.status.{{project.slug}}.>"]}
      subscribe: {allow: ["_INBOX.>", "deploy.events.{{project.slug}}.{{tag(env)}}"]}
  limits: {connections: ${connections}, payload: 1Mi}
`;
}

/** Resolver requests on the wire (system account), per account for pushes. */
class Wire {
  readonly pushes = new Map<string, number>();
  lookups = 0;
  connz = 0;
  firstConnzAt: number | undefined;
  readonly #nc: NatsConnection;

  private constructor(nc: NatsConnection) {
    this.#nc = nc;
    nc.subscribe("$SYS.REQ.CLAIMS.UPDATE", {
      callback: (_err, msg) => {
        // The account is the JWT's `sub`: read without verifying (the servers do).
        const payload = msg.string().split(".")[1] ?? "";
        try {
          const sub = (JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as { sub?: string })
            .sub;
          if (sub) this.pushes.set(sub, (this.pushes.get(sub) ?? 0) + 1);
        } catch {
          // not a JWT
        }
      },
    });
    nc.subscribe("$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP", { callback: () => void (this.lookups += 1) });
    nc.subscribe("$SYS.REQ.ACCOUNT.*.CONNZ", {
      callback: () => {
        this.connz += 1;
        this.firstConnzAt ??= performance.now();
      },
    });
  }

  static async start(server: NatsServer, op: TestOperator): Promise<Wire> {
    const wire = new Wire(await connectWithCreds(server.url, op.systemCreds));
    await wire.#nc.flush();
    return wire;
  }

  /** Counts since reset(), after a round trip so that everything sent before is counted. */
  async read(): Promise<PushCounts & { lookups: number; connz: number }> {
    await this.#nc.flush();
    const perAccount = [...this.pushes.values()];
    return {
      accounts: this.pushes.size,
      pushes: perAccount.reduce((a, b) => a + b, 0),
      maxPerAccount: perAccount.length ? Math.max(...perAccount) : 0,
      notOnce: perAccount.filter((n) => n !== 1).length,
      lookups: this.lookups,
      connz: this.connz,
    };
  }

  reset(): void {
    this.pushes.clear();
    this.lookups = 0;
    this.connz = 0;
    this.firstConnzAt = undefined;
  }

  close(): Promise<void> {
    return this.#nc.close();
  }
}

interface PushCounts {
  /** Accounts pushed at least once. */
  accounts: number;
  pushes: number;
  maxPerAccount: number;
  /** Accounts pushed other than exactly once. */
  notOnce: number;
}

/** `natsbind run` in its own process, with its memory and CPU. */
class Natsbind {
  readonly child: ChildProcess;
  readonly pid: number;
  #stderr = "";
  /** Warnings and errors natsbind logged (its log lines go to stdout). */
  readonly problems: string[] = [];
  #partial = "";
  #exited: string | undefined;
  #peakRss = 0;
  readonly #sampler: ReturnType<typeof setInterval>;

  constructor(configFile: string) {
    this.child = spawn(
      process.execPath,
      [
        ...NODE_FLAGS,
        join(import.meta.dirname, "..", "src", "cli", "main.ts"),
        "run",
        "--config",
        configFile,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    this.child.stdout!.setEncoding("utf8");
    this.child.stdout!.on("data", (chunk: string) => {
      const lines = (this.#partial + chunk).split("\n");
      this.#partial = lines.pop() ?? "";
      for (const line of lines)
        if (line.includes('"level":"warn"') || line.includes('"level":"error"')) {
          this.problems.push(line.slice(0, 600));
          if (this.problems.length > 20) this.problems.shift();
        }
    });
    this.pid = this.child.pid!;
    this.child.stderr!.setEncoding("utf8");
    this.child.stderr!.on(
      "data",
      (chunk: string) => void (this.#stderr = (this.#stderr + chunk).slice(-8_192)),
    );
    this.child.once("exit", (code, signal) => void (this.#exited = `code ${code}, signal ${signal}`));
    this.#sampler = setInterval(() => this.#sample(), 100);
  }

  #sample(): void {
    const m = procMemory(this.pid);
    if (m) this.#peakRss = Math.max(this.#peakRss, m.rss);
  }

  /** Starts a section: the kernel's high-water mark and the sampled peak start from now. */
  resetPeak(): void {
    try {
      writeFileSync(`/proc/${this.pid}/clear_refs`, "5");
    } catch {
      // not Linux: VmHWM then covers the process's whole life
    }
    this.#peakRss = 0;
    this.#sample();
  }

  peak(): { hwmMb: number | undefined; sampledMb: number } {
    this.#sample();
    const hwm = procMemory(this.pid)?.hwm;
    return { hwmMb: hwm === undefined ? undefined : mb(hwm), sampledMb: mb(this.#peakRss) };
  }

  cpuMs(): number | undefined {
    const cpu = processCpuMs(this.pid);
    return cpu === undefined ? undefined : cpu.user + cpu.sys;
  }

  problem(): string | undefined {
    return this.#exited === undefined ? undefined : `natsbind run exited (${this.#exited}):\n${this.#stderr}`;
  }

  async stop(): Promise<void> {
    clearInterval(this.#sampler);
    if (this.#exited !== undefined) return;
    const gone = new Promise<void>((r) => this.child.once("exit", () => r()));
    this.child.kill("SIGTERM");
    await Promise.race([gone, sleep(10_000)]);
    if (this.#exited === undefined) this.child.kill("SIGKILL");
  }
}

interface World {
  op: TestOperator;
  server: NatsServer;
  sim: GitLabSimulator;
  dir: string;
  configFile: string;
  config: Config;
  wire: Wire;
  statuses: StatusFiles;
  firstProjectId: number;
}

interface Started {
  op?: TestOperator;
  server?: NatsServer;
  sim?: GitLabSimulator;
  dir?: string;
  wire?: Wire;
  natsbind?: Natsbind;
}

async function startWorld(s: Started): Promise<World> {
  const op = (s.op = await createTestOperator());
  const server = (s.server = await startNatsServer({ ...op.serverOptions, name: "bench-rotation" }));
  const sim = (s.sim = await GitLabSimulator.start());
  const { projects } = sim.populate({ rootPath: "bench", projects: PROJECTS, depth: 3, fanout: 5 });
  const dir = (s.dir = await tempDir("bench-rotation"));
  await mkdir(join(dir, "bindings"));
  await writeFile(join(dir, "token"), sim.token);
  await writeFile(join(dir, "bindings", `${BINDING}.yaml`), bindingYaml(50));
  const raw = {
    nats: {
      servers: [server.url],
      systemCreds: join(op.dir, INIT_LAYOUT.systemCreds),
      operatorSigningKey: join(op.dir, INIT_LAYOUT.operatorSigningKey),
      operatorJwt: join(op.dir, INIT_LAYOUT.operatorJwt),
    },
    // No resync and no scheduled rotation during the bench: every reconcile here is asked for.
    gitlab: { url: sim.url, tokenFile: "token", resyncInterval: "1h" },
    http: { listen: "127.0.0.1:0" },
    rotation: { every: "0" },
  };
  const configFile = join(dir, "natsbind.yaml");
  await writeFile(configFile, stringify(raw));
  const config = parseConfig(raw, "bench config", dir);
  const wire = (s.wire = await Wire.start(server, op));
  return {
    op,
    server,
    sim,
    dir,
    configFile,
    config,
    wire,
    statuses: new StatusFiles(config.state.directory),
    firstProjectId: projects[0]!.id,
  };
}

/** Polls the binding's status file until `done` says so (the status is written after each reconcile). */
async function until(
  w: World,
  natsbind: Natsbind,
  what: string,
  done: (status: BindingStatus) => boolean,
): Promise<number> {
  const t0 = performance.now();
  const deadline = t0 + STEP_TIMEOUT_MS;
  let nextProgress = t0 + 10_000;
  for (;;) {
    const problem = natsbind.problem();
    if (problem) throw new Error(`${what}: ${problem}`);
    if (performance.now() > nextProgress) {
      nextProgress += 10_000;
      log(
        `  ${fmt((performance.now() - t0) / 1000)} s: ${fmt(w.wire.pushes.size)} accounts pushed, ` +
          `${fmt(w.wire.connz)} CONNZ, ${fmt(w.wire.lookups)} lookups`,
      );
    }
    const status = await w.statuses.read(BINDING).catch(() => undefined);
    if (status && done(status)) return performance.now();
    if (performance.now() > deadline)
      throw new Error(
        `timed out waiting for ${what}; last status: ${JSON.stringify(status?.rotation)} ${JSON.stringify(status?.counts)}; ` +
          `natsbind warnings:\n${natsbind.problems.join("\n")}`,
      );
    // The status file is read often only once the phase's pushes are on the wire.
    await sleep(w.wire.pushes.size >= PROJECTS ? 20 : 250);
  }
}

interface PhaseResult {
  ms: number;
  wire: PushCounts & { lookups: number; connz: number };
  cpuMs: number | undefined;
}

async function phase(
  w: World,
  natsbindOf: () => Natsbind | undefined,
  start: () => Promise<number>,
  what: string,
  done: (status: BindingStatus) => boolean,
): Promise<PhaseResult> {
  w.wire.reset();
  const cpu0 = natsbindOf()?.cpuMs() ?? 0;
  const t0 = await start();
  const t1 = await until(w, natsbindOf()!, what, done);
  // The last pushes of the reconcile were acked before the status was written.
  const wire = await w.wire.read();
  const cpu1 = natsbindOf()!.cpuMs();
  return { ms: t1 - t0, wire, cpuMs: cpu0 === undefined || cpu1 === undefined ? undefined : cpu1 - cpu0 };
}

const rotationOf = (s: BindingStatus) => s.rotation?.accounts;

async function main(): Promise<void> {
  const started = performance.now();
  const env = benchEnv({ projects: PROJECTS });
  log(`natsbind rotation bench: ${fmt(PROJECTS)} projects, one binding, one role, one nats-server`);
  log(JSON.stringify(env));
  const s: Started = {};
  let cold: PhaseResult & { peak: ReturnType<Natsbind["peak"]> };
  const baseline: Array<PhaseResult> = [];
  const prepare: Array<PhaseResult & { peak: ReturnType<Natsbind["peak"]> }> = [];
  const retire: Array<PhaseResult & { peak: ReturnType<Natsbind["peak"]>; connzToFirstMs?: number }> = [];
  try {
    const w = await startWorld(s);
    const requests = new RequestFiles(w.config.keys.directory);
    const keys = new DirectoryKeyStore(w.config.keys.directory);
    let natsbind!: Natsbind;

    log(`[cold] spawning natsbind run`);
    const coldPhase = await phase(
      w,
      () => s.natsbind,
      async () => {
        const t0 = performance.now();
        natsbind = s.natsbind = new Natsbind(w.configFile);
        return t0;
      },
      "the cold start",
      (st) => st.counts.accounts === PROJECTS && st.counts.pushed + st.counts.upToDate === PROJECTS,
    );
    cold = { ...coldPhase, peak: natsbind.peak() };
    log(`[cold] ${fmtMs(cold.ms)}, ${fmt(cold.wire.pushes)} pushes`);

    let connections = 50;
    for (let run = 0; run < BASELINE_RUNS; run++) {
      connections += 1;
      const limit = connections;
      const r = await phase(
        w,
        () => natsbind,
        async () => {
          const t0 = performance.now();
          await writeFile(join(w.dir, "bindings", `${BINDING}.yaml`), bindingYaml(limit));
          return t0;
        },
        `the re-push of every account (baseline run ${run + 1})`,
        (st) => st.counts.pushed === PROJECTS && w.wire.pushes.size === PROJECTS,
      );
      baseline.push(r);
      log(`[baseline] run ${run + 1}: ${fmtMs(r.ms)}, ${fmt(r.wire.pushes)} pushes`);
    }

    for (let run = 0; run < ROTATION_RUNS; run++) {
      natsbind.resetPeak();
      let at = 0;
      const a = await phase(
        w,
        () => natsbind,
        async () => {
          const t0 = performance.now();
          at = Date.now();
          await requests.add(BINDING, { trigger: { at, emergency: false, role: ROLE } });
          return t0;
        },
        `prepare + push + activate (run ${run + 1})`,
        (st) => rotationOf(st)?.retiring === PROJECTS && rotationOf(st)?.prepared === 0,
      );
      prepare.push({ ...a, peak: natsbind.peak() });
      log(`[rotate] run ${run + 1}: prepare + push + activate ${fmtMs(a.ms)}, ${fmt(a.wire.pushes)} pushes`);
      const slot = await keys.get({ binding: BINDING, projectId: w.firstProjectId });
      const retiring = slot?.rotation?.[ROLE]?.retiring ?? [];
      if (slot?.rotation?.[ROLE]?.activeSince === undefined || slot.rotation[ROLE].activeSince < at)
        throw new Error("the first project's key was not rotated");
      const notBefore = Math.max(...retiring.map((k) => k.notBefore));

      natsbind.resetPeak();
      const b = await phase(
        w,
        () => natsbind,
        async () => {
          // From the moment the old keys may go: performance time of notBefore.
          return performance.now() + (notBefore - Date.now());
        },
        `retire + push + forget (run ${run + 1})`,
        (st) => rotationOf(st)?.retiring === 0 && rotationOf(st)?.active === PROJECTS && st.counts.pushed > 0,
      );
      const connzToFirstMs =
        w.wire.firstConnzAt === undefined ? undefined : w.wire.firstConnzAt - (performance.now() - b.ms);
      retire.push({
        ...b,
        peak: natsbind.peak(),
        ...(connzToFirstMs !== undefined ? { connzToFirstMs } : {}),
      });
      log(`[rotate] run ${run + 1}: retire + push + forget ${fmtMs(b.ms)}, ${fmt(b.wire.pushes)} pushes`);
      const after = await keys.get({ binding: BINDING, projectId: w.firstProjectId });
      if ((after?.discard ?? []).length > 0 || (after?.rotation?.[ROLE]?.retiring ?? []).length > 0)
        throw new Error("the old key of the first project is still there after the retire phase");
    }
  } finally {
    await s.natsbind?.stop().catch(() => undefined);
    await Promise.allSettled([s.wire?.close(), s.sim?.stop()]);
    await s.server?.stop().catch(() => undefined);
    await s.op?.remove().catch(() => undefined);
    if (s.dir) await removeDir(s.dir).catch(() => undefined);
  }

  // --- report ---
  const baseMs = median(baseline.map((r) => r.ms));
  const prepMs = median(prepare.map((r) => r.ms));
  const retMs = median(retire.map((r) => r.ms));
  const perAccount = (c: PushCounts): string =>
    `${fmt(c.pushes / Math.max(1, c.accounts), 2)} (max ${c.maxPerAccount}, ${fmt(c.notOnce)} not once)`;
  const onceEach = (c: PushCounts): boolean =>
    c.accounts === PROJECTS && c.maxPerAccount === PUSHES_PER_ACCOUNT_TARGET && c.notOnce === 0;
  const peakCell = (p: ReturnType<Natsbind["peak"]>): string =>
    `${p.hwmMb === undefined ? "n/a" : fmt(p.hwmMb)} / ${fmt(p.sampledMb)} MB`;
  const series = (rs: PhaseResult[]): string => rs.map((r) => fmt(r.ms)).join(", ");
  const cpu = (rs: PhaseResult[]): string => {
    const v = rs.map((r) => r.cpuMs).filter((x): x is number => x !== undefined);
    return v.length ? fmtMs(median(v)) : "n/a";
  };
  const worst = (rs: PhaseResult[]): PushCounts =>
    rs.map((r) => r.wire).sort((x, y) => y.maxPerAccount - x.maxPerAccount || y.notOnce - x.notOnce)[0]!;
  const maxPeak = (rs: Array<{ peak: ReturnType<Natsbind["peak"]> }>): ReturnType<Natsbind["peak"]> => ({
    hwmMb: Math.max(...rs.map((r) => r.peak.hwmMb ?? 0)) || undefined,
    sampledMb: Math.max(...rs.map((r) => r.peak.sampledMb)),
  });
  log(`\n== Rotation of role ${ROLE} on ${fmt(PROJECTS)} accounts (natsbind run in its own process) ==`);
  log(
    table(
      [
        "phase",
        "runs",
        "median",
        "runs (ms)",
        "vs baseline",
        "pushes per account",
        "lookups / CONNZ",
        "CPU (median)",
        "peak RSS VmHWM / sampled",
      ],
      [
        [
          "baseline: every account re-pushed (binding change)",
          String(baseline.length),
          fmtMs(baseMs),
          series(baseline),
          "1.00x",
          perAccount(worst(baseline)),
          `${fmt(baseline[0]!.wire.lookups)} / ${fmt(baseline[0]!.wire.connz)}`,
          cpu(baseline),
          "",
        ],
        [
          "prepare + push + activate",
          String(prepare.length),
          fmtMs(prepMs),
          series(prepare),
          `${fmt(prepMs / baseMs, 2)}x`,
          perAccount(worst(prepare)),
          `${fmt(prepare[0]!.wire.lookups)} / ${fmt(prepare[0]!.wire.connz)}`,
          cpu(prepare),
          peakCell(maxPeak(prepare)),
        ],
        [
          "retire + push + forget (from notBefore)",
          String(retire.length),
          fmtMs(retMs),
          series(retire),
          `${fmt(retMs / baseMs, 2)}x`,
          perAccount(worst(retire)),
          `${fmt(retire[0]!.wire.lookups)} / ${fmt(retire[0]!.wire.connz)}`,
          cpu(retire),
          peakCell(maxPeak(retire)),
        ],
        [
          "(info) cold start: spawn -> every account pushed",
          "1",
          fmtMs(cold.ms),
          fmt(cold.ms),
          `${fmt(cold.ms / baseMs, 2)}x`,
          perAccount(cold.wire),
          `${fmt(cold.wire.lookups)} / ${fmt(cold.wire.connz)}`,
          cold.cpuMs === undefined ? "n/a" : fmtMs(cold.cpuMs),
          peakCell(cold.peak),
        ],
      ],
    ),
  );
  log(
    "pushes: $SYS.REQ.CLAIMS.UPDATE messages on the wire per account during the phase (the worst run). " +
      "Peak RSS: VmHWM reset before each phase / VmRSS sampled every 100 ms, natsbind run alone.",
  );
  const prepOnce = prepare.every((r) => onceEach(r.wire));
  const retOnce = retire.every((r) => onceEach(r.wire));
  log(
    `target: one push per account per phase: prepare+activate ${verdict(prepOnce)}, retire ${verdict(retOnce)}`,
  );
  const totalS = (performance.now() - started) / 1000;
  log(`total bench time: ${fmt(totalS, 1)} s`);
  await writeResults("rotation.json", {
    date: new Date().toISOString(),
    env,
    projects: PROJECTS,
    role: ROLE,
    coldStart: cold,
    baseline: { runs: baseline, medianMs: baseMs },
    prepareActivate: {
      runs: prepare,
      medianMs: prepMs,
      vsBaseline: prepMs / baseMs,
      oncePerAccount: prepOnce,
    },
    retire: { runs: retire, medianMs: retMs, vsBaseline: retMs / baseMs, oncePerAccount: retOnce },
    totalSeconds: totalS,
  });
}

await main();
