// Group commit of the directory key store: GroupCommit batches what callers add side by side, and
// writeFilesDurably writes new files (never over an existing one) before the replaced ones.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GroupCommit, mapLimit } from "../../src/runtime/concurrency.ts";
import { writeFilesDurably } from "../../src/store/files.ts";

let root: string;
let n = 0;
before(async () => {
  root = await mkdtemp(join(tmpdir(), "natsbind-group-commit-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe("GroupCommit", () => {
  it("writes what is added side by side as one batch, and what comes meanwhile as the next", async () => {
    const batches: number[][] = [];
    const gate = deferred();
    const commit = new GroupCommit<number>(
      async (items) => {
        batches.push(items);
        if (batches.length === 1) await gate.promise;
      },
      { maxBatch: 100 },
    );
    const first = mapLimit([1, 2, 3], 3, (i) => commit.add(i));
    // The first batch is being written (held at the gate): these wait for the next one.
    while (batches.length === 0) await new Promise((r) => setImmediate(r));
    const second = Promise.all([4, 5].map((i) => commit.add(i)));
    gate.resolve();
    await Promise.all([first, second]);
    assert.deepEqual(batches, [
      [1, 2, 3],
      [4, 5],
    ]);
  });

  it("bounds a batch, runs at most inFlight batches at once, and fails only the batch that failed", async () => {
    const batches: number[][] = [];
    let running = 0;
    let most = 0;
    const commit = new GroupCommit<number>(
      async (items) => {
        running += 1;
        most = Math.max(most, running);
        batches.push(items);
        await new Promise((r) => setImmediate(r));
        running -= 1;
        if (items.includes(3)) throw new Error("disk full");
      },
      { maxBatch: 2, inFlight: 2 },
    );
    const results = await Promise.allSettled([1, 2, 3, 4, 5].map((i) => commit.add(i)));
    assert.deepEqual(
      results.map((r) => r.status),
      ["fulfilled", "fulfilled", "rejected", "rejected", "fulfilled"],
    );
    assert.deepEqual(batches, [[1, 2], [3, 4], [5]]);
    assert.equal(most, 2);
  });
});

describe("writeFilesDurably", () => {
  it("creates new files and replaces others, 0600, in directories it makes", async () => {
    const dir = join(root, `d${++n}`);
    await mkdir(join(dir, "slots"), { recursive: true });
    await writeFile(join(dir, "slots", "a.json"), "old");
    await writeFilesDurably(
      [
        { path: join(dir, "seeds", "K1.nk"), data: "seed 1\n", mode: 0o600 },
        { path: join(dir, "seeds", "K2.nk"), data: new TextEncoder().encode("seed 2\n"), mode: 0o600 },
      ],
      [{ path: join(dir, "slots", "a.json"), data: "new", mode: 0o600 }],
    );
    assert.equal(await readFile(join(dir, "seeds", "K1.nk"), "utf8"), "seed 1\n");
    assert.equal(await readFile(join(dir, "seeds", "K2.nk"), "utf8"), "seed 2\n");
    assert.equal(await readFile(join(dir, "slots", "a.json"), "utf8"), "new");
    assert.equal((await stat(join(dir, "seeds", "K1.nk"))).mode & 0o777, 0o600);
    assert.equal((await stat(join(dir, "seeds"))).mode & 0o777, 0o700);
    assert.deepEqual((await readdir(join(dir, "slots"))).sort(), ["a.json"], "no temp file left");
  });

  it("never writes over an existing new file, and then replaces nothing", async () => {
    const dir = join(root, `d${++n}`);
    await mkdir(dir);
    await writeFile(join(dir, "K1.nk"), "kept\n");
    await writeFile(join(dir, "slot.json"), "old");
    await assert.rejects(
      writeFilesDurably(
        [{ path: join(dir, "K1.nk"), data: "other\n", mode: 0o600 }],
        [{ path: join(dir, "slot.json"), data: "names K1", mode: 0o600 }],
      ),
      (err: NodeJS.ErrnoException) => err.code === "EEXIST",
    );
    assert.equal(await readFile(join(dir, "K1.nk"), "utf8"), "kept\n");
    assert.equal(await readFile(join(dir, "slot.json"), "utf8"), "old", "the slot naming it was not written");
    assert.deepEqual((await readdir(dir)).sort(), ["K1.nk", "slot.json"]);
  });
});
