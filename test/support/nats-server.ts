// Real nats-server instances in operator mode with a full account resolver, for integration tests.
import { execFileSync } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  freePort,
  httpGet,
  ManagedProcess,
  removeDir,
  tempDir,
  toolBinary,
  waitFor,
  type ToolName,
} from "./process.ts";

/** The nats-server builds scripts/tools.sh makes: the newest, and the oldest supported of each line. */
export type NatsServerTool = Extract<ToolName, "nats-server" | "nats-server-2.10" | "nats-server-2.11">;

/** Path of a nats-server build (its env override, else .cache/bin); a clear error when it is missing. */
export function natsServerBinary(tool: NatsServerTool = "nats-server"): string {
  return toolBinary(tool);
}

/** `nats-server --version` of a binary, e.g. "v2.10.29". */
export function natsServerVersion(binary: string): string {
  const out = execFileSync(binary, ["--version"], { encoding: "utf8" }).trim();
  const version = /v\d+\.\d+\.\d+\S*/.exec(out)?.[0];
  if (!version) throw new Error(`${binary} --version printed no version: ${out}`);
  return version;
}

/**
 * The account resolver a server runs: `full` (stores every JWT, answers pushes, lookups and
 * deletes), `cache` (fetches JWTs from full resolvers on demand, keeps up to `limit`), or `memory`
 * (resolver_preload only; never updated through the system account).
 */
export type ResolverKind = "full" | "cache" | "memory";

/** What a config hook gets to know about the server it configures. */
export interface NatsServerContext {
  /** server_name of this server. */
  name: string;
  /** Index in the cluster (0 for a single server). */
  index: number;
  /** The server's temp dir (holds the config, op.jwt and the resolver's jwt/ dir). */
  dir: string;
  port: number;
  httpPort: number;
  /** Cluster port, for cluster members. */
  clusterPort?: number;
}

export interface NatsServerOptions {
  /** Operator JWT (written to <dir>/op.jwt and referenced by path). */
  operatorJwt: string;
  /** Public key of the system account. */
  systemAccount: string;
  /** JWT of the system account, put into resolver_preload. */
  systemAccountJwt: string;
  /** More account JWTs for resolver_preload (e.g. a callout account), by public key. */
  preloadAccounts?: Record<string, string>;
  /** `default_sentinel`: the bearer user JWT clients without creds connect as (>= 2.11.2). */
  defaultSentinel?: string;
  /** `max_control_line` in bytes (default 4096: too small for a CONNECT with an ID token). */
  maxControlLine?: number;
  /** server_name (default: unique "natsbind-test-<n>"; cluster members get "<name>-<i>"). */
  name?: string;
  /** Extra config appended verbatim to every server's config. */
  extraConfig?: string;
  /** Config snippet computed per server, appended after extraConfig. */
  configure?: (ctx: NatsServerContext) => string;
  /** Readiness deadline (default 15_000 ms). */
  readyTimeoutMs?: number;
  /** nats-server binary to run (default: natsServerBinary(), i.e. .cache/bin/nats-server or NATS_SERVER_BIN). */
  binary?: string;
  /** The account resolver (default "full", with allow_delete). */
  resolver?: ResolverKind;
  /** Runs once per server after its config is written and before it starts (e.g. writes files it names). */
  beforeStart?: (ctx: NatsServerContext) => Promise<void>;
}

export interface NatsServer {
  name: string;
  /** nats://127.0.0.1:<port> */
  url: string;
  port: number;
  httpPort: number;
  /** http://127.0.0.1:<httpPort> */
  monitorUrl: string;
  clusterPort?: number;
  dir: string;
  configFile: string;
  /** The running process (replaced by restart()). */
  process(): ManagedProcess;
  /** Last output lines of the server. */
  logs(): string;
  /**
   * Stops the server and starts it again on the same ports and dir (the resolver's stored JWTs
   * survive). Pass operatorJwt to change the trusted operator, which needs a restart. lameDuck
   * stops it as a rolling restart should: lame duck mode (SIGUSR2, what `nats-server --signal ldm`
   * sends) closes the listener, tells the clients, and closes them one by one before exiting.
   */
  restart(opts?: { operatorJwt?: string; lameDuck?: boolean }): Promise<void>;
  /** Stops the server and removes its temp dir. */
  stop(): Promise<void>;
}

export interface NatsCluster {
  /** Cluster name. */
  name: string;
  servers: NatsServer[];
  /** Client URLs of all servers. */
  urls: string[];
  /** Output of all servers, each block headed by its name. */
  logs(): string;
  /** Waits until every running server has a route to every other one. */
  waitForRoutes(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

let serverCounter = 0;

function q(value: string): string {
  return JSON.stringify(value);
}

interface ServerPlan extends NatsServerContext {
  clusterName?: string;
  routePorts: number[];
}

function resolverConfig(kind: ResolverKind, dir: string): string[] {
  switch (kind) {
    case "full":
      return [
        `resolver: {`,
        `  type: full`,
        `  dir: ${q(dir)}`,
        `  allow_delete: true`,
        `  interval: "2m"`,
        `  timeout: "1.9s"`,
        `}`,
      ];
    case "cache":
      return [`resolver: {`, `  type: cache`, `  dir: ${q(dir)}`, `  ttl: "1h"`, `  timeout: "1.9s"`, `}`];
    case "memory":
      return [`resolver: MEMORY`];
  }
}

function renderConfig(plan: ServerPlan, opts: NatsServerOptions): string {
  const lines = [
    `server_name: ${q(plan.name)}`,
    `listen: ${q(`127.0.0.1:${plan.port}`)}`,
    `http: ${q(`127.0.0.1:${plan.httpPort}`)}`,
    `operator: ${q(join(plan.dir, "op.jwt"))}`,
    `system_account: ${q(opts.systemAccount)}`,
    ...resolverConfig(opts.resolver ?? "full", join(plan.dir, "jwt")),
    `resolver_preload: {`,
    `  ${q(opts.systemAccount)}: ${q(opts.systemAccountJwt)}`,
    ...Object.entries(opts.preloadAccounts ?? {}).map(([account, jwt]) => `  ${q(account)}: ${q(jwt)}`),
    `}`,
  ];
  // restart({lameDuck: true}): the shortest lame duck nats-server accepts (30 s, spread over the
  // clients it closes one at a time, at most 1 s apart) after a short grace period.
  lines.push(`lame_duck_duration: "30s"`, `lame_duck_grace_period: "500ms"`);
  if (opts.defaultSentinel !== undefined) lines.push(`default_sentinel: ${q(opts.defaultSentinel)}`);
  if (opts.maxControlLine !== undefined) lines.push(`max_control_line: ${opts.maxControlLine}`);
  if (plan.clusterPort !== undefined && plan.clusterName !== undefined) {
    lines.push(
      `cluster {`,
      `  name: ${q(plan.clusterName)}`,
      `  listen: ${q(`127.0.0.1:${plan.clusterPort}`)}`,
      `  routes: [`,
      ...plan.routePorts.map((p) => `    ${q(`nats-route://127.0.0.1:${p}`)}`),
      `  ]`,
      `}`,
    );
  }
  if (opts.extraConfig) lines.push(opts.extraConfig);
  if (opts.configure) lines.push(opts.configure(plan));
  return lines.join("\n") + "\n";
}

async function spawnAndWaitHealthy(
  plan: ServerPlan,
  configFile: string,
  timeoutMs: number,
  binary: string,
): Promise<ManagedProcess> {
  const proc = new ManagedProcess(binary, ["-c", configFile], { name: plan.name });
  try {
    await waitFor(
      async () => {
        const res = await httpGet(`http://127.0.0.1:${plan.httpPort}/healthz`);
        if (res.status !== 200) throw new Error(`/healthz ${res.status}: ${res.body.trim()}`);
        return true;
      },
      {
        what: `nats-server ${plan.name} /healthz on port ${plan.httpPort}`,
        timeoutMs,
        intervalMs: 50,
        failIf: () => proc.exitReason(),
      },
    );
  } catch (err) {
    await proc.stop({ timeoutMs: 2_000 });
    throw proc.error(err instanceof Error ? err.message : String(err), err);
  }
  return proc;
}

async function launch(plan: ServerPlan, opts: NatsServerOptions): Promise<NatsServer> {
  const configFile = join(plan.dir, "nats-server.conf");
  const opFile = join(plan.dir, "op.jwt");
  await writeFile(opFile, opts.operatorJwt.trim() + "\n");
  await writeFile(configFile, renderConfig(plan, opts));
  await opts.beforeStart?.(plan);
  const timeoutMs = opts.readyTimeoutMs ?? 15_000;
  const binary = opts.binary ?? natsServerBinary();
  let proc = await spawnAndWaitHealthy(plan, configFile, timeoutMs, binary);
  let stopped = false;
  return {
    name: plan.name,
    url: `nats://127.0.0.1:${plan.port}`,
    port: plan.port,
    httpPort: plan.httpPort,
    monitorUrl: `http://127.0.0.1:${plan.httpPort}`,
    ...(plan.clusterPort !== undefined ? { clusterPort: plan.clusterPort } : {}),
    dir: plan.dir,
    configFile,
    process: () => proc,
    logs: () => proc.logs(),
    async restart(restartOpts = {}) {
      if (stopped) throw new Error(`nats-server ${plan.name} was stopped; cannot restart`);
      await proc.stop(restartOpts.lameDuck ? { signal: "SIGUSR2", timeoutMs: 45_000 } : {});
      if (restartOpts.operatorJwt !== undefined) {
        await writeFile(opFile, restartOpts.operatorJwt.trim() + "\n");
      }
      proc = await spawnAndWaitHealthy(plan, configFile, timeoutMs, binary);
    },
    async stop() {
      stopped = true;
      await proc.stop();
      await removeDir(plan.dir);
    },
  };
}

/** Starts one nats-server in operator mode and waits until /healthz answers 200. */
export async function startNatsServer(opts: NatsServerOptions): Promise<NatsServer> {
  const name = opts.name ?? `natsbind-test-${process.pid}-${++serverCounter}`;
  const dir = await tempDir("nats");
  try {
    return await launch(
      { name, index: 0, dir, port: await freePort(), httpPort: await freePort(), routePorts: [] },
      opts,
    );
  } catch (err) {
    await removeDir(dir);
    throw err;
  }
}

interface Routez {
  num_routes?: number;
  routes?: { remote_id?: string; remote_name?: string; account?: string }[] | null;
}

/**
 * Number of peers a server is fully routed to. nats-server >= 2.10 opens a pool of routes per peer
 * (cluster.pool_size, from /varz) plus one route per pinned account, and pins the system account:
 * a peer listed by one pooled route may not carry the system account's interest yet (a
 * $SYS.REQ.SERVER.PING then misses that server). A peer counts once it has every pooled route and
 * the system account's route.
 */
async function routedPeers(server: NatsServer, systemAccount: string): Promise<number> {
  const [routezRes, varzRes] = await Promise.all([
    httpGet(`${server.monitorUrl}/routez`),
    httpGet(`${server.monitorUrl}/varz`),
  ]);
  if (routezRes.status !== 200) throw new Error(`/routez ${routezRes.status}`);
  if (varzRes.status !== 200) throw new Error(`/varz ${varzRes.status}`);
  const routez = JSON.parse(routezRes.body) as Routez;
  const poolSize = (JSON.parse(varzRes.body) as { cluster?: { pool_size?: number } }).cluster?.pool_size ?? 1;
  const byPeer = new Map<string, { pooled: number; system: boolean }>();
  for (const r of routez.routes ?? []) {
    const peer = r.remote_id ?? r.remote_name ?? "";
    const seen = byPeer.get(peer) ?? { pooled: 0, system: false };
    if (r.account === undefined || r.account === "") seen.pooled += 1;
    else if (r.account === systemAccount) seen.system = true;
    byPeer.set(peer, seen);
  }
  // A pool size of 0 or less turns pooling off: one route per peer carries every account.
  const complete = (p: { pooled: number; system: boolean }): boolean =>
    poolSize < 1 ? p.pooled >= 1 : p.pooled >= poolSize && p.system;
  return [...byPeer.values()].filter(complete).length;
}

/**
 * Starts `n` routed nats-servers (cluster name opts.name or a unique one, each routing to all
 * peers) and waits until all are healthy and fully meshed.
 */
export async function startNatsCluster(n: number, opts: NatsServerOptions): Promise<NatsCluster> {
  if (n < 1) throw new Error(`startNatsCluster: n must be >= 1, got ${n}`);
  const clusterName = opts.name ?? `natsbind-test-${process.pid}-${++serverCounter}`;
  const plans: ServerPlan[] = [];
  for (let i = 0; i < n; i++) {
    plans.push({
      name: `${clusterName}-${i}`,
      index: i,
      dir: await tempDir("nats"),
      port: await freePort(),
      httpPort: await freePort(),
      clusterPort: await freePort(),
      clusterName,
      routePorts: [],
    });
  }
  for (const plan of plans) {
    plan.routePorts = plans.filter((p) => p !== plan).map((p) => p.clusterPort ?? 0);
  }
  const results = await Promise.allSettled(plans.map((plan) => launch(plan, opts)));
  const servers = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
  const failed = results.flatMap((r) => (r.status === "rejected" ? [r.reason as unknown] : []));
  if (failed.length > 0) {
    await Promise.all(servers.map((s) => s.stop()));
    await Promise.all(plans.map((p) => removeDir(p.dir)));
    throw failed[0];
  }

  const cluster: NatsCluster = {
    name: clusterName,
    servers,
    urls: servers.map((s) => s.url),
    logs: () => servers.map((s) => `=== ${s.name} ===\n${s.logs()}`).join("\n"),
    async waitForRoutes(timeoutMs = opts.readyTimeoutMs ?? 15_000) {
      await Promise.all(
        servers.map((s) =>
          waitFor(async () => (await routedPeers(s, opts.systemAccount)) >= n - 1, {
            what: `nats-server ${s.name} to route to ${n - 1} peers`,
            timeoutMs,
            intervalMs: 50,
            failIf: () => s.process().exitReason(),
          }),
        ),
      );
    },
    async stop() {
      await Promise.all(servers.map((s) => s.stop()));
    },
  };
  try {
    await cluster.waitForRoutes();
  } catch (err) {
    const message = `${err instanceof Error ? err.message : String(err)}\n${cluster.logs()}`;
    await cluster.stop();
    throw new Error(message, { cause: err });
  }
  return cluster;
}
