/**
 * The NatsBinding CustomResourceDefinition, built from the zod schema (schema.ts), the one source of
 * truth: the spec's structure, bounds, enums, defaults and descriptions come from
 * natsBindingSpecJsonSchema(); this module only makes that JSON Schema structural (what the
 * apiserver requires) and adds what JSON Schema cannot say as CEL rules (x-kubernetes-validations)
 * that mirror zod's refinements. scripts/gen-crd.ts writes the result to crds/natsbinding.yaml.
 *
 * Where the apiserver and zod differ (crds/README.md lists it too):
 * - unknown fields: zod rejects them; the apiserver prunes them (and rejects them only when the client
 *   asks for strict field validation, which kubectl does by default);
 * - whitespace inside `{{ }}`: zod accepts any (JS trim); the CEL rule accepts spaces only;
 * - byte quantities with a fraction ("1.5Ki") are checked for whole bytes through a float (see
 *   QUANTITY_RULE), and Kubernetes rounds fractions finer than 10^-9 up;
 * - rule order: the apiserver skips CEL rules when a schema error of certain kinds (enum, required,
 *   too long, too many, wrong type) is present, so it may report fewer problems at once than zod.
 */
import { NatsbindError } from "../../errors.ts";
import type {
  AccountSummary,
  BindingStatus,
  Condition,
  RotationStatus,
} from "../../controllers/binding/status.ts";
import { MAX_ACCOUNT_SUMMARIES } from "../../controllers/binding/status.ts";
import { MAX_NAME_LENGTH, MAX_RESPONSE_TTL_MS, natsBindingSpecJsonSchema } from "./schema.ts";
import { GROUP, KIND, VERSION } from "./types.ts";

export const PLURAL = "natsbindings";
export const SINGULAR = "natsbinding";
export const CRD_NAME = `${PLURAL}.${GROUP}`;

/** A JSON Schema (OpenAPI v3) node, as plain data. */
export type JsonSchema = { [key: string]: unknown };

/** The zod JSON Schema export holds something the structural schema cannot express. */
export class CrdSchemaError extends NatsbindError {}

/**
 * One `{{ ... }}` of a subject: a controller variable or a NATS function templates.ts accepts
 * (RE2; spaces only inside the braces; not `{{account-name()}}`, the raw GitLab path). Capturing
 * groups instead of (?:) keep the rule short: the apiserver's cost estimate grows with the length of
 * the regex.
 */
const EXPRESSION_RE2 = String.raw`\{\{ *(project\.(id|slug|path)|namespace\.path|environment|(name\(|(account-)?(subject\(|tag\( *[\w.-]{1,64})) *\)) *\}\}`;

/**
 * A whole subject template as templates.ts parses it: literal text holds no "{{" or "}}" (single
 * braces only, alternating), a literal "{" never directly precedes an expression, and every
 * `{{ ... }}` is a known expression.
 */
export const SUBJECT_TEMPLATE_RE2 = String.raw`^(\}?(\{\})*\{?[^{}]|(\{?(\}\{)*\})?${EXPRESSION_RE2})*\}?(\{\})*\{?$`;

/** JS `\s` (what zod's subject check and String.trim treat as whitespace) in RE2 syntax. */
const JS_WHITESPACE = String.raw`\t-\r\p{Zs}\x{2028}\x{2029}\x{feff}`;
const SUBJECT_TOKEN = String.raw`([^.*>\x00-\x20\x7f${JS_WHITESPACE}]|\{\{[^{}]*\}\})+`;

/**
 * The subject shape of a template with each `{{ ... }}` standing for one token character, as
 * subjectProblem() checks it: non-empty "."-separated tokens, no whitespace or control characters,
 * `*` and `>` only as whole tokens and `>` only last.
 */
export const SUBJECT_SHAPE_RE2 = String.raw`^((\*|${SUBJECT_TOKEN})\.)*(\*|>|${SUBJECT_TOKEN})$`;

/** A subject that uses `{{environment}}`. */
export const ENVIRONMENT_VARIABLE_RE2 = String.raw`\{\{ *environment *\}\}`;

/** units.ts QUANTITY, for the string form of byte quantities. */
export const QUANTITY_PATTERN = String.raw`^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$`;
/** units.ts DURATION, plus "0". */
export const DURATION_PATTERN = String.raw`^(0|([0-9]+(ms|s|m|h))+)$`;

/** An environment name: no control characters, no leading or trailing whitespace (JS trim). */
const ENVIRONMENT_NAME_RE2 = String.raw`^[^\x00-\x20\x7f${JS_WHITESPACE}]([^\x00-\x1f\x7f]*[^\x00-\x20\x7f${JS_WHITESPACE}])?$`;

const MAX_SAFE_INTEGER = Number.MAX_SAFE_INTEGER;

export interface CelRule {
  rule: string;
  message: string;
  fieldPath?: string;
  reason?: "FieldValueInvalid" | "FieldValueForbidden" | "FieldValueRequired";
}

/** schema.ts environmentName: environments.names[] and roles[].ci.environments[]. */
const ENVIRONMENT_NAME_RULES: CelRule[] = [
  {
    rule: `self.matches(r'${ENVIRONMENT_NAME_RE2}')`,
    message: "must not contain control characters or edge spaces",
  },
];

const isEnvironmentMode = "(has(self.accountPer) && self.accountPer == 'environment')";

const SUBJECT_RULES: CelRule[] = [
  {
    rule: `self.matches(r'${SUBJECT_TEMPLATE_RE2}')`,
    message:
      "uses an unknown template: every {{...}} must be {{project.id}}, {{project.slug}}, {{project.path}}, " +
      "{{namespace.path}}, {{environment}}, {{name()}}, {{subject()}}, {{account-subject()}}, " +
      '{{tag(x)}} or {{account-tag(x)}} (spaces allowed inside the braces), with no stray "{{" or "}}"; ' +
      "not {{account-name()}}, the raw GitLab path: use {{project.path}}",
  },
  {
    rule: `self.matches(r'${SUBJECT_SHAPE_RE2}')`,
    message:
      'is not a valid subject template: "."-separated non-empty tokens without whitespace or control ' +
      "characters; * and > only as whole tokens, > only last",
  },
];

/**
 * isInteger() is exact but false for every quantity with a fraction ("1.5Ki" is 1536 bytes), so those
 * are checked through asApproximateFloat(): exact for whole numbers up to 2^53, it may call a value
 * within about 1e-7 of a whole number whole. The bound comes first: past int64, int() would fail.
 */
export const QUANTITY_RULE: CelRule = {
  rule:
    "type(self) == int || !isQuantity(self) || " +
    `(quantity(self).compareTo(quantity('${MAX_SAFE_INTEGER}')) <= 0 && (quantity(self).isInteger() || ` +
    "double(int(quantity(self).asApproximateFloat())) == quantity(self).asApproximateFloat()))",
  message: `must be a whole number of bytes, at most ${MAX_SAFE_INTEGER}`,
};

const hasStorage = (field: string): string =>
  `(has(self.${field}) && string(self.${field}).matches('[1-9]'))`;

/** CEL: role `r` uses no {{environment}}. Spelled out: optionals (r.?publish) lose the size bounds. */
const noEnvironmentVariable = (["publish", "subscribe"] as const)
  .map((verb) => {
    const lists = (["allow", "deny"] as const).map(
      (list) =>
        `(!has(r.${verb}.${list}) || ` +
        `r.${verb}.${list}.all(s, !s.matches(r'${ENVIRONMENT_VARIABLE_RE2}')))`,
    );
    return `(!has(r.${verb}) || (${lists.join(" && ")}))`;
  })
  .join(" && ");

/** Additions to the converted spec schema, by path ("" is spec, "[]" an array's items). */
const SPEC_OVERLAYS: Record<string, JsonSchema> = {
  "": {
    "x-kubernetes-validations": [
      {
        rule: `has(self.environments) || !${isEnvironmentMode}`,
        message: "is required with accountPer: environment (names or fromGitLab: true)",
        fieldPath: ".environments",
        reason: "FieldValueRequired",
      },
      {
        rule: `!has(self.environments) || ${isEnvironmentMode}`,
        message: "applies only with accountPer: environment",
        fieldPath: ".environments",
        reason: "FieldValueForbidden",
      },
      {
        rule: `!has(self.roles) || ${isEnvironmentMode} || self.roles.all(r, ${noEnvironmentVariable})`,
        message: "a role subject uses {{environment}}, which needs accountPer: environment",
        fieldPath: ".roles",
      },
      {
        // schema.ts ciEnvironmentsWithoutAccount: such an entry could never be issued.
        rule:
          `!${isEnvironmentMode} || !has(self.roles) || !has(self.environments) || ` +
          "!has(self.environments.names) || self.roles.all(r, !has(r.ci) || !has(r.ci.environments) || " +
          "r.ci.environments.all(e, e in self.environments.names))",
        message:
          "a role's ci.environments lists an environment that is not in environments.names: with " +
          "accountPer: environment there is no account for it, so no job could get the role there",
        fieldPath: ".roles",
      },
    ] satisfies CelRule[],
  },
  gitlab: {
    "x-kubernetes-validations": [
      {
        rule: "has(self.group) || has(self.project)",
        message: "must set exactly one of group or project",
        reason: "FieldValueRequired",
      },
      {
        rule: "!has(self.group) || !has(self.project)",
        message: "set either group or project, not both",
        fieldPath: ".project",
        reason: "FieldValueForbidden",
      },
      {
        rule: "has(self.group) || !has(self.includeSubgroups)",
        message: "applies only with group",
        fieldPath: ".includeSubgroups",
        reason: "FieldValueForbidden",
      },
    ] satisfies CelRule[],
  },
  environments: {
    "x-kubernetes-validations": [
      {
        rule: "has(self.names) || (has(self.fromGitLab) && self.fromGitLab)",
        message: "must set names or fromGitLab: true",
        reason: "FieldValueRequired",
      },
      {
        rule: "!has(self.names) || !has(self.fromGitLab) || !self.fromGitLab",
        message: "set either names or fromGitLab, not both",
        fieldPath: ".fromGitLab",
        reason: "FieldValueForbidden",
      },
    ] satisfies CelRule[],
  },
  // Duplicates are rejected by the apiserver itself ("Duplicate value").
  "environments.names": { "x-kubernetes-list-type": "set" },
  "environments.names[]": { "x-kubernetes-validations": ENVIRONMENT_NAME_RULES },
  roles: {
    "x-kubernetes-validations": [
      {
        rule: "self.all(r, self.exists_one(x, x.name == r.name))",
        // No messageExpression naming the duplicate: filter() is estimated far above the cost budget.
        message: "role names must be unique",
      },
    ] satisfies CelRule[],
  },
  // Duplicates are rejected by the apiserver itself, as for environments.names.
  "roles[].ci.refTypes": { "x-kubernetes-list-type": "set" },
  "roles[].ci.environments": { "x-kubernetes-list-type": "set" },
  "roles[].ci.environments[]": { "x-kubernetes-validations": ENVIRONMENT_NAME_RULES },
  "roles[].publish.allow[]": { "x-kubernetes-validations": SUBJECT_RULES },
  "roles[].publish.deny[]": { "x-kubernetes-validations": SUBJECT_RULES },
  "roles[].subscribe.allow[]": { "x-kubernetes-validations": SUBJECT_RULES },
  "roles[].subscribe.deny[]": { "x-kubernetes-validations": SUBJECT_RULES },
  "roles[].responses.ttl": {
    pattern: DURATION_PATTERN,
    "x-kubernetes-validations": [
      {
        // Guarded: duration() fails on what the pattern already rejects.
        rule:
          `!self.matches(r'^([0-9]+(ms|s|m|h))+$') || ` +
          `duration(self) <= duration('${MAX_RESPONSE_TTL_MS / 3_600_000}h')`,
        message: `must be at most ${MAX_RESPONSE_TTL_MS / 3_600_000}h`,
      },
    ] satisfies CelRule[],
  },
  "limits.payload": { pattern: QUANTITY_PATTERN, "x-kubernetes-validations": [QUANTITY_RULE] },
  "limits.data": { pattern: QUANTITY_PATTERN, "x-kubernetes-validations": [QUANTITY_RULE] },
  "limits.jetstream": {
    "x-kubernetes-validations": [
      {
        rule: `${hasStorage("memory")} || ${hasStorage("disk")}`,
        message: "enables JetStream without storage: set memory or disk",
      },
    ] satisfies CelRule[],
  },
  "limits.jetstream.memory": { pattern: QUANTITY_PATTERN, "x-kubernetes-validations": [QUANTITY_RULE] },
  "limits.jetstream.disk": { pattern: QUANTITY_PATTERN, "x-kubernetes-validations": [QUANTITY_RULE] },
};

/** JSON Schema keywords copied as they are; anything else in the zod export is an error. */
const PLAIN_KEYWORDS = new Set([
  "description",
  "type",
  "default",
  "enum",
  "minimum",
  "maximum",
  "minLength",
  "maxLength",
  "pattern",
  "minItems",
  "maxItems",
  "required",
]);
const TYPES = new Set(["object", "array", "string", "integer", "number", "boolean"]);

/** Key order in the output, so the YAML reads top-down (description first, children last). */
const KEY_ORDER = [
  "description",
  "type",
  "x-kubernetes-int-or-string",
  "anyOf",
  "format",
  "default",
  "enum",
  "minimum",
  "maximum",
  "minLength",
  "maxLength",
  "pattern",
  "minItems",
  "maxItems",
  "x-kubernetes-list-type",
  "x-kubernetes-list-map-keys",
  "required",
  "properties",
  "items",
  "additionalProperties",
  "maxProperties",
  "x-kubernetes-validations",
];

function ordered(node: JsonSchema): JsonSchema {
  const rank = (k: string): number => {
    const i = KEY_ORDER.indexOf(k);
    return i === -1 ? KEY_ORDER.length : i;
  };
  return Object.fromEntries(Object.entries(node).sort(([a], [b]) => rank(a) - rank(b)));
}

function asSchema(value: unknown, path: string): JsonSchema {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new CrdSchemaError(`${path}: expected a schema object, got ${JSON.stringify(value)}`);
  }
  return value as JsonSchema;
}

/** Copies the plain keywords of one node; exclusiveMinimum on integers becomes minimum + 1. */
function plainKeywords(node: JsonSchema, path: string, skip: readonly string[]): JsonSchema {
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(node)) {
    if (skip.includes(key)) continue;
    if (key === "exclusiveMinimum") {
      if (value !== true || node.type !== "integer" || typeof node.minimum !== "number") {
        throw new CrdSchemaError(`${path}: exclusiveMinimum is supported on integers with a minimum only`);
      }
      continue;
    }
    if (!PLAIN_KEYWORDS.has(key)) {
      throw new CrdSchemaError(`${path}: JSON Schema keyword "${key}" has no structural translation here`);
    }
    out[key] = value;
  }
  if (node.exclusiveMinimum === true) out.minimum = (node.minimum as number) + 1;
  return out;
}

/**
 * zod's union of an integer and a string (GitLab ids or paths, byte quantities) as
 * x-kubernetes-int-or-string: the only union a structural schema allows. The branches' bounds move
 * to the node: JSON Schema applies minimum/maximum to numbers only and maxLength/pattern to strings
 * only, so each still constrains its own branch.
 */
function intOrString(node: JsonSchema, path: string): JsonSchema {
  const branches = (node.anyOf as unknown[]).map((b, i) => asSchema(b, `${path}.anyOf[${i}]`));
  const types = branches.map((b) => b.type);
  if (branches.length !== 2 || !types.includes("integer") || !types.includes("string")) {
    throw new CrdSchemaError(`${path}: only a union of one integer and one string is structural`);
  }
  const out: JsonSchema = plainKeywords(node, path, ["anyOf"]);
  if (out.type !== undefined) throw new CrdSchemaError(`${path}: a union must not also have a type`);
  for (const [i, branch] of branches.entries()) {
    for (const [key, value] of Object.entries(plainKeywords(branch, `${path}.anyOf[${i}]`, ["type"]))) {
      if (key === "description" || key === "default") {
        throw new CrdSchemaError(`${path}.anyOf[${i}]: ${key} belongs on the union, not on a branch`);
      }
      out[key] = value;
    }
  }
  out["x-kubernetes-int-or-string"] = true;
  out.anyOf = [{ type: "integer" }, { type: "string" }];
  return out;
}

/** The zod JSON Schema export of one node, made structural (every node typed, no closed objects). */
function structural(value: unknown, path: string): JsonSchema {
  const node = asSchema(value, path);
  if (node.anyOf !== undefined) return ordered(intOrString(node, path));
  for (const key of ["oneOf", "allOf", "not", "$ref", "nullable"]) {
    if (node[key] !== undefined) throw new CrdSchemaError(`${path}: "${key}" is not supported in the CRD`);
  }
  if (typeof node.type !== "string" || !TYPES.has(node.type)) {
    throw new CrdSchemaError(`${path}: every node needs a type, got ${JSON.stringify(node.type)}`);
  }
  // The apiserver forbids additionalProperties next to properties; it prunes unknown fields instead.
  // A map (zod record: additionalProperties is a schema, no properties) is structural as it is.
  const isMap =
    typeof node.additionalProperties === "object" &&
    node.additionalProperties !== null &&
    node.properties === undefined;
  if (node.additionalProperties !== undefined && node.additionalProperties !== false && !isMap) {
    throw new CrdSchemaError(
      `${path}: only closed objects (additionalProperties: false) and maps are supported`,
    );
  }
  const out = plainKeywords(node, path, [
    "properties",
    "items",
    "additionalProperties",
    "$schema",
    "propertyNames",
  ]);
  if (node.propertyNames !== undefined && !(isMap && asSchema(node.propertyNames, path).type === "string"))
    throw new CrdSchemaError(`${path}: propertyNames other than strings has no structural translation`);
  if (isMap) out.additionalProperties = structural(node.additionalProperties, `${path}{}`);
  if (node.properties !== undefined) {
    const properties = asSchema(node.properties, `${path}.properties`);
    out.properties = Object.fromEntries(
      Object.entries(properties).map(([name, child]) => [name, structural(child, `${path}.${name}`)]),
    );
  }
  if (node.items !== undefined) out.items = structural(node.items, `${path}[]`);
  if (node.type === "array" && out.items === undefined)
    throw new CrdSchemaError(`${path}: array without items`);
  return ordered(out);
}

/** A zod JSON Schema export made structural; throws CrdSchemaError naming the path it cannot convert. */
export function toStructuralSchema(jsonSchema: unknown, path = "spec"): JsonSchema {
  return structural(jsonSchema, path);
}

/** The node at `path` ("a.b[]" = items of a.b's items); throws when the zod schema has no such field. */
function nodeAt(root: JsonSchema, path: string): JsonSchema {
  let node = root;
  for (const segment of path === "" ? [] : path.split(".")) {
    const name = segment.replace(/(\[\])+$/, "");
    const child = (node.properties as Record<string, JsonSchema> | undefined)?.[name];
    if (!child) throw new CrdSchemaError(`overlay path spec.${path}: no field "${name}" in the zod schema`);
    node = child;
    for (let depth = (segment.length - name.length) / 2; depth > 0; depth--) {
      const items = node.items as JsonSchema | undefined;
      if (!items) throw new CrdSchemaError(`overlay path spec.${path}: "${name}" is not an array`);
      node = items;
    }
  }
  return node;
}

/** The spec's structural schema with the CEL rules and patterns of SPEC_OVERLAYS. */
export function natsBindingSpecSchema(): JsonSchema {
  return withOverlays(toStructuralSchema(natsBindingSpecJsonSchema()), SPEC_OVERLAYS);
}

/** Adds `overlays` (by path, see SPEC_OVERLAYS) to a structural spec schema; a key zod set is an error. */
export function withOverlays(spec: JsonSchema, overlays: Record<string, JsonSchema>): JsonSchema {
  for (const [path, additions] of Object.entries(overlays)) {
    const node = nodeAt(spec, path);
    for (const [key, value] of Object.entries(additions)) {
      if (node[key] !== undefined) throw new CrdSchemaError(`spec.${path}: ${key} is already set by zod`);
      node[key] = structuredClone(value);
    }
    const sorted = ordered(node);
    for (const key of Object.keys(node)) delete node[key];
    Object.assign(node, sorted);
  }
  return spec;
}

const integer = (description: string, minimum = 0): JsonSchema => ({
  description,
  type: "integer",
  format: "int64",
  minimum,
});
const string = (description: string, extra: JsonSchema = {}): JsonSchema => ({
  description,
  type: "string",
  ...extra,
});

// Keyed by the TypeScript status types, so tsc fails when a field is added there and not here.
const CONDITION_STATUSES = ["True", "False", "Unknown"] as const satisfies readonly Condition["status"][];
const ACCOUNT_STATES = [
  "Ready",
  "Pending",
  "Retained",
  "Conflict",
  "Problem",
] as const satisfies readonly AccountSummary["state"][];
type Exhaustive<Union, Listed> = [Exclude<Union, Listed>] extends [never] ? true : false;
const _statesListed: Exhaustive<AccountSummary["state"], (typeof ACCOUNT_STATES)[number]> &
  Exhaustive<Condition["status"], (typeof CONDITION_STATUSES)[number]> = true;

/**
 * `status.conditions` in the shape of metav1.Condition (both CRDs): `types` and `reasons` describe
 * what this resource's conditions say, `description` the list.
 */
export function conditionsSchema(text: { types: string; reasons: string; description: string }): JsonSchema {
  const properties: { [K in keyof Condition]-?: JsonSchema } = {
    type: string(text.types, { maxLength: 316 }),
    status: string("True, False or Unknown.", { enum: [...CONDITION_STATUSES] }),
    reason: string(text.reasons, { maxLength: 1024 }),
    message: string("Human-readable details.", { maxLength: 32768 }),
    observedGeneration: integer("The spec generation this condition was computed from."),
    lastTransitionTime: string("When the status last changed.", { format: "date-time" }),
  };
  return {
    description: text.description,
    type: "array",
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
    items: {
      description: "One condition (the shape of metav1.Condition).",
      type: "object",
      required: ["type", "status", "reason", "message", "lastTransitionTime"],
      properties,
    },
  };
}

const countsProperties: { [K in keyof BindingStatus["counts"]]-?: JsonSchema } = {
  projects: integer("GitLab projects the binding selects."),
  accounts: integer("Accounts the binding wants (projects, or projects x environments)."),
  pushed: integer("Accounts pushed to the resolver in the last reconcile."),
  upToDate: integer("Accounts already current on the resolver."),
  retained: integer("Accounts kept although their project is gone (deletionPolicy: Retain)."),
  problems: integer("Accounts with a problem (see accounts[].message)."),
};

const accountProperties: { [K in keyof AccountSummary]-?: JsonSchema } = {
  projectId: integer("GitLab project id.", 1),
  projectPath: string("GitLab project full path."),
  environment: string("Environment name, with accountPer: environment."),
  account: string("Account public key (A...)."),
  claimsHash: string("Hash of the account's claims, without iat and jti."),
  pushedAt: string("When natsbind last pushed the account JWT.", { format: "date-time" }),
  state: string("Ready, Pending, Retained, Conflict (an older binding holds the project) or Problem.", {
    enum: [...ACCOUNT_STATES],
  }),
  message: string("What is wrong, for states Conflict and Problem."),
  keysActiveSince: string("When the account's oldest active role signing key started issuing.", {
    format: "date-time",
  }),
  keyPhase: string("Rotation phase of its role keys: active, prepared or retiring.", {
    enum: ["active", "prepared", "retiring"],
  }),
};

const rotationProperties: { [K in keyof RotationStatus]-?: JsonSchema } = {
  nextRotation: string("When the next scheduled rotation of any account is due.", { format: "date-time" }),
  oldestActiveKeySince: string("When the oldest active role signing key started issuing.", {
    format: "date-time",
  }),
  accounts: {
    description: "Accounts per rotation phase.",
    type: "object",
    properties: {
      active: integer("Accounts whose role keys have no rotation in flight."),
      prepared: integer("Accounts with a new key listed, not yet issuing."),
      retiring: integer("Accounts with a replaced key still listed until what it issued expired."),
    },
  },
  waitingConnections: integer("Live connections on replaced keys kept past their overlap (gracePeriod)."),
  lastFailure: {
    description: "The last rotation step that failed (kept until another fails or natsbind restarts).",
    type: "object",
    properties: { time: string("When.", { format: "date-time" }), message: string("What failed.") },
  },
  lastEmergency: {
    description: "The last emergency rotation.",
    type: "object",
    properties: {
      time: string("When.", { format: "date-time" }),
      accounts: integer("Role keys replaced at once, counted per account and role."),
      connectionsClosed: integer("Connections the servers reported on the removed keys just before."),
    },
  },
};

const statusProperties: { [K in keyof BindingStatus]-?: JsonSchema } = {
  observedGeneration: integer("The spec generation the status describes."),
  conditions: conditionsSchema({
    types: "Condition type: Ready, GitLabSynced or ResolverSynced.",
    reasons: "Machine-readable reason in CamelCase, e.g. Reconciled or GitLabError.",
    description: "Ready, GitLabSynced and ResolverSynced, each with a reason and a message.",
  }),
  counts: {
    description: "Account and project counts of the last reconcile.",
    type: "object",
    properties: countsProperties,
  },
  accounts: {
    description: `Per-account summary (public keys and hashes only), at most ${MAX_ACCOUNT_SUMMARIES} entries.`,
    type: "array",
    maxItems: MAX_ACCOUNT_SUMMARIES,
    items: {
      description: "One account of the binding.",
      type: "object",
      required: ["projectId", "projectPath", "account", "state"],
      properties: accountProperties,
    },
  },
  accountsTruncated: integer("How many accounts the accounts list leaves out."),
  rotation: {
    description: "Signing-key rotation of the binding's accounts (docs/rotation.md).",
    type: "object",
    properties: rotationProperties,
  },
};

function statusSchema(): JsonSchema {
  return {
    description: "What natsbind observed and did; written by the controller through the status subresource.",
    type: "object",
    properties: structuredClone(statusProperties),
  };
}

const readyCondition = '.status.conditions[?(@.type=="Ready")]';

/** The whole CustomResourceDefinition (apiextensions.k8s.io/v1), as plain data. Pure. */
export function natsBindingCrd(): JsonSchema {
  return {
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    metadata: { name: CRD_NAME },
    spec: {
      group: GROUP,
      names: {
        kind: KIND,
        listKind: `${KIND}List`,
        plural: PLURAL,
        singular: SINGULAR,
        shortNames: ["nb"],
        categories: ["natsbind"],
      },
      scope: "Namespaced",
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: [
            {
              name: "Ready",
              type: "string",
              jsonPath: `${readyCondition}.status`,
              description: "Whether every account of the binding is live.",
            },
            {
              name: "Accounts",
              type: "integer",
              jsonPath: ".status.counts.accounts",
              description: "Accounts the binding wants.",
            },
            { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" },
            {
              name: "Message",
              type: "string",
              priority: 1,
              jsonPath: `${readyCondition}.message`,
              description: "Why the binding is (not) ready.",
            },
          ],
          schema: {
            openAPIV3Schema: {
              description:
                "A NatsBinding selects GitLab projects and says how their NATS accounts look: natsbind " +
                "creates one account per project (or per project and environment) with a scoped signing " +
                "key per role.",
              type: "object",
              required: ["spec"],
              properties: {
                apiVersion: string(
                  "Versioned schema of this representation of an object; natsbind.io/v1alpha1.",
                ),
                kind: string("The REST resource this object represents: NatsBinding."),
                metadata: { type: "object" },
                spec: natsBindingSpecSchema(),
                status: statusSchema(),
              },
              "x-kubernetes-validations": [
                {
                  rule: `self.metadata.name.size() <= ${MAX_NAME_LENGTH}`,
                  message: `metadata.name must be at most ${MAX_NAME_LENGTH} characters`,
                },
              ] satisfies CelRule[],
            },
          },
        },
      ],
    },
  };
}
