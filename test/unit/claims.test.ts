import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { decode as stockDecode } from "@nats-io/jwt";
import {
  ClaimsError,
  MAX_REVOCATIONS,
  accountClaims,
  assertIssuedBy,
  claimsHash,
  decodeJwt,
  deleteAccountsClaims,
  jwtClaimsHash,
  signJwt,
  userClaims,
  type DesiredAccount,
} from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { subjectProblem } from "../../src/nats/subjects.ts";
import { fixedKeys } from "./fixed-keys.ts";

const operatorSigning = fixedKeys.operatorSigning();

function desired(overrides: Partial<DesiredAccount> = {}): DesiredAccount {
  return {
    publicKey: fixedKeys.account().publicKey,
    name: "group/project",
    description: "GitLab project 42",
    tags: ["project:42", "Namespace:7"],
    limits: {
      connections: 100,
      subscriptions: 1000,
      payload: 1048576,
      jetstream: { memoryStorage: 1048576, diskStorage: -1, streams: 10, consumers: 100 },
    },
    signingKeys: [
      fixedKeys.accountSigning().publicKey,
      {
        key: fixedKeys.accountScoped().publicKey,
        role: "ci",
        description: "CI jobs",
        template: {
          pub: { allow: ["build.{{tag(project)}}.>"], deny: ["build.{{tag(project)}}.secret"] },
          sub: { allow: ["_INBOX.>"] },
          responses: { max: 1, ttlMs: 5000 },
        },
      },
    ],
    exports: [{ name: "status", subject: "status.>", type: "stream" }],
    imports: [
      { name: "shared", subject: "shared.>", account: fixedKeys.accountSigning().publicKey, type: "stream" },
    ],
    ...overrides,
  };
}

describe("accountClaims", () => {
  it("matches the golden claims (test/unit/golden/account-claims.json)", async () => {
    const golden = join(import.meta.dirname, "golden", "account-claims.json");
    const actual = accountClaims(desired(), operatorSigning.publicKey);
    if (process.env.UPDATE_GOLDEN === "1") await writeFile(golden, `${JSON.stringify(actual, null, 2)}\n`);
    assert.deepEqual(actual, JSON.parse(await readFile(golden, "utf8")));
  });

  it("is pure: same input, same claims and hash", () => {
    const a = accountClaims(desired(), operatorSigning.publicKey);
    const b = accountClaims(desired(), operatorSigning.publicKey);
    assert.deepEqual(a, b);
    assert.equal(claimsHash(a), claimsHash(b));
  });

  it("disables JetStream when no JetStream limits are given", () => {
    const claims = accountClaims(desired({ limits: {} }), operatorSigning.publicKey);
    const limits = claims.nats.limits as Record<string, unknown>;
    assert.equal(limits.mem_storage, 0);
    assert.equal(limits.disk_storage, 0);
    assert.equal(limits.conn, -1);
  });

  const invalid: Array<[string, Partial<DesiredAccount>, RegExp]> = [
    [
      "an operator key as account",
      { publicKey: operatorSigning.publicKey },
      /^publicKey is not an account public key/,
    ],
    ["an empty name", { name: " " }, /^name is empty/],
    [
      "a subject with whitespace",
      {
        signingKeys: [
          {
            key: fixedKeys.accountScoped().publicKey,
            role: "ci",
            template: { pub: { allow: ["build. 42"] } },
          },
        ],
      },
      /signingKeys\[0\]\.template\.pub\.allow\[0\] "build\. 42" contains whitespace/,
    ],
    [
      "a > before the last token",
      {
        signingKeys: [
          { key: fixedKeys.accountScoped().publicKey, role: "ci", template: { sub: { deny: ["a.>.b"] } } },
        ],
      },
      /signingKeys\[0\]\.template\.sub\.deny\[0\] "a\.>\.b" has ">" before its last token/,
    ],
    [
      "an empty token",
      {
        signingKeys: [
          { key: fixedKeys.accountScoped().publicKey, role: "ci", template: { pub: { allow: ["a..b"] } } },
        ],
      },
      /has an empty token/,
    ],
    [
      "a wildcard inside a token",
      {
        signingKeys: [
          { key: fixedKeys.accountScoped().publicKey, role: "ci", template: { pub: { allow: ["a.b*"] } } },
        ],
      },
      /has a wildcard inside token "b\*"/,
    ],
    [
      "a role on two keys with different templates",
      {
        signingKeys: [
          { key: fixedKeys.accountScoped().publicKey, role: "ci", template: {} },
          { key: fixedKeys.accountSigning().publicKey, role: "ci", template: { pub: { allow: ["a"] } } },
        ],
      },
      /signingKeys\[1\]\.role "ci" is used by two signing keys with different templates/,
    ],
    [
      "the identity key as signing key",
      { signingKeys: [fixedKeys.account().publicKey] },
      /must differ from the account identity key/,
    ],
    [
      "a user key as signing key",
      { signingKeys: [fixedKeys.user().publicKey] },
      /signingKeys\[0\]\.key is not an account public key/,
    ],
    ["a limit below -1", { limits: { connections: -5 } }, /limits\.connections must be an integer >= -1/],
    [
      "JetStream without storage",
      {
        limits: { jetstream: { memoryStorage: 0, diskStorage: 0, streams: 1, consumers: 1 } },
      },
      /limits\.jetstream enables JetStream with no storage/,
    ],
    [
      "a tag with whitespace",
      { tags: ["project: 42"] },
      /tags\[0\] must be a non-empty string without whitespace/,
    ],
    ["a non-http info URL", { infoUrl: "javascript:alert(1)" }, /infoUrl must be an http\(s\) URL/],
    [
      "a callout account without auth users",
      { authorization: { authUsers: [], allowedAccounts: ["*"] } },
      /authorization\.authUsers is empty/,
    ],
    [
      "an account key as callout auth user",
      { authorization: { authUsers: [fixedKeys.account().publicKey], allowedAccounts: ["*"] } },
      /authorization\.authUsers\[0\] is not a user public key/,
    ],
    [
      '"*" next to an account in allowed accounts',
      {
        authorization: {
          authUsers: [fixedKeys.user().publicKey],
          allowedAccounts: ["*", fixedKeys.account().publicKey],
        },
      },
      /authorization\.allowedAccounts holds "\*" and more/,
    ],
    [
      "a user key as allowed account",
      {
        authorization: {
          authUsers: [fixedKeys.user().publicKey],
          allowedAccounts: [fixedKeys.user().publicKey],
        },
      },
      /authorization\.allowedAccounts\[0\] is not an account public key/,
    ],
    [
      "an account key in revocations",
      { revocations: { [fixedKeys.account().publicKey]: 1_700_000_000 } },
      /^revocations\["A[A-Z2-7]+"\] is not a user public key/,
    ],
    [
      "a wildcard other than * in revocations",
      { revocations: { ">": 1_700_000_000 } },
      /^revocations\[">"\] is not a user public key/,
    ],
    [
      "a revocation time of 0",
      { revocations: { "*": 0 } },
      /^revocations\["\*"\] must be a positive integer \(unix seconds\)/,
    ],
    [
      "a negative revocation time",
      { revocations: { [fixedKeys.user().publicKey]: -1 } },
      /^revocations\["U[A-Z2-7]+"\] must be a positive integer/,
    ],
    [
      "a fractional revocation time",
      { revocations: { [fixedKeys.user().publicKey]: 1_700_000_000.5 } },
      /must be a positive integer/,
    ],
    [
      "a revocation time given as a string",
      { revocations: { [fixedKeys.user().publicKey]: "1700000000" as unknown as number } },
      /must be a positive integer/,
    ],
    [
      "revocations that are an array",
      { revocations: [1_700_000_000] as unknown as Record<string, number> },
      /^revocations must be an object/,
    ],
    [
      "more revocations than the bound",
      {
        revocations: Object.fromEntries(
          Array.from({ length: MAX_REVOCATIONS + 1 }, (_, i) => [`U${i}`, 1_700_000_000]),
        ),
      },
      new RegExp(`^revocations has more than ${MAX_REVOCATIONS} entries`),
    ],
  ];
  for (const [what, overrides, message] of invalid) {
    it(`rejects ${what}, naming the field`, () => {
      assert.throws(
        () => accountClaims(desired(overrides), operatorSigning.publicKey),
        (err: Error) => {
          assert.ok(err instanceof ClaimsError, `${err.name}: ${err.message}`);
          assert.match(err.message, message);
          return true;
        },
      );
    });
  }

  it("writes a callout account's authorization as nats-io/jwt reads it, and none otherwise", () => {
    const user = fixedKeys.user().publicKey;
    const claims = accountClaims(
      desired({ authorization: { authUsers: [user], allowedAccounts: ["*"] } }),
      operatorSigning.publicKey,
    );
    const jwt = signJwt(claims, operatorSigning, 1_700_000_000);
    const stock = stockDecode<{ authorization: { auth_users: string[]; allowed_accounts: string[] } }>(jwt);
    assert.deepEqual(stock.nats.authorization, { auth_users: [user], allowed_accounts: ["*"] });
    assert.deepEqual(accountClaims(desired(), operatorSigning.publicKey).nats.authorization, {});
  });

  it("writes revocations as nats-io/jwt reads them, with sorted keys, and none when empty", () => {
    const u1 = NKeyPair.generate("user").publicKey;
    const u2 = NKeyPair.generate("user").publicKey;
    const ordered = { "*": 1_700_000_100, [u1]: 1_700_000_000, [u2]: 1_700_000_050 };
    const reversed = Object.fromEntries(Object.entries(ordered).reverse());
    const a = accountClaims(desired({ revocations: ordered }), operatorSigning.publicKey);
    const b = accountClaims(desired({ revocations: reversed }), operatorSigning.publicKey);
    // Same bytes whatever order the caller built the map in: the JWT body, not only the hash.
    assert.equal(JSON.stringify(a), JSON.stringify(b));
    assert.deepEqual(Object.keys(a.nats.revocations as object), Object.keys(ordered).sort());
    const stock = stockDecode<{ revocations: Record<string, number> }>(
      signJwt(a, operatorSigning, 1_700_000_000),
    );
    assert.deepEqual(stock.nats.revocations, ordered);
    // A revocation changes what the account says: the reconciler must push it.
    assert.notEqual(claimsHash(a), claimsHash(accountClaims(desired(), operatorSigning.publicKey)));
    assert.notEqual(
      claimsHash(a),
      claimsHash(
        accountClaims(
          desired({ revocations: { ...ordered, "*": 1_700_000_101 } }),
          operatorSigning.publicKey,
        ),
      ),
    );
  });

  it("leaves the claims byte-identical without revocations (absent or empty)", () => {
    const plain = JSON.stringify(accountClaims(desired(), operatorSigning.publicKey));
    assert.equal(
      JSON.stringify(accountClaims(desired({ revocations: {} }), operatorSigning.publicKey)),
      plain,
    );
    assert.ok(!plain.includes("revocations"));
  });

  it("accepts exactly MAX_REVOCATIONS entries", () => {
    const many = Object.fromEntries(
      Array.from({ length: MAX_REVOCATIONS }, () => [NKeyPair.generate("user").publicKey, 1_700_000_000]),
    );
    const claims = accountClaims(desired({ revocations: many }), operatorSigning.publicKey);
    assert.equal(Object.keys(claims.nats.revocations as object).length, MAX_REVOCATIONS);
    assert.ok(signJwt(claims, operatorSigning, 1_700_000_000).length < 1024 * 1024);
  });

  it("rejects an account issuer that is not an operator key", () => {
    assert.throws(
      () => accountClaims(desired(), fixedKeys.accountSigning().publicKey),
      /^ClaimsError|issuer is not an operator/,
    );
  });
});

describe("subjectProblem", () => {
  it("accepts valid subjects and template functions", () => {
    for (const s of [
      "a",
      "a.b.c",
      "a.*.c",
      "a.>",
      ">",
      "build.{{tag(project)}}.>",
      "$SYS.REQ.CLAIMS.UPDATE",
    ]) {
      assert.equal(subjectProblem(s), undefined, s);
    }
  });
  it("refuses wildcards when they are not allowed", () => {
    assert.equal(subjectProblem("a.*", false), "contains a wildcard");
    assert.match(subjectProblem("a\tb") ?? "", /whitespace/);
    assert.match(subjectProblem("x".repeat(600)) ?? "", /longer than/);
  });
});

describe("signJwt and decodeJwt", () => {
  const claims = accountClaims(desired(), operatorSigning.publicKey);

  it("signs JWTs that @nats-io/jwt verifies and decodes to the same claims", () => {
    const jwt = signJwt(claims, operatorSigning, 1_700_000_000);
    const stock = stockDecode(jwt) as unknown as Record<string, unknown>;
    assert.equal(stock.iat, 1_700_000_000);
    assert.equal(stock.iss, operatorSigning.publicKey);
    assert.deepEqual(stock.nats, claims.nats);
    const ours = decodeJwt(jwt);
    assert.deepEqual(
      { ...ours, iat: undefined, jti: undefined },
      { ...claims, iat: undefined, jti: undefined },
    );
    assert.match(ours.jti ?? "", /^[A-Z2-7]{52}$/);
  });

  it("refuses to sign with a key that is not the issuer", () => {
    assert.throws(() => signJwt(claims, fixedKeys.operator(), 1), /is not the claims issuer/);
  });

  it("rejects tampered, truncated and foreign-algorithm JWTs", () => {
    const jwt = signJwt(claims, operatorSigning, 1_700_000_000);
    const [h, b, s] = jwt.split(".");
    const body = JSON.parse(Buffer.from(b!, "base64url").toString());
    body.name = "evil";
    const tampered = `${h}.${Buffer.from(JSON.stringify(body)).toString("base64url")}.${s}`;
    assert.throws(() => decodeJwt(tampered), /signature does not verify/);
    assert.throws(() => decodeJwt(`${h}.${b}`), /not a JWT/);
    assert.throws(() => decodeJwt(""), /is empty/);
    assert.throws(() => decodeJwt("x".repeat(2 * 1024 * 1024)), /larger than/);
    const hs256 = `${Buffer.from('{"alg":"HS256","typ":"JWT"}').toString("base64url")}.${b}.${s}`;
    assert.throws(() => decodeJwt(hs256), /uses algorithm HS256/);
  });

  it("assertIssuedBy rejects an account JWT of a foreign operator", () => {
    const foreign = NKeyPair.generate("operator");
    const foreignClaims = decodeJwt(signJwt(accountClaims(desired(), foreign.publicKey), foreign, 1));
    const trusted = { publicKey: fixedKeys.operator().publicKey, signingKeys: [operatorSigning.publicKey] };
    assert.throws(
      () => assertIssuedBy(foreignClaims, trusted),
      /is signed by O[A-Z0-9]+, which is not a key of operator/,
    );
    assertIssuedBy(decodeJwt(signJwt(claims, operatorSigning, 1)), trusted);
  });
});

describe("claimsHash", () => {
  const claims = accountClaims(desired(), operatorSigning.publicKey);

  it("ignores iat and jti: re-signing later changes nothing", () => {
    const first = signJwt(claims, operatorSigning, 1_700_000_000);
    const later = signJwt(claims, operatorSigning, 1_800_000_000);
    assert.notEqual(first, later);
    assert.equal(jwtClaimsHash(first), jwtClaimsHash(later));
    assert.equal(jwtClaimsHash(first), claimsHash(claims));
  });

  it("ignores key order but not content", () => {
    const reordered = JSON.parse(
      JSON.stringify({ nats: claims.nats, name: claims.name, sub: claims.sub, iss: claims.iss }),
    );
    assert.equal(claimsHash(reordered), claimsHash(claims));
    assert.notEqual(
      claimsHash(accountClaims(desired({ name: "other" }), operatorSigning.publicKey)),
      claimsHash(claims),
    );
    const moreConnections = desired({ limits: { connections: 101 } });
    assert.notEqual(
      claimsHash(accountClaims(moreConnections, operatorSigning.publicKey)),
      claimsHash(claims),
    );
  });

  it("changes when the signing key (issuer) changes", () => {
    const other = NKeyPair.generate("operator");
    assert.notEqual(claimsHash(accountClaims(desired(), other.publicKey)), claimsHash(claims));
  });
});

describe("userClaims and deleteAccountsClaims", () => {
  it("gives scoped users no permissions of their own and names the issuer account", () => {
    const claims = userClaims({
      publicKey: fixedKeys.user().publicKey,
      name: "job-1",
      account: fixedKeys.account().publicKey,
      issuer: fixedKeys.accountScoped().publicKey,
      scoped: true,
      tags: ["project:42"],
      expiresAt: 1_700_000_900,
    });
    assert.deepEqual(claims.nats, {
      type: "user",
      version: 2,
      tags: ["project:42"],
      issuer_account: fixedKeys.account().publicKey,
    });
    assert.equal(claims.exp, 1_700_000_900);
    assert.throws(
      () =>
        userClaims({
          publicKey: fixedKeys.user().publicKey,
          name: "u",
          account: fixedKeys.account().publicKey,
          issuer: fixedKeys.accountScoped().publicKey,
          scoped: true,
          permissions: { pub: { allow: [">"] } },
        }),
      /permissions must be empty for a user of a scoped signing key/,
    );
  });

  it("builds the operator-signed generic delete claim", () => {
    const claims = deleteAccountsClaims([fixedKeys.account().publicKey], operatorSigning.publicKey);
    assert.equal(claims.sub, operatorSigning.publicKey);
    assert.deepEqual(claims.nats, { accounts: [fixedKeys.account().publicKey], type: "generic", version: 2 });
    assert.throws(() => deleteAccountsClaims([], operatorSigning.publicKey), /accounts is empty/);
    assert.throws(
      () => deleteAccountsClaims([fixedKeys.user().publicKey], operatorSigning.publicKey),
      /accounts\[0\]/,
    );
  });
});
