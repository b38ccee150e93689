import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { inspect } from "node:util";
import * as nkeys from "@nats-io/nkeys";
import { decode, encodeAccount, encodeOperator, encodeUser } from "@nats-io/jwt";
import {
  KeyError,
  NKeyPair,
  parsePublicKey,
  verifyWithPublicKey,
  type KeyKind,
} from "../../src/nats/keys.ts";
import { base32Decode, base32Encode, crc16 } from "../../src/nats/encoding.ts";

const text = (b: Uint8Array): string => new TextDecoder().decode(b);
const stockCreate: Record<KeyKind, () => nkeys.KeyPair> = {
  operator: nkeys.createOperator,
  account: nkeys.createAccount,
  user: nkeys.createUser,
  server: nkeys.createServer,
};

describe("nkeys encoding", () => {
  it("round-trips base32 for every length", () => {
    for (let n = 0; n < 40; n++) {
      const bytes = new Uint8Array(n).map((_, i) => (i * 37 + n) & 0xff);
      assert.deepEqual(base32Decode(base32Encode(bytes)), bytes);
    }
    assert.equal(base32Decode("abc!"), undefined);
  });

  it("computes CRC-16/XMODEM", () => {
    assert.equal(crc16(new TextEncoder().encode("123456789")), 0x31c3);
  });
});

describe("NKeyPair interop with @nats-io/nkeys", () => {
  for (const kind of ["operator", "account", "user", "server"] as const) {
    it(`derives the same public key, seed, private key and signature for ${kind} keys`, () => {
      for (let i = 0; i < 5; i++) {
        const stock = stockCreate[kind]();
        const ours = NKeyPair.fromSeed(text(stock.getSeed()));
        assert.equal(ours.kind, kind);
        assert.equal(ours.publicKey, stock.getPublicKey());
        assert.equal(text(ours.getSeed()), text(stock.getSeed()));
        assert.equal(text(ours.getPrivateKey()), text(stock.getPrivateKey()));
        const message = new TextEncoder().encode(`message ${i} for ${kind}`);
        assert.deepEqual(Buffer.from(ours.sign(message)), Buffer.from(stock.sign(message)));
        assert.ok(stock.verify(message, ours.sign(message)));
        assert.ok(ours.verify(message, stock.sign(message)));
        assert.ok(!ours.verify(new TextEncoder().encode("other"), stock.sign(message)));
      }
    });

    it(`generates ${kind} keys that @nats-io/nkeys reads back`, () => {
      const ours = NKeyPair.generate(kind);
      const stock = nkeys.fromSeed(ours.getSeed());
      assert.equal(stock.getPublicKey(), ours.publicKey);
      assert.equal(ours.publicKey[0], { operator: "O", account: "A", user: "U", server: "N" }[kind]);
      assert.equal(parsePublicKey(ours.publicKey).kind, kind);
    });
  }

  it("is accepted by @nats-io/jwt encoders as key and signer", async () => {
    const operator = NKeyPair.generate("operator");
    const signing = NKeyPair.generate("operator");
    const account = NKeyPair.generate("account");
    const accountSigning = NKeyPair.generate("account");
    const user = NKeyPair.generate("user");
    const opJwt = await encodeOperator("op", operator, { signing_keys: [signing.publicKey] });
    assert.equal(decode(opJwt).iss, operator.publicKey);
    const accJwt = await encodeAccount(
      "acc",
      account,
      { signing_keys: [accountSigning.publicKey] },
      { signer: signing },
    );
    const acc = decode(accJwt);
    assert.equal(acc.iss, signing.publicKey);
    assert.equal(acc.sub, account.publicKey);
    const userJwt = await encodeUser("u", user, account, {}, { signer: accountSigning });
    assert.equal(decode(userJwt).iss, accountSigning.publicKey);
  });
});

describe("NKeyPair input validation", () => {
  const userSeed = text(NKeyPair.generate("user").getSeed());

  it("rejects a seed of the wrong kind, naming the input but not the seed", () => {
    assert.throws(
      () => NKeyPair.fromSeed(userSeed, "operator", "keys/operator.nk"),
      (err: Error) => {
        assert.ok(err instanceof KeyError);
        assert.equal(err.message, "keys/operator.nk: expected an operator key, got a user key");
        assert.ok(!err.message.includes(userSeed));
        return true;
      },
    );
  });

  it("rejects malformed seeds with a clear error", () => {
    const flipped = userSeed.slice(0, 10) + (userSeed[10] === "A" ? "B" : "A") + userSeed.slice(11);
    for (const bad of [
      "",
      "SU",
      "not a seed at all",
      flipped,
      userSeed.slice(0, -1),
      userSeed.toLowerCase(),
    ]) {
      assert.throws(
        () => NKeyPair.fromSeed(bad, "user", "creds"),
        (err: Error) =>
          err instanceof KeyError &&
          /creds is not a valid nkey seed/.test(err.message) &&
          !err.message.includes(userSeed),
      );
    }
  });

  it("rejects a public key where a seed is expected", () => {
    const pub = NKeyPair.generate("account").publicKey;
    assert.throws(() => NKeyPair.fromSeed(pub), KeyError);
  });

  it("accepts surrounding whitespace (seed files end with a newline)", () => {
    assert.equal(NKeyPair.fromSeed(`  ${userSeed}\n`).kind, "user");
  });

  it("parsePublicKey rejects seeds, garbage and wrong kinds", () => {
    const account = NKeyPair.generate("account");
    assert.throws(() => parsePublicKey(text(account.getSeed())), KeyError);
    assert.throws(() => parsePublicKey(`${"A".repeat(55)}B`), KeyError);
    assert.throws(() => parsePublicKey("hello"), KeyError);
    assert.throws(
      () => parsePublicKey(account.publicKey, "operator", "issuer"),
      /issuer: expected an operator key, got an account key/,
    );
  });

  it("cannot sign after clear()", () => {
    const key = NKeyPair.generate("account");
    key.clear();
    assert.throws(() => key.sign(new Uint8Array([1])), KeyError);
    assert.throws(() => key.getSeed(), KeyError);
  });

  it("verifyWithPublicKey checks signatures against the public key only", () => {
    const key = NKeyPair.generate("account");
    const data = new TextEncoder().encode("payload");
    assert.ok(verifyWithPublicKey(key.publicKey, data, key.sign(data)));
    assert.ok(!verifyWithPublicKey(NKeyPair.generate("account").publicKey, data, key.sign(data)));
  });
});

describe("NKeyPair never shows its seed", () => {
  it("in toString, JSON, inspect, nested objects and errors", () => {
    for (const kind of ["operator", "account", "user", "server"] as const) {
      const key = NKeyPair.generate(kind);
      const seed = text(key.getSeed());
      const privateKey = text(key.getPrivateKey());
      const renderings = [
        String(key),
        `${key}`,
        JSON.stringify(key),
        JSON.stringify({ nested: { key } }),
        inspect(key, { showHidden: true, depth: 10 }),
        inspect({ key }, { showHidden: true, depth: 10 }),
        inspect(Object.getOwnPropertyDescriptors(key), { showHidden: true }),
        Object.keys(key).join(","),
      ];
      for (const r of renderings) {
        assert.ok(!r.includes(seed), `seed leaked in ${r}`);
        assert.ok(!r.includes(privateKey), `private key leaked in ${r}`);
        assert.ok(!r.includes(seed.slice(2, 20)), `seed fragment leaked in ${r}`);
      }
      assert.ok(String(key).includes(key.publicKey));
    }
  });
});
