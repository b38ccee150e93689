// An operator made by our own `natsbind init`, loaded for tests: what servers and clients need.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { INIT_LAYOUT, initOperator } from "../../src/cli/init.ts";
import {
  accountClaims,
  decodeJwt,
  signJwt,
  userClaims,
  type DesiredAccount,
  type PermissionTemplate,
} from "../../src/nats/claims.ts";
import { CALLOUT_MAX_CONTROL_LINE } from "../../src/credentials/callout-account.ts";
import { NatsResolver } from "../../src/nats/resolver.ts";
import { formatCreds } from "../../src/nats/creds.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { readSeedFile } from "../../src/store/key-directory.ts";
import type { NatsServerOptions } from "./nats-server.ts";
import { removeDir, tempDir, waitFor } from "./process.ts";

export interface TestOperator {
  dir: string;
  operator: string;
  operatorJwt: string;
  signingKey: NKeyPair;
  systemAccount: string;
  systemAccountJwt: string;
  systemCreds: Uint8Array;
  /** Options for startNatsServer / startNatsCluster trusting this operator. */
  serverOptions: NatsServerOptions;
  /** With createTestOperator({ callout: true }): what `natsbind init --callout` wrote. */
  callout?: TestCallout;
  remove(): Promise<void>;
}

/** The auth callout files of `natsbind init --callout`, loaded. */
export interface TestCallout {
  /** The callout account's public key. */
  account: string;
  accountJwt: string;
  /** The callout account's signing key (signs responses and the account's users). */
  signingKey: NKeyPair;
  /** Creds of natsbind's callout service user (text). */
  serviceCreds: string;
  /** The bearer deny-all sentinel, the servers' default_sentinel. */
  sentinelJwt: string;
  /** Paths of the files natsbind.yaml's credentials.callout names. */
  credsFile: string;
  signingKeyFile: string;
}

/**
 * An operator from our own `natsbind init` (with `callout`: `init --callout`). With callout, its
 * serverOptions preload the callout account, set default_sentinel and raise max_control_line, as
 * the nats-server.conf init writes does.
 */
export async function createTestOperator(opts: { callout?: boolean } = {}): Promise<TestOperator> {
  const dir = await tempDir("operator");
  const result = await initOperator({ outDir: dir, callout: opts.callout ?? false });
  const operatorJwt = (await readFile(join(dir, INIT_LAYOUT.operatorJwt), "utf8")).trim();
  const systemAccountJwt = (await readFile(join(dir, INIT_LAYOUT.systemAccountJwt), "utf8")).trim();
  const serverOptions: NatsServerOptions = {
    operatorJwt,
    systemAccount: result.systemAccount,
    systemAccountJwt,
  };
  let callout: TestCallout | undefined;
  if (opts.callout) {
    const accountJwt = (await readFile(join(dir, INIT_LAYOUT.calloutAccountJwt), "utf8")).trim();
    callout = {
      account: decodeJwt(accountJwt).sub,
      accountJwt,
      signingKey: await readSeedFile(join(dir, INIT_LAYOUT.calloutAccountSigningKey), "account"),
      serviceCreds: await readFile(join(dir, INIT_LAYOUT.calloutCreds), "utf8"),
      sentinelJwt: (await readFile(join(dir, INIT_LAYOUT.calloutSentinelJwt), "utf8")).trim(),
      credsFile: join(dir, INIT_LAYOUT.calloutCreds),
      signingKeyFile: join(dir, INIT_LAYOUT.calloutAccountSigningKey),
    };
    serverOptions.preloadAccounts = { [callout.account]: accountJwt };
    serverOptions.defaultSentinel = callout.sentinelJwt;
    serverOptions.maxControlLine = CALLOUT_MAX_CONTROL_LINE;
  }
  return {
    dir,
    operator: result.operator,
    operatorJwt,
    signingKey: await readSeedFile(join(dir, INIT_LAYOUT.operatorSigningKey), "operator"),
    systemAccount: result.systemAccount,
    systemAccountJwt,
    systemCreds: await readFile(join(dir, INIT_LAYOUT.systemCreds)),
    serverOptions,
    ...(callout ? { callout } : {}),
    remove: () => removeDir(dir),
  };
}

/**
 * Creds of another user of the callout account, with `permissions` (e.g. publish on
 * $SYS.REQ.USER.AUTH): what someone holding the callout signing key could mint. nats-server sends
 * such a user to the callout like any client unless the account JWT lists it in auth_users
 * (calloutAccountJwt).
 */
export function calloutAccountUserCreds(callout: TestCallout, permissions: PermissionTemplate): Uint8Array {
  const user = NKeyPair.generate("user");
  const jwt = signJwt(
    userClaims({
      publicKey: user.publicKey,
      name: "callout-account-user",
      account: callout.account,
      issuer: callout.signingKey.publicKey,
      scoped: false,
      permissions,
    }),
    callout.signingKey,
    Math.floor(Date.now() / 1000),
  );
  return new TextEncoder().encode(formatCreds(jwt, user));
}

/**
 * The callout account's JWT as init writes it, but with `authUsers` as its auth_users (natsbind's
 * service user is in init's); signed now, so a push replaces the preloaded one.
 */
export function calloutAccountJwt(op: TestOperator, authUsers: string[]): string {
  if (!op.callout) throw new Error("calloutAccountJwt: the operator was made without callout");
  return signJwt(
    accountClaims(
      {
        publicKey: op.callout.account,
        name: "CALLOUT",
        signingKeys: [op.callout.signingKey.publicKey],
        authorization: { authUsers, allowedAccounts: ["*"] },
      },
      op.signingKey.publicKey,
    ),
    op.signingKey,
    Math.floor(Date.now() / 1000),
  );
}

/** A project-like account with one scoped "ci" role, and the keys to issue its users. */
export interface TestAccount {
  account: NKeyPair;
  ciKey: NKeyPair;
  jwt: string;
  desired: DesiredAccount;
}

export function projectAccount(
  op: Pick<TestOperator, "signingKey">,
  name: string,
  iat = 1_700_000_000,
): TestAccount {
  const account = NKeyPair.generate("account");
  const ciKey = NKeyPair.generate("account");
  const desired: DesiredAccount = {
    publicKey: account.publicKey,
    name,
    signingKeys: [
      {
        key: ciKey.publicKey,
        role: "ci",
        template: {
          pub: { allow: ["build.{{tag(project)}}.>"] },
          sub: { allow: ["build.{{tag(project)}}.>", "_INBOX.>"] },
          responses: { max: 1, ttlMs: 5_000 },
        },
      },
    ],
  };
  return {
    account,
    ciKey,
    desired,
    jwt: signJwt(accountClaims(desired, op.signingKey.publicKey), op.signingKey, iat),
  };
}

/**
 * Creds of a user signed by `roleKey`, a scoped signing key of `account`: a fresh user key unless
 * `user` is given (re-issuing a key), issued now unless `issuedAt` (unix seconds) is given.
 */
export function roleUserCreds(
  account: string,
  roleKey: NKeyPair,
  opts: { name?: string; tags?: string[]; expiresAt?: number; user?: NKeyPair; issuedAt?: number } = {},
): Uint8Array {
  const user = opts.user ?? NKeyPair.generate("user");
  const jwt = signJwt(
    userClaims({
      publicKey: user.publicKey,
      name: opts.name ?? "ci-job",
      account,
      issuer: roleKey.publicKey,
      scoped: true,
      ...(opts.tags ? { tags: opts.tags } : {}),
      ...(opts.expiresAt !== undefined ? { expiresAt: opts.expiresAt } : {}),
    }),
    roleKey,
    opts.issuedAt ?? Math.floor(Date.now() / 1000),
  );
  return new TextEncoder().encode(formatCreds(jwt, user));
}

/** Creds of a user signed by the account's scoped "ci" key, tagged with `tags`. */
export function scopedUserCreds(acc: TestAccount, tags: string[]): Uint8Array {
  return roleUserCreds(acc.account.publicKey, acc.ciKey, { tags });
}

/** A resolver client as this operator's system user, pushing with its signing key. */
export function operatorResolver(op: TestOperator, servers: string | string[]): Promise<NatsResolver> {
  return NatsResolver.connect({ servers, creds: op.systemCreds, operatorSigningKey: op.signingKey });
}

/**
 * The `nats` section of a natsbind.yaml that talks to `servers` as this operator: with init's
 * system.creds, or (`systemUser: "issued"`, what `natsbind init` configures) with the system
 * account's signing key, natsbind issuing itself short-lived system users.
 */
export function natsConfigSection(
  op: TestOperator,
  servers: string[],
  opts: { systemUser?: "creds" | "issued" } = {},
): Record<string, unknown> {
  return {
    servers,
    ...(opts.systemUser === "issued"
      ? { systemSigningKey: join(op.dir, INIT_LAYOUT.systemAccountSigningKey) }
      : { systemCreds: join(op.dir, INIT_LAYOUT.systemCreds) }),
    operatorSigningKey: join(op.dir, INIT_LAYOUT.operatorSigningKey),
    operatorJwt: join(op.dir, INIT_LAYOUT.operatorJwt),
  };
}

export function connectWithCreds(servers: string | string[], creds: Uint8Array): Promise<NatsConnection> {
  return connect({
    servers,
    authenticator: credsAuthenticator(creds),
    maxReconnectAttempts: 0,
    timeout: 5_000,
  });
}

/** Records a connection's status events ("disconnect", "error: <message>", ...) as they come. */
export function watchStatus(nc: NatsConnection): {
  all: string[];
  errors(): string[];
  next(what: string, match: (event: string) => boolean): Promise<void>;
} {
  const all: string[] = [];
  void (async () => {
    for await (const s of nc.status()) {
      // Not events of the connection: "update" is an INFO naming the servers (nats-server sends one
      // after the first PONG, which may come after connect() resolved; nats.js reports it even
      // when no server changed), "ping" the client's own keepalive.
      if (s.type === "update" || s.type === "ping") continue;
      all.push(s.type === "error" ? `error: ${s.error.message}` : s.type);
    }
  })();
  return {
    all,
    errors: () => all.filter((e) => e.startsWith("error: ")).map((e) => e.slice("error: ".length)),
    next: (what, match) => waitFor(async () => all.some(match), { what, timeoutMs: 5_000, intervalMs: 10 }),
  };
}
