/**
 * Files natsbind reads and writes: bounded reads (a file is measured before it is read, never read
 * whole and then measured) and crash-safe writes (temp file in the same directory, fsync, rename),
 * one at a time or many at once (writeFilesDurably: one directory sync per directory).
 */
import { randomBytes } from "node:crypto";
import {
  close as closeCb,
  closeSync,
  constants,
  fstatSync,
  fsync as fsyncCb,
  open as openCb,
  openSync,
  readSync,
  write as writeCb,
} from "node:fs";
import { link, mkdir, open, rename, rm } from "node:fs/promises";
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
  // Many in flight: their fsyncs share the file system's commits.
  await mapLimit(files, DURABLE_CONCURRENCY, (f) => createSynced(at(f), f.data, f.mode));
}

/**
 * Creates `path` (exclusively), writes `data`, fsyncs and closes it: one promise over the
 * callback API, no FileHandle (30,000 files for a cold start of 10,000 projects).
 */
function createSynced(path: string, data: string | Uint8Array, mode: number): Promise<void> {
  const bytes = typeof data === "string" ? Buffer.from(data) : data;
  return new Promise((resolve, reject) => {
    openCb(path, "wx", mode, (openErr, fd) => {
      if (openErr) return reject(openErr);
      const finish = (err: Error | null): void =>
        closeCb(fd, (closeErr) => (err || closeErr ? reject(err ?? closeErr) : resolve()));
      const writeFrom = (offset: number): void =>
        writeCb(fd, bytes, offset, bytes.length - offset, null, (writeErr, written) => {
          if (writeErr) return finish(writeErr);
          if (offset + written < bytes.length) return writeFrom(offset + written);
          fsyncCb(fd, (syncErr) => finish(syncErr));
        });
      writeFrom(0);
    });
  });
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
    const r = new BoundedReader(stats.size, maxBytes);
    for (;;) {
      const { bytesRead } = await handle.read(r.buffer, r.total, r.buffer.length - r.total, r.total);
      const done = r.read(bytesRead);
      if (done) return done;
    }
  } finally {
    await handle.close();
  }
}

/** The reads of one bounded file into a buffer, shared by readBoundedFile and its sync twin. */
class BoundedReader {
  buffer: Buffer;
  total = 0;
  readonly #size: number;
  readonly #maxBytes: number;

  constructor(size: number, maxBytes: number) {
    this.buffer = Buffer.alloc(size + 1);
    this.#size = size;
    this.#maxBytes = maxBytes;
  }

  /** Takes a read of `bytesRead` bytes at `total`: the result once the file is read, else undefined. */
  read(bytesRead: number): BoundedRead | undefined {
    // Less than asked for from a regular file: its end (a restart reads 100,000 slot files; a
    // second read of each only to get 0 bytes back was a fifth of the file system calls).
    if (bytesRead === 0 || (this.total === 0 && bytesRead <= this.#size))
      return { kind: "ok", data: this.buffer.subarray(0, this.total + bytesRead) };
    this.total += bytesRead;
    // The file may grow while it is read: grow the buffer, within the bound.
    if (this.total > this.#maxBytes) return { kind: "too-large" };
    if (this.total === this.buffer.length) {
      const bigger = Buffer.alloc(Math.min(this.#maxBytes + 1, this.buffer.length * 2));
      this.buffer.copy(bigger);
      this.buffer = bigger;
    }
    return undefined;
  }
}

/**
 * readBoundedFile without the thread pool: for many small files whose reading would otherwise
 * cost more in four asynchronous round trips each than in the reads themselves (a restart lists
 * 100,000 slot files). Blocks while it reads: callers take a bounded number at a time.
 */
export function readBoundedFileSync(path: string, maxBytes: number): BoundedRead {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { kind: "missing" };
    throw err;
  }
  try {
    const stats = fstatSync(fd);
    if (!stats.isFile()) return { kind: "not-a-file" };
    if (stats.size > maxBytes) return { kind: "too-large" };
    const r = new BoundedReader(stats.size, maxBytes);
    for (;;) {
      const done = r.read(readSync(fd, r.buffer, r.total, r.buffer.length - r.total, r.total));
      if (done) return done;
    }
  } finally {
    closeSync(fd);
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
