/**
 * The NatsBinding v1alpha1 schema: one zod source of truth for local YAML files and (next) the CRD.
 * It stays expressible in OpenAPI (plain objects, enums, strings, integers, arrays, int-or-string);
 * rules OpenAPI cannot say (exactly one of, uniqueness, templates, quantities) are refinements.
 * Objects under `spec` are strict: unknown fields are errors, leaving room for later fields
 * (`rotation`, `credentials`) without silently accepting typos today.
 */
import { z } from "zod";
import { TerminalError } from "../../errors.ts";
import { hasControlCharacter } from "../../nats/subjects.ts";
import { MAX_DURATION_LENGTH, MAX_QUANTITY_LENGTH, parseByteQuantity, parseDuration } from "../../units.ts";
import { parseSubjectTemplate, subjectTemplateProblems } from "./templates.ts";
import {
  API_VERSION,
  KIND,
  type BindingLimits,
  type NatsBinding,
  type NatsBindingSpec,
  type Role,
  type SubjectRules,
} from "./types.ts";

export const MAX_ROLES = 32;
export const MAX_SUBJECTS_PER_LIST = 64;
export const MAX_SUBJECT_TEMPLATE_LENGTH = 256;
export const MAX_ENVIRONMENTS = 64;
export const MAX_NAME_LENGTH = 63;
export const MAX_GITLAB_PATH_LENGTH = 255;
export const MAX_RESPONSES = 1_000_000;
export const MAX_RESPONSE_TTL_MS = 24 * 3_600_000;

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const OBJECT_NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;
const GITLAB_SEGMENT = "[A-Za-z0-9_.][A-Za-z0-9_.-]*";
const GROUP_PATH = new RegExp(`^${GITLAB_SEGMENT}(?:/${GITLAB_SEGMENT})*$`);
const PROJECT_PATH = new RegExp(`^${GITLAB_SEGMENT}(?:/${GITLAB_SEGMENT})+$`);

const dnsLabel = (what: string) =>
  z
    .string()
    .min(1, "must not be empty")
    .max(MAX_NAME_LENGTH, `must be at most ${MAX_NAME_LENGTH} characters`)
    .regex(
      DNS_LABEL,
      `must be a ${what}: lower-case letters, digits and "-", starting and ending alphanumeric`,
    );

const gitlabRef = (what: "group" | "project") =>
  z.union(
    [
      z.int().positive(`must be a positive ${what} id`),
      z
        .string()
        .max(MAX_GITLAB_PATH_LENGTH, `must be at most ${MAX_GITLAB_PATH_LENGTH} characters`)
        .regex(
          what === "group" ? GROUP_PATH : PROJECT_PATH,
          what === "group"
            ? 'must be a group full path such as "acme" or "acme/platform"'
            : 'must be a project full path such as "acme/api"',
        ),
    ],
    { error: `must be a ${what} id (positive integer) or full path` },
  );

const GitLabSchema = z
  .strictObject({
    group: gitlabRef("group")
      .optional()
      .describe("GitLab group whose projects get accounts: numeric id or full path. Exclusive with project."),
    includeSubgroups: z
      .boolean()
      .optional()
      .describe("With group: also select projects of its subgroups. Default true."),
    project: gitlabRef("project")
      .optional()
      .describe("A single GitLab project: numeric id or full path. Exclusive with group."),
  })
  .superRefine(
    (value, ctx) => {
      const v = asRecord(value);
      if (!v) return;
      const hasGroup = v.group !== undefined;
      const hasProject = v.project !== undefined;
      if (hasGroup && hasProject) {
        ctx.addIssue({ code: "custom", path: ["project"], message: "set either group or project, not both" });
      } else if (!hasGroup && !hasProject) {
        ctx.addIssue({ code: "custom", path: [], message: "must set exactly one of group or project" });
      }
      if (!hasGroup && v.includeSubgroups !== undefined) {
        ctx.addIssue({ code: "custom", path: ["includeSubgroups"], message: "applies only with group" });
      }
    },
    { when: () => true },
  )
  .describe("Which GitLab projects the binding selects: exactly one of group or project.");

const environmentName = z
  .string()
  .min(1, "must not be empty")
  .max(MAX_NAME_LENGTH, `must be at most ${MAX_NAME_LENGTH} characters`)
  .refine(
    (s) => !hasControlCharacter(s) && s.trim() === s,
    "must not contain control characters or edge spaces",
  )
  .describe("A GitLab environment name, e.g. production or review/app.");

const EnvironmentsSchema = z
  .strictObject({
    names: z
      .array(environmentName)
      .min(1, "must list at least one environment")
      .max(MAX_ENVIRONMENTS, `must list at most ${MAX_ENVIRONMENTS} environments`)
      .superRefine((names, ctx) => duplicates(names, ctx, (n) => n, "environment"), { when: () => true })
      .optional()
      .describe("Environment names: one account per project and listed environment."),
    fromGitLab: z
      .boolean()
      .optional()
      .describe("true: one account per project and each of its available GitLab environments."),
  })
  .superRefine(
    (value, ctx) => {
      const v = asRecord(value);
      if (!v) return;
      if (v.names !== undefined && v.fromGitLab === true) {
        ctx.addIssue({
          code: "custom",
          path: ["fromGitLab"],
          message: "set either names or fromGitLab, not both",
        });
      } else if (v.names === undefined && v.fromGitLab !== true) {
        ctx.addIssue({ code: "custom", path: [], message: "must set names or fromGitLab: true" });
      }
    },
    { when: () => true },
  )
  .describe("Environments of accountPer: environment: either names or fromGitLab: true.");

/** Refinements marked `when: () => true` also run on partly invalid input, so they read it defensively. */
function asRecord(value: unknown): Record<string, unknown> | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

function duplicates<T>(
  items: readonly T[],
  ctx: z.RefinementCtx,
  key: (item: T) => unknown,
  what: string,
  field?: string,
): void {
  if (!Array.isArray(items)) return;
  const seen = new Map<unknown, number>();
  items.forEach((item, i) => {
    const k = key(item);
    if (typeof k !== "string") return;
    const first = seen.get(k);
    if (first === undefined) seen.set(k, i);
    else
      ctx.addIssue({
        code: "custom",
        path: field === undefined ? [i] : [i, field],
        message: `duplicates ${what} ${JSON.stringify(k)} at [${first}]`,
      });
  });
}

const subjectTemplate = z
  .string()
  .min(1, "must not be empty")
  .max(MAX_SUBJECT_TEMPLATE_LENGTH, `must be at most ${MAX_SUBJECT_TEMPLATE_LENGTH} characters`)
  .superRefine((value, ctx) => {
    if (value.length === 0 || value.length > MAX_SUBJECT_TEMPLATE_LENGTH) return;
    // {{environment}} is checked against accountPer at the spec level.
    for (const problem of subjectTemplateProblems(value, { environmentAllowed: true })) {
      ctx.addIssue({ code: "custom", message: `${JSON.stringify(value.slice(0, 80))} ${problem}` });
    }
  })
  .describe(
    "A subject (wildcards * and > allowed) with optional templates: {{project.id}}, {{project.slug}}, " +
      "{{project.path}}, {{namespace.path}}, {{environment}}, or NATS functions such as {{tag(x)}}, {{name()}}.",
  );

const subjectList = (what: string) =>
  z
    .array(subjectTemplate)
    .max(MAX_SUBJECTS_PER_LIST, `must list at most ${MAX_SUBJECTS_PER_LIST} subjects`)
    .optional()
    .describe(what);

const permission = (verb: "publish" | "subscribe") =>
  z
    .strictObject({
      allow: subjectList(`Subjects users may ${verb} to. Empty or absent: all subjects not denied.`),
      deny: subjectList(`Subjects users may not ${verb} to.`),
    })
    .optional()
    .describe(
      `What users of the role may ${verb}. Absent: unrestricted within the account (NATS semantics); ` +
        `list allow subjects to restrict.`,
    );

const ResponsesSchema = z
  .strictObject({
    max: z
      .int("must be a whole number")
      .min(1, "must be at least 1")
      .max(MAX_RESPONSES, `must be at most ${MAX_RESPONSES}`)
      .describe("Replies allowed per received request."),
    ttl: z
      .string()
      .max(MAX_DURATION_LENGTH, `must be at most ${MAX_DURATION_LENGTH} characters`)
      .superRefine((value, ctx) => {
        const parsed = parseDuration(value, MAX_RESPONSE_TTL_MS);
        if ("problem" in parsed) ctx.addIssue({ code: "custom", message: parsed.problem });
      })
      .describe('How long the reply permission lasts, e.g. "5s", "500ms", "1m30s"; "0" for no time limit.'),
  })
  .optional()
  .describe("Allow replying to received requests (request/reply services) without publish permission.");

const CiSchema = z
  .strictObject({
    refs: z
      .enum(["protected", "any"])
      .default("protected")
      .describe(
        'Which refs: "protected" (default) only jobs on protected branches and tags (ref_protected), "any" every ref.',
      ),
    refTypes: z
      .array(z.enum(["branch", "tag"]).describe('A GitLab ref type (the ref_type claim): "branch" or "tag".'))
      .min(1, "must list at least one ref type")
      .max(2, "must list at most 2 ref types")
      .superRefine((types, ctx) => duplicates(types, ctx, (t) => t, "ref type"), { when: () => true })
      .optional()
      .describe("Only jobs of these ref types (branch, tag). Absent: both."),
    environments: z
      .array(environmentName)
      .min(1, "must list at least one environment")
      .max(MAX_ENVIRONMENTS, `must list at most ${MAX_ENVIRONMENTS} environments`)
      .superRefine((names, ctx) => duplicates(names, ctx, (n) => n, "environment"), { when: () => true })
      .optional()
      .describe(
        "Only jobs deploying to one of these environments, and only when GitLab marks the environment " +
          "protected (environment_protected). Absent: any job.",
      ),
    allowForkMergeRequests: z
      .boolean()
      .default(false)
      .describe(
        "Issue to merge-request jobs that run in a fork (job_project_id differs from project_id). Default false.",
      ),
  })
  .optional()
  .describe(
    "CI jobs of the project may get short-lived credentials of this role from their GitLab ID token. " +
      "Absent: never issued to CI jobs.",
  );

const RoleSchema = z
  .strictObject({
    name: dnsLabel("role name").describe(
      "Role name, unique in the binding; one scoped signing key per role.",
    ),
    publish: permission("publish"),
    subscribe: permission("subscribe"),
    responses: ResponsesSchema,
    ci: CiSchema,
  })
  .describe("A permission role: becomes a scoped signing key on every account of the binding.");

const count = (description: string) =>
  z
    .int("must be a whole number")
    .min(0, "must be >= 0 (leave the field out for unlimited)")
    .optional()
    .describe(`${description} Absent: unlimited.`);

const BYTES_HINT = "must be a byte quantity such as 1024, 64Mi, 1Gi or 500M";
const byteQuantity = (description: string) =>
  z
    .union(
      [
        z.int(BYTES_HINT).min(0, "must be >= 0 (leave the field out for unlimited)"),
        z
          .string()
          .max(MAX_QUANTITY_LENGTH, `must be at most ${MAX_QUANTITY_LENGTH} characters`)
          .superRefine((value, ctx) => {
            const parsed = parseByteQuantity(value);
            if ("problem" in parsed) ctx.addIssue({ code: "custom", message: parsed.problem });
          }),
      ],
      { error: BYTES_HINT },
    )
    .optional()
    .describe(`${description} Bytes or a Kubernetes quantity (64Mi, 1Gi, 500M).`);

const JetStreamSchema = z
  .strictObject({
    memory: byteQuantity("Memory storage for streams. Absent: none."),
    disk: byteQuantity("File storage for streams. Absent: none."),
    streams: count("Number of streams."),
    consumers: count("Number of consumers."),
  })
  .superRefine(
    (value, ctx) => {
      const v = asRecord(value);
      if (!v) return;
      const size = (x: unknown): number => {
        const parsed = parseByteQuantity(x);
        return "value" in parsed ? parsed.value : -1;
      };
      const memory = v.memory === undefined ? 0 : size(v.memory);
      const disk = v.disk === undefined ? 0 : size(v.disk);
      if (memory === 0 && disk === 0) {
        ctx.addIssue({
          code: "custom",
          path: [],
          message: "enables JetStream without storage: set memory or disk",
        });
      }
    },
    { when: () => true },
  )
  .optional()
  .describe("JetStream limits of each account. Absent: JetStream disabled.");

const LimitsSchema = z
  .strictObject({
    connections: count("Client connections per account."),
    subscriptions: count("Subscriptions per account."),
    payload: byteQuantity("Largest message payload."),
    data: byteQuantity("Bytes in flight per account."),
    jetstream: JetStreamSchema,
  })
  .prefault({})
  .describe("Limits of every account of the binding. Absent fields are unlimited.");

export const MIN_ROTATION_EVERY_MS = 3_600_000;
export const MAX_ROTATION_MS = 3650 * 86_400_000;

/** A rotation duration: "0" (where allowed) or at least an hour, with days allowed ("90d"). */
const rotationDuration = (what: string, allowZero: boolean) =>
  z
    .string()
    .max(MAX_DURATION_LENGTH, `must be at most ${MAX_DURATION_LENGTH} characters`)
    .regex(/^(0|([0-9]+(ms|s|m|h|d))+)$/, 'must be a duration such as "90d", "12h" or "1d12h"')
    .superRefine((value, ctx) => {
      const parsed = parseDuration(value, MAX_ROTATION_MS, { days: true });
      if ("problem" in parsed) ctx.addIssue({ code: "custom", message: parsed.problem });
      else if (parsed.value === 0 && !allowZero)
        ctx.addIssue({ code: "custom", message: `${what} must not be 0` });
      else if (parsed.value !== 0 && parsed.value < MIN_ROTATION_EVERY_MS)
        ctx.addIssue({ code: "custom", message: `${what} must be at least 1h` });
    });

const RotationSchema = z
  .strictObject({
    every: rotationDuration("every", true)
      .optional()
      .describe(
        'Rotate each role signing key once it is this old, e.g. "90d" (at least "1h"), less a jitter fixed per ' +
          'account and role (up to a tenth, at most 7 days); "0": only when asked. Default: rotation.every of natsbind.yaml.',
      ),
    gracePeriod: rotationDuration("gracePeriod", false)
      .optional()
      .describe(
        "A replaced key stays listed until what natsbind issued with it expired; while servers still show " +
          "connections it issued, at most this long after it stopped issuing, then it is removed and they are cut " +
          "off (at least 1h). Default: rotation.gracePeriod of natsbind.yaml.",
      ),
  })
  .optional()
  .describe(
    "Scheduled rotation of the accounts' role signing keys. To rotate now, annotate the binding with " +
      "natsbind.io/rotate=<RFC 3339 time> (natsbind.io/rotate-emergency after a leak); see docs/rotation.md.",
  );

export const NatsBindingSpecSchema = z
  .strictObject({
    gitlab: GitLabSchema,
    accountPer: z
      .enum(["project", "environment"])
      .default("project")
      .describe("One account per project (default), or per project and environment."),
    environments: EnvironmentsSchema.optional(),
    roles: z
      .array(RoleSchema)
      .max(MAX_ROLES, `must list at most ${MAX_ROLES} roles`)
      .superRefine((roles, ctx) => duplicates(roles, ctx, (r) => asRecord(r)?.name, "role name", "name"), {
        when: () => true,
      })
      .default([])
      .describe("Permission roles; each becomes a scoped signing key on every account."),
    limits: LimitsSchema,
    rotation: RotationSchema,
    deletionPolicy: z
      .enum(["Retain", "Delete"])
      .default("Retain")
      .describe(
        "When a project or the binding goes: Retain (default) keeps the account and keys; Delete removes them.",
      ),
  })
  .superRefine(
    (value, ctx) => {
      const v = asRecord(value);
      if (!v) return;
      const accountPer = v.accountPer ?? "project";
      if (accountPer !== "project" && accountPer !== "environment") return;
      const perEnvironment = accountPer === "environment";
      if (perEnvironment && v.environments === undefined) {
        ctx.addIssue({
          code: "custom",
          path: ["environments"],
          message: "is required with accountPer: environment (names or fromGitLab: true)",
        });
      }
      if (!perEnvironment && v.environments !== undefined) {
        ctx.addIssue({
          code: "custom",
          path: ["environments"],
          message: "applies only with accountPer: environment",
        });
      }
      if (perEnvironment) {
        ciEnvironmentsWithoutAccount(v, ctx);
        return;
      }
      if (!Array.isArray(v.roles)) return;
      v.roles.forEach((role: unknown, i) => {
        for (const verb of ["publish", "subscribe"] as const) {
          const rules = asRecord(asRecord(role)?.[verb]);
          for (const list of ["allow", "deny"] as const) {
            const subjects = rules?.[list];
            if (!Array.isArray(subjects)) continue;
            subjects.forEach((subject: unknown, j) => {
              if (typeof subject !== "string") return;
              const parsed = parseSubjectTemplate(subject);
              if ("variables" in parsed && parsed.variables.has("environment")) {
                ctx.addIssue({
                  code: "custom",
                  path: ["roles", i, verb, list, j],
                  message: `${JSON.stringify(subject.slice(0, 80))} uses {{environment}}, which needs accountPer: environment`,
                });
              }
            });
          }
        }
      });
    },
    { when: () => true },
  )
  .describe("How the GitLab projects a NatsBinding selects become NATS accounts.");

/**
 * With accountPer: environment and environments.names, the job's environment picks the account, so
 * a ci.environments entry outside names could never be issued: almost surely a typo ("prod" for
 * "production"), refused here rather than found when a deploy job is refused. With fromGitLab the
 * accounts follow GitLab, and an environment GitLab does not have yet is refused at issuance.
 */
function ciEnvironmentsWithoutAccount(spec: Record<string, unknown>, ctx: z.RefinementCtx): void {
  const names = asRecord(spec.environments)?.names;
  if (!Array.isArray(names) || !Array.isArray(spec.roles)) return;
  const accounts = new Set(names.filter((n): n is string => typeof n === "string"));
  spec.roles.forEach((role: unknown, i) => {
    const listed = asRecord(asRecord(role)?.ci)?.environments;
    if (!Array.isArray(listed)) return;
    listed.forEach((name: unknown, j) => {
      if (typeof name !== "string" || accounts.has(name)) return;
      ctx.addIssue({
        code: "custom",
        path: ["roles", i, "ci", "environments", j],
        message:
          `${JSON.stringify(name.slice(0, 80))} is not in environments.names: with accountPer: environment ` +
          "there is no account for it, so no job could get this role there",
      });
    });
  });
}

const MetadataSchema = z
  .object({
    name: z
      .string()
      .min(1, "must not be empty")
      .max(MAX_NAME_LENGTH, `must be at most ${MAX_NAME_LENGTH} characters`)
      .regex(OBJECT_NAME, 'must be lower-case letters, digits, "-" and ".", starting and ending alphanumeric')
      .describe("Binding name."),
    namespace: dnsLabel("namespace name").optional().describe("Binding namespace."),
    generation: z
      .int()
      .min(0)
      .optional()
      .describe("Spec generation (Kubernetes); reported as observedGeneration."),
    uid: z.string().min(1).max(128).optional().describe("Object uid (Kubernetes)."),
    creationTimestamp: z
      .preprocess((v) => (v instanceof Date ? v.toISOString() : v), z.iso.datetime({ offset: true }))
      .optional()
      .describe(
        "When the binding was created (RFC 3339). Kubernetes sets it; in a local file it is optional " +
          "(else natsbind uses when it first saw the binding). The older binding keeps overlapping projects.",
      ),
  })
  .describe("Object metadata; other Kubernetes metadata fields are ignored.");

/** The whole document; top-level fields other than these (e.g. Kubernetes `status`) are ignored. */
export const NatsBindingSchema = z
  .object({
    apiVersion: z.literal(API_VERSION).describe(`Must be ${API_VERSION}.`),
    kind: z.literal(KIND).describe(`Must be ${KIND}.`),
    metadata: MetadataSchema,
    spec: NatsBindingSpecSchema,
  })
  .describe("A NatsBinding: selects GitLab projects and says how their NATS accounts look.");

/** What users write (before defaults and conversions). */
export type NatsBindingDocument = z.input<typeof NatsBindingSchema>;
export type NatsBindingSpecDocument = z.input<typeof NatsBindingSpecSchema>;

/** The spec's JSON Schema (OpenAPI 3.0 flavour), for the CRD generator and its drift test. */
export function natsBindingSpecJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(NatsBindingSpecSchema, { io: "input", target: "openapi-3.0" }) as Record<
    string,
    unknown
  >;
}

export interface BindingProblem {
  /** Field path such as `spec.roles[1].publish.allow[0]`. */
  path: string;
  message: string;
}

/** Shown in an error message at most; `problems` keeps them all. */
export const MAX_PROBLEMS_IN_MESSAGE = 100;

/** An invalid NatsBinding: every problem with its field path. Retrying does not help. */
export class BindingValidationError extends TerminalError {
  readonly source: string;
  readonly problems: readonly BindingProblem[];

  constructor(source: string, problems: readonly BindingProblem[]) {
    const shown = problems.slice(0, MAX_PROBLEMS_IN_MESSAGE).map((p) => `${p.path}: ${p.message}`);
    if (problems.length > shown.length) shown.push(`and ${problems.length - shown.length} more`);
    super(`${source}: invalid ${KIND}: ${shown.join("; ")}`);
    this.source = source;
    this.problems = problems;
  }
}

/** `["spec", "roles", 1, "name"]` -> `spec.roles[1].name`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const key of path) {
    if (typeof key === "number") out += `[${key}]`;
    else {
      const name = String(key).slice(0, 64);
      if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(name)) out += out ? `.${name}` : name;
      else out += `[${JSON.stringify(name)}]`;
    }
  }
  return out || "(document)";
}

function problemsOf(error: z.ZodError, prefix: readonly PropertyKey[]): BindingProblem[] {
  const problems: BindingProblem[] = [];
  for (const issue of error.issues) {
    const path = [...prefix, ...issue.path];
    if (issue.code === "unrecognized_keys") {
      for (const key of issue.keys)
        problems.push({ path: formatPath([...path, key]), message: "unknown field" });
    } else if (issue.code === "invalid_type" && /received undefined$/.test(issue.message)) {
      problems.push({ path: formatPath(path), message: "is required" });
    } else {
      problems.push({ path: formatPath(path), message: issue.message });
    }
  }
  const seen = new Set<string>();
  return problems.filter((p) => {
    const key = `${p.path}\u0000${p.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function bytes(value: number | string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const parsed = parseByteQuantity(value);
  if ("problem" in parsed) throw new TerminalError(`unvalidated quantity: ${parsed.problem}`);
  return parsed.value;
}

function rules(p: { allow?: string[] | undefined; deny?: string[] | undefined } | undefined): SubjectRules {
  const canonical = (s: string): string => {
    const parsed = parseSubjectTemplate(s);
    return "normalized" in parsed ? parsed.normalized : s;
  };
  return { allow: (p?.allow ?? []).map(canonical), deny: (p?.deny ?? []).map(canonical) };
}

function toSpec(s: z.output<typeof NatsBindingSpecSchema>): NatsBindingSpec {
  const gitlab: NatsBindingSpec["gitlab"] =
    s.gitlab.group !== undefined
      ? { kind: "group", group: s.gitlab.group, includeSubgroups: s.gitlab.includeSubgroups ?? true }
      : { kind: "project", project: s.gitlab.project! };
  const roles = s.roles.map((r): Role => {
    const role: Role = { name: r.name, publish: rules(r.publish), subscribe: rules(r.subscribe) };
    if (r.responses) {
      const ttl = parseDuration(r.responses.ttl, MAX_RESPONSE_TTL_MS);
      role.responses = { max: r.responses.max, ttlMs: "value" in ttl ? ttl.value : 0 };
    }
    if (r.ci) {
      role.ci = { refs: r.ci.refs, allowForkMergeRequests: r.ci.allowForkMergeRequests };
      if (r.ci.refTypes) role.ci.refTypes = [...r.ci.refTypes];
      if (r.ci.environments) role.ci.environments = [...r.ci.environments];
    }
    return role;
  });
  const limits: BindingLimits = {};
  const l = s.limits;
  if (l.connections !== undefined) limits.connections = l.connections;
  if (l.subscriptions !== undefined) limits.subscriptions = l.subscriptions;
  if (l.payload !== undefined) limits.payload = bytes(l.payload)!;
  if (l.data !== undefined) limits.data = bytes(l.data)!;
  if (l.jetstream) {
    const js = l.jetstream;
    limits.jetstream = { memory: bytes(js.memory) ?? 0, disk: bytes(js.disk) ?? 0 };
    if (js.streams !== undefined) limits.jetstream.streams = js.streams;
    if (js.consumers !== undefined) limits.jetstream.consumers = js.consumers;
  }
  const spec: NatsBindingSpec = {
    gitlab,
    accountPer: s.accountPer,
    roles,
    limits,
    deletionPolicy: s.deletionPolicy,
  };
  if (s.rotation) {
    const ms = (v: string | undefined): number | undefined => {
      if (v === undefined) return undefined;
      const parsed = parseDuration(v, MAX_ROTATION_MS, { days: true });
      return "value" in parsed ? parsed.value : undefined;
    };
    const every = ms(s.rotation.every);
    const gracePeriod = ms(s.rotation.gracePeriod);
    spec.rotation = {
      ...(every !== undefined ? { everyMs: every } : {}),
      ...(gracePeriod !== undefined ? { gracePeriodMs: gracePeriod } : {}),
    };
  }
  if (s.environments) {
    spec.environments = s.environments.names
      ? { kind: "list", names: [...s.environments.names] }
      : { kind: "gitlab" };
  }
  return spec;
}

/** Validates a spec alone (e.g. from a Kubernetes object); `source` names it in errors. */
export function parseBindingSpec(spec: unknown, source: string): NatsBindingSpec {
  const result = NatsBindingSpecSchema.safeParse(spec);
  if (!result.success) throw new BindingValidationError(source, problemsOf(result.error, ["spec"]));
  return toSpec(result.data);
}

/**
 * Validates a whole NatsBinding document (a local YAML file, or a Kubernetes object) and returns it
 * normalised. Throws a BindingValidationError listing every problem with its field path.
 */
export function parseBinding(doc: unknown, source: string): NatsBinding {
  const result = NatsBindingSchema.safeParse(doc);
  if (!result.success) throw new BindingValidationError(source, problemsOf(result.error, []));
  const { metadata, spec } = result.data;
  const meta: NatsBinding["metadata"] = { name: metadata.name };
  if (metadata.namespace !== undefined) meta.namespace = metadata.namespace;
  if (metadata.generation !== undefined) meta.generation = metadata.generation;
  if (metadata.uid !== undefined) meta.uid = metadata.uid;
  if (metadata.creationTimestamp !== undefined) meta.creationTimestamp = metadata.creationTimestamp;
  return { apiVersion: API_VERSION, kind: KIND, metadata: meta, spec: toSpec(spec) };
}
