/**
 * The servers a Kubernetes-mode end-to-end test needs, started together: a test operator, a real
 * kube-apiserver (+ etcd) with natsbind's CRDs, the GitLab simulator, and a nats-server in operator
 * mode; a temp directory with the kubeconfig, GitLab token and webhook secret files natsbind.yaml
 * names; and a resolver connection for assertions. stop() takes them down in reverse order.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CoreV1Api, CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { stringify } from "yaml";
import { parseConfig, type Config } from "../../src/config/config.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { GitLabSimulator } from "./gitlab-sim.ts";
import { installNatsbindCrds, startKubeApiserver, type KubeApiserver } from "./kube.ts";
import { startNatsServer, type NatsServer } from "./nats-server.ts";
import { createTestOperator, natsConfigSection, operatorResolver, type TestOperator } from "./operator.ts";
import { removeDir, tempDir } from "./process.ts";

export interface KubeRig {
  op: TestOperator;
  kube: KubeApiserver;
  sim: GitLabSimulator;
  server: NatsServer;
  kc: KubeConfig;
  objects: CustomObjectsApi;
  core: CoreV1Api;
  /** Holds kubeconfig, token, secret (and natsbind.yaml once config() wrote it). */
  dir: string;
  resolver: NatsResolver;
  /**
   * natsbind.yaml for Kubernetes mode over these servers (webhook secret `secret`, resync 1h,
   * listening on a free loopback port), with `kubernetes` merged into its kubernetes section;
   * written to <dir>/natsbind.yaml and parsed.
   */
  config(kubernetes?: Record<string, unknown>): Promise<Config>;
  stop(): Promise<void>;
}

export async function startKubeRig(o: {
  /** Namespaces to create (tenants, and natsbind's own for the Lease). */
  namespaces: readonly string[];
  /** Temp directory prefix. */
  name: string;
  /** The GitLab webhook secret natsbind is configured with. */
  webhookSecret: string;
}): Promise<KubeRig> {
  const [op, kube, sim] = await Promise.all([
    createTestOperator(),
    startKubeApiserver(),
    GitLabSimulator.start(),
  ]);
  const server = await startNatsServer(op.serverOptions);
  const kc = kube.kubeConfig();
  const core = kc.makeApiClient(CoreV1Api);
  await installNatsbindCrds(kc);
  for (const name of o.namespaces) await core.createNamespace({ body: { metadata: { name } } });
  const dir = await tempDir(o.name);
  await writeFile(join(dir, "kubeconfig"), kc.exportConfig());
  await writeFile(join(dir, "token"), sim.token);
  await writeFile(join(dir, "secret"), o.webhookSecret);
  const resolver = await operatorResolver(op, server.url);
  return {
    op,
    kube,
    sim,
    server,
    kc,
    objects: kc.makeApiClient(CustomObjectsApi),
    core,
    dir,
    resolver,
    async config(kubernetes = {}) {
      const document = {
        mode: "kubernetes",
        nats: natsConfigSection(op, [server.url]),
        gitlab: { url: sim.url, tokenFile: "token", webhookSecretFile: "secret", resyncInterval: "1h" },
        kubernetes: { kubeconfig: "kubeconfig", ...kubernetes },
        http: { listen: "127.0.0.1:0" },
      };
      await writeFile(join(dir, "natsbind.yaml"), stringify(document));
      return parseConfig(document, "test config", dir);
    },
    async stop() {
      await resolver.close();
      await sim.stop();
      await server.stop();
      await kube.stop();
      await op.remove();
      await removeDir(dir);
    },
  };
}
