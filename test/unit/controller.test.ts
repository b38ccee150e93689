import { afterEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { setImmediate as turn } from "node:timers/promises";
import { NatsbindError, TerminalError } from "../../src/errors.ts";
import { ManualClock } from "../../src/runtime/clock.ts";
import {
  Controller,
  type ReconcileOutcome,
  type ReconcileResult,
  type Reconciler,
} from "../../src/runtime/controller.ts";
import { WorkQueue } from "../../src/runtime/workqueue.ts";

const START = Date.UTC(2026, 10, 25, 12);

interface LogLine {
  level: "info" | "warn" | "error";
  obj: Record<string, unknown>;
  msg: string;
}

interface Harness {
  clock: ManualClock;
  queue: WorkQueue<string>;
  controller: Controller<string>;
  logs: LogLine[];
  outcomes: Array<{ key: string; outcome: ReconcileOutcome }>;
}

const running: Controller<string>[] = [];

/** A deadline, not a wait: a broken queue fails the test instead of hanging `make test`. */
const HANG_GUARD = { timeout: 10_000 };

afterEach(async () => {
  await Promise.all(running.splice(0).map((c) => c.stop()));
}, HANG_GUARD);

function harness(
  reconcile: (key: string, signal: AbortSignal) => Promise<ReconcileResult>,
  opts: { workers?: number; onResult?: (key: string, outcome: ReconcileOutcome) => void } = {},
): Harness {
  const clock = new ManualClock(START);
  const queue = new WorkQueue<string>({ name: "bindings", clock });
  const logs: LogLine[] = [];
  const outcomes: Harness["outcomes"] = [];
  const logAt =
    (level: LogLine["level"]) =>
    (obj: object, msg: string): void => {
      logs.push({ level, obj: obj as Record<string, unknown>, msg });
    };
  const reconciler: Reconciler<string> = { reconcile };
  const controller = new Controller<string>({
    name: "natsbinding",
    reconciler,
    queue,
    clock,
    workers: opts.workers,
    log: { info: logAt("info"), warn: logAt("warn"), error: logAt("error") },
    onResult: (key, outcome) => {
      outcomes.push({ key, outcome });
      opts.onResult?.(key, outcome);
    },
  });
  running.push(controller);
  controller.start();
  return { clock, queue, controller, logs, outcomes };
}

/** Runs promise callbacks until `cond` holds; a bounded number of event-loop turns, no wall time. */
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (cond()) return;
    await turn();
  }
  assert.fail(`never happened: ${what}`);
}

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await turn();
}

/** Resolves when `signal` aborts, so a reconcile parked by a failed test still lets stop() finish. */
function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe("Controller", HANG_GUARD, () => {
  it("reconciles an added key once and logs one line with controller and key", async () => {
    const calls: string[] = [];
    const h = harness(async (key) => {
      calls.push(key);
    });
    h.queue.add("ns/a");
    await until(() => h.outcomes.length === 1, "one outcome");
    assert.deepEqual(calls, ["ns/a"]);
    assert.deepEqual(h.outcomes[0], { key: "ns/a", outcome: { kind: "done", durationMs: 0 } });
    assert.deepEqual(h.logs, [
      {
        level: "info",
        obj: { controller: "natsbinding", key: "ns/a", outcome: "done", durationMs: 0 },
        msg: "reconciled",
      },
    ]);
    assert.deepEqual(h.clock.pendingTimers(), []);
    assert.equal(h.queue.metrics().inFlight, 0);
  });

  it("retries a failing key with per-key backoff, logs no cause, and forgets it on success", async () => {
    let failuresLeft = 3;
    const h = harness(async () => {
      if (failuresLeft-- > 0) {
        throw new NatsbindError("push account ACME failed", {
          cause: new Error("creds SUAEXAMPLESECRETSEED rejected"),
        });
      }
    });
    h.queue.add("ns/a");
    const retries: Array<[number, number]> = [];
    for (let attempt = 1; attempt <= 3; attempt++) {
      await until(() => h.outcomes.length === attempt, `attempt ${attempt}`);
      const { outcome } = h.outcomes[attempt - 1]!;
      assert.equal(outcome.kind, "error");
      if (outcome.kind !== "error") return;
      retries.push([outcome.attempt, outcome.retryInMs]);
      assert.deepEqual(h.clock.pendingTimers(), [h.clock.now() + outcome.retryInMs]);
      h.clock.advance(outcome.retryInMs - 1);
      await settle();
      assert.equal(h.outcomes.length, attempt, "not retried before the backoff");
      h.clock.advance(1);
    }
    assert.deepEqual(retries, [
      [1, 100],
      [2, 200],
      [3, 400],
    ]);
    await until(() => h.outcomes.length === 4, "success");
    assert.equal(h.outcomes[3]!.outcome.kind, "done");
    assert.equal(h.queue.numRequeues("ns/a"), 0);
    const errorLog = h.logs.find((l) => l.level === "error");
    assert.deepEqual(errorLog, {
      level: "error",
      obj: {
        controller: "natsbinding",
        key: "ns/a",
        outcome: "error",
        durationMs: 0,
        attempt: 1,
        retryInMs: 100,
        err: { name: "NatsbindError", message: "push account ACME failed" },
      },
      msg: "reconcile failed, will retry",
    });
    assert.doesNotMatch(JSON.stringify(h.logs), /SECRET/);
  });

  it("does not retry a TerminalError until the key is added again", async () => {
    let calls = 0;
    const h = harness(async () => {
      calls++;
      throw new TerminalError("spec.gitlab: exactly one of group or project");
    });
    h.queue.add("ns/bad");
    await until(() => h.outcomes.length === 1, "terminal outcome");
    const { outcome } = h.outcomes[0]!;
    assert.equal(outcome.kind, "terminal");
    assert.deepEqual(h.clock.pendingTimers(), [], "nothing scheduled");
    assert.equal(h.queue.numRequeues("ns/bad"), 0);
    h.clock.advance(3_600_000);
    await settle();
    assert.equal(calls, 1);
    assert.equal(h.logs[0]!.level, "warn");
    assert.deepEqual(h.logs[0]!.obj.err, {
      name: "TerminalError",
      message: "spec.gitlab: exactly one of group or project",
    });
    h.queue.add("ns/bad");
    await until(() => calls === 2, "reconciled again after an event");
  });

  it("schedules a requeueAfter at the right clock time and resets the backoff", async () => {
    const times: number[] = [];
    let fail = true;
    const h = harness(async () => {
      times.push(h.clock.now() - START);
      if (fail) {
        fail = false;
        throw new Error("transient");
      }
      return { requeueAfterMs: 60_000 };
    });
    h.queue.add("ns/a");
    await until(() => h.outcomes.length === 1, "first failure");
    h.clock.advance(100);
    await until(() => h.outcomes.length === 2, "requeue outcome");
    assert.deepEqual(h.outcomes[1]!.outcome, { kind: "requeue", durationMs: 0, requeueAfterMs: 60_000 });
    assert.equal(h.queue.numRequeues("ns/a"), 0, "success forgets the failures");
    assert.deepEqual(h.clock.pendingTimers(), [START + 100 + 60_000]);
    h.clock.advance(59_999);
    await settle();
    assert.deepEqual(times, [0, 100]);
    h.clock.advance(1);
    await until(() => times.length === 3, "scheduled reconcile");
    assert.deepEqual(times, [0, 100, 60_100]);
    assert.equal(h.logs[1]!.msg, "reconciled, requeue scheduled");
    assert.equal(h.logs[1]!.obj.requeueAfterMs, 60_000);
  });

  it("treats an invalid requeueAfterMs as an error", async () => {
    const h = harness(async () => ({ requeueAfterMs: Number.NaN }));
    h.queue.add("ns/a");
    await until(() => h.outcomes.length === 1, "outcome");
    const { outcome } = h.outcomes[0]!;
    assert.equal(outcome.kind, "error");
    assert.match((outcome as { error: Error }).error.message, /invalid requeueAfterMs/);
  });

  it("with 4 workers runs distinct keys in parallel, never one key twice, and re-runs a re-added key once", async () => {
    const active = new Set<string>();
    const calls: string[] = [];
    let overlaps = 0;
    let maxActive = 0;
    let gate = deferred();
    const h = harness(
      async (key, signal) => {
        calls.push(key);
        if (active.has(key)) overlaps++;
        active.add(key);
        maxActive = Math.max(maxActive, active.size);
        await Promise.race([gate.promise, aborted(signal)]);
        active.delete(key);
      },
      { workers: 4 },
    );
    for (const k of ["a", "b", "c", "d", "e"]) h.queue.add(k);
    await until(() => calls.length === 4, "four reconciles in flight");
    assert.deepEqual(calls, ["a", "b", "c", "d"]);
    assert.equal(h.queue.metrics().inFlight, 4);
    // Events for keys in flight: each must run again once, after the current run.
    for (let i = 0; i < 3; i++) {
      h.queue.add("a");
      h.queue.add("b");
    }
    await settle();
    assert.equal(calls.length, 4);
    const first = gate;
    gate = deferred();
    first.resolve();
    await until(() => calls.length === 7, "e, then a and b again");
    assert.deepEqual(calls.slice(4), ["e", "a", "b"]);
    gate.resolve();
    await until(() => h.outcomes.length === 7, "all done");
    await settle();
    assert.equal(calls.length, 7);
    assert.equal(overlaps, 0);
    assert.equal(maxActive, 4);
    assert.equal(calls.filter((k) => k === "a").length, 2);
  });

  it("records no overlap under a storm of re-adds with 4 workers", async () => {
    const active = new Set<string>();
    let overlaps = 0;
    let calls = 0;
    const h = harness(
      async (key) => {
        calls++;
        if (active.has(key)) overlaps++;
        active.add(key);
        await turn();
        active.delete(key);
      },
      { workers: 4 },
    );
    for (let round = 0; round < 50; round++) {
      for (const k of ["x", "y", "x", "z", "x"]) h.queue.add(k);
      await turn();
    }
    await until(() => h.queue.len() === 0 && h.queue.metrics().inFlight === 0, "queue empty");
    assert.equal(overlaps, 0);
    assert.ok(calls >= 3 && calls <= 150, String(calls));
  });

  it("stop() aborts the signal of a reconcile in flight and waits for it to return", async () => {
    const finish = deferred();
    let seenSignal: AbortSignal | undefined;
    const h = harness(async (_key, signal) => {
      seenSignal = signal;
      await Promise.race([aborted(signal), finish.promise]);
      await finish.promise;
      throw signal.reason;
    });
    h.queue.add("ns/a");
    await until(() => seenSignal !== undefined, "reconcile started");
    assert.equal(seenSignal!.aborted, false);
    let stopped = false;
    const stopping = h.controller.stop().then(() => (stopped = true));
    try {
      await settle();
      assert.equal(seenSignal!.aborted, true);
      assert.equal(stopped, false, "stop waits for the reconcile in flight");
    } finally {
      finish.resolve();
    }
    await stopping;
    assert.equal(h.queue.metrics().inFlight, 0);
    assert.deepEqual(h.clock.pendingTimers(), [], "no retry scheduled after stop");
    assert.equal(h.outcomes[0]!.outcome.kind, "error");
    assert.equal(h.logs[0]!.msg, "reconcile interrupted by stop");
    h.queue.add("ns/b");
    await settle();
    assert.equal(h.outcomes.length, 1, "no reconcile after stop");
    await h.controller.stop();
  });

  it("stop() returns promptly when workers are idle", async () => {
    const h = harness(async () => undefined, { workers: 3 });
    await settle();
    await h.controller.stop();
    assert.ok(h.queue.isShuttingDown());
  });

  it("keeps working when the result observer throws", async () => {
    let calls = 0;
    const h = harness(
      async () => {
        calls++;
      },
      {
        onResult: () => {
          throw new Error("observer broke");
        },
      },
    );
    h.queue.add("a");
    await until(() => calls === 1, "first");
    h.queue.add("b");
    await until(() => calls === 2, "second");
    assert.ok(h.logs.some((l) => l.msg === "reconcile result observer threw"));
  });

  it("rejects bad options and a second start", () => {
    const queue = new WorkQueue<string>({ clock: new ManualClock() });
    const reconciler: Reconciler<string> = { reconcile: async () => undefined };
    assert.throws(() => new Controller({ name: "x", reconciler, queue, workers: 0 }), RangeError);
    const c = new Controller({ name: "x", reconciler, queue });
    running.push(c);
    c.start();
    assert.throws(() => c.start(), /already started/);
  });
});
