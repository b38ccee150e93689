/**
 * Wiring of CI credentials for `natsbind run` (config.credentials set): the audit sink, the ID token
 * verifier, the issuer, the exchange route on the HTTP listener, and, once the mode runs, the NATS
 * parts: the auth callout responder (credentials.callout) and the connection audit
 * (credentials.audit.connections). Every replica runs all of it (issuance only reads).
 */
import { ConfigError, type Config } from "../config/config.ts";
import { describeError } from "../errors.ts";
import type { RouteHandler } from "../http/server.ts";
import { plainHttpWarning } from "../http/server.ts";
import { openSystemConnection } from "../nats/from-config.ts";
import type { AccountResolver, NatsResolver } from "../nats/resolver.ts";
import { FEATURE_VERSIONS, describeServers, serversBelow } from "../nats/server-versions.ts";
import type { SystemConnection } from "../nats/system-connection.ts";
import type { Logger } from "../observability/logger.ts";
import type { Registry } from "../observability/metrics.ts";
import type { Clock } from "../runtime/clock.ts";
import { openAuditSink } from "./audit.ts";
import {
  CONNECTION_AUDIT_USER_ROLE,
  IssuedUsers,
  startConnectionAudit,
  type ConnectionAudit,
} from "./audit-connections.ts";
import type { CredentialSources, ProjectIndex } from "./directory.ts";
import { readCalloutFiles, startCallout } from "./callout.ts";
import { CREDENTIALS_PATH, createExchangeHandler } from "./exchange.ts";
import { IdTokenVerifier } from "./idtoken.ts";
import { CredentialService } from "./service.ts";

export interface CredentialsRuntime {
  service: CredentialService;
  /** Routes for the HTTP listener (POST /v1/credentials). */
  routes: Record<string, RouteHandler>;
  /** Starts what talks to NATS (callout, connection audit); call once the mode runs. */
  startNats(): Promise<void>;
  stop(): Promise<void>;
}

export interface CredentialsSetup {
  config: Config;
  clock: Clock;
  log: Logger;
  metrics: Registry;
  projects: ProjectIndex;
  sources: () => CredentialSources | undefined;
  /**
   * For "is the account on the servers yet" before issuing (lookups), and the servers' versions
   * (the callout's default_sentinel needs nats-server >= 2.11.2).
   */
  resolver: Pick<AccountResolver, "lookup"> & Partial<Pick<NatsResolver, "serverVersions">>;
}

export async function setupCredentials(s: CredentialsSetup): Promise<CredentialsRuntime | undefined> {
  const c = s.config.credentials;
  if (!c) return undefined;
  if (c.issuer === undefined) {
    throw new ConfigError(
      "credentials.issuer is not set and there is no gitlab section to take it from (gitlab.url)",
    );
  }
  const log = s.log.child({ component: "credentials" });
  const audit = await openAuditSink({ ...(c.audit.file ? { file: c.audit.file } : {}), clock: s.clock, log });
  const issued = new IssuedUsers({ clock: s.clock });
  const verifier = new IdTokenVerifier({
    issuer: c.issuer,
    audience: c.audience,
    ...(c.jwksUrl ? { jwksUrl: c.jwksUrl } : {}),
    leewayMs: c.leeway,
    maxTokenAgeMs: c.maxTokenAge,
    jwksCooldownMs: c.jwksCooldown,
    clock: s.clock,
    log,
  });
  const service = new CredentialService({
    config: c,
    natsServers: s.config.nats.servers,
    verifier,
    projects: s.projects,
    sources: s.sources,
    accountLive: async (account) => (await s.resolver.lookup(account)) !== undefined,
    clock: s.clock,
    log,
    audit,
    metrics: s.metrics,
    issued,
  });
  const exchange = createExchangeHandler({
    issuer: service,
    log: log.child({ door: "exchange" }),
    clock: s.clock,
    onRefused: (r) =>
      service.recordDoorRefusal("exchange", { client: r.client, code: r.error, message: r.message }),
  });
  const warning = plainHttpWarning(s.config.http.listen, s.config.http.tls !== undefined);
  if (warning) log.warn({ listen: s.config.http.listen }, warning);

  const auditGauge = s.metrics.gauge({
    name: "natsbind_credentials_audit_lines",
    help: "Audit lines since start, by outcome (written, dropped, write failures).",
    labelNames: ["outcome"],
  });
  const exchangeGauge = s.metrics.gauge({
    name: "natsbind_credentials_exchange_responses",
    help: "POST /v1/credentials answers since start, by HTTP status.",
    labelNames: ["status"],
  });
  s.metrics.onCollect(() => {
    auditGauge.labels({ outcome: "written" }).set(audit.counters.written);
    auditGauge.labels({ outcome: "dropped" }).set(audit.counters.dropped);
    auditGauge.labels({ outcome: "failed" }).set(audit.counters.failures);
    for (const [status, n] of Object.entries(exchange.counters.byStatus)) {
      exchangeGauge.labels({ status }).set(n);
    }
  });

  let systemConnection: SystemConnection | undefined;
  let connections: ConnectionAudit | undefined;
  const stops: Array<() => Promise<void>> = [];
  return {
    service,
    routes: { [CREDENTIALS_PATH]: exchange },
    async startNats() {
      if (c.callout) {
        const files = await readCalloutFiles(c.callout);
        const callout = await startCallout({
          servers: s.config.nats.servers,
          ...files,
          issuer: service,
          onRefused: (r) => service.recordDoorRefusal("callout", r),
          log: log.child({ door: "callout" }),
          timeoutMs: s.config.nats.timeoutMs,
          connections: c.callout.connections,
        });
        stops.push(() => callout.stop());
        await warnServersWithoutDefaultSentinel(s.resolver, log);
        const calloutGauge = s.metrics.gauge({
          name: "natsbind_credentials_callout_requests",
          help: "Auth callout requests since start, by outcome.",
          labelNames: ["outcome"],
        });
        s.metrics.onCollect(() => {
          for (const [outcome, n] of Object.entries(callout.counters)) {
            if (typeof n === "number") calloutGauge.labels({ outcome }).set(n);
          }
        });
      }
      if (c.audit.connections) {
        systemConnection = await openSystemConnection(s.config.nats, CONNECTION_AUDIT_USER_ROLE, {
          clock: s.clock,
          log,
        });
        const connectionAudit = startConnectionAudit({
          nc: systemConnection.current,
          sink: audit,
          isIssued: (user, seen) => issued.isIssued(user, seen),
          calloutUser: (name, seen) => issued.calloutUser(name, seen),
          log,
          clock: s.clock,
        });
        // A renewed system user: the subscriptions follow before the old connection closes.
        systemConnection.onRenew((next) => connectionAudit.moveTo(next));
        connections = connectionAudit;
      }
    },
    async stop() {
      for (const stop of stops.reverse()) await stop();
      await connections?.stop();
      await systemConnection?.close();
      await audit.close();
    },
  };
}

/**
 * nats-server < 2.11.2 has no default_sentinel: a client with only a token is refused there before
 * natsbind is asked, which natsbind would never see. Say so once at start, naming the servers.
 */
async function warnServersWithoutDefaultSentinel(
  resolver: CredentialsSetup["resolver"],
  log: Logger,
): Promise<void> {
  if (!resolver.serverVersions) return;
  try {
    const old = serversBelow(await resolver.serverVersions(), FEATURE_VERSIONS.defaultSentinel);
    if (old.length === 0) return;
    log.error(
      { servers: old.map((o) => `${o.server} ${o.version}`) },
      `auth callout: ${describeServers(old)} run nats-server < ${FEATURE_VERSIONS.defaultSentinel}, which has ` +
        "no default_sentinel: clients with only a token are refused there without a callout; " +
        "they must connect with the sentinel's creds, or upgrade those servers",
    );
  } catch (err) {
    log.warn({ err: describeError(err) }, "auth callout: could not read the servers' versions");
  }
}
