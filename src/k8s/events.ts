/**
 * Kubernetes Events on NatsBindings for what a human watching `kubectl describe nb` wants to know:
 * accounts pushed or deleted, conflicts, invalid specs, failed pushes. Best effort: an Event that
 * cannot be written is logged and dropped, never failing a reconcile. A repeat of the same
 * (object, type, reason, message) within REPEAT_WINDOW_MS bumps the existing Event's count instead of
 * creating another, as client-go's recorder does. Messages are public data only.
 */
import { randomBytes } from "node:crypto";
import type { CoreV1Api, CoreV1Event } from "@kubernetes/client-node";
import { PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";
import type { Logger } from "../observability/logger.ts";
import type { Clock } from "../runtime/clock.ts";
import { GROUP, KIND, VERSION } from "./bindings.ts";

export const REPEAT_WINDOW_MS = 10 * 60_000;
const MAX_MESSAGE = 1024;
const MAX_REMEMBERED = 4096;

export interface EventTarget {
  namespace: string;
  name: string;
  uid?: string;
}

export interface EventRecorderOptions {
  core: CoreV1Api;
  clock: Clock;
  log: Logger;
  /** Written to source.component / reportingComponent. */
  component?: string;
  /** reportingInstance: this replica. */
  instance: string;
  /** False while this replica must not write (not the leader). */
  mayWrite?: () => boolean;
}

export class EventRecorder {
  readonly #o: EventRecorderOptions;
  readonly #recent = new Map<string, { name: string; count: number; firstAt: number }>();
  /** Events written (created or bumped); for tests and metrics. */
  written = 0;

  constructor(o: EventRecorderOptions) {
    this.#o = o;
  }

  normal(target: EventTarget, reason: string, message: string): void {
    void this.#record(target, "Normal", reason, message);
  }

  warning(target: EventTarget, reason: string, message: string): void {
    void this.#record(target, "Warning", reason, message);
  }

  async #record(target: EventTarget, type: string, reason: string, message: string): Promise<void> {
    if (this.#o.mayWrite && !this.#o.mayWrite()) return;
    const text = message.length > MAX_MESSAGE ? `${message.slice(0, MAX_MESSAGE - 3)}...` : message;
    const now = this.#o.clock.now();
    const stamp = new Date(now);
    const id = `${target.namespace}/${target.name}\u0000${type}\u0000${reason}\u0000${text}`;
    const seen = this.#recent.get(id);
    try {
      if (seen && now - seen.firstAt < REPEAT_WINDOW_MS) {
        seen.count += 1;
        await this.#o.core.patchNamespacedEvent(
          {
            name: seen.name,
            namespace: target.namespace,
            body: { count: seen.count, lastTimestamp: stamp },
          },
          setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
        );
      } else {
        const name = `${target.name}.${now.toString(16)}${randomBytes(4).toString("hex")}`;
        const body: CoreV1Event = {
          metadata: { name, namespace: target.namespace },
          involvedObject: {
            apiVersion: `${GROUP}/${VERSION}`,
            kind: KIND,
            namespace: target.namespace,
            name: target.name,
            ...(target.uid ? { uid: target.uid } : {}),
          },
          type,
          reason,
          message: text,
          count: 1,
          firstTimestamp: stamp,
          lastTimestamp: stamp,
          source: { component: this.#o.component ?? "natsbind" },
          reportingComponent: this.#o.component ?? "natsbind",
          reportingInstance: this.#o.instance,
        };
        await this.#o.core.createNamespacedEvent({ namespace: target.namespace, body });
        if (this.#recent.size >= MAX_REMEMBERED) this.#recent.delete(this.#recent.keys().next().value!);
        this.#recent.set(id, { name, count: 1, firstAt: now });
      }
      this.written += 1;
    } catch (err) {
      this.#recent.delete(id);
      this.#o.log.warn({ err, binding: `${target.namespace}/${target.name}`, reason }, "cannot write event");
    }
  }
}
