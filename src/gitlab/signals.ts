/**
 * What the GitLab webhook receiver hands to the controller: a typed "look at this soon" hint. The
 * controller maps a signal to binding keys and re-reads GitLab; nothing here is trusted as state.
 * Identity is the immutable id (project_id, group_id); paths are only hints for logs and matching.
 */
import { z } from "zod";

export const PROJECT_EVENTS = [
  "project_create",
  "project_destroy",
  "project_rename",
  "project_transfer",
  "project_update",
] as const;
export const GROUP_EVENTS = [
  "group_create",
  "group_destroy",
  "group_rename",
  "subgroup_create",
  "subgroup_destroy",
] as const;
/** Values of `X-Gitlab-Event` whose payloads carry an `event_name` we understand. */
export const WEBHOOK_EVENT_HEADERS = ["System Hook", "Project Hook", "Subgroup Hook", "Group Hook"] as const;

export type ProjectEvent = (typeof PROJECT_EVENTS)[number];
export type GroupEvent = (typeof GROUP_EVENTS)[number];

export type ProjectSignal = {
  kind: "project";
  event: ProjectEvent;
  projectId: number;
  /**
   * `project_namespace_id`: GitLab's hook builder fills it with project.namespace_id (the parent
   * group); the simulator sends the project's own namespace id. relevance.ts works with either.
   */
  namespaceId?: number;
  path?: string;
  oldPath?: string;
};
export type GroupSignal = {
  kind: "group";
  event: GroupEvent;
  groupId: number;
  fullPath?: string;
  oldFullPath?: string;
  parentGroupId?: number;
};
export type GitLabSignal = ProjectSignal | GroupSignal;

export type ParseWebhookResult =
  { ok: true; signal: GitLabSignal } | { ok: false; reason: "unknown-event" | "invalid"; message: string };

export const MAX_PATH_LENGTH = 1024;
/** Longest event name or header value echoed back in a message; the rest is cut. */
const MAX_ECHO = 64;

const ID_MESSAGE = "must be a positive integer";
const required = (message: string) => (issue: { input?: unknown }) =>
  issue.input === undefined ? "is required" : message;
// z.int() accepts safe integers only, so ids above 2^53 - 1 are refused too.
const id = z.int({ error: required(ID_MESSAGE) }).min(1, { error: ID_MESSAGE });

// Control characters would let a path forge log lines; GitLab paths never contain them.
// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;
const path = z
  .string({ error: required("must be a string") })
  .min(1, { error: "must not be empty" })
  .max(MAX_PATH_LENGTH, { error: `must be at most ${MAX_PATH_LENGTH} characters` })
  .refine((s) => !CONTROL_CHARS.test(s), { error: "must not contain control characters" });

// GitLab sends null for some absent values; null and missing mean the same here.
const ProjectPayload = z.object({
  project_id: id,
  project_namespace_id: id.nullish(),
  path_with_namespace: path.nullish(),
  old_path_with_namespace: path.nullish(),
});

const GroupPayload = z.object({
  group_id: id,
  full_path: path.nullish(),
  old_full_path: path.nullish(),
  parent_group_id: id.nullish(),
});

function isProjectEvent(name: string): name is ProjectEvent {
  return (PROJECT_EVENTS as readonly string[]).includes(name);
}
function isGroupEvent(name: string): name is GroupEvent {
  return (GROUP_EVENTS as readonly string[]).includes(name);
}

function echo(value: string): string {
  return JSON.stringify(value.length > MAX_ECHO ? `${value.slice(0, MAX_ECHO)}...` : value);
}

function formatIssues(error: z.ZodError): string {
  const lines = error.issues.map(
    (issue) => `${issue.path.length ? issue.path.join(".") : "(top level)"}: ${issue.message}`,
  );
  return [...new Set(lines)].join("; ");
}

type Present<T> = { [K in keyof T]?: Exclude<T[K], null | undefined> };

/** Keeps only the fields that have a value, so signals compare equal whether GitLab sent null or nothing. */
function present<T extends Record<string, unknown>>(fields: T): Present<T> {
  return Object.fromEntries(
    Object.entries(fields).filter(([, v]) => v !== undefined && v !== null),
  ) as Present<T>;
}

/**
 * Turns one webhook delivery into a signal. Pure: no I/O, no clock. `unknown-event` means "not for
 * us, acknowledge and ignore"; `invalid` means the payload is broken and `message` names the field.
 *
 * The header only gates which hook kinds are read at all; `event_name` decides the shape. Any
 * sender here has the shared secret, and a signal only asks for a re-read, so a system hook that
 * arrives under a group-hook header does no harm.
 */
export function parseWebhook(eventHeader: string | undefined, body: unknown): ParseWebhookResult {
  if (eventHeader === undefined)
    return { ok: false, reason: "unknown-event", message: "missing X-Gitlab-Event header" };
  if (!(WEBHOOK_EVENT_HEADERS as readonly string[]).includes(eventHeader))
    return {
      ok: false,
      reason: "unknown-event",
      message: `X-Gitlab-Event ${echo(eventHeader)} is not handled`,
    };
  if (typeof body !== "object" || body === null || Array.isArray(body))
    return { ok: false, reason: "invalid", message: "body must be a JSON object" };

  const eventName = (body as Record<string, unknown>)["event_name"];
  // Other hook kinds (merge requests, pushes, ...) carry object_kind instead of event_name.
  if (eventName === undefined)
    return {
      ok: false,
      reason: "unknown-event",
      message: `${eventHeader} without event_name is not handled`,
    };
  if (typeof eventName !== "string")
    return { ok: false, reason: "invalid", message: "event_name: must be a string" };

  if (isProjectEvent(eventName)) {
    const parsed = ProjectPayload.safeParse(body);
    if (!parsed.success)
      return { ok: false, reason: "invalid", message: `${eventName}: ${formatIssues(parsed.error)}` };
    const p = parsed.data;
    const signal: ProjectSignal = {
      kind: "project",
      event: eventName,
      projectId: p.project_id,
      ...present({
        namespaceId: p.project_namespace_id,
        path: p.path_with_namespace,
        oldPath: p.old_path_with_namespace,
      }),
    };
    return { ok: true, signal };
  }
  if (isGroupEvent(eventName)) {
    const parsed = GroupPayload.safeParse(body);
    if (!parsed.success)
      return { ok: false, reason: "invalid", message: `${eventName}: ${formatIssues(parsed.error)}` };
    const g = parsed.data;
    const signal: GroupSignal = {
      kind: "group",
      event: eventName,
      groupId: g.group_id,
      ...present({
        fullPath: g.full_path,
        oldFullPath: g.old_full_path,
        parentGroupId: g.parent_group_id,
      }),
    };
    return { ok: true, signal };
  }
  return { ok: false, reason: "unknown-event", message: `event_name ${echo(eventName)} is not handled` };
}
