import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { NKeyPair } from "../../src/nats/keys.ts";
import { formatCreds } from "../../src/nats/creds.ts";
import { signJwt, userClaims } from "../../src/nats/claims.ts";
import {
  MAX_DEPTH,
  MAX_ENTRIES,
  MAX_STRING_LENGTH,
  REDACTED,
  createLogger,
  nullLogger,
  redactSecrets,
} from "../../src/observability/logger.ts";
import type { Logger, LoggerOptions } from "../../src/observability/logger.ts";
import type { ControllerLogger } from "../../src/runtime/controller.ts";
import type { WebhookLogger } from "../../src/gitlab/webhook.ts";
import type { HttpServerOptions } from "../../src/http/server.ts";

const T0 = Date.UTC(2025, 0, 2, 3, 4, 5, 678);

function capture(options: Omit<LoggerOptions, "write" | "clock"> = {}): {
  log: Logger;
  lines: string[];
  records: () => Record<string, unknown>[];
} {
  const lines: string[] = [];
  const log = createLogger({ ...options, write: (line) => lines.push(line), clock: { now: () => T0 } });
  return {
    log,
    lines,
    records: () =>
      lines.map((line) => {
        assert.ok(line.endsWith("\n"), "one record per line");
        assert.ok(!line.slice(0, -1).includes("\n"), "no newline inside a record");
        return JSON.parse(line) as Record<string, unknown>;
      }),
  };
}

function seedOf(key: NKeyPair): string {
  return new TextDecoder().decode(key.getSeed());
}

/** A real creds string: a user JWT signed by an account key, and the user's seed. */
function realCreds(): { creds: string; jwt: string; user: NKeyPair; account: NKeyPair } {
  const account = NKeyPair.generate("account");
  const user = NKeyPair.generate("user");
  const claims = userClaims({
    publicKey: user.publicKey,
    name: "ci-job",
    account: account.publicKey,
    issuer: account.publicKey,
    scoped: false,
  });
  const jwt = signJwt(claims, account, 1_700_000_000);
  return { creds: formatCreds(jwt, user), jwt, user, account };
}

describe("logger: records", () => {
  it("writes one JSON line per record: level, time (from the clock), the fields, then msg (pino's order)", () => {
    const { log, lines, records } = capture();
    log.info({ account: "ABC", count: 3, ok: true, nothing: null }, "account pushed");
    assert.equal(lines.length, 1);
    const [record] = records();
    assert.deepEqual(record, {
      time: "2025-01-02T03:04:05.678Z",
      level: "info",
      msg: "account pushed",
      account: "ABC",
      count: 3,
      ok: true,
      nothing: null,
    });
    assert.deepEqual(Object.keys(record!), ["level", "time", "account", "count", "ok", "nothing", "msg"]);
  });

  it("drops records below the level (default info)", () => {
    const byDefault = capture();
    byDefault.log.debug({}, "d");
    byDefault.log.info({}, "i");
    byDefault.log.warn({}, "w");
    byDefault.log.error({}, "e");
    assert.deepEqual(
      byDefault.records().map((r) => [r.level, r.msg]),
      [
        ["info", "i"],
        ["warn", "w"],
        ["error", "e"],
      ],
    );

    const debug = capture({ level: "debug" });
    debug.log.debug({}, "d");
    assert.deepEqual(
      debug.records().map((r) => r.level),
      ["debug"],
    );

    const warn = capture({ level: "warn" });
    warn.log.debug({}, "d");
    warn.log.info({}, "i");
    warn.log.warn({}, "w");
    warn.log.child({ a: 1 }).info({}, "child info");
    warn.log.child({ a: 1 }).error({}, "child error");
    assert.deepEqual(
      warn.records().map((r) => r.msg),
      ["w", "child error"],
    );

    assert.throws(() => createLogger({ level: "verbose" as never }), /log level "verbose"/);
  });

  it("merges base, child bindings and the record's fields, later ones winning", () => {
    const { log, records } = capture({ base: { service: "natsbind", zone: "base" } });
    const reconcile = log.child({ controller: "binding", namespace: "ns1", name: "b1" });
    const nested = reconcile.child({ attempt: 2, zone: "child" });
    reconcile.info({ account: "A1" }, "reconciled");
    nested.warn({ zone: "record" }, "retrying");
    log.info({}, "parent unchanged");
    assert.deepEqual(records(), [
      {
        time: "2025-01-02T03:04:05.678Z",
        level: "info",
        msg: "reconciled",
        service: "natsbind",
        zone: "base",
        controller: "binding",
        namespace: "ns1",
        name: "b1",
        account: "A1",
      },
      {
        time: "2025-01-02T03:04:05.678Z",
        level: "warn",
        msg: "retrying",
        service: "natsbind",
        zone: "record",
        controller: "binding",
        namespace: "ns1",
        name: "b1",
        attempt: 2,
      },
      {
        time: "2025-01-02T03:04:05.678Z",
        level: "info",
        msg: "parent unchanged",
        service: "natsbind",
        zone: "base",
      },
    ]);
  });

  it("snapshots child bindings when the child is made", () => {
    const { log, records } = capture();
    const bindings: Record<string, unknown> = { name: "before" };
    const child = log.child(bindings);
    bindings.name = "after";
    child.info({}, "m");
    assert.equal(records()[0]!.name, "before");
  });

  it("keeps fields named time, level or msg without letting them replace the record's own", () => {
    const { log, records } = capture();
    log.child({ level: "bound" }).error({ time: "then", msg: "field" }, "real message");
    const [record] = records();
    assert.equal(record!.time, "2025-01-02T03:04:05.678Z");
    assert.equal(record!.level, "error");
    assert.equal(record!.msg, "real message");
    assert.equal(record!._time, "then");
    assert.equal(record!._level, "bound");
    assert.equal(record!._msg, "field");
  });

  it("renders Errors as {name, message} (and the cause's name and message) only", () => {
    class ResolverError extends Error {
      constructor(message: string, options?: { cause?: unknown }) {
        super(message, options);
        this.name = "ResolverError";
      }
    }
    const root = new Error("root of it", { cause: new Error("deeper, never shown") });
    const err = Object.assign(
      new ResolverError("push account", { cause: new TypeError("socket closed", { cause: root }) }),
      {
        request: { headers: { "private-token": "glpat-abcdefghijklmnopqrstuvwxyz" } },
        code: "E_PUSH",
      },
    );
    const { log, lines, records } = capture();
    log.error({ err, list: [new RangeError("in a list")], cause: "plain" }, "push failed");
    log.warn(
      { err: new Error("with a non-Error cause", { cause: { reason: "object cause" } }) },
      "odd cause",
    );
    const [first, second] = records();
    assert.deepEqual(first!.err, {
      name: "ResolverError",
      message: "push account",
      cause: { name: "TypeError", message: "socket closed" },
    });
    assert.deepEqual(first!.list, [{ name: "RangeError", message: "in a list" }]);
    assert.deepEqual(second!.err, {
      name: "Error",
      message: "with a non-Error cause",
      cause: { message: "[object Object]" },
    });
    const text = lines.join("");
    for (const absent of ["stack", "    at ", "root of it", "deeper", "glpat-", "E_PUSH", "request"]) {
      assert.ok(!text.includes(absent), `${absent} must not be logged`);
    }
  });

  it("logs an Error passed as the whole object under err", () => {
    const { log, records } = capture();
    log.error(new TypeError("bad input") as unknown as Record<string, unknown>, "failed");
    assert.deepEqual(records()[0]!.err, { name: "TypeError", message: "bad input" });
  });

  it("satisfies the logger shapes of the controller, the webhook receiver and the http server", () => {
    const { log } = capture();
    const controllerLog: ControllerLogger = log;
    const webhookLog: WebhookLogger = log;
    const httpLog: HttpServerOptions["log"] = log;
    const fromNull: ControllerLogger = nullLogger;
    assert.ok(controllerLog && webhookLog && httpLog && fromNull);
  });
});

describe("logger: redaction", () => {
  it("redacts real nkey seeds and private keys wherever they are, keeping public keys", () => {
    const user = NKeyPair.generate("user");
    const account = NKeyPair.generate("account");
    const operator = NKeyPair.generate("operator");
    const userSeed = seedOf(user);
    const accountSeed = seedOf(account);
    const operatorSeed = seedOf(operator);
    const privateKey = new TextDecoder().decode(user.getPrivateKey());
    const { log, lines, records } = capture({ base: { bootSeed: userSeed, note: `base ${accountSeed}` } });
    log.child({ bound: `seed=${operatorSeed};` }).info(
      {
        publicKey: user.publicKey,
        account: account.publicKey,
        text: `loaded ${userSeed} from disk`,
        nested: { deeper: [{ list: ["x", accountSeed] }] },
        [operatorSeed]: "seed as a key",
        key: user,
        bytes: user.getSeed(),
        pk: `private ${privateKey}`,
      },
      `message with ${userSeed}`,
    );
    const text = lines.join("");
    for (const secret of [userSeed, accountSeed, operatorSeed, privateKey]) {
      assert.ok(!text.includes(secret), "secret leaked");
      assert.ok(!text.includes(secret.slice(0, 20)), "part of a secret leaked");
    }
    const [record] = records();
    assert.equal(record!.msg, `message with ${REDACTED}`);
    assert.equal(record!.publicKey, user.publicKey);
    assert.equal(record!.account, account.publicKey);
    assert.equal(record!.text, `loaded ${REDACTED} from disk`);
    assert.equal(record!.note, `base ${REDACTED}`);
    assert.equal(record!.bound, `seed=${REDACTED};`);
    assert.equal(record!.bootSeed, REDACTED); // sensitive key name
    assert.deepEqual(record!.nested, { deeper: [{ list: ["x", REDACTED] }] });
    assert.equal(record![REDACTED], "seed as a key");
    assert.deepEqual(record!.key, { kind: "user", publicKey: user.publicKey });
    assert.equal(record!.bytes, "[Uint8Array 58 bytes]");
    assert.equal(record!.pk, `private ${REDACTED}`);
  });

  it("redacts a real creds file and its user JWT", () => {
    const { creds, jwt, user, account } = realCreds();
    const seed = seedOf(user);
    const { log, lines, records } = capture();
    log.info({ file: creds, list: [creds], wrapped: { text: `got:\n${creds}\nend` } }, `creds ${creds}`);
    log.info({ jwt: `${jwt}`, header: `Authorization: Bearer ${jwt}` }, `user jwt ${jwt}`);
    const text = lines.join("");
    for (const secret of [seed, jwt, jwt.split(".")[2]!, "BEGIN NATS USER JWT", "USER NKEY SEED"]) {
      assert.ok(!text.includes(secret), `${secret.slice(0, 24)} leaked`);
    }
    const [first, second] = records();
    // Both blocks go whole, from BEGIN to their END line; the boilerplate between them stays.
    assert.match(String(first!.file), /^-+\[REDACTED\]\n\n\*+ IMPORTANT \*+\n[^]*\n-+\[REDACTED\]\n\n\*+\n$/);
    assert.ok(String(first!.msg).startsWith(`creds -----${REDACTED}`));
    assert.equal(second!.msg, `user jwt ${REDACTED}`);
    assert.equal(second!.jwt, REDACTED);
    // The public keys it names are fine to log and survive next to the redaction.
    log.info({ account: account.publicKey, user: user.publicKey }, "issued");
    assert.deepEqual(records()[2], {
      time: "2025-01-02T03:04:05.678Z",
      level: "info",
      msg: "issued",
      account: account.publicKey,
      user: user.publicKey,
    });
  });

  it("redacts JWT-looking tokens (an OIDC ID token), GitLab tokens and URL passwords", () => {
    const idToken =
      "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJwcm9qZWN0X3BhdGg6Z3JvdXAvYXBpIiwiYXVkIjoibmF0cyJ9.c2lnbmF0dXJlLWJ5dGVz";
    const { log, lines, records } = capture();
    log.info(
      {
        claims: `ci ${idToken} ok`,
        url: "https://oauth2:hunter2@gitlab.example.com/api/v4",
        pat: "using glpat-0123456789abcdefghijKLMN now",
      },
      "token exchange",
    );
    const text = lines.join("");
    for (const secret of [idToken, "hunter2", "glpat-0123456789"]) assert.ok(!text.includes(secret));
    const [record] = records();
    assert.equal(record!.claims, `ci ${REDACTED} ok`);
    assert.equal(record!.url, `https://${REDACTED}@gitlab.example.com/api/v4`);
    assert.equal(record!.pat, `using ${REDACTED} now`);
  });

  // Issue 9, finding 10: encoded seeds, headers as lists and token query parameters got through.
  it("redacts seeds, private keys and creds encoded in base64 or hex, at any alignment", () => {
    const { creds, user: credsUser } = realCreds();
    const keys = [NKeyPair.generate("user"), NKeyPair.generate("account"), NKeyPair.generate("operator")];
    const b64 = (text: string): string => Buffer.from(text).toString("base64");
    const hex = (text: string): string => Buffer.from(text).toString("hex");
    const encodings: string[] = [];
    for (const key of keys) {
      const seed = seedOf(key);
      const privateKey = new TextDecoder().decode(key.getPrivateKey());
      encodings.push(
        b64(seed),
        b64(`${seed}\n`),
        Buffer.from(seed).toString("base64url"),
        `xyz${b64(seed)}`, // glued to other base64 characters: a shifted alignment
        `ab${b64(`  ${seed}`)}`,
        b64(privateKey),
        hex(seed),
        hex(seed).toUpperCase(),
        `f${hex(`${seed}\n`)}`, // odd alignment
      );
    }
    encodings.push(b64(creds), hex(creds));
    const { log, lines } = capture();
    // A Secret as the apiserver returns it: data values are base64.
    const secret = {
      metadata: { name: "nb-acme-42", namespace: "team-a" },
      data: { "account.nk": b64(seedOf(keys[1]!)), "ci.nk": b64(seedOf(keys[0]!)) },
    };
    log.info({ secret, encodings, text: `got ${encodings.join(" and ")}` }, `loaded ${encodings[0]}`);
    const text = lines.join("");
    for (const encoded of encodings) {
      const at = encoded.startsWith("xyz") || encoded.startsWith("ab") || encoded.startsWith("f") ? 3 : 0;
      assert.ok(!text.includes(encoded.slice(at, at + 24)), `encoded secret leaked: ${encoded.slice(0, 12)}`);
    }
    for (const value of Object.values(secret.data)) assert.ok(!text.includes(value.slice(0, 24)));
    assert.ok(!text.includes(b64(seedOf(credsUser)).slice(0, 24)));
    // Encoded text that holds no secret stays: hashes, ids, base64 of ordinary text.
    const hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const ordinary = b64("GitLab project acme/backend/api, id 42, managed by natsbind binding team-a/acme");
    assert.equal(redactSecrets(`claims ${hash}`), `claims ${hash}`);
    assert.equal(redactSecrets(ordinary), ordinary);
    assert.equal(redactSecrets(hash.repeat(4)), hash.repeat(4));
  });

  it("redacts header values given as lists: raw header lists, pairs and Headers", () => {
    const { log, lines, records } = capture();
    const headers = new Headers({ "Private-Token": "hdr-secret-1", Accept: "application/json" });
    headers.set("authorization", "Basic aGVsbG86d29ybGQ=");
    log.info(
      {
        rawHeaders: ["Private-Token", "raw-secret-2", "Accept", "*/*", "X-Gitlab-Token", "hook-secret-3"],
        pairs: [
          ["X-Gitlab-Token", "pair-secret-4"],
          ["Content-Type", "application/json"],
          ["Cookie", "session=cookie-secret-5"],
        ],
        headers,
      },
      "request",
    );
    const text = lines.join("");
    for (const leaked of ["hdr-secret-1", "aGVsbG86d29ybGQ", "raw-secret-2", "hook-secret-3"]) {
      assert.ok(!text.includes(leaked), `${leaked} leaked`);
    }
    for (const leaked of ["pair-secret-4", "cookie-secret-5"]) assert.ok(!text.includes(leaked), leaked);
    const [record] = records();
    assert.deepEqual(record!.rawHeaders, [
      "Private-Token",
      REDACTED,
      "Accept",
      "*/*",
      "X-Gitlab-Token",
      REDACTED,
    ]);
    assert.deepEqual(record!.pairs, [
      ["X-Gitlab-Token", REDACTED],
      ["Content-Type", "application/json"],
      ["Cookie", REDACTED],
    ]);
    assert.deepEqual(record!.headers, {
      accept: "application/json",
      authorization: REDACTED,
      "private-token": REDACTED,
    });
  });

  it("redacts token query parameters and form fields, keeping the others", () => {
    const cases: Array<[string, string]> = [
      [
        "GET https://gitlab.example.com/api/v4/projects/42?private_token=qs-secret-1&page=2",
        `GET https://gitlab.example.com/api/v4/projects/42?private_token=${REDACTED}&page=2`,
      ],
      [
        "https://gitlab.example.com/api/v4/groups?per_page=100&access_token=qs-secret-2#x",
        `https://gitlab.example.com/api/v4/groups?per_page=100&access_token=${REDACTED}#x`,
      ],
      ["/hooks?token=qs-secret-3", `/hooks?token=${REDACTED}`],
      ["body: private_token=qs-secret-4&x=1", `body: private_token=${REDACTED}&x=1`],
      ["?JOB_TOKEN=qs-secret-5;a=b", `?JOB_TOKEN=${REDACTED};a=b`],
      ['url="https://h/p?password=qs-secret-6"', `url="https://h/p?password=${REDACTED}"`],
      ["a=1&b=2 page=3", "a=1&b=2 page=3"],
    ];
    for (const [input, expected] of cases) assert.equal(redactSecrets(input), expected, input);
    const { log, lines } = capture();
    log.info({ url: cases[0]![0] }, `fetching ${cases[1]![0]}`);
    for (const n of [1, 2]) assert.ok(!lines.join("").includes(`qs-secret-${n}`));
  });

  it("replaces values under sensitive key names whatever they are", () => {
    const { log, records } = capture();
    log.info(
      {
        token: "t",
        secretToken: 42,
        Password: { a: 1 },
        userSeed: ["x"],
        credsText: null,
        Authorization: "Basic eA==",
        privateKey: true,
        headers: { "X-Gitlab-Token": "s3cret", cookie: "c", accept: "json" },
        publicKey: "UABC",
        claimsHash: "abc123",
        name: "visible",
      },
      "m",
    );
    const [record] = records();
    assert.deepEqual(record, {
      time: "2025-01-02T03:04:05.678Z",
      level: "info",
      msg: "m",
      token: REDACTED,
      secretToken: REDACTED,
      Password: REDACTED,
      userSeed: REDACTED,
      credsText: REDACTED,
      Authorization: REDACTED,
      privateKey: REDACTED,
      headers: { "X-Gitlab-Token": REDACTED, cookie: REDACTED, accept: "json" },
      publicKey: "UABC",
      claimsHash: "abc123",
      name: "visible",
    });
  });

  it("redacts inside Maps and Sets, and Map keys by name", () => {
    const seed = seedOf(NKeyPair.generate("account"));
    const { log, records } = capture();
    log.info(
      {
        m: new Map<unknown, unknown>([
          ["password", "p"],
          [1, seed],
        ]),
        s: new Set([seed, "ok"]),
      },
      "m",
    );
    const [record] = records();
    assert.deepEqual(record!.m, { password: REDACTED, 1: REDACTED });
    assert.deepEqual(record!.s, [REDACTED, "ok"]);
  });

  it("redactSecrets is usable on its own (events, status messages)", () => {
    const seed = seedOf(NKeyPair.generate("user"));
    assert.equal(redactSecrets(`a ${seed} b`), `a ${REDACTED} b`);
    assert.equal(redactSecrets("nothing secret"), "nothing secret");
  });
});

describe("logger: bounds", () => {
  it("cuts long strings at 4 KiB and says how long they were", () => {
    const { log, records } = capture();
    const long = "x".repeat(10_000);
    log.info({ long, [long]: 1 }, long);
    const [record] = records();
    const expected = `${"x".repeat(MAX_STRING_LENGTH)}…[truncated, 10000 chars]`;
    assert.equal(record!.long, expected);
    assert.equal(record!.msg, expected);
    assert.equal(record![expected], 1);
  });

  it("redacts a JWT too long to fit the scanned window (header and claims cut off mid-way)", () => {
    const longJwt = `eyJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJ${"A".repeat(3000)}.c2lnbmF0dXJl`;
    const { log, lines } = capture();
    log.info({ text: `${"w".repeat(MAX_STRING_LENGTH - 100)} ${longJwt} ${"v".repeat(5000)}` }, "m");
    const text = lines.join("");
    assert.ok(!text.includes("eyJhbGciOiJlZDI1NTE5"), "JWT header leaked");
    assert.ok(text.includes(` ${REDACTED}`));
  });

  it("drops the cut token at the end of the scanned window when redaction made it visible", () => {
    const { jwt } = realCreds();
    const seed = seedOf(NKeyPair.generate("user"));
    // Many JWTs shrink to [REDACTED], so text from the end of the 5 KiB window shows; a seed is cut there.
    const cutAt = MAX_STRING_LENGTH + 1024;
    const jwts = Array.from({ length: Math.floor(MAX_STRING_LENGTH / (jwt.length + 1)) }, () => jwt).join(
      " ",
    );
    const value = `${jwts} ${"visible ".padStart(cutAt - 20 - jwts.length - 1, " ")}${seed}${"q".repeat(100)}`;
    assert.ok(
      value.indexOf(seed) < cutAt && value.indexOf(seed) + seed.length > cutAt,
      "seed straddles the window",
    );
    const { log, lines, records } = capture();
    log.info({ value }, "m");
    assert.ok(!lines.join("").includes(seed.slice(0, 8)), "seed prefix leaked");
    assert.match(String(records()[0]!.value), /^(\[REDACTED\] )+ +visible …\[truncated, \d+ chars\]$/);
  });

  it("redacts a secret that straddles the cut, and a JWT cut short", () => {
    const seed = seedOf(NKeyPair.generate("user"));
    const { jwt } = realCreds();
    const straddle = `${"y".repeat(MAX_STRING_LENGTH - 20)}${seed}${"z".repeat(100)}`;
    const cutJwt = `${"w".repeat(MAX_STRING_LENGTH - 200)}${jwt}${"v".repeat(5000)}`;
    const { log, lines } = capture();
    log.info({ straddle, cutJwt }, "m");
    const text = lines.join("");
    assert.ok(!text.includes(seed.slice(0, 10)), "seed prefix leaked");
    assert.ok(!text.includes(jwt.slice(0, 150)), "JWT prefix leaked");
    assert.ok(text.includes(REDACTED));
  });

  it("does not split a surrogate pair at the cut", () => {
    const { log, records } = capture();
    log.info({ s: `${"a".repeat(MAX_STRING_LENGTH - 1)}😀😀` }, "m");
    const value = String(records()[0]!.s);
    assert.equal(value, `${"a".repeat(MAX_STRING_LENGTH - 1)}…[truncated, ${MAX_STRING_LENGTH + 3} chars]`);
  });

  it("logs [Circular] for cycles, and shared (non-circular) objects in full", () => {
    const { log, records } = capture();
    const a: Record<string, unknown> = { name: "a" };
    a.self = a;
    const list: unknown[] = [1];
    list.push(list);
    const shared = { v: 1 };
    log.info({ a, list, one: shared, two: shared }, "m");
    const [record] = records();
    assert.deepEqual(record!.a, { name: "a", self: "[Circular]" });
    assert.deepEqual(record!.list, [1, "[Circular]"]);
    assert.deepEqual(record!.one, { v: 1 });
    assert.deepEqual(record!.two, { v: 1 });
  });

  it("bounds nesting depth (and so hides whatever is deeper)", () => {
    const seed = seedOf(NKeyPair.generate("user"));
    let deep: unknown = { seedText: `x ${seed}`, list: [seed] };
    for (let i = 0; i < MAX_DEPTH + 2; i += 1) deep = { d: deep };
    const { log, lines, records } = capture();
    log.info({ deep, arr: [[[[[[["too deep"]]]]]]] }, "m");
    assert.ok(!lines.join("").includes(seed));
    let node = records()[0]!.deep as Record<string, unknown>;
    let depth = 1;
    while (typeof node.d === "object") {
      node = node.d as Record<string, unknown>;
      depth += 1;
    }
    assert.equal(depth, MAX_DEPTH);
    assert.equal(node.d, "[Object]");
    assert.deepEqual(records()[0]!.arr, [[[[[["[Array]"]]]]]]);
  });

  it("bounds the entries of arrays and objects", () => {
    const { log, records } = capture();
    const big = Object.fromEntries(Array.from({ length: MAX_ENTRIES + 5 }, (_, i) => [`k${i}`, i]));
    log.info({ list: Array.from({ length: MAX_ENTRIES + 5 }, (_, i) => i), big }, "m");
    const [record] = records();
    const list = record!.list as unknown[];
    assert.equal(list.length, MAX_ENTRIES + 1);
    assert.equal(list.at(-1), "[5 more]");
    const bigOut = record!.big as Record<string, unknown>;
    assert.equal(Object.keys(bigOut).length, MAX_ENTRIES + 1);
    assert.equal(bigOut["[more]"], "5 more entries");
  });

  it("never throws: odd values, throwing getters, a throwing sink, a broken clock", () => {
    const { log, records } = capture();
    const hostile = {
      get boom(): never {
        throw new Error("getter");
      },
      fine: 1,
    };
    const proxy = new Proxy(
      {},
      {
        ownKeys() {
          throw new Error("no keys");
        },
      },
    );
    const badToString = { toString: () => ({}) as string, toJSON: () => hostile };
    log.info(
      {
        hostile,
        proxy,
        badToString,
        big: 10n ** 30n,
        nan: NaN,
        inf: -Infinity,
        sym: Symbol("s"),
        fn: () => 1,
        date: new Date(0),
        badDate: new Date(NaN),
        undef: undefined,
        arrayHoles: [undefined, 1],
        protoKey: JSON.parse('{"__proto__": {"polluted": true}}') as unknown,
      },
      "m",
    );
    log.info("not an object" as unknown as Record<string, unknown>, 42 as unknown as string);
    log.info(null as unknown as Record<string, unknown>, "null fields");
    const [first, second, third] = records();
    assert.deepEqual(first, {
      time: "2025-01-02T03:04:05.678Z",
      level: "info",
      msg: "m",
      hostile: { boom: "[Unreadable]", fine: 1 },
      proxy: "[Unreadable]",
      badToString: { boom: "[Unreadable]", fine: 1 },
      big: "1000000000000000000000000000000",
      nan: "NaN",
      inf: "-Infinity",
      sym: "Symbol(s)",
      fn: "[Function]",
      date: "1970-01-01T00:00:00.000Z",
      badDate: "Invalid Date",
      arrayHoles: [null, 1],
      protoKey: { ["__proto__"]: { polluted: true } },
    });
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.deepEqual(second, {
      time: "2025-01-02T03:04:05.678Z",
      level: "info",
      msg: "42",
      value: "not an object",
    });
    assert.deepEqual(third, {
      time: "2025-01-02T03:04:05.678Z",
      level: "info",
      msg: "null fields",
      value: null,
    });

    const throwing = createLogger({
      write: () => {
        throw new Error("EPIPE");
      },
    });
    assert.doesNotThrow(() => throwing.error({}, "sink broken"));

    const lines: string[] = [];
    const badClock = createLogger({ write: (l) => lines.push(l), clock: { now: () => NaN } });
    badClock.info({}, "no time");
    assert.equal((JSON.parse(lines[0]!) as { time: string }).time, "NaN");
    const throwingClock = createLogger({
      write: (l) => lines.push(l),
      clock: {
        now: () => {
          throw new Error("clock");
        },
      },
    });
    throwingClock.child({ a: 1 }).warn({}, "still logged");
    assert.equal((JSON.parse(lines[1]!) as { msg: string }).msg, "still logged");
  });

  it("nullLogger writes nothing and its children are null loggers", () => {
    assert.doesNotThrow(() => {
      nullLogger.info({ a: 1 }, "m");
      nullLogger.child({ b: 2 }).error({}, "e");
    });
    assert.equal(nullLogger.child({}), nullLogger);
  });

  it("writes to stderr by default", (t) => {
    const writes: string[] = [];
    t.mock.method(process.stderr, "write", (chunk: string) => {
      writes.push(chunk);
      return true;
    });
    createLogger().warn({ a: 1 }, "to stderr");
    t.mock.restoreAll();
    assert.equal(writes.length, 1);
    assert.equal((JSON.parse(writes[0]!) as { msg: string }).msg, "to stderr");
  });
});
