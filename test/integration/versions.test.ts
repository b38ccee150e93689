// natsbind on the oldest nats-server of each supported line (scripts/tools.sh builds them into
// .cache/bin: nats-server-2.10 = v2.10.29, nats-server-2.11 = v2.11.17), a representative subset
// of the resolver, provisioning and credentials tests (the full suite runs on the newest,
// .cache/bin/nats-server): on a 3-node cluster of that version, natsbind run in local mode
// provisions projects, the exchange issues a user, and the auth callout lets a token in. What an
// old server lacks fails with natsbind's own clear error (src/nats/server-versions.ts).
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { connect, jwtAuthenticator } from "@nats-io/transport-node";
import { parseConfig, type Config } from "../../src/config/config.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import { accountClaims, signJwt } from "../../src/nats/claims.ts";
import { connectResolver } from "../../src/nats/from-config.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { ResolverUnsupportedError, type NatsResolver } from "../../src/nats/resolver.ts";
import { atLeast, FEATURE_VERSIONS } from "../../src/nats/server-versions.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { runController, type RunningController } from "../../src/main.ts";
import { StatusFiles } from "../../src/store/status-files.ts";
import { GitLabSimulator } from "../support/gitlab-sim.ts";
import {
  natsServerBinary,
  natsServerVersion,
  startNatsCluster,
  type NatsCluster,
  type NatsServerTool,
} from "../support/nats-server.ts";
import {
  connectWithCreds,
  createTestOperator,
  natsConfigSection,
  roleUserCreds,
  watchStatus,
  type TestOperator,
} from "../support/operator.ts";
import { REPO_ROOT, removeDir, tempDir, waitFor } from "../support/process.ts";

const AUDIENCE = "https://natsbind.test";
const SECRET = "webhook-secret-for-version-tests";
const BINDING = `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: acme}
spec:
  gitlab: {group: acme}
  deletionPolicy: Delete
  roles:
    - name: ci
      publish: {allow: ["build.{{project.id}}.{{tag(pipeline)}}.>"]}
      subscribe: {allow: ["_INBOX.>", "build.{{project.id}}.>"]}
      ci: {refs: protected}
`;

/** Publishes on `subject` and waits for its own subscription to get it back. */
async function roundTrip(nc: Awaited<ReturnType<typeof connect>>, subject: string): Promise<string> {
  const sub = nc.subscribe(subject, { max: 1 });
  const got = (async () => {
    for await (const m of sub) return m.string();
    return "";
  })();
  nc.publish(subject, "ping");
  await nc.flush();
  return got;
}

for (const tool of ["nats-server-2.10", "nats-server-2.11"] satisfies NatsServerTool[]) {
  const binary = natsServerBinary(tool);
  const version = natsServerVersion(binary).replace(/^v/, "");
  const hasDefaultSentinel = atLeast(version, FEATURE_VERSIONS.defaultSentinel);

  describe(`nats-server ${version} (${tool})`, { timeout: 60_000 }, () => {
    let op: TestOperator;
    let cluster: NatsCluster;
    let sim: GitLabSimulator;
    let dir: string;
    let config: Config;
    let resolver: NatsResolver;
    let controller: RunningController | undefined;
    const logLines: string[] = [];
    const projects: Array<{ id: number }> = [];

    const slotOf = (projectId: number) =>
      new DirectoryKeyStore(config.keys.directory).get({ binding: "acme", projectId });

    before(async () => {
      op = await createTestOperator({ callout: true });
      cluster = await startNatsCluster(3, {
        ...op.serverOptions,
        binary,
        // nats-server < 2.11.2 refuses the option ("unknown field"): there the callout's clients
        // present the sentinel's creds themselves.
        defaultSentinel: hasDefaultSentinel ? op.serverOptions.defaultSentinel : undefined,
      });
      sim = await GitLabSimulator.start();
      dir = await tempDir("versions");
      await mkdir(join(dir, "bindings"));
      await writeFile(join(dir, "token"), sim.token);
      await writeFile(join(dir, "secret"), SECRET);
      const document = {
        nats: natsConfigSection(op, cluster.urls, { systemUser: "issued" }),
        gitlab: { url: sim.url, tokenFile: "token", webhookSecretFile: "secret", resyncInterval: "1h" },
        http: { listen: "127.0.0.1:0" },
        credentials: {
          audience: AUDIENCE,
          audit: { file: "audit/credentials.log" },
          callout: { credsFile: op.callout!.credsFile, signingKeyFile: op.callout!.signingKeyFile },
        },
      };
      await writeFile(join(dir, "natsbind.yaml"), JSON.stringify(document));
      config = parseConfig(document, "versions test config", dir);
      resolver = (await connectResolver(config.nats)).resolver;
    });
    after(async () => {
      await controller?.stop();
      await resolver?.close();
      await sim?.stop();
      await cluster?.stop();
      await op?.remove();
      if (dir) await removeDir(dir);
    });

    it("every server reports this version on the system account", async () => {
      assert.deepEqual(
        await resolver.serverVersions(),
        cluster.servers
          .map((s) => ({ server: s.name, version }))
          .sort((a, b) => (a.server < b.server ? -1 : 1)),
      );
      assert.deepEqual(await resolver.topology(), { servers: 3, fullResolvers: 3 });
    });

    it("resolver: a push is acked by each server, looked up on each, listed, read back in VARZ, and deleted", async () => {
      const account = NKeyPair.generate("account");
      const jwt = signJwt(
        accountClaims(
          { publicKey: account.publicKey, name: "plain", signingKeys: [] },
          op.signingKey.publicKey,
        ),
        op.signingKey,
        Math.floor(Date.now() / 1000),
      );
      const pushed = await resolver.push(jwt);
      assert.deepEqual(
        pushed.replies.map((r) => `${r.server}:${r.code} ${r.message}`).sort(),
        cluster.servers.map((s) => `${s.name}:200 jwt updated`).sort(),
      );
      assert.equal(await resolver.lookup(account.publicKey), jwt);
      assert.deepEqual(await resolver.lookupOnEveryServer(account.publicKey), [jwt, jwt, jwt]);
      assert.ok((await resolver.list()).includes(account.publicKey));
      const trusted = await resolver.trustedOperators();
      assert.deepEqual(
        trusted.map((t) => t.operatorJwts.map((j) => j.trim())),
        [[op.operatorJwt], [op.operatorJwt], [op.operatorJwt]],
      );
      const deleted = await resolver.delete([account.publicKey]);
      assert.deepEqual(
        deleted.replies.map((r) => `${r.code} ${r.message}`),
        ["200 deleted 1 accounts", "200 deleted 1 accounts", "200 deleted 1 accounts"],
      );
      assert.deepEqual(await resolver.lookupOnEveryServer(account.publicKey), [
        undefined,
        undefined,
        undefined,
      ]);
    });

    it("provisioning (local mode): one account per project, usable by its role's users, gone with the project", async () => {
      const acme = sim.createGroup({ name: "Acme", path: "acme" });
      for (const name of ["api", "web", "worker"])
        projects.push(sim.createProject({ name, groupId: acme.id }));
      await writeFile(join(dir, "bindings", "acme.yaml"), BINDING);
      controller = await runController(config, {
        log: createLogger({ write: (line) => void logLines.push(line) }),
      });
      sim.addSystemHook(`${controller.url}/webhooks/gitlab`, SECRET);
      const accounts: string[] = [];
      for (const p of projects) {
        await waitFor(
          async () => {
            const slot = await slotOf(p.id);
            return slot !== undefined && (await resolver.lookup(slot.account)) !== undefined;
          },
          { what: `the account of project ${p.id} on the servers`, timeoutMs: 15_000, intervalMs: 25 },
        );
        accounts.push((await slotOf(p.id))!.account);
      }
      for (const account of accounts)
        assert.equal((await resolver.lookupOnEveryServer(account)).filter(Boolean).length, 3);

      const api = projects[0]!;
      const slot = (await slotOf(api.id))!;
      const nc = await connectWithCreds(
        cluster.urls[2]!,
        roleUserCreds(slot.account, slot.roleKeys.get("ci")!, { tags: ["pipeline:5"] }),
      );
      const events = watchStatus(nc);
      try {
        assert.equal(await roundTrip(nc, `build.${api.id}.5.status`), "ping");
        nc.publish(`build.${api.id}.6.status`, "not this pipeline");
        await nc.flush();
        await events.next("a permissions violation", (e) => e.startsWith("error: "));
        // CONNZ and STATZ of the account (key rotation reads who still uses a key).
        const live = await resolver.connections(slot.account);
        assert.deepEqual(
          live.map((c) => c.issuerKey),
          [slot.roles.ci],
        );
      } finally {
        await nc.close();
      }

      const worker = projects[2]!;
      const workerAccount = (await slotOf(worker.id))!.account;
      sim.deleteProject(worker.id);
      await sim.deliverPending();
      await waitFor(async () => (await resolver.lookup(workerAccount)) === undefined, {
        what: "the deleted project's account gone from the servers",
        timeoutMs: 10_000,
        intervalMs: 25,
      });
      assert.deepEqual(await resolver.lookupOnEveryServer(workerAccount), [undefined, undefined, undefined]);
    });

    it("credentials exchange: a job's ID token becomes a user that connects with its role's scope", async () => {
      const api = projects[0]!;
      const token = sim.mintIdToken({ projectId: api.id, aud: AUDIENCE, extra: { pipeline_id: "77" } });
      const res = await fetch(`${controller!.url}/v1/credentials`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${token}`,
          accept: "text/plain",
          "content-type": "application/json",
        },
        body: JSON.stringify({ role: "ci", ttl: "5m" }),
      });
      const creds = await res.text();
      assert.equal(res.status, 200, creds);
      const nc = await connectWithCreds(cluster.urls[1]!, new TextEncoder().encode(creds));
      try {
        assert.equal(await roundTrip(nc, `build.${api.id}.77.done`), "ping");
      } finally {
        await nc.close();
      }
    });

    it(
      hasDefaultSentinel
        ? "auth callout: a client with nothing but its ID token gets in (default_sentinel)"
        : `auth callout: no default_sentinel before ${FEATURE_VERSIONS.defaultSentinel}: a token alone is refused without a callout, the sentinel's creds and the token get in, and natsbind said so`,
      async () => {
        const api = projects[0]!;
        const token = sim.mintIdToken({ projectId: api.id, aud: AUDIENCE, extra: { pipeline_id: "88" } });
        const tokenOnly = () =>
          connect({ servers: cluster.urls[0]!, token, maxReconnectAttempts: 0, timeout: 5_000 });
        let nc;
        if (hasDefaultSentinel) {
          nc = await tokenOnly();
        } else {
          await assert.rejects(tokenOnly(), /Authorization Violation/);
          const logged = logLines.find((l) => l.includes("no default_sentinel"));
          assert.ok(logged, "natsbind run logged that these servers have no default_sentinel");
          assert.match(
            logged,
            new RegExp(`${cluster.servers[0]!.name} \\(${version.replace(/\./g, "\\.")}\\)`),
          );
          nc = await connect({
            servers: cluster.urls[0]!,
            token,
            authenticator: jwtAuthenticator(op.callout!.sentinelJwt),
            maxReconnectAttempts: 0,
            timeout: 5_000,
          });
        }
        try {
          assert.equal(await roundTrip(nc, `build.${api.id}.88.done`), "ping");
        } finally {
          await nc.close();
        }
      },
    );

    it(
      atLeast(version, FEATURE_VERSIONS.functionInsideToken)
        ? "a NATS function inside a subject token is expanded"
        : `a NATS function inside a subject token (needs ${FEATURE_VERSIONS.functionInsideToken}) is refused before the push, naming the servers`,
      async () => {
        const account = NKeyPair.generate("account");
        const ci = NKeyPair.generate("account");
        const jwt = signJwt(
          accountClaims(
            {
              publicKey: account.publicKey,
              name: "partial",
              signingKeys: [
                {
                  key: ci.publicKey,
                  role: "ci",
                  template: { pub: { allow: ["kv.p{{tag(project)}}.>"] }, sub: { allow: ["kv.>"] } },
                },
              ],
            },
            op.signingKey.publicKey,
          ),
          op.signingKey,
          Math.floor(Date.now() / 1000),
        );
        if (!atLeast(version, FEATURE_VERSIONS.functionInsideToken)) {
          await assert.rejects(resolver.push(jwt), (err: Error) => {
            assert.ok(err instanceof ResolverUnsupportedError, `${err.name}: ${err.message}`);
            assert.match(
              err.message,
              /role "ci" subject "kv\.p\{\{tag\(project\)\}\}\.>" has a NATS function inside a subject token/,
            );
            assert.match(err.message, /needs nats-server >= 2\.11\.0; older: /);
            for (const s of cluster.servers)
              assert.ok(err.message.includes(`${s.name} (${version})`), err.message);
            return true;
          });
          assert.equal(await resolver.lookup(account.publicKey), undefined, "nothing was pushed");
          return;
        }
        await resolver.push(jwt);
        const nc = await connectWithCreds(
          cluster.urls[0]!,
          roleUserCreds(account.publicKey, ci, { tags: ["project:42"] }),
        );
        try {
          assert.equal(await roundTrip(nc, "kv.p42.x"), "ping");
        } finally {
          await nc.close();
        }
      },
    );

    it(
      atLeast(version, FEATURE_VERSIONS.functionInsideToken)
        ? "a binding whose role puts a function inside a token is provisioned"
        : "a binding whose role puts a function inside a token is not provisioned, and its status says why",
      async (t) => {
        const tools = sim.createGroup({ name: "Tools", path: "tools" });
        const lint = sim.createProject({ name: "lint", groupId: tools.id });
        await writeFile(
          join(dir, "bindings", "tools.yaml"),
          BINDING.replace("name: acme", "name: tools")
            .replace("group: acme", "group: tools")
            .replace('"build.{{project.id}}.{{tag(pipeline)}}.>"', '"kv.p{{tag(pipeline)}}.>"'),
        );
        const status = () => new StatusFiles(config.state.directory).read("tools");
        if (atLeast(version, FEATURE_VERSIONS.functionInsideToken)) {
          await waitFor(
            async () => {
              const slot = await new DirectoryKeyStore(config.keys.directory).get({
                binding: "tools",
                projectId: lint.id,
              });
              return slot !== undefined && (await resolver.lookup(slot.account)) !== undefined;
            },
            { what: "the tools project's account on the servers", timeoutMs: 15_000, intervalMs: 25 },
          );
          return;
        }
        await waitFor(
          async () =>
            (await status())?.conditions.some(
              (c) =>
                c.type === "ResolverSynced" &&
                c.status === "False" &&
                /needs nats-server >= 2\.11\.0/.test(c.message),
            ) ?? false,
          { what: "ResolverSynced False naming the version", timeoutMs: 15_000, intervalMs: 25 },
        );
        const synced = (await status())!.conditions.find((c) => c.type === "ResolverSynced")!;
        t.diagnostic(`status.conditions ResolverSynced: ${synced.message}`);
        assert.match(
          synced.message,
          /subject "kv\.p\{\{tag\(pipeline\)\}\}\.>" has a NATS function inside a subject token/,
        );
        assert.ok(synced.message.includes(`${cluster.servers[0]!.name} (${version})`), synced.message);
        const slot = await new DirectoryKeyStore(config.keys.directory).get({
          binding: "tools",
          projectId: lint.id,
        });
        if (slot) assert.equal(await resolver.lookup(slot.account), undefined, "nothing pushed");
      },
    );

    if (!hasDefaultSentinel) {
      it("natsbind callout setup refuses before writing or pushing anything", async () => {
        const out = join(dir, "callout-out");
        const run = await promisify(execFile)(
          process.execPath,
          [
            join(REPO_ROOT, "src", "cli", "main.ts"),
            "callout",
            "setup",
            "--config",
            join(dir, "natsbind.yaml"),
            "--out",
            out,
          ],
          { timeout: 30_000 },
        ).then(
          () => ({ code: 0, stderr: "" }),
          (err: { code?: number; stderr?: string }) => ({ code: err.code ?? -1, stderr: err.stderr ?? "" }),
        );
        assert.equal(run.code, 1, run.stderr);
        assert.match(
          run.stderr,
          new RegExp(
            `default_sentinel needs nats-server >= ${FEATURE_VERSIONS.defaultSentinel.replace(/\./g, "\\.")} on every server`,
          ),
        );
        assert.match(run.stderr, /nothing was written or pushed/);
        // (--out is created empty before the servers are asked, as init's target check does.)
        assert.deepEqual(existsSync(out) ? readdirSync(out) : [], [], "nothing written");
      });
    }
  });
}
