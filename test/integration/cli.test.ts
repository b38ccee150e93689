// The natsbind command line as a user runs it: real process, real nats-server.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { GitLabSimulator } from "../support/gitlab-sim.ts";
import { startNatsServer, type NatsServer } from "../support/nats-server.ts";
import { REPO_ROOT, removeDir, tempDir } from "../support/process.ts";

const run = promisify(execFile);
const MAIN = join(REPO_ROOT, "src", "cli", "main.ts");

async function natsbind(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [MAIN, ...args], { timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

describe("natsbind CLI", { timeout: 120_000 }, () => {
  let dir: string;
  let server: NatsServer;
  let config: string;

  before(async () => {
    dir = await tempDir("cli");
    const init = await natsbind("init", "--out", join(dir, "op"));
    assert.equal(init.code, 0, init.stderr);
    assert.match(init.stdout, /operator\s+O[A-Z0-9]{55}/);
    const op = join(dir, "op");
    const read = (f: string): Promise<string> => readFile(join(op, f), "utf8").then((t) => t.trim());
    const sysJwt = await read("system-account.jwt");
    server = await startNatsServer({
      operatorJwt: await read("operator.jwt"),
      systemAccount: JSON.parse(Buffer.from(sysJwt.split(".")[1]!, "base64url").toString()).sub,
      systemAccountJwt: sysJwt,
    });
    // Point the generated config at the test server.
    config = join(op, "natsbind.yaml");
    const text = await readFile(config, "utf8");
    await writeFile(config, text.replace(/nats:\/\/127\.0\.0\.1:4222/, server.url));
  });
  after(async () => {
    await server?.stop();
    if (dir) await removeDir(dir);
  });

  it("pushes a sample account, lists, looks it up and deletes it", async () => {
    const push = await natsbind(
      "accounts",
      "push-sample",
      "--config",
      config,
      "--name",
      "grp/app",
      "--project-id",
      "42",
    );
    assert.equal(push.code, 0, push.stderr);
    const account = /^account (A[A-Z0-9]{55}) /m.exec(push.stdout)?.[1];
    assert.ok(account, push.stdout);
    assert.match(push.stdout, new RegExp(`push ${account} on ${server.name}: 200 jwt updated`));
    assert.match(push.stdout, /claims hash matches/);
    // Keys were saved before the push, one 0600 seed file per key.
    assert.ok((await readdir(join(dir, "op", "keys"))).includes(`${account}.nk`));

    assert.ok((await natsbind("accounts", "list", "--config", config)).stdout.split("\n").includes(account));
    const lookup = await natsbind("accounts", "lookup", "--config", config, account);
    assert.equal(JSON.parse(lookup.stdout).name, "grp/app");

    const del = await natsbind("accounts", "delete", "--config", config, account);
    assert.equal(del.code, 0, del.stderr);
    assert.match(del.stdout, /delete .* 200 deleted 1 accounts?/);
    const gone = await natsbind("accounts", "lookup", "--config", config, account);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, new RegExp(`the resolver holds no account ${account}`));
  });

  it("prints no seeds, whatever it is asked", async () => {
    const seeds =
      (await readFile(join(dir, "op", "system.creds"), "utf8")).match(/S[OAU][A-Z2-7]{56}/g) ?? [];
    const signing = (await readFile(join(dir, "op", "operator", "operator-signing.nk"), "utf8")).trim();
    const outputs = await Promise.all([
      natsbind("accounts", "push-sample", "--config", config, "--name", "x", "--project-id", "1"),
      natsbind("accounts", "lookup", "--config", config, "not-a-key"),
      natsbind("init", "--out", join(dir, "op")),
    ]);
    for (const o of outputs)
      for (const secret of [...seeds, signing]) assert.ok(!`${o.stdout}${o.stderr}`.includes(secret));
  });

  it("exits 2 with usage help for usage errors", async () => {
    for (const args of [
      ["init"],
      ["frobnicate"],
      ["init", "--out", dir, "--port", "99999"],
      ["accounts", "dance", "--config", config],
    ]) {
      const r = await natsbind(...args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, /^natsbind: /);
      assert.match(r.stderr, /run 'natsbind help' for usage/);
    }
  });

  it("exits 1 with one clear line for bad input", async () => {
    const missing = await natsbind("accounts", "list", "--config", join(dir, "nope.yaml"));
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /ConfigError: cannot read config .*nope\.yaml: ENOENT/);

    const exists = await natsbind("init", "--out", join(dir, "op"));
    assert.equal(exists.code, 1);
    assert.match(exists.stderr, /InitError: init: .* already holds keys; refusing to overwrite them/);

    const k8sConfig = join(dir, "k8s.yaml");
    await writeFile(
      k8sConfig,
      `mode: kubernetes\n${await readFile(config, "utf8")}`.replace(/^mode: local\n/m, ""),
    );
    const k8sStatus = await natsbind("status", "--config", k8sConfig);
    assert.equal(k8sStatus.code, 1, k8sStatus.stderr);
    assert.match(k8sStatus.stderr, /StatusModeError: .*in Kubernetes mode .*kubectl get nb -A/);

    const badKey = await natsbind("accounts", "lookup", "--config", config, "not-a-key");
    assert.equal(badKey.code, 1);
    assert.match(
      badKey.stderr,
      /KeyError: lookup: account is not a valid operator, account or user public nkey/,
    );
  });
});

describe("natsbind gitlab projects", { timeout: 60_000 }, () => {
  let dir: string;
  let sim: GitLabSimulator;

  before(async () => {
    dir = await tempDir("cli-gitlab");
    sim = await GitLabSimulator.start();
    await writeFile(join(dir, "token"), `${sim.token}\n`, { mode: 0o600 });
    const nats = `nats:\n  servers: ["nats://127.0.0.1:4222"]\n  systemCreds: s\n  operatorSigningKey: k\n  operatorJwt: o\n`;
    await writeFile(join(dir, "natsbind.yaml"), `${nats}gitlab:\n  url: ${sim.url}\n  tokenFile: token\n`);
    await writeFile(join(dir, "wrong.yaml"), `${nats}gitlab:\n  url: ${sim.url}\n  tokenFile: wrong-token\n`);
    await writeFile(join(dir, "wrong-token"), "glpat-not-valid\n");
  });
  after(async () => {
    await sim?.stop();
    if (dir) await removeDir(dir);
  });

  it("lists what a scope selects, by path or id", async () => {
    const top = sim.createGroup({ name: "Top", path: "top" });
    const sub = sim.createGroup({ name: "Sub", path: "sub", parentId: top.id });
    const a = sim.createProject({ name: "a", groupId: top.id });
    const b = sim.createProject({ name: "b", groupId: sub.id, visibility: "internal" });
    const solo = sim.createGroup({ name: "Solo", path: "solo" });
    const c = sim.createProject({ name: "c", groupId: solo.id });
    const r = await natsbind(
      "gitlab",
      "projects",
      "--config",
      join(dir, "natsbind.yaml"),
      "--group",
      "top",
      "--project",
      String(c.id),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n"), [
      `${a.id}\t${top.id}\tprivate\ttop/a`,
      `${b.id}\t${sub.id}\tinternal\ttop/sub/b`,
      `${c.id}\t${solo.id}\tprivate\tsolo/c`,
    ]);
    assert.match(r.stderr, /^3 projects$/m);
  });

  it("explains a bad token and a missing group without printing the token", async () => {
    const bad = await natsbind("gitlab", "projects", "--config", join(dir, "wrong.yaml"), "--group", "top");
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /GitLabAuthError: GitLab at http:\/\/127\.0\.0\.1:\d+ rejected the token \(401/);
    assert.ok(!bad.stderr.includes("glpat-not-valid"));
    const missing = await natsbind(
      "gitlab",
      "projects",
      "--config",
      join(dir, "natsbind.yaml"),
      "--group",
      "nope",
    );
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /GitLabNotFoundError: GET \/groups\/nope: 404 Group Not Found/);
    const none = await natsbind("gitlab", "projects", "--config", join(dir, "natsbind.yaml"));
    assert.equal(none.code, 2);
  });
});
