import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { parse } from "yaml";
import { accountLimits, desiredRoles } from "../../src/api/v1alpha1/desired.ts";
import { parseByteQuantity, parseDuration } from "../../src/units.ts";
import {
  BindingValidationError,
  formatPath,
  natsBindingSpecJsonSchema,
  parseBinding,
  parseBindingSpec,
  type BindingProblem,
} from "../../src/api/v1alpha1/schema.ts";
import type { TemplateVars } from "../../src/api/v1alpha1/templates.ts";
import type { NatsBinding } from "../../src/api/v1alpha1/types.ts";
import { TerminalError } from "../../src/errors.ts";
import { accountClaims } from "../../src/nats/claims.ts";
import { fixedKeys } from "./fixed-keys.ts";

const EXAMPLE = `
apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: acme-ci, namespace: natsbind}
spec:
  gitlab: {group: acme, includeSubgroups: true}
  accountPer: project
  roles:
    - name: ci
      publish: {allow: ["build.status.{{project.slug}}.>"]}
      subscribe: {allow: ["_INBOX.>", "deploy.events.{{project.slug}}.{{tag(env)}}"]}
  limits: {connections: 50, payload: 1Mi, jetstream: {memory: 64Mi, disk: 1Gi, streams: 10}}
  deletionPolicy: Delete
`;

const vars: TemplateVars = {
  project: { id: 42, path: "api", pathWithNamespace: "acme/backend/api", namespaceFullPath: "acme/backend" },
};

/** A valid document with `spec` fields replaced (undefined removes a field). */
function doc(
  spec: Record<string, unknown> = {},
  rest: Record<string, unknown> = {},
): Record<string, unknown> {
  const merged: Record<string, unknown> = { gitlab: { group: "acme" }, ...spec };
  for (const [k, v] of Object.entries(merged)) if (v === undefined) delete merged[k];
  return {
    apiVersion: "natsbind.io/v1alpha1",
    kind: "NatsBinding",
    metadata: { name: "b" },
    spec: merged,
    ...rest,
  };
}

function problems(document: unknown): BindingProblem[] {
  try {
    parseBinding(document, "bindings/b.yaml");
  } catch (err) {
    assert.ok(err instanceof BindingValidationError, `expected BindingValidationError, got ${String(err)}`);
    return [...err.problems];
  }
  assert.fail("expected the binding to be invalid");
}

function assertProblem(document: unknown, path: string, message: RegExp): void {
  const found = problems(document);
  assert.ok(
    found.some((p) => p.path === path && message.test(p.message)),
    `no problem at ${path} matching ${message}; got:\n${found.map((p) => `${p.path}: ${p.message}`).join("\n")}`,
  );
}

describe("parseBinding", () => {
  it("parses the issue's example to the expected values", () => {
    const binding = parseBinding(parse(EXAMPLE), "acme-ci.yaml");
    const expected: NatsBinding = {
      apiVersion: "natsbind.io/v1alpha1",
      kind: "NatsBinding",
      metadata: { name: "acme-ci", namespace: "natsbind" },
      spec: {
        gitlab: { kind: "group", group: "acme", includeSubgroups: true },
        accountPer: "project",
        roles: [
          {
            name: "ci",
            publish: { allow: ["build.status.{{project.slug}}.>"], deny: [] },
            subscribe: { allow: ["_INBOX.>", "deploy.events.{{project.slug}}.{{tag(env)}}"], deny: [] },
          },
        ],
        limits: {
          connections: 50,
          payload: 1048576,
          jetstream: { memory: 67108864, disk: 1073741824, streams: 10 },
        },
        deletionPolicy: "Delete",
      },
    };
    assert.deepEqual(binding, expected);
  });

  it("applies defaults", () => {
    const binding = parseBinding(doc({ gitlab: { group: 7 } }), "b.yaml");
    assert.deepEqual(binding.spec, {
      gitlab: { kind: "group", group: 7, includeSubgroups: true },
      accountPer: "project",
      roles: [],
      limits: {},
      deletionPolicy: "Retain",
    });
    assert.deepEqual(binding.metadata, { name: "b" });
  });

  it("selects a single project by id or full path", () => {
    assert.deepEqual(parseBinding(doc({ gitlab: { project: 42 } }), "b").spec.gitlab, {
      kind: "project",
      project: 42,
    });
    assert.deepEqual(parseBinding(doc({ gitlab: { project: "acme/sub/api" } }), "b").spec.gitlab, {
      kind: "project",
      project: "acme/sub/api",
    });
    assert.equal(
      parseBinding(doc({ gitlab: { group: "acme/platform", includeSubgroups: false } }), "b").spec.gitlab
        .kind,
      "group",
    );
  });

  it("reads environments as names or fromGitLab", () => {
    const listed = parseBinding(
      doc({ accountPer: "environment", environments: { names: ["production", "review/app"] } }),
      "b",
    );
    assert.deepEqual(listed.spec.environments, { kind: "list", names: ["production", "review/app"] });
    const fromGitLab = parseBinding(
      doc({
        accountPer: "environment",
        environments: { fromGitLab: true },
        roles: [{ name: "deploy", publish: { allow: ["deploy.{{environment}}.>"] } }],
      }),
      "b",
    );
    assert.deepEqual(fromGitLab.spec.environments, { kind: "gitlab" });
  });

  it("normalises spaces inside template braces", () => {
    const binding = parseBinding(
      doc({
        roles: [
          {
            name: "r",
            subscribe: { allow: ["a.{{ project.slug }}.{{ tag( env ) }}"], deny: ["a.{{ name() }}"] },
          },
        ],
      }),
      "b",
    );
    assert.deepEqual(binding.spec.roles[0]!.subscribe, {
      allow: ["a.{{project.slug}}.{{tag(env)}}"],
      deny: ["a.{{name()}}"],
    });
  });

  it("converts responses ttl to milliseconds", () => {
    const binding = parseBinding(doc({ roles: [{ name: "svc", responses: { max: 3, ttl: "1m30s" } }] }), "b");
    assert.deepEqual(binding.spec.roles[0]!.responses, { max: 3, ttlMs: 90_000 });
  });

  it("reads roles[].ci with its defaults (refs protected, no fork merge requests); no ci: never issued", () => {
    const binding = parseBinding(
      doc({
        roles: [
          { name: "plain" },
          { name: "build", ci: {} },
          {
            name: "deploy",
            ci: {
              refs: "any",
              refTypes: ["tag"],
              environments: ["production"],
              allowForkMergeRequests: true,
            },
          },
        ],
      }),
      "b",
    );
    const [plain, build, deploy] = binding.spec.roles;
    assert.equal(plain!.ci, undefined);
    assert.ok(!("ci" in plain!), "no ci field at all");
    assert.deepEqual(build!.ci, { refs: "protected", allowForkMergeRequests: false });
    assert.deepEqual(deploy!.ci, {
      refs: "any",
      refTypes: ["tag"],
      environments: ["production"],
      allowForkMergeRequests: true,
    });
  });

  it("accepts ci.environments per project, with fromGitLab, and within environments.names", () => {
    const role = { name: "deploy", ci: { environments: ["production", "review/app"] } };
    for (const spec of [
      { roles: [role] },
      { accountPer: "environment", environments: { fromGitLab: true }, roles: [role] },
      {
        accountPer: "environment",
        environments: { names: ["staging", "review/app", "production"] },
        roles: [role],
      },
    ]) {
      assert.deepEqual(parseBinding(doc(spec), "b").spec.roles[0]!.ci?.environments, [
        "production",
        "review/app",
      ]);
    }
  });

  it("ignores Kubernetes metadata and top-level fields it does not use", () => {
    const binding = parseBinding(
      doc(
        {},
        {
          metadata: {
            name: "b",
            namespace: "ns",
            generation: 3,
            uid: "u-1",
            resourceVersion: "9",
            labels: {},
          },
          status: { conditions: [] },
        },
      ),
      "ns/b",
    );
    assert.deepEqual(binding.metadata, { name: "b", namespace: "ns", generation: 3, uid: "u-1" });
  });

  it("validates a spec alone with spec-prefixed paths", () => {
    assert.equal(parseBindingSpec({ gitlab: { project: 1 } }, "ns/b").gitlab.kind, "project");
    assert.throws(
      () => parseBindingSpec({ gitlab: {} }, "ns/b"),
      (err: unknown) => err instanceof BindingValidationError && /^ns\/b: .*spec\.gitlab: /.test(err.message),
    );
  });
});

describe("parseBinding rejects, naming the field", () => {
  const cases: Array<[string, unknown, string, RegExp]> = [
    [
      "both group and project",
      doc({ gitlab: { group: "acme", project: 1 } }),
      "spec.gitlab.project",
      /either/,
    ],
    ["neither group nor project", doc({ gitlab: {} }), "spec.gitlab", /exactly one of group or project/],
    [
      "includeSubgroups with project",
      doc({ gitlab: { project: 1, includeSubgroups: true } }),
      "spec.gitlab.includeSubgroups",
      /only with group/,
    ],
    ["a negative group id", doc({ gitlab: { group: -3 } }), "spec.gitlab.group", /positive/],
    [
      "a project path without namespace",
      doc({ gitlab: { project: "api" } }),
      "spec.gitlab.project",
      /full path/,
    ],
    ["a group path with spaces", doc({ gitlab: { group: "a b" } }), "spec.gitlab.group", /full path/],
    ["no gitlab", doc({ gitlab: undefined }), "spec.gitlab", /required/],
    [
      "environments without accountPer: environment",
      doc({ environments: { names: ["production"] } }),
      "spec.environments",
      /only with accountPer: environment/,
    ],
    [
      "accountPer: environment without environments",
      doc({ accountPer: "environment" }),
      "spec.environments",
      /required/,
    ],
    [
      "both names and fromGitLab",
      doc({ accountPer: "environment", environments: { names: ["a"], fromGitLab: true } }),
      "spec.environments.fromGitLab",
      /either/,
    ],
    [
      "empty environments",
      doc({ accountPer: "environment", environments: {} }),
      "spec.environments",
      /names or fromGitLab/,
    ],
    [
      "duplicate environments",
      doc({ accountPer: "environment", environments: { names: ["a", "b", "a"] } }),
      "spec.environments.names[2]",
      /duplicates environment "a" at \[0\]/,
    ],
    ["an unknown accountPer", doc({ accountPer: "team" }), "spec.accountPer", /project|environment/],
    [
      "duplicate role names",
      doc({ roles: [{ name: "ci" }, { name: "ci" }] }),
      "spec.roles[1].name",
      /duplicates role name "ci"/,
    ],
    [
      "a role name that is not a DNS label",
      doc({ roles: [{ name: "CI_role" }] }),
      "spec.roles[0].name",
      /role name/,
    ],
    [
      "an unknown template variable",
      doc({ roles: [{ name: "r" }, { name: "s", publish: { allow: ["ok", "x.{{project.secret}}"] } }] }),
      "spec.roles[1].publish.allow[1]",
      /unknown template "\{\{project\.secret\}\}"/,
    ],
    [
      "an unknown NATS function",
      doc({ roles: [{ name: "r", subscribe: { deny: ["x.{{ tag() }}", "{{shell(rm)}}"] } }] }),
      "spec.roles[0].subscribe.deny[1]",
      /unknown template/,
    ],
    [
      "an unterminated template",
      doc({ roles: [{ name: "r", publish: { allow: ["x.{{project.id"] } }] }),
      "spec.roles[0].publish.allow[0]",
      /without a closing/,
    ],
    [
      "{{environment}} with accountPer: project",
      doc({ roles: [{ name: "r", publish: { deny: ["deploy.{{environment}}.>"] } }] }),
      "spec.roles[0].publish.deny[0]",
      /needs accountPer: environment/,
    ],
    [
      "a subject with an empty token",
      doc({ roles: [{ name: "r", publish: { allow: ["a..{{project.slug}}"] } }] }),
      "spec.roles[0].publish.allow[0]",
      /empty token/,
    ],
    [
      "a subject with whitespace",
      doc({ roles: [{ name: "r", publish: { allow: ["a b"] } }] }),
      "spec.roles[0].publish.allow[0]",
      /whitespace/,
    ],
    [
      "a wildcard glued to a template",
      doc({ roles: [{ name: "r", publish: { allow: ["a.{{project.slug}}>"] } }] }),
      "spec.roles[0].publish.allow[0]",
      /wildcard inside token/,
    ],
    [
      "a bad quantity",
      doc({ limits: { payload: "12Qi" } }),
      "spec.limits.payload",
      /"12Qi" is not a byte quantity/,
    ],
    [
      "a fractional byte count",
      doc({ limits: { data: "0.1Ki" } }),
      "spec.limits.data",
      /whole number of bytes/,
    ],
    ["an oversized quantity", doc({ limits: { data: "9Ei" } }), "spec.limits.data", /too large/],
    ["negative connections", doc({ limits: { connections: -1 } }), "spec.limits.connections", />= 0/],
    ["a negative byte number", doc({ limits: { payload: -1 } }), "spec.limits.payload", />= 0/],
    [
      "a negative byte quantity",
      doc({ limits: { jetstream: { memory: "-64Mi", disk: "1Gi" } } }),
      "spec.limits.jetstream.memory",
      /not a byte quantity/,
    ],
    [
      "negative streams",
      doc({ limits: { jetstream: { disk: "1Gi", streams: -2 } } }),
      "spec.limits.jetstream.streams",
      />= 0/,
    ],
    [
      "JetStream without storage",
      doc({ limits: { jetstream: { streams: 1 } } }),
      "spec.limits.jetstream",
      /storage/,
    ],
    [
      "a fractional count",
      doc({ limits: { subscriptions: 1.5 } }),
      "spec.limits.subscriptions",
      /whole number/,
    ],
    [
      "responses without a valid ttl",
      doc({ roles: [{ name: "r", responses: { max: 1, ttl: "5 s" } }] }),
      "spec.roles[0].responses.ttl",
      /duration/,
    ],
    [
      "responses with max 0",
      doc({ roles: [{ name: "r", responses: { max: 0, ttl: "5s" } }] }),
      "spec.roles[0].responses.max",
      /at least 1/,
    ],
    [
      "ci.refs other than protected or any",
      doc({ roles: [{ name: "r", ci: { refs: "unprotected" } }] }),
      "spec.roles[0].ci.refs",
      /"protected"\|"any"/,
    ],
    [
      "an unknown ci.refTypes value",
      doc({ roles: [{ name: "r", ci: { refTypes: ["branch", "merge_request"] } }] }),
      "spec.roles[0].ci.refTypes[1]",
      /"branch"\|"tag"/,
    ],
    [
      "empty ci.refTypes",
      doc({ roles: [{ name: "r", ci: { refTypes: [] } }] }),
      "spec.roles[0].ci.refTypes",
      /at least one ref type/,
    ],
    [
      "a duplicate ci.refTypes value",
      doc({ roles: [{ name: "r", ci: { refTypes: ["tag", "tag"] } }] }),
      "spec.roles[0].ci.refTypes[1]",
      /duplicates ref type "tag" at \[0\]/,
    ],
    [
      "three ci.refTypes",
      doc({ roles: [{ name: "r", ci: { refTypes: ["tag", "branch", "tag"] } }] }),
      "spec.roles[0].ci.refTypes",
      /at most 2 ref types/,
    ],
    [
      "empty ci.environments",
      doc({ roles: [{ name: "r", ci: { environments: [] } }] }),
      "spec.roles[0].ci.environments",
      /at least one environment/,
    ],
    [
      "a duplicate ci.environments name",
      doc({ roles: [{ name: "r", ci: { environments: ["production", "production"] } }] }),
      "spec.roles[0].ci.environments[1]",
      /duplicates environment "production" at \[0\]/,
    ],
    [
      "a ci.environments name with an edge space",
      doc({ roles: [{ name: "r", ci: { environments: ["production "] } }] }),
      "spec.roles[0].ci.environments[0]",
      /control characters or edge spaces/,
    ],
    [
      "a ci.environments name with a control character",
      doc({ roles: [{ name: "r", ci: { environments: ["prod\u0000uction"] } }] }),
      "spec.roles[0].ci.environments[0]",
      /control characters/,
    ],
    [
      "65 ci.environments",
      doc({ roles: [{ name: "r", ci: { environments: Array.from({ length: 65 }, (_, i) => `e${i}`) } }] }),
      "spec.roles[0].ci.environments",
      /at most 64 environments/,
    ],
    [
      "allowForkMergeRequests as a string",
      doc({ roles: [{ name: "r", ci: { allowForkMergeRequests: "true" } }] }),
      "spec.roles[0].ci.allowForkMergeRequests",
      /boolean/,
    ],
    [
      "an unknown ci field (typo of refs)",
      doc({ roles: [{ name: "r", ci: { ref: "any" } }] }),
      "spec.roles[0].ci.ref",
      /unknown field/,
    ],
    ["ci that is not an object", doc({ roles: [{ name: "r", ci: true }] }), "spec.roles[0].ci", /object/],
    [
      // Issue 10: the job's environment picks the account; "prod" has none, so it could never be issued.
      "a ci environment outside environments.names with accountPer: environment",
      doc({
        accountPer: "environment",
        environments: { names: ["production", "staging"] },
        roles: [{ name: "deploy", ci: { environments: ["staging", "prod"] } }],
      }),
      "spec.roles[0].ci.environments[1]",
      /"prod" is not in environments\.names: .*no account for it/,
    ],
    ["an unknown deletionPolicy", doc({ deletionPolicy: "Orphan" }), "spec.deletionPolicy", /Retain|Delete/],
    [
      "a rotation period under an hour",
      doc({ rotation: { every: "30m" } }),
      "spec.rotation.every",
      /at least 1h/,
    ],
    [
      "a rotation period that is not a duration",
      doc({ rotation: { every: "quarterly" } }),
      "spec.rotation.every",
      /duration/,
    ],
    [
      "a zero grace period",
      doc({ rotation: { gracePeriod: "0" } }),
      "spec.rotation.gracePeriod",
      /must not be 0/,
    ],
    ["an unknown rotation field", doc({ rotation: { often: "1d" } }), "spec.rotation.often", /unknown field/],
    ["credentials (not yet)", doc({ credentials: {} }), "spec.credentials", /unknown field/],
    [
      "a misspelt role field",
      doc({ roles: [{ name: "r", publsh: { allow: ["a"] } }] }),
      "spec.roles[0].publsh",
      /unknown field/,
    ],
    [
      "an unknown JetStream field",
      doc({ limits: { jetstream: { disk: "1Gi", storage: 1 } } }),
      "spec.limits.jetstream.storage",
      /unknown field/,
    ],
    [
      "33 roles",
      doc({ roles: Array.from({ length: 33 }, (_, i) => ({ name: `r${i}` })) }),
      "spec.roles",
      /at most 32 roles/,
    ],
    [
      "65 subjects in a list",
      doc({ roles: [{ name: "r", subscribe: { allow: Array.from({ length: 65 }, (_, i) => `s.${i}`) } }] }),
      "spec.roles[0].subscribe.allow",
      /at most 64 subjects/,
    ],
    [
      "a 257-character subject",
      doc({ roles: [{ name: "r", publish: { allow: ["a".repeat(257)] } }] }),
      "spec.roles[0].publish.allow[0]",
      /at most 256 characters/,
    ],
    [
      "65 environments",
      doc({
        accountPer: "environment",
        environments: { names: Array.from({ length: 65 }, (_, i) => `e${i}`) },
      }),
      "spec.environments.names",
      /at most 64 environments/,
    ],
    [
      "a 64-character environment name",
      doc({ accountPer: "environment", environments: { names: ["e".repeat(64)] } }),
      "spec.environments.names[0]",
      /at most 63/,
    ],
    [
      "a 64-character role name",
      doc({ roles: [{ name: "r".repeat(64) }] }),
      "spec.roles[0].name",
      /at most 63/,
    ],
    ["a wrong apiVersion", doc({}, { apiVersion: "natsbind.io/v1" }), "apiVersion", /natsbind\.io\/v1alpha1/],
    ["a wrong kind", doc({}, { kind: "Binding" }), "kind", /NatsBinding/],
    ["no metadata name", doc({}, { metadata: {} }), "metadata.name", /required/],
    ["an upper-case name", doc({}, { metadata: { name: "Acme" } }), "metadata.name", /lower-case/],
    ["no spec", doc({}, { spec: undefined }), "spec", /required/],
  ];
  for (const [what, document, path, message] of cases) {
    it(what, () => assertProblem(document, path, message));
  }

  it("a document that is not an object", () => {
    for (const bad of [null, "text", 42, []]) assertProblem(bad, "(document)", /expected object/);
  });

  it("lists every problem in one message, with the source and field paths", () => {
    const document = doc({
      gitlab: { group: "acme", project: 1 },
      environments: { names: ["x"] },
      roles: [
        { name: "a", publish: { allow: ["ok.{{project.secret}}"] } },
        { name: "a", subscribe: { allow: ["{{environment}}"] } },
      ],
      limits: { payload: "12Qi", connections: -1 },
      rotation: { every: "1m" },
    });
    let error: unknown;
    try {
      parseBinding(document, "bindings/acme.yaml");
    } catch (err) {
      error = err;
    }
    assert.ok(error instanceof BindingValidationError);
    assert.ok(error instanceof TerminalError);
    assert.equal(error.name, "BindingValidationError");
    assert.match(error.message, /^bindings\/acme\.yaml: invalid NatsBinding: /);
    for (const path of [
      "spec.gitlab.project",
      "spec.environments",
      "spec.roles[0].publish.allow[0]",
      "spec.roles[1].name",
      "spec.roles[1].subscribe.allow[0]",
      "spec.limits.payload",
      "spec.limits.connections",
      "spec.rotation.every",
    ]) {
      assert.ok(error.message.includes(`${path}: `), `message lacks ${path}: ${error.message}`);
    }
  });
});

describe("quantities and durations", () => {
  it("converts Kubernetes quantities to bytes", () => {
    const cases: Array<[unknown, number]> = [
      ["64Mi", 64 * 1024 * 1024],
      ["1Gi", 1024 ** 3],
      ["500M", 500_000_000],
      ["1k", 1000],
      ["1024", 1024],
      [1024, 1024],
      [0, 0],
      ["1.5Ki", 1536],
      ["2Ti", 2 * 1024 ** 4],
    ];
    for (const [input, bytes] of cases)
      assert.deepEqual(parseByteQuantity(input), { value: bytes }, String(input));
  });

  it("rejects what is not a byte quantity", () => {
    for (const input of [
      "12Qi",
      "",
      " 1Mi",
      "1 Mi",
      "-1",
      "1.5",
      "1m",
      "1e3",
      "0x10",
      "1Mi ",
      1.5,
      -1,
      null,
      "9Ei",
    ]) {
      assert.ok("problem" in parseByteQuantity(input), `accepted ${JSON.stringify(input)}`);
    }
  });

  it("converts durations to milliseconds", () => {
    const max = 86_400_000;
    assert.deepEqual(parseDuration("5s", max), { value: 5000 });
    assert.deepEqual(parseDuration("500ms", max), { value: 500 });
    assert.deepEqual(parseDuration("1h1m1s", max), { value: 3_661_000 });
    assert.deepEqual(parseDuration("0", max), { value: 0 });
    for (const bad of ["5", "s", "1.5s", "-5s", "5 s", "25h", "1d"]) {
      assert.ok("problem" in parseDuration(bad, max), `accepted ${bad}`);
    }
  });
});

describe("desiredRoles and accountLimits", () => {
  const binding = parseBinding(parse(EXAMPLE), "acme-ci.yaml");

  it("render the example's roles for a project", () => {
    assert.deepEqual(desiredRoles(binding, vars), [
      {
        role: "ci",
        template: {
          pub: { allow: ["build.status.api.>"] },
          sub: { allow: ["_INBOX.>", "deploy.events.api.{{tag(env)}}"] },
        },
      },
    ]);
  });

  it("carry deny lists and responses, and drop duplicates a rendering creates", () => {
    const b = parseBinding(
      doc({
        roles: [
          {
            name: "svc",
            publish: { allow: ["p.api", "p.{{project.slug}}"], deny: ["p.{{project.id}}.secret"] },
            responses: { max: 2, ttl: "5s" },
          },
          { name: "empty" },
        ],
      }),
      "b",
    );
    assert.deepEqual(desiredRoles(b, vars), [
      {
        role: "svc",
        template: {
          pub: { allow: ["p.api"], deny: ["p.42.secret"] },
          responses: { max: 2, ttlMs: 5000 },
        },
      },
      { role: "empty", template: {} },
    ]);
  });

  it("give claims.ts's limits, with JetStream only when configured", () => {
    assert.deepEqual(accountLimits(binding), {
      connections: 50,
      payload: 1048576,
      jetstream: { memoryStorage: 67108864, diskStorage: 1073741824, streams: 10, consumers: -1 },
    });
    assert.deepEqual(accountLimits(parseBinding(doc({ limits: { data: "1Ki", subscriptions: 5 } }), "b")), {
      data: 1024,
      subscriptions: 5,
    });
    assert.deepEqual(
      accountLimits(parseBinding(doc({ limits: { jetstream: { disk: 10 } } }), "b")).jetstream,
      {
        memoryStorage: 0,
        diskStorage: 10,
        streams: -1,
        consumers: -1,
      },
    );
  });

  it("are accepted by accountClaims", () => {
    const claims = accountClaims(
      {
        publicKey: fixedKeys.account().publicKey,
        name: "acme/backend/api",
        limits: accountLimits(binding),
        signingKeys: desiredRoles(binding, vars).map((r) => ({
          key: fixedKeys.accountScoped().publicKey,
          role: r.role,
          template: r.template,
        })),
      },
      fixedKeys.operatorSigning().publicKey,
    );
    const [scoped] = claims.nats.signing_keys as Array<Record<string, Record<string, unknown>>>;
    assert.deepEqual(scoped!.template!.pub, { allow: ["build.status.api.>"] });
    assert.equal((claims.nats.limits as Record<string, unknown>).payload, 1048576);
  });
});

describe("JSON Schema of the spec", () => {
  const schema = natsBindingSpecJsonSchema();

  it("is generated, closed and describes every field", () => {
    assert.equal(schema.type, "object");
    assert.equal(schema.additionalProperties, false);
    const undescribed: string[] = [];
    const walk = (node: Record<string, unknown>, path: string): void => {
      const properties = node.properties as Record<string, Record<string, unknown>> | undefined;
      if (properties) {
        assert.equal(node.additionalProperties, false, `${path} is not closed`);
        for (const [name, child] of Object.entries(properties)) {
          if (typeof child.description !== "string") undescribed.push(`${path}.${name}`);
          walk(child, `${path}.${name}`);
        }
      }
      if (node.items) walk(node.items as Record<string, unknown>, `${path}[]`);
    };
    walk(schema, "spec");
    assert.deepEqual(undescribed, []);
  });

  it("names the fields of the issue", () => {
    const properties = schema.properties as Record<string, Record<string, unknown>>;
    assert.deepEqual(Object.keys(properties).sort(), [
      "accountPer",
      "deletionPolicy",
      "environments",
      "gitlab",
      "limits",
      "roles",
      "rotation",
    ]);
    assert.deepEqual(properties.deletionPolicy!.enum, ["Retain", "Delete"]);
    assert.equal(properties.deletionPolicy!.default, "Retain");
  });
});

describe("formatPath", () => {
  it("writes field paths as in the spec", () => {
    assert.equal(formatPath(["spec", "roles", 1, "publish", "allow", 0]), "spec.roles[1].publish.allow[0]");
    assert.equal(formatPath([]), "(document)");
    assert.equal(formatPath(["spec", "a b"]), 'spec["a b"]');
  });
});
