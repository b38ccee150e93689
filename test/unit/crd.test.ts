// The NatsBinding CRD: the committed crds/natsbinding.yaml is what natsBindingCrd() builds, the schema
// is structural, and the CEL regexes agree with zod's subject and environment rules (RE2 regexes run
// here as JS regexes: the constructs they use mean the same in both).
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, it } from "node:test";
import { parse } from "yaml";
import {
  CRD_NAME,
  CrdSchemaError,
  DURATION_PATTERN,
  ENVIRONMENT_VARIABLE_RE2,
  natsBindingCrd,
  QUANTITY_PATTERN,
  SUBJECT_SHAPE_RE2,
  SUBJECT_TEMPLATE_RE2,
  toStructuralSchema,
  type JsonSchema,
} from "../../src/api/v1alpha1/crd.ts";
import {
  MAX_RESPONSE_TTL_MS,
  MAX_SUBJECT_TEMPLATE_LENGTH,
  NatsBindingSpecSchema,
} from "../../src/api/v1alpha1/schema.ts";
import { subjectTemplateProblems } from "../../src/api/v1alpha1/templates.ts";
import { hasControlCharacter } from "../../src/nats/subjects.ts";
import { parseByteQuantity, parseDuration } from "../../src/units.ts";
import { CRD_FILE, CRD_HEADER, renderCrdYaml } from "../../scripts/gen-crd.ts";

const crd = natsBindingCrd();
const version = (crd.spec as { versions: JsonSchema[] }).versions[0]!;
const root = (version.schema as { openAPIV3Schema: JsonSchema }).openAPIV3Schema;
const properties = (node: JsonSchema): Record<string, JsonSchema> =>
  (node.properties ?? {}) as Record<string, JsonSchema>;
const spec = properties(root).spec!;

/** An RE2 regex as a JS regex: `\x{HHHH}` is `\u{HHHH}` there; everything else used means the same. */
function re2(source: string): RegExp {
  assert.doesNotMatch(source, /\(\?[P<]|\\[zAQE]/, "RE2-only syntax the translation does not cover");
  return new RegExp(source.replace(/\\x\{([0-9a-fA-F]+)\}/g, "\\u{$1}"), "u");
}

/** Every schema node with its path ("spec.roles[].name"). */
function* nodes(node: JsonSchema, path: string): Generator<[string, JsonSchema]> {
  yield [path, node];
  for (const [name, child] of Object.entries(properties(node))) yield* nodes(child, `${path}.${name}`);
  if (node.items) yield* nodes(node.items as JsonSchema, `${path}[]`);
}

const rulesOf = (node: JsonSchema): { rule: string; message: string }[] =>
  (node["x-kubernetes-validations"] ?? []) as { rule: string; message: string }[];

/** Deterministic pseudo-random numbers (mulberry32), so a failure reproduces. */
function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function strings(pieces: readonly string[], count: number, maxPieces: number, seed: number): string[] {
  const next = random(seed);
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    let s = "";
    const n = 1 + Math.floor(next() * maxPieces);
    for (let j = 0; j < n; j++) s += pieces[Math.floor(next() * pieces.length)];
    out.push(s);
  }
  return out;
}

describe("crds/natsbinding.yaml", () => {
  it("is exactly what scripts/gen-crd.ts renders from natsBindingCrd() (run make crds)", async () => {
    const text = await readFile(CRD_FILE, "utf8");
    assert.ok(text.startsWith(`${CRD_HEADER}\n`), "starts with the generated-file header");
    assert.deepEqual(parse(text), crd, "the committed CRD differs from natsBindingCrd(): run make crds");
    // kubectl reads YAML 1.1 (sigs.k8s.io/yaml): it must see the same document.
    assert.deepEqual(parse(text, { version: "1.1" }), crd);
    assert.equal(text, await renderCrdYaml(), "formatting differs from the generator's: run make crds");
  });

  it("is listed by crds/kustomization.yaml", async () => {
    const kustomization = parse(
      await readFile(new URL("../../crds/kustomization.yaml", import.meta.url), "utf8"),
    );
    assert.deepEqual(kustomization.resources, ["natsbinding.yaml", "natsbindingpolicy.yaml"]);
  });
});

describe("natsBindingCrd()", () => {
  it("names natsbindings.natsbind.io v1alpha1, namespaced, short name nb, with a status subresource", () => {
    assert.equal((crd.metadata as JsonSchema).name, CRD_NAME);
    assert.equal(CRD_NAME, "natsbindings.natsbind.io");
    const s = crd.spec as JsonSchema;
    assert.equal(s.group, "natsbind.io");
    assert.equal(s.scope, "Namespaced");
    assert.deepEqual(s.names, {
      kind: "NatsBinding",
      listKind: "NatsBindingList",
      plural: "natsbindings",
      singular: "natsbinding",
      shortNames: ["nb"],
      categories: ["natsbind"],
    });
    assert.equal(version.name, "v1alpha1");
    assert.equal(version.served, true);
    assert.equal(version.storage, true);
    assert.deepEqual(version.subresources, { status: {} });
    const columns = version.additionalPrinterColumns as JsonSchema[];
    assert.deepEqual(
      columns.map((c) => [c.name, c.jsonPath]),
      [
        ["Ready", '.status.conditions[?(@.type=="Ready")].status'],
        ["Accounts", ".status.counts.accounts"],
        ["Age", ".metadata.creationTimestamp"],
        ["Message", '.status.conditions[?(@.type=="Ready")].message'],
      ],
    );
  });

  it("is a structural schema: every node typed, no closed objects, unions only as int-or-string", () => {
    for (const [path, node] of nodes(root, "")) {
      if (node["x-kubernetes-int-or-string"] === true) {
        assert.equal(node.type, undefined, path);
        assert.deepEqual(node.anyOf, [{ type: "integer" }, { type: "string" }], path);
      } else {
        assert.ok(["object", "array", "string", "integer", "boolean"].includes(node.type as string), path);
        assert.equal(node.anyOf, undefined, path);
      }
      for (const key of ["additionalProperties", "$schema", "oneOf", "allOf", "not", "exclusiveMinimum"]) {
        assert.equal(node[key], undefined, `${path}: ${key}`);
      }
      if (node.type === "array") assert.ok(node.items, `${path}: array without items`);
    }
  });

  it("describes every field (kubectl explain), metadata aside", () => {
    const undescribed = [...nodes(root, "")]
      .filter(([path, node]) => path !== ".metadata" && typeof node.description !== "string")
      .map(([path]) => path);
    assert.deepEqual(undescribed, []);
  });

  it("has zod's defaults", () => {
    const defaults = Object.fromEntries(
      Object.entries(properties(spec))
        .filter(([, node]) => node.default !== undefined)
        .map(([name, node]) => [name, node.default]),
    );
    const { gitlab: _gitlab, ...zodDefaults } = NatsBindingSpecSchema.parse({ gitlab: { group: "acme" } });
    assert.deepEqual(defaults, zodDefaults);
    assert.deepEqual(defaults, { accountPer: "project", roles: [], limits: {}, deletionPolicy: "Retain" });
  });

  it("roles[].ci: zod's enums and defaults, sets where zod refuses duplicates, the environment-name rule", () => {
    const role = properties(spec).roles!.items as JsonSchema;
    const ci = properties(role).ci!;
    const fields = properties(ci);
    assert.deepEqual(Object.keys(fields).sort(), [
      "allowForkMergeRequests",
      "environments",
      "refTypes",
      "refs",
    ]);
    assert.equal(ci.required, undefined, "every ci field is optional");
    const parsed = NatsBindingSpecSchema.parse({ gitlab: { group: "acme" }, roles: [{ name: "r", ci: {} }] });
    const defaults = Object.fromEntries(
      Object.entries(fields)
        .filter(([, node]) => node.default !== undefined)
        .map(([name, node]) => [name, node.default]),
    );
    assert.deepEqual(defaults, parsed.roles[0]!.ci);
    assert.deepEqual(defaults, { refs: "protected", allowForkMergeRequests: false });
    assert.deepEqual(fields.refs!.enum, ["protected", "any"]);
    assert.deepEqual((fields.refTypes!.items as JsonSchema).enum, ["branch", "tag"]);
    for (const list of ["refTypes", "environments"]) {
      assert.equal(
        fields[list]!["x-kubernetes-list-type"],
        "set",
        `${list}: the apiserver refuses duplicates`,
      );
      assert.equal(fields[list]!.minItems, 1, list);
    }
    assert.equal(fields.refTypes!.maxItems, 2);
    const environmentNames = properties(properties(spec).environments!).names!;
    assert.equal(environmentNames["x-kubernetes-list-type"], "set");
    assert.deepEqual(
      fields.environments!.items,
      environmentNames.items,
      "the same name rules as environments.names",
    );
    assert.equal(fields.environments!.maxItems, environmentNames.maxItems);
  });

  it("refuses ci.environments outside environments.names with a CEL rule guarded like zod's", () => {
    const rule = rulesOf(spec).find((r) => /ci\.environments/.test(r.message));
    assert.ok(rule, "a spec-level rule about ci.environments");
    assert.match(rule.rule, /^!\(has\(self\.accountPer\) && self\.accountPer == 'environment'\) \|\| /);
    assert.match(rule.rule, /!has\(self\.environments\.names\)/, "fromGitLab: not checked");
    assert.match(rule.rule, /r\.ci\.environments\.all\(e, e in self\.environments\.names\)/);
  });

  it("bounds every list and string a CEL rule walks (the apiserver's cost estimate needs them)", () => {
    const subjectItems = [...nodes(spec, "spec")].filter(([path]) => /\.(allow|deny)\[\]$/.test(path));
    assert.equal(subjectItems.length, 4);
    for (const [path, node] of subjectItems) {
      assert.equal(node.maxLength, MAX_SUBJECT_TEMPLATE_LENGTH, path);
      assert.deepEqual(
        rulesOf(node).map((r) => r.rule),
        [`self.matches(r'${SUBJECT_TEMPLATE_RE2}')`, `self.matches(r'${SUBJECT_SHAPE_RE2}')`],
        path,
      );
    }
    for (const [path, node] of nodes(spec, "spec")) {
      if (node.type === "array") assert.equal(typeof node.maxItems, "number", `${path} has no maxItems`);
      if (node.type === "string" && !node.enum) assert.equal(typeof node.maxLength, "number", path);
    }
  });

  it("gives every CEL rule a one-line message and no rule a quote that breaks its raw string", () => {
    let count = 0;
    for (const [path, node] of nodes(root, "")) {
      for (const { rule, message } of rulesOf(node)) {
        count++;
        assert.ok(message.length > 10 && !/\n/.test(message), `${path}: ${message}`);
        for (const raw of rule.matchAll(/r'([^']*)'/g)) assert.doesNotThrow(() => re2(raw[1]!), path);
      }
    }
    assert.ok(count >= 12, `only ${count} rules`);
  });
});

describe("toStructuralSchema()", () => {
  it("turns an integer-or-string union into x-kubernetes-int-or-string with both branches' bounds", () => {
    const out = toStructuralSchema({
      description: "id or path",
      anyOf: [
        { type: "integer", minimum: 0, exclusiveMinimum: true, maximum: 10 },
        { type: "string", maxLength: 5, pattern: "^a" },
      ],
    });
    assert.deepEqual(out, {
      description: "id or path",
      "x-kubernetes-int-or-string": true,
      anyOf: [{ type: "integer" }, { type: "string" }],
      minimum: 1,
      maximum: 10,
      maxLength: 5,
      pattern: "^a",
    });
  });

  it("drops additionalProperties: false and $schema, keeps defaults", () => {
    const out = toStructuralSchema({
      $schema: "x",
      type: "object",
      additionalProperties: false,
      properties: { a: { type: "string", default: "b" } },
    });
    assert.deepEqual(out, { type: "object", properties: { a: { type: "string", default: "b" } } });
  });

  it("keeps a map (zod record: additionalProperties with a schema, no properties)", () => {
    assert.deepEqual(
      toStructuralSchema({
        type: "object",
        additionalProperties: { type: "string", maxLength: 3 },
        propertyNames: { type: "string" },
      }),
      { type: "object", additionalProperties: { type: "string", maxLength: 3 } },
    );
  });

  it("refuses what a structural schema cannot say, naming the path", () => {
    const cases: [unknown, RegExp][] = [
      [{ type: "object", properties: { a: { description: "untyped" } } }, /spec\.a: every node needs a type/],
      [{ type: "object", properties: { a: { oneOf: [] } } }, /spec\.a: "oneOf"/],
      [{ anyOf: [{ type: "string" }, { type: "boolean" }] }, /one integer and one string/],
      [
        { type: "object", properties: { a: { type: "string" } }, additionalProperties: { type: "string" } },
        /closed objects/,
      ],
      [
        { type: "object", additionalProperties: { type: "string" }, propertyNames: { type: "integer" } },
        /propertyNames/,
      ],
      [{ type: "string", format: "email" }, /"format" has no structural translation/],
      [{ type: "array" }, /array without items/],
    ];
    for (const [input, message] of cases) {
      assert.throws(
        () => toStructuralSchema(input),
        (err) => err instanceof CrdSchemaError && message.test(err.message),
      );
    }
  });
});

describe("CEL subject rules agree with zod", () => {
  const template = re2(SUBJECT_TEMPLATE_RE2);
  const shape = re2(SUBJECT_SHAPE_RE2);
  const cel = (s: string): boolean => template.test(s) && shape.test(s);
  const zod = (s: string): boolean =>
    s.length >= 1 &&
    s.length <= MAX_SUBJECT_TEMPLATE_LENGTH &&
    subjectTemplateProblems(s, { environmentAllowed: true }).length === 0;
  /** The documented difference: zod trims any whitespace inside {{ }}, the CEL rule only spaces. */
  const otherWhitespaceInBraces = (s: string): boolean => /\{\{[^{}]*[^\S ][^{}]*\}\}/u.test(s);

  it("on hand-picked subjects", () => {
    const valid = [
      "a",
      "*",
      ">",
      "a.*.>",
      "_INBOX.>",
      "build.status.{{project.slug}}.>",
      "deploy.events.{{project.slug}}.{{tag(env)}}",
      "{{ project.id }}.{{namespace.path}}.{{project.path}}.{{environment}}",
      "{{name()}}.{{ subject( ) }}.{{account-subject()}}.{{account-tag(a.b-c_d)}}",
      "x{{project.id}}y",
      "a{b.c}d",
      "{}{}.}{",
      "a}{{project.id}}",
      "{{project.id}}}",
      "{{project.id}}{a",
      "{{tag(..)}}",
      "é.ü",
    ];
    const invalid = [
      "",
      "a..b",
      ".a",
      "a.",
      "a.>.b",
      "a*",
      "a b",
      "a\u00a0b",
      "a\u0001",
      "{{project.name}}",
      "{{ foo }}",
      "{{tag()}}",
      "{{tag(a b)}}",
      "{{name(x)}}",
      "{{account-name()}}",
      "a.{{ account-name( ) }}.>",
      "{{project.id}",
      "a}}",
      "{{",
      "{{{project.id}}",
      "{{project.id}}}}",
      "{{project.id}}*",
      "*{{project.id}}",
    ];
    for (const s of valid) {
      assert.equal(zod(s), true, `zod: ${JSON.stringify(s)}`);
      assert.equal(cel(s), true, `CEL: ${JSON.stringify(s)}`);
    }
    for (const s of invalid) {
      assert.equal(zod(s), false, `zod: ${JSON.stringify(s)}`);
      assert.equal(cel(s), false, `CEL: ${JSON.stringify(s)}`);
    }
    assert.equal(zod("{{\tproject.id}}"), true);
    assert.equal(cel("{{\tproject.id}}"), false, "documented difference");
  });

  it("on 30,000 random subjects: CEL never accepts what zod refuses, and refuses only the known difference", () => {
    const pieces = [
      ...["a", "b", "_", "-", "0", "é", ".", ".", "*", ">", "{", "}", "{{", "}}", "(", ")", " ", "\t"],
      ...["\u00a0", "\u0001", "\u007f", "\u2028", "\ufeff", "project.id", "tag(", "name()", "environment"],
      ...[
        "{{project.id}}",
        "{{ project.slug }}",
        "{{project.path}}",
        "{{namespace.path}}",
        "{{environment}}",
      ],
      ...["{{name()}}", "{{ subject( ) }}", "{{account-name()}}", "{{account-subject()}}", "{{tag(env)}}"],
      ...[
        "{{account-tag( a.b )}}",
        "{{tag()}}",
        "{{tag(a b)}}",
        "{{name(x)}}",
        "{{project.name}}",
        "{{foo}}",
      ],
      ...["{{\tproject.id}}", "{{ environment\u00a0}}", "{{project.id}", "{{tag(.)}}", "{{tag(a*)}}"],
    ];
    let bothValid = 0;
    let bothInvalid = 0;
    for (const s of strings(pieces, 30_000, 7, 20240917)) {
      const z = zod(s);
      const c = cel(s);
      if (c) assert.ok(z, `CEL accepts what zod refuses: ${JSON.stringify(s)}`);
      if (z && !c)
        assert.ok(otherWhitespaceInBraces(s), `CEL refuses what zod accepts: ${JSON.stringify(s)}`);
      if (z && c) bothValid++;
      if (!z && !c) bothInvalid++;
    }
    assert.ok(bothValid > 1_000 && bothInvalid > 1_000, `${bothValid} valid, ${bothInvalid} invalid`);
  });

  it("finds {{environment}} exactly where zod does (spaces inside the braces)", () => {
    const environment = re2(ENVIRONMENT_VARIABLE_RE2);
    for (const s of ["a.{{environment}}", "{{ environment }}.b", "x{{environment}}y"]) {
      assert.ok(environment.test(s), s);
      assert.ok(subjectTemplateProblems(s, { environmentAllowed: false }).some((p) => /environment/.test(p)));
    }
    for (const s of ["environment.a", "{{project.id}}.environment", "{{environmentx}}"]) {
      assert.ok(!environment.test(s), s);
    }
  });
});

describe("CEL environment-name rule and patterns agree with zod", () => {
  it("environment names: no control characters, no edge whitespace (JS trim)", () => {
    const names = spec.properties as Record<string, JsonSchema>;
    const items = properties(names.environments!).names!.items as JsonSchema;
    const source = /^self\.matches\(r'(.*)'\)$/.exec(rulesOf(items)[0]!.rule)![1]!;
    const cel = re2(source);
    const pieces = ["a", "b/c", "-", " ", "\t", "\n", "\u00a0", "\u2028", "\ufeff", "\u0085", "\u0001", "é"];
    for (const s of strings(pieces, 5_000, 5, 7)) {
      const zod = !hasControlCharacter(s) && s.trim() === s;
      assert.equal(cel.test(s), zod, JSON.stringify(s));
    }
  });

  it("byte quantity strings: the pattern accepts what parseByteQuantity reads", () => {
    const pattern = new RegExp(QUANTITY_PATTERN);
    const pieces = ["0", "1", "9", ".", "5", "Ki", "Mi", "Gi", "Ei", "k", "M", "E", "m", "K", "e3", " ", "-"];
    for (const s of strings(pieces, 5_000, 5, 11)) {
      const parsed = parseByteQuantity(s);
      // zod also refuses fractions of bytes and values past 2^53; the CEL quantity rule covers those.
      const zodFormatOk = "value" in parsed || /whole number|too large/.test(parsed.problem);
      assert.equal(pattern.test(s), zodFormatOk, JSON.stringify(s));
    }
  });

  it("durations: the pattern accepts what parseDuration reads (the 24h bound is a CEL rule)", () => {
    const pattern = new RegExp(DURATION_PATTERN);
    const pieces = ["0", "1", "5", "ms", "s", "m", "h", "us", ".", " ", "d"];
    for (const s of strings(pieces, 5_000, 5, 13)) {
      const parsed = parseDuration(s, Number.MAX_SAFE_INTEGER);
      assert.equal(pattern.test(s), "value" in parsed, JSON.stringify(s));
    }
    assert.equal(MAX_RESPONSE_TTL_MS, 24 * 3_600_000, "the CEL rule says 24h");
  });
});
