// natsbind.yaml's credentials and http.tls sections: defaults, bounds, paths, and errors that name
// the field.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { ConfigError, parseConfig } from "../../src/config/config.ts";

const base = {
  nats: { servers: ["nats://127.0.0.1:4222"], systemCreds: "s.creds", operatorSigningKey: "k.nk" },
  gitlab: { url: "https://gitlab.example.com/", tokenFile: "token" },
};

describe("config: credentials", () => {
  it("fills defaults: issuer from gitlab.url, 15m max, 10m default, 60s leeway, 24h token age, rate limits", () => {
    const c = parseConfig(
      { ...base, credentials: { audience: "https://natsbind.example" } },
      "n.yaml",
      "/etc/nb",
    );
    assert.deepEqual(c.credentials, {
      audience: "https://natsbind.example",
      issuer: "https://gitlab.example.com",
      maxTtl: 900_000,
      defaultTtl: 600_000,
      leeway: 60_000,
      maxTokenAge: 86_400_000,
      jwksCooldown: 30_000,
      rateLimit: { perProjectPerMinute: 600, perClientPerMinute: 1200 },
      audit: { connections: true },
    });
    assert.equal(c.http.tls, undefined);
  });

  it("resolves the audit file, callout files and TLS files against the config's directory", () => {
    const c = parseConfig(
      {
        ...base,
        http: { listen: "0.0.0.0:8443", tls: { certFile: "tls/crt.pem", keyFile: "tls/key.pem" } },
        credentials: {
          audience: "nb",
          audit: { file: "audit/credentials.log" },
          callout: { credsFile: "callout.creds", signingKeyFile: "callout.nk" },
        },
      },
      "n.yaml",
      "/etc/nb",
    );
    assert.deepEqual(c.http.tls, { certFile: "/etc/nb/tls/crt.pem", keyFile: "/etc/nb/tls/key.pem" });
    assert.equal(c.credentials?.audit.file, "/etc/nb/audit/credentials.log");
    assert.deepEqual(c.credentials?.callout, {
      credsFile: "/etc/nb/callout.creds",
      signingKeyFile: "/etc/nb/callout.nk",
      connections: 2,
    });
  });

  const bad: Array<[string, unknown, RegExp]> = [
    ["no audience", {}, /credentials\.audience: /],
    ["maxTtl above an hour", { audience: "a", maxTtl: "2h" }, /credentials\.maxTtl: /],
    [
      "defaultTtl above maxTtl",
      { audience: "a", maxTtl: "5m", defaultTtl: "10m" },
      /credentials\.defaultTtl: /,
    ],
    ["a non-URL issuer", { audience: "a", issuer: "gitlab" }, /credentials\.issuer: /],
    ["a zero rate limit", { audience: "a", rateLimit: { perProjectPerMinute: 0 } }, /perProjectPerMinute/],
    ["an unknown field", { audience: "a", ttl: "5m" }, /credentials: Unrecognized key: "ttl"/],
    [
      "a callout without its key file",
      { audience: "a", callout: { credsFile: "c" } },
      /callout\.signingKeyFile/,
    ],
    ...[0, 17, 1.5, "2"].map((n): [string, unknown, RegExp] => [
      `callout.connections ${JSON.stringify(n)}`,
      { audience: "a", callout: { credsFile: "c", signingKeyFile: "k", connections: n } },
      /credentials\.callout\.connections: /,
    ]),
  ];
  for (const [what, credentials, message] of bad) {
    it(`rejects ${what}, naming the field`, () => {
      assert.throws(
        () => parseConfig({ ...base, credentials }, "n.yaml", "/"),
        (err: Error) => err instanceof ConfigError && message.test(err.message),
      );
    });
  }

  it("leaves the issuer unset without a gitlab section (natsbind run refuses to start then)", () => {
    const c = parseConfig({ nats: base.nats, credentials: { audience: "a" } }, "n.yaml", "/");
    assert.equal(c.credentials?.issuer, undefined);
  });
});
