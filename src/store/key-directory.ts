/**
 * Local-mode key store: one seed file per key, named by its public key (`<PUBKEY>.nk`, mode 0600),
 * in a directory of mode 0700. A seed file is created once and never replaced; it is durable (data
 * and directory entry) before save() resolves, and nothing may name a key before that, so a seed
 * file a crash left partly written is one nothing names.
 */
import { chmod as fsChmod, lstat, mkdir, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { NatsbindError } from "../errors.ts";
import { KeyStoreError } from "../keystore/port.ts";
import { NKeyPair, parsePublicKey, type KeyKind } from "../nats/keys.ts";
import {
  readBoundedFile,
  readBoundedFileSync,
  readRequiredTextFile,
  writeFilesDurably,
  type BoundedRead,
  type DurableFile,
} from "./files.ts";

/** A key store file's text, or undefined when it does not exist; bounded in size. */
export async function readKeyStoreFile(path: string, maxBytes: number): Promise<string | undefined> {
  let read: BoundedRead;
  try {
    read = await readBoundedFile(path, maxBytes);
  } catch (err) {
    throw new KeyStoreError(`key store: cannot read ${path}: ${(err as NodeJS.ErrnoException).code}`, {
      cause: err,
    });
  }
  return keyStoreText(path, read, maxBytes);
}

/** readKeyStoreFile, blocking (see readBoundedFileSync). */
export function readKeyStoreFileSync(path: string, maxBytes: number): string | undefined {
  let read: BoundedRead;
  try {
    read = readBoundedFileSync(path, maxBytes);
  } catch (err) {
    throw new KeyStoreError(`key store: cannot read ${path}: ${(err as NodeJS.ErrnoException).code}`, {
      cause: err,
    });
  }
  return keyStoreText(path, read, maxBytes);
}

function keyStoreText(path: string, read: BoundedRead, maxBytes: number): string | undefined {
  if (read.kind === "missing") return undefined;
  if (read.kind === "not-a-file") throw new KeyStoreError(`key store: ${path} is not a regular file`);
  if (read.kind === "too-large")
    throw new KeyStoreError(`key store: ${path} is larger than ${maxBytes} bytes`);
  return read.data.toString("utf8");
}

const MAX_SEED_FILE_BYTES = 1024;

/** The key directory, or a directory natsbind made in it, is open to others and cannot be closed. */
export class KeyDirectoryModeError extends NatsbindError {}

/** A directory whose mode secureKeyDirectory() changed (for the log). */
export interface ModeChange {
  path: string;
  /** Permission bits before and after, e.g. "0777" and "0700". */
  from: string;
  to: string;
}

const PRIVATE_DIR_MODE = 0o700;
const octal = (mode: number): string => `0${(mode & 0o777).toString(8).padStart(3, "0")}`;

/**
 * Makes the key directory private before natsbind writes a seed into it: created 0700 when
 * missing; an existing one (a hand-made `mkdir keys`, a restore, a umask of 000) and every
 * directory inside it (natsbind's `accounts/` and `accounts/<binding>/`) lose their group and
 * other bits. mkdir's mode applies only on creation, so without this a 0777 directory stayed 0777
 * and anyone on the host could list, add or replace seed and slot files. The key directory itself
 * may be a symbolic link (its target is checked); a link to a directory inside it is refused. A
 * directory that cannot be changed (owned by someone else, a read-only mount) stops the start with
 * a KeyDirectoryModeError naming it. Returns what it changed, for the log.
 */
export async function secureKeyDirectory(
  dir: string,
  opts: { chmod?: (path: string, mode: number) => Promise<void> } = {},
): Promise<ModeChange[]> {
  const chmod = opts.chmod ?? fsChmod;
  const changes: ModeChange[] = [];
  const fail = (path: string, problem: string, cause?: unknown): never => {
    throw new KeyDirectoryModeError(`key directory: ${path} ${problem}`, cause ? { cause } : undefined);
  };
  const codeOf = (err: unknown): string => (err as NodeJS.ErrnoException).code ?? String(err);
  const tighten = async (path: string, mode: number): Promise<void> => {
    if ((mode & 0o077) === 0) return;
    try {
      await chmod(path, PRIVATE_DIR_MODE);
    } catch (err) {
      fail(
        path,
        `has mode ${octal(mode)} (open to other users) and cannot be changed to 0700 (${codeOf(err)}): ` +
          "fix its owner or mode; natsbind writes no seed where others can reach it",
        err,
      );
    }
    changes.push({ path, from: octal(mode), to: octal(PRIVATE_DIR_MODE) });
  };
  const walk = async (path: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(path, { withFileTypes: true });
    } catch (err) {
      return fail(path, `cannot be listed (${codeOf(err)})`, err);
    }
    for (const entry of entries) {
      const child = join(path, entry.name);
      if (entry.isSymbolicLink()) {
        const target = await stat(child).catch(() => undefined);
        if (target?.isDirectory()) fail(child, "is a symbolic link to a directory; natsbind makes none");
        continue;
      }
      if (!entry.isDirectory()) continue;
      await tighten(child, (await lstat(child)).mode);
      await walk(child);
    }
  };

  try {
    await mkdir(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  } catch (err) {
    if (codeOf(err) !== "EEXIST") fail(dir, `cannot be created (${codeOf(err)})`, err);
  }
  const top = await stat(dir);
  if (!top.isDirectory()) fail(dir, "is not a directory");
  await tighten(dir, top.mode);
  await walk(dir);
  return changes;
}

export class KeyDirectory {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  #path(publicKey: string): string {
    parsePublicKey(publicKey, undefined, "key store: public key");
    return join(this.dir, `${publicKey}.nk`);
  }

  /** Persists the seeds; durable when the promise resolves (one directory sync for all). */
  async save(...keys: NKeyPair[]): Promise<void> {
    await writeFilesDurably(keys.map((key) => this.seedFile(key)));
  }

  /** The new seed file of `key`, for writeFilesDurably (as `created`: it is never replaced). */
  seedFile(key: NKeyPair): DurableFile {
    return {
      path: this.#path(key.publicKey),
      data: `${new TextDecoder().decode(key.getSeed())}\n`,
      mode: 0o600,
    };
  }

  /** The key pair for `publicKey`, or undefined when the store has no seed for it. */
  async load(publicKey: string, kind?: KeyKind): Promise<NKeyPair | undefined> {
    const path = this.#path(publicKey);
    const text = await readKeyStoreFile(path, MAX_SEED_FILE_BYTES);
    if (text === undefined) return undefined;
    const key = NKeyPair.fromSeed(text, kind, path);
    if (key.publicKey !== publicKey)
      throw new KeyStoreError(`key store: ${path} holds the seed of ${key.publicKey}, not ${publicKey}`);
    return key;
  }

  /** Deletes the seed of `publicKey`; idempotent. */
  async remove(publicKey: string): Promise<void> {
    await rm(this.#path(publicKey), { force: true });
  }

  /** Public keys of all stored seeds. */
  async list(): Promise<string[]> {
    const names = await readdir(this.dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return [] as string[];
      throw err;
    });
    return names
      .filter((n) => n.endsWith(".nk"))
      .map((n) => n.slice(0, -3))
      .sort();
  }
}

/** Reads one seed file (e.g. the operator signing key) with a size bound and a kind check. */
export async function readSeedFile(path: string, kind: KeyKind): Promise<NKeyPair> {
  const text = await readRequiredTextFile(path, MAX_SEED_FILE_BYTES, {
    unreadable: (reason, cause) => new KeyStoreError(`cannot read key file ${path}: ${reason}`, { cause }),
    tooLarge: () => new KeyStoreError(`key file ${path} is larger than ${MAX_SEED_FILE_BYTES} bytes`),
  });
  return NKeyPair.fromSeed(text, kind, `key file ${path}`);
}
