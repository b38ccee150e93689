/**
 * Leader election with a coordination.k8s.io/v1 Lease, after client-go's leaderelection package
 * (tools/leaderelection/leaderelection.go with resourcelock/leaselock.go):
 *
 * - A candidate reads the Lease; it may take it over only when nobody holds it or the holder's
 *   record has not changed for leaseDurationSeconds, timed from when THIS replica saw it change
 *   (local clock), never from the remote renewTime: clocks of replicas may disagree.
 * - Every write is a create (409 AlreadyExists if someone was first) or a replace carrying the
 *   observed resourceVersion (409 Conflict if someone wrote in between), so two candidates never
 *   both win. leaseTransitions counts changes of holder.
 * - The leader renews every retryPeriod. isLeader() is a fence for the caller's writes: true only
 *   while now < (time the last successful renewal was sent) + renewDeadline. Timed from the send,
 *   so the fence closes before any other replica can see the lease expire (renewDeadline <
 *   leaseDuration, and they time expiry from a later moment: when they read the record).
 * - An elector that lost the lease does not campaign again (client-go's Run returns and its
 *   callers exit): the process is expected to stop and restart as a follower, with fresh state.
 *   Create a new LeaderElector to campaign again.
 *
 * Differences from client-go, on purpose: candidates retry after 0.8 to 1 retryPeriod (client-go:
 * 1 to 2.2) and also try at the moment the observed lease expires, so a crashed leader is replaced
 * within leaseDuration + retryPeriod; a leader that sees another holder stops at once instead of at
 * its renew deadline; each API call is abandoned (aborted) after renewDeadline so a hung request
 * cannot stall the loop. Lease durations are written in whole seconds, rounded up.
 */
import type { KubeConfig, ObservableMiddleware, V1Lease, V1LeaseSpec } from "@kubernetes/client-node";
import { CoordinationV1Api, Observable, V1MicroTime } from "@kubernetes/client-node";
import { NatsbindError } from "../errors.ts";
import type { Logger } from "../observability/logger.ts";
import type { Clock, TimerHandle } from "./clock.ts";
import { KubernetesApiError, isNotFound } from "../k8s/api-errors.ts";

/** client-go's JitterFactor: renewDeadline must leave room for more than one retry. */
export const JITTER_FACTOR = 1.2;
/** Candidates wait retryPeriod * (1 - ACQUIRE_JITTER * random) between tries. */
const ACQUIRE_JITTER = 0.2;

/** Options that cannot work (durations out of order, empty identity). */
export class LeaderElectionConfigError extends NatsbindError {}

/** A Lease API call failed. `status` is the HTTP status when the apiserver answered. */
export class LeaseApiError extends NatsbindError {
  readonly status: number | undefined;
  constructor(message: string, status: number | undefined, options?: { cause?: unknown }) {
    super(message, options);
    this.status = status;
  }
}

/** 409: someone else created or changed the Lease first. */
export class LeaseConflictError extends LeaseApiError {}

/** Narrow port over CoordinationV1Api, so unit tests can use an in-memory store. */
export interface LeaseClient {
  /** undefined when the Lease does not exist (404). */
  get(namespace: string, name: string, signal?: AbortSignal): Promise<V1Lease | undefined>;
  /** Throws LeaseConflictError when it exists already (409 AlreadyExists). */
  create(namespace: string, lease: V1Lease, signal?: AbortSignal): Promise<V1Lease>;
  /** Precondition: lease.metadata.resourceVersion. Throws LeaseConflictError on 409. */
  replace(namespace: string, lease: V1Lease, signal?: AbortSignal): Promise<V1Lease>;
}

/**
 * The real LeaseClient. client-node 2.0.1 types MicroTime fields as V1MicroTime (a Date that
 * serialises with six fractional digits, which the apiserver requires) but hands them back as
 * strings; leases are normalised to V1MicroTime both ways.
 */
export function leaseClient(kc: KubeConfig): LeaseClient {
  const api = kc.makeApiClient(CoordinationV1Api);
  return {
    async get(namespace, name, signal) {
      try {
        return normaliseLease(await api.readNamespacedLease({ namespace, name }, callOptions(signal)));
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw leaseApiError("read", namespace, name, err);
      }
    },
    async create(namespace, lease, signal) {
      const name = lease.metadata?.name ?? "";
      try {
        const body = normaliseLease(lease);
        return normaliseLease(await api.createNamespacedLease({ namespace, body }, callOptions(signal)));
      } catch (err) {
        throw leaseApiError("create", namespace, name, err);
      }
    },
    async replace(namespace, lease, signal) {
      const name = lease.metadata?.name ?? "";
      try {
        const body = normaliseLease(lease);
        return normaliseLease(
          await api.replaceNamespacedLease({ namespace, name, body }, callOptions(signal)),
        );
      } catch (err) {
        throw leaseApiError("replace", namespace, name, err);
      }
    },
  };
}

function callOptions(signal: AbortSignal | undefined) {
  if (!signal) return undefined;
  const abortable: ObservableMiddleware = {
    pre(context) {
      context.setSignal(signal);
      return new Observable(Promise.resolve(context));
    },
    post: (response) => new Observable(Promise.resolve(response)),
  };
  return { middleware: [abortable], middlewareMergeStrategy: "append" as const };
}

function leaseApiError(op: string, namespace: string, name: string, err: unknown): LeaseApiError {
  const failure = new KubernetesApiError(op, `Lease ${namespace}/${name}`, err);
  return failure.code === 409
    ? new LeaseConflictError(failure.message, failure.code, { cause: err })
    : new LeaseApiError(failure.message, failure.code, { cause: err });
}

function toMicroTime(value: unknown): V1MicroTime | undefined {
  if (value instanceof V1MicroTime) return value;
  if (value instanceof Date || typeof value === "string" || typeof value === "number") {
    const t = new V1MicroTime(value instanceof Date ? value.getTime() : value);
    return Number.isNaN(t.getTime()) ? undefined : t;
  }
  return undefined;
}

function normaliseLease(lease: V1Lease): V1Lease {
  const spec = lease.spec;
  if (!spec) return lease;
  const out: V1LeaseSpec = { ...spec };
  const acquireTime = toMicroTime(spec.acquireTime);
  const renewTime = toMicroTime(spec.renewTime);
  if (acquireTime) out.acquireTime = acquireTime;
  else delete out.acquireTime;
  if (renewTime) out.renewTime = renewTime;
  else delete out.renewTime;
  return { ...lease, spec: out };
}

export interface LeaderElectionOptions {
  leases: LeaseClient;
  namespace: string;
  name: string;
  /** This replica (e.g. the pod name); written as holderIdentity. */
  identity: string;
  /** How long others wait after the record last changed before taking over. */
  leaseDurationMs: number;
  /** How long the leader keeps leading without a successful renewal. */
  renewDeadlineMs: number;
  /** Time between tries (acquire and renew). */
  retryPeriodMs: number;
  clock: Clock;
  log?: Logger;
  /** Called once when this replica becomes the leader; isLeader() is already true. */
  onStartedLeading(): void;
  /**
   * Called exactly once per term, after isLeader() turned false: the lease was lost (renew
   * deadline passed, or another holder seen) or the elector was stopped (released or not).
   */
  onStoppedLeading(reason: string): void;
  /** Source of jitter in [0, 1); default Math.random. */
  random?: () => number;
}

type Phase = "idle" | "acquiring" | "leading" | "lost" | "stopped";

/** What this replica last saw (or wrote) of the Lease, and when its record last changed. */
interface Observation {
  lease: V1Lease;
  holder: string;
  durationMs: number;
  transitions: number;
  acquireTime: V1MicroTime | undefined;
  /** The record's content, to tell a change from a re-read (client-go compares the raw record). */
  record: string;
  /** Local clock time when this record content was first seen. */
  observedAt: number;
}

export class LeaderElector {
  readonly #o: LeaderElectionOptions;
  readonly #log: Logger | undefined;
  readonly #durationSeconds: number;
  readonly #random: () => number;
  #phase: Phase = "idle";
  #observed: Observation | undefined;
  /** Local time the last successful write of ours was sent: the fence counts from here. */
  #renewedAt = Number.NEGATIVE_INFINITY;
  #nextTry: TimerHandle | undefined;
  #fenceTimer: TimerHandle | undefined;
  #inflight: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;

  constructor(o: LeaderElectionOptions) {
    validate(o);
    this.#o = o;
    this.#log = o.log?.child({ lease: `${o.namespace}/${o.name}`, identity: o.identity });
    this.#durationSeconds = Math.ceil(o.leaseDurationMs / 1000);
    this.#random = o.random ?? Math.random;
  }

  /** Starts campaigning in the background. Throws when called twice or after stop(). */
  start(): void {
    if (this.#phase !== "idle")
      throw new NatsbindError(`leader election: start() called when ${this.#phase}`);
    this.#phase = "acquiring";
    this.#log?.info({}, "trying to acquire the leader lease");
    this.#runCycle();
  }

  /**
   * The fence: true only while this replica holds the lease and its last successful renewal was
   * sent less than renewDeadline ago. Turns false the moment renewals have failed for too long,
   * before onStoppedLeading runs.
   */
  isLeader(): boolean {
    return this.#phase === "leading" && this.#o.clock.now() < this.#renewedAt + this.#o.renewDeadlineMs;
  }

  /**
   * The holder identity in the lease record this replica last read or wrote (a follower reads it
   * every retryPeriod); undefined when none is known or the lease was released.
   */
  holder(): string | undefined {
    return this.#observed?.holder || undefined;
  }

  /**
   * Stops campaigning and renewing; isLeader() is false from the call on. With `release` (the
   * default, like client-go's ReleaseOnCancel) a lease this replica holds is written with no
   * holder and a 1 s duration so a successor takes over at once. Callers must have stopped the
   * work the lease guards before releasing it. A lost elector writes nothing more.
   */
  stop(opts: { release?: boolean } = {}): Promise<void> {
    this.#stopping ??= this.#stop(opts.release ?? true);
    return this.#stopping;
  }

  async #stop(release: boolean): Promise<void> {
    const was = this.#phase;
    this.#phase = "stopped";
    this.#clearTimers();
    // A try in flight cannot change the phase any more; wait to learn whether its write landed.
    await this.#inflight;
    if (was !== "leading" && was !== "acquiring") return;
    let reason = "stopped without releasing the lease";
    if (release && this.#observed?.holder === this.#o.identity) {
      reason = (await this.#release()) ? "released the lease" : "stopped; releasing the lease failed";
    }
    if (was === "leading") this.#stopped(reason);
  }

  async #release(): Promise<boolean> {
    const observed = this.#observed;
    if (!observed) return false;
    const now = new V1MicroTime(this.#o.clock.now());
    const spec: V1LeaseSpec = {
      holderIdentity: "",
      leaseDurationSeconds: 1,
      leaseTransitions: observed.transitions,
      acquireTime: now,
      renewTime: now,
    };
    try {
      const written = await this.#call("replace", (signal) =>
        this.#o.leases.replace(this.#o.namespace, withSpec(observed.lease, spec), signal),
      );
      this.#observe(written);
      this.#log?.info({}, "released the leader lease");
      return true;
    } catch (err) {
      this.#log?.warn({ err }, "could not release the leader lease");
      return false;
    }
  }

  #runCycle(): void {
    this.#nextTry = undefined;
    const attempt: Promise<void> = this.#cycle()
      .catch((err: unknown) => {
        // #cycle handles API errors itself; anything here is a bug, logged rather than lost.
        this.#log?.error({ err }, "leader election cycle failed");
      })
      .finally(() => {
        if (this.#inflight === attempt) this.#inflight = undefined;
      });
    this.#inflight = attempt;
  }

  async #cycle(): Promise<void> {
    const outcome = await this.#tryAcquireOrRenew();
    if (this.#phase !== "acquiring" && this.#phase !== "leading") return;
    if (outcome === "held") {
      if (this.#phase === "acquiring") this.#started();
      this.#schedule(this.#o.retryPeriodMs);
      return;
    }
    if (this.#phase === "leading" && outcome === "taken") {
      this.#lose(`lease taken by ${JSON.stringify(this.#observed?.holder ?? "")}`);
      return;
    }
    this.#schedule(this.#phase === "leading" ? this.#o.retryPeriodMs : this.#acquireDelay());
  }

  /** One round of client-go's tryAcquireOrRenew. */
  async #tryAcquireOrRenew(): Promise<"held" | "taken" | "failed"> {
    const { leases, namespace, name, identity } = this.#o;
    const clock = this.#o.clock;

    // Fast path: the leader renews over its own last write, without reading first.
    const mine = this.#observed;
    if (this.#phase === "leading" && mine?.holder === identity) {
      const sentAt = clock.now();
      try {
        const written = await this.#call("replace", (signal) =>
          leases.replace(namespace, withSpec(mine.lease, this.#record(sentAt, mine)), signal),
        );
        return this.#wrote(written, sentAt);
      } catch (err) {
        this.#logFailure(err, "renewing the lease failed; reading it again");
      }
      if (!this.#active()) return "failed";
    }

    let current: V1Lease | undefined;
    try {
      current = await this.#call("read", (signal) => leases.get(namespace, name, signal));
    } catch (err) {
      this.#logFailure(err, "reading the lease failed");
      return "failed";
    }
    if (!this.#active()) return "failed";

    if (current === undefined) {
      const sentAt = clock.now();
      const lease: V1Lease = {
        apiVersion: "coordination.k8s.io/v1",
        kind: "Lease",
        metadata: { name, namespace },
        spec: this.#record(sentAt, undefined),
      };
      try {
        const written = await this.#call("create", (signal) => leases.create(namespace, lease, signal));
        return this.#wrote(written, sentAt);
      } catch (err) {
        this.#logFailure(err, "creating the lease failed");
        return "failed";
      }
    }

    const seen = this.#observe(current);
    const now = clock.now();
    if (seen.holder !== "" && seen.holder !== identity && now < seen.observedAt + seen.durationMs) {
      this.#log?.debug({ holder: seen.holder }, "the lease is held by another replica and has not expired");
      return "taken";
    }
    const sentAt = clock.now();
    try {
      const written = await this.#call("replace", (signal) =>
        leases.replace(namespace, withSpec(current, this.#record(sentAt, seen)), signal),
      );
      return this.#wrote(written, sentAt);
    } catch (err) {
      this.#logFailure(err, "writing the lease failed");
      return "failed";
    }
  }

  /** The record this replica writes: a renewal keeps acquireTime and transitions. */
  #record(nowMs: number, previous: Observation | undefined): V1LeaseSpec {
    const now = new V1MicroTime(nowMs);
    const renewing = previous?.holder === this.#o.identity;
    return {
      holderIdentity: this.#o.identity,
      leaseDurationSeconds: this.#durationSeconds,
      acquireTime: renewing ? (previous.acquireTime ?? now) : now,
      renewTime: now,
      leaseTransitions: previous === undefined ? 0 : previous.transitions + (renewing ? 0 : 1),
    };
  }

  #wrote(written: V1Lease, sentAt: number): "held" | "failed" {
    this.#observe(written);
    // Stopped or lost meanwhile: the write landed, but this replica does not lead on it.
    if (!this.#active()) return "failed";
    this.#renewedAt = sentAt;
    this.#armFence();
    return "held";
  }

  #observe(lease: V1Lease): Observation {
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? "";
    const durationSeconds = spec.leaseDurationSeconds ?? 0;
    const transitions = spec.leaseTransitions ?? 0;
    const acquireTime = toMicroTime(spec.acquireTime);
    const record = JSON.stringify([
      holder,
      durationSeconds,
      transitions,
      acquireTime?.toISOString() ?? null,
      toMicroTime(spec.renewTime)?.toISOString() ?? null,
    ]);
    const previous = this.#observed;
    const observedAt = previous && previous.record === record ? previous.observedAt : this.#o.clock.now();
    this.#observed = {
      lease,
      holder,
      durationMs: durationSeconds * 1000,
      transitions,
      acquireTime,
      record,
      observedAt,
    };
    return this.#observed;
  }

  #active(): boolean {
    return this.#phase === "acquiring" || this.#phase === "leading";
  }

  /** Jittered retry period, but no later than the moment the observed lease expires. */
  #acquireDelay(): number {
    const jittered = this.#o.retryPeriodMs * (1 - ACQUIRE_JITTER * this.#random());
    const seen = this.#observed;
    if (!seen || seen.holder === "" || seen.holder === this.#o.identity) return jittered;
    const untilExpiry = seen.observedAt + seen.durationMs - this.#o.clock.now();
    return untilExpiry > 0 ? Math.min(jittered, untilExpiry) : jittered;
  }

  #schedule(delayMs: number): void {
    this.#nextTry = this.#o.clock.setTimeout(() => this.#runCycle(), delayMs);
  }

  #armFence(): void {
    const clock = this.#o.clock;
    if (this.#fenceTimer) clock.clearTimeout(this.#fenceTimer);
    const deadline = this.#renewedAt + this.#o.renewDeadlineMs;
    this.#fenceTimer = clock.setTimeout(() => {
      this.#fenceTimer = undefined;
      if (this.#phase === "leading" && clock.now() >= deadline) {
        this.#lose(`renew deadline passed: no successful renewal for ${this.#o.renewDeadlineMs} ms`);
      }
    }, deadline - clock.now());
  }

  #started(): void {
    this.#phase = "leading";
    this.#log?.info({ transitions: this.#observed?.transitions }, "acquired the leader lease");
    try {
      this.#o.onStartedLeading();
    } catch (err) {
      this.#log?.error({ err }, "onStartedLeading failed");
    }
  }

  #lose(reason: string): void {
    this.#phase = "lost";
    this.#clearTimers();
    this.#log?.warn({ reason }, "lost the leader lease");
    this.#stopped(reason);
  }

  #stopped(reason: string): void {
    try {
      this.#o.onStoppedLeading(reason);
    } catch (err) {
      this.#log?.error({ err }, "onStoppedLeading failed");
    }
  }

  #clearTimers(): void {
    if (this.#nextTry) this.#o.clock.clearTimeout(this.#nextTry);
    if (this.#fenceTimer) this.#o.clock.clearTimeout(this.#fenceTimer);
    this.#nextTry = undefined;
    this.#fenceTimer = undefined;
  }

  #logFailure(err: unknown, msg: string): void {
    if (err instanceof LeaseConflictError) this.#log?.info({ err }, `${msg}: another replica wrote first`);
    else this.#log?.warn({ err }, msg);
  }

  /** Runs one API call, abandoning (and aborting) it after renewDeadline. */
  #call<T>(op: string, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const clock = this.#o.clock;
    const limitMs = this.#o.renewDeadlineMs;
    const controller = new AbortController();
    return new Promise<T>((resolve, reject) => {
      const timer = clock.setTimeout(() => {
        controller.abort();
        reject(
          new LeaseApiError(
            `${op} Lease ${this.#o.namespace}/${this.#o.name}: no answer within ${limitMs} ms`,
            undefined,
          ),
        );
      }, limitMs);
      let pending: Promise<T>;
      try {
        pending = run(controller.signal);
      } catch (err) {
        pending = Promise.reject(err as Error);
      }
      pending.then(
        (value) => {
          clock.clearTimeout(timer);
          resolve(value);
        },
        (err: unknown) => {
          clock.clearTimeout(timer);
          reject(err instanceof Error ? err : new Error(String(err)));
        },
      );
    });
  }
}

function withSpec(lease: V1Lease, spec: V1LeaseSpec): V1Lease {
  return { ...lease, spec };
}

function validate(o: LeaderElectionOptions): void {
  const problems: string[] = [];
  for (const key of ["leaseDurationMs", "renewDeadlineMs", "retryPeriodMs"] as const) {
    if (!(Number.isFinite(o[key]) && o[key] > 0)) problems.push(`${key} must be > 0, got ${o[key]}`);
  }
  if (problems.length === 0) {
    if (!(o.leaseDurationMs > o.renewDeadlineMs)) problems.push("leaseDurationMs must be > renewDeadlineMs");
    if (!(o.renewDeadlineMs > o.retryPeriodMs * JITTER_FACTOR)) {
      problems.push(`renewDeadlineMs must be > retryPeriodMs * ${JITTER_FACTOR}`);
    }
  }
  for (const key of ["namespace", "name", "identity"] as const) {
    if (typeof o[key] !== "string" || o[key].length === 0) problems.push(`${key} must not be empty`);
  }
  if (problems.length > 0) throw new LeaderElectionConfigError(`leader election: ${problems.join("; ")}`);
}
