/**
 * What an operator signing-key rotation has to know, read from the servers themselves: which
 * operator signing keys each server trusts (its VARZ: the operator JWT it read at start), and for
 * each account on the resolver who signed the copy each server holds. The views are PURE functions
 * of those replies; the reads go through the resolver's system-account connection.
 */
import { describeError } from "../errors.ts";
import { heldOwnerOfClaims } from "../controllers/binding/ownership.ts";
import { readJwt, type JwtClaims } from "../nats/claims.ts";
import type { ResolverOutcome, ServerOperators } from "../nats/resolver.ts";
import { mapLimit } from "../runtime/concurrency.ts";
import { parseOperatorJwt } from "./operator-jwt.ts";

/** The resolver calls a rotation makes (NatsResolver has them). */
export interface RotationResolver {
  list(): Promise<string[]>;
  lookupOnEveryServer(account: string): Promise<Array<string | undefined>>;
  trustedOperators(): Promise<ServerOperators[]>;
  push(jwt: string): Promise<ResolverOutcome>;
}

export interface TrustedOperatorView {
  operator: string;
  name: string;
  signingKeys: string[];
  strict: boolean;
  systemAccount?: string;
}

/** One server and the operators it trusts (`problem` when its operator JWT did not decode). */
export interface ServerTrust {
  server: string;
  operators: TrustedOperatorView[];
  problem?: string;
}

/** Decodes what each server reported; a JWT that does not verify is reported, not trusted. */
export function serverTrust(replies: readonly ServerOperators[]): ServerTrust[] {
  return replies.map(({ server, operatorJwts }) => {
    const operators: TrustedOperatorView[] = [];
    let problem: string | undefined;
    for (const jwt of operatorJwts) {
      try {
        const op = parseOperatorJwt(jwt, `operator JWT of server ${server}`);
        operators.push({
          operator: op.operator,
          name: op.name,
          signingKeys: op.signingKeys,
          strict: op.strict,
          ...(op.systemAccount ? { systemAccount: op.systemAccount } : {}),
        });
      } catch (err) {
        problem = describeError(err);
      }
    }
    return { server, operators, ...(problem ? { problem } : {}) };
  });
}

export async function readServerTrust(
  resolver: Pick<RotationResolver, "trustedOperators">,
): Promise<ServerTrust[]> {
  return serverTrust(await resolver.trustedOperators());
}

/**
 * The operator natsbind works for: the one whose signing keys (on some server) include one of
 * `keys` (natsbind's current signing key first). Undefined when no server trusts any of them.
 */
export function findOperator(servers: readonly ServerTrust[], keys: readonly string[]): string | undefined {
  for (const key of keys)
    for (const s of servers)
      for (const op of s.operators) if (op.signingKeys.includes(key)) return op.operator;
  return undefined;
}

/** That operator as `server` sees it, or undefined when the server does not trust it. */
export function operatorOn(server: ServerTrust, operator: string): TrustedOperatorView | undefined {
  return server.operators.find((o) => o.operator === operator);
}

/** Servers that do not list `key` among `operator`'s signing keys. */
export function serversNotTrusting(servers: readonly ServerTrust[], operator: string, key: string): string[] {
  return servers.filter((s) => !operatorOn(s, operator)?.signingKeys.includes(key)).map((s) => s.server);
}

/** Every key of `operator` any server lists (identity key included), for ownership checks. */
export function operatorKeys(servers: readonly ServerTrust[], operator: string): Set<string> {
  const keys = new Set<string>([operator]);
  for (const s of servers) for (const k of operatorOn(s, operator)?.signingKeys ?? []) keys.add(k);
  return keys;
}

/** One account as the servers hold it. */
export interface AccountView {
  account: string;
  /** Servers asked (one copy or none each). */
  servers: number;
  /** Issuer of each copy held (absent copies left out), in server reply order. */
  issuers: string[];
  /** The copy with the newest iat: what the servers converge to. */
  newest?: { claims: JwtClaims; iat: number };
  /** The newest copy is natsbind's: issued by a key of the operator and tagged as natsbind tags. */
  natsbind: boolean;
  /** A copy that did not parse or is not this account's. */
  problem?: string;
}

/** PURE: the view of one account from the copies every server returned. */
export function viewAccount(
  account: string,
  copies: ReadonlyArray<string | undefined>,
  keys: ReadonlySet<string>,
): AccountView {
  const view: AccountView = { account, servers: copies.length, issuers: [], natsbind: false };
  for (const jwt of copies) {
    if (jwt === undefined) continue;
    let claims: JwtClaims;
    try {
      claims = readJwt(jwt, `account JWT of ${account}`).claims;
    } catch (err) {
      view.problem = describeError(err);
      continue;
    }
    if (claims.sub !== account || claims.nats.type !== "account") {
      view.problem = `a server answered the lookup of ${account} with a JWT that is not this account's`;
      continue;
    }
    view.issuers.push(claims.iss);
    const iat = typeof claims.iat === "number" && Number.isSafeInteger(claims.iat) ? claims.iat : 0;
    if (!view.newest || iat > view.newest.iat) view.newest = { claims, iat };
  }
  if (view.newest) view.natsbind = "owner" in heldOwnerOfClaims(view.newest.claims, account, keys);
  return view;
}

export interface ScanProgress {
  done: number;
  total: number;
}

/**
 * Looks every account of the resolver up on every server (mapLimit: `concurrency` in flight) and
 * hands each view to `each`, which may push; rejects with the first failure.
 */
export async function scanAccounts(
  resolver: Pick<RotationResolver, "list" | "lookupOnEveryServer">,
  keys: ReadonlySet<string>,
  opts: {
    concurrency: number;
    each: (view: AccountView) => Promise<void> | void;
    progress?: (p: ScanProgress) => void;
  },
): Promise<number> {
  const accounts = await resolver.list();
  let done = 0;
  opts.progress?.({ done, total: accounts.length });
  await mapLimit(accounts, opts.concurrency, async (account) => {
    const copies = await resolver.lookupOnEveryServer(account);
    await opts.each(viewAccount(account, copies, keys));
    opts.progress?.({ done: ++done, total: accounts.length });
  });
  return accounts.length;
}

/**
 * Throws unless every server trusts `key` as a signing key of the operator that lists `current`
 * (natsbind's signing key now): what a running natsbind checks before it signs with a new key.
 */
export async function assertEveryServerTrusts(
  resolver: Pick<RotationResolver, "trustedOperators">,
  current: string,
  key: string,
): Promise<void> {
  const servers = await readServerTrust(resolver);
  const broken = servers.find((s) => s.problem);
  if (broken) throw new Error(`server ${broken.server}: ${broken.problem}`);
  const operator = findOperator(servers, [current, key]);
  if (!operator) throw new Error(`no server trusts ${current} or ${key}`);
  const untrusting = serversNotTrusting(servers, operator, key);
  if (untrusting.length > 0)
    throw new Error(
      `server(s) ${untrusting.join(", ")} do not trust ${key} yet: restart them with the new operator JWT`,
    );
}
