/**
 * The two HTTP rules of natsbind's GitLab transport that stand between GitLab (or whoever answers
 * at its address) and the process:
 * - Redirects are followed by hand, same origin only: fetch's own following keeps custom headers
 *   such as PRIVATE-TOKEN on a cross-origin hop, so a 302 would hand the token to any host.
 * - Bodies are read against a byte cap while they stream: Content-Length is checked first, then
 *   bytes are counted as they arrive and the connection is dropped past the cap, so one huge page
 *   cannot grow the heap.
 */
import { GitLabRedirectError, GitLabResponseTooLargeError, type GitLabRequestInfo } from "./errors.ts";

/** A page of 100 projects is a few hundred KB; 16 MiB leaves room and still bounds memory. */
export const DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024;
/** GitLab redirects once or twice (a renamed path, a trailing slash); more is a loop. */
export const MAX_REDIRECTS = 5;
const MAX_ORIGIN_ECHO = 200;

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

function echoOrigin(url: URL): string {
  const origin = url.origin === "null" ? `${url.protocol}` : url.origin;
  return origin.length > MAX_ORIGIN_ECHO ? `${origin.slice(0, MAX_ORIGIN_ECHO)}...` : origin;
}

/** Frees a response we will not read, without waiting for (or buffering) its body. */
export function discardBody(response: Response): void {
  response.body?.cancel().catch(() => undefined);
}

/**
 * fetch with `redirect: "manual"`: follows at most MAX_REDIRECTS redirects whose target has the
 * same scheme, host and port as the request; anything else throws GitLabRedirectError before a
 * single byte goes to the target. Messages name the status and the target's origin, never headers.
 */
export async function fetchSameOrigin(
  url: URL,
  init: RequestInit,
  request: GitLabRequestInfo,
): Promise<Response> {
  let current = url;
  let method = init.method ?? "GET";
  let body = init.body;
  for (let hops = 0; ; hops++) {
    const response = await fetch(current, {
      ...init,
      method,
      ...(body !== undefined && body !== null ? { body } : { body: null }),
      redirect: "manual",
    });
    if (!REDIRECT_STATUSES.has(response.status)) return response;
    discardBody(response);
    const what = `${request.method} ${request.path}`;
    const info = { ...request, status: response.status };
    const location = response.headers.get("location");
    let next: URL | undefined;
    try {
      next = location ? new URL(location, current) : undefined;
    } catch {
      next = undefined;
    }
    if (!next)
      throw new GitLabRedirectError(
        `${what}: GitLab answered ${response.status} without a valid Location; not followed`,
        info,
      );
    if (next.origin === "null" || next.origin !== url.origin)
      throw new GitLabRedirectError(
        `${what}: GitLab answered ${response.status} redirecting to another origin (${echoOrigin(next)}); ` +
          `natsbind sends its token to ${url.origin} only: set gitlab.url to the address GitLab serves the API at`,
        info,
      );
    if (hops >= MAX_REDIRECTS)
      throw new GitLabRedirectError(
        `${what}: more than ${MAX_REDIRECTS} redirects (last ${response.status}); a redirect loop?`,
        info,
      );
    // As fetch does: 303, and 301/302 after a POST, continue as a GET without a body.
    if (
      response.status === 303 ||
      ((response.status === 301 || response.status === 302) && method === "POST")
    ) {
      method = "GET";
      body = undefined;
    }
    current = next;
  }
}

function tooLarge(request: GitLabRequestInfo, cap: number, status: number): GitLabResponseTooLargeError {
  return new GitLabResponseTooLargeError(
    `${request.method} ${request.path}: response body larger than ${cap} bytes; refused`,
    { ...request, status },
  );
}

/**
 * The whole body, at most `cap` bytes: a Content-Length above the cap is refused before reading,
 * and the count is kept while the body streams (a Content-Length may be absent or wrong). Past the
 * cap, `abort` drops the connection and GitLabResponseTooLargeError names the path and the cap.
 */
export async function readBodyCapped(
  response: Response,
  cap: number,
  request: GitLabRequestInfo,
  abort: () => void,
): Promise<Buffer> {
  const declared = response.headers.get("content-length");
  if (declared !== null && /^\d+$/.test(declared.trim()) && Number(declared) > cap) {
    abort();
    discardBody(response);
    throw tooLarge(request, cap, response.status);
  }
  const { bytes, truncated } = await readUpTo(response, cap, false);
  if (truncated) {
    abort();
    throw tooLarge(request, cap, response.status);
  }
  return bytes;
}

/**
 * At most `limit` bytes of the body; `truncated` when there were more (the rest is never read:
 * the stream is cancelled). `keepPartial: false` drops what was read when truncated.
 */
export async function readUpTo(
  response: Response,
  limit: number,
  keepPartial = true,
): Promise<{ bytes: Buffer; truncated: boolean }> {
  if (!response.body) return { bytes: Buffer.alloc(0), truncated: false };
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return { bytes: Buffer.concat(chunks, total), truncated: false };
    if (total + value.byteLength > limit) {
      reader.cancel().catch(() => undefined);
      if (!keepPartial) return { bytes: Buffer.alloc(0), truncated: true };
      chunks.push(value.subarray(0, limit - total));
      return { bytes: Buffer.concat(chunks, limit), truncated: true };
    }
    chunks.push(value);
    total += value.byteLength;
  }
}
