import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import type { BindingStatus } from "../../src/controllers/binding/status.ts";
import {
  MAX_STATUS_FILE_BYTES,
  StatusFiles,
  StatusFilesError,
  statusFileName,
} from "../../src/store/status-files.ts";

let root: string;
let n = 0;
const freshDir = (): string => join(root, `state-${++n}`);

before(async () => {
  root = await mkdtemp(join(tmpdir(), "natsbind-status-files-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

function status(generation: number, accounts = 1): BindingStatus {
  return {
    observedGeneration: generation,
    conditions: [
      {
        type: "Ready",
        status: "True",
        reason: "Reconciled",
        message: "all accounts pushed",
        observedGeneration: generation,
        lastTransitionTime: "2026-01-01T00:00:00.000Z",
      },
    ],
    counts: { projects: accounts, accounts, pushed: accounts, upToDate: 0, retained: 0, problems: 0 },
    accounts: Array.from({ length: accounts }, (_, i) => ({
      projectId: 40 + i,
      projectPath: `acme/p${i}`,
      account: `A${"B".repeat(55)}`,
      claimsHash: "f".repeat(64),
      pushedAt: "2026-01-01T00:00:00.000Z",
      state: "Ready" as const,
    })),
  };
}

async function filesIn(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => !e.isDirectory())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

describe("StatusFiles", () => {
  it("round-trips statuses as pretty JSON files, one per key, and lists them sorted by key", async () => {
    const dir = join(freshDir(), "state");
    const store = new StatusFiles(dir);
    assert.deepEqual(await store.readAll(), [], "a missing directory is an empty store");
    assert.equal(await store.read("natsbind/acme-ci"), undefined);

    await store.write("natsbind/acme-ci", status(1));
    await store.write("b-plain", status(3, 2));
    await store.write("a/z", status(2));
    assert.deepEqual(await store.read("natsbind/acme-ci"), status(1));

    const all = await store.readAll();
    assert.deepEqual(
      all.map((s) => s.key),
      ["a/z", "b-plain", "natsbind/acme-ci"],
    );
    assert.deepEqual(all[1]!.status, status(3, 2));

    const path = store.pathOf("natsbind/acme-ci");
    assert.equal(dirname(path), dir);
    assert.match(path, /natsbind_acme-ci-[0-9a-f]{16}\.json$/);
    const text = await readFile(path, "utf8");
    assert.deepEqual(JSON.parse(text), { key: "natsbind/acme-ci", status: status(1) });
    assert.match(text, /^\{\n {2}"key": "natsbind\/acme-ci",\n/, "pretty-printed");
    assert.ok(text.endsWith("}\n"));
    assert.equal((await stat(path)).mode & 0o077 & ~0o044, 0, "not writable by others");

    // Overwrite replaces; no temp files are left behind.
    await store.write("natsbind/acme-ci", status(4));
    assert.equal((await store.read("natsbind/acme-ci"))?.observedGeneration, 4);
    assert.equal((await filesIn(dir)).length, 3);
    assert.ok((await filesIn(dir)).every((f) => f.endsWith(".json") && !f.startsWith(".")));
  });

  it("removes idempotently", async () => {
    const store = new StatusFiles(freshDir());
    await store.remove("never-written");
    await store.write("k", status(1));
    await store.remove("k");
    await store.remove("k");
    assert.equal(await store.read("k"), undefined);
    assert.deepEqual(await store.readAll(), []);
  });

  it("keeps hostile keys inside the directory and apart from each other", async () => {
    const base = freshDir();
    const dir = join(base, "state");
    const store = new StatusFiles(dir);
    const keys = [
      "../../etc/passwd",
      "..",
      ".",
      ".hidden",
      "/absolute/path",
      "a\u0000b",
      "a\nb",
      "C:\\windows\\system32",
      "ns/NAME",
      "ns/name",
      "ns_name",
      "ns/name/",
      "ümlaut/🙂",
      "x".repeat(1024),
      `${"x".repeat(1023)}y`,
    ];
    for (const [i, key] of keys.entries()) await store.write(key, status(i + 1));

    assert.deepEqual(
      await filesIn(base),
      (await filesIn(dir)).map((f) => join("state", f)),
      "nothing outside",
    );
    const names = await filesIn(dir);
    assert.equal(names.length, keys.length, "distinct keys, distinct files");
    for (const name of names) {
      assert.match(name, /^[a-z0-9_][a-z0-9._-]{0,99}-[0-9a-f]{16}\.json$/);
      assert.ok(name.length <= 255);
    }
    for (const [i, key] of keys.entries()) {
      assert.equal((await store.read(key))?.observedGeneration, i + 1, JSON.stringify(key));
      assert.equal(statusFileName(key), statusFileName(key), "stable");
    }
    const all = await store.readAll();
    assert.deepEqual(
      all.map((s) => s.key),
      [...keys].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)),
    );

    for (const key of keys) await store.remove(key);
    assert.deepEqual(await filesIn(dir), []);

    for (const bad of ["", "x".repeat(1025)]) {
      await assert.rejects(store.write(bad, status(1)), StatusFilesError);
      await assert.rejects(store.read(bad), StatusFilesError);
    }
  });

  it("skips and reports files that do not parse, are too large, or hold another key", async () => {
    const dir = freshDir();
    const problems: Array<[string, string]> = [];
    const store = new StatusFiles(dir, { onProblem: (path, message) => problems.push([path, message]) });
    await store.write("good", status(1));
    await store.write("victim", status(1));
    await store.write("other", status(5));
    await mkdir(dir, { recursive: true });

    await writeFile(join(dir, "broken-0000000000000000.json"), "{ not json");
    await writeFile(join(dir, "garbage-0000000000000000.json"), Buffer.from([0xff, 0xfe, 0x00, 0x01]));
    await writeFile(
      join(dir, "shape-0000000000000000.json"),
      JSON.stringify({ key: "shape", status: { x: 1 } }),
    );
    await writeFile(join(dir, "array-0000000000000000.json"), "[1,2,3]");
    await writeFile(join(dir, "deep-0000000000000000.json"), "[".repeat(512 * 1024));
    await writeFile(
      join(dir, "huge-0000000000000000.json"),
      JSON.stringify({ key: "huge", status: status(1), pad: "x".repeat(MAX_STATUS_FILE_BYTES) }),
    );
    // A file copied under another key's name is not that key's status.
    await writeFile(store.pathOf("victim"), await readFile(store.pathOf("other")));
    await mkdir(join(dir, "subdir.json"));
    await writeFile(join(dir, ".temp.json.tmp"), "{");
    await writeFile(join(dir, "README.txt"), "not a status");
    await symlink("/dev/zero", join(dir, "zero-0000000000000000.json"));

    const all = await store.readAll();
    assert.deepEqual(
      all.map((s) => s.key),
      ["good", "other"],
    );
    const reported = new Map(problems.map(([path, message]) => [relative(dir, path), message]));
    assert.match(reported.get("broken-0000000000000000.json") ?? "", /not valid JSON/);
    assert.match(reported.get("garbage-0000000000000000.json") ?? "", /not UTF-8/);
    assert.match(reported.get("shape-0000000000000000.json") ?? "", /status\.observedGeneration/);
    assert.match(reported.get("array-0000000000000000.json") ?? "", /not a JSON object/);
    assert.match(reported.get("huge-0000000000000000.json") ?? "", /larger than 1048576 bytes/);
    assert.match(reported.get("zero-0000000000000000.json") ?? "", /not a regular file/);
    assert.equal(
      reported.get("deep-0000000000000000.json"),
      "nests deeper than 64 levels at line 1; not parsed",
    );
    assert.match(reported.get(relative(dir, store.pathOf("victim"))) ?? "", /"other"/);
    assert.equal(reported.size, 8, JSON.stringify([...reported]));

    problems.length = 0;
    assert.equal(await store.read("victim"), undefined, "read checks the key too");
    assert.match(problems[0]?.[1] ?? "", /holds the status of "other", not of "victim"/);
  });

  it("refuses to write a status it could not read back", async () => {
    const store = new StatusFiles(freshDir());
    const big = status(1);
    big.conditions[0]!.message = "x".repeat(MAX_STATUS_FILE_BYTES);
    await assert.rejects(store.write("big", big), /larger than 1048576 bytes/);
    assert.equal(await store.read("big"), undefined);
  });
});
