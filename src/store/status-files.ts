/**
 * Local mode's status store: one JSON file per binding (`{ key, status }`, pretty-printed) in a
 * state directory, written atomically, so `natsbind status` (another process) always reads a whole
 * file. File names come from the key but cannot leave the directory or collide:
 * `<sanitised key>-<sha256 prefix>.json`. Reads are bounded; a file that does not parse is skipped
 * and reported, never fatal, because status is derived data the controller rewrites.
 */
import { createHash } from "node:crypto";
import { mkdir, opendir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { BindingStatus } from "../controllers/binding/status.ts";
import { NatsbindError, describeError } from "../errors.ts";
import { jsonNestingProblem } from "../nesting.ts";
import { readBoundedFile, writeFileAtomic, type BoundedRead } from "./files.ts";

export const MAX_STATUS_FILE_BYTES = 1024 * 1024;
/** Longest key accepted; binding keys are `namespace/name`, far shorter. */
export const MAX_STATUS_KEY_LENGTH = 1024;
const MAX_NAME_PART = 100;
const HASH_HEX_CHARS = 16;

export class StatusFilesError extends NatsbindError {}

export interface StoredStatus {
  key: string;
  status: BindingStatus;
}

export interface StatusFilesOptions {
  /** Told about status files that cannot be read or do not parse (they are skipped). */
  onProblem?: (path: string, message: string) => void;
}

/**
 * The file name for a key: lower-case letters, digits, "-", "_" and "." from the key (others, "/"
 * included, become "_"; no leading "."), then a SHA-256 prefix of the exact key, so distinct keys
 * never share a file and no key can name a path outside the directory.
 */
export function statusFileName(key: string): string {
  checkKey(key);
  const readable = key
    .toLowerCase()
    .replace(/[^a-z0-9._-]/g, "_")
    .replace(/^\.+/, (dots) => "_".repeat(dots.length))
    .slice(0, MAX_NAME_PART);
  const hash = createHash("sha256").update(key, "utf8").digest("hex").slice(0, HASH_HEX_CHARS);
  return `${readable}-${hash}.json`;
}

function checkKey(key: string): void {
  if (typeof key !== "string" || key.length === 0 || key.length > MAX_STATUS_KEY_LENGTH) {
    throw new StatusFilesError(
      `status key must be a string of 1 to ${MAX_STATUS_KEY_LENGTH} characters, got ${typeof key === "string" ? `${key.length} characters` : typeof key}`,
    );
  }
}

export class StatusFiles {
  readonly dir: string;
  readonly #onProblem: ((path: string, message: string) => void) | undefined;

  constructor(dir: string, opts: StatusFilesOptions = {}) {
    this.dir = dir;
    this.#onProblem = opts.onProblem;
  }

  /** The path of a key's status file. */
  pathOf(key: string): string {
    return join(this.dir, statusFileName(key));
  }

  /** Replaces the key's status; durable and whole when the promise resolves. */
  async write(key: string, status: BindingStatus): Promise<void> {
    const path = this.pathOf(key);
    const text = `${JSON.stringify({ key, status } satisfies StoredStatus, null, 2)}\n`;
    if (Buffer.byteLength(text) > MAX_STATUS_FILE_BYTES) {
      throw new StatusFilesError(
        `status of ${JSON.stringify(key)} is larger than ${MAX_STATUS_FILE_BYTES} bytes; not written`,
      );
    }
    await mkdir(this.dir, { recursive: true, mode: 0o755 });
    // Status is public data (no seeds, creds or user JWTs), readable by `natsbind status`.
    await writeFileAtomic(path, text, 0o644);
  }

  /** The key's status, or undefined when there is none (or its file is unusable: see onProblem). */
  async read(key: string): Promise<BindingStatus | undefined> {
    const path = this.pathOf(key);
    const stored = await this.#load(path);
    if (stored === undefined) return undefined;
    if (stored.key !== key) {
      this.#problem(
        path,
        `holds the status of ${JSON.stringify(stored.key.slice(0, 200))}, not of ${JSON.stringify(key)}`,
      );
      return undefined;
    }
    return stored.status;
  }

  /** Every stored status, sorted by key. A missing directory is an empty store. */
  async readAll(): Promise<StoredStatus[]> {
    const names: string[] = [];
    try {
      const dir = await opendir(this.dir);
      for await (const entry of dir) {
        if (entry.name.startsWith(".") || !entry.name.endsWith(".json") || entry.isDirectory()) continue;
        names.push(entry.name);
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return [];
      throw new StatusFilesError(`cannot read status directory ${this.dir}: ${code ?? describeError(err)}`, {
        cause: err,
      });
    }
    const all: StoredStatus[] = [];
    for (const name of names.sort()) {
      const path = join(this.dir, name);
      const stored = await this.#load(path);
      if (stored === undefined) continue;
      let expected: string;
      try {
        expected = statusFileName(stored.key);
      } catch (err) {
        this.#problem(path, describeError(err));
        continue;
      }
      if (expected !== name) {
        this.#problem(
          path,
          `holds the status of ${JSON.stringify(stored.key.slice(0, 200))}, whose file is ${expected}`,
        );
        continue;
      }
      all.push(stored);
    }
    return all.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /** Deletes the key's status; idempotent. */
  async remove(key: string): Promise<void> {
    await rm(this.pathOf(key), { force: true });
  }

  #problem(path: string, message: string): void {
    this.#onProblem?.(path, message);
  }

  /** The parsed file, or undefined when missing or unusable (reported). */
  async #load(path: string): Promise<StoredStatus | undefined> {
    let read: BoundedRead;
    try {
      read = await readBoundedFile(path, MAX_STATUS_FILE_BYTES);
    } catch (err) {
      this.#problem(path, `cannot read: ${(err as NodeJS.ErrnoException).code ?? describeError(err)}`);
      return undefined;
    }
    if (read.kind === "missing") return undefined;
    if (read.kind === "not-a-file") {
      this.#problem(path, "not a regular file");
      return undefined;
    }
    if (read.kind === "too-large") {
      this.#problem(path, `larger than ${MAX_STATUS_FILE_BYTES} bytes`);
      return undefined;
    }
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(read.data);
    } catch {
      this.#problem(path, "not UTF-8 text");
      return undefined;
    }
    const tooDeep = jsonNestingProblem(text);
    if (tooDeep !== undefined) {
      this.#problem(path, tooDeep);
      return undefined;
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      this.#problem(path, `not valid JSON: ${describeError(err)}`);
      return undefined;
    }
    const problem = storedStatusProblem(value);
    if (problem !== undefined) {
      this.#problem(path, problem);
      return undefined;
    }
    return value as StoredStatus;
  }
}

/** A shape check of what `write` produces: enough that readers can use the fields they rely on. */
function storedStatusProblem(value: unknown): string | undefined {
  if (!isRecord(value)) return "not a JSON object";
  if (typeof value.key !== "string" || value.key.length === 0) return "key: must be a non-empty string";
  const status = value.status;
  if (!isRecord(status)) return "status: must be an object";
  if (!Number.isInteger(status.observedGeneration)) return "status.observedGeneration: must be an integer";
  if (!Array.isArray(status.conditions) || !status.conditions.every(isCondition))
    return "status.conditions: must be a list of conditions";
  const counts = status.counts;
  if (!isRecord(counts)) return "status.counts: must be an object";
  for (const field of ["projects", "accounts", "pushed", "upToDate", "retained", "problems"]) {
    if (typeof counts[field] !== "number") return `status.counts.${field}: must be a number`;
  }
  if (!Array.isArray(status.accounts) || !status.accounts.every(isAccount))
    return "status.accounts: must be a list of account summaries";
  return undefined;
}

function isCondition(value: unknown): boolean {
  return (
    isRecord(value) &&
    typeof value.type === "string" &&
    (value.status === "True" || value.status === "False" || value.status === "Unknown") &&
    typeof value.reason === "string" &&
    typeof value.message === "string"
  );
}

function isAccount(value: unknown): boolean {
  return (
    isRecord(value) &&
    typeof value.projectId === "number" &&
    typeof value.projectPath === "string" &&
    typeof value.account === "string" &&
    typeof value.state === "string"
  );
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
