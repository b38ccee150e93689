// `natsbind credentials revoke` end to end in local mode: real nats-server (operator mode, full
// resolver), GitLab simulator minting CI ID tokens, natsbind run in process with CI credentials and
// an audit file, and the command as a separate process (as a user runs it). A revoked connected user
// is cut off and refused from then on, and nobody else is; --all cuts the account's users issued
// until now and not later ones; --job / --pipeline find keys in the audit file and in CONNZ; the
// entries survive a later push; with no natsbind run the command does the work itself; bad input
// changes nothing and never echoes a seed.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Config } from "../../src/config/config.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import type { AccountKeys } from "../../src/keystore/port.ts";
import { decodeJwt } from "../../src/nats/claims.ts";
import { formatCreds } from "../../src/nats/creds.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { runController, type RunningController } from "../../src/main.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { RequestFiles } from "../../src/rotation/request-files.ts";
import { startLocalRig, type LocalRig } from "../support/local-rig.ts";
import { connectWithCreds, roleUserCreds, watchStatus } from "../support/operator.ts";
import { REPO_ROOT, waitFor } from "../support/process.ts";

const run = promisify(execFile);
const MAIN = join(REPO_ROOT, "src", "cli", "main.ts");
const AUDIENCE = "https://natsbind.test";
// What nats-server 2.15.2 says (verified in revocation.test.ts): to a connected user when the push
// revokes it, and to a revoked user that connects.
const REVOKED_NOTICE = "User Authentication Revoked";
const REFUSED = /Authorization Violation/;

const BINDING = `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: { name: acme }
spec:
  gitlab: { group: acme }
  roles:
    - name: ci
      publish: { allow: ["build.{{project.id}}.>"] }
      subscribe: { allow: ["build.{{project.id}}.>", "_INBOX.>"] }
      ci: { refs: protected }
`;

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

describe("natsbind credentials revoke (local mode)", { timeout: 240_000 }, () => {
  let rig: LocalRig;
  let config: Config;
  let controller: RunningController | undefined;
  let api: number;
  let web: number;
  const open: NatsConnection[] = [];
  const logLines: string[] = [];

  const store = () => new DirectoryKeyStore(config.keys.directory);
  const keysOf = async (projectId: number): Promise<AccountKeys> =>
    (await store().get({ binding: "acme", projectId }))!;
  const heldRevocations = async (account: string): Promise<Record<string, number>> =>
    (decodeJwt((await rig.resolver.lookup(account))!).nats.revocations ?? {}) as Record<string, number>;
  const auditLines = async (): Promise<Array<Record<string, unknown>>> =>
    (await readFile(config.credentials!.audit.file!, "utf8").catch(() => ""))
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  /** A user of the project's ci role key, connected (closed after the suite). */
  const connectUser = async (
    projectId: number,
    opts: { user?: NKeyPair; tags?: string[] } = {},
  ): Promise<{ nc: NatsConnection; creds: Uint8Array; user: NKeyPair }> => {
    const keys = await keysOf(projectId);
    const user = opts.user ?? NKeyPair.generate("user");
    const creds = roleUserCreds(keys.account, keys.roleKeys.get("ci")!, {
      user,
      ...(opts.tags ? { tags: opts.tags } : {}),
    });
    const nc = await connectWithCreds(rig.server.url, creds);
    open.push(nc);
    return { nc, creds, user };
  };

  /** Publishes on the project's subject and gets it back: the connection works. */
  const works = async (nc: NatsConnection, projectId: number): Promise<void> => {
    const subject = `build.${projectId}.ping`;
    const sub = nc.subscribe(subject, { max: 1 });
    const got = (async () => {
      for await (const m of sub) return m.string();
    })();
    await nc.flush();
    nc.publish(subject, "pong");
    assert.equal(await got, "pong");
  };

  const refusal = async (creds: Uint8Array): Promise<string> => {
    try {
      const nc = await connectWithCreds(rig.server.url, creds);
      await nc.close();
    } catch (err) {
      return (err as Error).message;
    }
    return assert.fail("the server accepted a revoked user");
  };

  /** Credentials of a CI job through POST /v1/credentials, for the job's own user key. */
  const exchange = async (projectId: number, pipeline: number, job: number) => {
    const token = rig.sim.mintIdToken({
      projectId,
      aud: AUDIENCE,
      extra: { pipeline_id: String(pipeline), job_id: String(job) },
    });
    const user = NKeyPair.generate("user");
    const res = await fetch(`${controller!.url}/v1/credentials`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ role: "ci", publicKey: user.publicKey }),
    });
    const text = await res.text();
    assert.equal(res.status, 200, text);
    const { jwt } = JSON.parse(text) as { jwt: string };
    return { user, creds: new TextEncoder().encode(formatCreds(jwt, user)) };
  };

  /** The command as a user runs it: a separate process. */
  const revoke = async (...args: string[]): Promise<{ code: number; out: string }> => {
    const cmd = [MAIN, "credentials", "revoke", "--config", join(rig.dir, "natsbind.yaml"), ...args];
    try {
      const { stdout, stderr } = await run(process.execPath, cmd, { timeout: 120_000, maxBuffer: 64 << 20 });
      return { code: 0, out: `${stdout}\n${stderr}` };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === "number" ? e.code : -1, out: `${e.stdout ?? ""}\n${e.stderr ?? ""}` };
    }
  };

  const start = async () => {
    controller = await runController(config, { log: createLogger({ write: (l) => void logLines.push(l) }) });
  };

  before(async () => {
    rig = await startLocalRig({ name: "revoke-cli" });
    const acme = rig.sim.createGroup({ name: "Acme", path: "acme" });
    api = rig.sim.createProject({ name: "api", groupId: acme.id }).id;
    web = rig.sim.createProject({ name: "web", groupId: acme.id }).id;
    await writeFile(join(rig.dir, "bindings", "acme.yaml"), BINDING);
    // maxTtl 1m + leeway 0: entries are kept 65 s (rotationOverlapMs), long enough for this suite.
    const credentials = {
      audience: AUDIENCE,
      maxTtl: "1m",
      defaultTtl: "1m",
      leeway: "0s",
      audit: { file: "audit/credentials.log", connections: false },
    };
    config = rig.config({ credentials });
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
        credentials,
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

  it("--user: the connected user is cut off and refused after; the account's other user and another account's are untouched", async () => {
    const victim = await connectUser(api);
    const victimEvents = watchStatus(victim.nc);
    const neighbour = await connectUser(api);
    const neighbourEvents = watchStatus(neighbour.nc);
    const stranger = await connectUser(web);
    const strangerEvents = watchStatus(stranger.nc);
    await works(victim.nc, api);
    const account = (await keysOf(api)).account;

    const before = nowSeconds();
    const { code, out } = await revoke(
      "--binding",
      "acme",
      "--project",
      String(api),
      "--user",
      victim.user.publicKey,
    );
    assert.equal(code, 0, out);
    assert.match(out, new RegExp(`account ${account} \\(project ${api}\\): 1 user key\\(s\\) revoked`), out);
    assert.match(out, new RegExp(victim.user.publicKey), out);
    assert.match(out, /natsbind run \(pid \d+\) holds/, "handed to the running natsbind run");
    // Done means on the server, not merely stored.
    assert.ok((await heldRevocations(account))[victim.user.publicKey]! >= before);

    await victimEvents.next("the revocation notice", (e) => e === `error: ${REVOKED_NOTICE}`);
    await waitFor(async () => victim.nc.isClosed(), {
      what: "the revoked user closed",
      timeoutMs: 10_000,
      intervalMs: 20,
    });
    assert.match(await refusal(victim.creds), REFUSED);

    await works(neighbour.nc, api);
    await works(stranger.nc, web);
    assert.deepEqual(neighbourEvents.all, [], "the account's other user saw nothing");
    assert.deepEqual(strangerEvents.all, [], "another account's user saw nothing");
    assert.deepEqual(
      await heldRevocations((await keysOf(web)).account),
      {},
      "another account carries nothing",
    );

    const line = (await auditLines()).find(
      (l) => l.event === "credentials.revoked" && l.userPublicKey === victim.user.publicKey,
    );
    assert.ok(line, "an audit line for the revocation");
    assert.deepEqual(
      { ...line, time: undefined, revokedAt: undefined },
      {
        event: "credentials.revoked",
        time: undefined,
        binding: "acme",
        projectId: api,
        account,
        userPublicKey: victim.user.publicKey,
        revokedAt: undefined,
        source: "cli",
      },
    );
    assert.ok(Date.parse(String(line.revokedAt)) >= before * 1000);
  });

  it("--all cuts every user of the account issued until now; a user issued after connects; other accounts untouched", async () => {
    const one = await connectUser(web);
    const two = await connectUser(web);
    const events = [watchStatus(one.nc), watchStatus(two.nc)];
    const stranger = await connectUser(api);
    const strangerEvents = watchStatus(stranger.nc);
    const account = (await keysOf(web)).account;

    const { code, out } = await revoke("--binding", "acme", "--project", String(web), "--all");
    assert.equal(code, 0, out);
    assert.match(
      out,
      new RegExp(`account ${account} \\(project ${web}\\): every user issued at or before`),
      out,
    );
    const at = (await heldRevocations(account))["*"]!;
    assert.ok(at > 0, "the account JWT carries the * entry");

    for (const e of events) await e.next("the revocation notice", (s) => s === `error: ${REVOKED_NOTICE}`);
    await waitFor(async () => one.nc.isClosed() && two.nc.isClosed(), {
      what: "both users of the account closed",
      timeoutMs: 10_000,
      intervalMs: 20,
    });
    assert.match(await refusal(one.creds), REFUSED);

    // A user JWT issued in a later second than the entry is admitted.
    await waitFor(async () => nowSeconds() > at, {
      what: "the next second",
      timeoutMs: 3_000,
      intervalMs: 20,
    });
    const later = await connectUser(web);
    await works(later.nc, web);
    await works(stranger.nc, api);
    assert.deepEqual(strangerEvents.all, []);
    assert.ok(
      (await auditLines()).some(
        (l) => l.event === "credentials.revoked" && l.userPublicKey === "*" && l.projectId === web,
      ),
    );
  });

  it("--job finds the job's users in the audit file and in CONNZ; --pipeline the pipeline's; other jobs are untouched; none found is an error", async (t) => {
    const account = (await keysOf(api)).account;
    // Issued by natsbind but not connected: only the audit file knows it.
    const issued = await exchange(api, 500, 5001);
    // Connected with the job's tag but not issued by natsbind: only CONNZ knows it.
    const outsider = await connectUser(api, { tags: ["job:5001", "pipeline:500"] });
    const outsiderEvents = watchStatus(outsider.nc);
    // Another job of the same pipeline, issued and connected.
    const sibling = await exchange(api, 500, 5002);
    const siblingNc = await connectWithCreds(rig.server.url, sibling.creds);
    open.push(siblingNc);
    const siblingEvents = watchStatus(siblingNc);
    await works(siblingNc, api);
    await waitFor(
      async () =>
        (await auditLines()).some(
          (l) => l.event === "credentials.issued" && l.userPublicKey === issued.user.publicKey,
        ),
      { what: "the issuance's audit line", timeoutMs: 5_000, intervalMs: 20 },
    );

    const job = await revoke("--binding", "acme", "--project", String(api), "--job", "5001");
    t.diagnostic(job.out);
    assert.equal(job.code, 0, job.out);
    assert.match(job.out, /audit file .*credentials\.log: 1 user key\(s\) issued to job 5001/, job.out);
    assert.match(
      job.out,
      /live connections \(CONNZ of every server, tag job:5001\): 1 user key\(s\)/,
      job.out,
    );
    assert.match(job.out, /2 user key\(s\) revoked/, job.out);
    const held = await heldRevocations(account);
    assert.ok(held[issued.user.publicKey] && held[outsider.user.publicKey], JSON.stringify(held));
    assert.equal(held[sibling.user.publicKey], undefined, "the other job is not revoked");

    await outsiderEvents.next("the revocation notice", (e) => e === `error: ${REVOKED_NOTICE}`);
    assert.match(await refusal(issued.creds), REFUSED, "the job's issued user is refused");
    await works(siblingNc, api);
    assert.deepEqual(siblingEvents.all, [], "the other job's user saw nothing");
    const lines = (await auditLines()).filter((l) => l.event === "credentials.revoked" && l.jobId === 5001);
    assert.deepEqual(
      lines.map((l) => l.userPublicKey).sort(),
      [issued.user.publicKey, outsider.user.publicKey].sort(),
    );

    const pipeline = await revoke("--binding", "acme", "--project", String(api), "--pipeline", "500");
    assert.equal(pipeline.code, 0, pipeline.out);
    await siblingEvents.next("the revocation notice", (e) => e === `error: ${REVOKED_NOTICE}`);
    assert.match(await refusal(sibling.creds), REFUSED);
    assert.ok(
      (await auditLines()).some(
        (l) =>
          l.event === "credentials.revoked" &&
          l.pipelineId === 500 &&
          l.userPublicKey === sibling.user.publicKey,
      ),
    );

    const none = await revoke("--binding", "acme", "--project", String(api), "--job", "999999");
    t.diagnostic(none.out);
    assert.equal(none.code, 1, none.out);
    assert.match(
      none.out,
      /no user of job 999999 of project \d+ found to revoke: looked in the audit file .*credentials\.log .*; and in live connections tagged job:999999 of account\(s\) A/,
      none.out,
    );
  });

  it("the entries survive a later push (a binding change re-pushes every account)", async () => {
    const keys = await keysOf(api);
    const before = await heldRevocations(keys.account);
    assert.ok(Object.keys(before).length >= 3, JSON.stringify(before));
    const victim = await connectUser(api);
    const { code, out } = await revoke(
      "--binding",
      "acme",
      "--project",
      String(api),
      "--user",
      victim.user.publicKey,
    );
    assert.equal(code, 0, out);

    await writeFile(
      join(rig.dir, "bindings", "acme.yaml"),
      `${BINDING}    - name: deploy\n      publish: { allow: ["deploy.{{project.id}}.>"] }\n`,
    );
    await waitFor(
      async () => {
        const claims = decodeJwt((await rig.resolver.lookup(keys.account))!);
        return ((claims.nats.signing_keys as unknown[]) ?? []).length === 2;
      },
      { what: "the account pushed again with the new role", timeoutMs: 20_000, intervalMs: 50 },
    );
    const after = await heldRevocations(keys.account);
    for (const [key, at] of Object.entries(before)) assert.equal(after[key], at, `${key} still revoked`);
    assert.ok(after[victim.user.publicKey], "and the latest one");
    assert.match(await refusal(victim.creds), REFUSED);
    assert.deepEqual((await keysOf(api)).revocations, after, "the slot is what the server holds");
  });

  it("with no natsbind run the command runs the controller itself until the server holds the entry", async () => {
    const victim = await connectUser(api);
    const victimEvents = watchStatus(victim.nc);
    await controller?.stop();
    controller = undefined;
    try {
      const { code, out } = await revoke(
        "--binding",
        "acme",
        "--project",
        String(api),
        "--user",
        victim.user.publicKey,
      );
      assert.equal(code, 0, out);
      assert.match(out, /no natsbind run holds the key directory: running the controller here/, out);
      assert.ok((await heldRevocations((await keysOf(api)).account))[victim.user.publicKey]);
      await victimEvents.next("the revocation notice", (e) => e === `error: ${REVOKED_NOTICE}`);
    } finally {
      await start();
    }
  });

  describe("hostile input changes nothing", () => {
    const requestFile = () => new RequestFiles(config.keys.directory).pathOf("acme");
    const snapshot = async () => ({
      requests: await readFile(requestFile(), "utf8").catch(() => ""),
      slot: (await keysOf(api)).revocations,
      audit: (await auditLines()).length,
    });
    const refused = async (args: string[], code: number, message: RegExp): Promise<string> => {
      const before = await snapshot();
      const r = await revoke("--binding", "acme", ...args);
      assert.equal(r.code, code, r.out);
      assert.match(r.out, message);
      assert.deepEqual(await snapshot(), before, "nothing changed");
      return r.out;
    };

    it("malformed keys", async () => {
      const good = NKeyPair.generate("user").publicKey;
      const flipped = `${good.slice(0, 20)}${good[20] === "A" ? "B" : "A"}${good.slice(21)}`;
      const account = (await keysOf(api)).account;
      for (const [value, message] of [
        ["UABC", /--user #1 is not a user public key: expected 56 characters .* got 4/],
        [flipped, /--user #1 is not a valid user public key: its checksum does not match/],
        [account, /--user #1 is an account public key, not a user's/],
        ["", /--user #1 is empty/],
        [`${good}\n`, /--user #1 is not a user public key/],
      ] as const) {
        await refused(["--project", String(api), "--user", value], 2, message);
      }
      // The second of two: named by position; nothing of the first is revoked either.
      await refused(["--project", String(api), "--user", good, "--user", "U*"], 2, /--user #2 /);
      await refused(["--project", String(api), "--user", good, "--all"], 2, /exactly one of/);
      await refused(["--project", String(api), "--job", "1e3"], 2, /--job "1e3" is not an id/);
    });

    it("a seed given as --user (or as a bare argument) is refused and never echoed", async () => {
      const seed = new TextDecoder().decode(NKeyPair.generate("user").getSeed());
      for (const args of [["--user", seed], [`--user=${seed}`], ["--user", seed.slice(0, 40)], [seed]]) {
        const out = await refused(["--project", String(api), ...args], 2, /seed|REDACTED/);
        assert.ok(!out.includes(seed.slice(0, 40)) && !out.includes(seed.slice(2, 30)), out);
      }
    });

    it("10,001 keys in one command", async () => {
      const keys = Array.from({ length: 10_001 }, () => NKeyPair.generate("user").publicKey);
      await refused(
        ["--project", String(api), ...keys.map((k) => `--user=${k}`)],
        2,
        /10001 --user keys: an account carries at most 10000 revocations/,
      );
    });

    it("an unknown binding, project or environment is refused naming what exists", async () => {
      const before = await snapshot();
      const r = await revoke("--binding", "nope", "--project", String(api), "--all");
      assert.equal(r.code, 2, r.out);
      assert.match(r.out, /no binding nope in .*bindings/);
      await refused(
        ["--project", "999999", "--all"],
        2,
        new RegExp(
          `binding acme has no account for project 999999 \\(projects with accounts: ${Math.min(api, web)}, ${Math.max(api, web)}\\)`,
        ),
      );
      await refused(
        ["--project", String(api), "--environment", "prod", "--all"],
        2,
        /has no account for project \d+ environment "prod" \(it has: \(one account for every environment\)\)/,
      );
      assert.deepEqual(await snapshot(), before);
    });
  });

  it("no secret reached natsbind's log", () => {
    const text = logLines.join("\n");
    assert.doesNotMatch(text, /\bS[AU][A-Z2-7]{56}\b/);
    assert.doesNotMatch(text, /eyJ[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}\./);
  });
});
