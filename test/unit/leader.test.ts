// LeaderElector against an in-memory Lease store that behaves like the apiserver where it matters:
// resourceVersion preconditions (409 on a stale replace), 409 on a second create, MicroTime
// fields that must carry six fractional digits. Time is a ManualClock; nothing sleeps.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { setImmediate as turn } from "node:timers/promises";
import { V1MicroTime } from "@kubernetes/client-node";
import type { V1Lease, V1LeaseSpec } from "@kubernetes/client-node";
import { ManualClock } from "../../src/runtime/clock.ts";
import type { Clock, TimerHandle } from "../../src/runtime/clock.ts";
import {
  LeaderElectionConfigError,
  LeaderElector,
  LeaseApiError,
  LeaseConflictError,
} from "../../src/runtime/leader.ts";
import type { LeaderElectionOptions, LeaseClient } from "../../src/runtime/leader.ts";
import { createLogger } from "../../src/observability/logger.ts";

const T0 = Date.UTC(2026, 2, 1, 12);
const NS = "natsbind";
const NAME = "natsbind-leader";
// client-go's defaults.
const LEASE = 15_000;
const RENEW = 10_000;
const RETRY = 2_000;
const MICRO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;
const HANG_GUARD = { timeout: 20_000 };

/** Lets promise callbacks run; never waits on wall time. */
async function flush(): Promise<void> {
  for (let i = 0; i < 3; i++) await turn();
}

/**
 * Moves the clock forward in steps, letting each step's API calls complete. The fake answers at
 * once, but an answer is processed only after advance() returns, i.e. at the end of the step:
 * steps of 50 ms keep the electors' timers (multiples of 50 ms here) exactly on time.
 */
async function run(clock: ManualClock, ms: number, step = 50, each?: () => void): Promise<void> {
  // Answers already due complete first, at the current time.
  await flush();
  for (let done = 0; done < ms;) {
    const d = Math.min(step, ms - done);
    clock.advance(d);
    done += d;
    await flush();
    each?.();
  }
}

interface Write {
  by: string;
  op: "create" | "replace";
  holder: string;
  ok: boolean;
}

/** One Lease namespace as the apiserver keeps it: JSON text plus a resourceVersion counter. */
class FakeLeases {
  readonly #objects = new Map<string, string>();
  #rv = 0;
  readonly writes: Write[] = [];

  client(by: string): FakeClient {
    return new FakeClient(this, by);
  }

  /** What the apiserver holds, as a client would read it. */
  read(name = NAME): V1Lease | undefined {
    const text = this.#objects.get(name);
    return text === undefined ? undefined : decode(text);
  }

  /** A write by someone outside the test's electors (another process, kubectl). */
  put(spec: V1LeaseSpec, name = NAME): void {
    const current = this.read(name);
    this.store({ metadata: { ...current?.metadata, name, namespace: NS }, spec }, name);
  }

  store(lease: V1Lease, name: string): V1Lease {
    const text = JSON.stringify({
      ...lease,
      metadata: { ...lease.metadata, resourceVersion: String(++this.#rv) },
    });
    for (const field of ["acquireTime", "renewTime"] as const) {
      const value = (JSON.parse(text) as { spec?: Record<string, unknown> }).spec?.[field];
      if (value !== undefined && !(typeof value === "string" && MICRO.test(value))) {
        throw new LeaseApiError(`${field} ${JSON.stringify(value)} is not a MicroTime`, 400);
      }
    }
    this.#objects.set(name, text);
    return decode(text);
  }

  create(by: string, lease: V1Lease): V1Lease {
    const name = lease.metadata?.name ?? "";
    const holder = lease.spec?.holderIdentity ?? "";
    if (this.#objects.has(name)) {
      this.writes.push({ by, op: "create", holder, ok: false });
      throw new LeaseConflictError(`leases "${name}" already exists`, 409);
    }
    const stored = this.store(lease, name);
    this.writes.push({ by, op: "create", holder, ok: true });
    return stored;
  }

  replace(by: string, lease: V1Lease): V1Lease {
    const name = lease.metadata?.name ?? "";
    const holder = lease.spec?.holderIdentity ?? "";
    const current = this.read(name);
    if (!current) throw new LeaseApiError(`leases "${name}" not found`, 404);
    if (current.metadata?.resourceVersion !== lease.metadata?.resourceVersion) {
      this.writes.push({ by, op: "replace", holder, ok: false });
      throw new LeaseConflictError(`leases "${name}": the object has been modified`, 409);
    }
    const stored = this.store(lease, name);
    this.writes.push({ by, op: "replace", holder, ok: true });
    return stored;
  }
}

function decode(text: string): V1Lease {
  const lease = JSON.parse(text) as V1Lease;
  const spec = lease.spec as Record<string, unknown> | undefined;
  for (const field of ["acquireTime", "renewTime"] as const) {
    if (typeof spec?.[field] === "string") spec[field] = new V1MicroTime(spec[field]);
  }
  return lease;
}

/** One replica's view of the store, with failures the test can switch on. */
class FakeClient implements LeaseClient {
  readonly #store: FakeLeases;
  readonly #by: string;
  /** Every call fails like an unreachable apiserver. */
  failing = false;
  /** Calls never answer (until aborted). */
  hang = false;
  /** When set, writes (create, replace) wait for it before reaching the store. */
  writeGate: Promise<void> | undefined;
  calls = 0;
  readonly signals: AbortSignal[] = [];

  constructor(store: FakeLeases, by: string) {
    this.#store = store;
    this.#by = by;
  }

  get(namespace: string, name: string, signal?: AbortSignal): Promise<V1Lease | undefined> {
    return this.#call(namespace, signal, false, () => this.#store.read(name));
  }

  create(namespace: string, lease: V1Lease, signal?: AbortSignal): Promise<V1Lease> {
    return this.#call(namespace, signal, true, () => this.#store.create(this.#by, lease));
  }

  replace(namespace: string, lease: V1Lease, signal?: AbortSignal): Promise<V1Lease> {
    return this.#call(namespace, signal, true, () => this.#store.replace(this.#by, lease));
  }

  async #call<T>(
    namespace: string,
    signal: AbortSignal | undefined,
    write: boolean,
    op: () => T,
  ): Promise<T> {
    this.calls++;
    if (signal) this.signals.push(signal);
    assert.equal(namespace, NS);
    if (this.failing) throw new LeaseApiError("connect ECONNREFUSED 127.0.0.1:6443", undefined);
    if (this.hang) return new Promise<T>(() => {});
    if (write && this.writeGate) await this.writeGate;
    return op();
  }
}

interface Replica {
  elector: LeaderElector;
  client: FakeClient;
  started: number;
  stopped: string[];
  /** isLeader() as seen from inside onStoppedLeading. */
  leaderInStopCallback: boolean[];
  logs: Array<Record<string, unknown>>;
}

function replica(
  store: FakeLeases,
  clock: Clock,
  identity: string,
  overrides: Partial<LeaderElectionOptions> = {},
): Replica {
  const client = store.client(identity);
  const logs: Array<Record<string, unknown>> = [];
  const r: Replica = {
    elector: undefined as unknown as LeaderElector,
    client,
    started: 0,
    stopped: [],
    leaderInStopCallback: [],
    logs,
  };
  r.elector = new LeaderElector({
    leases: client,
    namespace: NS,
    name: NAME,
    identity,
    leaseDurationMs: LEASE,
    renewDeadlineMs: RENEW,
    retryPeriodMs: RETRY,
    clock,
    log: createLogger({ level: "debug", clock, write: (line) => logs.push(JSON.parse(line)) }),
    random: () => 0,
    onStartedLeading: () => {
      assert.equal(r.elector.isLeader(), true, "isLeader() is true when onStartedLeading runs");
      r.started++;
    },
    onStoppedLeading: (reason) => {
      r.leaderInStopCallback.push(r.elector.isLeader());
      r.stopped.push(reason);
    },
    ...overrides,
  });
  return r;
}

function micro(ms: number): string {
  return new V1MicroTime(ms).toISOString();
}

function iso(value: unknown): string | undefined {
  return value instanceof Date ? value.toISOString() : undefined;
}

describe("LeaderElector options", () => {
  const store = new FakeLeases();
  const clock = new ManualClock(T0);

  it("refuses durations out of client-go's order and empty names", () => {
    const cases: Array<[Partial<LeaderElectionOptions>, RegExp]> = [
      [{ leaseDurationMs: RENEW }, /leaseDurationMs must be > renewDeadlineMs/],
      [{ renewDeadlineMs: RETRY * 1.2 }, /renewDeadlineMs must be > retryPeriodMs \* 1\.2/],
      [{ retryPeriodMs: 0 }, /retryPeriodMs must be > 0/],
      [{ leaseDurationMs: Number.NaN }, /leaseDurationMs must be > 0/],
      [{ identity: "" }, /identity must not be empty/],
      [{ namespace: "" }, /namespace must not be empty/],
    ];
    for (const [overrides, message] of cases) {
      assert.throws(
        () => replica(store, clock, "a", overrides),
        (err: unknown) => err instanceof LeaderElectionConfigError && message.test(err.message),
        `${JSON.stringify(overrides)} is refused`,
      );
    }
    assert.doesNotThrow(() => replica(store, clock, "a", { renewDeadlineMs: RETRY * 1.2 + 1 }));
  });

  it("refuses a second start()", () => {
    const a = replica(store, clock, "a");
    a.elector.start();
    assert.throws(() => a.elector.start(), /start\(\) called when acquiring/);
    return a.elector.stop({ release: false });
  });
});

describe("LeaderElector", HANG_GUARD, () => {
  it("acquires a missing lease by creating it, with MicroTime stamps and leaseTransitions 0", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    const a = replica(store, clock, "replica-a");
    assert.equal(a.elector.isLeader(), false);
    a.elector.start();
    await flush();
    assert.equal(a.elector.isLeader(), true);
    assert.equal(a.started, 1);
    const spec = store.read()?.spec;
    assert.equal(spec?.holderIdentity, "replica-a");
    assert.equal(spec?.leaseDurationSeconds, 15);
    assert.equal(spec?.leaseTransitions, 0);
    assert.equal(iso(spec?.acquireTime), micro(T0));
    assert.equal(iso(spec?.renewTime), micro(T0));
    assert.deepEqual(store.writes, [{ by: "replica-a", op: "create", holder: "replica-a", ok: true }]);
    await a.elector.stop({ release: false });
  });

  it("renews every retryPeriod over its own last write, keeping acquireTime and leaseTransitions", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    const a = replica(store, clock, "replica-a");
    a.elector.start();
    await flush();
    const callsAfterAcquire = a.client.calls;
    await run(clock, 3 * RETRY);
    const spec = store.read()?.spec;
    assert.equal(iso(spec?.renewTime), micro(T0 + 3 * RETRY));
    assert.equal(iso(spec?.acquireTime), micro(T0));
    assert.equal(spec?.leaseTransitions, 0);
    // The fast path: one replace per renewal, no read.
    assert.equal(a.client.calls - callsAfterAcquire, 3);
    assert.equal(store.writes.filter((w) => w.op === "replace" && w.ok).length, 3);
    assert.equal(a.elector.isLeader(), true);
    assert.equal(a.started, 1);
    assert.deepEqual(a.stopped, []);
    await a.elector.stop({ release: false });
  });

  it("does not take over a lease that is being renewed; two electors never both lead", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    const a = replica(store, clock, "replica-a");
    const b = replica(store, clock, "replica-b");
    a.elector.start();
    await flush();
    b.elector.start();
    await run(clock, 60_000, 50, () => {
      assert.equal(a.elector.isLeader(), true);
      assert.equal(b.elector.isLeader(), false);
    });
    assert.equal(b.started, 0);
    assert.equal(b.elector.holder(), "replica-a", "the follower knows who leads");
    assert.equal(a.elector.holder(), "replica-a");
    assert.ok(b.client.calls >= 30, `b kept trying (${b.client.calls} calls)`);
    assert.ok(
      store.writes.every((w) => w.by === "replica-a"),
      "b never wrote a lease held by a",
    );
    await Promise.all([a.elector.stop({ release: false }), b.elector.stop()]);
  });

  it("takes over a crashed leader's lease exactly leaseDuration after it last saw the record change", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    const a = replica(store, clock, "replica-a");
    const b = replica(store, clock, "replica-b");
    a.elector.start();
    await flush();
    b.elector.start();
    await run(clock, 5_000);
    // The last renewal b saw happened at T0 + 4000 (a renews every 2 s); a "crashes" after it.
    await a.elector.stop({ release: false });
    assert.deepEqual(a.stopped, ["stopped without releasing the lease"]);
    assert.equal(iso(store.read()?.spec?.renewTime), micro(T0 + 4_000));
    await run(clock, 4_000 + LEASE - 5_000 - 1);
    assert.equal(clock.now(), T0 + 4_000 + LEASE - 1);
    assert.equal(b.elector.isLeader(), false, "not one millisecond before the lease expires");
    await run(clock, 1, 1);
    assert.equal(b.elector.isLeader(), true, "at the moment it expires");
    assert.equal(b.started, 1);
    const spec = store.read()?.spec;
    assert.equal(spec?.holderIdentity, "replica-b");
    assert.equal(spec?.leaseTransitions, 1);
    assert.equal(iso(spec?.acquireTime), micro(T0 + 4_000 + LEASE));
    await b.elector.stop({ release: false });
  });

  it("times expiry with its own clock, not the holder's renewTime (clock skew)", async () => {
    for (const skew of [-3_600_000, 3_600_000]) {
      const store = new FakeLeases();
      const clock = new ManualClock(T0);
      const remote = new V1MicroTime(T0 + skew);
      store.put({
        holderIdentity: "ghost",
        leaseDurationSeconds: 15,
        leaseTransitions: 4,
        acquireTime: remote,
        renewTime: remote,
      });
      const b = replica(store, clock, "replica-b");
      b.elector.start();
      await run(clock, LEASE - 50);
      assert.equal(b.elector.isLeader(), false, `skew ${skew}: the lease still counts as held`);
      await run(clock, 50);
      assert.equal(b.elector.isLeader(), true, `skew ${skew}: taken over after leaseDuration`);
      assert.equal(store.read()?.spec?.leaseTransitions, 5);
      await b.elector.stop({ release: false });
    }
  });

  it("keeps leading through failed renewals until renewDeadline, then stops once and writes nothing more", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    const a = replica(store, clock, "replica-a");
    a.elector.start();
    await run(clock, RETRY);
    assert.equal(iso(store.read()?.spec?.renewTime), micro(T0 + RETRY));
    a.client.failing = true;
    await run(clock, RENEW - 1);
    assert.equal(a.elector.isLeader(), true, "still within renewDeadline of the last renewal");
    assert.deepEqual(a.stopped, []);
    await run(clock, 1, 1);
    assert.equal(a.elector.isLeader(), false);
    assert.equal(a.stopped.length, 1);
    assert.match(a.stopped[0] ?? "", /renew deadline passed/);
    assert.deepEqual(a.leaderInStopCallback, [false], "the fence closed before the callback ran");
    assert.ok(
      a.logs.some((l) => l.level === "warn" && /ECONNREFUSED/.test(JSON.stringify(l.err))),
      "API errors are logged",
    );

    // Lost is final: no more calls, no re-acquiring even once the API works again.
    const calls = a.client.calls;
    a.client.failing = false;
    await run(clock, 4 * LEASE, 500);
    assert.equal(a.client.calls, calls);
    assert.equal(a.elector.isLeader(), false);
    assert.equal(a.started, 1);
    await a.elector.stop();
    assert.equal(a.stopped.length, 1, "onStoppedLeading once per term");
    assert.equal(store.read()?.spec?.holderIdentity, "replica-a", "a lost elector does not release");
  });

  it("closes the fence at renewDeadline from the clock alone, even when no timer fires", async () => {
    // A clock whose timers never fire: only isLeader()'s own check can turn it false.
    let now = T0;
    const frozen: Clock = {
      now: () => now,
      setTimeout: () => ({}) as TimerHandle,
      clearTimeout: () => {},
    };
    const store = new FakeLeases();
    const a = replica(store, frozen, "replica-a");
    a.elector.start();
    await flush();
    assert.equal(a.elector.isLeader(), true);
    now = T0 + RENEW - 1;
    assert.equal(a.elector.isLeader(), true);
    now = T0 + RENEW;
    assert.equal(a.elector.isLeader(), false);
    assert.deepEqual(a.stopped, [], "no callback ran: the fence does not wait for it");
  });

  it("abandons a call that does not answer within renewDeadline (aborting it) and tries again", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    const a = replica(store, clock, "replica-a");
    a.client.hang = true;
    a.elector.start();
    await run(clock, RENEW - 50);
    assert.equal(a.client.calls, 1, "one call in flight, none stacked up behind it");
    assert.equal(a.client.signals[0]?.aborted, false);
    await run(clock, 50);
    assert.equal(a.client.signals[0]?.aborted, true);
    assert.ok(a.logs.some((l) => /no answer within 10000 ms/.test(JSON.stringify(l.err))));
    a.client.hang = false;
    await run(clock, RETRY);
    assert.equal(a.elector.isLeader(), true);
    await a.elector.stop();
  });

  it("stop() releases the lease: no holder, 1 s duration, and a successor takes over at its next try", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    const a = replica(store, clock, "replica-a");
    const b = replica(store, clock, "replica-b");
    a.elector.start();
    await flush();
    b.elector.start();
    await run(clock, 3_000);
    await a.elector.stop();
    assert.equal(a.elector.isLeader(), false);
    assert.deepEqual(a.stopped, ["released the lease"]);
    assert.deepEqual(a.leaderInStopCallback, [false]);
    const released = store.read()?.spec;
    assert.equal(released?.holderIdentity, "");
    assert.equal(released?.leaseDurationSeconds, 1);
    assert.equal(released?.leaseTransitions, 0);
    assert.equal(iso(released?.renewTime), micro(T0 + 3_000));

    // b tries every 2 s (random() = 0): at T0 + 4000, 1 s after the release.
    await run(clock, 999);
    assert.equal(b.elector.isLeader(), false);
    await run(clock, 1, 1);
    assert.equal(b.elector.isLeader(), true);
    const spec = store.read()?.spec;
    assert.equal(spec?.holderIdentity, "replica-b");
    assert.equal(spec?.leaseDurationSeconds, 15);
    assert.equal(spec?.leaseTransitions, 1);

    const writes = store.writes.length;
    await run(clock, 10_000);
    assert.equal(
      store.writes.slice(writes).filter((w) => w.by === "replica-a").length,
      0,
      "a stopped elector writes nothing",
    );
    await a.elector.stop();
    assert.equal(a.stopped.length, 1);
    await b.elector.stop({ release: false });
    assert.deepEqual(b.stopped, ["stopped without releasing the lease"]);
    assert.equal(store.read()?.spec?.holderIdentity, "replica-b");
  });

  it("two electors racing for a missing lease: one create wins, the other gets 409 and follows", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    const a = replica(store, clock, "replica-a");
    const b = replica(store, clock, "replica-b");
    a.elector.start();
    b.elector.start();
    await flush();
    assert.deepEqual(
      store.writes.map((w) => [w.op, w.ok]),
      [
        ["create", true],
        ["create", false],
      ],
    );
    const [winner, loser] = store.writes[0]?.by === "replica-a" ? [a, b] : [b, a];
    assert.equal(winner.elector.isLeader(), true);
    assert.equal(loser.elector.isLeader(), false);
    assert.ok(
      loser.logs.some((l) => l.level === "info" && /another replica wrote first/.test(String(l.msg))),
    );
    await run(clock, 30_000, 50, () => assert.equal(a.elector.isLeader() && b.elector.isLeader(), false));
    assert.equal(winner.elector.isLeader(), true);
    await Promise.all([a.elector.stop(), b.elector.stop()]);
  });

  it("two electors racing for an expired lease: the stale resourceVersion loses with 409", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    store.put({ holderIdentity: "ghost", leaseDurationSeconds: 15, leaseTransitions: 2 });
    const a = replica(store, clock, "replica-a");
    const b = replica(store, clock, "replica-b");
    a.elector.start();
    b.elector.start();
    await run(clock, LEASE, 50, () => assert.equal(a.elector.isLeader() && b.elector.isLeader(), false));
    const takeovers = store.writes.filter((w) => w.op === "replace");
    assert.deepEqual(
      takeovers.map((w) => w.ok),
      [true, false],
      "both tried at expiry; the second replace carried a stale resourceVersion",
    );
    const leaders = [a, b].filter((r) => r.elector.isLeader());
    assert.equal(leaders.length, 1);
    assert.equal(store.read()?.spec?.holderIdentity, takeovers[0]?.by);
    assert.equal(store.read()?.spec?.leaseTransitions, 3);
    await run(clock, 30_000, 50, () => assert.equal(a.elector.isLeader() && b.elector.isLeader(), false));
    await Promise.all([a.elector.stop(), b.elector.stop()]);
  });

  it("stops at once when it sees another holder, instead of waiting for its renew deadline", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    const a = replica(store, clock, "replica-a");
    a.elector.start();
    await run(clock, RETRY);
    store.put({ holderIdentity: "intruder", leaseDurationSeconds: 15, leaseTransitions: 1 });
    const calls = a.client.calls;
    await run(clock, RETRY);
    assert.equal(a.elector.isLeader(), false);
    assert.deepEqual(a.stopped, ['lease taken by "intruder"']);
    assert.equal(a.client.calls - calls, 2, "the failed renewal, then one read");
    await run(clock, 4 * LEASE, 500);
    assert.equal(a.client.calls - calls, 2, "no writes (or reads) after losing");
    assert.equal(store.read()?.spec?.holderIdentity, "intruder");
    await a.elector.stop();
    assert.equal(a.stopped.length, 1);
  });

  it("retries after API errors while acquiring", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    const a = replica(store, clock, "replica-a");
    a.client.failing = true;
    a.elector.start();
    await run(clock, 3 * RETRY);
    assert.equal(a.client.calls, 4, "the first try at once, then one every retryPeriod");
    assert.equal(a.elector.isLeader(), false);
    a.client.failing = false;
    await run(clock, RETRY);
    assert.equal(a.elector.isLeader(), true);
    await a.elector.stop();
  });

  it("jitters acquire tries between 0.8 and 1 retryPeriod", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    store.put({ holderIdentity: "other", leaseDurationSeconds: 3600 });
    const b = replica(store, clock, "replica-b", { random: () => 0.999 });
    b.elector.start();
    await flush();
    assert.deepEqual(clock.pendingTimers(), [T0 + RETRY * (1 - 0.2 * 0.999)]);
    await b.elector.stop();
    assert.deepEqual(clock.pendingTimers(), [], "stop() clears its timers");
  });

  it("releases a lease whose create landed while stop() was waiting for it, without a term", async () => {
    const store = new FakeLeases();
    const clock = new ManualClock(T0);
    const a = replica(store, clock, "replica-a");
    let open!: () => void;
    a.client.writeGate = new Promise<void>((resolve) => (open = resolve));
    a.elector.start();
    await flush();
    const stopping = a.elector.stop();
    assert.equal(store.writes.length, 0, "the create is held");
    a.client.writeGate = undefined;
    open();
    await stopping;
    assert.equal(a.started, 0, "never led: the create answered after stop()");
    assert.deepEqual(a.stopped, []);
    assert.deepEqual(
      store.writes.map((w) => [w.op, w.holder]),
      [
        ["create", "replica-a"],
        ["replace", ""],
      ],
    );
    assert.equal(a.elector.isLeader(), false);
  });
});
