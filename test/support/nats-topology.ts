// NATS topologies beyond one cluster, for integration tests: a super-cluster (clusters joined by
// gateways) and leaf nodes that share the system account with it. Built on nats-server.ts: every
// server is in operator mode with the same operator; the resolver of each is chosen per server.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { connect, credsAuthenticator } from "@nats-io/transport-node";
import {
  startNatsCluster,
  startNatsServer,
  type NatsCluster,
  type NatsServer,
  type NatsServerOptions,
  type ResolverKind,
} from "./nats-server.ts";
import { freePort, httpGet, waitFor } from "./process.ts";

function q(value: string): string {
  return JSON.stringify(value);
}

export interface SuperCluster {
  clusters: NatsCluster[];
  /** Every server of every cluster, cluster by cluster. */
  servers: NatsServer[];
  urls: string[];
  /** nats-leaf:// URLs of every server's leaf node listener. */
  leafUrls: string[];
  logs(): string;
  stop(): Promise<void>;
}

export interface SuperClusterOptions {
  /** Cluster (= gateway) names, one cluster each (default ["east", "west"]). */
  names?: string[];
  /** Servers per cluster (default 3). */
  size?: number;
  /** Creds of a system-account user: readiness is every server answering its $SYS.REQ.SERVER.PING. */
  systemCreds: Uint8Array;
}

interface Gatewayz {
  outbound_gateways?: Record<string, unknown> | null;
}

/** Servers answering $SYS.REQ.SERVER.PING through `url` (a system-account connection), by name. */
export async function pingServerNames(url: string | string[], systemCreds: Uint8Array): Promise<string[]> {
  const nc = await connect({
    servers: url,
    authenticator: credsAuthenticator(systemCreds),
    maxReconnectAttempts: 0,
    timeout: 5_000,
  });
  try {
    const names: string[] = [];
    const replies = await nc.requestMany("$SYS.REQ.SERVER.PING", undefined, {
      strategy: "stall",
      stall: 250,
      maxWait: 3_000,
    });
    for await (const m of replies) {
      const body = m.json<{ server?: { name?: string } }>();
      names.push(body.server?.name ?? "?");
    }
    return names.sort();
  } finally {
    await nc.close();
  }
}

/**
 * Waits until a system-account PING sent to each of `entry` reaches exactly `expected` (sorted
 * server names): routes, gateways and leaf connections carry the system account's interest.
 */
export async function waitForSystemAccountReach(
  entry: NatsServer[],
  expected: string[],
  systemCreds: Uint8Array,
  what: string,
  timeoutMs = 20_000,
): Promise<void> {
  const want = [...expected].sort().join(",");
  await Promise.all(
    entry.map((s) =>
      waitFor(async () => (await pingServerNames(s.url, systemCreds)).join(",") === want, {
        what: `${what}: a system-account PING at ${s.name} to reach ${expected.length} servers`,
        timeoutMs,
        intervalMs: 100,
        failIf: () => s.process().exitReason(),
      }),
    ),
  );
}

/**
 * A super-cluster: `names.length` clusters of `size` servers, each cluster a gateway to every
 * other, every server listening for leaf nodes. `server` options (resolver, binary, ...) apply to
 * every server. Ready when every server's PING reaches every server.
 */
export async function startSuperCluster(
  server: NatsServerOptions,
  opts: SuperClusterOptions,
): Promise<SuperCluster> {
  const names = opts.names ?? ["east", "west"];
  const size = opts.size ?? 3;
  const gatewayPorts = new Map<string, number[]>();
  const leafPorts = new Map<string, number[]>();
  for (const name of names) {
    const gw: number[] = [];
    const leaf: number[] = [];
    for (let i = 0; i < size; i++) {
      gw.push(await freePort());
      leaf.push(await freePort());
    }
    gatewayPorts.set(name, gw);
    leafPorts.set(name, leaf);
  }
  const gatewayBlock = (name: string, index: number): string =>
    [
      `gateway {`,
      `  name: ${q(name)}`,
      `  listen: ${q(`127.0.0.1:${gatewayPorts.get(name)![index]}`)}`,
      `  gateways: [`,
      ...names
        .filter((other) => other !== name)
        .map(
          (other) =>
            `    { name: ${q(other)}, urls: [${gatewayPorts
              .get(other)!
              .map((p) => q(`nats://127.0.0.1:${p}`))
              .join(", ")}] }`,
        ),
      `  ]`,
      `}`,
      `leafnodes { listen: ${q(`127.0.0.1:${leafPorts.get(name)![index]}`)} }`,
    ].join("\n");

  const started = await Promise.allSettled(
    names.map((name) =>
      startNatsCluster(size, {
        ...server,
        name,
        configure: (ctx) => [server.configure?.(ctx) ?? "", gatewayBlock(name, ctx.index)].join("\n"),
      }),
    ),
  );
  const clusters = started.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
  const failed = started.flatMap((r) => (r.status === "rejected" ? [r.reason as unknown] : []));
  if (failed.length > 0) {
    await Promise.all(clusters.map((c) => c.stop()));
    throw failed[0];
  }
  const servers = clusters.flatMap((c) => c.servers);
  const superCluster: SuperCluster = {
    clusters,
    servers,
    urls: servers.map((s) => s.url),
    leafUrls: names.flatMap((name) => leafPorts.get(name)!.map((p) => `nats-leaf://127.0.0.1:${p}`)),
    logs: () => clusters.map((c) => c.logs()).join("\n"),
    stop: async () => {
      await Promise.all(clusters.map((c) => c.stop()));
    },
  };
  try {
    await Promise.all(
      servers.map((s) =>
        waitFor(
          async () => {
            const res = await httpGet(`${s.monitorUrl}/gatewayz`);
            const outbound = Object.keys((JSON.parse(res.body) as Gatewayz).outbound_gateways ?? {});
            return names.filter((n) => !s.name.startsWith(`${n}-`)).every((n) => outbound.includes(n));
          },
          {
            what: `nats-server ${s.name} to open a gateway to every other cluster`,
            timeoutMs: 20_000,
            intervalMs: 50,
          },
        ),
      ),
    );
    await waitForSystemAccountReach(
      clusters.map((c) => c.servers[0]!),
      servers.map((s) => s.name),
      opts.systemCreds,
      "super-cluster",
    );
  } catch (err) {
    const message = `${err instanceof Error ? err.message : String(err)}\n${superCluster.logs()}`;
    await superCluster.stop();
    throw new Error(message, { cause: err });
  }
  return superCluster;
}

export interface LeafNodeOptions {
  /** nats-leaf:// URLs of the hub's leaf node listeners (all of one cluster). */
  hub: string[];
  /** Creds of the system-account user the leaf connection authenticates as on the hub. */
  systemCreds: Uint8Array;
  /** The leaf server's own resolver (default "full"). */
  resolver?: ResolverKind;
  name?: string;
}

/**
 * A leaf node server of the same operator whose one remote binds the system account, so the
 * system account (resolver requests, lookups, PINGs) spans hub and leaf. Client accounts are not
 * bridged: a remote binds one account, and natsbind's accounts come and go (docs/nats-topologies.md).
 */
export async function startLeafNode(server: NatsServerOptions, opts: LeafNodeOptions): Promise<NatsServer> {
  const credsFile = (dir: string): string => join(dir, "leaf-system.creds");
  return startNatsServer({
    ...server,
    ...(opts.name !== undefined ? { name: opts.name } : {}),
    resolver: opts.resolver ?? "full",
    configure: (ctx) =>
      [
        server.configure?.(ctx) ?? "",
        `leafnodes {`,
        `  remotes: [`,
        `    {`,
        `      urls: [${opts.hub.map(q).join(", ")}]`,
        `      credentials: ${q(credsFile(ctx.dir))}`,
        `      account: ${q(server.systemAccount)}`,
        `    }`,
        `  ]`,
        `}`,
      ].join("\n"),
    beforeStart: async (ctx) => {
      await server.beforeStart?.(ctx);
      await writeFile(credsFile(ctx.dir), opts.systemCreds, { mode: 0o600 });
    },
  });
}
