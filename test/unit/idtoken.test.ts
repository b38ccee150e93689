// The ID token verifier against the GitLab simulator (real HTTP discovery and JWKS, tokens minted
// by the simulator), attacked with hostile tokens and a failing GitLab. Time is a ManualClock.
import { after, afterEach, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createPublicKey, generateKeyPairSync } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import {
  IdTokenVerifier,
  MAX_ID_TOKEN_LENGTH,
  type IdTokenVerifierOptions,
  type VerifyRefusal,
  type VerifyResult,
} from "../../src/credentials/idtoken.ts";
import { MAX_OIDC_DOCUMENT_BYTES } from "../../src/credentials/jwks.ts";
import type { CiIdentity } from "../../src/credentials/identity.ts";
import type { Logger } from "../../src/observability/logger.ts";
import { ManualClock } from "../../src/runtime/clock.ts";
import {
  GitLabSimulator,
  type MintIdTokenOptions,
  type SimOidcRequest,
  type SimProject,
} from "../support/gitlab-sim.ts";
import { waitFor } from "../support/process.ts";

const AUD = "https://natsbind.example";
const T0 = Date.UTC(2026, 0, 1, 12);
const T0_S = T0 / 1000;
const LEEWAY_MS = 60_000;
const COOLDOWN_MS = 30_000;
const MAX_TOKEN_AGE_MS = 86_400_000;
const FETCH_TIMEOUT_MS = 2_000;
const JWKS_PATH = "/oauth/discovery/keys";
const DISCOVERY_PATH = "/.well-known/openid-configuration";

/**
 * Records what the verifier logs, unredacted (the real logger would hide a JWT-shaped string and
 * make the "no token in the logs" check pass whatever the verifier wrote).
 */
const logLines: string[] = [];
function recordingLogger(bindings: Record<string, unknown> = {}): Logger {
  const write =
    (level: string) =>
    (obj: Record<string, unknown>, msg: string): void => {
      logLines.push(JSON.stringify({ level, msg, ...bindings, ...obj }));
    };
  return {
    debug: write("debug"),
    info: write("info"),
    warn: write("warn"),
    error: write("error"),
    child: (more) => recordingLogger({ ...bindings, ...more }),
  };
}

/** Every token the tests verify: none may show up in a log line or a refusal message. */
const tokensSeen = new Set<string>();
const refusalMessages: Array<{ token: string; message: string }> = [];

function b64json(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString("base64url");
}

function decodePart(token: string, index: 0 | 1): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split(".")[index] ?? "", "base64url").toString("utf8"));
}

// A verifier that hangs (a fetch timeout not firing) fails the test instead of stalling the run.
describe("IdTokenVerifier against the GitLab simulator", { timeout: 60_000 }, () => {
  let sim: GitLabSimulator;
  let project: SimProject;

  before(async () => {
    sim = await GitLabSimulator.start();
    const group = sim.createGroup({ name: "Acme", path: "acme" });
    project = sim.createProject({ name: "API", path: "api", groupId: group.id });
    sim.addEnvironment(project.id, { name: "production" });
  });
  after(async () => {
    await sim?.stop();
  });
  afterEach(() => {
    sim.clearOidcFaults();
  });

  interface Rig {
    clock: ManualClock;
    verifier: IdTokenVerifier;
    verify(token: string): Promise<VerifyResult>;
  }

  /** A fresh verifier (empty key cache) on a ManualClock at T0; the simulator's logs are cleared. */
  function rig(overrides: Partial<IdTokenVerifierOptions> = {}): Rig {
    sim.resetRequests();
    const clock = new ManualClock(T0);
    const verifier = new IdTokenVerifier({
      issuer: sim.issuer,
      audience: AUD,
      leewayMs: LEEWAY_MS,
      maxTokenAgeMs: MAX_TOKEN_AGE_MS,
      jwksCooldownMs: COOLDOWN_MS,
      fetchTimeoutMs: FETCH_TIMEOUT_MS,
      clock,
      log: recordingLogger(),
      ...overrides,
    });
    return {
      clock,
      verifier,
      verify: async (token) => {
        tokensSeen.add(token);
        const result = await verifier.verify(token);
        if (!("identity" in result)) refusalMessages.push({ token, message: result.message });
        return result;
      },
    };
  }

  function mint(o: Partial<MintIdTokenOptions> = {}): string {
    return sim.mintIdToken({ projectId: project.id, aud: AUD, nowS: T0_S, ...o });
  }

  function requests(path?: string): SimOidcRequest[] {
    return sim.oidcRequests.filter((r) => path === undefined || r.path === path);
  }

  function assertIdentity(result: VerifyResult): asserts result is { identity: CiIdentity } {
    assert.ok("identity" in result, `expected an identity, got ${JSON.stringify(result)}`);
    assert.equal(result.identity.projectId, project.id);
    assert.equal(result.identity.issuer, sim.issuer);
  }

  /** The exact code and reason; the message names neither the token nor `hidden` values. */
  function assertRefused(
    result: VerifyResult,
    code: "invalid_token" | "unavailable",
    reason: string,
    hidden: string[] = [],
  ): asserts result is VerifyRefusal {
    assert.ok(!("identity" in result), `expected ${code}/${reason}, got an identity`);
    assert.deepEqual({ code: result.code, reason: result.reason }, { code, reason }, result.message);
    assert.ok(result.message.length > 0);
    for (const value of hidden) {
      assert.ok(!result.message.includes(value), `message ${JSON.stringify(result.message)} leaks ${value}`);
    }
  }

  describe("valid tokens", () => {
    it("accepts GitLab's token and returns its identity; discovery and JWKS are fetched once", async () => {
      const r = rig();
      const result = await r.verify(mint({ environment: "production", environmentProtected: true }));
      assertIdentity(result);
      assert.equal(result.identity.refProtected, true);
      assert.equal(result.identity.ref, "main");
      assert.deepEqual(result.identity.environment, {
        name: "production",
        protected: true,
        tier: "production",
        action: "start",
      });
      assertIdentity(await r.verify(mint({ aud: ["https://other.example", AUD] })));
      assert.deepEqual(
        sim.oidcRequests.map((q) => [q.path, q.status]),
        [
          [DISCOVERY_PATH, 200],
          [JWKS_PATH, 200],
        ],
      );
    });

    it("fetches the keys from jwksUrl without discovery when it is configured", async () => {
      const r = rig({ jwksUrl: `${sim.url}/-/jwks` });
      assertIdentity(await r.verify(mint()));
      assert.deepEqual(
        sim.oidcRequests.map((q) => q.path),
        ["/-/jwks"],
      );
    });

    it("applies the leeway to exp, nbf and iat", async () => {
      const r = rig();
      // exp 30 s ago.
      assertIdentity(await r.verify(mint({ nowS: T0_S - 3630, expiresInS: 3600 })));
      // nbf 30 s ahead.
      assertIdentity(await r.verify(mint({ extra: { nbf: T0_S + 30 } })));
      // iat 30 s ahead (nbf left out, as GitLab would not send nbf > now either).
      assertIdentity(await r.verify(mint({ nowS: T0_S + 30, extra: { nbf: undefined } })));
      // iat maxTokenAge + 30 s ago.
      const ageS = MAX_TOKEN_AGE_MS / 1000 + 30;
      assertIdentity(await r.verify(mint({ nowS: T0_S - ageS, expiresInS: ageS + 3600 })));
    });
  });

  describe("hostile tokens", () => {
    it("alg none, in any spelling, before any key lookup", async () => {
      const r = rig();
      assertRefused(await r.verify(mint({ signWith: "unsigned" })), "invalid_token", "bad_algorithm");
      for (const alg of ["None", "NONE", "nOnE"]) {
        assertRefused(
          await r.verify(mint({ signWith: "unsigned", header: { alg } })),
          "invalid_token",
          "bad_algorithm",
        );
      }
      // An unsigned token with the real signature of a GitLab token appended does not help either.
      const real = mint().split(".")[2];
      const unsigned = mint({ signWith: "unsigned" });
      assertRefused(await r.verify(`${unsigned}${real}`), "invalid_token", "bad_algorithm");
      assert.deepEqual(requests(), [], "no key lookup for a refused alg");
    });

    it("HS256 signed with GitLab's public key bytes as the HMAC secret (algorithm confusion)", async () => {
      const r = rig();
      const jwk = sim.publicJwks().keys[0]!;
      const publicKey = createPublicKey({ key: { ...jwk }, format: "jwk" });
      const secrets: Array<string | Buffer> = [
        publicKey.export({ type: "spki", format: "pem" }),
        publicKey.export({ type: "pkcs1", format: "pem" }),
        publicKey.export({ type: "spki", format: "der" }),
        JSON.stringify(jwk),
        Buffer.from(jwk.n, "base64url"),
      ];
      for (const secret of secrets) {
        const token = mint({ signWith: { hmacSecret: secret } });
        assert.equal(decodePart(token, 0).alg, "HS256");
        assert.equal(decodePart(token, 0).kid, sim.signingKeyId);
        assertRefused(await r.verify(token), "invalid_token", "bad_algorithm");
      }
      for (const alg of ["HS384", "HS512"]) {
        const token = mint({ signWith: { hmacSecret: secrets[0]! }, header: { alg } });
        assertRefused(await r.verify(token), "invalid_token", "bad_algorithm");
      }
      assert.deepEqual(requests(), [], "refused before any key lookup");
    });

    it("ES256, PS256, RS512 and a missing alg are refused; only RS256 is GitLab's", async () => {
      const r = rig();
      const { privateKey: ecKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
      assertRefused(await r.verify(mint({ signWith: { ecKey } })), "invalid_token", "bad_algorithm");
      for (const alg of ["PS256", "RS512", "RS384", "EdDSA", "rs256", undefined, 256]) {
        assertRefused(await r.verify(mint({ header: { alg } })), "invalid_token", "bad_algorithm");
      }
      assert.deepEqual(requests(), []);
    });

    it("a missing or non-string kid", async () => {
      const r = rig();
      for (const kid of [undefined, "", 7, ["k"], null]) {
        assertRefused(await r.verify(mint({ header: { kid } })), "invalid_token", "missing_kid");
      }
      assert.deepEqual(requests(), []);
    });

    it("an unknown kid: the keys are fetched, and the token refused", async () => {
      const r = rig();
      const kid = "attacker-chosen-kid";
      assertRefused(await r.verify(mint({ header: { kid } })), "invalid_token", "unknown_kid", [kid]);
      assert.equal(requests(JWKS_PATH).length, 1);
    });

    it("a foreign RSA key signing under GitLab's kid", async () => {
      const r = rig();
      const { privateKey: rsaKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
      const token = mint({ signWith: { rsaKey } });
      assert.equal(decodePart(token, 0).kid, sim.signingKeyId);
      assertRefused(await r.verify(token), "invalid_token", "bad_signature");
    });

    it("a tampered payload (re-encoded claims, GitLab's original signature)", async () => {
      const r = rig();
      const [h, p, s] = mint({ ref: "feature" }).split(".");
      const claims = decodePart(`${h}.${p}.${s}`, 1);
      assert.equal(claims.ref_protected, "false");
      for (const change of [
        { ref_protected: "true" },
        { project_id: "999999" },
        { aud: "https://natsbind.example" },
        {},
      ]) {
        // {} re-encodes the same claims with different key order: still not what GitLab signed.
        const reordered = Object.fromEntries(Object.entries({ ...claims, ...change }).reverse());
        const tampered = `${h}.${b64json(reordered)}.${s}`;
        assertRefused(await r.verify(tampered), "invalid_token", "bad_signature");
      }
      // The signature of another GitLab token, and none at all.
      assertRefused(await r.verify(`${h}.${p}.${mint().split(".")[2]}`), "invalid_token", "bad_signature");
      assertRefused(await r.verify(`${h}.${p}.`), "invalid_token", "bad_signature");
    });

    it("a header with crit extensions is malformed, even when GitLab's key signed it", async () => {
      const r = rig();
      for (const header of [
        { crit: ["natsbind"], natsbind: true },
        { crit: ["b64"], b64: false },
        { crit: [] },
      ]) {
        assertRefused(await r.verify(mint({ header })), "invalid_token", "malformed");
      }
      assert.deepEqual(requests(), [], "refused before any key lookup");
    });

    it("wrong iss (another host, a trailing slash, missing)", async () => {
      const r = rig();
      for (const iss of ["https://gitlab.evil.example", `${sim.issuer}/`, sim.issuer.toUpperCase(), 42]) {
        assertRefused(await r.verify(mint({ extra: { iss } })), "invalid_token", "wrong_issuer", [
          "gitlab.evil.example",
        ]);
      }
      assertRefused(await r.verify(mint({ extra: { iss: undefined } })), "invalid_token", "wrong_issuer");
    });

    it("missing aud and wrong aud", async () => {
      const r = rig();
      assertRefused(await r.verify(mint({ extra: { aud: undefined } })), "invalid_token", "wrong_audience");
      const wrong = [
        "https://vault.example",
        ["https://vault.example", "https://other.example"],
        [],
        `${AUD}/`,
      ];
      for (const aud of wrong) {
        assertRefused(await r.verify(mint({ aud })), "invalid_token", "wrong_audience", ["vault.example"]);
      }
    });

    it("expired beyond the leeway", async () => {
      const r = rig();
      assertRefused(
        await r.verify(mint({ nowS: T0_S - 3600 - 120, expiresInS: 3600 })),
        "invalid_token",
        "expired",
      );
      // exp exactly leeway ago.
      assertRefused(
        await r.verify(mint({ nowS: T0_S - 3600 - LEEWAY_MS / 1000, expiresInS: 3600 })),
        "invalid_token",
        "expired",
      );
      // Valid at T0, expired once the clock moves on.
      const token = mint({ expiresInS: 300 });
      assertIdentity(await r.verify(token));
      r.clock.advance(300_000 + LEEWAY_MS);
      assertRefused(await r.verify(token), "invalid_token", "expired");
    });

    it("nbf in the future beyond the leeway", async () => {
      const r = rig();
      assertRefused(await r.verify(mint({ extra: { nbf: T0_S + 300 } })), "invalid_token", "not_yet_valid");
    });

    it("an ancient iat (older than maxTokenAge), even with a far exp", async () => {
      const r = rig();
      const ageS = 30 * 86_400;
      assertRefused(
        await r.verify(mint({ nowS: T0_S - ageS, expiresInS: ageS + 3600 })),
        "invalid_token",
        "too_old",
      );
    });

    it("iat in the future beyond the leeway", async () => {
      const r = rig();
      assertRefused(
        await r.verify(mint({ nowS: T0_S + 300, extra: { nbf: undefined } })),
        "invalid_token",
        "issued_in_future",
      );
    });

    it("claims of the wrong type; the message names the claim, never its value", async () => {
      const r = rig();
      const cases: Array<[Record<string, unknown>, string, string[]]> = [
        [{ project_id: project.id }, "project_id", []],
        [{ ref_protected: true }, "ref_protected", []],
        [{ project_id: "abc" }, "project_id", ["abc"]],
        [{ project_id: "0" }, "project_id", []],
        [{ namespace_id: "-1" }, "namespace_id", ["-1"]],
        [{ ref_type: "merge_request_ref" }, "ref_type", ["merge_request_ref"]],
        [{ ref: "x".repeat(2000) }, "ref", ["xxxxxxxx"]],
        [{ project_path: undefined }, "project_path", []],
        [{ environment_protected: "yes" }, "environment_protected", ["yes"]],
        [{ aud: [AUD, 42] }, "aud", []],
        [{ exp: undefined }, "exp", []],
        [{ exp: String(T0_S + 3600) }, "exp", [String(T0_S + 3600)]],
        [{ iat: "soon", nbf: undefined }, "iat", ["soon"]],
        [{ nbf: "now" }, "nbf", ["now"]],
      ];
      for (const [extra, claim, hidden] of cases) {
        const result = await r.verify(mint({ extra }));
        assertRefused(result, "invalid_token", "bad_claims", hidden);
        assert.match(result.message, new RegExp(`\\b${claim}\\b`), `names ${claim}`);
      }
    });

    it("an oversize token is refused unparsed, even when GitLab signed it", async () => {
      const r = rig();
      const padded = (n: number): string => mint({ extra: { padding: "p".repeat(n) } });
      let small = 0;
      while (padded(small + 64).length <= MAX_ID_TOKEN_LENGTH) small += 64;
      const fits = padded(small);
      assert.ok(fits.length <= MAX_ID_TOKEN_LENGTH && fits.length > MAX_ID_TOKEN_LENGTH - 200);
      assertIdentity(await r.verify(fits));
      sim.resetRequests();
      const over = padded(small + 64);
      assert.ok(over.length > MAX_ID_TOKEN_LENGTH);
      assertRefused(await r.verify(over), "invalid_token", "malformed");
      assertRefused(await r.verify("a".repeat(10 * 1024 * 1024)), "invalid_token", "malformed");
      assert.deepEqual(requests(), []);
    });

    it("garbage and not three parts", async () => {
      const r = rig();
      const token = mint();
      const [h, p, s] = token.split(".");
      const garbage = [
        "",
        "not-a-jwt",
        `${h}.${p}`,
        `${token}.${s}`,
        `${h}..${s}`,
        `.${p}.${s}`,
        "###.$$$.%%%",
        ` ${token}`,
        `${token}\n`,
        `Bearer ${token}`,
        `${b64json("not an object")}.${p}.${s}`,
        `${b64json([1, 2])}.${p}.${s}`,
        `${Buffer.from("{not json").toString("base64url")}.${p}.${s}`,
        `${h}é.${p}.${s}`,
      ];
      for (const g of garbage) assertRefused(await r.verify(g), "invalid_token", "malformed");
      assertRefused(await r.verify(undefined as unknown as string), "invalid_token", "malformed");
      assert.deepEqual(requests(), [], "nothing fetched for garbage");
    });
  });

  describe("GitLab's keys and their cache", () => {
    it("JWKS endpoint down: unavailable, retried once per cooldown, then the token verifies", async () => {
      const r = rig();
      sim.failOidc({ status: 503, pathIncludes: JWKS_PATH });
      const token = mint();
      const first = await r.verify(token);
      assertRefused(first, "unavailable", "jwks_unavailable");
      assert.ok(first.code === "unavailable" && first.retryAfterS === COOLDOWN_MS / 1000);
      assert.deepEqual(
        sim.oidcRequests.map((q) => [q.path, q.status]),
        [
          [DISCOVERY_PATH, 200],
          [JWKS_PATH, 503],
        ],
      );
      r.clock.advance(10_000);
      const second = await r.verify(token);
      assertRefused(second, "unavailable", "jwks_unavailable");
      assert.ok(second.code === "unavailable" && second.retryAfterS === 20);
      assert.equal(requests(JWKS_PATH).length, 1, "no refetch within the cooldown");

      sim.clearOidcFaults();
      r.clock.advance(20_000);
      assertIdentity(await r.verify(token));
      assert.equal(requests(JWKS_PATH).length, 2);
      assert.equal(requests(DISCOVERY_PATH).length, 1, "the discovered jwks_uri is kept");
    });

    it("a flood while the JWKS endpoint fails costs GitLab one request per cooldown", async () => {
      const r = rig();
      sim.failOidc({ status: 502, pathIncludes: JWKS_PATH });
      const good = mint();
      for (let i = 0; i < 100; i++) {
        assertRefused(
          await r.verify(mint({ header: { kid: `flood-${i}` } })),
          "unavailable",
          "jwks_unavailable",
        );
        assertRefused(await r.verify(good), "unavailable", "jwks_unavailable");
      }
      assert.equal(requests(JWKS_PATH).length, 1);
      r.clock.advance(COOLDOWN_MS);
      const burst = await Promise.all(
        Array.from({ length: 50 }, (_, i) => r.verify(mint({ header: { kid: `b-${i}` } }))),
      );
      for (const result of burst) assertRefused(result, "unavailable", "jwks_unavailable");
      assert.equal(requests(JWKS_PATH).length, 2);
    });

    it("discovery down, not JSON, or naming another issuer or a non-http jwks_uri: unavailable", async () => {
      const bad: Array<Parameters<GitLabSimulator["failOidc"]>[0]> = [
        { status: 500 },
        { status: 404 },
        { body: "<html>maintenance</html>", contentType: "text/html" },
        { body: JSON.stringify(["not", "an", "object"]) },
        {
          body: JSON.stringify({ issuer: "https://gitlab.evil.example", jwks_uri: `${sim.url}${JWKS_PATH}` }),
        },
        { body: JSON.stringify({ issuer: sim.issuer, jwks_uri: "file:///etc/passwd" }) },
        { body: JSON.stringify({ issuer: sim.issuer }) },
        { redirectTo: "https://gitlab.evil.example/.well-known/openid-configuration" },
      ];
      for (const fault of bad) {
        const r = rig();
        sim.failOidc({ ...fault, pathIncludes: DISCOVERY_PATH });
        assertRefused(await r.verify(mint()), "unavailable", "jwks_unavailable");
        assert.deepEqual(
          requests(JWKS_PATH),
          [],
          `no JWKS fetch after ${JSON.stringify(fault).slice(0, 80)}`,
        );
        assert.equal(requests(DISCOVERY_PATH).length, 1);
        sim.clearOidcFaults();
      }
      const last = logLines.slice(-8).join("\n");
      assert.match(last, /must be an http:\/\/ or https:\/\/ URL/);
      assert.match(last, /names issuer/);
    });

    it("a JWKS that is oversize, not JSON, not a key set, or a redirect: unavailable", async () => {
      const huge = JSON.stringify({
        keys: sim.publicJwks().keys,
        padding: "x".repeat(MAX_OIDC_DOCUMENT_BYTES),
      });
      const bad: Array<Parameters<GitLabSimulator["failOidc"]>[0]> = [
        { body: huge },
        { body: huge, chunked: true },
        { body: "{ not json" },
        { body: JSON.stringify({ keys: "none" }) },
        { body: JSON.stringify({ keys: [{ kty: "RSA", kid: sim.signingKeyId, d: "private?" }] }) },
        { redirectTo: `${sim.url}/-/jwks` },
      ];
      for (const fault of bad) {
        const r = rig({ jwksUrl: `${sim.url}${JWKS_PATH}` });
        sim.failOidc({ ...fault, pathIncludes: JWKS_PATH });
        const result = await r.verify(mint());
        assert.ok(!("identity" in result), `refused with ${JSON.stringify(fault).slice(0, 80)}`);
        sim.clearOidcFaults();
        assert.deepEqual(requests("/-/jwks"), [], "redirects are not followed");
      }
      assert.equal(
        logLines.filter((l) => l.includes(`larger than ${MAX_OIDC_DOCUMENT_BYTES} bytes`)).length,
        2,
      );
    });

    it("a JWKS with no key for the kid (a malformed key too) refuses; a fetch failure never issues", async () => {
      const r = rig({ jwksUrl: `${sim.url}${JWKS_PATH}` });
      sim.failOidc({ body: JSON.stringify({ keys: [] }), pathIncludes: JWKS_PATH, count: 1 });
      assertRefused(await r.verify(mint()), "invalid_token", "unknown_kid");
      const r2 = rig({ jwksUrl: `${sim.url}${JWKS_PATH}` });
      const jwk = sim.publicJwks().keys[0]!;
      sim.failOidc({
        body: JSON.stringify({ keys: [{ ...jwk, n: "AQAB" }] }),
        pathIncludes: JWKS_PATH,
        count: 1,
      });
      const result = await r2.verify(mint());
      assert.ok(!("identity" in result), "a key that cannot verify never yields an identity");
    });

    it(
      "JWKS endpoint hanging: unavailable after the fetch timeout on the injected clock",
      { timeout: 10_000 },
      async () => {
        const r = rig({ jwksUrl: `${sim.url}${JWKS_PATH}` });
        sim.failOidc({ hang: true, pathIncludes: JWKS_PATH });
        const pending = r.verify(mint());
        await waitFor(async () => requests(JWKS_PATH).length === 1 && r.clock.pendingTimers().length === 1, {
          what: "the JWKS request to hang",
          timeoutMs: 5_000,
          intervalMs: 10,
        });
        r.clock.advance(FETCH_TIMEOUT_MS);
        assertRefused(await pending, "unavailable", "jwks_unavailable");
        assert.equal(requests(JWKS_PATH)[0]?.status, 0, "GitLab never answered");
        assert.ok(logLines.at(-1)?.includes(`no answer within ${FETCH_TIMEOUT_MS} ms`));
        assert.deepEqual(r.clock.pendingTimers(), [], "the timeout timer is cleared");
      },
    );

    it("GitLab unreachable (connection refused): unavailable", async () => {
      const closed = createServer();
      await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
      const port = (closed.address() as AddressInfo).port;
      await new Promise<void>((resolve) => closed.close(() => resolve()));
      const r = rig({ jwksUrl: `http://127.0.0.1:${port}/oauth/discovery/keys` });
      assertRefused(await r.verify(mint()), "unavailable", "jwks_unavailable");
      assert.ok(logLines.at(-1)?.includes("ECONNREFUSED"));
      assert.deepEqual(r.clock.pendingTimers(), []);
    });

    it("200 unknown kids within one cooldown: at most one JWKS refetch", async () => {
      const r = rig();
      assertIdentity(await r.verify(mint()));
      r.clock.advance(COOLDOWN_MS);
      sim.resetRequests();
      for (let i = 0; i < 100; i++) {
        assertRefused(
          await r.verify(mint({ header: { kid: `flood-${i}` } })),
          "invalid_token",
          "unknown_kid",
        );
      }
      const burst = await Promise.all(
        Array.from({ length: 100 }, (_, i) => r.verify(mint({ header: { kid: `burst-${i}` } }))),
      );
      for (const result of burst) assertRefused(result, "invalid_token", "unknown_kid");
      assert.equal(requests(JWKS_PATH).length, 1);
      assert.equal(requests(DISCOVERY_PATH).length, 0);
      assertIdentity(await r.verify(mint()));
      assert.equal(requests().length, 1, "good tokens use the cache");
    });

    it("concurrent verifications share one fetch (cold cache, and the same unknown kid)", async () => {
      const r = rig();
      const cold = await Promise.all(Array.from({ length: 50 }, () => r.verify(mint())));
      for (const result of cold) assertIdentity(result);
      assert.deepEqual(
        sim.oidcRequests.map((q) => q.path),
        [DISCOVERY_PATH, JWKS_PATH],
      );
      r.clock.advance(COOLDOWN_MS);
      sim.rotateSigningKey();
      const rotated = mint();
      const same = await Promise.all(Array.from({ length: 50 }, () => r.verify(rotated)));
      for (const result of same) assertIdentity(result);
      assert.equal(requests(JWKS_PATH).length, 2);
    });

    it("GitLab rotates its key: the new kid is picked up after the cooldown, a removed one dropped", async () => {
      const r = rig();
      const oldToken = mint();
      assertIdentity(await r.verify(oldToken));
      sim.rotateSigningKey();
      const newToken = mint();
      assert.notEqual(decodePart(newToken, 0).kid, decodePart(oldToken, 0).kid);
      r.clock.advance(COOLDOWN_MS - 1);
      assertRefused(await r.verify(newToken), "invalid_token", "unknown_kid");
      assert.equal(requests(JWKS_PATH).length, 1, "within the cooldown: not refetched");
      r.clock.advance(1);
      assertIdentity(await r.verify(newToken));
      assert.equal(requests(JWKS_PATH).length, 2);
      assertIdentity(await r.verify(oldToken));

      sim.rotateSigningKey({ keepOld: false });
      const newest = mint();
      r.clock.advance(COOLDOWN_MS);
      assertIdentity(await r.verify(newest));
      assert.equal(requests(JWKS_PATH).length, 3);
      assertRefused(await r.verify(oldToken), "invalid_token", "unknown_kid");
      assertRefused(await r.verify(newToken), "invalid_token", "unknown_kid");
      assert.equal(requests(JWKS_PATH).length, 3);
    });

    it("an unknown kid while the refetch fails is unavailable, not unknown_kid; known kids still verify", async () => {
      const r = rig();
      assertIdentity(await r.verify(mint()));
      r.clock.advance(COOLDOWN_MS);
      sim.failOidc({ status: 503, pathIncludes: JWKS_PATH });
      assertRefused(
        await r.verify(mint({ header: { kid: "maybe-new" } })),
        "unavailable",
        "jwks_unavailable",
      );
      assertRefused(
        await r.verify(mint({ header: { kid: "maybe-newer" } })),
        "unavailable",
        "jwks_unavailable",
      );
      assertIdentity(await r.verify(mint()));
      assert.equal(requests(JWKS_PATH).length, 2);
    });

    it("keys older than jwksMaxAgeMs are refetched; if that fails, verification fails closed", async () => {
      const maxAge = 10 * 60_000;
      const r = rig({ jwksMaxAgeMs: maxAge });
      const token = mint({ expiresInS: 7200 });
      assertIdentity(await r.verify(token));
      r.clock.advance(maxAge - 1);
      assertIdentity(await r.verify(token));
      assert.equal(requests(JWKS_PATH).length, 1);
      r.clock.advance(1);
      assertIdentity(await r.verify(token));
      assert.equal(requests(JWKS_PATH).length, 2);
      r.clock.advance(maxAge);
      sim.failOidc({ status: 503, pathIncludes: JWKS_PATH });
      assertRefused(await r.verify(token), "unavailable", "jwks_unavailable");
      assert.equal(requests(JWKS_PATH).length, 3);
    });
  });

  it("no log line and no refusal message contains a token or any part of one", () => {
    assert.ok(tokensSeen.size > 100, "the tests above verified tokens");
    assert.ok(logLines.length > 20, "and the verifier logged");
    const parts = new Set<string>();
    for (const token of tokensSeen) {
      if (typeof token !== "string" || token.length < 20) continue;
      parts.add(token);
      for (const part of token.split(".")) if (part.length >= 20) parts.add(part.slice(0, 60));
    }
    for (const line of logLines) {
      for (const part of parts)
        assert.ok(!line.includes(part), `log line leaks a token part: ${line.slice(0, 200)}`);
    }
    assert.ok(refusalMessages.length > 100);
    for (const { token, message } of refusalMessages) {
      if (typeof token !== "string") continue;
      for (const part of token.split(".")) {
        if (part.length >= 8) assert.ok(!message.includes(part), `message leaks a token part: ${message}`);
      }
    }
  });
});
