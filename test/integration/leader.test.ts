// LeaderElector against a real kube-apiserver (coordination.k8s.io/v1 Leases) with the system
// clock and short durations: one leader at a time, take-over after a crash within
// leaseDuration + retryPeriod, hand-over after a release within about a retryPeriod, and a leader
// cut off from the apiserver fencing itself within renewDeadline.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, it } from "node:test";
import { createServer, connect } from "node:net";
import type { Socket } from "node:net";
import { CoreV1Api, KubeConfig } from "@kubernetes/client-node";
import { startKubeApiserver } from "../support/kube.ts";
import type { KubeApiserver } from "../support/kube.ts";
import { freePort, liveProcessCount, waitFor } from "../support/process.ts";
import { systemClock } from "../../src/runtime/clock.ts";
import { LeaderElector, leaseClient } from "../../src/runtime/leader.ts";
import type { LeaseClient } from "../../src/runtime/leader.ts";

const NS = "natsbind-system";
const LEASE = 3_000;
const RENEW = 2_000;
const RETRY = 500;
/** Room for request latency and the 10 ms polling of these tests. */
const SLACK = 300;

interface Replica {
  id: string;
  elector: LeaderElector;
  started: number;
  stopped: string[];
}

describe("leader election on a real kube-apiserver", { timeout: 120_000 }, () => {
  let kube: KubeApiserver | undefined;
  let leases: LeaseClient;
  const running: Replica[] = [];

  before(async () => {
    kube = await startKubeApiserver();
    const kc = kube.kubeConfig();
    await kc.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: NS } } });
    leases = leaseClient(kc);
  });

  afterEach(async () => {
    await Promise.all(running.splice(0).map((r) => r.elector.stop({ release: false })));
  });

  after(async () => {
    await kube?.stop();
    assert.equal(liveProcessCount(), 0, "etcd and kube-apiserver were stopped");
  });

  function replica(id: string, lease: string, client: LeaseClient = leases): Replica {
    const r: Replica = { id, elector: undefined as unknown as LeaderElector, started: 0, stopped: [] };
    r.elector = new LeaderElector({
      leases: client,
      namespace: NS,
      name: lease,
      identity: id,
      leaseDurationMs: LEASE,
      renewDeadlineMs: RENEW,
      retryPeriodMs: RETRY,
      clock: systemClock,
      onStartedLeading: () => r.started++,
      onStoppedLeading: (reason) => r.stopped.push(reason),
    });
    running.push(r);
    r.elector.start();
    return r;
  }

  /** Resolves with the one leader once there is exactly one. */
  async function oneLeader(replicas: Replica[]): Promise<Replica> {
    let leader: Replica | undefined;
    await waitFor(
      async () => {
        const leaders = replicas.filter((r) => r.elector.isLeader());
        assert.ok(leaders.length <= 1, `two leaders: ${leaders.map((r) => r.id).join(", ")}`);
        leader = leaders[0];
        return leader !== undefined;
      },
      { what: "a leader", timeoutMs: 10_000, intervalMs: 10 },
    );
    assert.ok(leader);
    return leader;
  }

  /**
   * Polls every 10 ms until `done()` or the deadline, failing the moment two replicas lead at
   * once. Returns the milliseconds it took.
   */
  async function watchUntil(replicas: Replica[], what: string, done: () => boolean, timeoutMs: number) {
    const started = Date.now();
    await waitFor(
      async () => {
        const leaders = replicas.filter((r) => r.elector.isLeader()).map((r) => r.id);
        if (leaders.length > 1) throw new Error(`two leaders at once: ${leaders.join(", ")}`);
        return done();
      },
      {
        what,
        timeoutMs,
        intervalMs: 10,
        failIf: () => {
          const leaders = replicas.filter((r) => r.elector.isLeader()).map((r) => r.id);
          return leaders.length > 1 ? `two leaders at once: ${leaders.join(", ")}` : undefined;
        },
      },
    );
    return Date.now() - started;
  }

  async function leaseSpec(name: string) {
    const lease = await leases.get(NS, name);
    assert.ok(lease?.spec, `Lease ${NS}/${name} exists`);
    return lease.spec;
  }

  it("two replicas: exactly one leads; a crashed leader is replaced within leaseDuration + retryPeriod", async () => {
    const name = "crash";
    const pair = [replica("replica-a", name), replica("replica-b", name)];
    const leader = await oneLeader(pair);
    const follower = pair.find((r) => r !== leader);
    assert.ok(follower);

    // A full lease duration (six renewals) with exactly one leader at every poll.
    const steady = Date.now();
    await watchUntil(
      pair,
      "a steady lease duration",
      () => {
        assert.equal(leader.elector.isLeader(), true, `${leader.id} kept leading`);
        assert.equal(follower.elector.isLeader(), false);
        return Date.now() - steady >= LEASE;
      },
      LEASE + 2_000,
    );
    let spec = await leaseSpec(name);
    assert.equal(spec.holderIdentity, leader.id);
    assert.equal(spec.leaseDurationSeconds, 3);
    assert.equal(spec.leaseTransitions, 0);
    assert.ok(spec.renewTime instanceof Date && spec.acquireTime instanceof Date);
    assert.ok(spec.renewTime.getTime() > spec.acquireTime.getTime(), "renewed since acquired");

    // Crash: stop renewing without releasing the lease.
    await leader.elector.stop({ release: false });
    const takeoverMs = await watchUntil(
      pair,
      `${follower.id} to take over`,
      () => follower.elector.isLeader(),
      LEASE + RETRY + 5_000,
    );
    console.log(`take-over after a crash: ${takeoverMs} ms (lease ${LEASE} ms, retry ${RETRY} ms)`);
    assert.ok(
      takeoverMs <= LEASE + RETRY + SLACK,
      `took over within leaseDuration + retryPeriod: ${takeoverMs} ms`,
    );
    // Not early either: the follower saw the last renewal at most ~retryPeriod before the crash.
    assert.ok(takeoverMs >= LEASE - RETRY - 100, `waited for the lease to expire: ${takeoverMs} ms`);
    assert.equal(follower.started, 1);
    spec = await leaseSpec(name);
    assert.equal(spec.holderIdentity, follower.id);
    assert.equal(spec.leaseDurationSeconds, 3);
    assert.equal(spec.leaseTransitions, 1);
  });

  it("a released lease is taken over within about a retryPeriod", async () => {
    const name = "release";
    const pair = [replica("replica-a", name), replica("replica-b", name)];
    const leader = await oneLeader(pair);
    const follower = pair.find((r) => r !== leader);
    assert.ok(follower);

    await leader.elector.stop();
    assert.deepEqual(leader.stopped, ["released the lease"]);
    const handoverMs = await watchUntil(
      pair,
      `${follower.id} to take over`,
      () => follower.elector.isLeader(),
      LEASE + 5_000,
    );
    console.log(`hand-over after a release: ${handoverMs} ms (retry ${RETRY} ms)`);
    assert.ok(handoverMs <= RETRY + SLACK, `took over within ~retryPeriod: ${handoverMs} ms`);
    let spec = await leaseSpec(name);
    assert.equal(spec.holderIdentity, follower.id);
    assert.equal(spec.leaseDurationSeconds, 3);
    assert.equal(spec.leaseTransitions, 1);

    // Nobody left to take it: the released record stays as written.
    await follower.elector.stop();
    spec = await leaseSpec(name);
    assert.equal(spec.holderIdentity, "");
    assert.equal(spec.leaseDurationSeconds, 1);
    assert.equal(spec.leaseTransitions, 1);
  });

  it("a leader cut off from the apiserver fences itself within renewDeadline; a follower then takes over", async () => {
    assert.ok(kube);
    const name = "partition";
    const proxy = await tcpProxy(Number(new URL(kube.server).port));
    try {
      const cut = replica("replica-cut", name, leaseClient(proxiedConfig(kube, proxy.port)));
      await oneLeader([cut]);
      const follower = replica("replica-direct", name);
      const pair = [cut, follower];
      // Let the follower see a few renewals.
      const seen = Date.now();
      await watchUntil(pair, "the follower to observe", () => Date.now() - seen >= 2 * RETRY, 5_000);
      assert.equal(cut.elector.isLeader(), true);

      await proxy.close();
      const fencedMs = await watchUntil(
        pair,
        "the cut-off leader to fence itself",
        () => !cut.elector.isLeader(),
        10_000,
      );
      console.log(`fenced ${fencedMs} ms after the apiserver became unreachable (renewDeadline ${RENEW} ms)`);
      assert.ok(fencedMs <= RENEW + 50, `isLeader() false within renewDeadline: ${fencedMs} ms`);
      await waitFor(async () => cut.stopped.length > 0, {
        what: "onStoppedLeading",
        timeoutMs: 1_000,
        intervalMs: 10,
      });
      assert.equal(cut.stopped.length, 1);
      assert.match(cut.stopped[0] ?? "", /renew deadline passed/);

      const takeoverMs =
        fencedMs +
        (await watchUntil(pair, "the follower to take over", () => follower.elector.isLeader(), 10_000));
      console.log(`follower took over ${takeoverMs} ms after the cut`);
      assert.ok(
        takeoverMs <= LEASE + RETRY + SLACK,
        `took over within leaseDuration + retryPeriod: ${takeoverMs} ms`,
      );
      assert.equal(cut.elector.isLeader(), false);
      assert.equal(cut.stopped.length, 1, "onStoppedLeading once");
      const spec = await leaseSpec(name);
      assert.equal(spec.holderIdentity, "replica-direct");
      assert.equal(spec.leaseTransitions, 1);
    } finally {
      await proxy.close();
    }
  });
});

/** The admin KubeConfig, but talking to the apiserver through `port`. */
function proxiedConfig(kube: KubeApiserver, port: number): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromClusterAndUser(
    { name: "natsbind-proxied", server: `https://127.0.0.1:${port}`, skipTLSVerify: true },
    { name: "natsbind-proxied-admin", token: kube.token },
  );
  return kc;
}

/** A TCP forwarder to 127.0.0.1:target; close() drops every connection and refuses new ones. */
async function tcpProxy(target: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(target, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => s.destroy());
      s.on("close", () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream).pipe(client);
  });
  const port = await freePort();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });
  let closed: Promise<void> | undefined;
  return {
    port,
    close() {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      return closed;
    },
  };
}
