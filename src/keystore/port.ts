/**
 * Where account keys live. One account slot per (binding, project[, environment]); each slot has
 * an account identity key and one signing key per role. Keys are generated once and kept for the
 * account's life: renames and transfers never change them.
 *
 * Contract: ensure() returns only after every key it hands out is durable, so a JWT naming a key
 * is never pushed before the key is saved. Adapters: directory (local mode, src/keystore/directory.ts);
 * Kubernetes Secrets (src/k8s/secret-keystore.ts).
 */
import type { NKeyPair } from "../nats/keys.ts";

/** Identifies an account slot. `binding` is "namespace/name" (or just "name" in local mode). */
export interface AccountRef {
  binding: string;
  projectId: number;
  /** Set when the binding makes one account per environment. */
  environment?: string;
}

/** What may be shown and stored anywhere: public keys only. */
export interface StoredAccount {
  ref: AccountRef;
  account: string;
  /** role name -> public signing key */
  roles: Record<string, string>;
}

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
   * Existing keys are never replaced. Keys of roles not listed stay stored (rotation decides).
   */
  ensure(ref: AccountRef, roles: readonly string[]): Promise<AccountKeys>;
  /** Deletes the slot and its seeds. Idempotent. */
  remove(ref: AccountRef): Promise<void>;
  /**
   * The binding is gone but its accounts are retained: detach its slots from it so nothing that
   * follows the binding's deletion (Kubernetes garbage collection of owned Secrets) takes the keys.
   * Stores whose slots do not depend on the binding's existence leave this out.
   */
  release?(binding: string): Promise<unknown>;
}

export function refKey(ref: AccountRef): string {
  return `${ref.binding}#${ref.projectId}${ref.environment !== undefined ? `#${ref.environment}` : ""}`;
}
