/**
 * KeyStore over a directory (local mode).
 *
 *   <dir>/<PUBKEY>.nk                          one seed per key, 0600 (KeyDirectory)
 *   <dir>/accounts/<binding>/<slot>.json       the slot's public keys (no secrets), 0600
 *
 * Order on ensure(): new seeds are durable (data and directory entry) BEFORE the slot file that
 * names them is renamed into place, and the slot file is durable before ensure() resolves, hence
 * before anything is pushed. A crash in between leaves at worst seed files no slot names (maybe
 * one partly written); the next ensure() generates fresh ones and pushes only those. Seeds named
 * by a slot are never regenerated: a slot whose seed is missing is an error, not a new key,
 * because a JWT may already name it.
 *
 * Group commit: the writes of ensure(), update() and forget() calls made side by side (the
 * reconciler creates many slots at once) go to disk together, seeds first, then slots, with one
 * directory sync per directory per batch (store/files.ts writeFilesDurably); each call resolves
 * when its batch is durable. A cold start of 10,000 projects writes 30,000 files this way.
 *
 * A slot is listed only when it is where its ref puts it (the binding's directory, the slot's file
 * name) and every key it names has a seed file; list() leaves other slots out and reports them
 * (path and problem, never data), so they are never pushed or deleted, and do not stop the
 * binding's other slots. Whether a seed derives the key it is stored under is checked when the
 * seed is loaded (get, ensure), before it can sign: deriving every seed at each start cost ~4 s
 * for 10,000 projects, and unlike tenant-writable Secrets this directory is the admin's (kept
 * 0700). The resolver-side ownership check (controllers/binding/ownership.ts) guards pushes and
 * deletes in both modes.
 */
import { createHash } from "node:crypto";
import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { KeyError, NKeyPair } from "../nats/keys.ts";
import { jsonNestingProblem } from "../nesting.ts";
import { GroupCommit, mapLimit } from "../runtime/concurrency.ts";
import { KeyDirectory, readKeyStoreFile, readKeyStoreFileSync } from "../store/key-directory.ts";
import { writeFilesDurably } from "../store/files.ts";
import { MAX_REVOCATIONS } from "../nats/claims.ts";
import type { AccountKeys, AccountRef, KeyStore, SlotChange, StoredAccount, UntrustedSlot } from "./port.ts";
import { checkSlotChange, KeyStoreError, namedKeys } from "./port.ts";

export { KeyStoreError };

// Revocations make a slot file grow: 10,000 entries are ~800 KB.
const MAX_SLOT_FILE_BYTES = 2 * 1024 * 1024;
const MAX_RETIRING = 16;
const MAX_DISCARD = 256;
const publicKey = z.string().regex(/^[A-Z2-7]{56}$/);
const epochMs = z.number().int().nonnegative().max(8_640_000_000_000_000);
const slotSchema = z.strictObject({
  ref: z.strictObject({
    binding: z.string().min(1).max(253),
    projectId: z.number().int().positive(),
    environment: z.string().min(1).max(255).optional(),
  }),
  account: publicKey,
  roles: z.record(z.string().min(1).max(63), publicKey),
  rotation: z
    .record(
      z.string().min(1).max(63),
      z.strictObject({
        activeSince: epochMs.optional(),
        prepared: z.strictObject({ key: publicKey, since: epochMs }).optional(),
        retiring: z
          .array(z.strictObject({ key: publicKey, since: epochMs, notBefore: epochMs }))
          .max(MAX_RETIRING)
          .optional(),
        emergencyAt: epochMs.optional(),
      }),
    )
    .optional(),
  revocations: z
    .record(z.union([publicKey, z.literal("*")]), z.number().int().nonnegative())
    .refine((r) => Object.keys(r).length <= MAX_REVOCATIONS, `at most ${MAX_REVOCATIONS} entries`)
    .optional(),
  discard: z.array(publicKey).max(MAX_DISCARD).optional(),
});

/** A file-name-safe, collision-free name for a binding or slot (hash suffix keeps it unique). */
export function bindingFileName(value: string): string {
  const readable = value.replace(/[^A-Za-z0-9_.-]+/g, "_").slice(0, 80);
  return `${readable}-${createHash("sha256").update(value).digest("hex").slice(0, 12)}`;
}

/** list()'s order: by project id, then environment. */
function bySlotOrder(a: StoredAccount, b: StoredAccount): number {
  return (
    a.ref.projectId - b.ref.projectId || (a.ref.environment ?? "").localeCompare(b.ref.environment ?? "")
  );
}

/** Two arrays in bySlotOrder as one. */
function mergeSorted(a: readonly StoredAccount[], b: readonly StoredAccount[]): StoredAccount[] {
  if (b.length === 0) return [...a];
  const out = new Array<StoredAccount>(a.length + b.length);
  let i = 0;
  let j = 0;
  for (let k = 0; k < out.length; k++)
    out[k] = j >= b.length || (i < a.length && bySlotOrder(a[i]!, b[j]!) <= 0) ? a[i++]! : b[j++]!;
  return out;
}

/** A slot names a key whose seed file is not there. */
class MissingSeedError extends KeyStoreError {}

function missingSeed(path: string, key: string): never {
  throw new MissingSeedError(
    `key store: ${path} names ${key}, whose seed is missing: restore it from backup (a JWT may name it)`,
  );
}

function describeRef(ref: AccountRef): string {
  return `binding ${ref.binding} project ${ref.projectId}${ref.environment !== undefined ? ` environment ${ref.environment}` : ""}`;
}

function sameRef(a: AccountRef, b: AccountRef): boolean {
  return a.binding === b.binding && a.projectId === b.projectId && a.environment === b.environment;
}

/** A binding's slots as read: trusted ones by path, and the untrusted ones reported by list(). */
interface Listing {
  slots: Map<string, StoredAccount>;
  untrusted: Map<string, UntrustedSlot>;
  /** `slots` in list() order: one array until a write changes them. */
  sorted?: StoredAccount[];
  /** Writes since `sorted` was made: merged into a new array at the next list(). */
  changes?: { added: StoredAccount[]; dropped: Set<StoredAccount> };
}

/** What one ensure(), update() or forget() writes: new seeds, then the slot file naming them. */
interface SlotWrite {
  seeds: readonly NKeyPair[];
  slot: { path: string; text: string };
}

/** Slot files list() reads between two turns of the event loop (~2 ms from the page cache). */
const LIST_BATCH = 128;

/** Slot writes per group commit (3 files each for a one-role binding): bounds a batch's latency. */
const MAX_SLOTS_PER_COMMIT = 128;

export class DirectoryKeyStore implements KeyStore {
  readonly #seeds: KeyDirectory;
  readonly #accounts: string;
  // ensure() of one slot runs one at a time, so two reconciles never generate two account keys.
  readonly #locks = new Map<string, Promise<unknown>>();
  // With `owner`, slots per binding as this store last read or wrote them: the process that owns
  // a key directory is its only writer, so after the first list() the files change only through
  // this object. Other readers (status tools, tests, the demo) must see the files as they are.
  readonly #cache: Map<string, Listing> | undefined;
  readonly #commits = new GroupCommit<SlotWrite>(
    (writes) =>
      writeFilesDurably(
        writes.flatMap((w) => w.seeds.map((key) => this.#seeds.seedFile(key))),
        writes.map((w) => ({ path: w.slot.path, data: w.slot.text, mode: 0o600 })),
      ),
    // Two batches at once: one creates its files while the other waits for its syncs.
    { maxBatch: MAX_SLOTS_PER_COMMIT, inFlight: 2 },
  );

  /** Three batches' worth: two are written while the next one's keys are generated. */
  readonly ensureConcurrency = 3 * MAX_SLOTS_PER_COMMIT;

  constructor(dir: string, opts: { owner?: boolean } = {}) {
    this.#seeds = new KeyDirectory(dir);
    this.#accounts = join(dir, "accounts");
    this.#cache = opts.owner ? new Map() : undefined;
  }

  #bindingDir(binding: string): string {
    return join(this.#accounts, bindingFileName(binding));
  }

  #slotPath(ref: AccountRef): string {
    const slot = `${ref.projectId}${ref.environment !== undefined ? `@${ref.environment}` : ""}`;
    return join(this.#bindingDir(ref.binding), `${bindingFileName(slot)}.json`);
  }

  async #readSlot(path: string): Promise<StoredAccount | undefined> {
    return this.#parseSlot(path, await readKeyStoreFile(path, MAX_SLOT_FILE_BYTES));
  }

  #parseSlot(path: string, text: string | undefined): StoredAccount | undefined {
    if (text === undefined) return undefined;
    const tooDeep = jsonNestingProblem(text);
    if (tooDeep !== undefined) throw new KeyStoreError(`key store: ${path} ${tooDeep}`);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (cause) {
      throw new KeyStoreError(`key store: ${path} is not JSON`, { cause });
    }
    const result = slotSchema.safeParse(parsed);
    if (!result.success) {
      const issue = result.error.issues[0];
      throw new KeyStoreError(
        `key store: ${path}: ${issue?.path.join(".") || "(top level)"}: ${issue?.message}`,
      );
    }
    return result.data as StoredAccount;
  }

  /**
   * A slot file checked: in its own place, every key it names backed by a seed file (`seeds`: the
   * public keys with one); else what is wrong (with the slot it claims to be, when in its place).
   */
  async #checkSlot(
    binding: string,
    path: string,
    seeds: ReadonlySet<string>,
    read: () => StoredAccount | undefined | Promise<StoredAccount | undefined> = () => this.#readSlot(path),
  ): Promise<StoredAccount | UntrustedSlot | undefined> {
    let ref: AccountRef | undefined;
    try {
      const slot = await read();
      if (!slot) return undefined;
      if (slot.ref.binding !== binding || this.#slotPath(slot.ref) !== path)
        throw new KeyStoreError(`key store: ${path} names a slot that does not belong in this file`);
      ref = slot.ref;
      // `seeds` is a listing taken before the slot was read: a key saved since (a rotation
      // running beside the listing) is looked up before it is called missing.
      for (const key of namedKeys(slot))
        if (!seeds.has(key) && !(await this.#seeds.load(key, "account"))) missingSeed(path, key);
      return slot;
    } catch (err) {
      if (!(err instanceof KeyStoreError || err instanceof KeyError)) throw err;
      const message = err instanceof KeyStoreError ? err.message : `key store: ${err.message}`;
      return { source: path, ...(ref ? { ref } : {}), message };
    }
  }

  async list(binding: string, untrusted?: UntrustedSlot[]): Promise<StoredAccount[]> {
    let listing = this.#cache?.get(binding);
    if (!listing) {
      const dir = this.#bindingDir(binding);
      const names = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
        if (err.code === "ENOENT") return [] as string[];
        throw err;
      });
      const loaded: Listing = { slots: new Map(), untrusted: new Map() };
      const files = names.filter((n) => n.endsWith(".json"));
      const seeds = new Set(files.length > 0 ? await this.#seeds.list() : []);
      // Read without the thread pool, a batch at a time: small files, often 100,000 of them.
      for (let i = 0; i < files.length; i += LIST_BATCH) {
        if (i > 0) await new Promise<void>((resolve) => setImmediate(resolve));
        await mapLimit(files.slice(i, i + LIST_BATCH), LIST_BATCH, async (name) => {
          const path = join(dir, name);
          const checked = await this.#checkSlot(binding, path, seeds, () =>
            this.#parseSlot(path, readKeyStoreFileSync(path, MAX_SLOT_FILE_BYTES)),
          );
          if (checked && "source" in checked) loaded.untrusted.set(path, checked);
          else if (checked) loaded.slots.set(path, checked);
        });
      }
      listing = loaded;
      this.#cache?.set(binding, listing);
    }
    untrusted?.push(...[...listing.untrusted.values()].sort((a, b) => a.source.localeCompare(b.source)));
    // The same (frozen) array until a write changes the slots: callers can tell nothing changed.
    // Writes since are merged in (a pass, not a sort of 100,000 slots after every new one).
    if (listing.sorted && listing.changes) {
      const { added, dropped } = listing.changes;
      listing.sorted = Object.freeze(
        mergeSorted(
          listing.sorted.filter((slot) => !dropped.has(slot)),
          added.filter((slot) => !dropped.has(slot)).sort(bySlotOrder),
        ),
      ) as StoredAccount[];
    }
    listing.changes = undefined;
    listing.sorted ??= Object.freeze([...listing.slots.values()].sort(bySlotOrder)) as StoredAccount[];
    return listing.sorted;
  }

  /** The slot's seeds, each checked to derive the key it is stored under. */
  async #load(slot: StoredAccount, path: string): Promise<AccountKeys> {
    const accountKey = (await this.#seeds.load(slot.account, "account")) ?? missingSeed(path, slot.account);
    const roleKeys = new Map<string, NKeyPair>();
    // Only active keys are loaded (they sign); the others' seeds are checked to exist by list().
    for (const [role, pub] of Object.entries(slot.roles))
      roleKeys.set(role, (await this.#seeds.load(pub, "account")) ?? missingSeed(path, pub));
    return { ...slot, accountKey, roleKeys };
  }

  async get(ref: AccountRef): Promise<AccountKeys | undefined> {
    const path = this.#slotPath(ref);
    // Reads take no lock: a write between reading the slot and loading its seeds (an emergency
    // rotation drops an active key, and forget() deletes its seed once the push is acked) leaves a
    // slot read that names a deleted seed. Such a read is retried on the slot as it is now; a
    // missing seed the current slot still names is a real loss.
    for (let attempt = 1; ; attempt++) {
      const slot = await this.#readSlot(path);
      if (!slot) return undefined;
      if (!sameRef(slot.ref, ref)) throw new KeyStoreError(`key store: ${path} belongs to another slot`);
      try {
        return await this.#load(slot, path);
      } catch (err) {
        if (!(err instanceof MissingSeedError) || attempt >= 3) throw err;
        const now = await this.#readSlot(path);
        if (now && JSON.stringify(now) === JSON.stringify(slot)) throw err;
      }
    }
  }

  /** Runs `fn` after every earlier write of the slot at `path` settled. */
  #serialised<T>(path: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#locks.get(path) ?? Promise.resolve();
    const run = previous.then(fn, fn);
    const settled = run.catch(() => undefined);
    this.#locks.set(path, settled);
    void settled.then(() => {
      if (this.#locks.get(path) === settled) this.#locks.delete(path);
    });
    return run;
  }

  ensure(ref: AccountRef, roles: readonly string[], at?: number): Promise<AccountKeys> {
    const path = this.#slotPath(ref);
    return this.#serialised(path, () => this.#ensure(ref, roles, path, at));
  }

  /** Writes `seeds`, then the slot file naming them (one group commit); then updates the cache. */
  async #writeSlot(path: string, slot: StoredAccount, seeds: readonly NKeyPair[] = []): Promise<void> {
    await this.#commits.add({ seeds, slot: { path, text: `${JSON.stringify(slot, null, 2)}\n` } });
    const listing = this.#cache?.get(slot.ref.binding);
    if (!listing) return;
    const before = listing.slots.get(path);
    listing.slots.set(path, slot);
    listing.untrusted.delete(path);
    if (!listing.sorted) return;
    listing.changes ??= { added: [], dropped: new Set() };
    if (before) listing.changes.dropped.add(before);
    listing.changes.added.push(slot);
  }

  /** The slot at `path` as the owner's cache knows it: undefined when known absent, else read it. */
  async #currentSlot(ref: AccountRef, path: string): Promise<StoredAccount | undefined> {
    const listing = this.#cache?.get(ref.binding);
    // The owner is the directory's only writer: a slot its listing lacks (and did not distrust) is
    // not there, and the read of a new slot (one per project on a cold start) is saved.
    if (listing && !listing.slots.has(path) && !listing.untrusted.has(path)) return undefined;
    return this.#readSlot(path);
  }

  async #ensure(
    ref: AccountRef,
    roles: readonly string[],
    path: string,
    at: number | undefined,
  ): Promise<AccountKeys> {
    const existing = await this.#currentSlot(ref, path);
    if (existing && !sameRef(existing.ref, ref))
      throw new KeyStoreError(`key store: ${path} belongs to another slot`);
    const current = existing ? await this.#load(existing, path) : undefined;
    const accountKey = current?.accountKey ?? NKeyPair.generate("account");
    const roleKeys = new Map(current?.roleKeys ?? []);
    const fresh: NKeyPair[] = current ? [] : [accountKey];
    const rotation = { ...existing?.rotation };
    for (const role of roles) {
      if (!roleKeys.has(role)) {
        const key = NKeyPair.generate("account");
        roleKeys.set(role, key);
        fresh.push(key);
        if (at !== undefined) rotation[role] = { activeSince: at };
      }
    }
    const result: AccountKeys = {
      ...existing,
      ref: { ...ref },
      account: accountKey.publicKey,
      roles: Object.fromEntries([...roleKeys].map(([role, key]) => [role, key.publicKey])),
      ...(Object.keys(rotation).length > 0 ? { rotation } : {}),
      accountKey,
      roleKeys,
    };
    if (fresh.length === 0) return result;
    if (!current) result.created = true;
    // Seeds first, then the slot file that names them.
    const { accountKey: _a, roleKeys: _r, created: _c, ...slot } = result;
    await this.#writeSlot(path, slot, fresh);
    return result;
  }

  update(ref: AccountRef, change: SlotChange): Promise<StoredAccount> {
    const path = this.#slotPath(ref);
    return this.#serialised(path, async () => {
      const current = await this.#readSlot(path);
      if (!current || !sameRef(current.ref, ref))
        throw new KeyStoreError(`key store: no slot for ${describeRef(ref)} to update`);
      const made: NKeyPair[] = [];
      const generate = (): string => {
        const key = NKeyPair.generate("account");
        made.push(key);
        return key.publicKey;
      };
      const proposed = change(structuredClone(current), generate);
      if (!proposed) return current;
      const next = checkSlotChange(current, proposed);
      // Every key the new slot names has a seed: stored for the slot already, or just generated.
      const stored = new Set([
        ...namedKeys(current),
        ...(current.discard ?? []),
        ...made.map((k) => k.publicKey),
      ]);
      for (const key of namedKeys(next))
        if (!stored.has(key))
          throw new TypeError(
            `a slot change names key ${key}, which is neither stored nor made by generate()`,
          );
      // Only generated keys the new slot names are saved; seeds first, then the slot.
      const named = new Set(namedKeys(next));
      await this.#writeSlot(
        path,
        next,
        made.filter((key) => named.has(key.publicKey)),
      );
      return next;
    });
  }

  forget(ref: AccountRef, keys: readonly string[]): Promise<void> {
    const path = this.#slotPath(ref);
    return this.#serialised(path, async () => {
      const current = await this.#readSlot(path);
      if (!current || !sameRef(current.ref, ref)) return;
      const named = new Set(namedKeys(current));
      const gone = (current.discard ?? []).filter((k) => keys.includes(k) && !named.has(k));
      if (gone.length === 0) return;
      // Seeds first, then the slot: a crash in between leaves the keys in `discard`, which no JWT
      // lists and nothing signs with, and the next forget() deletes what is left. The other order
      // left the seeds of retired keys behind for good (no slot named them any more).
      for (const key of gone) await this.#seeds.remove(key);
      const { discard: _d, ...rest } = current;
      const left = (current.discard ?? []).filter((k) => !gone.includes(k));
      await this.#writeSlot(path, left.length > 0 ? { ...rest, discard: left } : rest);
    });
  }

  async remove(ref: AccountRef): Promise<void> {
    const path = this.#slotPath(ref);
    const slot = await this.#readSlot(path);
    if (!slot) return;
    // The slot file goes first: a crash then leaves unnamed seeds, never a slot without seeds.
    await rm(path, { force: true });
    const listing = this.#cache?.get(ref.binding);
    const before = listing?.slots.get(path);
    if (listing && before) {
      listing.slots.delete(path);
      if (listing.sorted) (listing.changes ??= { added: [], dropped: new Set() }).dropped.add(before);
    }
    for (const pub of [...namedKeys(slot), ...(slot.discard ?? [])]) await this.#seeds.remove(pub);
  }
}
