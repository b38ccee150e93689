/**
 * `natsbind operator activate` on many accounts (`make bench` runs `node bench/operator.ts`): a
 * 3-node nats-server cluster (full resolver) that trusts an operator with two signing keys holds
 * N natsbind accounts signed by the first; activate makes the second natsbind's key and re-signs
 * and pushes every account (each looked up on every server, one push each, acked by every server).
 * Target (issue 11): 10,000 accounts in under 30 s. Also timed: `operator status` (the same scan
 * without pushes) and a second activate (nothing left to re-sign).
 *
 * Knobs: BENCH_QUICK=1 (2,000 accounts), BENCH_OPERATOR_ACCOUNTS=n, TMPDIR=/dev/shm (resolver dirs
 * on tmpfs: see bench/run.ts on ext4 inode costs).
 */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { INIT_LAYOUT, initOperator } from "../src/cli/init.ts";
import { parseConfig } from "../src/config/config.ts";
import { accountClaims, decodeJwt, operatorClaims, signJwt } from "../src/nats/claims.ts";
import { NKeyPair } from "../src/nats/keys.ts";
import { NatsResolver } from "../src/nats/resolver.ts";
import { activate, operatorStatus } from "../src/operator/phases.ts";
import { mapLimit } from "../src/runtime/concurrency.ts";
import { startNatsCluster, type NatsCluster } from "../test/support/nats-server.ts";
import { removeDir, tempDir } from "../test/support/process.ts";
import { QUICK, benchEnv, fmt, log, processCpuMs, table, verdict, writeResults } from "./common.ts";

const N = Number(process.env.BENCH_OPERATOR_ACCOUNTS ?? (QUICK ? 2_000 : 10_000));
const TARGET_MS = 30_000;

const seedText = (k: NKeyPair): string => `${new TextDecoder().decode(k.getSeed())}\n`;

async function main(): Promise<void> {
  const env = benchEnv({ accounts: N });
  log(`natsbind operator bench: ${fmt(N)} accounts, 3-node cluster, node ${env.node}, ${env.natsServer}`);
  const dir = await tempDir("bench-operator");
  let cluster: NatsCluster | undefined;
  let resolver: NatsResolver | undefined;
  try {
    const init = await initOperator({ outDir: dir, operatorName: "bench" });
    const identity = NKeyPair.fromSeed(await readFile(join(dir, INIT_LAYOUT.operatorKey), "utf8"));
    const oldKey = NKeyPair.fromSeed(await readFile(join(dir, INIT_LAYOUT.operatorSigningKey), "utf8"));
    const newKey = NKeyPair.generate("operator");
    await writeFile(join(dir, "new-signing.nk"), seedText(newKey), { mode: 0o600 });
    // The servers trust both keys from the start: the rolling restart is not what is measured.
    const operatorJwt = signJwt(
      operatorClaims({
        publicKey: identity.publicKey,
        name: "bench",
        signingKeys: [oldKey.publicKey, newKey.publicKey],
        systemAccount: init.systemAccount,
        strictSigningKeyUsage: true,
      }),
      identity,
      Math.floor(Date.now() / 1000),
    );
    await writeFile(join(dir, INIT_LAYOUT.operatorJwt), `${operatorJwt}\n`);
    const systemAccountJwt = (await readFile(join(dir, INIT_LAYOUT.systemAccountJwt), "utf8")).trim();
    cluster = await startNatsCluster(3, {
      operatorJwt,
      systemAccount: init.systemAccount,
      systemAccountJwt,
      name: "bench-operator",
    });
    const config = parseConfig(
      {
        nats: {
          servers: cluster.urls,
          systemCreds: INIT_LAYOUT.systemCreds,
          operatorSigningKey: INIT_LAYOUT.operatorSigningKey,
          operatorJwt: INIT_LAYOUT.operatorJwt,
          timeoutMs: 10_000,
        },
      },
      "bench config",
      dir,
    );
    resolver = await NatsResolver.connect({
      servers: cluster.urls,
      creds: await readFile(join(dir, INIT_LAYOUT.systemCreds)),
      timeoutMs: 10_000,
    });

    log(`[setup] pushing ${fmt(N)} natsbind accounts signed by the old key (untimed)`);
    const iat = Math.floor(Date.now() / 1000) - 60;
    const t0 = performance.now();
    await mapLimit(
      Array.from({ length: N }, (_, i) => i),
      64,
      async (i) => {
        const account = NKeyPair.generate("account");
        const role = NKeyPair.generate("account");
        const claims = accountClaims(
          {
            publicKey: account.publicKey,
            name: `bench/project-${i}`,
            tags: ["natsbind-binding:bench", `gitlab-project-id:${i + 1}`],
            signingKeys: [
              {
                key: role.publicKey,
                role: "ci",
                template: { pub: { allow: [`build.${i}.>`] }, sub: { allow: ["_INBOX.>"] } },
              },
            ],
          },
          oldKey.publicKey,
        );
        await resolver!.push(signJwt(claims, oldKey, iat));
      },
    );
    log(`[setup] pushed in ${fmt((performance.now() - t0) / 1000, 1)} s`);

    const pids = cluster.servers.map((s) => s.process().pid ?? 0);
    const cpuBefore = processCpuMs(...pids);
    const statusMs = await timedMs(() => operatorStatus({ nats: config.nats, resolver: resolver! }));
    log(`[status] ${fmt(statusMs)} ms`);

    const selfBefore = process.cpuUsage();
    const start = performance.now();
    const result = await activate({
      nats: config.nats,
      resolver,
      seedFile: join(dir, "new-signing.nk"),
      ...(process.env.BENCH_CONCURRENCY ? { concurrency: Number(process.env.BENCH_CONCURRENCY) } : {}),
    });
    const activateMs = performance.now() - start;
    const self = process.cpuUsage(selfBefore);
    const cpuAfter = processCpuMs(...pids);
    log(`[activate] ${fmt(activateMs)} ms, re-signed ${fmt(result.resigned)}`);
    const againMs = await timedMs(() =>
      activate({ nats: config.nats, resolver: resolver!, seedFile: join(dir, "new-signing.nk") }),
    );

    // Spot check: what the servers hold now.
    const sample = (await resolver.list()).slice(0, 20);
    for (const account of sample) {
      for (const jwt of await resolver.lookupOnEveryServer(account)) {
        const iss = jwt ? decodeJwt(jwt).iss : "none";
        if (account !== init.systemAccount && iss !== newKey.publicKey)
          throw new Error(`${account} is signed by ${iss} after activate`);
      }
    }

    const rssMb = process.memoryUsage().rss / 1024 / 1024;
    log("");
    log(
      table(
        ["measure", "value"],
        [
          ["accounts re-signed", fmt(result.resigned)],
          ["activate (lookups on 3 servers, one push each)", `${fmt(activateMs / 1000, 1)} s`],
          ["  per account", `${fmt((activateMs / Math.max(1, result.resigned)) * 1000)} µs`],
          ["  natsbind CPU (user+sys)", `${fmt((self.user + self.system) / 1000 / 1000, 1)} s`],
          [
            "  nats-servers CPU (3, user+sys)",
            cpuBefore && cpuAfter
              ? `${fmt((cpuAfter.user + cpuAfter.sys - cpuBefore.user - cpuBefore.sys) / 1000, 1)} s`
              : "n/a",
          ],
          ["activate again (nothing to do)", `${fmt(againMs / 1000, 1)} s`],
          ["operator status (scan only)", `${fmt(statusMs / 1000, 1)} s`],
          ["peak RSS (this process)", `${fmt(rssMb)} MB`],
          [
            `target: ${fmt(N)} accounts < ${TARGET_MS / 1000} s`,
            verdict(activateMs < TARGET_MS * (N / 10_000)),
          ],
        ],
      ),
    );
    await writeResults("operator.json", {
      env,
      activateMs,
      resigned: result.resigned,
      againMs,
      statusMs,
      rssMb,
      targetMs: TARGET_MS,
      pass: activateMs < TARGET_MS * (N / 10_000),
    });
  } finally {
    await resolver?.close();
    await cluster?.stop();
    await removeDir(dir);
  }
}

async function timedMs(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

await main();
