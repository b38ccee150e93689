/**
 * Write fences for leader election: a replica that is not (or no longer) the leader must not
 * write. Every writing port the reconciler uses is wrapped so each write first asks the elector,
 * whose isLeader() turns false as soon as the lease could not be renewed in time, before any
 * callback runs. Reads pass through.
 */
import { NatsbindError } from "../errors.ts";
import type {
  AccountRef,
  AccountKeys,
  KeyStore,
  StoredAccount,
  UntrustedSlot,
  SlotChange,
} from "../keystore/port.ts";
import type { AccountResolver, ResolverOutcome } from "../nats/resolver.ts";

export class NotLeaderError extends NatsbindError {}

export type Fence = () => boolean;

function check(fence: Fence, what: string): void {
  if (!fence()) throw new NotLeaderError(`${what}: this replica is not the leader`);
}

export function fencedResolver(inner: AccountResolver, fence: Fence): AccountResolver {
  return {
    push(jwt: string): Promise<ResolverOutcome> {
      check(fence, "push account");
      return inner.push(jwt);
    },
    lookup: (account) => inner.lookup(account),
    list: () => inner.list(),
    delete(accounts: string[]): Promise<ResolverOutcome> {
      check(fence, "delete accounts");
      return inner.delete(accounts);
    },
  };
}

export function fencedKeyStore(inner: KeyStore, fence: Fence): KeyStore {
  return {
    list: (binding: string, untrusted?: UntrustedSlot[]): Promise<StoredAccount[]> =>
      inner.list(binding, untrusted),
    get: (ref: AccountRef): Promise<AccountKeys | undefined> => inner.get(ref),
    ensure(ref: AccountRef, roles: readonly string[], at?: number): Promise<AccountKeys> {
      check(fence, "store account keys");
      return inner.ensure(ref, roles, at);
    },
    update(ref: AccountRef, change: SlotChange): Promise<StoredAccount> {
      check(fence, "change account keys");
      return inner.update(ref, change);
    },
    forget(ref: AccountRef, keys: readonly string[]): Promise<void> {
      check(fence, "forget account keys");
      return inner.forget(ref, keys);
    },
    remove(ref: AccountRef): Promise<void> {
      check(fence, "remove account keys");
      return inner.remove(ref);
    },
    ...(inner.release
      ? {
          release(binding: string): Promise<unknown> {
            check(fence, "release account keys");
            return inner.release!(binding);
          },
        }
      : {}),
  };
}
