/**
 * The resolver connection and operator signing key as natsbind.yaml's `nats` section describes
 * them: one place for every command that talks to the resolver or to the system account.
 */
import { connect, credsAuthenticator } from "@nats-io/transport-node";
import {
  ConfigError,
  MAX_CREDS_FILE_BYTES,
  MAX_OPERATOR_JWT_BYTES,
  readConfigReferencedFile,
  type Config,
} from "../config/config.ts";
import { describeError } from "../errors.ts";
import { createLogger, type Logger } from "../observability/logger.ts";
import { systemClock, type Clock } from "../runtime/clock.ts";
import { readSeedFile } from "../store/key-directory.ts";
import { assertEveryServerTrusts } from "../operator/inventory.ts";
import { LiveOperatorKeys, type LiveOperatorKeysOptions } from "../operator/live-keys.ts";
import { decodeJwt, trustedOperatorFromJwt } from "./claims.ts";
import { isPublicKey, type NKeyPair } from "./keys.ts";
import { NatsResolver, ResolverUnavailableError } from "./resolver.ts";
import { MIN_SUPPORTED_VERSION, describeServers, serversBelow } from "./server-versions.ts";
import {
  RenewingSystemConnection,
  SystemConnectionError,
  fixedSystemConnection,
  type SystemConnection,
} from "./system-connection.ts";
import {
  DEFAULT_SYSTEM_USER_LIFETIME_MS,
  RESOLVER_USER_ROLE,
  SystemUserIssuer,
  type SystemUserRole,
} from "./system-user.ts";

export interface SystemConnectionContext {
  /** Times the issued users' JWTs and their renewal (default: the system clock). */
  clock?: Clock;
  /** Renewal failures are logged here (default: a logger to standard error). */
  log?: Logger;
}

/**
 * The system account natsbind's users belong to: nats.systemAccount, else the operator JWT's
 * system_account; when both are given they must agree.
 */
async function systemAccountOf(nats: Config["nats"]): Promise<string> {
  let fromOperator: string | undefined;
  if (nats.operatorJwt) {
    const text = await readConfigReferencedFile(nats.operatorJwt, "nats.operatorJwt", MAX_OPERATOR_JWT_BYTES);
    const claims = decodeJwt(text.trim(), `nats.operatorJwt ${nats.operatorJwt}`);
    const account = claims.nats.system_account;
    if (typeof account === "string" && isPublicKey(account, "account")) fromOperator = account;
  }
  if (nats.systemAccount !== undefined) {
    if (fromOperator !== undefined && fromOperator !== nats.systemAccount)
      throw new ConfigError(
        `nats.systemAccount ${nats.systemAccount} is not the system account of nats.operatorJwt (${fromOperator})`,
      );
    return nats.systemAccount;
  }
  if (fromOperator === undefined)
    throw new ConfigError(
      "nats.operatorJwt names no system_account: set nats.systemAccount to the system account's public key",
    );
  return fromOperator;
}

/** The issuer of natsbind's own system users, from nats.systemSigningKey (undefined with systemCreds). */
export async function systemUserIssuerFromConfig(
  nats: Config["nats"],
  clock: Clock = systemClock,
): Promise<SystemUserIssuer | undefined> {
  if (nats.systemSigningKey === undefined) return undefined;
  let signingKey: NKeyPair;
  try {
    signingKey = await readSeedFile(nats.systemSigningKey, "account");
  } catch (cause) {
    // The key store's message names the file and what is wrong with it, never the seed.
    throw new ConfigError(`nats.systemSigningKey: ${describeError(cause)}`, { cause });
  }
  return new SystemUserIssuer({
    systemAccount: await systemAccountOf(nats),
    signingKey,
    lifetimeMs: nats.systemUserLifetime ?? DEFAULT_SYSTEM_USER_LIFETIME_MS,
    clock,
  });
}

/** What a system connection needs, read and checked: connecting comes after every file is read. */
export type SystemConnector = (role: SystemUserRole) => Promise<SystemConnection>;

/**
 * Reads what nats.systemSigningKey or nats.systemCreds name and returns how to connect to the
 * system account: as users natsbind issues itself (renewed before they expire), or with the creds.
 */
export async function systemConnector(
  nats: Config["nats"],
  ctx: SystemConnectionContext = {},
): Promise<SystemConnector> {
  const clock = ctx.clock ?? systemClock;
  const issuer = await systemUserIssuerFromConfig(nats, clock);
  if (issuer) {
    return (role) =>
      RenewingSystemConnection.start({
        servers: nats.servers,
        issuer,
        role,
        name: role.name,
        clock,
        log: ctx.log ?? createLogger({ base: { app: "natsbind" } }),
        connectTimeoutMs: nats.timeoutMs,
      });
  }
  if (nats.systemCreds === undefined) throw new ConfigError("set nats.systemSigningKey or nats.systemCreds");
  const creds = await readConfigReferencedFile(nats.systemCreds, "nats.systemCreds", MAX_CREDS_FILE_BYTES);
  return async (role) => {
    try {
      const nc = await connect({
        servers: nats.servers,
        authenticator: credsAuthenticator(new TextEncoder().encode(creds)),
        name: role.name,
        noAsyncTraces: true,
        maxReconnectAttempts: -1,
        timeout: nats.timeoutMs,
      });
      return fixedSystemConnection(nc);
    } catch (cause) {
      throw new SystemConnectionError(
        `cannot connect to NATS at ${nats.servers.join(",")}: ${describeError(cause)}`,
        { cause },
      );
    }
  };
}

/** A connection to the system account for `role` (systemConnector, then connect). */
export async function openSystemConnection(
  nats: Config["nats"],
  role: SystemUserRole,
  ctx: SystemConnectionContext = {},
): Promise<SystemConnection> {
  return (await systemConnector(nats, ctx))(role);
}

export async function connectResolver(
  nats: Config["nats"],
  ctx: SystemConnectionContext = {},
): Promise<{ resolver: NatsResolver; signer: NKeyPair }> {
  const signer = await readSeedFile(nats.operatorSigningKey, "operator");
  const connector = await systemConnector(nats, ctx);
  const operatorJwt = nats.operatorJwt
    ? await readConfigReferencedFile(nats.operatorJwt, "nats.operatorJwt", MAX_OPERATOR_JWT_BYTES)
    : undefined;
  const trustedOperator =
    nats.operatorJwt && operatorJwt !== undefined
      ? trustedOperatorFromJwt(operatorJwt, nats.operatorJwt)
      : // Without the operator JWT, trust only the key natsbind signs with.
        { publicKey: signer.publicKey, signingKeys: [signer.publicKey] };
  let connection: SystemConnection;
  try {
    connection = await connector(RESOLVER_USER_ROLE);
  } catch (err) {
    if (err instanceof SystemConnectionError) throw new ResolverUnavailableError(err.message, { cause: err });
    throw err;
  }
  const resolver = await NatsResolver.connect({
    servers: nats.servers,
    connection,
    timeoutMs: nats.timeoutMs,
    operatorSigningKey: signer,
    trustedOperator,
    ...(nats.expectedServers ? { expectedServers: nats.expectedServers } : {}),
  });
  return { resolver, signer };
}

/**
 * connectResolver for `natsbind run`: the operator keys are re-read when their files change
 * (operator activate), and the resolver's push() check follows them. A new signing key is used only
 * once every server trusts it. Call keys.watch() to start watching, keys.close() to stop.
 */
export async function connectLiveResolver(
  nats: Config["nats"],
  opts: Pick<LiveOperatorKeysOptions, "exclusive" | "pollIntervalMs"> & { clock?: Clock; log?: Logger } = {},
): Promise<{ resolver: NatsResolver; keys: LiveOperatorKeys }> {
  const connector = await systemConnector(nats, {
    ...(opts.clock ? { clock: opts.clock } : {}),
    ...(opts.log ? { log: opts.log } : {}),
  });
  const connected: { resolver?: NatsResolver } = {};
  const keys: LiveOperatorKeys = await LiveOperatorKeys.load({
    ...opts,
    signingKeyFile: nats.operatorSigningKey,
    ...(nats.operatorJwt ? { operatorJwtFile: nats.operatorJwt } : {}),
    approve: async (key) => {
      if (!connected.resolver) throw new Error("not connected yet");
      await assertEveryServerTrusts(connected.resolver, keys.signer.publicKey, key);
    },
  });
  let connection: SystemConnection;
  try {
    connection = await connector(RESOLVER_USER_ROLE);
  } catch (err) {
    if (err instanceof SystemConnectionError) throw new ResolverUnavailableError(err.message, { cause: err });
    throw err;
  }
  const resolver = await NatsResolver.connect({
    servers: nats.servers,
    connection,
    timeoutMs: nats.timeoutMs,
    operatorSigningKey: keys.signer,
    trustedOperator: keys.trustedOperator,
    ...(nats.expectedServers ? { expectedServers: nats.expectedServers } : {}),
  });
  connected.resolver = resolver;
  void warnUnsupportedServers(resolver, opts.log ?? createLogger({ base: { app: "natsbind" } }));
  return { resolver, keys };
}

/**
 * Logs the servers older than natsbind supports (README, "Supported nats-server versions"), once,
 * without holding up the start. What needs a newer server fails with its own error when used.
 */
export async function warnUnsupportedServers(
  resolver: Pick<NatsResolver, "serverVersions">,
  log: Logger,
): Promise<void> {
  try {
    const old = serversBelow(await resolver.serverVersions(), MIN_SUPPORTED_VERSION);
    if (old.length > 0)
      log.warn(
        { servers: old.map((o) => `${o.server} ${o.version}`) },
        `nats-server older than ${MIN_SUPPORTED_VERSION} is not supported: ${describeServers(old)}`,
      );
  } catch (err) {
    log.debug({ err: describeError(err) }, "could not read the servers' versions");
  }
}
