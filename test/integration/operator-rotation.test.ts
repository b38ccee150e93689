// Operator signing-key rotation end to end on a 3-node cluster: `natsbind operator add-signing-key`
// -> rolling restart with the new operator JWT -> `activate` (refused until every server trusts
// the key) -> `retire` (refused while any server holds an account the old key signed) -> rolling
// restart; `natsbind run` (local mode) keeps running through it and ends up signing with the new
// key, never pushing the old key's signature again. Real nats-servers, the GitLab simulator and
// the natsbind CLI as a user runs it.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFile, mkdir, readFile, stat, writeFile, access } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { connect, credsAuthenticator, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { loadConfig, type Config } from "../../src/config/config.ts";
import { INIT_LAYOUT } from "../../src/cli/init.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import { accountClaims, decodeJwt, readJwt, signJwt } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { runController, type RunningController } from "../../src/main.ts";
import { ManualClock } from "../../src/runtime/clock.ts";
import { GitLabSimulator } from "../support/gitlab-sim.ts";
import { startNatsCluster, type NatsCluster } from "../support/nats-server.ts";
import {
  createTestOperator,
  operatorResolver,
  roleUserCreds,
  watchStatus,
  type TestOperator,
} from "../support/operator.ts";
import { REPO_ROOT, removeDir, tempDir, waitFor } from "../support/process.ts";

const exec = promisify(execFile);
const MAIN = join(REPO_ROOT, "src", "cli", "main.ts");
const SECRET = "webhook-secret-for-operator-rotation";

async function natsbind(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [MAIN, ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

function ok(r: { code: number; stdout: string; stderr: string }, what: string): string {
  assert.equal(r.code, 0, `${what}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

function refused(r: { code: number; stdout: string; stderr: string }, match: RegExp): string {
  assert.equal(r.code, 1, `expected a refusal, got ${r.code}: ${r.stdout}${r.stderr}`);
  assert.match(r.stderr, match);
  return r.stderr;
}

const bindingYaml = `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: acme}
spec:
  gitlab: {group: acme}
  roles:
    - name: ci
      publish: {allow: ["build.status.{{project.slug}}.>"]}
      subscribe: {allow: ["_INBOX.>", "build.status.{{project.slug}}.>"]}
`;

interface Pushed {
  account: string;
  iss: string;
  at: number;
}

describe("operator signing-key rotation (3-node cluster, natsbind run)", { timeout: 300_000 }, () => {
  let op: TestOperator;
  let cluster: NatsCluster;
  let sim: GitLabSimulator;
  let dir: string;
  let configFile: string;
  let config: Config;
  let controller: RunningController | undefined;
  let resolver: NatsResolver;
  let watcher: NatsConnection;
  let pushWatch: Subscription;
  let groupId: number;
  let oldKey: string;
  let newKey: string;
  let activatedAt = Infinity;
  let reconciles = 0;
  const pushes: Pushed[] = [];
  const logLines: string[] = [];
  const clock = new ManualClock(Date.now());
  const projects: number[] = [];
  let stranger: TestOperator;

  const file = (name: string): string => join(dir, name);
  const opFile = (name: string): string => join(op.dir, name);
  const keys = (): DirectoryKeyStore => new DirectoryKeyStore(config.keys.directory);
  const logged = (msg: string): boolean =>
    logLines.some((l) => (JSON.parse(l) as { msg?: string }).msg === msg);

  async function accountOf(projectId: number): Promise<string> {
    let account: string | undefined;
    await waitFor(
      async () => {
        account = (await keys().get({ binding: "acme", projectId }))?.account;
        return account !== undefined && (await resolver.lookup(account)) !== undefined;
      },
      { what: `account of project ${projectId}`, timeoutMs: 20_000, intervalMs: 25 },
    );
    return account!;
  }

  /** Issuer of the copy of `account` on each server (every server answers a lookup). */
  async function issuersOnEveryServer(account: string): Promise<string[]> {
    const copies = await resolver.lookupOnEveryServer(account);
    return copies.map((jwt) => (jwt === undefined ? "none" : readJwt(jwt).claims.iss));
  }

  async function rollingRestart(jwtPath: string): Promise<void> {
    const jwt = (await readFile(jwtPath, "utf8")).trim();
    for (const server of cluster.servers) {
      await server.restart({ operatorJwt: jwt });
      await cluster.waitForRoutes(30_000);
    }
  }

  async function clientOf(projectId: number, servers: string[]): Promise<NatsConnection> {
    const slot = (await keys().get({ binding: "acme", projectId }))!;
    const creds = roleUserCreds(slot.account, slot.roleKeys.get("ci")!, { name: "job" });
    return connect({
      servers,
      authenticator: credsAuthenticator(creds),
      maxReconnectAttempts: -1,
      reconnectTimeWait: 100,
      timeout: 5_000,
    });
  }

  async function roundTrip(nc: NatsConnection, slug: string): Promise<void> {
    const sub = nc.subscribe(`build.status.${slug}.>`, { max: 1 });
    const got = (async () => {
      for await (const m of sub) return m.string();
      return undefined;
    })();
    await nc.flush();
    nc.publish(`build.status.${slug}.main`, "green");
    assert.equal(await got, "green");
  }

  before(async () => {
    op = await createTestOperator();
    stranger = await createTestOperator();
    oldKey = op.signingKey.publicKey;
    cluster = await startNatsCluster(3, op.serverOptions);
    sim = await GitLabSimulator.start();
    dir = await tempDir("op-rotation");
    await mkdir(file("bindings"));
    await writeFile(file("token"), sim.token);
    await writeFile(file("secret"), SECRET);
    await writeFile(file("bindings/acme.yaml"), bindingYaml);
    const acme = sim.createGroup({ name: "Acme", path: "acme" });
    groupId = acme.id;
    for (const name of ["api", "web", "docs"]) projects.push(sim.createProject({ name, groupId }).id);
    configFile = file("natsbind.yaml");
    await writeFile(
      configFile,
      [
        "nats:",
        `  servers: ${JSON.stringify(cluster.urls)}`,
        `  systemCreds: ${opFile(INIT_LAYOUT.systemCreds)}`,
        `  operatorSigningKey: ${opFile(INIT_LAYOUT.operatorSigningKey)}`,
        `  operatorJwt: ${opFile(INIT_LAYOUT.operatorJwt)}`,
        "gitlab:",
        `  url: ${sim.url}`,
        "  tokenFile: token",
        "  webhookSecretFile: secret",
        "  resyncInterval: 1h",
        "http:",
        '  listen: "127.0.0.1:0"',
        "",
      ].join("\n"),
    );
    config = await loadConfig(configFile);
    resolver = await operatorResolver(op, cluster.urls);
    // Every account JWT anyone pushes passes here: who signed it, and when.
    watcher = await connect({
      servers: cluster.urls,
      authenticator: credsAuthenticator(op.systemCreds),
      maxReconnectAttempts: -1,
      reconnectTimeWait: 100,
    });
    pushWatch = watcher.subscribe("$SYS.REQ.CLAIMS.UPDATE");
    void (async () => {
      for await (const m of pushWatch) {
        const { claims } = readJwt(m.string());
        pushes.push({ account: claims.sub, iss: claims.iss, at: performance.now() });
      }
    })();
    await watcher.flush();
  });

  after(async () => {
    await controller?.stop();
    await watcher?.close();
    await resolver?.close();
    await sim?.stop();
    await cluster?.stop();
    await op?.remove();
    await stranger?.remove();
    if (dir) await removeDir(dir);
  });

  it("natsbind run pushes every project's account, signed by the operator's signing key", async () => {
    controller = await runController(config, {
      clock,
      log: createLogger({ write: (line) => void logLines.push(line) }),
      onReconciled: () => void reconciles++,
    });
    sim.addSystemHook(`${controller.url}/webhooks/gitlab`, SECRET);
    for (const id of projects) {
      const account = await accountOf(id);
      assert.deepEqual(await issuersOnEveryServer(account), [oldKey, oldKey, oldKey]);
    }
  });

  it("status reads every server's trusted signing keys and who signed the accounts", async () => {
    const s = JSON.parse(
      ok(await natsbind("operator", "status", "--config", configFile, "--json"), "status"),
    );
    assert.equal(s.operator, op.operator);
    assert.equal(s.systemAccount, op.systemAccount);
    assert.equal(s.natsbindKey, oldKey);
    assert.deepEqual(
      s.servers.map((x: { server: string; operators: Array<{ signingKeys: string[] }> }) => [
        x.server,
        x.operators[0]!.signingKeys,
      ]),
      cluster.servers.map((x) => [x.name, [oldKey]]),
    );
    const mine = s.keys.find((k: { key: string }) => k.key === oldKey);
    // The three project accounts plus the system account init made (not natsbind's: no tags).
    assert.equal(mine.accounts, 4);
    assert.equal(mine.natsbindAccounts, 3);
    assert.equal(mine.trustedBy.length, 3);
  });

  it("add-signing-key refuses a wrong identity seed, another operator's JWT and a truncated seed", async () => {
    const args = (seed: string, jwt: string, out: string): string[] => [
      "operator",
      "add-signing-key",
      "--operator-seed",
      seed,
      "--operator-jwt",
      jwt,
      "--out-jwt",
      file(`${out}.jwt`),
      "--out-seed",
      file(`${out}.nk`),
    ];
    const opJwt = opFile(INIT_LAYOUT.operatorJwt);
    refused(
      await natsbind(...args(opFile(INIT_LAYOUT.operatorSigningKey), opJwt, "w1")),
      /a signing key of operator .* not its identity key/,
    );
    refused(
      await natsbind(
        ...args(opFile(INIT_LAYOUT.operatorKey), join(stranger.dir, INIT_LAYOUT.operatorJwt), "w2"),
      ),
      /must be the same operator's/,
    );
    const seed = await readFile(opFile(INIT_LAYOUT.operatorKey), "utf8");
    await writeFile(file("truncated.nk"), seed.slice(0, 40), { mode: 0o600 });
    const stderr = refused(
      await natsbind(...args(file("truncated.nk"), opJwt, "w3")),
      /is not a valid nkey seed/,
    );
    assert.ok(!stderr.includes(seed.slice(0, 40)), "the seed is never printed");
    for (const out of ["w1", "w2", "w3"])
      for (const ext of ["jwt", "nk"])
        await assert.rejects(access(file(`${out}.${ext}`)), `no ${out}.${ext} written`);
  });

  it("add-signing-key writes an operator JWT with both keys and the new seed; a re-run reuses it", async () => {
    const args = [
      "operator",
      "add-signing-key",
      "--operator-seed",
      opFile(INIT_LAYOUT.operatorKey),
      "--operator-jwt",
      opFile(INIT_LAYOUT.operatorJwt),
      "--out-jwt",
      file("operator-2.jwt"),
      "--out-seed",
      file("operator-signing-2.nk"),
    ];
    const out = ok(await natsbind(...args), "add-signing-key");
    newKey = /new signing key (O[A-Z0-9]{55})/.exec(out)![1]!;
    assert.equal((await stat(file("operator-signing-2.nk"))).mode & 0o777, 0o600);
    const again = ok(await natsbind(...args), "add-signing-key again");
    assert.match(again, new RegExp(`new signing key ${newKey} \\(reused`));
    const claims = decodeJwt(await readFile(file("operator-2.jwt"), "utf8"));
    assert.deepEqual(claims.nats.signing_keys, [oldKey, newKey]);
    assert.equal(claims.nats.strict_signing_key_usage, true);
    assert.equal(claims.nats.system_account, op.systemAccount);
  });

  it("activate is refused until every server was restarted with the new operator JWT", async () => {
    const activate = (seed: string) =>
      natsbind("operator", "activate", "--config", configFile, "--seed", seed);
    const [n0, n1, n2] = cluster.servers.map((s) => s.name) as [string, string, string];
    refused(
      await activate(file("operator-signing-2.nk")),
      new RegExp(`server ${n0} does not trust ${newKey}: deploy the new operator JWT and restart it`),
    );
    // A key no server trusts (not even in the new JWT).
    const rogue = NKeyPair.generate("operator");
    await writeFile(file("rogue.nk"), `${new TextDecoder().decode(rogue.getSeed())}\n`, { mode: 0o600 });
    refused(await activate(file("rogue.nk")), new RegExp(`server ${n2} does not trust ${rogue.publicKey}`));

    const newJwt = (await readFile(file("operator-2.jwt"), "utf8")).trim();
    for (const server of cluster.servers.slice(0, 2)) {
      await server.restart({ operatorJwt: newJwt });
      await cluster.waitForRoutes(30_000);
    }
    // n2 is given the new operator JWT but only reloaded: nats-server refuses that change.
    const n2server = cluster.servers[2]!;
    await writeFile(join(n2server.dir, "op.jwt"), `${newJwt}\n`);
    n2server.process().child.kill("SIGHUP");
    await waitFor(async () => /config reload not supported for TrustedOperators/.test(n2server.logs()), {
      what: "nats-server to refuse the operator change on reload",
      timeoutMs: 10_000,
      intervalMs: 50,
    });
    const stderr = refused(
      await activate(file("operator-signing-2.nk")),
      new RegExp(`server ${n2} does not trust`),
    );
    assert.ok(!stderr.includes(`server ${n0} does not`) && !stderr.includes(`server ${n1} does not`), stderr);
    assert.match(stderr, /2 of 3 servers trust it/);
    const seed = await readFile(opFile(INIT_LAYOUT.operatorSigningKey), "utf8");
    assert.equal(NKeyPair.fromSeed(seed).publicKey, oldKey, "natsbind's key is unchanged");

    await n2server.restart({ operatorJwt: newJwt });
    await cluster.waitForRoutes(30_000);
    // natsbind.yaml's nats.operatorJwt must list the key natsbind is to sign with.
    refused(await activate(file("operator-signing-2.nk")), /nats\.operatorJwt .* does not list/);
  });

  it("activate re-signs every natsbind account; their clients stay connected; natsbind run follows", async () => {
    // The runbook's step: natsbind's copy of the operator JWT lists the new key too.
    await copyFile(file("operator-2.jwt"), opFile(INIT_LAYOUT.operatorJwt));
    await waitFor(async () => logged("operator JWT re-read"), {
      what: "natsbind run to re-read the operator JWT",
      timeoutMs: 10_000,
      intervalMs: 25,
    });
    const nc = await clientOf(projects[0]!, [cluster.urls[0]!]);
    const events = watchStatus(nc);
    try {
      await roundTrip(nc, "api");
      const activated = await natsbind(
        "operator",
        "activate",
        "--config",
        configFile,
        "--seed",
        file("operator-signing-2.nk"),
      );
      const out = ok(activated, "activate");
      activatedAt = performance.now();
      assert.equal(activated.stderr, "", "no progress line when stderr is not a terminal");
      assert.match(out, new RegExp(`natsbind signs with ${newKey} \\(was ${oldKey}\\)`));
      assert.match(out, /re-signed 3 account\(s\)/);
      assert.match(
        out,
        new RegExp(`left alone: 1 account\\(s\\) signed by ${oldKey} that are not natsbind's`),
      );
      for (const id of projects)
        assert.deepEqual(await issuersOnEveryServer(await accountOf(id)), [newKey, newKey, newKey]);
      assert.deepEqual(await issuersOnEveryServer(op.systemAccount), [oldKey, oldKey, oldKey]);
      // The same claims, re-signed: the connected client never noticed.
      await roundTrip(nc, "api");
      assert.deepEqual(
        events.all.filter((e) => /disconnect|reconnect|close|error/.test(e)),
        [],
        "no disconnect or error",
      );
    } finally {
      await nc.close();
    }
    const seed = (f: string) => readFile(f, "utf8").then((t) => NKeyPair.fromSeed(t).publicKey);
    assert.equal(await seed(opFile(INIT_LAYOUT.operatorSigningKey)), newKey);
    assert.equal(await seed(`${opFile(INIT_LAYOUT.operatorSigningKey)}.previous`), oldKey);
    assert.equal((await stat(opFile(INIT_LAYOUT.operatorSigningKey))).mode & 0o777, 0o600);
    await waitFor(async () => logged("operator signing key changed: natsbind signs with the new key"), {
      what: "natsbind run to take the new signing key",
      timeoutMs: 10_000,
      intervalMs: 25,
    });
    // Idempotent: nothing left to re-sign. Run on a terminal (util-linux script(1) gives it a pty):
    // a progress line counts the accounts.
    const command = [
      MAIN,
      "operator",
      "activate",
      "--config",
      configFile,
      "--seed",
      file("operator-signing-2.nk"),
    ];
    const { stdout: again } = await exec(
      "script",
      ["-qec", [process.execPath, ...command].map((a) => `'${a}'`).join(" "), "/dev/null"],
      { timeout: 60_000 },
    );
    assert.match(again, /re-signing: \d+\/\d+ accounts/);
    assert.match(again, /re-signed 0 account\(s\)/);
    assert.match(again, /\(already\)/);
  });

  it("natsbind run signs new and drifted accounts with the new key only", async () => {
    const id = sim.createProject({ name: "ops", groupId }).id;
    projects.push(id);
    await sim.deliverPending();
    const account = await accountOf(id);
    assert.deepEqual(await issuersOnEveryServer(account), [newKey, newKey, newKey]);
    // A drift check: every binding reconciled again against what the resolver holds.
    const before = pushes.length;
    const reconciled = reconciles;
    clock.advance(2 * 3_600_000);
    await waitFor(async () => reconciles > reconciled, {
      what: "a drift reconcile",
      timeoutMs: 10_000,
      intervalMs: 25,
    });
    const old = pushes.filter((p) => p.iss === oldKey && p.at > activatedAt);
    assert.deepEqual(old, [], "no account pushed with the old key after activate");
    assert.ok(pushes.length >= before);
  });

  it("retire is refused while an account on any server is still signed by the old key", async () => {
    const retire = (key: string, jwt = file("operator-2.jwt"), seed = opFile(INIT_LAYOUT.operatorKey)) =>
      natsbind(
        "operator",
        "retire",
        "--config",
        configFile,
        "--key",
        key,
        "--operator-seed",
        seed,
        "--operator-jwt",
        jwt,
        "--out-jwt",
        file("operator-3.jwt"),
      );
    refused(await retire(newKey), new RegExp(`natsbind still signs with ${newKey}`));
    refused(await retire(oldKey, join(stranger.dir, INIT_LAYOUT.operatorJwt)), /must be the same operator's/);
    // Another operator's JWT (listing these keys too), with its own identity key: the servers
    // do not trust that operator.
    const strangerKey = NKeyPair.fromSeed(
      await readFile(join(stranger.dir, INIT_LAYOUT.operatorKey), "utf8"),
    );
    const strangerClaims = decodeJwt(stranger.operatorJwt);
    await writeFile(
      file("stranger.jwt"),
      signJwt(
        { ...strangerClaims, nats: { ...strangerClaims.nats, signing_keys: [oldKey, newKey] } },
        strangerKey,
        Math.floor(Date.now() / 1000),
      ),
    );
    refused(
      await retire(oldKey, file("stranger.jwt"), join(stranger.dir, INIT_LAYOUT.operatorKey)),
      new RegExp(`does not trust operator ${stranger.operator}`),
    );
    // The system account (init's, no natsbind tags) is still signed by the old key.
    refused(
      await retire(oldKey),
      new RegExp(
        `1 account\\(s\\) are still signed by ${oldKey} \\(${op.systemAccount} on 3 of 3 servers\\)`,
      ),
    );
    // A JWT signed by a key of no trusted operator, tagged like natsbind's: the full resolver stores
    // it anyway (nats-server does not check the issuer on CLAIMS.UPDATE), but activate must never
    // launder it into one the servers trust.
    const rogueKey = NKeyPair.generate("operator");
    const rogueAccount = NKeyPair.generate("account");
    const rogueJwt = signJwt(
      accountClaims(
        {
          publicKey: rogueAccount.publicKey,
          name: "acme/rogue",
          signingKeys: [],
          tags: ["natsbind-binding:acme", "gitlab-project-id:999"],
        },
        rogueKey.publicKey,
      ),
      rogueKey,
      Math.floor(Date.now() / 1000),
    );
    const stored = await watcher.requestMany("$SYS.REQ.CLAIMS.UPDATE", rogueJwt, {
      strategy: "count",
      maxMessages: 3,
      maxWait: 5_000,
    });
    for await (const m of stored) assert.match(m.string(), /jwt updated/);
    const all = ok(
      await natsbind(
        "operator",
        "activate",
        "--config",
        configFile,
        "--seed",
        file("operator-signing-2.nk"),
        "--all-accounts",
      ),
      "activate --all-accounts",
    );
    assert.match(all, /left alone: 1 account\(s\) not issued by this operator/);
    assert.deepEqual(await issuersOnEveryServer(op.systemAccount), [newKey, newKey, newKey]);
    assert.deepEqual(await issuersOnEveryServer(rogueAccount.publicKey), [
      rogueKey.publicKey,
      rogueKey.publicKey,
      rogueKey.publicKey,
    ]);
    await resolver.delete([rogueAccount.publicKey]);

    // One server still holds an old copy of a natsbind account (as if it had missed a push):
    // a lookup answered by another server would not show it.
    const account = await accountOf(projects[1]!);
    const held = readJwt((await resolver.lookup(account))!).claims;
    const { iat: _iat, jti: _jti, ...claims } = held;
    const oldSigner = NKeyPair.fromSeed(
      await readFile(`${opFile(INIT_LAYOUT.operatorSigningKey)}.previous`, "utf8"),
    );
    const stale = signJwt({ ...claims, iss: oldKey }, oldSigner, (held.iat ?? 0) - 1);
    await writeFile(join(cluster.servers[2]!.dir, "jwt", `${account}.jwt`), stale);
    assert.deepEqual((await issuersOnEveryServer(account)).sort(), [newKey, newKey, oldKey].sort());
    refused(await retire(oldKey), new RegExp(`${account} on 1 of 3 servers`));
    assert.equal(
      await access(file("operator-3.jwt")).then(
        () => true,
        () => false,
      ),
      false,
      "nothing written",
    );

    // activate sees that copy too and pushes over it.
    assert.match(
      ok(
        await natsbind(
          "operator",
          "activate",
          "--config",
          configFile,
          "--seed",
          file("operator-signing-2.nk"),
        ),
        "activate",
      ),
      /re-signed 1 account\(s\)/,
    );
    assert.deepEqual(await issuersOnEveryServer(account), [newKey, newKey, newKey]);
  });

  it("retire writes the operator JWT without the old key; after a rolling restart only the new key is trusted", async () => {
    const out = ok(
      await natsbind(
        "operator",
        "retire",
        "--config",
        configFile,
        "--key",
        oldKey,
        "--operator-seed",
        opFile(INIT_LAYOUT.operatorKey),
        "--operator-jwt",
        file("operator-2.jwt"),
        "--out-jwt",
        file("operator-3.jwt"),
      ),
      "retire",
    );
    assert.match(out, /removed the previous seed file/);
    await assert.rejects(access(`${opFile(INIT_LAYOUT.operatorSigningKey)}.previous`));
    const claims = decodeJwt(await readFile(file("operator-3.jwt"), "utf8"));
    assert.deepEqual(claims.nats.signing_keys, [newKey]);
    assert.equal(claims.nats.strict_signing_key_usage, true);

    const nc = await clientOf(projects[0]!, cluster.urls);
    try {
      await copyFile(file("operator-3.jwt"), opFile(INIT_LAYOUT.operatorJwt));
      await rollingRestart(file("operator-3.jwt"));
      // The client reconnected to another server through each restart and still works.
      await waitFor(
        async () => {
          await roundTrip(nc, "api");
          return true;
        },
        { what: "the client to work after the rolling restart", timeoutMs: 15_000, intervalMs: 100 },
      );
    } finally {
      await nc.close();
    }
    const s = JSON.parse(
      ok(await natsbind("operator", "status", "--config", configFile, "--json"), "status"),
    );
    for (const server of s.servers) assert.deepEqual(server.operators[0].signingKeys, [newKey]);
    assert.equal(s.keys.length, 1);
    assert.equal(s.keys[0].key, newKey);
    assert.equal(s.keys[0].accounts, projects.length + 1);
    assert.deepEqual(s.next, [
      "nothing to do: every server trusts natsbind's key and only it signs accounts",
    ]);

    // natsbind run kept running all along and still creates accounts, signed by the new key.
    const id = sim.createProject({ name: "late", groupId }).id;
    await sim.deliverPending();
    assert.deepEqual(await issuersOnEveryServer(await accountOf(id)), [newKey, newKey, newKey]);
    assert.deepEqual(
      pushes.filter((p) => p.iss === oldKey && p.at > activatedAt),
      [],
      "the old key's signature was never pushed again after activate",
    );
    assert.ok(pushes.some((p) => p.iss === newKey));
  });
});
