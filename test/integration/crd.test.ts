// The NatsBinding CRD from crds/natsbinding.yaml on a real kube-apiserver: it is accepted and
// Established, valid bindings are accepted with zod's defaults applied, invalid ones are rejected
// with the CEL or schema message, and for every case zod's parseBinding agrees. The status
// subresource and the printer columns work.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, it } from "node:test";
import {
  ApiException,
  ApiextensionsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  dumpYaml,
  loadYaml,
  type V1CustomResourceDefinition,
} from "@kubernetes/client-node";
import { parse } from "yaml";
import { CRD_NAME, natsBindingCrd, PLURAL, type JsonSchema } from "../../src/api/v1alpha1/crd.ts";
import {
  BindingValidationError,
  NatsBindingSpecSchema,
  parseBinding,
} from "../../src/api/v1alpha1/schema.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import type { BindingStatus } from "../../src/controllers/binding/status.ts";
import {
  insecureGet,
  startKubeApiserver,
  waitForCrdEstablished,
  type KubeApiserver,
} from "../support/kube.ts";
import { liveProcessCount } from "../support/process.ts";

const NAMESPACE = "crd-test";
const CRD_FILE = new URL("../../crds/natsbinding.yaml", import.meta.url);

type Spec = Record<string, unknown>;

/** The issue-4 example. */
const EXAMPLE: Spec = {
  gitlab: { group: "acme", includeSubgroups: true },
  accountPer: "project",
  roles: [
    {
      name: "ci",
      publish: { allow: ["build.status.{{project.slug}}.>"] },
      subscribe: { allow: ["_INBOX.>", "deploy.events.{{project.slug}}.{{tag(env)}}"] },
    },
  ],
  limits: { connections: 50, payload: "1Mi", jetstream: { memory: "64Mi", disk: "1Gi", streams: 10 } },
  deletionPolicy: "Delete",
};

const role = (name: string, allow: string[] = ["a.>"]): Spec => ({ name, publish: { allow } });

function binding(name: string, spec: unknown, metadata: Spec = {}): Spec {
  return { apiVersion: `${GROUP}/${VERSION}`, kind: "NatsBinding", metadata: { name, ...metadata }, spec };
}

/** zod's verdict on a document: undefined when valid, else its error message. */
function zodProblems(doc: unknown): string | undefined {
  try {
    parseBinding(doc, "case");
    return undefined;
  } catch (err) {
    assert.ok(err instanceof BindingValidationError, String(err));
    return err.message;
  }
}

interface Case {
  what: string;
  spec: Spec;
  metadataName?: string;
  /** The apiserver's message must match (field path and text). */
  message: RegExp;
}

const INVALID: Case[] = [
  {
    what: "both group and project",
    spec: { gitlab: { group: "acme", project: "acme/api" } },
    message: /spec\.gitlab\.project: Forbidden: set either group or project, not both/,
  },
  {
    what: "neither group nor project",
    spec: { gitlab: {} },
    message: /spec\.gitlab: Required value: must set exactly one of group or project/,
  },
  {
    what: "includeSubgroups with project",
    spec: { gitlab: { project: "acme/api", includeSubgroups: false } },
    message: /spec\.gitlab\.includeSubgroups: Forbidden: applies only with group/,
  },
  {
    what: "environments without accountPer: environment",
    spec: { gitlab: { group: "acme" }, environments: { names: ["production"] } },
    message: /spec\.environments: Forbidden: applies only with accountPer: environment/,
  },
  {
    what: "accountPer: environment without environments",
    spec: { gitlab: { group: "acme" }, accountPer: "environment" },
    message: /spec\.environments: Required value: is required with accountPer: environment/,
  },
  {
    what: "environments with neither names nor fromGitLab: true",
    spec: { gitlab: { group: "acme" }, accountPer: "environment", environments: { fromGitLab: false } },
    message: /spec\.environments: Required value: must set names or fromGitLab: true/,
  },
  {
    what: "environments with both names and fromGitLab",
    spec: {
      gitlab: { group: "acme" },
      accountPer: "environment",
      environments: { names: ["production"], fromGitLab: true },
    },
    message: /spec\.environments\.fromGitLab: Forbidden: set either names or fromGitLab, not both/,
  },
  {
    what: "a duplicate environment name",
    spec: {
      gitlab: { group: "acme" },
      accountPer: "environment",
      environments: { names: ["production", "staging", "production"] },
    },
    message: /spec\.environments\.names\[2\]: Duplicate value: "production"/,
  },
  {
    what: "an environment name with an edge space",
    spec: { gitlab: { group: "acme" }, accountPer: "environment", environments: { names: ["production "] } },
    message:
      /spec\.environments\.names\[0\]: Invalid value: "production ": must not contain control characters/,
  },
  {
    what: "duplicate role names",
    spec: { gitlab: { group: "acme" }, roles: [role("ci"), role("deploy"), role("ci")] },
    message: /spec\.roles: Invalid value: .*role names must be unique/,
  },
  {
    what: "an unknown template variable",
    spec: { gitlab: { group: "acme" }, roles: [role("ci", ["deploy.{{project.name}}.>"])] },
    message:
      /spec\.roles\[0\]\.publish\.allow\[0\]: Invalid value: "deploy\.\{\{project\.name\}\}\.>": uses an unknown template/,
  },
  {
    what: "a NATS function with a bad argument",
    spec: { gitlab: { group: "acme" }, roles: [{ name: "ci", subscribe: { deny: ["a.{{name(x)}}"] } }] },
    message:
      /spec\.roles\[0\]\.subscribe\.deny\[0\]: Invalid value: "a\.\{\{name\(x\)\}\}": uses an unknown template/,
  },
  {
    // Issue 9, finding 7: the account name is the raw GitLab path, unchecked by safeToken.
    what: "{{account-name()}}",
    spec: { gitlab: { group: "acme" }, roles: [role("ci", ["a.{{ account-name() }}.>"])] },
    message:
      /spec\.roles\[0\]\.publish\.allow\[0\]: Invalid value: .*not \{\{account-name\(\)\}\}, the raw GitLab path: use \{\{project\.path\}\}/,
  },
  {
    what: "a stray }}",
    spec: { gitlab: { group: "acme" }, roles: [role("ci", ["a.b}}"])] },
    message: /spec\.roles\[0\]\.publish\.allow\[0\]: .*uses an unknown template/,
  },
  {
    what: "{{environment}} with accountPer: project",
    spec: { gitlab: { group: "acme" }, roles: [role("ci", ["deploy.{{ environment }}.>"])] },
    message: /spec\.roles: Invalid value: .*uses \{\{environment\}\}, which needs accountPer: environment/,
  },
  {
    what: "> before the last token",
    spec: { gitlab: { group: "acme" }, roles: [role("ci", ["a.>.b"])] },
    message:
      /spec\.roles\[0\]\.publish\.allow\[0\]: Invalid value: "a\.>\.b": is not a valid subject template/,
  },
  {
    what: "whitespace in a subject",
    spec: { gitlab: { group: "acme" }, roles: [role("ci", ["a b"])] },
    message: /spec\.roles\[0\]\.publish\.allow\[0\]: Invalid value: "a b": is not a valid subject template/,
  },
  {
    what: "a bad deletionPolicy",
    spec: { gitlab: { group: "acme" }, deletionPolicy: "Orphan" },
    message: /spec\.deletionPolicy: Unsupported value: "Orphan": supported values: "Retain", "Delete"/,
  },
  {
    what: "an upper-case role name",
    spec: { gitlab: { group: "acme" }, roles: [role("CI")] },
    message: /spec\.roles\[0\]\.name: Invalid value: "CI": spec\.roles\[0\]\.name in body should match/,
  },
  {
    what: "group id 0",
    spec: { gitlab: { group: 0 } },
    message:
      /spec\.gitlab\.group: Invalid value: 0: spec\.gitlab\.group in body should be greater than or equal to 1/,
  },
  {
    what: "a project path without a namespace",
    spec: { gitlab: { project: "api" } },
    message: /spec\.gitlab\.project: Invalid value: "api": spec\.gitlab\.project in body should match/,
  },
  {
    what: "JetStream without storage",
    spec: { gitlab: { group: "acme" }, limits: { jetstream: { memory: "0Mi", streams: 10 } } },
    message:
      /spec\.limits\.jetstream: Invalid value: .*enables JetStream without storage: set memory or disk/,
  },
  {
    what: "a fraction of a byte",
    spec: { gitlab: { group: "acme" }, limits: { payload: "1.5" } },
    message: /spec\.limits\.payload: Invalid value: "1\.5": must be a whole number of bytes/,
  },
  {
    what: "more bytes than 2^53",
    spec: { gitlab: { group: "acme" }, limits: { data: "9Ei" } },
    message:
      /spec\.limits\.data: Invalid value: "9Ei": must be a whole number of bytes, at most 9007199254740991/,
  },
  {
    what: "a quantity with a unit Kubernetes has but natsbind does not",
    spec: { gitlab: { group: "acme" }, limits: { payload: "64m" } },
    message: /spec\.limits\.payload: Invalid value: "64m": spec\.limits\.payload in body should match/,
  },
  {
    what: "a reply permission longer than 24h",
    spec: { gitlab: { group: "acme" }, roles: [{ name: "svc", responses: { max: 1, ttl: "24h1s" } }] },
    message: /spec\.roles\[0\]\.responses\.ttl: Invalid value: "24h1s": must be at most 24h/,
  },
  {
    what: "ci.refs other than protected or any",
    spec: { gitlab: { group: "acme" }, roles: [{ name: "ci", ci: { refs: "unprotected" } }] },
    message:
      /spec\.roles\[0\]\.ci\.refs: Unsupported value: "unprotected": supported values: "protected", "any"/,
  },
  {
    what: "an unknown ci.refTypes value",
    spec: { gitlab: { group: "acme" }, roles: [{ name: "ci", ci: { refTypes: ["merge_request"] } }] },
    message:
      /spec\.roles\[0\]\.ci\.refTypes\[0\]: Unsupported value: "merge_request": supported values: "branch", "tag"/,
  },
  {
    what: "empty ci.refTypes",
    spec: { gitlab: { group: "acme" }, roles: [{ name: "ci", ci: { refTypes: [] } }] },
    message: /spec\.roles\[0\]\.ci\.refTypes: Invalid value: 0: .*should have at least 1 items/,
  },
  {
    what: "a duplicate ci.refTypes value",
    spec: { gitlab: { group: "acme" }, roles: [{ name: "ci", ci: { refTypes: ["tag", "tag"] } }] },
    message: /spec\.roles\[0\]\.ci\.refTypes\[1\]: Duplicate value: "tag"/,
  },
  {
    what: "a duplicate ci.environments name",
    spec: {
      gitlab: { group: "acme" },
      roles: [{ name: "ci", ci: { environments: ["production", "staging", "production"] } }],
    },
    message: /spec\.roles\[0\]\.ci\.environments\[2\]: Duplicate value: "production"/,
  },
  {
    what: "a ci.environments name with an edge space",
    spec: { gitlab: { group: "acme" }, roles: [{ name: "ci", ci: { environments: [" production"] } }] },
    message:
      /spec\.roles\[0\]\.ci\.environments\[0\]: Invalid value: " production": must not contain control characters/,
  },
  {
    what: "65 ci.environments",
    spec: {
      gitlab: { group: "acme" },
      roles: [{ name: "ci", ci: { environments: Array.from({ length: 65 }, (_, i) => `e${i}`) } }],
    },
    message: /spec\.roles\[0\]\.ci\.environments: Too many: 65: must have at most 64 items/,
  },
  {
    what: "allowForkMergeRequests as a string",
    spec: { gitlab: { group: "acme" }, roles: [{ name: "ci", ci: { allowForkMergeRequests: "true" } }] },
    message:
      /spec\.roles\[0\]\.ci\.allowForkMergeRequests: Invalid value: "string": .*must be of type boolean/,
  },
  {
    what: "a ci environment outside environments.names with accountPer: environment",
    spec: {
      gitlab: { group: "acme" },
      accountPer: "environment",
      environments: { names: ["production", "staging"] },
      roles: [
        { name: "build", ci: {} },
        { name: "deploy", ci: { environments: ["staging", "prod"] } },
      ],
    },
    message:
      /spec\.roles: Invalid value: .*ci\.environments lists an environment that is not in environments\.names/,
  },
  {
    what: "a name longer than 63 characters",
    spec: { gitlab: { group: "acme" } },
    metadataName: "x".repeat(64),
    message: /metadata\.name must be at most 63 characters/,
  },
];

const VALID: { what: string; spec: Spec }[] = [
  { what: "a group id", spec: { gitlab: { group: 42 } } },
  { what: "a project path", spec: { gitlab: { project: "acme/backend/api" } } },
  {
    what: "environments from GitLab with {{environment}}",
    spec: {
      gitlab: { group: "acme" },
      accountPer: "environment",
      environments: { fromGitLab: true },
      roles: [role("ci", ["deploy.{{ environment }}.{{project.id}}.>"])],
    },
  },
  {
    what: "listed environments (fromGitLab: false)",
    spec: {
      gitlab: { group: "acme" },
      accountPer: "environment",
      environments: { names: ["production", "review/app"], fromGitLab: false },
    },
  },
  {
    what: "every NATS function and literal braces",
    spec: {
      gitlab: { group: "acme" },
      roles: [
        {
          name: "fn",
          publish: { allow: ["{{name()}}.{{ subject( ) }}.{{account-subject()}}.*"] },
          subscribe: { allow: ["{{account-tag(team)}}.{{tag(a.b)}}.>"], deny: ["a{b.c}d"] },
          responses: { max: 5, ttl: "1m30s" },
        },
      ],
    },
  },
  {
    what: "byte counts, fractional quantities and JetStream on disk only",
    spec: {
      gitlab: { group: "acme" },
      limits: { payload: 1024, data: "1.5Ki", jetstream: { memory: 0, disk: "1Gi" } },
    },
  },
  {
    what: "a reply permission without time limit",
    spec: { gitlab: { group: "acme" }, roles: [{ name: "svc", responses: { max: 1, ttl: "0" } }] },
  },
  {
    what: "every ci field, per project (ci.environments filter the job's environment claim)",
    spec: {
      gitlab: { group: "acme" },
      roles: [
        {
          name: "ci",
          publish: { allow: ["build.{{project.id}}.{{tag(pipeline)}}.>"] },
          ci: {
            refs: "any",
            refTypes: ["branch", "tag"],
            environments: ["review/app"],
            allowForkMergeRequests: true,
          },
        },
      ],
    },
  },
  {
    what: "ci.environments within environments.names",
    spec: {
      gitlab: { group: "acme" },
      accountPer: "environment",
      environments: { names: ["production", "staging"] },
      roles: [{ name: "deploy", ci: { environments: ["production"] } }],
    },
  },
  {
    what: "ci.environments with environments fromGitLab (checked at issuance)",
    spec: {
      gitlab: { group: "acme" },
      accountPer: "environment",
      environments: { fromGitLab: true },
      roles: [{ name: "deploy", ci: { environments: ["production", "anything"] } }],
    },
  },
  {
    what: "the most ci work the CEL cost budget must allow: 32 roles x 64 ci environments x 64 names",
    spec: {
      gitlab: { group: "acme" },
      accountPer: "environment",
      environments: { names: Array.from({ length: 64 }, (_, i) => `environment-${"x".repeat(40)}-${i}`) },
      roles: Array.from({ length: 32 }, (_, r) => ({
        name: `r${r}`,
        ci: { environments: Array.from({ length: 64 }, (_, i) => `environment-${"x".repeat(40)}-${63 - i}`) },
      })),
    },
  },
];

/** Deterministic pseudo-random subjects (mulberry32) from pieces that stress the template rules. */
function randomSubjects(count: number, seed: number): string[] {
  const pieces = [
    ...["a", "_", "-", "é", ".", ".", "*", ">", "{", "}", "{{", "}}", "(", ")", " ", "\u00a0", "\u0001"],
    ...["{{project.id}}", "{{ project.slug }}", "{{namespace.path}}", "{{environment}}", "{{name()}}"],
    ...["{{ subject( ) }}", "{{account-tag( a.b )}}", "{{tag()}}", "{{tag(a b)}}", "{{name(x)}}", "{{foo}}"],
    ...["{{project.id}", "{{tag(.)}}", "project.id", "tag(", "environment"],
  ];
  let a = seed;
  const next = (): number => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return Array.from({ length: count }, () => {
    let s = "";
    for (let n = 1 + Math.floor(next() * 6); n > 0; n--) s += pieces[Math.floor(next() * pieces.length)];
    return s;
  });
}

/** GET as a meta.k8s.io Table (what kubectl get prints). */
function getTable(kube: KubeApiserver, path: string): Promise<{ status: number; body: string }> {
  return insecureGet(`${kube.server}${path}`, kube.token, {
    timeoutMs: 10_000,
    headers: { accept: "application/json;as=Table;v=v1;g=meta.k8s.io" },
  });
}

describe("NatsBinding CRD on a real kube-apiserver", { timeout: 180_000 }, () => {
  let kube: KubeApiserver | undefined;
  let objects: CustomObjectsApi;

  const coordinates = { group: GROUP, version: VERSION, namespace: NAMESPACE, plural: PLURAL };

  const create = (body: Spec, fieldValidation?: string): Promise<Spec> =>
    objects.createNamespacedCustomObject({ ...coordinates, body, fieldValidation }) as Promise<Spec>;
  const get = (name: string): Promise<Spec> =>
    objects.getNamespacedCustomObject({ ...coordinates, name }) as Promise<Spec>;

  /** The apiserver's message for a rejected create (422). */
  async function rejection(body: Spec, fieldValidation?: string, code = 422): Promise<string> {
    try {
      await create(body, fieldValidation);
    } catch (err) {
      assert.ok(err instanceof ApiException, String(err));
      const status = (typeof err.body === "string" ? JSON.parse(err.body) : err.body) as { message: string };
      assert.equal(err.code, code, status.message);
      return status.message;
    }
    assert.fail(`the apiserver accepted ${JSON.stringify(body)}`);
  }

  before(async () => {
    kube = await startKubeApiserver();
    const kc = kube.kubeConfig();
    objects = kc.makeApiClient(CustomObjectsApi);
    await kc.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: NAMESPACE } } });
    // loadYaml maps x-kubernetes-* keys to the client's model; plain objects would lose them.
    const crd = loadYaml<V1CustomResourceDefinition>(await readFile(CRD_FILE, "utf8"));
    await kc.makeApiClient(ApiextensionsV1Api).createCustomResourceDefinition({ body: crd });
    await waitForCrdEstablished(kc, CRD_NAME);
  });

  after(async () => {
    await kube?.stop();
    assert.equal(liveProcessCount(), 0, "etcd and kube-apiserver were stopped");
  });

  it("is Established with the names of the issue and stores the schema as generated", async () => {
    assert.ok(kube);
    const stored = await kube.kubeConfig().makeApiClient(ApiextensionsV1Api).readCustomResourceDefinition({
      name: CRD_NAME,
    });
    assert.ok(stored.status?.conditions?.some((c) => c.type === "Established" && c.status === "True"));
    assert.deepEqual(stored.status?.acceptedNames?.shortNames, ["nb"]);
    assert.deepEqual(stored.status?.acceptedNames?.categories, ["natsbind"]);
    // Nothing was lost between the file, the client and etcd (every rule and int-or-string marker).
    const roundTrip = parse(dumpYaml(stored)) as { spec: { versions: { schema: JsonSchema }[] } };
    const expected = (natsBindingCrd().spec as { versions: { schema: JsonSchema }[] }).versions[0]!.schema;
    assert.deepEqual(roundTrip.spec.versions[0]!.schema, expected);
  });

  it("accepts the issue-4 example and a minimal binding, applying zod's defaults", async () => {
    const example = binding("acme-ci", EXAMPLE);
    assert.equal(zodProblems(example), undefined);
    const created = await create(example);
    assert.deepEqual(created.spec, EXAMPLE);
    assert.deepEqual(parseBinding(created, "apiserver").spec, parseBinding(example, "sent").spec);

    const minimal = binding("minimal", { gitlab: { group: "acme" } });
    const stored = await create(minimal);
    assert.deepEqual(stored.spec, {
      gitlab: { group: "acme" },
      accountPer: "project",
      roles: [],
      limits: {},
      deletionPolicy: "Retain",
    });
    // The defaulted object means what zod makes of the minimal one.
    assert.deepEqual(parseBinding(stored, "apiserver").spec, parseBinding(minimal, "sent").spec);
  });

  it(`rejects ${INVALID.length} invalid bindings with the CEL or schema message, and zod refuses each`, async () => {
    for (const [i, c] of INVALID.entries()) {
      const doc = binding(c.metadataName ?? `invalid-${i}`, c.spec);
      assert.ok(zodProblems(doc) !== undefined, `zod accepts ${c.what}`);
      const message = await rejection(doc);
      assert.match(message, c.message, c.what);
    }
  });

  it(`accepts ${VALID.length} valid edge cases, and zod accepts each`, async () => {
    for (const [i, c] of VALID.entries()) {
      const doc = binding(`valid-${i}`, c.spec);
      assert.equal(zodProblems(doc), undefined, c.what);
      const created = await create(doc);
      assert.deepEqual(parseBinding(created, "apiserver").spec, parseBinding(doc, "sent").spec, c.what);
    }
  });

  it("applies zod's ci defaults (refs protected, allowForkMergeRequests false) to ci: {}", async () => {
    const doc = binding("ci-defaults", { gitlab: { group: "acme" }, roles: [{ name: "ci", ci: {} }] });
    const created = await create(doc);
    const roles = (created.spec as { roles: Spec[] }).roles;
    assert.deepEqual(roles[0]!.ci, { refs: "protected", allowForkMergeRequests: false });
    assert.deepEqual(roles[0]!.ci, NatsBindingSpecSchema.parse(doc.spec).roles[0]!.ci);
    assert.deepEqual(parseBinding(created, "apiserver").spec.roles[0]!.ci, {
      refs: "protected",
      allowForkMergeRequests: false,
    });
  });

  it("refuses exactly the subjects zod refuses, out of 512 random ones (RE2 in the apiserver, not JS)", async () => {
    const subjects = randomSubjects(512, 4711);
    const roles = Array.from({ length: 8 }, (_, i) => role(`r${i}`, subjects.slice(i * 64, (i + 1) * 64)));
    // Per environment, so {{environment}} is allowed and only the subject rules speak.
    const doc = binding("random-subjects", {
      gitlab: { group: "acme" },
      accountPer: "environment",
      environments: { fromGitLab: true },
      roles,
    });
    let zodRefused = new Set<string>();
    try {
      parseBinding(doc, "random");
    } catch (err) {
      assert.ok(err instanceof BindingValidationError, String(err));
      zodRefused = new Set(err.problems.map((p) => p.path));
    }
    let apiserverRefused = new Set<string>();
    try {
      await create(doc);
    } catch (err) {
      assert.ok(err instanceof ApiException, String(err));
      const status = JSON.parse(err.body as string) as { details: { causes: { field: string }[] } };
      apiserverRefused = new Set(status.details.causes.map((c) => c.field));
    }
    assert.ok(zodRefused.size > 100 && zodRefused.size < 450, `zod refuses ${zodRefused.size} of 512`);
    assert.deepEqual([...apiserverRefused].sort(), [...zodRefused].sort());
  });

  it("rejects unknown fields under strict field validation and prunes them otherwise (zod refuses them)", async () => {
    const doc = binding("unknown-field", { gitlab: { group: "acme", groupp: "typo" } });
    assert.match(zodProblems(doc) ?? "", /spec\.gitlab\.groupp: unknown field/);
    assert.match(
      await rejection(doc, "Strict", 400),
      /strict decoding error: unknown field "spec\.gitlab\.groupp"/,
    );
    const pruned = await create(doc);
    assert.deepEqual((pruned.spec as Spec).gitlab, { group: "acme" });
  });

  it("stores the status through /status, ignores spec there, and ignores status on the main resource", async () => {
    const created = await create(binding("with-status", { gitlab: { group: "acme" } }));
    const metadata = created.metadata as { name: string; generation: number };
    const status: BindingStatus = {
      observedGeneration: metadata.generation,
      conditions: [
        {
          type: "Ready",
          status: "True",
          reason: "Reconciled",
          message: "3 accounts live",
          observedGeneration: metadata.generation,
          lastTransitionTime: "2025-01-02T03:04:05.678Z",
        },
        {
          type: "GitLabSynced",
          status: "True",
          reason: "Reconciled",
          message: "3 projects",
          observedGeneration: metadata.generation,
          lastTransitionTime: "2025-01-02T03:04:05.678Z",
        },
      ],
      counts: { projects: 3, accounts: 3, pushed: 1, upToDate: 2, retained: 0, problems: 0 },
      accounts: [
        {
          projectId: 7,
          projectPath: "acme/api",
          account: "ADZ5VHAVGFM4PZHXZWZH3YHJ2XZPKPB5WDT6M2Z7X7Y6W3BSWRUGVVDR",
          claimsHash: "b1946ac92492d2347c6235b4d2611184",
          pushedAt: "2025-01-02T03:04:05.678Z",
          state: "Ready",
        },
        {
          projectId: 8,
          projectPath: "acme/web",
          environment: "production",
          account: "AB2OHNKWX3X6WVZGSWUFNDBI3QQTHKG7CU2OOFDZRVEJCRBWHZ5D3G7T",
          state: "Problem",
          message: "resolver refused the JWT",
        },
      ],
      accountsTruncated: 1,
    };
    await objects.replaceNamespacedCustomObjectStatus({
      ...coordinates,
      name: metadata.name,
      body: { ...created, spec: { ...(created.spec as Spec), deletionPolicy: "Delete" }, status },
    });
    const stored = await get(metadata.name);
    assert.deepEqual(stored.status, status, "stored as written: nothing pruned");
    assert.equal((stored.spec as Spec).deletionPolicy, "Retain", "a spec change through /status is ignored");
    assert.equal((stored.metadata as { generation: number }).generation, metadata.generation);

    const updated = await objects.replaceNamespacedCustomObject({
      ...coordinates,
      name: metadata.name,
      body: {
        ...stored,
        spec: { ...(stored.spec as Spec), deletionPolicy: "Delete" },
        status: { counts: {} },
      },
    });
    assert.equal((updated.spec as Spec).deletionPolicy, "Delete");
    assert.deepEqual(updated.status, status, "a status change on the main resource is ignored");
    assert.equal((updated.metadata as { generation: number }).generation, metadata.generation + 1);

    const table = await getTable(kube!, `/apis/${GROUP}/${VERSION}/namespaces/${NAMESPACE}/${PLURAL}`);
    assert.equal(table.status, 200, table.body);
    const parsed = JSON.parse(table.body) as {
      columnDefinitions: { name: string; priority: number }[];
      rows: { cells: unknown[]; object: { metadata: { name: string } } }[];
    };
    assert.deepEqual(
      parsed.columnDefinitions.map((c) => [c.name, c.priority]),
      [
        ["Name", 0],
        ["Ready", 0],
        ["Accounts", 0],
        ["Age", 0],
        ["Message", 1],
      ],
    );
    const row = parsed.rows.find((r) => r.object.metadata.name === metadata.name);
    assert.ok(row, "the binding is listed");
    assert.deepEqual(
      [row.cells[0], row.cells[1], row.cells[2], row.cells[4]],
      [metadata.name, "True", 3, "3 accounts live"],
    );
  });
});
