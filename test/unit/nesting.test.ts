import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { isMap, isPair, isSeq, parse as parseYaml, parseAllDocuments } from "yaml";
import { MAX_NESTING_DEPTH, jsonNestingProblem, yamlNestingProblem } from "../../src/nesting.ts";
import { REPO_ROOT } from "../support/process.ts";

/** Nesting depth of what the yaml parser built. */
function depthOf(node: unknown): number {
  if (isPair(node)) return Math.max(depthOf(node.key), depthOf(node.value));
  if (isMap(node) || isSeq(node)) return 1 + Math.max(0, ...node.items.map(depthOf));
  return 0;
}

/** Random documents for the soundness test (NESTING_ROUNDS=200000 for a longer run). */
const ROUNDS = Number(process.env.NESTING_ROUNDS ?? 4000);
const tooDeep = (line: number): string =>
  `nests deeper than ${MAX_NESTING_DEPTH} levels at line ${line}; not parsed`;

describe("yamlNestingProblem", () => {
  // Issue 9, finding 9: each of these made the yaml parser spend seconds and hundreds of MiB (or
  // overflow its stack) before it gave up; the pre-scan refuses them in one linear pass.
  it("refuses the attack inputs: flow, block and mixed nesting, valid or not", () => {
    const head = "apiVersion: natsbind.io/v1alpha1\nkind: NatsBinding\nmetadata:\n  name: b\n";
    const attacks: Array<[string, string, number]> = [
      ["240 KB of [", "[".repeat(240 * 1024), 1],
      ["240 KB of {", "{".repeat(240 * 1024), 1],
      ["spaced flow", `${head}spec: ${"[ ".repeat(100_000)}\n`, 5],
      ["flow maps and sequences", `${head}spec: ${"{a: [".repeat(40_000)}\n`, 5],
      ["compact block sequences", `${head}spec:\n  ${"- ".repeat(120 * 1024)}1\n`, 6],
      ["block sequence after a key", `${head}spec: ${"- ".repeat(120 * 1024)}1\n`, 5],
      ["complex keys", `${"? ".repeat(120 * 1024)}1\n`, 1],
      ["chained keys", `${"a: ".repeat(80 * 1024)}1\n`, 1],
      [
        "indentation staircase",
        Array.from({ length: 100 }, (_, i) => `${" ".repeat(i)}k${i}:`).join("\n"),
        64,
      ],
      ["flow inside a block sequence", `- ${"[".repeat(100)}\n`, 1],
    ];
    for (const [what, text, line] of attacks) {
      assert.equal(yamlNestingProblem(text), tooDeep(line), what);
    }
  });

  it("counts up to the limit exactly: a flow collection is two levels, a block one", () => {
    // The document + 31 flow collections x 2 = 63; one more is 65. The document + 62 sequences + the
    // scalar in the innermost = 64.
    assert.equal(yamlNestingProblem(`${"[".repeat(31)}${"]".repeat(31)}`), undefined);
    assert.equal(yamlNestingProblem(`${"[".repeat(32)}${"]".repeat(32)}`), tooDeep(1));
    assert.equal(yamlNestingProblem(`${"- ".repeat(62)}x`), undefined);
    assert.equal(yamlNestingProblem(`${"- ".repeat(63)}x`), tooDeep(1));
    assert.equal(yamlNestingProblem("[".repeat(5), 12), undefined);
    assert.equal(yamlNestingProblem("[".repeat(6), 12), "nests deeper than 12 levels at line 1; not parsed");
  });

  it("does not count brackets in quoted scalars, comments, block scalars or plain text", () => {
    const brackets = "[".repeat(200);
    const fine = [
      `a: "${brackets}"`,
      `a: '${brackets}'`,
      `a: 'it''s ${brackets}'`,
      `a: "esc \\" ${brackets}"`,
      `a: "multi\n  line ${brackets}"`,
      `a: 1 # ${brackets}`,
      `# ${brackets}`,
      `a: |\n  ${brackets}\n  more\nb: 1`,
      `- >-\n ${brackets}\n`,
      `- - |\n   ${brackets}\n`,
      `x:\n  - a: |\n      ${brackets}\n  - b`,
      `a: x${brackets}`,
      "allow:\n  - build.{{project.slug}}.{{ tag(env) }}.>\n  - [\"{{project.id}}\", '{{name()}}']",
    ];
    for (const text of fine)
      assert.equal(yamlNestingProblem(text), undefined, JSON.stringify(text.slice(0, 30)));
    // The same brackets outside the block scalar (content less indented than its parent) count.
    assert.equal(yamlNestingProblem(`- - |\n  ${brackets}\n`), tooDeep(2));
  });

  it("is not fooled by a quote or block scalar header inside plain text", () => {
    const deep = `${"- ".repeat(200)}1\n`;
    for (const hide of ['a: x "\n', "a: it's\n", "a: x |\n", "a: b # '\n", `a: "done" '\n`]) {
      assert.equal(yamlNestingProblem(`${hide}${deep}`), tooDeep(2), JSON.stringify(hide));
    }
    assert.equal(yamlNestingProblem(`{a:"${"[".repeat(100)}`), tooDeep(1));
    assert.equal(yamlNestingProblem(`[a"${"[".repeat(100)}`), tooDeep(1));
  });

  // Error recovery included: the parser nests "[a: [b: ..." and "- " inside flow before it complains.
  it(`never reports two levels less than the parser builds (${ROUNDS} random documents)`, () => {
    const pieces = [
      "- ",
      "? ",
      ": ",
      "a",
      "b:",
      "[",
      "]",
      "{",
      "}",
      ", ",
      "\n",
      "  ",
      "'",
      '"',
      "#",
      "|",
      ">-",
    ];
    pieces.push("--- ", "&x ", "*x", "\t", "!t ");
    let seed = Number(process.env.NESTING_SEED ?? 7);
    const next = (): number => {
      // mulberry32
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    let checked = 0;
    let deepest = 0;
    for (let round = 0; round < ROUNDS; round++) {
      let text = "";
      for (let n = 1 + Math.floor(next() * 40); n > 0; n--)
        text += pieces[Math.floor(next() * pieces.length)];
      const docs = parseAllDocuments(text);
      if (!Array.isArray(docs)) continue;
      for (const doc of docs) {
        const depth = depthOf(doc.contents);
        deepest = Math.max(deepest, depth);
        checked++;
        // Within two levels: garbage the parser recovers from can nest one or two more.
        if (depth > 6 + 2) assert.notEqual(yamlNestingProblem(text, 6), undefined, JSON.stringify(text));
      }
    }
    assert.ok(checked > ROUNDS / 2 && deepest > 8, `${checked} documents, deepest ${deepest}`);
  });

  // The random test's worst cases (found with NESTING_ROUNDS=100000, shrunk): what the quick pass
  // misreads, the lexer pass catches, and the slack does not grow with repetition.
  it("does not let a misleading construct hide nesting when repeated", () => {
    const units = ['t - ": : :\n', "? '\n[|[- b:\t'':{-}'\n", '-: "": ? :\n[a[>[\n', "b: : : --\n[:\n"];
    for (const unit of units) {
      const text = unit.repeat(300);
      const depth = Math.max(0, ...parseAllDocuments(text).map((doc) => depthOf(doc.contents)));
      if (yamlNestingProblem(text) === undefined)
        assert.ok(depth <= MAX_NESTING_DEPTH + 2, JSON.stringify(unit));
    }
  });

  it("accepts every YAML file natsbind ships and the configs natsbind init writes", async () => {
    for (const file of [
      "deploy/samples/natsbinding.yaml",
      "deploy/base/configmap.yaml",
      "deploy/base/deployment.yaml",
    ]) {
      const text = await readFile(join(REPO_ROOT, file), "utf8");
      assert.equal(yamlNestingProblem(text), undefined, file);
      // And the ConfigMap's embedded natsbind.yaml.
      const embedded = (parseYaml(text) as { data?: Record<string, string> }).data?.["natsbind.yaml"];
      if (embedded) assert.equal(yamlNestingProblem(embedded), undefined, `${file} natsbind.yaml`);
    }
  });
});

describe("jsonNestingProblem", () => {
  it("refuses deep JSON and ignores brackets inside strings", () => {
    assert.equal(jsonNestingProblem("[".repeat(1024 * 1024)), tooDeep(1));
    assert.equal(jsonNestingProblem(`{"a":\n${'{"b":'.repeat(100)}1${"}".repeat(100)}}`), tooDeep(2));
    assert.equal(jsonNestingProblem(`{"a":"${"[".repeat(1000)}","b":"\\"[[","c":[[1]]}`), undefined);
    assert.equal(jsonNestingProblem(`${"[".repeat(64)}${"]".repeat(64)}`), undefined);
    assert.equal(jsonNestingProblem(`${"[".repeat(65)}${"]".repeat(65)}`), tooDeep(1));
  });
});
