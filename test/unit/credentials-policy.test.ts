// The pure issuing policy (which role a CI job may get), the user JWT it gets (scoped, tagged,
// expiry rule) and the per-key rate limits: every refusal reason with the claims that cause it.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { decode } from "@nats-io/jwt";
import { parseBinding } from "../../src/api/v1alpha1/schema.ts";
import type { CiIdentity } from "../../src/credentials/identity.ts";
import { identityFromClaims } from "../../src/credentials/identity.ts";
import { jobTags, signUserJwt, userExpiry } from "../../src/credentials/issue.ts";
import { decide, type OwningBinding } from "../../src/credentials/policy.ts";
import { RateLimiter } from "../../src/credentials/ratelimit.ts";
import { NKeyPair } from "../../src/nats/keys.ts";

const job: CiIdentity = {
  issuer: "https://gitlab.example",
  subject: "project_path:acme/api:ref_type:branch:ref:main",
  issuedAt: 1_800_000_000,
  expiresAt: 1_800_003_600,
  projectId: 42,
  projectPath: "acme/api",
  namespaceId: 7,
  namespacePath: "acme",
  userLogin: "alice",
  pipelineId: 1001,
  pipelineSource: "push",
  jobId: 5005,
  ref: "main",
  refType: "branch",
  refProtected: true,
};

function owner(spec: Record<string, unknown>): OwningBinding {
  const binding = parseBinding(
    { apiVersion: "natsbind.io/v1alpha1", kind: "NatsBinding", metadata: { name: "b" }, spec },
    "test",
  );
  return {
    key: "b",
    binding,
    project: {
      id: 42,
      name: "api",
      path: "api",
      pathWithNamespace: "acme/api",
      namespaceId: 7,
      namespaceFullPath: "acme",
      visibility: "private",
      archived: false,
    },
  };
}

const ciRole = (ci: Record<string, unknown> = {}, name = "ci") => ({
  name,
  publish: { allow: ["build.{{project.id}}.{{tag(pipeline)}}.>"] },
  ci,
});

describe("issuing policy", () => {
  it("issues the one issuable role when none is named, and the named one", () => {
    const o = owner({ gitlab: { group: "acme" }, roles: [{ name: "admin" }, ciRole()] });
    const d = decide(job, o);
    assert.ok(d.allowed);
    assert.equal(d.role.name, "ci");
    assert.equal(d.environment, undefined);
    const named = decide(job, o, "ci");
    assert.ok(named.allowed && named.role.name === "ci");
  });

  const refusals: Array<[string, Record<string, unknown>, Partial<CiIdentity>, string | undefined, string]> =
    [
      ["no binding", {}, {}, undefined, "project_not_bound"],
      ["role without ci", { roles: [{ name: "admin" }, ciRole()] }, {}, "admin", "role_not_issuable"],
      ["unknown role", { roles: [ciRole()] }, {}, "deploy", "role_unknown"],
      ["unprotected ref", { roles: [ciRole()] }, { refProtected: false }, undefined, "unprotected_ref"],
      [
        "tag-only role on a branch",
        { roles: [ciRole({ refTypes: ["tag"] })] },
        {},
        undefined,
        "ref_type_not_allowed",
      ],
      ["fork MR (project)", { roles: [ciRole()] }, { jobProjectId: 99 }, undefined, "fork_merge_request"],
      ["fork MR (namespace)", { roles: [ciRole()] }, { jobNamespaceId: 98 }, undefined, "fork_merge_request"],
      [
        "no environment",
        { roles: [ciRole({ environments: ["production"] })] },
        {},
        undefined,
        "environment_required",
      ],
      [
        "wrong environment",
        { roles: [ciRole({ environments: ["production"] })] },
        { environment: { name: "staging", protected: true } },
        undefined,
        "environment_not_allowed",
      ],
      [
        "unprotected environment",
        { roles: [ciRole({ environments: ["production"] })] },
        { environment: { name: "production", protected: false } },
        undefined,
        "environment_unprotected",
      ],
      ["namespace moved", { roles: [ciRole()] }, { namespaceId: 8 }, undefined, "namespace_mismatch"],
      ["no ci role at all", { roles: [{ name: "admin" }] }, {}, undefined, "no_issuable_role"],
      [
        "per-environment account, no environment",
        {
          accountPer: "environment",
          environments: { names: ["production"] },
          roles: [ciRole({ refs: "any" })],
        },
        {},
        undefined,
        "environment_required",
      ],
      [
        "per-environment account, unknown environment",
        {
          accountPer: "environment",
          environments: { names: ["production"] },
          roles: [ciRole({ refs: "any" })],
        },
        { environment: { name: "review/x", protected: false } },
        undefined,
        "environment_not_bound",
      ],
    ];
  for (const [what, spec, claims, role, reason] of refusals) {
    it(`refuses: ${what} -> ${reason}`, () => {
      const o = what === "no binding" ? undefined : owner({ gitlab: { group: "acme" }, ...spec });
      const d = decide({ ...job, ...claims }, o, role);
      assert.equal(d.allowed, false);
      if (d.allowed) return;
      assert.equal(d.code, "forbidden");
      assert.equal(d.reason, reason);
      assert.ok(d.message.length > 10);
    });
  }

  it("allows fork MRs, any ref and the account's environment when the role says so", () => {
    const o = owner({
      gitlab: { group: "acme" },
      accountPer: "environment",
      environments: { names: ["production"] },
      roles: [ciRole({ refs: "any", allowForkMergeRequests: true, environments: ["production"] })],
    });
    const d = decide(
      { ...job, refProtected: false, jobProjectId: 99, environment: { name: "production", protected: true } },
      o,
    );
    assert.ok(d.allowed);
    assert.equal(d.environment, "production");
  });

  it("keeps the reason every role gives, and lists each role's when they differ", () => {
    const o = owner({
      gitlab: { group: "acme" },
      roles: [
        ciRole({}, "ci"),
        ciRole({ refTypes: ["tag"] }, "release"),
        ciRole({ environments: ["prod"] }, "deploy"),
      ],
    });
    const fork = decide({ ...job, jobProjectId: 99 }, o);
    assert.ok(!fork.allowed && fork.reason === "fork_merge_request", JSON.stringify(fork));
    const mixed = decide(
      { ...job, refProtected: true, jobProjectId: undefined },
      owner({
        gitlab: { group: "acme" },
        roles: [ciRole({ refTypes: ["tag"] }, "release"), ciRole({ environments: ["prod"] }, "deploy")],
      }),
    );
    assert.ok(!mixed.allowed && mixed.reason === "no_issuable_role");
    assert.match(mixed.message, /release \(ref_type_not_allowed\), deploy \(environment_required\)/);
  });

  it("asks for a role when several are issuable (400), and names none of another tenant", () => {
    const o = owner({ gitlab: { group: "acme" }, roles: [ciRole({}, "ci"), ciRole({}, "deploy")] });
    const d = decide(job, o);
    assert.equal(d.allowed, false);
    if (d.allowed) return;
    assert.equal(d.code, "bad_request");
    assert.equal(d.reason, "role_required");
    assert.match(d.message, /ci, deploy/);
  });
});

describe("identity claims", () => {
  const claims = {
    iss: "https://gitlab.example",
    sub: "project_path:acme/api:ref_type:branch:ref:main",
    aud: "natsbind",
    exp: 1_800_003_600,
    iat: 1_800_000_000,
    namespace_id: "7",
    namespace_path: "acme",
    project_id: "42",
    project_path: "acme/api",
    user_login: "alice",
    pipeline_id: "1001",
    pipeline_source: "push",
    job_id: "5005",
    ref: "main",
    ref_type: "branch",
    ref_protected: "true",
  };
  it("reads GitLab's string ids and booleans", () => {
    const r = identityFromClaims(claims);
    assert.ok("identity" in r);
    assert.equal(r.identity.projectId, 42);
    assert.equal(r.identity.refProtected, true);
  });
  for (const [claim, value] of [
    ["project_id", 42],
    ["project_id", "abc"],
    ["project_id", "042"],
    ["ref_protected", true],
    ["ref_type", "merge_request"],
    ["namespace_id", undefined],
    ["ref", ""],
    ["environment_protected", "true"],
  ] as const) {
    it(`refuses ${claim} = ${JSON.stringify(value)}`, () => {
      const bad: Record<string, unknown> = { ...claims, [claim]: value };
      if (value === undefined) delete bad[claim];
      const r = identityFromClaims(bad);
      assert.ok("problem" in r, JSON.stringify(r));
      assert.match(r.problem, new RegExp(claim === "environment_protected" ? "environment" : claim));
    });
  }
});

describe("user JWT", () => {
  it("is issued by the scoped key for the account, with no permissions, job tags and the expiry rule", () => {
    const account = NKeyPair.generate("account");
    const signingKey = NKeyPair.generate("account");
    const user = NKeyPair.generate("user");
    const identity: CiIdentity = {
      ...job,
      ref: "feature/New Thing*",
      environment: { name: "prod", protected: true },
    };
    const jwt = signUserJwt({
      identity,
      role: "ci",
      account: account.getPublicKey(),
      signingKey,
      userPublicKey: user.getPublicKey(),
      expiresAtS: 1_800_000_600,
      issuedAtS: 1_800_000_000,
    });
    const claims = decode<Record<string, unknown>>(jwt) as unknown as {
      iss: string;
      sub: string;
      exp: number;
      name: string;
      nats: { issuer_account: string; pub?: unknown; sub?: unknown; tags: string[] };
    };
    assert.equal(claims.iss, signingKey.getPublicKey());
    assert.equal(claims.sub, user.getPublicKey());
    assert.equal(claims.exp, 1_800_000_600);
    assert.equal(claims.name, "acme/api#5005");
    assert.equal(claims.nats.issuer_account, account.getPublicKey());
    assert.equal(claims.nats.pub, undefined);
    assert.equal(claims.nats.sub, undefined);
    const tags: string[] = claims.nats.tags;
    for (const t of ["project:42", "pipeline:1001", "job:5005", "user:alice", "environment:prod", "role:ci"])
      assert.ok(tags.includes(t), t);
    const ref = tags.find((t) => t.startsWith("ref:"))!;
    assert.match(ref, /^ref:[a-z0-9_-]+$/, "a ref cannot put a wildcard or dot into a subject");
    assert.deepEqual(jobTags(identity, "ci"), tags);
  });

  it("expires at min(now + ttl, token exp, now + maxTtl)", () => {
    const now = 1_800_000_000_000;
    assert.equal(userExpiry(now, 300_000, 900_000, 1_800_003_600), 1_800_000_300);
    assert.equal(userExpiry(now, 3_600_000, 900_000, 1_800_003_600), 1_800_000_900, "ttl capped at maxTtl");
    assert.equal(userExpiry(now, 600_000, 900_000, 1_800_000_120), 1_800_000_120, "never past the token");
  });
});

describe("rate limits", () => {
  it("allows perMinute in a burst, then refills continuously with a Retry-After", () => {
    const limiter = new RateLimiter(60);
    for (let i = 0; i < 60; i++) assert.equal(limiter.take("p", 0).allowed, true);
    const refused = limiter.take("p", 0);
    assert.equal(refused.allowed, false);
    assert.equal(refused.retryAfterS, 1);
    assert.equal(limiter.take("other", 0).allowed, true, "keys are independent");
    assert.equal(limiter.take("p", 1_000).allowed, true, "one token back after a second");
    assert.equal(limiter.take("p", 1_000).allowed, false);
  });

  it("keeps at most maxKeys buckets", () => {
    const limiter = new RateLimiter(10, 3);
    for (const k of ["a", "b", "c", "d"]) limiter.take(k, 0);
    assert.equal(limiter.size, 3);
    assert.equal(limiter.evicted, 1);
  });
});
