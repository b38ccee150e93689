// The webhook relay between replicas: authentication of relay requests (forged, stale, replayed,
// oversized, mistyped), the follower's pending queue, what leaves a follower, and where it may go.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, request, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { V1Pod } from "@kubernetes/client-node";
import type { GitLabSignal } from "../../src/gitlab/signals.ts";
import { WEBHOOK_PATH, createWebhookHandler } from "../../src/gitlab/webhook.ts";
import { startHttpServer, type HttpServer } from "../../src/http/server.ts";
import { LeaderAddress, leaderIdentity, podNameOfIdentity, relayUrlOfPod } from "../../src/k8s/leader-pod.ts";
import { PendingSignals, SignalRelay } from "../../src/k8s/relay-sender.ts";
import {
  HEADER_SIGNATURE,
  MAX_RELAY_BODY_BYTES,
  RELAY_PATH,
  ReplayCache,
  createRelayReceiver,
  relayKey,
  signRelayRequest,
  type RelayReceiver,
} from "../../src/k8s/webhook-relay.ts";
import { ManualClock } from "../../src/runtime/clock.ts";

const SECRET = "webhook-secret-under-test";
const KEY = relayKey(SECRET);
const T0 = 1_800_000_000_000;
const project = (projectId: number, event: "project_create" | "project_destroy" = "project_create") =>
  ({ kind: "project", event, projectId }) as GitLabSignal;
const group = (groupId: number) => ({ kind: "group", event: "group_create", groupId }) as GitLabSignal;

let nonces = 0;
const nonce = (): string => (++nonces).toString(16).padStart(32, "0");

async function post(
  url: string,
  headers: Record<string, string>,
  body: Buffer | string,
): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { method: "POST", headers, body });
  return { status: res.status, body: await res.text() };
}

describe("relay key", () => {
  it("is derived (HKDF) from the secret: 32 bytes, not the secret, different per secret", () => {
    assert.equal(KEY.length, 32);
    assert.ok(!KEY.toString("utf8").includes(SECRET) && !KEY.toString("hex").includes(SECRET));
    assert.notDeepEqual(relayKey(`${SECRET}x`), KEY);
    assert.deepEqual(relayKey(SECRET), KEY, "deterministic: every replica derives the same key");
  });
});

describe("relay receiver (the leader's side)", () => {
  let server: HttpServer;
  let url: string;
  let receiver: RelayReceiver;
  const applied: GitLabSignal[] = [];
  let leading = true;
  const now = T0;

  before(async () => {
    receiver = createRelayReceiver({
      key: KEY,
      now: () => now,
      apply: (signals) => {
        if (!leading) return false;
        applied.push(...signals);
        return true;
      },
    });
    server = await startHttpServer({ host: "127.0.0.1", port: 0, routes: { [RELAY_PATH]: receiver } });
    url = `${server.url}${RELAY_PATH}`;
  });
  after(() => server.close());

  const signed = (signals: unknown[], over: { time?: number; nonce?: string; key?: Buffer } = {}) =>
    signRelayRequest(
      over.key ?? KEY,
      { time: over.time ?? now, nonce: over.nonce ?? nonce(), from: "pod-b_7" },
      signals as GitLabSignal[],
    );

  it("applies a correctly signed, fresh request", async () => {
    const { headers, body } = signed([project(1), group(2)]);
    const res = await post(url, headers, body);
    assert.equal(res.status, 202, res.body);
    assert.deepEqual(applied.splice(0), [project(1), group(2)]);
  });

  it("refuses forged requests and applies nothing", async () => {
    const before = receiver.counters.rejected.unauthenticated;
    // Signed with a key derived from another secret.
    const forged = signed([project(3)], { key: relayKey("guessed-secret") });
    assert.equal((await post(url, forged.headers, forged.body)).status, 401);
    // A valid signature over another body.
    const good = signed([project(3)]);
    const swapped = Buffer.from(JSON.stringify({ signals: [project(4)] }));
    assert.equal((await post(url, good.headers, swapped)).status, 401);
    // The webhook secret itself instead of a MAC, or nothing at all.
    const { [HEADER_SIGNATURE]: _, ...unsigned } = signed([project(3)]).headers;
    assert.equal((await post(url, { ...unsigned, [HEADER_SIGNATURE]: SECRET }, good.body)).status, 401);
    assert.equal((await post(url, unsigned, good.body)).status, 401);
    assert.equal((await post(url, { "x-gitlab-token": SECRET }, good.body)).status, 401);
    assert.equal(receiver.counters.rejected.unauthenticated, before + 5);
    assert.deepEqual(applied, []);
  });

  it("refuses a stale or future timestamp before reading the body", async () => {
    for (const time of [now - 31_000, now + 31_000]) {
      const r = signed([project(5)], { time });
      const res = await post(url, r.headers, r.body);
      assert.equal(res.status, 401);
      assert.match(res.body, /freshness/);
    }
    assert.deepEqual(applied, []);
  });

  it("refuses a replayed nonce", async () => {
    const r = signed([project(6)]);
    assert.equal((await post(url, r.headers, r.body)).status, 202);
    assert.deepEqual(applied.splice(0), [project(6)]);
    const again = await post(url, r.headers, r.body);
    assert.equal(again.status, 401);
    assert.match(again.body, /nonce already used/);
    assert.deepEqual(applied, []);
  });

  it("refuses an oversized request by Content-Length, unread", async () => {
    const big = Buffer.alloc(MAX_RELAY_BODY_BYTES + 1, 0x20);
    const r = signed([project(7)]);
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(url, {
        method: "POST",
        headers: { ...r.headers, "content-length": String(big.length) },
      });
      req.on("response", (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
      req.on("error", reject);
      // Only the headers are sent: the answer must not wait for the body.
      req.flushHeaders();
    });
    assert.equal(status, 413);
    assert.deepEqual(applied, []);
  });

  it("refuses mistyped signals, naming the field", async () => {
    for (const bad of [
      [{ kind: "project", event: "project_create", projectId: "1" }],
      [{ kind: "project", event: "push", projectId: 1 }],
      [{ kind: "project", event: "project_create", projectId: -1 }],
      [{ kind: "group", event: "group_create", groupId: 1, extra: "x" }],
      [{ kind: "project", event: "project_create", projectId: 1, path: "a\nforged log line" }],
      [],
      Array.from({ length: 65 }, (_, i) => project(i + 1)),
    ]) {
      const r = signed(bad);
      const res = await post(url, r.headers, r.body);
      assert.equal(res.status, 400, JSON.stringify(bad).slice(0, 80));
    }
    const notJson = Buffer.from("{signals:");
    const r = signed([]);
    const headers = {
      ...r.headers,
      [HEADER_SIGNATURE]: signRelayRequest(KEY, { time: now, nonce: nonce(), from: "x" }, []).headers[
        HEADER_SIGNATURE
      ]!,
    };
    assert.equal((await post(url, headers, notJson)).status, 401, "the MAC covers the body first");
    assert.deepEqual(applied, []);
  });

  it("a replica that does not reconcile answers 503 and applies nothing (never relays on)", async () => {
    leading = false;
    try {
      const r = signed([project(8)]);
      assert.equal((await post(url, r.headers, r.body)).status, 503);
      assert.deepEqual(applied, []);
    } finally {
      leading = true;
    }
  });

  it("replay cache: forgets after the window, refuses when full of live nonces", () => {
    const cache = new ReplayCache(2);
    assert.equal(cache.check("a", T0 + 10, T0), "fresh");
    assert.equal(cache.check("a", T0 + 10, T0 + 1), "replayed");
    assert.equal(cache.check("b", T0 + 10, T0 + 1), "fresh");
    assert.equal(cache.check("c", T0 + 10, T0 + 2), "full");
    assert.equal(cache.check("c", T0 + 20, T0 + 10), "fresh", "a and b expired");
    assert.equal(cache.size, 1);
  });
});

describe("pending signals (a follower's queue)", () => {
  it("coalesces by project id / group id, keeping the latest", () => {
    const q = new PendingSignals(10);
    q.add(project(1));
    q.add(group(1));
    q.add(project(1, "project_destroy"));
    assert.equal(q.size, 2, "project 1 and group 1 are different ids");
    assert.deepEqual(q.take(10), [group(1), project(1, "project_destroy")]);
  });

  it("is bounded: a full queue drops its oldest and counts it", () => {
    const q = new PendingSignals(3);
    for (let id = 1; id <= 5; id += 1) q.add(project(id));
    assert.equal(q.size, 3);
    assert.equal(q.dropped, 2);
    assert.deepEqual(
      q.take(10).map((s) => (s.kind === "project" ? s.projectId : 0)),
      [3, 4, 5],
    );
  });

  it("putBack keeps a newer signal for the same id", () => {
    const q = new PendingSignals(10);
    q.add(project(1));
    const batch = q.take(1);
    q.add(project(1, "project_destroy"));
    q.putBack(batch);
    assert.deepEqual(q.take(10), [project(1, "project_destroy")]);
  });
});

/** A plain listener that records every request: a leader stand-in, or an attacker's address. */
async function recorder(status = 202): Promise<{
  server: Server;
  url: string;
  seen: { url: string; headers: IncomingHttpHeaders; body: Buffer }[];
}> {
  const seen: { url: string; headers: IncomingHttpHeaders; body: Buffer }[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      seen.push({ url: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(status).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { server, url: `http://127.0.0.1:${port}`, seen };
}

describe("signal relay (a follower's sender)", () => {
  it("sends only signed signals: no webhook secret, no raw body, no GitLab headers", async () => {
    const leader = await recorder();
    const clock = new ManualClock(T0);
    const relay = new SignalRelay({
      key: KEY,
      self: "pod-b_7",
      leader: async () => ({ url: leader.url }),
      local: () => undefined,
      clock,
    });
    // A real delivery through the real receiver of a follower, whose signals go to the relay.
    const webhook = createWebhookHandler({ secretToken: SECRET, onSignal: (s) => relay.submit(s) });
    const follower = await startHttpServer({
      host: "127.0.0.1",
      port: 0,
      routes: { [WEBHOOK_PATH]: webhook },
    });
    try {
      const payload = {
        event_name: "project_create",
        project_id: 42,
        path_with_namespace: "acme/api",
        owner_email: "private@example.com",
      };
      const res = await fetch(`${follower.url}${WEBHOOK_PATH}`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "x-gitlab-token": SECRET,
          "x-gitlab-event": "System Hook",
          "idempotency-key": "delivery-1",
        },
        body: JSON.stringify(payload),
      });
      assert.equal(res.status, 202);
      // onSignal ran before the answer was sent, so the relay's attempt is already under way.
      await relay.idle();
      assert.equal(leader.seen.length, 1);
      const sent = leader.seen[0]!;
      const everything = JSON.stringify(sent.headers) + sent.body.toString("utf8");
      for (const secret of [
        SECRET,
        Buffer.from(SECRET).toString("base64"),
        Buffer.from(SECRET).toString("hex"),
      ])
        assert.ok(!everything.includes(secret), "the webhook secret is not sent in any form");
      assert.ok(!everything.includes("private@example.com"), "the raw body is not sent");
      assert.equal(sent.headers["x-gitlab-token"], undefined);
      assert.equal(sent.url, RELAY_PATH);
      assert.deepEqual(JSON.parse(sent.body.toString("utf8")), {
        signals: [{ kind: "project", event: "project_create", projectId: 42, path: "acme/api" }],
      });
      assert.equal(relay.pending.size, 0);
    } finally {
      relay.stop();
      await follower.close();
      leader.server.close();
    }
  });

  it("no leader: the delivery is still answered 2xx, kept, retried, and applied here on becoming leader", async () => {
    const clock = new ManualClock(T0);
    let holder: string | undefined;
    const applied: GitLabSignal[] = [];
    let leading = false;
    const leaderTries: string[] = [];
    const relay = new SignalRelay({
      key: KEY,
      self: "pod-b_7",
      leader: async () => {
        leaderTries.push(holder ?? "none");
        return { refused: "no leader known" };
      },
      local: () => (leading ? (s) => applied.push(s) : undefined),
      clock,
      random: () => 0.5,
    });
    const webhook = createWebhookHandler({ secretToken: SECRET, onSignal: (s) => relay.submit(s) });
    const follower = await startHttpServer({
      host: "127.0.0.1",
      port: 0,
      routes: { [WEBHOOK_PATH]: webhook },
    });
    try {
      const res = await fetch(`${follower.url}${WEBHOOK_PATH}`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "x-gitlab-token": SECRET,
          "x-gitlab-event": "System Hook",
        },
        body: JSON.stringify({ event_name: "project_create", project_id: 9 }),
      });
      assert.equal(res.status, 202, "an authenticated delivery is answered 2xx without a leader");
      await relay.idle();
      assert.equal(relay.pending.size, 1);
      const tries = leaderTries.length;
      clock.advance(10_000); // the backoff elapses: another try, still nobody
      await relay.idle();
      assert.ok(leaderTries.length > tries, "retried after the backoff");
      assert.equal(relay.pending.size, 1);
      holder = "pod-b_7";
      leading = true;
      relay.kick();
      await relay.idle();
      assert.deepEqual(applied, [project(9)]);
      assert.equal(relay.pending.size, 0);
      assert.equal(relay.counters.appliedLocally, 1);
    } finally {
      relay.stop();
      await follower.close();
    }
  });

  it("becoming leader during an attempt applies the pending signals right after it, not after the backoff", async () => {
    const clock = new ManualClock(T0);
    let answer!: (r: { refused: string }) => void;
    let leading = false;
    const applied: GitLabSignal[] = [];
    const relay = new SignalRelay({
      key: KEY,
      self: "pod-b_7",
      leader: () => new Promise((resolve) => (answer = resolve)),
      local: () => (leading ? (s) => applied.push(s) : undefined),
      clock,
    });
    try {
      relay.submit(project(1));
      leading = true;
      relay.kick(); // the mode's lead(): while the attempt still waits for the leader's address
      answer({ refused: "the old leader is gone" });
      await relay.idle();
      assert.deepEqual(applied, [project(1)], "no clock advance was needed");
    } finally {
      relay.stop();
    }
  });

  it("a leader that answers non-2xx keeps the signals pending", async () => {
    const leader = await recorder(503);
    const clock = new ManualClock(T0);
    const relay = new SignalRelay({
      key: KEY,
      self: "pod-b_7",
      leader: async () => ({ url: leader.url }),
      local: () => undefined,
      clock,
    });
    try {
      relay.submit(project(1));
      relay.submit(group(2));
      await relay.idle();
      assert.equal(leader.seen.length, 1);
      assert.equal(relay.pending.size, 2);
      assert.equal(relay.counters.sent, 0);
    } finally {
      relay.stop();
      leader.server.close();
    }
  });
});

describe("the leader's address comes from a verified natsbind pod, never from the Lease", () => {
  const LABELS = { "app.kubernetes.io/name": "natsbind", "app.kubernetes.io/component": "controller" };
  const pod = (over: {
    name?: string;
    labels?: Record<string, string>;
    phase?: string;
    ip?: string;
    port?: string;
  }): V1Pod => ({
    metadata: { name: over.name ?? "natsbind-a", labels: over.labels ?? LABELS },
    spec: { containers: [{ name: "natsbind", ports: [{ name: over.port ?? "http", containerPort: 8080 }] }] },
    status: { phase: over.phase ?? "Running", podIP: over.ip ?? "10.1.2.3" },
  });
  const check = { labels: LABELS, portName: "http" };

  it("identity names the pod; the pod gives the address", () => {
    assert.equal(leaderIdentity("natsbind-a", 7), "natsbind-a_7");
    assert.equal(podNameOfIdentity("natsbind-a_7"), "natsbind-a");
    for (const odd of [undefined, "", "_7", "natsbind-a", "a_7@http://10.0.0.1:80", "A_7", "a_b"])
      assert.equal(podNameOfIdentity(odd), undefined, String(odd));
    assert.deepEqual(relayUrlOfPod(pod({}), "natsbind-a", check), { url: "http://10.1.2.3:8080" });
    assert.deepEqual(relayUrlOfPod(pod({ ip: "fd00::1" }), "natsbind-a", check), {
      url: "http://[fd00::1]:8080",
    });
  });

  it("refuses pods that are not natsbind's: labels, phase, IP, port, name", () => {
    const refused = (p: V1Pod | undefined): boolean => "refused" in relayUrlOfPod(p, "natsbind-a", check);
    assert.ok(refused(undefined));
    assert.ok(refused(pod({ labels: { "app.kubernetes.io/name": "natsbind" } })));
    assert.ok(refused(pod({ labels: { ...LABELS, "app.kubernetes.io/component": "other" } })));
    assert.ok(refused(pod({ phase: "Pending" })));
    assert.ok(refused(pod({ ip: "" })));
    assert.ok(refused(pod({ port: "metrics" })));
    assert.ok(refused(pod({ name: "natsbind-b" })));
  });

  it("a Lease holder naming an attacker's listener or a foreign pod: nothing is sent there", async () => {
    const attacker = await recorder();
    const clock = new ManualClock(T0);
    const attackerPort = Number(new URL(attacker.url).port);
    // Holders an attacker may write, each with a pod (or none) the attacker may have made.
    const cases: { holder: string; pods: Record<string, V1Pod> }[] = [
      { holder: `x_1@${attacker.url}`, pods: {} },
      { holder: "evil_1", pods: {} },
      {
        holder: "evil_1",
        pods: {
          evil: {
            metadata: { name: "evil", labels: { app: "evil" } },
            spec: { containers: [{ name: "c", ports: [{ name: "http", containerPort: attackerPort }] }] },
            status: { phase: "Running", podIP: "127.0.0.1" },
          },
        },
      },
    ];
    try {
      for (const c of cases) {
        const reads: string[] = [];
        const address = new LeaderAddress({
          holder: () => c.holder,
          self: "natsbind-b_9",
          ...check,
          clock,
          readPod: async (name) => {
            reads.push(name);
            return c.pods[name];
          },
        });
        const relay = new SignalRelay({
          key: KEY,
          self: "natsbind-b_9",
          leader: () => address.resolve(),
          local: () => undefined,
          clock,
        });
        relay.submit(project(1));
        await relay.idle();
        relay.stop();
        assert.equal(relay.pending.size, 1, `kept pending (${c.holder})`);
        assert.ok(
          reads.every((n) => /^[a-z0-9-]+$/.test(n)),
          "only pod names are looked up",
        );
      }
      assert.equal(attacker.seen.length, 0, "the attacker's listener received nothing");
    } finally {
      attacker.server.close();
    }
  });

  it("caches the verdict per holder, and reads again for a new holder", async () => {
    const clock = new ManualClock(T0);
    let holder = "natsbind-a_1";
    let reads = 0;
    const address = new LeaderAddress({
      holder: () => holder,
      self: "natsbind-b_9",
      ...check,
      clock,
      readPod: async (name) => {
        reads += 1;
        return pod({ name });
      },
    });
    assert.deepEqual(await address.resolve(), { url: "http://10.1.2.3:8080" });
    await address.resolve();
    assert.equal(reads, 1);
    holder = "natsbind-c_2";
    assert.deepEqual(await address.resolve(), { url: "http://10.1.2.3:8080" });
    assert.equal(reads, 2);
    holder = "natsbind-b_9";
    assert.deepEqual(await address.resolve(), { refused: "this replica holds the lease" });
  });
});
