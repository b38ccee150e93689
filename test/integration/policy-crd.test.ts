// The NatsBindingPolicy CRD from crds/natsbindingpolicy.yaml on a real kube-apiserver: Established,
// cluster-scoped; valid policies are accepted (and zod accepts them), invalid ones are rejected with
// the CEL or schema message (and zod refuses each); random label keys are accepted exactly where zod
// accepts them; the status subresource and the printer columns work.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ApiException, CustomObjectsApi } from "@kubernetes/client-node";
import { POLICY_KIND, POLICY_PLURAL, parsePolicySpec } from "../../src/api/v1alpha1/policy.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import {
  installNatsBindingPolicyCrd,
  insecureGet,
  startKubeApiserver,
  type KubeApiserver,
} from "../support/kube.ts";
import { liveProcessCount } from "../support/process.ts";

type Spec = Record<string, unknown>;
const base: Spec = { namespaceSelector: {}, gitlab: { groups: ["acme/team-a"] } };

const policy = (name: string, spec: unknown): Spec => ({
  apiVersion: `${GROUP}/${VERSION}`,
  kind: POLICY_KIND,
  metadata: { name },
  spec,
});

function zodAccepts(spec: unknown): boolean {
  try {
    parsePolicySpec(spec, "case");
    return true;
  } catch {
    return false;
  }
}

const VALID: [string, Spec][] = [
  ["permissive", base],
  [
    "team-a",
    {
      namespaceSelector: {
        matchLabels: { "kubernetes.io/metadata.name": "team-a" },
        matchExpressions: [
          { key: "tier", operator: "In", values: ["prod", "stage"] },
          { key: "example.com/frozen", operator: "DoesNotExist" },
          { key: "team", operator: "NotIn", values: ["b"] },
          { key: "owner", operator: "Exists" },
        ],
      },
      gitlab: { groups: ["acme/team-a", "acme/shared.libs"] },
      ceilings: {
        deletionPolicies: ["Retain"],
        limits: {
          connections: 100,
          subscriptions: 1000,
          payload: "1Mi",
          data: 1048576,
          jetstream: { memory: "0", disk: "10Gi", streams: 10, consumers: 100 },
        },
      },
    },
  ],
];

const INVALID: [string, Spec, RegExp][] = [
  [
    "no groups",
    { ...base, gitlab: { groups: [] } },
    /spec\.gitlab\.groups: Invalid value: 0: .*should have at least 1 items/,
  ],
  [
    "a bad group path",
    { ...base, gitlab: { groups: ["acme/team a"] } },
    /spec\.gitlab\.groups\[0\]: Invalid value: "acme\/team a": spec\.gitlab\.groups\[0\] in body should match/,
  ],
  [
    "a duplicate group",
    { ...base, gitlab: { groups: ["acme", "acme"] } },
    /spec\.gitlab\.groups\[1\]: Duplicate value: "acme"/,
  ],
  ["no namespaceSelector", { gitlab: { groups: ["acme"] } }, /spec\.namespaceSelector: Required value/],
  [
    "In without values",
    { ...base, namespaceSelector: { matchExpressions: [{ key: "tier", operator: "In" }] } },
    /spec\.namespaceSelector\.matchExpressions\[0\]\.values: Required value: must not be empty with In or NotIn/,
  ],
  [
    "NotIn with empty values",
    { ...base, namespaceSelector: { matchExpressions: [{ key: "tier", operator: "NotIn", values: [] }] } },
    /spec\.namespaceSelector\.matchExpressions\[0\]\.values: Required value: must not be empty with In or NotIn/,
  ],
  [
    "Exists with values",
    {
      ...base,
      namespaceSelector: { matchExpressions: [{ key: "tier", operator: "Exists", values: ["x"] }] },
    },
    /spec\.namespaceSelector\.matchExpressions\[0\]\.values: Forbidden: must be absent with Exists or DoesNotExist/,
  ],
  [
    "an unknown operator",
    { ...base, namespaceSelector: { matchExpressions: [{ key: "tier", operator: "Like", values: ["x"] }] } },
    /spec\.namespaceSelector\.matchExpressions\[0\]\.operator: Unsupported value: "Like"/,
  ],
  [
    "a bad label key",
    { ...base, namespaceSelector: { matchLabels: { "-team": "a" } } },
    /spec\.namespaceSelector\.matchLabels: Invalid value: .*every key must be a label key/,
  ],
  [
    "a bad label value",
    { ...base, namespaceSelector: { matchLabels: { team: "a b" } } },
    /spec\.namespaceSelector\.matchLabels\.team: Invalid value: "a b"/,
  ],
  [
    "an unknown deletionPolicy",
    { ...base, ceilings: { deletionPolicies: ["Purge"] } },
    /spec\.ceilings\.deletionPolicies\[0\]: Unsupported value: "Purge"/,
  ],
  [
    "a negative maximum",
    { ...base, ceilings: { limits: { connections: -1 } } },
    /spec\.ceilings\.limits\.connections: Invalid value: -1: .*greater than or equal to 0/,
  ],
  [
    "a fractional byte maximum",
    { ...base, ceilings: { limits: { payload: "1.5" } } },
    /spec\.ceilings\.limits\.payload: Invalid value: .*must be a whole number of bytes/,
  ],
];

describe("crds/natsbindingpolicy.yaml on a real kube-apiserver", { timeout: 120_000 }, () => {
  let kube: KubeApiserver | undefined;
  let objects: CustomObjectsApi;
  const coordinates = { group: GROUP, version: VERSION, plural: POLICY_PLURAL };
  const create = (body: Spec): Promise<Spec> =>
    objects.createClusterCustomObject({ ...coordinates, body, fieldValidation: "Strict" }) as Promise<Spec>;

  async function rejection(body: Spec): Promise<string> {
    try {
      await create(body);
    } catch (err) {
      assert.ok(err instanceof ApiException, String(err));
      const status = (typeof err.body === "string" ? JSON.parse(err.body) : err.body) as { message: string };
      assert.equal(err.code, 422, status.message);
      return status.message;
    }
    assert.fail(`the apiserver accepted ${JSON.stringify(body)}`);
  }

  before(async () => {
    kube = await startKubeApiserver();
    const kc = kube.kubeConfig();
    objects = kc.makeApiClient(CustomObjectsApi);
    await installNatsBindingPolicyCrd(kc);
  });

  after(async () => {
    await kube?.stop();
    assert.equal(liveProcessCount(), 0);
  });

  it("accepts valid policies unchanged (cluster-scoped), and zod accepts them", async () => {
    for (const [name, spec] of VALID) {
      assert.ok(zodAccepts(spec), `zod accepts ${name}`);
      const created = await create(policy(name, spec));
      assert.deepEqual(created.spec, spec, `${name} stored as sent`);
      assert.equal((created.metadata as Spec).namespace, undefined, "cluster-scoped");
    }
  });

  it(`rejects ${INVALID.length} invalid policies with the CEL or schema message, and zod refuses each`, async () => {
    for (const [i, [what, spec, message]] of INVALID.entries()) {
      assert.equal(zodAccepts(spec), false, `zod accepts ${what}`);
      assert.match(await rejection(policy(`invalid-${i}`, spec)), message, what);
    }
  });

  it("label keys: the apiserver accepts exactly the keys zod accepts (200 random keys)", async () => {
    const pieces = ["a", "Z", "0", "-", "_", ".", "/", "example.com", "x".repeat(62), " "];
    let seed = 11;
    const next = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    let agreed = 0;
    for (let i = 0; i < 200; i++) {
      let key = "";
      const n = 1 + Math.floor(next() * 5);
      for (let j = 0; j < n; j++) key += pieces[Math.floor(next() * pieces.length)];
      const spec = { ...base, namespaceSelector: { matchLabels: { [key]: "v" } } };
      const zod = zodAccepts(spec);
      let apiserver: boolean;
      try {
        await create(policy(`key-${i}`, spec));
        apiserver = true;
      } catch (err) {
        assert.ok(err instanceof ApiException && err.code === 422, String(err));
        apiserver = false;
      }
      assert.equal(apiserver, zod, JSON.stringify(key));
      agreed += 1;
    }
    assert.equal(agreed, 200);
  });

  it("has a status subresource and prints Groups, Ready and Age", async () => {
    const name = "status-check";
    const created = await create(policy(name, base));
    await objects.replaceClusterCustomObjectStatus({
      ...coordinates,
      name,
      body: {
        ...created,
        status: {
          observedGeneration: 1,
          groups: [{ path: "acme/team-a", id: 42, currentPath: "acme/team-a" }],
          conditions: [
            {
              type: "Ready",
              status: "True",
              reason: "Resolved",
              message: "1 group(s) granted",
              observedGeneration: 1,
              lastTransitionTime: "2026-01-01T00:00:00Z",
            },
          ],
        },
        spec: { ...base, gitlab: { groups: ["changed/through-status"] } },
      },
    });
    const stored = (await objects.getClusterCustomObject({ ...coordinates, name })) as Spec;
    assert.deepEqual(stored.spec, base, "a status write does not change the spec");
    assert.deepEqual((stored.status as { groups: unknown }).groups, [
      { path: "acme/team-a", id: 42, currentPath: "acme/team-a" },
    ]);
    const table = await insecureGet(
      `${kube!.server}/apis/${GROUP}/${VERSION}/${POLICY_PLURAL}/${name}`,
      kube!.token,
      {
        headers: { accept: "application/json;as=Table;v=v1;g=meta.k8s.io" },
      },
    );
    assert.equal(table.status, 200, table.body);
    const parsed = JSON.parse(table.body) as {
      columnDefinitions: { name: string }[];
      rows: { cells: unknown[] }[];
    };
    assert.deepEqual(
      parsed.columnDefinitions.map((c) => c.name),
      ["Name", "Groups", "Ready", "Age", "Message"],
    );
    assert.equal(parsed.rows[0]!.cells[0], name);
    assert.match(String(parsed.rows[0]!.cells[1]), /acme\/team-a/);
    assert.equal(parsed.rows[0]!.cells[2], "True");
  });
});
