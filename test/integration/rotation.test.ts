// Signing-key rotation end to end in local mode (real nats-server in operator mode with a full
// resolver, GitLab simulator, natsbind run in-process): `natsbind rotate` hands the request to the
// running controller; the new key is listed, pushed and then issues while connected users of the old
// key stay connected; the old key retires only once no connection uses it; --emergency cuts off
// exactly the role's users; with no natsbind run, the command does the work itself.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Config } from "../../src/config/config.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import type { StoredAccount } from "../../src/keystore/port.ts";
import { readJwt } from "../../src/nats/claims.ts";
import { runController, type RunningController } from "../../src/main.ts";
import { createLogger } from "../../src/observability/logger.ts";
import type { RotationEvent } from "../../src/rotation/rotator.ts";
import { StatusFiles } from "../../src/store/status-files.ts";
import { startLocalRig, type LocalRig } from "../support/local-rig.ts";
import { connectWithCreds, roleUserCreds, watchStatus } from "../support/operator.ts";
import { REPO_ROOT, waitFor } from "../support/process.ts";

const run = promisify(execFile);
const MAIN = join(REPO_ROOT, "src", "cli", "main.ts");

const BINDING = `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: { name: acme }
spec:
  gitlab: { group: acme }
  roles:
    - name: ci
      publish: { allow: ["build.{{project.id}}.>"] }
      subscribe: { allow: ["build.{{project.id}}.>", "_INBOX.>"] }
    - name: deploy
      publish: { allow: ["deploy.{{project.id}}.>"] }
      subscribe: { allow: ["_INBOX.>"] }
`;

describe("signing-key rotation (local mode)", { timeout: 180_000 }, () => {
  let rig: LocalRig;
  let config: Config;
  let controller: RunningController | undefined;
  const events: Array<{ key: string; event: RotationEvent }> = [];
  const open: NatsConnection[] = [];
  let projectIds: number[] = [];

  const store = () => new DirectoryKeyStore(config.keys.directory);
  const slotOf = async (projectId: number): Promise<StoredAccount> =>
    (await store().list("acme")).find((s) => s.ref.projectId === projectId)!;
  const heldKeys = async (account: string): Promise<string[]> => {
    const jwt = await rig.resolver.lookup(account);
    const { claims } = readJwt(jwt!, "held");
    return ((claims.nats.signing_keys as Array<{ key: string }>) ?? []).map((k) => k.key).sort();
  };
  const userOf = async (projectId: number, role: string): Promise<NatsConnection> => {
    const keys = (await store().get({ binding: "acme", projectId }))!;
    const nc = await connectWithCreds(
      rig.server.url,
      roleUserCreds(keys.account, keys.roleKeys.get(role)!, { name: `${role}-${projectId}` }),
    );
    open.push(nc);
    return nc;
  };
  const start = async () => {
    controller = await runController(config, {
      log: createLogger({ write: () => undefined }),
      onRotation: (key, event) => events.push({ key, event }),
    });
  };
  /** `natsbind rotate` as a user runs it: a separate process (so the lock holder is another pid). */
  const rotate = async (...args: string[]): Promise<{ code: number; out: string }> => {
    const cmd = [MAIN, "rotate", "--config", join(rig.dir, "natsbind.yaml"), "--binding", "acme", ...args];
    try {
      const { stdout, stderr } = await run(process.execPath, cmd, { timeout: 120_000 });
      return { code: 0, out: `${stdout}\n${stderr}` };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === "number" ? e.code : -1, out: `${e.stdout ?? ""}\n${e.stderr ?? ""}` };
    }
  };

  before(async () => {
    rig = await startLocalRig({ name: "rotation" });
    const acme = rig.sim.createGroup({ name: "Acme", path: "acme" });
    projectIds = [
      rig.sim.createProject({ name: "api", groupId: acme.id }).id,
      rig.sim.createProject({ name: "web", groupId: acme.id }).id,
    ];
    await writeFile(join(rig.dir, "bindings", "acme.yaml"), BINDING);
    config = rig.config();
    // The CLI reads the same configuration from a file.
    await writeFile(
      join(rig.dir, "natsbind.yaml"),
      JSON.stringify({
        nats: {
          servers: [rig.server.url],
          systemCreds: config.nats.systemCreds,
          operatorSigningKey: config.nats.operatorSigningKey,
          operatorJwt: config.nats.operatorJwt,
        },
        gitlab: { url: rig.sim.url, tokenFile: "token", resyncInterval: "1h" },
        http: { listen: "127.0.0.1:0" },
      }),
    );
    await start();
    await waitFor(
      async () => {
        const slots = await store().list("acme");
        return (
          slots.length === 2 &&
          (await Promise.all(slots.map((s) => rig.resolver.lookup(s.account)))).every(Boolean)
        );
      },
      { what: "both accounts on the server", timeoutMs: 20_000, intervalMs: 50 },
    );
  });

  after(async () => {
    for (const nc of open) await nc.close().catch(() => undefined);
    await controller?.stop();
    await rig?.stop();
  });

  it("records when new role keys started issuing", async () => {
    const slot = await slotOf(projectIds[0]!);
    for (const role of ["ci", "deploy"])
      assert.ok((slot.rotation?.[role]?.activeSince ?? 0) > Date.now() - 60_000, role);
    await waitFor(
      async () => (await new StatusFiles(config.state.directory).read("acme"))?.rotation !== undefined,
      {
        what: "the status file",
        timeoutMs: 10_000,
        intervalMs: 50,
      },
    );
    const status = await new StatusFiles(config.state.directory).read("acme");
    assert.deepEqual(status?.rotation?.accounts, { active: 2, prepared: 0, retiring: 0 });
    assert.ok(status?.rotation?.nextRotation, "a scheduled rotation is due some day");
  });

  it("rotate: the new key issues, connected users of the old key stay, and the old key retires once unused", async () => {
    const [api] = projectIds as [number];
    const before = await slotOf(api);
    const oldCi = before.roles.ci!;
    const nc = await userOf(api, "ci");
    const status = watchStatus(nc);
    const sub = nc.subscribe(`build.${api}.>`);

    const { code, out } = await rotate("--project", String(api), "--role", "ci");
    assert.equal(code, 0, out);
    const after = await slotOf(api);
    assert.notEqual(after.roles.ci, oldCi, "a new ci key issues");
    assert.equal(after.roles.deploy, before.roles.deploy, "other roles are untouched");
    assert.deepEqual(
      after.rotation!.ci!.retiring!.map((r) => r.key),
      [oldCi],
    );
    assert.deepEqual(
      await heldKeys(after.account),
      [after.roles.ci!, oldCi, after.roles.deploy!].sort(),
      "both ci keys listed on the server",
    );
    const other = await slotOf(projectIds[1]!);
    assert.equal(other.rotation?.ci?.retiring, undefined, "other projects are untouched");

    // A user of the new key connects; the old key's user is still connected and working.
    const fresh = await userOf(api, "ci");
    fresh.publish(`build.${api}.1`, "from the new key");
    await fresh.flush();
    const got = await (async () => {
      for await (const m of sub) return m.string();
    })();
    assert.equal(got, "from the new key");
    assert.equal(nc.isClosed(), false);

    // Past the overlap (5 s without credentials) the old key stays while its user is connected...
    await waitFor(
      async () => {
        return events.some(
          (e) => e.event.phase === "KeyRetirementWaiting" && e.event.account === after.account,
        );
      },
      {
        what: `the retirement to wait for the live connection (events: ${JSON.stringify(events.map((e) => [e.event.phase, e.event.message]))})`,
        timeoutMs: 30_000,
        intervalMs: 100,
      },
    );
    assert.ok((await heldKeys(after.account)).includes(oldCi));
    assert.equal(status.errors().length, 0, `no error on the old key's connection: ${status.all.join(", ")}`);
    // ...and goes once it is gone.
    await nc.close();
    await waitFor(async () => !(await heldKeys(after.account)).includes(oldCi), {
      what: "the old key to be removed from the account JWT",
      timeoutMs: 30_000,
      intervalMs: 200,
    });
    await waitFor(async () => !(await readdir(config.keys.directory)).includes(`${oldCi}.nk`), {
      what: "the old key's seed to be deleted after the push",
      timeoutMs: 10_000,
      intervalMs: 100,
    });
    assert.equal(fresh.isClosed(), false, "the new key's user was never cut off");
    await fresh.close();
    assert.deepEqual(
      events
        .filter((e) => e.event.account === after.account)
        .map((e) => e.event.phase)
        .filter((p) => p !== "KeyRetirementWaiting"),
      ["KeyPrepared", "KeyActivated", "KeyRetired"],
    );
  });

  it("rotate --emergency cuts off the role's users at once and reports them; other roles and projects keep theirs", async () => {
    const [api, web] = projectIds as [number, number];
    const ciUser = await userOf(api, "ci");
    const ciEvents = watchStatus(ciUser);
    const deployUser = await userOf(api, "deploy");
    const webUser = await userOf(web, "ci");
    const before = await slotOf(api);

    const { code, out } = await rotate("--project", String(api), "--role", "ci", "--emergency");
    assert.equal(code, 0, out);
    assert.match(out, /1 connection\(s\) on the removed keys were closed/, out);
    await waitFor(async () => ciUser.isClosed() || ciEvents.errors().length > 0, {
      what: "the leaked key's user to be cut off",
      timeoutMs: 10_000,
      intervalMs: 50,
    });
    const after = await slotOf(api);
    assert.notEqual(after.roles.ci, before.roles.ci);
    assert.deepEqual(await heldKeys(after.account), [after.roles.ci!, after.roles.deploy!].sort());
    await deployUser.flush();
    await webUser.flush();
    assert.equal(deployUser.isClosed(), false, "the deploy role's user is untouched");
    assert.equal(webUser.isClosed(), false, "the other project's user is untouched");
    const again = await userOf(api, "deploy");
    await again.flush();
    assert.equal(again.isClosed(), false, "the deploy key still issues working users");
  });

  it("with no natsbind run, rotate runs the controller itself until the new keys issue", async () => {
    await controller?.stop();
    controller = undefined;
    const before = await slotOf(projectIds[1]!);
    const { code, out } = await rotate("--project", String(projectIds[1]), "--role", "deploy");
    assert.equal(code, 0, out);
    const after = await slotOf(projectIds[1]!);
    assert.notEqual(after.roles.deploy, before.roles.deploy);
    assert.ok((await heldKeys(after.account)).includes(after.roles.deploy!), "pushed before it issues");
    await start();
  });
});
