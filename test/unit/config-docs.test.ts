// docs/configuration.md stays true to src/config/config.ts: its example natsbind.yaml sets every
// field the schema has and is valid, and the credentials and http.tls tables name each of their fields.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, it } from "node:test";
import { parse } from "yaml";
import { z } from "zod";
import { ConfigSchema, parseConfig } from "../../src/config/config.ts";

const DOC = new URL("../../docs/configuration.md", import.meta.url);

/** Every leaf field of natsbind.yaml, as a dotted path ("credentials.rateLimit.perClientPerMinute"). */
function schemaFields(): string[] {
  const fields: string[] = [];
  const walk = (node: Record<string, unknown>, path: string): void => {
    const properties = node.properties as Record<string, Record<string, unknown>> | undefined;
    if (!properties) {
      fields.push(path);
      return;
    }
    for (const [name, child] of Object.entries(properties)) walk(child, path ? `${path}.${name}` : name);
  };
  walk(z.toJSONSchema(ConfigSchema, { io: "input", unrepresentable: "any" }) as Record<string, unknown>, "");
  return fields;
}

/** Dotted paths of the leaves a YAML document sets (maps such as podLabels count as one leaf). */
function documentFields(value: unknown, path = ""): string[] {
  if (typeof value !== "object" || value === null || Array.isArray(value) || path.endsWith("podLabels"))
    return [path];
  return Object.entries(value).flatMap(([k, v]) => documentFields(v, path ? `${path}.${k}` : k));
}

/**
 * Fields that exclude another (exactly one of the pair may be set): the example sets the second and
 * shows the first as a comment; both have a table row.
 */
const ALTERNATIVES: Record<string, string> = { "nats.systemCreds": "nats.systemSigningKey" };

describe("docs/configuration.md", async () => {
  const text = await readFile(DOC, "utf8");
  const example = /^```yaml\n([\s\S]*?)^```$/m.exec(text)?.[1];

  it("opens with an example natsbind.yaml that sets every field of the schema and is valid", () => {
    assert.ok(example, "a yaml block");
    const document = parse(example);
    const fields = schemaFields();
    assert.ok(fields.includes("credentials.callout.signingKeyFile") && fields.includes("http.tls.keyFile"));
    assert.deepEqual(documentFields(document).sort(), fields.filter((f) => !(f in ALTERNATIVES)).sort());
    for (const [field, instead] of Object.entries(ALTERNATIVES)) {
      assert.ok(fields.includes(field) && fields.includes(instead), `${field} and ${instead} are fields`);
      const name = field.slice(field.lastIndexOf(".") + 1);
      assert.match(example, new RegExp(`^ *# ${name}: `, "m"), `${field}: shown as a comment in the example`);
      assert.ok(text.includes(`| \`${field}\``), `${field}: a table row`);
    }
    const config = parseConfig(document, "docs/configuration.md", "/etc/natsbind");
    assert.equal(config.credentials?.maxTtl, 900_000);
    assert.equal(config.credentials?.callout?.credsFile, "/etc/natsbind/callout.creds");
  });

  it("names every field of credentials and http.tls in a table, with its default and bounds", () => {
    for (const field of schemaFields().filter((f) =>
      /^(credentials|http\.tls|rotation|revocations)\./.test(f),
    )) {
      // credentials.* rows name the field without the section; others name it whole or by its last part.
      const name = field.startsWith("credentials.")
        ? field.slice("credentials.".length)
        : /^(rotation|revocations)\./.test(field)
          ? field.slice(field.indexOf(".") + 1)
          : field;
      assert.ok(text.includes(`| \`${name}\``), `no table row for ${field}`);
    }
    for (const value of [
      "`15m`",
      "`10m`",
      "`60s`",
      "`24h`",
      "`30s`",
      "`600`",
      "`1200`",
      "`1m`-`1h`",
      "`90d`",
      "`1h`-`3650d`",
    ]) {
      assert.ok(text.includes(value), `the defaults and bounds: ${value}`);
    }
  });
});
