/**
 * Files natsbind reads and writes: bounded reads (a file is measured before it is read, never read
 * whole and then measured) and crash-safe writes (temp file in the same directory, fsync, rename),
 * one at a time or many at once (writeFilesDurably: one directory sync per directory).
 */
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { link, mkdir, open, rename, rm, type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { mapLimit } from "../runtime/concurrency.ts";

export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const temp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  const handle = await open(temp, "wx", mode);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(temp, { force: true });
    throw err;
  }
  await handle.close();
  await rename(temp, path);
}

/**
 * Like writeFileAtomic, but never replaces a file: the complete temp file is hard-linked to `path`,
 * which fails with EEXIST when something is there (a key file must not be overwritten).
 */
export async function writeNewFileAtomic(
  path: string,
  data: string | Uint8Array,
  mode = 0o600,
): Promise<void> {
  const temp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  const handle = await open(temp, "wx", mode);
  try {
    await handle.writeFile(data);
    await handle.sync();
    await handle.close();
    await link(temp, path);
  } finally {
    await handle.close().catch(() => undefined);
    await rm(temp, { force: true });
  }
}

/** One file of writeFilesDurably. */
export interface DurableFile {
  path: string;
  data: string | Uint8Array;
  mode: number;
}

/** File system calls in flight at once (libuv runs them on its 4 threads). */
const DURABLE_CONCURRENCY = 16;

/**
 * Writes many files so that all of them are durable when the promise resolves, with one fsync of
 * each directory they are in (a group commit: a journaling file system commits the files' fsyncs,
 * issued together, in few transactions, and their directory entries in one).
 *
 * `created` are new files (exclusive create: an existing file fails the batch), written in place:
 * a crash can leave one partly written, so they must be files nothing names until this resolves
 * (seed files, named later by a slot). `replaced` files are replaced atomically (temp file,
 * fsync, rename), so a reader or a crash sees the old or the new file, never a part. Every
 * `created` file is durable (data and directory entry) before the first `replaced` one is renamed
 * into place: a slot that names new seeds never outlives them. Directories are made (0700) when
 * missing. On failure, temp files are removed; created files stay (nothing names them).
 */
export async function writeFilesDurably(
  created: readonly DurableFile[],
  replaced: readonly DurableFile[] = [],
): Promise<void> {
  const dirs = new Set([...created, ...replaced].map((f) => dirname(f.path)));
  for (const dir of dirs) await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeAndSync(created, (f) => f.path);
  await syncDirectories(created);
  const temps = new Map(
    replaced.map((f) => [
      f,
      join(dirname(f.path), `.${basename(f.path)}.${randomBytes(6).toString("hex")}.tmp`),
    ]),
  );
  try {
    await writeAndSync(replaced, (f) => temps.get(f)!);
    await mapLimit(replaced, DURABLE_CONCURRENCY, async (f) => {
      await rename(temps.get(f)!, f.path);
      temps.delete(f);
    });
  } finally {
    await Promise.all([...temps.values()].map((temp) => rm(temp, { force: true })));
  }
  await syncDirectories(replaced);
}

/** Creates each file (exclusively) at `at(file)`, writes it, then fsyncs all of them; closes all. */
async function writeAndSync(files: readonly DurableFile[], at: (f: DurableFile) => string): Promise<void> {
  const handles: FileHandle[] = [];
  try {
    await mapLimit(files, DURABLE_CONCURRENCY, async (f) => {
      const handle = await open(at(f), "wx", f.mode);
      handles.push(handle);
      await handle.writeFile(f.data);
    });
    // Every file is written before the first fsync: issued together, the fsyncs share commits.
    await mapLimit(handles, DURABLE_CONCURRENCY, (h) => h.sync());
  } finally {
    await Promise.all(handles.map((h) => h.close().catch(() => undefined)));
  }
}

/** fsync of each directory the files are in: their new directory entries are durable. */
async function syncDirectories(files: readonly DurableFile[]): Promise<void> {
  for (const dir of new Set(files.map((f) => dirname(f.path)))) {
    const handle = await open(dir, "r");
    try {
      await handle.sync();
    } catch (err) {
      // Some file systems cannot sync a directory (EINVAL); their entries are as durable as they get.
      if ((err as NodeJS.ErrnoException).code !== "EINVAL") throw err;
    } finally {
      await handle.close();
    }
  }
}

export type BoundedRead =
  { kind: "ok"; data: Buffer } | { kind: "missing" } | { kind: "not-a-file" } | { kind: "too-large" };

/**
 * A regular file of at most `maxBytes`, opened non-blocking (a FIFO cannot hang it) and checked
 * after opening. Other errors (EACCES, ...) are thrown as they are.
 */
export async function readBoundedFile(path: string, maxBytes: number): Promise<BoundedRead> {
  let handle;
  try {
    handle = await open(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { kind: "missing" };
    throw err;
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) return { kind: "not-a-file" };
    if (stats.size > maxBytes) return { kind: "too-large" };
    let buffer = Buffer.alloc(stats.size + 1);
    let total = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, total, buffer.length - total, total);
      if (bytesRead === 0) return { kind: "ok", data: buffer.subarray(0, total) };
      total += bytesRead;
      // The file may grow while it is read: grow the buffer, within the bound.
      if (total > maxBytes) return { kind: "too-large" };
      if (total === buffer.length) {
        const bigger = Buffer.alloc(Math.min(maxBytes + 1, buffer.length * 2));
        buffer.copy(bigger);
        buffer = bigger;
      }
    }
  } finally {
    await handle.close();
  }
}

/**
 * A file that must be there (a config, a token, a key), as text of at most `maxBytes`. The caller
 * words the errors: `unreadable(reason)` gets an errno code ("ENOENT", "EACCES") or "not a regular
 * file"; `tooLarge()` when it is over the bound.
 */
export async function readRequiredTextFile(
  path: string,
  maxBytes: number,
  errors: { unreadable(reason: string, cause?: unknown): Error; tooLarge(): Error },
): Promise<string> {
  let read: BoundedRead;
  try {
    read = await readBoundedFile(path, maxBytes);
  } catch (cause) {
    throw errors.unreadable(String((cause as NodeJS.ErrnoException).code ?? cause), cause);
  }
  switch (read.kind) {
    case "ok":
      return read.data.toString("utf8");
    case "missing":
      throw errors.unreadable("ENOENT");
    case "not-a-file":
      throw errors.unreadable("not a regular file");
    case "too-large":
      throw errors.tooLarge();
  }
}
