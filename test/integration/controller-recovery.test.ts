// natsbind run under adverse conditions: missed webhooks, Retain, hostile names, a server that
// lost its resolver directory, and a controller killed with SIGKILL mid-sync.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { appendFileSync } from "node:fs";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { stringify } from "yaml";
import { NODE_FLAGS } from "../../src/cli/node-flags.ts";
import { parseConfig, type Config } from "../../src/config/config.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import { decodeJwt } from "../../src/nats/claims.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { subjectProblem } from "../../src/nats/subjects.ts";
import { createLogger, nullLogger } from "../../src/observability/logger.ts";
import { runController, type RunningController } from "../../src/main.ts";
import { ManualClock } from "../../src/runtime/clock.ts";
import { StatusFiles } from "../../src/store/status-files.ts";
import { GitLabSimulator } from "../support/gitlab-sim.ts";
import { startNatsServer, type NatsServer } from "../support/nats-server.ts";
import {
  createTestOperator,
  natsConfigSection,
  operatorResolver,
  type TestOperator,
} from "../support/operator.ts";
import { REPO_ROOT, freePort, removeDir, tempDir, waitFor } from "../support/process.ts";

function binding(name: string, group: string, deletionPolicy: "Retain" | "Delete"): string {
  return stringify({
    apiVersion: "natsbind.io/v1alpha1",
    kind: "NatsBinding",
    metadata: { name },
    spec: {
      gitlab: { group },
      roles: [{ name: "ci", publish: { allow: ["build.{{project.slug}}.{{project.path}}.>"] } }],
      deletionPolicy,
    },
  });
}

describe("natsbind run recovers", { timeout: 240_000 }, () => {
  let op: TestOperator;
  let server: NatsServer;
  let sim: GitLabSimulator;
  let dir: string;
  let config: Config;
  let resolver: NatsResolver;
  const clock = new ManualClock(Date.now());
  let controller: RunningController | undefined;

  const keys = (): DirectoryKeyStore => new DirectoryKeyStore(config.keys.directory);
  const onServer = async (account: string | undefined): Promise<boolean> =>
    account !== undefined && (await resolver.lookup(account)) !== undefined;
  const accountOf = async (b: string, projectId: number): Promise<string | undefined> =>
    (await keys().get({ binding: b, projectId }))?.account;

  before(async () => {
    op = await createTestOperator();
    server = await startNatsServer(op.serverOptions);
    sim = await GitLabSimulator.start();
    dir = await tempDir("recover");
    await mkdir(join(dir, "bindings"));
    await writeFile(join(dir, "token"), sim.token);
    const doc = {
      nats: natsConfigSection(op, [server.url]),
      gitlab: { url: sim.url, tokenFile: "token", resyncInterval: "1m" },
      http: { listen: `127.0.0.1:${await freePort()}` },
    };
    await writeFile(join(dir, "natsbind.yaml"), stringify(doc));
    config = parseConfig(doc, "test", dir);
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

  it("picks up a project created without a webhook at the next resync", async () => {
    const keep = sim.createGroup({ name: "Keep", path: "keep" });
    const first = sim.createProject({ name: "first", groupId: keep.id });
    await writeFile(join(dir, "bindings", "keep.yaml"), binding("keep", "keep", "Retain"));
    controller = await runController(config, {
      clock,
      log: process.env.NATSBIND_TEST_LOG
        ? createLogger({ level: "debug", write: (l) => appendFileSync(process.env.NATSBIND_TEST_LOG!, l) })
        : nullLogger,
    });
    await waitFor(async () => onServer(await accountOf("keep", first.id)), {
      what: "first account",
      timeoutMs: 15_000,
    });

    const quiet = sim.createProject({ name: "quiet", groupId: keep.id }); // no hook registered
    clock.advance(60_001);
    await waitFor(async () => onServer(await accountOf("keep", quiet.id)), {
      what: "the resync to find it",
      timeoutMs: 15_000,
    });
  });

  it("keeps the account of a deleted project under Retain, and says so", async () => {
    const first = sim.findProjectByPath("keep/first")!;
    const account = (await accountOf("keep", first.id))!;
    sim.deleteProject(first.id);
    clock.advance(60_001);
    const statuses = new StatusFiles(config.state.directory);
    await waitFor(async () => (await statuses.read("keep"))?.counts.retained === 1, {
      what: "Retained in status",
      timeoutMs: 15_000,
    });
    assert.ok(await onServer(account), "the account stays on the server");
    assert.equal(await accountOf("keep", first.id), account, "and its keys stay");
    const summary = (await statuses.read("keep"))!.accounts.find((a) => a.account === account);
    assert.equal(summary?.state, "Retained");
  });

  it("renders hostile project names into safe subjects", async () => {
    const hostile = sim.createGroup({ name: "Hostile", path: "hostile" });
    const names = ["x.*.> y", "tab\there", "UPPER case", ">", "дом"];
    const projects = names.map((name, i) => sim.createProject({ name, path: `p-${i}`, groupId: hostile.id }));
    await writeFile(join(dir, "bindings", "hostile.yaml"), binding("hostile", "hostile", "Delete"));
    for (const p of projects) {
      await waitFor(async () => onServer(await accountOf("hostile", p.id)), {
        what: `account of ${p.name}`,
        timeoutMs: 15_000,
      });
      const claims = decodeJwt((await resolver.lookup((await accountOf("hostile", p.id))!))!);
      const scoped = (claims.nats.signing_keys as Array<{ template: { pub: { allow: string[] } } }>)[0]!;
      for (const subject of scoped.template.pub.allow) {
        assert.equal(subjectProblem(subject.replace(/\.>$/, ""), false), undefined, subject);
      }
    }
  });

  it("re-pushes every account after the server lost its resolver directory", async () => {
    // The accounts still managed: the retained one (deleted project) is left alone by design.
    const slots = (await keys().list("keep")).filter(
      (slot) => sim.getProject(slot.ref.projectId) !== undefined,
    );
    assert.equal(slots.length, 1);
    await server.process().stop();
    await rm(join(server.dir, "jwt"), { recursive: true, force: true });
    await server.restart();
    // Clients reconnect on their own; wait until the system account answers again.
    await waitFor(
      async () => (await resolver.lookup(op.systemAccount).catch(() => undefined)) !== undefined,
      {
        what: "the restarted server to answer",
        timeoutMs: 20_000,
        intervalMs: 100,
      },
    );
    for (const s of slots) assert.equal(await onServer(s.account), false, "wiped");
    // Controller time moves on: the drift check (or, if the controller's connection was still
    // reconnecting, its retry) looks the accounts up and pushes them again.
    await waitFor(
      async () => {
        clock.advance(60_001);
        for (const s of slots) if (!(await onServer(s.account))) return false;
        return true;
      },
      { what: "every account back on the server", timeoutMs: 30_000, intervalMs: 250 },
    );
    await controller?.stop();
    controller = undefined;
  });

  it("converges after SIGKILL mid-sync: no key lost, no orphan account", async () => {
    const many = sim.populate({ rootPath: "many", projects: 150, depth: 1, fanout: 3 });
    await writeFile(join(dir, "bindings", "many.yaml"), binding("many", "many", "Delete"));
    const start = () =>
      spawn(
        process.execPath,
        [
          ...NODE_FLAGS,
          join(REPO_ROOT, "src", "cli", "main.ts"),
          "run",
          "--config",
          join(dir, "natsbind.yaml"),
        ],
        {
          stdio: "ignore",
        },
      );
    const first = start();
    // Kill as soon as some, but not all, accounts are stored.
    await waitFor(async () => (await keys().list("many")).length >= 10, {
      what: "some keys written",
      timeoutMs: 30_000,
      intervalMs: 5,
    });
    first.kill("SIGKILL");
    await new Promise((r) => first.once("exit", r));
    // Mid-sync: keys written for some projects, and not every stored account pushed yet.
    const storedAtCrash = await keys().list("many");
    let unpushed = many.projects.length - storedAtCrash.length;
    for (const slot of storedAtCrash) if (!(await onServer(slot.account))) unpushed++;
    assert.ok(
      unpushed > 0,
      `killed mid-sync (${storedAtCrash.length} of ${many.projects.length} slots stored)`,
    );

    const second = start();
    try {
      await waitFor(async () => (await keys().list("many")).length === many.projects.length, {
        what: "a slot for every project",
        timeoutMs: 60_000,
      });
      for (const slot of await keys().list("many")) {
        await waitFor(() => onServer(slot.account), { what: `account ${slot.account}`, timeoutMs: 20_000 });
        // No key lost: every stored slot still loads (seeds present).
        assert.ok(await keys().get(slot.ref));
      }
      // No orphan: every account the server holds for this operator has its keys here.
      const stored = new Set(
        (await Promise.all(["keep", "hostile", "many"].map((b) => keys().list(b))))
          .flat()
          .map((s) => s.account),
      );
      for (const account of await resolver.list()) {
        if (account === op.systemAccount) continue;
        assert.ok(stored.has(account), `account ${account} on the server has no keys`);
      }
    } finally {
      second.kill("SIGTERM");
      await new Promise((r) => second.once("exit", r));
    }
  });
});
