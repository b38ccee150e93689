/**
 * Kubernetes API failures, read the same way whatever raised them: client-node 2.x `ApiException`
 * (`.code`, `.body` = the apiserver's Status as text), a failed watch request (`.statusCode`), an
 * ERROR watch event (a Status object with `.code`), or a network error (no status at all).
 *
 * `KubernetesApiError` wraps a failed call with a message naming the verb and the object. It
 * never renders the ApiException itself: client-node puts the whole response body and headers in
 * that message. Only the Status reason and message are kept, passed through redactSecrets.
 */
import { NatsbindError } from "../errors.ts";
import { redactSecrets } from "../observability/logger.ts";

/** Longest apiserver Status message kept in an error message. */
const MAX_STATUS_MESSAGE = 300;

function asRecord(value: unknown): Record<string, unknown> | undefined {
  return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : undefined;
}

function statusInteger(value: unknown): number | undefined {
  return typeof value === "number" && Number.isInteger(value) && value >= 100 && value <= 599
    ? value
    : undefined;
}

/** The apiserver's Status carried by an error: ApiException.body (JSON text or object) or the error itself. */
export function apiStatus(err: unknown): { code?: number; reason?: string; message?: string } | undefined {
  const record = asRecord(err);
  if (!record) return undefined;
  let status: Record<string, unknown> | undefined;
  if (record.kind === "Status") status = record;
  else if (typeof record.body === "string" && record.body.length <= 64 * 1024) {
    try {
      status = asRecord(JSON.parse(record.body));
    } catch {
      status = undefined;
    }
  } else status = asRecord(record.body);
  if (!status || status.kind !== "Status") return undefined;
  return {
    code: statusInteger(status.code),
    reason: typeof status.reason === "string" ? status.reason : undefined,
    message: typeof status.message === "string" ? status.message : undefined,
  };
}

/**
 * HTTP status of a failed Kubernetes call, or undefined for network errors and timeouts. Node's
 * system errors carry string codes ("ECONNREFUSED"); only integer HTTP statuses count.
 */
export function apiStatusCode(err: unknown): number | undefined {
  const record = asRecord(err);
  if (!record) return undefined;
  if (err instanceof KubernetesApiError) return err.code;
  return statusInteger(record.code) ?? statusInteger(record.statusCode) ?? apiStatus(err)?.code;
}

export function isNotFound(err: unknown): boolean {
  return apiStatusCode(err) === 404;
}

/** 409 because of a resourceVersion (or uid) precondition, not because the object exists. */
export function isConflict(err: unknown): boolean {
  return apiStatusCode(err) === 409 && apiStatus(err)?.reason !== "AlreadyExists";
}

export function isAlreadyExists(err: unknown): boolean {
  return apiStatusCode(err) === 409 && apiStatus(err)?.reason === "AlreadyExists";
}

/** 410 Gone: the resourceVersion asked for was compacted away ("too old resource version"). */
export function isGone(err: unknown): boolean {
  if (apiStatusCode(err) === 410) return true;
  const status = apiStatus(err);
  return status?.reason === "Expired" || /too old resource version/i.test(status?.message ?? "");
}

/** One line on what went wrong below HTTP: "fetch failed (ECONNREFUSED)", "TimeoutError". */
function networkReason(err: unknown): string {
  if (!(err instanceof Error)) return String(err).slice(0, MAX_STATUS_MESSAGE);
  const cause = asRecord(err.cause);
  const code = typeof cause?.code === "string" ? cause.code : undefined;
  const base = err.name === "TimeoutError" || err.name === "AbortError" ? err.name : err.message;
  return redactSecrets(code ? `${base} (${code})` : base, MAX_STATUS_MESSAGE);
}

/**
 * A failed Kubernetes API call: `verb` ("create", "get", "replace", "delete", "list", "watch")
 * and `object` ("Secret ns/name", "secrets in ns") name what was attempted.
 */
export class KubernetesApiError extends NatsbindError {
  readonly verb: string;
  readonly object: string;
  /** HTTP status, undefined when no answer came (network, timeout). */
  readonly code: number | undefined;
  /** The Status reason (NotFound, Conflict, AlreadyExists, Expired, Forbidden, ...). */
  readonly reason: string | undefined;

  constructor(verb: string, object: string, cause: unknown) {
    const code = apiStatusCode(cause);
    const status = apiStatus(cause);
    const detail =
      code === undefined
        ? networkReason(cause)
        : [
            `HTTP ${code}`,
            status?.reason,
            status?.message ? redactSecrets(status.message, MAX_STATUS_MESSAGE) : undefined,
          ]
            .filter((part) => part !== undefined && part !== "")
            .join(" ");
    super(`${verb} ${object}: ${detail}`, { cause });
    this.verb = verb;
    this.object = object;
    this.code = code;
    this.reason = status?.reason;
  }
}
