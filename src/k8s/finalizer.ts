/**
 * The finalizer as its own step around the binding reconciler (as nack does): before a binding is
 * reconciled it gets natsbind.io/cleanup; when it is being deleted, the reconciler applies its
 * deletionPolicy (the lookup reports it as "deleting") and only after that succeeded is the
 * finalizer removed, letting the apiserver delete the object. Patches carry the resourceVersion
 * seen, so a concurrent change fails with 409 and the key is retried rather than clobbering it.
 */
import type { CustomObjectsApi } from "@kubernetes/client-node";
import { PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";
import { NatsbindError } from "../errors.ts";
import type { ReconcileResult, Reconciler } from "../runtime/controller.ts";
import { apiStatusCode } from "./api-errors.ts";
import {
  FINALIZER,
  GROUP,
  PLURAL,
  VERSION,
  hasFinalizer,
  isDeleting,
  splitBindingKey,
  type KubeBindings,
  type NatsBindingObject,
} from "./bindings.ts";

export class FinalizerError extends NatsbindError {}

export interface FinalizerStepOptions {
  inner: Reconciler<string>;
  bindings: KubeBindings;
  api: CustomObjectsApi;
  /** Puts a patched object into the informer at once. */
  upsert(obj: NatsBindingObject): void;
  /** False while this replica must not write (not the leader). */
  mayWrite?: () => boolean;
}

export class FinalizerStep implements Reconciler<string> {
  readonly #o: FinalizerStepOptions;

  constructor(o: FinalizerStepOptions) {
    this.#o = o;
  }

  async reconcile(key: string, signal: AbortSignal): Promise<ReconcileResult> {
    const obj = this.#o.bindings.object(key);
    if (obj && !isDeleting(obj) && !hasFinalizer(obj)) {
      await this.#setFinalizers(key, obj, [...(obj.metadata?.finalizers ?? []), FINALIZER]);
    }
    const result = await this.#o.inner.reconcile(key, signal);
    if (obj && isDeleting(obj) && hasFinalizer(obj)) {
      // Re-read from the cache: the reconcile may have taken a while.
      const latest = this.#o.bindings.object(key) ?? obj;
      await this.#setFinalizers(
        key,
        latest,
        (latest.metadata?.finalizers ?? []).filter((f) => f !== FINALIZER),
      );
      return undefined;
    }
    return result;
  }

  async #setFinalizers(key: string, obj: NatsBindingObject, finalizers: string[]): Promise<void> {
    const { namespace, name } = splitBindingKey(key);
    if (this.#o.mayWrite && !this.#o.mayWrite()) {
      throw new FinalizerError(`finalizer of ${key}: this replica is not the leader`);
    }
    try {
      const patched = (await this.#o.api.patchNamespacedCustomObject(
        {
          group: GROUP,
          version: VERSION,
          namespace,
          plural: PLURAL,
          name,
          body: { metadata: { finalizers, resourceVersion: obj.metadata?.resourceVersion } },
        },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
      )) as NatsBindingObject;
      this.#o.upsert(patched);
    } catch (err) {
      if (apiStatusCode(err) === 404) return; // gone already
      throw new FinalizerError(
        `${finalizers.includes(FINALIZER) ? "add" : "remove"} finalizer ${FINALIZER} on ${key}`,
        { cause: err },
      );
    }
  }
}
