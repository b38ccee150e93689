/**
 * The NATS creds file format (user JWT + user seed). A creds string is a secret: it goes to files
 * with mode 0600 or straight to a connection, never to logs.
 */
import { TerminalError } from "../errors.ts";
import { NKeyPair } from "./keys.ts";

export class CredsError extends TerminalError {}

export const MAX_CREDS_BYTES = 64 * 1024;

export function formatCreds(userJwt: string, user: NKeyPair): string {
  if (user.kind !== "user")
    throw new CredsError(`creds need a user key, got ${user.kind} key ${user.publicKey}`);
  const seed = new TextDecoder().decode(user.getSeed());
  return `-----BEGIN NATS USER JWT-----
${userJwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
${seed}
------END USER NKEY SEED------

*************************************************************
`;
}

/** Splits a creds file into its JWT and user key; errors name `what`, never the content. */
export function parseCreds(text: string, what = "creds"): { jwt: string; user: NKeyPair } {
  if (text.length > MAX_CREDS_BYTES) throw new CredsError(`${what} is larger than ${MAX_CREDS_BYTES} bytes`);
  const block = (label: string): string | undefined =>
    new RegExp(`-{3,}BEGIN ${label}-{3,}\\s*\\n\\s*(\\S+)\\s*\\n\\s*-{3,}END ${label}-{3,}`).exec(text)?.[1];
  const jwt = block("NATS USER JWT");
  const seed = block("USER NKEY SEED");
  if (!jwt || !seed)
    throw new CredsError(`${what} is not a NATS creds file (missing user JWT or seed block)`);
  return { jwt, user: NKeyPair.fromSeed(seed, "user", `${what} seed`) };
}
