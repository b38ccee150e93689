/**
 * The environment a runbook (docs/runbooks/) runs against, started for it and stopped after it:
 *
 * - an operator made by the product's own `natsbind init` (the real CLI, in <dir>/operator);
 * - a 3-node nats-server cluster in operator mode with a full resolver trusting it (nats-0..2);
 * - the GitLab simulator with group `acme` and three projects;
 * - `natsbind run` in local mode as a child process (binding file bindings/acme.yaml, the config
 *   natsbind init wrote, pointed at the cluster and the simulator);
 * - with `kubernetes`: a real kube-apiserver + etcd with natsbind's CRDs, namespaces team-a (a
 *   NatsBinding `acme` and a permissive NatsBindingPolicy) and natsbind (the Secret natsbind-nats
 *   as docs/install.md has you create it), a kubeconfig for kubectl, and `natsbind run` in
 *   Kubernetes mode as a second child process.
 *
 * - with `leakedUser` (a runbook that declares USER_KEY): a CI job's user of the first project's
 *   local-mode account (tagged project, pipeline and job), connected to the first server as a
 *   leaked credential would be; USER_KEY and JOB_ID name it. It does not reconnect, so what closed
 *   it stays visible. Only on request: other runbooks expect no connection in that account.
 *
 * What only an environment can do (stop and start natsbind, restart a nats-server, put an operator
 * JWT where a server reads it) are small commands on the runbook's PATH, served by this process:
 * each runbook names them in its Variables section ("provided by your environment"). Starting the
 * Kubernetes-mode natsbind first copies the Secret natsbind-nats into the files its config reads,
 * as a kubelet mounts a Secret when a pod starts.
 */
import { createServer, type Server } from "node:http";
import { randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { spawnSync } from "node:child_process";
import { CoreV1Api, CustomObjectsApi, type KubeConfig, type V1Secret } from "@kubernetes/client-node";
import { connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { parse, stringify } from "yaml";
import { INIT_LAYOUT } from "../../src/cli/init.ts";
import { NODE_FLAGS } from "../../src/cli/node-flags.ts";
import { PLURAL } from "../../src/api/v1alpha1/crd.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import {
  ACCOUNT_SEED_KEY,
  ANNOTATION_ACCOUNT,
  ANNOTATION_ROLES,
  LABEL_PROJECT_ID,
} from "../../src/k8s/secret-keystore.ts";
import { decodeJwt } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { StatusFiles } from "../../src/store/status-files.ts";
import { GitLabSimulator } from "./gitlab-sim.ts";
import { installNatsbindCrds, startKubeApiserver } from "./kube.ts";
import { startNatsCluster, type NatsCluster } from "./nats-server.ts";
import { roleUserCreds } from "./operator.ts";
import { applyPermissivePolicy } from "./policy.ts";
import {
  freePort,
  httpGet,
  ManagedProcess,
  REPO_ROOT,
  removeDir,
  tempDir,
  TOOLS_BIN_DIR,
  waitFor,
} from "./process.ts";

export const BINDING = "acme";
export const ROLE = "ci";
export const NAMESPACE = "team-a";
export const NATSBIND_NAMESPACE = "natsbind";
const PROJECTS = ["api", "web", "worker"];
const SERVERS = 3;

/** One account natsbind holds for a project, with the key to issue its users. */
export interface HeldAccount {
  projectId: number;
  account: string;
  roleKey: NKeyPair;
}

/** natsbind in one mode, as a child process the environment can stop and start. */
interface NatsbindProcess {
  name: string;
  running(): boolean;
  /** True once this process has reconciled its binding (natsbind_reconcile_total, done or requeue). */
  reconciled(): Promise<boolean>;
  start(): Promise<void>;
  stop(): Promise<void>;
  logs(): string;
}

export interface RunbookEnvironment {
  dir: string;
  cluster: NatsCluster;
  sim: GitLabSimulator;
  projectIds: number[];
  /** The operator natsbind init made (its identity key's public key). */
  operator: string;
  /** Everything a runbook may declare, by name. */
  variables: Record<string, string>;
  /** PATH for the runbook: the environment's commands, the tools, node, then the machine's. */
  path: string;
  /** HOME and the like for the runbook's shell. */
  env: Record<string, string>;
  kubernetes: boolean;
  /** The accounts natsbind holds now, per project: local mode's key directory. */
  localAccounts(): Promise<Map<number, HeldAccount>>;
  /** The same from the account Secrets of the Kubernetes-mode natsbind. */
  kubeAccounts(): Promise<Map<number, HeldAccount>>;
  /** Per server name: the accounts its resolver holds ($SYS.REQ.CLAIMS.LIST, every server answers). */
  serverAccounts(): Promise<Map<string, Set<string>>>;
  /** Per server name: the trusted operator's public key, from /varz. */
  trustedOperators(): Promise<Map<string, string>>;
  /**
   * Waits until natsbind (each mode) runs, holds an account for every project, and every server's
   * resolver holds each of them with the role key listed. Throws naming what is missing.
   */
  waitConverged(timeoutMs?: number): Promise<void>;
  /** Connects a user (creds) to every server on its own and sends a message to itself there. */
  assertClientWorks(creds: Uint8Array, projectId: number, what: string): Promise<void>;
  /** Creds of a fresh user of `held`'s role key, valid an hour. */
  userCreds(held: HeldAccount): Uint8Array;
  /** With `leakedUser`: the connected CI job user (USER_KEY, JOB_ID) and what became of it. */
  leakedUser?: LeakedUser;
  /** Last output of each natsbind process, for failure messages. */
  logs(): string;
  stop(): Promise<void>;
}

/** A user connected before the runbook ran, as a leaked job's credentials would be. */
export interface LeakedUser {
  publicKey: string;
  projectId: number;
  jobId: number;
  /** Status events of its connection ("disconnect", "error: <message>", ...), in order. */
  events: string[];
  isClosed(): boolean;
}

const LEAKED_PIPELINE_ID = 7001;
const LEAKED_JOB_ID = 70011;

function bindingYaml(): string {
  return `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: ${BINDING}}
spec:
  gitlab: {group: acme}
  roles:
    - name: ${ROLE}
      publish: {allow: ["build.{{project.id}}.>"]}
      subscribe: {allow: ["_INBOX.>", "build.{{project.id}}.>"]}
`;
}

/** `natsbind ARGS` through the real CLI entry; throws with its output when it fails. */
function natsbindCli(args: string[]): string {
  const r = spawnSync(process.execPath, [...NODE_FLAGS, join(REPO_ROOT, "src", "cli", "main.ts"), ...args], {
    encoding: "utf8",
    timeout: 30_000,
  });
  if (r.status !== 0)
    throw new Error(`natsbind ${args.join(" ")} failed (${r.status}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

function natsbindProcess(
  name: string,
  config: string,
  url: string,
  before?: () => Promise<void>,
): NatsbindProcess {
  let proc: ManagedProcess | undefined;
  let lastLogs = "";
  return {
    name,
    running: () => proc?.running ?? false,
    async reconciled() {
      const metrics = (await httpGet(`${url}/metrics`)).body;
      const done = [...metrics.matchAll(/^natsbind_reconcile_total\{outcome="(?:done|requeue)"\} (\d+)$/gm)];
      return done.reduce((n, m) => n + Number(m[1]), 0) > 0;
    },
    async start() {
      if (proc?.running) return;
      await before?.();
      proc = new ManagedProcess(
        process.execPath,
        [...NODE_FLAGS, join(REPO_ROOT, "src", "cli", "main.ts"), "run", "--config", config],
        { name, maxLogLines: 400 },
      );
      const started = proc;
      await waitFor(async () => (await httpGet(`${url}/readyz`)).status === 200, {
        what: `${name} /readyz`,
        timeoutMs: 30_000,
        intervalMs: 50,
        failIf: () => started.exitReason(),
      }).catch((err: unknown) => {
        throw started.error(err instanceof Error ? err.message : String(err), err);
      });
    },
    async stop() {
      if (!proc) return;
      await proc.stop();
      lastLogs = proc.logs();
    },
    logs: () => proc?.logs() ?? lastLogs,
  };
}

/** A bash command on the runbook's PATH that asks this process to do `action`. */
function controlScript(url: string, token: string, action: string, usage: string, args: number): string {
  return `#!/usr/bin/env bash
# Provided by the runbook test environment (test/support/runbook-env.ts): ${usage}
set -euo pipefail
[ "$#" -eq ${args} ] || { echo "usage: $(basename "$0") ${usage}" >&2; exit 2; }
params=()
${args >= 1 ? 'params+=(--data-urlencode "server=$1")' : ""}
${args >= 2 ? 'params+=(--data-urlencode "file=$(realpath "$2")")' : ""}
exec curl -sS --fail-with-body --max-time 120 -G -X POST "\${params[@]}" -H "Authorization: Bearer ${token}" "${url}/${action}"
`;
}

export async function startRunbookEnvironment(o: {
  name: string;
  kubernetes: boolean;
  leakedUser?: boolean;
}): Promise<RunbookEnvironment> {
  const cleanups: Array<() => Promise<unknown>> = [];
  const stopAll = async (): Promise<void> => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  };
  try {
    // kube-apiserver takes the longest to start: it starts first, beside everything else.
    const kubeStarting = o.kubernetes ? startKubeApiserver() : undefined;
    if (kubeStarting) cleanups.push(async () => (await kubeStarting).stop());
    const dir = await tempDir(`runbook-${o.name}`);
    cleanups.push(() => removeDir(dir));
    const opDir = join(dir, "operator");
    const binDir = join(dir, "bin");
    const home = join(dir, "home");
    for (const d of [binDir, home, join(dir, "backups"), join(dir, "work")])
      await mkdir(d, { recursive: true });

    // The operator, made by the product's own command.
    natsbindCli(["init", "--out", opDir, "--name", "runbooks"]);
    const operatorJwt = (await readFile(join(opDir, INIT_LAYOUT.operatorJwt), "utf8")).trim();
    const systemAccountJwt = (await readFile(join(opDir, INIT_LAYOUT.systemAccountJwt), "utf8")).trim();
    const operator = decodeJwt(operatorJwt).sub;
    const systemAccount = decodeJwt(systemAccountJwt).sub;
    const systemCreds = await readFile(join(opDir, INIT_LAYOUT.systemCreds));

    const [cluster, sim] = await Promise.all([
      startNatsCluster(SERVERS, { name: "nats", operatorJwt, systemAccount, systemAccountJwt }),
      GitLabSimulator.start(),
    ]);
    cleanups.push(
      () => cluster.stop(),
      () => sim.stop(),
    );
    const acme = sim.createGroup({ name: "Acme", path: "acme" });
    const projectIds = PROJECTS.map((name) => sim.createProject({ name, groupId: acme.id }).id);

    const nc: NatsConnection = await connect({
      servers: cluster.urls,
      authenticator: credsAuthenticator(systemCreds),
      maxReconnectAttempts: -1,
      reconnectTimeWait: 100,
    });
    cleanups.push(() => nc.close());

    // natsbind.yaml as init wrote it, pointed at the cluster and the simulator.
    const configPath = join(opDir, INIT_LAYOUT.config);
    const localPort = await freePort();
    const config = parse(await readFile(configPath, "utf8")) as Record<string, Record<string, unknown>>;
    config.nats!.servers = cluster.urls;
    config.gitlab = { url: sim.url, tokenFile: "gitlab-token", resyncInterval: "1h" };
    config.http = { listen: `127.0.0.1:${localPort}` };
    await writeFile(join(opDir, "gitlab-token"), sim.token, { mode: 0o600 });
    await writeFile(configPath, stringify(config));
    await writeFile(join(opDir, INIT_LAYOUT.bindingsDir, `${BINDING}.yaml`), bindingYaml());
    const keysDir = join(opDir, INIT_LAYOUT.accountKeyDir);
    const stateDir = join(opDir, "state");

    const local = natsbindProcess("natsbind-local", configPath, `http://127.0.0.1:${localPort}`);
    cleanups.push(() => local.stop());
    const processes: NatsbindProcess[] = [local];

    let kc: KubeConfig | undefined;
    let core: CoreV1Api | undefined;
    const kubeDir = join(dir, "k8s");
    const kubeVariables: Record<string, string> = {};
    if (kubeStarting) {
      kc = (await kubeStarting).kubeConfig();
      core = kc.makeApiClient(CoreV1Api);
      await installNatsbindCrds(kc);
      for (const name of [NAMESPACE, NATSBIND_NAMESPACE])
        await core.createNamespace({ body: { metadata: { name } } });
      await applyPermissivePolicy(kc, "acme", ["acme"]);
      await kc.makeApiClient(CustomObjectsApi).createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: NAMESPACE,
        plural: PLURAL,
        body: parse(bindingYaml()) as object,
      });
      // docs/install.md step 3: the Secret natsbind-nats, from the operator's files.
      const file = async (p: string): Promise<string> =>
        Buffer.from(await readFile(join(opDir, p))).toString("base64");
      await core.createNamespacedSecret({
        namespace: NATSBIND_NAMESPACE,
        body: {
          metadata: { name: "natsbind-nats" },
          data: {
            "system.creds": await file(INIT_LAYOUT.systemCreds),
            "operator-signing.nk": await file(INIT_LAYOUT.operatorSigningKey),
            "operator.jwt": await file(INIT_LAYOUT.operatorJwt),
          },
        },
      });
      const mount = join(kubeDir, "mount", "nats");
      await mkdir(mount, { recursive: true, mode: 0o700 });
      await writeFile(join(kubeDir, "kubeconfig"), kc.exportConfig(), { mode: 0o600 });
      await writeFile(join(kubeDir, "gitlab-token"), sim.token, { mode: 0o600 });
      const kubePort = await freePort();
      const kubeConfigPath = join(kubeDir, "natsbind.yaml");
      await writeFile(
        kubeConfigPath,
        stringify({
          mode: "kubernetes",
          nats: {
            servers: cluster.urls,
            systemCreds: join(mount, "system.creds"),
            operatorSigningKey: join(mount, "operator-signing.nk"),
            operatorJwt: join(mount, "operator.jwt"),
          },
          gitlab: { url: sim.url, tokenFile: "gitlab-token", resyncInterval: "1h" },
          kubernetes: { kubeconfig: "kubeconfig", leaderElection: { namespace: NATSBIND_NAMESPACE } },
          http: { listen: `127.0.0.1:${kubePort}` },
        }),
      );
      const coreApi = core;
      // A pod's start: the Secret's keys become the files of its volume.
      const mountSecret = async (): Promise<void> => {
        const secret = await coreApi.readNamespacedSecret({
          namespace: NATSBIND_NAMESPACE,
          name: "natsbind-nats",
        });
        for (const [key, value] of Object.entries(secret.data ?? {}))
          await writeFile(join(mount, key), Buffer.from(value, "base64"), { mode: 0o600 });
      };
      const inKube = natsbindProcess(
        "natsbind-k8s",
        kubeConfigPath,
        `http://127.0.0.1:${kubePort}`,
        mountSecret,
      );
      cleanups.push(() => inKube.stop());
      processes.push(inKube);
      Object.assign(kubeVariables, {
        KUBECONFIG: join(kubeDir, "kubeconfig"),
        NAMESPACE,
        NATSBIND_NAMESPACE,
        STOP_NATSBIND_K8S: "natsbind-test-stop-k8s",
        START_NATSBIND_K8S: "natsbind-test-start-k8s",
      });
    }

    // The commands only an environment can provide, served here.
    const token = randomBytes(24).toString("hex");
    const byName = (name: string) => {
      const server = cluster.servers.find((s) => s.name === name);
      if (!server)
        throw new Error(
          `no server ${JSON.stringify(name)} (servers: ${cluster.servers.map((s) => s.name).join(" ")})`,
        );
      return server;
    };
    const actions: Record<string, (q: URLSearchParams) => Promise<string>> = {
      "natsbind/stop": async () => (await local.stop(), "natsbind (local mode) stopped\n"),
      "natsbind/start": async () => (await local.start(), "natsbind (local mode) started\n"),
      "natsbind-k8s/stop": async () => (await processes[1]!.stop(), "natsbind (Kubernetes mode) stopped\n"),
      "natsbind-k8s/start": async () => (await processes[1]!.start(), "natsbind (Kubernetes mode) started\n"),
      "nats/restart": async (q) => {
        const server = byName(q.get("server") ?? "");
        await server.restart({ lameDuck: true });
        await cluster.waitForRoutes();
        return `${server.name} restarted (lame duck mode first) and routed to its peers\n`;
      },
      "nats/operator": async (q) => {
        const server = byName(q.get("server") ?? "");
        const jwt = (await readFile(q.get("file") ?? "", "utf8")).trim();
        if (decodeJwt(jwt, "operator JWT").nats.type !== "operator") throw new Error("not an operator JWT");
        await writeFile(join(server.dir, "op.jwt"), `${jwt}\n`);
        return `${server.name} will trust this operator JWT from its next start\n`;
      },
    };
    const control: Server = createServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://localhost");
      const action = actions[url.pathname.slice(1)];
      if (req.headers.authorization !== `Bearer ${token}` || req.method !== "POST" || !action) {
        res.writeHead(404).end("no such action\n");
        return;
      }
      action(url.searchParams).then(
        (text) => res.writeHead(200).end(text),
        (err: unknown) => res.writeHead(500).end(`${err instanceof Error ? err.message : String(err)}\n`),
      );
    });
    await new Promise<void>((resolve) => control.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => new Promise((resolve) => control.close(resolve)));
    const controlUrl = `http://127.0.0.1:${(control.address() as { port: number }).port}`;
    const scripts: Array<[string, string, string, number]> = [
      ["natsbind-test-stop", "natsbind/stop", "stops natsbind run (local mode)", 0],
      [
        "natsbind-test-start",
        "natsbind/start",
        "starts natsbind run (local mode), returns once it is ready",
        0,
      ],
      ["natsbind-test-stop-k8s", "natsbind-k8s/stop", "stops the natsbind pod (Kubernetes mode)", 0],
      ["natsbind-test-start-k8s", "natsbind-k8s/start", "starts the natsbind pod, Secrets mounted", 0],
      [
        "natsbind-test-restart-server",
        "nats/restart",
        "SERVER: restarts it in lame duck mode, returns once it is routed",
        1,
      ],
      [
        "natsbind-test-install-operator-jwt",
        "nats/operator",
        "SERVER FILE: where SERVER reads its operator JWT",
        2,
      ],
    ];
    for (const [name, action, usage, args] of scripts) {
      await writeFile(join(binDir, name), controlScript(controlUrl, token, action, usage, args), {
        mode: 0o755,
      });
    }
    await writeFile(
      join(binDir, "natsbind"),
      `#!/usr/bin/env bash\nexec ${JSON.stringify(process.execPath)} ${NODE_FLAGS.join(" ")} ${JSON.stringify(join(REPO_ROOT, "src", "cli", "main.ts"))} "$@"\n`,
      { mode: 0o755 },
    );

    await Promise.all(processes.map((p) => p.start()));

    const serverAccounts = async (): Promise<Map<string, Set<string>>> => {
      const out = new Map<string, Set<string>>();
      const replies = await nc.requestMany("$SYS.REQ.CLAIMS.LIST", "", {
        strategy: "count",
        maxMessages: SERVERS,
        maxWait: 3_000,
      });
      for await (const m of replies) {
        const reply = m.json<{ server: { name: string }; data?: string[] }>();
        out.set(reply.server.name, new Set(reply.data ?? []));
      }
      return out;
    };

    const localAccounts = async (): Promise<Map<number, HeldAccount>> => {
      const store = new DirectoryKeyStore(keysDir);
      const out = new Map<number, HeldAccount>();
      for (const slot of await store.list(BINDING)) {
        const keys = await store.get(slot.ref);
        const roleKey = keys?.roleKeys.get(ROLE);
        if (keys && roleKey)
          out.set(slot.ref.projectId, { projectId: slot.ref.projectId, account: keys.account, roleKey });
      }
      return out;
    };

    const kubeAccounts = async (): Promise<Map<number, HeldAccount>> => {
      const out = new Map<number, HeldAccount>();
      if (!core) return out;
      const list = await core.listNamespacedSecret({
        namespace: NAMESPACE,
        labelSelector: `natsbind.io/binding=${BINDING},${LABEL_PROJECT_ID}`,
      });
      for (const s of list.items as V1Secret[]) {
        const projectId = Number(s.metadata?.labels?.[LABEL_PROJECT_ID]);
        const account = s.metadata?.annotations?.[ANNOTATION_ACCOUNT] ?? "";
        const roles = JSON.parse(s.metadata?.annotations?.[ANNOTATION_ROLES] ?? "{}") as Record<
          string,
          string
        >;
        const seed = s.data?.[`role-${ROLE}.nk`];
        if (!s.data?.[ACCOUNT_SEED_KEY] || !seed || !roles[ROLE]) continue;
        const roleKey = NKeyPair.fromSeed(Buffer.from(seed, "base64").toString("utf8").trim(), "account");
        if (roleKey.publicKey !== roles[ROLE]) continue;
        out.set(projectId, { projectId, account, roleKey });
      }
      return out;
    };

    const converged = async (): Promise<string | undefined> => {
      const stopped = processes.filter((p) => !p.running()).map((p) => p.name);
      if (stopped.length > 0)
        return `${stopped.join(", ")} not running (the runbook must leave natsbind running)`;
      for (const p of processes)
        if (!(await p.reconciled())) return `${p.name} has not reconciled since it started`;
      const held = await serverAccounts();
      if (held.size < SERVERS) return `only ${[...held.keys()].join(", ")} answered CLAIMS.LIST`;
      const modes: Array<[string, Map<number, HeldAccount>]> = [["local", await localAccounts()]];
      if (o.kubernetes) modes.push(["kubernetes", await kubeAccounts()]);
      for (const [mode, accounts] of modes) {
        for (const id of projectIds) {
          const a = accounts.get(id);
          if (!a) return `${mode}: natsbind holds no account for project ${id}`;
          for (const [server, set] of held)
            if (!set.has(a.account))
              return `${mode}: ${server} does not hold account ${a.account} (project ${id})`;
          const jwt = (
            await nc.request(`$SYS.REQ.ACCOUNT.${a.account}.CLAIMS.LOOKUP`, "", { timeout: 2_000 })
          ).string();
          const keys = JSON.stringify(decodeJwt(jwt).nats.signing_keys ?? []);
          if (!keys.includes(a.roleKey.publicKey))
            return `${mode}: the resolver's JWT of ${a.account} does not list role key ${a.roleKey.publicKey}`;
        }
      }
      if (o.kubernetes) {
        const binding = (await kc!.makeApiClient(CustomObjectsApi).getNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace: NAMESPACE,
          plural: PLURAL,
          name: BINDING,
        })) as { status?: { conditions?: Array<{ type: string; status: string; message?: string }> } };
        const ready = binding.status?.conditions?.find((c) => c.type === "Ready");
        if (ready?.status !== "True")
          return `kubernetes: NatsBinding ${NAMESPACE}/${BINDING} not Ready: ${ready?.message}`;
      }
      const status = await new StatusFiles(stateDir).read(BINDING);
      const ready = status?.conditions.find((c) => c.type === "Ready");
      if (ready?.status !== "True") return `local: binding ${BINDING} not Ready: ${ready?.message}`;
      return undefined;
    };

    const userCreds = (held: HeldAccount): Uint8Array =>
      roleUserCreds(held.account, held.roleKey, {
        name: "runbook-check",
        expiresAt: Math.floor(Date.now() / 1000) + 3600,
      });

    const assertClientWorks = async (creds: Uint8Array, projectId: number, what: string): Promise<void> => {
      for (const server of cluster.servers) {
        let client: NatsConnection;
        try {
          client = await connect({
            servers: server.url,
            authenticator: credsAuthenticator(creds),
            maxReconnectAttempts: 0,
            timeout: 5_000,
          });
        } catch (err) {
          throw new Error(
            `${what}: cannot connect to ${server.name}: ${err instanceof Error ? err.message : String(err)}`,
            {
              cause: err,
            },
          );
        }
        try {
          const subject = `build.${projectId}.runbook-check`;
          const sub = client.subscribe(subject, { max: 1, timeout: 5_000 });
          const got = (async () => {
            for await (const m of sub) return m.string();
            return undefined;
          })();
          await client.flush();
          client.publish(subject, server.name);
          if ((await got) !== server.name) throw new Error(`${what}: no message through ${server.name}`);
        } finally {
          await client.close();
        }
      }
    };

    const waitConverged = async (timeoutMs = 60_000): Promise<void> => {
      let problem: string | undefined = "not checked yet";
      await waitFor(
        async () => {
          problem = await converged();
          return problem === undefined;
        },
        { what: "natsbind to converge", timeoutMs, intervalMs: 100 },
      ).catch((err: unknown) => {
        throw new Error(`${err instanceof Error ? err.message : String(err)}: ${problem}`, { cause: err });
      });
    };

    await waitConverged();

    const leakedUser = o.leakedUser ? await connectLeakedUser() : undefined;
    async function connectLeakedUser(): Promise<LeakedUser> {
      const held = (await localAccounts()).get(projectIds[0]!)!;
      const key = NKeyPair.generate("user");
      const connection = await connect({
        servers: cluster.urls[0]!,
        authenticator: credsAuthenticator(
          roleUserCreds(held.account, held.roleKey, {
            user: key,
            name: "leaked-job",
            tags: [`project:${projectIds[0]}`, `pipeline:${LEAKED_PIPELINE_ID}`, `job:${LEAKED_JOB_ID}`],
            expiresAt: Math.floor(Date.now() / 1000) + 3600,
          }),
        ),
        maxReconnectAttempts: 0,
        timeout: 5_000,
      });
      cleanups.push(() => connection.close());
      const events: string[] = [];
      void (async () => {
        for await (const st of connection.status())
          events.push(st.type === "error" ? `error: ${st.error.message}` : st.type);
      })();
      return {
        publicKey: key.publicKey,
        projectId: projectIds[0]!,
        jobId: LEAKED_JOB_ID,
        events,
        isClosed: () => connection.isClosed(),
      };
    }

    const systemPath = process.env.PATH ?? "/usr/bin:/bin";
    return {
      dir,
      cluster,
      sim,
      projectIds,
      operator,
      kubernetes: o.kubernetes,
      variables: {
        NATSBIND: join(binDir, "natsbind"),
        NATSBIND_CONFIG: configPath,
        OPERATOR_DIR: opDir,
        KEYS_DIR: keysDir,
        STATE_DIR: stateDir,
        BINDING,
        ROLE,
        PROJECT_ID: String(projectIds[0]),
        ...(leakedUser ? { USER_KEY: leakedUser.publicKey, JOB_ID: String(leakedUser.jobId) } : {}),
        NATS_URL: cluster.urls[0]!,
        SERVERS: cluster.servers.map((s) => s.name).join(" "),
        MONITOR_URLS: cluster.servers.map((s) => s.monitorUrl).join(" "),
        BACKUP_DIR: join(dir, "backups"),
        WORK_DIR: join(dir, "work"),
        NSC_DIR: join(dir, "nsc"),
        STOP_NATSBIND: "natsbind-test-stop",
        START_NATSBIND: "natsbind-test-start",
        RESTART_NATS_SERVER: "natsbind-test-restart-server",
        INSTALL_OPERATOR_JWT: "natsbind-test-install-operator-jwt",
        ...kubeVariables,
      },
      path: [binDir, TOOLS_BIN_DIR, dirname(process.execPath), systemPath].join(":"),
      env: { HOME: home, LANG: "C.UTF-8" },
      localAccounts,
      kubeAccounts,
      serverAccounts,
      async trustedOperators() {
        const out = new Map<string, string>();
        for (const s of cluster.servers) {
          const varz = JSON.parse((await httpGet(`${s.monitorUrl}/varz`)).body) as {
            trusted_operators_claim?: Array<{ sub: string }>;
          };
          out.set(s.name, (varz.trusted_operators_claim ?? []).map((c) => c.sub).join(","));
        }
        return out;
      },
      waitConverged,
      assertClientWorks,
      userCreds,
      ...(leakedUser ? { leakedUser } : {}),
      logs: () =>
        processes
          .map((p) => `=== ${p.name} (last lines) ===\n${p.logs().split("\n").slice(-30).join("\n")}`)
          .join("\n"),
      stop: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
