import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ManualClock, type TimerHandle } from "../../src/runtime/clock.ts";
import {
  BindingFiles,
  BindingFilesError,
  MAX_BINDING_FILE_BYTES,
  MAX_BINDING_FILES,
  type BindingSnapshot,
  type InvalidBindingFile,
} from "../../src/store/binding-files.ts";

let root: string;
let n = 0;
const freshDir = (): string => join(root, `bindings-${++n}`);

before(async () => {
  root = await mkdtemp(join(tmpdir(), "natsbind-binding-files-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A valid NatsBinding document; `extra` is appended inside `spec`. */
function bindingYaml(
  name: string,
  opts: { namespace?: string; group?: string; extra?: string } = {},
): string {
  const ns = opts.namespace ? `\n  namespace: ${opts.namespace}` : "";
  return [
    "apiVersion: natsbind.io/v1alpha1",
    "kind: NatsBinding",
    `metadata:\n  name: ${name}${ns}`,
    "spec:",
    `  gitlab: {group: ${opts.group ?? "acme"}}`,
    ...(opts.extra ? [opts.extra] : []),
    "",
  ].join("\n");
}

/** Writes like an editor or a ConfigMap update: a hidden temp file, then a rename (never half a file). */
async function put(dir: string, name: string, content: string | Uint8Array): Promise<void> {
  await mkdir(dir, { recursive: true });
  const temp = join(dir, `.${name}.${++n}.tmp`);
  await writeFile(temp, content);
  await rename(temp, join(dir, name));
}

function invalidFor(snapshot: BindingSnapshot, source: string): InvalidBindingFile {
  const found = snapshot.invalid.find((i) => i.source === source);
  assert.ok(found, `no invalid entry for ${source}; got ${JSON.stringify(snapshot.invalid)}`);
  return found;
}

describe("BindingFiles.scan", () => {
  it("creates a missing directory and returns an empty snapshot", async () => {
    const dir = join(freshDir(), "nested");
    const snapshot = await new BindingFiles(dir).scan();
    assert.equal(snapshot.bindings.size, 0);
    assert.deepEqual(snapshot.invalid, []);
    assert.ok((await stat(dir)).isDirectory());
  });

  it("reads valid, invalid and multi-document files, ignoring hidden files, other names and subdirectories", async () => {
    const dir = freshDir();
    await put(
      dir,
      "a.yaml",
      `${bindingYaml("one", { namespace: "team" })}---\n# only a comment\n---\n${bindingYaml("two")}`,
    );
    await put(
      dir,
      "b.yml",
      bindingYaml("bad-role", { extra: "  roles: [{name: Not_A_Label}]\n  deletionPolicy: Sometimes" }),
    );
    await put(dir, "c.yaml", `${bindingYaml("syntax")}  roles: [\n    - oops: {\n`);
    await put(dir, "d.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {}\n");
    await put(dir, "e.yaml", "just a string\n");
    await put(dir, ".hidden.yaml", bindingYaml("hidden"));
    await put(dir, "notes.txt", bindingYaml("notes"));
    await mkdir(join(dir, "sub.yaml"));
    await put(join(dir, "sub.yaml"), "inner.yaml", bindingYaml("inner"));

    const snapshot = await new BindingFiles(dir).scan();
    assert.deepEqual([...snapshot.bindings.keys()].sort(), ["team/one", "two"]);
    const one = snapshot.bindings.get("team/one")!;
    assert.equal(one.key, "team/one");
    assert.equal(one.source, "a.yaml#0");
    assert.equal(one.generation, 1);
    assert.equal(one.binding.metadata.name, "one");
    assert.equal(one.binding.metadata.namespace, "team");
    assert.deepEqual(one.binding.spec.gitlab, { kind: "group", group: "acme", includeSubgroups: true });
    assert.equal(snapshot.bindings.get("two")!.source, "a.yaml#2", "the empty document keeps its index");

    const badRole = invalidFor(snapshot, "b.yml#0");
    assert.equal(badRole.key, "bad-role");
    assert.match(badRole.message, /spec\.roles\[0\]\.name/);
    assert.match(badRole.message, /spec\.deletionPolicy/);
    assert.doesNotMatch(badRole.message, /\n/);

    const syntax = invalidFor(snapshot, "c.yaml#0");
    assert.equal(syntax.key, "syntax", "the name is read from a document with a syntax error");
    assert.match(syntax.message, /^not valid YAML at line \d+, column \d+: /);

    const configMap = invalidFor(snapshot, "d.yaml#0");
    assert.equal(configMap.key, "cm");
    assert.match(configMap.message, /apiVersion/);
    assert.match(configMap.message, /kind/);

    const scalar = invalidFor(snapshot, "e.yaml#0");
    assert.equal(scalar.key, undefined);

    assert.equal(snapshot.invalid.length, 4);
    const sources = snapshot.invalid.map((i) => i.source).join(" ");
    assert.doesNotMatch(sources, /hidden|notes|inner/);
  });

  it("reads files through symlinks, as in a mounted Kubernetes ConfigMap", async () => {
    const dir = freshDir();
    await put(join(dir, "..2026_01_01"), "cm.yaml", bindingYaml("from-configmap"));
    await symlink("..2026_01_01", join(dir, "..data"));
    await symlink(join("..data", "cm.yaml"), join(dir, "cm.yaml"));
    const snapshot = await new BindingFiles(dir).scan();
    assert.deepEqual([...snapshot.bindings.keys()], ["from-configmap"]);
    assert.equal(snapshot.bindings.get("from-configmap")!.source, "cm.yaml#0");
  });

  it(
    "skips a FIFO named like a binding file instead of hanging on it",
    {
      skip: process.platform === "win32",
    },
    async () => {
      const dir = freshDir();
      await put(dir, "a.yaml", bindingYaml("a"));
      execFileSync("mkfifo", [join(dir, "pipe.yaml")]);
      await symlink("pipe.yaml", join(dir, "link-to-pipe.yaml"));
      const snapshot = await new BindingFiles(dir).scan();
      assert.deepEqual([...snapshot.bindings.keys()], ["a"]);
      assert.deepEqual(snapshot.invalid, []);
    },
  );

  it("keeps the first definition of a key, in file name and document order, and reports the others", async () => {
    const dir = freshDir();
    await put(
      dir,
      "b.yaml",
      `${bindingYaml("x", { group: "from-b" })}---\n${bindingYaml("y", { group: "b" })}`,
    );
    await put(
      dir,
      "a.yaml",
      `${bindingYaml("x", { group: "from-a" })}---\n${bindingYaml("x", { group: "a2" })}`,
    );
    await put(dir, "c.yaml", bindingYaml("x", { namespace: "ns" }));
    const snapshot = await new BindingFiles(dir).scan();
    assert.deepEqual([...snapshot.bindings.keys()].sort(), ["ns/x", "x", "y"]);
    const x = snapshot.bindings.get("x")!;
    assert.equal(x.source, "a.yaml#0");
    assert.deepEqual(x.binding.spec.gitlab, { kind: "group", group: "from-a", includeSubgroups: true });
    assert.deepEqual(
      snapshot.invalid.map((i) => [i.source, i.key, i.message]),
      [
        ["a.yaml#1", "x", "duplicate binding key x, also defined in a.yaml#0"],
        ["b.yaml#0", "x", "duplicate binding key x, also defined in a.yaml#0"],
      ],
    );
  });

  it("lets an invalid first definition keep its key: a later valid duplicate is not used", async () => {
    const dir = freshDir();
    await put(dir, "a.yaml", bindingYaml("x", { extra: "  accountPer: sometimes" }));
    await put(dir, "b.yaml", bindingYaml("x"));
    const snapshot = await new BindingFiles(dir).scan();
    assert.equal(snapshot.bindings.size, 0);
    assert.equal(invalidFor(snapshot, "a.yaml#0").key, "x");
    assert.match(invalidFor(snapshot, "a.yaml#0").message, /spec\.accountPer/);
    assert.match(
      invalidFor(snapshot, "b.yaml#0").message,
      /^duplicate binding key x, also defined in a.yaml#0$/,
    );
  });

  it("increments the generation only when the normalised spec changes, and keeps counting after removal", async () => {
    const dir = freshDir();
    const files = new BindingFiles(dir);
    await put(dir, "a.yaml", bindingYaml("a", { extra: "  limits: {payload: 1Mi, connections: 5}" }));
    const first = (await files.scan()).bindings.get("a")!;
    assert.equal(first.generation, 1);
    assert.equal(first.binding.metadata.generation, 1);

    // Comments, key order, flow vs block style, quantity spelling, explicit defaults: same spec.
    await put(
      dir,
      "a.yaml",
      [
        "# reformatted",
        "kind: NatsBinding",
        "apiVersion: natsbind.io/v1alpha1",
        "metadata:",
        "  name: a",
        "  labels: {team: x}   # ignored metadata",
        "spec:",
        "  limits:",
        "    connections: 5",
        "    payload: 1048576",
        "  deletionPolicy: Retain",
        "  accountPer: project",
        "  gitlab:",
        "    group: acme",
        "    includeSubgroups: true",
        "",
      ].join("\n"),
    );
    assert.equal((await files.scan()).bindings.get("a")!.generation, 1);

    await put(dir, "a.yaml", bindingYaml("a", { extra: "  limits: {payload: 2Mi, connections: 5}" }));
    assert.equal((await files.scan()).bindings.get("a")!.generation, 2);
    assert.equal((await files.scan()).bindings.get("a")!.generation, 2, "a rescan alone changes nothing");

    // Moving the document to another file is no spec change.
    await rm(join(dir, "a.yaml"));
    await put(dir, "z.yaml", bindingYaml("a", { extra: "  limits: {payload: 2Mi, connections: 5}" }));
    const moved = (await files.scan()).bindings.get("a")!;
    assert.equal(moved.generation, 2);
    assert.equal(moved.source, "z.yaml#0");

    // Invalid for a while: no generation; valid again with the same spec: same generation.
    await put(dir, "z.yaml", bindingYaml("a", { extra: "  limits: {payload: lots}" }));
    const broken = await files.scan();
    assert.equal(broken.bindings.has("a"), false);
    assert.equal(invalidFor(broken, "z.yaml#0").key, "a");

    await rm(join(dir, "z.yaml"));
    assert.equal((await files.scan()).bindings.size, 0);
    await put(dir, "a.yaml", bindingYaml("a", { group: "other" }));
    assert.equal((await files.scan()).bindings.get("a")!.generation, 3, "a re-added key continues counting");

    assert.equal((await new BindingFiles(dir).scan()).bindings.get("a")!.generation, 1, "per instance");
  });

  it("serialises concurrent scans", async () => {
    const dir = freshDir();
    await put(dir, "a.yaml", bindingYaml("a"));
    const files = new BindingFiles(dir);
    const results = await Promise.all([files.scan(), files.scan(), files.scan()]);
    for (const r of results) assert.equal(r.bindings.get("a")!.generation, 1);
    assert.equal(files.current(), results[2]);
  });
});

describe("BindingFiles.scan with hostile content", () => {
  it("bounds and reports huge files, too many documents, binary garbage, YAML bombs and deep nesting", async () => {
    const dir = freshDir();
    await put(dir, "a-good.yaml", bindingYaml("good"));
    await put(dir, "huge.yaml", `${bindingYaml("huge")}# ${"x".repeat(MAX_BINDING_FILE_BYTES)}\n`);
    await put(dir, "many.yaml", Array.from({ length: 2000 }, (_, i) => bindingYaml(`b${i}`)).join("---\n"));
    const garbage = randomBytes(4096);
    garbage[0] = 0xff; // never valid UTF-8
    await put(dir, "garbage.yaml", garbage);
    await put(dir, "nul.yaml", `${bindingYaml("nul")}\u0000\u0001\n`);
    const bomb = [
      "apiVersion: natsbind.io/v1alpha1",
      "kind: NatsBinding",
      "metadata: {name: bomb}",
      "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]",
      ...Array.from({ length: 12 }, (_, i) => {
        const prev = i === 0 ? "a" : `l${i - 1}`;
        return `l${i}: &l${i} [${Array(10).fill(`*${prev}`).join(", ")}]`;
      }),
      "spec: {gitlab: {group: acme}, roles: *l11}",
      "",
    ].join("\n");
    await put(dir, "bomb.yaml", bomb);
    await put(dir, "deep.yaml", `metadata: {name: deep}\nspec: ${"[".repeat(100_000)}\n`);
    await put(dir, "deep-map.yaml", `${"{a: ".repeat(50_000)}1${"}".repeat(50_000)}\n`);

    const started = process.hrtime.bigint();
    const snapshot = await new BindingFiles(dir).scan();
    const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
    assert.ok(elapsedMs < 20_000, `scan took ${elapsedMs} ms`);

    assert.deepEqual([...snapshot.bindings.keys()], ["good"]);
    assert.match(
      invalidFor(snapshot, "huge.yaml").message,
      new RegExp(`larger than ${MAX_BINDING_FILE_BYTES} bytes`),
    );
    assert.match(invalidFor(snapshot, "many.yaml").message, /holds more than 100 YAML documents/);
    assert.match(invalidFor(snapshot, "garbage.yaml").message, /not UTF-8/);
    assert.match(invalidFor(snapshot, "nul.yaml").message, /control characters/);
    const bombEntry = invalidFor(snapshot, "bomb.yaml#0");
    assert.match(bombEntry.message, /alias/i);
    assert.equal(bombEntry.key, "bomb");
    // Refused before the parser (issue 9, finding 9), as a file problem.
    assert.equal(
      invalidFor(snapshot, "deep.yaml").message,
      "nests deeper than 64 levels at line 2; not parsed",
    );
    assert.equal(
      invalidFor(snapshot, "deep-map.yaml").message,
      "nests deeper than 64 levels at line 1; not parsed",
    );
    for (const entry of snapshot.invalid) {
      assert.doesNotMatch(entry.message, /\n/, `one line: ${entry.source}`);
      assert.ok(entry.message.length < 20_000, `bounded message: ${entry.source}`);
    }
    // Files that could not be read at all name no key the first time.
    for (const source of ["huge.yaml", "many.yaml", "garbage.yaml", "nul.yaml"])
      assert.equal(invalidFor(snapshot, source).key, undefined);
  });

  // Issue 9, finding 9: 240 KB of "[" cost the parser ~1 s and 235 MiB per scan; block nesting
  // ("- - - ...") fits 120k levels in the same size. Both are refused by the pre-scan.
  it("refuses 240 KB of flow or block nesting before parsing it, naming the file and the limit", async () => {
    const dir = freshDir();
    await put(dir, "good.yaml", bindingYaml("good"));
    await put(dir, "flow.yaml", "[".repeat(240 * 1024));
    await put(dir, "block.yaml", `${bindingYaml("block")}x: ${"- ".repeat(120 * 1024)}1\n`);
    await put(dir, "mixed.yaml", `${bindingYaml("mixed")}x: ${"{a: [".repeat(40_000)}\n`);
    // 30 flow levels next to a binding's fields: within the bound, read and valid (unknown top-level
    // fields are not the binding's business).
    await put(dir, "fine.yaml", `${bindingYaml("fine")}x: ${"[".repeat(30)}${"]".repeat(30)}\n`);
    const snapshot = await new BindingFiles(dir).scan();
    assert.deepEqual([...snapshot.bindings.keys()].sort(), ["fine", "good"]);
    assert.equal(
      invalidFor(snapshot, "flow.yaml").message,
      "nests deeper than 64 levels at line 1; not parsed",
    );
    assert.equal(
      invalidFor(snapshot, "block.yaml").message,
      "nests deeper than 64 levels at line 7; not parsed",
    );
    assert.equal(
      invalidFor(snapshot, "mixed.yaml").message,
      "nests deeper than 64 levels at line 7; not parsed",
    );
    assert.equal(snapshot.invalid.length, 3);
  });

  it("reports a file that became unreadable under the keys it held, so they do not look removed", async () => {
    const dir = freshDir();
    const files = new BindingFiles(dir);
    await put(dir, "a.yaml", `${bindingYaml("one")}---\n${bindingYaml("two", { extra: "  accountPer: x" })}`);
    await put(dir, "b.yaml", bindingYaml("one"));
    const before = await files.scan();
    assert.deepEqual([...before.bindings.keys()], ["one"]);

    await put(dir, "a.yaml", randomBytes(512).fill(0xfe, 0, 1));
    const broken = await files.scan();
    assert.equal(broken.bindings.size, 0);
    assert.deepEqual(
      broken.invalid.map((i) => [i.source, i.key]),
      [
        ["a.yaml", "one"],
        ["a.yaml", "two"],
        ["b.yaml#0", "one"],
      ],
    );
    assert.match(invalidFor(broken, "a.yaml").message, /not UTF-8/);

    // Still broken: still attributed. Fixed: valid again with the same generation.
    assert.deepEqual(
      (await files.scan()).invalid.map((i) => i.key),
      ["one", "two", "one"],
    );
    await put(dir, "a.yaml", bindingYaml("one"));
    assert.equal((await files.scan()).bindings.get("one")!.generation, 1);
  });

  it("refuses a directory with more than the maximum number of binding files, naming it", async () => {
    const dir = freshDir();
    await mkdir(dir);
    await Promise.all(
      Array.from({ length: MAX_BINDING_FILES + 1 }, (_, i) => writeFile(join(dir, `b${i}.yaml`), "")),
    );
    await assert.rejects(new BindingFiles(dir).scan(), (err: unknown) => {
      assert.ok(err instanceof BindingFilesError);
      assert.match(err.message, new RegExp(`${dir.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}.*more than 1000`));
      return true;
    });
  });

  it("fails with an error naming a directory it cannot use", async () => {
    const file = join(freshDir(), "not-a-dir");
    await put(join(file, ".."), "not-a-dir", "x");
    for (const dir of [file, join(file, "sub")]) {
      await assert.rejects(new BindingFiles(dir).scan(), (err: unknown) => {
        assert.ok(err instanceof BindingFilesError);
        assert.ok(err.message.includes(dir), err.message);
        return true;
      });
    }
  });
});

/** Records onChange calls; `next` resolves on the first matching call after `from`, or fails on a deadline. */
class Recorder {
  readonly calls: Array<{ keys: string[]; snapshot: BindingSnapshot }> = [];
  readonly errors: unknown[] = [];
  #waiters: Array<() => void> = [];

  readonly onChange = (keys: string[], snapshot: BindingSnapshot): void => {
    this.calls.push({ keys, snapshot });
    this.wake();
  };

  readonly onError = (err: unknown): void => {
    this.errors.push(err);
    this.wake();
  };

  /** Re-runs pending `until` checks (also called when the test clock gets a timer). */
  wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  /** Waits for a condition on the recorded calls; the deadline only fails the test. */
  async until<T>(what: string, check: () => T | undefined, timeoutMs = 10_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = check();
      if (found !== undefined) return found;
      const remaining = deadline - Date.now();
      if (remaining <= 0)
        assert.fail(`timed out waiting for ${what}; calls: ${JSON.stringify(this.calls.map((c) => c.keys))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remaining);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** The first call at index >= from whose keys include `key`. */
  callWith(key: string, from: number): { keys: string[]; snapshot: BindingSnapshot } | undefined {
    return this.calls.slice(from).find((c) => c.keys.includes(key));
  }
}

/** A ManualClock that tells the recorder when a timer is set, so waits on timers need no polling. */
class ObservedClock extends ManualClock {
  onSet: () => void = () => undefined;

  override setTimeout(fn: () => void, ms: number): TimerHandle {
    const handle = super.setTimeout(fn, ms);
    this.onSet();
    return handle;
  }
}

function observedClock(rec: Recorder): ObservedClock {
  const clock = new ObservedClock();
  clock.onSet = () => rec.wake();
  return clock;
}

describe("BindingFiles.watch", () => {
  it("reports added, changed, invalidated and removed keys from fs.watch events", async () => {
    const dir = freshDir();
    await put(dir, "keep.yaml", bindingYaml("keep"));
    const files = new BindingFiles(dir);
    await files.scan();
    const rec = new Recorder();
    const watch = files.watch(rec.onChange, { debounceMs: 10, onError: rec.onError });
    try {
      await put(dir, "a.yaml", bindingYaml("a"));
      let mark = rec.calls.length;
      const added = await rec.until("a added", () => rec.callWith("a", mark));
      assert.deepEqual(added.keys, ["a"]);
      assert.equal(added.snapshot.bindings.get("a")!.generation, 1);

      mark = rec.calls.length;
      await put(dir, "a.yaml", bindingYaml("a", { group: "changed" }));
      const changed = await rec.until("a changed", () => rec.callWith("a", mark));
      assert.equal(changed.snapshot.bindings.get("a")!.generation, 2);

      // A comment-only edit of a, then a new file b: the scan that sees b also saw a's edit.
      mark = rec.calls.length;
      await put(dir, "a.yaml", `# just a comment\n${bindingYaml("a", { group: "changed" })}`);
      await put(dir, "b.yaml", bindingYaml("b", { namespace: "ns" }));
      await rec.until("b added", () => rec.callWith("ns/b", mark));
      assert.equal(rec.callWith("a", mark), undefined, "a comment-only edit reports nothing");

      mark = rec.calls.length;
      await put(dir, "a.yaml", bindingYaml("a", { extra: "  roles: [{name: BAD}]" }));
      const invalidated = await rec.until("a invalid", () => rec.callWith("a", mark));
      assert.equal(invalidated.snapshot.bindings.has("a"), false);
      assert.equal(invalidated.snapshot.invalid.find((i) => i.key === "a")?.source, "a.yaml#0");

      mark = rec.calls.length;
      await rm(join(dir, "a.yaml"));
      const removed = await rec.until("a removed", () => rec.callWith("a", mark));
      assert.equal(removed.snapshot.bindings.has("a"), false);
      assert.equal(removed.snapshot.invalid.length, 0);

      assert.equal(rec.callWith("keep", 0), undefined, "an untouched binding is never reported");
      assert.deepEqual(rec.errors, []);
    } finally {
      watch.close();
    }
  });

  it("catches changes with the periodic rescan alone (fs.watch off), on an injected clock", async () => {
    const dir = freshDir();
    const files = new BindingFiles(dir);
    await put(dir, "a.yaml", bindingYaml("a"));
    await files.scan();
    const rec = new Recorder();
    const clock = observedClock(rec);
    const watch = files.watch(rec.onChange, {
      useFsWatch: false,
      clock,
      rescanIntervalMs: 30_000,
      onError: rec.onError,
    });
    try {
      assert.deepEqual(clock.pendingTimers(), [clock.now() + 30_000]);
      await put(dir, "a.yaml", bindingYaml("a", { group: "other" }));
      await put(dir, "b.yaml", bindingYaml("b"));
      clock.advance(29_999);
      assert.equal(rec.calls.length, 0);
      clock.advance(1);
      const call = await rec.until("rescan", () => rec.calls[0]);
      assert.deepEqual(call.keys, ["a", "b"]);
      assert.equal(call.snapshot.bindings.get("a")!.generation, 2);
      // The next rescan is scheduled once this one finished.
      await rec.until("next rescan scheduled", () => (clock.pendingTimers().length === 1 ? true : undefined));
      assert.deepEqual(clock.pendingTimers(), [clock.now() + 30_000]);

      // Nothing changed: a rescan reports nothing. Then a removal is caught.
      clock.advance(30_000);
      await rec.until("second rescan done", () => (clock.pendingTimers().length === 1 ? true : undefined));
      assert.equal(rec.calls.length, 1);
      await rm(join(dir, "b.yaml"));
      clock.advance(30_000);
      const removed = await rec.until("removal", () => rec.calls[1]);
      assert.deepEqual(removed.keys, ["b"]);
    } finally {
      watch.close();
    }
    assert.deepEqual(clock.pendingTimers(), [], "close clears the timers");
    assert.deepEqual(rec.errors, []);
  });

  it("reports scan failures and a rejecting listener to onError, and keeps rescanning", async () => {
    const dir = freshDir();
    const files = new BindingFiles(dir);
    await files.scan();
    const rec = new Recorder();
    const clock = observedClock(rec);
    let rejectNext = true;
    const watch = files.watch(
      async (keys, snapshot) => {
        rec.onChange(keys, snapshot);
        if (rejectNext) {
          rejectNext = false;
          throw new Error("listener failed");
        }
      },
      { useFsWatch: false, clock, onError: rec.onError },
    );
    try {
      await put(dir, "a.yaml", bindingYaml("a"));
      clock.advance(30_000);
      await rec.until("listener error", () => rec.errors[0]);
      assert.match(String(rec.errors[0]), /listener failed/);

      await rm(dir, { recursive: true });
      await writeFile(dir, "now a file");
      await rec.until("rescan armed", () => (clock.pendingTimers().length === 1 ? true : undefined));
      clock.advance(30_000);
      const err = await rec.until("scan error", () => rec.errors[1]);
      assert.ok(err instanceof BindingFilesError);
      assert.ok(err.message.includes(dir));

      await rm(dir);
      await put(dir, "b.yaml", bindingYaml("b"));
      await rec.until("rescan armed", () => (clock.pendingTimers().length === 1 ? true : undefined));
      clock.advance(30_000);
      const recovered = await rec.until("recovered", () => rec.callWith("b", 1));
      assert.deepEqual(recovered.keys, ["a", "b"], "a vanished with the directory, b is new");
    } finally {
      watch.close();
    }
  });

  it("coalesces a burst of fs.watch events into one scan after the debounce delay", async () => {
    const dir = freshDir();
    const files = new BindingFiles(dir);
    await files.scan();
    const rec = new Recorder();
    const clock = observedClock(rec);
    const watch = files.watch(rec.onChange, { debounceMs: 200, clock, onError: rec.onError });
    try {
      const keys = Array.from({ length: 20 }, (_, i) => `f${i}`);
      await Promise.all(keys.map((k) => put(dir, `${k}.yaml`, bindingYaml(k))));
      // The first event armed the debounce timer; the clock has not moved, so all events coalesce.
      await rec.until("debounce armed", () => (clock.pendingTimers().length === 2 ? true : undefined));
      assert.deepEqual(clock.pendingTimers(), [clock.now() + 200, clock.now() + 30_000]);
      assert.equal(rec.calls.length, 0);
      clock.advance(199);
      assert.equal(rec.calls.length, 0);
      clock.advance(1);
      const call = await rec.until("one scan", () => rec.calls[0]);
      assert.deepEqual(call.keys, [...keys].sort());
      assert.equal(call.snapshot.bindings.size, 20);
    } finally {
      watch.close();
    }
    assert.equal(rec.calls.length, 1);
    assert.deepEqual(rec.errors, []);
  });
});
