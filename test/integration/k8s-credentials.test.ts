// CI credentials in Kubernetes mode: every replica issues (issuance only reads bindings, Secrets and
// policies), so a job gets credentials from a follower, and still does right after the leader died.
// Real kube-apiserver + etcd, GitLab simulator, nats-server; natsbind replicas as processes.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { PLURAL } from "../../src/api/v1alpha1/crd.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import { decodeJwt } from "../../src/nats/claims.ts";
import { startKubeRig } from "../support/k8s-rig.ts";
import { applyPermissivePolicy } from "../support/policy.ts";
import { connectWithCreds, natsConfigSection } from "../support/operator.ts";
import { waitFor } from "../support/process.ts";
import { leaseHolder, startReplicas, type Replica } from "../support/replicas.ts";

const NS = "team-c";
const AUDIENCE = "https://natsbind.k8s.test";

async function exchange(url: string, token: string): Promise<{ status: number; text: string }> {
  const res = await fetch(`${url}/v1/credentials`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, accept: "text/plain" },
    signal: AbortSignal.timeout(10_000),
  });
  return { status: res.status, text: await res.text() };
}

describe("CI credentials (Kubernetes mode)", { timeout: 300_000 }, () => {
  it("a follower issues, and keeps issuing after the leader is killed", async (t) => {
    const rig = await startKubeRig({
      namespaces: [NS, "natsbind"],
      name: "k8s-creds",
      webhookSecret: "s3cret-k8s",
    });
    let replicas: Replica[] = [];
    try {
      const group = rig.sim.createGroup({ name: "Creds", path: "creds" });
      const project = rig.sim.createProject({ name: "svc", groupId: group.id });
      await applyPermissivePolicy(rig.kc, "creds", ["creds"]);
      await rig.objects.createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: NS,
        plural: PLURAL,
        body: {
          apiVersion: `${GROUP}/${VERSION}`,
          kind: "NatsBinding",
          metadata: { name: "creds" },
          spec: {
            gitlab: { group: "creds" },
            roles: [
              {
                name: "ci",
                publish: { allow: ["build.{{project.id}}.>"] },
                subscribe: { allow: ["_INBOX.>", "build.{{project.id}}.>"] },
                ci: {},
              },
            ],
          },
        },
      });
      replicas = await startReplicas({
        kc: rig.kc,
        dir: rig.dir,
        count: 2,
        config: {
          mode: "kubernetes",
          nats: natsConfigSection(rig.op, [rig.server.url]),
          gitlab: { url: rig.sim.url, tokenFile: "token", webhookSecretFile: "secret", resyncInterval: "1h" },
          kubernetes: {
            kubeconfig: "kubeconfig",
            leaderElection: { leaseDuration: "3s", renewDeadline: "2s", retryPeriod: "500ms" },
          },
          credentials: { audience: AUDIENCE },
        },
      });
      let holder: string | undefined;
      await waitFor(async () => (holder = await leaseHolder(rig.kc)) !== undefined, {
        what: "a leader",
        timeoutMs: 30_000,
        intervalMs: 100,
      });
      const leader = replicas.find((r) => r.identity === holder)!;
      const follower = replicas.find((r) => r !== leader)!;
      assert.ok(leader && follower, `holder ${holder} is one of the replicas`);

      const token = rig.sim.mintIdToken({ projectId: project.id, aud: AUDIENCE });
      let answer = { status: 0, text: "" };
      await waitFor(async () => (answer = await exchange(follower.url, token)).status === 200, {
        what: "credentials from the follower",
        timeoutMs: 30_000,
        intervalMs: 200,
      });
      const jwt = /-----BEGIN NATS USER JWT-----\n([^\n]+)\n/.exec(answer.text)![1]!;
      const account = String(decodeJwt(jwt).nats.issuer_account);
      assert.ok(
        (await rig.resolver.lookup(account)) !== undefined,
        "the issued user's account is on the server",
      );
      const nc = await connectWithCreds(rig.server.url, new TextEncoder().encode(answer.text));
      await nc.flush();
      await nc.close();

      leader.child.kill("SIGKILL");
      const afterKill = await exchange(
        follower.url,
        rig.sim.mintIdToken({ projectId: project.id, aud: AUDIENCE }),
      );
      assert.equal(afterKill.status, 200, `issued right after the leader died: ${afterKill.text}`);
      const refused = await exchange(
        follower.url,
        rig.sim.mintIdToken({ projectId: project.id, aud: "other" }),
      );
      assert.equal(refused.status, 401);
      t.diagnostic(`leader ${leader.podName} killed; follower ${follower.podName} issued before and after`);
      for (const r of replicas) assert.equal(r.log().includes(token), false, "no token in a replica's log");
    } finally {
      for (const r of replicas) r.child.kill("SIGKILL");
      await rig.stop();
    }
  });
});
