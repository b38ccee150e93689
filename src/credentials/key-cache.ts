/**
 * The signing keys of the slots credentials are issued from, kept for a short time. Every issuance
 * needs its project's slot (account key + role signing key); KeyStore.get() reads them from the
 * store each time, which on the directory store is three files through the thread pool and two
 * Ed25519 keys derived from their seeds: about 1 ms of CPU, half of a whole issuance
 * (`node bench/credentials.ts`, profiled). CI jobs of one project come in bursts, so most of
 * those reads return what the previous request read.
 *
 * What a cached slot can miss, and for how long: a change to the slot (a role key added, the slot
 * removed or recreated) is seen at most `ttlMs` late, like a request that started that much
 * earlier. It grants nothing: whether the project is still owned, and by which binding, is decided
 * per request before the keys are looked up, and what an issued user may do is the scope of its
 * signing key in the account JWT on the server. A cached slot that lacks the requested role is
 * read again at once, so a role added to a binding is issuable as soon as its key exists. Only
 * found slots are kept (a missing one is asked for again), failures are never kept, and concurrent
 * requests for the same slot share one read.
 */
import type { AccountKeys, AccountRef, KeyStore } from "../keystore/port.ts";
import { refKey } from "../keystore/port.ts";
import type { Clock } from "../runtime/clock.ts";

/** How long a slot read from the store is used without asking it again. */
export const DEFAULT_SLOT_KEY_TTL_MS = 1_000;
/** Slots kept at most (each holds two or more key objects); the oldest go first. */
export const DEFAULT_SLOT_KEY_MAX_ENTRIES = 1_024;

interface Entry {
  /** The store it was read from: a mode that hands the issuer another store starts afresh. */
  store: KeyStore;
  /** clock.now() when the read started (age counts from there). */
  readAt: number;
  keys: Promise<AccountKeys | undefined>;
}

export class SlotKeyCache {
  readonly #clock: Clock;
  readonly #ttlMs: number;
  readonly #maxEntries: number;
  /** By refKey, oldest read first (a refreshed entry is re-inserted). */
  readonly #entries = new Map<string, Entry>();
  #nextSweep: number;

  constructor(opts: { clock: Clock; ttlMs?: number; maxEntries?: number }) {
    this.#clock = opts.clock;
    this.#ttlMs = opts.ttlMs ?? DEFAULT_SLOT_KEY_TTL_MS;
    this.#maxEntries = opts.maxEntries ?? DEFAULT_SLOT_KEY_MAX_ENTRIES;
    if (!(this.#ttlMs >= 0) || !Number.isFinite(this.#ttlMs))
      throw new RangeError("SlotKeyCache: ttlMs must be a finite number >= 0");
    if (!Number.isSafeInteger(this.#maxEntries) || this.#maxEntries < 1)
      throw new RangeError("SlotKeyCache: maxEntries must be an integer >= 1");
    this.#nextSweep = this.#clock.now() + this.#ttlMs;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** The slot's keys as `store.get(ref)` returns them, read at most `ttlMs` ago and holding `role`. */
  async get(store: KeyStore, ref: AccountRef, role: string): Promise<AccountKeys | undefined> {
    const now = this.#clock.now();
    if (now >= this.#nextSweep) this.#sweep(now);
    const key = refKey(ref);
    const cached = this.#entries.get(key);
    if (cached && cached.store === store && this.#fresh(cached, now)) {
      const keys = await cached.keys;
      if (keys === undefined || keys.roleKeys.has(role)) return keys;
      // The role may have been added since: read again (or join a read started meanwhile).
      if (this.#entries.get(key) === cached) this.#entries.delete(key);
    }
    return this.#read(store, ref, key);
  }

  #read(store: KeyStore, ref: AccountRef, key: string): Promise<AccountKeys | undefined> {
    // Joins a read of the same slot already under way (started by another request just now).
    const pending = this.#entries.get(key);
    if (pending && pending.store === store && this.#fresh(pending, this.#clock.now())) return pending.keys;
    const entry: Entry = { store, readAt: this.#clock.now(), keys: store.get(ref) };
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    while (this.#entries.size > this.#maxEntries) {
      this.#entries.delete(this.#entries.keys().next().value as string);
    }
    // Not found or failed: not kept, the next request asks the store.
    const forget = (): void => {
      if (this.#entries.get(key) === entry) this.#entries.delete(key);
    };
    entry.keys.then((keys) => (keys === undefined ? forget() : undefined), forget);
    return entry.keys;
  }

  /** Read less than ttlMs ago; a clock set back counts as expired (else it could last hours). */
  #fresh(entry: Entry, now: number): boolean {
    const age = now - entry.readAt;
    return age >= 0 && age < this.#ttlMs;
  }

  /** Drops expired entries, so seeds of slots no longer asked for do not stay in memory. */
  #sweep(now: number): void {
    this.#nextSweep = now + this.#ttlMs;
    for (const [key, entry] of this.#entries) {
      if (!this.#fresh(entry, now)) this.#entries.delete(key);
    }
  }
}
