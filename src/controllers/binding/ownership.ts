/**
 * Whose account the resolver holds. PURE. natsbind re-signs, pushes over or deletes an account only
 * when the resolver has none for that public key, or when the JWT it holds is natsbind's own for
 * the same slot: issued by a key natsbind trusts (the servers verified its signature), and tagged with the slot's binding,
 * project and environment exactly as plan.ts tags the accounts it builds. Anything else (an account
 * an admin made with nsc, one of another binding or project) is refused, whatever a key store
 * slot claims: slots are writable by tenants (Kubernetes Secrets), the resolver's JWTs are not.
 */
import { safeToken } from "../../api/v1alpha1/templates.ts";
import { describeError } from "../../errors.ts";
import type { AccountRef } from "../../keystore/port.ts";
import { readJwt, type JwtClaims } from "../../nats/claims.ts";

const TAG_BINDING = "natsbind-binding:";
const TAG_PROJECT = "gitlab-project-id:";
const TAG_ENVIRONMENT = "environment:";

/** The owner tags plan.ts writes for a slot, as one comparable string. */
export function ownerKey(bindingKey: string, ref: AccountRef): string {
  const env = ref.environment !== undefined ? safeToken(ref.environment) : "";
  return `${safeToken(bindingKey)}\u0000${ref.projectId}\u0000${env}`;
}

/**
 * What a JWT held by the resolver says about its owner: `owner` (an ownerKey) when it is a
 * natsbind account JWT of `account` issued by a trusted key, else `problem` (why it is not).
 * The signature is not verified again: every full-resolver server verified it against its issuer
 * before storing the JWT (the same split as push(): the client checks the issuer, the servers the
 * signature), and verifying 10,000 JWTs costs ~1.5 s of every drift check. The issuer is checked.
 */
export type HeldOwner = { owner: string } | { problem: string };

export function heldOwner(jwt: string, account: string, issuers: ReadonlySet<string>): HeldOwner {
  let claims;
  try {
    claims = readJwt(jwt, `account JWT of ${account} on the resolver`).claims;
  } catch (err) {
    return { problem: describeError(err) };
  }
  return heldOwnerOfClaims(claims, account, issuers);
}

/** heldOwner() of claims already read (the drift check reads each JWT once for hash and owner). */
export function heldOwnerOfClaims(
  claims: JwtClaims,
  account: string,
  issuers: ReadonlySet<string>,
): HeldOwner {
  if (claims.sub !== account || claims.nats.type !== "account")
    return { problem: "the resolver answered with a JWT that is not this account's" };
  if (!issuers.has(claims.iss))
    return { problem: `it was issued by ${claims.iss}, not by natsbind's operator signing key` };
  const tags = Array.isArray(claims.nats.tags)
    ? claims.nats.tags.filter((t): t is string => typeof t === "string").map((t) => t.toLowerCase())
    : [];
  const one = (prefix: string): string | undefined | null => {
    const values = tags.filter((t) => t.startsWith(prefix)).map((t) => t.slice(prefix.length));
    return values.length === 0 ? undefined : values.length === 1 ? values[0] : null;
  };
  const binding = one(TAG_BINDING);
  const project = one(TAG_PROJECT);
  const environment = one(TAG_ENVIRONMENT);
  if (!binding || !project || !/^[1-9][0-9]{0,15}$/.test(project) || environment === null)
    return { problem: "its tags do not name one natsbind binding and one GitLab project" };
  return { owner: `${binding}\u0000${project}\u0000${environment ?? ""}` };
}

/** Undefined when `held` is the slot's own account, else why natsbind must leave it alone. */
export function notOwnedProblem(
  account: string,
  bindingKey: string,
  ref: AccountRef,
  held: HeldOwner,
): string | undefined {
  if ("owner" in held && held.owner === ownerKey(bindingKey, ref)) return undefined;
  const env = ref.environment !== undefined ? `, environment ${JSON.stringify(ref.environment)}` : "";
  const why = "problem" in held ? held.problem : "it belongs to another binding, project or environment";
  return (
    `account ${account} on the NATS resolver is not natsbind's account for binding ${bindingKey}, ` +
    `project ${ref.projectId}${env} (${why}): natsbind leaves it unchanged`
  );
}
