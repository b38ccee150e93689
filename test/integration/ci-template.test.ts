// The scripts of ci/natsbind.gitlab-ci.yml, run the way a GitLab runner runs them (sh -e, and bash
// with -eo pipefail) with the real curl against an HTTPS endpoint on this machine that answers as
// POST /v1/credentials does: the request carries the documented method, path, headers and body; the
// creds file is written 0600 and removed by after_script; an error answer is shown and leaves no
// file; bad settings are refused before anything is sent; the ID token is never printed.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile, stat } from "node:fs/promises";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { parse } from "yaml";
import { removeDir, REPO_ROOT, tempDir } from "../support/process.ts";

const run = promisify(execFile);

/** Looks like an ID token; must never appear in anything the scripts print. */
const ID_TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJqb2IifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg";
const CREDS = [
  "-----BEGIN NATS USER JWT-----",
  "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln",
  "------END NATS USER JWT------",
  "",
].join("\n");

interface Job {
  before_script: string[];
  after_script?: string[];
}

interface Seen {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

interface Answer {
  status: number;
  headers?: Record<string, string>;
  body: string;
}

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

const SHELLS: [string, string[]][] = [
  ["sh", ["-e", "-c"]],
  ["bash", ["-eo", "pipefail", "-c"]],
];

describe("ci/natsbind.gitlab-ci.yml scripts with sh, bash and curl", { timeout: 60_000 }, () => {
  let dir: string;
  let server: Server;
  let url: string;
  let jobs: Record<string, Job>;
  let seen: Seen[] = [];
  let answers: Answer[] = [];

  before(async () => {
    dir = await tempDir("natsbind-ci-template-");
    jobs = parse(await readFile(join(REPO_ROOT, "ci", "natsbind.gitlab-ci.yml"), "utf8")) as Record<
      string,
      Job
    >;
    // A self-signed certificate for 127.0.0.1, trusted by curl through CURL_CA_BUNDLE only.
    await run("openssl", [
      ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"],
      ...["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
      ...["-keyout", join(dir, "tls.key"), "-out", join(dir, "tls.crt")],
    ]);
    server = createServer(
      { cert: await readFile(join(dir, "tls.crt")), key: await readFile(join(dir, "tls.key")) },
      (req, res) => {
        const chunks: Buffer[] = [];
        req.on("data", (c: Buffer) => chunks.push(c));
        req.on("end", () => {
          seen.push({
            method: req.method ?? "",
            url: req.url ?? "",
            headers: req.headers,
            body: Buffer.concat(chunks).toString(),
          });
          const answer = answers.shift() ?? { status: 500, body: '{"error":"unexpected"}' };
          res.writeHead(answer.status, answer.headers ?? {});
          res.end(answer.body);
        });
      },
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  after(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await removeDir(dir);
  });

  /** Runs `script` as a runner would, with only the variables a job would have. */
  async function runScript(
    shell: [string, string[]],
    script: string,
    env: Record<string, string>,
  ): Promise<Outcome> {
    try {
      const { stdout, stderr } = await run(shell[0], [...shell[1], script], {
        env: {
          PATH: process.env.PATH ?? "/usr/bin:/bin",
          HOME: dir,
          CURL_CA_BUNDLE: join(dir, "tls.crt"),
          ...env,
        },
        timeout: 30_000,
      });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      assert.equal(typeof e.code, "number", String(err));
      return { code: e.code!, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
    }
  }

  const exchange = (): string => jobs[".natsbind-credentials"]!.before_script[0]!;
  const credsFile = (name: string): string => join(dir, `${name}.creds`);
  const exchangeEnv = (name: string, extra: Record<string, string> = {}): Record<string, string> => ({
    NATSBIND_URL: url,
    NATSBIND_ID_TOKEN: ID_TOKEN,
    NATS_CREDS: credsFile(name),
    ...extra,
  });
  const exists = (path: string): Promise<boolean> =>
    stat(path).then(
      () => true,
      () => false,
    );
  const noToken = (o: Outcome): void => {
    assert.ok(!o.stdout.includes(ID_TOKEN) && !o.stderr.includes(ID_TOKEN), "the ID token is never printed");
    assert.ok(!o.stdout.includes("eyJhbGciOiJSUzI1NiIs"), "not even its start");
  };

  for (const shell of SHELLS) {
    it(`${shell[0]}: POSTs the token, role, Accept text/plain and JSON to /v1/credentials; writes the creds 0600; after_script removes them`, async () => {
      seen = [];
      answers = [{ status: 200, headers: { "content-type": "text/plain" }, body: CREDS }];
      const file = credsFile(`ok-${shell[0]}`);
      const o = await runScript(shell, exchange(), exchangeEnv(`ok-${shell[0]}`, { NATSBIND_ROLE: "ci" }));
      assert.equal(o.code, 0, o.stderr);
      noToken(o);
      assert.equal(seen.length, 1);
      const [request] = seen;
      assert.equal(request!.method, "POST");
      assert.equal(request!.url, "/v1/credentials");
      assert.equal(request!.headers.authorization, `Bearer ${ID_TOKEN}`);
      assert.equal(request!.headers.accept, "text/plain");
      assert.equal(request!.headers["content-type"], "application/json");
      assert.deepEqual(JSON.parse(request!.body), { role: "ci" });
      assert.equal(await readFile(file, "utf8"), CREDS);
      assert.equal((await stat(file)).mode & 0o777, 0o600, "umask 077: only the job's user reads the creds");
      assert.match(o.stdout, /NATS credentials written to /);

      const cleanup = jobs[".natsbind-credentials"]!.after_script!.join("\n");
      assert.equal((await runScript(shell, cleanup, { NATS_CREDS: file })).code, 0);
      assert.equal(await exists(file), false, "after_script removed the creds");
    });
  }

  it("sends {} without NATSBIND_ROLE (natsbind picks the one role issuable to the job)", async () => {
    seen = [];
    answers = [{ status: 200, body: CREDS }];
    const o = await runScript(SHELLS[0]!, exchange(), exchangeEnv("no-role", { NATSBIND_ROLE: "" }));
    assert.equal(o.code, 0, o.stderr);
    assert.equal(seen[0]?.body, "{}");
  });

  for (const [status, body, headers] of [
    [403, '{"error":"forbidden","message":"role ci is issued only to jobs on protected refs"}', {}],
    [
      401,
      '{"error":"invalid_token","message":"the token has expired"}',
      { "www-authenticate": 'Bearer error="invalid_token"' },
    ],
    [400, '{"error":"bad_request","message":"unknown field \\"rol\\""}', {}],
  ] as const) {
    it(`fails the job on ${status}, shows natsbind's message, leaves no creds file`, async () => {
      seen = [];
      answers = [{ status, headers: { "content-type": "application/json", ...headers }, body }];
      const o = await runScript(
        SHELLS[0]!,
        exchange(),
        exchangeEnv(`refused-${status}`, { NATSBIND_ROLE: "ci" }),
      );
      assert.notEqual(o.code, 0);
      noToken(o);
      assert.equal(seen.length, 1, "4xx is not retried");
      assert.ok(o.stderr.includes(body), `natsbind's answer is shown: ${o.stderr}`);
      assert.match(o.stderr, /natsbind: no NATS credentials/);
      assert.equal(await exists(credsFile(`refused-${status}`)), false);
    });
  }

  it("retries a 429 after its Retry-After, then gets the creds", async () => {
    seen = [];
    answers = [
      {
        status: 429,
        headers: { "content-type": "application/json", "retry-after": "1" },
        body: '{"error":"rate_limited","message":"too many requests for GitLab project 42"}',
      },
      { status: 200, body: CREDS },
    ];
    const o = await runScript(SHELLS[0]!, exchange(), exchangeEnv("retried"));
    assert.equal(o.code, 0, o.stderr);
    assert.equal(seen.length, 2);
    assert.equal(
      await readFile(credsFile("retried"), "utf8"),
      CREDS,
      "the 429 body did not stay in the file",
    );
  });

  for (const [what, env, message] of [
    ["an http:// URL", { NATSBIND_URL: "http://127.0.0.1:1" }, /must be https:\/\//],
    ["no NATSBIND_URL", { NATSBIND_URL: "" }, /set NATSBIND_URL/],
    ["no ID token (id_tokens missing)", { NATSBIND_ID_TOKEN: "" }, /no ID token/],
    [
      "a role that would break out of the JSON body",
      { NATSBIND_ROLE: 'ci","ttl":"24h' },
      /must be a role name/,
    ],
    ["an upper-case role", { NATSBIND_ROLE: "CI" }, /must be a role name/],
  ] as const) {
    it(`refuses ${what} before sending anything`, async () => {
      seen = [];
      const o = await runScript(SHELLS[0]!, exchange(), { ...exchangeEnv("never"), ...env });
      assert.notEqual(o.code, 0);
      assert.match(o.stderr, message);
      noToken(o);
      assert.equal(seen.length, 0, "nothing reached natsbind");
      assert.equal(await exists(credsFile("never")), false);
    });
  }

  describe(".natsbind-callout", () => {
    const callout = (): string => jobs[".natsbind-callout"]!.before_script[0]!;
    /** The callout script, then what the nats CLI would read from the environment (never printed whole). */
    const probe = (): string =>
      `${callout()}\n` +
      'printf "user=%s\\n" "$([ "$NATS_USER" = "$NATSBIND_ID_TOKEN" ] && echo TOKEN || echo "$NATS_USER")"\n' +
      'printf "password=%s\\n" "$([ "${NATS_PASSWORD-unset}" = "$NATSBIND_ID_TOKEN" ] && echo TOKEN || echo "${NATS_PASSWORD-unset}")"\n' +
      'printf "creds=%s\\n" "${NATS_CREDS-unset}"\n';

    for (const shell of SHELLS) {
      it(`${shell[0]}: with NATSBIND_ROLE, user = the role and password = the ID token`, async () => {
        const o = await runScript(shell, probe(), {
          NATS_URL: "tls://nats.example.com:4222",
          NATSBIND_ID_TOKEN: ID_TOKEN,
          NATSBIND_ROLE: "deploy",
          NATS_CREDS: "/somewhere/else.creds",
        });
        assert.equal(o.code, 0, o.stderr);
        noToken(o);
        assert.deepEqual(o.stdout.trim().split("\n"), ["user=deploy", "password=TOKEN", "creds=unset"]);
      });
    }

    it("without NATSBIND_ROLE, the ID token alone as NATS_USER (the nats CLI sends it as a token)", async () => {
      const o = await runScript(SHELLS[0]!, probe(), {
        NATS_URL: "tls://nats.example.com:4222",
        NATSBIND_ID_TOKEN: ID_TOKEN,
        NATS_PASSWORD: "left-over",
      });
      assert.equal(o.code, 0, o.stderr);
      noToken(o);
      assert.deepEqual(o.stdout.trim().split("\n"), ["user=TOKEN", "password=unset", "creds=unset"]);
    });

    for (const [what, env, message] of [
      ["no NATS_URL", { NATSBIND_ID_TOKEN: ID_TOKEN }, /set NATS_URL/],
      ["no ID token", { NATS_URL: "tls://nats.example.com:4222" }, /no ID token/],
      [
        "a bad role",
        { NATS_URL: "tls://n:4222", NATSBIND_ID_TOKEN: ID_TOKEN, NATSBIND_ROLE: "a b" },
        /must be a role name/,
      ],
    ] as const) {
      it(`refuses ${what}`, async () => {
        const o = await runScript(SHELLS[0]!, probe(), env);
        assert.notEqual(o.code, 0);
        assert.match(o.stderr, message);
        noToken(o);
      });
    }
  });
});
