/**
 * Local-mode key store: one seed file per key, named by its public key (`<PUBKEY>.nk`, mode 0600),
 * in a directory of mode 0700. Writes are atomic, so a crash leaves either the old or the new file.
 */
import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { NatsbindError } from "../errors.ts";
import { NKeyPair, parsePublicKey, type KeyKind } from "../nats/keys.ts";
import { readBoundedFile, readRequiredTextFile, writeFileAtomic, type BoundedRead } from "./files.ts";

export class KeyStoreError extends NatsbindError {}

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
  if (read.kind === "missing") return undefined;
  if (read.kind === "not-a-file") throw new KeyStoreError(`key store: ${path} is not a regular file`);
  if (read.kind === "too-large")
    throw new KeyStoreError(`key store: ${path} is larger than ${maxBytes} bytes`);
  return read.data.toString("utf8");
}

const MAX_SEED_FILE_BYTES = 1024;

export class KeyDirectory {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  #path(publicKey: string): string {
    parsePublicKey(publicKey, undefined, "key store: public key");
    return join(this.dir, `${publicKey}.nk`);
  }

  /** Persists the seed; durable when the promise resolves. */
  async save(key: NKeyPair): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.#path(key.publicKey), `${new TextDecoder().decode(key.getSeed())}\n`, 0o600);
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
