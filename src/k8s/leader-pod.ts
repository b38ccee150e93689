/**
 * Where the leader listens. The Lease is a writable object: anyone who may update it could name
 * any address, so a follower never sends to an address read from it. The holder identity only
 * names a pod ("<pod name>_<pid>"); the follower reads that pod from natsbind's own namespace and
 * takes the address from the pod itself, and only if it is a natsbind pod: every label of the
 * configured selector, phase Running, not being deleted, a pod IP, and a container port with the
 * configured name. Anything else: no leader to send to (signals stay pending).
 */
import { isIP } from "node:net";
import type { V1Pod } from "@kubernetes/client-node";
import type { Clock } from "../runtime/clock.ts";
import { apiStatusCode } from "./api-errors.ts";

/** This replica's holderIdentity: the pod name, then the process id. */
export function leaderIdentity(podName: string, pid: number): string {
  return `${podName}_${pid}`;
}

/** The pod name in a holder identity, if it has the shape leaderIdentity() writes. */
export function podNameOfIdentity(identity: string | undefined): string | undefined {
  const at = identity?.lastIndexOf("_") ?? -1;
  if (!identity || at < 1) return undefined;
  const name = identity.slice(0, at);
  return /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/.test(name) && /^[0-9]{1,10}$/.test(identity.slice(at + 1))
    ? name
    : undefined;
}

export interface PodCheck {
  /** Labels every natsbind pod carries (the Deployment's selector). */
  labels: Record<string, string>;
  /** Name of the container port the webhook listener is on. */
  portName: string;
}

/** The relay URL of `pod` when it is a running natsbind pod named `name`; else why not. */
export function relayUrlOfPod(
  pod: V1Pod | undefined,
  name: string,
  check: PodCheck,
): { url: string } | { refused: string } {
  if (!pod) return { refused: `pod ${name} not found` };
  if (pod.metadata?.name !== name) return { refused: `pod ${name}: the answer names another pod` };
  for (const [k, v] of Object.entries(check.labels))
    if (pod.metadata?.labels?.[k] !== v) return { refused: `pod ${name} lacks label ${k}=${v}` };
  if (pod.metadata?.deletionTimestamp) return { refused: `pod ${name} is being deleted` };
  if (pod.status?.phase !== "Running") return { refused: `pod ${name} is not Running` };
  const ip = pod.status?.podIP ?? "";
  if (isIP(ip) === 0) return { refused: `pod ${name} has no pod IP` };
  const port = (pod.spec?.containers ?? [])
    .flatMap((c) => c.ports ?? [])
    .find((p) => p.name === check.portName && (p.protocol ?? "TCP") === "TCP")?.containerPort;
  if (!Number.isInteger(port) || port! < 1 || port! > 65535)
    return { refused: `pod ${name} has no TCP port named ${check.portName}` };
  return { url: `http://${isIP(ip) === 6 ? `[${ip}]` : ip}:${port}` };
}

export interface LeaderAddressOptions extends PodCheck {
  /** The holder identity last seen (LeaderElector.holder()). */
  holder: () => string | undefined;
  self: string;
  /** Reads a pod of natsbind's namespace by name; undefined when it does not exist. */
  readPod: (name: string) => Promise<V1Pod | undefined>;
  clock: Clock;
  /** How long an answer (either way) is reused for the same holder; default 5 s. */
  cacheMs?: number;
}

/**
 * The leader's relay URL, verified as above; cached per holder so a burst of signals costs one
 * pod read. A read that fails counts as "no leader" (retried after the cache time).
 */
export class LeaderAddress {
  readonly #o: LeaderAddressOptions;
  #cached: { holder: string; at: number; result: { url: string } | { refused: string } } | undefined;

  constructor(o: LeaderAddressOptions) {
    this.#o = o;
  }

  async resolve(): Promise<{ url: string } | { refused: string }> {
    const holder = this.#o.holder();
    if (!holder) return { refused: "no leader known" };
    if (holder === this.#o.self) return { refused: "this replica holds the lease" };
    const now = this.#o.clock.now();
    const c = this.#cached;
    if (c && c.holder === holder && now - c.at < (this.#o.cacheMs ?? 5_000)) return c.result;
    const name = podNameOfIdentity(holder);
    let result: { url: string } | { refused: string };
    if (!name) result = { refused: "the lease holder does not name a pod" };
    else {
      try {
        result = relayUrlOfPod(await this.#o.readPod(name), name, this.#o);
      } catch (err) {
        result = { refused: `cannot read pod ${name} (${apiStatusCode(err) ?? "no answer"})` };
      }
    }
    this.#cached = { holder, at: now, result };
    return result;
  }
}
