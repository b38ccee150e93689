// Operator signing-key rotation without servers: editing the operator JWT, the offline
// add-signing-key files, installing a key, the live keys of a running natsbind, the signing gate
// and the pure views (account copies, next steps).
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFile, stat, writeFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { decode as stockDecode } from "@nats-io/jwt";
import { accountClaims, decodeJwt, operatorClaims, signJwt, type JwtClaims } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import {
  OperatorJwtError,
  addSigningKey,
  parseOperatorJwt,
  removeSigningKey,
  signOperatorJwt,
} from "../../src/operator/operator-jwt.ts";
import {
  RotationRefusedError,
  addSigningKey as addSigningKeyFiles,
  installSigningKey,
  nextSteps,
  previousKeyFile,
} from "../../src/operator/phases.ts";
import { LiveOperatorKeys, SigningGate } from "../../src/operator/live-keys.ts";
import { viewAccount } from "../../src/operator/inventory.ts";
import { removeDir, tempDir } from "../support/process.ts";
import { fixedKeys } from "./fixed-keys.ts";

const seedText = (k: NKeyPair): string => `${new TextDecoder().decode(k.getSeed())}\n`;

/** An operator JWT with every claim an operator may carry, some natsbind does not know. */
function fullOperatorJwt(identity: NKeyPair, signingKeys: string[]): string {
  const claims = operatorClaims({
    publicKey: identity.publicKey,
    name: "acme",
    signingKeys,
    systemAccount: fixedKeys.account().publicKey,
    accountServerUrl: "https://accounts.example.com/jwt/v1",
    serviceUrls: ["nats://nats.example.com:4222"],
    strictSigningKeyUsage: true,
  });
  claims.nats.tags = ["env:prod"];
  claims.nats.assert_server_version = "2.10.0";
  claims.nats.future_field = { kept: true };
  return signJwt(claims, identity, 1_700_000_000);
}

describe("operator JWT editing", () => {
  const identity = fixedKeys.operator();
  const old = fixedKeys.operatorSigning();
  const fresh = NKeyPair.generate("operator");
  const jwt = fullOperatorJwt(identity, [old.publicKey]);

  it("adds a signing key and keeps every other claim", () => {
    const op = parseOperatorJwt(jwt);
    const out = signOperatorJwt(addSigningKey(op, fresh.publicKey), identity, 1_800_000_000);
    const before = decodeJwt(jwt);
    const after = decodeJwt(out);
    assert.deepEqual(after.nats.signing_keys, [old.publicKey, fresh.publicKey]);
    const strip = (c: JwtClaims): unknown => {
      const { iat: _i, jti: _j, nats, ...rest } = c;
      const { signing_keys: _s, ...natsRest } = nats;
      return { ...rest, nats: natsRest };
    };
    assert.deepEqual(strip(after), strip(before), "only signing_keys, iat and jti differ");
    assert.equal(after.nats.strict_signing_key_usage, true);
    assert.equal(after.nats.system_account, fixedKeys.account().publicKey);
    assert.equal(after.nats.account_server_url, "https://accounts.example.com/jwt/v1");
    assert.deepEqual(after.nats.future_field, { kept: true });
    assert.equal(after.iat, 1_800_000_000);
    // Stock nats tooling reads it as the same operator.
    const stock = stockDecode<{ signing_keys: string[] }>(out);
    assert.equal(stock.sub, identity.publicKey);
    assert.deepEqual(stock.nats.signing_keys, [old.publicKey, fresh.publicKey]);
  });

  it("adding a key twice lists it once; removing it gives the original list back", () => {
    const added = parseOperatorJwt(
      signOperatorJwt(addSigningKey(parseOperatorJwt(jwt), fresh.publicKey), identity, 1),
    );
    const again = addSigningKey(added, fresh.publicKey);
    assert.deepEqual(again.nats.signing_keys, [old.publicKey, fresh.publicKey]);
    const removed = removeSigningKey(added, old.publicKey);
    assert.deepEqual(removed.nats.signing_keys, [fresh.publicKey]);
    assert.equal(removed.nats.strict_signing_key_usage, true);
  });

  it("refuses to remove a key it does not list, or the last one", () => {
    const op = parseOperatorJwt(jwt);
    assert.throws(
      () => removeSigningKey(op, fresh.publicKey),
      /does not list signing key .*nothing to retire/,
    );
    assert.throws(() => removeSigningKey(op, old.publicKey), /only signing key/);
  });

  it("refuses to add the identity key or something that is not an operator key", () => {
    const op = parseOperatorJwt(jwt);
    assert.throws(() => addSigningKey(op, identity.publicKey), /identity key itself/);
    assert.throws(() => addSigningKey(op, fixedKeys.account().publicKey), /not an operator public key/);
  });

  it("signs only with the operator's identity key, naming the key it got (never a seed)", () => {
    const claims = addSigningKey(parseOperatorJwt(jwt), fresh.publicKey);
    assert.throws(
      () => signOperatorJwt(claims, old, 1),
      (err: Error) =>
        err instanceof OperatorJwtError &&
        err.message.includes(old.publicKey) &&
        err.message.includes("one of its signing keys") &&
        !err.message.includes(new TextDecoder().decode(old.getSeed())),
    );
    const other = NKeyPair.generate("operator");
    assert.throws(() => signOperatorJwt(claims, other, 1), /not the identity key of operator/);
  });

  it("refuses JWTs that are not operator JWTs, not self-signed or tampered with", () => {
    const account = signJwt(
      accountClaims({ publicKey: fixedKeys.account().publicKey, name: "a", signingKeys: [] }, old.publicKey),
      old,
      1,
    );
    assert.throws(() => parseOperatorJwt(account), /is a account JWT, not an operator JWT/);
    const claims = decodeJwt(jwt);
    const notSelf = signJwt({ ...claims, iss: old.publicKey }, old, 1);
    assert.throws(() => parseOperatorJwt(notSelf), /not self-signed/);
    const [h, b, s] = jwt.split(".");
    const body = JSON.parse(Buffer.from(b!, "base64url").toString());
    body.nats.signing_keys.push(fresh.publicKey);
    const tampered = `${h}.${Buffer.from(JSON.stringify(body)).toString("base64url")}.${s}`;
    assert.throws(() => parseOperatorJwt(tampered), /signature does not verify/);
    assert.throws(() => parseOperatorJwt(jwt.slice(0, jwt.length / 2)), OperatorJwtError);
    const badKeys = signJwt({ ...claims, nats: { ...claims.nats, signing_keys: ["nope"] } }, identity, 1);
    assert.throws(() => parseOperatorJwt(badKeys), /signing_keys\[0\] is not an operator public key/);
  });
});

describe("operator add-signing-key (files)", () => {
  let dir: string;
  const identity = fixedKeys.operator();
  const old = fixedKeys.operatorSigning();
  before(async () => {
    dir = await tempDir("op-add");
    await writeFile(join(dir, "operator.nk"), seedText(identity), { mode: 0o600 });
    await writeFile(join(dir, "signing.nk"), seedText(old), { mode: 0o600 });
    await writeFile(join(dir, "operator.jwt"), `${fullOperatorJwt(identity, [old.publicKey])}\n`);
  });
  after(async () => removeDir(dir));

  const files = (out: string) => ({
    operatorSeedFile: join(dir, "operator.nk"),
    operatorJwtFile: join(dir, "operator.jwt"),
    outJwtFile: join(dir, `${out}.jwt`),
    outSeedFile: join(dir, `${out}.nk`),
  });

  it("writes the new key's seed (0600) and a JWT listing both keys; a re-run reuses the key", async () => {
    const first = await addSigningKeyFiles({ ...files("new"), now: () => 1_800_000_000_000 });
    assert.equal(first.reused, false);
    assert.deepEqual(first.signingKeys, [old.publicKey, first.signingKey]);
    assert.equal((await stat(join(dir, "new.nk"))).mode & 0o777, 0o600);
    const seeded = NKeyPair.fromSeed(await readFile(join(dir, "new.nk"), "utf8"), "operator");
    assert.equal(seeded.publicKey, first.signingKey);
    const jwt = parseOperatorJwt(await readFile(join(dir, "new.jwt"), "utf8"));
    assert.deepEqual(jwt.signingKeys, [old.publicKey, first.signingKey]);
    assert.equal(jwt.strict, true);

    const again = await addSigningKeyFiles(files("new"));
    assert.equal(again.reused, true);
    assert.equal(again.signingKey, first.signingKey, "the existing seed is reused, not replaced");
    assert.equal(NKeyPair.fromSeed(await readFile(join(dir, "new.nk"), "utf8")).publicKey, first.signingKey);
    assert.deepEqual(parseOperatorJwt(await readFile(join(dir, "new.jwt"), "utf8")).signingKeys, [
      old.publicKey,
      first.signingKey,
    ]);
  });

  async function assertNothingWritten(
    out: string,
    run: () => Promise<unknown>,
    match: RegExp,
  ): Promise<void> {
    const before = (await readdir(dir)).sort();
    await assert.rejects(run, match);
    assert.deepEqual((await readdir(dir)).sort(), before, `nothing written for ${out}`);
  }

  it("refuses a signing key given as the identity seed, and writes nothing", async () => {
    await assertNothingWritten(
      "wrong",
      () => addSigningKeyFiles({ ...files("wrong"), operatorSeedFile: join(dir, "signing.nk") }),
      /a signing key of operator .* not its identity key/,
    );
  });

  it("refuses the JWT of another operator, and writes nothing", async () => {
    const stranger = NKeyPair.generate("operator");
    const strangerSigning = NKeyPair.generate("operator");
    await writeFile(join(dir, "other.jwt"), fullOperatorJwt(stranger, [strangerSigning.publicKey]));
    await assertNothingWritten(
      "other",
      () => addSigningKeyFiles({ ...files("other"), operatorJwtFile: join(dir, "other.jwt") }),
      /must be the same operator's/,
    );
  });

  it("refuses a truncated seed file naming the file, never its content", async () => {
    const text = seedText(identity);
    await writeFile(join(dir, "truncated.nk"), text.slice(0, 30), { mode: 0o600 });
    await assertNothingWritten(
      "trunc",
      () => addSigningKeyFiles({ ...files("trunc"), operatorSeedFile: join(dir, "truncated.nk") }),
      /truncated\.nk is not a valid nkey seed/,
    );
    await assert.rejects(
      addSigningKeyFiles({ ...files("trunc"), operatorSeedFile: join(dir, "truncated.nk") }),
      (err: Error) => !err.message.includes(text.slice(0, 30)),
    );
  });

  it("refuses an --out-seed that exists and is not an operator seed (it is never overwritten)", async () => {
    await writeFile(join(dir, "junk.nk"), "not a seed\n");
    await assert.rejects(addSigningKeyFiles(files("junk")), /exists and is not an operator seed/);
    assert.equal(await readFile(join(dir, "junk.nk"), "utf8"), "not a seed\n");
  });
});

describe("installSigningKey", () => {
  let dir: string;
  before(async () => (dir = await tempDir("op-install")));
  after(async () => removeDir(dir));

  it("keeps the replaced seed as <file>.previous, is idempotent, and refuses a third key", async () => {
    const file = join(dir, "signing.nk");
    const [k1, k2, k3] = [1, 2, 3].map(() => NKeyPair.generate("operator")) as [NKeyPair, NKeyPair, NKeyPair];
    await writeFile(file, seedText(k1), { mode: 0o600 });
    const pub = async (f: string): Promise<string> => NKeyPair.fromSeed(await readFile(f, "utf8")).publicKey;

    assert.deepEqual(await installSigningKey(file, NKeyPair.fromSeed(k2.getSeed())), {
      changed: true,
      previous: k1.publicKey,
    });
    assert.equal(await pub(file), k2.publicKey);
    assert.equal(await pub(previousKeyFile(file)), k1.publicKey);
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.equal((await stat(previousKeyFile(file))).mode & 0o777, 0o600);

    assert.deepEqual(await installSigningKey(file, NKeyPair.fromSeed(k2.getSeed())), {
      changed: false,
      previous: k1.publicKey,
    });
    await assert.rejects(
      installSigningKey(file, NKeyPair.fromSeed(k3.getSeed())),
      (err: Error) => err instanceof RotationRefusedError && err.message.includes(`--key ${k1.publicKey}`),
    );
    assert.equal(await pub(file), k2.publicKey, "unchanged after the refusal");
    // Going back to the previous key (a rollback) is allowed: the two swap places.
    await installSigningKey(file, NKeyPair.fromSeed(k1.getSeed()));
    assert.equal(await pub(file), k1.publicKey);
    assert.equal(await pub(previousKeyFile(file)), k2.publicKey);
  });
});

describe("SigningGate", () => {
  it("a swap waits for reconciles in flight and holds new ones back until it is done", async () => {
    const gate = new SigningGate();
    const order: string[] = [];
    let finishFirst!: () => void;
    const first = gate.shared(async () => {
      order.push("reconcile 1 start");
      await new Promise<void>((r) => (finishFirst = r));
      order.push("reconcile 1 end");
    });
    const swap = gate.exclusive(() => void order.push("swap"));
    const second = gate.shared(async () => void order.push("reconcile 2"));
    await Promise.resolve();
    assert.deepEqual(order, ["reconcile 1 start"]);
    finishFirst();
    await Promise.all([first, swap, second]);
    assert.deepEqual(order, ["reconcile 1 start", "reconcile 1 end", "swap", "reconcile 2"]);
  });
});

describe("LiveOperatorKeys", () => {
  let dir: string;
  const identity = fixedKeys.operator();
  const k1 = NKeyPair.generate("operator");
  const k2 = NKeyPair.generate("operator");
  before(async () => (dir = await tempDir("op-live")));
  after(async () => removeDir(dir));

  it("swaps the signer and the trusted keys when the files change; refuses a key the JWT does not list", async () => {
    const seed = join(dir, "signing.nk");
    const jwtFile = join(dir, "operator.jwt");
    await writeFile(seed, seedText(k1), { mode: 0o600 });
    await writeFile(jwtFile, fullOperatorJwt(identity, [k1.publicKey]));
    const warnings: string[] = [];
    let approved = true;
    const keys = await LiveOperatorKeys.load({
      signingKeyFile: seed,
      operatorJwtFile: jwtFile,
      log: { info: () => undefined, warn: (_o, msg) => void warnings.push(msg) },
      approve: async (key) => {
        if (!approved) throw new Error(`server n2 does not trust ${key}`);
      },
    });
    const issuers = keys.issuers;
    assert.equal(keys.signer.getPublicKey(), k1.publicKey);
    assert.deepEqual([...issuers], [k1.publicKey]);

    // The new seed before the operator JWT lists it: refused, the old key stays.
    await writeFile(seed, seedText(k2));
    assert.equal(await keys.reload(), "refused");
    assert.equal(keys.signer.getPublicKey(), k1.publicKey);
    assert.equal(warnings.length, 1);
    assert.equal(await keys.reload(), "refused");
    assert.equal(warnings.length, 1, "a refusal is logged once per key");

    // The JWT lists it, but a server does not trust it yet: refused, but the JWT is taken.
    await writeFile(jwtFile, fullOperatorJwt(identity, [k1.publicKey, k2.publicKey]));
    approved = false;
    assert.equal(await keys.reload(), "refused");
    assert.equal(keys.signer.getPublicKey(), k1.publicKey);
    assert.deepEqual([...issuers].sort(), [k1.publicKey, k2.publicKey].sort(), "the same Set, updated");

    approved = true;
    assert.equal(await keys.reload(), "changed");
    assert.equal(keys.signer.getPublicKey(), k2.publicKey);
    const signed = signJwt(
      accountClaims({ publicKey: fixedKeys.account().publicKey, name: "a", signingKeys: [] }, k2.publicKey),
      keys.signer,
      1,
    );
    assert.equal(decodeJwt(signed).iss, k2.publicKey, "the signer object signs with the new key");
    assert.deepEqual(keys.trustedOperator.signingKeys, [k1.publicKey, k2.publicKey]);
    assert.equal(keys.trustedOperator.publicKey, identity.publicKey);
    assert.equal(await keys.reload(), "unchanged");

    // A broken file keeps the current keys.
    await writeFile(seed, "SOAAA\n");
    assert.equal(await keys.reload(), "refused");
    assert.equal(keys.signer.getPublicKey(), k2.publicKey);
    keys.close();
  });

  it("without an operator JWT, trusts its key, the keys it signed with before and <file>.previous", async () => {
    const seed = join(dir, "alone.nk");
    const k0 = NKeyPair.generate("operator");
    await writeFile(seed, seedText(k1), { mode: 0o600 });
    await writeFile(previousKeyFile(seed), seedText(k0), { mode: 0o600 });
    const keys = await LiveOperatorKeys.load({ signingKeyFile: seed });
    assert.deepEqual([...keys.issuers].sort(), [k0.publicKey, k1.publicKey].sort());
    await writeFile(seed, seedText(k2));
    assert.equal(await keys.reload(), "changed");
    assert.deepEqual([...keys.issuers].sort(), [k0.publicKey, k1.publicKey, k2.publicKey].sort());
    assert.equal(keys.trustedOperator.publicKey, k2.publicKey);
  });
});

describe("account views and next steps (pure)", () => {
  const old = fixedKeys.operatorSigning();
  const fresh = NKeyPair.generate("operator");
  const account = fixedKeys.account();
  const tags = ["natsbind-binding:acme", "gitlab-project-id:42"];
  const jwtBy = (k: NKeyPair, iat: number, t = tags): string =>
    signJwt(
      accountClaims(
        { publicKey: account.publicKey, name: "acme/api", signingKeys: [], tags: t },
        k.publicKey,
      ),
      k,
      iat,
    );
  const keys = new Set([old.publicKey, fresh.publicKey]);

  it("reads who signed each server's copy and which copy is newest", () => {
    const view = viewAccount(account.publicKey, [jwtBy(old, 10), undefined, jwtBy(fresh, 20)], keys);
    assert.equal(view.servers, 3);
    assert.deepEqual(view.issuers, [old.publicKey, fresh.publicKey]);
    assert.equal(view.newest?.iat, 20);
    assert.equal(view.newest?.claims.iss, fresh.publicKey);
    assert.equal(view.natsbind, true);
    assert.equal(viewAccount(account.publicKey, [jwtBy(old, 10, ["project:1"])], keys).natsbind, false);
    const stranger = NKeyPair.generate("operator");
    assert.equal(viewAccount(account.publicKey, [jwtBy(stranger, 10)], keys).natsbind, false);
    const other = viewAccount(NKeyPair.generate("account").publicKey, [jwtBy(old, 10)], keys);
    assert.match(other.problem ?? "", /not this account's/);
    assert.deepEqual(other.issuers, []);
  });

  it("says what to do next in each phase", () => {
    const servers = ["n0", "n1", "n2"];
    const trust = (keysOf: Record<string, string[]>) =>
      servers.map((server) => ({
        server,
        operators: [{ operator: "OP", name: "acme", signingKeys: keysOf[server] ?? [], strict: true }],
      }));
    const base = {
      operator: "OP",
      natsbindKey: "K1",
      signingKeyFile: "signing.nk",
      otherIssuers: [],
      accounts: 3,
      mixed: 0,
      problems: [],
    };
    const key = (k: string, trustedBy: string[], accounts: number, extra = {}) => ({
      key: k,
      trustedBy,
      accounts,
      natsbindAccounts: accounts,
      natsbindSigns: false,
      previous: false,
      ...extra,
    });
    // Rolling restart half done.
    const half = nextSteps({
      ...base,
      servers: trust({ n0: ["K1", "K2"], n1: ["K1"], n2: ["K1"] }),
      keys: [key("K1", servers, 3, { natsbindSigns: true }), key("K2", ["n0"], 0)],
    });
    assert.ok(
      half.some((s) => /K2 \(not trusted by n1, n2\): finish the rolling restart/.test(s)),
      half.join("\n"),
    );
    // Activated, the old key still signs an account.
    const activated = nextSteps({
      ...base,
      natsbindKey: "K2",
      previousKey: "K1",
      servers: trust({ n0: ["K1", "K2"], n1: ["K1", "K2"], n2: ["K1", "K2"] }),
      keys: [key("K1", servers, 1, { previous: true }), key("K2", servers, 2, { natsbindSigns: true })],
    });
    assert.ok(
      activated.some((s) => /K1 still signs 1 account.*activate again/.test(s)),
      activated.join("\n"),
    );
    const ready = nextSteps({
      ...base,
      natsbindKey: "K2",
      previousKey: "K1",
      servers: trust({ n0: ["K1", "K2"], n1: ["K1", "K2"], n2: ["K1", "K2"] }),
      keys: [key("K1", servers, 0, { previous: true }), key("K2", servers, 3, { natsbindSigns: true })],
    });
    assert.ok(
      ready.some((s) => /K1 signs no account any more: retire it/.test(s)),
      ready.join("\n"),
    );
    const done = nextSteps({
      ...base,
      natsbindKey: "K2",
      operatorJwtKeys: ["K2"],
      servers: trust({ n0: ["K2"], n1: ["K2"], n2: ["K2"] }),
      keys: [key("K2", servers, 3, { natsbindSigns: true })],
    });
    assert.deepEqual(done, ["nothing to do: every server trusts natsbind's key and only it signs accounts"]);
  });
});
