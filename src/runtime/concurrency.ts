/** Runs `fn` over `items` with at most `limit` calls in flight; rejects with the first failure. */
export async function mapLimit<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/**
 * Per key, at most one run of `fn` in flight and one queued behind it; a call made while one is
 * queued joins that queued run (it has not started, so it will see whatever the caller wanted
 * seen). N calls in a burst thus cost at most two runs, and none starts before its caller asked.
 */
export class Coalescer<K, T> {
  readonly #running = new Map<K, Promise<T>>();
  readonly #queued = new Map<K, Promise<T>>();

  run(key: K, fn: () => Promise<T>): Promise<T> {
    const queued = this.#queued.get(key);
    if (queued) return queued;
    const before = this.#running.get(key);
    const run: Promise<T> = (before ?? Promise.resolve())
      .catch(() => undefined)
      .then(async () => {
        this.#queued.delete(key);
        this.#running.set(key, run);
        try {
          return await fn();
        } finally {
          if (this.#running.get(key) === run) this.#running.delete(key);
        }
      });
    this.#queued.set(key, run);
    return run;
  }

  /** Keys with a run in flight or queued. */
  get size(): number {
    return new Set([...this.#running.keys(), ...this.#queued.keys()]).size;
  }
}

/**
 * Group commit: items added while a batch is being written wait and go together into the next
 * batch (at most `maxBatch` items); each add() resolves when its batch was written, or rejects
 * with the batch's error. A batch starts on the next turn of the event loop after the first add,
 * so callers running side by side (mapLimit) share it.
 */
export class GroupCommit<T> {
  readonly #write: (items: T[]) => Promise<void>;
  readonly #maxBatch: number;
  #pending: Array<{ item: T; resolve: () => void; reject: (err: unknown) => void }> = [];
  #running = false;

  constructor(write: (items: T[]) => Promise<void>, opts: { maxBatch: number }) {
    if (!(opts.maxBatch >= 1)) throw new RangeError("GroupCommit needs maxBatch >= 1");
    this.#write = write;
    this.#maxBatch = opts.maxBatch;
  }

  add(item: T): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#pending.push({ item, resolve, reject });
      if (!this.#running) {
        this.#running = true;
        setImmediate(() => void this.#drain());
      }
    });
  }

  async #drain(): Promise<void> {
    while (this.#pending.length > 0) {
      const batch = this.#pending.splice(0, this.#maxBatch);
      try {
        await this.#write(batch.map((b) => b.item));
        for (const b of batch) b.resolve();
      } catch (err) {
        for (const b of batch) b.reject(err);
      }
    }
    this.#running = false;
  }
}
