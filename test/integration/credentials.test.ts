// CI credentials end to end (local mode): the GitLab simulator mints RS256 ID tokens, natsbind run
// exchanges them for user JWTs of the project's own account, and a real nats-server (operator
// mode, full resolver) enforces the role's scope. Refusals issue nothing; no token or seed reaches
// a log line or the audit log.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { connect, jwtAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import type { Config } from "../../src/config/config.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import { decodeJwt } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { runController, type RunningController } from "../../src/main.ts";
import type { GitLabSimulator } from "../support/gitlab-sim.ts";
import { startLocalRig, type LocalRig } from "../support/local-rig.ts";
import type { NatsServer } from "../support/nats-server.ts";
import { connectWithCreds, watchStatus, type TestOperator } from "../support/operator.ts";
import { waitFor } from "../support/process.ts";

const AUDIENCE = "https://natsbind.test";

const BINDING = `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: acme}
spec:
  gitlab: {group: acme}
  roles:
    - name: ci
      publish: {allow: ["build.{{project.id}}.{{tag(pipeline)}}.>"]}
      subscribe: {allow: ["_INBOX.>", "build.{{project.id}}.>"]}
      ci: {refs: protected}
    - name: admin
      publish: {allow: [">"]}
`;

interface Answer {
  status: number;
  headers: Headers;
  text: string;
  json(): Record<string, unknown>;
}

describe("CI credentials (local mode, token exchange and auth callout)", { timeout: 180_000 }, () => {
  let rig: LocalRig | undefined;
  let op: TestOperator;
  let server: NatsServer;
  let sim: GitLabSimulator;
  let dir: string;
  let config: Config;
  let controller: RunningController | undefined;
  let resolver: NatsResolver;
  const logLines: string[] = [];
  const tokens: string[] = [];
  const seeds: string[] = [];
  let api: { id: number };

  async function exchange(
    token: string | undefined,
    body?: unknown,
    accept = "application/json",
  ): Promise<Answer> {
    const headers: Record<string, string> = { accept };
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(`${controller!.url}/v1/credentials`, {
      method: "POST",
      headers,
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    return {
      status: res.status,
      headers: res.headers,
      text,
      json: () => JSON.parse(text) as Record<string, unknown>,
    };
  }

  function mint(o: Parameters<GitLabSimulator["mintIdToken"]>[0]): string {
    const token = sim.mintIdToken(o);
    tokens.push(token);
    return token;
  }

  before(async () => {
    rig = await startLocalRig({ name: "creds", callout: true });
    ({ op, server, sim, dir, resolver } = rig);
    config = rig.config({
      credentials: {
        audience: AUDIENCE,
        audit: { file: "audit/credentials.log" },
        callout: { credsFile: op.callout!.credsFile, signingKeyFile: op.callout!.signingKeyFile },
      },
    });
    const acme = sim.createGroup({ name: "Acme", path: "acme" });
    api = sim.createProject({ name: "api", groupId: acme.id });
    sim.createGroup({ name: "Other", path: "other" });
    await writeFile(join(dir, "bindings", "acme.yaml"), BINDING);
    controller = await runController(config, { log: createLogger({ write: (l) => void logLines.push(l) }) });
    await waitFor(
      async () => {
        const slot = await new DirectoryKeyStore(config.keys.directory).get({
          binding: "acme",
          projectId: api.id,
        });
        return slot !== undefined && (await resolver.lookup(slot.account)) !== undefined;
      },
      { what: "the project's account on the server", timeoutMs: 15_000, intervalMs: 25 },
    );
  });

  after(async () => {
    await controller?.stop();
    await rig?.stop();
  });

  it("a protected-branch job gets a creds file with curl's headers and publishes only its pipeline's subjects", async () => {
    const token = mint({ projectId: api.id, aud: AUDIENCE, extra: { pipeline_id: "777", job_id: "9001" } });
    const answer = await exchange(token, { role: "ci", ttl: "5m" }, "text/plain");
    assert.equal(answer.status, 200, answer.text);
    assert.match(answer.headers.get("content-type") ?? "", /^text\/plain/);
    assert.match(answer.text, /-----BEGIN NATS USER JWT-----/);
    const seed = /\bSU[A-Z2-7]{56}\b/.exec(answer.text)?.[0];
    assert.ok(seed, "natsbind generated the user key: the creds file holds its seed");
    seeds.push(seed);
    const jwt = /-----BEGIN NATS USER JWT-----\n([^\n]+)\n/.exec(answer.text)![1]!;
    const claims = decodeJwt(jwt);
    const slot = (await new DirectoryKeyStore(config.keys.directory).get({
      binding: "acme",
      projectId: api.id,
    }))!;
    assert.equal(claims.iss, slot.roles.ci, "signed by the project's ci role key");
    assert.equal(claims.nats.issuer_account, slot.account);
    assert.equal(claims.name, `acme/api#9001`);
    const tags = claims.nats.tags as string[];
    for (const t of [`project:${api.id}`, "pipeline:777", "job:9001", "ref:main"])
      assert.ok(tags.includes(t), t);
    const now = Date.now() / 1000;
    assert.ok(claims.exp! > now + 240 && claims.exp! <= now + 301, `exp ${claims.exp} is now + 5m`);

    const nc = await connectWithCreds(server.url, new TextEncoder().encode(answer.text));
    const events = watchStatus(nc);
    try {
      const sub = nc.subscribe(`build.${api.id}.777.>`, { max: 1 });
      const got = (async () => {
        for await (const m of sub) return m.string();
      })();
      nc.publish(`build.${api.id}.777.status`, "green");
      assert.equal(await got, "green");
      nc.publish(`build.${api.id}.778.status`, "not my pipeline");
      await nc.flush();
      await events.next("a permissions violation", (e) => e.startsWith("error: "));
      assert.match(events.errors()[0]!, /Permissions Violation for Publish to "?build\.\d+\.778\.status"?/);
    } finally {
      await nc.close();
    }
  });

  it("with publicKey, only the JWT comes back: the seed never leaves the job", async () => {
    const user = NKeyPair.generate("user");
    const token = mint({ projectId: api.id, aud: AUDIENCE });
    const answer = await exchange(token, { publicKey: user.getPublicKey() });
    assert.equal(answer.status, 200, answer.text);
    const body = answer.json();
    assert.equal(body.user, user.getPublicKey());
    assert.equal(body.role, "ci", "the one issuable role is chosen when none is named");
    assert.equal(body.creds, undefined);
    assert.deepEqual(body.servers, [server.url]);
    assert.ok(Date.parse(String(body.expiresAt)) > Date.now());
    const nc: NatsConnection = await connect({
      servers: server.url,
      authenticator: jwtAuthenticator(String(body.jwt), user.getSeed()),
      maxReconnectAttempts: 0,
    });
    await nc.flush();
    await nc.close();
  });

  it("the server closes the connection when the user JWT expires; fresh credentials connect again", async () => {
    const token = mint({ projectId: api.id, aud: AUDIENCE });
    const first = await exchange(token, { ttl: "3s" }, "text/plain");
    assert.equal(first.status, 200, first.text);
    const nc = await connectWithCreds(server.url, new TextEncoder().encode(first.text));
    const events = watchStatus(nc);
    const closed = nc.closed();
    await waitFor(async () => events.all.some((e) => /expired/i.test(e)) || nc.isClosed(), {
      what: "the server to close the expired user's connection",
      timeoutMs: 10_000,
      intervalMs: 50,
    });
    await closed;
    assert.ok(
      events.errors().some((e) => /authentication expired/i.test(e)),
      `events: ${events.all.join(", ")}`,
    );
    // The ID token is still valid: the job asks again (as a callout client would reconnect).
    const again = await exchange(token, { ttl: "5m" }, "text/plain");
    assert.equal(again.status, 200, again.text);
    const nc2 = await connectWithCreds(server.url, new TextEncoder().encode(again.text));
    await nc2.flush();
    await nc2.close();
  });

  it("through the auth callout a job connects with nothing but its ID token, scoped like the exchange", async () => {
    const token = mint({ projectId: api.id, aud: AUDIENCE, extra: { pipeline_id: "888", job_id: "9002" } });
    const nc = await connect({ servers: server.url, token, maxReconnectAttempts: 0, timeout: 5_000 });
    const events = watchStatus(nc);
    try {
      const sub = nc.subscribe(`build.${api.id}.888.>`, { max: 1 });
      const got = (async () => {
        for await (const m of sub) return m.string();
      })();
      nc.publish(`build.${api.id}.888.status`, "via callout");
      assert.equal(await got, "via callout");
      nc.publish(`build.${api.id}.889.status`, "not my pipeline");
      await nc.flush();
      await events.next("a permissions violation", (e) => e.startsWith("error: "));
      assert.match(events.errors()[0]!, /Permissions Violation for Publish to "?build\.\d+\.889\.status"?/);
    } finally {
      await nc.close();
    }
    // The role as user name and the token as password: the same policy says no to a role without ci.
    await assert.rejects(
      connect({ servers: server.url, user: "admin", pass: token, maxReconnectAttempts: 0, timeout: 5_000 }),
      /Authorization Violation/,
    );
    const ok = await connect({ servers: server.url, user: "ci", pass: token, maxReconnectAttempts: 0 });
    await ok.flush();
    await ok.close();
    // A token of an unprotected branch: refused at connect.
    const unprotected = mint({ projectId: api.id, aud: AUDIENCE, ref: "wip", refProtected: false });
    await assert.rejects(
      connect({ servers: server.url, token: unprotected, maxReconnectAttempts: 0, timeout: 5_000 }),
      /Authorization Violation/,
    );
  });

  it("refuses jobs the policy does not allow, and issues nothing", async () => {
    const other = sim.createProject({ name: "lib", groupId: sim.createGroup({ name: "X", path: "x" }).id });
    const cases: Array<[string, string, unknown, number, string]> = [
      [
        "unprotected ref",
        mint({ projectId: api.id, aud: AUDIENCE, ref: "feature/x", refProtected: false }),
        undefined,
        403,
        "forbidden",
      ],
      ["role not issuable", mint({ projectId: api.id, aud: AUDIENCE }), { role: "admin" }, 403, "forbidden"],
      [
        "project no binding selects",
        mint({ projectId: other.id, aud: AUDIENCE }),
        undefined,
        403,
        "forbidden",
      ],
      [
        "reclaimed path (the project_path of a bound project, another id)",
        mint({
          projectId: other.id,
          aud: AUDIENCE,
          extra: { project_path: "acme/api", namespace_path: "acme" },
        }),
        undefined,
        403,
        "forbidden",
      ],
      [
        "fork merge request",
        mint({ projectId: api.id, aud: AUDIENCE, extra: { job_project_id: String(other.id) } }),
        undefined,
        403,
        "forbidden",
      ],
      [
        "another audience",
        mint({ projectId: api.id, aud: "https://vault.example" }),
        undefined,
        401,
        "invalid_token",
      ],
    ];
    for (const [what, token, body, status, error] of cases) {
      const answer = await exchange(token, body);
      assert.equal(answer.status, status, `${what}: ${answer.text}`);
      assert.equal(answer.json().error, error, what);
      assert.equal(answer.json().jwt, undefined, what);
    }
  });

  it("writes one audit line per issuance and refusal; no token or seed in the audit log or the logs", async () => {
    // Lines are written in batches (group commit): wait for the refusals above to be on disk.
    let audit: string[] = [];
    let lines: Record<string, unknown>[] = [];
    await waitFor(
      async () => {
        audit = (await readFile(join(dir, "audit", "credentials.log"), "utf8")).trim().split("\n");
        lines = audit.map((l) => JSON.parse(l) as Record<string, unknown>);
        return (
          lines.filter((l) => l.event === "credentials.refused").length >= 6 &&
          lines.some((l) => l.event === "nats.disconnect" && /expired/i.test(String(l.reason))) &&
          lines.filter((l) => l.event === "nats.connect").length >= 4
        );
      },
      { what: "six refusals in the audit file", timeoutMs: 5_000, intervalMs: 20 },
    );
    const issued = lines.filter((l) => l.event === "credentials.issued");
    const refused = lines.filter((l) => l.event === "credentials.refused");
    assert.ok(
      issued.length >= 2 && refused.length >= 6,
      `${issued.length} issued, ${refused.length} refused`,
    );
    const first = issued.find((l) => l.jobId === 9001)!;
    const viaCallout = issued.find((l) => l.jobId === 9002)!;
    assert.equal(viaCallout.via, "callout");
    assert.ok(refused.some((l) => l.via === "callout" && l.reason === "role_not_issuable"));
    assert.ok(refused.some((l) => l.via === "callout" && l.reason === "unprotected_ref"));
    assert.ok(
      lines.some((l) => l.event === "nats.connect" && l.userPublicKey === viaCallout.userPublicKey),
      "the callout job's connection is audited under the user natsbind issued it",
    );
    assert.equal(first.via, "exchange");
    assert.equal(first.projectId, api.id);
    assert.equal(first.pipelineId, 777);
    assert.equal(first.role, "ci");
    assert.equal(first.refProtected, true);
    assert.match(String(first.userPublicKey), /^U[A-Z2-7]{55}$/);
    assert.ok(refused.some((l) => l.reason === "unprotected_ref"));
    // Each job's NATS use, under the user natsbind issued it: connect, then disconnect with counts.
    const connected = lines.find(
      (l) => l.event === "nats.connect" && l.userPublicKey === first.userPublicKey,
    );
    assert.ok(connected, "the first job's connection is in the audit log");
    const gone = lines.find((l) => l.event === "nats.disconnect" && l.userPublicKey === first.userPublicKey);
    assert.ok(gone, "and its disconnect");
    assert.ok((gone.sent as { msgs: number }).msgs >= 2, "with the messages it published");
    assert.ok(refused.some((l) => l.reason === "fork_merge_request"));
    const everything = [...audit, ...logLines].join("\n");
    for (const secret of [...tokens, ...seeds]) {
      assert.equal(everything.includes(secret), false, "a token or seed was written out");
      assert.equal(
        everything.includes(secret.split(".")[1] ?? secret),
        false,
        "a token's claims part was written out",
      );
    }
  });
});
