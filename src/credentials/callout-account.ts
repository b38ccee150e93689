/**
 * The NATS side of the auth callout (issue 10, part 4): a callout account, natsbind's callout
 * service user and a bearer sentinel user. `natsbind init --callout` writes them; the same function
 * serves an operator natsbind did not create (see docs/ci-credentials.md).
 *
 * - The callout account's JWT carries `authorization: {auth_users: [service user], allowed_accounts:
 *   ["*"]}`: every other user of the account is sent to the callout, so no user of it can do
 *   anything without natsbind's answer.
 * - Its one signing key (strict signing key usage: the identity key signs nothing the servers
 *   accept) signs the service user, the sentinel and, at run time, the authorization responses.
 *   Whoever holds it can mint more callout-account users, but those are sent to the callout too.
 * - The service user may only subscribe to $SYS.REQ.USER.AUTH (any queue group) and answer what it
 *   receives (one response per request): it can publish nothing else.
 * - The sentinel is a bearer user denied every subject: `default_sentinel` in the server config
 *   makes a client without creds connect as it, and so reach the callout with its token.
 */
import { accountClaims, signJwt, userClaims } from "../nats/claims.ts";
import { formatCreds } from "../nats/creds.ts";
import { NKeyPair } from "../nats/keys.ts";

/** Where nats-server sends authorization requests, in the callout account. */
export const AUTH_CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH";

/**
 * How long the service user's permission to answer one request lasts. nats-server waits
 * auth_timeout (2 s by default) for the answer; a request dropped unanswered leaves an entry that
 * the server prunes after this.
 */
export const CALLOUT_RESPONSE_TTL_MS = 60_000;

/** nats-server's max_control_line for callout deployments: a CONNECT carrying an ID token fits. */
export const CALLOUT_MAX_CONTROL_LINE = 16 * 1024;

export interface CalloutAccountOptions {
  /** An operator signing key (signs the callout account JWT). */
  operatorSigningKey: NKeyPair;
  /** Unix seconds: iat of the JWTs. */
  issuedAt: number;
  /** Account name (default "CALLOUT"). */
  name?: string;
  /** Accounts the callout may place users in (default ["*"]: any account of the operator). */
  allowedAccounts?: string[];
}

export interface CalloutAccount {
  /** The callout account's identity key: not needed at run time (keep it offline). */
  account: NKeyPair;
  /** Signs the service user, the sentinel and the authorization responses (natsbind needs it). */
  signingKey: NKeyPair;
  /** natsbind's callout service user (an auth_users entry). */
  serviceUser: NKeyPair;
  accountJwt: string;
  /** Creds of the service user (secret). */
  serviceCreds: string;
  /** Bearer user JWT, deny all: the `default_sentinel` (not secret: it grants nothing). */
  sentinelJwt: string;
}

export function createCalloutAccount(opts: CalloutAccountOptions): CalloutAccount {
  const account = NKeyPair.generate("account");
  const signingKey = NKeyPair.generate("account");
  const serviceUser = NKeyPair.generate("user");
  const sentinel = NKeyPair.generate("user");
  const accountJwt = signJwt(
    accountClaims(
      {
        publicKey: account.publicKey,
        name: opts.name ?? "CALLOUT",
        description: "natsbind auth callout: CI jobs connect here with their GitLab ID token",
        signingKeys: [signingKey.publicKey],
        authorization: {
          authUsers: [serviceUser.publicKey],
          allowedAccounts: opts.allowedAccounts ?? ["*"],
        },
      },
      opts.operatorSigningKey.publicKey,
    ),
    opts.operatorSigningKey,
    opts.issuedAt,
  );
  const serviceJwt = signJwt(
    userClaims({
      publicKey: serviceUser.publicKey,
      name: "natsbind-callout",
      account: account.publicKey,
      issuer: signingKey.publicKey,
      scoped: false,
      permissions: {
        sub: { allow: [AUTH_CALLOUT_SUBJECT] },
        // No publish permission: answering a received request is all it may publish.
        responses: { max: 1, ttlMs: CALLOUT_RESPONSE_TTL_MS },
      },
    }),
    signingKey,
    opts.issuedAt,
  );
  const sentinelJwt = signJwt(
    userClaims({
      publicKey: sentinel.publicKey,
      name: "callout-sentinel",
      account: account.publicKey,
      issuer: signingKey.publicKey,
      scoped: false,
      permissions: { pub: { deny: [">"] }, sub: { deny: [">"] }, bearerToken: true },
    }),
    signingKey,
    opts.issuedAt,
  );
  sentinel.clear();
  return {
    account,
    signingKey,
    serviceUser,
    accountJwt,
    serviceCreds: formatCreds(serviceJwt, serviceUser),
    sentinelJwt,
  };
}
