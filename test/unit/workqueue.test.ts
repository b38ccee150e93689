import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { setImmediate as turn } from "node:timers/promises";
import { ManualClock, systemClock } from "../../src/runtime/clock.ts";
import { DEFAULT_BACKOFF, WorkQueue, exponentialFailureRateLimiter } from "../../src/runtime/workqueue.ts";

const START = Date.UTC(2026, 10, 25, 12);
/** A deadline, not a wait: a broken queue fails the test instead of hanging `make test`. */
const HANG_GUARD = { timeout: 10_000 };

function setup(): { clock: ManualClock; queue: WorkQueue<string> } {
  const clock = new ManualClock(START);
  return { clock, queue: new WorkQueue<string>({ name: "test", clock }) };
}

/** Lets promise callbacks run; never waits on wall time. */
async function flush(): Promise<void> {
  for (let i = 0; i < 3; i++) await turn();
}

/** A get() whose settlement the test can observe without awaiting it. */
function track<T>(p: Promise<T>): { settled: boolean; value: T | undefined; promise: Promise<T> } {
  const t = { settled: false, value: undefined as T | undefined, promise: p };
  void p.then((v) => {
    t.settled = true;
    t.value = v;
  });
  return t;
}

describe("ManualClock", () => {
  it("fires due timers in order on advance, and reads each timer's due time while it runs", () => {
    const clock = new ManualClock(START);
    const fired: Array<[string, number]> = [];
    clock.setTimeout(() => fired.push(["b", clock.now() - START]), 200);
    clock.setTimeout(() => fired.push(["a", clock.now() - START]), 100);
    const cancelled = clock.setTimeout(() => fired.push(["x", clock.now() - START]), 150);
    clock.setTimeout(() => fired.push(["c", clock.now() - START]), 200);
    clock.clearTimeout(cancelled);
    assert.deepEqual(clock.pendingTimers(), [START + 100, START + 200, START + 200]);
    clock.advance(99);
    assert.deepEqual(fired, []);
    clock.advance(151);
    assert.deepEqual(fired, [
      ["a", 100],
      ["b", 200],
      ["c", 200],
    ]);
    assert.equal(clock.now(), START + 250);
    assert.deepEqual(clock.pendingTimers(), []);
  });

  it("fires timers set by a firing timer when they fall due within the same advance", () => {
    const clock = new ManualClock(START);
    const fired: number[] = [];
    clock.setTimeout(() => {
      fired.push(clock.now() - START);
      clock.setTimeout(() => fired.push(clock.now() - START), 50);
    }, 100);
    clock.advance(1000);
    assert.deepEqual(fired, [100, 150]);
    assert.throws(() => clock.advance(-1), RangeError);
  });
});

describe("systemClock", () => {
  it("chains delays beyond Node's 2^31-1 ms timer limit, and clears a chained timer", (t) => {
    t.mock.timers.enable({ apis: ["setTimeout"] });
    const max = 2 ** 31 - 1;
    let fired = 0;
    systemClock.setTimeout(() => fired++, max + 1000);
    const cleared = systemClock.setTimeout(() => fired++, max + 5000);
    t.mock.timers.tick(max);
    assert.equal(fired, 0);
    systemClock.clearTimeout(cleared);
    t.mock.timers.tick(999);
    assert.equal(fired, 0);
    t.mock.timers.tick(1);
    assert.equal(fired, 1);
    t.mock.timers.tick(10_000);
    assert.equal(fired, 1);
  });
});

describe("exponential failure rate limiter", () => {
  it("doubles from 100 ms to a 5 min cap per key, and forget resets", () => {
    const limiter = exponentialFailureRateLimiter<string>();
    const delays = Array.from({ length: 15 }, () => limiter.when("a"));
    assert.deepEqual(
      delays,
      [
        100, 200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 51_200, 102_400, 204_800, 300_000, 300_000,
        300_000,
      ],
    );
    assert.equal(DEFAULT_BACKOFF.maxDelayMs, 300_000);
    assert.equal(limiter.numRequeues("a"), 15);
    assert.equal(limiter.when("b"), 100, "keys back off independently");
    limiter.forget("a");
    assert.equal(limiter.numRequeues("a"), 0);
    assert.equal(limiter.when("a"), 100);
    for (let i = 0; i < 2000; i++) limiter.when("c");
    assert.equal(limiter.when("c"), 300_000, "no overflow after many failures");
  });
});

describe("WorkQueue", HANG_GUARD, () => {
  it("holds a waiting key once however often it is added", async () => {
    const { queue } = setup();
    queue.add("a");
    queue.add("a");
    queue.add("b");
    queue.add("a");
    assert.equal(queue.len(), 2);
    assert.equal(queue.metrics().adds, 2);
    assert.equal(await queue.get(), "a");
    assert.equal(await queue.get(), "b");
    assert.equal(queue.len(), 0);
  });

  it("hands out ready keys first in, first out", async () => {
    const { queue } = setup();
    for (const k of ["c", "a", "b", "e", "d"]) queue.add(k);
    const got: Array<string | undefined> = [];
    for (let i = 0; i < 5; i++) got.push(await queue.get());
    assert.deepEqual(got, ["c", "a", "b", "e", "d"]);
  });

  it("serves blocked getters in order as keys arrive", async () => {
    const { queue } = setup();
    const first = track(queue.get());
    const second = track(queue.get());
    queue.add("x");
    queue.add("y");
    await flush();
    assert.equal(first.value, "x");
    assert.equal(second.value, "y");
  });

  it("re-queues a key added while it is processing exactly once, after done, never to two workers", async () => {
    const { queue } = setup();
    queue.add("a");
    assert.equal(await queue.get(), "a");
    queue.add("a");
    queue.add("a");
    queue.add("a");
    assert.equal(queue.len(), 0, "not ready while in flight");
    const other = track(queue.get());
    await flush();
    assert.equal(other.settled, false, "a second worker does not get the key in flight");
    queue.done("a");
    await flush();
    assert.equal(other.value, "a");
    assert.equal(queue.len(), 0, "queued once, not three times");
    queue.done("a");
    const none = track(queue.get());
    await flush();
    assert.equal(none.settled, false, "nothing more to do");
    queue.shutDown();
    await flush();
    assert.equal(none.value, undefined);
  });

  it("done without a re-add does not re-queue, and done of an unknown key is harmless", async () => {
    const { queue } = setup();
    queue.add("a");
    await queue.get();
    queue.done("a");
    queue.done("a");
    queue.done("never-seen");
    assert.equal(queue.len(), 0);
    assert.equal(queue.metrics().inFlight, 0);
  });

  it("addAfter keeps the earliest due time of a key", () => {
    const { clock, queue } = setup();
    queue.addAfter("a", 500);
    queue.addAfter("a", 1000);
    assert.deepEqual(clock.pendingTimers(), [START + 500], "a later addAfter does not postpone");
    queue.addAfter("a", 200);
    assert.deepEqual(clock.pendingTimers(), [START + 200], "an earlier addAfter brings it forward");
    assert.equal(queue.metrics().delayed, 1);
    clock.advance(199);
    assert.equal(queue.len(), 0);
    clock.advance(1);
    assert.equal(queue.len(), 1);
    assert.deepEqual(clock.pendingTimers(), []);
    clock.advance(10_000);
    assert.equal(queue.len(), 1, "fired once");
    assert.equal(queue.metrics().delayed, 0);
  });

  it("addAfter with no delay adds now, and an already-waiting key is not added twice when it fires", async () => {
    const { clock, queue } = setup();
    queue.addAfter("now", 0);
    queue.addAfter("neg", -5);
    assert.equal(queue.len(), 2);
    queue.addAfter("now", 100);
    clock.advance(100);
    assert.equal(queue.len(), 2);
    assert.deepEqual([await queue.get(), await queue.get()], ["now", "neg"]);
    assert.throws(() => queue.addAfter("bad", Number.NaN), RangeError);
    assert.throws(() => queue.addAfter("bad", Infinity), RangeError);
  });

  it("addRateLimited backs off 100, 200, 400 ms per key; forget resets", async () => {
    const { clock, queue } = setup();
    const delays: number[] = [];
    for (let attempt = 1; attempt <= 4; attempt++) {
      const before = clock.now();
      const delay = queue.addRateLimited("a");
      delays.push(delay);
      assert.deepEqual(clock.pendingTimers(), [before + delay]);
      assert.equal(queue.numRequeues("a"), attempt);
      clock.advance(delay - 1);
      assert.equal(queue.len(), 0, `attempt ${attempt}: not before ${delay} ms`);
      clock.advance(1);
      assert.equal(await queue.get(), "a");
      queue.done("a");
    }
    assert.deepEqual(delays, [100, 200, 400, 800]);
    assert.equal(queue.metrics().retries, 4);
    queue.forget("a");
    assert.equal(queue.numRequeues("a"), 0);
    assert.equal(queue.addRateLimited("a"), 100);
  });

  it("uses a custom backoff when given one", () => {
    const clock = new ManualClock(START);
    const queue = new WorkQueue<string>({
      clock,
      rateLimiter: exponentialFailureRateLimiter({ baseDelayMs: 5, maxDelayMs: 12 }),
    });
    assert.deepEqual(
      [1, 2, 3].map(() => queue.addRateLimited("k")),
      [5, 10, 12],
    );
    assert.throws(() => exponentialFailureRateLimiter({ baseDelayMs: 0 }), RangeError);
  });

  it("shutDown wakes blocked getters with undefined, drops scheduled adds and ignores new ones", async () => {
    const { clock, queue } = setup();
    const blocked = [track(queue.get()), track(queue.get())];
    queue.addAfter("later", 1000);
    await flush();
    assert.ok(blocked.every((b) => !b.settled));
    queue.shutDown();
    await flush();
    assert.ok(blocked.every((b) => b.settled && b.value === undefined));
    assert.deepEqual(clock.pendingTimers(), []);
    queue.add("late");
    queue.addAfter("late", 10);
    queue.addRateLimited("late");
    assert.equal(queue.len(), 0);
    assert.equal(await queue.get(), undefined);
    assert.ok(queue.isShuttingDown());
    queue.shutDown();
  });

  it("after shutDown, waiting keys are no longer handed out and done does not re-queue", async () => {
    const { queue } = setup();
    queue.add("a");
    queue.add("b");
    assert.equal(await queue.get(), "a");
    queue.add("a");
    queue.shutDown();
    assert.equal(await queue.get(), undefined);
    queue.done("a");
    assert.equal(queue.len(), 1, "only b, left waiting");
  });

  it("shutDownWithDrain resolves once every key in flight is done", async () => {
    const { queue } = setup();
    queue.add("a");
    queue.add("b");
    await queue.get();
    await queue.get();
    const drained = track(queue.shutDownWithDrain());
    await flush();
    assert.equal(drained.settled, false);
    queue.done("a");
    await flush();
    assert.equal(drained.settled, false);
    queue.done("b");
    await flush();
    assert.equal(drained.settled, true);
    await queue.shutDownWithDrain();
  });

  it("reports depth, adds, retries, keys in flight and the longest running one", async () => {
    const { clock, queue } = setup();
    queue.add("a");
    queue.add("b");
    queue.add("b");
    queue.addRateLimited("c");
    assert.deepEqual(queue.metrics(), {
      name: "test",
      depth: 2,
      adds: 2,
      retries: 1,
      inFlight: 0,
      delayed: 1,
      longestRunningMs: 0,
    });
    await queue.get();
    clock.advance(50);
    await queue.get();
    clock.advance(200);
    const m = queue.metrics();
    assert.equal(m.depth, 1, "c came due after 100 ms");
    assert.equal(m.inFlight, 2);
    assert.equal(m.longestRunningMs, 250);
    assert.equal(m.adds, 3);
    queue.done("a");
    assert.equal(queue.metrics().longestRunningMs, 200);
  });

  it("keeps FIFO order through many keys", async () => {
    const { queue } = setup();
    const keys = Array.from({ length: 5000 }, (_, i) => `k${i}`);
    for (const k of keys) queue.add(k);
    const got: string[] = [];
    const take = async (): Promise<void> => {
      const key = (await queue.get()) as string;
      got.push(key);
      queue.done(key);
    };
    for (let i = 0; i < 2500; i++) await take();
    for (const k of keys.slice(0, 100)) queue.add(k);
    while (queue.len() > 0) await take();
    assert.deepEqual(got, [...keys, ...keys.slice(0, 100)]);
  });
});
