/**
 * Local mode: when natsbind first saw each binding. A binding file has no creation time of its own
 * (file times change with every edit or copy), yet overlapping bindings are ordered by age: the
 * older keeps the projects (src/controllers/binding/overlap.ts). So the first sight of each key is
 * recorded in one small JSON file in the key directory, `bindings-first-seen.json`: it lives (and
 * is backed up) with the keys whose ownership it decides, and a restart keeps the order.
 *
 *   {"version": 1, "firstSeen": {"<binding key>": "<ISO 8601 time>", ...}}
 *
 * observe() records the clock's time for keys not seen before and forgets keys that are gone (a
 * binding removed and added again is new). Memory changes at once; the file is then written
 * atomically, one write at a time. A file that cannot be read or does not parse stops the start
 * with an error naming it: guessing would reorder bindings.
 */
import { mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { z } from "zod";
import { NatsbindError, describeError } from "../errors.ts";
import type { Clock } from "../runtime/clock.ts";
import { readBoundedFile, writeFileAtomic, type BoundedRead } from "./files.ts";

export const FIRST_SEEN_FILE = "bindings-first-seen.json";
/** 1000 binding files x 100 documents, with room to spare. */
export const MAX_FIRST_SEEN_KEYS = 100_000;
export const MAX_FIRST_SEEN_FILE_BYTES = 32 * 1024 * 1024;
const MAX_KEY_LENGTH = 1024;

export class FirstSeenError extends NatsbindError {}

const fileSchema = z.strictObject({
  version: z.literal(1),
  firstSeen: z
    .record(z.string().min(1).max(MAX_KEY_LENGTH), z.iso.datetime({ offset: true }))
    .refine((r) => Object.keys(r).length <= MAX_FIRST_SEEN_KEYS, {
      message: `at most ${MAX_FIRST_SEEN_KEYS} keys`,
    }),
});

export class BindingFirstSeen {
  readonly path: string;
  readonly #clock: Clock;
  readonly #seen: Map<string, number>;
  #writes: Promise<void> = Promise.resolve();

  private constructor(path: string, clock: Clock, seen: Map<string, number>) {
    this.path = path;
    this.#clock = clock;
    this.#seen = seen;
  }

  /** The record in `keyDirectory` (none yet: empty). Throws FirstSeenError for an unusable file. */
  static async load(keyDirectory: string, clock: Clock): Promise<BindingFirstSeen> {
    const path = join(keyDirectory, FIRST_SEEN_FILE);
    let read: BoundedRead;
    try {
      read = await readBoundedFile(path, MAX_FIRST_SEEN_FILE_BYTES);
    } catch (err) {
      throw new FirstSeenError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`, {
        cause: err,
      });
    }
    const seen = new Map<string, number>();
    if (read.kind === "missing") return new BindingFirstSeen(path, clock, seen);
    if (read.kind !== "ok") {
      throw new FirstSeenError(
        read.kind === "too-large"
          ? `${path} is larger than ${MAX_FIRST_SEEN_FILE_BYTES} bytes`
          : `${path} is not a regular file`,
      );
    }
    let value: unknown;
    try {
      value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(read.data));
    } catch (err) {
      throw new FirstSeenError(`${path} is not valid JSON: ${describeError(err)}`, { cause: err });
    }
    const parsed = fileSchema.safeParse(value);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw new FirstSeenError(
        `${path}: ${issue.path.map(String).join(".") || "(top level)"}: ${issue.message}` +
          " (fix or remove the file; removed, every binding counts as first seen now)",
      );
    }
    for (const [key, iso] of Object.entries(parsed.data.firstSeen)) seen.set(key, Date.parse(iso));
    return new BindingFirstSeen(path, clock, seen);
  }

  /** When `key` was first seen (ms since the epoch), if it was. */
  get(key: string): number | undefined {
    return this.#seen.get(key);
  }

  /**
   * `keys` are the bindings present now (valid or not). New ones get the clock's time, absent ones
   * are forgotten; memory changes before this returns, the file when the promise resolves.
   */
  observe(keys: Iterable<string>): Promise<void> {
    const present = new Set(keys);
    let changed = false;
    for (const key of [...this.#seen.keys()]) {
      if (!present.has(key)) {
        this.#seen.delete(key);
        changed = true;
      }
    }
    const now = this.#clock.now();
    for (const key of present) {
      if (this.#seen.has(key)) continue;
      if (key.length === 0 || key.length > MAX_KEY_LENGTH || this.#seen.size >= MAX_FIRST_SEEN_KEYS) continue;
      this.#seen.set(key, now);
      changed = true;
    }
    if (!changed) return this.#writes;
    const write = this.#writes.catch(() => undefined).then(() => this.#write());
    this.#writes = write;
    return write;
  }

  async #write(): Promise<void> {
    const firstSeen = Object.fromEntries(
      [...this.#seen].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, ms]) => [k, new Date(ms).toISOString()]),
    );
    try {
      await mkdir(dirname(this.path), { recursive: true, mode: 0o700 });
      await writeFileAtomic(this.path, `${JSON.stringify({ version: 1, firstSeen }, null, 2)}\n`, 0o600);
    } catch (err) {
      throw new FirstSeenError(
        `cannot write ${this.path}: ${(err as NodeJS.ErrnoException).code ?? describeError(err)}`,
        { cause: err },
      );
    }
  }
}
