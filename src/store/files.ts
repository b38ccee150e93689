/**
 * Files natsbind reads and writes: bounded reads (a file is measured before it is read, never read
 * whole and then measured) and crash-safe writes (temp file in the same directory, fsync, rename).
 */
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { link, open, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

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
