/**
 * `natsbind credentials revoke --config F --binding B --project ID [--environment E]
 *    (--user UKEY [--user UKEY...] | --job ID | --pipeline ID | --all) [--timeout 2m]`
 *
 * Revokes users of a project's account(s): entries {user public key or "*": now (unix seconds)} in
 * the account JWT's `revocations`. nats-server closes connected users the entries name as soon as
 * the JWT arrives and refuses user JWTs issued at or before that second from then on. The entries
 * are desired state in the key slot (src/rotation/revocations.ts): every later push carries them
 * until they are pruned, once everything natsbind issued before them has expired.
 *
 * NATS revokes by user key only, so --job and --pipeline find the keys: users natsbind issued to
 * that job or pipeline of the project (the audit file, credentials.audit.file) and live
 * connections of the account tagged job:<id> / pipeline:<id> (CONNZ of every server).
 *
 * Local mode: the request goes to the binding's request file and natsbind run (or this command,
 * when none runs) applies it (slot-requests.ts). Kubernetes mode: the entries are written straight
 * into the account's Secret (SecretKeyStore.update: the apiserver's resourceVersion serialises the
 * writers); the leader sees the Secret change and pushes. Either way the command returns when the
 * account JWT on the resolver carries the entries (pushed and acked), and writes one audit line per
 * revoked key and account, through the audit sink natsbind uses (the file, or standard output: the
 * command's own messages go to standard error).
 */
import { parseArgs } from "node:util";
import type { Config } from "../config/config.ts";
import { findIssuedUsers, AuditSearchError } from "../credentials/audit-search.ts";
import { openAuditSink, type OpenedAuditSink } from "../credentials/audit.ts";
import type { RevocationAuditEvent } from "../credentials/types.ts";
import { describeError, NatsbindError } from "../errors.ts";
import { DirectoryKeyStore } from "../keystore/directory.ts";
import type { AccountRef, StoredAccount } from "../keystore/port.ts";
import { decodeJwt, MAX_REVOCATIONS, REVOKE_ALL } from "../nats/claims.ts";
import { connectResolver } from "../nats/from-config.ts";
import { parsePublicKey } from "../nats/keys.ts";
import type { NatsResolver } from "../nats/resolver.ts";
import { createLogger, redactSecrets } from "../observability/logger.ts";
import { revocationRetentionMs } from "../main.ts";
import { RequestFiles } from "../rotation/request-files.ts";
import { carries, prunableAt, type RevocationRequest } from "../rotation/revocations.ts";
import { systemClock } from "../runtime/clock.ts";
import { parseDuration } from "../units.ts";
import { applyRequest, localBinding, managedSlots } from "./slot-requests.ts";
import { UsageError } from "./usage.ts";

/** The revocation cannot be made as asked (too many entries); nothing was changed. */
export class RevocationRefusedError extends NatsbindError {}

export const COMMAND = "credentials revoke";
const ID = /^[1-9][0-9]{0,15}$/;
/** Keys listed on the terminal (the audit lines have every one). */
const SHOWN_KEYS = 20;
/** Slots named in an error. */
const SHOWN_SLOTS = 20;

export type RevokeSelector =
  | { kind: "users"; keys: string[] }
  | { kind: "all" }
  | { kind: "job"; id: number }
  | { kind: "pipeline"; id: number };

export interface RevokeArgs {
  configPath: string;
  binding: string;
  projectId: number;
  environment?: string;
  selector: RevokeSelector;
  timeoutMs: number;
}

/**
 * What `--user #n` is, when it is not a user public key: never the value itself (it may be a
 * seed pasted by mistake, or part of one).
 */
function describeNotUserKey(value: string, n: number): string {
  const where = `--user #${n}`;
  // Seeds are "S" + the kind's letter + 56 more characters: a private key, never shown or used.
  if (/^S[OAUNC]/.test(value))
    return (
      `${where} looks like a seed (a private key), not a public key: it was not used and is not shown; ` +
      "give the user's public key (U..., 56 characters), and treat that seed as leaked"
    );
  if (value.length === 0) return `${where} is empty`;
  try {
    const { kind } = parsePublicKey(value);
    return `${where} is ${kind === "account" || kind === "operator" ? "an" : "a"} ${kind} public key, not a user's (U...)`;
  } catch {
    // not a public key of any kind
  }
  if (value.length !== 56 || !value.startsWith("U") || !/^[A-Z2-7]+$/.test(value))
    return `${where} is not a user public key: expected 56 characters of A-Z and 2-7 starting with U, got ${value.length} character(s)`;
  return `${where} is not a valid user public key: its checksum does not match (a typo?)`;
}

/** The --user values as user public keys, deduplicated; UsageError naming the first bad one. */
export function parseUserKeys(values: readonly string[]): string[] {
  if (values.length > MAX_REVOCATIONS)
    throw new UsageError(
      `${COMMAND}: ${values.length} --user keys: an account carries at most ${MAX_REVOCATIONS} revocations`,
    );
  const keys = new Set<string>();
  values.forEach((value, i) => {
    let ok: boolean;
    try {
      ok = parsePublicKey(value).kind === "user";
    } catch {
      ok = false;
    }
    if (!ok) throw new UsageError(`${COMMAND}: ${describeNotUserKey(value, i + 1)}`);
    keys.add(value);
  });
  return [...keys];
}

/** The command line, checked; UsageError naming what is wrong. Never echoes a --user value. */
export function parseRevokeArgs(args: string[]): RevokeArgs {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        config: { type: "string", default: "natsbind.yaml" },
        binding: { type: "string" },
        project: { type: "string" },
        environment: { type: "string" },
        user: { type: "string", multiple: true },
        job: { type: "string" },
        pipeline: { type: "string" },
        all: { type: "boolean", default: false },
        timeout: { type: "string", default: "2m" },
      },
    }));
  } catch (err) {
    // parseArgs quotes what it did not expect: a seed given as a bare argument must not be echoed.
    throw new UsageError(`${COMMAND}: ${redactSecrets(describeError(err), 300)}`);
  }
  if (!values.binding) throw new UsageError(`${COMMAND}: --binding NAME is required`);
  if (values.project === undefined) throw new UsageError(`${COMMAND}: --project ID is required`);
  if (!ID.test(values.project))
    throw new UsageError(
      `${COMMAND}: --project ${JSON.stringify(redactSecrets(values.project, 40))} is not a project id`,
    );
  if (
    values.environment !== undefined &&
    (values.environment.length === 0 || values.environment.length > 255)
  )
    throw new UsageError(`${COMMAND}: --environment must be 1 to 255 characters`);
  const chosen = [
    values.user !== undefined ? "--user" : undefined,
    values.job !== undefined ? "--job" : undefined,
    values.pipeline !== undefined ? "--pipeline" : undefined,
    values.all ? "--all" : undefined,
  ].filter((c) => c !== undefined);
  if (chosen.length !== 1)
    throw new UsageError(
      `${COMMAND}: give exactly one of --user UKEY (repeatable), --job ID, --pipeline ID, --all` +
        (chosen.length > 1 ? ` (got ${chosen.join(", ")})` : ""),
    );
  const id = (flag: string, v: string): number => {
    if (!ID.test(v))
      throw new UsageError(`${COMMAND}: ${flag} ${JSON.stringify(redactSecrets(v, 40))} is not an id`);
    return Number(v);
  };
  const selector: RevokeSelector =
    values.user !== undefined
      ? { kind: "users", keys: parseUserKeys(values.user) }
      : values.job !== undefined
        ? { kind: "job", id: id("--job", values.job) }
        : values.pipeline !== undefined
          ? { kind: "pipeline", id: id("--pipeline", values.pipeline) }
          : { kind: "all" };
  const timeout = parseDuration(values.timeout, 3_600_000);
  if ("problem" in timeout) throw new UsageError(`${COMMAND}: --timeout ${timeout.problem}`);
  return {
    configPath: values.config,
    binding: values.binding,
    projectId: Number(values.project),
    ...(values.environment !== undefined ? { environment: values.environment } : {}),
    selector,
    timeoutMs: timeout.value,
  };
}

export function describeSlot(ref: AccountRef): string {
  return `project ${ref.projectId}${ref.environment !== undefined ? ` (environment ${JSON.stringify(ref.environment)})` : ""}`;
}

/**
 * The slots the revocation goes into: the project's account, or its accounts per environment (one
 * with --environment). UsageError naming what the binding has when there is none.
 */
export function targetSlots(
  slots: readonly StoredAccount[],
  binding: string,
  projectId: number,
  environment: string | undefined,
): StoredAccount[] {
  const ofProject = slots.filter((s) => s.ref.projectId === projectId);
  const list = (items: string[]): string =>
    items.length === 0
      ? "none"
      : `${items.slice(0, SHOWN_SLOTS).join(", ")}${items.length > SHOWN_SLOTS ? ` and ${items.length - SHOWN_SLOTS} more` : ""}`;
  if (ofProject.length === 0) {
    const projects = [...new Set(slots.map((s) => s.ref.projectId))].sort((a, b) => a - b).map(String);
    throw new UsageError(
      `${COMMAND}: binding ${binding} has no account for project ${projectId} (projects with accounts: ${list(projects)})`,
    );
  }
  if (environment === undefined) return ofProject;
  const matching = ofProject.filter((s) => s.ref.environment === environment);
  if (matching.length === 0) {
    const environments = ofProject.map((s) =>
      s.ref.environment === undefined
        ? "(one account for every environment)"
        : JSON.stringify(s.ref.environment),
    );
    throw new UsageError(
      `${COMMAND}: binding ${binding} has no account for project ${projectId} environment ${JSON.stringify(environment.slice(0, 255))} (it has: ${list(environments)})`,
    );
  }
  return matching;
}

/**
 * How many revocations the slot would carry with `entries` added (entries past their prune time
 * dropped, as changeRevocations does); RevocationRefusedError past MAX_REVOCATIONS.
 */
export function checkRevocationsFit(
  slot: StoredAccount,
  entries: Record<string, number>,
  now: number,
  overlapMs: number,
): number {
  const kept = new Set(
    Object.entries(slot.revocations ?? {})
      .filter(([, at]) => now < prunableAt(at, overlapMs))
      .map(([key]) => key),
  );
  for (const [key, at] of Object.entries(entries)) if (now < prunableAt(at, overlapMs)) kept.add(key);
  if (kept.size > MAX_REVOCATIONS) {
    const held = Object.keys(slot.revocations ?? {}).length;
    throw new RevocationRefusedError(
      `account ${slot.account} (${describeSlot(slot.ref)}) would carry ${kept.size} revocations, more than ` +
        `the ${MAX_REVOCATIONS} an account JWT may carry (it has ${held}; entries are dropped ` +
        `${Math.round(overlapMs / 1000)} s after their time, once what they revoked has expired): nothing was revoked`,
    );
  }
  return kept.size;
}

/** One slot's part of the revocation. */
export interface RevocationTarget {
  slot: StoredAccount;
  entries: Record<string, number>;
}

/** Does the account JWT the resolver holds carry every entry (or has the entry expired anyway)? */
export function jwtCarries(
  jwt: string | undefined,
  entries: Record<string, number>,
  now: number,
  overlapMs: number,
): boolean {
  if (jwt === undefined) return false;
  const held = (decodeJwt(jwt, "account JWT on the resolver").nats.revocations ?? {}) as Record<
    string,
    unknown
  >;
  return Object.entries(entries).every(([key, at]) => {
    const h = held[key];
    return (typeof h === "number" && h >= at) || now >= prunableAt(at, overlapMs);
  });
}

export async function resolverCarries(
  resolver: NatsResolver,
  targets: readonly RevocationTarget[],
  overlapMs: number,
) {
  for (const t of targets) {
    if (!jwtCarries(await resolver.lookup(t.slot.account), t.entries, Date.now(), overlapMs)) return false;
  }
  return true;
}

async function findJobKeys(
  selector: Extract<RevokeSelector, { kind: "job" | "pipeline" }>,
  projectId: number,
  targets: readonly StoredAccount[],
  config: Config,
  resolver: NatsResolver,
  say: (line: string) => void,
): Promise<Map<string, Set<string>>> {
  const what = `${selector.kind} ${selector.id}`;
  const tag = `${selector.kind}:${selector.id}`;
  const accounts = new Set(targets.map((t) => t.account));
  const perAccount = new Map<string, Set<string>>(targets.map((t) => [t.account, new Set<string>()]));
  const looked: string[] = [];
  const add = (account: string, user: string): void => {
    perAccount.get(account)?.add(user);
  };

  // (a) Users natsbind issued, from its audit file.
  const file = config.credentials?.audit.file;
  if (file === undefined) {
    looked.push("the audit file: none (credentials.audit.file is not set)");
    say(`audit file: not configured (credentials.audit.file), skipped`);
  } else {
    try {
      const found = await findIssuedUsers(file, {
        projectId,
        ...(selector.kind === "job" ? { jobId: selector.id } : { pipelineId: selector.id }),
        accounts,
        now: Date.now(),
        maxUsers: MAX_REVOCATIONS + 1,
      });
      for (const [user, account] of found.users) add(account, user);
      const notes = [
        `${found.lines} line(s) read`,
        ...(found.expired > 0 ? [`${found.expired} already expired, skipped`] : []),
        ...(found.otherAccounts > 0 ? [`${found.otherAccounts} issued in another account, skipped`] : []),
        ...(found.malformed > 0 ? [`${found.malformed} malformed line(s) skipped`] : []),
      ];
      say(`audit file ${file}: ${found.users.size} user key(s) issued to ${what} (${notes.join(", ")})`);
      looked.push(`the audit file ${file} (${notes.join(", ")})`);
    } catch (err) {
      if (!(err instanceof AuditSearchError)) throw err;
      say(`audit file: ${err.message}: skipped`);
      looked.push(`the audit file (${err.message})`);
    }
  }

  // (b) Live connections of the accounts tagged with the job or pipeline (also users not issued by
  // natsbind, and users issued by another replica whose audit lines are elsewhere).
  let fromConnz = 0;
  let connzFailed = 0;
  for (const t of targets) {
    try {
      const live = await resolver.connections(t.account);
      const users = new Set(live.filter((c) => c.tags.includes(tag)).map((c) => c.user));
      for (const user of users) {
        try {
          if (parsePublicKey(user).kind !== "user") continue;
        } catch {
          continue;
        }
        add(t.account, user);
        fromConnz += 1;
      }
    } catch (err) {
      connzFailed += 1;
      say(`live connections of account ${t.account}: ${describeError(err)}: skipped`);
    }
  }
  say(
    `live connections (CONNZ of every server, tag ${tag}): ${fromConnz} user key(s)` +
      (connzFailed > 0 ? ` (${connzFailed} account(s) could not be read)` : ""),
  );
  looked.push(
    `live connections tagged ${tag} of account(s) ${[...accounts].join(", ")}` +
      (connzFailed > 0 ? ` (${connzFailed} could not be read)` : ""),
  );

  const total = [...perAccount.values()].reduce((n, s) => n + s.size, 0);
  if (total === 0)
    throw new RevocationRefusedError(
      `no user of ${what} of project ${projectId} found to revoke: looked in ${looked.join("; and in ")}. ` +
        "Revoke by key (--user) or every user of the account (--all)",
    );
  return perAccount;
}

/** Entries per target slot for the selector (one time for all: `nowSec`). */
export async function revocationTargets(
  a: RevokeArgs,
  slots: readonly StoredAccount[],
  config: Config,
  resolver: NatsResolver,
  nowSec: number,
  say: (line: string) => void,
): Promise<RevocationTarget[]> {
  const sel = a.selector;
  if (sel.kind === "users" || sel.kind === "all") {
    const keys = sel.kind === "all" ? [REVOKE_ALL] : sel.keys;
    const entries = Object.fromEntries(keys.map((k) => [k, nowSec]));
    return slots.map((slot) => ({ slot, entries }));
  }
  const found = await findJobKeys(sel, a.projectId, slots, config, resolver, say);
  return slots
    .map((slot) => ({
      slot,
      entries: Object.fromEntries([...(found.get(slot.account) ?? [])].map((k) => [k, nowSec])),
    }))
    .filter((t) => Object.keys(t.entries).length > 0);
}

export function auditEvents(
  a: RevokeArgs,
  binding: string,
  targets: readonly RevocationTarget[],
): RevocationAuditEvent[] {
  const time = new Date().toISOString();
  return targets.flatMap(({ slot, entries }) =>
    Object.entries(entries).map(([key, at]): RevocationAuditEvent => ({
      event: "credentials.revoked",
      time,
      binding,
      projectId: slot.ref.projectId,
      ...(slot.ref.environment !== undefined ? { environment: slot.ref.environment } : {}),
      account: slot.account,
      userPublicKey: key,
      revokedAt: new Date(at * 1000).toISOString(),
      ...(a.selector.kind === "job" ? { jobId: a.selector.id } : {}),
      ...(a.selector.kind === "pipeline" ? { pipelineId: a.selector.id } : {}),
      source: "cli",
    })),
  );
}

/** Writes the audit lines and waits until they are written (and fsync'd for a file). */
export async function writeAudit(
  sink: OpenedAuditSink,
  events: readonly RevocationAuditEvent[],
): Promise<void> {
  let n = 0;
  for (const e of events) {
    sink.write(e);
    // The sink holds at most 10,000 lines: a revocation of every key of a pipeline in several
    // environments' accounts can be more.
    if (++n % 1_000 === 0) await sink.flush();
  }
  await sink.flush();
  await sink.close();
  if (sink.counters.dropped > 0)
    throw new NatsbindError(
      `the revocation is stored, but ${sink.counters.dropped} audit line(s) could not be written (${sink.target}): see the errors above`,
    );
}

export function report(
  targets: readonly RevocationTarget[],
  config: Config,
  overlapMs: number,
  say: (line: string) => void,
): void {
  for (const { slot, entries } of targets) {
    const keys = Object.keys(entries);
    const at = new Date(Math.max(...Object.values(entries)) * 1000).toISOString();
    if (keys.length === 1 && keys[0] === REVOKE_ALL)
      say(
        `account ${slot.account} (${describeSlot(slot.ref)}): every user issued at or before ${at} revoked`,
      );
    else {
      say(`account ${slot.account} (${describeSlot(slot.ref)}): ${keys.length} user key(s) revoked at ${at}`);
      for (const k of keys.slice(0, SHOWN_KEYS)) say(`  ${k}`);
      if (keys.length > SHOWN_KEYS) say(`  and ${keys.length - SHOWN_KEYS} more (see the audit lines)`);
    }
  }
  const kept = formatRetention(overlapMs);
  say(
    config.revocations.retention !== undefined
      ? `the account JWT on the NATS servers carries the revocation; natsbind keeps it ${kept} (revocations.retention)`
      : config.credentials
        ? `the account JWT on the NATS servers carries the revocation; natsbind keeps it ${kept} ` +
          "(credentials.maxTtl + credentials.leeway + 5 s: until every credential natsbind issued before it " +
          "has expired; set revocations.retention for user JWTs issued otherwise that live longer)"
        : `the account JWT on the NATS servers carries the revocation; natsbind keeps it ${kept} ` +
          "(natsbind.yaml has no credentials section, so these users were issued otherwise: set " +
          "revocations.retention to their longest lifetime, or re-key the role: natsbind rotate --emergency)",
  );
}

function formatRetention(ms: number): string {
  if (ms % 86_400_000 === 0) return `${ms / 86_400_000} d`;
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000} h`;
  return `${Math.round(ms / 1000)} s`;
}

/** The audit sink of natsbind.yaml, opened before anything changes: no revocation goes unaudited. */
export function openSink(config: Config): Promise<OpenedAuditSink> {
  return openAuditSink({
    ...(config.credentials?.audit.file ? { file: config.credentials.audit.file } : {}),
    clock: systemClock,
    log: createLogger({ level: "warn", base: { app: "natsbind" } }),
  });
}

export async function revokeLocally(a: RevokeArgs, say: (line: string) => void): Promise<void> {
  const lb = await localBinding(a.configPath, a.binding, COMMAND);
  const { config } = lb;
  const overlapMs = revocationRetentionMs(config);
  const slots = targetSlots(await managedSlots(config, lb.key), lb.key, a.projectId, a.environment);
  let sink: OpenedAuditSink | undefined = await openSink(config);
  let resolver: NatsResolver | undefined;
  try {
    ({ resolver } = await connectResolver(config.nats));
    const nowSec = Math.floor(Date.now() / 1000);
    const targets = await revocationTargets(a, slots, config, resolver, nowSec, say);
    for (const t of targets) checkRevocationsFit(t.slot, t.entries, Date.now(), overlapMs);

    const files = new RequestFiles(config.keys.directory);
    const all = await new DirectoryKeyStore(config.keys.directory).list(lb.key);
    // Requests the slots already carry are done: dropped from the file as this one is added.
    const stillNeeded = (r: RevocationRequest): boolean =>
      all.some(
        (s) =>
          s.ref.projectId === r.projectId &&
          (r.environment === undefined || s.ref.environment === r.environment) &&
          !carries(s, r.entries, Date.now(), overlapMs),
      );
    const stored: RevocationTarget[] = [];
    try {
      for (const t of targets) {
        await files.add(
          lb.key,
          {
            revocation: {
              projectId: t.slot.ref.projectId,
              ...(t.slot.ref.environment !== undefined ? { environment: t.slot.ref.environment } : {}),
              entries: t.entries,
            },
          },
          stillNeeded,
        );
        stored.push(t);
      }
    } finally {
      // Whatever was stored is audited, even when a later request failed.
      const s = sink;
      sink = undefined;
      await writeAudit(s, auditEvents(a, lb.key, stored));
    }
    say(`revocation stored in ${files.pathOf(lb.key)}`);

    await applyRequest(lb, () => resolverCarries(resolver!, targets, overlapMs), {
      timeoutMs: a.timeoutMs,
      progress: say,
    });
    report(targets, config, overlapMs, say);
  } finally {
    await sink?.close();
    await resolver?.close();
  }
}
