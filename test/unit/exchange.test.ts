// POST /v1/credentials over real HTTP (startHttpServer on port 0) with an in-test issuer that
// records what it was asked and answers what each test chooses. The issuer is the door's port:
// verification and policy are tested where they live; here: HTTP statuses, exact bodies, bounds,
// and that the token and seeds never reach a log line or an error body.
import { describe, it, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { request } from "node:http";
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import { connect } from "node:net";
import {
  CREDENTIALS_PATH,
  MAX_BODY_BYTES,
  MAX_TOKEN_BYTES,
  chooseRepresentation,
  createExchangeHandler,
} from "../../src/credentials/exchange.ts";
import type { ExchangeHandler, ExchangeHandlerOptions } from "../../src/credentials/exchange.ts";
import type { CiIdentity } from "../../src/credentials/identity.ts";
import type {
  CredentialIssuer,
  IssueRequest,
  IssueResult,
  Issued,
  Refused,
} from "../../src/credentials/types.ts";
import { startHttpServer } from "../../src/http/server.ts";
import type { HttpServer } from "../../src/http/server.ts";
import { formatCreds, parseCreds } from "../../src/nats/creds.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { ManualClock } from "../../src/runtime/clock.ts";

type Reply = { status: number; headers: IncomingHttpHeaders; body: string };

/** A JWT-shaped bearer token, unique per call so a leak is attributable. */
function idToken(): string {
  const part = (n: number) => randomBytes(n).toString("base64url");
  return `eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJ${part(300)}.${part(256)}`;
}

const identity: CiIdentity = {
  issuer: "https://gitlab.example",
  subject: "project_path:platform/api:ref_type:branch:ref:main",
  issuedAt: 1_767_225_600,
  expiresAt: 1_767_229_200,
  projectId: 42,
  projectPath: "platform/api",
  namespaceId: 7,
  namespacePath: "platform",
  userLogin: "alice",
  pipelineId: 1001,
  pipelineSource: "push",
  jobId: 5001,
  ref: "main",
  refType: "branch",
  refProtected: true,
};

const ACCOUNT = NKeyPair.generate("account").publicKey;
const EXPIRES_AT = Date.UTC(2026, 0, 1, 0, 10, 0);
const SERVERS = ["nats://nats-1.example:4222", "nats://nats-2.example:4222"];

function issued(request: IssueRequest): Issued {
  const userKey = request.userPublicKey === undefined ? NKeyPair.generate("user") : undefined;
  const userPublicKey = request.userPublicKey ?? userKey!.publicKey;
  const result: Issued = {
    kind: "issued",
    account: ACCOUNT,
    role: request.role ?? "ci",
    userPublicKey,
    jwt: `eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.${randomBytes(200).toString("base64url")}.sig`,
    expiresAt: EXPIRES_AT,
    servers: SERVERS,
    identity,
    binding: "platform/api",
  };
  if (userKey) result.userKey = userKey;
  return result;
}

class RecordingIssuer implements CredentialIssuer {
  calls: IssueRequest[] = [];
  results: IssueResult[] = [];
  answer: (request: IssueRequest) => IssueResult | Promise<IssueResult> = issued;
  async issue(request: IssueRequest): Promise<IssueResult> {
    this.calls.push(request);
    const result = await this.answer(request);
    this.results.push(result);
    return result;
  }
}

/** Everything secret the tests handed out, and every output that must not contain any of it. */
const secrets = new Set<string>();
const logLines: string[] = [];
const errorBodies: string[] = [];

const recordingLog = {
  info: (obj: Record<string, unknown>, msg: string) =>
    logLines.push(JSON.stringify({ level: "info", msg, ...obj })),
  warn: (obj: Record<string, unknown>, msg: string) =>
    logLines.push(JSON.stringify({ level: "warn", msg, ...obj })),
  error: (obj: Record<string, unknown>, msg: string) =>
    logLines.push(JSON.stringify({ level: "error", msg, ...obj })),
};

function secretToken(): string {
  const token = idToken();
  secrets.add(token);
  return token;
}

function assertNoSecret(text: string, where: string): void {
  for (const secret of secrets) assert.ok(!text.includes(secret), `${where} contains a secret`);
}

/** One request, body written as given (Content-Length set by Node unless chunked or overridden). */
function send(
  url: string,
  opts: {
    method?: string;
    path?: string;
    headers?: OutgoingHttpHeaders;
    body?: string | Buffer;
    chunks?: Buffer[];
  } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const { hostname, port } = new URL(url);
    const req = request(
      // A path option is sent as it is (a URL would lose a bare "?").
      {
        hostname,
        port,
        path: opts.path ?? CREDENTIALS_PATH,
        method: opts.method ?? "POST",
        headers: opts.headers ?? {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const reply = {
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString("utf8"),
          };
          if (reply.status >= 400) errorBodies.push(reply.body);
          resolve(reply);
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    // Like curl: a body given whole is sent with its Content-Length (Node would chunk it).
    if (opts.body !== undefined && req.getHeader("transfer-encoding") === undefined)
      req.setHeader("content-length", Buffer.byteLength(opts.body));
    if (opts.chunks) for (const chunk of opts.chunks) req.write(chunk);
    if (opts.body !== undefined) req.write(opts.body);
    req.end();
  });
}

/**
 * Writes `head` on a raw socket; resolves with what the server sent once the server closed the
 * connection, rejects if it has not within `timeoutMs`.
 */
function raw(port: number, head: string, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => socket.write(head));
    const chunks: Buffer[] = [];
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.on("error", () => {}); // a reset after the answer is fine: the answer is what is checked
    socket.on("close", () => resolve(Buffer.concat(chunks).toString("utf8")));
    socket.setTimeout(timeoutMs, () => {
      socket.destroy();
      reject(new Error("the server did not close the connection in time"));
    });
  });
}

function json(reply: Reply): unknown {
  assert.match(reply.headers["content-type"] ?? "", /^application\/json/);
  return JSON.parse(reply.body);
}

async function waitFor(what: string, condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe("token exchange door (POST /v1/credentials)", () => {
  let server: HttpServer;
  let issuer: RecordingIssuer;
  let handler: ExchangeHandler;
  const extra: HttpServer[] = [];

  async function startWith(
    opts: Partial<ExchangeHandlerOptions>,
  ): Promise<{ server: HttpServer; issuer: RecordingIssuer }> {
    const own = new RecordingIssuer();
    const route = createExchangeHandler({ issuer: own, log: recordingLog, ...opts });
    const s = await startHttpServer({ host: "127.0.0.1", port: 0, routes: { [CREDENTIALS_PATH]: route } });
    extra.push(s);
    return { server: s, issuer: opts.issuer instanceof RecordingIssuer ? opts.issuer : own };
  }

  before(async () => {
    issuer = new RecordingIssuer();
    handler = createExchangeHandler({ issuer: { issue: (r) => issuer.issue(r) }, log: recordingLog });
    server = await startHttpServer({ host: "127.0.0.1", port: 0, routes: { [CREDENTIALS_PATH]: handler } });
  });
  after(async () => {
    await Promise.all([server.close(), ...extra.map((s) => s.close())]);
  });
  beforeEach(() => {
    issuer.calls = [];
    issuer.results = [];
    issuer.answer = issued;
  });

  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
  const jsonBody = (body: unknown, token: string, headers: OutgoingHttpHeaders = {}) => ({
    headers: { ...bearer(token), "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });

  describe("issued", () => {
    it("answers 200 JSON with the creds file when natsbind made the key, and passes the request on", async () => {
      const token = secretToken();
      const reply = await send(server.url, jsonBody({ role: "ci", ttl: "5m" }, token));
      assert.equal(reply.status, 200);
      assert.equal(reply.headers["cache-control"], "no-store");
      const result = issuer.results[0] as Issued;
      secrets.add(new TextDecoder().decode(result.userKey!.getSeed()));
      assert.deepEqual(json(reply), {
        account: ACCOUNT,
        role: "ci",
        user: result.userPublicKey,
        jwt: result.jwt,
        creds: formatCreds(result.jwt, result.userKey!),
        expiresAt: "2026-01-01T00:10:00Z",
        servers: SERVERS,
      });
      assert.deepEqual(issuer.calls, [
        { via: "exchange", token, role: "ci", ttlMs: 300_000, client: "127.0.0.1" },
      ]);
      const creds = parseCreds((json(reply) as { creds: string }).creds);
      assert.equal(creds.user.publicKey, result.userPublicKey);
    });

    it("with publicKey returns only the JWT (no creds: the seed stays with the job)", async () => {
      const token = secretToken();
      const jobKey = NKeyPair.generate("user");
      secrets.add(new TextDecoder().decode(jobKey.getSeed()));
      const reply = await send(server.url, jsonBody({ publicKey: jobKey.publicKey }, token));
      assert.equal(reply.status, 200);
      const result = issuer.results[0] as Issued;
      assert.deepEqual(json(reply), {
        account: ACCOUNT,
        role: "ci",
        user: jobKey.publicKey,
        jwt: result.jwt,
        expiresAt: "2026-01-01T00:10:00Z",
        servers: SERVERS,
      });
      assert.deepEqual(issuer.calls, [
        { via: "exchange", token, userPublicKey: jobKey.publicKey, client: "127.0.0.1" },
      ]);
    });

    it("accepts no body, an empty body, and curl's empty form body", async () => {
      const token = secretToken();
      for (const opts of [
        { headers: bearer(token) },
        { headers: { ...bearer(token), "content-type": "application/json" }, body: "" },
        { headers: { ...bearer(token), "content-type": "application/x-www-form-urlencoded" }, body: "" },
        { headers: { ...bearer(token), "content-type": "application/json" }, body: " \n" },
      ]) {
        const reply = await send(server.url, opts);
        assert.equal(reply.status, 200, reply.body);
      }
      assert.deepEqual(issuer.calls, Array(4).fill({ via: "exchange", token, client: "127.0.0.1" }));
    });

    it("a ttl above any maxTtl is passed on for the issuer to cap (not refused)", async () => {
      const reply = await send(server.url, jsonBody({ ttl: "2h" }, secretToken()));
      assert.equal(reply.status, 200);
      assert.equal(issuer.calls[0]!.ttlMs, 7_200_000);
    });

    it("Accept: text/plain answers the creds file itself", async () => {
      const token = secretToken();
      const reply = await send(server.url, { headers: { ...bearer(token), accept: "text/plain" } });
      assert.equal(reply.status, 200);
      assert.match(reply.headers["content-type"] ?? "", /^text\/plain/);
      assert.equal(reply.headers["cache-control"], "no-store");
      const result = issuer.results[0] as Issued;
      secrets.add(new TextDecoder().decode(result.userKey!.getSeed()));
      assert.equal(reply.body, formatCreds(result.jwt, result.userKey!));
    });

    it("picks JSON or the creds file from Accept (JSON on ties), 406 when neither", async () => {
      assert.equal(chooseRepresentation(undefined), "json");
      assert.equal(chooseRepresentation("*/*"), "json");
      assert.equal(chooseRepresentation("text/plain"), "creds");
      assert.equal(chooseRepresentation("text/*"), "creds");
      assert.equal(chooseRepresentation("text/plain, application/json"), "json");
      assert.equal(chooseRepresentation("application/json;q=0.5, text/plain"), "creds");
      assert.equal(chooseRepresentation("text/plain;q=0, */*"), "json");
      assert.equal(chooseRepresentation("image/png"), undefined);
      assert.equal(chooseRepresentation("application/json;q=0, text/plain;q=0"), undefined);
      const reply = await send(server.url, { headers: { ...bearer(secretToken()), accept: "image/png" } });
      assert.equal(reply.status, 406);
      assert.equal((json(reply) as { error: string }).error, "not_acceptable");
      assert.equal(issuer.calls.length, 0);
    });

    it("text/plain with publicKey is 406 before anything is issued (there is no seed for a creds file)", async () => {
      const jobKey = NKeyPair.generate("user");
      const reply = await send(
        server.url,
        jsonBody({ publicKey: jobKey.publicKey }, secretToken(), { accept: "text/plain" }),
      );
      assert.equal(reply.status, 406);
      assert.equal(reply.headers["cache-control"], "no-store");
      const body = json(reply) as { error: string; message: string };
      assert.equal(body.error, "not_acceptable");
      assert.match(body.message, /application\/json/);
      assert.equal(issuer.calls.length, 0);
    });

    it("uses the socket's address, not X-Forwarded-For; clientAddress overrides", async () => {
      let reply = await send(server.url, {
        headers: { ...bearer(secretToken()), "x-forwarded-for": "203.0.113.9" },
      });
      assert.equal(reply.status, 200);
      assert.equal(issuer.calls[0]!.client, "127.0.0.1");
      const own = await startWith({ clientAddress: (req) => `runner:${req.headers["x-runner"] as string}` });
      reply = await send(own.server.url, { headers: { ...bearer(secretToken()), "x-runner": "7" } });
      assert.equal(reply.status, 200);
      assert.equal(own.issuer.calls[0]!.client, "runner:7");
    });
  });

  describe("the issuer's refusals", () => {
    const cases: { refused: Omit<Refused, "kind">; status: number; headers: Record<string, string> }[] = [
      {
        refused: { code: "invalid_token", reason: "expired", message: "token expired" },
        status: 401,
        headers: { "www-authenticate": 'Bearer error="invalid_token"' },
      },
      {
        refused: { code: "forbidden", reason: "unprotected_ref", message: "role ci needs a protected ref" },
        status: 403,
        headers: {},
      },
      {
        refused: { code: "bad_request", reason: "unknown_role", message: "no role nope" },
        status: 400,
        headers: {},
      },
      {
        refused: { code: "rate_limited", reason: "project", message: "slow down", retryAfterS: 2.2 },
        status: 429,
        headers: { "retry-after": "3" },
      },
      {
        refused: { code: "unavailable", reason: "keys_not_loaded", message: "not ready yet" },
        status: 503,
        headers: { "retry-after": "1" },
      },
      {
        refused: { code: "unavailable", reason: "jwks_down", message: "try later", retryAfterS: 30 },
        status: 503,
        headers: { "retry-after": "30" },
      },
    ];
    for (const { refused, status, headers } of cases) {
      it(`${refused.code} (${refused.reason}) -> ${status} {"error","message"}`, async () => {
        issuer.answer = () => ({ kind: "refused", ...refused });
        const reply = await send(server.url, { headers: bearer(secretToken()) });
        assert.equal(reply.status, status);
        assert.equal(reply.headers["cache-control"], "no-store");
        assert.deepEqual(json(reply), { error: refused.code, message: refused.message });
        for (const [name, value] of Object.entries(headers)) assert.equal(reply.headers[name], value, name);
        if (status !== 401) assert.equal(reply.headers["www-authenticate"], undefined);
        if (status !== 429 && status !== 503) assert.equal(reply.headers["retry-after"], undefined);
      });
    }

    it("a refusal message that quotes the token is scrubbed", async () => {
      issuer.answer = (r) => ({
        kind: "refused",
        code: "invalid_token",
        reason: "bug",
        message: `bad ${r.token}`,
      });
      const reply = await send(server.url, { headers: bearer(secretToken()) });
      assert.equal(reply.status, 401);
      assert.deepEqual(json(reply), { error: "invalid_token", message: "bad [REDACTED]" });
    });

    it("an issuer that throws is a 500 without details; the error is logged without the token", async () => {
      issuer.answer = (r) => {
        throw new Error(`database exploded near ${r.token}`);
      };
      const before = logLines.length;
      const reply = await send(server.url, { headers: bearer(secretToken()) });
      assert.equal(reply.status, 500);
      assert.deepEqual(json(reply), {
        error: "internal",
        message: "internal error; natsbind's log has the details",
      });
      assert.doesNotMatch(reply.body, /exploded|at .*\.ts/);
      const logged = logLines.slice(before).join("\n");
      assert.match(logged, /credential issuance failed/);
      assert.match(logged, /database exploded near \[REDACTED\]/);
    });

    it("an issuer breaking the contract (no key pair for a key it made, unknown code) is a 500", async () => {
      issuer.answer = (r) => {
        const result = issued(r);
        delete result.userKey;
        return result;
      };
      let reply = await send(server.url, { headers: bearer(secretToken()) });
      assert.equal(reply.status, 500);
      assert.equal((json(reply) as { error: string }).error, "internal");
      issuer.answer = () => ({
        kind: "refused",
        code: "weird" as Refused["code"],
        reason: "x",
        message: "y",
      });
      reply = await send(server.url, { headers: bearer(secretToken()) });
      assert.equal(reply.status, 500);
    });
  });

  describe("the Authorization header", () => {
    const challenge = 'Bearer error="invalid_token"';
    it("missing or malformed -> 401 invalid_token with the Bearer challenge, issuer not asked", async () => {
      const token = secretToken();
      for (const authorization of [
        undefined,
        "",
        "Bearer",
        "Bearer ",
        `Basic ${Buffer.from(`user:${token}`).toString("base64")}`,
        `Token ${token}`,
        `Bearer ${token} ${token}`,
        `Bearer ${token}"`,
        `Bearer ${token.slice(0, 20)}<script>`,
      ]) {
        const headers: OutgoingHttpHeaders = authorization === undefined ? {} : { authorization };
        const reply = await send(server.url, { headers });
        assert.equal(reply.status, 401, String(authorization));
        assert.equal(reply.headers["www-authenticate"], challenge);
        assert.equal(reply.headers["cache-control"], "no-store");
        const body = json(reply) as { error: string; message: string };
        assert.equal(body.error, "invalid_token");
        assert.deepEqual(Object.keys(body), ["error", "message"]);
      }
      assert.equal(issuer.calls.length, 0);
    });

    it("the scheme is case-insensitive", async () => {
      const token = secretToken();
      const reply = await send(server.url, { headers: { authorization: `bearer ${token}` } });
      assert.equal(reply.status, 200);
      assert.equal(issuer.calls[0]!.token, token);
    });

    it("two Authorization headers -> 400, issuer not asked", async () => {
      const token = secretToken();
      const answer = await raw(
        server.port,
        `POST ${CREDENTIALS_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nAuthorization: Bearer ${idToken()}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`,
      );
      assert.match(answer, /^HTTP\/1\.1 400 /);
      assert.match(answer, /more than one Authorization header/);
      errorBodies.push(answer);
      assert.equal(issuer.calls.length, 0);
    });

    it(`a token of ${MAX_TOKEN_BYTES} bytes is passed on; one byte more is 401; a head over 32 KiB is Node's 431`, async () => {
      const longest = "a".repeat(MAX_TOKEN_BYTES);
      let reply = await send(server.url, { headers: bearer(longest) });
      assert.equal(reply.status, 200);
      assert.equal(issuer.calls[0]!.token, longest);
      const tooLong = secretToken().padEnd(MAX_TOKEN_BYTES + 1, "a");
      secrets.add(tooLong);
      reply = await send(server.url, { headers: bearer(tooLong) });
      assert.equal(reply.status, 401);
      assert.equal(reply.headers["www-authenticate"], challenge);
      assert.deepEqual(json(reply), {
        error: "invalid_token",
        message: `bearer token longer than ${MAX_TOKEN_BYTES} bytes`,
      });
      const huge = secretToken().padEnd(40 * 1024, "a");
      secrets.add(huge);
      const answer = await raw(
        server.port,
        `POST ${CREDENTIALS_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${huge}\r\nContent-Length: 0\r\n\r\n`,
      );
      assert.match(answer, /^HTTP\/1\.1 431 /);
      errorBodies.push(answer);
      assert.equal(issuer.calls.length, 1);
    });
  });

  describe("the token where it does not belong", () => {
    it("a token in the body is 400 naming the field and is never used, with or without the header", async () => {
      const token = secretToken();
      const cases: [OutgoingHttpHeaders, unknown, string][] = [
        [{}, { token }, "token"],
        [{}, { id_token: token, role: "ci" }, "id_token"],
        [bearer(secretToken()), { idToken: token }, "idToken"],
        [bearer(secretToken()), { NATS_ID_TOKEN: token }, "NATS_ID_TOKEN"],
        [bearer(secretToken()), { jwt: token }, "jwt"],
        [bearer(secretToken()), { access_token: token }, "access_token"],
        [{}, { role: token }, "role"],
        [bearer(secretToken()), { ttl: token }, "ttl"],
      ];
      for (const [headers, body, field] of cases) {
        const reply = await send(server.url, {
          headers: { ...headers, "content-type": "application/json" },
          body: JSON.stringify(body),
        });
        assert.equal(reply.status, 400, field);
        const answer = json(reply) as { error: string; message: string };
        assert.equal(answer.error, "bad_request");
        assert.ok(
          answer.message.startsWith(`body field "${field}": the ID token goes in the Authorization header`),
          answer.message,
        );
        assert.equal(reply.headers["www-authenticate"], undefined);
      }
      assert.equal(issuer.calls.length, 0);
    });

    it("a token in the query is 400 without echoing it, and never used", async () => {
      const token = secretToken();
      for (const path of [
        `${CREDENTIALS_PATH}?access_token=${token}`,
        `${CREDENTIALS_PATH}?${token}`,
        `${CREDENTIALS_PATH}?`,
      ]) {
        const reply = await send(server.url, { path, headers: bearer(secretToken()) });
        assert.equal(reply.status, 400);
        assert.match((json(reply) as { message: string }).message, /takes no query parameters/);
      }
      assert.equal(issuer.calls.length, 0);
    });
  });

  describe("the body", () => {
    it(`a body declared over ${MAX_BODY_BYTES} bytes is 413 before it is read`, async () => {
      const reply = await send(server.url, {
        headers: { ...bearer(secretToken()), "content-type": "application/json" },
        body: JSON.stringify({ role: "ci", pad: "x".repeat(MAX_BODY_BYTES) }),
      });
      assert.equal(reply.status, 413);
      assert.deepEqual(json(reply), {
        error: "payload_too_large",
        message: `body larger than ${MAX_BODY_BYTES} bytes`,
      });
      assert.equal(issuer.calls.length, 0);
    });

    it("a body declared far larger is answered and the connection cut, without waiting for it", async () => {
      // The client sends 8 of the 1 GiB it declares and then nothing: the server must answer and
      // close at once (well before its 10 s request timeout), not wait for or read the rest.
      const answer = await raw(
        server.port,
        `POST ${CREDENTIALS_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${secretToken()}\r\nContent-Type: application/json\r\nContent-Length: ${1024 * 1024 * 1024}\r\n\r\n{"role":`,
        3_000,
      );
      assert.match(answer, /^HTTP\/1\.1 413 /);
      assert.match(answer, /connection: close/i);
      assert.equal(issuer.calls.length, 0);
    });

    it("a chunked body growing past the bound is 413 while it streams", async () => {
      const reply = await send(server.url, {
        headers: {
          ...bearer(secretToken()),
          "content-type": "application/json",
          "transfer-encoding": "chunked",
        },
        chunks: [
          Buffer.from('{"role":"ci","pad":"'),
          ...Array<Buffer>(5).fill(Buffer.alloc(4096, "x")),
          Buffer.from('"}'),
        ],
      });
      assert.equal(reply.status, 413);
      assert.equal((json(reply) as { error: string }).error, "payload_too_large");
      assert.equal(issuer.calls.length, 0);
    });

    it("a body that is not JSON by Content-Type is 415", async () => {
      for (const contentType of [
        undefined,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
      ]) {
        const headers: OutgoingHttpHeaders = { ...bearer(secretToken()) };
        if (contentType) headers["content-type"] = contentType;
        const reply = await send(server.url, { headers, body: '{"role":"ci"}' });
        assert.equal(reply.status, 415, String(contentType));
        assert.deepEqual(json(reply), {
          error: "unsupported_media_type",
          message: "Content-Type must be application/json when there is a body",
        });
      }
      const reply = await send(server.url, {
        headers: { ...bearer(secretToken()), "content-type": "application/json; charset=utf-8" },
        body: '{"role":"ci"}',
      });
      assert.equal(reply.status, 200);
      assert.equal(issuer.calls.length, 1);
    });

    it("malformed JSON, a non-object, deep nesting and invalid UTF-8 are 400", async () => {
      const bodies: [string | Buffer, RegExp][] = [
        ['{"role": "ci"', /not valid JSON/],
        ["[1,2]", /must be a JSON object/],
        ["null", /must be a JSON object/],
        ['"ci"', /must be a JSON object/],
        [`{"role":${"[".repeat(200)}${"]".repeat(200)}}`, /nests deeper than 64 levels/],
        [Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]), /not valid UTF-8/],
      ];
      for (const [body, message] of bodies) {
        const reply = await send(server.url, {
          headers: { ...bearer(secretToken()), "content-type": "application/json" },
          body,
        });
        assert.equal(reply.status, 400, String(body));
        const answer = json(reply) as { error: string; message: string };
        assert.equal(answer.error, "bad_request");
        assert.match(answer.message, message);
      }
      assert.equal(issuer.calls.length, 0);
    });

    it("an unknown field is 400 naming it", async () => {
      const reply = await send(server.url, jsonBody({ role: "ci", account: "A..." }, secretToken()));
      assert.equal(reply.status, 400);
      assert.deepEqual(json(reply), {
        error: "bad_request",
        message: 'body: unknown field "account" (the fields are role, ttl and publicKey)',
      });
      assert.equal(issuer.calls.length, 0);
    });

    it("bad role, ttl and publicKey are 400 naming the field; a seed as publicKey is not echoed", async () => {
      const seed = new TextDecoder().decode(NKeyPair.generate("user").getSeed());
      secrets.add(seed);
      const cases: [unknown, string, RegExp][] = [
        [{ role: "CI" }, "role", /must be a role name/],
        [{ role: "ci.>" }, "role", /must be a role name/],
        [{ role: "a".repeat(64) }, "role", /must be a role name/],
        [{ role: 7 }, "role", /must be a string/],
        [{ ttl: "5 minutes" }, "ttl", /is not a duration/],
        [{ ttl: 300 }, "ttl", /must be a string/],
        [{ ttl: "0" }, "ttl", /must be longer than 0/],
        [{ ttl: "25h" }, "ttl", /is longer than 86400000 ms/],
        [{ ttl: "1".repeat(40) + "s" }, "ttl", /at most 32 characters/],
        [{ publicKey: seed }, "publicKey", /must be a user public nkey/],
        [{ publicKey: NKeyPair.generate("account").publicKey }, "publicKey", /must be a user public nkey/],
        [
          // The last character carries checksum bits: any other character breaks the checksum (a
          // fixed "A" left 1 key in 32 unchanged, and that run expected 400 for a valid key).
          { publicKey: corruptLast(NKeyPair.generate("user").publicKey) },
          "publicKey",
          /must be a user public nkey/,
        ],
      ];
      for (const [body, field, message] of cases) {
        const reply = await send(server.url, jsonBody(body, secretToken()));
        assert.equal(reply.status, 400, JSON.stringify(body));
        const answer = json(reply) as { error: string; message: string };
        assert.equal(answer.error, "bad_request");
        assert.ok(answer.message.startsWith(`body field "${field}": `), answer.message);
        assert.match(answer.message, message);
      }
      assert.equal(issuer.calls.length, 0);
    });

    it("a body not received within the deadline is 408 (injected clock)", async () => {
      const clock = new ManualClock();
      const own = await startWith({ clock, bodyTimeoutMs: 5_000 });
      const answering = raw(
        own.server.port,
        `POST ${CREDENTIALS_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${secretToken()}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{"ro`,
      );
      await waitFor("the body deadline to be set", () => clock.pendingTimers().length === 1);
      clock.advance(4_999);
      assert.equal(clock.pendingTimers().length, 1);
      clock.advance(1);
      const answer = await answering;
      assert.match(answer, /^HTTP\/1\.1 408 /);
      assert.match(answer, /"error":"request_timeout"/);
      errorBodies.push(answer);
      assert.equal(own.issuer.calls.length, 0);
    });
  });

  it("other methods are 405 with Allow: POST", async () => {
    for (const method of ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]) {
      const reply = await send(server.url, { method, headers: bearer(secretToken()) });
      assert.equal(reply.status, 405, method);
      assert.equal(reply.headers.allow, "POST");
      assert.equal(reply.headers["cache-control"], "no-store");
      if (method !== "HEAD")
        assert.deepEqual(json(reply), { error: "method_not_allowed", message: "only POST is allowed" });
    }
    assert.equal(issuer.calls.length, 0);
  });

  it("requests over the in-flight bound are 503 with Retry-After", async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const own = await startWith({ maxInFlight: 1 });
    own.issuer.answer = async (r) => {
      await held;
      return issued(r);
    };
    const first = send(own.server.url, { headers: bearer(secretToken()) });
    await waitFor("the first request to reach the issuer", () => own.issuer.calls.length === 1);
    const second = await send(own.server.url, { headers: bearer(secretToken()) });
    assert.equal(second.status, 503);
    assert.equal(second.headers["retry-after"], "1");
    assert.equal((json(second) as { error: string }).error, "unavailable");
    release();
    assert.equal((await first).status, 200);
    const third = await send(own.server.url, { headers: bearer(secretToken()) });
    assert.equal(third.status, 200, "the slot is free again");
    assert.equal(own.issuer.calls.length, 2);
  });

  it("counts answers by status", () => {
    assert.ok(handler.counters.requests > 0);
    assert.ok((handler.counters.byStatus["200"] ?? 0) > 0);
    assert.ok((handler.counters.byStatus["401"] ?? 0) > 0);
  });

  it("no token or seed appears in any log line or error body", () => {
    assert.ok(secrets.size > 20, "the tests handed out secrets");
    assert.ok(logLines.length > 20 && errorBodies.length > 20, "there is output to scan");
    for (const line of logLines) assertNoSecret(line, `log line ${line.slice(0, 120)}`);
    for (const body of errorBodies) assertNoSecret(body, `error body ${body.slice(0, 120)}`);
    // The scan can fail: a secret does match where it is put.
    const [one] = secrets;
    assert.throws(() => assertNoSecret(`x${one!}x`, "probe"));
  });
});

/** The key with its last character replaced by a different one. */
function corruptLast(key: string): string {
  return key.slice(0, -1) + (key.endsWith("A") ? "B" : "A");
}
