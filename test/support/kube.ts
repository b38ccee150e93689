// A real etcd + kube-apiserver for integration tests (docs/design facts-kube.md step 3): no
// controller-manager, a static admin token in system:masters, self-signed serving certs.
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { request } from "node:https";
import { join } from "node:path";
import {
  ApiextensionsV1Api,
  KubeConfig,
  loadYaml,
  type V1CustomResourceDefinition,
} from "@kubernetes/client-node";
import {
  REPO_ROOT,
  freePort,
  httpGet,
  ManagedProcess,
  removeDir,
  tempDir,
  toolBinary,
  waitFor,
} from "./process.ts";

export interface KubeApiserverOptions {
  /** Readiness deadline for kube-apiserver's /readyz (default 60_000 ms). */
  readyTimeoutMs?: number;
  /** Extra kube-apiserver flags, appended after the defaults (later flags win). */
  extraArgs?: string[];
}

export interface KubeApiserver {
  /** https://127.0.0.1:<port> */
  server: string;
  /** Bearer token of a system:masters user. */
  token: string;
  /** http://127.0.0.1:<port> of etcd. */
  etcdUrl: string;
  /** Temp dir holding etcd data, pki, token file and service-account key. */
  dir: string;
  /** Milliseconds from spawning kube-apiserver until /readyz answered 200. */
  startupMs: number;
  /** A KubeConfig for the admin token (TLS verification off: the serving cert is self-signed). */
  kubeConfig(): KubeConfig;
  /** Last output lines of etcd and kube-apiserver. */
  logs(): string;
  /**
   * Stops kube-apiserver only; etcd and its data stay. Until startApiserver(), clients see
   * connection refused. No-op when already stopped. Default SIGTERM: a graceful stop that ends open
   * watches within 1 s (SIGKILL after 15 s); `{ signal: "SIGKILL" }` is a crash, at once.
   */
  stopApiserver(opts?: { signal?: NodeJS.Signals }): Promise<void>;
  /**
   * Starts kube-apiserver again on the same port, etcd, certificates and token, and waits for
   * /readyz. No-op when it is running.
   */
  startApiserver(): Promise<void>;
  /** stopApiserver(opts) then startApiserver(): clients reconnect to the same URL and see the same data. */
  restartApiserver(opts?: { signal?: NodeJS.Signals }): Promise<void>;
  /** Stops kube-apiserver, then etcd, and removes the temp dir. */
  stop(): Promise<void>;
}

/** Environment without ETCD_* variables: etcd reads every ETCD_<FLAG> as a flag (ETCD_BIN too). */
function etcdEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ETCD_")));
}

/**
 * GET over https without certificate verification (the test apiserver's serving cert is
 * self-signed); resolves with status and body. `headers` are added to the bearer token.
 */
export function insecureGet(
  url: string,
  token: string,
  opts: { timeoutMs?: number; headers?: Record<string, string> } = {},
): Promise<{ status: number; body: string }> {
  const timeoutMs = opts.timeoutMs ?? 2_000;
  return new Promise((resolveGet, reject) => {
    const req = request(
      url,
      {
        method: "GET",
        rejectUnauthorized: false,
        headers: { ...opts.headers, authorization: `Bearer ${token}` },
        timeout: timeoutMs,
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => (body += chunk));
        res.on("end", () => resolveGet({ status: res.statusCode ?? 0, body }));
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`GET ${url}: no answer within ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end();
  });
}

async function startEtcd(dir: string): Promise<{ proc: ManagedProcess; url: string }> {
  const clientPort = await freePort();
  const peerPort = await freePort();
  const url = `http://127.0.0.1:${clientPort}`;
  const proc = new ManagedProcess(
    toolBinary("etcd"),
    [
      "--data-dir",
      join(dir, "etcd"),
      "--listen-client-urls",
      url,
      "--advertise-client-urls",
      url,
      "--listen-peer-urls",
      `http://127.0.0.1:${peerPort}`,
      "--unsafe-no-fsync",
    ],
    { name: "etcd", env: etcdEnv() },
  );
  try {
    await waitFor(
      async () => {
        const res = await httpGet(`${url}/health`);
        if (res.status !== 200) throw new Error(`/health ${res.status}: ${res.body.trim()}`);
        return (JSON.parse(res.body) as { health?: string }).health === "true";
      },
      { what: `etcd /health on ${url}`, timeoutMs: 20_000, intervalMs: 50, failIf: () => proc.exitReason() },
    );
  } catch (err) {
    await proc.stop({ timeoutMs: 2_000 });
    throw proc.error(err instanceof Error ? err.message : String(err), err);
  }
  return { proc, url };
}

/**
 * Starts etcd and kube-apiserver on free ports and waits until /readyz answers 200 for the admin
 * token. Nothing runs controllers: no garbage collection of ownerReferences, no namespace cleanup.
 */
export async function startKubeApiserver(opts: KubeApiserverOptions = {}): Promise<KubeApiserver> {
  const dir = await tempDir("kube");
  let etcd: { proc: ManagedProcess; url: string } | undefined;
  let apiserver: ManagedProcess | undefined;
  try {
    const token = randomBytes(24).toString("hex");
    const tokenFile = join(dir, "tokens.csv");
    await writeFile(tokenFile, `${token},admin,admin,system:masters\n`, { mode: 0o600 });
    const saKeyFile = join(dir, "sa.key");
    const { privateKey } = generateKeyPairSync("rsa", {
      modulusLength: 2048,
      privateKeyEncoding: { type: "pkcs1", format: "pem" },
      publicKeyEncoding: { type: "spki", format: "pem" },
    });
    await writeFile(saKeyFile, privateKey, { mode: 0o600 });
    await mkdir(join(dir, "pki"), { recursive: true });

    etcd = await startEtcd(dir);
    const etcdProc = etcd.proc;
    const etcdUrl = etcd.url;

    const port = await freePort();
    const server = `https://127.0.0.1:${port}`;
    const args = [
      `--etcd-servers=${etcdUrl}`,
      `--cert-dir=${join(dir, "pki")}`,
      `--secure-port=${port}`,
      "--bind-address=127.0.0.1",
      "--advertise-address=127.0.0.1",
      "--service-cluster-ip-range=10.0.0.0/24",
      "--authorization-mode=RBAC",
      `--service-account-issuer=${server}/`,
      `--service-account-key-file=${saKeyFile}`,
      `--service-account-signing-key-file=${saKeyFile}`,
      `--token-auth-file=${tokenFile}`,
      "--disable-admission-plugins=ServiceAccount",
      "--endpoint-reconciler-type=none",
      // Without it a graceful stop waits for open watches to end, i.e. until the SIGKILL 15 s later.
      "--shutdown-watch-termination-grace-period=1s",
      ...(opts.extraArgs ?? []),
    ];

    // Spawns kube-apiserver (same port, etcd, certs and token every time) and waits for /readyz.
    const spawnApiserver = async (): Promise<ManagedProcess> => {
      const proc = new ManagedProcess(toolBinary("kube-apiserver"), args, { name: "kube-apiserver" });
      apiserver = proc;
      try {
        await waitFor(
          async () => {
            const res = await insecureGet(`${server}/readyz`, token);
            if (res.status !== 200) {
              const failing = res.body
                .split("\n")
                .filter((l) => l.startsWith("[-]"))
                .join("; ");
              throw new Error(`/readyz ${res.status}: ${failing || res.body.trim().slice(0, 300)}`);
            }
            return true;
          },
          {
            what: `kube-apiserver /readyz on ${server}`,
            timeoutMs: opts.readyTimeoutMs ?? 60_000,
            intervalMs: 200,
            failIf: () => proc.exitReason() ?? etcdProc.exitReason(),
          },
        );
      } catch (err) {
        const error = proc.error(err instanceof Error ? err.message : String(err), err);
        await proc.stop({ timeoutMs: 5_000 });
        throw error;
      }
      return proc;
    };

    const started = Date.now();
    let proc: ManagedProcess | undefined = await spawnApiserver();
    const startupMs = Date.now() - started;

    const stopApiserver = async (stopOpts: { signal?: NodeJS.Signals } = {}): Promise<void> => {
      const running = proc;
      proc = undefined;
      await running?.stop({ timeoutMs: 15_000, signal: stopOpts.signal });
    };
    const startApiserver = async (): Promise<void> => {
      if (proc) return;
      proc = await spawnApiserver();
    };

    return {
      server,
      token,
      etcdUrl,
      dir,
      startupMs,
      kubeConfig() {
        const kc = new KubeConfig();
        kc.loadFromClusterAndUser(
          { name: "natsbind-test", server, skipTLSVerify: true },
          { name: "natsbind-test-admin", token },
        );
        return kc;
      },
      // The last kube-apiserver started, also after a stop: its output says why it ended.
      logs: () => `=== kube-apiserver ===\n${apiserver?.logs() ?? ""}\n=== etcd ===\n${etcdProc.logs()}`,
      stopApiserver,
      startApiserver,
      async restartApiserver(stopOpts) {
        await stopApiserver(stopOpts);
        await startApiserver();
      },
      async stop() {
        await stopApiserver();
        await apiserver?.stop({ timeoutMs: 15_000 });
        await etcdProc.stop();
        await removeDir(dir);
      },
    };
  } catch (err) {
    await apiserver?.stop({ timeoutMs: 5_000 });
    await etcd?.proc.stop({ timeoutMs: 5_000 });
    await removeDir(dir);
    throw err;
  }
}

/** Waits until a CustomResourceDefinition reports Established=True (required before creating its objects). */
export async function waitForCrdEstablished(kc: KubeConfig, name: string, timeoutMs = 30_000): Promise<void> {
  const api = kc.makeApiClient(ApiextensionsV1Api);
  await waitFor(
    async () => {
      const crd = await api.readCustomResourceDefinition({ name });
      return (crd.status?.conditions ?? []).some((c) => c.type === "Established" && c.status === "True");
    },
    { what: `CRD ${name} to be Established`, timeoutMs, intervalMs: 100 },
  );
}

/** Creates the NatsBinding CRD from crds/natsbinding.yaml (as kubectl would read it) and waits
 * until it is Established. loadYaml keeps the x-kubernetes-* keys a plain object would lose. */
export async function installNatsBindingCrd(kc: KubeConfig): Promise<void> {
  await installCrdFile(kc, "natsbinding.yaml");
}

/** Creates the NatsBindingPolicy CRD from crds/natsbindingpolicy.yaml and waits until Established. */
export async function installNatsBindingPolicyCrd(kc: KubeConfig): Promise<void> {
  await installCrdFile(kc, "natsbindingpolicy.yaml");
}

/** Every CRD natsbind run needs in Kubernetes mode (it watches NatsBindingPolicies too). */
export async function installNatsbindCrds(kc: KubeConfig): Promise<void> {
  await Promise.all([installNatsBindingCrd(kc), installNatsBindingPolicyCrd(kc)]);
}

async function installCrdFile(kc: KubeConfig, file: string): Promise<void> {
  const crd = loadYaml<V1CustomResourceDefinition>(await readFile(join(REPO_ROOT, "crds", file), "utf8"));
  await kc.makeApiClient(ApiextensionsV1Api).createCustomResourceDefinition({ body: crd });
  await waitForCrdEstablished(kc, crd.metadata!.name!);
}
