// Proves the nats-server launcher: operator mode with a full resolver, one server and a 3-node
// cluster, each answering $SYS.REQ.SERVER.PING once per server.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { encodeAccount, encodeOperator, encodeUser, fmtCreds } from "@nats-io/jwt";
import { createAccount, createOperator, createUser } from "@nats-io/nkeys";
import { connect, credsAuthenticator } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { startNatsCluster, startNatsServer } from "../support/nats-server.ts";
import type { NatsCluster, NatsServer, NatsServerOptions } from "../support/nats-server.ts";
import { liveProcessCount } from "../support/process.ts";

interface Trust {
  serverOpts: NatsServerOptions;
  sysCreds: Uint8Array;
}

async function makeTrust(): Promise<Trust> {
  const operator = createOperator();
  const operatorSigner = createOperator();
  const sys = createAccount();
  const sysUser = createUser();
  const systemAccount = sys.getPublicKey();
  const operatorJwt = await encodeOperator("natsbind-test", operator, {
    signing_keys: [operatorSigner.getPublicKey()],
    system_account: systemAccount,
  });
  // jwt.js adds no default account limits, and a missing limit means 0 to nats-server ("maximum
  // account active connections exceeded"): say unlimited explicitly, as nsc does.
  const systemAccountJwt = await encodeAccount(
    "SYS",
    sys,
    {
      limits: {
        conn: -1,
        subs: -1,
        data: -1,
        payload: -1,
        leaf: -1,
        imports: -1,
        exports: -1,
        wildcards: true,
      },
    },
    { signer: operatorSigner },
  );
  const userJwt = await encodeUser("sys", sysUser, sys);
  return {
    serverOpts: { operatorJwt, systemAccount, systemAccountJwt },
    sysCreds: fmtCreds(userJwt, sysUser),
  };
}

async function pingServers(servers: string[], creds: Uint8Array): Promise<string[]> {
  const nc: NatsConnection = await connect({ servers, authenticator: credsAuthenticator(creds) });
  try {
    const replies = await nc.requestMany("$SYS.REQ.SERVER.PING", undefined, {
      strategy: "stall",
      maxWait: 2000,
    });
    const names: string[] = [];
    for await (const msg of replies) {
      names.push((msg.json() as { server: { name: string } }).server.name);
    }
    return names.sort();
  } finally {
    await nc.close();
  }
}

describe("nats-server launcher", { timeout: 60_000 }, () => {
  let trust: Trust;
  let single: NatsServer | undefined;
  let cluster: NatsCluster | undefined;

  before(async () => {
    trust = await makeTrust();
  });

  after(async () => {
    await single?.stop();
    await cluster?.stop();
    assert.equal(liveProcessCount(), 0, "every nats-server process was stopped");
  });

  it("starts one server in operator mode", async () => {
    const started = Date.now();
    single = await startNatsServer(trust.serverOpts);
    const ms = Date.now() - started;
    assert.match(single.url, /^nats:\/\/127\.0\.0\.1:\d+$/);
    const names = await pingServers([single.url], trust.sysCreds);
    assert.deepEqual(names, [single.name], `one PING reply (server ready in ${ms} ms)`);
  });

  it("starts a 3-node cluster with full routes", async () => {
    const started = Date.now();
    cluster = await startNatsCluster(3, trust.serverOpts);
    const ms = Date.now() - started;
    assert.equal(cluster.urls.length, 3);
    assert.equal(new Set(cluster.servers.map((s) => s.name)).size, 3);
    const names = await pingServers(cluster.urls, trust.sysCreds);
    assert.deepEqual(
      names,
      cluster.servers.map((s) => s.name).sort(),
      `one PING reply per server (cluster ready in ${ms} ms)`,
    );
  });

  it("restarts a cluster member on the same port", async () => {
    assert.ok(cluster);
    const member = cluster.servers[1];
    assert.ok(member);
    const oldPid = member.process().pid;
    await member.restart();
    assert.notEqual(member.process().pid, oldPid);
    await cluster.waitForRoutes();
    const names = await pingServers([member.url], trust.sysCreds);
    assert.equal(names.length, 3);
  });
});
