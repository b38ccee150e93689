/**
 * natsbind benchmarks (`make bench` runs `node bench/run.ts`). Everything runs in this one process;
 * every figure is a median over several runs taken after a warm-up, next to a baseline measured in
 * the same run, so ratios survive a slow or busy machine better than absolute numbers do.
 *
 *  1. Encode + sign account JWTs (one scoped signing key each): natsbind's accountClaims + signJwt
 *     with an NKeyPair (node:crypto Ed25519) vs stock @nats-io/jwt encodeAccount signed by an
 *     @nats-io/nkeys operator key (tweetnacl). Pure CPU on the main thread.
 *  2. Push pre-signed account JWTs through NatsResolver.push() to one real nats-server and to a
 *     3-node cluster (full resolver, every server must answer 200), with a fixed number of pushes
 *     in flight over one connection; baseline: the same number of plain request/reply round trips
 *     (same payload, same fan-out, same concurrency) to trivial responders.
 *
 * Knobs (environment, for exploring only; the defaults are what `make bench` reports):
 *   BENCH_QUICK=1         fewer and smaller runs (a smoke test of the bench itself)
 *   BENCH_SWEEP=1         before the measured runs, one push run per concurrency in SWEEP_LEVELS
 *   BENCH_CONCURRENCY=n   pushes in flight (default PUSH_CONCURRENCY)
 *   TMPDIR=/dev/shm       put the servers' resolver dirs on tmpfs (the launchers use os.tmpdir())
 *
 * Noise to know about: the full resolver writes one file per account. On ext4, after many files
 * were deleted (earlier bench or test runs remove their 50,000-file resolver dirs), creating new
 * inodes gets expensive (kernel: find_inode_bit / recently_deleted); on the 2-core reference box
 * that raised nats-server's system CPU from ~40 to ~450-570 µs per push and halved a run's
 * throughput. The "sys" figure next to the servers' CPU shows it; on tmpfs it disappears.
 */
import { mapLimit } from "../src/runtime/concurrency.ts";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { encodeAccount } from "@nats-io/jwt";
import { createAccount, createOperator } from "@nats-io/nkeys";
import { connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { INIT_LAYOUT, initOperator } from "../src/cli/init.ts";
import { accountClaims, decodeJwt, signJwt, type DesiredAccount } from "../src/nats/claims.ts";
import { NKeyPair } from "../src/nats/keys.ts";
import { NatsResolver } from "../src/nats/resolver.ts";
import {
  startNatsCluster,
  startNatsServer,
  type NatsCluster,
  type NatsServer,
  type NatsServerOptions,
} from "../test/support/nats-server.ts";
import { removeDir, tempDir } from "../test/support/process.ts";
import {
  QUICK,
  benchEnv,
  fmt,
  log,
  median,
  processCpuMs,
  sleep,
  table,
  timed,
  verdict,
  writeResults,
} from "./common.ts";

// --- section 1: sign ---------------------------------------------------------------------------
const SIGN_N = QUICK ? 2_000 : 10_000;
const SIGN_RUNS = QUICK ? 3 : 7;
const SIGN_WARMUP_N = 2_000;
// The stock path costs ~15-50 ms per JWT (tweetnacl re-derives the key pair from the seed on every
// getPublicKey()/sign()), so it gets a smaller N per run; per-JWT figures stay comparable.
const STOCK_N = QUICK ? 20 : 100;
const STOCK_RUNS = QUICK ? 3 : 5;
const STOCK_WARMUP_N = 5;
const SIGN_TARGET_PER_SEC = 10_000;

// --- section 2: push ---------------------------------------------------------------------------
const PUSH_N = QUICK ? 2_000 : 10_000;
const PUSH_RUNS = QUICK ? 3 : 5;
const PUSH_WARMUP_N = QUICK ? 500 : 2_000;
// Every run pushes accounts the target has never seen. Re-pushing would measure less: nats-server's
// full resolver stores an update without any issue-time check (DirJWTStore.save), but skips the
// file write when the JWT is byte-identical to the stored one (same sha256), so identical re-pushes
// are cheaper than real changes.
const PUSH_TARGET_PER_SEC = 2_000;
/**
 * Pushes in flight over the one resolver connection. Chosen with BENCH_SWEEP=1 on the 2-core
 * reference machine (one run of 5,000 fresh accounts per level, after the warm-up; accounts/s):
 *
 *   in flight   1 server   3-node cluster
 *          16      1,392            1,300
 *          64      3,390            1,595
 *         128      3,679            1,703   <- best on both targets
 *         256      3,229            1,042
 *
 * Below ~64 the round-trip latency is not hidden; above 128 nothing more is gained, because each
 * nats-server handles every $SYS.REQ.CLAIMS.UPDATE from one connection serially on that
 * connection's read goroutine, so extra requests only queue (and the cluster degrades).
 */
const PUSH_CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 128);
const SWEEP_LEVELS = [16, 64, 128, 256];
const SWEEP_N = 5_000;
const REQUEST_TIMEOUT_MS = 30_000;
const ECHO_SUBJECT = "natsbind.bench.echo";

// --- helpers -----------------------------------------------------------------------------------

interface Series {
  /** Items per run. */
  n: number;
  /** Wall time of each measured run, ms. */
  runsMs: number[];
  medianMs: number;
  /** Per item, from the median run. */
  msPerItem: number;
  perSec: number;
}

function series(n: number, runsMs: number[]): Series {
  const medianMs = median(runsMs);
  return {
    n,
    runsMs: runsMs.map((v) => Math.round(v * 100) / 100),
    medianMs,
    msPerItem: medianMs / n,
    perSec: (n * 1000) / medianMs,
  };
}

/** Wall time (ms) of each of `runs` calls of `fn` (warm up before calling this). */
async function measure(runs: number, fn: () => unknown): Promise<number[]> {
  const out: number[] = [];
  for (let r = 0; r < runs; r++) out.push(await timed(fn));
  return out;
}

/** CPU used by this process and by the server processes in each timed run of a series. */
class CpuMeter {
  readonly #pids: readonly number[];
  /** Per run, ms. */
  readonly clientMs: number[] = [];
  /** Per run, ms (user + system, and system alone); empty when /proc is not readable. */
  readonly serverMs: number[] = [];
  readonly serverSysMs: number[] = [];
  constructor(pids: readonly number[]) {
    this.#pids = pids;
  }
  /** Wall time of `fn`, ms; records the CPU used meanwhile. */
  async time(fn: () => Promise<unknown>): Promise<number> {
    const client0 = process.cpuUsage();
    const server0 = processCpuMs(...this.#pids);
    const out = await timed(fn);
    const client = process.cpuUsage(client0);
    const server1 = processCpuMs(...this.#pids);
    this.clientMs.push((client.user + client.system) / 1000);
    if (server0 && server1) {
      this.serverMs.push(server1.user + server1.sys - server0.user - server0.sys);
      this.serverSysMs.push(server1.sys - server0.sys);
    }
    return out;
  }
  /** Median over runs of CPU per operation, µs. */
  perOp(opsPerRun: number): CpuPerOp {
    const us = (ms: number[]): number => (median(ms) * 1000) / opsPerRun;
    const complete = this.serverMs.length === this.clientMs.length;
    return {
      clientUs: us(this.clientMs),
      serverUs: complete ? us(this.serverMs) : undefined,
      serverSysUs: complete ? us(this.serverSysMs) : undefined,
    };
  }
}

function accountKeys(n: number): string[] {
  return Array.from({ length: n }, () => NKeyPair.generate("account").publicKey);
}

const fmtMs = (ms: number): string => (ms >= 1 ? `${fmt(ms, 2)} ms` : `${fmt(ms * 1000, 1)} µs`);

/** Label, items per run, runs, median run, per item, items/s: the leading cells of both tables. */
function seriesCells(label: string, s: Series, runs: number): string[] {
  return [label, fmt(s.n), String(runs), fmtMs(s.medianMs), fmtMs(s.msPerItem), fmt(s.perSec)];
}

// --- section 1 ---------------------------------------------------------------------------------

/** The desired account of project i: one scoped signing key (role "ci"), tag project:<i>. */
function desiredAccount(i: number, account: string, signingKey: string): DesiredAccount {
  return {
    publicKey: account,
    name: `project-${i}`,
    tags: [`project:${i}`],
    signingKeys: [
      {
        key: signingKey,
        role: "ci",
        template: { pub: { allow: ["build.{{tag(project)}}.>"] }, sub: { allow: ["_INBOX.>"] } },
      },
    ],
  };
}

function signOurs(
  from: number,
  n: number,
  accounts: readonly string[],
  signingKeys: readonly string[],
  signer: NKeyPair,
  iat: number,
): string[] {
  const out = new Array<string>(n);
  for (let j = 0; j < n; j++) {
    const i = from + j;
    out[j] = signJwt(
      accountClaims(desiredAccount(i, accounts[i]!, signingKeys[i]!), signer.publicKey),
      signer,
      iat,
    );
  }
  return out;
}

async function signStock(
  n: number,
  accounts: readonly string[],
  signingKeys: readonly string[],
  operator: ReturnType<typeof createOperator>,
): Promise<string[]> {
  const out = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    out[i] = await encodeAccount(
      `project-${i}`,
      accounts[i]!,
      {
        tags: [`project:${i}`],
        signing_keys: [
          {
            kind: "user_scope",
            key: signingKeys[i]!,
            role: "ci",
            template: { pub: { allow: ["build.{{tag(project)}}.>"] }, sub: { allow: ["_INBOX.>"] } },
          },
        ],
      },
      { signer: operator },
    );
  }
  return out;
}

interface SignResults {
  ours: Series;
  stock: Series;
  decodeJwt: Series;
  speedup: number;
  targetPerSec: number;
  pass: boolean;
}

async function benchSign(): Promise<SignResults> {
  log(`[sign] generating ${SIGN_N * 2} + ${STOCK_N * 2} public keys (untimed)`);
  const signer = NKeyPair.generate("operator");
  const accounts = accountKeys(SIGN_N);
  const signingKeys = accountKeys(SIGN_N);
  // The stock path gets its keys from @nats-io/nkeys, also outside the timer; passing public key
  // strings (not KeyPairs) to encodeAccount is its fastest use (a KeyPair re-derives on each call).
  const stockOperator = createOperator();
  const stockAccounts = Array.from({ length: STOCK_N }, () => createAccount().getPublicKey());
  const stockSigningKeys = Array.from({ length: STOCK_N }, () => createAccount().getPublicKey());

  log(`[sign] ours: warm-up ${SIGN_WARMUP_N}, then ${SIGN_RUNS} runs of ${SIGN_N}`);
  signOurs(0, SIGN_WARMUP_N, accounts, signingKeys, signer, Math.floor(Date.now() / 1000));
  let sample: string[] = [];
  const oursMs = await measure(SIGN_RUNS, () => {
    sample = signOurs(0, SIGN_N, accounts, signingKeys, signer, Math.floor(Date.now() / 1000));
  });

  log(`[sign] stock: warm-up ${STOCK_WARMUP_N}, then ${STOCK_RUNS} runs of ${STOCK_N}`);
  await signStock(STOCK_WARMUP_N, stockAccounts, stockSigningKeys, stockOperator);
  let stockSample: string[] = [];
  const stockMs = await measure(STOCK_RUNS, async () => {
    stockSample = await signStock(STOCK_N, stockAccounts, stockSigningKeys, stockOperator);
  });

  // Both outputs must be real, verifiable account JWTs carrying the scoped key (checked untimed).
  for (const [what, jwt, key] of [
    ["ours", sample[SIGN_N - 1]!, signingKeys[SIGN_N - 1]!],
    ["stock", stockSample[STOCK_N - 1]!, stockSigningKeys[STOCK_N - 1]!],
  ] as const) {
    const claims = decodeJwt(jwt, `${what} JWT`);
    const sk = (claims.nats.signing_keys as Array<{ key?: string; kind?: string }>)[0];
    if (claims.nats.type !== "account" || sk?.key !== key || sk.kind !== "user_scope") {
      throw new Error(`${what} JWT does not carry the expected scoped signing key`);
    }
  }

  // What NatsResolver.push() does to every JWT before sending it (decode + Ed25519 verify).
  const decodeMs = await measure(SIGN_RUNS, () => {
    for (const jwt of sample) decodeJwt(jwt, "account JWT");
  });

  const ours = series(SIGN_N, oursMs);
  const stock = series(STOCK_N, stockMs);
  return {
    ours,
    stock,
    decodeJwt: series(SIGN_N, decodeMs),
    speedup: stock.msPerItem / ours.msPerItem,
    targetPerSec: SIGN_TARGET_PER_SEC,
    pass: ours.perSec >= SIGN_TARGET_PER_SEC,
  };
}

// --- section 2 ---------------------------------------------------------------------------------

interface Trust {
  dir: string;
  serverOpts: NatsServerOptions;
  creds: Uint8Array;
  signer: NKeyPair;
}

async function makeTrust(): Promise<Trust> {
  const dir = await tempDir("bench-init");
  await initOperator({ outDir: dir, operatorName: "natsbind-bench" });
  const read = (p: string): Promise<string> => readFile(join(dir, p), "utf8");
  const systemAccountJwt = (await read(INIT_LAYOUT.systemAccountJwt)).trim();
  const systemAccount = decodeJwt(systemAccountJwt, "system account JWT").sub;
  return {
    dir,
    serverOpts: { operatorJwt: await read(INIT_LAYOUT.operatorJwt), systemAccount, systemAccountJwt },
    creds: new TextEncoder().encode(await read(INIT_LAYOUT.systemCreds)),
    signer: NKeyPair.fromSeed(
      await read(INIT_LAYOUT.operatorSigningKey),
      "operator",
      INIT_LAYOUT.operatorSigningKey,
    ),
  };
}

interface Target {
  name: string;
  urls: string[];
  /** nats-server process ids, for CPU accounting. */
  pids: number[];
}

/** CPU per operation, median over the measured runs, µs (this process; all nats-servers together). */
interface CpuPerOp {
  clientUs: number;
  serverUs: number | undefined;
  /** The kernel's share of serverUs (file creation in the resolver dir, sockets). */
  serverSysUs: number | undefined;
}

interface PushTargetResults {
  servers: number;
  push: Series;
  baseline: Series;
  pushCpu: CpuPerOp;
  /** Includes the echo responders, which run in this process too. */
  baselineCpu: CpuPerOp;
  /** push time / baseline time (median runs). */
  pushVsBaseline: number;
}

interface PushResults {
  concurrency: number;
  runs: number;
  single: PushTargetResults;
  cluster: PushTargetResults;
  /** cluster accounts/s / single accounts/s. */
  clusterVsSingle: number;
  targetPerSec: number;
  pass: boolean;
  sweep?: Array<{ concurrency: number; singlePerSec: number; clusterPerSec: number }>;
}

/** Trivial responders, one per server, each answering with `reply` (the size of a resolver reply). */
async function startEchoResponders(
  urls: string[],
  creds: Uint8Array,
  reply: Uint8Array,
): Promise<NatsConnection[]> {
  const conns: NatsConnection[] = [];
  for (const url of urls) {
    const nc = await connect({ servers: url, authenticator: credsAuthenticator(creds), name: "bench-echo" });
    conns.push(nc);
    nc.subscribe(ECHO_SUBJECT, { callback: (_err, msg) => void msg.respond(reply) });
    await nc.flush();
  }
  return conns;
}

async function echoRoundTrip(nc: NatsConnection, payload: string, replies: number): Promise<void> {
  const it = await nc.requestMany(ECHO_SUBJECT, payload, {
    strategy: "count",
    maxMessages: replies,
    maxWait: REQUEST_TIMEOUT_MS,
  });
  let got = 0;
  for await (const msg of it) {
    if (msg.headers?.code === 503) throw new Error("no echo responders");
    got++;
  }
  if (got !== replies) throw new Error(`echo: ${got} of ${replies} replies`);
}

/** Waits until every echo responder's interest has reached the client's server (routes). */
async function waitForEcho(nc: NatsConnection, replies: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const it = await nc.requestMany(ECHO_SUBJECT, "", { strategy: "stall", stall: 200, maxWait: 1_000 });
    let got = 0;
    for await (const msg of it) if (msg.headers?.code !== 503) got++;
    if (got === replies) return;
    if (Date.now() > deadline) throw new Error(`echo responders: ${got} of ${replies} reachable after 10 s`);
    await sleep(100);
  }
}

/** Pre-signed account JWTs of distinct, fresh accounts, handed out in order. */
class AccountSupply {
  readonly #jwts: string[] = [];
  #next = 0;
  constructor(signer: NKeyPair, total: number) {
    const accounts = accountKeys(total);
    const keys = accountKeys(total);
    this.#jwts = signOurs(0, total, accounts, keys, signer, Math.floor(Date.now() / 1000));
  }
  /** The next `n` never-pushed-to-this-target JWTs (call rewind() when switching targets). */
  take(n: number): string[] {
    if (this.#next + n > this.#jwts.length)
      throw new Error(`account supply exhausted (${this.#jwts.length})`);
    const out = this.#jwts.slice(this.#next, this.#next + n);
    this.#next += n;
    return out;
  }
  rewind(): void {
    this.#next = 0;
  }
}

async function pushAll(
  resolver: NatsResolver,
  jwts: readonly string[],
  concurrency: number,
  servers: number,
): Promise<void> {
  let acked = 0;
  await mapLimit(jwts, concurrency, async (jwt) => {
    const outcome = await resolver.push(jwt);
    if (outcome.replies.length !== servers)
      throw new Error(`push: ${outcome.replies.length} of ${servers} replies`);
    acked += outcome.replies.length;
  });
  if (acked !== jwts.length * servers)
    throw new Error(`push: ${acked} acks, expected ${jwts.length * servers}`);
}

async function benchTarget(
  target: Target,
  trust: Trust,
  supply: AccountSupply,
  concurrency: number,
  sweep: number[],
): Promise<{ results: PushTargetResults; sweep: Array<{ concurrency: number; perSec: number }> }> {
  const servers = target.urls.length;
  const resolver = await NatsResolver.connect({
    servers: target.urls,
    creds: trust.creds,
    // Fixed: no $SYS.REQ.SERVER.PING discovery inside the timed loop.
    expectedServers: servers,
    timeoutMs: REQUEST_TIMEOUT_MS,
  });
  let clientConn: NatsConnection | undefined;
  let echo: NatsConnection[] = [];
  try {
    const client = await connect({ servers: target.urls, authenticator: credsAuthenticator(trust.creds) });
    clientConn = client;
    supply.rewind();
    // A real resolver reply, to size the echo replies like it.
    const [first] = supply.take(1);
    const sample = await client.request("$SYS.REQ.CLAIMS.UPDATE", first!, { timeout: REQUEST_TIMEOUT_MS });
    echo = await startEchoResponders(target.urls, trust.creds, sample.data);
    await waitForEcho(client, servers);

    log(`[push ${target.name}] warm-up ${PUSH_WARMUP_N} pushes + ${PUSH_WARMUP_N} echo round trips`);
    await pushAll(resolver, supply.take(PUSH_WARMUP_N), concurrency, servers);
    const echoPayload = first!;
    const echoItems = Array.from({ length: PUSH_N }, () => echoPayload);
    await mapLimit(echoItems.slice(0, PUSH_WARMUP_N), concurrency, () =>
      echoRoundTrip(client, echoPayload, servers),
    );

    const sweepOut: Array<{ concurrency: number; perSec: number }> = [];
    for (const level of sweep) {
      const jwts = supply.take(SWEEP_N);
      const perSec = (SWEEP_N * 1000) / (await timed(() => pushAll(resolver, jwts, level, servers)));
      log(`[push ${target.name}] sweep: concurrency ${level}: ${fmt(perSec)} accounts/s`);
      sweepOut.push({ concurrency: level, perSec });
    }

    log(
      `[push ${target.name}] ${PUSH_RUNS} runs of ${PUSH_N} fresh accounts, each followed by ${PUSH_N} echo round trips`,
    );
    const pushMs: number[] = [];
    const echoMs: number[] = [];
    const pushCpu = new CpuMeter(target.pids);
    const echoCpu = new CpuMeter(target.pids);
    let lastPushed = "";
    for (let r = 0; r < PUSH_RUNS; r++) {
      const jwts = supply.take(PUSH_N);
      lastPushed = jwts[jwts.length - 1]!;
      pushMs.push(await pushCpu.time(() => pushAll(resolver, jwts, concurrency, servers)));
      echoMs.push(
        await echoCpu.time(() =>
          mapLimit(echoItems, concurrency, () => echoRoundTrip(client, echoPayload, servers)),
        ),
      );
    }

    // The last account pushed is really stored by the resolver (untimed).
    const account = decodeJwt(lastPushed).sub;
    if ((await resolver.lookup(account)) !== lastPushed)
      throw new Error(`lookup ${account}: not the pushed JWT`);
    const push = series(PUSH_N, pushMs);
    const baseline = series(PUSH_N, echoMs);
    return {
      results: {
        servers,
        push,
        baseline,
        pushCpu: pushCpu.perOp(PUSH_N),
        baselineCpu: echoCpu.perOp(PUSH_N),
        pushVsBaseline: push.medianMs / baseline.medianMs,
      },
      sweep: sweepOut,
    };
  } finally {
    await Promise.allSettled(echo.map((nc) => nc.close()));
    await clientConn?.close().catch(() => undefined);
    await resolver.close();
  }
}

async function benchPush(trust: Trust): Promise<PushResults> {
  const sweepLevels = process.env.BENCH_SWEEP === "1" ? SWEEP_LEVELS : [];
  const total = 1 + PUSH_WARMUP_N + sweepLevels.length * SWEEP_N + PUSH_RUNS * PUSH_N;
  log(`[push] signing ${fmt(total)} fresh account JWTs (untimed; the same set goes to each target)`);
  const supply = new AccountSupply(trust.signer, total);

  let single: NatsServer | undefined;
  let cluster: NatsCluster | undefined;
  try {
    log("[push] starting 1 nats-server");
    single = await startNatsServer({ ...trust.serverOpts, name: "bench-single" });
    const s = await benchTarget(
      { name: "1 server", urls: [single.url], pids: [single.process().pid ?? 0] },
      trust,
      supply,
      PUSH_CONCURRENCY,
      sweepLevels,
    );
    await single.stop();
    single = undefined;

    log("[push] starting a 3-node nats-server cluster");
    cluster = await startNatsCluster(3, { ...trust.serverOpts, name: "bench-cluster" });
    const c = await benchTarget(
      { name: "3-node cluster", urls: cluster.urls, pids: cluster.servers.map((x) => x.process().pid ?? 0) },
      trust,
      supply,
      PUSH_CONCURRENCY,
      sweepLevels,
    );

    return {
      concurrency: PUSH_CONCURRENCY,
      runs: PUSH_RUNS,
      single: s.results,
      cluster: c.results,
      clusterVsSingle: c.results.push.perSec / s.results.push.perSec,
      targetPerSec: PUSH_TARGET_PER_SEC,
      pass: s.results.push.perSec >= PUSH_TARGET_PER_SEC,
      ...(sweepLevels.length > 0
        ? {
            sweep: sweepLevels.map((concurrency, i) => ({
              concurrency,
              singlePerSec: s.sweep[i]!.perSec,
              clusterPerSec: c.sweep[i]!.perSec,
            })),
          }
        : {}),
    };
  } finally {
    await Promise.allSettled([single?.stop(), cluster?.stop()]);
  }
}

// --- main --------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const started = performance.now();
  const env = benchEnv();
  log(
    `natsbind bench: node ${env.node}, ${env.natsServer}, ${env.availableParallelism} cores (${env.cpuModel})`,
  );
  log(
    "Single-core note: Node runs this bench on one thread: signing, JWT verification in push() and the NATS " +
      "client all share one core;",
  );
  log(
    `the nats-server processes share this machine's ${env.availableParallelism} core(s) with it (no pinning).\n`,
  );

  const sign = await benchSign();
  const trust = await makeTrust();
  let push: PushResults;
  try {
    push = await benchPush(trust);
  } finally {
    await removeDir(trust.dir);
  }

  log("\n== 1. Encode + sign account JWTs (one scoped signing key each), one core ==");
  log(
    table(
      ["path", "JWTs/run", "runs", "median run", "per JWT", "JWTs/s"],
      [
        seriesCells("natsbind accountClaims + signJwt (NKeyPair)", sign.ours, SIGN_RUNS),
        seriesCells("stock @nats-io/jwt encodeAccount + nkeys", sign.stock, STOCK_RUNS),
        seriesCells("(info) decodeJwt: verify one JWT", sign.decodeJwt, SIGN_RUNS),
      ],
    ),
  );
  log(`speedup ours vs stock: ${fmt(sign.speedup, 1)}x per JWT`);
  log(
    `target >= ${fmt(SIGN_TARGET_PER_SEC)} account JWTs/s on one core: ${fmt(sign.ours.perSec)}/s -> ${verdict(sign.pass)}`,
  );

  log(
    `\n== 2. Push ${fmt(PUSH_N)} fresh account JWTs via NatsResolver.push(), ${push.concurrency} in flight, one connection ==`,
  );
  const rows: string[][] = [];
  const cpu = (us: number | undefined): string => (us === undefined ? "n/a" : `${fmt(us)} µs`);
  const serverCpu = (c: CpuPerOp): string =>
    c.serverUs === undefined ? "n/a" : `${fmt(c.serverUs)} µs (sys ${fmt(c.serverSysUs ?? 0)})`;
  for (const [name, t] of [
    ["1 server", push.single],
    ["3-node cluster", push.cluster],
  ] as const) {
    rows.push([
      ...seriesCells(`${name}: push (all ${t.servers} acks 200)`, t.push, PUSH_RUNS),
      cpu(t.pushCpu.clientUs),
      serverCpu(t.pushCpu),
      `${fmt(t.pushVsBaseline, 2)}x`,
    ]);
    rows.push([
      ...seriesCells(`${name}: baseline echo request/reply x${t.servers}`, t.baseline, PUSH_RUNS),
      cpu(t.baselineCpu.clientUs),
      serverCpu(t.baselineCpu),
      "1.00x",
    ]);
  }
  log(
    table(
      [
        "target",
        "ops/run",
        "runs",
        "median run",
        "per op",
        "ops/s",
        "node CPU/op",
        "servers CPU/op",
        "time vs echo",
      ],
      rows,
    ),
  );
  log(
    "node CPU/op: this process (resolver client; for echo also the responders); servers CPU/op: all " +
      "nats-server processes together (sys: kernel share, mostly resolver file creation); medians over the runs.",
  );
  log(`cluster vs single (accounts/s): ${fmt(push.clusterVsSingle, 2)}x`);
  log(
    `target >= ${fmt(PUSH_TARGET_PER_SEC)} accounts/s on one server: ${fmt(push.single.push.perSec)}/s -> ${verdict(push.pass)}`,
  );
  if (push.sweep) {
    log("\nconcurrency sweep (one run each, accounts/s):");
    log(
      table(
        ["in flight", "1 server", "3-node cluster"],
        push.sweep.map((s) => [String(s.concurrency), fmt(s.singlePerSec), fmt(s.clusterPerSec)]),
      ),
    );
  }

  const totalS = (performance.now() - started) / 1000;
  log(`\ntotal bench time: ${fmt(totalS, 1)} s`);
  await writeResults("latest.json", {
    date: new Date().toISOString(),
    env,
    sign,
    push,
    totalSeconds: totalS,
  });
}

await main();
