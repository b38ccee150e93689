/**
 * nkeys-compatible key pairs (operator, account, user) that sign with node:crypto Ed25519.
 *
 * Why not @nats-io/nkeys: it signs with tweetnacl and re-derives the key pair from the seed on every
 * sign() and getPublicKey() (~10 ms each here); node:crypto signs the same bytes in ~0.05 ms.
 * NKeyPair implements the nkeys KeyPair interface, so @nats-io/jwt encoders accept it.
 *
 * The seed lives in a private field and never appears in toString, JSON, inspect or error text.
 */
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  verify,
  type KeyObject,
} from "node:crypto";
import { inspect } from "node:util";
import type { KeyPair } from "@nats-io/nkeys";
import { TerminalError } from "../errors.ts";
import { decodeWithChecksum, encodeWithChecksum } from "./encoding.ts";

// Server keys ("N…") sign nats-server's own JWTs, e.g. auth callout requests (credentials/callout.ts).
const PREFIX = { operator: 14 << 3, account: 0, user: 20 << 3, server: 13 << 3 } as const;
const SEED_PREFIX = 18 << 3;
const PRIVATE_PREFIX = 15 << 3;
const PKCS8_ED25519 = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_ED25519 = Buffer.from("302a300506032b6570032100", "hex");

export type KeyKind = keyof typeof PREFIX;
export const KEY_KINDS = Object.keys(PREFIX) as KeyKind[];

/** Malformed key material or a key of the wrong kind. Never carries the key text itself. */
export class KeyError extends TerminalError {}

function kindOfPrefix(prefix: number): KeyKind | undefined {
  return KEY_KINDS.find((k) => PREFIX[k] === prefix);
}

const WITH_ARTICLE: Record<KeyKind, string> = {
  operator: "an operator",
  account: "an account",
  user: "a user",
  server: "a server",
};

function describeKinds(kinds: readonly KeyKind[]): string {
  return kinds.length === 1 ? WITH_ARTICLE[kinds[0]!] : `one of ${kinds.join(", ")}`;
}

function expectKind(kind: KeyKind, expected: KeyKind | readonly KeyKind[] | undefined, what: string): void {
  if (expected === undefined) return;
  const list = typeof expected === "string" ? [expected] : expected;
  if (!list.includes(kind))
    throw new KeyError(`${what}: expected ${describeKinds(list)} key, got ${describeKinds([kind])} key`);
}

function rawPublicKeyOf(privateKey: KeyObject): Uint8Array {
  return createPublicKey(privateKey).export({ format: "der", type: "spki" }).subarray(SPKI_ED25519.length);
}

function encodePublic(kind: KeyKind, raw: Uint8Array): string {
  const bytes = new Uint8Array(33);
  bytes[0] = PREFIX[kind];
  bytes.set(raw, 1);
  return encodeWithChecksum(bytes);
}

/** A parsed public nkey: its kind and the raw Ed25519 public key. */
export interface PublicKeyInfo {
  kind: KeyKind;
  raw: Uint8Array;
}

export function parsePublicKey(
  text: string,
  expected?: KeyKind | readonly KeyKind[],
  what = "public key",
): PublicKeyInfo {
  const bytes = typeof text === "string" && text.length === 56 ? decodeWithChecksum(text) : undefined;
  const kind = bytes?.length === 33 ? kindOfPrefix(bytes[0]!) : undefined;
  if (!bytes || !kind) throw new KeyError(`${what} is not a valid operator, account or user public nkey`);
  expectKind(kind, expected, what);
  return { kind, raw: bytes.subarray(1) };
}

export function isPublicKey(text: string, kind?: KeyKind): boolean {
  try {
    parsePublicKey(text, kind);
    return true;
  } catch {
    return false;
  }
}

const verifierCache = new Map<string, KeyObject>();

/** Verifies an Ed25519 signature made by the holder of a public nkey. */
export function verifyWithPublicKey(publicKey: string, data: Uint8Array, signature: Uint8Array): boolean {
  let key = verifierCache.get(publicKey);
  if (!key) {
    const { raw } = parsePublicKey(publicKey);
    key = createPublicKey({ key: Buffer.concat([SPKI_ED25519, raw]), format: "der", type: "spki" });
    if (verifierCache.size > 10_000) verifierCache.clear();
    verifierCache.set(publicKey, key);
  }
  return verify(null, data, key, signature);
}

export class NKeyPair implements KeyPair {
  readonly kind: KeyKind;
  readonly publicKey: string;
  #seed: Uint8Array | undefined;
  #signingKey: KeyObject | undefined;

  private constructor(kind: KeyKind, seed: Uint8Array, rawPublicKey?: Uint8Array) {
    this.kind = kind;
    this.#seed = seed;
    this.publicKey = encodePublic(kind, rawPublicKey ?? rawPublicKeyOf(this.#key()));
  }

  /**
   * A new random key. Only its raw seed and public key are kept, not the KeyObject: a controller
   * creates tens of thousands of account keys it never signs with, and each live KeyObject holds
   * native memory the garbage collector does not see (30,000 of them cost ~175 MB of RSS). They
   * are read from a JWK export: generating with DER encodings took twice the CPU (~100 us a key
   * here), the largest part of a cold start's key generation.
   */
  static generate(kind: KeyKind): NKeyPair {
    const jwk = generateKeyPairSync("ed25519").privateKey.export({ format: "jwk" });
    return new NKeyPair(
      kind,
      new Uint8Array(Buffer.from(jwk.d!, "base64url")),
      new Uint8Array(Buffer.from(jwk.x!, "base64url")),
    );
  }

  /** The node:crypto signing key, made on first use and kept: only keys that sign pay for it. */
  #key(): KeyObject {
    const seed = this.#requireSeed();
    this.#signingKey ??= createPrivateKey({
      key: Buffer.concat([PKCS8_ED25519, seed]),
      format: "der",
      type: "pkcs8",
    });
    return this.#signingKey;
  }

  /**
   * Parses an encoded seed ("SO…", "SA…", "SU…"); surrounding whitespace is ignored. `what` names
   * the input in errors (e.g. a file path), since the seed itself never may.
   */
  static fromSeed(
    seed: string | Uint8Array,
    expected?: KeyKind | readonly KeyKind[],
    what = "seed",
  ): NKeyPair {
    const text = (typeof seed === "string" ? seed : Buffer.from(seed).toString("utf8")).trim();
    const bytes = text.length === 58 ? decodeWithChecksum(text) : undefined;
    if (!bytes || bytes.length !== 34 || (bytes[0]! & 0xf8) !== SEED_PREFIX) {
      throw new KeyError(`${what} is not a valid nkey seed (wrong length, encoding or checksum)`);
    }
    const prefix = ((bytes[0]! & 0x07) << 5) | ((bytes[1]! & 0xf8) >> 3);
    const kind = kindOfPrefix(prefix);
    if (!kind) throw new KeyError(`${what} is a seed for a key kind natsbind does not use`);
    expectKind(kind, expected, what);
    return new NKeyPair(kind, bytes.slice(2));
  }

  #requireSeed(): Uint8Array {
    if (!this.#seed) throw new KeyError(`key ${this.publicKey} was cleared`);
    return this.#seed;
  }

  getPublicKey(): string {
    return this.publicKey;
  }

  /** The encoded seed. Only key stores and creds files may call this. */
  getSeed(): Uint8Array {
    const seed = this.#requireSeed();
    const prefix = PREFIX[this.kind];
    const raw = new Uint8Array(34);
    raw[0] = SEED_PREFIX | (prefix >> 5);
    raw[1] = (prefix & 31) << 3;
    raw.set(seed, 2);
    return new TextEncoder().encode(encodeWithChecksum(raw));
  }

  /** The nkeys "P…" private key (seed + public key), as @nats-io/nkeys returns it. */
  getPrivateKey(): Uint8Array {
    const seed = this.#requireSeed();
    const raw = new Uint8Array(65);
    raw[0] = PRIVATE_PREFIX;
    raw.set(seed, 1);
    raw.set(parsePublicKey(this.publicKey).raw, 33);
    return new TextEncoder().encode(encodeWithChecksum(raw));
  }

  sign(input: Uint8Array): Uint8Array {
    return sign(null, input, this.#key());
  }

  verify(input: Uint8Array, signature: Uint8Array): boolean {
    return verifyWithPublicKey(this.publicKey, input, signature);
  }

  /** Drops the seed; the pair can no longer sign. */
  clear(): void {
    this.#seed?.fill(0);
    this.#seed = undefined;
    this.#signingKey = undefined;
  }

  seal(): Uint8Array {
    throw new KeyError(`${this.kind} keys cannot seal (only curve keys can)`);
  }

  open(): Uint8Array | null {
    throw new KeyError(`${this.kind} keys cannot open (only curve keys can)`);
  }

  toString(): string {
    return `NKeyPair(${this.kind} ${this.publicKey})`;
  }

  toJSON(): { kind: KeyKind; publicKey: string } {
    return { kind: this.kind, publicKey: this.publicKey };
  }

  [inspect.custom](): string {
    return this.toString();
  }
}
