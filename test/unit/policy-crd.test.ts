// The NatsBindingPolicy CRD: the committed crds/natsbindingpolicy.yaml is what natsBindingPolicyCrd()
// builds; it is cluster-scoped with a status subresource and printer columns; every field has a
// description; the label-key regex of its CEL rule agrees with zod's on random keys; parsePolicySpec
// reports each problem at its path.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, it } from "node:test";
import { parse } from "yaml";
import type { JsonSchema } from "../../src/api/v1alpha1/crd.ts";
import {
  LABEL_KEY_PATTERN,
  NatsBindingPolicySpecSchema,
  POLICY_CRD_NAME,
  PolicyValidationError,
  parsePolicySpec,
  policyGroupsOf,
} from "../../src/api/v1alpha1/policy.ts";
import { natsBindingPolicyCrd } from "../../src/api/v1alpha1/policy-crd.ts";
import { CRD_HEADER, POLICY_CRD_FILE, renderPolicyCrdYaml } from "../../scripts/gen-crd.ts";

const crd = natsBindingPolicyCrd();
const spec = crd.spec as JsonSchema;
const version = (spec.versions as JsonSchema[])[0]!;
const root = (version.schema as { openAPIV3Schema: JsonSchema }).openAPIV3Schema;

function* nodes(node: JsonSchema, path: string): Generator<[string, JsonSchema]> {
  yield [path, node];
  for (const [name, child] of Object.entries((node.properties ?? {}) as Record<string, JsonSchema>))
    yield* nodes(child, `${path}.${name}`);
  if (node.items) yield* nodes(node.items as JsonSchema, `${path}[]`);
  if (typeof node.additionalProperties === "object")
    yield* nodes(node.additionalProperties as JsonSchema, `${path}{}`);
}

describe("crds/natsbindingpolicy.yaml", () => {
  it("is exactly what scripts/gen-crd.ts renders from natsBindingPolicyCrd() (run make crds)", async () => {
    const text = await readFile(POLICY_CRD_FILE, "utf8");
    assert.ok(text.startsWith(`${CRD_HEADER}\n`));
    assert.deepEqual(
      parse(text),
      crd,
      "the committed CRD differs from natsBindingPolicyCrd(): run make crds",
    );
    assert.equal(text, await renderPolicyCrdYaml());
  });

  it("names natsbindingpolicies.natsbind.io, cluster-scoped, nbp, status subresource, printer columns", () => {
    assert.equal((crd.metadata as JsonSchema).name, POLICY_CRD_NAME);
    assert.equal(POLICY_CRD_NAME, "natsbindingpolicies.natsbind.io");
    assert.equal(spec.scope, "Cluster");
    assert.equal((spec.names as JsonSchema).kind, "NatsBindingPolicy");
    assert.deepEqual((spec.names as JsonSchema).shortNames, ["nbp"]);
    assert.deepEqual(version.subresources, { status: {} });
    assert.deepEqual(
      (version.additionalPrinterColumns as JsonSchema[]).map((c) => [c.name, c.jsonPath]),
      [
        ["Groups", ".spec.gitlab.groups"],
        ["Ready", '.status.conditions[?(@.type=="Ready")].status'],
        ["Age", ".metadata.creationTimestamp"],
        ["Message", '.status.conditions[?(@.type=="Ready")].message'],
      ],
    );
  });

  it("describes every field of spec and status", () => {
    const props = root.properties as Record<string, JsonSchema>;
    for (const part of ["spec", "status"]) {
      for (const [path, node] of nodes(props[part]!, part)) {
        assert.ok(
          typeof node.description === "string" && node.description.length > 0,
          `${path} has a description`,
        );
      }
    }
  });

  it("has CEL rules for operator/values consistency and label keys", () => {
    const specNode = (root.properties as Record<string, JsonSchema>).spec!;
    const selector = (specNode.properties as Record<string, JsonSchema>).namespaceSelector!;
    const sp = selector.properties as Record<string, JsonSchema>;
    const rules = (
      (sp.matchExpressions!.items as JsonSchema)["x-kubernetes-validations"] as { message: string }[]
    ).map((r) => r.message);
    assert.deepEqual(rules, [
      "must not be empty with In or NotIn",
      "must be absent with Exists or DoesNotExist",
    ]);
    assert.equal(sp.matchLabels!.maxProperties, 64);
  });
});

describe("label keys: the CEL/pattern regex agrees with zod", () => {
  const pieces = ["a", "Z", "0", "-", "_", ".", "/", "example.com", "x".repeat(62), "é", " ", ""];
  let seed = 7;
  const next = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  it("on 5,000 random keys", () => {
    const re = new RegExp(LABEL_KEY_PATTERN);
    for (let i = 0; i < 5000; i++) {
      let key = "";
      const n = 1 + Math.floor(next() * 6);
      for (let j = 0; j < n; j++) key += pieces[Math.floor(next() * pieces.length)];
      const cel = key.length <= 317 && re.test(key) && (key.indexOf("/") < 0 || key.indexOf("/") <= 253);
      const zod = NatsBindingPolicySpecSchema.safeParse({
        namespaceSelector: { matchLabels: { [key]: "v" } },
        gitlab: { groups: ["acme"] },
      }).success;
      assert.equal(cel, zod, JSON.stringify(key));
    }
  });
});

describe("parsePolicySpec()", () => {
  const valid = { namespaceSelector: {}, gitlab: { groups: ["acme/team-a"] } };
  it("normalises: empty selector, no ceilings; quantities in bytes", () => {
    assert.deepEqual(parsePolicySpec(valid, "p"), {
      namespaceSelector: { matchLabels: {}, matchExpressions: [] },
      groups: ["acme/team-a"],
      ceilings: {},
    });
    const c = parsePolicySpec(
      {
        ...valid,
        ceilings: { deletionPolicies: ["Retain"], limits: { payload: "1Ki", jetstream: { memory: 0 } } },
      },
      "p",
    ).ceilings;
    assert.deepEqual(c, {
      deletionPolicies: ["Retain"],
      limits: { payload: 1024, jetstream: { memory: 0 } },
    });
  });

  it("reports every problem at its path", () => {
    const cases: [unknown, RegExp][] = [
      [{ ...valid, gitlab: { groups: [] } }, /spec\.gitlab\.groups: must list at least one group/],
      [
        { ...valid, gitlab: { groups: ["acme", "acme"] } },
        /spec\.gitlab\.groups\[1\]: duplicates group "acme"/,
      ],
      [
        { ...valid, gitlab: { groups: ["a b"] } },
        /spec\.gitlab\.groups\[0\]: must be a GitLab group full path/,
      ],
      [{ ...valid, gitlab: { groups: [42] } }, /spec\.gitlab\.groups\[0\]/],
      [
        { ...valid, namespaceSelector: { matchExpressions: [{ key: "a", operator: "In" }] } },
        /matchExpressions\[0\]\.values: must not be empty with In or NotIn/,
      ],
      [
        {
          ...valid,
          namespaceSelector: { matchExpressions: [{ key: "a", operator: "Exists", values: ["x"] }] },
        },
        /matchExpressions\[0\]\.values: must be absent with Exists or DoesNotExist/,
      ],
      [
        {
          ...valid,
          namespaceSelector: { matchExpressions: [{ key: "a", operator: "Like", values: ["x"] }] },
        },
        /matchExpressions\[0\]\.operator/,
      ],
      [
        { ...valid, namespaceSelector: { matchLabels: { "-bad": "x" } } },
        /matchLabels\["-bad"\]: key must be a label key/,
      ],
      [
        { ...valid, namespaceSelector: { matchLabels: { ok: "bad value" } } },
        /matchLabels\.ok: must be a label value/,
      ],
      [
        { ...valid, ceilings: { deletionPolicies: ["Delete", "Delete"] } },
        /must not repeat a deletionPolicy/,
      ],
      [{ ...valid, ceilings: { limits: { payload: "1.5" } } }, /spec\.ceilings\.limits\.payload/],
      [{ ...valid, extra: 1 }, /unknown field/],
      [{ gitlab: { groups: ["a"] } }, /spec\.namespaceSelector: is required/],
    ];
    for (const [input, message] of cases) {
      assert.throws(
        () => parsePolicySpec(input, "NatsBindingPolicy p"),
        (err) => err instanceof PolicyValidationError && message.test(err.message),
        `${JSON.stringify(input)} -> ${message}`,
      );
    }
  });
});

describe("policyGroupsOf()", () => {
  it("reads well-formed status entries only", () => {
    assert.deepEqual(
      policyGroupsOf({
        groups: [
          { path: "acme/a", id: 10, currentPath: "acme/b" },
          { path: "acme/c", id: "11" },
          { path: "a b", id: 12 },
          { path: "acme/d", id: 0 },
          { path: "acme/e", id: 1.5 },
          null,
        ],
      }),
      [{ path: "acme/a", id: 10, currentPath: "acme/b" }],
    );
    assert.deepEqual(policyGroupsOf(undefined), []);
    assert.deepEqual(policyGroupsOf({ groups: "x" }), []);
  });
});
