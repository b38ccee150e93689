// The NATS auth callout door against a real nats-server (operator mode, full resolver, the callout
// account, sentinel and service user of `natsbind init --callout`). nats-server >= 2.11.2
// (default_sentinel); .cache/bin has 2.15.2.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { appendFile, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { connect, createInbox, headers, type Msg, type NatsConnection } from "@nats-io/transport-node";
import { readCalloutFiles, startCallout, type Callout } from "../../src/credentials/callout.ts";
import { INIT_LAYOUT, initOperator } from "../../src/cli/init.ts";
import { loadConfig } from "../../src/config/config.ts";
import { connectResolver } from "../../src/nats/from-config.ts";
import { AUTH_CALLOUT_SUBJECT } from "../../src/credentials/callout-account.ts";
import type { CiIdentity } from "../../src/credentials/identity.ts";
import type { CredentialIssuer, IssueRequest, IssueResult, Refused } from "../../src/credentials/types.ts";
import {
  accountClaims,
  decodeJwt,
  signJwt,
  userClaims,
  type JwtClaims,
  type PermissionTemplate,
} from "../../src/nats/claims.ts";
import { formatCreds, parseCreds } from "../../src/nats/creds.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { NatsResolver } from "../../src/nats/resolver.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { startNatsServer, type NatsServer, type NatsServerOptions } from "../support/nats-server.ts";
import {
  calloutAccountJwt,
  calloutAccountUserCreds,
  connectWithCreds,
  createTestOperator,
  operatorResolver,
  projectAccount,
  watchStatus,
  type TestAccount,
  type TestOperator,
} from "../support/operator.ts";
import {
  freePorts,
  hasToolBinary,
  httpGet,
  ManagedProcess,
  REPO_ROOT,
  removeDir,
  tempDir,
  toolBinary,
  waitFor,
} from "../support/process.ts";

const TIMEOUT = { timeout: 120_000 };

async function runCli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(
      process.execPath,
      [join(REPO_ROOT, "src", "cli", "main.ts"), ...args],
      { timeout: 30_000 },
    );
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

// Tokens the test issuer knows. Real ID tokens are JWTs of 1-2 KiB; LONG is past the 4 KiB default
// max_control_line on purpose.
const GOOD = "id-token-good-7f3a9c1e5b";
const SHORT_LIVED = "id-token-short-2b8d4f6a0c";
const LONG = `id-token-long-${"x".repeat(6 * 1024)}`;
const THROWS = "id-token-that-breaks-the-issuer-9e1";

const IDENTITY: CiIdentity = {
  issuer: "https://gitlab.example.com",
  subject: "project_path:group/project:ref_type:branch:ref:main",
  issuedAt: 1_700_000_000,
  expiresAt: 1_700_000_300,
  projectId: 42,
  projectPath: "group/project",
  namespaceId: 7,
  namespacePath: "group",
  userLogin: "alice",
  pipelineId: 1001,
  pipelineSource: "push",
  jobId: 5001,
  ref: "main",
  refType: "branch",
  refProtected: true,
};

function refused(code: Refused["code"], reason: string, message: string): Refused {
  return { kind: "refused", code, reason, message };
}

/**
 * Stands in for natsbind's credential service: issues a real user JWT, signed by the scoped "ci"
 * key of a pushed account (template build.{{tag(project)}}.>), for the tokens it knows; refuses
 * the rest. Records every request it is asked.
 */
class TestIssuer implements CredentialIssuer {
  readonly requests: IssueRequest[] = [];
  readonly issuedJwts: string[] = [];
  /** While set, every issue() waits for it. */
  gate: Promise<void> | undefined;
  readonly #acc: TestAccount;
  readonly #grants: Map<string, { tags: string[]; ttlS: number }>;

  constructor(acc: TestAccount, grants: Map<string, { tags: string[]; ttlS: number }>) {
    this.#acc = acc;
    this.#grants = grants;
  }

  requestsFor(token: string): IssueRequest[] {
    return this.requests.filter((r) => r.token === token);
  }

  async issue(request: IssueRequest): Promise<IssueResult> {
    this.requests.push({ ...request });
    if (this.gate) await this.gate;
    if (request.token === THROWS) throw new Error("the issuer broke");
    const grant = this.#grants.get(request.token);
    if (!grant) return refused("invalid_token", "unknown_token", "the ID token is not valid");
    const role = request.role ?? "ci";
    if (role !== "ci")
      return refused("forbidden", "role_not_issuable", `role ${role} is not issuable to this job`);
    if (!request.userPublicKey) return refused("bad_request", "no_user_key", "no user key");
    const now = Math.floor(Date.now() / 1000);
    const expiresAt = now + grant.ttlS;
    const account = this.#acc.account.publicKey;
    const jwt = signJwt(
      userClaims({
        publicKey: request.userPublicKey,
        name: "group/project job 5001",
        account,
        issuer: this.#acc.ciKey.publicKey,
        scoped: true,
        tags: grant.tags,
        expiresAt,
      }),
      this.#acc.ciKey,
      now,
    );
    this.issuedJwts.push(jwt);
    return {
      kind: "issued",
      account,
      role,
      userPublicKey: request.userPublicKey,
      jwt,
      expiresAt: expiresAt * 1000,
      servers: [],
      identity: IDENTITY,
      binding: "test",
    };
  }
}

function grants(): Map<string, { tags: string[]; ttlS: number }> {
  return new Map([
    [GOOD, { tags: ["project:42", "pipeline:1001"], ttlS: 600 }],
    [LONG, { tags: ["project:42"], ttlS: 600 }],
    [SHORT_LIVED, { tags: ["project:42"], ttlS: 2 }],
  ]);
}

/** A client connecting with no creds at all (the default sentinel), only CONNECT options. */
function connectBare(
  url: string,
  auth: { token?: string; user?: string; pass?: string },
  more: Record<string, unknown> = {},
): Promise<NatsConnection> {
  return connect({ servers: url, maxReconnectAttempts: 0, timeout: 5_000, ...auth, ...more });
}

/** Publishes `subject` and reports whether the client's own subscription got it back. */
async function roundTrip(nc: NatsConnection, subject: string): Promise<boolean> {
  const sub = nc.subscribe(subject, { max: 1 });
  const got = (async () => {
    for await (const m of sub) return m.subject;
    return undefined;
  })();
  nc.publish(subject, "hello");
  await nc.flush();
  const timer = setTimeout(() => sub.unsubscribe(), 2_000);
  const subject_ = await got;
  clearTimeout(timer);
  return subject_ === subject;
}

interface Rig {
  op: TestOperator;
  server: NatsServer;
  resolver: NatsResolver;
  acc: TestAccount;
  issuer: TestIssuer;
  logLines: string[];
  startCallout(extra?: Partial<Parameters<typeof startCallout>[0]>): Promise<Callout>;
  stop(): Promise<void>;
}

async function startRig(serverOverrides: Partial<NatsServerOptions> = {}): Promise<Rig> {
  const op = await createTestOperator({ callout: true });
  const server = await startNatsServer({ ...op.serverOptions, ...serverOverrides });
  const resolver = await operatorResolver(op, server.url);
  const acc = projectAccount(op, "group/project");
  await resolver.push(acc.jwt);
  const issuer = new TestIssuer(acc, grants());
  const logLines: string[] = [];
  const log = createLogger({ level: "debug", write: (l) => logLines.push(l) });
  const started: Callout[] = [];
  return {
    op,
    server,
    resolver,
    acc,
    issuer,
    logLines,
    async startCallout(extra = {}) {
      const callout = await startCallout({
        servers: server.url,
        credsText: op.callout!.serviceCreds,
        signingKey: op.callout!.signingKey,
        calloutAccount: op.callout!.account,
        issuer,
        log,
        ...extra,
      });
      started.push(callout);
      return callout;
    },
    async stop() {
      await Promise.all(started.map((c) => c.stop()));
      await resolver.close();
      await server.stop();
      await op.remove();
    },
  };
}

/** An authorization request as nats-server makes it, signed by `serverKey` (a forger's own). */
function forgedRequest(
  serverKey: NKeyPair,
  calloutAccount: string,
  connectOpts: Record<string, unknown>,
  change: (c: JwtClaims) => void = () => {},
): string {
  const now = Math.floor(Date.now() / 1000);
  const claims: JwtClaims = {
    iss: serverKey.publicKey,
    sub: calloutAccount,
    aud: "nats-authorization-request",
    exp: now + 2,
    name: "",
    nats: {
      server_id: { name: "forged", host: "127.0.0.1", id: serverKey.publicKey, version: "2.15.2" },
      user_nkey: NKeyPair.generate("user").publicKey,
      client_info: { host: "203.0.113.9", id: 1, kind: "Client", type: "nats" },
      connect_opts: connectOpts,
      type: "authorization_request",
      version: 2,
    },
  };
  change(claims);
  return signJwt(claims, serverKey, now);
}

describe("auth callout: clients connect with only an ID token", TIMEOUT, () => {
  let rig: Rig;
  let callout: Callout;

  before(async () => {
    rig = await startRig();
    callout = await rig.startCallout();
  });
  after(async () => {
    await rig?.stop();
  });

  it("lets a client with only a token in, with exactly the role's permissions", async () => {
    const before = rig.issuer.requests.length;
    const nc = await connectBare(rig.server.url, { token: GOOD });
    const status = watchStatus(nc);
    try {
      const [request] = rig.issuer.requests.slice(before);
      assert.ok(request, "the issuer was asked");
      assert.equal(request.via, "callout");
      assert.equal(request.token, GOOD);
      assert.equal(request.role, undefined);
      assert.equal(request.client, "127.0.0.1");
      assert.match(request.userPublicKey ?? "", /^U[A-Z2-7]{55}$/);

      // The issued JWT names the key nats-server made for this connection and is what it enforces.
      const issued = decodeJwt(rig.issuer.issuedJwts.at(-1)!);
      assert.equal(issued.sub, request.userPublicKey);
      assert.equal(issued.nats.issuer_account, rig.acc.account.publicKey);

      assert.equal(await roundTrip(nc, "build.42.status"), true, "the scope allows build.42.>");
      nc.publish("build.43.status", "not mine");
      await nc.flush();
      await status.next("a publish permission violation", (e) =>
        /Permissions Violation for Publish to "?build\.43\.status/.test(e),
      );
      assert.ok(callout.counters.issued >= 1);
    } finally {
      await nc.close();
    }
  });

  it("takes the role from the user name when the token comes as password", async () => {
    const before = rig.issuer.requests.length;
    const nc = await connectBare(rig.server.url, { user: "ci", pass: GOOD });
    try {
      const [request] = rig.issuer.requests.slice(before);
      assert.equal(request?.role, "ci");
      assert.equal(request?.token, GOOD);
      assert.equal(await roundTrip(nc, "build.42.role"), true);
    } finally {
      await nc.close();
    }
    // A role the issuer does not grant: refused with the issuer's reason in the server log.
    await assert.rejects(
      connectBare(rig.server.url, { user: "admin", pass: GOOD }),
      /Authorization Violation/,
    );
    assert.equal(rig.issuer.requests.at(-1)?.role, "admin");
    await waitFor(async () => rig.server.logs().includes("role_not_issuable"), {
      what: "the refusal reason in the nats-server log",
      timeoutMs: 5_000,
    });
  });

  it("refuses a token the issuer refuses: Authorization Violation, the issuer saw it", async () => {
    const refusedBefore = callout.counters.refused;
    await assert.rejects(
      connectBare(rig.server.url, { token: "id-token-stolen-or-forged" }),
      (err: Error) => {
        assert.match(err.message, /Authorization Violation/);
        return true;
      },
    );
    assert.equal(rig.issuer.requestsFor("id-token-stolen-or-forged").length, 1);
    assert.equal(callout.counters.refused, refusedBefore + 1);
    await waitFor(
      async () =>
        rig.server.logs().includes("Auth callout service returned an error: invalid_token (unknown_token)"),
      {
        what: "the refusal in the nats-server log",
        timeoutMs: 5_000,
      },
    );
  });

  it("refuses a client with no token without asking the issuer", async () => {
    const asked = rig.issuer.requests.length;
    const refusedBefore = callout.counters.refused;
    await assert.rejects(connectBare(rig.server.url, {}), /Authorization Violation/);
    await assert.rejects(connectBare(rig.server.url, { user: "ci" }), /Authorization Violation/);
    assert.equal(rig.issuer.requests.length, asked);
    assert.equal(callout.counters.refused, refusedBefore + 2);
  });

  it("answers with an error, and keeps serving, when the issuer throws", async () => {
    const failed = callout.counters.failed;
    await assert.rejects(connectBare(rig.server.url, { token: THROWS }), /Authorization Violation/);
    assert.equal(callout.counters.failed, failed + 1);
    const nc = await connectBare(rig.server.url, { token: GOOD });
    await nc.close();
  });

  it("lets a token longer than the default 4 KiB control line through (max_control_line raised)", async () => {
    const nc = await connectBare(rig.server.url, { token: LONG });
    try {
      assert.equal(rig.issuer.requestsFor(LONG).length, 1);
      assert.equal(await roundTrip(nc, "build.42.long"), true);
    } finally {
      await nc.close();
    }
  });

  it("needs that raised max_control_line: at the default 4 KiB nats-server drops such a CONNECT unheard", async () => {
    const { maxControlLine: _raised, ...defaults } = rig.op.serverOptions;
    const plain = await startNatsServer(defaults);
    try {
      const asked = rig.issuer.requests.length;
      // The server logs the reason and drops the connection; nats.js only sees its connect time out.
      await assert.rejects(connectBare(plain.url, { token: LONG }, { timeout: 1_000 }), /timeout/i);
      assert.match(plain.logs(), /maximum control line exceeded/);
      assert.equal(rig.issuer.requests.length, asked);
    } finally {
      await plain.stop();
    }
  });

  it("is closed at the issued JWT's expiry, and a reconnect calls out again", async () => {
    const nc = await connectBare(
      rig.server.url,
      { token: SHORT_LIVED },
      { maxReconnectAttempts: 5, reconnectTimeWait: 50 },
    );
    const status = watchStatus(nc);
    try {
      assert.equal(rig.issuer.requestsFor(SHORT_LIVED).length, 1);
      await waitFor(async () => status.errors().some((e) => /Authentication Expired/i.test(e)), {
        what: "the server to close the connection at the JWT's expiry",
        timeoutMs: 10_000,
        intervalMs: 20,
      });
      await waitFor(async () => status.all.includes("reconnect"), {
        what: "the client to reconnect",
        timeoutMs: 10_000,
        intervalMs: 20,
      });
      const calls = rig.issuer.requestsFor(SHORT_LIVED);
      assert.ok(calls.length >= 2, `called out again on reconnect (${calls.length} calls)`);
      assert.notEqual(calls[0]!.userPublicKey, calls[1]!.userPublicKey, "a fresh user key per connection");
      assert.equal(await roundTrip(nc, "build.42.again"), true);
    } finally {
      await nc.close();
    }
  });

  it("shares requests with another replica in its queue group: each connection is issued once", async () => {
    const second = await rig.startCallout();
    const before = rig.issuer.requests.length;
    const receivedBefore = callout.counters.received;
    for (let i = 0; i < 10; i++) {
      const nc = await connectBare(rig.server.url, { token: GOOD });
      await nc.close();
    }
    assert.equal(rig.issuer.requests.length - before, 10);
    assert.equal(callout.counters.received - receivedBefore + second.counters.received, 10);
    await second.stop();
  });

  it("never writes a token, seed or user JWT into its logs or the server's", () => {
    const seed = new TextDecoder().decode(rig.op.callout!.signingKey.getSeed());
    const secrets = [GOOD, SHORT_LIVED, LONG.slice(0, 64), THROWS, seed, ...rig.issuer.issuedJwts];
    const outputs = { natsbind: rig.logLines.join(""), "nats-server": rig.server.logs() };
    assert.ok(outputs.natsbind.includes("callout: issued"), "the logs were captured");
    for (const [name, text] of Object.entries(outputs)) {
      for (const secret of secrets) assert.ok(!text.includes(secret), `${name} log holds a secret`);
    }
  });
});

/**
 * An account where a client may publish on $SYS.REQ.USER.AUTH (a plain account: nats-server
 * forbids that subject only to clients of a callout account), with a natsbind callout answering
 * there: the hostile tests' stand-in for a server or account setup that let someone else publish
 * requests. Real server, real messages; only the account is not a callout account.
 */
async function openAccount(rig: Rig): Promise<{
  account: string;
  signingKey: NKeyPair;
  serviceCreds: string;
  publisher: NatsConnection;
  close(): Promise<void>;
}> {
  const account = NKeyPair.generate("account");
  const signingKey = NKeyPair.generate("account");
  const now = Math.floor(Date.now() / 1000);
  await rig.resolver.push(
    signJwt(
      accountClaims(
        { publicKey: account.publicKey, name: "OPEN", signingKeys: [signingKey.publicKey] },
        rig.op.signingKey.publicKey,
      ),
      rig.op.signingKey,
      now,
    ),
  );
  const userCreds = (name: string, permissions: PermissionTemplate): string => {
    const user = NKeyPair.generate("user");
    const jwt = signJwt(
      userClaims({
        publicKey: user.publicKey,
        name,
        account: account.publicKey,
        issuer: signingKey.publicKey,
        scoped: false,
        permissions,
      }),
      signingKey,
      now,
    );
    return formatCreds(jwt, user);
  };
  const publisher = await connectWithCreds(
    rig.server.url,
    new TextEncoder().encode(
      userCreds("hostile", { pub: { allow: [AUTH_CALLOUT_SUBJECT] }, sub: { allow: ["_INBOX.>"] } }),
    ),
  );
  return {
    account: account.publicKey,
    signingKey,
    serviceCreds: userCreds("natsbind-callout", {
      sub: { allow: [AUTH_CALLOUT_SUBJECT] },
      responses: { max: 1, ttlMs: 60_000 },
    }),
    publisher,
    close: () => publisher.close(),
  };
}

function forgedUserSigned(userKey: NKeyPair, calloutAccount: string): string {
  const now = Math.floor(Date.now() / 1000);
  return signJwt(
    {
      iss: userKey.publicKey,
      sub: calloutAccount,
      aud: "nats-authorization-request",
      exp: now + 2,
      name: "",
      nats: {
        server_id: { id: userKey.publicKey },
        user_nkey: NKeyPair.generate("user").publicKey,
        connect_opts: { auth_token: GOOD },
        type: "authorization_request",
        version: 2,
      },
    },
    userKey,
    now,
  );
}

describe("auth callout: who can put requests on $SYS.REQ.USER.AUTH", TIMEOUT, () => {
  let rig: Rig;
  let callout: Callout;

  before(async () => {
    rig = await startRig();
    callout = await rig.startCallout();
  });
  after(async () => {
    await rig?.stop();
  });

  it("sends a callout-account user with publish rights to the callout too: it cannot get in", async () => {
    const creds = calloutAccountUserCreds(rig.op.callout!, { pub: { allow: [AUTH_CALLOUT_SUBJECT] } });
    const asked = rig.issuer.requests.length;
    await assert.rejects(connectWithCreds(rig.server.url, creds), /Authorization Violation/);
    assert.equal(rig.issuer.requests.length, asked, "no token, so the issuer was not asked");
  });

  it("refuses the subject even to an auth user allowed to publish it: only nats-server sends requests", async () => {
    // nats-server denies $SYS.REQ.USER.AUTH to every client of a callout account (auth users too).
    const rogueKey = NKeyPair.generate("user");
    const service = parseCreds(rig.op.callout!.serviceCreds).user.publicKey;
    await rig.resolver.push(calloutAccountJwt(rig.op, [service, rogueKey.publicKey]));
    const rogueJwt = signJwt(
      userClaims({
        publicKey: rogueKey.publicKey,
        name: "careless-auth-user",
        account: rig.op.callout!.account,
        issuer: rig.op.callout!.signingKey.publicKey,
        scoped: false,
        permissions: { pub: { allow: [AUTH_CALLOUT_SUBJECT] } },
      }),
      rig.op.callout!.signingKey,
      Math.floor(Date.now() / 1000),
    );
    const rogue = await connectWithCreds(
      rig.server.url,
      new TextEncoder().encode(formatCreds(rogueJwt, rogueKey)),
    );
    const status = watchStatus(rogue);
    const received = callout.counters.received;
    try {
      rogue.publish(
        AUTH_CALLOUT_SUBJECT,
        forgedRequest(NKeyPair.generate("server"), rig.op.callout!.account, { auth_token: GOOD }),
        {
          reply: createInbox(),
        },
      );
      await rogue.flush();
      await status.next("the publish to be refused", (e) =>
        /Permissions Violation for Publish to "?\$SYS\.REQ\.USER\.AUTH/.test(e),
      );
    } finally {
      await rogue.close();
    }
    // A real connection after it is the next request natsbind receives.
    const nc = await connectBare(rig.server.url, { token: GOOD });
    await nc.close();
    assert.equal(callout.counters.received, received + 1);
  });

  it("keeps issued users off it (their scope; and any other account's subject is that account's own)", async () => {
    const received = callout.counters.received;
    const nc = await connectBare(rig.server.url, { token: GOOD });
    assert.equal(callout.counters.received, received + 1);
    const status = watchStatus(nc);
    nc.publish(AUTH_CALLOUT_SUBJECT, "eyJ-junk");
    await nc.flush();
    await status.next("the publish to be refused", (e) => /Permissions Violation for Publish/.test(e));
    await nc.close();
    const again = await connectBare(rig.server.url, { token: GOOD });
    await again.close();
    assert.equal(callout.counters.received, received + 2, "only the two real connections arrived");
  });
});

describe("auth callout: hostile requests (where someone else can publish them)", TIMEOUT, () => {
  let rig: Rig;
  let open: Awaited<ReturnType<typeof openAccount>>;
  let callout: Callout;
  let realCallout: Callout;

  before(async () => {
    rig = await startRig();
    realCallout = await rig.startCallout();
    open = await openAccount(rig);
    callout = await rig.startCallout({
      calloutAccount: open.account,
      signingKey: open.signingKey,
      credsText: open.serviceCreds,
    });
  });
  after(async () => {
    await open?.close();
    await rig?.stop();
  });

  it("answers no garbage, oversize, forged, stale or encrypted request, and keeps serving", async () => {
    const publisher = open.publisher;
    // One reply subject per request, as nats-server does (the service user's permission to answer
    // is per reply subject and request).
    const inbox = createInbox();
    let replies = 0;
    const reply = () => `${inbox}.${++replies}`;
    const answers: Msg[] = [];
    publisher.subscribe(`${inbox}.>`, { callback: (_err, m) => void answers.push(m) });
    await publisher.flush();

    const forger = NKeyPair.generate("server");
    const account = open.account;
    const withHeader = (jwt: string, header: object) =>
      [Buffer.from(JSON.stringify(header)).toString("base64url"), ...jwt.split(".").slice(1)].join(".");
    const wellFormed = forgedRequest(forger, account, { auth_token: GOOD });
    const [h, b, s] = wellFormed.split(".");
    const tampered = `${h}.${Buffer.from(
      Buffer.from(b!, "base64url").toString().replace("forged", "f0rged"),
    ).toString("base64url")}.${s}`;
    const hostile: Array<[string, Uint8Array | string]> = [
      ["empty", ""],
      ["not a JWT", "hello"],
      ["JSON", '{"nats":{"type":"authorization_request"}}'],
      ["oversize", `eyJ${"A".repeat(70 * 1024)}`],
      ["near max_payload", `eyJ${"A".repeat(1000 * 1024)}`],
      ["binary", new Uint8Array(4096).map((_, i) => (i * 7919) & 0xff)],
      ["three dots of junk", "eyJ.eyJ.eyJ"],
      ["deep nesting", `${h}.${Buffer.from("[".repeat(60_000)).toString("base64url")}.sig`],
      ["alg none", withHeader(wellFormed, { typ: "JWT", alg: "none" })],
      ["tampered body", tampered],
      ["signed by a user key", forgedUserSigned(NKeyPair.generate("user"), account)],
      ["wrong aud", forgedRequest(forger, account, { auth_token: GOOD }, (c) => (c.aud = "NATS"))],
      ["wrong type", forgedRequest(forger, account, { auth_token: GOOD }, (c) => (c.nats.type = "user"))],
      ["for another account", forgedRequest(forger, rig.op.callout!.account, { auth_token: GOOD })],
      [
        "server_id of another server",
        forgedRequest(forger, account, { auth_token: GOOD }, (c) => {
          (c.nats.server_id as { id: string }).id = NKeyPair.generate("server").publicKey;
        }),
      ],
      [
        "user_nkey not a user key",
        forgedRequest(forger, account, { auth_token: GOOD }, (c) => (c.nats.user_nkey = forger.publicKey)),
      ],
      [
        "connect_opts of the wrong type",
        forgedRequest(forger, account, { auth_token: GOOD }, (c) => (c.nats.connect_opts = "token")),
      ],
      [
        "expired an hour ago (a replay)",
        forgedRequest(
          forger,
          account,
          { auth_token: GOOD },
          (c) => (c.exp = Math.floor(Date.now() / 1000) - 3600),
        ),
      ],
    ];
    const before = { ...callout.counters };
    const asked = rig.issuer.requests.length;
    for (const [, payload] of hostile) publisher.publish(AUTH_CALLOUT_SUBJECT, payload, { reply: reply() });
    // Encrypted (xkey) requests are not supported: natsbind's callout account has no xkey.
    const xkey = headers();
    xkey.set("Nats-Server-Xkey", "XAFORGEDXKEY");
    publisher.publish(AUTH_CALLOUT_SUBJECT, new Uint8Array(300).fill(7), { reply: reply(), headers: xkey });
    // No reply subject: nothing to answer to.
    publisher.publish(AUTH_CALLOUT_SUBJECT, wellFormed);
    await publisher.flush();

    await waitFor(async () => callout.counters.received - before.received === hostile.length + 2, {
      what: "every hostile request to arrive",
      timeoutMs: 10_000,
      intervalMs: 20,
    });
    assert.equal(callout.counters.invalid - before.invalid, hostile.length + 1);
    assert.equal(callout.counters.encrypted - before.encrypted, 1);
    assert.equal(callout.counters.issued + callout.counters.refused, before.issued + before.refused);
    assert.equal(rig.issuer.requests.length, asked, "the issuer never saw them");

    // A well-formed request signed by the key it names is answered: the issuer decides on the
    // token, as the token exchange would for the same token, and the answer names the sender's key.
    publisher.publish(
      AUTH_CALLOUT_SUBJECT,
      forgedRequest(forger, account, { auth_token: "id-token-unknown" }),
      { reply: reply() },
    );
    await waitFor(async () => answers.length === 1, { what: "the answer", timeoutMs: 5_000, intervalMs: 20 });
    const answer = decodeJwt(answers[0]!.string());
    assert.equal(answer.aud, forger.publicKey);
    assert.equal(answer.nats.type, "authorization_response");
    assert.equal(answer.nats.issuer_account, account);
    assert.equal(answer.iss, open.signingKey.publicKey);
    assert.match(String(answer.nats.error), /^invalid_token \(unknown_token\)/);
    assert.equal(answer.nats.jwt, undefined);
    assert.equal(rig.issuer.requests.length, asked + 1);
    assert.equal(rig.issuer.requests.at(-1)?.client, "203.0.113.9");

    // CONNECT options natsbind refuses itself, answering without asking the issuer.
    const refusedHere: Array<[Record<string, unknown>, RegExp]> = [
      [{}, /^invalid_token \(no_token\)/],
      [{ user: "ci" }, /^invalid_token \(no_token\)/],
      [{ auth_token: GOOD, pass: GOOD }, /^bad_request \(ambiguous_token\)/],
      [{ auth_token: "x".repeat(17 * 1024) }, /^invalid_token \(oversize_token\)/],
      [{ user: "r".repeat(300), pass: GOOD }, /^bad_request \(bad_role\)/],
    ];
    for (const [connectOpts, expected] of refusedHere) {
      const to = reply();
      publisher.publish(AUTH_CALLOUT_SUBJECT, forgedRequest(forger, account, connectOpts), { reply: to });
      await waitFor(async () => answers.some((a) => a.subject === to), {
        what: `the answer to ${JSON.stringify(connectOpts).slice(0, 60)}`,
        timeoutMs: 5_000,
        intervalMs: 20,
      });
      const refusal = decodeJwt(answers.find((a) => a.subject === to)!.string());
      assert.match(String(refusal.nats.error), expected);
      assert.ok(!String(refusal.nats.error).includes(GOOD));
    }
    assert.equal(rig.issuer.requests.length, asked + 1, "none of them reached the issuer");

    // Still serving: the real callout lets a real client in.
    const nc = await connectBare(rig.server.url, { token: GOOD });
    assert.equal(await roundTrip(nc, "build.42.after"), true);
    await nc.close();
    assert.equal(realCallout.counters.invalid, 0);
    const warnings = rig.logLines.filter((l) => l.includes("callout: request not answered"));
    assert.ok(warnings.length >= 1 && warnings.length <= 2, `warnings throttled (${warnings.length})`);
  });

  it("handles at most maxConcurrent at once, queues maxPending, drops the rest, and finishes what it took on stop", async () => {
    const bounded = await rig.startCallout({
      calloutAccount: open.account,
      signingKey: open.signingKey,
      credsText: open.serviceCreds,
      queue: "bounded",
      maxConcurrent: 2,
      maxPending: 3,
    });
    const publisher = open.publisher;
    const inbox = createInbox();
    const answers: Msg[] = [];
    publisher.subscribe(`${inbox}.>`, { callback: (_err, m) => void answers.push(m) });
    let release!: () => void;
    rig.issuer.gate = new Promise<void>((r) => (release = r));
    try {
      const forger = NKeyPair.generate("server");
      // Both callouts (queue groups "natsbind-callout" and "bounded") get each request; the
      // unbounded one answers too: 10 answers from it, 5 from the bounded one.
      for (let i = 0; i < 10; i++) {
        const request = forgedRequest(forger, open.account, { auth_token: GOOD }, (c) => {
          c.exp = Math.floor(Date.now() / 1000) + 60;
        });
        publisher.publish(AUTH_CALLOUT_SUBJECT, request, { reply: `${inbox}.${i}` });
      }
      await publisher.flush();
      await waitFor(async () => bounded.counters.received === 10, {
        what: "all 10 received",
        timeoutMs: 5_000,
        intervalMs: 10,
      });
      assert.equal(bounded.counters.dropped, 5, "2 in flight + 3 pending, 5 dropped");
      const stopped = bounded.stop();
      let stopDone = false;
      void stopped.then(() => (stopDone = true));
      await new Promise((r) => setImmediate(r));
      assert.equal(stopDone, false, "stop waits for the requests it took");
      rig.issuer.gate = undefined;
      release();
      await stopped;
      assert.equal(bounded.counters.issued, 5);
      await waitFor(async () => answers.length === 15, {
        what: "15 answers",
        timeoutMs: 5_000,
        intervalMs: 10,
      });
      for (const a of answers) assert.equal(typeof decodeJwt(a.string()).nats.jwt, "string");
    } finally {
      rig.issuer.gate = undefined;
      release();
    }
  });
});

describe("natsbind init --callout, its files as written", TIMEOUT, () => {
  let dir: string | undefined;
  let proc: ManagedProcess | undefined;

  after(async () => {
    await proc?.stop();
    if (dir) await removeDir(dir);
  });

  it("runs nats-server from the generated config and the callout from natsbind.yaml's credentials.callout", async () => {
    dir = await tempDir("init-callout");
    const [port, monitorPort] = await freePorts(2);
    const init = await initOperator({
      outDir: dir,
      callout: true,
      natsPort: port!,
      monitorPort: monitorPort!,
    });
    proc = new ManagedProcess(toolBinary("nats-server"), ["-c", join(dir, INIT_LAYOUT.natsServerConfig)], {
      name: "init-callout",
    });
    await waitFor(async () => (await httpGet(`http://127.0.0.1:${monitorPort}/healthz`)).status === 200, {
      what: "nats-server from init's config",
      timeoutMs: 15_000,
      intervalMs: 50,
      failIf: () => proc?.exitReason(),
    });

    // As `natsbind run` wires it: the config, the resolver, the callout files.
    const config = await loadConfig(join(dir, INIT_LAYOUT.config));
    assert.ok(config.credentials?.callout);
    const files = await readCalloutFiles(config.credentials.callout);
    assert.equal(files.calloutAccount, init.callout?.account);
    assert.equal(files.signingKey.publicKey, init.callout?.signingKey);
    const { resolver, signer } = await connectResolver(config.nats);
    const acc = projectAccount({ signingKey: signer }, "group/project");
    await resolver.push(acc.jwt);
    const issuer = new TestIssuer(acc, grants());
    const callout = await startCallout({
      servers: config.nats.servers,
      ...files,
      issuer,
      log: createLogger({ level: "error", write: () => {} }),
      timeoutMs: config.nats.timeoutMs,
    });
    try {
      const nc = await connectBare(config.nats.servers[0]!, { token: GOOD });
      assert.equal(await roundTrip(nc, "build.42.init"), true);
      await nc.close();
      await assert.rejects(
        connectBare(config.nats.servers[0]!, { token: "nope" }),
        /Authorization Violation/,
      );
      // The preloaded callout account is on the resolver, next to the system account.
      assert.ok((await resolver.list()).includes(init.callout!.account));
    } finally {
      await callout.stop();
      await resolver.close();
    }
  });
});

describe("an existing operator: natsbind callout setup", TIMEOUT, () => {
  let dir: string | undefined;
  let proc: ManagedProcess | undefined;

  after(async () => {
    await proc?.stop();
    if (dir) await removeDir(dir);
  });

  it("sets up the callout for a running server: push, config snippet, reload, and natsbind.yaml's credentials", async () => {
    dir = await tempDir("callout-setup");
    const opDir = join(dir, "op");
    const [port, monitorPort] = await freePorts(2);
    await initOperator({ outDir: opDir, natsPort: port!, monitorPort: monitorPort! });
    const serverConfig = join(opDir, INIT_LAYOUT.natsServerConfig);
    proc = new ManagedProcess(toolBinary("nats-server"), ["-c", serverConfig], { name: "callout-setup" });
    await waitFor(async () => (await httpGet(`http://127.0.0.1:${monitorPort}/healthz`)).status === 200, {
      what: "nats-server",
      timeoutMs: 15_000,
      intervalMs: 50,
      failIf: () => proc?.exitReason(),
    });

    const calloutDir = join(dir, "callout");
    const setup = await runCli(
      "callout",
      "setup",
      "--config",
      join(opDir, INIT_LAYOUT.config),
      "--out",
      calloutDir,
    );
    assert.equal(setup.code, 0, setup.stderr);
    assert.match(setup.stdout, /push on .*: 200 jwt updated/);
    assert.doesNotMatch(setup.stdout, /S[OAU][A-Z2-7]{56}/, "no seed printed");
    const snippet = /append (\S+) to its config/.exec(setup.stdout)?.[1];
    assert.equal(snippet, join(calloutDir, "nats-server-callout.conf"), setup.stdout);
    const credentials = setup.stdout.slice(setup.stdout.indexOf("   credentials:")).replace(/^ {3}/gm, "");

    // A client with only a token cannot get in before the servers know the sentinel.
    await assert.rejects(connectBare(`nats://127.0.0.1:${port}`, { token: GOOD }), /Authorization Violation/);

    await appendFile(serverConfig, `\n${await readFile(snippet, "utf8")}`);
    proc.child.kill("SIGHUP");
    await new Promise((r) => setTimeout(r, 1500));
    console.log("LOGS", proc.logs().slice(-3000));
    await waitFor(async () => /Reloaded: default_sentinel/.test(proc!.logs()), {
      what: "the reload",
      timeoutMs: 10_000,
      intervalMs: 50,
    });
    await appendFile(join(opDir, INIT_LAYOUT.config), credentials);
    const config = await loadConfig(join(opDir, INIT_LAYOUT.config));
    assert.ok(config.credentials?.callout);
    const files = await readCalloutFiles(config.credentials.callout);
    const { resolver, signer } = await connectResolver(config.nats);
    const acc = projectAccount({ signingKey: signer }, "group/project");
    await resolver.push(acc.jwt);
    const callout = await startCallout({
      servers: config.nats.servers,
      ...files,
      issuer: new TestIssuer(acc, grants()),
      log: createLogger({ level: "error", write: () => {} }),
    });
    try {
      const nc = await connectBare(config.nats.servers[0]!, { token: LONG });
      assert.equal(await roundTrip(nc, "build.42.setup"), true);
      await nc.close();
    } finally {
      await callout.stop();
      await resolver.close();
    }
  });
});

/** An nsc with its own home (as in nsc.test.ts): config, stores and keys under one temp dir. */
function nscIn(home: string): (...args: string[]) => string {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of ["NSC_HOME", "NKEYS_PATH", "NSC_CWD_ONLY"]) delete env[name];
  Object.assign(env, {
    HOME: home,
    XDG_CONFIG_HOME: join(home, "xdg-config"),
    XDG_DATA_HOME: join(home, "xdg-data"),
  });
  return (...args) => {
    const r = spawnSync(toolBinary("nsc"), ["-H", home, ...args], {
      cwd: home,
      env,
      encoding: "utf8",
      timeout: 30_000,
      stdio: ["ignore", "pipe", "pipe"],
    });
    if (r.status !== 0) throw new Error(`nsc ${args.join(" ")}: ${r.status}\n${r.stderr}${r.stdout}`);
    return r.stdout.trim();
  };
}

describe(
  "an existing operator: the nsc commands of docs/ci-credentials.md",
  { ...TIMEOUT, skip: hasToolBinary("nsc") ? false : "nsc binary not found (.cache/bin/nsc)" },
  () => {
    let dir: string | undefined;
    let server: NatsServer | undefined;

    after(async () => {
      await server?.stop();
      if (dir) await removeDir(dir);
    });

    it("set up a callout natsbind serves", async () => {
      dir = await tempDir("callout-nsc");
      const home = join(dir, "nsc");
      const out = join(dir, "natsbind");
      await mkdir(home, { recursive: true, mode: 0o700 });
      await mkdir(out, { recursive: true, mode: 0o700 });
      await writeFile(
        join(home, "nsc.json"),
        JSON.stringify({
          store_root: home,
          operator: "",
          account: "",
          github_updates: "nats-io/nsc",
          last_update: Math.floor(Date.now() / 1000),
        }),
      );
      const nsc = nscIn(home);
      // The existing operator (strict signing keys, as natsbind's own).
      nsc("add", "operator", "--generate-signing-key", "--sys", "--name", "OP");
      nsc("edit", "operator", "--require-signing-keys");

      // The documented commands.
      nsc("add", "account", "CALLOUT");
      nsc("edit", "account", "CALLOUT", "--sk", "generate");
      nsc(
        "add",
        "user",
        "--account",
        "CALLOUT",
        "--name",
        "natsbind-callout",
        "--allow-sub",
        "$SYS.REQ.USER.AUTH",
        "--allow-pub-response",
        "--response-ttl",
        "1m",
      );
      nsc("add", "user", "--account", "CALLOUT", "--name", "sentinel", "--bearer", "--deny-pubsub", ">");
      const serviceUser = JSON.parse(
        nsc("describe", "user", "--account", "CALLOUT", "--name", "natsbind-callout", "--field", "sub"),
      ) as string;
      nsc(
        "edit",
        "authcallout",
        "--account",
        "CALLOUT",
        "--auth-user",
        serviceUser,
        "--allowed-account",
        "*",
      );
      nsc(
        "generate",
        "creds",
        "--account",
        "CALLOUT",
        "--name",
        "natsbind-callout",
        "-o",
        join(out, "callout.creds"),
      );
      const sk = JSON.parse(
        nsc("describe", "account", "CALLOUT", "--field", "nats.signing_keys[0]"),
      ) as string;
      nsc("export", "keys", "--accounts", "--account", "CALLOUT", "--filter", sk, "--dir", out);
      const sentinelJwt = nsc("describe", "user", "--account", "CALLOUT", "--name", "sentinel", "--raw");
      const calloutJwt = nsc("describe", "account", "CALLOUT", "--raw");

      // A server of that operator with the callout account preloaded (`nsc push` would do as well).
      const operatorJwt = nsc("describe", "operator", "--raw");
      const systemAccountJwt = nsc("describe", "account", "SYS", "--raw");
      const systemAccount = decodeJwt(systemAccountJwt).sub;
      const calloutAccount = decodeJwt(calloutJwt).sub;
      server = await startNatsServer({
        operatorJwt,
        systemAccount,
        systemAccountJwt,
        preloadAccounts: { [calloutAccount]: calloutJwt },
        defaultSentinel: sentinelJwt,
        maxControlLine: 16 * 1024,
      });

      const files = await readCalloutFiles({
        credsFile: join(out, "callout.creds"),
        signingKeyFile: join(out, `${sk}.nk`),
      });
      assert.equal(files.calloutAccount, calloutAccount);
      assert.equal(files.signingKey.publicKey, sk);

      // A project account for the test issuer, signed by the operator's signing key.
      const opSk = (JSON.parse(nsc("describe", "operator", "--field", "nats.signing_keys")) as string[])[0]!;
      nsc("export", "keys", "--operator", "--filter", opSk, "--dir", out);
      const operatorSigningKey = NKeyPair.fromSeed(
        await readFile(join(out, `${opSk}.nk`), "utf8"),
        "operator",
      );
      nsc("generate", "creds", "--account", "SYS", "--name", "sys", "-o", join(out, "sys.creds"));
      const resolver = await NatsResolver.connect({
        servers: server.url,
        creds: await readFile(join(out, "sys.creds")),
        operatorSigningKey,
      });
      const acc = projectAccount({ signingKey: operatorSigningKey }, "group/project");
      await resolver.push(acc.jwt);
      const callout = await startCallout({
        servers: server.url,
        ...files,
        issuer: new TestIssuer(acc, grants()),
        log: createLogger({ level: "error", write: () => {} }),
      });
      try {
        const nc = await connectBare(server.url, { token: LONG });
        assert.equal(await roundTrip(nc, "build.42.nsc"), true);
        await nc.close();
        await assert.rejects(connectBare(server.url, { token: "nope" }), /Authorization Violation/);
      } finally {
        await callout.stop();
        await resolver.close();
      }
    });
  },
);
