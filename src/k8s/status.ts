/**
 * Binding status through the status subresource. A write replaces .status at the resourceVersion
 * natsbind last saw; a 409 (someone changed the object meanwhile) re-reads it and tries again, up to
 * MAX_ATTEMPTS. An unchanged status is not written at all, so status writes do not feed the watch
 * loop. Transitions of the Ready condition become Events (Conflict, InvalidSpec, push failures).
 */
import { isDeepStrictEqual } from "node:util";
import type { CustomObjectsApi } from "@kubernetes/client-node";
import { CONDITION, REASON, type BindingStatus } from "../controllers/binding/status.ts";
import type { StatusWriter } from "../controllers/binding/reconciler.ts";
import { NatsbindError } from "../errors.ts";
import { apiStatusCode } from "./api-errors.ts";
import { GROUP, PLURAL, VERSION, splitBindingKey, type NatsBindingObject } from "./bindings.ts";
import type { EventRecorder } from "./events.ts";

export const MAX_ATTEMPTS = 5;

export class StatusWriteError extends NatsbindError {}

export interface KubeStatusWriterOptions {
  api: CustomObjectsApi;
  /** The binding informer: the object as last seen, and where written objects go at once. */
  cache: {
    get(namespace: string, name: string): NatsBindingObject | undefined;
    upsert(obj: NatsBindingObject): void;
  };
  events?: EventRecorder;
  /** False while this replica must not write (not the leader). */
  mayWrite?: () => boolean;
}

/** Events for Ready transitions into these reasons. */
const WARN_ON: Record<string, string> = {
  [REASON.Conflict]: "Conflict",
  [REASON.Forbidden]: "Forbidden",
  [REASON.InvalidSpec]: "InvalidSpec",
  [REASON.ResolverError]: "PushFailed",
  [REASON.KeyStoreError]: "KeyStoreFailed",
  [REASON.GitLabError]: "GitLabFailed",
};

function readyOf(status: unknown): { status?: string; reason?: string } | undefined {
  const conditions = (status as { conditions?: unknown } | undefined)?.conditions;
  if (!Array.isArray(conditions)) return undefined;
  return conditions.find((c: { type?: string }) => c?.type === CONDITION.Ready) as
    { status?: string; reason?: string } | undefined;
}

export class KubeStatusWriter implements StatusWriter {
  readonly #o: KubeStatusWriterOptions;
  /** Status writes made and 409s retried; for tests and the benchmark. */
  writes = 0;
  conflicts = 0;

  constructor(o: KubeStatusWriterOptions) {
    this.#o = o;
  }

  async write(key: string, status: BindingStatus): Promise<void> {
    const { namespace, name } = splitBindingKey(key);
    // What the apiserver would store: no undefined fields.
    const wanted = JSON.parse(JSON.stringify(status)) as BindingStatus;
    let obj = this.#o.cache.get(namespace, name);
    for (let attempt = 1; obj && attempt <= MAX_ATTEMPTS; attempt++) {
      if (isDeepStrictEqual(obj.status, wanted)) return;
      if (this.#o.mayWrite && !this.#o.mayWrite()) {
        throw new StatusWriteError(`status of ${key}: not the leader, not written`);
      }
      try {
        const written = (await this.#o.api.replaceNamespacedCustomObjectStatus({
          group: GROUP,
          version: VERSION,
          namespace,
          plural: PLURAL,
          name,
          body: { ...obj, status: wanted },
        })) as NatsBindingObject;
        this.writes += 1;
        this.#o.cache.upsert(written);
        this.#transition(namespace, name, written.metadata?.uid, obj.status, wanted);
        return;
      } catch (err) {
        const code = apiStatusCode(err);
        if (code === 404) return; // deleted meanwhile: nothing to report on
        if (code !== 409) throw new StatusWriteError(`write status of ${key}`, { cause: err });
        this.conflicts += 1;
        try {
          obj = (await this.#o.api.getNamespacedCustomObject({
            group: GROUP,
            version: VERSION,
            namespace,
            plural: PLURAL,
            name,
          })) as NatsBindingObject;
        } catch (readErr) {
          if (apiStatusCode(readErr) === 404) return;
          throw new StatusWriteError(`re-read ${key} after a status conflict`, { cause: readErr });
        }
      }
    }
    if (obj) throw new StatusWriteError(`status of ${key}: still conflicting after ${MAX_ATTEMPTS} attempts`);
  }

  /** The object's status goes with the object. */
  async remove(): Promise<void> {}

  #transition(
    namespace: string,
    name: string,
    uid: string | undefined,
    before: unknown,
    after: BindingStatus,
  ): void {
    const events = this.#o.events;
    if (!events) return;
    const was = readyOf(before);
    const now = readyOf(after);
    if (!now || (was?.status === now.status && was?.reason === now.reason)) return;
    const ready = after.conditions.find((c) => c.type === CONDITION.Ready)!;
    const target = { namespace, name, ...(uid ? { uid } : {}) };
    if (ready.status === "True") events.normal(target, "Ready", ready.message);
    else if (WARN_ON[ready.reason]) events.warning(target, WARN_ON[ready.reason]!, ready.message);
  }
}
