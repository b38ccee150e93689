/**
 * make bench: connects through the NATS auth callout (issue 10, part 8). A `natsbind run` child
 * (pinned to one core when taskset exists) answers $SYS.REQ.USER.AUTH for a nats-server in operator
 * mode; clients connect with nothing but a GitLab ID token (minted beforehand by the simulator, so
 * minting is not measured). Baseline in the same run: the same client connecting to the same server
 * with a static creds file of the same account and role (what the exchange hands out). Reported:
 * connects per second at 1 and at 16 in flight, p50 / p99 connect time, and the ratio to the
 * baseline. Target: callout p99 < 25 ms. BENCH_QUICK=1 runs fewer connects.
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { openSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { connect, credsAuthenticator, type ConnectionOptions } from "@nats-io/transport-node";
import { stringify } from "yaml";
import { NODE_FLAGS } from "../src/cli/node-flags.ts";
import { DirectoryKeyStore } from "../src/keystore/directory.ts";
import { NatsResolver } from "../src/nats/resolver.ts";
import { GitLabSimulator } from "../test/support/gitlab-sim.ts";
import { startNatsServer } from "../test/support/nats-server.ts";
import { createTestOperator, natsConfigSection } from "../test/support/operator.ts";
import { freePort, removeDir, REPO_ROOT, tempDir, waitFor } from "../test/support/process.ts";
import { QUICK, benchEnv, fmt, log, median, processCpuMs, table, verdict, writeResults } from "./common.ts";

const AUDIENCE = "https://natsbind.bench";
const CONNECTS = QUICK ? 60 : 600;
const ROUNDS = QUICK ? 1 : 3;

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function hasTaskset(): boolean {
  try {
    execFileSync("taskset", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** `count` connects (open, flush, close), `concurrency` in flight; each connect's time in ms. */
async function connects(
  count: number,
  concurrency: number,
  options: () => ConnectionOptions,
): Promise<{ times: number[]; perSecond: number }> {
  const times: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) {
        next += 1;
        const t0 = performance.now();
        const nc = await connect({ ...options(), maxReconnectAttempts: 0, timeout: 10_000 });
        await nc.flush();
        times.push(performance.now() - t0);
        await nc.close();
      }
    }),
  );
  return { times, perSecond: (count / (performance.now() - started)) * 1000 };
}

async function main(): Promise<void> {
  const op = await createTestOperator({ callout: true });
  const server = await startNatsServer(op.serverOptions);
  const sim = await GitLabSimulator.start();
  const dir = await tempDir("bench-callout");
  let child: ChildProcess | undefined;
  try {
    const group = sim.createGroup({ name: "Bench", path: "bench" });
    const project = sim.createProject({ name: "svc", groupId: group.id });
    await mkdir(join(dir, "bindings"));
    await writeFile(join(dir, "token"), sim.token);
    await writeFile(
      join(dir, "bindings", "bench.yaml"),
      stringify({
        apiVersion: "natsbind.io/v1alpha1",
        kind: "NatsBinding",
        metadata: { name: "bench" },
        spec: {
          gitlab: { group: "bench" },
          roles: [
            {
              name: "ci",
              publish: { allow: ["build.{{project.id}}.>"] },
              subscribe: { allow: ["_INBOX.>"] },
              ci: {},
            },
          ],
        },
      }),
    );
    const port = await freePort();
    await writeFile(
      join(dir, "natsbind.yaml"),
      stringify({
        nats: natsConfigSection(op, [server.url]),
        gitlab: { url: sim.url, tokenFile: "token", resyncInterval: "1h" },
        http: { listen: `127.0.0.1:${port}` },
        credentials: {
          audience: AUDIENCE,
          // Raised so the bench measures issuance, not the limiter.
          rateLimit: { perProjectPerMinute: 1_000_000, perClientPerMinute: 1_000_000 },
          audit: { file: "audit.log" },
          callout: { credsFile: op.callout!.credsFile, signingKeyFile: op.callout!.signingKeyFile },
        },
      }),
    );
    const pinned = hasTaskset();
    // BENCH_CPU_PROF=<dir>: a CPU profile of natsbind, written when it stops.
    const prof = process.env.BENCH_CPU_PROF
      ? ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`]
      : [];
    const argv = [
      ...NODE_FLAGS,
      ...prof,
      join(REPO_ROOT, "src", "cli", "main.ts"),
      "run",
      "--config",
      join(dir, "natsbind.yaml"),
    ];
    const logFd = openSync(join(dir, "natsbind.log"), "w");
    child = pinned
      ? spawn("taskset", ["-c", "0", process.execPath, ...argv], { stdio: ["ignore", logFd, logFd] })
      : spawn(process.execPath, argv, { stdio: ["ignore", logFd, logFd] });
    const resolver = await NatsResolver.connect({ servers: [server.url], creds: op.systemCreds });
    const keys = new DirectoryKeyStore(join(dir, "keys"));
    await waitFor(
      async () => {
        const slot = await keys.get({ binding: "bench", projectId: project.id }).catch(() => undefined);
        return slot !== undefined && (await resolver.lookup(slot.account)) !== undefined;
      },
      { what: "the project's account", timeoutMs: 30_000, intervalMs: 50 },
    );
    await resolver.close();
    const tokens = Array.from({ length: 64 }, (_, i) =>
      sim.mintIdToken({ projectId: project.id, aud: AUDIENCE, extra: { job_id: String(1000 + i) } }),
    );
    let t = 0;
    const viaCallout = (): ConnectionOptions => ({
      servers: server.url,
      token: tokens[t++ % tokens.length]!,
    });
    // The baseline's creds: what the exchange hands a job of the same project and role.
    const res = await fetch(`http://127.0.0.1:${port}/v1/credentials`, {
      method: "POST",
      headers: { authorization: `Bearer ${tokens[0]}`, accept: "text/plain" },
    });
    if (!res.ok) throw new Error(`exchange for the baseline creds: ${res.status} ${await res.text()}`);
    const creds = new TextEncoder().encode(await res.text());
    const withCreds = (): ConnectionOptions => ({
      servers: server.url,
      authenticator: credsAuthenticator(creds),
    });

    await connects(20, 4, viaCallout); // warm up: JWKS fetched, JIT
    await connects(20, 4, withCreds);
    const rows: string[][] = [];
    const results: Record<string, unknown>[] = [];
    for (const concurrency of [1, 16]) {
      const runs = {
        callout: [] as number[][],
        creds: [] as number[][],
        cps: { callout: [] as number[], creds: [] as number[] },
        natsbindCpuMs: [] as number[],
      };
      for (let round = 0; round < ROUNDS; round++) {
        const cpu0 = processCpuMs(child.pid!);
        const c = await connects(CONNECTS, concurrency, viaCallout);
        const cpu1 = processCpuMs(child.pid!);
        if (cpu0 && cpu1) runs.natsbindCpuMs.push((cpu1.user + cpu1.sys - cpu0.user - cpu0.sys) / CONNECTS);
        const s = await connects(CONNECTS, concurrency, withCreds);
        runs.callout.push(c.times);
        runs.creds.push(s.times);
        runs.cps.callout.push(c.perSecond);
        runs.cps.creds.push(s.perSecond);
      }
      const p = (sets: number[][], q: number) => median(sets.map((times) => percentile(times, q)));
      const r = {
        concurrency,
        callout: {
          perSecond: median(runs.cps.callout),
          p50: p(runs.callout, 50),
          p99: p(runs.callout, 99),
          natsbindCpuMsPerConnect: runs.natsbindCpuMs.length ? median(runs.natsbindCpuMs) : undefined,
        },
        creds: { perSecond: median(runs.cps.creds), p50: p(runs.creds, 50), p99: p(runs.creds, 99) },
      };
      results.push(r);
      rows.push(
        [
          `callout, ${concurrency} in flight`,
          fmt(r.callout.perSecond),
          fmt(r.callout.p50, 1),
          fmt(r.callout.p99, 1),
          fmt(r.callout.p99 / r.creds.p99, 2),
          r.callout.natsbindCpuMsPerConnect === undefined ? "-" : fmt(r.callout.natsbindCpuMsPerConnect, 2),
        ],
        [
          `static creds, ${concurrency} in flight`,
          fmt(r.creds.perSecond),
          fmt(r.creds.p50, 1),
          fmt(r.creds.p99, 1),
          "1.00",
          "-",
        ],
      );
    }
    log(
      `\nauth callout connects (natsbind ${pinned ? "pinned to core 0" : "not pinned: no taskset"}; ${CONNECTS} connects x ${ROUNDS} rounds, medians)`,
    );
    log(table(["client", "connects/s", "p50 ms", "p99 ms", "p99 vs creds", "natsbind CPU ms/connect"], rows));
    const single = (results[0] as { callout: { p99: number } }).callout.p99;
    log(`target: callout connect p99 < 25 ms (one client): ${fmt(single, 1)} ms ${verdict(single < 25)}`);
    log(
      "16 in flight: throughput; on a 2-core machine nats-server and this load generator share the core " +
        "natsbind is not pinned to, so compare natsbind's CPU per connect with the connect rate",
    );
    await writeResults("callout.json", {
      env: benchEnv({ pinned }),
      connects: CONNECTS,
      rounds: ROUNDS,
      results,
    });
  } catch (err) {
    const logs = readFileSync(join(dir, "natsbind.log"), "utf8").trim().split("\n");
    console.error(`natsbind's last log lines:\n${logs.slice(-15).join("\n")}`);
    const audit = readFileSync(join(dir, "audit.log"), "utf8").trim().split("\n");
    console.error(
      `refusals in the audit log:\n${audit
        .filter((l) => l.includes("refused"))
        .slice(-5)
        .join("\n")}`,
    );
    throw err;
  } finally {
    child?.kill("SIGTERM");
    if (child && child.exitCode === null) await new Promise((r) => child!.once("exit", r));
    await sim.stop();
    await server.stop();
    await op.remove();
    await removeDir(dir);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
