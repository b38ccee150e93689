/**
 * Revocations of an account's users as desired state (PURE). An entry (user public key, or "*" for
 * every user) with a time revokes user JWTs issued at or before that second; nats-server closes
 * connected ones when the account JWT carrying it arrives and refuses them from then on.
 *
 * Entries live in the key slot (KeyStore `revocations`), so every push carries them, and are pruned
 * once whatever they revoked has expired: natsbind issues nothing longer-lived than `overlapMs`
 * (credentials.maxTtl + leeway), so an entry older than that revokes nothing natsbind issued.
 */
import { MAX_REVOCATIONS, REVOKE_ALL } from "../nats/claims.ts";
import type { StoredAccount } from "../keystore/port.ts";

/** A revocation asked for one slot (local request file, CLI): entries merged into the slot. */
export interface RevocationRequest {
  projectId: number;
  environment?: string;
  /** user public key or "*" -> unix seconds */
  entries: Record<string, number>;
}

/** When an entry may go (ms since the epoch): its revoked JWTs have all expired. */
export function prunableAt(revokedAtSec: number, overlapMs: number): number {
  return revokedAtSec * 1000 + overlapMs;
}

/**
 * SlotChange: merge `entries` (the later time wins for a key) and drop entries past prunableAt.
 * Undefined when nothing changes. Refuses (TypeError) to go past MAX_REVOCATIONS: the caller
 * checks first and reports it (a revocation that does not fit must not be dropped silently).
 */
export function changeRevocations(entries: Record<string, number>, now: number, overlapMs: number) {
  return (slot: StoredAccount): StoredAccount | undefined => {
    const next: Record<string, number> = {};
    for (const [key, at] of Object.entries({ ...slot.revocations })) {
      if (now < prunableAt(at, overlapMs)) next[key] = at;
    }
    for (const [key, at] of Object.entries(entries)) {
      if (now >= prunableAt(at, overlapMs)) continue; // revokes nothing any more
      if ((next[key] ?? -1) < at) next[key] = at;
    }
    if (Object.keys(next).length > MAX_REVOCATIONS)
      throw new TypeError(`revocations would exceed ${MAX_REVOCATIONS} entries`);
    const before = slot.revocations ?? {};
    const same =
      Object.keys(next).length === Object.keys(before).length &&
      Object.entries(next).every(([k, v]) => before[k] === v);
    if (same) return undefined;
    const { revocations: _r, ...rest } = slot;
    return Object.keys(next).length > 0 ? { ...rest, revocations: next } : rest;
  };
}

/** The earliest time an entry of the slot becomes prunable, if it has any. */
export function nextPruneAt(slot: StoredAccount, overlapMs: number): number | undefined {
  let next: number | undefined;
  for (const at of Object.values(slot.revocations ?? {})) {
    const t = prunableAt(at, overlapMs);
    if (next === undefined || t < next) next = t;
  }
  return next;
}

/** Does the slot already carry every entry of `entries` (at that time or later, or pruned)? */
export function carries(
  slot: StoredAccount,
  entries: Record<string, number>,
  now: number,
  overlapMs: number,
): boolean {
  return Object.entries(entries).every(
    ([key, at]) => now >= prunableAt(at, overlapMs) || (slot.revocations?.[key] ?? -1) >= at,
  );
}

export { REVOKE_ALL };
