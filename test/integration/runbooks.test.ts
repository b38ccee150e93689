// Runbooks that cannot rot: every docs/runbooks/*.md (but the README index) is read, checked (its
// variables declared, at least one shell block) and its shell blocks run in order in one bash
// process against a real environment started for it (test/support/runbook-env.ts: `natsbind init`,
// a 3-node nats-server cluster with a full resolver, the GitLab simulator, `natsbind run` in local
// mode, and, for runbooks that declare KUBECONFIG, kube-apiserver + etcd and `natsbind run` in
// Kubernetes mode). A failing block fails the test with the runbook's name, the block's number and
// its stderr. After the run, every project has an account natsbind holds, on every server, and a
// user of it connects to every server; runbooks with a promise of their own (no re-keying, a new
// operator) are held to it below.
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { describeFailure, parseRunbook, runRunbook, type Runbook } from "../support/runbook.ts";
import {
  startRunbookEnvironment,
  type HeldAccount,
  type RunbookEnvironment,
} from "../support/runbook-env.ts";
import { hasToolBinary, REPO_ROOT } from "../support/process.ts";

const RUNBOOKS = join(REPO_ROOT, "docs", "runbooks");
const files = readdirSync(RUNBOOKS)
  .filter((f) => f.endsWith(".md") && f !== "README.md")
  .sort();

/** What the environment looked like before the runbook ran. */
interface Before {
  local: Map<number, HeldAccount>;
  kube: Map<number, HeldAccount>;
  /** Creds issued before the runbook, per mode and project. */
  creds: Map<string, Uint8Array>;
}

/** Promises a runbook makes beyond "natsbind converges and clients connect". */
const PROMISES: Record<string, (env: RunbookEnvironment, before: Before) => Promise<void>> = {
  // Restored keys: the same accounts as before, and credentials issued before still work.
  "restore-from-backup.md": async (env, before) => {
    await assertSameAccounts(env, before);
    await assertOldCredsWork(env, before);
  },
  // A new operator identity: every server trusts it, and nothing was re-keyed.
  "rotate-operator-identity-key.md": async (env, before) => {
    const trusted = await env.trustedOperators();
    for (const [server, operator] of trusted) {
      assert.notEqual(operator, env.operator, `${server} still trusts the operator natsbind init made`);
      assert.equal(operator, [...trusted.values()][0], `${server} trusts another operator than its peers`);
    }
    await assertSameAccounts(env, before);
    await assertOldCredsWork(env, before);
  },
  // The leaked job's user was cut off by the revocation's push (the server says why), and nobody
  // else was: credentials issued before the runbook for the other projects still work. (Whether it
  // is still refused is not checked here: the environment issues no CI credentials, so natsbind
  // keeps the entries only 5 s, see rotationOverlapMs.)
  "revoke-credentials.md": async (env, before) => {
    const leaked = env.leakedUser!;
    assert.ok(leaked.isClosed(), "the leaked user's connection is closed");
    assert.equal(leaked.events[0], "error: User Authentication Revoked", leaked.events.join(", "));
    for (const [what, creds] of before.creds) {
      const projectId = Number(what.split(" ").at(-1));
      if (projectId !== leaked.projectId) await env.assertClientWorks(creds, projectId, what);
    }
  },
  // Without a backup: the project gets a new account, the old one is deleted from every server;
  // the other projects keep theirs.
  "rotate-account-signing-keys.md": (env, before) => assertRotatedOneRoleKey(env, before),
  "lost-account-keys.md": async (env, before) => {
    const project = env.projectIds[0]!;
    const held = await env.serverAccounts();
    const modes: Array<[string, Map<number, HeldAccount>, Map<number, HeldAccount>]> = [
      ["local", before.local, await env.localAccounts()],
    ];
    if (env.kubernetes) modes.push(["kubernetes", before.kube, await env.kubeAccounts()]);
    for (const [mode, was, now] of modes) {
      const old = was.get(project)!.account;
      assert.notEqual(now.get(project)!.account, old, `${mode}: project ${project} has a new account`);
      for (const [server, set] of held) assert.ok(!set.has(old), `${mode}: ${server} still holds ${old}`);
      for (const id of env.projectIds.slice(1))
        assert.equal(now.get(id)!.account, was.get(id)!.account, `${mode}: project ${id} kept its account`);
    }
  },
};

/**
 * rotate-account-signing-keys.md rotates PROJECT_ID's role key, then replaces it in an emergency, in
 * both modes: the project keeps its account with a new role key, and credentials its old key issued
 * no longer connect; the other projects keep their keys and credentials.
 */
async function assertRotatedOneRoleKey(env: RunbookEnvironment, before: Before): Promise<void> {
  const project = env.projectIds[0]!;
  const modes: Array<[string, Map<number, HeldAccount>, Map<number, HeldAccount>]> = [
    ["local", before.local, await env.localAccounts()],
  ];
  if (env.kubernetes) modes.push(["kubernetes", before.kube, await env.kubeAccounts()]);
  for (const [mode, was, now] of modes) {
    assert.equal(now.get(project)!.account, was.get(project)!.account, `${mode}: the same account`);
    assert.notEqual(
      now.get(project)!.roleKey.publicKey,
      was.get(project)!.roleKey.publicKey,
      `${mode}: project ${project} has a new role key`,
    );
    await assert.rejects(
      env.assertClientWorks(before.creds.get(`${mode} project ${project}`)!, project, "old creds"),
      /cannot connect/,
      `${mode}: credentials of the replaced key are refused`,
    );
    for (const id of env.projectIds.slice(1)) {
      assert.equal(now.get(id)!.roleKey.publicKey, was.get(id)!.roleKey.publicKey, `${mode}: project ${id}`);
      await env.assertClientWorks(before.creds.get(`${mode} project ${id}`)!, id, `${mode} project ${id}`);
    }
  }
}

async function assertSameAccounts(env: RunbookEnvironment, before: Before): Promise<void> {
  const keys = (m: Map<number, HeldAccount>) => [...m].map(([id, a]) => [id, a.account, a.roleKey.publicKey]);
  assert.deepEqual(keys(await env.localAccounts()), keys(before.local), "local mode: the same account keys");
  if (env.kubernetes)
    assert.deepEqual(
      keys(await env.kubeAccounts()),
      keys(before.kube),
      "Kubernetes mode: the same account keys",
    );
}

async function assertOldCredsWork(env: RunbookEnvironment, before: Before): Promise<void> {
  for (const [what, creds] of before.creds) {
    const projectId = Number(what.split(" ").at(-1));
    await env.assertClientWorks(creds, projectId, `creds issued before the runbook (${what})`);
  }
}

describe("runbook harness", () => {
  it("names the runbook, the failing block and its stderr", async () => {
    const dir = await mkdtemp(join(tmpdir(), "natsbind-runbook-self-"));
    try {
      const markdown = [
        "# Broken",
        "## Variables",
        "| variable | what |",
        "|---|---|",
        "| `GREETING` | a word |",
        "",
        "```sh",
        'echo "$GREETING"; shared=1',
        "```",
        "",
        "```bash",
        'echo "on stdout, block $shared"',
        'echo "what went wrong" >&2',
        "false",
        "echo never",
        "```",
        "```sh",
        "echo not reached",
        "```",
      ].join("\n");
      await writeFile(join(dir, "broken.md"), markdown);
      const runbook = parseRunbook("broken.md", await readFile(join(dir, "broken.md"), "utf8"));
      const run = await runRunbook(runbook, {
        variables: { GREETING: "hello" },
        path: process.env.PATH ?? "",
      });
      assert.equal(run.ok, false);
      assert.equal(run.failed?.index, 2);
      assert.equal(run.failed?.status, 1);
      assert.equal(run.blocks[0]?.stdout, "hello\n");
      const text = describeFailure(runbook, run);
      assert.match(text, /^runbook broken\.md failed in block 2 of 3 \(line 11\): exited with status 1/);
      assert.match(text, /--- stderr ---\nwhat went wrong/);
      assert.match(text, /--- stdout ---\non stdout, block 1/, "variables carry from block to block");
      assert.equal(run.blocks.length, 2, "block 3 never ran");
      assert.doesNotMatch(run.failed?.stdout ?? "", /never/, "block 2 stopped at its failing command");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses a block that uses an undeclared variable, and a runbook without blocks", () => {
    assert.throws(
      () => parseRunbook("x.md", "# X\n## Variables\n- `A`: a\n\n```sh\necho \"$A $B\" '$C'\n```\n"),
      /x\.md: block 1 \(line 5\) uses \$B, which is neither declared/,
    );
    assert.throws(
      () => parseRunbook("y.md", "# Y\n```yaml\na: b\n```\n"),
      /y\.md: it has no ```sh or ```bash block/,
    );
  });

  it("reads declarations from tables and lists, and variables where bash expands them", () => {
    const markdown = [
      "# Parse",
      "## Variables",
      "| variable | what |",
      "|---|---|",
      "| `FROM_TABLE` | x |",
      "- `FROM_LIST`: y",
      "## Steps",
      "1. A step inside a list item:",
      "",
      "   ```bash",
      '   x="$(jq --arg b "$FROM_TABLE" \'.[$b] | "$NOT_A_VARIABLE"\')" # $NOR_THIS',
      '   for item in $FROM_LIST; do echo "${item:-none} ${#x}"; done',
      "   cat <<'EOF'",
      "   $QUOTED_HEREDOC",
      "   EOF",
      "   cat <<EOF",
      "   $x",
      "   EOF",
      "   ```",
      "```yaml",
      "not: $RUN",
      "```",
    ].join("\n");
    const runbook = parseRunbook("parse.md", markdown);
    assert.deepEqual([...runbook.variables.keys()], ["FROM_TABLE", "FROM_LIST"]);
    assert.equal(runbook.blocks.length, 1, "only sh and bash blocks run");
    assert.equal(runbook.blocks[0]!.line, 10);
    assert.match(runbook.blocks[0]!.code, /^x="\$\(jq/, "the list item's indentation is taken off");
    assert.throws(
      () => parseRunbook("unquoted.md", markdown.replace("$x\n", "$UNDECLARED\n")),
      /uses \$UNDECLARED/,
      "an unquoted heredoc expands",
    );
  });

  it("kills a runbook that hangs, and says which block", async () => {
    const runbook = parseRunbook("slow.md", "# Slow\n```sh\ntrue\n```\n```sh\nsleep 30\n```\n");
    const run = await runRunbook(runbook, { variables: {}, path: process.env.PATH ?? "", timeoutMs: 500 });
    assert.equal(run.ok, false);
    assert.equal(run.failed?.index, 2);
    assert.match(run.reason ?? "", /killed after 500 ms/);
  });
});

describe("runbooks (docs/runbooks)", { concurrency: 1 }, () => {
  it("there are runbooks, each listed in docs/runbooks/README.md", async () => {
    assert.ok(files.length >= 3, `runbooks found: ${files.join(", ")}`);
    const index = await readFile(join(RUNBOOKS, "README.md"), "utf8");
    for (const f of files) assert.ok(index.includes(`(${f})`), `README.md links ${f}`);
  });

  for (const file of files) {
    it(file, { timeout: 360_000 }, async () => {
      const runbook: Runbook = parseRunbook(file, await readFile(join(RUNBOOKS, file), "utf8"));
      const kubernetes = runbook.variables.has("KUBECONFIG");
      if (kubernetes) assert.ok(hasToolBinary("kubectl"), 'kubectl not found: run "make tools"');
      const started = performance.now();
      const env = await startRunbookEnvironment({
        name: file.replace(/\.md$/, ""),
        kubernetes,
        leakedUser: runbook.variables.has("USER_KEY"),
      });
      const setupMs = performance.now() - started;
      try {
        const unknown = [...runbook.variables.keys()].filter((v) => env.variables[v] === undefined);
        assert.deepEqual(unknown, [], `${file} declares variables the test environment does not provide`);
        const before: Before = {
          local: await env.localAccounts(),
          kube: await env.kubeAccounts(),
          creds: new Map(),
        };
        for (const [mode, accounts] of [
          ["local", before.local],
          ["kubernetes", before.kube],
        ] as const)
          for (const [id, held] of accounts) before.creds.set(`${mode} project ${id}`, env.userCreds(held));

        const variables = Object.fromEntries(
          [...runbook.variables.keys()].map((v) => [v, env.variables[v]!]),
        );
        // Above the runbooks' own deadlines (60 s per wait), so a wait that gives up is reported
        // as its block's failure rather than as a killed run.
        const run = await runRunbook(runbook, {
          variables,
          path: env.path,
          env: env.env,
          cwd: env.dir,
          timeoutMs: 240_000,
        });
        if (process.env.RUNBOOK_VERBOSE === "1")
          for (const b of run.blocks)
            console.log(
              `--- ${file} block ${b.index} (${Math.round(b.durationMs)} ms)\n${b.stdout}${b.stderr}`,
            );
        if (!run.ok) assert.fail(`${describeFailure(runbook, run)}\n${env.logs()}`);

        await env.waitConverged().catch((err: unknown) => {
          throw new Error(
            `after ${file}: ${err instanceof Error ? err.message : String(err)}\n${env.logs()}`,
          );
        });
        for (const [mode, accounts] of [
          ["local", await env.localAccounts()],
          ["kubernetes", await env.kubeAccounts()],
        ] as const)
          for (const [id, held] of accounts)
            await env.assertClientWorks(env.userCreds(held), id, `a new user of ${mode} project ${id}`);
        await PROMISES[file]?.(env, before);
        const slowest = [...run.blocks].sort((a, b) => b.durationMs - a.durationMs)[0];
        console.log(
          `${file}: ${run.blocks.length} blocks in ${Math.round(run.durationMs)} ms ` +
            `(environment ${Math.round(setupMs)} ms${kubernetes ? ", with Kubernetes" : ""}; ` +
            `slowest block ${slowest?.index}: ${Math.round(slowest?.durationMs ?? 0)} ms)`,
        );
      } finally {
        await env.stop();
      }
    });
  }
});
