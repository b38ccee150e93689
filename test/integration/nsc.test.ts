// Cross-checks natsbind's JWTs against nsc, the reference NATS CLI (Go nats-io/jwt): nsc verifies
// the signatures of the operator and account JWTs, decodes them into its own claim structs and shows
// the same fields we wrote, imports them into an nsc store whose `nsc validate -A` finds no issues,
// and rejects a JWT whose body was changed after signing.
//
// nsc runs with -H <temp dir> and HOME/XDG_* pointing into the temp dir, so it never reads or writes
// ~/.config/nats or ~/.local/share/nats. Its nsc.json is written up front with a fresh last_update so
// nsc does not check GitHub for a newer version.
//
// `nsc describe jwt --json` prints the verified JWT body as it is (unknown fields included), so the
// field-by-field agreement is checked on nsc's table view, which nsc renders from the claims decoded
// into nats-io/jwt's Go structs.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { INIT_LAYOUT, initOperator } from "../../src/cli/init.ts";
import type { InitResult } from "../../src/cli/init.ts";
import { accountClaims, decodeJwt, signJwt, userClaims } from "../../src/nats/claims.ts";
import type { DesiredAccount, JwtClaims } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { hasToolBinary, removeDir, tempDir, toolBinary } from "../support/process.ts";

const NSC_TIMEOUT_MS = 30_000;

const SKIP = hasToolBinary("nsc")
  ? false
  : 'nsc binary not found (.cache/bin/nsc, or set NSC_BIN): run "make tools" to build it';

interface NscResult {
  args: string[];
  status: number | null;
  stdout: string;
  stderr: string;
  /** stdout and stderr together (nsc prints status lines to either). */
  output: string;
}

/** An isolated nsc home: config, stores and keys all under one temp directory. */
class Nsc {
  readonly bin: string;
  readonly home: string;

  constructor(bin: string, home: string) {
    this.bin = bin;
    this.home = home;
  }

  /** Creates the home and an nsc.json that keeps nsc off GitHub (last_update is now). */
  async init(): Promise<void> {
    await mkdir(this.home, { recursive: true, mode: 0o700 });
    const config = {
      store_root: this.home,
      operator: "",
      account: "",
      github_updates: "nats-io/nsc",
      last_update: Math.floor(Date.now() / 1000),
    };
    await writeFile(join(this.home, "nsc.json"), JSON.stringify(config));
  }

  /** Runs nsc without a shell; never throws on a nonzero exit (see ok()). */
  run(args: string[]): NscResult {
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const name of ["NSC_HOME", "NKEYS_PATH", "NSC_CWD_ONLY", "NATS_CA", "NATS_KEY", "NATS_CERT"]) {
      delete env[name];
    }
    env.HOME = this.home;
    env.XDG_CONFIG_HOME = join(this.home, "xdg-config");
    env.XDG_DATA_HOME = join(this.home, "xdg-data");
    const fullArgs = ["-H", this.home, ...args];
    const r = spawnSync(this.bin, fullArgs, {
      cwd: this.home,
      env,
      encoding: "utf8",
      timeout: NSC_TIMEOUT_MS,
      killSignal: "SIGKILL",
      stdio: ["ignore", "pipe", "pipe"],
      maxBuffer: 16 * 1024 * 1024,
    });
    if (r.error) throw new Error(`nsc ${args.join(" ")}: ${r.error.message}`, { cause: r.error });
    return {
      args,
      status: r.status,
      stdout: r.stdout,
      stderr: r.stderr,
      output: `${r.stdout}\n\n${r.stderr}`,
    };
  }

  /** Runs nsc and asserts exit code 0. */
  ok(args: string[]): NscResult {
    const r = this.run(args);
    assert.equal(r.status, 0, `nsc ${args.join(" ")} failed:\n${describeResult(r)}`);
    return r;
  }
}

function describeResult(r: NscResult): string {
  return `exit ${r.status}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
}

interface Table {
  title: string | undefined;
  rows: string[][];
}

/**
 * Parses nsc's box tables (blocks separated by blank lines): a one-cell row before any other row is
 * the title, every other `| a | b |` row is a row of trimmed cells.
 */
function parseTables(text: string): Table[] {
  const tables: Table[] = [];
  let current: Table | undefined;
  for (const line of text.split("\n")) {
    const trimmed = line.trim();
    if (trimmed.length === 0) {
      current = undefined;
      continue;
    }
    if (!trimmed.startsWith("|")) continue;
    const cells = trimmed
      .slice(1, -1)
      .split("|")
      .map((c) => c.trim());
    if (!current) {
      current = { title: undefined, rows: [] };
      tables.push(current);
    }
    if (cells.length === 1 && current.title === undefined && current.rows.length === 0)
      current.title = cells[0];
    else current.rows.push(cells);
  }
  return tables;
}

function table(tables: Table[], title: string): Table {
  const found = tables.find((t) => t.title === title);
  assert.ok(found, `nsc output has no table "${title}"; tables: ${tables.map((t) => t.title).join(", ")}`);
  return found;
}

/** Key/value rows of a two-column table; a row with an empty key continues the previous key. */
function fields(t: Table): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let last: string | undefined;
  for (const row of t.rows) {
    if (row.length !== 2) continue;
    const [key, value] = row as [string, string];
    if (key.length > 0) last = key;
    if (last === undefined) continue;
    const values = out.get(last) ?? [];
    if (value.length > 0) values.push(value);
    out.set(last, values);
  }
  return out;
}

/** The single value of a field (empty string for an empty cell). */
function field(f: Map<string, string[]>, key: string): string {
  const values = f.get(key);
  assert.ok(values, `field "${key}" missing; fields: ${[...f.keys()].join(", ")}`);
  assert.ok(values.length <= 1, `field "${key}" has several values: ${values.join(", ")}`);
  return values[0] ?? "";
}

/** Rows of a multi-column table as objects keyed by the header row. */
function records(t: Table): Array<Record<string, string>> {
  const [header, ...rows] = t.rows;
  assert.ok(header, `table "${t.title}" is empty`);
  return rows.map((row) => Object.fromEntries(header.map((h, i) => [h, row[i] ?? ""])));
}

/** The body of a JWT, decoded without verification (for tampering). */
function rawBody(jwt: string): JwtClaims {
  const body = jwt.split(".")[1];
  assert.ok(body);
  return JSON.parse(Buffer.from(body, "base64url").toString("utf8")) as JwtClaims;
}

const SCOPED_TEMPLATE = { pub: { allow: ["build.{{tag(project)}}.>"] }, sub: { allow: ["_INBOX.>"] } };
const MiB = 1024 * 1024;

describe("nsc accepts natsbind's operator and account JWTs", { skip: SKIP, timeout: 120_000 }, () => {
  let root = "";
  let nscBin = "";
  let initDir = "";
  let init: InitResult;
  let operatorJwt = "";
  let systemAccountJwt = "";
  let operatorSigning: NKeyPair;
  let iat = 0;

  // The account under test ("group-project") and the account it imports a service from.
  const account = NKeyPair.generate("account");
  const plainSigningKey = NKeyPair.generate("account");
  const scopedSigningKey = NKeyPair.generate("account");
  const provider = NKeyPair.generate("account");
  const providerSigningKey = NKeyPair.generate("account");
  const ciUser = NKeyPair.generate("user");
  let desired: DesiredAccount;
  let accountJwt = "";
  let providerJwt = "";
  let ciUserJwt = "";
  const files = {
    account: "",
    provider: "",
    ciUser: "",
  };

  before(async () => {
    // toolBinary honours NSC_BIN, else .cache/bin/nsc.
    nscBin = process.env.NSC_BIN || toolBinary("nsc");
    root = await tempDir("nsc");
    initDir = join(root, "init");
    iat = Math.floor(Date.now() / 1000);
    init = await initOperator({ outDir: initDir, now: () => iat * 1000 });
    operatorJwt = (await readFile(join(initDir, INIT_LAYOUT.operatorJwt), "utf8")).trim();
    systemAccountJwt = (await readFile(join(initDir, INIT_LAYOUT.systemAccountJwt), "utf8")).trim();
    operatorSigning = NKeyPair.fromSeed(
      await readFile(join(initDir, INIT_LAYOUT.operatorSigningKey), "utf8"),
      "operator",
      INIT_LAYOUT.operatorSigningKey,
    );
    assert.equal(operatorSigning.publicKey, init.operatorSigningKey);

    desired = {
      publicKey: account.publicKey,
      name: "group-project",
      description: "CI account of group/project",
      tags: ["Team:Build", "env:ci"],
      limits: {
        connections: 10,
        subscriptions: 100,
        payload: MiB,
        data: -1,
        jetstream: {
          memoryStorage: MiB,
          diskStorage: 10 * MiB,
          streams: 5,
          consumers: 20,
          maxAckPending: 1000,
          diskMaxStreamBytes: 2 * MiB,
          maxBytesRequired: true,
        },
      },
      signingKeys: [
        plainSigningKey.publicKey,
        { key: scopedSigningKey.publicKey, role: "ci", description: "CI jobs", template: SCOPED_TEMPLATE },
      ],
      exports: [{ name: "events", subject: "events.>", type: "stream", description: "build events" }],
      imports: [
        {
          name: "platform-api",
          subject: "platform.api",
          account: provider.publicKey,
          type: "service",
          localSubject: "api.platform",
        },
      ],
    };
    accountJwt = signJwt(accountClaims(desired, operatorSigning.publicKey), operatorSigning, iat);
    providerJwt = signJwt(
      accountClaims(
        {
          publicKey: provider.publicKey,
          name: "platform",
          signingKeys: [providerSigningKey.publicKey],
          exports: [{ name: "platform-api", subject: "platform.>", type: "service" }],
        },
        operatorSigning.publicKey,
      ),
      operatorSigning,
      iat,
    );
    // A user of the scoped signing key: carries no permissions of its own.
    ciUserJwt = signJwt(
      userClaims({
        publicKey: ciUser.publicKey,
        name: "ci-job-1",
        account: account.publicKey,
        issuer: scopedSigningKey.publicKey,
        scoped: true,
        tags: ["project:group.project"],
      }),
      scopedSigningKey,
      iat,
    );
    files.account = join(root, "group-project.jwt");
    files.provider = join(root, "platform.jwt");
    files.ciUser = join(root, "ci-job-1.jwt");
    await writeFile(files.account, `${accountJwt}\n`);
    await writeFile(files.provider, `${providerJwt}\n`);
    await writeFile(files.ciUser, `${ciUserJwt}\n`);
  });

  after(async () => {
    if (root) await removeDir(root);
  });

  async function nscHome(name: string): Promise<Nsc> {
    const nsc = new Nsc(nscBin, join(root, name));
    await nsc.init();
    return nsc;
  }

  it("describe jwt verifies operator.jwt from init and reads its fields as written", async () => {
    const nsc = await nscHome("nsc-describe-operator");
    const file = join(initDir, INIT_LAYOUT.operatorJwt);

    const json = JSON.parse(nsc.ok(["describe", "jwt", "-f", file, "--json"]).stdout) as JwtClaims;
    assert.deepEqual(json, decodeJwt(operatorJwt), "nsc sees the same operator JWT body");

    const tables = parseTables(nsc.ok(["describe", "jwt", "-f", file]).stdout);
    const f = fields(table(tables, "Operator Details"));
    assert.equal(field(f, "Name"), "natsbind");
    assert.equal(field(f, "Operator ID"), init.operator);
    assert.equal(field(f, "Issuer ID"), init.operator, "the operator JWT is self-signed");
    assert.equal(field(f, "System Account"), init.systemAccount);
    assert.equal(field(f, "Require Signing Keys"), "true", "strict_signing_key_usage");
    assert.deepEqual(f.get("Signing Keys"), [init.operatorSigningKey]);
    assert.equal(field(f, "Expires"), "");
  });

  it("describe jwt verifies system-account.jwt from init", async () => {
    const nsc = await nscHome("nsc-describe-sys");
    const file = join(initDir, INIT_LAYOUT.systemAccountJwt);
    const json = JSON.parse(nsc.ok(["describe", "jwt", "-f", file, "--json"]).stdout) as JwtClaims;
    assert.deepEqual(json, decodeJwt(systemAccountJwt));

    const f = fields(table(parseTables(nsc.ok(["describe", "jwt", "-f", file]).stdout), "Account Details"));
    assert.equal(field(f, "Name"), "SYS");
    assert.equal(field(f, "Account ID"), init.systemAccount);
    assert.equal(field(f, "Issuer ID"), init.operatorSigningKey, "signed by the operator signing key");
    assert.equal(f.get("Signing Keys")?.length, 1);
  });

  it("describe jwt verifies an accountClaims JWT and agrees on every field", async () => {
    const nsc = await nscHome("nsc-describe-account");

    const json = JSON.parse(nsc.ok(["describe", "jwt", "-f", files.account, "--json"]).stdout) as JwtClaims;
    assert.deepEqual(json, decodeJwt(accountJwt), "nsc sees the same account JWT body");

    const out = nsc.ok(["describe", "jwt", "-f", files.account]).stdout;
    const tables = parseTables(out);
    const f = fields(table(tables, "Account Details"));
    assert.equal(field(f, "Name"), "group-project");
    assert.equal(field(f, "Account ID"), account.publicKey);
    assert.equal(field(f, "Issuer ID"), init.operatorSigningKey);
    assert.equal(field(f, "Expires"), "");
    assert.deepEqual(f.get("Tags"), ["team:build", "env:ci"], "tags are lower-cased, as nats-io/jwt does");
    assert.equal(field(f, "Description"), "CI account of group/project");
    // nats-io/jwt keeps signing keys in a Go map: nsc lists them in random order.
    assert.deepEqual(
      [...(f.get("Signing Keys") ?? [])].sort(),
      [plainSigningKey.publicKey, scopedSigningKey.publicKey].sort(),
    );
    // Account limits.
    assert.equal(field(f, "Max Connections"), "10");
    assert.equal(field(f, "Max Subscriptions"), "100");
    assert.equal(field(f, "Max Msg Payload"), "1.0 MB (1048576 bytes)");
    assert.equal(field(f, "Max Data"), "Unlimited");
    assert.equal(field(f, "Max Leaf Node Connections"), "Unlimited");
    assert.equal(field(f, "Max Imports"), "Unlimited");
    assert.equal(field(f, "Max Exports"), "Unlimited");
    assert.equal(field(f, "Exports Allows Wildcards"), "True");
    // JetStream limits.
    assert.equal(field(f, "Jetstream"), "Enabled");
    assert.equal(field(f, "Max Mem Storage"), "1.0 MB");
    assert.equal(field(f, "Max Disk Storage"), "10 MB");
    assert.equal(field(f, "Max Streams"), "5");
    assert.equal(field(f, "Max Consumers"), "20");
    assert.equal(field(f, "Max Ack Pending"), "1000");
    assert.equal(field(f, "Max Bytes"), "required (Stream setting)");
    assert.equal(field(f, "Max Memory Stream"), "Unlimited");
    assert.equal(field(f, "Max Disk Stream"), "2.1 MB (2097152 bytes)");

    // The scoped signing key: role and template subjects (template functions kept verbatim).
    const sk = fields(table(tables, "Scoped Signing Key - Details"));
    assert.equal(field(sk, "Key"), scopedSigningKey.publicKey);
    assert.equal(field(sk, "Role"), "ci");
    assert.equal(field(sk, "Description"), "CI jobs");
    assert.deepEqual(sk.get("Pub Allow"), ["build.{{tag(project)}}.>"]);
    assert.deepEqual(sk.get("Sub Allow"), ["_INBOX.>"]);
    assert.equal(sk.has("Pub Deny"), false);
    assert.equal(sk.has("Sub Deny"), false);
    assert.equal(field(sk, "Max Subs"), "Unlimited");
    assert.equal(field(sk, "Bearer Token"), "No");
    // Only one scoped key: the plain signing key has no details table.
    assert.equal(tables.filter((t) => t.title === "Scoped Signing Key - Details").length, 1);

    const [exp, ...moreExports] = records(table(tables, "Exports"));
    assert.deepEqual(moreExports, []);
    assert.equal(exp?.Name, "events");
    assert.equal(exp?.Type, "Stream");
    assert.equal(exp?.Subject, "events.>");
    assert.equal(exp?.Public, "Yes");

    const [imp, ...moreImports] = records(table(tables, "Imports"));
    assert.deepEqual(moreImports, []);
    assert.equal(imp?.Name, "platform-api");
    assert.equal(imp?.Type, "Service");
    assert.equal(imp?.Remote, "platform.api");
    assert.equal(imp?.Local, "api.platform");
    assert.equal(imp?.["From Account"], provider.publicKey);
  });

  it("a store built from our JWTs imports and validates with no issues", async () => {
    const nsc = await nscHome("nsc-store");
    const added = nsc.ok(["add", "operator", "-u", join(initDir, INIT_LAYOUT.operatorJwt)]);
    assert.match(added.output, /imported operator "natsbind"/u);
    for (const file of [join(initDir, INIT_LAYOUT.systemAccountJwt), files.provider, files.account]) {
      const r = nsc.ok(["import", "account", "--file", file]);
      assert.match(r.output, /account \S+ was successfully imported/u, describeResult(r));
    }
    for (const file of [join(initDir, INIT_LAYOUT.systemCreds), files.ciUser]) {
      const r = nsc.ok(["import", "user", "--file", file]);
      assert.match(r.output, /user \S+ was successfully imported/u, describeResult(r));
    }

    // nsc keeps our JWTs as they are (it did not re-sign them).
    assert.equal(nsc.ok(["describe", "operator", "--raw"]).stdout.trim(), operatorJwt);
    assert.equal(nsc.ok(["describe", "account", "-n", "group-project", "--raw"]).stdout.trim(), accountJwt);
    assert.equal(nsc.ok(["describe", "account", "-n", "SYS", "--raw"]).stdout.trim(), systemAccountJwt);

    const list = records(table(parseTables(nsc.ok(["list", "accounts"]).output), "Accounts"));
    assert.deepEqual(
      list.map((a) => [a.Name, a["Public Key"]]).sort(),
      [
        ["SYS", init.systemAccount],
        ["group-project", account.publicKey],
        ["platform", provider.publicKey],
      ].sort(),
    );

    const user = fields(
      table(
        parseTables(nsc.ok(["describe", "user", "-a", "group-project", "-n", "ci-job-1"]).output),
        "User",
      ),
    );
    assert.equal(field(user, "User ID"), ciUser.publicKey);
    assert.equal(field(user, "Issuer ID"), scopedSigningKey.publicKey);
    assert.equal(field(user, "Issuer Account"), account.publicKey);
    assert.equal(field(user, "Issuer Scoped"), "Yes", "nsc sees the user as issued by the scoped key");
    assert.deepEqual(user.get("Tags"), ["project:group.project"]);

    const validate = nsc.run(["validate", "--all-accounts"]);
    const report = validate.output;
    assert.equal(validate.status, 0, `nsc validate -A found problems:\n${describeResult(validate)}`);
    const results = parseTables(report).map((t) => [t.title, t.rows.map((r) => r.join(" ")).join("; ")]);
    assert.deepEqual(
      results.sort(),
      [
        ['Operator "natsbind"', "No issues found"],
        ['Account "SYS"', "No issues found"],
        ['Account "group-project"', "No issues found"],
        ['Account "platform"', "No issues found"],
      ].sort(),
      report,
    );
  });

  it("rejects an account JWT whose body was changed after signing", async () => {
    const nsc = await nscHome("nsc-tampered");
    const [header, , signature] = accountJwt.split(".");
    const body = rawBody(accountJwt);
    (body.nats.limits as Record<string, unknown>).conn = 1000;
    const tampered = `${header}.${Buffer.from(JSON.stringify(body)).toString("base64url")}.${signature}`;
    const file = join(root, "tampered.jwt");
    await writeFile(file, `${tampered}\n`);

    // Our own decoder refuses it too.
    assert.throws(() => decodeJwt(tampered));

    const described = nsc.run(["describe", "jwt", "-f", file]);
    assert.notEqual(described.status, 0, `nsc accepted a tampered JWT:\n${describeResult(described)}`);
    assert.match(described.output, /claim failed V2 signature verification/u);
    assert.doesNotMatch(described.stdout, /Account Details/u);

    nsc.ok(["add", "operator", "-u", join(initDir, INIT_LAYOUT.operatorJwt)]);
    const imported = nsc.run(["import", "account", "--file", file]);
    assert.notEqual(imported.status, 0, `nsc imported a tampered JWT:\n${describeResult(imported)}`);
    assert.match(imported.output, /signature verification/u);
  });

  it("flags accounts the operator would not trust", async () => {
    const nsc = await nscHome("nsc-untrusted");
    nsc.ok(["add", "operator", "-u", join(initDir, INIT_LAYOUT.operatorJwt)]);
    nsc.ok(["import", "account", "--file", join(initDir, INIT_LAYOUT.systemAccountJwt)]);

    // Signed by the operator identity key: valid signature, but strict_signing_key_usage forbids it.
    const operatorIdentity = NKeyPair.fromSeed(
      await readFile(join(initDir, INIT_LAYOUT.operatorKey), "utf8"),
      "operator",
      INIT_LAYOUT.operatorKey,
    );
    const byIdentity = NKeyPair.generate("account");
    const byIdentityFile = join(root, "by-identity.jwt");
    await writeFile(
      byIdentityFile,
      signJwt(
        accountClaims(
          { publicKey: byIdentity.publicKey, name: "by-identity", signingKeys: [] },
          operatorIdentity.publicKey,
        ),
        operatorIdentity,
        iat,
      ),
    );
    nsc.ok(["import", "account", "--file", byIdentityFile]);
    const validate = nsc.run(["validate", "--all-accounts"]);
    const report = validate.output;
    assert.notEqual(validate.status, 0, `nsc validate accepted an identity-signed account:\n${report}`);
    const byTitle = new Map(
      parseTables(report).map((t) => [t.title, t.rows.map((r) => r.join(" ")).join("; ")]),
    );
    assert.equal(byTitle.get('Account "SYS"'), "No issues found", report);
    assert.match(
      byTitle.get('Account "by-identity"') ?? "",
      /Account is not issued by operator or operator signing keys/u,
      report,
    );

    // Signed by another operator's key: nsc refuses to import it at all.
    const stranger = NKeyPair.generate("operator");
    const strangerFile = join(root, "stranger.jwt");
    await writeFile(
      strangerFile,
      signJwt(
        accountClaims(
          { publicKey: NKeyPair.generate("account").publicKey, name: "stranger", signingKeys: [] },
          stranger.publicKey,
        ),
        stranger,
        iat,
      ),
    );
    const imported = nsc.run(["import", "account", "--file", strangerFile]);
    assert.notEqual(imported.status, 0, describeResult(imported));
    assert.match(imported.output, /can only import account signed by same operator/u);
  });
});
