// `natsbind credentials revoke` in Kubernetes mode: real kube-apiserver + etcd, nats-server and the
// GitLab simulator; natsbind run (the leader) in process, the command as a separate process with
// its own kubeconfig. The command writes the entry into the account's Secret; the leader sees a
// change it did not make, reconciles and pushes; the connected user is cut off, the account's other
// user is not.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import type { V1Secret } from "@kubernetes/client-node";
import { stringify } from "yaml";
import { PLURAL } from "../../src/api/v1alpha1/crd.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import { parseConfig } from "../../src/config/config.ts";
import { accountSecretName, ANNOTATION_ACCOUNT, REVOCATIONS_KEY } from "../../src/k8s/secret-keystore.ts";
import { decodeJwt } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { runController, type RunningController } from "../../src/main.ts";
import { nullLogger } from "../../src/observability/logger.ts";
import { startKubeRig } from "../support/k8s-rig.ts";
import { applyPermissivePolicy } from "../support/policy.ts";
import { connectWithCreds, natsConfigSection, roleUserCreds, watchStatus } from "../support/operator.ts";
import { REPO_ROOT, waitFor } from "../support/process.ts";

const run = promisify(execFile);
const MAIN = join(REPO_ROOT, "src", "cli", "main.ts");
const NS = "team-r";
const SECRET = "webhook-secret-for-k8s-revocation";
// nats-server 2.15.2: to a connected user when a push revokes it, and to a revoked user connecting.
const REVOKED_NOTICE = "User Authentication Revoked";
const REFUSED = /Authorization Violation/;

describe("natsbind credentials revoke (Kubernetes mode)", { timeout: 300_000 }, () => {
  it("writes the account's Secret; the leader pushes; the connected user is cut off, the other is not", async (t) => {
    const rig = await startKubeRig({
      namespaces: [NS, "natsbind"],
      name: "k8s-revoke",
      webhookSecret: SECRET,
    });
    let controller: RunningController | undefined;
    const open: Array<{ close(): Promise<void> }> = [];
    try {
      const group = rig.sim.createGroup({ name: "Acme", path: "acme" });
      const project = rig.sim.createProject({ name: "api", groupId: group.id });
      await applyPermissivePolicy(rig.kc, "acme", ["acme"]);
      await rig.objects.createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: NS,
        plural: PLURAL,
        body: {
          apiVersion: `${GROUP}/${VERSION}`,
          kind: "NatsBinding",
          metadata: { name: "acme" },
          spec: {
            gitlab: { group: "acme" },
            roles: [
              {
                name: "ci",
                publish: { allow: ["build.{{project.id}}.>"] },
                subscribe: { allow: ["_INBOX.>", "build.{{project.id}}.>"] },
              },
            ],
          },
        },
      });
      // The command reads the same natsbind.yaml (kubeconfig, resolver, audit file).
      const document = {
        mode: "kubernetes",
        nats: natsConfigSection(rig.op, [rig.server.url]),
        gitlab: { url: rig.sim.url, tokenFile: "token", webhookSecretFile: "secret", resyncInterval: "1h" },
        kubernetes: { kubeconfig: "kubeconfig" },
        http: { listen: "127.0.0.1:0" },
        credentials: {
          audience: "https://natsbind.k8s.test",
          maxTtl: "1m",
          defaultTtl: "1m",
          leeway: "0s",
          audit: { file: "audit.log", connections: false },
        },
      };
      await writeFile(join(rig.dir, "natsbind.yaml"), stringify(document));
      const config = parseConfig(document, "test config", rig.dir);
      controller = await runController(config, { log: nullLogger, identity: "in-process" });

      const secretName = accountSecretName({ binding: `${NS}/acme`, projectId: project.id });
      const readSecret = (): Promise<V1Secret> =>
        rig.core.readNamespacedSecret({ namespace: NS, name: secretName });
      let account = "";
      await waitFor(
        async () => {
          account =
            (await readSecret().catch(() => undefined))?.metadata?.annotations?.[ANNOTATION_ACCOUNT] ?? "";
          return account !== "" && (await rig.resolver.lookup(account)) !== undefined;
        },
        { what: "the project's account on the server", timeoutMs: 30_000, intervalMs: 100 },
      );
      const secret = await readSecret();
      const ciKey = NKeyPair.fromSeed(Buffer.from(secret.data!["role-ci.nk"]!, "base64"), "account");
      const victimKey = NKeyPair.generate("user");
      const victimCreds = roleUserCreds(account, ciKey, { user: victimKey });
      const victim = await connectWithCreds(rig.server.url, victimCreds);
      const neighbour = await connectWithCreds(rig.server.url, roleUserCreds(account, ciKey));
      open.push(victim, neighbour);
      const victimEvents = watchStatus(victim);
      const neighbourEvents = watchStatus(neighbour);

      const revoke = async (...args: string[]): Promise<{ code: number; out: string }> => {
        const cmd = [MAIN, "credentials", "revoke", "--config", join(rig.dir, "natsbind.yaml"), ...args];
        try {
          const { stdout, stderr } = await run(process.execPath, cmd, { timeout: 120_000 });
          return { code: 0, out: `${stdout}\n${stderr}` };
        } catch (err) {
          const e = err as { code?: number; stdout?: string; stderr?: string };
          return {
            code: typeof e.code === "number" ? e.code : -1,
            out: `${e.stdout ?? ""}\n${e.stderr ?? ""}`,
          };
        }
      };

      // Bad input first: nothing is written.
      const before = (await readSecret()).metadata?.resourceVersion;
      const bare = await revoke("--binding", "acme", "--project", String(project.id), "--all");
      assert.equal(bare.code, 2, bare.out);
      assert.match(bare.out, /in Kubernetes mode --binding is NAMESPACE\/NAME/);
      const unknown = await revoke("--binding", `${NS}/acme`, "--project", "999999", "--all");
      assert.equal(unknown.code, 2, unknown.out);
      assert.match(
        unknown.out,
        new RegExp(`no account for project 999999 \\(projects with accounts: ${project.id}\\)`),
      );
      const noBinding = await revoke("--binding", `${NS}/nope`, "--project", String(project.id), "--all");
      assert.equal(noBinding.code, 2, noBinding.out);
      assert.match(noBinding.out, /no NatsBinding nope in namespace team-r/);
      assert.equal((await readSecret()).metadata?.resourceVersion, before, "the Secret was not written");

      const { code, out } = await revoke(
        "--binding",
        `${NS}/acme`,
        "--project",
        String(project.id),
        "--user",
        victimKey.publicKey,
      );
      t.diagnostic(out);
      assert.equal(code, 0, out);
      assert.match(out, new RegExp(`revocation stored in the Secret of account ${account}`));
      assert.match(
        out,
        new RegExp(`account ${account} \\(project ${project.id}\\): 1 user key\\(s\\) revoked`),
      );

      const stored = JSON.parse(
        Buffer.from((await readSecret()).data![REVOCATIONS_KEY]!, "base64").toString("utf8"),
      ) as Record<string, number>;
      assert.deepEqual(Object.keys(stored), [victimKey.publicKey]);
      const held = decodeJwt((await rig.resolver.lookup(account))!).nats.revocations as Record<
        string,
        number
      >;
      assert.deepEqual(held, stored, "the leader pushed what the Secret holds");

      await victimEvents.next("the revocation notice", (e) => e === `error: ${REVOKED_NOTICE}`);
      await waitFor(async () => victim.isClosed(), {
        what: "the revoked user closed",
        timeoutMs: 10_000,
        intervalMs: 20,
      });
      await assert.rejects(connectWithCreds(rig.server.url, victimCreds), REFUSED);
      await neighbour.flush();
      assert.equal(neighbour.isClosed(), false);
      assert.deepEqual(neighbourEvents.all, [], "the account's other user saw nothing");

      const lines = (await readFile(join(rig.dir, "audit.log"), "utf8"))
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.deepEqual(
        lines.map((l) => [l.event, l.binding, l.projectId, l.account, l.userPublicKey, l.source]),
        [["credentials.revoked", `${NS}/acme`, project.id, account, victimKey.publicKey, "cli"]],
      );
    } finally {
      for (const nc of open) await nc.close().catch(() => undefined);
      await controller?.stop();
      await rig.stop();
    }
  });
});
