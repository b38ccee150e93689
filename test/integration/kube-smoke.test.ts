// Smoke test of the real etcd + kube-apiserver harness: a Namespace and a Secret round-trip
// through @kubernetes/client-node.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CoreV1Api } from "@kubernetes/client-node";
import { startKubeApiserver } from "../support/kube.ts";
import type { KubeApiserver } from "../support/kube.ts";
import { liveProcessCount } from "../support/process.ts";

describe("kube-apiserver harness", { timeout: 180_000 }, () => {
  let kube: KubeApiserver | undefined;

  before(async () => {
    kube = await startKubeApiserver();
    console.log(`kube-apiserver ready in ${kube.startupMs} ms at ${kube.server}`);
  });

  after(async () => {
    await kube?.stop();
    assert.equal(liveProcessCount(), 0, "etcd and kube-apiserver were stopped");
  });

  it("creates a Namespace and a Secret and reads the Secret back", async () => {
    assert.ok(kube);
    const core = kube.kubeConfig().makeApiClient(CoreV1Api);
    const namespace = "natsbind-smoke";

    const ns = await core.createNamespace({ body: { metadata: { name: namespace } } });
    assert.equal(ns.metadata?.name, namespace);

    const created = await core.createNamespacedSecret({
      namespace,
      body: {
        metadata: { name: "creds", labels: { "app.kubernetes.io/managed-by": "natsbind" } },
        type: "Opaque",
        stringData: { "user.creds": "-----BEGIN NATS USER JWT-----" },
        data: { seed: Buffer.from("SUAXYZ").toString("base64") },
      },
    });
    assert.ok(created.metadata?.uid);

    const read = await core.readNamespacedSecret({ name: "creds", namespace });
    assert.equal(read.metadata?.uid, created.metadata?.uid);
    assert.equal(read.type, "Opaque");
    assert.deepEqual(read.metadata?.labels, { "app.kubernetes.io/managed-by": "natsbind" });
    const data = Object.fromEntries(
      Object.entries(read.data ?? {}).map(([k, v]) => [k, Buffer.from(v, "base64").toString("utf8")]),
    );
    assert.deepEqual(data, { seed: "SUAXYZ", "user.creds": "-----BEGIN NATS USER JWT-----" });
  });
});
