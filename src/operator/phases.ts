/**
 * Operator signing-key rotation, one function per phase, each idempotent and each refusing (with
 * what to do) while the phase before it is not complete on every server:
 *
 *   addSigningKey  offline, with the operator identity key: a new operator JWT listing old + new
 *                  keys, and the new key's seed (0600, never overwritten; an existing one is reused)
 *   (operator)     deploy that JWT to every server and restart them one at a time: nats-server
 *                  reads the trusted operator only at start (a reload refuses the change)
 *   activate       every server trusts the new key -> it becomes nats.operatorSigningKey (the old
 *                  seed kept as <file>.previous; `natsbind run` picks it up, live-keys.ts), then
 *                  every natsbind account still signed by another key of the operator is re-signed
 *                  (same claims, new iss and iat) and pushed
 *   retire         natsbind does not sign with the old key and no server holds an account it signed
 *                  -> an operator JWT without it; then a rolling restart again
 *
 * The new key is installed BEFORE the re-signing so a running natsbind stops signing with the old
 * key as early as possible: while it still did, its drift checks would push the old key's
 * signature back over accounts just re-signed.
 */
import { access, rm } from "node:fs/promises";
import { MAX_OPERATOR_JWT_BYTES, readConfigReferencedFile, type Config } from "../config/config.ts";
import { NatsbindError } from "../errors.ts";
import { signJwt } from "../nats/claims.ts";
import { NKeyPair, parsePublicKey } from "../nats/keys.ts";
import { readRequiredTextFile, writeFileAtomic, writeNewFileAtomic } from "../store/files.ts";
import { readSeedFile } from "../store/key-directory.ts";
import {
  findOperator,
  operatorKeys,
  operatorOn,
  readServerTrust,
  scanAccounts,
  serversNotTrusting,
  type AccountView,
  type RotationResolver,
  type ScanProgress,
  type ServerTrust,
} from "./inventory.ts";
import {
  OperatorJwtError,
  addSigningKey as withNewSigningKey,
  parseOperatorJwt,
  removeSigningKey,
  signOperatorJwt,
  type OperatorJwt,
} from "./operator-jwt.ts";

/** A phase cannot go on yet; the message says what to do. Nothing was changed. */
export class RotationRefusedError extends NatsbindError {}

/** Accounts looked up (and pushed) in flight. */
export const DEFAULT_ROTATION_CONCURRENCY = 64;

/** Where the seed natsbind signed with before the last activate is kept until retire. */
export function previousKeyFile(signingKeyFile: string): string {
  return `${signingKeyFile}.previous`;
}

function seedText(key: NKeyPair): string {
  return `${new TextDecoder().decode(key.getSeed())}\n`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

async function readOperatorJwtFile(path: string, what: string): Promise<OperatorJwt> {
  const text = await readRequiredTextFile(path, MAX_OPERATOR_JWT_BYTES, {
    unreadable: (reason, cause) => new OperatorJwtError(`cannot read ${what} ${path}: ${reason}`, { cause }),
    tooLarge: () => new OperatorJwtError(`${what} ${path} is larger than ${MAX_OPERATOR_JWT_BYTES} bytes`),
  });
  return parseOperatorJwt(text, `${what} ${path}`);
}

function checkIdentity(op: OperatorJwt, identity: NKeyPair, seedFile: string, jwtFile: string): void {
  if (identity.publicKey === op.operator) return;
  const signing = op.signingKeys.includes(identity.publicKey);
  throw new OperatorJwtError(
    signing
      ? `${seedFile} holds ${identity.publicKey}, a signing key of operator ${op.operator}, not its identity key`
      : `${seedFile} holds the key ${identity.publicKey}, but ${jwtFile} is the JWT of operator ${op.operator}: ` +
          "the identity seed and the operator JWT must be the same operator's",
  );
}

const unixSeconds = (now: () => number): number => Math.floor(now() / 1000);

// --- add-signing-key -----------------------------------------------------------------------------

export interface AddSigningKeyOptions {
  operatorSeedFile: string;
  operatorJwtFile: string;
  outJwtFile: string;
  outSeedFile: string;
  now?: () => number;
}

export interface AddSigningKeyResult {
  operator: string;
  /** The new signing key (public). */
  signingKey: string;
  /** The out seed file existed and its key was used. */
  reused: boolean;
  /** The signing keys the new operator JWT lists. */
  signingKeys: string[];
}

export async function addSigningKey(o: AddSigningKeyOptions): Promise<AddSigningKeyResult> {
  const identity = await readSeedFile(o.operatorSeedFile, "operator");
  try {
    const op = await readOperatorJwtFile(o.operatorJwtFile, "operator JWT");
    checkIdentity(op, identity, o.operatorSeedFile, o.operatorJwtFile);
    let key: NKeyPair;
    const reused = await exists(o.outSeedFile);
    if (reused) {
      // Re-running after a crash or to re-write the JWT: the key already made (maybe already
      // deployed) is the one to list, never a second one.
      key = await readSeedFile(o.outSeedFile, "operator").catch((err: unknown) => {
        throw new OperatorJwtError(
          `${o.outSeedFile} exists and is not an operator seed; refusing to overwrite it: ${(err as Error).message}`,
          { cause: err },
        );
      });
      if (key.publicKey === op.operator)
        throw new OperatorJwtError(`${o.outSeedFile} holds the operator identity key, not a signing key`);
    } else {
      key = NKeyPair.generate("operator");
      // Seed first: the JWT below never names a key whose seed is not saved.
      await writeNewFileAtomic(o.outSeedFile, seedText(key), 0o600);
    }
    const claims = withNewSigningKey(op, key.publicKey);
    const jwt = signOperatorJwt(claims, identity, unixSeconds(o.now ?? Date.now));
    await writeFileAtomic(o.outJwtFile, `${jwt}\n`, 0o644);
    const signingKeys = claims.nats.signing_keys as string[];
    key.clear();
    return { operator: op.operator, signingKey: key.publicKey, reused, signingKeys };
  } finally {
    identity.clear();
  }
}

// --- the servers' trust ----------------------------------------------------------------------

function refuseBrokenServers(servers: readonly ServerTrust[]): void {
  if (servers.length === 0) throw new RotationRefusedError("no NATS server answered");
  const broken = servers.filter((s) => s.problem);
  if (broken.length > 0)
    throw new RotationRefusedError(broken.map((s) => `server ${s.server}: ${s.problem}`).join("; "));
}

function notTrustingMessage(servers: readonly string[], key: string, what: string): string {
  return servers.map((s) => `server ${s} does not trust ${key}${what}`).join("; ");
}

// --- activate --------------------------------------------------------------------------------

/**
 * Makes `next` the seed at `file`; the seed there before is kept as <file>.previous. Crash-safe
 * (.previous first, then an atomic replace) and idempotent. Refuses while <file>.previous holds a
 * third key: the rotation before this one was not retired.
 */
export async function installSigningKey(
  file: string,
  next: NKeyPair,
): Promise<{ changed: boolean; previous?: string }> {
  const current = await readSeedFile(file, "operator");
  const prevFile = previousKeyFile(file);
  const previous = (await exists(prevFile)) ? await readSeedFile(prevFile, "operator") : undefined;
  try {
    if (current.publicKey === next.publicKey)
      return { changed: false, ...(previous ? { previous: previous.publicKey } : {}) };
    if (previous && previous.publicKey !== current.publicKey && previous.publicKey !== next.publicKey)
      throw new RotationRefusedError(
        `${prevFile} holds ${previous.publicKey}, the signing key of a rotation not retired yet: retire it ` +
          `first (natsbind operator retire --key ${previous.publicKey} ...) or remove that file`,
      );
    await writeFileAtomic(prevFile, seedText(current), 0o600);
    await writeFileAtomic(file, seedText(next), 0o600);
    return { changed: true, previous: current.publicKey };
  } finally {
    current.clear();
    previous?.clear();
  }
}

export interface ActivateOptions {
  nats: Config["nats"];
  resolver: RotationResolver;
  /** Seed file of the signing key to activate (written by add-signing-key). */
  seedFile: string;
  /** Also re-sign accounts natsbind does not manage (no natsbind tags), e.g. the system account. */
  allAccounts?: boolean;
  concurrency?: number;
  now?: () => number;
  progress?: (p: ScanProgress) => void;
}

export interface ActivateResult {
  operator: string;
  signingKey: string;
  /** The key natsbind signed with before, when this run installed the new one. */
  replaced?: string;
  servers: string[];
  /** Accounts re-signed and pushed (acked by every server). */
  resigned: number;
  /** Accounts every server held signed by the new key already. */
  alreadySigned: number;
  /** Accounts of the operator signed by another key and left as they are (not natsbind's), per issuer. */
  leftAlone: Record<string, number>;
  /** Accounts issued by no key of the operator (left alone). */
  foreign: number;
  /** Accounts a server answered with something unreadable. */
  problems: string[];
}

export async function activate(o: ActivateOptions): Promise<ActivateResult> {
  const next = await readSeedFile(o.seedFile, "operator");
  try {
    return await activateWith(o, next);
  } finally {
    next.clear();
  }
}

async function activateWith(o: ActivateOptions, next: NKeyPair): Promise<ActivateResult> {
  const now = o.now ?? Date.now;
  const current = await readSeedFile(o.nats.operatorSigningKey, "operator");
  const currentKey = current.publicKey;
  current.clear();

  const servers = await readServerTrust(o.resolver);
  refuseBrokenServers(servers);
  const operator = findOperator(servers, [currentKey, next.publicKey]);
  if (!operator)
    throw new RotationRefusedError(
      `no server trusts natsbind's signing key ${currentKey} or the new key ${next.publicKey}: ` +
        "is this the operator the servers run with?",
    );
  if (next.publicKey === operator)
    throw new RotationRefusedError(`${o.seedFile} holds the operator identity key: keep it offline`);
  const untrusting = serversNotTrusting(servers, operator, next.publicKey);
  if (untrusting.length > 0)
    throw new RotationRefusedError(
      notTrustingMessage(untrusting, next.publicKey, ": deploy the new operator JWT and restart it") +
        ` (${servers.length - untrusting.length} of ${servers.length} servers trust it)`,
    );
  if (o.nats.operatorJwt) {
    const mine = await readOperatorJwtFile(o.nats.operatorJwt, "nats.operatorJwt");
    if (mine.operator !== operator)
      throw new RotationRefusedError(
        `nats.operatorJwt ${o.nats.operatorJwt} is operator ${mine.operator}'s; the servers trust ${operator}`,
      );
    if (!mine.signingKeys.includes(next.publicKey))
      throw new RotationRefusedError(
        `nats.operatorJwt ${o.nats.operatorJwt} does not list ${next.publicKey}: write the new operator JWT ` +
          "there first (natsbind accepts only account JWTs its keys issued)",
      );
  }

  const installed = await installSigningKey(o.nats.operatorSigningKey, next);
  const keys = operatorKeys(servers, operator);
  const result: ActivateResult = {
    operator,
    signingKey: next.publicKey,
    ...(installed.changed && installed.previous ? { replaced: installed.previous } : {}),
    servers: servers.map((s) => s.server),
    resigned: 0,
    alreadySigned: 0,
    leftAlone: {},
    foreign: 0,
    problems: [],
  };
  // One pass: the new key is installed already, so a running natsbind has stopped (or is about to
  // stop) signing with the old one and nothing re-signed here is pushed back over. A second pass
  // would cost as much as this one (every lookup is answered by every server); status, a re-run
  // and retire (which checks every server's copy) show anything left.
  await scanAccounts(o.resolver, keys, {
    concurrency: o.concurrency ?? DEFAULT_ROTATION_CONCURRENCY,
    ...(o.progress ? { progress: o.progress } : {}),
    each: async (view) => {
      if (view.problem) result.problems.push(`${view.account}: ${view.problem}`);
      const newest = view.newest;
      if (!newest) return;
      if (!keys.has(newest.claims.iss)) {
        result.foreign++;
        return;
      }
      // Every server must hold it signed by the new key: one lagging copy is re-signed too.
      if (view.issuers.length === view.servers && view.issuers.every((k) => k === next.publicKey)) {
        result.alreadySigned++;
        return;
      }
      if (!view.natsbind && !o.allAccounts) {
        const by = newest.claims.iss;
        result.leftAlone[by] = (result.leftAlone[by] ?? 0) + 1;
        return;
      }
      await o.resolver.push(resign(view, next, now));
      result.resigned++;
    },
  });
  return result;
}

/**
 * The newest copy's claims signed by `key`: same claims, new iss, an iat newer than every copy's
 * (the servers' resolver sync keeps the copy with the newest iat).
 */
function resign(view: AccountView, key: NKeyPair, now: () => number): string {
  const { iat: _iat, jti: _jti, ...claims } = view.newest!.claims;
  const iat = Math.max(unixSeconds(now), view.newest!.iat + 1);
  return signJwt({ ...claims, iss: key.publicKey }, key, iat);
}

// --- retire ----------------------------------------------------------------------------------

export interface RetireOptions {
  nats: Config["nats"];
  resolver: RotationResolver;
  /** The signing key to retire (public). */
  key: string;
  operatorSeedFile: string;
  operatorJwtFile: string;
  outJwtFile: string;
  concurrency?: number;
  now?: () => number;
  progress?: (p: ScanProgress) => void;
}

export interface RetireResult {
  operator: string;
  retired: string;
  signingKeys: string[];
  servers: string[];
  accountsChecked: number;
  /** <nats.operatorSigningKey>.previous held the retired key and was removed. */
  removedPrevious: boolean;
}

export async function retire(o: RetireOptions): Promise<RetireResult> {
  parsePublicKey(o.key, "operator", "--key");
  const identity = await readSeedFile(o.operatorSeedFile, "operator");
  try {
    const op = await readOperatorJwtFile(o.operatorJwtFile, "operator JWT");
    checkIdentity(op, identity, o.operatorSeedFile, o.operatorJwtFile);
    const claims = removeSigningKey(op, o.key);
    const remaining = claims.nats.signing_keys as string[];

    const current = await readSeedFile(o.nats.operatorSigningKey, "operator");
    const currentKey = current.publicKey;
    current.clear();
    if (currentKey === o.key)
      throw new RotationRefusedError(
        `natsbind still signs with ${o.key} (nats.operatorSigningKey ${o.nats.operatorSigningKey}): ` +
          "activate another signing key first (natsbind operator activate --seed NEW)",
      );
    if (!remaining.includes(currentKey))
      throw new RotationRefusedError(
        `natsbind signs with ${currentKey}, which ${o.operatorJwtFile} does not list: the operator JWT ` +
          "without the old key would leave natsbind's key untrusted",
      );

    const servers = await readServerTrust(o.resolver);
    refuseBrokenServers(servers);
    const foreign = servers.filter((s) => !operatorOn(s, op.operator));
    if (foreign.length > 0)
      throw new RotationRefusedError(
        foreign
          .map((s) => `server ${s.server} does not trust operator ${op.operator} (${o.operatorJwtFile})`)
          .join("; ") + ": is this the operator JWT the servers run with?",
      );
    const untrusting = serversNotTrusting(servers, op.operator, currentKey);
    if (untrusting.length > 0)
      throw new RotationRefusedError(
        notTrustingMessage(
          untrusting,
          currentKey,
          " (natsbind's signing key): deploy the operator JWT and restart it",
        ),
      );

    // Every copy on every server: one server still holding an old copy keeps the key needed.
    const still: Array<{ account: string; copies: number; of: number }> = [];
    const accountsChecked = await scanAccounts(o.resolver, operatorKeys(servers, op.operator), {
      concurrency: o.concurrency ?? DEFAULT_ROTATION_CONCURRENCY,
      ...(o.progress ? { progress: o.progress } : {}),
      each: (view) => {
        const copies = view.issuers.filter((k) => k === o.key).length;
        if (copies > 0) still.push({ account: view.account, copies, of: view.servers });
      },
    });
    if (still.length > 0) {
      still.sort((a, b) => (a.account < b.account ? -1 : 1));
      const shown = still
        .slice(0, 5)
        .map((s) => `${s.account} on ${s.copies} of ${s.of} servers`)
        .join(", ");
      throw new RotationRefusedError(
        `${still.length} account(s) are still signed by ${o.key} (${shown}${still.length > 5 ? ", ..." : ""}): ` +
          "run natsbind operator activate --seed <the active key's seed> again (add --all-accounts for " +
          "accounts natsbind does not manage, such as the system account), or re-sign them with nsc",
      );
    }

    const jwt = signOperatorJwt(claims, identity, unixSeconds(o.now ?? Date.now));
    await writeFileAtomic(o.outJwtFile, `${jwt}\n`, 0o644);
    let removedPrevious = false;
    const prevFile = previousKeyFile(o.nats.operatorSigningKey);
    if (await exists(prevFile)) {
      const previous = await readSeedFile(prevFile, "operator").catch(() => undefined);
      if (previous?.publicKey === o.key) {
        await rm(prevFile, { force: true });
        removedPrevious = true;
      }
      previous?.clear();
    }
    return {
      operator: op.operator,
      retired: o.key,
      signingKeys: remaining,
      servers: servers.map((s) => s.server),
      accountsChecked,
      removedPrevious,
    };
  } finally {
    identity.clear();
  }
}

// --- status ----------------------------------------------------------------------------------

export interface SigningKeyStatus {
  key: string;
  /** Servers listing it among the operator's signing keys. */
  trustedBy: string[];
  /** Accounts at least one server holds signed by it. */
  accounts: number;
  /** Of those, natsbind's (its tags). */
  natsbindAccounts: number;
  /** nats.operatorSigningKey holds this key. */
  natsbindSigns: boolean;
  /** <nats.operatorSigningKey>.previous holds this key (the one activate replaced). */
  previous: boolean;
}

export interface OperatorStatus {
  operator?: string;
  /** The operator's system account, as the servers' operator JWT names it. */
  systemAccount?: string;
  natsbindKey: string;
  /** nats.operatorSigningKey: the seed file natsbind signs with. */
  signingKeyFile: string;
  /** nats.operatorJwt, when configured. */
  operatorJwtFile?: string;
  previousKey?: string;
  /** Signing keys nats.operatorJwt lists, when configured. */
  operatorJwtKeys?: string[];
  servers: ServerTrust[];
  keys: SigningKeyStatus[];
  /** Issuers of accounts that are not keys of the operator. */
  otherIssuers: Array<{ key: string; accounts: number }>;
  accounts: number;
  /** Accounts whose copies on the servers are signed by different keys. */
  mixed: number;
  problems: string[];
  /** What to do next, derived from the above. */
  next: string[];
}

export async function operatorStatus(o: {
  nats: Config["nats"];
  resolver: RotationResolver;
  concurrency?: number;
  progress?: (p: ScanProgress) => void;
}): Promise<OperatorStatus> {
  const current = await readSeedFile(o.nats.operatorSigningKey, "operator");
  const natsbindKey = current.publicKey;
  current.clear();
  const prevFile = previousKeyFile(o.nats.operatorSigningKey);
  let previousKey: string | undefined;
  if (await exists(prevFile)) {
    const previous = await readSeedFile(prevFile, "operator");
    previousKey = previous.publicKey;
    previous.clear();
  }
  const operatorJwtKeys = o.nats.operatorJwt
    ? parseOperatorJwt(
        await readConfigReferencedFile(o.nats.operatorJwt, "nats.operatorJwt", MAX_OPERATOR_JWT_BYTES),
        `nats.operatorJwt ${o.nats.operatorJwt}`,
      ).signingKeys
    : undefined;

  const servers = await readServerTrust(o.resolver);
  const operator = findOperator(servers, [natsbindKey, ...(previousKey ? [previousKey] : [])]);
  const keys = operator ? operatorKeys(servers, operator) : new Set<string>([natsbindKey]);
  const counts = new Map<string, { accounts: number; natsbind: number }>();
  let mixed = 0;
  const problems: string[] = [];
  const total = await scanAccounts(o.resolver, keys, {
    concurrency: o.concurrency ?? DEFAULT_ROTATION_CONCURRENCY,
    ...(o.progress ? { progress: o.progress } : {}),
    each: (view) => {
      if (view.problem) problems.push(`${view.account}: ${view.problem}`);
      const issuers = new Set(view.issuers);
      if (issuers.size > 1) mixed++;
      for (const k of issuers) {
        const c = counts.get(k) ?? { accounts: 0, natsbind: 0 };
        c.accounts++;
        if (view.natsbind) c.natsbind++;
        counts.set(k, c);
      }
    },
  });
  const listed = new Set<string>([
    ...[...keys].filter((k) => k !== operator),
    natsbindKey,
    ...(previousKey ? [previousKey] : []),
  ]);
  const keyStatus = [...listed].sort().map((key): SigningKeyStatus => ({
    key,
    trustedBy: operator
      ? servers.filter((s) => operatorOn(s, operator)?.signingKeys.includes(key)).map((s) => s.server)
      : [],
    accounts: counts.get(key)?.accounts ?? 0,
    natsbindAccounts: counts.get(key)?.natsbind ?? 0,
    natsbindSigns: key === natsbindKey,
    previous: key === previousKey,
  }));
  const otherIssuers = [...counts]
    .filter(([k]) => !listed.has(k))
    .map(([key, c]) => ({ key, accounts: c.accounts }))
    .sort((a, b) => (a.key < b.key ? -1 : 1));
  const systemAccount = operator
    ? servers.map((s) => operatorOn(s, operator)?.systemAccount).find((a) => a !== undefined)
    : undefined;
  const status: OperatorStatus = {
    ...(operator ? { operator } : {}),
    ...(systemAccount ? { systemAccount } : {}),
    natsbindKey,
    signingKeyFile: o.nats.operatorSigningKey,
    ...(o.nats.operatorJwt ? { operatorJwtFile: o.nats.operatorJwt } : {}),
    ...(previousKey ? { previousKey } : {}),
    ...(operatorJwtKeys ? { operatorJwtKeys } : {}),
    servers,
    keys: keyStatus,
    otherIssuers,
    accounts: total,
    mixed,
    problems,
    next: [],
  };
  status.next = nextSteps(status);
  return status;
}

/** PURE: what the operator should do next, from a status. */
export function nextSteps(s: Omit<OperatorStatus, "next">): string[] {
  const out: string[] = [];
  const all = s.servers.map((x) => x.server);
  for (const server of s.servers.filter((x) => x.problem))
    out.push(`server ${server.server}: ${server.problem}`);
  if (!s.operator) {
    out.push(`no server trusts natsbind's signing key ${s.natsbindKey}`);
    return out;
  }
  for (const k of s.keys) {
    const missing = all.filter((x) => !k.trustedBy.includes(x));
    if (k.trustedBy.length > 0 && missing.length > 0)
      out.push(
        `servers disagree on ${k.key} (not trusted by ${missing.join(", ")}): finish the rolling restart`,
      );
  }
  const mine = s.keys.find((k) => k.natsbindSigns)!;
  if (mine.trustedBy.length < all.length)
    out.push(
      `natsbind signs with ${mine.key}, which not every server trusts: deploy the operator JWT listing it`,
    );
  if (s.operatorJwtKeys && !s.operatorJwtKeys.includes(mine.key))
    out.push(`nats.operatorJwt does not list natsbind's signing key ${mine.key}: update it`);
  for (const k of s.keys.filter((x) => !x.natsbindSigns && x.trustedBy.length === all.length)) {
    if (s.operatorJwtKeys && !s.operatorJwtKeys.includes(k.key) && k.accounts === 0)
      out.push(
        `servers still trust ${k.key}, which nats.operatorJwt no longer lists (retired): deploy that ` +
          "operator JWT to every server and restart them one at a time",
      );
    else if (k.accounts > 0)
      out.push(
        `${k.key} still signs ${k.accounts} account(s) (${k.natsbindAccounts} natsbind's): ` +
          (k.previous
            ? "run natsbind operator activate again (--all-accounts for the others) before retiring it"
            : "activate another key and re-sign them before retiring it"),
      );
    else if (k.previous)
      out.push(`${k.key} signs no account any more: retire it (natsbind operator retire --key ${k.key} ...)`);
    else
      out.push(
        `${k.key} is trusted everywhere and signs no account: activate it (natsbind operator activate ` +
          `--seed ...) or retire it`,
      );
  }
  if (s.mixed > 0) out.push(`${s.mixed} account(s) are signed by different keys on different servers`);
  if (out.length === 0)
    out.push("nothing to do: every server trusts natsbind's key and only it signs accounts");
  return out;
}
