/**
 * make demo: natsbind on the embedded default (local mode), from nothing.
 *  1. natsbind init (operator, system account, nats-server config, natsbind.yaml)
 *  2. a real nats-server in operator mode with a full resolver
 *  3. the GitLab simulator with a group of three projects
 *  4. `natsbind run` (the real CLI, as a child process) with a binding for the group
 *  5. a project created in GitLab -> webhook -> account live on the server: how many ms
 *  6. a CI job of that project exchanges its GitLab ID token for a creds file (POST /v1/credentials,
 *     with curl when the machine has it): one allowed subject, one refused
 *  7. a second CI job connects with nothing but its ID token (NATS auth callout)
 *  8. the audit lines of both jobs (issuances, refusals, connects and disconnects)
 * Everything it starts is stopped at the end, also on failure.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { connect, credsAuthenticator } from "@nats-io/transport-node";
import { INIT_LAYOUT, initOperator } from "../src/cli/init.ts";
import { loadConfig } from "../src/config/config.ts";
import { DirectoryKeyStore } from "../src/keystore/directory.ts";
import { decodeJwt } from "../src/nats/claims.ts";
import { NODE_FLAGS } from "../src/cli/node-flags.ts";
import { connectResolver } from "../src/nats/from-config.ts";
import { GitLabSimulator } from "../test/support/gitlab-sim.ts";

const ROOT = join(import.meta.dirname, "..");
const DEMO = join(ROOT, ".cache", "demo");
const MAIN = join(ROOT, "src", "cli", "main.ts");
const BINDING = "acme-ci";
const AUDIENCE = "https://natsbind.demo";

const say = (text: string): void => console.log(`\n== ${text}`);

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

async function until<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`demo: ${what} did not happen within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function natsbind(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...NODE_FLAGS, MAIN, ...args], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.on("exit", (code) =>
      code === 0 ? resolve(out) : reject(new Error(`natsbind ${args[0]} exited ${code}`)),
    );
  });
}

const children: ChildProcess[] = [];
async function stopAll(): Promise<void> {
  await Promise.all(
    children.map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.exitCode !== null || c.signalCode !== null) return resolve();
          c.once("exit", () => resolve());
          c.kill("SIGTERM");
          setTimeout(() => c.kill("SIGKILL"), 5_000).unref();
        }),
    ),
  );
}

async function main(): Promise<void> {
  const [natsPort, monitorPort, httpPort] = [await freePort(), await freePort(), await freePort()];
  await rm(DEMO, { recursive: true, force: true });

  say(`natsbind init --out ${DEMO}`);
  const init = await initOperator({
    outDir: DEMO,
    operatorName: "demo-operator",
    natsPort,
    monitorPort,
    callout: true,
    audience: AUDIENCE,
  });
  console.log(
    `operator ${init.operator}, signing key ${init.operatorSigningKey}, system account ${init.systemAccount}`,
  );

  console.log("--callout: callout account, natsbind's callout user, a deny-all sentinel (default_sentinel)");
  say("nats-server (operator mode, full resolver, auth callout)");
  const server = spawn("nats-server", ["-c", join(DEMO, INIT_LAYOUT.natsServerConfig)], { stdio: "ignore" });
  children.push(server);
  await until("nats-server ready", 15_000, async () =>
    (await fetch(`http://127.0.0.1:${monitorPort}/healthz`)).ok ? true : undefined,
  );
  console.log(`listening on nats://127.0.0.1:${natsPort}`);

  say("GitLab simulator: group acme with three projects");
  const sim = await GitLabSimulator.start();
  try {
    const acme = sim.createGroup({ name: "Acme", path: "acme" });
    const platform = sim.createGroup({ name: "Platform", path: "platform", parentId: acme.id });
    for (const [name, groupId] of [
      ["api", acme.id],
      ["web", acme.id],
      ["deployer", platform.id],
    ] as const) {
      sim.createProject({ name, groupId });
    }
    console.log(`${sim.url}: ${sim.projectCount} projects`);

    // Point natsbind at the simulator and add a binding for the group.
    await writeFile(join(DEMO, "gitlab-token"), `${sim.token}\n`, { mode: 0o600 });
    await writeFile(join(DEMO, "webhook-secret"), "demo-webhook-secret\n", { mode: 0o600 });
    const configPath = join(DEMO, INIT_LAYOUT.config);
    const config = (await readFile(configPath, "utf8"))
      .replace(/^# gitlab:[\s\S]*?# {3}resyncInterval: 10m\n/m, "")
      .replace('listen: "127.0.0.1:8080"', `listen: "127.0.0.1:${httpPort}"`);
    await writeFile(
      configPath,
      `${config.replace("credentials:\n", "credentials:\n  audit: {file: audit/credentials.log}\n")}` +
        `gitlab:\n  url: ${sim.url}\n  tokenFile: gitlab-token\n  webhookSecretFile: webhook-secret\n  resyncInterval: 10m\n`,
    );
    await writeFile(
      join(DEMO, "bindings", `${BINDING}.yaml`),
      `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: ${BINDING}}
spec:
  gitlab: {group: acme, includeSubgroups: true}
  accountPer: project
  roles:
    - name: ci
      publish: {allow: ["build.status.{{project.slug}}.>"]}
      subscribe: {allow: ["_INBOX.>", "build.status.{{project.slug}}.>"]}
      ci: {refs: protected}
  limits: {connections: 50, payload: 1Mi}
  deletionPolicy: Delete
`,
    );
    console.log(
      `binding ${BINDING}: group acme, one account per project, role ci (issued to CI jobs on protected refs)`,
    );

    say("natsbind run --config .cache/demo/natsbind.yaml");
    const run = spawn(process.execPath, [...NODE_FLAGS, MAIN, "run", "--config", configPath], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    children.push(run);
    const logs: string[] = [];
    run.stderr!.on("data", (d: Buffer) => logs.push(...d.toString().split("\n").filter(Boolean)));
    await until("natsbind ready", 20_000, async () =>
      (await fetch(`http://127.0.0.1:${httpPort}/readyz`)).ok ? true : undefined,
    );
    const loaded = await loadConfig(configPath);
    const keys = new DirectoryKeyStore(loaded.keys.directory);
    // As natsbind itself: a short-lived system user issued with the system account's signing key.
    const { resolver } = await connectResolver(loaded.nats);
    try {
      await until("three accounts", 20_000, async () =>
        (await keys.list(BINDING)).length === 3 ? true : undefined,
      );
      for (const slot of await keys.list(BINDING)) {
        await until(`account ${slot.account}`, 10_000, async () => resolver.lookup(slot.account));
      }
      console.log(await natsbind(["status", "--config", configPath]));

      say("GitLab: create project acme/platform/worker (system hook -> natsbind)");
      sim.addSystemHook(`http://127.0.0.1:${httpPort}/webhooks/gitlab`, "demo-webhook-secret");
      const started = performance.now();
      const worker = sim.createProject({ name: "worker", groupId: platform.id });
      const [delivery] = await sim.deliverPending();
      const account = await until("worker's account on the server", 10_000, async () => {
        const slot = await keys.get({ binding: BINDING, projectId: worker.id });
        return slot && (await resolver.lookup(slot.account)) ? slot.account : undefined;
      });
      const ms = performance.now() - started;
      console.log(
        `webhook ${delivery?.eventName} answered ${delivery?.status}; account ${account} live after ${ms.toFixed(0)} ms`,
      );
      const claims = decodeJwt((await resolver.lookup(account))!);
      console.log(`name ${claims.name}, tags ${(claims.nats.tags as string[]).join(" ")}`);

      say("CI job 1 of acme/platform/worker: ID token -> POST /v1/credentials -> creds file");
      const token = sim.mintIdToken({ projectId: worker.id, aud: AUDIENCE, extra: { job_id: "4101" } });
      const url = `http://127.0.0.1:${httpPort}/v1/credentials`;
      const credsFile = join(DEMO, "job.creds");
      const viaCurl = await fetchCreds(url, token, credsFile);
      console.log(
        `${viaCurl ? "curl" : "fetch (no curl here)"} -H "Authorization: Bearer $ID_TOKEN" -H "Accept: text/plain" ` +
          `--data '{"role":"ci","ttl":"10m"}' ${url} -o job.creds`,
      );
      const creds = await readFile(credsFile);
      const jwt = /-----BEGIN NATS USER JWT-----\n([^\n]+)\n/.exec(creds.toString())![1]!;
      const user = decodeJwt(jwt);
      console.log(
        `user ${user.sub}, expires ${new Date(user.exp! * 1000).toISOString()}, tags ${(user.nats.tags as string[]).join(" ")}`,
      );
      await publishAllowedAndRefused(
        await connect({ servers: loaded.nats.servers, authenticator: credsAuthenticator(creds) }),
      );

      say("CI job 2 of acme/platform/worker: connects with only its ID token (auth callout)");
      const token2 = sim.mintIdToken({ projectId: worker.id, aud: AUDIENCE, extra: { job_id: "4102" } });
      await publishAllowedAndRefused(await connect({ servers: loaded.nats.servers, token: token2 }));
      const unprotected = sim.mintIdToken({
        projectId: worker.id,
        aud: AUDIENCE,
        ref: "wip",
        refProtected: false,
      });
      const refusedConnect = await connect({ servers: loaded.nats.servers, token: unprotected }).then(
        async (nc) => {
          await nc.close();
          return "connected (unexpected)";
        },
        (err: Error) => err.message,
      );
      console.log(`a job on the unprotected branch "wip": ${refusedConnect}`);

      say(`audit log (${join("audit", "credentials.log")})`);
      const auditPath = join(loaded.keys.directory, "..", "audit", "credentials.log");
      await until("both jobs' disconnects in the audit log", 10_000, async () => {
        const text = await readFile(auditPath, "utf8").catch(() => "");
        return (text.match(/"event":"nats.disconnect"/g) ?? []).length >= 2 ? true : undefined;
      });
      for (const line of (await readFile(auditPath, "utf8")).trim().split("\n")) {
        const e = JSON.parse(line) as Record<string, unknown>;
        const job = e.jobId ?? (e.tags as string[] | undefined)?.find((t) => t.startsWith("job:"))?.slice(4);
        const user = typeof e.userPublicKey === "string" ? `user ${e.userPublicKey.slice(0, 10)}…` : "";
        const sent = e.sent ? `sent ${(e.sent as { msgs: number }).msgs} msgs` : "";
        console.log(
          [e.event, e.via, job !== undefined ? `job ${job}` : "", user, e.reason ?? "", sent]
            .filter(Boolean)
            .join("  "),
        );
      }

      say(`natsbind rotate --binding ${BINDING} --project ${worker.id} --role ci (while a job is connected)`);
      const token3 = sim.mintIdToken({ projectId: worker.id, aud: AUDIENCE, extra: { job_id: "4103" } });
      const job3 = await connect({ servers: loaded.nats.servers, token: token3 });
      const before = (await keys.get({ binding: BINDING, projectId: worker.id }))!.roles.ci!;
      console.log(
        (
          await natsbind([
            "rotate",
            "--config",
            configPath,
            "--binding",
            BINDING,
            "--project",
            String(worker.id),
            "--role",
            "ci",
          ])
        ).trim(),
      );
      const rotated = (await keys.get({ binding: BINDING, projectId: worker.id }))!;
      const listed = (
        decodeJwt((await resolver.lookup(account))!).nats.signing_keys as Array<{ key: string }>
      ).map((k) => k.key);
      console.log(
        `ci key ${before.slice(0, 10)}… -> ${rotated.roles.ci!.slice(0, 10)}…; the account JWT lists both: ${listed.includes(before) && listed.includes(rotated.roles.ci!)}`,
      );
      await job3.flush();
      console.log(
        `job 3 (issued by the old key) still connected: ${!job3.isClosed()}; the old key retires once nothing it issued can be valid`,
      );
      await job3.close();
    } catch (err) {
      // Show what natsbind said before the demo gives up.
      console.error(logs.slice(-10).join("\n"));
      throw err;
    } finally {
      await resolver.close();
    }
    say("stopping natsbind, nats-server and the simulator");
  } finally {
    await stopAll();
    await sim.stop();
  }
  console.log(`done; files are in ${DEMO}`);
}

/** POSTs the token for a creds file, with curl as a job would (fetch when curl is missing). */
async function fetchCreds(url: string, token: string, out: string): Promise<boolean> {
  const args = [
    "-sS",
    "--fail-with-body",
    "-X",
    "POST",
    "-H",
    "@-", // the Authorization header from stdin: the token stays out of the process list
    "-H",
    "Accept: text/plain",
    "-H",
    "Content-Type: application/json",
    "--data",
    '{"role":"ci","ttl":"10m"}',
    "-o",
    out,
    url,
  ];
  const viaCurl = await new Promise<boolean>((resolve, reject) => {
    const child = execFile("curl", args, (err) => {
      if (err && (err as NodeJS.ErrnoException).code === "ENOENT") resolve(false);
      else if (err) reject(new Error(`curl failed: ${err.message}`));
      else resolve(true);
    });
    child.stdin?.end(`Authorization: Bearer ${token}\n`);
  });
  if (viaCurl) return true;
  const res = await fetch(url, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, accept: "text/plain", "content-type": "application/json" },
    body: '{"role":"ci","ttl":"10m"}',
  });
  if (!res.ok) throw new Error(`POST /v1/credentials: ${res.status} ${await res.text()}`);
  await writeFile(out, await res.text(), { mode: 0o600 });
  return false;
}

/** Publishes to the job's own subject (received) and to another project's (refused by the server). */
async function publishAllowedAndRefused(nc: Awaited<ReturnType<typeof connect>>): Promise<void> {
  const refused: string[] = [];
  void (async () => {
    for await (const s of nc.status()) if (s.type === "error") refused.push(s.error.message);
  })();
  const sub = nc.subscribe("build.status.worker.>", { max: 1 });
  const got = (async () => {
    for await (const m of sub) return `${m.subject}: ${m.string()}`;
  })();
  nc.publish("build.status.worker.main", "passed");
  console.log(`allowed: published and received ${await got}`);
  nc.publish("build.status.api.main", "spoofed");
  await nc.flush();
  await until("the server's refusal", 5_000, async () => refused[0]);
  console.log(`refused: ${refused[0]}`);
  await nc.close();
}

main().catch(async (err: unknown) => {
  console.error(`demo failed: ${(err as Error).message}`);
  await stopAll();
  process.exit(1);
});
