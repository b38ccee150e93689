// natsbind's own system users (issue 11, part 4): what the JWTs allow, how long they live, and that
// every request the resolver client makes is among the allowed subjects.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { inspect } from "node:util";
import { decodeJwt } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import {
  MAX_SYSTEM_USER_LIFETIME_MS,
  RESOLVER_REQUEST_SUBJECTS,
  RESOLVER_USER_ROLE,
  SystemUserError,
  SystemUserIssuer,
  type SystemUserRole,
} from "../../src/nats/system-user.ts";
import {
  CONNECTION_AUDIT_USER_ROLE,
  CONNECT_SUBJECT,
  DISCONNECT_SUBJECT,
} from "../../src/credentials/audit-connections.ts";
import { ManualClock } from "../../src/runtime/clock.ts";

const system = NKeyPair.generate("account");
const signing = NKeyPair.generate("account");

function issuer(lifetimeMs = MAX_SYSTEM_USER_LIFETIME_MS, clock = new ManualClock()): SystemUserIssuer {
  return new SystemUserIssuer({ systemAccount: system.publicKey, signingKey: signing, lifetimeMs, clock });
}

/** Whether NATS subject pattern `pattern` (with * and >) covers the literal `subject`. */
function covers(pattern: string, subject: string): boolean {
  const p = pattern.split(".");
  const s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return s.length > i;
    if (i >= s.length || (p[i] !== "*" && p[i] !== s[i])) return false;
  }
  return p.length === s.length;
}

describe("natsbind's system users", () => {
  it("the resolver's user may publish only the resolver's requests and subscribe only to its own inbox", () => {
    const iss = issuer();
    const user = iss.newUser(RESOLVER_USER_ROLE);
    assert.equal(user.key.kind, "user");
    assert.match(user.inboxPrefix ?? "", /^_INBOX_natsbind\.[A-Z2-7]{24}$/);
    const claims = decodeJwt(iss.jwtFor(user).jwt);
    assert.equal(claims.sub, user.key.publicKey);
    assert.equal(claims.iss, signing.publicKey);
    assert.equal(claims.name, "natsbind-resolver");
    assert.equal(claims.nats.issuer_account, system.publicKey);
    assert.deepEqual(claims.nats.pub, {
      allow: [
        "$SYS.REQ.SERVER.PING",
        "$SYS.REQ.SERVER.PING.VARZ",
        "$SYS.REQ.CLAIMS.UPDATE",
        "$SYS.REQ.CLAIMS.DELETE",
        "$SYS.REQ.CLAIMS.LIST",
        "$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP",
        "$SYS.REQ.ACCOUNT.*.CONNZ",
        "$SYS.REQ.ACCOUNT.PING.STATZ",
      ],
    });
    assert.deepEqual(claims.nats.sub, { allow: [`${user.inboxPrefix}.>`] });
    assert.deepEqual(claims.nats.allowed_connection_types, ["STANDARD"]);
    assert.equal(claims.nats.resp, undefined, "answers nothing");
    assert.equal(claims.nats.bearer_token, undefined, "must prove its key");
  });

  it("the connection audit's user may publish nothing and subscribe only to the connect events", () => {
    const iss = issuer();
    const user = iss.newUser(CONNECTION_AUDIT_USER_ROLE);
    assert.equal(user.inboxPrefix, undefined);
    const claims = decodeJwt(iss.jwtFor(user).jwt);
    assert.equal(claims.name, "natsbind-audit");
    assert.deepEqual(claims.nats.pub, { deny: [">"] });
    assert.deepEqual(claims.nats.sub, { allow: [CONNECT_SUBJECT, DISCONNECT_SUBJECT] });
  });

  it("a role allowing nothing gets deny > both ways (an empty allow list would allow everything)", () => {
    const iss = issuer();
    const role: SystemUserRole = { name: "nothing", publish: [], subscribe: [], inbox: false };
    const claims = decodeJwt(iss.jwtFor(iss.newUser(role)).jwt);
    assert.deepEqual(claims.nats.pub, { deny: [">"] });
    assert.deepEqual(claims.nats.sub, { deny: [">"] });
  });

  it("refuses roles broader than natsbind needs", () => {
    const iss = issuer();
    for (const role of [
      { name: "all", publish: [">"], subscribe: [], inbox: true },
      { name: "inboxes", publish: [], subscribe: ["_INBOX.>"], inbox: false },
      { name: "bad", publish: ["a b"], subscribe: [], inbox: false },
    ]) {
      assert.throws(() => iss.newUser(role), SystemUserError, role.name);
    }
  });

  it("each user has its own key and inbox", () => {
    const iss = issuer();
    const a = iss.newUser(RESOLVER_USER_ROLE);
    const b = iss.newUser(RESOLVER_USER_ROLE);
    assert.notEqual(a.key.publicKey, b.key.publicKey);
    assert.notEqual(a.inboxPrefix, b.inboxPrefix);
  });

  it("a JWT lives the configured lifetime at most (1 hour at most), counted from the clock", () => {
    const clock = new ManualClock(Date.UTC(2026, 0, 1, 0, 0, 0, 700));
    for (const lifetimeMs of [MAX_SYSTEM_USER_LIFETIME_MS, 10_000, 10_500]) {
      const iss = issuer(lifetimeMs, clock);
      const user = iss.newUser(RESOLVER_USER_ROLE);
      const { jwt, expiresAt } = iss.jwtFor(user);
      const claims = decodeJwt(jwt);
      assert.equal(claims.iat, Math.floor(clock.now() / 1000));
      assert.equal(claims.exp! * 1000, expiresAt);
      assert.ok(claims.exp! - claims.iat! <= lifetimeMs / 1000, `${lifetimeMs}: exp - iat`);
      assert.ok(expiresAt <= clock.now() + lifetimeMs, `${lifetimeMs}: never later than now + lifetime`);
      assert.ok(expiresAt > clock.now() + lifetimeMs - 2000, "whole seconds: at most 2 s shorter");
      // A reconnect later gets a JWT counted from then, for the same key.
      clock.advance(5_000);
      const later = decodeJwt(iss.jwtFor(user).jwt);
      assert.equal(later.sub, user.key.publicKey);
      assert.equal(later.iat, Math.floor(clock.now() / 1000));
    }
  });

  it("refuses a lifetime outside 10 s to 1 h, a non-account signing key or system account", () => {
    const clock = new ManualClock();
    const make = (o: Partial<ConstructorParameters<typeof SystemUserIssuer>[0]>) =>
      new SystemUserIssuer({
        systemAccount: system.publicKey,
        signingKey: signing,
        lifetimeMs: 60_000,
        clock,
        ...o,
      });
    assert.throws(
      () => make({ lifetimeMs: MAX_SYSTEM_USER_LIFETIME_MS + 1 }),
      /lifetime must be 10000 to 3600000 ms/,
    );
    assert.throws(() => make({ lifetimeMs: 9_999 }), /lifetime must be/);
    assert.throws(
      () => make({ signingKey: NKeyPair.generate("operator") }),
      /must be an account key, got a operator key/,
    );
    assert.throws(
      () => make({ systemAccount: NKeyPair.generate("user").publicKey }),
      /not an account public key/,
    );
  });

  it("shows no seed in JSON, inspect or errors", () => {
    const iss = issuer();
    const user = iss.newUser(RESOLVER_USER_ROLE);
    const seeds = [user.key, signing].map((k) => new TextDecoder().decode(k.getSeed()));
    for (const text of [
      JSON.stringify(user),
      inspect(user, { depth: 10 }),
      inspect(iss, { depth: 10 }),
      String(user.key),
    ]) {
      for (const seed of seeds) assert.ok(!text.includes(seed), text);
    }
  });

  it("covers every $SYS request subject src/nats/resolver.ts makes", async () => {
    const source = await readFile(new URL("../../src/nats/resolver.ts", import.meta.url), "utf8");
    // String and template literals only (comments name subjects too); ${...} is one token.
    const requested = [...source.matchAll(/["`](\$SYS\.[^"`\s]+)["`]/g)].map((m) =>
      m[1]!.replace(/\$\{[^}]+\}/g, "ANYTOKEN"),
    );
    assert.ok(requested.length >= 6, `found ${requested.join(", ")}`);
    for (const subject of requested) {
      assert.ok(
        RESOLVER_REQUEST_SUBJECTS.some((p) => covers(p, subject)),
        `${subject} is requested by resolver.ts but not allowed to natsbind's system user (system-user.ts)`,
      );
    }
    // And nothing is allowed that the resolver does not request.
    for (const pattern of RESOLVER_REQUEST_SUBJECTS) {
      assert.ok(
        requested.some((s) => covers(pattern, s)),
        `${pattern} is allowed but resolver.ts requests no such subject`,
      );
    }
  });
});
