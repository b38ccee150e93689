// `natsbind credentials revoke`'s pure parts: the command line (keys checked, seeds never echoed),
// which slots a revocation goes into, the revocation limit, when the resolver's JWT counts as
// carrying the entries, pruning (src/rotation/revocations.ts) as the command relies on it, the
// audit line, and the audit file search (streamed, bounded, hostile lines skipped).
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  checkRevocationsFit,
  jwtCarries,
  parseRevokeArgs,
  parseUserKeys,
  RevocationRefusedError,
  targetSlots,
  writeAudit,
} from "../../src/cli/revoke.ts";
import { UsageError } from "../../src/cli/usage.ts";
import {
  findIssuedUsers,
  MAX_AUDIT_LINE_BYTES,
  AuditSearchError,
} from "../../src/credentials/audit-search.ts";
import { openAuditSink, renderAuditLine } from "../../src/credentials/audit.ts";
import type { RevocationAuditEvent } from "../../src/credentials/types.ts";
import { nullLogger } from "../../src/observability/logger.ts";
import { systemClock } from "../../src/runtime/clock.ts";
import type { StoredAccount } from "../../src/keystore/port.ts";
import { accountClaims, MAX_REVOCATIONS, signJwt } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { carries, changeRevocations, nextPruneAt, prunableAt } from "../../src/rotation/revocations.ts";

const userKey = (): string => NKeyPair.generate("user").publicKey;
const seedOf = (k: NKeyPair): string => new TextDecoder().decode(k.getSeed());

function slot(projectId: number, environment?: string, revocations?: Record<string, number>): StoredAccount {
  return {
    ref: { binding: "acme", projectId, ...(environment !== undefined ? { environment } : {}) },
    account: NKeyPair.generate("account").publicKey,
    roles: { ci: NKeyPair.generate("account").publicKey },
    ...(revocations ? { revocations } : {}),
  };
}

function usageMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof UsageError, String(err));
    return err.message;
  }
  return assert.fail("no UsageError");
}

describe("parseUserKeys", () => {
  it("takes user public keys and drops repeats", () => {
    const [a, b] = [userKey(), userKey()];
    assert.deepEqual(parseUserKeys([a, b, a]), [a, b]);
  });

  it("names what is wrong by position, never echoing the value", () => {
    const good = userKey();
    const flipped = `${good.slice(0, 30)}${good[30] === "A" ? "B" : "A"}${good.slice(31)}`;
    const cases: Array<[string, RegExp]> = [
      [
        "UABC",
        /--user #2 is not a user public key: expected 56 characters of A-Z and 2-7 starting with U, got 4/,
      ],
      [flipped, /--user #2 is not a valid user public key: its checksum does not match/],
      [NKeyPair.generate("account").publicKey, /--user #2 is an account public key, not a user's/],
      [NKeyPair.generate("operator").publicKey, /--user #2 is an operator public key/],
      [good.toLowerCase(), /--user #2 is not a user public key/],
      [` ${good}`, /--user #2 is not a user public key/],
      ["", /--user #2 is empty/],
    ];
    for (const [value, re] of cases) {
      const message = usageMessage(() => parseUserKeys([good, value]));
      assert.match(message, re);
      if (value.length > 8) assert.ok(!message.includes(value.trim().slice(4, 30)), message);
    }
  });

  it("a seed (of any kind, whole or cut) is called a seed and not shown", () => {
    for (const kind of ["user", "account", "operator"] as const) {
      const seed = seedOf(NKeyPair.generate(kind));
      for (const value of [seed, seed.slice(0, 30), `${seed}x`]) {
        const message = usageMessage(() => parseUserKeys([value]));
        assert.match(message, /--user #1 looks like a seed \(a private key\).*not shown/);
        assert.ok(!message.includes(seed.slice(2, 20)), message);
      }
    }
  });

  it(`refuses more than ${MAX_REVOCATIONS} keys before looking at them`, () => {
    const keys = Array.from({ length: MAX_REVOCATIONS + 1 }, (_, i) => `not-checked-${i}`);
    assert.match(
      usageMessage(() => parseUserKeys(keys)),
      /10001 --user keys: an account carries at most 10000/,
    );
  });
});

describe("parseRevokeArgs", () => {
  const base = ["--binding", "acme", "--project", "42"];

  it("exactly one of --user, --job, --pipeline, --all", () => {
    const k = userKey();
    assert.deepEqual(parseRevokeArgs([...base, "--user", k]).selector, { kind: "users", keys: [k] });
    assert.deepEqual(parseRevokeArgs([...base, "--job", "7"]).selector, { kind: "job", id: 7 });
    assert.deepEqual(parseRevokeArgs([...base, "--pipeline", "8"]).selector, { kind: "pipeline", id: 8 });
    assert.deepEqual(parseRevokeArgs([...base, "--all"]).selector, { kind: "all" });
    assert.match(
      usageMessage(() => parseRevokeArgs(base)),
      /exactly one of/,
    );
    assert.match(
      usageMessage(() => parseRevokeArgs([...base, "--all", "--job", "1"])),
      /got --job, --all/,
    );
  });

  it("ids, the timeout and required flags are checked", () => {
    assert.equal(parseRevokeArgs([...base, "--all", "--timeout", "30s"]).timeoutMs, 30_000);
    assert.match(
      usageMessage(() => parseRevokeArgs(["--project", "1", "--all"])),
      /--binding NAME is required/,
    );
    assert.match(
      usageMessage(() => parseRevokeArgs(["--binding", "a", "--all"])),
      /--project ID is required/,
    );
    assert.match(
      usageMessage(() => parseRevokeArgs(["--binding", "a", "--project", "0", "--all"])),
      /not a project id/,
    );
    assert.match(
      usageMessage(() => parseRevokeArgs([...base, "--job", "-1"])),
      /--job/,
    );
    assert.match(
      usageMessage(() => parseRevokeArgs([...base, "--pipeline", "1.5"])),
      /not an id/,
    );
    assert.match(
      usageMessage(() => parseRevokeArgs([...base, "--all", "--timeout", "2h"])),
      /--timeout/,
    );
  });

  it("a seed given where no value is expected is redacted from parseArgs' message", () => {
    const seed = seedOf(NKeyPair.generate("user"));
    const message = usageMessage(() => parseRevokeArgs([...base, "--all", seed]));
    assert.ok(!message.includes(seed.slice(0, 20)), message);
    assert.match(message, /REDACTED/);
  });
});

describe("targetSlots", () => {
  const slots = [slot(1), slot(2, "prod"), slot(2, "staging"), slot(3)];

  it("the project's account, or its accounts per environment (one with --environment)", () => {
    assert.deepEqual(targetSlots(slots, "acme", 1, undefined), [slots[0]]);
    assert.deepEqual(targetSlots(slots, "acme", 2, undefined), [slots[1], slots[2]]);
    assert.deepEqual(targetSlots(slots, "acme", 2, "staging"), [slots[2]]);
  });

  it("no such slot: names what exists", () => {
    assert.match(
      usageMessage(() => targetSlots(slots, "acme", 9, undefined)),
      /binding acme has no account for project 9 \(projects with accounts: 1, 2, 3\)/,
    );
    assert.match(
      usageMessage(() => targetSlots(slots, "acme", 2, "dev")),
      /no account for project 2 environment "dev" \(it has: "prod", "staging"\)/,
    );
    assert.match(
      usageMessage(() => targetSlots(slots, "acme", 1, "dev")),
      /\(it has: \(one account for every environment\)\)/,
    );
    assert.match(
      usageMessage(() => targetSlots([], "acme", 1, undefined)),
      /projects with accounts: none/,
    );
    const many = Array.from({ length: 30 }, (_, i) => slot(i + 1));
    assert.match(
      usageMessage(() => targetSlots(many, "acme", 99, undefined)),
      /1, 2, .*20 and 10 more\)/,
    );
  });
});

describe("checkRevocationsFit and pruning", () => {
  const overlapMs = 65_000;
  const now = 1_800_000_000_000;
  const nowSec = now / 1000;

  it(`refuses to go past ${MAX_REVOCATIONS} live entries; expired ones do not count`, () => {
    const full = Object.fromEntries(Array.from({ length: MAX_REVOCATIONS - 1 }, (_, i) => [`U${i}`, nowSec]));
    const s = slot(1, undefined, full);
    assert.equal(checkRevocationsFit(s, { [userKey()]: nowSec }, now, overlapMs), MAX_REVOCATIONS);
    assert.throws(
      () => checkRevocationsFit(s, { [userKey()]: nowSec, [userKey()]: nowSec }, now, overlapMs),
      (err: unknown) =>
        err instanceof RevocationRefusedError &&
        /would carry 10001 revocations, more than the 10000 .* \(it has 9999; entries are dropped 65 s after/.test(
          err.message,
        ),
    );
    // The same entries past their prune time make room.
    const old = slot(1, undefined, Object.fromEntries(Object.keys(full).map((k) => [k, nowSec - 66])));
    assert.equal(checkRevocationsFit(old, { [userKey()]: nowSec, [userKey()]: nowSec }, now, overlapMs), 2);
    // A key already revoked is not counted twice.
    assert.equal(checkRevocationsFit(s, { U0: nowSec }, now, overlapMs), MAX_REVOCATIONS - 1);
  });

  it("an entry is kept until everything natsbind issued before it expired, then pruned", () => {
    const k = userKey();
    const s = slot(1);
    const added = changeRevocations({ [k]: nowSec }, now, overlapMs)(s)!;
    assert.deepEqual(added.revocations, { [k]: nowSec });
    assert.equal(nextPruneAt(added, overlapMs), prunableAt(nowSec, overlapMs));
    assert.equal(prunableAt(nowSec, overlapMs), now + overlapMs);
    // Any change just before: kept (a later push carries it); at the prune time: dropped.
    const other = userKey();
    const later = changeRevocations({ [other]: nowSec + 60 }, now + overlapMs - 1, overlapMs)(added)!;
    assert.deepEqual(later.revocations, { [k]: nowSec, [other]: nowSec + 60 });
    const pruned = changeRevocations({}, now + overlapMs, overlapMs)(later)!;
    assert.deepEqual(pruned.revocations, { [other]: nowSec + 60 });
    assert.equal(changeRevocations({}, now + overlapMs, overlapMs)(pruned), undefined, "nothing more to do");
    // A request for an entry that would be pruned at once is carried already.
    assert.ok(carries(s, { [k]: nowSec }, now + overlapMs, overlapMs));
    assert.ok(!carries(s, { [k]: nowSec }, now, overlapMs));
    // The later time wins for a key revoked twice.
    assert.deepEqual(changeRevocations({ [k]: nowSec - 5 }, now, overlapMs)(added), undefined);
    assert.deepEqual(changeRevocations({ [k]: nowSec + 5 }, now, overlapMs)(added)!.revocations, {
      [k]: nowSec + 5,
    });
  });
});

describe("jwtCarries", () => {
  const operator = NKeyPair.generate("operator");
  const account = NKeyPair.generate("account");
  const jwtWith = (revocations?: Record<string, number>): string =>
    signJwt(
      accountClaims(
        {
          publicKey: account.publicKey,
          name: "acme/api",
          signingKeys: [],
          ...(revocations ? { revocations } : {}),
        },
        operator.publicKey,
      ),
      operator,
      1_800_000_000,
    );
  const k = userKey();
  const overlapMs = 65_000;
  const now = 1_800_000_000_000;

  it("only when the JWT on the resolver holds each entry at that time or later", () => {
    assert.equal(jwtCarries(undefined, { [k]: 1_800_000_000 }, now, overlapMs), false);
    assert.equal(jwtCarries(jwtWith(), { [k]: 1_800_000_000 }, now, overlapMs), false);
    assert.equal(jwtCarries(jwtWith({ [k]: 1_799_999_999 }), { [k]: 1_800_000_000 }, now, overlapMs), false);
    assert.equal(jwtCarries(jwtWith({ [k]: 1_800_000_000 }), { [k]: 1_800_000_000 }, now, overlapMs), true);
    assert.equal(jwtCarries(jwtWith({ "*": 1_800_000_001 }), { "*": 1_800_000_000 }, now, overlapMs), true);
    assert.equal(
      jwtCarries(jwtWith({ [k]: 1_800_000_000 }), { [k]: 1_800_000_000, "*": 1_800_000_000 }, now, overlapMs),
      false,
    );
    // An entry already past its prune time revokes nothing natsbind issued: nothing to wait for.
    assert.equal(jwtCarries(jwtWith(), { [k]: 1_800_000_000 }, now + overlapMs, overlapMs), true);
  });

  it("a JWT whose signature does not verify is an error, not a yes", () => {
    const [h, b] = jwtWith({ [k]: 1_800_000_000 }).split(".");
    assert.throws(() => jwtCarries(`${h}.${b}.AAAA`, { [k]: 1_800_000_000 }, now, overlapMs));
  });
});

describe("the credentials.revoked audit line", () => {
  it("has exactly its fields, redacted like every line", () => {
    const seed = seedOf(NKeyPair.generate("user"));
    const line = renderAuditLine(
      {
        event: "credentials.revoked",
        time: "2026-03-02T10:15:04.123Z",
        binding: "team-a/acme",
        projectId: 42,
        environment: `prod ${seed}`,
        account: "AXX",
        userPublicKey: "*",
        revokedAt: "2026-03-02T10:15:04.000Z",
        jobId: 7,
        source: "cli",
        // not a field of the event: never written
        ...({ token: "secret", jwt: "eyJ" } as object),
      } as never,
      () => 0,
    )!;
    const parsed = JSON.parse(line) as Record<string, unknown>;
    assert.deepEqual(Object.keys(parsed), [
      "event",
      "time",
      "binding",
      "projectId",
      "environment",
      "account",
      "userPublicKey",
      "revokedAt",
      "jobId",
      "source",
    ]);
    assert.equal(parsed.environment, "prod [REDACTED]");
    assert.ok(!line.includes(seed));
  });
});

describe("writeAudit", () => {
  it("writes every line, also more than the sink buffers at once (10,000)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "natsbind-revoke-audit-"));
    try {
      const file = join(dir, "audit.log");
      const sink = await openAuditSink({ file, clock: systemClock, log: nullLogger });
      const events = Array.from({ length: 25_000 }, (_, i): RevocationAuditEvent => ({
        event: "credentials.revoked",
        time: "2026-03-02T10:15:04.123Z",
        binding: "acme",
        projectId: 1 + (i % 3),
        account: "AXX",
        userPublicKey: `U${i}`,
        revokedAt: "2026-03-02T10:15:04.000Z",
        source: "cli",
      }));
      await writeAudit(sink, events);
      const lines = (await readFile(file, "utf8")).trim().split("\n");
      assert.equal(lines.length, 25_000);
      assert.equal((JSON.parse(lines.at(-1)!) as { userPublicKey: string }).userPublicKey, "U24999");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("findIssuedUsers", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "natsbind-audit-search-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const account = NKeyPair.generate("account").publicKey;
  const otherAccount = NKeyPair.generate("account").publicKey;
  const now = Date.parse("2026-03-02T10:20:00Z");
  const issued = (o: Record<string, unknown>): string =>
    JSON.stringify({
      event: "credentials.issued",
      time: "2026-03-02T10:15:04.123Z",
      via: "exchange",
      projectId: 42,
      pipelineId: 900,
      jobId: 9001,
      account,
      userPublicKey: userKey(),
      expiresAt: "2026-03-02T10:25:04.000Z",
      ...o,
    });
  const query = { projectId: 42, accounts: new Set([account]), now, maxUsers: 100 };

  it("finds the job's users; skips other jobs, projects, accounts, expired and malformed lines", async () => {
    const [a, b, c] = [userKey(), userKey(), userKey()];
    const lines = [
      issued({ userPublicKey: a }),
      issued({ userPublicKey: a }), // the same key again (callout reconnect): one entry
      issued({ userPublicKey: b, via: "callout" }),
      issued({ jobId: 9002 }),
      issued({ projectId: 43 }),
      issued({ jobId: "9001" }), // wrong type: not this job
      issued({ account: otherAccount }),
      issued({ expiresAt: "2026-03-02T10:19:59.000Z" }),
      issued({ userPublicKey: "UNOTAKEY" }),
      issued({ userPublicKey: seedOf(NKeyPair.generate("user")) }),
      issued({ expiresAt: "soon" }),
      JSON.stringify({ event: "credentials.refused", projectId: 42, jobId: 9001, userPublicKey: c }),
      JSON.stringify({ event: "nats.connect", account, userPublicKey: c, tags: ["job:9001"] }),
      '{"event":"credentials.issued", broken',
      "",
      "[1,2,3]",
      issued({ userPublicKey: c }).slice(0, -1), // cut: not JSON
    ];
    const path = join(dir, "mixed.log");
    await writeFile(path, `${lines.join("\n")}\n`);
    const found = await findIssuedUsers(path, { ...query, jobId: 9001 });
    assert.deepEqual([...found.users.keys()].sort(), [a, b].sort());
    assert.equal(found.users.get(a), account);
    assert.equal(found.expired, 1);
    assert.equal(found.otherAccounts, 1);
    assert.equal(found.malformed, 5);
    assert.equal(found.truncated, false);

    const byPipeline = await findIssuedUsers(path, { ...query, pipelineId: 900 });
    assert.ok(byPipeline.users.size >= 3, "the pipeline's jobs (9001 and 9002)");
  });

  it("streams: lines across chunk boundaries, an over-long line skipped whole, a last line without newline", async () => {
    const wanted: string[] = [];
    const parts: string[] = [];
    for (let i = 0; i < 3000; i++) {
      const u = userKey();
      if (i % 100 === 0) {
        wanted.push(u);
        parts.push(issued({ userPublicKey: u }));
      } else parts.push(issued({ userPublicKey: u, jobId: 1 }));
      // A line far over the bound, containing what looks like a matching line: skipped, not split.
      if (i === 1500) parts.push(`${"x".repeat(MAX_AUDIT_LINE_BYTES * 5)}${issued({})}`);
    }
    const last = userKey();
    wanted.push(last);
    const path = join(dir, "big.log");
    await writeFile(path, `${parts.join("\n")}\n${issued({ userPublicKey: last })}`);
    const found = await findIssuedUsers(path, { ...query, jobId: 9001 });
    assert.deepEqual([...found.users.keys()].sort(), wanted.sort());
    assert.equal(found.malformed, 1);
    assert.equal(found.lines, 3002);
  });

  it("stops at maxUsers and says so", async () => {
    const path = join(dir, "many.log");
    await writeFile(path, `${Array.from({ length: 20 }, () => issued({})).join("\n")}\n`);
    const found = await findIssuedUsers(path, { ...query, jobId: 9001, maxUsers: 5 });
    assert.equal(found.users.size, 5);
    assert.equal(found.truncated, true);
  });

  it("a missing, unreadable or non-regular file is an AuditSearchError naming it", async () => {
    await assert.rejects(
      findIssuedUsers(join(dir, "nope.log"), { ...query, jobId: 1 }),
      (err: unknown) =>
        err instanceof AuditSearchError && /audit file .*nope\.log does not exist/.test(err.message),
    );
    await assert.rejects(
      findIssuedUsers(dir, { ...query, jobId: 1 }),
      (err: unknown) =>
        err instanceof AuditSearchError && /is not a regular file|cannot be read/.test(err.message),
    );
    await assert.rejects(findIssuedUsers(join(dir, "x"), { ...query }), TypeError);
  });
});
