/**
 * Scale benchmark (`make bench` runs `node bench/scale.ts` after bench/controller.ts): ONE binding
 * selecting PROJECTS (100,000) projects in local mode. natsbind runs as its own process, the real
 * CLI (`node src/cli/main.ts run --config FILE`, with NODE_FLAGS as every launcher passes them),
 * against one real nats-server (full resolver) and the GitLab simulator, which lives in this
 * process (root group + 3 levels of 5 subgroups, projects spread over all 156 groups). Each figure
 * is reported next to a baseline measured in the same run on the same machine.
 *
 *  0. Baselines, on a second, fresh nats-server of the same configuration (stopped afterwards, so
 *     natsbind's server starts as empty as the baseline's did):
 *     a. push: PROJECTS pre-signed account JWTs of the controller's shape (desiredAccount() of the
 *        bench binding for the listed projects, a fresh account key each) pushed with
 *        NatsResolver.push at the reconciler's push concurrency (16), one connection: the part of
 *        a cold start that cannot go away.
 *     b. lookup: NatsResolver.lookup of each of those accounts, 32 in flight (the reconciler's
 *        lookup concurrency): what a drift check of PROJECTS accounts asks the server.
 *     c. push + lookup of one more pre-signed JWT until the server returns it, sequentially, with
 *        the PROJECTS accounts held: the floor under section 4.
 *  1. Cold start: spawn -> every project's account JWT seen in $SYS.REQ.CLAIMS.UPDATE on the wire
 *     (a system-account subscriber decodes each), and -> the binding's status file written (the
 *     reconcile returned). The child's peak RSS (VmHWM from /proc/<pid>/status before SIGTERM),
 *     CPU (user, sys) and read/write system calls (/proc/<pid>/io).
 *  2. Restart (warm): SIGTERM, then a new child on the same key/state directories: spawn -> status
 *     written, with pushes on the wire (must be 0) and lookups (one per account: its caches are
 *     empty). This child stays up for sections 3 and 4; its VmHWM is read at the end.
 *  3. Webhook project_create -> account live while the PROJECTS accounts are held: sequentially,
 *     a project is created in the simulator, its system hook POSTed to the child, and the time
 *     taken until NatsResolver.lookup returns the new account's JWT (p50/p99). Budgeted so it ends
 *     before the drift check of section 4.
 *  4. Periodic drift check (warm): the child's resyncInterval (RESYNC_MS) after the restart's
 *     reconcile, its requeue looks every account up again (the full GitLab listing runs beside it,
 *     on its own timer). Timed from when it is due (or, if later, the end of the reconcile running
 *     then) to the status file written, and from its first lookup on the wire; pushes must be 0.
 *
 * One run of each section (not a median): a run takes ~15 minutes on the 2-core reference box; the
 * ratio to the baselines measured in the same run is the figure to compare across machines.
 *
 * Knobs (environment, for exploring only; the defaults are what `make bench` reports):
 *   BENCH_QUICK=1          2,000 projects, 20 creations, a 30 s resync (a smoke test of the bench)
 *   SCALE_PROJECTS=n       another project count
 *   BENCH_CHILD_NODE_ARGS  extra node flags for the natsbind run children
 *   SCALE_STEP_TIMEOUT_S   how long one step may take before the bench gives up (default 900)
 */
import { spawn, type ChildProcess } from "node:child_process";
import { stat } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { stringify } from "yaml";
import type { NatsBinding } from "../src/api/v1alpha1/types.ts";
import { INIT_LAYOUT } from "../src/cli/init.ts";
import { NODE_FLAGS } from "../src/cli/node-flags.ts";
import { desiredAccount } from "../src/controllers/binding/plan.ts";
import { GitbeakerGitLab } from "../src/gitlab/client.ts";
import { ProjectInventory } from "../src/gitlab/inventory.ts";
import type { GitLabProject } from "../src/gitlab/port.ts";
import { DirectoryKeyStore } from "../src/keystore/directory.ts";
import { accountClaims, decodeJwt, signJwt } from "../src/nats/claims.ts";
import { NKeyPair } from "../src/nats/keys.ts";
import type { NatsResolver } from "../src/nats/resolver.ts";
import { mapLimit } from "../src/runtime/concurrency.ts";
import { BindingFiles } from "../src/store/binding-files.ts";
import { statusFileName } from "../src/store/status-files.ts";
import { GitLabSimulator, type SimGroup } from "../test/support/gitlab-sim.ts";
import { startNatsServer, type NatsServer } from "../test/support/nats-server.ts";
import { createTestOperator, operatorResolver, type TestOperator } from "../test/support/operator.ts";
import { freePort, removeDir, tempDir } from "../test/support/process.ts";
import {
  QUICK,
  WireCounter,
  benchEnv,
  fmt,
  fmtMs,
  ioSyscalls,
  log,
  mb,
  percentile,
  procMemory,
  processCpuMs,
  round,
  sleep,
  table,
  timed,
  verdict,
  writeResults,
} from "./common.ts";

const PROJECTS = Number(process.env.SCALE_PROJECTS ?? (QUICK ? 2_000 : 100_000));
const CHILD_NODE_ARGS = (process.env.BENCH_CHILD_NODE_ARGS ?? "").split(" ").filter(Boolean);
const BINDING = "scale";
const SECRET = "natsbind-scale-bench-webhook-secret";
/** The child's gitlab.resyncInterval: also when section 4's drift check comes. */
const RESYNC_MS = QUICK ? 30_000 : 180_000;
/** Section 3 ends this long before the drift check is due, whatever it has done by then. */
const CREATIONS_MARGIN_MS = QUICK ? 10_000 : 40_000;
const CREATIONS = QUICK ? 20 : 100;
const CREATION_WARMUP = 3;
const FLOOR_RUNS = QUICK ? 20 : 50;
/** The reconciler's pushes and lookups in flight (main.ts keeps its defaults). */
const PUSH_CONCURRENCY = 16;
const LOOKUP_CONCURRENCY = 32;
const SAMPLE_LOOKUPS = 200;
const STEP_TIMEOUT_MS = Number(process.env.SCALE_STEP_TIMEOUT_S ?? (QUICK ? 120 : 900)) * 1000;

const COLD_TARGET_MS = 120_000;
const RSS_TARGET_MB = 1024;
const WARM_TARGET_MS = 30_000;
const WEBHOOK_P99_TARGET_MS = 500;

function bindingYaml(): string {
  return `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: ${BINDING}}
spec:
  gitlab: {group: scale, includeSubgroups: true}
  accountPer: project
  roles:
    - name: ci
      publish: {allow: ["build.status.{{project.slug}}.>"]}
      subscribe: {allow: ["_INBOX.>", "deploy.events.{{project.slug}}.{{tag(env)}}"]}
  limits: {connections: 50, payload: 1Mi, jetstream: {memory: 64Mi, disk: 1Gi, streams: 10}}
`;
}

/** The gitlab-project-id tag of an account JWT, or NaN. */
function projectIdOf(jwt: string): number {
  try {
    const tags = (decodeJwt(jwt).nats.tags as string[] | undefined) ?? [];
    const tag = tags.find((t) => t.startsWith("gitlab-project-id:"));
    return tag === undefined ? NaN : Number(tag.slice("gitlab-project-id:".length));
  } catch {
    return NaN;
  }
}

// --- the world -----------------------------------------------------------------------------------

interface World {
  op: TestOperator;
  sim: GitLabSimulator;
  groups: SimGroup[];
  projectIds: Set<number>;
  dir: string;
  configFile: string;
  httpPort: number;
  binding: NatsBinding;
}

interface Started {
  op?: TestOperator;
  sim?: GitLabSimulator;
  dir?: string;
  servers: NatsServer[];
  resolvers: NatsResolver[];
  wires: WireCounter[];
  child?: ChildProcess;
}

async function startWorld(s: Started): Promise<World> {
  const op = (s.op = await createTestOperator());
  const sim = (s.sim = await GitLabSimulator.start());
  const t0 = performance.now();
  const { groups, projects } = sim.populate({ rootPath: "scale", projects: PROJECTS, depth: 3, fanout: 5 });
  log(
    `[world] simulator holds ${fmt(PROJECTS)} projects in ${groups.length} groups (${fmtMs(performance.now() - t0)})`,
  );
  const dir = (s.dir = await tempDir("bench-scale"));
  await mkdir(join(dir, "bindings"));
  await writeFile(join(dir, "token"), sim.token);
  await writeFile(join(dir, "secret"), SECRET);
  await writeFile(join(dir, "bindings", `${BINDING}.yaml`), bindingYaml());
  const parsed = (await new BindingFiles(join(dir, "bindings")).scan()).bindings.get(BINDING)?.binding;
  if (!parsed) throw new Error("the bench binding does not parse");
  return {
    op,
    sim,
    groups,
    projectIds: new Set(projects.map((p) => p.id)),
    dir,
    configFile: join(dir, "natsbind.yaml"),
    httpPort: await freePort(),
    binding: parsed,
  };
}

async function startServer(s: Started, op: TestOperator, name: string): Promise<NatsServer> {
  const server = await startNatsServer({ ...op.serverOptions, name });
  s.servers.push(server);
  return server;
}

async function writeConfig(w: World, server: NatsServer): Promise<void> {
  await writeFile(
    w.configFile,
    stringify({
      nats: {
        servers: [server.url],
        systemCreds: join(w.op.dir, INIT_LAYOUT.systemCreds),
        operatorSigningKey: join(w.op.dir, INIT_LAYOUT.operatorSigningKey),
        operatorJwt: join(w.op.dir, INIT_LAYOUT.operatorJwt),
      },
      gitlab: {
        url: w.sim.url,
        tokenFile: "token",
        webhookSecretFile: "secret",
        resyncInterval: `${RESYNC_MS / 1000}s`,
      },
      http: { listen: `127.0.0.1:${w.httpPort}` },
    }),
  );
}

// --- 0. baselines --------------------------------------------------------------------------------

interface Baselines {
  listingMs: number;
  push: {
    n: number;
    concurrency: number;
    ms: number;
    perSec: number;
    jwtBytes: number;
    serverCpuMs?: number;
  };
  lookup: { n: number; concurrency: number; ms: number; perSec: number };
  floor: { runs: number; p50Ms: number; p99Ms: number; maxMs: number };
}

/** Pre-signed JWTs like the controller's: fresh account keys, one shared role key (same size). */
function signLike(w: World, projects: readonly GitLabProject[], n: number): string[] {
  const iat = Math.floor(Date.now() / 1000);
  const role = NKeyPair.generate("account").publicKey;
  const out = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    const project = projects[i % projects.length]!;
    const slot = {
      ref: { binding: BINDING, projectId: project.id },
      account: NKeyPair.generate("account").publicKey,
      roles: { ci: role },
    };
    const desired = desiredAccount({ bindingKey: BINDING, binding: w.binding }, project, slot);
    out[i] = signJwt(accountClaims(desired, w.op.signingKey.publicKey), w.op.signingKey, iat);
  }
  return out;
}

async function baselines(w: World, s: Started): Promise<Baselines> {
  log(`[baseline] GitLab inventory listing of ${fmt(PROJECTS)} projects (gitbeaker, as natsbind lists)`);
  const inventory = new ProjectInventory(new GitbeakerGitLab({ url: w.sim.url, token: w.sim.token }), {
    groups: ["scale"],
    projects: [],
  });
  const listingMs = await timed(() => inventory.resync());
  const projects = [...inventory.snapshot().values()];
  if (projects.length !== PROJECTS) throw new Error(`listing found ${projects.length} projects`);

  const server = await startServer(s, w.op, "scale-baseline");
  const resolver = await operatorResolver(w.op, server.url);
  s.resolvers.push(resolver);
  log(`[baseline] signing ${fmt(PROJECTS)} account JWTs like the controller's (untimed)`);
  let jwts = signLike(w, projects, PROJECTS + FLOOR_RUNS + 200);
  const accounts = jwts.map((jwt) => decodeJwt(jwt).sub);
  // Warm-up (connection, server count): accounts that are not part of the timed run.
  await mapLimit(
    jwts.slice(PROJECTS + FLOOR_RUNS),
    PUSH_CONCURRENCY,
    async (jwt) => void (await resolver.push(jwt)),
  );

  log(`[baseline] push: ${fmt(PROJECTS)} fresh accounts, ${PUSH_CONCURRENCY} in flight`);
  const pid = server.process().pid ?? 0;
  const cpu0 = processCpuMs(pid);
  const pushMs = await timed(() =>
    mapLimit(jwts.slice(0, PROJECTS), PUSH_CONCURRENCY, async (jwt) => void (await resolver.push(jwt))),
  );
  const cpu1 = processCpuMs(pid);
  const jwtBytes = jwts[0]!.length;
  const floorJwts = jwts.slice(PROJECTS, PROJECTS + FLOOR_RUNS);
  jwts = [];

  log(`[baseline] lookup: ${fmt(PROJECTS)} accounts, ${LOOKUP_CONCURRENCY} in flight`);
  let found = 0;
  const lookupMs = await timed(() =>
    mapLimit(accounts.slice(0, PROJECTS), LOOKUP_CONCURRENCY, async (account) => {
      if ((await resolver.lookup(account)) !== undefined) found += 1;
    }),
  );
  if (found !== PROJECTS) throw new Error(`baseline lookups found ${found} of ${PROJECTS} accounts`);

  log(`[baseline] push + lookup until live, ${FLOOR_RUNS} sequential accounts`);
  const floorMs: number[] = [];
  for (const jwt of floorJwts) {
    const account = decodeJwt(jwt).sub;
    const t0 = performance.now();
    await resolver.push(jwt);
    while ((await resolver.lookup(account)) === undefined) await sleep(1);
    floorMs.push(performance.now() - t0);
  }

  await resolver.close();
  s.resolvers.splice(s.resolvers.indexOf(resolver), 1);
  await server.stop();
  s.servers.splice(s.servers.indexOf(server), 1);
  return {
    listingMs: round(listingMs),
    push: {
      n: PROJECTS,
      concurrency: PUSH_CONCURRENCY,
      ms: round(pushMs),
      perSec: round((PROJECTS * 1000) / pushMs),
      jwtBytes,
      ...(cpu0 && cpu1 ? { serverCpuMs: cpu1.user + cpu1.sys - cpu0.user - cpu0.sys } : {}),
    },
    lookup: {
      n: PROJECTS,
      concurrency: LOOKUP_CONCURRENCY,
      ms: round(lookupMs),
      perSec: round((PROJECTS * 1000) / lookupMs),
    },
    floor: {
      runs: floorMs.length,
      p50Ms: round(percentile(floorMs, 50)),
      p99Ms: round(percentile(floorMs, 99)),
      maxMs: round(Math.max(...floorMs)),
    },
  };
}

// --- the natsbind run child -----------------------------------------------------------------------

interface Child {
  proc: ChildProcess;
  pid: number;
  startedAt: number;
  stderr(): string;
  exited(): string | undefined;
  /** Highest VmRSS sampled every 100 ms, bytes. */
  sampledPeak(): number;
  stop(): Promise<{
    hwmMb: number | undefined;
    sampledPeakMb: number;
    cpu?: { user: number; sys: number };
    io?: { reads: number; writes: number };
  }>;
}

function spawnNatsbind(w: World, s: Started): Child {
  const startedAt = performance.now();
  const proc = (s.child = spawn(
    process.execPath,
    [
      ...NODE_FLAGS,
      ...CHILD_NODE_ARGS,
      join(import.meta.dirname, "..", "src", "cli", "main.ts"),
      "run",
      "--config",
      w.configFile,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  ));
  let stderr = "";
  let exited: string | undefined;
  let peak = 0;
  proc.stderr!.setEncoding("utf8");
  proc.stderr!.on("data", (chunk: string) => void (stderr = (stderr + chunk).slice(-8_192)));
  proc.once("exit", (code, signal) => void (exited = `code ${code}, signal ${signal}`));
  const pid = proc.pid!;
  const sample = (): void => void (peak = Math.max(peak, procMemory(pid)?.rss ?? 0));
  const sampler = setInterval(sample, 100);
  return {
    proc,
    pid,
    startedAt,
    stderr: () => stderr,
    exited: () => exited,
    sampledPeak: () => peak,
    async stop() {
      sample();
      clearInterval(sampler);
      const hwm = procMemory(pid)?.hwm;
      const cpu = processCpuMs(pid);
      const io = ioSyscalls(pid);
      proc.kill("SIGTERM");
      const gone = new Promise<void>((r) => (exited !== undefined ? r() : proc.once("exit", () => r())));
      await Promise.race([gone, sleep(30_000)]);
      if (exited === undefined) proc.kill("SIGKILL");
      s.child = undefined;
      return {
        hwmMb: hwm === undefined ? undefined : mb(hwm),
        sampledPeakMb: mb(peak),
        ...(cpu ? { cpu } : {}),
        ...(io ? { io } : {}),
      };
    },
  };
}

/** Resolves when the binding's status file is (re)written after `after` (its inode changes). */
interface StatusWatcher {
  written(after: number, what: string, child: Child): Promise<number>;
  /** When the status file was last (re)written before `t`, or undefined. */
  lastWriteBefore(t: number): number | undefined;
}

function statusWatcher(w: World): StatusWatcher {
  const path = join(w.dir, "state", statusFileName(BINDING));
  let ino = -1;
  let at = -1;
  const writes: number[] = [];
  const timer = setInterval(() => {
    stat(path, (err, st) => {
      if (err || st.ino === ino) return;
      ino = st.ino;
      at = performance.now();
      writes.push(at);
    });
  }, 25);
  timer.unref();
  return {
    lastWriteBefore: (t) => writes.filter((x) => x < t).at(-1),
    async written(after, what, child) {
      const deadline = performance.now() + STEP_TIMEOUT_MS;
      while (at <= after) {
        if (child.exited() !== undefined)
          throw new Error(`natsbind run exited (${child.exited()}) waiting for ${what}:\n${child.stderr()}`);
        if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}\n${child.stderr()}`);
        await sleep(25);
      }
      return at;
    },
  };
}

async function readStatusCounts(w: World): Promise<Record<string, number>> {
  const text = await readFile(join(w.dir, "state", statusFileName(BINDING)), "utf8");
  return (JSON.parse(text) as { status: { counts: Record<string, number> } }).status.counts;
}

// --- 1. cold start -------------------------------------------------------------------------------

interface ColdResult {
  allPushedMs: number;
  reconciledMs: number;
  firstPushMs: number | undefined;
  wireUpdates: number;
  wireLookups: number;
  distinctProjects: number;
  hwmMb: number | undefined;
  sampledPeakMb: number;
  childCpu?: { user: number; sys: number };
  childIo?: { reads: number; writes: number };
  counts: Record<string, number>;
  sample: { checked: number; ok: number };
  /** Accounts $SYS.REQ.CLAIMS.LIST returned afterwards (or why it failed). */
  claimsList: number | string;
}

async function coldStart(
  w: World,
  s: Started,
  wire: WireCounter,
  status: StatusWatcher,
  resolver: NatsResolver,
): Promise<ColdResult> {
  const seen = new Set<number>();
  wire.reset();
  wire.onUpdate = (jwt) => {
    const id = projectIdOf(jwt);
    if (w.projectIds.has(id)) seen.add(id);
  };
  log(`[cold] spawning natsbind run, empty key/state directories, ${fmt(PROJECTS)} projects`);
  const child = spawnNatsbind(w, s);
  const progress = setInterval(
    () =>
      log(
        `[cold]   ${fmt((performance.now() - child.startedAt) / 1000)} s: ${fmt(seen.size)} accounts on the wire, child rss ${fmt(mb(child.sampledPeak()))} MB peak`,
      ),
    10_000,
  );
  let allPushedAt: number;
  let reconciledAt: number;
  try {
    const deadline = child.startedAt + STEP_TIMEOUT_MS;
    while (seen.size < PROJECTS) {
      if (child.exited() !== undefined)
        throw new Error(`natsbind run exited (${child.exited()}):\n${child.stderr()}`);
      if (performance.now() > deadline)
        throw new Error(`timed out: ${seen.size} of ${PROJECTS} accounts pushed\n${child.stderr()}`);
      await sleep(20);
    }
    allPushedAt = wire.lastUpdateAt ?? performance.now();
    reconciledAt = await status.written(child.startedAt, "the cold start's status", child);
  } finally {
    clearInterval(progress);
    wire.onUpdate = undefined;
  }
  const counts = await readStatusCounts(w);
  const { updates, lookups } = await wire.read();
  const firstPushAt = wire.firstUpdateAt;
  const stopped = await child.stop();
  const sample = await checkSample(w, resolver);
  // `natsbind accounts list` and operator rotation read $SYS.REQ.CLAIMS.LIST: one reply of every id.
  let claimsList: number | string;
  try {
    claimsList = (await resolver.list()).length;
  } catch (err) {
    claimsList = (err as Error).message;
  }
  return {
    claimsList,
    allPushedMs: round(allPushedAt - child.startedAt),
    reconciledMs: round(reconciledAt - child.startedAt),
    firstPushMs: firstPushAt === undefined ? undefined : round(firstPushAt - child.startedAt),
    wireUpdates: updates,
    wireLookups: lookups,
    distinctProjects: seen.size,
    hwmMb: stopped.hwmMb,
    sampledPeakMb: stopped.sampledPeakMb,
    ...(stopped.cpu ? { childCpu: stopped.cpu } : {}),
    ...(stopped.io ? { childIo: stopped.io } : {}),
    counts,
    sample,
  };
}

/** Untimed: random accounts of the key store are on the server and name their project. */
async function checkSample(w: World, resolver: NatsResolver): Promise<{ checked: number; ok: number }> {
  const keys = new DirectoryKeyStore(join(w.dir, "keys"));
  const ids = [...w.projectIds];
  let ok = 0;
  for (let i = 0; i < SAMPLE_LOOKUPS; i++) {
    const projectId = ids[Math.floor(Math.random() * ids.length)]!;
    const slot = await keys.get({ binding: BINDING, projectId });
    const jwt = slot && (await resolver.lookup(slot.account));
    if (jwt && projectIdOf(jwt) === projectId) ok += 1;
  }
  if (ok !== SAMPLE_LOOKUPS)
    throw new Error(`only ${ok} of ${SAMPLE_LOOKUPS} sampled accounts are on the server`);
  return { checked: SAMPLE_LOOKUPS, ok };
}

// --- 2-4. the warm child: restart, webhooks, periodic drift check -----------------------------------

interface WarmResult {
  restart: { ms: number; pushes: number; lookups: number; counts: Record<string, number> };
  webhook: {
    requested: number;
    done: number;
    liveMs: number[];
    p50Ms?: number;
    p99Ms?: number;
    stoppedEarly: boolean;
    pushes: number;
  };
  periodic: {
    ms: number;
    fromFirstLookupMs: number;
    pushes: number;
    lookups: number;
    fromLastReconcileMs: number;
  };
  hwmMb: number | undefined;
  sampledPeakMb: number;
  childCpu?: { user: number; sys: number };
}

async function warmChild(
  w: World,
  s: Started,
  wire: WireCounter,
  status: StatusWatcher,
  resolver: NatsResolver,
): Promise<WarmResult> {
  log(`[restart] natsbind run again on the same directories`);
  wire.reset();
  const child = spawnNatsbind(w, s);
  const restartAt = await status.written(child.startedAt, "the restart's status", child);
  const restartWire = await wire.read();
  const restart = {
    ms: round(restartAt - child.startedAt),
    pushes: restartWire.updates,
    lookups: restartWire.lookups,
    counts: await readStatusCounts(w),
  };
  log(`[restart]   ${fmtMs(restart.ms)}, ${restart.pushes} pushes, ${fmt(restart.lookups)} lookups`);

  // 3. Webhooks, before the drift check comes (RESYNC_MS after the restart's reconcile).
  const pushedAt = new Map<number, { account: string; at: number }>();
  const hooksStart = performance.now();
  wire.reset();
  wire.onUpdate = (jwt) => {
    const id = projectIdOf(jwt);
    if (!Number.isNaN(id) && !w.projectIds.has(id))
      pushedAt.set(id, { account: decodeJwt(jwt).sub, at: performance.now() });
  };
  w.sim.addSystemHook(`http://127.0.0.1:${w.httpPort}/webhooks/gitlab`, SECRET);
  const subgroups = w.groups.slice(1);
  const liveMs: number[] = [];
  let stoppedEarly = false;
  const budgetEnd = restartAt + RESYNC_MS - CREATIONS_MARGIN_MS;
  const createOne = async (i: number): Promise<number> => {
    const group = subgroups[i % subgroups.length]!;
    const t0 = performance.now();
    const project = w.sim.createProject({ name: `Hook ${i}`, path: `hook-${i}`, groupId: group.id });
    const deliveries = await w.sim.deliverPending();
    const bad = deliveries.find((d) => d.status < 200 || d.status >= 300);
    if (deliveries.length === 0 || bad)
      throw new Error(
        `webhook delivery failed: ${bad ? `${bad.status} ${bad.error ?? ""}` : "nothing sent"}`,
      );
    while (!pushedAt.has(project.id)) {
      if (performance.now() - t0 > 60_000)
        throw new Error(`project ${project.id} was never pushed\n${child.stderr()}`);
      await sleep(1);
    }
    const { account } = pushedAt.get(project.id)!;
    while ((await resolver.lookup(account)) === undefined) await sleep(1);
    return performance.now() - t0;
  };
  log(
    `[webhook] ${CREATIONS} sequential creations (until ${fmt((budgetEnd - performance.now()) / 1000)} s from now)`,
  );
  for (let i = 0; i < CREATION_WARMUP; i++) await createOne(i);
  for (let i = 0; i < CREATIONS; i++) {
    if (performance.now() > budgetEnd) {
      stoppedEarly = true;
      break;
    }
    liveMs.push(await createOne(CREATION_WARMUP + i));
    if ((i + 1) % 25 === 0) log(`[webhook]   ${i + 1} done, last ${fmtMs(liveMs[liveMs.length - 1]!)}`);
  }
  wire.onUpdate = undefined;
  const hookWire = await wire.read();
  const webhook = {
    requested: CREATIONS,
    done: liveMs.length,
    liveMs: liveMs.map((v) => round(v)),
    ...(liveMs.length ? { p50Ms: round(percentile(liveMs, 50)), p99Ms: round(percentile(liveMs, 99)) } : {}),
    stoppedEarly,
    pushes: hookWire.updates,
  };
  log(`[webhook]   ${liveMs.length} creations in ${fmtMs(performance.now() - hooksStart)}`);

  // 4. The drift check: its first lookup on the wire starts it; the status file ends it.
  log(`[periodic] waiting for the drift check (${fmt(RESYNC_MS / 1000)} s after the restart's reconcile)`);
  const lastReconcile = await status.written(restartAt - 1, "the last webhook reconcile", child);
  wire.reset();
  const deadline = restartAt + RESYNC_MS + STEP_TIMEOUT_MS;
  while (wire.firstLookupAt === undefined) {
    if (child.exited() !== undefined)
      throw new Error(`natsbind run exited (${child.exited()}):\n${child.stderr()}`);
    if (performance.now() > deadline) throw new Error("the drift check never started");
    await sleep(20);
  }
  const firstLookup = wire.firstLookupAt;
  const periodicEnd = await status.written(firstLookup, "the drift check's status", child);
  const periodicWire = await wire.read();
  // Its reconcile starts when its requeue is due (RESYNC_MS after the restart's reconcile), or
  // when the reconcile running then ends; its first lookup comes after its listing of slots and plan.
  const due = Math.max(restartAt + RESYNC_MS, status.lastWriteBefore(firstLookup) ?? 0);
  const periodic = {
    ms: round(periodicEnd - due),
    fromFirstLookupMs: round(periodicEnd - firstLookup),
    pushes: periodicWire.updates,
    lookups: periodicWire.lookups,
    fromLastReconcileMs: round(firstLookup - lastReconcile),
  };
  log(`[periodic]   ${fmtMs(periodic.ms)}, ${periodic.pushes} pushes, ${fmt(periodic.lookups)} lookups`);
  const stopped = await child.stop();
  return {
    restart,
    webhook,
    periodic,
    hwmMb: stopped.hwmMb,
    sampledPeakMb: stopped.sampledPeakMb,
    ...(stopped.cpu ? { childCpu: stopped.cpu } : {}),
  };
}

// --- main ------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const started = performance.now();
  const env = benchEnv({ tmpdir: tmpdir(), projects: PROJECTS });
  log(
    `natsbind scale bench: ${fmt(PROJECTS)} projects in one binding, local mode; node ${env.node}, ${env.natsServer}, ${env.availableParallelism} cores (${env.cpuModel}), temp dirs in ${env.tmpdir}\n`,
  );
  const s: Started = { servers: [], resolvers: [], wires: [] };
  let base: Baselines;
  let cold: ColdResult;
  let warm: WarmResult;
  try {
    const w = await startWorld(s);
    base = await baselines(w, s);
    const server = await startServer(s, w.op, "scale");
    await writeConfig(w, server);
    const resolver = await operatorResolver(w.op, server.url);
    s.resolvers.push(resolver);
    const wire = await WireCounter.start(server.url, w.op.systemCreds);
    s.wires.push(wire);
    const status = statusWatcher(w);
    cold = await coldStart(w, s, wire, status, resolver);
    warm = await warmChild(w, s, wire, status, resolver);
  } finally {
    if (s.child && s.child.exitCode === null) s.child.kill("SIGKILL");
    await Promise.allSettled([
      ...s.resolvers.map((r) => r.close()),
      ...s.wires.map((x) => x.close()),
      s.sim?.stop(),
    ]);
    for (const server of s.servers) await server.stop().catch(() => undefined);
    await s.op?.remove().catch(() => undefined);
    if (s.dir) await removeDir(s.dir).catch(() => undefined);
  }

  const ratio = (v: number, b: number): string => `${fmt(v / b, 2)}x`;
  const rssMb = Math.max(cold.hwmMb ?? 0, cold.sampledPeakMb);
  const warmRssMb = Math.max(warm.hwmMb ?? 0, warm.sampledPeakMb);
  const coldPass = cold.allPushedMs < COLD_TARGET_MS;
  const rssPass = rssMb < RSS_TARGET_MB && warmRssMb < RSS_TARGET_MB;
  const restartPass = warm.restart.pushes === 0 && warm.restart.ms < WARM_TARGET_MS;
  const periodicPass = warm.periodic.pushes === 0 && warm.periodic.ms < WARM_TARGET_MS;
  const hooksPass =
    warm.webhook.done === warm.webhook.requested && (warm.webhook.p99Ms ?? Infinity) < WEBHOOK_P99_TARGET_MS;
  const cpuCell = (c?: { user: number; sys: number }): string =>
    c ? `${fmtMs(c.user + c.sys)} (sys ${fmtMs(c.sys)})` : "n/a";
  log(`\n== natsbind run, ${fmt(PROJECTS)} projects in one binding (local mode), one run ==`);
  log(
    table(
      ["measure", "value", "baseline (same run)", "ratio", "target", ""],
      [
        [
          "1. cold start: spawn -> every account on the wire",
          fmtMs(cold.allPushedMs),
          `${fmtMs(base.push.ms)} push`,
          ratio(cold.allPushedMs, base.push.ms),
          `< ${fmt(COLD_TARGET_MS / 1000)} s`,
          verdict(coldPass),
        ],
        ["   spawn -> status written (reconcile returned)", fmtMs(cold.reconciledMs), "", "", "", ""],
        [
          "   spawn -> first push",
          cold.firstPushMs === undefined ? "n/a" : fmtMs(cold.firstPushMs),
          "",
          "",
          "",
          "",
        ],
        [
          "   child peak RSS (VmHWM / sampled)",
          `${cold.hwmMb === undefined ? "n/a" : fmt(cold.hwmMb)} / ${fmt(cold.sampledPeakMb)} MB`,
          "",
          "",
          `< ${fmt(RSS_TARGET_MB)} MB`,
          verdict(rssMb < RSS_TARGET_MB),
        ],
        ["   child CPU (sys)", cpuCell(cold.childCpu), "", "", "", ""],
        [
          "   child read / write system calls",
          cold.childIo ? `${fmt(cold.childIo.reads)} / ${fmt(cold.childIo.writes)}` : "n/a",
          "",
          "",
          "",
          "",
        ],
        [
          "   pushes on the wire / distinct projects / lookups",
          `${fmt(cold.wireUpdates)} / ${fmt(cold.distinctProjects)} / ${fmt(cold.wireLookups)}`,
          "",
          "",
          "",
          "",
        ],
        [
          "   $SYS.REQ.CLAIMS.LIST afterwards (accounts)",
          typeof cold.claimsList === "number" ? fmt(cold.claimsList) : cold.claimsList,
          "",
          "",
          "",
          "",
        ],
        [
          "2. restart: spawn -> status written",
          fmtMs(warm.restart.ms),
          `${fmtMs(base.lookup.ms)} lookups`,
          ratio(warm.restart.ms, base.lookup.ms),
          `< ${fmt(WARM_TARGET_MS / 1000)} s, 0 pushes`,
          verdict(restartPass),
        ],
        [
          "   pushes / lookups on the wire",
          `${fmt(warm.restart.pushes)} / ${fmt(warm.restart.lookups)}`,
          "",
          "",
          "",
          "",
        ],
        [
          "3. webhook create -> live, p50",
          warm.webhook.p50Ms === undefined ? "n/a" : fmtMs(warm.webhook.p50Ms),
          `${fmtMs(base.floor.p50Ms)} push+lookup`,
          warm.webhook.p50Ms === undefined ? "" : ratio(warm.webhook.p50Ms, base.floor.p50Ms),
          "",
          "",
        ],
        [
          `   p99 (${warm.webhook.done} of ${warm.webhook.requested})`,
          warm.webhook.p99Ms === undefined ? "n/a" : fmtMs(warm.webhook.p99Ms),
          `${fmtMs(base.floor.p99Ms)} push+lookup`,
          warm.webhook.p99Ms === undefined ? "" : ratio(warm.webhook.p99Ms, base.floor.p99Ms),
          `< ${WEBHOOK_P99_TARGET_MS} ms`,
          verdict(hooksPass),
        ],
        [
          "4. periodic drift check: due -> status written",
          fmtMs(warm.periodic.ms),
          `${fmtMs(base.lookup.ms)} lookups`,
          ratio(warm.periodic.ms, base.lookup.ms),
          `< ${fmt(WARM_TARGET_MS / 1000)} s, 0 pushes`,
          verdict(periodicPass),
        ],
        ["   its first lookup -> status written", fmtMs(warm.periodic.fromFirstLookupMs), "", "", "", ""],
        [
          "   pushes / lookups on the wire",
          `${fmt(warm.periodic.pushes)} / ${fmt(warm.periodic.lookups)}`,
          "",
          "",
          "",
          "",
        ],
        [
          "2-4. child peak RSS (VmHWM / sampled)",
          `${warm.hwmMb === undefined ? "n/a" : fmt(warm.hwmMb)} / ${fmt(warm.sampledPeakMb)} MB`,
          "",
          "",
          `< ${fmt(RSS_TARGET_MB)} MB`,
          verdict(warmRssMb < RSS_TARGET_MB),
        ],
        ["2-4. child CPU (sys)", cpuCell(warm.childCpu), "", "", "", ""],
      ],
    ),
  );
  log(
    `baselines (fresh server, same configuration): ${fmt(PROJECTS)} pre-signed JWTs of ${fmt(base.push.jwtBytes)} bytes pushed, ` +
      `${PUSH_CONCURRENCY} in flight (${fmt(base.push.perSec)}/s); ${fmt(PROJECTS)} lookups, ${LOOKUP_CONCURRENCY} in flight ` +
      `(${fmt(base.lookup.perSec)}/s); push + lookup until live, p50 of ${base.floor.runs}; GitLab listing of ${fmt(PROJECTS)} projects alone: ${fmtMs(base.listingMs)}.`,
  );
  if (warm.webhook.stoppedEarly)
    log(`section 3 stopped after ${warm.webhook.done} creations: it must end before the drift check`);
  const totalS = (performance.now() - started) / 1000;
  log(`\ntotal bench time: ${fmt(totalS, 1)} s`);
  await writeResults("scale.json", {
    date: new Date().toISOString(),
    env,
    projects: PROJECTS,
    baselines: base,
    coldStart: { ...cold, targetMs: COLD_TARGET_MS, pass: coldPass, rssTargetMb: RSS_TARGET_MB, rssPass },
    warm: {
      ...warm,
      restart: { ...warm.restart, targetMs: WARM_TARGET_MS, pass: restartPass },
      periodic: { ...warm.periodic, targetMs: WARM_TARGET_MS, pass: periodicPass },
      webhook: { ...warm.webhook, p99TargetMs: WEBHOOK_P99_TARGET_MS, pass: hooksPass },
    },
    totalSeconds: round(totalS),
  });
}

await main();
