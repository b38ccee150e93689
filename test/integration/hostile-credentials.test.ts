// The attack suite of CI credentials (issue 10, part 7): hostile ID tokens and requests against
// the REAL `natsbind run` (local mode, a real nats-server in operator mode with a full resolver,
// the GitLab simulator minting the tokens and serving OIDC). Every case asserts the exact HTTP
// status and error code, the reason of its audit line, and that nothing was issued or changed: no
// `credentials.issued` line, natsbind_credentials_issued_total unchanged, every bound project's
// account JWT on the resolver unchanged. The outputs (audit file, natsbind's log lines, /metrics,
// every response body) are scanned for every token and seed the suite used.
//
// Time: natsbind runs on a StepClock (the wall clock plus an offset the suite moves forward, which
// it can also freeze). Every case starts one minute later than the previous one, so its rate-limit
// buckets are full and the JWKS cooldown is over; the rate-limit cases freeze it, so the 429 comes
// after exactly `limit` requests whatever the machine's speed. Nothing sleeps.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { createPublicKey, generateKeyPairSync, randomBytes } from "node:crypto";
import { request, type IncomingHttpHeaders } from "node:http";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { decodeJwt as decodeIdToken } from "jose";
import type { Config } from "../../src/config/config.ts";
import { CREDENTIALS_PATH } from "../../src/credentials/exchange.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import { decodeJwt } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { systemClock, type Clock, type TimerHandle } from "../../src/runtime/clock.ts";
import { runController, type RunningController } from "../../src/main.ts";
import type { GitLabSimulator, MintIdTokenOptions, SimProject } from "../support/gitlab-sim.ts";
import { startLocalRig, type LocalRig } from "../support/local-rig.ts";
import { waitFor } from "../support/process.ts";

const AUDIENCE = "https://natsbind.test";
const MAX_TTL_S = 15 * 60; // credentials.maxTtl default
const LEEWAY_S = 60; // credentials.leeway default
const JWKS_COOLDOWN_MS = 30_000; // credentials.jwksCooldown default
const PER_CLIENT_PER_MINUTE = 100;
const PER_PROJECT_PER_MINUTE = 4;
/** What a log-injection attempt would like the audit file to hold. */
const FORGED_AUDIT_LINE = JSON.stringify({ event: "credentials.issued", via: "exchange", role: "admin" });
/** Every case starts this much later: buckets refilled, JWKS cooldown over. */
const CASE_STEP_MS = 61_000;

/**
 * The wall clock plus an offset the suite moves forward; frozen, it stands still. Timers are the
 * system's (natsbind sets them as delays), so moving the offset fires nothing early.
 */
class StepClock implements Clock {
  #offsetMs = 0;
  #frozenAt: number | undefined;
  now(): number {
    return this.#frozenAt ?? Date.now() + this.#offsetMs;
  }
  advance(ms: number): void {
    if (this.#frozenAt !== undefined) this.#frozenAt += ms;
    else this.#offsetMs += ms;
  }
  freeze(): void {
    this.#frozenAt = this.now();
  }
  /** Time runs on from where it stood (never backwards). */
  thaw(): void {
    if (this.#frozenAt === undefined) return;
    this.#offsetMs = this.#frozenAt - Date.now();
    this.#frozenAt = undefined;
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    return systemClock.setTimeout(fn, ms);
  }
  clearTimeout(handle: TimerHandle): void {
    systemClock.clearTimeout(handle);
  }
}

// acme selects its group only (not subgroups); infra selects acme/infra. Roles: ci (the one a
// plain protected-branch job gets), deploy (production only), release (tags only), admin (never
// issued to CI).
const ACME = `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: acme}
spec:
  gitlab: {group: acme, includeSubgroups: false}
  roles:
    - name: ci
      publish: {allow: ["build.{{project.id}}.{{tag(pipeline)}}.>"]}
      subscribe: {allow: ["_INBOX.>", "build.{{project.id}}.>"]}
      ci: {refs: protected}
    - name: deploy
      publish: {allow: ["deploy.{{project.id}}.>"]}
      ci: {refs: protected, environments: [production]}
    - name: release
      publish: {allow: ["release.{{project.id}}.>"]}
      ci: {refs: protected, refTypes: [tag]}
    - name: admin
      publish: {allow: [">"]}
`;
const INFRA = `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: infra}
spec:
  gitlab: {group: acme/infra}
  roles:
    - name: build
      publish: {allow: ["infra.{{project.id}}.>"]}
      ci: {refs: protected}
`;

interface Req {
  method?: string;
  path?: string;
  headers?: Record<string, string | string[]>;
  body?: string;
  /** Local address the request comes from (a 127.0.0.0/8 address): the rate limiter's client. */
  client?: string;
}

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  json(): Record<string, unknown>;
}

type AuditLine = Record<string, unknown>;

interface Case {
  name: string;
  status: number;
  /** The answer's `error`; "" for 200. */
  code: string;
  /**
   * The reason of the refusal's audit line (the last credentials.* line the case wrote). null: the
   * door refused the request before the issuer saw it (body, header or size): a log line, no
   * audit line. "" for 200.
   */
  reason: string | null;
  /** What the refusal's message must say (the door's refusals share a few codes). */
  message?: RegExp;
  /** Credentials the case issues (only the capped-ttl and replay cases issue any). */
  issues?: number;
  /** One request... */
  request?: () => Req;
  /** ...or several: the answer returned is the one the row reports. */
  run?: () => Promise<Answer>;
  check?: (answer: Answer, fresh: AuditLine[]) => void | Promise<void>;
}

describe(
  "CI credentials attack suite (hostile tokens and requests, real natsbind)",
  { timeout: 120_000 },
  () => {
    const clock = new StepClock();
    let rig: LocalRig | undefined;
    let sim: GitLabSimulator;
    let dir: string;
    let config: Config;
    let controller: RunningController | undefined;
    let resolver: NatsResolver;
    let auditFile: string;
    const logLines: string[] = [];
    /** Every ID token (or token-like string) the suite sent. */
    const tokens: string[] = [];
    /** Seeds the suite made up (the bad publicKey): must appear nowhere. */
    const ourSeeds: string[] = [];
    /** Seeds natsbind generated for issued creds: only in their own 200 answer. */
    const issuedSeeds: string[] = [];
    const bodies: string[] = [];
    const table: Array<{ name: string; status: number; code: string; reason: string }> = [];
    /** account public key -> its JWT on the resolver, before the first case. */
    const accountJwts = new Map<string, string>();
    let api: SimProject;
    let other: SimProject;
    let sandbox: SimProject;
    let db: SimProject;
    let acmeGroupId: number;
    let otherGroupId: number;
    const foreign = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const foreignEc = generateKeyPairSync("ec", { namedCurve: "P-256" });

    const nowS = (): number => Math.floor(clock.now() / 1000);

    function mint(o: Partial<MintIdTokenOptions> = {}): string {
      const token = sim.mintIdToken({ projectId: api.id, aud: AUDIENCE, nowS: nowS(), ...o });
      tokens.push(token);
      return token;
    }

    /** Keeps the token's header and signature, changes its claims. */
    function tampered(token: string, change: (claims: Record<string, unknown>) => void): string {
      const [h, p, s] = token.split(".") as [string, string, string];
      const claims = JSON.parse(Buffer.from(p, "base64url").toString("utf8")) as Record<string, unknown>;
      change(claims);
      const forged = `${h}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.${s}`;
      tokens.push(forged);
      return forged;
    }

    function randomKid(): string {
      return randomBytes(32).toString("base64url");
    }

    /** GitLab's current public signing key as PEM (what an attacker fetches from the JWKS). */
    function gitlabPublicPem(): string {
      const jwk = sim.publicJwks().keys.find((k) => k.kid === sim.signingKeyId)!;
      return createPublicKey({ key: { ...jwk }, format: "jwk" }).export({
        type: "spki",
        format: "pem",
      }) as string;
    }

    function bearer(token: string, body?: unknown, more: Partial<Req> = {}): Req {
      const headers: Record<string, string | string[]> = {
        authorization: `Bearer ${token}`,
        accept: "application/json",
      };
      const req: Req = { headers, ...more };
      if (body !== undefined) {
        headers["content-type"] = "application/json";
        req.body = JSON.stringify(body);
      }
      return req;
    }

    function send(r: Req): Promise<Answer> {
      return new Promise((resolve, reject) => {
        const headers: Record<string, string | string[]> = { ...r.headers };
        if (r.body !== undefined) headers["content-length"] = String(Buffer.byteLength(r.body));
        const req = request(
          new URL(r.path ?? CREDENTIALS_PATH, controller!.url),
          { method: r.method ?? "POST", headers, localAddress: r.client ?? "127.0.0.1", agent: false },
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("error", reject);
            res.on("end", () => {
              const text = Buffer.concat(chunks).toString("utf8");
              bodies.push(text);
              resolve({
                status: res.statusCode!,
                headers: res.headers,
                text,
                json: () => JSON.parse(text) as Record<string, unknown>,
              });
            });
          },
        );
        req.on("error", reject);
        req.end(r.body);
      });
    }

    async function metricsText(): Promise<string> {
      const res = await fetch(`${controller!.url}/metrics`);
      return res.text();
    }

    function metricSum(text: string, name: string): number {
      let sum = 0;
      for (const line of text.split("\n")) {
        if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.split(" ").at(-1));
      }
      return sum;
    }

    async function auditLines(): Promise<AuditLine[]> {
      let text: string;
      try {
        text = await readFile(auditFile, "utf8");
      } catch {
        return [];
      }
      return text
        .split("\n")
        .filter((l) => l !== "")
        .map((l) => JSON.parse(l) as AuditLine)
        .filter((l) => String(l.event).startsWith("credentials."));
    }

    /**
     * The issuer counts an answer (issued or refused) in the same step it hands the audit sink its
     * line: once the file holds as many credentials.* lines as the counters say, every line of the
     * requests so far is on disk, and lines a case did not write are known not to exist.
     */
    async function settledAudit(): Promise<{ lines: AuditLine[]; issuedTotal: number }> {
      let lines: AuditLine[] = [];
      let issuedTotal = 0;
      await waitFor(
        async () => {
          const m = await metricsText();
          issuedTotal = metricSum(m, "natsbind_credentials_issued_total");
          const answered = issuedTotal + metricSum(m, "natsbind_credentials_refused_total");
          lines = await auditLines();
          return lines.length === answered;
        },
        { what: "every answered request's audit line in the file", timeoutMs: 10_000, intervalMs: 10 },
      );
      return { lines, issuedTotal };
    }

    async function currentAccountJwts(): Promise<Map<string, string | undefined>> {
      const now = new Map<string, string | undefined>();
      for (const account of accountJwts.keys()) now.set(account, await resolver.lookup(account));
      return now;
    }

    function assertRefusal(a: Answer, status: number, code: string, what: string): void {
      assert.equal(a.status, status, `${what}: ${a.text}`);
      assert.deepEqual(Object.keys(a.json()).sort(), ["error", "message"], `${what}: ${a.text}`);
      assert.equal(a.json().error, code, what);
    }

    before(async () => {
      rig = await startLocalRig({ name: "hostile-creds" });
      ({ sim, dir, resolver } = rig);
      auditFile = join(dir, "audit", "credentials.log");
      config = rig.config({
        credentials: {
          audience: AUDIENCE,
          audit: { file: "audit/credentials.log" },
          rateLimit: {
            perProjectPerMinute: PER_PROJECT_PER_MINUTE,
            perClientPerMinute: PER_CLIENT_PER_MINUTE,
          },
        },
      });
      const acme = sim.createGroup({ name: "Acme", path: "acme" });
      acmeGroupId = acme.id;
      api = sim.createProject({ name: "api", groupId: acme.id });
      const infraGroup = sim.createGroup({ name: "Infra", path: "infra", parentId: acme.id });
      db = sim.createProject({ name: "db", groupId: infraGroup.id });
      sandbox = sim.createProject({
        name: "sandbox",
        groupId: sim.createGroup({ name: "Sandbox", path: "sandbox", parentId: acme.id }).id,
      });
      const otherGroup = sim.createGroup({ name: "Other", path: "other" });
      otherGroupId = otherGroup.id;
      other = sim.createProject({ name: "lib", groupId: otherGroup.id });
      await writeFile(join(dir, "bindings", "acme.yaml"), ACME);
      await writeFile(join(dir, "bindings", "infra.yaml"), INFRA);
      controller = await runController(config, {
        clock,
        log: createLogger({ write: (l) => void logLines.push(l) }),
      });
      const keys = new DirectoryKeyStore(config.keys.directory);
      for (const [binding, project] of [
        ["acme", api],
        ["infra", db],
      ] as const) {
        await waitFor(
          async () => {
            const slot = await keys.get({ binding, projectId: project.id });
            if (slot === undefined || slot.roleKeys.size === 0) return false;
            const jwt = await resolver.lookup(slot.account);
            if (jwt !== undefined) accountJwts.set(slot.account, jwt);
            return jwt !== undefined;
          },
          {
            what: `the account of ${binding}/${project.path} on the server`,
            timeoutMs: 15_000,
            intervalMs: 25,
          },
        );
      }
      // The suite starts from a settled audit log (nothing yet) and warm JWKS (first use fetches it).
      await settledAudit();
    });

    after(async () => {
      await controller?.stop();
      await rig?.stop();
    });

    const cases: Case[] = [
      // ---------------------------------------------------------------- signature and header
      {
        name: "alg none (unsigned, GitLab's kid)",
        request: () => bearer(mint({ signWith: "unsigned" })),
        status: 401,
        code: "invalid_token",
        reason: "bad_algorithm",
      },
      {
        name: 'alg "NONE" (case games)',
        request: () => bearer(mint({ signWith: "unsigned", header: { alg: "NONE" } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_algorithm",
      },
      {
        name: "HS256 signed with GitLab's public key (PEM) as the HMAC secret",
        request: () => bearer(mint({ signWith: { hmacSecret: gitlabPublicPem() } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_algorithm",
      },
      {
        name: "HMAC signature (GitLab's public key) under an RS256 header",
        request: () =>
          bearer(mint({ signWith: { hmacSecret: gitlabPublicPem() }, header: { alg: "RS256" } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_signature",
      },
      {
        name: "ES256 with the attacker's EC key under GitLab's kid",
        request: () => bearer(mint({ signWith: { ecKey: foreignEc.privateKey } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_algorithm",
      },
      {
        name: "no kid in the header",
        request: () => bearer(mint({ header: { kid: undefined } })),
        status: 401,
        code: "invalid_token",
        reason: "missing_kid",
      },
      {
        name: "unknown kid (GitLab's signature, a kid GitLab never had)",
        request: () => bearer(mint({ header: { kid: randomKid() } })),
        status: 401,
        code: "invalid_token",
        reason: "unknown_kid",
      },
      {
        name: "kid of 4 KiB carrying a forged audit line",
        request: () => bearer(mint({ header: { kid: `\n${FORGED_AUDIT_LINE}\n${"k".repeat(4096)}` } })),
        status: 401,
        code: "invalid_token",
        reason: "unknown_kid",
      },
      {
        name: "foreign issuer key with GitLab's kid",
        request: () => bearer(mint({ signWith: { rsaKey: foreign.privateKey } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_signature",
      },
      {
        name: "embedded jwk header (the attacker's key and kid)",
        request: () => {
          const jwk = foreign.publicKey.export({ format: "jwk" });
          return bearer(
            mint({
              signWith: { rsaKey: foreign.privateKey },
              header: { kid: "attacker", jwk: { ...jwk, kid: "attacker" } },
            }),
          );
        },
        status: 401,
        code: "invalid_token",
        reason: "unknown_kid",
      },
      {
        name: "jku header pointing at the attacker's key set",
        request: () =>
          bearer(
            mint({
              signWith: { rsaKey: foreign.privateKey },
              header: {
                kid: "attacker",
                jku: `${sim.url}/attacker/jwks.json`,
                x5u: `${sim.url}/attacker/cert.pem`,
              },
            }),
          ),
        status: 401,
        code: "invalid_token",
        reason: "unknown_kid",
        check: () => {
          const fetched = [...sim.requests, ...sim.oidcRequests].filter((r) => r.path.includes("attacker"));
          assert.deepEqual(fetched, [], "natsbind never fetches a URL a token names");
        },
      },
      {
        name: "crit header (b64: false) changing what the signature covers",
        request: () => bearer(mint({ header: { crit: ["b64"], b64: false } })),
        status: 401,
        code: "invalid_token",
        reason: "malformed",
      },
      {
        name: "tampered payload (project_id of another project, signature kept)",
        request: () => bearer(tampered(mint(), (c) => (c.project_id = String(other.id)))),
        status: 401,
        code: "invalid_token",
        reason: "bad_signature",
      },
      {
        name: "tampered payload (ref_protected flipped to true on a feature branch)",
        request: () =>
          bearer(
            tampered(mint({ ref: "feature/x", refProtected: false }), (c) => (c.ref_protected = "true")),
          ),
        status: 401,
        code: "invalid_token",
        reason: "bad_signature",
      },
      {
        name: "signature stripped (header.payload.)",
        request: () => {
          const [h, p] = mint().split(".");
          const stripped = `${h}.${p}.`;
          tokens.push(stripped);
          return bearer(stripped);
        },
        status: 401,
        code: "invalid_token",
        reason: "bad_signature",
      },
      {
        name: "garbage bearer token (not a JWT)",
        request: () => {
          const junk = randomBytes(48).toString("base64url");
          tokens.push(junk);
          return bearer(junk);
        },
        status: 401,
        code: "invalid_token",
        reason: "malformed",
      },
      // ---------------------------------------------------------------- issuer and audience
      {
        name: "wrong iss (another GitLab)",
        request: () => bearer(mint({ extra: { iss: "https://gitlab.example.com" } })),
        status: 401,
        code: "invalid_token",
        reason: "wrong_issuer",
      },
      {
        name: "iss with a trailing slash (exact match only)",
        request: () => bearer(mint({ extra: { iss: `${sim.url}/` } })),
        status: 401,
        code: "invalid_token",
        reason: "wrong_issuer",
      },
      {
        name: "missing aud",
        request: () => bearer(mint({ extra: { aud: undefined } })),
        status: 401,
        code: "invalid_token",
        reason: "wrong_audience",
      },
      {
        name: "wrong aud (ours with a suffix)",
        request: () => bearer(mint({ aud: `${AUDIENCE}.evil` })),
        status: 401,
        code: "invalid_token",
        reason: "wrong_audience",
      },
      {
        name: "a token for another audience (Vault's)",
        request: () => bearer(mint({ aud: "https://vault.example.com" })),
        status: 401,
        code: "invalid_token",
        reason: "wrong_audience",
      },
      {
        name: "aud array without ours",
        request: () => bearer(mint({ aud: ["https://vault.example.com", "https://sigstore.dev"] })),
        status: 401,
        code: "invalid_token",
        reason: "wrong_audience",
      },
      // ---------------------------------------------------------------- time
      {
        name: "expired (an hour ago)",
        request: () => bearer(mint({ nowS: nowS() - 7200, expiresInS: 3600 })),
        status: 401,
        code: "invalid_token",
        reason: "expired",
      },
      {
        name: "expired 5 s beyond the leeway",
        request: () => bearer(mint({ nowS: nowS() - 120, expiresInS: 120 - LEEWAY_S - 5 })),
        status: 401,
        code: "invalid_token",
        reason: "expired",
      },
      {
        name: "nbf in the future",
        request: () => bearer(mint({ extra: { nbf: nowS() + 3600 } })),
        status: 401,
        code: "invalid_token",
        reason: "not_yet_valid",
      },
      {
        name: "iat in the future (no nbf)",
        request: () => bearer(mint({ nowS: nowS() + 3600, extra: { nbf: undefined } })),
        status: 401,
        code: "invalid_token",
        reason: "issued_in_future",
      },
      {
        name: "ancient iat (25 h ago, exp still ahead)",
        request: () => bearer(mint({ nowS: nowS() - 25 * 3600, expiresInS: 26 * 3600 })),
        status: 401,
        code: "invalid_token",
        reason: "too_old",
      },
      {
        name: "no exp",
        request: () => bearer(mint({ extra: { exp: undefined } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_claims",
      },
      // ---------------------------------------------------------------- claims of wrong types
      {
        name: "project_id a number (GitLab sends strings)",
        request: () => bearer(mint({ extra: { project_id: api.id } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_claims",
      },
      {
        name: "ref_protected a boolean",
        request: () => bearer(mint({ extra: { ref_protected: true } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_claims",
      },
      {
        name: "exp a string",
        request: () => bearer(mint({ extra: { exp: String(nowS() + 3600) } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_claims",
      },
      {
        name: "project_id negative",
        request: () => bearer(mint({ extra: { project_id: "-1" } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_claims",
      },
      {
        name: "no project_id",
        request: () => bearer(mint({ extra: { project_id: undefined } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_claims",
      },
      {
        name: 'ref_type "commit"',
        request: () => bearer(mint({ extra: { ref_type: "commit" } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_claims",
      },
      {
        name: "ref longer than 1 KiB",
        request: () => bearer(mint({ extra: { ref: "r".repeat(1025) } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_claims",
      },
      {
        name: "environment_protected without environment",
        request: () => bearer(mint({ extra: { environment_protected: "true" } })),
        status: 401,
        code: "invalid_token",
        reason: "bad_claims",
      },
      // ---------------------------------------------------------------- binding and policy
      {
        name: "project not bound (a group no binding selects)",
        request: () => bearer(mint({ projectId: other.id })),
        status: 403,
        code: "forbidden",
        reason: "project_not_bound",
      },
      {
        name: "project in a subgroup the binding does not include",
        request: () => bearer(mint({ projectId: sandbox.id })),
        status: 403,
        code: "forbidden",
        reason: "project_not_bound",
      },
      {
        name: "reclaimed path (project_path acme/api, another project_id)",
        request: () =>
          bearer(
            mint({
              projectId: other.id,
              extra: { project_path: "acme/api", namespace_path: "acme", namespace_id: String(acmeGroupId) },
            }),
          ),
        status: 403,
        code: "forbidden",
        reason: "project_not_bound",
      },
      {
        name: "bound project_id with another namespace_id",
        request: () =>
          bearer(mint({ extra: { namespace_id: String(otherGroupId), namespace_path: "other" } })),
        status: 403,
        code: "forbidden",
        reason: "namespace_mismatch",
      },
      {
        name: "fork MR (job_project_id differs)",
        request: () =>
          bearer(mint({ extra: { job_project_id: String(other.id), job_project_path: "other/lib" } }), {
            role: "ci",
          }),
        status: 403,
        code: "forbidden",
        reason: "fork_merge_request",
      },
      {
        name: "fork MR (job_namespace_id differs, same job_project_id)",
        request: () =>
          bearer(
            mint({ extra: { job_project_id: String(api.id), job_namespace_id: String(otherGroupId) } }),
            {
              role: "ci",
            },
          ),
        status: 403,
        code: "forbidden",
        reason: "fork_merge_request",
      },
      {
        name: "unprotected ref for a protected role",
        request: () => bearer(mint({ ref: "feature/x", refProtected: false }), { role: "ci" }),
        status: 403,
        code: "forbidden",
        reason: "unprotected_ref",
      },
      {
        name: "unprotected tag named like the protected branch (main)",
        request: () => bearer(mint({ ref: "main", refType: "tag", refProtected: false }), { role: "ci" }),
        status: 403,
        code: "forbidden",
        reason: "unprotected_ref",
      },
      {
        name: "user_login carrying a forged audit line (refused job)",
        request: () =>
          bearer(
            mint({
              ref: "feature/x",
              refProtected: false,
              extra: { user_login: `mallory\n${FORGED_AUDIT_LINE}` },
            }),
            { role: "ci" },
          ),
        status: 403,
        code: "forbidden",
        reason: "unprotected_ref",
        check: (_a, fresh) =>
          assert.equal(fresh[0]!.user, `mallory\n${FORGED_AUDIT_LINE}`, "kept as one JSON string"),
      },
      {
        name: "unprotected ref, no role named (every role refuses it: the reason is kept)",
        request: () => bearer(mint({ ref: "feature/x", refProtected: false })),
        status: 403,
        code: "forbidden",
        reason: "unprotected_ref",
      },
      {
        name: "branch job asks for a tags-only role",
        request: () => bearer(mint(), { role: "release" }),
        status: 403,
        code: "forbidden",
        reason: "ref_type_not_allowed",
      },
      {
        name: "wrong environment (staging for a production role)",
        request: () =>
          bearer(mint({ environment: "staging", environmentProtected: true }), { role: "deploy" }),
        status: 403,
        code: "forbidden",
        reason: "environment_not_allowed",
      },
      {
        name: "environment name in another case (Production)",
        request: () =>
          bearer(mint({ environment: "Production", environmentProtected: true }), { role: "deploy" }),
        status: 403,
        code: "forbidden",
        reason: "environment_not_allowed",
      },
      {
        name: "production, but GitLab does not mark it protected",
        request: () =>
          bearer(mint({ environment: "production", environmentProtected: false }), { role: "deploy" }),
        status: 403,
        code: "forbidden",
        reason: "environment_unprotected",
      },
      {
        name: "no environment for an environment role",
        request: () => bearer(mint(), { role: "deploy" }),
        status: 403,
        code: "forbidden",
        reason: "environment_required",
      },
      {
        name: "role not issuable (admin: no ci section)",
        request: () => bearer(mint(), { role: "admin" }),
        status: 403,
        code: "forbidden",
        reason: "role_not_issuable",
      },
      {
        name: "role the binding does not have",
        request: () => bearer(mint(), { role: "root" }),
        status: 403,
        code: "forbidden",
        reason: "role_unknown",
      },
      {
        name: "project of another binding's group asks for acme's role",
        request: () => bearer(mint({ projectId: db.id }), { role: "deploy" }),
        status: 403,
        code: "forbidden",
        reason: "role_unknown",
      },
      {
        name: "project of another binding's group claims acme's namespace",
        request: () =>
          bearer(
            mint({ projectId: db.id, extra: { namespace_id: String(acmeGroupId), namespace_path: "acme" } }),
          ),
        status: 403,
        code: "forbidden",
        reason: "namespace_mismatch",
      },
      // ---------------------------------------------------------------- lifetime and replay
      {
        name: "ttl above maxTtl (1h): CAPPED to maxTtl, not refused",
        request: () => bearer(mint(), { ttl: "1h" }),
        status: 200,
        code: "",
        reason: "",
        issues: 1,
        check: (a) => {
          const body = a.json();
          const claims = decodeJwt(String(body.jwt));
          const now = nowS();
          assert.ok(claims.exp! <= now + MAX_TTL_S, `exp ${claims.exp} <= now ${now} + maxTtl`);
          assert.ok(claims.exp! >= now + MAX_TTL_S - 5, `exp ${claims.exp} is now + maxTtl`);
          assert.equal(Date.parse(String(body.expiresAt)) / 1000, claims.exp);
          issuedSeeds.push(/\bSU[A-Z2-7]{56}\b/.exec(String(body.creds))![0]);
        },
      },
      {
        name: "ttl past the token's exp: capped to the token's exp",
        run: async () => {
          const token = mint({ expiresInS: 120 });
          const exp = decodeIdToken(token).exp!;
          const a = await send(bearer(token, { ttl: "10m" }));
          assert.equal(a.status, 200, a.text);
          assert.equal(decodeJwt(String(a.json().jwt)).exp, exp, "the user JWT ends with the ID token");
          issuedSeeds.push(/\bSU[A-Z2-7]{56}\b/.exec(String(a.json().creds))![0]);
          return a;
        },
        status: 200,
        code: "",
        reason: "",
        issues: 1,
      },
      {
        name: "replayed token, still valid: issued again (bearer model, exp bounds it)",
        run: async () => {
          const token = mint();
          const first = await send(bearer(token));
          const second = await send(bearer(token));
          for (const a of [first, second]) {
            assert.equal(a.status, 200, a.text);
            issuedSeeds.push(/\bSU[A-Z2-7]{56}\b/.exec(String(a.json().creds))![0]);
          }
          assert.notEqual(first.json().user, second.json().user, "each use gets its own user key");
          return second;
        },
        status: 200,
        code: "",
        reason: "",
        issues: 2,
        check: (_a, fresh) => {
          const jobs = fresh.filter((l) => l.event === "credentials.issued").map((l) => l.jobId);
          assert.equal(new Set(jobs).size, 1, "both issuances are audited with the same job");
        },
      },
      {
        name: "replayed token after its exp",
        run: async () => {
          const token = mint({ expiresInS: 120 });
          const first = await send(bearer(token));
          assert.equal(first.status, 200, first.text);
          issuedSeeds.push(/\bSU[A-Z2-7]{56}\b/.exec(String(first.json().creds))![0]);
          clock.advance((120 + LEEWAY_S + 1) * 1000);
          return send(bearer(token));
        },
        status: 401,
        code: "invalid_token",
        reason: "expired",
        issues: 1,
      },
      // ---------------------------------------------------------------- the request itself
      {
        name: "oversize token (20 KiB, a real signed JWT)",
        request: () => bearer(mint({ extra: { pad: "x".repeat(20 * 1024) } })),
        status: 401,
        code: "invalid_token",
        reason: null,
        message: /bearer token longer than 16384 bytes/,
      },
      {
        name: "token in the body instead of the header",
        request: () => {
          const token = mint();
          return { headers: { "content-type": "application/json" }, body: JSON.stringify({ token }) };
        },
        status: 400,
        code: "bad_request",
        reason: null,
        message: /body field "token": the ID token goes in the Authorization header/,
      },
      {
        name: "token in the body as id_token, a valid header too (not used)",
        request: () => bearer(mint(), { id_token: mint() }),
        status: 400,
        code: "bad_request",
        reason: null,
        message: /body field "id_token": the ID token goes in the Authorization header.*not used/,
      },
      {
        name: "token as the value of role",
        request: () => bearer(mint(), { role: mint() }),
        status: 400,
        code: "bad_request",
        reason: null,
        message: /body field "role": the ID token goes in the Authorization header/,
      },
      {
        name: "token in the query string",
        request: () => {
          const token = mint();
          return {
            path: `${CREDENTIALS_PATH}?access_token=${token}`,
            headers: { accept: "application/json" },
          };
        },
        status: 400,
        code: "bad_request",
        reason: null,
        message: /takes no query parameters/,
      },
      {
        name: "no Authorization header",
        request: () => ({ headers: { accept: "application/json" } }),
        status: 401,
        code: "invalid_token",
        reason: null,
        message: /missing Authorization header/,
      },
      {
        name: "Basic scheme",
        request: () => {
          const token = mint();
          return {
            headers: { authorization: `Basic ${Buffer.from(`gitlab-ci-token:${token}`).toString("base64")}` },
          };
        },
        status: 401,
        code: "invalid_token",
        reason: null,
        message: /must be "Bearer <token>"/,
      },
      {
        name: "two bearer tokens in one header",
        request: () => ({ headers: { authorization: `Bearer ${mint()} ${mint({ projectId: db.id })}` } }),
        status: 401,
        code: "invalid_token",
        reason: null,
        message: /must be "Bearer <token>"/,
      },
      {
        name: "two Authorization headers",
        request: () => ({
          headers: { authorization: [`Bearer ${mint()}`, `Bearer ${mint({ projectId: db.id })}`] },
        }),
        status: 400,
        code: "bad_request",
        reason: null,
        message: /more than one Authorization header/,
      },
      {
        name: "GET instead of POST",
        request: () => ({ ...bearer(mint()), method: "GET" }),
        status: 405,
        code: "method_not_allowed",
        reason: null,
        message: /only POST/,
      },
      {
        name: "wrong content type (form-encoded, curl -d)",
        request: () => ({
          headers: {
            authorization: `Bearer ${mint()}`,
            "content-type": "application/x-www-form-urlencoded",
          },
          body: "role=ci&ttl=5m",
        }),
        status: 415,
        code: "unsupported_media_type",
        reason: null,
        message: /Content-Type must be application\/json/,
      },
      {
        name: "wrong content type (text/plain carrying JSON)",
        request: () => ({
          headers: { authorization: `Bearer ${mint()}`, "content-type": "text/plain" },
          body: JSON.stringify({ role: "ci" }),
        }),
        status: 415,
        code: "unsupported_media_type",
        reason: null,
        message: /Content-Type must be application\/json/,
      },
      {
        name: "unknown body field",
        request: () => bearer(mint(), { role: "ci", admin: true }),
        status: 400,
        code: "bad_request",
        reason: null,
        message: /unknown field "admin"/,
      },
      {
        name: "__proto__ body field",
        request: () => ({
          headers: { authorization: `Bearer ${mint()}`, "content-type": "application/json" },
          body: '{"__proto__": {"role": "admin"}, "role": "ci"}',
        }),
        status: 400,
        code: "bad_request",
        reason: null,
        message: /unknown field "__proto__"/,
      },
      {
        name: "role not a DNS label (../admin)",
        request: () => bearer(mint(), { role: "../admin" }),
        status: 400,
        code: "bad_request",
        reason: null,
        message: /body field "role": must be a role name/,
      },
      {
        name: "ttl beyond any bound (25h)",
        request: () => bearer(mint(), { ttl: "25h" }),
        status: 400,
        code: "bad_request",
        reason: null,
        message: /body field "ttl"/,
      },
      {
        name: "ttl negative",
        request: () => bearer(mint(), { ttl: "-5m" }),
        status: 400,
        code: "bad_request",
        reason: null,
        message: /body field "ttl"/,
      },
      {
        name: "bad publicKey: a user SEED instead of the public key (not echoed)",
        request: () => {
          const seed = new TextDecoder().decode(NKeyPair.generate("user").getSeed());
          assert.match(seed, /^SU[A-Z2-7]{56}$/);
          ourSeeds.push(seed);
          return bearer(mint(), { publicKey: seed });
        },
        status: 400,
        code: "bad_request",
        reason: null,
        message: /body field "publicKey": must be a user public nkey/,
      },
      {
        name: "bad publicKey: an account key",
        request: () => bearer(mint(), { publicKey: NKeyPair.generate("account").getPublicKey() }),
        status: 400,
        code: "bad_request",
        reason: null,
        message: /body field "publicKey": must be a user public nkey/,
      },
      {
        name: "oversize body (17 KiB)",
        request: () => bearer(mint(), { role: "ci", ttl: "5m".padEnd(17 * 1024, " ") }),
        status: 413,
        code: "payload_too_large",
        reason: null,
        message: /body larger than 16384 bytes/,
      },
      // ---------------------------------------------------------------- GitLab's keys unavailable
      {
        name: "JWKS down while GitLab rotated its key: 503, never issued",
        run: async () => {
          sim.rotateSigningKey();
          sim.failOidc({ status: 503 });
          try {
            const before = sim.oidcRequests.length;
            const a = await send(bearer(mint()));
            assert.ok(
              sim.oidcRequests.slice(before).some((r) => r.status === 503),
              "natsbind asked GitLab for the new key",
            );
            return a;
          } finally {
            sim.clearOidcFaults();
          }
        },
        status: 503,
        code: "unavailable",
        reason: "jwks_unavailable",
      },
      {
        name: "JWKS down, cached keys expired, a valid token: 503, never issued",
        run: async () => {
          clock.advance(11 * 60_000); // past the keys' 10 min cache age
          sim.failOidc({ status: 503 });
          try {
            const a = await send(bearer(mint()));
            const asked = sim.oidcRequests.length;
            const again = await send(bearer(mint()));
            assertRefusal(again, 503, "unavailable", "second try within the cooldown");
            assert.equal(sim.oidcRequests.length, asked, "no second JWKS request within the cooldown");
            return a;
          } finally {
            sim.clearOidcFaults();
          }
        },
        status: 503,
        code: "unavailable",
        reason: "jwks_unavailable",
      },
      {
        name: "flood of unknown kids: JWKS fetched once per cooldown",
        run: async () => {
          const flood = (): Promise<Answer[]> =>
            Promise.all(
              Array.from({ length: 30 }, () =>
                send(
                  bearer(
                    mint({ signWith: { rsaKey: foreign.privateKey }, header: { kid: randomKid() } }),
                    undefined,
                    {
                      client: "127.0.0.20",
                    },
                  ),
                ),
              ),
            );
          const start = sim.oidcRequests.length;
          const answers = await flood();
          assert.equal(sim.oidcRequests.length - start, 1, "30 unknown kids: one JWKS fetch");
          answers.push(...(await flood()));
          assert.equal(sim.oidcRequests.length - start, 1, "30 more within the cooldown: no fetch");
          clock.advance(JWKS_COOLDOWN_MS + 1_000);
          answers.push(...(await flood()));
          assert.equal(sim.oidcRequests.length - start, 2, "after the cooldown: one more fetch");
          for (const a of answers) assertRefusal(a, 401, "invalid_token", "flood");
          return answers.at(-1)!;
        },
        status: 401,
        code: "invalid_token",
        reason: "unknown_kid",
        check: (_a, fresh) => {
          assert.equal(fresh.length, 90);
          assert.ok(fresh.every((l) => l.reason === "unknown_kid" && l.client === "127.0.0.20"));
        },
      },
      // ---------------------------------------------------------------- rate limits
      {
        name: `rate limit per client (${PER_CLIENT_PER_MINUTE}/min), then a valid token`,
        run: async () => {
          clock.freeze();
          try {
            const junk = mint({ signWith: "unsigned" });
            const burst = await Promise.all(
              Array.from({ length: PER_CLIENT_PER_MINUTE }, () =>
                send(bearer(junk, undefined, { client: "127.0.0.77" })),
              ),
            );
            for (const a of burst) assertRefusal(a, 401, "invalid_token", "within the client's budget");
            const elsewhere = await send(bearer(junk, undefined, { client: "127.0.0.78" }));
            assertRefusal(elsewhere, 401, "invalid_token", "another client address has its own budget");
            const limited = await send(bearer(mint(), undefined, { client: "127.0.0.77" }));
            assert.equal(limited.headers["retry-after"], "1", "one request back in 60 s / 100");
            return limited;
          } finally {
            clock.thaw();
          }
        },
        status: 429,
        code: "rate_limited",
        reason: "client_rate",
      },
      {
        name: `rate limit per project (${PER_PROJECT_PER_MINUTE}/min), from another client`,
        run: async () => {
          clock.freeze();
          try {
            for (let i = 0; i < PER_PROJECT_PER_MINUTE; i++) {
              const a = await send(
                bearer(
                  mint({ ref: "feature/x", refProtected: false }),
                  { role: "ci" },
                  { client: "127.0.0.81" },
                ),
              );
              assertRefusal(a, 403, "forbidden", "within the project's budget");
            }
            const elsewhere = await send(
              bearer(mint({ projectId: db.id }), { role: "admin" }, { client: "127.0.0.82" }),
            );
            assertRefusal(elsewhere, 403, "forbidden", "another project has its own budget");
            const limited = await send(bearer(mint(), undefined, { client: "127.0.0.82" }));
            assert.equal(limited.headers["retry-after"], "15", "one request back in 60 s / 4");
            return limited;
          } finally {
            clock.thaw();
          }
        },
        status: 429,
        code: "rate_limited",
        reason: "project_rate",
        check: (_a, fresh) => {
          const limited = fresh.find((l) => l.reason === "project_rate")!;
          assert.equal(limited.projectId, api.id);
          assert.equal(limited.client, "127.0.0.82");
          assert.equal(fresh.at(-2)!.reason, "role_unknown");
        },
      },
    ];

    for (const c of cases) {
      it(c.name, async () => {
        clock.advance(CASE_STEP_MS);
        const before = await settledAudit();
        const logsBefore = logLines.length;
        let answer: Answer;
        if (c.run) answer = await c.run();
        else answer = await send(c.request!());

        assert.equal(answer.status, c.status, answer.text);
        assert.equal(answer.headers["cache-control"], "no-store");
        if (c.status === 200) {
          assert.equal(answer.json().error, undefined);
        } else {
          assertRefusal(answer, c.status, c.code, c.name);
          if (c.message) assert.match(String(answer.json().message), c.message);
          if (c.status === 401)
            assert.equal(answer.headers["www-authenticate"], 'Bearer error="invalid_token"');
          if (c.status === 429 || c.status === 503)
            assert.match(String(answer.headers["retry-after"]), /^[1-9][0-9]*$/, "Retry-After in seconds");
        }

        const after = await settledAudit();
        const fresh = after.lines.slice(before.lines.length);
        const issued = fresh.filter((l) => l.event === "credentials.issued");
        assert.equal(issued.length, c.issues ?? 0, "credentials.issued lines");
        assert.equal(
          after.issuedTotal - before.issuedTotal,
          c.issues ?? 0,
          "natsbind_credentials_issued_total",
        );
        if (c.reason === null) {
          // Refused at the door: the issuer never saw it. One audit line (reason "request", the
          // door's code), and one log line with status and code only.
          assert.equal(fresh.length, 1, `one audit line: ${JSON.stringify(fresh)}`);
          assert.equal(fresh[0]!.event, "credentials.refused");
          assert.equal(fresh[0]!.reason, "request");
          assert.equal(fresh[0]!.code, c.code);
          assert.equal(fresh[0]!.via, "exchange");
          const logged = logLines
            .slice(logsBefore)
            .map((l) => JSON.parse(l) as Record<string, unknown>)
            .filter((l) => l.msg === "credentials request refused");
          assert.equal(logged.length, 1, "one log line for the refusal");
          assert.equal(logged[0]!.status, c.status);
          assert.equal(logged[0]!.error, c.code);
        } else if (c.status !== 200) {
          if (!c.run) assert.equal(fresh.length, 1, `one audit line: ${JSON.stringify(fresh)}`);
          const last = fresh.at(-1)!;
          assert.equal(last.event, "credentials.refused");
          assert.equal(last.reason, c.reason, JSON.stringify(last));
          assert.equal(last.code, c.code);
          assert.equal(last.via, "exchange");
        }
        const accounts = await currentAccountJwts();
        for (const [account, jwt] of accountJwts) {
          assert.equal(accounts.get(account), jwt, `account ${account} unchanged on the resolver`);
        }
        await c.check?.(answer, fresh);
        table.push({
          name: c.name,
          status: c.status,
          code: c.code || "-",
          reason:
            c.status === 200
              ? `(issued: ${c.issues} audit line(s))`
              : (c.reason ?? "request (refused by the door)"),
        });
      });
    }

    it("has at least 25 hostile cases, prints the table, and no token or seed reached any output", async (t) => {
      assert.ok(cases.length >= 25, `${cases.length} cases`);
      assert.equal(table.length, cases.length, "every case passed");
      const width = Math.max(...table.map((r) => r.name.length));
      t.diagnostic(`${"case".padEnd(width)} | status | code                   | audit reason`);
      for (const r of table)
        t.diagnostic(
          `${r.name.padEnd(width)} | ${String(r.status).padEnd(6)} | ${r.code.padEnd(22)} | ${r.reason}`,
        );

      const audit = await readFile(auditFile, "utf8");
      const metrics = await metricsText();
      const logs = logLines.join("\n");
      const secretParts = (token: string): string[] => [
        token,
        ...token.split(".").filter((part) => part.length >= 24),
      ];
      const outputs = { "audit file": audit, "natsbind's log": logs, "/metrics": metrics };
      for (const [where, text] of Object.entries(outputs)) {
        for (const token of tokens)
          for (const part of secretParts(token))
            assert.equal(text.includes(part), false, `a token (part) in ${where}`);
        for (const seed of [...ourSeeds, ...issuedSeeds])
          assert.equal(text.includes(seed), false, `a seed in ${where}`);
      }
      const answers = bodies.join("\n");
      for (const token of tokens)
        for (const part of secretParts(token))
          assert.equal(answers.includes(part), false, "a token in an answer");
      for (const seed of ourSeeds)
        assert.equal(answers.includes(seed), false, "the suite's seed echoed in an answer");
      for (const seed of issuedSeeds)
        assert.equal(
          bodies.filter((b) => b.includes(seed)).length,
          1,
          "an issued seed only in its own answer",
        );
      assert.ok(
        tokens.length > 100 && issuedSeeds.length === 5,
        `${tokens.length} tokens, ${issuedSeeds.length} seeds`,
      );
    });
  },
);
