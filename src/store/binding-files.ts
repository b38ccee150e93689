/**
 * Local mode's binding source: a directory of YAML files, each holding one or more NatsBinding
 * documents. `scan()` reads them all (bounded in files, bytes, documents and YAML aliases) and never
 * throws on bad content: an invalid document is reported with its source (`file.yaml#index`) and,
 * when its metadata.name is readable, its key, so the reconciler can report it instead of treating
 * the binding as gone. `watch()` rescans on fs.watch events (debounced) and periodically, and
 * reports the keys whose state changed.
 *
 * Generations play the part of Kubernetes' metadata.generation: per key, 1 at first sight, +1 each
 * time the normalised spec changes (reformatting, comments or quantity spelling do not count). The
 * counter lives in the instance and survives a key's removal, so a re-added key keeps counting.
 */
import { createHash } from "node:crypto";
import { watch as fsWatch, type FSWatcher } from "node:fs";
import { mkdir, opendir } from "node:fs/promises";
import { join } from "node:path";
import { Composer, LineCounter, Parser, type Document } from "yaml";
import { BindingValidationError, parseBinding } from "../api/v1alpha1/schema.ts";
import type { NatsBinding } from "../api/v1alpha1/types.ts";
import { NatsbindError, describeError } from "../errors.ts";
import { systemClock, type Clock, type TimerHandle } from "../runtime/clock.ts";
import { readBoundedFile, type BoundedRead } from "./files.ts";
import { MAX_NESTING_DEPTH, yamlNestingProblem } from "../nesting.ts";

export const MAX_BINDING_FILE_BYTES = 256 * 1024;
export const MAX_BINDING_FILES = 1000;
export const MAX_DOCUMENTS_PER_FILE = 100;
/** Aliases resolved per document; more is treated as a YAML bomb. */
export const MAX_YAML_ALIASES = 100;
/** Longest name or namespace read from an invalid document to name its key. */
const MAX_KEY_PART_LENGTH = 253;

/** A directory-level failure (unreadable, too many files): the scan as a whole failed. */
export class BindingFilesError extends NatsbindError {}

export interface BindingFileEntry {
  /** `namespace/name`, or `name` without a namespace. */
  key: string;
  /** Validated and normalised; `metadata.generation` is set to `generation`. */
  binding: NatsBinding;
  /** `file.yaml#index` (file name in the directory, 0-based document index). */
  source: string;
  generation: number;
}

export interface InvalidBindingFile {
  /** `file.yaml#index` for a document, `file.yaml` for a whole file that could not be read. */
  source: string;
  /**
   * The key the document names, when it could be read. A key that is not also in `bindings` is an
   * invalid binding (report it, touch nothing); a key that is in `bindings` marks a rejected
   * duplicate definition. A file that cannot be read at all reports the keys it held at the
   * previous scan, so a broken file does not look like removed bindings.
   */
  key?: string;
  /** One line, naming field paths (validation) or line and column (YAML syntax). */
  message: string;
}

export interface BindingSnapshot {
  bindings: Map<string, BindingFileEntry>;
  invalid: InvalidBindingFile[];
}

export interface BindingWatchOptions {
  /** Delay between the first fs.watch event and the rescan; later events in between coalesce. Default 200. */
  debounceMs?: number;
  /** Periodic rescan, the fallback for missed fs.watch events. Default 30_000. */
  rescanIntervalMs?: number;
  clock?: Clock;
  /** false: rely on the periodic rescan only (tests, file systems without inotify). Default true. */
  useFsWatch?: boolean;
  /** Failed scans (the directory unreadable, ...), fs.watch failures, and errors thrown by onChange. */
  onError?: (err: unknown) => void;
}

export interface BindingWatch {
  close(): void;
}

/**
 * Called with the keys added, changed (spec, or invalidity) or removed since the watcher's previous
 * scan, sorted, never empty; `snapshot` is the scan that found them. A returned promise's rejection
 * goes to onError.
 */
export type BindingChangeListener = (
  changedKeys: string[],
  snapshot: BindingSnapshot,
) => void | Promise<void>;

interface Generation {
  specHash: string;
  generation: number;
}

export class BindingFiles {
  readonly dir: string;
  readonly #generations = new Map<string, Generation>();
  #last: BindingSnapshot | undefined;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(dir: string) {
    this.dir = dir;
  }

  /** The result of the latest completed scan, if any. */
  current(): BindingSnapshot | undefined {
    return this.#last;
  }

  /**
   * Reads every `*.yaml` / `*.yml` file of the directory (not hidden files, not subdirectories) in
   * name order. Creates the directory (0755) when it is missing. Throws a BindingFilesError only when
   * the directory cannot be read or holds more than MAX_BINDING_FILES binding files; bad files and
   * documents are reported in `invalid`. Concurrent calls run one after the other.
   */
  scan(): Promise<BindingSnapshot> {
    const run = this.#queue.then(() => this.#scan());
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #scan(): Promise<BindingSnapshot> {
    const names = await this.#listFiles();
    const previous = this.#last;
    const bindings = new Map<string, BindingFileEntry>();
    const invalid: InvalidBindingFile[] = [];
    /** Key -> source of the first document naming it (valid or not): that one wins. */
    const claimed = new Map<string, string>();
    const claim = (key: string, source: string): boolean => {
      const first = claimed.get(key);
      if (first === undefined) {
        claimed.set(key, source);
        return true;
      }
      invalid.push({ source, key, message: `duplicate binding key ${key}, also defined in ${first}` });
      return false;
    };

    for (const name of names) {
      const outcome = await this.#readFile(name);
      if (outcome.kind === "skip") continue;
      if (outcome.kind === "file-problem") {
        const keys = keysFromFile(previous, name);
        if (keys.length === 0) invalid.push({ source: name, message: outcome.message });
        for (const key of keys)
          if (claim(key, name)) invalid.push({ source: name, key, message: outcome.message });
        continue;
      }
      for (const doc of outcome.documents) {
        if (doc.kind === "invalid") {
          if (doc.key === undefined) invalid.push({ source: doc.source, message: doc.message });
          else if (claim(doc.key, doc.source))
            invalid.push({ source: doc.source, key: doc.key, message: doc.message });
          continue;
        }
        const key = bindingKey(doc.binding);
        if (!claim(key, doc.source)) continue;
        const generation = this.#nextGeneration(key, doc.binding);
        doc.binding.metadata.generation = generation;
        bindings.set(key, { key, binding: doc.binding, source: doc.source, generation });
      }
    }
    const snapshot: BindingSnapshot = { bindings, invalid };
    this.#last = snapshot;
    return snapshot;
  }

  #nextGeneration(key: string, binding: NatsBinding): number {
    const specHash = hashSpec(binding);
    const known = this.#generations.get(key);
    if (known === undefined) {
      this.#generations.set(key, { specHash, generation: 1 });
      return 1;
    }
    if (known.specHash !== specHash) {
      known.specHash = specHash;
      known.generation += 1;
    }
    return known.generation;
  }

  async #listFiles(): Promise<string[]> {
    await mkdir(this.dir, { recursive: true, mode: 0o755 }).catch((err: NodeJS.ErrnoException) => {
      throw new BindingFilesError(
        `cannot create bindings directory ${this.dir}: ${err.code ?? err.message}`,
        {
          cause: err,
        },
      );
    });
    const names: string[] = [];
    try {
      const dir = await opendir(this.dir);
      for await (const entry of dir) {
        if (!isBindingFileName(entry.name)) continue;
        if (
          entry.isDirectory() ||
          entry.isFIFO() ||
          entry.isSocket() ||
          entry.isBlockDevice() ||
          entry.isCharacterDevice()
        )
          continue;
        names.push(entry.name);
        // Breaking out of the loop closes the directory handle.
        if (names.length > MAX_BINDING_FILES) break;
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? describeError(err);
      throw new BindingFilesError(`cannot read bindings directory ${this.dir}: ${code}`, { cause: err });
    }
    if (names.length > MAX_BINDING_FILES) {
      throw new BindingFilesError(
        `bindings directory ${this.dir} holds more than ${MAX_BINDING_FILES} binding files; ` +
          `split them across fewer files (up to ${MAX_DOCUMENTS_PER_FILE} documents each)`,
      );
    }
    return names.sort(compareStrings);
  }

  async #readFile(
    name: string,
  ): Promise<
    | { kind: "skip" }
    | { kind: "file-problem"; message: string }
    | { kind: "documents"; documents: Array<ParsedDocument> }
  > {
    let read: BoundedRead;
    try {
      read = await readBoundedFile(join(this.dir, name), MAX_BINDING_FILE_BYTES);
    } catch (err) {
      return { kind: "file-problem", message: `cannot read: ${(err as NodeJS.ErrnoException).code ?? err}` };
    }
    if (read.kind === "missing" || read.kind === "not-a-file") return { kind: "skip" };
    if (read.kind === "too-large")
      return { kind: "file-problem", message: `larger than ${MAX_BINDING_FILE_BYTES} bytes; not read` };
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(read.data);
    } catch {
      return { kind: "file-problem", message: "not UTF-8 text; not read" };
    }
    if (CONTROL_CHARACTERS.test(text))
      return { kind: "file-problem", message: "contains control characters (a binary file?); not read" };

    // Before the parser: it builds one node per level, so deep nesting costs time and memory.
    const tooDeep = yamlNestingProblem(text, MAX_NESTING_DEPTH);
    if (tooDeep !== undefined) return { kind: "file-problem", message: tooDeep };
    let parsed: { docs: Document.Parsed[]; lines: LineCounter } | undefined;
    try {
      parsed = parseDocuments(text);
    } catch (err) {
      return { kind: "file-problem", message: `not valid YAML: ${firstLine(describeError(err))}` };
    }
    if (parsed === undefined) {
      return {
        kind: "file-problem",
        message: `holds more than ${MAX_DOCUMENTS_PER_FILE} YAML documents; not read`,
      };
    }
    const { docs, lines } = parsed;
    const documents: ParsedDocument[] = [];
    docs.forEach((doc, index) => {
      const document = parseDocument(doc, `${name}#${index}`, lines);
      if (document) documents.push(document);
    });
    return { kind: "documents", documents };
  }

  /**
   * Watches the directory: fs.watch events (non-recursive) trigger a rescan after `debounceMs`, and
   * a rescan runs `rescanIntervalMs` after the previous one in any case. Changes are relative to the
   * latest scan before `watch()` (call it right after `scan()`), then to the watcher's own scans.
   */
  watch(onChange: BindingChangeListener, opts: BindingWatchOptions = {}): BindingWatch {
    const clock = opts.clock ?? systemClock;
    const debounceMs = opts.debounceMs ?? 200;
    const rescanIntervalMs = opts.rescanIntervalMs ?? 30_000;
    if (!(debounceMs >= 0) || !Number.isFinite(debounceMs))
      throw new RangeError(`debounceMs must be >= 0, got ${debounceMs}`);
    if (!(rescanIntervalMs > 0) || !Number.isFinite(rescanIntervalMs))
      throw new RangeError(`rescanIntervalMs must be > 0, got ${rescanIntervalMs}`);
    const onError = opts.onError ?? (() => undefined);
    const useFsWatch = opts.useFsWatch ?? true;

    let baseline = keyStates(this.#last);
    let closed = false;
    let watcher: FSWatcher | undefined;
    let debounceTimer: TimerHandle | undefined;
    let rescanTimer: TimerHandle | undefined;
    let running = false;
    let again = false;

    const report = (err: unknown): void => {
      if (closed) return;
      try {
        onError(err);
      } catch {
        // A failing error handler must not break the watcher.
      }
    };

    const trigger = (): void => {
      if (closed || debounceTimer !== undefined) return;
      debounceTimer = clock.setTimeout(() => {
        debounceTimer = undefined;
        void rescan();
      }, debounceMs);
    };

    const startFsWatch = (): void => {
      if (!useFsWatch || watcher !== undefined || closed) return;
      try {
        const w = fsWatch(this.dir, { persistent: true }, () => trigger());
        w.on("error", (err) => {
          w.close();
          if (watcher === w) watcher = undefined;
          report(new BindingFilesError(`watching ${this.dir} failed: ${describeError(err)}`, { cause: err }));
          trigger();
        });
        watcher = w;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? describeError(err);
        report(new BindingFilesError(`cannot watch ${this.dir}: ${code}`, { cause: err }));
      }
    };

    const rescan = async (): Promise<void> => {
      if (closed) return;
      if (running) {
        again = true;
        return;
      }
      running = true;
      if (rescanTimer !== undefined) clock.clearTimeout(rescanTimer);
      rescanTimer = undefined;
      try {
        const snapshot = await this.scan();
        startFsWatch();
        const next = keyStates(snapshot);
        const changed = changedKeys(baseline, next);
        baseline = next;
        if (!closed && changed.length > 0) {
          const result = onChange(changed, snapshot);
          if (result instanceof Promise) result.catch(report);
        }
      } catch (err) {
        report(err);
      } finally {
        running = false;
        if (!closed) {
          rescanTimer = clock.setTimeout(() => void rescan(), rescanIntervalMs);
          if (again) {
            again = false;
            trigger();
          }
        }
      }
    };

    startFsWatch();
    rescanTimer = clock.setTimeout(() => void rescan(), rescanIntervalMs);
    return {
      close: () => {
        closed = true;
        watcher?.close();
        watcher = undefined;
        if (debounceTimer !== undefined) clock.clearTimeout(debounceTimer);
        if (rescanTimer !== undefined) clock.clearTimeout(rescanTimer);
        debounceTimer = undefined;
        rescanTimer = undefined;
      },
    };
  }
}

type ParsedDocument =
  { kind: "valid"; source: string; binding: NatsBinding } | ({ kind: "invalid" } & InvalidBindingFile);

/** Undefined for an empty document (comments only, or a stray `---`). */
/**
 * The documents of a YAML stream, or undefined when there are more than MAX_DOCUMENTS_PER_FILE
 * (composing stops there). Like the library's parseAllDocuments, with a limit.
 */
function parseDocuments(text: string): { docs: Document.Parsed[]; lines: LineCounter } | undefined {
  const lines = new LineCounter();
  const parser = new Parser(lines.addNewLine);
  const composer = new Composer({ uniqueKeys: true });
  const docs: Document.Parsed[] = [];
  for (const doc of composer.compose(parser.parse(text))) {
    docs.push(doc);
    if (docs.length > MAX_DOCUMENTS_PER_FILE) return undefined;
  }
  return { docs, lines };
}

function parseDocument(doc: Document.Parsed, source: string, lines: LineCounter): ParsedDocument | undefined {
  const invalid = (message: string, value?: unknown): ParsedDocument => {
    const key = readableKey(value, doc);
    return key === undefined
      ? { kind: "invalid", source, message }
      : { kind: "invalid", source, key, message };
  };
  if (doc.errors.length > 0) {
    const more = doc.errors.length > 1 ? ` (and ${doc.errors.length - 1} more)` : "";
    const first = doc.errors[0]!;
    const { line, col } = lines.linePos(first.pos[0]);
    return invalid(`not valid YAML at line ${line}, column ${col}: ${firstLine(first.message)}${more}`);
  }
  if (doc.contents === null) return undefined;
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: MAX_YAML_ALIASES });
  } catch (err) {
    return invalid(`not usable YAML: ${firstLine(describeError(err))}`);
  }
  if (value === null || value === undefined) return undefined;
  try {
    return { kind: "valid", source, binding: parseBinding(value, source) };
  } catch (err) {
    if (err instanceof BindingValidationError) {
      // The message starts with the source; the entry carries it separately.
      const message = err.message.startsWith(`${source}: `)
        ? err.message.slice(source.length + 2)
        : err.message;
      return invalid(firstLine(message), value);
    }
    return invalid(firstLine(describeError(err)), value);
  }
}

export function bindingKey(binding: NatsBinding): string {
  const { name, namespace } = binding.metadata;
  return namespace ? `${namespace}/${name}` : name;
}

/** The key an invalid document names, when its metadata.name (and namespace) are plain strings. */
function readableKey(value: unknown, doc: Document.Parsed): string | undefined {
  let name: unknown;
  let namespace: unknown;
  const metadata = isRecord(value) ? value.metadata : undefined;
  if (isRecord(metadata)) {
    name = metadata.name;
    namespace = metadata.namespace;
  } else if (value === undefined) {
    try {
      name = doc.getIn(["metadata", "name"]);
      namespace = doc.getIn(["metadata", "namespace"]);
    } catch {
      return undefined;
    }
  }
  if (!isKeyPart(name)) return undefined;
  if (namespace === undefined || namespace === null || namespace === "") return name;
  return isKeyPart(namespace) ? `${namespace}/${name}` : undefined;
}

function isKeyPart(value: unknown): value is string {
  return (
    typeof value === "string" &&
    value.length > 0 &&
    value.length <= MAX_KEY_PART_LENGTH &&
    !value.includes("/") &&
    !/[\s\p{Cc}]/u.test(value)
  );
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Keys a file held at the previous scan (valid, invalid or attributed to the file as a whole). */
function keysFromFile(previous: BindingSnapshot | undefined, name: string): string[] {
  if (!previous) return [];
  const fromFile = (source: string): boolean => source === name || source.startsWith(`${name}#`);
  const keys = new Set<string>();
  for (const entry of previous.bindings.values()) if (fromFile(entry.source)) keys.add(entry.key);
  for (const entry of previous.invalid) {
    if (
      entry.key !== undefined &&
      fromFile(entry.source) &&
      !entry.message.startsWith("duplicate binding key")
    )
      keys.add(entry.key);
  }
  return [...keys].sort(compareStrings);
}

/** Per key: what a consumer would see (the spec, or the problems reported under the key). */
function keyStates(snapshot: BindingSnapshot | undefined): Map<string, string> {
  const states = new Map<string, string>();
  if (!snapshot) return states;
  const problems = new Map<string, string[]>();
  for (const entry of snapshot.invalid) {
    if (entry.key === undefined) continue;
    const list = problems.get(entry.key) ?? [];
    list.push(`${entry.source}: ${entry.message}`);
    problems.set(entry.key, list);
  }
  const keys = new Set([...snapshot.bindings.keys(), ...problems.keys()]);
  for (const key of keys) {
    const entry = snapshot.bindings.get(key);
    states.set(
      key,
      JSON.stringify([
        entry ? hashSpec(entry.binding) : null,
        // Orders overlapping bindings: a change is reported (not a new generation: not the spec).
        entry?.binding.metadata.creationTimestamp ?? null,
        (problems.get(key) ?? []).sort(compareStrings),
      ]),
    );
  }
  return states;
}

function changedKeys(before: Map<string, string>, after: Map<string, string>): string[] {
  const changed: string[] = [];
  for (const [key, state] of after) if (before.get(key) !== state) changed.push(key);
  for (const key of before.keys()) if (!after.has(key)) changed.push(key);
  return changed.sort(compareStrings);
}

function hashSpec(binding: NatsBinding): string {
  return createHash("sha256").update(canonicalJson(binding.spec)).digest("hex");
}

/** JSON with object keys sorted and undefined members left out: equal values, equal text. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v ?? null)).join(",")}]`;
  if (isRecord(value)) {
    const members = Object.keys(value)
      .filter((k) => value[k] !== undefined)
      .sort(compareStrings)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`);
    return `{${members.join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

function isBindingFileName(name: string): boolean {
  return !name.startsWith(".") && (name.endsWith(".yaml") || name.endsWith(".yml"));
}

/** C0 controls other than tab, LF and CR, and DEL: not allowed in YAML, typical of binary files. */
// eslint-disable-next-line no-control-regex
const CONTROL_CHARACTERS = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;

function firstLine(message: string): string {
  const line = message.split("\n", 1)[0]!.trim();
  return line.endsWith(":") ? line.slice(0, -1) : line;
}

function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Reads a regular file of at most `maxBytes`. Opens non-blocking (a FIFO named *.yaml cannot hang the
 * scan) and checks the opened file, not the name, so a swapped symlink cannot slip a device in.
 */
