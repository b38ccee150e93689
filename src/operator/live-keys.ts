/**
 * The operator keys of a running natsbind, re-read when their files change, so `operator activate`
 * takes effect without a restart:
 *
 * - `signer`: a KeyPair that signs with the seed at nats.operatorSigningKey as it is now. The
 *   reconciler and the resolver hold this one object; the key inside is swapped.
 * - `trustedOperator` (push() accepts account JWTs of these keys) and `issuers` (the reconciler
 *   takes accounts of these keys as natsbind's when they carry its tags): the signing keys of
 *   nats.operatorJwt, re-read too. Without an operator JWT: the signing key, the one it replaced
 *   in this process, and the one in <file>.previous (kept by activate until retire).
 *
 * Files are watched (fs.watch on their directories, like src/http/tls.ts: a Secret volume swaps a
 * symlink, activate renames in place) with a slow poll behind. A new signing key is taken only if
 * it parses, the operator JWT (when configured) lists it, and `approve` (every server trusts it)
 * passes; otherwise the current key stays and the refusal is logged once per key. The swap runs
 * inside `exclusive`, between reconciles: a reconcile plans with the issuer it signs with.
 */
import { watch, type FSWatcher } from "node:fs";
import { dirname } from "node:path";
import type { KeyPair } from "@nats-io/nkeys";
import { MAX_OPERATOR_JWT_BYTES, readConfigReferencedFile } from "../config/config.ts";
import { describeError } from "../errors.ts";
import type { TrustedOperator } from "../nats/claims.ts";
import type { NKeyPair } from "../nats/keys.ts";
import { readSeedFile } from "../store/key-directory.ts";
import { parseOperatorJwt } from "./operator-jwt.ts";
import { previousKeyFile } from "./phases.ts";

export const DEFAULT_OPERATOR_KEYS_POLL_MS = 60_000;
const DEBOUNCE_MS = 100;

/** A KeyPair whose key can be replaced; everything that holds it signs with the new key at once. */
export class SwappableSigner implements KeyPair {
  #key: NKeyPair;
  constructor(key: NKeyPair) {
    this.#key = key;
  }
  get publicKey(): string {
    return this.#key.publicKey;
  }
  /** Replaces the key; the one it replaced is cleared. */
  swap(next: NKeyPair): void {
    const before = this.#key;
    this.#key = next;
    if (before !== next) before.clear();
  }
  getPublicKey(): string {
    return this.#key.publicKey;
  }
  getPrivateKey(): Uint8Array {
    return this.#key.getPrivateKey();
  }
  getSeed(): Uint8Array {
    return this.#key.getSeed();
  }
  sign(input: Uint8Array): Uint8Array {
    return this.#key.sign(input);
  }
  verify(input: Uint8Array, sig: Uint8Array): boolean {
    return this.#key.verify(input, sig);
  }
  clear(): void {
    this.#key.clear();
  }
  seal(): Uint8Array {
    return this.#key.seal();
  }
  open(): Uint8Array | null {
    return this.#key.open();
  }
  toString(): string {
    return `SwappableSigner(${this.#key.publicKey})`;
  }
  toJSON(): { publicKey: string } {
    return { publicKey: this.#key.publicKey };
  }
}

/**
 * Runs reconciles side by side (`shared`) and a key swap alone (`exclusive`): the swap waits for
 * the reconciles in flight and holds new ones back until it is done. A reconcile reads the issuer
 * when it plans and signs later; a swap in between would make it sign claims naming the old key
 * with the new one (refused by signJwt as a terminal error).
 */
export class SigningGate {
  #running = 0;
  #writer: Promise<void> | undefined;
  #drained: Array<() => void> = [];

  async shared<T>(fn: () => Promise<T>): Promise<T> {
    while (this.#writer) await this.#writer;
    this.#running++;
    try {
      return await fn();
    } finally {
      if (--this.#running === 0) for (const wake of this.#drained.splice(0)) wake();
    }
  }

  async exclusive<T>(fn: () => T | Promise<T>): Promise<T> {
    while (this.#writer) await this.#writer;
    let release!: () => void;
    this.#writer = new Promise((resolve) => (release = resolve));
    try {
      if (this.#running > 0) await new Promise<void>((resolve) => this.#drained.push(resolve));
      return await fn();
    } finally {
      this.#writer = undefined;
      release();
    }
  }
}

export interface OperatorKeysLogger {
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
}

export interface LiveOperatorKeysOptions {
  signingKeyFile: string;
  operatorJwtFile?: string;
  log?: OperatorKeysLogger;
  /** Throws (saying why) when `publicKey` must not sign yet, e.g. a server does not trust it. */
  approve?: (publicKey: string) => Promise<void>;
  /** Where the swap runs (SigningGate.exclusive); default: at once. */
  exclusive?: <T>(fn: () => T | Promise<T>) => Promise<T>;
  pollIntervalMs?: number;
}

export type OperatorKeysReload = "changed" | "unchanged" | "refused";

interface Loaded {
  key: NKeyPair;
  operator?: { publicKey: string; signingKeys: string[] };
  previous?: string;
}

export class LiveOperatorKeys {
  readonly signer: SwappableSigner;
  /** Live view for NatsResolver's push() check; its fields change in place. */
  readonly trustedOperator: TrustedOperator;
  readonly #issuers = new Set<string>();
  readonly #o: LiveOperatorKeysOptions;
  #operator: { publicKey: string; signingKeys: string[] } | undefined;
  /** Keys this process signed with before the current one. */
  readonly #former = new Set<string>();
  #previous: string | undefined;
  #refused: string | undefined;
  #running: Promise<OperatorKeysReload> | undefined;
  #again = false;
  #closed = false;
  #watchers: FSWatcher[] = [];
  #poll: ReturnType<typeof setInterval> | undefined;
  #debounce: ReturnType<typeof setTimeout> | undefined;

  private constructor(o: LiveOperatorKeysOptions, loaded: Loaded) {
    this.#o = o;
    this.signer = new SwappableSigner(loaded.key);
    this.#operator = loaded.operator;
    this.#previous = loaded.previous;
    this.trustedOperator = Object.defineProperties({} as TrustedOperator, {
      publicKey: { enumerable: true, get: () => this.#operator?.publicKey ?? this.signer.publicKey },
      signingKeys: { enumerable: true, get: () => [...this.#issuers] },
    });
    this.#computeIssuers();
  }

  static async load(o: LiveOperatorKeysOptions): Promise<LiveOperatorKeys> {
    return new LiveOperatorKeys(o, await LiveOperatorKeys.#read(o));
  }

  static async #read(o: LiveOperatorKeysOptions): Promise<Loaded> {
    const key = await readSeedFile(o.signingKeyFile, "operator");
    let operator: Loaded["operator"];
    if (o.operatorJwtFile) {
      const text = await readConfigReferencedFile(
        o.operatorJwtFile,
        "nats.operatorJwt",
        MAX_OPERATOR_JWT_BYTES,
      );
      const op = parseOperatorJwt(text, `nats.operatorJwt ${o.operatorJwtFile}`);
      operator = { publicKey: op.operator, signingKeys: op.signingKeys };
    }
    let previous: string | undefined;
    if (!o.operatorJwtFile) {
      // Only its public key is kept: accounts it signed stay natsbind's until activate re-signed them.
      const prev = await readSeedFile(previousKeyFile(o.signingKeyFile), "operator").catch(() => undefined);
      previous = prev?.publicKey;
      prev?.clear();
    }
    return { key, ...(operator ? { operator } : {}), ...(previous ? { previous } : {}) };
  }

  /** Keys whose account JWTs natsbind takes as its own (with its tags). A live set. */
  get issuers(): ReadonlySet<string> {
    return this.#issuers;
  }

  #computeIssuers(): void {
    const keys = this.#operator
      ? this.#operator.signingKeys
      : [this.signer.publicKey, ...this.#former, ...(this.#previous ? [this.#previous] : [])];
    // Replaced in place, synchronously: holders of the set see either the old or the new keys.
    this.#issuers.clear();
    for (const k of keys) this.#issuers.add(k);
  }

  /** Re-reads both files now; concurrent calls share one read. */
  reload(): Promise<OperatorKeysReload> {
    if (this.#closed) return Promise.resolve("unchanged");
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    this.#running = (async () => {
      let result: OperatorKeysReload;
      do {
        this.#again = false;
        result = await this.#attempt();
      } while (this.#again && !this.#closed);
      return result;
    })().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  async #attempt(): Promise<OperatorKeysReload> {
    const log = this.#o.log;
    let loaded: Loaded;
    try {
      loaded = await LiveOperatorKeys.#read(this.#o);
    } catch (err) {
      const why = `unreadable:${describeError(err)}`;
      if (this.#refused !== why)
        log?.warn({ err: describeError(err) }, "operator key files unreadable; the current keys stay in use");
      this.#refused = why;
      return "refused";
    }
    const next = loaded.key;
    const keyChanged = next.publicKey !== this.signer.publicKey;
    const operatorChanged =
      JSON.stringify(loaded.operator ?? null) !== JSON.stringify(this.#operator ?? null) ||
      loaded.previous !== this.#previous;
    if (!keyChanged && !operatorChanged) {
      next.clear();
      this.#refused = undefined;
      return "unchanged";
    }
    if (keyChanged) {
      try {
        if (loaded.operator && !loaded.operator.signingKeys.includes(next.publicKey))
          throw new Error(`nats.operatorJwt does not list ${next.publicKey}`);
        await this.#o.approve?.(next.publicKey);
      } catch (err) {
        next.clear();
        if (this.#refused !== next.publicKey)
          log?.warn(
            { signingKey: next.publicKey, err: describeError(err) },
            "new operator signing key not used yet; natsbind keeps signing with the current one",
          );
        this.#refused = next.publicKey;
        // The operator JWT may still be taken (e.g. it lists a key that is not activated yet).
        if (operatorChanged) await this.#apply({ ...loaded, key: undefined });
        return "refused";
      }
    }
    if (this.#closed) {
      next.clear();
      return "unchanged";
    }
    const from = this.signer.publicKey;
    await this.#apply({ ...loaded, key: keyChanged ? next : undefined });
    if (!keyChanged) next.clear();
    this.#refused = undefined;
    if (keyChanged)
      log?.info(
        { from, to: next.publicKey },
        "operator signing key changed: natsbind signs with the new key",
      );
    else log?.info({ signingKeys: [...this.#issuers] }, "operator JWT re-read");
    return "changed";
  }

  async #apply(loaded: Omit<Loaded, "key"> & { key: NKeyPair | undefined }): Promise<void> {
    const exclusive = this.#o.exclusive ?? (<T>(fn: () => T | Promise<T>) => Promise.resolve(fn()));
    await exclusive(() => {
      if (loaded.key) {
        this.#former.add(this.signer.publicKey);
        this.signer.swap(loaded.key);
      }
      this.#operator = loaded.operator;
      this.#previous = loaded.previous;
      this.#computeIssuers();
    });
  }

  /** Watches both files' directories and polls; close() stops it. */
  watch(): this {
    const soon = (): void => {
      if (this.#closed) return;
      clearTimeout(this.#debounce);
      this.#debounce = setTimeout(() => void this.reload(), DEBOUNCE_MS);
      this.#debounce.unref();
    };
    const files = [this.#o.signingKeyFile, ...(this.#o.operatorJwtFile ? [this.#o.operatorJwtFile] : [])];
    for (const dir of new Set(files.map((f) => dirname(f)))) {
      try {
        const watcher = watch(dir, soon);
        watcher.on("error", (err) => {
          this.#o.log?.warn({ dir, err: describeError(err) }, "watching operator key files failed; polling");
          watcher.close();
        });
        this.#watchers.push(watcher);
      } catch (err) {
        this.#o.log?.warn({ dir, err: describeError(err) }, "cannot watch operator key files; polling");
      }
    }
    this.#poll = setInterval(
      () => void this.reload(),
      this.#o.pollIntervalMs ?? DEFAULT_OPERATOR_KEYS_POLL_MS,
    );
    this.#poll.unref();
    return this;
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#debounce);
    clearInterval(this.#poll);
    for (const w of this.#watchers) w.close();
    this.#watchers = [];
  }
}
