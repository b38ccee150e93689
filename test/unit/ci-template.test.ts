// ci/natsbind.gitlab-ci.yml, the file CI users include: it parses the same as YAML 1.1 (GitLab's
// Ruby parser) and 1.2, its hidden jobs ask GitLab for an ID token with the configured audience,
// and the exchange job calls the documented endpoint with the documented headers. What the scripts
// do when run is test/integration/ci-template.test.ts.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, it } from "node:test";
import { parse } from "yaml";
import { parseBinding } from "../../src/api/v1alpha1/schema.ts";

const TEMPLATE = new URL("../../ci/natsbind.gitlab-ci.yml", import.meta.url);
const GUIDE = new URL("../../docs/ci-credentials.md", import.meta.url);

interface Job {
  id_tokens?: Record<string, { aud: unknown }>;
  variables?: Record<string, unknown>;
  before_script?: string[];
  after_script?: string[];
  script?: unknown;
}

describe("ci/natsbind.gitlab-ci.yml", async () => {
  const text = await readFile(TEMPLATE, "utf8");
  const template = parse(text, { version: "1.1" }) as Record<string, unknown>;

  it("reads the same as YAML 1.1 and 1.2, and holds only hidden jobs and pipeline variables", () => {
    assert.deepEqual(parse(text, { version: "1.2" }), template);
    assert.deepEqual(Object.keys(template).sort(), [
      ".natsbind-callout",
      ".natsbind-credentials",
      "variables",
    ]);
    for (const [name, job] of Object.entries(template)) {
      if (name === "variables") continue;
      // A visible job would run in every pipeline that includes the file.
      assert.ok(name.startsWith("."), `${name} is hidden`);
      assert.equal((job as Job).script, undefined, `${name} has no script: the including job brings it`);
    }
  });

  it("declares NATSBIND_URL, NATSBIND_AUDIENCE and NATSBIND_ROLE for the pipeline, overridable", () => {
    const variables = template.variables as Record<string, { value: string; description: string }>;
    // Only natsbind's own names: a pipeline-wide default of a common name (NATS_URL) would reach every job.
    assert.deepEqual(Object.keys(variables).sort(), ["NATSBIND_AUDIENCE", "NATSBIND_ROLE", "NATSBIND_URL"]);
    for (const [name, v] of Object.entries(variables)) {
      assert.equal(v.value, "", `${name}: no default a pipeline could silently use`);
      assert.ok(v.description.length > 20, `${name} is described`);
    }
    assert.match(variables.NATSBIND_AUDIENCE!.description, /credentials\.audience/);
  });

  for (const name of [".natsbind-credentials", ".natsbind-callout"]) {
    it(`${name}: one ID token, NATSBIND_ID_TOKEN, whose aud is $NATSBIND_AUDIENCE`, () => {
      const job = template[name] as Job;
      assert.deepEqual(job.id_tokens, { NATSBIND_ID_TOKEN: { aud: "$NATSBIND_AUDIENCE" } });
      assert.ok(job.before_script?.length === 1 && typeof job.before_script[0] === "string");
      // The token is used, never printed: no echo/printf/cat/set -x of it.
      for (const line of job.before_script[0].split("\n")) {
        if (/NATSBIND_ID_TOKEN/.test(line)) assert.doesNotMatch(line, /\b(echo|printf|cat|set -x)\b/, line);
      }
    });
  }

  it(".natsbind-credentials: curl POSTs to $NATSBIND_URL/v1/credentials with the bearer token, Accept text/plain, JSON, umask 077", () => {
    const job = template[".natsbind-credentials"] as Job;
    assert.equal(job.variables?.NATS_CREDS, "$CI_BUILDS_DIR/natsbind-$CI_JOB_ID.creds");
    const script = job.before_script![0]!;
    const curl = script.split("\n").find((l) => /\bcurl\b/.test(l));
    assert.ok(curl, "a curl line");
    assert.match(curl, /\(umask 077 && curl /, "the creds file is created 0600");
    for (const part of [
      "--fail-with-body",
      " -sS ",
      "-X POST",
      '-H "Authorization: Bearer $NATSBIND_ID_TOKEN"',
      '-H "Accept: text/plain"',
      "-H 'Content-Type: application/json'",
      '--data "$natsbind_body"',
      '"$NATSBIND_URL/v1/credentials"',
      '-o "$NATS_CREDS"',
    ]) {
      assert.ok(curl.includes(part), `the curl line has ${part}`);
    }
    assert.match(script, /natsbind_body="\{\\"role\\":\\"\$NATSBIND_ROLE\\"\}"/, "the role goes in the body");
    assert.match(script, /https:\/\/\*\) ;;/, "only https:// URLs");
    assert.deepEqual(job.after_script, ['rm -f "$NATS_CREDS"']);
  });

  it(".natsbind-callout: exports what the nats CLI reads (NATS_USER, NATS_PASSWORD), no creds file", () => {
    const script = (template[".natsbind-callout"] as Job).before_script![0]!;
    assert.match(script, /export NATS_USER="\$NATSBIND_ROLE" NATS_PASSWORD="\$NATSBIND_ID_TOKEN"/);
    assert.match(script, /export NATS_USER="\$NATSBIND_ID_TOKEN"/);
    assert.match(script, /unset NATS_CREDS NATS_NKEY/);
    assert.doesNotMatch(script, /curl/);
  });
});

describe("docs/ci-credentials.md", async () => {
  const text = await readFile(GUIDE, "utf8");
  const blocks = [...text.matchAll(/^```yaml\n([\s\S]*?)^```$/gm)].map(
    (m) => parse(m[1]!) as Record<string, unknown>,
  );
  const template = parse(await readFile(TEMPLATE, "utf8")) as Record<string, Job>;

  it("shows a roles[].ci example that is a valid binding spec", () => {
    const specs = blocks.filter((b) => typeof b.spec === "object");
    assert.equal(specs.length, 1);
    const binding = parseBinding(
      { apiVersion: "natsbind.io/v1alpha1", kind: "NatsBinding", metadata: { name: "x" }, ...specs[0] },
      "doc",
    );
    assert.deepEqual(binding.spec.roles[0]!.ci, {
      refs: "protected",
      refTypes: ["branch", "tag"],
      environments: ["production"],
      allowForkMergeRequests: false,
    });
  });

  it("shows a pipeline whose jobs extend the template's hidden jobs and set what their scripts need", () => {
    const pipeline = blocks.find((b) => "include" in b);
    assert.ok(pipeline, "a .gitlab-ci.yml example");
    const variables = pipeline.variables as Record<string, string>;
    for (const name of ["NATSBIND_URL", "NATSBIND_AUDIENCE", "NATS_URL"]) assert.ok(variables[name], name);
    assert.match(variables.NATSBIND_URL!, /^https:\/\//);
    const extended = Object.values(pipeline)
      .map((job) => (job as { extends?: string }).extends)
      .filter((e) => e !== undefined)
      .sort();
    assert.deepEqual(extended, [".natsbind-callout", ".natsbind-credentials"]);
    for (const name of extended) assert.ok(template[name], `${name} is in the template`);
  });

  it("documents every status of the exchange and keeps the places of the callout and audit sections", () => {
    for (const status of [400, 401, 403, 405, 406, 408, 413, 415, 429, 503]) {
      assert.match(text, new RegExp(`^\\| ${status} `, "m"), `status ${status}`);
    }
    for (const code of [
      "invalid_token",
      "forbidden",
      "bad_request",
      "payload_too_large",
      "unsupported_media_type",
      "rate_limited",
      "unavailable",
    ]) {
      assert.ok(text.includes(`\`${code}\``), code);
    }
    assert.ok(
      text.includes("Retry-After") && text.includes('WWW-Authenticate: Bearer error="invalid_token"'),
    );
    assert.ok(
      text.includes("natsbind init --callout") && text.includes("default_sentinel"),
      "the callout setup",
    );
    assert.ok(
      text.includes('"event":"credentials.issued"') || text.includes("credentials.issued"),
      "the audit lines",
    );
  });
});
