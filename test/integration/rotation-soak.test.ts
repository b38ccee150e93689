// Rotation soak (issue 11, part 6): signing-key rotation never cuts off a working client.
//
// A 3-node nats-server cluster (operator mode, full resolver on every node, auth callout), the
// GitLab simulator and `natsbind run` in local mode in this process, with a credentials section
// (token exchange and auth callout). While CI "jobs" loop (ID token from the simulator ->
// credentials through the exchange or the callout -> connect to a random node -> subscribe,
// publish, check delivery -> disconnect) and a few long-lived connections stay up, SCHEDULED
// rotation (rotation.every 1h) runs every role of every account through prepare -> push ->
// activate -> retire at least three times, and one emergency rotation replaces a role no job uses.
// Once, the operator signing key is rotated as docs/runbooks/rotate-operator-signing-key.md does
// it: add-signing-key -> rolling restart with the new operator JWT -> activate (natsbind run
// follows) -> retire -> rolling restart. Servers are restarted as a rolling restart should, in lame
// duck mode: connections to the server being restarted are closed or refused (planned; counted
// apart), nothing else may fail.
//
// Time: scheduled rotation is compressed with a ManualClock driving runController(config,
// {clock}): the test advances it STEP_MS at a time. Everything else (NATS, HTTP, GitLab, CONNZ)
// runs in real time. What follows from that, and how the test stays faithful to a real clock:
//   - natsbind stamps user JWTs (exp) and account JWTs (iat) with the ManualClock, which runs
//     ahead of the servers' clock, so the servers never expire a user here. The clients therefore
//     keep to their credentials' lifetime themselves: jobs take fresh credentials every iteration
//     and the clock only moves between iterations (jobs wait at a gate while it does, as if each
//     job finished within its credentials' lifetime); a long-lived connection is renewed
//     (make-before-break: new credentials, new connection, then the old one closed) before the
//     clock passes its credentials' expiry, as a client that renews before `exp` does.
//   - The emergency rotation is asked through the request file `natsbind rotate` writes (same
//     phases), dated on the ManualClock: the CLI would date it on the wall clock, which is hours
//     behind here, so the trigger would count as already satisfied.
//   - ID tokens are minted at the ManualClock's time (natsbind checks their age on it).
// Counted and asserted: authorization failures (exchange refusals, refused connects), unexpected
// disconnects and errors of every client connection, messages not delivered, lookups of every
// account on every node (not while a node restarts) (each server answers $SYS.REQ.ACCOUNT.<id>.CLAIMS.LOOKUP itself, so a
// request collecting three replies checks all three nodes; each must hold the JWT, listing the
// keys natsbind issues from), and the phases completed per account and role.
import assert from "node:assert/strict";
import { copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { INIT_LAYOUT } from "../../src/cli/init.ts";
import type { Config } from "../../src/config/config.ts";
import { parseConfig } from "../../src/config/config.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import { listedRoleKeys, type StoredAccount } from "../../src/keystore/port.ts";
import { decodeJwt, readJwt } from "../../src/nats/claims.ts";
import { runController, type RunningController } from "../../src/main.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { activate, addSigningKey, retire } from "../../src/operator/phases.ts";
import { ManualClock } from "../../src/runtime/clock.ts";
import { RequestFiles } from "../../src/rotation/request-files.ts";
import type { RotationEvent } from "../../src/rotation/rotator.ts";
import { GitLabSimulator, type SimProject } from "../support/gitlab-sim.ts";
import { startNatsCluster, type NatsCluster } from "../support/nats-server.ts";
import {
  createTestOperator,
  natsConfigSection,
  operatorResolver,
  type TestOperator,
} from "../support/operator.ts";
import { removeDir, tempDir, waitFor } from "../support/process.ts";

const AUDIENCE = "https://natsbind.test";
/** ManualClock time per step of the driver. */
const STEP_MS = 2 * 60_000;
const MAX_TTL_MS = 10 * 60_000;
const PROJECTS = 3;
const JOB_WORKERS = 6;
/** Jobs each step lets finish (in real time) before the clock moves again. */
const JOBS_PER_STEP = 8;
const MESSAGES_PER_JOB = 3;
const LONG_LIVED = 4;
const CYCLES = 3;
/** The emergency rotation of `spare` is asked at this step (before its first scheduled rotation). */
const EMERGENCY_STEP = 5;
const JOB_ROLES = ["ci", "deploy"] as const;
const SPARE_ROLE = "spare";
const ALL_ROLES = [...JOB_ROLES, SPARE_ROLE];
const SUBJECT_PREFIX: Record<string, string> = { ci: "build", deploy: "deploy" };
/** Wall-clock budget of the rotation phase of the test (six lame duck restarts take ~30 s of it). */
const SOAK_DEADLINE_MS = 240_000;

const BINDING = `apiVersion: natsbind.io/v1alpha1
kind: NatsBinding
metadata: {name: acme}
spec:
  gitlab: {group: acme}
  roles:
    - name: ci
      publish: {allow: ["build.{{project.id}}.>"]}
      subscribe: {allow: ["_INBOX.>", "build.{{project.id}}.>"]}
      ci: {refs: protected}
    - name: deploy
      publish: {allow: ["deploy.{{project.id}}.>"]}
      subscribe: {allow: ["_INBOX.>", "deploy.{{project.id}}.>"]}
      ci: {refs: protected}
    - name: spare
      publish: {allow: ["spare.{{project.id}}.>"]}
`;

/** Jobs pass it at the start of each iteration; the driver closes it while it moves the clock. */
class Gate {
  #closed = false;
  #inFlight = 0;
  #openWaiters: Array<() => void> = [];
  #idleWaiters: Array<() => void> = [];

  async enter(): Promise<void> {
    while (this.#closed) await new Promise<void>((r) => this.#openWaiters.push(r));
    this.#inFlight += 1;
  }

  leave(): void {
    this.#inFlight -= 1;
    if (this.#inFlight === 0) for (const w of this.#idleWaiters.splice(0)) w();
  }

  /** Closes the gate and resolves once no job is inside. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#inFlight > 0) await new Promise<void>((r) => this.#idleWaiters.push(r));
  }

  open(): void {
    this.#closed = false;
    for (const w of this.#openWaiters.splice(0)) w();
  }
}

/** Exchange creds a job keeps to connect with later. */
interface Held {
  creds: string;
  /** Expiry of the user JWT on the ManualClock (ms). */
  expiresAt: number;
  project: SimProject;
  role: string;
  /** When (ManualClock) the job connects with them: spread over their lifetime. */
  useAt: number;
}

interface Figures {
  jobs: number;
  /** Jobs that connected with creds fetched in an earlier step (after the clock moved). */
  lateJobs: number;
  /** Age (ManualClock minutes) of the oldest creds a late job connected with. */
  lateJobsOldestMinutes: number;
  credsKept: number;
  jobsByDoor: Record<string, number>;
  messagesDelivered: number;
  longLivedMessages: number;
  longLivedRenewals: number;
  authFailures: string[];
  unexpectedDisconnects: string[];
  plannedDisconnects: number;
  /** Jobs cut short by a planned restart (their connection closed before all messages came). */
  plannedJobFailures: number;
  deliveryFailures: string[];
  otherFailures: string[];
  lookupRounds: number;
  /** Lookup rounds not made because a node was restarting. */
  lookupRoundsSkipped: number;
  lookupFailures: string[];
  steps: number;
  /** The operator signing-key rotation, once it ran. */
  operator?: {
    oldKey: string;
    newKey: string;
    restarts: number;
    resigned: number;
    resignedAgain: number;
    wallSeconds: number;
  };
}

/** A client connection whose disconnects and errors count unless we close it ourselves. */
interface Watched {
  nc: NatsConnection;
  server: string;
  what: string;
  closing: boolean;
  /** A disconnect of it was planned (its server was restarting). */
  planned: boolean;
}

interface LongLived extends Watched {
  project: SimProject;
  role: string;
  door: "exchange" | "callout";
  /** Expiry of its user JWT on the ManualClock (ms). */
  expiresAt: number;
}

describe(
  "rotation soak: 3-node cluster, jobs through exchange and callout, scheduled rotation",
  {
    timeout: 360_000,
  },
  () => {
    let op: TestOperator;
    let cluster: NatsCluster;
    let sim: GitLabSimulator;
    let dir: string;
    let config: Config;
    let controller: RunningController | undefined;
    let system: NatsConnection | undefined;
    const clock = new ManualClock(Date.now());
    const events: Array<{ at: number; wall: number; event: RotationEvent }> = [];
    const warnings: string[] = [];
    /** Messages natsbind logged (info and up), for the operator rotation's waits. */
    const logged = new Set<string>();
    const projects: SimProject[] = [];
    const figures: Figures = {
      jobs: 0,
      lateJobs: 0,
      lateJobsOldestMinutes: 0,
      credsKept: 0,
      jobsByDoor: { exchange: 0, callout: 0 },
      messagesDelivered: 0,
      longLivedMessages: 0,
      longLivedRenewals: 0,
      authFailures: [],
      unexpectedDisconnects: [],
      plannedDisconnects: 0,
      plannedJobFailures: 0,
      deliveryFailures: [],
      otherFailures: [],
      lookupRounds: 0,
      lookupRoundsSkipped: 0,
      lookupFailures: [],
      steps: 0,
    };
    /**
     * Servers (client URLs) being restarted on purpose: disconnects of connections to them are
     * planned. A server is in it from its lame duck signal until it is routed again and holds every
     * account as the others do.
     */
    const plannedRestarts = new Set<string>();
    /** Wall-clock (performance.now) windows of the restarts. */
    const restartWindows: Array<{ url: string; from: number; to: number }> = [];
    /** When an attempt began and ended, and the restarts of its server, for a failure's message. */
    const timeline = (url: string, began: number): string => {
      const at = (t: number): string => `${Math.round(t - began)} ms`;
      const windows = restartWindows.filter((w) => w.url === url).map((w) => `${at(w.from)}..${at(w.to)}`);
      return (
        `failed ${at(performance.now())} after it began; restarts of ${url} relative to that: ` +
        `${[...windows, ...(plannedRestarts.has(url) ? ["under way"] : [])].join(", ") || "none"}`
      );
    };
    /**
     * Whether `url` restarted (or is restarting) at any time since `since` (performance.now): a
     * connect or job that began before a restart may fail after it ended (its error surfaces
     * late), and is still the restart's doing.
     */
    const restartedSince = (url: string, since: number): boolean =>
      plannedRestarts.has(url) || restartWindows.some((w) => w.url === url && w.to >= since);
    let restartsStarted = 0;

    const slots = (): Promise<StoredAccount[]> => new DirectoryKeyStore(config.keys.directory).list("acme");
    const pick = <T>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)]!;

    before(async () => {
      op = await createTestOperator({ callout: true });
      cluster = await startNatsCluster(3, op.serverOptions);
      sim = await GitLabSimulator.start();
      dir = await tempDir("rotation-soak");
      const acme = sim.createGroup({ name: "Acme", path: "acme" });
      for (let i = 0; i < PROJECTS; i++)
        projects.push(sim.createProject({ name: `p${i}`, groupId: acme.id }));
      await writeFile(join(dir, "token"), sim.token);
      await mkdir(join(dir, "bindings"));
      await writeFile(join(dir, "bindings", "acme.yaml"), BINDING);
      config = parseConfig(
        {
          nats: natsConfigSection(op, cluster.urls),
          gitlab: { url: sim.url, tokenFile: "token", resyncInterval: "1h" },
          http: { listen: "127.0.0.1:0" },
          credentials: {
            audience: AUDIENCE,
            maxTtl: "10m",
            defaultTtl: "10m",
            leeway: "30s",
            rateLimit: { perProjectPerMinute: 100_000, perClientPerMinute: 100_000 },
            audit: { file: "audit/credentials.log" },
            callout: { credsFile: op.callout!.credsFile, signingKeyFile: op.callout!.signingKeyFile },
          },
          rotation: { every: "1h", gracePeriod: "1h", maxStartsPerMinute: 1_000 },
        },
        "soak config",
        dir,
      );
      controller = await runController(config, {
        clock,
        log: createLogger({
          level: "info",
          write: (line) => {
            const { level, msg } = JSON.parse(line) as { level: string; msg: string };
            logged.add(msg);
            if (level !== "info" && warnings.length < 50) warnings.push(line.trim().slice(0, 500));
          },
        }),
        onRotation: (_key, event) => events.push({ at: clock.now(), wall: performance.now(), event }),
      });
      system = await connect({
        servers: cluster.urls,
        authenticator: credsAuthenticator(op.systemCreds),
        name: "soak-lookups",
      });
      await waitFor(
        async () => {
          const all = await slots();
          if (all.length !== PROJECTS) return false;
          for (const slot of all) if ((await lookupEverywhere(slot)).length > 0) return false;
          return true;
        },
        { what: "every project's account on every node", timeoutMs: 30_000, intervalMs: 100 },
      );
    });

    after(async () => {
      await system?.close().catch(() => undefined);
      await controller?.stop().catch(() => undefined);
      await sim?.stop().catch(() => undefined);
      await cluster?.stop().catch(() => undefined);
      await op?.remove().catch(() => undefined);
      if (dir) await removeDir(dir);
    });

    /**
     * Problems with the account on any node: each server of the cluster answers a CLAIMS.LOOKUP
     * itself (the JWT, or an empty message when it has none), so three replies are three nodes.
     * Each must hold the account's JWT listing the keys natsbind issues job credentials from.
     */
    async function lookupEverywhere(slot: StoredAccount): Promise<string[]> {
      const replies: string[] = [];
      const it = await system!.requestMany(`$SYS.REQ.ACCOUNT.${slot.account}.CLAIMS.LOOKUP`, undefined, {
        strategy: "count",
        maxMessages: cluster.servers.length,
        maxWait: 3_000,
      });
      for await (const m of it) replies.push(m.string());
      const problems: string[] = [];
      if (replies.length !== cluster.servers.length)
        problems.push(`${slot.account}: ${replies.length} of ${cluster.servers.length} servers answered`);
      for (const jwt of replies) {
        if (jwt.length === 0) {
          problems.push(`${slot.account}: a server does not hold the account`);
          continue;
        }
        const { claims } = readJwt(jwt, "looked up");
        const listed = new Set(
          ((claims.nats.signing_keys as Array<{ key: string }> | undefined) ?? []).map((k) => k.key),
        );
        for (const role of JOB_ROLES)
          if (!listed.has(slot.roles[role]!))
            problems.push(`${slot.account}: a server's JWT does not list the active ${role} key`);
      }
      return problems;
    }

    /**
     * Watches a client connection. Clients reconnect to another server when theirs goes away (the
     * servers announce each other), so a disconnect is planned when the server it was on at that
     * moment is restarting.
     */
    function watch(nc: NatsConnection, server: string, what: string): Watched {
      const w: Watched = { nc, server, what, closing: false, planned: false };
      let on = hostPort(server);
      const unexpected = (detail: string, at = on): void => {
        if (w.closing) return;
        if ([...plannedRestarts].some((url) => hostPort(url) === at)) {
          figures.plannedDisconnects += 1;
          w.planned = true;
        } else figures.unexpectedDisconnects.push(`${what} on ${at}: ${detail}`);
      };
      void (async () => {
        for await (const s of nc.status()) {
          if (s.type === "disconnect") unexpected("disconnect", s.server);
          else if (s.type === "reconnect") on = s.server;
          else if (s.type === "error") unexpected(`error: ${s.error.message}`);
        }
      })().catch(() => undefined);
      void nc.closed().then((err) => {
        if (err) unexpected(`closed: ${err.message}`);
        else if (!w.closing) unexpected("closed");
      });
      return w;
    }

    function mint(project: SimProject, jobId: number): string {
      return sim.mintIdToken({
        projectId: project.id,
        aud: AUDIENCE,
        nowS: Math.floor(clock.now() / 1000),
        extra: { pipeline_id: String(500 + (jobId % 7)), job_id: String(jobId) },
      });
    }

    let jobSeq = 0;

    /** Creds (text) from the token exchange and their expiry on the ManualClock; undefined (counted) if refused. */
    async function exchangeCreds(
      project: SimProject,
      role: string,
      what: string,
      jobId: number,
    ): Promise<Held | undefined> {
      const res = await fetch(`${controller!.url}/v1/credentials`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${mint(project, jobId)}`,
          accept: "text/plain",
          "content-type": "application/json",
        },
        body: JSON.stringify({ role, ttl: "10m" }),
      });
      const text = await res.text();
      if (res.status !== 200) {
        figures.authFailures.push(`${what}: exchange answered ${res.status}: ${text.slice(0, 200)}`);
        return undefined;
      }
      const jwt = /-----BEGIN NATS USER JWT-----\n([^\n]+)\n/.exec(text)?.[1];
      assert.ok(jwt, "the exchange answered a creds file");
      const expiresAt = decodeJwt(jwt).exp! * 1000;
      // Some step at or after useAt comes before the expiry (steps are STEP_MS apart).
      const useAt = clock.now() + Math.random() * Math.max(0, expiresAt - STEP_MS - clock.now());
      return { creds: text, expiresAt, project, role, useAt };
    }

    /**
     * A connection to `server` with exchange creds, or through the callout with the job's ID token;
     * undefined (and counted) when refused. Returns the expiry of the user JWT on the ManualClock.
     */
    async function credentialsAndConnect(
      project: SimProject,
      role: string,
      door: "exchange" | "callout",
      server: string,
      what: string,
      jobId = ++jobSeq,
      held?: Held,
    ): Promise<{ nc: NatsConnection; expiresAt: number } | undefined> {
      const issuedAt = clock.now();
      const began = performance.now();
      try {
        if (door === "exchange") {
          const creds = held ?? (await exchangeCreds(project, role, what, jobId));
          if (!creds) return undefined;
          const nc = await connect({
            servers: server,
            authenticator: credsAuthenticator(new TextEncoder().encode(creds.creds)),
            maxReconnectAttempts: 0,
            timeout: 5_000,
            name: what,
          });
          return { nc, expiresAt: creds.expiresAt };
        }
        // The callout issues for defaultTtl (10m) on natsbind's clock: expiry at most issuedAt + 10m.
        const nc = await connect({
          servers: server,
          user: role,
          pass: mint(project, jobId),
          maxReconnectAttempts: 0,
          timeout: 5_000,
          name: what,
        });
        return { nc, expiresAt: issuedAt + MAX_TTL_MS };
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        if (/authori[sz]ation|authentication|permission/i.test(message))
          figures.authFailures.push(`${what} via ${door} on ${server}: ${message}`);
        // An attempt that overlapped a restart of its server is the restart's, even when its error
        // surfaces after the restart (a connect accepted just before lame duck mode waits out its
        // 5 s timeout).
        else if (restartedSince(server, began)) figures.plannedDisconnects += 1;
        else
          figures.otherFailures.push(
            `${what} via ${door} on ${server}: ${message} (${timeline(server, began)})`,
          );
        return undefined;
      }
    }

    /**
     * Creds jobs fetched and use later (a job that connects again, or late, with the creds it has):
     * they must work until their expiry, whatever rotated meanwhile. That is what the overlap is for:
     * the live-connection check at retirement cannot see creds that are not connected.
     */
    const held: Held[] = [];
    const MAX_HELD = 60;

    /** One iteration of a job worker: fetch and keep creds, connect late with kept ones, or a whole job. */
    async function runJob(worker: number): Promise<void> {
      const dice = Math.random();
      if (dice < 0.2 && held.length < MAX_HELD) {
        const jobId = ++jobSeq;
        const creds = await exchangeCreds(
          pick(projects),
          pick(JOB_ROLES),
          `creds kept by job ${jobId}`,
          jobId,
        );
        if (creds) held.push(creds);
        figures.credsKept += 1;
        return;
      }
      // Kept creds are used only before their expiry (the clock stands still while a job runs).
      const now = clock.now();
      const due = held.findIndex((h) => h.useAt <= now && now < h.expiresAt);
      const late = dice < 0.45 && due >= 0 ? held.splice(due, 1)[0] : undefined;
      const project = late?.project ?? pick(projects);
      const role = late?.role ?? pick(JOB_ROLES);
      const door = late ? "exchange" : pick(["exchange", "callout"] as const);
      const server = pick(cluster.urls);
      const jobId = ++jobSeq;
      const began = performance.now();
      const what = `${late ? "late job" : "job"} ${jobId} (worker ${worker}, project ${project.id}, role ${role}, ${door})`;
      const conn = await credentialsAndConnect(project, role, door, server, what, jobId, late);
      if (!conn) return;
      const w = watch(conn.nc, server, what);
      try {
        const got = await deliverMessages(conn.nc, `${SUBJECT_PREFIX[role]}.${project.id}.job${jobId}`);
        if (got < MESSAGES_PER_JOB) {
          if (w.planned || restartedSince(server, began)) figures.plannedJobFailures += 1;
          else figures.deliveryFailures.push(`${what}: ${got} of ${MESSAGES_PER_JOB} messages delivered`);
          return;
        }
        figures.messagesDelivered += got;
        figures.jobs += 1;
        if (late) {
          figures.lateJobs += 1;
          figures.lateJobsOldestMinutes = Math.max(
            figures.lateJobsOldestMinutes,
            Math.round((clock.now() - (late.expiresAt - MAX_TTL_MS)) / 60_000),
          );
        } else figures.jobsByDoor[door] = (figures.jobsByDoor[door] ?? 0) + 1;
      } catch (err) {
        // A job on a server being restarted may be cut off mid-way: that is the restart's doing.
        if (w.planned || restartedSince(server, began)) figures.plannedJobFailures += 1;
        else throw err;
      } finally {
        w.closing = true;
        await conn.nc.close().catch(() => undefined);
      }
    }

    /** Subscribes to `subject`.>, publishes MESSAGES_PER_JOB messages there: how many came back. */
    async function deliverMessages(nc: NatsConnection, subject: string): Promise<number> {
      const sub = nc.subscribe(`${subject}.>`, { max: MESSAGES_PER_JOB });
      await nc.flush();
      for (let i = 0; i < MESSAGES_PER_JOB; i++) nc.publish(`${subject}.${i}`, `message ${i}`);
      let got = 0;
      const received = (async () => {
        for await (const _m of sub) got += 1;
      })();
      const timer = setTimeout(() => sub.unsubscribe(), 5_000);
      await received;
      clearTimeout(timer);
      return got;
    }

    async function openLongLived(
      project: SimProject,
      role: string,
      door: "exchange" | "callout",
      server: string,
      n: number,
    ): Promise<LongLived | undefined> {
      const what = `long-lived ${n} (project ${project.id}, role ${role}, ${door})`;
      const conn = await credentialsAndConnect(project, role, door, server, what);
      if (!conn) return undefined;
      const w = watch(conn.nc, server, what);
      // Receives what jobs of its project and role publish, from whichever node they are on.
      conn.nc.subscribe(`${SUBJECT_PREFIX[role]}.${project.id}.>`, {
        callback: () => void (figures.longLivedMessages += 1),
      });
      await conn.nc.flush();
      return Object.assign(w, { project, role, door, expiresAt: conn.expiresAt });
    }

    it("rotates every role at least three times while jobs and long-lived clients keep working", async () => {
      const requests = new RequestFiles(config.keys.directory);
      const gate = new Gate();
      let stop = false;
      const started = Date.now();

      // Long-lived connections: both doors, both job roles, each on its own node.
      const longLived: LongLived[] = [];
      for (let i = 0; i < LONG_LIVED; i++) {
        const l = await openLongLived(
          projects[i % PROJECTS]!,
          JOB_ROLES[i % JOB_ROLES.length]!,
          i < LONG_LIVED / 2 ? "exchange" : "callout",
          cluster.urls[i % cluster.urls.length]!,
          i,
        );
        assert.ok(l, `long-lived connection ${i} could not connect: ${figures.authFailures.join("; ")}`);
        longLived.push(l);
      }

      const workers = Array.from({ length: JOB_WORKERS }, async (_, worker) => {
        while (!stop) {
          await gate.enter();
          try {
            if (!stop) await runJob(worker);
          } catch (err) {
            figures.otherFailures.push(
              `worker ${worker}: ${err instanceof Error ? err.message : String(err)}`,
            );
          } finally {
            gate.leave();
          }
        }
      });

      const poller = (async () => {
        while (!stop) {
          // A round counts only if no node restarted while it ran.
          const restartsBefore = restartsStarted;
          const problems: string[] = [];
          if (plannedRestarts.size === 0)
            try {
              for (const slot of await slots()) problems.push(...(await lookupEverywhere(slot)));
            } catch (err) {
              problems.push((err as Error).message);
            }
          if (plannedRestarts.size > 0 || restartsStarted !== restartsBefore)
            figures.lookupRoundsSkipped += 1;
          else {
            figures.lookupFailures.push(...problems.map((p) => `round ${figures.lookupRounds}: ${p}`));
            figures.lookupRounds += 1;
          }
          await new Promise((r) => setTimeout(r, 50));
        }
      })();

      const count = (phase: RotationEvent["phase"], account: string, role: string): number =>
        events.filter((e) => e.event.phase === phase && e.event.account === account && e.event.role === role)
          .length;
      const cyclesDone = async (): Promise<boolean> => {
        for (const slot of await slots())
          for (const role of ALL_ROLES) if (count("KeyRetired", slot.account, role) < CYCLES) return false;
        return true;
      };
      let emergencyAt: number | undefined;
      let spareBefore: Map<string, string> | undefined;

      try {
        while (!(await cyclesDone())) {
          assert.ok(
            Date.now() - started < SOAK_DEADLINE_MS,
            `the rotations did not complete within ${SOAK_DEADLINE_MS} ms (step ${figures.steps}); events: ` +
              JSON.stringify(events.map((e) => [e.event.phase, e.event.role, e.event.account?.slice(0, 6)])),
          );
          await gate.close();
          // Long-lived clients renew before the clock passes their credentials' expiry.
          const target = clock.now() + STEP_MS;
          for (const [i, l] of longLived.entries()) {
            if (l.expiresAt > target) continue;
            const next = await openLongLived(l.project, l.role, l.door, l.server, i);
            assert.ok(next, `renewing long-lived connection ${i} failed: ${figures.authFailures.join("; ")}`);
            l.closing = true;
            await l.nc.close();
            longLived[i] = next;
            figures.longLivedRenewals += 1;
          }
          clock.advance(STEP_MS);
          figures.steps += 1;
          if (figures.steps === EMERGENCY_STEP) {
            spareBefore = new Map((await slots()).map((s) => [s.account, s.roles[SPARE_ROLE]!]));
            emergencyAt = clock.now();
            await requests.add("acme", { trigger: { at: emergencyAt, emergency: true, role: SPARE_ROLE } });
          }
          const iterations = (): number =>
            figures.jobs + figures.credsKept + figures.authFailures.length + figures.otherFailures.length;
          const jobsBefore = iterations();
          gate.open();
          // Runs while the jobs do (their failures count like any other).
          if (figures.steps === OPERATOR_KEY_ROTATION_STEP) await operatorSigningKeyRotation(longLived);
          await waitFor(async () => iterations() >= jobsBefore + JOBS_PER_STEP, {
            what: `${JOBS_PER_STEP} jobs in step ${figures.steps}`,
            timeoutMs: 20_000,
            intervalMs: 10,
          });
        }
      } finally {
        stop = true;
        gate.open();
        await Promise.all(workers);
        await poller;
      }

      // The long-lived connections still work at the end.
      for (const l of longLived) {
        await l.nc.flush();
        assert.equal(l.nc.isClosed(), false, `${l.what} is still connected`);
      }
      const finalSlots = await slots();
      for (const slot of finalSlots) {
        assert.deepEqual(await lookupEverywhere(slot), [], "every node holds the final JWT");
        const { claims } = readJwt((await lookupJwt(slot.account))!, "final");
        const listed = ((claims.nats.signing_keys as Array<{ key: string }>) ?? []).map((k) => k.key).sort();
        const expected = Object.keys(slot.roles)
          .flatMap((role) => listedRoleKeys(slot, role))
          .sort();
        assert.deepEqual(listed, expected, "the JWT lists exactly the slot's keys");
        // The emergency replaced every spare key; the first spare key issued nothing after it.
        assert.notEqual(slot.roles[SPARE_ROLE], spareBefore?.get(slot.account), "spare key replaced");
      }

      for (const l of longLived) {
        l.closing = true;
        await l.nc.close();
      }

      const phases = (phase: RotationEvent["phase"]): number =>
        events.filter((e) => e.event.phase === phase).length;
      const scheduled = events.filter(
        (e) => e.event.phase === "KeyPrepared" && /\(scheduled\)/.test(e.event.message),
      ).length;
      const perRole = Object.fromEntries(
        ALL_ROLES.map((role) => [
          role,
          Math.min(...finalSlots.map((s) => count("KeyRetired", s.account, role))),
        ]),
      );
      // A push needs every server's ack: a rotation step that ran while a server restarted fails
      // and is retried (the cycles below still complete). Any other failure is a defect.
      const duringRestart = (wall: number): boolean =>
        restartWindows.some(({ from, to }) => from <= wall && wall <= to + 1_000);
      const rotationFailuresDuringRestarts = events.filter(
        (e) => e.event.phase === "RotationFailed" && duringRestart(e.wall),
      );
      const rotationFailuresOtherwise = events
        .filter((e) => e.event.phase === "RotationFailed" && !duringRestart(e.wall))
        .map((e) => e.event.message);
      const report = {
        wallSeconds: Math.round((Date.now() - started) / 100) / 10,
        manualHours: Math.round(((figures.steps * STEP_MS) / 3_600_000) * 10) / 10,
        steps: figures.steps,
        jobs: figures.jobs,
        lateJobs: figures.lateJobs,
        lateJobsOldestMinutes: figures.lateJobsOldestMinutes,
        credsKept: figures.credsKept,
        jobsByDoor: figures.jobsByDoor,
        messagesDelivered: figures.messagesDelivered,
        longLivedMessages: figures.longLivedMessages,
        longLivedRenewals: figures.longLivedRenewals,
        keysPrepared: phases("KeyPrepared"),
        keysPreparedOnSchedule: scheduled,
        keysActivated: phases("KeyActivated"),
        keysRetired: phases("KeyRetired"),
        fullCyclesPerRoleMin: perRole,
        emergencyRotations: phases("EmergencyRotation"),
        retirementsWaiting: phases("KeyRetirementWaiting"),
        retirementsForced: phases("KeyRetirementForced"),
        rotationFailures: phases("RotationFailed"),
        rotationFailuresDuringRestarts: rotationFailuresDuringRestarts.length,
        authFailures: figures.authFailures.length,
        unexpectedDisconnects: figures.unexpectedDisconnects.length,
        plannedDisconnects: figures.plannedDisconnects,
        plannedJobFailures: figures.plannedJobFailures,
        deliveryFailures: figures.deliveryFailures.length,
        otherFailures: figures.otherFailures.length,
        lookupRounds: figures.lookupRounds,
        lookupRoundsSkipped: figures.lookupRoundsSkipped,
        operatorRotation: figures.operator,
        lookupFailures: figures.lookupFailures.length,
      };
      console.log(`rotation soak figures: ${JSON.stringify(report)}`);

      const detail = (xs: string[]): string => xs.slice(0, 10).join("\n");
      assert.equal(
        figures.authFailures.length,
        0,
        `authorization failures:\n${detail(figures.authFailures)}\nnatsbind's warnings:\n${detail(warnings)}`,
      );
      assert.equal(
        figures.unexpectedDisconnects.length,
        0,
        `unexpected disconnects:\n${detail(figures.unexpectedDisconnects)}`,
      );
      assert.equal(figures.deliveryFailures.length, 0, detail(figures.deliveryFailures));
      assert.equal(figures.otherFailures.length, 0, detail(figures.otherFailures));
      assert.equal(figures.lookupFailures.length, 0, `lookups:\n${detail(figures.lookupFailures)}`);
      assert.ok(figures.lookupRounds >= 50, `${figures.lookupRounds} lookup rounds`);
      for (const role of ALL_ROLES)
        assert.ok(perRole[role]! >= CYCLES, `${role}: ${perRole[role]} full cycles`);
      assert.equal(report.emergencyRotations, PROJECTS, "one emergency rotation per account (role spare)");
      assert.equal(report.retirementsForced, 0, "no key removed while connections still used it");
      // natsbind issued every user here and every client keeps to its creds' lifetime, so no key is
      // still in use when its overlap ends: a wait means the overlap was shorter than a lifetime.
      assert.equal(report.retirementsWaiting, 0, "no retirement had to wait for live connections");
      assert.ok(figures.lateJobs >= 50, `${figures.lateJobs} late jobs`);
      assert.deepEqual(rotationFailuresOtherwise, [], `rotation failures; warnings: ${warnings.join("\n")}`);
      // The operator signing-key rotation ran once, with its six restarts, and took.
      assert.ok(figures.operator, "the operator signing-key rotation ran");
      assert.equal(figures.operator.restarts, 2 * cluster.servers.length);
      assert.ok(figures.operator.resigned >= PROJECTS, `${figures.operator.resigned} accounts re-signed`);
      for (const slot of finalSlots) {
        const { claims } = readJwt((await lookupJwt(slot.account))!, "final");
        assert.equal(claims.iss, figures.operator.newKey, "every account is signed by the new operator key");
      }
      assert.ok(figures.plannedDisconnects > 0, "the restarts closed connections (planned)");
      assert.ok(report.keysPreparedOnSchedule >= CYCLES * ALL_ROLES.length * PROJECTS, "scheduled rotations");
      assert.ok(figures.jobs >= 200, `${figures.jobs} jobs`);
      assert.ok(figures.jobsByDoor.exchange! > 0 && figures.jobsByDoor.callout! > 0, "both doors used");
      assert.ok(figures.longLivedMessages > 0, "long-lived connections received jobs' messages across nodes");
      assert.ok(emergencyAt !== undefined);
    });

    async function lookupJwt(account: string): Promise<string | undefined> {
      const m = await system!.request(`$SYS.REQ.ACCOUNT.${account}.CLAIMS.LOOKUP`, undefined, {
        timeout: 3_000,
      });
      return m.data.length > 0 ? m.string() : undefined;
    }

    async function waitLogged(msg: string, what: string): Promise<void> {
      await waitFor(async () => logged.has(msg), { what, timeoutMs: 15_000, intervalMs: 25 });
    }

    /**
     * Restarts every server in turn with `operatorJwtFile` (lame duck first). Each is a planned
     * restart until it is routed again and holds every account as the others do; long-lived
     * connections it closed are opened on it again.
     */
    async function rollingRestart(operatorJwtFile: string, longLived: LongLived[]): Promise<void> {
      const operatorJwt = await readFile(operatorJwtFile, "utf8");
      for (const [i, server] of cluster.servers.entries()) {
        const url = cluster.urls[i]!;
        plannedRestarts.add(url);
        restartsStarted += 1;
        const from = performance.now();
        try {
          await server.restart({ operatorJwt, lameDuck: true });
          await cluster.waitForRoutes(30_000);
          for (const [n, l] of longLived.entries()) {
            if (l.server !== url || !l.nc.isClosed()) continue;
            const again = await openLongLived(l.project, l.role, l.door, l.server, n);
            assert.ok(again, `reopening ${l.what} after the restart: ${figures.authFailures.join("; ")}`);
            longLived[n] = again;
          }
          await waitFor(
            async () => {
              for (const slot of await slots()) if ((await lookupEverywhere(slot)).length > 0) return false;
              return true;
            },
            {
              what: `${server.name} to hold every account after its restart`,
              timeoutMs: 30_000,
              intervalMs: 100,
            },
          );
        } finally {
          plannedRestarts.delete(url);
          restartWindows.push({ url, from, to: performance.now() });
        }
      }
    }

    /**
     * The operator signing-key rotation, as the runbook runs it (the CLI commands' functions, with
     * the soak's clock for the JWTs natsbind pushes), while jobs keep running: add-signing-key ->
     * rolling restart -> natsbind's operator JWT lists the new key -> activate (every account,
     * system and callout accounts too) -> natsbind run signs with the new key -> retire -> rolling
     * restart.
     */
    async function operatorSigningKeyRotation(longLived: LongLived[]): Promise<void> {
      const started = performance.now();
      const opFile = (name: string): string => join(op.dir, name);
      const file = (name: string): string => join(dir, name);
      const oldKey = op.signingKey.publicKey;
      const added = await addSigningKey({
        operatorSeedFile: opFile(INIT_LAYOUT.operatorKey),
        operatorJwtFile: opFile(INIT_LAYOUT.operatorJwt),
        outJwtFile: file("operator-2.jwt"),
        outSeedFile: file("operator-signing-2.nk"),
      });
      await rollingRestart(file("operator-2.jwt"), longLived);
      await copyFile(file("operator-2.jwt"), opFile(INIT_LAYOUT.operatorJwt));
      await waitLogged("operator JWT re-read", "natsbind run to re-read the operator JWT");
      const resolver = await operatorResolver(op, cluster.urls);
      let resigned: number;
      let resignedAgain: number;
      try {
        const activateOnce = () =>
          activate({
            nats: config.nats,
            resolver,
            seedFile: file("operator-signing-2.nk"),
            allAccounts: true,
            now: () => clock.now(),
          });
        resigned = (await activateOnce()).resigned;
        await waitLogged(
          "operator signing key changed: natsbind signs with the new key",
          "natsbind run to sign with the new key",
        );
        // The runbook's second run: what natsbind pushed before it switched is re-signed too.
        resignedAgain = (await activateOnce()).resigned;
        await retire({
          nats: config.nats,
          resolver,
          key: oldKey,
          operatorSeedFile: opFile(INIT_LAYOUT.operatorKey),
          operatorJwtFile: file("operator-2.jwt"),
          outJwtFile: file("operator-3.jwt"),
        });
      } finally {
        await resolver.close();
      }
      await copyFile(file("operator-3.jwt"), opFile(INIT_LAYOUT.operatorJwt));
      await rollingRestart(file("operator-3.jwt"), longLived);
      figures.operator = {
        oldKey,
        newKey: added.signingKey,
        restarts: restartWindows.length,
        resigned,
        resignedAgain,
        wallSeconds: Math.round((performance.now() - started) / 100) / 10,
      };
    }
  },
);

/** host:port of a nats:// URL, as the client's status events name servers. */
function hostPort(url: string): string {
  return url.replace(/^nats:\/\//, "");
}

/** The step at which operatorSigningKeyRotation() runs (gate closed, clock just advanced). */
const OPERATOR_KEY_ROTATION_STEP = 40;
