/**
 * The NatsBindingPolicy CustomResourceDefinition, built from the zod schema in policy.ts the same way
 * crd.ts builds NatsBinding's: structural schema from natsBindingPolicySpecJsonSchema(), CEL rules
 * mirroring zod's refinements, the status schema, printer columns. Cluster-scoped: only cluster
 * admins (who may write cluster-scoped natsbind.io objects) grant GitLab groups to namespaces.
 * scripts/gen-crd.ts writes crds/natsbindingpolicy.yaml.
 */
import {
  QUANTITY_PATTERN,
  QUANTITY_RULE,
  conditionsSchema,
  toStructuralSchema,
  withOverlays,
  type CelRule,
  type JsonSchema,
} from "./crd.ts";
import {
  LABEL_KEY_MESSAGE,
  LABEL_KEY_PATTERN,
  MAX_MATCH_LABELS,
  MAX_POLICY_GROUPS,
  POLICY_CRD_NAME,
  POLICY_KIND,
  POLICY_PLURAL,
  POLICY_SINGULAR,
  natsBindingPolicySpecJsonSchema,
  type NatsBindingPolicyStatus,
  type PolicyGroupStatus,
} from "./policy.ts";
import { GROUP, VERSION } from "./types.ts";

const quantity = { pattern: QUANTITY_PATTERN, "x-kubernetes-validations": [QUANTITY_RULE] };

const OVERLAYS: Record<string, JsonSchema> = {
  "namespaceSelector.matchLabels": {
    maxProperties: MAX_MATCH_LABELS,
    "x-kubernetes-validations": [
      {
        rule: `self.all(k, k.size() <= 317 && k.matches(r'${LABEL_KEY_PATTERN}') && (k.indexOf('/') < 0 || k.indexOf('/') <= 253))`,
        message: `every key ${LABEL_KEY_MESSAGE}`,
      },
    ] satisfies CelRule[],
  },
  "namespaceSelector.matchExpressions[]": {
    "x-kubernetes-validations": [
      {
        rule: "!(self.operator in ['In', 'NotIn']) || (has(self.values) && self.values.size() > 0)",
        message: "must not be empty with In or NotIn",
        fieldPath: ".values",
        reason: "FieldValueRequired",
      },
      {
        rule: "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values)",
        message: "must be absent with Exists or DoesNotExist",
        fieldPath: ".values",
        reason: "FieldValueForbidden",
      },
    ] satisfies CelRule[],
  },
  "namespaceSelector.matchExpressions[].key": {
    "x-kubernetes-validations": [
      {
        rule: "self.indexOf('/') < 0 || self.indexOf('/') <= 253",
        message: "has a prefix longer than 253 characters",
      },
    ] satisfies CelRule[],
  },
  // Duplicates are rejected by the apiserver itself ("Duplicate value").
  "gitlab.groups": { "x-kubernetes-list-type": "set" },
  "ceilings.deletionPolicies": { "x-kubernetes-list-type": "set" },
  "ceilings.limits.payload": quantity,
  "ceilings.limits.data": quantity,
  "ceilings.limits.jetstream.memory": quantity,
  "ceilings.limits.jetstream.disk": quantity,
};

/** The policy spec's structural schema with its CEL rules. */
export function natsBindingPolicySpecSchema(): JsonSchema {
  return withOverlays(toStructuralSchema(natsBindingPolicySpecJsonSchema()), OVERLAYS);
}

const string = (description: string, extra: JsonSchema = {}): JsonSchema => ({
  description,
  type: "string",
  ...extra,
});
const integer = (description: string, minimum = 0): JsonSchema => ({
  description,
  type: "integer",
  format: "int64",
  minimum,
});

// Keyed by the TypeScript status types, so tsc fails when a field is added there and not here.
const groupProperties: { [K in keyof PolicyGroupStatus]-?: JsonSchema } = {
  path: string("The path as written in spec.gitlab.groups."),
  id: integer("The GitLab group id the path resolved to when natsbind first saw it: what is granted.", 1),
  currentPath: string("The group's full path now (differs after a rename); absent when the group is gone."),
};

const statusProperties: { [K in keyof NatsBindingPolicyStatus]-?: JsonSchema } = {
  observedGeneration: integer("The spec generation the status describes."),
  groups: {
    description: "The GitLab group id of each granted path, recorded when natsbind first resolved it.",
    type: "array",
    maxItems: MAX_POLICY_GROUPS,
    items: {
      description: "One granted group.",
      type: "object",
      required: ["path", "id"],
      properties: groupProperties,
    },
  },
  conditions: conditionsSchema({
    types: "Condition type: Ready.",
    reasons: "Resolved, GroupNotFound, GitLabError or InvalidSpec.",
    description: "Ready: every granted path resolved to a group that still exists.",
  }),
};

const readyCondition = '.status.conditions[?(@.type=="Ready")]';

/** The whole NatsBindingPolicy CustomResourceDefinition, as plain data. Pure. */
export function natsBindingPolicyCrd(): JsonSchema {
  return {
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    metadata: { name: POLICY_CRD_NAME },
    spec: {
      group: GROUP,
      names: {
        kind: POLICY_KIND,
        listKind: `${POLICY_KIND}List`,
        plural: POLICY_PLURAL,
        singular: POLICY_SINGULAR,
        shortNames: ["nbp"],
        categories: ["natsbind"],
      },
      scope: "Cluster",
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: [
            {
              name: "Groups",
              type: "string",
              jsonPath: ".spec.gitlab.groups",
              description: "GitLab groups the selected namespaces may bind.",
            },
            {
              name: "Ready",
              type: "string",
              jsonPath: `${readyCondition}.status`,
              description: "Whether every granted path resolved to a group that exists.",
            },
            { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" },
            {
              name: "Message",
              type: "string",
              priority: 1,
              jsonPath: `${readyCondition}.message`,
              description: "Why the policy is (not) ready.",
            },
          ],
          schema: {
            openAPIV3Schema: {
              description:
                "A NatsBindingPolicy (cluster-scoped, admin-owned) grants the namespaces its selector matches " +
                "the right to bind the listed GitLab groups (their subgroups and projects) in NatsBindings, " +
                "within optional ceilings. A NatsBinding no policy grants is refused (Ready=False, Forbidden).",
              type: "object",
              required: ["spec"],
              properties: {
                apiVersion: string(
                  "Versioned schema of this representation of an object; natsbind.io/v1alpha1.",
                ),
                kind: string("The REST resource this object represents: NatsBindingPolicy."),
                metadata: { type: "object" },
                spec: natsBindingPolicySpecSchema(),
                status: {
                  description:
                    "What natsbind resolved; written by the controller through the status subresource.",
                  type: "object",
                  properties: structuredClone(statusProperties),
                },
              },
            },
          },
        },
      ],
    },
  };
}
