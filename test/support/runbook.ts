/**
 * Runbooks as tests: reads a runbook (docs/runbooks/*.md), checks it, and runs its shell blocks.
 *
 * A runbook declares its variables at its top, in the "Variables" section: a table whose first
 * column is `NAME`, or a list of `- \`NAME\`: ...` items. Its steps are fenced ```sh or ```bash
 * blocks. parseRunbook() extracts the blocks in order and refuses a runbook without any, or one whose
 * blocks use a variable that is neither declared nor set by an earlier part of the runbook (a
 * reader following it must know what to set). runRunbook() runs every block, in order, in ONE bash
 * process (`set -euo pipefail`, no terminal, stdin from /dev/null) with the variables given, so a
 * variable set in step 2 is there in step 5, as for a person pasting the steps into one shell. Each
 * block's stdout and stderr are kept apart, so a failure names the block and shows its own stderr.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";

export class RunbookError extends Error {
  override name = "RunbookError";
}

export interface RunbookBlock {
  /** 1-based position among the runbook's shell blocks. */
  index: number;
  /** 1-based line of the opening fence in the markdown. */
  line: number;
  /** The fence's language: sh or bash. */
  lang: string;
  code: string;
}

export interface Runbook {
  /** File name (restore-from-backup.md). */
  name: string;
  /** The first `# ` heading. */
  title: string;
  /** Declared variables, each with the text of its row. */
  variables: Map<string, string>;
  blocks: RunbookBlock[];
}

/** Languages of the blocks that are run; any other fence (yaml, text, console) is only shown. */
const SHELL_LANGS = new Set(["sh", "bash"]);

/** Variables bash sets itself, which a runbook may read without declaring them. */
const SHELL_VARIABLES = new Set([
  "HOME",
  "PATH",
  "PWD",
  "OLDPWD",
  "SECONDS",
  "RANDOM",
  "LINENO",
  "UID",
  "EUID",
  "IFS",
  "PIPESTATUS",
  "BASH_REMATCH",
  "EPOCHSECONDS",
  "EPOCHREALTIME",
]);

/** Every fenced block of the markdown, with its language and the line of its opening fence. */
function fencedBlocks(markdown: string): Array<{ line: number; lang: string; code: string }> {
  const lines = markdown.split("\n");
  const blocks: Array<{ line: number; lang: string; code: string }> = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*([^\s`]*)/.exec(lines[i]!);
    if (!open) continue;
    const [, indent, fence, lang] = open;
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      const close = new RegExp(`^\\s*${fence![0] === "`" ? "`" : "~"}{${fence!.length},}\\s*$`);
      if (close.test(lines[j]!)) break;
      // Blocks inside list items are indented: take the fence's indentation off each line.
      body.push(lines[j]!.startsWith(indent!) ? lines[j]!.slice(indent!.length) : lines[j]!.trimStart());
    }
    if (j >= lines.length) throw new RunbookError(`the code block opened on line ${i + 1} is never closed`);
    blocks.push({ line: i + 1, lang: (lang ?? "").toLowerCase(), code: body.join("\n") });
    i = j;
  }
  return blocks;
}

/**
 * The variables the runbook declares: in the section whose heading says "Variables", the first
 * cell of each table row or the start of each list item, when it is a `NAME` in backticks.
 */
export function declaredVariables(markdown: string): Map<string, string> {
  const declared = new Map<string, string>();
  let inSection = false;
  let inFence = false;
  for (const line of markdown.split("\n")) {
    if (/^\s*(`{3,}|~{3,})/.test(line)) inFence = !inFence;
    if (inFence) continue;
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    if (heading) {
      inSection = /\bvariables\b/i.test(heading[2]!);
      continue;
    }
    if (!inSection) continue;
    const row = /^\s*(?:\|\s*|[-*]\s+)`([A-Za-z_][A-Za-z0-9_]*)`/.exec(line);
    if (row) declared.set(row[1]!, line.trim());
  }
  return declared;
}

/**
 * The shell text with what bash does not expand taken out: comments, single-quoted strings and the
 * bodies of heredocs with a quoted delimiter. Quoting nests as in bash: "$(jq '...')" holds a
 * single-quoted string. Good enough for the runbooks' plain shell.
 */
function expandedText(code: string): string {
  const out: string[] = [];
  const lines = code.split("\n");
  // Quoting contexts, innermost last: `code` (top level or inside $(...), with its paren depth),
  // `"` (a double-quoted string), `'` (a single-quoted string, which can span lines).
  type Context = { kind: "code"; depth: number } | { kind: '"' } | { kind: "'" };
  const stack: Context[] = [{ kind: "code", depth: 0 }];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    let kept = "";
    for (let k = 0; k < line.length; k++) {
      const c = line[k]!;
      const top = stack.at(-1)!;
      if (top.kind === "'") {
        if (c === "'") stack.pop();
        continue;
      }
      if (c === "\\") {
        k++;
        continue;
      }
      if (c === "$" && line[k + 1] === "(") {
        stack.push({ kind: "code", depth: 0 });
        kept += "$(";
        k++;
        continue;
      }
      if (top.kind === '"') {
        if (c === '"') stack.pop();
        kept += c;
        continue;
      }
      if (c === "'") {
        stack.push({ kind: "'" });
        continue;
      }
      if (c === '"') stack.push({ kind: '"' });
      else if (c === "#" && (k === 0 || /[\s;(]/.test(line[k - 1]!))) break;
      else if (c === "(") top.depth++;
      else if (c === ")") {
        if (top.depth > 0) top.depth--;
        else if (stack.length > 1) stack.pop();
      }
      kept += c;
    }
    out.push(kept);
    if (stack.at(-1)!.kind !== "code") continue;
    // A heredoc's body: expanded unless its delimiter is quoted, and never shell syntax.
    const heredoc = /<<-?\s*(["']?)([A-Za-z_][A-Za-z0-9_]*)\1/.exec(line);
    if (heredoc) {
      const expanded = heredoc[1] === "";
      while (i + 1 < lines.length && lines[i + 1]!.trim() !== heredoc[2]) {
        i++;
        if (expanded) out.push(lines[i]!);
      }
      i++;
    }
  }
  return out.join("\n");
}

/** Names the shell text reads: $NAME and ${NAME...} (also ${#NAME}, ${!NAME}). */
export function variableUses(code: string): Set<string> {
  const used = new Set<string>();
  for (const m of expandedText(code).matchAll(/\$(?:\{[#!]?)?([A-Za-z_][A-Za-z0-9_]*)/g)) used.add(m[1]!);
  return used;
}

/** Names the shell text sets: NAME=..., export/local/readonly NAME=, for NAME in, read NAME... */
export function assignedVariables(code: string): Set<string> {
  const set = new Set<string>();
  const text = expandedText(code);
  for (const m of text.matchAll(/(?:^|[\s;&|({])([A-Za-z_][A-Za-z0-9_]*)\+?=/gm)) set.add(m[1]!);
  for (const m of text.matchAll(/\b(?:for|select)\s+([A-Za-z_][A-Za-z0-9_]*)\s+in\b/g)) set.add(m[1]!);
  for (const m of text.matchAll(
    /\b(?:read|mapfile|readarray)((?:\s+-[A-Za-z]+(?:\s+'[^']*'|\s+\S+)?)*)((?:\s+[A-Za-z_][A-Za-z0-9_]*)+)/g,
  ))
    for (const name of m[2]!.trim().split(/\s+/)) set.add(name);
  return set;
}

/** Reads and checks a runbook: its title, variables and shell blocks. Throws RunbookError. */
export function parseRunbook(name: string, markdown: string): Runbook {
  const title = /^#\s+(.+)$/m.exec(markdown)?.[1]?.trim() ?? "";
  const variables = declaredVariables(markdown);
  const blocks = fencedBlocks(markdown)
    .filter((b) => SHELL_LANGS.has(b.lang))
    .map((b, i) => ({ ...b, index: i + 1 }));
  const problems: string[] = [];
  if (!title) problems.push("it has no `# ` title");
  if (blocks.length === 0) problems.push("it has no ```sh or ```bash block to run");
  const assigned = new Set(blocks.flatMap((b) => [...assignedVariables(b.code)]));
  for (const block of blocks) {
    for (const used of variableUses(block.code)) {
      if (variables.has(used) || assigned.has(used) || SHELL_VARIABLES.has(used)) continue;
      problems.push(
        `block ${block.index} (line ${block.line}) uses $${used}, which is neither declared in its ` +
          "Variables section nor set by one of its blocks",
      );
    }
  }
  if (problems.length > 0) throw new RunbookError(`runbook ${name}: ${problems.join("; ")}`);
  return { name, title, variables, blocks };
}

export interface BlockOutcome {
  index: number;
  /** Exit status of the block (0 for every block that completed). */
  status: number;
  stdout: string;
  stderr: string;
  durationMs: number;
}

export interface RunbookRun {
  ok: boolean;
  /** The block that failed (non-zero status, killed, or the run ended inside it). */
  failed?: BlockOutcome;
  /** Why the run failed, in one line. */
  reason?: string;
  /** Every block that started, in order. */
  blocks: BlockOutcome[];
  durationMs: number;
}

export interface RunOptions {
  /** The runbook's variables (each declared one must be given). */
  variables: Record<string, string>;
  /** PATH of the bash process. */
  path: string;
  /** Base environment (HOME, ...); variables and PATH are set over it. */
  env?: Record<string, string>;
  cwd?: string;
  /** The whole run is killed after this (default 120_000 ms). */
  timeoutMs?: number;
}

const MAX_OUTPUT_BYTES = 1024 * 1024;

async function readTail(path: string): Promise<string> {
  const text = await readFile(path, "utf8").catch(() => "");
  return text.length > MAX_OUTPUT_BYTES ? `...${text.slice(-MAX_OUTPUT_BYTES)}` : text;
}

/**
 * Runs the runbook's blocks in one bash process: `set -euo pipefail`, each block sourced in turn
 * (so it shares the shell's variables), its stdout and stderr into files of its own. The run
 * stops at the first block that fails.
 */
export async function runRunbook(runbook: Runbook, opts: RunOptions): Promise<RunbookRun> {
  const missing = [...runbook.variables.keys()].filter((v) => opts.variables[v] === undefined);
  if (missing.length > 0)
    throw new RunbookError(
      `runbook ${runbook.name} declares ${missing.join(", ")}, which the run does not set`,
    );
  const dir = await mkdtemp(join(tmpdir(), "natsbind-runbook-run-"));
  try {
    const driver = ["set -euo pipefail", "__rb_dir=$1"];
    for (const block of runbook.blocks) {
      await writeFile(join(dir, `block-${block.index}.sh`), `${block.code}\n`);
      driver.push(
        `printf '%s %s\\n' ${block.index} "$EPOCHREALTIME" >> "$__rb_dir/started"`,
        `source "$__rb_dir/block-${block.index}.sh" > "$__rb_dir/block-${block.index}.out" 2> "$__rb_dir/block-${block.index}.err"`,
      );
    }
    driver.push(`printf 'done %s\\n' "$EPOCHREALTIME" >> "$__rb_dir/started"`);
    await writeFile(join(dir, "driver.sh"), `${driver.join("\n")}\n`);

    const started = performance.now();
    const child = spawn("bash", [join(dir, "driver.sh"), dir], {
      cwd: opts.cwd ?? dir,
      env: { ...opts.env, ...opts.variables, PATH: opts.path },
      stdio: ["ignore", "pipe", "pipe"],
      // Its own process group, without a terminal: on a timeout the whole group is killed.
      detached: true,
    });
    let driverOutput = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (driverOutput += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (driverOutput += c));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        // already gone
      }
    }, opts.timeoutMs ?? 120_000);
    const status = await new Promise<number>((resolve) => {
      child.once("error", () => resolve(127));
      child.once("exit", (code, signal) => resolve(code ?? (signal ? 128 : 1)));
    });
    clearTimeout(timer);
    // Whatever a block left running in the background goes with the run.
    try {
      process.kill(-child.pid!, "SIGKILL");
    } catch {
      // nothing left
    }
    const durationMs = performance.now() - started;

    const marks = (await readTail(join(dir, "started")))
      .split("\n")
      .filter(Boolean)
      .map((l) => l.split(" ") as [string, string]);
    const blocks: BlockOutcome[] = [];
    for (let i = 0; i < marks.length; i++) {
      const [index, at] = marks[i]!;
      if (index === "done") break;
      const next = marks[i + 1];
      const ended = next ? Number(next[1]) * 1000 : undefined;
      blocks.push({
        index: Number(index),
        status: next ? 0 : status,
        stdout: await readTail(join(dir, `block-${index}.out`)),
        stderr: await readTail(join(dir, `block-${index}.err`)),
        durationMs: ended !== undefined ? ended - Number(at) * 1000 : NaN,
      });
    }
    const completed = marks.at(-1)?.[0] === "done";
    if (completed && status === 0) return { ok: true, blocks, durationMs };
    const failed = blocks.at(-1);
    const reason = timedOut
      ? `killed after ${opts.timeoutMs ?? 120_000} ms`
      : status !== 0
        ? `exited with status ${status}`
        : "the run ended before its last block (a block called exit?)";
    return {
      ok: false,
      ...(failed ? { failed: { ...failed, status: status === 0 ? 1 : status } } : {}),
      reason: driverOutput.trim() ? `${reason}; bash said: ${driverOutput.trim().slice(-2000)}` : reason,
      blocks,
      durationMs,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function tail(text: string, lines: number): string {
  const all = text.trimEnd().split("\n");
  return (all.length > lines ? [`... (${all.length - lines} lines before)`, ...all.slice(-lines)] : all).join(
    "\n",
  );
}

/** A failed run, for the test output: the runbook, the block (number, line, code) and its stderr. */
export function describeFailure(runbook: Runbook, run: RunbookRun): string {
  const failed = run.failed;
  const block = failed ? runbook.blocks[failed.index - 1] : undefined;
  const where = block
    ? `block ${block.index} of ${runbook.blocks.length} (line ${block.line})`
    : "before its first block";
  return [
    `runbook ${runbook.name} failed in ${where}: ${run.reason ?? "failed"}`,
    ...(block ? ["--- block ---", block.code.trimEnd()] : []),
    ...(failed ? ["--- stderr ---", tail(failed.stderr, 60) || "(empty)"] : []),
    ...(failed?.stdout.trim() ? ["--- stdout ---", tail(failed.stdout, 30)] : []),
  ].join("\n");
}

/** The runbook file's name as the tests show it. */
export async function readRunbook(path: string): Promise<Runbook> {
  return parseRunbook(basename(path), await readFile(path, "utf8"));
}
