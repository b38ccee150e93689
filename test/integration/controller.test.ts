// natsbind run (local mode) end to end: real nats-server, GitLab simulator, binding files.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdir, writeFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { parseConfig, type Config } from "../../src/config/config.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import { decodeJwt } from "../../src/nats/claims.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { nullLogger } from "../../src/observability/logger.ts";
import { runController, type RunningController } from "../../src/main.ts";
import { ManualClock } from "../../src/runtime/clock.ts";
import { StatusFiles } from "../../src/store/status-files.ts";
import { GitLabSimulator } from "../support/gitlab-sim.ts";
import { startNatsServer, type NatsServer } from "../support/nats-server.ts";
import {
  connectWithCreds,
  createTestOperator,
  natsConfigSection,
  operatorResolver,
  roleUserCreds,
  watchStatus,
  type TestOperator,
} from "../support/operator.ts";
import { removeDir, tempDir, waitFor } from "../support/process.ts";

const SECRET = "webhook-secret-for-tests";

function bindingYaml(name: string, group: string, extra = ""): string {
  return `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: ${name}}
spec:
  gitlab: {group: ${group}}
  roles:
    - name: ci
      publish: {allow: ["build.status.{{project.slug}}.>"]}
      subscribe: {allow: ["_INBOX.>", "build.status.{{project.slug}}.>"]}
${extra}`;
}

describe("natsbind run (local mode)", { timeout: 180_000 }, () => {
  let op: TestOperator;
  let server: NatsServer;
  let sim: GitLabSimulator;
  let dir: string;
  let config: Config;
  let controller: RunningController | undefined;
  let resolver: NatsResolver;
  const pushedAt = new Map<number, number>();
  // Controller time (requeues, resyncs) is driven by the test; HTTP and GitLab use real time.
  const clock = new ManualClock(Date.now());

  const keys = (): DirectoryKeyStore => new DirectoryKeyStore(config.keys.directory);
  const status = (key: string) => new StatusFiles(config.state.directory).read(key);

  async function accountOf(binding: string, projectId: number): Promise<string | undefined> {
    return (await keys().get({ binding, projectId }))?.account;
  }

  async function waitForAccount(binding: string, projectId: number): Promise<string> {
    let account: string | undefined;
    await waitFor(
      async () => {
        account = await accountOf(binding, projectId);
        return account !== undefined && (await resolver.lookup(account)) !== undefined;
      },
      { what: `account of project ${projectId} on the server`, timeoutMs: 15_000, intervalMs: 25 },
    );
    return account!;
  }

  async function userCreds(binding: string, projectId: number): Promise<Uint8Array> {
    const slot = (await keys().get({ binding, projectId }))!;
    return roleUserCreds(slot.account, slot.roleKeys.get("ci")!, { name: "job" });
  }

  before(async () => {
    op = await createTestOperator();
    server = await startNatsServer(op.serverOptions);
    sim = await GitLabSimulator.start();
    dir = await tempDir("run");
    await mkdir(join(dir, "bindings"));
    await writeFile(join(dir, "token"), sim.token);
    await writeFile(join(dir, "secret"), SECRET);
    config = parseConfig(
      {
        nats: natsConfigSection(op, [server.url]),
        gitlab: { url: sim.url, tokenFile: "token", webhookSecretFile: "secret", resyncInterval: "1h" },
        http: { listen: "127.0.0.1:0" },
      },
      "test config",
      dir,
    );
    resolver = await operatorResolver(op, server.url);
  });

  after(async () => {
    await controller?.stop();
    await resolver?.close();
    await sim?.stop();
    await server?.stop();
    await op?.remove();
    if (dir) await removeDir(dir);
  });

  it("creates one account per project, usable by a user of the role key", async () => {
    const acme = sim.createGroup({ name: "Acme", path: "acme" });
    const team = sim.createGroup({ name: "Team", path: "team", parentId: acme.id });
    const api = sim.createProject({ name: "api", groupId: acme.id });
    const web = sim.createProject({ name: "Web Site", path: "web", groupId: team.id });
    await writeFile(
      join(dir, "bindings", "acme.yaml"),
      bindingYaml("acme", "acme", "  deletionPolicy: Delete\n"),
    );

    controller = await runController(config, {
      clock,
      log: nullLogger,
      onPushed: (_key, _account, projectId) => pushedAt.set(projectId, performance.now()),
    });
    sim.addSystemHook(`${controller.url}/webhooks/gitlab`, SECRET);
    const apiAccount = await waitForAccount("acme", api.id);
    await waitForAccount("acme", web.id);

    const claims = decodeJwt((await resolver.lookup(apiAccount))!);
    assert.equal(claims.name, "acme/api");
    assert.equal(claims.nats.info_url, `${sim.url}/acme/api`, "points back to the project");
    assert.ok((claims.nats.tags as string[]).includes(`gitlab-project-id:${api.id}`));

    const nc = await connectWithCreds(server.url, await userCreds("acme", api.id));
    const events = watchStatus(nc);
    try {
      const sub = nc.subscribe("build.status.api.>", { max: 1 });
      const got = (async () => {
        for await (const m of sub) return m.string();
      })();
      nc.publish("build.status.api.main", "green");
      assert.equal(await got, "green");
      nc.publish("build.status.web.main", "nope");
      await nc.flush();
      await events.next("a permissions violation", (e) => e.startsWith("error: "));
      assert.match(events.errors()[0]!, /Permissions Violation for Publish to "?build\.status\.web\.main"?/);
    } finally {
      await nc.close();
    }

    await waitFor(
      async () =>
        (await status("acme"))?.conditions.some((c) => c.type === "Ready" && c.status === "True") ?? false,
      {
        what: "Ready status",
        timeoutMs: 10_000,
        intervalMs: 25,
      },
    );
    const s = (await status("acme"))!;
    assert.equal(s.counts.projects, 2);
    assert.equal(s.counts.accounts, 2);
  });

  it("follows webhooks: create, rename and transfer (same key), destroy with Delete", async () => {
    const acme = sim.findGroupByPath("acme")!;
    const started = performance.now();
    const fresh = sim.createProject({ name: "worker", groupId: acme.id });
    await sim.deliverPending();
    const account = await waitForAccount("acme", fresh.id);
    assert.ok(pushedAt.get(fresh.id)! >= started);

    sim.renameProject(fresh.id, { path: "worker-v2", name: "worker-v2" });
    await sim.deliverPending();
    await waitFor(async () => decodeJwt((await resolver.lookup(account))!).name === "acme/worker-v2", {
      what: "the renamed account",
      timeoutMs: 10_000,
      intervalMs: 25,
    });
    assert.equal(await accountOf("acme", fresh.id), account, "a rename keeps the account key");

    const team = sim.findGroupByPath("acme/team")!;
    sim.transferProject(fresh.id, team.id);
    await sim.deliverPending();
    await waitFor(async () => decodeJwt((await resolver.lookup(account))!).name === "acme/team/worker-v2", {
      what: "the transferred account",
      timeoutMs: 10_000,
      intervalMs: 25,
    });
    const tags = decodeJwt((await resolver.lookup(account))!).nats.tags as string[];
    assert.ok(tags.includes(`gitlab-namespace-id:${team.id}`), tags.join(" "));
    assert.equal(await accountOf("acme", fresh.id), account, "a transfer keeps the account key");

    sim.deleteProject(fresh.id);
    await sim.deliverPending();
    await waitFor(async () => (await resolver.lookup(account)) === undefined, {
      what: "the deleted account to leave the resolver",
      timeoutMs: 10_000,
      intervalMs: 25,
    });
    // Delete removes the keys too, right after the resolver delete.
    await waitFor(async () => (await accountOf("acme", fresh.id)) === undefined, {
      what: "the deleted account's keys gone",
      timeoutMs: 10_000,
      intervalMs: 25,
    });
  });

  it("reports an invalid binding and an overlapping one without touching anything", async () => {
    await writeFile(
      join(dir, "bindings", "broken.yaml"),
      bindingYaml("broken", "acme", "  deletionPolicy: Sometimes\n"),
    );
    await writeFile(join(dir, "bindings", "zz-overlap.yaml"), bindingYaml("zz-overlap", "acme"));
    await waitFor(
      async () => (await status("broken"))?.conditions.some((c) => c.reason === "InvalidSpec") ?? false,
      {
        what: "InvalidSpec on the broken binding",
        timeoutMs: 10_000,
        intervalMs: 25,
      },
    );
    assert.match(
      (await status("broken"))!.conditions.find((c) => c.type === "Ready")!.message,
      /deletionPolicy/,
    );
    await waitFor(
      async () => (await status("zz-overlap"))?.conditions.some((c) => c.reason === "Conflict") ?? false,
      {
        what: "Conflict on the overlapping binding",
        timeoutMs: 10_000,
        intervalMs: 25,
      },
    );
    assert.deepEqual(await keys().list("zz-overlap"), [], "the second binding created no accounts");
    await rm(join(dir, "bindings", "broken.yaml"));
    await rm(join(dir, "bindings", "zz-overlap.yaml"));
  });

  it("repairs drift: accounts missing on the server are pushed again", async () => {
    const api = sim.findProjectByPath("acme/api")!;
    const account = (await accountOf("acme", api.id))!;
    // Drift: the account vanished from the server behind natsbind's back.
    await resolver.delete([account]);
    assert.equal(await resolver.lookup(account), undefined);
    // The periodic drift check (requeueAfter = resync interval) looks every account up again.
    clock.advance(config.gitlab!.resyncInterval + 1);
    await waitFor(async () => (await resolver.lookup(account)) !== undefined, {
      what: "the deleted account to be pushed again",
      timeoutMs: 10_000,
      intervalMs: 25,
    });
    assert.equal(await accountOf("acme", api.id), account, "same key as before");
  });

  it("removes every account of a removed Delete binding", async () => {
    const accounts = (await keys().list("acme")).map((s) => s.account);
    assert.equal(accounts.length, 2, "api and web");
    await rm(join(dir, "bindings", "acme.yaml"));
    await waitFor(
      async () => {
        for (const a of accounts) if ((await resolver.lookup(a)) !== undefined) return false;
        return true;
      },
      { what: "all accounts of the removed binding gone", timeoutMs: 15_000, intervalMs: 25 },
    );
    // Keys and status go after the resolver deletes, in the same reconcile: wait for its end.
    await waitFor(
      async () => (await keys().list("acme")).length === 0 && (await status("acme")) === undefined,
      {
        what: "keys and status of the removed binding gone",
        timeoutMs: 10_000,
        intervalMs: 25,
      },
    );
  });
});
