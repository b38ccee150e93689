// Kubernetes API connections (src/k8s/connections.ts) against a real kube-apiserver, through a TCP
// proxy that counts the connections natsbind's KubeConfig opens: requests, an informer's list and
// watch share kept-alive connections; a change of TLS options moves to new ones and closes the old.
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { createServer, connect, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { CoreV1Api, KubeConfig, type V1ConfigMap } from "@kubernetes/client-node";
import { Informer } from "../../src/k8s/informer.ts";
import { kubeConfigFrom } from "../../src/k8s/mode.ts";
import { startKubeApiserver, type KubeApiserver } from "../support/kube.ts";
import { removeDir, tempDir, waitFor } from "../support/process.ts";

/** A TCP proxy to the apiserver counting the connections made through it and those still open. */
async function countingProxy(
  target: URL,
): Promise<{ url: string; opened(): number; open(): number; close(): Promise<void> }> {
  let opened = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    opened += 1;
    sockets.add(client);
    const upstream = connect(Number(target.port), target.hostname);
    client.pipe(upstream).pipe(client);
    const drop = (): void => {
      sockets.delete(client);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", drop).on("error", drop);
    upstream.on("close", drop).on("error", drop);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("proxy has no port");
  return {
    url: `https://127.0.0.1:${address.port}`,
    opened: () => opened,
    open: () => sockets.size,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe("Kubernetes API connections", { timeout: 120_000 }, () => {
  let kube: KubeApiserver;
  let dir: string;

  before(async () => {
    kube = await startKubeApiserver();
    dir = await tempDir("k8s-connections");
  });

  after(async () => {
    await kube?.stop();
    if (dir) await removeDir(dir);
  });

  /** A kubeconfig file like the test apiserver's, with `server` in its place. */
  async function kubeconfigFile(server: string): Promise<string> {
    const kc = new KubeConfig();
    kc.loadFromClusterAndUser(
      { name: "test", server, skipTLSVerify: true },
      { name: "admin", token: kube.token },
    );
    const file = join(dir, `kubeconfig-${Date.now()}-${Math.random().toString(16).slice(2)}`);
    await writeFile(file, kc.exportConfig());
    return file;
  }

  it("shares kept-alive connections between requests, an informer's list and its watch", async () => {
    const proxy = await countingProxy(new URL(kube.server));
    let informer: Informer<V1ConfigMap> | undefined;
    try {
      const kc = await kubeConfigFrom(await kubeconfigFile(proxy.url));
      const core = kc.makeApiClient(CoreV1Api);
      await core.createNamespace({ body: { metadata: { name: "conn-a" } } });
      for (let i = 0; i < 40; i++) await core.readNamespace({ name: "conn-a" });
      assert.ok(proxy.opened() <= 2, `41 requests one after another opened ${proxy.opened()} connections`);

      // 32 at once need up to 32 connections, and no more once they are open.
      const burst = async (round: number): Promise<void> => {
        await Promise.all(
          Array.from({ length: 32 }, (_, i) =>
            core.createNamespacedConfigMap({
              namespace: "conn-a",
              body: { metadata: { name: `cm-${round}-${i}` }, data: { v: "x" } },
            }),
          ),
        );
      };
      await burst(0);
      const afterFirst = proxy.opened();
      assert.ok(afterFirst <= 34, `32 concurrent creates opened ${afterFirst} connections in all`);
      await burst(1);
      await burst(2);
      assert.ok(
        proxy.opened() - afterFirst <= 2,
        `64 more creates opened ${proxy.opened() - afterFirst} more connections`,
      );

      // The informer's list and watch go through the same pool: the watch holds one connection.
      const cms = (informer = new Informer<V1ConfigMap>({
        kubeConfig: kc,
        path: "/api/v1/namespaces/conn-a/configmaps",
      }));
      await cms.start();
      assert.equal(cms.list().length, 96);
      const beforeWatchEvent = proxy.opened();
      await core.createNamespacedConfigMap({ namespace: "conn-a", body: { metadata: { name: "late" } } });
      await waitFor(async () => cms.get("conn-a", "late") !== undefined, {
        what: "watch event",
        timeoutMs: 20_000,
      });
      assert.ok(
        proxy.opened() - beforeWatchEvent <= 2,
        "a create and its watch event opened new connections",
      );
    } finally {
      informer?.stop();
      await proxy.close();
    }
  });

  it("without reuseConnections client-node opens a connection per request (why connections.ts exists)", async () => {
    // If this fails, client-node keeps connections itself and src/k8s/connections.ts can go.
    const proxy = await countingProxy(new URL(kube.server));
    try {
      const kc = new KubeConfig();
      kc.loadFromFile(await kubeconfigFile(proxy.url));
      const core = kc.makeApiClient(CoreV1Api);
      for (let i = 0; i < 10; i++) await core.readNamespace({ name: "default" });
      assert.equal(proxy.opened(), 10);
    } finally {
      await proxy.close();
    }
  });

  it("moves to new connections when the TLS options change, closing the old ones", async () => {
    const proxy = await countingProxy(new URL(kube.server));
    try {
      const kc = await kubeConfigFrom(await kubeconfigFile(proxy.url));
      const core = kc.makeApiClient(CoreV1Api);
      for (let i = 0; i < 5; i++) await core.readNamespace({ name: "default" });
      assert.equal(proxy.opened(), 1);
      // As a rotated client certificate would: other TLS options, another Agent.
      (kc.getCurrentCluster() as { tlsServerName?: string }).tlsServerName = "localhost";
      for (let i = 0; i < 5; i++) await core.readNamespace({ name: "default" });
      assert.equal(proxy.opened(), 2);
      await waitFor(async () => proxy.open() === 1, { what: "the old connection closed", timeoutMs: 10_000 });
    } finally {
      await proxy.close();
    }
  });
});
