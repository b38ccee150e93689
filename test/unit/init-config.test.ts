import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdtemp, readFile, rm, stat, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decode as stockDecode } from "@nats-io/jwt";
import { INIT_LAYOUT, InitError, initOperator } from "../../src/cli/init.ts";
import { ConfigError, loadConfig, parseConfig, readSecretFile } from "../../src/config/config.ts";
import { decodeJwt } from "../../src/nats/claims.ts";
import { parseCreds } from "../../src/nats/creds.ts";
import { KeyError, NKeyPair } from "../../src/nats/keys.ts";
import { KeyDirectory, readSeedFile } from "../../src/store/key-directory.ts";
import { connectResolver } from "../../src/nats/from-config.ts";
import { ResolverUnavailableError } from "../../src/nats/resolver.ts";
import { readCalloutFiles } from "../../src/credentials/callout.ts";

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), "natsbind-unit-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("natsbind init", () => {
  it("writes an operator with strict signing keys, a system account and user, and configs", async () => {
    const out = join(root, "fresh");
    const result = await initOperator({ outDir: out, now: () => 1_700_000_000_000, natsPort: 14222 });
    for (const secret of [
      INIT_LAYOUT.operatorKey,
      INIT_LAYOUT.operatorSigningKey,
      INIT_LAYOUT.systemAccountKey,
      INIT_LAYOUT.systemAccountSigningKey,
      INIT_LAYOUT.systemCreds,
    ]) {
      assert.equal((await stat(join(out, secret))).mode & 0o777, 0o600, `${secret} mode`);
    }
    assert.equal((await stat(join(out, "operator"))).mode & 0o777, 0o700);
    assert.equal((await stat(join(out, INIT_LAYOUT.accountKeyDir))).mode & 0o777, 0o700);

    const operator = decodeJwt(await readFile(join(out, INIT_LAYOUT.operatorJwt), "utf8"));
    assert.equal(operator.sub, result.operator);
    assert.equal(operator.iss, result.operator);
    assert.equal(operator.iat, 1_700_000_000);
    assert.deepEqual(operator.nats.signing_keys, [result.operatorSigningKey]);
    assert.equal(operator.nats.system_account, result.systemAccount);
    assert.equal(operator.nats.strict_signing_key_usage, true);

    const sys = stockDecode(await readFile(join(out, INIT_LAYOUT.systemAccountJwt), "utf8"));
    assert.equal(sys.iss, result.operatorSigningKey);
    assert.equal(sys.sub, result.systemAccount);

    const creds = parseCreds(await readFile(join(out, INIT_LAYOUT.systemCreds), "utf8"));
    const user = decodeJwt(creds.jwt);
    assert.equal(user.sub, creds.user.publicKey);
    assert.equal(user.nats.issuer_account, result.systemAccount);
    const sysSigning = await readSeedFile(join(out, INIT_LAYOUT.systemAccountSigningKey), "account");
    assert.equal(user.iss, sysSigning.publicKey);

    const signing = await readSeedFile(join(out, INIT_LAYOUT.operatorSigningKey), "operator");
    assert.equal(signing.publicKey, result.operatorSigningKey);

    const serverConf = await readFile(join(out, INIT_LAYOUT.natsServerConfig), "utf8");
    assert.match(serverConf, /type: full/);
    assert.match(serverConf, /allow_delete: true/);
    assert.match(serverConf, new RegExp(`system_account: ${result.systemAccount}`));
    assert.match(serverConf, /port: 14222/);

    const config = await loadConfig(join(out, INIT_LAYOUT.config));
    assert.deepEqual(config.nats.servers, ["nats://127.0.0.1:14222"]);
    assert.equal(config.nats.operatorSigningKey, join(out, INIT_LAYOUT.operatorSigningKey));
    // natsbind issues itself short-lived system users; system.creds is for the operator's tools.
    assert.equal(config.nats.systemSigningKey, join(out, INIT_LAYOUT.systemAccountSigningKey));
    assert.equal(config.nats.systemCreds, undefined);
    assert.equal(config.nats.systemUserLifetime, 3_600_000);
    assert.equal(config.keys.directory, join(out, INIT_LAYOUT.accountKeyDir));
    assert.equal(config.bindings.directory, join(out, INIT_LAYOUT.bindingsDir));
    assert.equal(config.http.listen, "127.0.0.1:8080");
    assert.equal(config.mode, "local");
  });

  it("--callout: a callout account, its service user, response key and sentinel, and both configs", async () => {
    const out = join(root, "callout");
    const result = await initOperator({
      outDir: out,
      now: () => 1_700_000_000_000,
      natsPort: 14223,
      callout: true,
      audience: "nats.example.com",
    });
    assert.ok(result.callout);
    for (const secret of [
      INIT_LAYOUT.calloutAccountKey,
      INIT_LAYOUT.calloutAccountSigningKey,
      INIT_LAYOUT.calloutCreds,
    ]) {
      assert.equal((await stat(join(out, secret))).mode & 0o777, 0o600, `${secret} mode`);
    }
    assert.equal(
      (await readSeedFile(join(out, INIT_LAYOUT.calloutAccountKey), "account")).publicKey,
      result.callout.account,
    );
    const signing = await readSeedFile(join(out, INIT_LAYOUT.calloutAccountSigningKey), "account");
    assert.equal(signing.publicKey, result.callout.signingKey);

    // The account: signed by the operator signing key, one signing key, callout authorization.
    const accountJwt = (await readFile(join(out, INIT_LAYOUT.calloutAccountJwt), "utf8")).trim();
    const account = stockDecode<{
      signing_keys: string[];
      authorization: { auth_users: string[]; allowed_accounts: string[] };
    }>(accountJwt);
    assert.equal(account.iss, result.operatorSigningKey);
    assert.equal(account.sub, result.callout.account);
    assert.equal(account.iat, 1_700_000_000);
    assert.deepEqual(account.nats.signing_keys, [result.callout.signingKey]);
    assert.deepEqual(account.nats.authorization, {
      auth_users: [result.callout.serviceUser],
      allowed_accounts: ["*"],
    });

    // natsbind's service user: may subscribe to the request subject and answer, nothing else.
    const creds = parseCreds(await readFile(join(out, INIT_LAYOUT.calloutCreds), "utf8"));
    assert.equal(creds.user.publicKey, result.callout.serviceUser);
    const service = decodeJwt(creds.jwt);
    assert.equal(service.iss, result.callout.signingKey);
    assert.equal(service.nats.issuer_account, result.callout.account);
    assert.deepEqual(service.nats.sub, { allow: ["$SYS.REQ.USER.AUTH"] });
    assert.deepEqual(service.nats.pub, {});
    assert.deepEqual(service.nats.resp, { max: 1, ttl: 60_000_000_000 });
    assert.equal(service.exp, undefined);

    // The sentinel: bearer, denied everything, a user of the callout account.
    const sentinelJwt = (await readFile(join(out, INIT_LAYOUT.calloutSentinelJwt), "utf8")).trim();
    const sentinel = decodeJwt(sentinelJwt);
    assert.equal(sentinel.iss, result.callout.signingKey);
    assert.equal(sentinel.nats.issuer_account, result.callout.account);
    assert.equal(sentinel.nats.bearer_token, true);
    assert.deepEqual(sentinel.nats.pub, { deny: [">"] });
    assert.deepEqual(sentinel.nats.sub, { deny: [">"] });

    const serverConf = await readFile(join(out, INIT_LAYOUT.natsServerConfig), "utf8");
    assert.ok(serverConf.includes(`default_sentinel: ${JSON.stringify(sentinelJwt)}`));
    assert.match(serverConf, /^max_control_line: 16384$/m);
    assert.ok(serverConf.includes(`${result.callout.account}: ${JSON.stringify(accountJwt)}`), "preloaded");
    assert.match(serverConf, new RegExp(`^  ${result.systemAccount}: "`, "m"));

    const config = await loadConfig(join(out, INIT_LAYOUT.config));
    assert.equal(config.credentials?.audience, "nats.example.com");
    assert.deepEqual(config.credentials?.callout, {
      credsFile: join(out, INIT_LAYOUT.calloutCreds),
      signingKeyFile: join(out, INIT_LAYOUT.calloutAccountSigningKey),
      connections: 2,
    });

    // What natsbind run reads from it.
    const files = await readCalloutFiles(config.credentials!.callout!);
    assert.equal(files.calloutAccount, result.callout.account);
    assert.equal(files.signingKey.publicKey, result.callout.signingKey);

    // No secret in what is shared: the server config (sentinel, account JWT), JWT files, natsbind.yaml.
    for (const shared of [
      INIT_LAYOUT.natsServerConfig,
      INIT_LAYOUT.config,
      INIT_LAYOUT.calloutAccountJwt,
      INIT_LAYOUT.calloutSentinelJwt,
    ]) {
      const text = await readFile(join(out, shared), "utf8");
      assert.ok(!/\bS[OAU][A-Z2-7]{56}\b/.test(text), `${shared} contains something seed-shaped`);
    }
  });

  it("--callout defaults the audience to natsbind, refuses a bad one, and plain init writes no callout", async () => {
    const out = join(root, "callout-default");
    await initOperator({ outDir: out, callout: true });
    assert.equal((await loadConfig(join(out, INIT_LAYOUT.config))).credentials?.audience, "natsbind");
    await assert.rejects(
      initOperator({ outDir: join(root, "callout-bad"), callout: true, audience: "two words" }),
      /init: the audience must be 1 to 512 characters without whitespace/,
    );
    await assert.rejects(stat(join(root, "callout-bad")), /ENOENT/, "nothing written for a bad audience");

    const plain = join(root, "plain");
    const result = await initOperator({ outDir: plain });
    assert.equal(result.callout, undefined);
    assert.equal((await loadConfig(join(plain, INIT_LAYOUT.config))).credentials, undefined);
    const serverConf = await readFile(join(plain, INIT_LAYOUT.natsServerConfig), "utf8");
    assert.doesNotMatch(serverConf, /default_sentinel|max_control_line/);
    await assert.rejects(stat(join(plain, INIT_LAYOUT.calloutCreds)), /ENOENT/);
  });

  it("never prints secrets into the files meant to be shared", async () => {
    const out = join(root, "shared");
    await initOperator({ outDir: out });
    const seeds = await Promise.all(
      [INIT_LAYOUT.operatorKey, INIT_LAYOUT.operatorSigningKey, INIT_LAYOUT.systemAccountKey].map(async (p) =>
        (await readFile(join(out, p), "utf8")).trim(),
      ),
    );
    for (const shared of [
      INIT_LAYOUT.operatorJwt,
      INIT_LAYOUT.natsServerConfig,
      INIT_LAYOUT.config,
      INIT_LAYOUT.systemAccountJwt,
    ]) {
      const text = await readFile(join(out, shared), "utf8");
      for (const seed of seeds) assert.ok(!text.includes(seed), `${shared} contains a seed`);
      assert.ok(!/\bS[OAU][A-Z2-7]{56}\b/.test(text), `${shared} contains something seed-shaped`);
    }
  });

  it("refuses to overwrite existing keys without --force, and replaces them with it", async () => {
    const out = join(root, "twice");
    const first = await initOperator({ outDir: out });
    await assert.rejects(initOperator({ outDir: out }), (err: Error) => {
      assert.ok(err instanceof InitError);
      assert.match(err.message, /already holds keys; refusing to overwrite them\. Pass --force/);
      return true;
    });
    assert.equal(
      (await readSeedFile(join(out, INIT_LAYOUT.operatorKey), "operator")).publicKey,
      first.operator,
    );
    const second = await initOperator({ outDir: out, force: true });
    assert.notEqual(second.operator, first.operator);
    assert.equal(
      (await readSeedFile(join(out, INIT_LAYOUT.operatorKey), "operator")).publicKey,
      second.operator,
    );
  });

  it("refuses a non-empty directory and a file in place of the directory", async () => {
    const out = join(root, "busy");
    await mkdir(out);
    await writeFile(join(out, "notes.txt"), "hello");
    await assert.rejects(
      initOperator({ outDir: out }),
      /is not empty \(notes\.txt\); choose an empty directory or pass --force/,
    );
    await assert.rejects(initOperator({ outDir: join(out, "notes.txt") }), /exists and is not a directory/);
  });

  it(
    "reports an unwritable directory clearly",
    { skip: process.getuid?.() === 0 ? "root can write anywhere" : false },
    async () => {
      const out = join(root, "readonly");
      await mkdir(out);
      await chmod(out, 0o500);
      await assert.rejects(initOperator({ outDir: out }), /is not writable/);
    },
  );

  it("reports a directory it cannot create", async () => {
    const blocker = join(root, "blocker");
    await writeFile(blocker, "");
    await assert.rejects(
      initOperator({ outDir: join(blocker, "sub") }),
      /init: cannot create .*blocker\/sub: ENOTDIR/,
    );
  });
});

const SYSTEM_ACCOUNT = NKeyPair.generate("account").publicKey;
const signingKeyNats = {
  servers: ["nats://127.0.0.1:4222"],
  systemSigningKey: "operator/sys-signing.nk",
  operatorSigningKey: "k.nk",
  operatorJwt: "o.jwt",
};

describe("config", () => {
  const valid = {
    nats: {
      servers: ["nats://127.0.0.1:4222"],
      systemCreds: "s.creds",
      operatorSigningKey: "k.nk",
      operatorJwt: "o.jwt",
    },
  };

  it("takes a system account signing key instead of creds, resolving its path", () => {
    const config = parseConfig({ nats: signingKeyNats }, "natsbind.yaml", "/etc/natsbind");
    assert.equal(config.nats.systemSigningKey, "/etc/natsbind/operator/sys-signing.nk");
    assert.equal(config.nats.systemCreds, undefined);
    assert.equal(config.nats.systemUserLifetime, undefined);
    const explicit = parseConfig(
      {
        nats: {
          ...signingKeyNats,
          systemAccount: SYSTEM_ACCOUNT,
          systemUserLifetime: "10s",
          timeoutMs: 3000,
        },
      },
      "natsbind.yaml",
      "/",
    );
    assert.equal(explicit.nats.systemAccount, SYSTEM_ACCOUNT);
    assert.equal(explicit.nats.systemUserLifetime, 10_000);
  });

  it("fills defaults and resolves paths against the file's directory", () => {
    const config = parseConfig(valid, "natsbind.yaml", "/etc/natsbind");
    assert.equal(config.mode, "local");
    assert.equal(config.nats.timeoutMs, 5000);
    assert.equal(config.nats.systemCreds, "/etc/natsbind/s.creds");
    assert.equal(config.keys.directory, "/etc/natsbind/keys");
    assert.equal(config.bindings.directory, "/etc/natsbind/bindings");
    assert.equal(config.nats.operatorJwt, "/etc/natsbind/o.jwt");
    const { operatorJwt: _omitted, ...withoutJwt } = valid.nats;
    assert.equal(parseConfig({ nats: withoutJwt }, "c", "/").nats.operatorJwt, undefined);
  });

  const bad: Array<[string, unknown, RegExp]> = [
    ["a missing nats section", {}, /natsbind\.yaml: nats: /],
    [
      "an http URL",
      { nats: { ...valid.nats, servers: ["http://x"] } },
      /nats\.servers\.0: must be a nats:\/\//,
    ],
    ["an unknown field", { ...valid, colour: "blue" }, /\(top level\): Unrecognized key: "colour"/],
    ["a tiny timeout", { nats: { ...valid.nats, timeoutMs: 5 } }, /nats\.timeoutMs: /],
    ["an unknown mode", { ...valid, mode: "cloud" }, /mode: /],
    [
      "neither systemCreds nor systemSigningKey",
      { nats: { servers: valid.nats.servers, operatorSigningKey: "k.nk" } },
      /nats\.systemSigningKey: set nats\.systemSigningKey \(natsbind issues itself short-lived system users\) or nats\.systemCreds/,
    ],
    [
      "both systemCreds and systemSigningKey",
      { nats: { ...valid.nats, systemSigningKey: "sys.nk" } },
      /nats\.systemCreds: set only one of nats\.systemCreds and nats\.systemSigningKey/,
    ],
    [
      "systemAccount without systemSigningKey",
      { nats: { ...valid.nats, systemAccount: "A".repeat(56) } },
      /nats\.systemAccount: /,
    ],
    [
      "systemUserLifetime without systemSigningKey",
      { nats: { ...valid.nats, systemUserLifetime: "10m" } },
      /nats\.systemUserLifetime: is used only with nats\.systemSigningKey/,
    ],
    [
      "systemSigningKey without operatorJwt or systemAccount",
      { nats: { servers: valid.nats.servers, operatorSigningKey: "k.nk", systemSigningKey: "sys.nk" } },
      /nats\.systemAccount: is required with nats\.systemSigningKey when nats\.operatorJwt is not set/,
    ],
    [
      "a systemAccount that is not an account key",
      {
        nats: {
          servers: valid.nats.servers,
          operatorSigningKey: "k.nk",
          systemSigningKey: "s",
          systemAccount: "SYS",
        },
      },
      /nats\.systemAccount: must be an account public key \(A\.\.\.\)/,
    ],
    [
      "a systemUserLifetime over an hour",
      { nats: { ...signingKeyNats, systemUserLifetime: "61m" } },
      /nats\.systemUserLifetime: /,
    ],
    [
      "a systemUserLifetime under 10s",
      { nats: { ...signingKeyNats, systemUserLifetime: "9s" } },
      /nats\.systemUserLifetime: must be at least 10000 ms/,
    ],
    [
      "a systemUserLifetime under 3 x timeoutMs",
      { nats: { ...signingKeyNats, systemUserLifetime: "20s", timeoutMs: 7_000 } },
      /nats\.systemUserLifetime: must be at least 3 x nats\.timeoutMs \(21000 ms\)/,
    ],
  ];
  for (const [what, doc, message] of bad) {
    it(`rejects ${what} with the field path`, () => {
      assert.throws(
        () => parseConfig(doc, "natsbind.yaml", "/"),
        (err: Error) => err instanceof ConfigError && message.test(err.message),
      );
    });
  }

  it("validates the gitlab section and resolves its files", () => {
    const config = parseConfig(
      { ...valid, gitlab: { url: "https://gitlab.example.com", tokenFile: "secrets/token" } },
      "natsbind.yaml",
      "/etc/natsbind",
    );
    assert.deepEqual(config.gitlab, {
      url: "https://gitlab.example.com",
      tokenFile: "/etc/natsbind/secrets/token",
      resyncInterval: 600_000,
      requestTimeout: 30_000,
    });
    assert.throws(
      () => parseConfig({ ...valid, gitlab: { url: "gitlab", tokenFile: "t" } }, "natsbind.yaml", "/"),
      /gitlab\.url: must be an http:\/\/ or https:\/\/ URL/,
    );
    assert.throws(
      () =>
        parseConfig(
          { ...valid, gitlab: { url: "https://g", tokenFile: "t", resyncInterval: "1s" } },
          "c",
          "/",
        ),
      /gitlab\.resyncInterval: must be at least 30000 ms/,
    );
  });

  it("parses durations and listen addresses", () => {
    const withGitLab = (resyncInterval: string) => ({
      ...valid,
      gitlab: { url: "https://g", tokenFile: "t", resyncInterval },
    });
    assert.equal(parseConfig(withGitLab("90s"), "c", "/").gitlab?.resyncInterval, 90_000);
    assert.throws(
      () => parseConfig(withGitLab("soon"), "c", "/"),
      /gitlab\.resyncInterval: "soon" is not a duration/,
    );
    assert.equal(
      parseConfig({ ...valid, http: { listen: "[::1]:9000" } }, "c", "/").http.listen,
      "[::1]:9000",
    );
    assert.throws(
      () => parseConfig({ ...valid, http: { listen: "8080" } }, "c", "/"),
      /http\.listen: must be "host:port"/,
    );
    assert.throws(
      () => parseConfig({ ...valid, http: { listen: "x:70000" } }, "c", "/"),
      /http\.listen: port must be <= 65535/,
    );
  });

  it("reads secret files bounded and trimmed, naming the file and never the content", async () => {
    const file = join(root, "token");
    await writeFile(file, "glpat-secret-value\n");
    assert.equal(await readSecretFile(file, "GitLab token"), "glpat-secret-value");
    await writeFile(file, "  \n");
    await assert.rejects(readSecretFile(file, "GitLab token"), /GitLab token file .*token is empty/);
    await writeFile(file, "two words");
    await assert.rejects(
      readSecretFile(file, "GitLab token"),
      (err: Error) => /holds more than one word/.test(err.message) && !err.message.includes("two"),
    );
    await writeFile(file, "x".repeat(5000));
    await assert.rejects(readSecretFile(file, "GitLab token"), /larger than 4096 bytes/);
    await assert.rejects(
      readSecretFile(join(root, "absent"), "GitLab token"),
      /cannot read GitLab token file .*absent: ENOENT/,
    );
  });

  it("rejects unreadable, oversized and non-YAML files", async () => {
    await assert.rejects(
      loadConfig(join(root, "missing.yaml")),
      /cannot read config .*missing\.yaml: ENOENT/,
    );
    const big = join(root, "big.yaml");
    await writeFile(big, `# ${"x".repeat(300 * 1024)}\n`);
    await assert.rejects(loadConfig(big), /larger than 262144 bytes/);
    const broken = join(root, "broken.yaml");
    await writeFile(broken, "nats: [unclosed\n");
    await assert.rejects(loadConfig(broken), /broken\.yaml: not valid YAML/);
    // Issue 9, finding 9: nesting is bounded before the YAML parser runs.
    const deep = join(root, "deep.yaml");
    await writeFile(deep, `nats: ${"[".repeat(240 * 1024)}\n`);
    await assert.rejects(
      loadConfig(deep),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.message === `${deep}: nests deeper than 64 levels at line 1; not parsed`,
    );
  });
});

describe("files natsbind.yaml names (nats.systemCreds, nats.operatorJwt)", () => {
  // Issue 9, finding 10: both were read with readFile, unbounded: a wrong path (a log, /dev/zero)
  // was loaded whole, or read forever, before anything checked it.
  it("are read bounded: an oversize or non-regular file is refused, naming the file, before connecting", async () => {
    const out = join(root, "bounded");
    await initOperator({ outDir: out, now: () => 1_700_000_000_000, natsPort: 1 });
    const loaded = await loadConfig(join(out, "natsbind.yaml"));
    // nats.systemCreds instead of init's nats.systemSigningKey (tested below).
    const systemCreds = join(out, INIT_LAYOUT.systemCreds);
    const { systemSigningKey: _signingKey, ...nats } = loaded.nats;
    const config = { ...loaded, nats: { ...nats, systemCreds } };
    const { operatorJwt } = config.nats;
    assert.ok(operatorJwt);
    const creds = await readFile(systemCreds, "utf8");
    const huge = `${creds}${"x".repeat(1024 * 1024)}`;

    await writeFile(systemCreds, huge);
    await assert.rejects(
      connectResolver(config.nats),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.message === `nats.systemCreds file ${systemCreds} is larger than 65536 bytes` &&
        !err.message.includes("SU"),
    );
    await writeFile(systemCreds, creds);

    await writeFile(operatorJwt, `${"eyJ".repeat(100_000)}\n`);
    await assert.rejects(
      connectResolver(config.nats),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.message === `nats.operatorJwt file ${operatorJwt} is larger than 65536 bytes`,
    );

    await assert.rejects(
      connectResolver({ ...config.nats, systemCreds: "/dev/zero" }),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.message === "cannot read nats.systemCreds file /dev/zero: not a regular file",
    );
    await assert.rejects(
      connectResolver({ ...config.nats, operatorJwt: join(out, "missing.jwt") }),
      (err: unknown) =>
        err instanceof ConfigError && /nats\.operatorJwt file .*missing\.jwt: ENOENT/.test(err.message),
    );
  });

  it("nats.systemSigningKey is read bounded and checked, its errors name the field and never the seed", async () => {
    const out = join(root, "bounded-signing-key");
    const result = await initOperator({ outDir: out, now: () => 1_700_000_000_000, natsPort: 1 });
    const config = await loadConfig(join(out, "natsbind.yaml"));
    const keyFile = config.nats.systemSigningKey;
    assert.ok(keyFile);
    const seed = (await readFile(keyFile, "utf8")).trim();
    const operatorSeed = (await readFile(join(out, INIT_LAYOUT.operatorSigningKey), "utf8")).trim();
    const noSecret = (err: unknown): boolean =>
      err instanceof Error &&
      !`${err.message} ${String((err.cause as Error | undefined)?.message)}`.includes(seed.slice(2, 20)) &&
      !err.message.includes(operatorSeed.slice(2, 20));
    const rejects = (nats: typeof config.nats, message: RegExp): Promise<void> =>
      assert.rejects(
        connectResolver(nats),
        (err: unknown) => err instanceof ConfigError && message.test(err.message) && noSecret(err),
      );

    await writeFile(keyFile, `${seed}\n${"x".repeat(4096)}`);
    await rejects(config.nats, /^nats\.systemSigningKey: key file .* is larger than 1024 bytes$/);
    await rejects(
      { ...config.nats, systemSigningKey: "/dev/zero" },
      /^nats\.systemSigningKey: .*not a regular file/,
    );
    await rejects(
      { ...config.nats, systemSigningKey: join(out, "absent.nk") },
      /^nats\.systemSigningKey: .*ENOENT/,
    );
    await writeFile(keyFile, `${operatorSeed}\n`);
    await rejects(config.nats, /^nats\.systemSigningKey: .*expected an account key, got an operator key/);
    // One character in the middle changed: the CRC-16 catches every such change. (A changed last
    // character can leave the seed valid: "A" was its last character once in 32 runs, and part of
    // that character's bits are padding.)
    const corrupt = `${seed.slice(0, 10)}${seed[10] === "B" ? "C" : "B"}${seed.slice(11)}`;
    await writeFile(keyFile, `${corrupt}\n`);
    await rejects(config.nats, /^nats\.systemSigningKey: .*is not a valid nkey seed/);
    await writeFile(keyFile, `${seed}\n`);

    // The system account: the operator JWT's, or nats.systemAccount, which must agree with it.
    const other = NKeyPair.generate("account").publicKey;
    await rejects(
      { ...config.nats, systemAccount: other },
      new RegExp(
        `^nats\\.systemAccount ${other} is not the system account of nats\\.operatorJwt \\(${result.systemAccount}\\)$`,
      ),
    );
    const { operatorJwt: _jwt, ...withoutJwt } = config.nats;
    // Without the operator JWT, nats.systemAccount is taken as given: the connect (port 1) fails,
    // and its error names the issued user and signing key, never a seed.
    await assert.rejects(
      connectResolver({ ...withoutJwt, systemAccount: result.systemAccount }),
      (err: unknown) =>
        err instanceof ResolverUnavailableError &&
        /^cannot connect to NATS at nats:\/\/127\.0\.0\.1:1 as natsbind's system user U[A-Z2-7]{55} \(signed by A[A-Z2-7]{55}\)/.test(
          err.message,
        ) &&
        noSecret(err),
    );
  });
});

describe("key directory", () => {
  it("stores seeds 0600 by public key and loads them back", async () => {
    const store = new KeyDirectory(join(root, "keys"));
    const key = NKeyPair.generate("account");
    await store.save(key);
    assert.equal((await stat(join(root, "keys", `${key.publicKey}.nk`))).mode & 0o777, 0o600);
    assert.equal((await store.load(key.publicKey, "account"))?.publicKey, key.publicKey);
    assert.deepEqual(await store.list(), [key.publicKey]);
    assert.equal(await store.load(NKeyPair.generate("account").publicKey), undefined);
  });

  it("refuses a seed file holding another key, or the wrong kind", async () => {
    const store = new KeyDirectory(join(root, "swapped"));
    const a = NKeyPair.generate("account");
    const b = NKeyPair.generate("account");
    await store.save(a);
    await writeFile(join(root, "swapped", `${b.publicKey}.nk`), new TextDecoder().decode(a.getSeed()));
    await assert.rejects(store.load(b.publicKey), /holds the seed of A[A-Z0-9]+, not A/);
    await assert.rejects(store.load(a.publicKey, "user"), KeyError);
  });
});
