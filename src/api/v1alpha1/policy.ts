/**
 * NatsBindingPolicy v1alpha1: the admin-owned, cluster-scoped object that says which namespaces may
 * bind which GitLab groups (issue 9, finding 2). Without a policy granting it, a NatsBinding in
 * Kubernetes mode selects nothing. Like schema.ts for NatsBinding, this zod schema is the one source
 * of truth: policy-crd.ts builds crds/natsbindingpolicy.yaml from it and adds CEL rules mirroring
 * its refinements.
 *
 * Grants are by GitLab group id: natsbind resolves each path once and records the id in the
 * policy's status (status.groups); from then on a rename keeps the grant, and a group re-created at
 * the same path (a new id) does not inherit it.
 */
import { z } from "zod";
import { TerminalError } from "../../errors.ts";
import { MAX_QUANTITY_LENGTH, parseByteQuantity } from "../../units.ts";
import { MAX_GITLAB_PATH_LENGTH, formatPath, type BindingProblem } from "./schema.ts";
import { API_VERSION, GROUP } from "./types.ts";
import type { DeletionPolicy } from "./types.ts";

export const POLICY_KIND = "NatsBindingPolicy";
export const POLICY_PLURAL = "natsbindingpolicies";
export const POLICY_SINGULAR = "natsbindingpolicy";
export const POLICY_CRD_NAME = `${POLICY_PLURAL}.${GROUP}`;

export const MAX_POLICY_GROUPS = 64;
export const MAX_MATCH_LABELS = 64;
export const MAX_MATCH_EXPRESSIONS = 32;
export const MAX_SELECTOR_VALUES = 64;
export const MAX_LABEL_KEY_LENGTH = 317; // 253 (DNS subdomain prefix) + "/" + 63 (name)
export const MAX_LABEL_VALUE_LENGTH = 63;

/** Kubernetes qualified name: optional DNS-subdomain prefix and "/", then a name of at most 63. */
export const LABEL_KEY_PATTERN = String.raw`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$`;
/** A label value: empty, or alphanumeric at both ends with "-", "_", "." inside. */
export const LABEL_VALUE_PATTERN = String.raw`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`;
/** A GitLab group full path (same segments as schema.ts). */
export const GROUP_PATH_PATTERN = String.raw`^[A-Za-z0-9_.][A-Za-z0-9_.-]*(/[A-Za-z0-9_.][A-Za-z0-9_.-]*)*$`;

const LABEL_KEY = new RegExp(LABEL_KEY_PATTERN);
const LABEL_VALUE = new RegExp(LABEL_VALUE_PATTERN);
const GROUP_PATH = new RegExp(GROUP_PATH_PATTERN);

export const LABEL_KEY_MESSAGE =
  'must be a label key: an optional DNS-subdomain prefix and "/", then at most 63 letters, digits, ' +
  '"-", "_" or ".", starting and ending alphanumeric';
export const LABEL_VALUE_MESSAGE =
  'must be a label value: at most 63 letters, digits, "-", "_" or ".", starting and ending alphanumeric';
export const GROUP_PATH_MESSAGE = 'must be a GitLab group full path such as "acme" or "acme/team-a"';

function prefixTooLong(key: string): boolean {
  const slash = key.indexOf("/");
  return slash > 253;
}

const labelKey = z
  .string()
  .min(1, "must not be empty")
  .max(MAX_LABEL_KEY_LENGTH, `must be at most ${MAX_LABEL_KEY_LENGTH} characters`)
  .regex(LABEL_KEY, LABEL_KEY_MESSAGE)
  .refine((k) => !prefixTooLong(k), "has a prefix longer than 253 characters");

const labelValue = z
  .string()
  .max(MAX_LABEL_VALUE_LENGTH, `must be at most ${MAX_LABEL_VALUE_LENGTH} characters`)
  .regex(LABEL_VALUE, LABEL_VALUE_MESSAGE);

const OPERATORS = ["In", "NotIn", "Exists", "DoesNotExist"] as const;
export type SelectorOperator = (typeof OPERATORS)[number];

function asRecord(value: unknown): Record<string, unknown> | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

const RequirementSchema = z
  .strictObject({
    key: labelKey.describe("The label key the requirement applies to."),
    operator: z
      .enum(OPERATORS)
      .describe("In, NotIn (values required), Exists or DoesNotExist (values must be absent)."),
    values: z
      .array(labelValue.describe("A label value."))
      .max(MAX_SELECTOR_VALUES, `must list at most ${MAX_SELECTOR_VALUES} values`)
      .optional()
      .describe("Label values; non-empty for In and NotIn, absent for Exists and DoesNotExist."),
  })
  .superRefine(
    (value, ctx) => {
      const v = asRecord(value);
      if (!v) return;
      const needsValues = v.operator === "In" || v.operator === "NotIn";
      const hasValues = Array.isArray(v.values) && v.values.length > 0;
      if (needsValues && !hasValues) {
        ctx.addIssue({ code: "custom", path: ["values"], message: "must not be empty with In or NotIn" });
      }
      if ((v.operator === "Exists" || v.operator === "DoesNotExist") && v.values !== undefined) {
        ctx.addIssue({
          code: "custom",
          path: ["values"],
          message: "must be absent with Exists or DoesNotExist",
        });
      }
    },
    { when: () => true },
  )
  .describe("A label selector requirement (metav1.LabelSelectorRequirement).");

const NamespaceSelectorSchema = z
  .strictObject({
    matchLabels: z
      .record(z.string(), labelValue.describe("A label value."))
      .superRefine(
        (labels, ctx) => {
          const entries = Object.keys(asRecord(labels) ?? {});
          if (entries.length > MAX_MATCH_LABELS) {
            ctx.addIssue({ code: "custom", message: `must have at most ${MAX_MATCH_LABELS} labels` });
          }
          for (const key of entries.slice(0, MAX_MATCH_LABELS + 1)) {
            const parsed = labelKey.safeParse(key);
            if (!parsed.success) {
              ctx.addIssue({
                code: "custom",
                path: [key],
                message: `key ${parsed.error.issues[0]!.message}`,
              });
            }
          }
        },
        { when: () => true },
      )
      .optional()
      .describe("Labels a namespace must have, all of them (key: value)."),
    matchExpressions: z
      .array(RequirementSchema)
      .max(MAX_MATCH_EXPRESSIONS, `must list at most ${MAX_MATCH_EXPRESSIONS} requirements`)
      .optional()
      .describe("Requirements a namespace's labels must all meet."),
  })
  .describe(
    "Which namespaces the policy applies to, by their labels (metav1.LabelSelector; {} selects every " +
      "namespace). One team's namespace: matchLabels: {kubernetes.io/metadata.name: team-a}.",
  );

const groupPath = z
  .string()
  .min(1, "must not be empty")
  .max(MAX_GITLAB_PATH_LENGTH, `must be at most ${MAX_GITLAB_PATH_LENGTH} characters`)
  .regex(GROUP_PATH, GROUP_PATH_MESSAGE)
  .describe("A GitLab group full path, e.g. acme/team-a.");

const PolicyGitLabSchema = z
  .strictObject({
    groups: z
      .array(groupPath)
      .min(1, "must list at least one group")
      .max(MAX_POLICY_GROUPS, `must list at most ${MAX_POLICY_GROUPS} groups`)
      .superRefine(
        (groups, ctx) => {
          if (!Array.isArray(groups)) return;
          const seen = new Map<string, number>();
          groups.forEach((g, i) => {
            if (typeof g !== "string") return;
            const first = seen.get(g);
            if (first === undefined) seen.set(g, i);
            else
              ctx.addIssue({ code: "custom", path: [i], message: `duplicates group "${g}" at [${first}]` });
          });
        },
        { when: () => true },
      )
      .describe(
        "GitLab groups (full paths) the selected namespaces may bind: the groups, their subgroups and the " +
          "projects inside them. natsbind records each group's id in status.groups when it first sees " +
          "it; the grant follows that id (a renamed group stays granted, a group re-created at the " +
          "same path does not).",
      ),
  })
  .describe("What the selected namespaces may bind in GitLab.");

const BYTES_HINT = "must be a byte quantity such as 1024, 64Mi, 1Gi or 500M";
const maxBytes = (description: string) =>
  z
    .union(
      [
        z.int(BYTES_HINT).min(0, "must be >= 0"),
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
    .describe(`${description} Bytes or a Kubernetes quantity (64Mi, 1Gi, 500M). Absent: no maximum.`);

const maxCount = (description: string) =>
  z
    .int("must be a whole number")
    .min(0, "must be >= 0")
    .optional()
    .describe(`${description} Absent: no maximum.`);

const CeilingLimitsSchema = z
  .strictObject({
    connections: maxCount("Maximum spec.limits.connections; a binding must set it, at most this."),
    subscriptions: maxCount("Maximum spec.limits.subscriptions; a binding must set it, at most this."),
    payload: maxBytes("Maximum spec.limits.payload; a binding must set it, at most this."),
    data: maxBytes("Maximum spec.limits.data; a binding must set it, at most this."),
    jetstream: z
      .strictObject({
        memory: maxBytes("Maximum spec.limits.jetstream.memory."),
        disk: maxBytes("Maximum spec.limits.jetstream.disk."),
        streams: maxCount("Maximum spec.limits.jetstream.streams; a binding with JetStream must set it."),
        consumers: maxCount("Maximum spec.limits.jetstream.consumers; a binding with JetStream must set it."),
      })
      .optional()
      .describe("Maximums of a binding's JetStream limits (a binding without JetStream meets them)."),
  })
  .optional()
  .describe(
    "Maximums of a binding's spec.limits. A binding leaving a limited field out (unlimited) exceeds it.",
  );

const CeilingsSchema = z
  .strictObject({
    deletionPolicies: z
      .array(z.enum(["Delete", "Retain"]).describe("Delete or Retain."))
      .min(1, "must list at least one deletionPolicy")
      .max(2, "must list at most 2 deletionPolicies")
      .superRefine(
        (list, ctx) => {
          if (Array.isArray(list) && new Set(list).size !== list.length) {
            ctx.addIssue({ code: "custom", message: "must not repeat a deletionPolicy" });
          }
        },
        { when: () => true },
      )
      .optional()
      .describe("The deletionPolicies a binding may use. Absent: both."),
    limits: CeilingLimitsSchema,
  })
  .optional()
  .describe("Optional ceilings on what bindings granted by this policy may ask for.");

export const NatsBindingPolicySpecSchema = z
  .strictObject({
    namespaceSelector: NamespaceSelectorSchema,
    gitlab: PolicyGitLabSchema,
    ceilings: CeilingsSchema,
  })
  .describe("Which namespaces may bind which GitLab groups, and within which ceilings.");

const PolicyMetadataSchema = z
  .object({
    name: z.string().min(1, "must not be empty").max(253).describe("Policy name."),
    generation: z.int().min(0).optional().describe("Spec generation."),
  })
  .describe("Object metadata; other fields are ignored.");

export const NatsBindingPolicySchema = z
  .object({
    apiVersion: z.literal(API_VERSION).describe(`Must be ${API_VERSION}.`),
    kind: z.literal(POLICY_KIND).describe(`Must be ${POLICY_KIND}.`),
    metadata: PolicyMetadataSchema,
    spec: NatsBindingPolicySpecSchema,
  })
  .describe("A NatsBindingPolicy.");

export type NatsBindingPolicySpecDocument = z.input<typeof NatsBindingPolicySpecSchema>;

/** The spec's JSON Schema (OpenAPI 3.0 flavour), for the CRD generator. */
export function natsBindingPolicySpecJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(NatsBindingPolicySpecSchema, { io: "input", target: "openapi-3.0" }) as Record<
    string,
    unknown
  >;
}

export interface LabelSelectorRequirement {
  key: string;
  operator: SelectorOperator;
  values: string[];
}

export interface LabelSelector {
  matchLabels: Record<string, string>;
  matchExpressions: LabelSelectorRequirement[];
}

/** Byte fields in bytes; absent fields have no maximum. */
export interface LimitCeilings {
  connections?: number;
  subscriptions?: number;
  payload?: number;
  data?: number;
  jetstream?: { memory?: number; disk?: number; streams?: number; consumers?: number };
}

export interface PolicyCeilings {
  /** Absent: both allowed. */
  deletionPolicies?: DeletionPolicy[];
  limits?: LimitCeilings;
}

export interface NatsBindingPolicySpec {
  namespaceSelector: LabelSelector;
  groups: string[];
  ceilings: PolicyCeilings;
}

/** An invalid NatsBindingPolicy: every problem with its field path. */
export class PolicyValidationError extends TerminalError {
  readonly problems: readonly BindingProblem[];
  constructor(source: string, problems: readonly BindingProblem[]) {
    super(`${source}: invalid ${POLICY_KIND}: ${problems.map((p) => `${p.path}: ${p.message}`).join("; ")}`);
    this.problems = problems;
  }
}

function bytes(value: number | string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const parsed = parseByteQuantity(value);
  return "value" in parsed ? parsed.value : undefined;
}

function defined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

/** Validates a policy spec (e.g. from a Kubernetes object) and returns it normalised (bytes). */
export function parsePolicySpec(spec: unknown, source: string): NatsBindingPolicySpec {
  const result = NatsBindingPolicySpecSchema.safeParse(spec);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => ({
      path: formatPath(["spec", ...issue.path]),
      message:
        issue.code === "unrecognized_keys"
          ? `unknown field(s) ${issue.keys.join(", ")}`
          : issue.code === "invalid_type" && /received undefined$/.test(issue.message)
            ? "is required"
            : issue.message,
    }));
    throw new PolicyValidationError(source, problems);
  }
  const s = result.data;
  const ceilings: PolicyCeilings = {};
  if (s.ceilings?.deletionPolicies) ceilings.deletionPolicies = [...s.ceilings.deletionPolicies];
  const l = s.ceilings?.limits;
  if (l) {
    ceilings.limits = defined({
      connections: l.connections,
      subscriptions: l.subscriptions,
      payload: bytes(l.payload),
      data: bytes(l.data),
      jetstream: l.jetstream
        ? defined({
            memory: bytes(l.jetstream.memory),
            disk: bytes(l.jetstream.disk),
            streams: l.jetstream.streams,
            consumers: l.jetstream.consumers,
          })
        : undefined,
    });
  }
  return {
    namespaceSelector: {
      matchLabels: { ...(s.namespaceSelector.matchLabels ?? {}) },
      matchExpressions: (s.namespaceSelector.matchExpressions ?? []).map((r) => ({
        key: r.key,
        operator: r.operator,
        values: [...(r.values ?? [])],
      })),
    },
    groups: [...s.gitlab.groups],
    ceilings,
  };
}

/** One granted path and the GitLab group id natsbind resolved it to (status.groups[]). */
export interface PolicyGroupStatus {
  /** The path as written in spec.gitlab.groups. */
  path: string;
  /** The group id the path resolved to when natsbind first saw it: the grant. */
  id: number;
  /** The group's full path now; absent when the group no longer exists. */
  currentPath?: string;
}

export const POLICY_REASON = {
  Resolved: "Resolved",
  GroupNotFound: "GroupNotFound",
  GitLabError: "GitLabError",
  InvalidSpec: "InvalidSpec",
} as const;

export interface PolicyCondition {
  type: "Ready";
  status: "True" | "False" | "Unknown";
  reason: string;
  message: string;
  observedGeneration: number;
  lastTransitionTime: string;
}

export interface NatsBindingPolicyStatus {
  observedGeneration: number;
  groups: PolicyGroupStatus[];
  conditions: PolicyCondition[];
}

const MAX_GROUP_ID = Number.MAX_SAFE_INTEGER;

/**
 * status.groups of a stored object, read defensively: only well-formed entries count (the status
 * is written by natsbind, but an object can hold anything its writers put there).
 */
export function policyGroupsOf(status: unknown): PolicyGroupStatus[] {
  const groups = asRecord(status)?.groups;
  if (!Array.isArray(groups)) return [];
  const out: PolicyGroupStatus[] = [];
  for (const g of groups.slice(0, MAX_POLICY_GROUPS)) {
    const r = asRecord(g);
    if (!r || typeof r.path !== "string" || !GROUP_PATH.test(r.path)) continue;
    if (typeof r.id !== "number" || !Number.isInteger(r.id) || r.id < 1 || r.id > MAX_GROUP_ID) continue;
    const entry: PolicyGroupStatus = { path: r.path, id: r.id };
    if (typeof r.currentPath === "string") entry.currentPath = r.currentPath;
    out.push(entry);
  }
  return out;
}
