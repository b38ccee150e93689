/**
 * Searches natsbind's audit file (audit.ts's JSON lines) for the users it issued to one CI job or
 * pipeline of a project: what `natsbind credentials revoke --job/--pipeline` revokes, since NATS
 * revokes by user key only.
 *
 * The file can be large and is natsbind's own but still input: it is read in chunks (memory is
 * bounded by one line, never the file), a line longer than MAX_AUDIT_LINE_BYTES is skipped whole,
 * and a line that is not JSON, not a `credentials.issued` event, or has fields of the wrong type
 * or a malformed user key is counted and skipped. Users whose credentials have already expired
 * are left out (revoking them changes nothing and costs a revocation entry).
 */
import { constants } from "node:fs";
import { open } from "node:fs/promises";
import { isPublicKey } from "../nats/keys.ts";

/** audit.ts cuts fields at 2 KiB and tags at 64: a real line is far below this. */
export const MAX_AUDIT_LINE_BYTES = 64 * 1024;
const CHUNK_BYTES = 256 * 1024;

export interface IssuedUserQuery {
  projectId: number;
  /** Exactly one of jobId and pipelineId. */
  jobId?: number;
  pipelineId?: number;
  /** Only users of these accounts (the slots being revoked in). */
  accounts: ReadonlySet<string>;
  /** ms since the epoch: users whose credentials expired before this are left out. */
  now: number;
  /** Stop once this many distinct users were found (the caller refuses more). */
  maxUsers: number;
}

export interface IssuedUsersFound {
  /** user public key -> the account it was issued in */
  users: Map<string, string>;
  /** Lines read. */
  lines: number;
  /**
   * Lines longer than MAX_AUDIT_LINE_BYTES, and lines naming credentials.issued that are not a
   * well-formed one (not JSON, fields of the wrong type, a malformed key or time).
   */
  malformed: number;
  /** Matching users whose credentials had expired. */
  expired: number;
  /** Matching users issued in an account that is not one of `accounts` (e.g. keys lost since). */
  otherAccounts: number;
  /** maxUsers was reached: there may be more. */
  truncated: boolean;
}

export class AuditSearchError extends Error {
  override name = "AuditSearchError";
}

/** One line's verdict: a matching user, or why not. */
export function matchIssuedLine(
  line: string,
  q: IssuedUserQuery,
):
  | { kind: "user"; user: string; account: string }
  | { kind: "expired" | "other-account" | "no-match" | "malformed" } {
  // Cheap test first: most lines are other events.
  if (!line.includes('"credentials.issued"')) return { kind: "no-match" };
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    return { kind: "malformed" };
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return { kind: "malformed" };
  const e = parsed as Record<string, unknown>;
  if (e.event !== "credentials.issued") return { kind: "no-match" };
  if (e.projectId !== q.projectId) return { kind: "no-match" };
  if (q.jobId !== undefined && e.jobId !== q.jobId) return { kind: "no-match" };
  if (q.pipelineId !== undefined && e.pipelineId !== q.pipelineId) return { kind: "no-match" };
  const { userPublicKey: user, account, expiresAt } = e;
  if (typeof user !== "string" || !isPublicKey(user, "user")) return { kind: "malformed" };
  if (typeof account !== "string" || !isPublicKey(account, "account")) return { kind: "malformed" };
  if (!q.accounts.has(account)) return { kind: "other-account" };
  if (expiresAt !== undefined) {
    const at = typeof expiresAt === "string" ? Date.parse(expiresAt) : NaN;
    if (!Number.isFinite(at)) return { kind: "malformed" };
    if (at < q.now) return { kind: "expired" };
  }
  return { kind: "user", user, account };
}

/**
 * The users natsbind issued to the job or pipeline, from the audit file at `path`. Throws
 * AuditSearchError (naming the file and the reason: missing, not a regular file, unreadable)
 * when it cannot read it.
 */
export async function findIssuedUsers(path: string, q: IssuedUserQuery): Promise<IssuedUsersFound> {
  if ((q.jobId === undefined) === (q.pipelineId === undefined))
    throw new TypeError("findIssuedUsers: give exactly one of jobId and pipelineId");
  let handle;
  try {
    handle = await open(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "error";
    throw new AuditSearchError(
      code === "ENOENT" ? `audit file ${path} does not exist` : `audit file ${path} cannot be read (${code})`,
    );
  }
  const found: IssuedUsersFound = {
    users: new Map(),
    lines: 0,
    malformed: 0,
    expired: 0,
    otherAccounts: 0,
    truncated: false,
  };
  try {
    if (!(await handle.stat()).isFile())
      throw new AuditSearchError(`audit file ${path} is not a regular file`);
    const chunk = Buffer.alloc(CHUNK_BYTES);
    // The line being assembled across chunks; `skipping`: it passed the bound, dropped to its end.
    let parts: Buffer[] = [];
    let partBytes = 0;
    let skipping = false;
    const take = (line: Buffer): boolean => {
      found.lines += 1;
      const verdict = matchIssuedLine(line.toString("utf8"), q);
      switch (verdict.kind) {
        case "user":
          if (!found.users.has(verdict.user)) {
            if (found.users.size >= q.maxUsers) {
              found.truncated = true;
              return false;
            }
            found.users.set(verdict.user, verdict.account);
          }
          break;
        case "malformed":
          found.malformed += 1;
          break;
        case "expired":
          found.expired += 1;
          break;
        case "other-account":
          found.otherAccounts += 1;
          break;
        case "no-match":
          break;
      }
      return true;
    };
    let position = 0;
    for (;;) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await handle.read(chunk, 0, chunk.length, position));
      } catch (err) {
        throw new AuditSearchError(
          `audit file ${path} cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})`,
        );
      }
      if (bytesRead === 0) break;
      position += bytesRead;
      let start = 0;
      for (;;) {
        const nl = chunk.indexOf(0x0a, start);
        const end = nl === -1 || nl >= bytesRead ? bytesRead : nl;
        const piece = chunk.subarray(start, end);
        if (!skipping) {
          if (partBytes + piece.length > MAX_AUDIT_LINE_BYTES) {
            skipping = true;
            parts = [];
            partBytes = 0;
          } else if (piece.length > 0) {
            parts.push(Buffer.from(piece));
            partBytes += piece.length;
          }
        }
        if (end === bytesRead) break; // the line goes on in the next chunk
        if (skipping) {
          found.lines += 1;
          found.malformed += 1;
          skipping = false;
        } else if (partBytes > 0) {
          if (!take(Buffer.concat(parts, partBytes))) return found;
        }
        parts = [];
        partBytes = 0;
        start = end + 1;
      }
    }
    // A last line without its newline: being written, or cut by a crash; read it if it is whole JSON.
    if (skipping) {
      found.lines += 1;
      found.malformed += 1;
    } else if (partBytes > 0) take(Buffer.concat(parts, partBytes));
    return found;
  } finally {
    await handle.close();
  }
}
