/**
 * Local mode: rotation triggers and revocations asked by the CLI, one JSON file per binding,
 *
 *   <keys>/requests/<binding file name>.json   {binding, triggers: [...], revocations: [...]}   0600
 *
 * The CLI writes (read-modify-write under `<file>.lock`, O_EXCL); `natsbind run` reads the file at
 * every reconcile of the binding (RequestSource). Requests are level-based, so a file read twice or
 * late changes nothing more: a trigger is a time every covered key must be newer than, a
 * revocation a set of entries the slot must carry (src/rotation/phases.ts, revocations.ts).
 * Bounded (1 MiB, 64 triggers, 256 revocation requests) and validated: a broken file fails the
 * reconcile with an error naming the file, and changes nothing.
 */
import { watch as fsWatch } from "node:fs";
import { mkdir, open, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { NatsbindError } from "../errors.ts";
import { bindingFileName } from "../keystore/directory.ts";
import { jsonNestingProblem } from "../nesting.ts";
import { readBoundedFile, writeFileAtomic } from "../store/files.ts";
import type { BindingRequests, RequestSource } from "./rotator.ts";
import type { RotationTrigger } from "./phases.ts";
import type { RevocationRequest } from "./revocations.ts";

export const MAX_REQUEST_FILE_BYTES = 1024 * 1024;
export const MAX_TRIGGERS = 64;
export const MAX_REVOCATION_REQUESTS = 256;

export class RequestFileError extends NatsbindError {}

const publicUser = z.string().regex(/^U[A-Z2-7]{55}$/, "must be a user public key (U...)");
const epochMs = z.number().int().nonnegative().max(8_640_000_000_000_000);

const fileSchema = z.strictObject({
  binding: z.string().min(1).max(253),
  triggers: z
    .array(
      z.strictObject({
        at: epochMs,
        emergency: z.boolean(),
        projectId: z.number().int().positive().optional(),
        environment: z.string().min(1).max(255).optional(),
        role: z.string().min(1).max(63).optional(),
      }),
    )
    .max(MAX_TRIGGERS),
  revocations: z
    .array(
      z.strictObject({
        projectId: z.number().int().positive(),
        environment: z.string().min(1).max(255).optional(),
        entries: z
          .record(z.union([publicUser, z.literal("*")]), z.number().int().nonnegative())
          .refine((e) => Object.keys(e).length >= 1 && Object.keys(e).length <= 10_000, "1 to 10000 entries"),
      }),
    )
    .max(MAX_REVOCATION_REQUESTS),
});

export type RequestFile = z.infer<typeof fileSchema>;

export class RequestFiles implements RequestSource {
  readonly #dir: string;

  constructor(keysDir: string) {
    this.#dir = join(keysDir, "requests");
  }

  pathOf(binding: string): string {
    return join(this.#dir, `${bindingFileName(binding)}.json`);
  }

  async #read(binding: string): Promise<RequestFile> {
    const path = this.pathOf(binding);
    const read = await readBoundedFile(path, MAX_REQUEST_FILE_BYTES);
    if (read.kind === "missing") return { binding, triggers: [], revocations: [] };
    if (read.kind === "too-large")
      throw new RequestFileError(`${path} is larger than ${MAX_REQUEST_FILE_BYTES} bytes`);
    if (read.kind === "not-a-file") throw new RequestFileError(`${path} is not a regular file`);
    const text = read.data.toString("utf8");
    const deep = jsonNestingProblem(text);
    if (deep !== undefined) throw new RequestFileError(`${path} ${deep}`);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new RequestFileError(`${path} is not JSON`);
    }
    const result = fileSchema.safeParse(parsed);
    if (!result.success) {
      const issue = result.error.issues[0];
      throw new RequestFileError(`${path}: ${issue?.path.join(".") || "(top level)"}: ${issue?.message}`);
    }
    if (result.data.binding !== binding)
      throw new RequestFileError(
        `${path} names binding ${JSON.stringify(result.data.binding)}, not ${binding}`,
      );
    return result.data;
  }

  /**
   * Calls `changed(binding)` when a request file is written (fs.watch on the directory; the binding
   * comes from the file's content, read bounded). Returns the watcher to close.
   */
  async watch(
    changed: (binding: string) => void,
    onError: (err: unknown) => void,
  ): Promise<{ close(): void }> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    const watcher = fsWatch(this.#dir, (_event, name) => {
      if (typeof name !== "string" || !name.endsWith(".json")) return;
      void readBoundedFile(join(this.#dir, name), MAX_REQUEST_FILE_BYTES).then((read) => {
        if (read.kind !== "ok") return;
        try {
          const binding = (JSON.parse(read.data.toString("utf8")) as { binding?: unknown }).binding;
          if (typeof binding === "string" && this.pathOf(binding) === join(this.#dir, name)) changed(binding);
        } catch {
          // A half-written or broken file: the reconcile that reads it reports it.
        }
      }, onError);
    });
    watcher.on("error", onError);
    return { close: () => watcher.close() };
  }

  async requests(binding: string): Promise<BindingRequests> {
    const file = await this.#read(binding);
    return {
      triggers: file.triggers.map((t) => withoutUndefined(t) as RotationTrigger),
      revocations: file.revocations.map((r) => withoutUndefined(r) as RevocationRequest),
    };
  }

  /**
   * Adds requests to the binding's file (CLI side): under the file's lock; triggers beyond the
   * newest MAX_TRIGGERS and revocation requests `stillNeeded` says are done are dropped.
   */
  async add(
    binding: string,
    add: { trigger?: RotationTrigger; revocation?: RevocationRequest },
    stillNeeded: (r: RevocationRequest) => boolean = () => true,
  ): Promise<void> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    const path = this.pathOf(binding);
    await withFileLock(`${path}.lock`, async () => {
      const file = await this.#read(binding);
      const triggers = [...file.triggers, ...(add.trigger ? [add.trigger] : [])]
        .sort((a, b) => a.at - b.at)
        .slice(-MAX_TRIGGERS);
      const revocations = [
        ...file.revocations.filter(stillNeeded),
        ...(add.revocation ? [add.revocation] : []),
      ];
      if (revocations.length > MAX_REVOCATION_REQUESTS)
        throw new RequestFileError(
          `${path}: more than ${MAX_REVOCATION_REQUESTS} revocation requests are waiting for natsbind run; ` +
            "let it apply them first (is natsbind run reconciling?)",
        );
      const next: RequestFile = { binding, triggers, revocations };
      const text = `${JSON.stringify(next)}\n`;
      if (text.length > MAX_REQUEST_FILE_BYTES)
        throw new RequestFileError(`${path} would be larger than ${MAX_REQUEST_FILE_BYTES} bytes`);
      await writeFileAtomic(path, text, 0o600);
    });
  }
}

function withoutUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}

/** Runs `fn` holding an O_EXCL lock file; a lock older than 30 s is taken as abandoned. */
async function withFileLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const handle = await open(path, "wx", 0o600);
      await handle.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const age = await stat(path).then(
        (s) => Date.now() - s.mtimeMs,
        () => 0,
      );
      if (age > 30_000) await rm(path, { force: true });
      else if (Date.now() > deadline)
        throw new RequestFileError(`${path}: another natsbind command holds it`);
      else await new Promise((r) => setTimeout(r, 50));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(path, { force: true });
  }
}
