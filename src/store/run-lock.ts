/**
 * One writer per key directory (local mode). `natsbind run` holds `<keys>/natsbind.lock` while it
 * runs; a CLI command that changes slots (`natsbind rotate`, `natsbind credentials revoke`) either
 * takes the lock and does the work itself or, when a live `natsbind run` holds it, hands the work
 * to that process through a request file (src/rotation/request-files.ts). Two processes therefore
 * never write one slot: the running controller caches slots it owns and would not see the other's.
 *
 * The lock file holds the owner's pid; a lock whose pid is not alive (a killed process) is stale and
 * taken over. Creation is O_EXCL, so two starters never both win.
 */
import { open, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { NatsbindError } from "../errors.ts";

export const RUN_LOCK_FILE = "natsbind.lock";

export class RunLockHeldError extends NatsbindError {
  readonly pid: number;
  constructor(path: string, pid: number) {
    super(`${path} is held by natsbind process ${pid}: another natsbind run uses this key directory`);
    this.pid = pid;
  }
}

export interface RunLock {
  readonly path: string;
  release(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The pid holding the lock when it is held by a live process, else undefined. */
export async function runLockHolder(keysDir: string): Promise<number | undefined> {
  const text = await readFile(join(keysDir, RUN_LOCK_FILE), "utf8").catch(() => undefined);
  const pid = text !== undefined && /^[1-9][0-9]{0,9}\n?$/.test(text) ? Number(text.trim()) : undefined;
  return pid !== undefined && alive(pid) ? pid : undefined;
}

/** Takes the key directory's lock, or throws RunLockHeldError naming the live holder. */
export async function acquireRunLock(keysDir: string): Promise<RunLock> {
  const path = join(keysDir, RUN_LOCK_FILE);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await open(path, "wx", 0o600);
      try {
        await handle.writeFile(`${process.pid}\n`);
        await handle.sync();
      } finally {
        await handle.close();
      }
      let released = false;
      return {
        path,
        async release() {
          if (released) return;
          released = true;
          // Only our own lock: a takeover after we were presumed dead must not be undone.
          const text = await readFile(path, "utf8").catch(() => "");
          if (text.trim() === String(process.pid)) await rm(path, { force: true });
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const holder = await runLockHolder(keysDir);
      if (holder !== undefined && holder !== process.pid) throw new RunLockHeldError(path, holder);
      if (holder === process.pid) throw new RunLockHeldError(path, holder);
      // Stale (its process is gone, or the file is unreadable): remove it and try again.
      await rm(path, { force: true });
    }
  }
  throw new NatsbindError(`${path}: could not take the lock (another process keeps taking it)`);
}
