/**
 * Kubernetes mode: rotation triggers from a NatsBinding's annotations, like `kubectl rollout
 * restart` does it with a timestamp:
 *
 *   natsbind.io/rotate: "2026-11-29T10:00:00Z"             rotate every role key of every account
 *   natsbind.io/rotate-emergency: "2026-11-29T10:00:00Z"   drop every key of the role(s) at once
 *
 * optionally followed by space-separated `project=<id>`, `environment=<name>`, `role=<name>` to
 * narrow it. A trigger is a time, so re-applying the same annotation does nothing more. Revocations
 * in Kubernetes mode are written to the account's Secret (KeyStore.update) by `natsbind credentials
 * revoke`, not requested here. A malformed value is reported (an Event) and ignored.
 */
import type { Clock } from "../runtime/clock.ts";
import type { RotationTrigger } from "../rotation/phases.ts";
import type { BindingRequests, RequestSource } from "../rotation/rotator.ts";

export const ANNOTATION_ROTATE = "natsbind.io/rotate";
export const ANNOTATION_ROTATE_EMERGENCY = "natsbind.io/rotate-emergency";

const MAX_VALUE = 512;
/** A trigger dated further ahead than this is refused (a typo in the year, not a plan). */
const MAX_AHEAD_MS = 86_400_000;

/** Parses one annotation value; a problem names the annotation and what is wrong. */
export function parseRotateAnnotation(
  name: string,
  value: string,
  emergency: boolean,
  now: number,
): RotationTrigger | { problem: string } {
  const bad = (what: string) => ({ problem: `annotation ${name}: ${what}` });
  if (value.length > MAX_VALUE) return bad(`longer than ${MAX_VALUE} characters`);
  const [time, ...scope] = value.trim().split(/\s+/);
  if (!time || !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(time))
    return bad(
      `${JSON.stringify(time?.slice(0, 40) ?? "")} is not an RFC 3339 time (e.g. $(date -u +%FT%TZ))`,
    );
  const at = Date.parse(time);
  if (!Number.isFinite(at)) return bad(`${JSON.stringify(time)} is not a valid time`);
  if (at > now + MAX_AHEAD_MS) return bad(`${time} is more than a day in the future`);
  const trigger: RotationTrigger = { at, emergency };
  for (const part of scope) {
    const m = /^(project|environment|role)=(.+)$/.exec(part);
    if (!m)
      return bad(
        `${JSON.stringify(part.slice(0, 40))} is not project=<id>, environment=<name> or role=<name>`,
      );
    const [, key, v] = m as unknown as [string, string, string];
    if (key === "project") {
      if (!/^[1-9][0-9]{0,15}$/.test(v)) return bad(`project=${v.slice(0, 20)} is not a project id`);
      trigger.projectId = Number(v);
    } else if (key === "role") {
      if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(v))
        return bad(`role=${v.slice(0, 70)} is not a role name`);
      trigger.role = v;
    } else trigger.environment = v.slice(0, 255);
  }
  return trigger;
}

export class AnnotationRequests implements RequestSource {
  readonly #annotations: (binding: string) => Record<string, string> | undefined;
  readonly #clock: Clock;

  constructor(annotations: (binding: string) => Record<string, string> | undefined, clock: Clock) {
    this.#annotations = annotations;
    this.#clock = clock;
  }

  async requests(binding: string): Promise<BindingRequests> {
    const annotations = this.#annotations(binding) ?? {};
    const triggers: RotationTrigger[] = [];
    const problems: string[] = [];
    for (const [name, emergency] of [
      [ANNOTATION_ROTATE, false],
      [ANNOTATION_ROTATE_EMERGENCY, true],
    ] as const) {
      const value = annotations[name];
      if (value === undefined) continue;
      const parsed = parseRotateAnnotation(name, value, emergency, this.#clock.now());
      if ("problem" in parsed) problems.push(parsed.problem);
      else triggers.push(parsed);
    }
    return { triggers, revocations: [], ...(problems.length > 0 ? { problems } : {}) };
  }
}
