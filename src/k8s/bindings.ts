/**
 * NatsBindings from the Kubernetes API: the BindingLookup the reconciler reads, over the binding
 * informer's cache. Keys are "namespace/name". Each object is validated with the same zod schema as
 * local files (the CRD's schema and CEL rules catch most problems first); parse results are cached
 * per resourceVersion so a reconcile of a big cluster does not re-validate every binding.
 */
import type { KubernetesObject } from "@kubernetes/client-node";
import { PLURAL } from "../api/v1alpha1/crd.ts";
import { parseBinding } from "../api/v1alpha1/schema.ts";
import { GROUP, KIND, VERSION } from "../api/v1alpha1/types.ts";
import type { BindingEntry, BindingLookup } from "../controllers/binding/reconciler.ts";
import { describeError } from "../errors.ts";

export { GROUP, KIND, PLURAL, VERSION };
/** Held on every binding natsbind manages: its deletionPolicy runs before the object goes. */
export const FINALIZER = "natsbind.io/cleanup";

export interface NatsBindingObject extends KubernetesObject {
  spec?: unknown;
  status?: unknown;
}

/** What the lookup needs of the informer. */
export interface BindingCache {
  get(namespace: string, name: string): NatsBindingObject | undefined;
  list(namespace?: string): NatsBindingObject[];
}

export function bindingKeyOf(obj: KubernetesObject): string {
  return `${obj.metadata?.namespace ?? ""}/${obj.metadata?.name ?? ""}`;
}

export function splitBindingKey(key: string): { namespace: string; name: string } {
  const slash = key.indexOf("/");
  return { namespace: key.slice(0, slash), name: key.slice(slash + 1) };
}

export function hasFinalizer(obj: KubernetesObject): boolean {
  return obj.metadata?.finalizers?.includes(FINALIZER) ?? false;
}

export function isDeleting(obj: KubernetesObject): boolean {
  return obj.metadata?.deletionTimestamp !== undefined && obj.metadata.deletionTimestamp !== null;
}

type Parsed =
  { kind: "valid"; entry: BindingEntry & { kind: "valid" } } | { kind: "invalid"; message: string };

export class KubeBindings implements BindingLookup {
  readonly #cache: BindingCache;
  readonly #parsed = new Map<string, { resourceVersion: string | undefined; parsed: Parsed }>();

  constructor(cache: BindingCache) {
    this.#cache = cache;
  }

  object(key: string): NatsBindingObject | undefined {
    const { namespace, name } = splitBindingKey(key);
    return this.#cache.get(namespace, name);
  }

  /** Name and uid for ownerReferences of the binding's Secrets; undefined when unknown. */
  owner(key: string): { name: string; uid: string } | undefined {
    const obj = this.object(key);
    const uid = obj?.metadata?.uid;
    return obj && uid && !isDeleting(obj) ? { name: obj.metadata!.name!, uid } : undefined;
  }

  get(key: string): BindingEntry | undefined {
    const obj = this.object(key);
    if (!obj) {
      this.#parsed.delete(key);
      return undefined;
    }
    const parsed = this.#parse(key, obj);
    if (isDeleting(obj)) {
      // Without our finalizer the object is as good as gone: the apiserver removes it at once.
      if (!hasFinalizer(obj)) return undefined;
      return parsed.kind === "valid"
        ? { kind: "deleting", spec: parsed.entry.binding.spec }
        : { kind: "deleting" };
    }
    if (parsed.kind === "valid") return parsed.entry;
    return { kind: "invalid", message: parsed.message, generation: obj.metadata?.generation ?? 0 };
  }

  validKeys(): string[] {
    return this.#cache
      .list()
      .filter((obj) => !isDeleting(obj))
      .map((obj) => [bindingKeyOf(obj), obj] as const)
      .filter(([key, obj]) => this.#parse(key, obj).kind === "valid")
      .map(([key]) => key);
  }

  /** metadata.creationTimestamp in ms (set by the apiserver, 1 s resolution); undefined if unreadable. */
  createdAt(key: string): number | undefined {
    const created: unknown = this.object(key)?.metadata?.creationTimestamp;
    const ms =
      created instanceof Date ? created.getTime() : typeof created === "string" ? Date.parse(created) : NaN;
    return Number.isFinite(ms) ? ms : undefined;
  }

  #parse(key: string, obj: NatsBindingObject): Parsed {
    const resourceVersion = obj.metadata?.resourceVersion;
    const cached = this.#parsed.get(key);
    if (cached && resourceVersion !== undefined && cached.resourceVersion === resourceVersion)
      return cached.parsed;
    let parsed: Parsed;
    try {
      const binding = parseBinding(obj, `${KIND} ${key}`);
      parsed = {
        kind: "valid",
        entry: { kind: "valid", binding, generation: obj.metadata?.generation ?? 0 },
      };
    } catch (err) {
      parsed = { kind: "invalid", message: describeError(err) };
    }
    this.#parsed.set(key, { resourceVersion, parsed });
    return parsed;
  }
}
