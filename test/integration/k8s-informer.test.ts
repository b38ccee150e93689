// The list+watch cache against a real etcd + kube-apiserver: sync and events, label selection,
// writers' upserts, paging, an apiserver restart mid-watch (changes made while it was away, a
// deletion included, arrive after the backoff), and 410 Gone -> relist; a writer's object kept
// through events and lists of its own version; managedFields dropped.
import assert from "node:assert/strict";
import { connect, createServer, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { CoreV1Api, KubeConfig } from "@kubernetes/client-node";
import type { V1ConfigMap } from "@kubernetes/client-node";
import { Informer, InformerStoppedError, listPage } from "../../src/k8s/informer.ts";
import type { InformerEventType, ListPage } from "../../src/k8s/informer.ts";
import { ManualClock } from "../../src/runtime/clock.ts";
import { startKubeApiserver } from "../support/kube.ts";
import type { KubeApiserver } from "../support/kube.ts";
import { freePort, waitFor } from "../support/process.ts";

/** A TCP proxy to the apiserver that passes its answers on `delayMs` late (in order). */
async function delayingProxy(target: URL, delayMs: number): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    sockets.add(client).add(upstream);
    client.pipe(upstream);
    upstream.on("data", (chunk: Buffer) => setTimeout(() => client.write(chunk), delayMs));
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on("close", drop).on("error", drop);
    upstream.on("close", () => setTimeout(drop, delayMs)).on("error", drop);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("proxy has no port");
  return {
    url: `https://127.0.0.1:${address.port}`,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

interface Seen {
  type: InformerEventType;
  name: string;
  data?: string;
  oldData?: string;
}

/** Records an informer's events as (type, name, data.v, old data.v). */
function record(informer: Informer<V1ConfigMap>): Seen[] {
  const seen: Seen[] = [];
  informer.onEvent((type, obj, old) => {
    const event: Seen = { type, name: obj.metadata?.name ?? "?" };
    if (obj.data?.v !== undefined) event.data = obj.data.v;
    if (old?.data?.v !== undefined) event.oldData = old.data.v;
    seen.push(event);
  });
  return seen;
}

function has(seen: Seen[], type: InformerEventType, name: string, data?: string): boolean {
  return seen.some((e) => e.type === type && e.name === name && (data === undefined || e.data === data));
}

describe("Informer", { timeout: 180_000 }, () => {
  let kube: KubeApiserver;
  let core: CoreV1Api;
  let nsCount = 0;
  const informers: Informer<V1ConfigMap>[] = [];

  before(async () => {
    kube = await startKubeApiserver();
    core = kube.kubeConfig().makeApiClient(CoreV1Api);
  });

  after(async () => {
    for (const informer of informers) informer.stop();
    await kube?.stop();
  });

  async function namespace(): Promise<string> {
    const name = `informer-${++nsCount}`;
    await core.createNamespace({ body: { metadata: { name } } });
    return name;
  }

  async function configMap(ns: string, name: string, v: string, labels = { app: "x" }): Promise<V1ConfigMap> {
    return core.createNamespacedConfigMap({
      namespace: ns,
      body: { metadata: { name, labels }, data: { v } },
    });
  }

  async function setData(ns: string, name: string, v: string): Promise<V1ConfigMap> {
    const current = await core.readNamespacedConfigMap({ namespace: ns, name });
    return core.replaceNamespacedConfigMap({ namespace: ns, name, body: { ...current, data: { v } } });
  }

  function informerFor(ns: string, opts: Partial<ConstructorParameters<typeof Informer>[0]> = {}) {
    const informer = new Informer<V1ConfigMap>({
      kubeConfig: kube.kubeConfig(),
      path: `/api/v1/namespaces/${ns}/configmaps`,
      labelSelector: "app=x",
      name: `configmaps-${ns}`,
      ...(opts as object),
    });
    informers.push(informer);
    return informer;
  }

  it("syncs, then reports adds, updates and deletes of the selected objects only", async () => {
    const ns = await namespace();
    await configMap(ns, "a", "1");
    await configMap(ns, "b", "1");
    await configMap(ns, "other", "1", { app: "y" });
    const informer = informerFor(ns);
    const seen = record(informer);
    assert.equal(informer.hasSynced(), false);
    await informer.start();
    assert.equal(informer.hasSynced(), true);
    assert.deepEqual(
      informer
        .list()
        .map((o) => o.metadata?.name)
        .sort(),
      ["a", "b"],
    );
    assert.deepEqual(seen.map((e) => `${e.type} ${e.name}`).sort(), ["add a", "add b"]);
    assert.equal(informer.get(ns, "a")?.kind, "ConfigMap", "list items get the kind of their list");
    assert.equal(informer.list("elsewhere").length, 0);

    await setData(ns, "a", "2");
    await core.deleteNamespacedConfigMap({ namespace: ns, name: "b" });
    await configMap(ns, "other-2", "1", { app: "y" });
    await configMap(ns, "c", "1");
    await waitFor(async () => has(seen, "add", "c"), { what: "the add of c" });
    assert.deepEqual(seen.slice(2), [
      { type: "update", name: "a", data: "2", oldData: "1" },
      { type: "delete", name: "b", data: "1" },
      { type: "add", name: "c", data: "1" },
    ]);
    assert.equal(informer.get(ns, "a")?.data?.v, "2");
    assert.equal(informer.get(ns, "b"), undefined);
    assert.equal(informer.get(ns, "other"), undefined, "label selector respected");
    assert.ok(informer.lists >= 1 && informer.watches >= 1 && informer.events === 3);
    informer.stop();
  });

  it("keeps a writer's newer object against older events, and forget() drops one at once", async () => {
    const ns = await namespace();
    const a = await configMap(ns, "a", "1");
    const informer = informerFor(ns);
    const seen = record(informer);
    await informer.start();

    // A writer's own write is visible at once, before its watch event.
    const written = await setData(ns, "a", "2");
    informer.upsert(written);
    assert.equal(informer.get(ns, "a")?.data?.v, "2");

    // An object claiming a far newer version is not replaced by the (older) events that follow.
    const future = String(BigInt(written.metadata!.resourceVersion!) + 1_000_000n);
    informer.upsert({
      ...written,
      metadata: { ...written.metadata, resourceVersion: future },
      data: { v: "w" },
    });
    await setData(ns, "a", "3");
    await configMap(ns, "marker", "1");
    await waitFor(async () => has(seen, "add", "marker"), { what: "the add of marker" });
    assert.equal(informer.get(ns, "a")?.data?.v, "w", "an older event did not overwrite the newer object");
    assert.ok(!has(seen, "update", "a", "3"));

    // A non-decimal version cannot be compared: the incoming object wins.
    informer.upsert({ ...a, metadata: { ...a.metadata, resourceVersion: "opaque" }, data: { v: "o" } });
    await setData(ns, "a", "4");
    await waitFor(async () => informer.get(ns, "a")?.data?.v === "4", { what: "a at v=4" });

    informer.forget(ns, "marker");
    assert.equal(informer.get(ns, "marker"), undefined);
    informer.stop();
  });

  it("keeps a writer's object through the watch event of the same version, without managedFields", async () => {
    const ns = await namespace();
    await configMap(ns, "listed", "1");
    // The informer hears the apiserver 300 ms late, so the writer's upsert always comes first.
    const proxy = await delayingProxy(new URL(kube.server), 300);
    const kc = new KubeConfig();
    kc.loadFromClusterAndUser(
      { name: "late", server: proxy.url, skipTLSVerify: true },
      { name: "admin", token: kube.token },
    );
    const informer = informerFor(ns, { kubeConfig: kc });
    const seen = record(informer);
    try {
      await informer.start();
      assert.equal(
        informer.get(ns, "listed")?.metadata?.managedFields,
        undefined,
        "list items lose managedFields",
      );

      const written = await configMap(ns, "mine", "1");
      assert.ok((written.metadata?.managedFields?.length ?? 0) > 0, "the apiserver returned managedFields");
      informer.upsert(written);
      assert.equal(written.metadata?.managedFields, undefined, "upserted objects lose managedFields");
      // Later events for others prove the watch delivered "mine" (same version) before them.
      await setData(ns, "listed", "2");
      await configMap(ns, "marker", "1");
      await waitFor(async () => has(seen, "add", "marker"), { what: "the add of marker" });
      assert.equal(
        informer.get(ns, "mine"),
        written,
        "the same object: what readers derived from it stays valid",
      );
      assert.ok(!has(seen, "add", "mine"), "a writer's own write raised no event");
      const updated = informer.get(ns, "listed")!;
      assert.equal(updated.data?.v, "2");
      assert.equal(updated.metadata?.managedFields, undefined, "watch objects lose managedFields");

      // A write of an object without managedFields keeps the apiserver's record of them.
      const replaced = await core.replaceNamespacedConfigMap({
        namespace: ns,
        name: "listed",
        body: { ...updated, data: { v: "3" } },
      });
      assert.ok((replaced.metadata?.managedFields?.length ?? 0) > 0);
    } finally {
      informer.stop();
      await proxy.close();
    }
  });

  it("keeps an unchanged object through a relist", async () => {
    const ns = await namespace();
    const written = await configMap(ns, "mine", "1");
    const informer = informerFor(ns);
    const seen = record(informer);
    informer.upsert(written); // before the first list: the list returns the same version
    await informer.start();
    assert.equal(informer.get(ns, "mine"), written);
    assert.deepEqual(seen, [], "nothing changed");
    informer.stop();
  });

  it("lists in pages and counts each page", async () => {
    const ns = await namespace();
    for (const name of ["p1", "p2", "p3", "p4", "p5"]) await configMap(ns, name, "1");
    const informer = informerFor(ns, { pageSize: 2 });
    await informer.start();
    assert.equal(informer.list(ns).length, 5);
    assert.equal(informer.lists, 3);
    informer.stop();
  });

  it("retries with backoff while the apiserver is unreachable, and stop() ends start() that never synced", async () => {
    const port = await freePort(); // nothing listens there
    const kc = new KubeConfig();
    kc.loadFromClusterAndUser(
      { name: "nowhere", server: `https://127.0.0.1:${port}`, skipTLSVerify: true },
      { name: "nobody", token: "x" },
    );
    const clock = new ManualClock();
    const informer = new Informer<V1ConfigMap>({
      kubeConfig: kc,
      path: "/api/v1/configmaps",
      clock,
      backoff: { initialMs: 100, maxMs: 400 },
      random: () => 0.999,
    });
    const started = informer.start();
    const delays: number[] = [];
    for (let i = 1; i <= 4; i++) {
      await waitFor(async () => informer.restarts === i, { what: `failure ${i}` });
      // The backoff timer is the only one left (the failed list's deadline was cleared).
      assert.equal(clock.pendingTimers().length, 1);
      const delay = clock.pendingTimers()[0]! - clock.now();
      delays.push(delay);
      clock.advance(delay);
    }
    assert.deepEqual(delays, [100, 200, 400, 400], "exponential, capped at maxMs");
    assert.equal(informer.hasSynced(), false);
    informer.stop();
    await assert.rejects(started, InformerStoppedError);
  });

  it("recovers from an apiserver restart and reports what changed while it was away, deletions included", async () => {
    const ns = await namespace();
    await configMap(ns, "keep", "1");
    await configMap(ns, "change", "1");
    await configMap(ns, "remove", "1");
    // A manual clock: the informer cannot retry before the test lets it, so every change below is
    // made while it is away.
    const clock = new ManualClock();
    const informer = informerFor(ns, { clock, backoff: { initialMs: 200, maxMs: 1_000 } });
    const seen = record(informer);
    await informer.start();
    const watchesBefore = informer.watches;

    // A crash: a graceful stop waits (up to 15 s) for open watches to go away.
    await kube.stopApiserver({ signal: "SIGKILL" });
    await waitFor(async () => clock.pendingTimers().length > 0, {
      what: "the informer to back off after losing its watch",
    });
    await kube.startApiserver();
    await setData(ns, "change", "2");
    await core.deleteNamespacedConfigMap({ namespace: ns, name: "remove" });
    await configMap(ns, "new", "1");
    assert.ok(!has(seen, "add", "new"), "nothing seen while away");

    await waitFor(
      async () => {
        clock.advance(1_000);
        return has(seen, "add", "new") && has(seen, "update", "change", "2") && has(seen, "delete", "remove");
      },
      { what: "the changes made while the informer was away", timeoutMs: 30_000, intervalMs: 50 },
    );
    assert.deepEqual(
      informer
        .list()
        .map((o) => `${o.metadata?.name}=${o.data?.v}`)
        .sort(),
      ["change=2", "keep=1", "new=1"],
    );
    assert.ok(!has(seen, "update", "keep") && !has(seen, "delete", "keep"), "unchanged objects stay quiet");
    assert.ok(informer.restarts >= 1, "backed off");
    assert.ok(informer.watches > watchesBefore, "watched again");

    // And it keeps watching.
    await configMap(ns, "after", "1");
    await waitFor(
      async () => {
        clock.advance(1_000);
        return has(seen, "add", "after");
      },
      { what: "an event after recovery" },
    );
    informer.stop();
  });

  it("relists on 410 Gone and reports the difference to the stale list", async () => {
    const ns = await namespace();
    await configMap(ns, "keep", "1");
    await configMap(ns, "change", "1");
    await configMap(ns, "remove", "1");
    const stale = await core.listNamespacedConfigMap({ namespace: ns, labelSelector: "app=x" });
    await setData(ns, "change", "2");
    await core.deleteNamespacedConfigMap({ namespace: ns, name: "remove" });
    // A restarted apiserver's watch cache starts after the stale list's resourceVersion, so a watch
    // from it answers 410 "too old resource version".
    await kube.restartApiserver({ signal: "SIGKILL" });

    let calls = 0;
    const kc = kube.kubeConfig();
    const informer = informerFor(ns, {
      // The first list answers from the past; the later ones are real.
      list: async (params): Promise<ListPage<V1ConfigMap>> => {
        calls++;
        if (calls === 1) return { items: stale.items, resourceVersion: stale.metadata!.resourceVersion! };
        return listPage<V1ConfigMap>(kc, `/api/v1/namespaces/${ns}/configmaps`, params);
      },
    });
    const seen = record(informer);
    await informer.start();
    await waitFor(async () => has(seen, "delete", "remove"), { what: "the relist after 410" });
    assert.equal(informer.relists, 1);
    assert.equal(calls, 2);
    assert.deepEqual(seen.map((e) => `${e.type} ${e.name} ${e.data}`).sort(), [
      "add change 1",
      "add keep 1",
      "add remove 1",
      "delete remove 1",
      "update change 2",
    ]);
    informer.stop();
  });
});
