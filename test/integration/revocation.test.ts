// Account JWT `revocations` against a real nats-server in operator mode with a full resolver: what
// issue 11's `credentials revoke` will push. Only the claims primitive, no CLI or reconciler.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import type { NatsConnection } from "@nats-io/transport-node";
import { accountClaims, signJwt } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { startNatsServer, type NatsServer } from "../support/nats-server.ts";
import {
  connectWithCreds,
  createTestOperator,
  operatorResolver,
  projectAccount,
  roleUserCreds,
  type TestAccount,
  type TestOperator,
  watchStatus,
} from "../support/operator.ts";
import { waitFor } from "../support/process.ts";

const TIMEOUT = { timeout: 120_000 };
const TAGS = ["project:42"];
// What nats-server 2.15 tells a client whose user JWT is revoked, connected or connecting.
const REFUSED = /Authorization Violation/;
// What it sends a connected client when a push revokes it, before closing the connection.
const REVOKED_NOTICE = "User Authentication Revoked";

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

describe("account revocations on a real nats-server", TIMEOUT, () => {
  let op: TestOperator;
  let server: NatsServer;
  let resolver: NatsResolver;
  // The full resolver keeps a stored JWT with a newer iat: every push of an account is signed later.
  let lastIat = 0;

  before(async () => {
    op = await createTestOperator();
    server = await startNatsServer(op.serverOptions);
    resolver = await operatorResolver(op, server.url);
  });
  after(async () => {
    await resolver?.close();
    await server?.stop();
    await op?.remove();
  });

  /** Pushes `acc` with `revocations` (none: without) and checks every server took it. */
  async function pushAccount(acc: TestAccount, revocations?: Record<string, number>): Promise<void> {
    lastIat = Math.max(nowSeconds(), lastIat);
    const jwt = signJwt(
      accountClaims({ ...acc.desired, ...(revocations ? { revocations } : {}) }, op.signingKey.publicKey),
      op.signingKey,
      lastIat,
    );
    const outcome = await resolver.push(jwt);
    assert.deepEqual(
      outcome.replies.map((r) => [r.code, r.message]),
      [[200, "jwt updated"]],
    );
    assert.equal(await resolver.lookup(acc.account.publicKey), jwt);
  }

  function creds(acc: TestAccount, opts: { user?: NKeyPair; issuedAt?: number } = {}): Uint8Array {
    return roleUserCreds(acc.account.publicKey, acc.ciKey, { tags: TAGS, ...opts });
  }

  async function roundTrip(nc: NatsConnection, subject = "build.42.ping"): Promise<void> {
    const sub = nc.subscribe(subject, { max: 1 });
    const received = (async () => {
      for await (const m of sub) return m.string();
    })();
    await nc.flush();
    nc.publish(subject, "pong");
    assert.equal(await received, "pong");
  }

  /** Waits for a connection the server closes; returns the error the client saw and when. */
  async function closedBy(nc: NatsConnection): Promise<Error | undefined> {
    let closed: Error | undefined | "open" = "open";
    void nc.closed().then((err) => {
      closed = err ?? undefined;
    });
    await waitFor(async () => closed !== "open", {
      what: "the server to close the revoked connection",
      timeoutMs: 5_000,
      intervalMs: 10,
    });
    return closed === "open" ? undefined : closed;
  }

  async function refused(c: Uint8Array): Promise<string> {
    try {
      const nc = await connectWithCreds(server.url, c);
      await nc.close();
    } catch (err) {
      return (err as Error).message;
    }
    assert.fail("the server accepted a revoked user");
  }

  it("closes a connected revoked user at push, refuses it after, and leaves the other user alone", async (t) => {
    const acc = projectAccount(op, "group/revoke-one");
    await pushAccount(acc);
    const user1 = NKeyPair.generate("user");
    const creds1 = creds(acc, { user: user1 });
    const nc1 = await connectWithCreds(server.url, creds1);
    const nc2 = await connectWithCreds(server.url, creds(acc));
    const events1 = watchStatus(nc1);
    const events2 = watchStatus(nc2);
    try {
      await roundTrip(nc1);
      await roundTrip(nc2);

      await pushAccount(acc, { [user1.publicKey]: nowSeconds() });
      const pushAcked = Date.now();
      // The server tells the client why, then closes it at once; the client's own reconnect attempt
      // (reconnectTimeWait later) is refused, and only then does closed() resolve.
      await events1.next("the revocation notice", (e) => e === `error: ${REVOKED_NOTICE}`);
      const noticeAfter = Date.now() - pushAcked;
      const err = await closedBy(nc1);
      t.diagnostic(
        `revocation notice ${noticeAfter} ms after the push ack, closed ${Date.now() - pushAcked} ms after`,
      );
      t.diagnostic(`user1 closed() error: ${String(err)}; status events: ${JSON.stringify(events1.all)}`);
      assert.ok(nc1.isClosed());
      assert.deepEqual(events1.all.slice(0, 2), [`error: ${REVOKED_NOTICE}`, "disconnect"]);
      assert.match(String(err), REFUSED);

      const refusal = await refused(creds1);
      t.diagnostic(`user1 reconnect refused with: ${refusal}`);
      assert.match(refusal, REFUSED);

      const logged = server
        .logs()
        .split("\n")
        .filter((l) => /revok|authori[sz]|authentic/i.test(l));
      t.diagnostic(`server log lines:\n${logged.join("\n")}`);
      // At its default log level the server logs the refused connects, not the close at push.
      assert.ok(logged.some((l) => l.includes(`authentication error - Nkey "${user1.publicKey}"`)));

      await roundTrip(nc2);
      assert.equal(nc2.isClosed(), false);
      assert.deepEqual(events2.all, [], "user2 saw no disconnect or error");
    } finally {
      await nc1.close();
      await nc2.close();
    }
  });

  it("revokes a user whose iat is at or before the time (the same second counts), not one after", async () => {
    const acc = projectAccount(op, "group/revoke-boundary");
    // A time in the past, so the users below carry explicit, already-past iats: no waiting.
    const at = nowSeconds() - 60;
    const user = NKeyPair.generate("user");
    await pushAccount(acc, { [user.publicKey]: at });
    assert.match(await refused(creds(acc, { user, issuedAt: at - 1 })), REFUSED);
    assert.match(await refused(creds(acc, { user, issuedAt: at })), REFUSED);
    const later = await connectWithCreds(server.url, creds(acc, { user, issuedAt: at + 1 }));
    try {
      await roundTrip(later);
    } finally {
      await later.close();
    }
    // Another user of the account is not touched by a user key's entry, whatever its iat.
    const other = await connectWithCreds(server.url, creds(acc, { issuedAt: at - 1 }));
    await other.close();
  });

  it('revokes every user issued at or before the time with "*", and none issued after', async () => {
    const acc = projectAccount(op, "group/revoke-all-boundary");
    const at = nowSeconds() - 60;
    await pushAccount(acc, { "*": at });
    assert.match(await refused(creds(acc, { issuedAt: at })), REFUSED);
    assert.match(await refused(creds(acc, { issuedAt: at - 3600 })), REFUSED);
    const later = await connectWithCreds(server.url, creds(acc, { issuedAt: at + 1 }));
    await later.close();
  });

  it("lets the same user key connect again once re-issued in a later second", async () => {
    const acc = projectAccount(op, "group/revoke-reissue");
    await pushAccount(acc);
    const user = NKeyPair.generate("user");
    const nc = await connectWithCreds(server.url, creds(acc, { user }));
    const events = watchStatus(nc);
    const at = nowSeconds();
    await pushAccount(acc, { [user.publicKey]: at });
    await events.next("the revocation notice", (e) => e === `error: ${REVOKED_NOTICE}`);
    await closedBy(nc);
    // Issued in the revocation's own second it is still revoked ...
    assert.match(await refused(creds(acc, { user, issuedAt: at })), REFUSED);
    // ... so wait for the clock's second to pass the revocation time before re-issuing.
    await waitFor(async () => nowSeconds() > at, {
      what: "the next second",
      timeoutMs: 3_000,
      intervalMs: 20,
    });
    const again = await connectWithCreds(server.url, creds(acc, { user }));
    try {
      await roundTrip(again);
    } finally {
      await again.close();
    }
  });

  it('closes every connected user at push with "*" at now, and admits users issued later', async () => {
    const acc = projectAccount(op, "group/revoke-all");
    await pushAccount(acc);
    const conns = [
      await connectWithCreds(server.url, creds(acc)),
      await connectWithCreds(server.url, creds(acc)),
    ];
    const watched = conns.map(watchStatus);
    const at = nowSeconds();
    await pushAccount(acc, { "*": at });
    for (const w of watched) await w.next("the revocation notice", (e) => e === `error: ${REVOKED_NOTICE}`);
    for (const nc of conns) await closedBy(nc);
    // A user issued in the revocation's second is refused too (closing took a reconnect wait).
    assert.match(await refused(creds(acc, { issuedAt: at })), REFUSED);
    await waitFor(async () => nowSeconds() > at, {
      what: "the next second",
      timeoutMs: 3_000,
      intervalMs: 20,
    });
    const later = await connectWithCreds(server.url, creds(acc));
    try {
      await roundTrip(later);
    } finally {
      await later.close();
    }
  });

  it("re-admits a revoked user when a later push drops the entry: why the reconciler must keep them", async () => {
    const acc = projectAccount(op, "group/revoke-dropped");
    const user = NKeyPair.generate("user");
    const revoked = creds(acc, { user, issuedAt: nowSeconds() - 120 });
    await pushAccount(acc, { [user.publicKey]: nowSeconds() - 60 });
    assert.match(await refused(revoked), REFUSED);
    await pushAccount(acc);
    const nc = await connectWithCreds(server.url, revoked);
    await nc.close();
  });

  it('leaves other accounts\' users alone, even under "*"', async () => {
    const revokedAcc = projectAccount(op, "group/revoke-this");
    const otherAcc = projectAccount(op, "group/not-this");
    await pushAccount(revokedAcc);
    await pushAccount(otherAcc);
    const other = await connectWithCreds(server.url, creds(otherAcc));
    const events = watchStatus(other);
    try {
      await pushAccount(revokedAcc, { "*": nowSeconds() });
      assert.match(await refused(creds(revokedAcc)), REFUSED);
      await roundTrip(other);
      assert.deepEqual(events.all, []);
    } finally {
      await other.close();
    }
  });
});
