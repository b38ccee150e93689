import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  SubjectTemplateError,
  parseSubjectTemplate,
  renderSubject,
  safePathTokens,
  safeToken,
  subjectTemplateProblems,
  type TemplateVars,
} from "../../src/api/v1alpha1/templates.ts";
import { TerminalError } from "../../src/errors.ts";
import { subjectProblem } from "../../src/nats/subjects.ts";

const SAFE = /^[a-z0-9_-]{1,64}$/;
const sha8 = (s: string): string => createHash("sha256").update(s, "utf8").digest("hex").slice(0, 8);

function project(overrides: Partial<TemplateVars["project"]> = {}): TemplateVars["project"] {
  return {
    id: 42,
    path: "api",
    pathWithNamespace: "acme/backend/api",
    namespaceFullPath: "acme/backend",
    ...overrides,
  };
}

const HOSTILE = [
  "a b",
  "x.*.>",
  "",
  "..",
  ".",
  "*",
  ">",
  "UPPER/Case",
  "дом",
  "дым",
  "x".repeat(300),
  "y".repeat(300),
  "a>b",
  "a*b",
  "tab\there",
  "new\nline",
  "cr\rlf",
  "nul\u0000byte",
  "del\u007f",
  " lead",
  "trail ",
  "\u00a0nbsp",
  "zero\u200bwidth",
  "{{name()}}",
  "{{project.id}}",
  "a.b",
  "a_b",
  "A_B",
  "a-b",
  "_",
  "__",
  "-",
  "emoji😀",
  "\u212a", // Kelvin sign, lower-cases to ASCII "k"
  "a_b-2f2b4a33",
  "/",
  "a//b",
  "/lead/slash/",
];

describe("safeToken", () => {
  it("keeps values that are already safe tokens", () => {
    for (const v of ["api", "a_b", "a-b", "web2", "x".repeat(64), "-", "a__b"]) assert.equal(safeToken(v), v);
  });

  it("follows the documented rule for changed values", () => {
    assert.equal(safeToken("A B"), `a_b-${sha8("A B")}`);
    assert.equal(safeToken("My.Project"), `my_project-${sha8("My.Project")}`);
    assert.equal(safeToken(""), `-${sha8("")}`);
    assert.equal(safeToken("дом"), `-${sha8("дом")}`);
    assert.equal(safeToken("__a__"), `a-${sha8("__a__")}`);
    const long = safeToken("x".repeat(300));
    assert.equal(long, `${"x".repeat(55)}-${sha8("x".repeat(300))}`);
    assert.equal(long.length, 64);
  });

  it("never lets a plain value imitate a hashed one", () => {
    const hashed = safeToken("A B");
    assert.notEqual(safeToken(hashed), hashed);
    assert.notEqual(safeToken("release-20240101"), "release-20240101");
  });

  it("is deterministic", () => {
    for (const v of HOSTILE) assert.equal(safeToken(v), safeToken(v));
  });

  it("always yields one safe token, for hostile values", () => {
    for (const v of HOSTILE) {
      const token = safeToken(v);
      assert.match(token, SAFE, JSON.stringify(v));
      assert.equal(subjectProblem(token, false), undefined, JSON.stringify(v));
    }
  });

  it("keeps distinct values apart, including ones that normalise alike", () => {
    const groups = [
      ["A B", "a_b", "a b", "A_B", "a  b", "a.b", "a\tb", "a*b", "a>b", "a/b", "a_b_", "_a_b"],
      ["", "_", "__", " ", ".", "..", "дом", "дым", "*", ">", "\n"],
      ["k", "K", "\u212a"],
      ["x".repeat(300), "x".repeat(301), `${"x".repeat(299)}y`],
    ];
    for (const group of groups) {
      const tokens = group.map(safeToken);
      assert.equal(new Set(tokens).size, group.length, `collision in ${JSON.stringify(group)}: ${tokens}`);
    }
  });

  it("has no collisions or unsafe output over many generated hostile values", () => {
    // Deterministic generator: the same values on every run.
    let seed = 0x2545f491;
    const next = (): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return seed >>> 0;
    };
    const alphabet = [
      "a",
      "A",
      "b",
      "z",
      "0",
      "9",
      "_",
      "-",
      ".",
      "*",
      ">",
      " ",
      "\t",
      "\n",
      "/",
      "д",
      "😀",
      "{",
      "}",
    ];
    const values = new Set<string>();
    while (values.size < 5000) {
      const length = next() % 12;
      let v = "";
      for (let i = 0; i < length; i++) v += alphabet[next() % alphabet.length];
      values.add(v);
    }
    const seen = new Map<string, string>();
    for (const v of values) {
      const token = safeToken(v);
      assert.match(token, SAFE, JSON.stringify(v));
      const other = seen.get(token);
      assert.equal(other, undefined, `${JSON.stringify(v)} and ${JSON.stringify(other)} both give ${token}`);
      seen.set(token, v);
    }
  });
});

describe("safePathTokens", () => {
  it("renders a GitLab path as dot-separated safe tokens", () => {
    assert.equal(safePathTokens("acme/backend/api"), "acme.backend.api");
    assert.equal(safePathTokens("UPPER/Case"), `upper-${sha8("UPPER")}.case-${sha8("Case")}`);
    assert.equal(safePathTokens("a//b"), `a.-${sha8("")}.b`);
    assert.notEqual(safePathTokens("a/b"), safePathTokens("a.b"));
  });
});

describe("parseSubjectTemplate", () => {
  it("normalises spaces inside braces", () => {
    const parsed = parseSubjectTemplate("a.{{ project.slug }}.{{ tag( env ) }}.{{account-subject( )}}");
    assert.ok("normalized" in parsed);
    assert.equal(parsed.normalized, "a.{{project.slug}}.{{tag(env)}}.{{account-subject()}}");
    assert.deepEqual([...parsed.variables], ["project.slug"]);
  });

  it("accepts every controller variable and NATS function", () => {
    const all =
      "{{project.id}}.{{project.slug}}.{{project.path}}.{{namespace.path}}.{{environment}}." +
      "{{name()}}.{{subject()}}.{{account-subject()}}.{{tag(team)}}.{{account-tag(region)}}";
    const parsed = parseSubjectTemplate(all);
    assert.ok("normalized" in parsed);
    assert.equal(parsed.normalized, all);
  });

  it("rejects anything else in braces", () => {
    for (const bad of [
      "{{project.secret}}",
      "{{project}}",
      "{{PROJECT.ID}}",
      "{{NAME()}}",
      "{{name(x)}}",
      "{{tag()}}",
      "{{tag(a b)}}",
      "{{tag(a)(b)}}",
      "{{}}",
      "{{ }}",
      "{{env}}",
      "{{process.env.HOME}}",
      "a.{{project.id",
      "a.}}",
      "{{{project.id}}}",
    ]) {
      const parsed = parseSubjectTemplate(bad);
      assert.ok("problems" in parsed && parsed.problems.length > 0, `accepted ${bad}`);
    }
  });

  // Attack (issue 9, finding 7): nats-server renders {{account-name()}} from the account JWT's name,
  // which is the raw GitLab path; a project named "x.>" or "a b" would have put a wildcard or
  // whitespace into every user's permissions, past safeToken.
  it("refuses {{account-name()}}, pointing to {{project.path}}", () => {
    for (const bad of ["a.{{account-name()}}", "{{ account-name( ) }}.>", "x{{account-name()}}y"]) {
      const parsed = parseSubjectTemplate(bad);
      assert.ok("problems" in parsed, `accepted ${bad}`);
      assert.equal(parsed.problems.length, 1);
      assert.match(parsed.problems[0]!, /account-name\( ?\).*raw GitLab path.*use \{\{project\.path\}\}/);
      assert.throws(
        () => renderSubject(bad, { project: project() }),
        (err: unknown) => err instanceof SubjectTemplateError && /\{\{project\.path\}\}/.test(err.message),
      );
      assert.match(subjectTemplateProblems(bad, { environmentAllowed: true })[0]!, /raw GitLab path/);
    }
    // The unknown-template message no longer offers it.
    const unknown = parseSubjectTemplate("{{foo}}");
    assert.ok("problems" in unknown);
    assert.doesNotMatch(unknown.problems[0]!, /account-name/);
  });

  it("checks the shape of a template with its expressions filled in", () => {
    assert.deepEqual(subjectTemplateProblems("a.{{project.path}}.>", { environmentAllowed: false }), []);
    assert.match(
      subjectTemplateProblems("a.>.{{project.id}}", { environmentAllowed: true })[0]!,
      /before its last/,
    );
    assert.match(subjectTemplateProblems("{{environment}}", { environmentAllowed: false })[0]!, /accountPer/);
  });
});

describe("renderSubject", () => {
  const vars: TemplateVars = { project: project(), environment: "production" };

  it("renders controller variables and leaves NATS functions to the server", () => {
    const cases: Array<[string, string]> = [
      ["build.status.{{project.slug}}.>", "build.status.api.>"],
      ["p.{{project.id}}.*", "p.42.*"],
      ["{{project.path}}.events", "acme.backend.api.events"],
      ["ns.{{namespace.path}}.>", "ns.acme.backend.>"],
      ["deploy.{{environment}}.{{project.slug}}", "deploy.production.api"],
      ["deploy.events.{{project.slug}}.{{ tag(env) }}", "deploy.events.api.{{tag(env)}}"],
      ["u.{{name()}}.{{account-subject()}}", "u.{{name()}}.{{account-subject()}}"],
      ["ci-{{project.id}}-x", "ci-42-x"],
    ];
    for (const [template, subject] of cases) assert.equal(renderSubject(template, vars), subject, template);
  });

  it("refuses {{environment}} when the account has no environment", () => {
    assert.throws(
      () => renderSubject("d.{{environment}}", { project: project() }),
      (err: unknown) => err instanceof SubjectTemplateError && err instanceof TerminalError,
    );
  });

  it("refuses invalid templates and invalid project ids", () => {
    assert.throws(() => renderSubject("x.{{project.secret}}", vars), SubjectTemplateError);
    assert.throws(
      () => renderSubject("x.{{project.id}}", { project: project({ id: -1 }) }),
      SubjectTemplateError,
    );
    assert.throws(
      () => renderSubject("x.{{project.id}}", { project: project({ id: 1.5 }) }),
      SubjectTemplateError,
    );
  });

  it("never lets hostile GitLab values put a wildcard, whitespace or empty token into a subject", () => {
    // No literal wildcard: any wildcard or bad token in the result would come from GitLab values.
    const template =
      "p.{{project.slug}}.e.{{environment}}.n.{{namespace.path}}.f.{{project.path}}.i.{{project.id}}.{{tag(x)}}";
    let rendered = 0;
    for (const name of HOSTILE) {
      for (const other of ["ok", HOSTILE[(HOSTILE.indexOf(name) + 1) % HOSTILE.length]!]) {
        const hostile: TemplateVars = {
          project: {
            id: 7,
            path: name,
            pathWithNamespace: `${other}/${name}`,
            namespaceFullPath: other,
          },
          environment: name,
        };
        const subject = renderSubject(template, hostile);
        assert.equal(subjectProblem(subject, false), undefined, `${JSON.stringify(name)} -> ${subject}`);
        assert.doesNotMatch(subject, /\s/);
        assert.equal(subject.split(".").filter((t) => t === "").length, 0);
        assert.ok(subject.endsWith(".{{tag(x)}}"), "a GitLab value must not add or remove NATS functions");
        assert.equal(subject.match(/\{\{/g)?.length, 1, subject);
        rendered++;
      }
    }
    assert.equal(rendered, HOSTILE.length * 2);
  });

  it("renders distinct hostile values that normalise alike to distinct subjects", () => {
    const template = "x.{{project.slug}}.{{environment}}";
    const alike = ["A B", "a_b", "a b", "A_B", "a.b", "a*b", "a>b", "a\tb", "a\nb"];
    const subjects = alike.map((v) =>
      renderSubject(template, { project: project({ path: v }), environment: v }),
    );
    assert.equal(new Set(subjects).size, alike.length, subjects.join("\n"));
    const paths = ["a/b", "a.b/c", "a/b.c", "A/b", "a/B"].map((p) =>
      renderSubject("{{project.path}}", { project: project({ pathWithNamespace: p }) }),
    );
    assert.equal(new Set(paths).size, 5, paths.join("\n"));
  });

  it("refuses, rather than truncates, a rendered subject that is too long", () => {
    const deep = Array.from({ length: 20 }, (_, i) => `${i}`.padEnd(300, "z")).join("/");
    assert.throws(
      () => renderSubject("{{project.path}}.>", { project: project({ pathWithNamespace: deep }) }),
      (err: unknown) => err instanceof SubjectTemplateError && /longer than 512/.test(err.message),
    );
  });
});
