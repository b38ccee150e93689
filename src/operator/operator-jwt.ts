/**
 * Editing the operator JWT: add or remove one operator signing key, keep every other claim exactly
 * as it was (strict_signing_key_usage, system_account, account_server_url, service URLs, tags and
 * fields natsbind does not know), and sign it again with the operator identity key. PURE but for
 * the signature; the identity key is checked against the JWT's subject before anything is signed.
 */
import type { KeyPair } from "@nats-io/nkeys";
import { TerminalError } from "../errors.ts";
import { decodeJwt, signJwt, type JwtClaims } from "../nats/claims.ts";
import { isPublicKey } from "../nats/keys.ts";

/** An operator JWT or identity key that does not fit: nothing is written. */
export class OperatorJwtError extends TerminalError {}

/** nats-server keeps signing keys in a list; more than this is not an operator anyone runs. */
export const MAX_OPERATOR_SIGNING_KEYS = 64;

export interface OperatorJwt {
  /** The JWT as read (trimmed). */
  jwt: string;
  claims: JwtClaims;
  /** The operator identity public key (sub == iss). */
  operator: string;
  name: string;
  /** nats.signing_keys, in JWT order. */
  signingKeys: string[];
  /** nats.strict_signing_key_usage: only signing keys may issue accounts. */
  strict: boolean;
  /** nats.system_account, when set. */
  systemAccount?: string;
}

/**
 * Decodes and verifies an operator JWT: signature, type operator, self-signed, signing keys that
 * are operator public keys. `what` names the input in errors (a file path, a server).
 */
export function parseOperatorJwt(text: string, what = "operator JWT"): OperatorJwt {
  const jwt = typeof text === "string" ? text.trim() : "";
  let claims: JwtClaims;
  try {
    claims = decodeJwt(jwt, what);
  } catch (err) {
    throw new OperatorJwtError((err as Error).message, { cause: err });
  }
  if (claims.nats.type !== "operator")
    throw new OperatorJwtError(`${what} is a ${String(claims.nats.type)} JWT, not an operator JWT`);
  if (!isPublicKey(claims.sub, "operator") || claims.iss !== claims.sub)
    throw new OperatorJwtError(`${what} is not self-signed by an operator identity key`);
  const raw = claims.nats.signing_keys ?? [];
  if (!Array.isArray(raw) || raw.length > MAX_OPERATOR_SIGNING_KEYS)
    throw new OperatorJwtError(
      `${what}: nats.signing_keys is not a list of at most ${MAX_OPERATOR_SIGNING_KEYS} keys`,
    );
  raw.forEach((k, i) => {
    if (typeof k !== "string" || !isPublicKey(k, "operator"))
      throw new OperatorJwtError(`${what}: nats.signing_keys[${i}] is not an operator public key`);
  });
  return {
    jwt,
    claims,
    operator: claims.sub,
    name: typeof claims.name === "string" ? claims.name : "",
    signingKeys: [...(raw as string[])],
    strict: claims.nats.strict_signing_key_usage === true,
    ...(typeof claims.nats.system_account === "string" ? { systemAccount: claims.nats.system_account } : {}),
  };
}

/** The claims with nats.signing_keys replaced; iat and jti dropped (signing sets them). */
function withKeys(claims: JwtClaims, keys: string[]): JwtClaims {
  const { iat: _iat, jti: _jti, ...rest } = claims;
  return { ...rest, nats: { ...claims.nats, signing_keys: keys } };
}

/** The operator's claims listing `key` too (after the others); unchanged list if it is there. */
export function addSigningKey(op: OperatorJwt, key: string): JwtClaims {
  if (!isPublicKey(key, "operator"))
    throw new OperatorJwtError("the new signing key is not an operator public key");
  if (key === op.operator)
    throw new OperatorJwtError("the new signing key is the operator identity key itself");
  if (op.signingKeys.includes(key)) return withKeys(op.claims, [...op.signingKeys]);
  if (op.signingKeys.length >= MAX_OPERATOR_SIGNING_KEYS)
    throw new OperatorJwtError(`the operator lists ${MAX_OPERATOR_SIGNING_KEYS} signing keys already`);
  return withKeys(op.claims, [...op.signingKeys, key]);
}

/** The operator's claims without `key`; refuses a key it does not list and removing the last one. */
export function removeSigningKey(op: OperatorJwt, key: string): JwtClaims {
  if (!op.signingKeys.includes(key))
    throw new OperatorJwtError(`operator ${op.operator} does not list signing key ${key}: nothing to retire`);
  const rest = op.signingKeys.filter((k) => k !== key);
  if (rest.length === 0)
    throw new OperatorJwtError(
      `${key} is the operator's only signing key: add and activate another one before retiring it`,
    );
  return withKeys(op.claims, rest);
}

/**
 * Signs operator claims with the identity key. The key must be the JWT's subject: a signing key or
 * another operator's identity key is refused with which key it is (a public key, never the seed).
 */
export function signOperatorJwt(claims: JwtClaims, identity: KeyPair, issuedAt: number): string {
  const given = identity.getPublicKey();
  if (given !== claims.sub) {
    const signing = Array.isArray(claims.nats.signing_keys) && claims.nats.signing_keys.includes(given);
    throw new OperatorJwtError(
      `the operator seed is the key ${given}, not the identity key of operator ${claims.sub}` +
        (signing ? " (it is one of its signing keys)" : ""),
    );
  }
  return signJwt({ ...claims, iss: given }, identity, issuedAt);
}
