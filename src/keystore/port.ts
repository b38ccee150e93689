/**
 * Where account keys live. One account slot per (binding, project[, environment]); each slot has
 * an account identity key and, per role, one active signing key (issues credentials) plus, while
 * a rotation runs, a prepared key (listed, not yet issuing) and retiring keys (listed until what
 * they issued has expired). The account key is kept for the account's life: renames and transfers
 * never change it. Signing keys change only through update() (src/rotation/phases.ts).
 *
 * Contract: ensure() returns only after every key it hands out is durable, so a JWT naming a key
 * is never pushed before the key is saved. Adapters: directory (local mode, src/keystore/directory.ts);
 * Kubernetes Secrets (src/k8s/secret-keystore.ts).
 */
import { NatsbindError } from "../errors.ts";
import type { NKeyPair } from "../nats/keys.ts";

/**
 * A key store cannot do what was asked: a slot, seed or Secret is unreadable, malformed, untrusted
 * or missing. Every adapter throws it (and subclasses); callers catch this, not an adapter's type.
 */
export class KeyStoreError extends NatsbindError {}

/** Identifies an account slot. `binding` is "namespace/name" (or just "name" in local mode). */
export interface AccountRef {
  binding: string;
  projectId: number;
  /** Set when the binding makes one account per environment. */
  environment?: string;
}

/** A key that stopped issuing and stays listed in the account JWT until it may go. */
export interface RetiringKey {
  key: string;
  /** When it stopped issuing (ms since the epoch). */
  since: number;
  /** Not removed before this (ms): the longest lifetime of anything it issued has passed. */
  notBefore: number;
}

/** One role's signing keys beyond the active one, and the active key's age. */
export interface RoleRotation {
  /** When the active key started issuing (ms since the epoch); absent: unknown (older slots). */
  activeSince?: number;
  /** A new key, listed in the account JWT beside the active one, issuing once the push was acked. */
  prepared?: { key: string; since: number };
  /** Former active keys, oldest first. */
  retiring?: RetiringKey[];
  /**
   * When the last emergency rotation replaced every key of the role at once (ms since the epoch):
   * no key that existed before then is left, whatever rotated since. An emergency trigger dated at
   * or before it is done.
   */
  emergencyAt?: number;
}

/** What may be shown and stored anywhere: public keys only. */
export interface StoredAccount {
  ref: AccountRef;
  account: string;
  /** role name -> active public signing key (the one credentials are issued with) */
  roles: Record<string, string>;
  /** role name -> rotation state; a role without an entry has only its active key. */
  rotation?: Record<string, RoleRotation>;
  /**
   * Revoked users: user public key (or "*": every user) -> unix seconds; user JWTs issued at or
   * before that time are refused. Desired state: every push carries them until they are pruned.
   */
  revocations?: Record<string, number>;
  /**
   * Keys the slot no longer names whose seeds are still stored: deleted by forget() once the
   * resolver acked an account JWT without them (a crash before that loses nothing).
   */
  discard?: string[];
}

/** Every signing public key the slot's account JWT lists (active, prepared, retiring), per role. */
export function listedRoleKeys(slot: StoredAccount, role: string): string[] {
  const active = slot.roles[role];
  if (active === undefined) return [];
  const r = slot.rotation?.[role];
  return [active, ...(r?.prepared ? [r.prepared.key] : []), ...(r?.retiring ?? []).map((k) => k.key)];
}

/** Every public key the slot names (account, and every listed role key): each must have a seed. */
export function namedKeys(slot: StoredAccount): string[] {
  return [slot.account, ...Object.keys(slot.roles).flatMap((role) => listedRoleKeys(slot, role))];
}

/**
 * A change of a slot (rotation phase, revocations): gets the slot as stored and `generate()`, which
 * makes a new signing key and returns its public key (its seed is saved before the slot that names
 * it is written). Returns the slot as it should be, or undefined to leave it as it is. Must be
 * pure apart from generate(): adapters may call it again on a write conflict.
 */
export type SlotChange = (slot: StoredAccount, generate: () => string) => StoredAccount | undefined;

export interface AccountKeys extends StoredAccount {
  accountKey: NKeyPair;
  roleKeys: ReadonlyMap<string, NKeyPair>;
  /** Set by ensure() when it generated the account key itself: no JWT can name it yet. */
  created?: boolean;
}

/**
 * A slot the store will not use: it claims keys its seeds do not derive, or it is malformed or in
 * the wrong place. Public text only (where it is, what is wrong), never its data.
 */
export interface UntrustedSlot {
  /** Where it lives: "Secret <namespace>/<name>" or a slot file path. */
  source: string;
  /** The slot it claims to be, when its metadata says that much. */
  ref?: AccountRef;
  message: string;
}

export interface KeyStore {
  /**
   * Every trusted slot of a binding, public view: only slots whose seeds derive the public keys
   * they name. Slots that fail that (or any other check) are left out and, when `untrusted` is
   * given, reported into it, so one forged or broken slot neither stops nor steers the others.
   */
  list(binding: string, untrusted?: UntrustedSlot[]): Promise<StoredAccount[]>;
  /** The slot's keys, or undefined when there is no slot. */
  get(ref: AccountRef): Promise<AccountKeys | undefined>;
  /**
   * The slot's keys, generating (and persisting first) the account key and any missing role key.
   * Existing keys are never replaced. Keys of roles not listed stay stored. `at` (ms since the
   * epoch), when given, is recorded as the new role keys' `rotation[role].activeSince`.
   */
  ensure(ref: AccountRef, roles: readonly string[], at?: number): Promise<AccountKeys>;
  /**
   * Applies `change` to the slot, serialised with ensure() and other updates of the slot: new seeds
   * first, then the slot. The ref and account key cannot change. Keys the new slot no longer names
   * are added to its `discard` list (their seeds stay until forget()). Throws KeyStoreError when
   * there is no (trusted) slot. Returns the slot as stored.
   */
  update(ref: AccountRef, change: SlotChange): Promise<StoredAccount>;
  /**
   * Deletes the seeds of those `keys` the slot lists in `discard` and drops them from it: call only
   * after every server acked an account JWT that does not name them. No slot: nothing to do.
   */
  forget(ref: AccountRef, keys: readonly string[]): Promise<void>;
  /** Deletes the slot and its seeds. Idempotent. */
  remove(ref: AccountRef): Promise<void>;
  /**
   * The binding is gone but its accounts are retained: detach its slots from it so nothing that
   * follows the binding's deletion (Kubernetes garbage collection of owned Secrets) takes the keys.
   * Stores whose slots do not depend on the binding's existence leave this out.
   */
  release?(binding: string): Promise<unknown>;
  /**
   * How many ensure() calls the store takes in flight at best (the reconciler's default is 32):
   * a store that commits side-by-side writes together asks for more, so one batch is written
   * while the next one's keys are made.
   */
  readonly ensureConcurrency?: number;
}

/**
 * The slot `proposed` after a change of `current`, checked: same ref and account, every role keeps
 * an active key, no key listed twice or for two roles, and every key `current` named that
 * `proposed` does not is added to `discard`. Throws KeyStoreError-like plain Errors are avoided:
 * a bad change is a programming error, so it throws TypeError.
 */
export function checkSlotChange(current: StoredAccount, proposed: StoredAccount): StoredAccount {
  if (refKey(proposed.ref) !== refKey(current.ref) || proposed.account !== current.account)
    throw new TypeError("a slot change may not change the slot's ref or account key");
  const seen = new Set<string>([proposed.account]);
  for (const role of Object.keys(proposed.roles))
    for (const key of listedRoleKeys(proposed, role)) {
      if (seen.has(key)) throw new TypeError(`a slot change lists key ${key} twice`);
      seen.add(key);
    }
  for (const role of Object.keys(proposed.rotation ?? {}))
    if (proposed.roles[role] === undefined)
      throw new TypeError(`a slot change has rotation state for role ${role} without an active key`);
  const dropped = namedKeys(current).filter((k) => !seen.has(k));
  const discard = [...new Set([...(proposed.discard ?? []), ...dropped])].filter((k) => !seen.has(k));
  const { discard: _d, ...rest } = proposed;
  return discard.length > 0 ? { ...rest, discard } : rest;
}

export function refKey(ref: AccountRef): string {
  return `${ref.binding}#${ref.projectId}${ref.environment !== undefined ? `#${ref.environment}` : ""}`;
}
