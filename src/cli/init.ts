/**
 * `natsbind init`: a fresh operator and everything a nats-server and natsbind need to trust it.
 *
 * The operator identity key is written once and is not needed at run time: natsbind signs with the
 * operator signing key only. The operator JWT sets strict_signing_key_usage, so identity keys
 * (operator and account) cannot sign anything the servers accept: only signing keys can.
 *
 * With `callout`, also the NATS auth callout (credentials/callout-account.ts): a callout account
 * preloaded into the server config, natsbind's callout user, the signing key of the responses, and
 * a bearer sentinel as `default_sentinel` (nats-server >= 2.11.2).
 */
import { access, constants, mkdir, readdir, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { NatsbindError } from "../errors.ts";
import { accountClaims, operatorClaims, signJwt, userClaims } from "../nats/claims.ts";
import { formatCreds } from "../nats/creds.ts";
import { NKeyPair } from "../nats/keys.ts";
import { writeFileAtomic } from "../store/files.ts";
import {
  CALLOUT_MAX_CONTROL_LINE,
  createCalloutAccount,
  type CalloutAccount,
} from "../credentials/callout-account.ts";

export class InitError extends NatsbindError {}

export interface InitOptions {
  outDir: string;
  operatorName?: string;
  /** Replace keys and files already in outDir. */
  force?: boolean;
  natsHost?: string;
  natsPort?: number;
  monitorPort?: number;
  /** Also set up the NATS auth callout for CI credentials. */
  callout?: boolean;
  /** credentials.audience of the starter natsbind.yaml (with callout; default "natsbind"). */
  audience?: string;
  /** Wall clock in ms (iat of the JWTs). */
  now?: () => number;
}

/** Paths below outDir, shared by init, the config it writes and the docs. */
export const INIT_LAYOUT = {
  operatorKey: "operator/operator.nk",
  operatorSigningKey: "operator/operator-signing.nk",
  systemAccountKey: "operator/system-account.nk",
  systemAccountSigningKey: "operator/system-account-signing.nk",
  operatorJwt: "operator.jwt",
  systemAccountJwt: "system-account.jwt",
  systemCreds: "system.creds",
  natsServerConfig: "nats-server.conf",
  config: "natsbind.yaml",
  resolverDir: "jwt",
  accountKeyDir: "keys",
  bindingsDir: "bindings",
  // --callout
  calloutAccountKey: "operator/callout-account.nk",
  calloutAccountSigningKey: "operator/callout-account-signing.nk",
  calloutAccountJwt: "callout-account.jwt",
  calloutCreds: "callout.creds",
  calloutSentinelJwt: "callout-sentinel.jwt",
} as const;

export const DEFAULT_AUDIENCE = "natsbind";

export interface InitResult {
  outDir: string;
  operator: string;
  operatorSigningKey: string;
  systemAccount: string;
  systemUser: string;
  /** With callout: the public keys of what it made. */
  callout?: { account: string; signingKey: string; serviceUser: string };
  files: string[];
}

/** Creates `dir` (0700) or checks that it is a writable, empty directory (any directory with force). */
export async function checkTarget(dir: string, force: boolean): Promise<void> {
  try {
    const info = await stat(dir);
    if (!info.isDirectory()) throw new InitError(`init: ${dir} exists and is not a directory`);
  } catch (err) {
    if (err instanceof InitError) throw err;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    } catch (cause) {
      throw new InitError(`init: cannot create ${dir}: ${(cause as NodeJS.ErrnoException).code ?? cause}`, {
        cause,
      });
    }
  }
  try {
    await access(dir, constants.W_OK);
  } catch (cause) {
    throw new InitError(`init: ${dir} is not writable`, { cause });
  }
  const entries = await readdir(dir);
  if (entries.length > 0 && !force) {
    const keys = (await readdir(join(dir, "operator")).catch(() => [])).length > 0;
    throw new InitError(
      keys
        ? `init: ${dir} already holds keys; refusing to overwrite them. Pass --force to replace the operator ` +
            "(every account signed by the old operator stops being trusted)"
        : `init: ${dir} is not empty (${entries.slice(0, 3).join(", ")}${entries.length > 3 ? ", ..." : ""}); ` +
            "choose an empty directory or pass --force",
    );
  }
}

function serverConfig(o: {
  host: string;
  port: number;
  monitorPort: number;
  operatorJwtPath: string;
  systemAccount: string;
  systemAccountJwt: string;
  resolverDir: string;
  callout?: { account: string; accountJwt: string; sentinelJwt: string };
}): string {
  const preload = [`  ${o.systemAccount}: ${JSON.stringify(o.systemAccountJwt)}`];
  if (o.callout) preload.push(`  ${o.callout.account}: ${JSON.stringify(o.callout.accountJwt)}`);
  const callout = o.callout ? `\n${calloutServerConfig(o.callout.sentinelJwt)}` : "";
  return `# nats-server configuration written by natsbind init (operator mode, full account resolver).
server_name: natsbind-0
host: ${o.host}
port: ${o.port}
http: "${o.host}:${o.monitorPort}"

operator: ${JSON.stringify(o.operatorJwtPath)}
system_account: ${o.systemAccount}

resolver: {
  type: full
  dir: ${JSON.stringify(o.resolverDir)}
  allow_delete: true
  interval: "2m"
  timeout: "1.9s"
}

resolver_preload: {
${preload.join("\n")}
}
${callout}`;
}

/** The lines a nats-server config needs for the callout (besides the callout account's JWT). */
export function calloutServerConfig(sentinelJwt: string): string {
  return `# Auth callout (natsbind; nats-server >= 2.11.2). A client without creds connects as this bearer
# sentinel (a user of the callout account that may do nothing); the callout account's JWT sends
# every such connection to natsbind, which answers with a user JWT for the client.
default_sentinel: ${JSON.stringify(sentinelJwt)}
# A CONNECT carrying a GitLab ID token is larger than the default 4 KiB.
max_control_line: ${CALLOUT_MAX_CONTROL_LINE}
`;
}

/** natsbind.yaml's credentials section for the callout; `dir` prefixes the file paths. */
export function credentialsSection(audience: string, dir = ""): string {
  const at = (p: string): string => (dir ? JSON.stringify(join(dir, p)) : p);
  return `credentials:
  # The aud of the jobs' ID tokens (id_tokens: <NAME>: aud: ${audience} in .gitlab-ci.yml).
  # The issuer is gitlab.url: set the gitlab section.
  audience: ${JSON.stringify(audience)}
  callout:
    # natsbind's callout user: answers $SYS.REQ.USER.AUTH in the callout account.
    credsFile: ${at(INIT_LAYOUT.calloutCreds)}
    # Signs the authorization responses (a signing key of the callout account).
    signingKeyFile: ${at(INIT_LAYOUT.calloutAccountSigningKey)}
`;
}

/** Checks an audience before anything is written (credentials.audience's bounds, plain YAML). */
export function checkAudience(audience: string): void {
  if (audience.length === 0 || audience.length > 512 || /\s/.test(audience)) {
    throw new InitError("init: the audience must be 1 to 512 characters without whitespace");
  }
}

/** The callout's files (INIT_LAYOUT paths), keys first. */
export function calloutFiles(callout: CalloutAccount): Array<[string, string, number]> {
  const seed = (k: NKeyPair): string => `${new TextDecoder().decode(k.getSeed())}\n`;
  return [
    [INIT_LAYOUT.calloutAccountKey, seed(callout.account), 0o600],
    [INIT_LAYOUT.calloutAccountSigningKey, seed(callout.signingKey), 0o600],
    [INIT_LAYOUT.calloutCreds, callout.serviceCreds, 0o600],
    [INIT_LAYOUT.calloutAccountJwt, `${callout.accountJwt}\n`, 0o644],
    [INIT_LAYOUT.calloutSentinelJwt, `${callout.sentinelJwt}\n`, 0o644],
  ];
}

function natsbindConfig(o: { host: string; port: number; audience?: string }): string {
  return `# natsbind configuration written by natsbind init. Relative paths are relative to this file.
mode: local
nats:
  servers: ["nats://${o.host}:${o.port}"]
  # A signing key of the system account: natsbind issues itself short-lived system users that may
  # only make the requests it needs (the system account is the operator JWT's system_account).
  # ${INIT_LAYOUT.systemCreds} is an unrestricted system user for your own tools (nats CLI).
  systemSigningKey: ${INIT_LAYOUT.systemAccountSigningKey}
  systemUserLifetime: 1h
  # Signs account JWTs. The operator identity key (${INIT_LAYOUT.operatorKey}) is not used at run time: keep it offline.
  operatorSigningKey: ${INIT_LAYOUT.operatorSigningKey}
  operatorJwt: ${INIT_LAYOUT.operatorJwt}
  timeoutMs: 5000
# gitlab:
#   url: https://gitlab.example.com
#   tokenFile: gitlab-token
#   webhookSecretFile: webhook-secret
#   resyncInterval: 10m
bindings:
  directory: ${INIT_LAYOUT.bindingsDir}
keys:
  # Account identity and signing keys, one 0600 file each, written before any JWT names them.
  directory: ${INIT_LAYOUT.accountKeyDir}
state:
  # Status of each binding, written by natsbind run, read by natsbind status.
  directory: state
http:
  listen: "127.0.0.1:8080"
${o.audience !== undefined ? credentialsSection(o.audience) : ""}`;
}

export async function initOperator(opts: InitOptions): Promise<InitResult> {
  const outDir = resolve(opts.outDir);
  const audience = opts.audience ?? DEFAULT_AUDIENCE;
  checkAudience(audience);
  await checkTarget(outDir, opts.force ?? false);
  const iat = Math.floor((opts.now ?? Date.now)() / 1000);
  const host = opts.natsHost ?? "127.0.0.1";
  const port = opts.natsPort ?? 4222;
  const monitorPort = opts.monitorPort ?? 8222;

  const operator = NKeyPair.generate("operator");
  const signing = NKeyPair.generate("operator");
  const system = NKeyPair.generate("account");
  // Under strict signing key usage nats-server accepts users only from account signing keys.
  const systemSigning = NKeyPair.generate("account");
  const systemUser = NKeyPair.generate("user");
  const callout: CalloutAccount | undefined = opts.callout
    ? createCalloutAccount({ operatorSigningKey: signing, issuedAt: iat })
    : undefined;

  const operatorJwt = signJwt(
    operatorClaims({
      publicKey: operator.publicKey,
      name: opts.operatorName ?? "natsbind",
      signingKeys: [signing.publicKey],
      systemAccount: system.publicKey,
      strictSigningKeyUsage: true,
    }),
    operator,
    iat,
  );
  const systemJwt = signJwt(
    accountClaims(
      { publicKey: system.publicKey, name: "SYS", signingKeys: [systemSigning.publicKey] },
      signing.publicKey,
    ),
    signing,
    iat,
  );
  const userJwt = signJwt(
    userClaims({
      publicKey: systemUser.publicKey,
      name: "natsbind-system",
      account: system.publicKey,
      issuer: systemSigning.publicKey,
      scoped: false,
    }),
    systemSigning,
    iat,
  );

  const at = (p: string): string => join(outDir, p);
  await mkdir(at("operator"), { recursive: true, mode: 0o700 });
  await mkdir(at(INIT_LAYOUT.accountKeyDir), { recursive: true, mode: 0o700 });
  await mkdir(at(INIT_LAYOUT.bindingsDir), { recursive: true });
  await mkdir(at(INIT_LAYOUT.resolverDir), { recursive: true, mode: 0o700 });
  const seed = (k: NKeyPair): string => `${new TextDecoder().decode(k.getSeed())}\n`;
  // Keys first: every JWT below names them.
  const files: Array<[string, string, number]> = [
    [INIT_LAYOUT.operatorKey, seed(operator), 0o600],
    [INIT_LAYOUT.operatorSigningKey, seed(signing), 0o600],
    [INIT_LAYOUT.systemAccountKey, seed(system), 0o600],
    [INIT_LAYOUT.systemAccountSigningKey, seed(systemSigning), 0o600],
    [INIT_LAYOUT.systemCreds, formatCreds(userJwt, systemUser), 0o600],
    ...(callout ? calloutFiles(callout) : []),
    [INIT_LAYOUT.operatorJwt, `${operatorJwt}\n`, 0o644],
    [INIT_LAYOUT.systemAccountJwt, `${systemJwt}\n`, 0o644],
    [
      INIT_LAYOUT.natsServerConfig,
      serverConfig({
        host,
        port,
        monitorPort,
        operatorJwtPath: at(INIT_LAYOUT.operatorJwt),
        systemAccount: system.publicKey,
        systemAccountJwt: systemJwt,
        resolverDir: at(INIT_LAYOUT.resolverDir),
        ...(callout
          ? {
              callout: {
                account: callout.account.publicKey,
                accountJwt: callout.accountJwt,
                sentinelJwt: callout.sentinelJwt,
              },
            }
          : {}),
      }),
      0o644,
    ],
    [INIT_LAYOUT.config, natsbindConfig({ host, port, ...(callout ? { audience } : {}) }), 0o644],
  ];
  for (const [path, data, mode] of files) await writeFileAtomic(at(path), data, mode);
  for (const k of [operator, signing, system, systemSigning, systemUser]) k.clear();
  const calloutKeys = callout && {
    account: callout.account.publicKey,
    signingKey: callout.signingKey.publicKey,
    serviceUser: callout.serviceUser.publicKey,
  };
  if (callout) for (const k of [callout.account, callout.signingKey, callout.serviceUser]) k.clear();
  return {
    outDir,
    operator: operator.publicKey,
    operatorSigningKey: signing.publicKey,
    systemAccount: system.publicKey,
    systemUser: systemUser.publicKey,
    ...(calloutKeys ? { callout: calloutKeys } : {}),
    files: files.map(([p]) => p),
  };
}
