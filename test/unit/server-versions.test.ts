import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  FEATURE_VERSIONS,
  MIN_SUPPORTED_VERSION,
  atLeast,
  describeServers,
  functionsInsideTokens,
  parseVersion,
  serversBelow,
} from "../../src/nats/server-versions.ts";
import { warnUnsupportedServers } from "../../src/nats/from-config.ts";
import { createLogger } from "../../src/observability/logger.ts";

describe("nats-server versions", () => {
  it("parses what servers report, with a v, a pre-release or a build suffix", () => {
    assert.deepEqual(parseVersion("2.10.29"), [2, 10, 29]);
    assert.deepEqual(parseVersion("v2.11.17"), [2, 11, 17]);
    assert.deepEqual(parseVersion("2.12.0-RC.1"), [2, 12, 0]);
    assert.deepEqual(parseVersion("2.15.0-dev"), [2, 15, 0]);
    assert.equal(parseVersion(""), undefined);
    assert.equal(parseVersion("two.ten"), undefined);
  });

  it("compares by major, minor and patch; an unparsable version is never new enough", () => {
    assert.ok(atLeast("2.11.2", FEATURE_VERSIONS.defaultSentinel));
    assert.ok(atLeast("2.15.2", FEATURE_VERSIONS.defaultSentinel));
    assert.ok(!atLeast("2.11.1", FEATURE_VERSIONS.defaultSentinel));
    assert.ok(!atLeast("2.10.29", FEATURE_VERSIONS.functionInsideToken));
    assert.ok(atLeast("2.11.0", FEATURE_VERSIONS.functionInsideToken));
    assert.ok(atLeast("2.10.0", MIN_SUPPORTED_VERSION));
    assert.ok(!atLeast("2.9.25", MIN_SUPPORTED_VERSION));
    assert.ok(atLeast("3.0.0", "2.99.99"));
    assert.ok(!atLeast("", MIN_SUPPORTED_VERSION));
  });

  it("names the servers below a minimum, sorted, at most five", () => {
    const servers = [
      { server: "west-0", version: "2.10.29" },
      { server: "east-0", version: "2.11.17" },
      { server: "east-1", version: "2.10.29" },
    ];
    assert.deepEqual(serversBelow(servers, "2.11.0"), [
      { server: "east-1", version: "2.10.29" },
      { server: "west-0", version: "2.10.29" },
    ]);
    assert.equal(describeServers(serversBelow(servers, "2.11.0")), "east-1 (2.10.29), west-0 (2.10.29)");
    const many = Array.from({ length: 7 }, (_, i) => ({ server: `s${i}`, version: "2.10.1" }));
    assert.equal(
      describeServers(many),
      "s0 (2.10.1), s1 (2.10.1), s2 (2.10.1), s3 (2.10.1), s4 (2.10.1), and 2 more",
    );
  });
});

describe("functionsInsideTokens", () => {
  const account = (template: Record<string, unknown>) => ({
    type: "account",
    signing_keys: ["AUNSCOPEDKEY", { kind: "user_scope", key: "AKEY", role: "ci", template }],
  });

  it("finds a NATS function that is only part of a subject token, in allow and deny lists", () => {
    assert.deepEqual(
      functionsInsideTokens(
        account({
          pub: { allow: ["build.{{tag(project)}}.>", "kv.p{{tag(project)}}.>"] },
          sub: { deny: ["x.{{name()}}-suffix"] },
        }),
      ),
      [
        { role: "ci", subject: "kv.p{{tag(project)}}.>" },
        { role: "ci", subject: "x.{{name()}}-suffix" },
      ],
    );
  });

  it("accepts functions that are whole tokens, and two functions in one token are not one", () => {
    assert.deepEqual(
      functionsInsideTokens(
        account({ pub: { allow: ["build.{{tag(project)}}.{{name()}}.>", "_INBOX.>"] }, sub: {} }),
      ),
      [],
    );
    assert.deepEqual(functionsInsideTokens(account({ pub: { allow: ["a.{{tag(x)}}{{tag(y)}}"] } })), [
      { role: "ci", subject: "a.{{tag(x)}}{{tag(y)}}" },
    ]);
  });

  it("ignores accounts without scoped keys and odd shapes", () => {
    assert.deepEqual(functionsInsideTokens({ type: "account" }), []);
    assert.deepEqual(functionsInsideTokens({ type: "account", signing_keys: [null, 7, { role: "x" }] }), []);
  });
});

describe("warnUnsupportedServers", () => {
  it("logs the servers older than the supported minimum, and nothing when there are none", async () => {
    const lines: string[] = [];
    const log = createLogger({ write: (l) => void lines.push(l) });
    await warnUnsupportedServers(
      {
        serverVersions: async () => [
          { server: "old-0", version: "2.9.25" },
          { server: "new-0", version: "2.10.29" },
        ],
      },
      log,
    );
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /nats-server older than 2\.10\.0 is not supported: old-0 \(2\.9\.25\)/);
    lines.length = 0;
    await warnUnsupportedServers({ serverVersions: async () => [{ server: "s", version: "2.15.2" }] }, log);
    assert.deepEqual(lines, []);
  });
});
