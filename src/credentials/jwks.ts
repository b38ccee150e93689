/**
 * GitLab's ID token signing keys (JWKS), fetched lazily, cached, and refetched at most once per
 * cooldown, whatever the tokens say. jose's createLocalJWKSet validates the set and picks the key;
 * fetching, discovery and the refetch policy are ours because jose's createRemoteJWKSet does not
 * hold natsbind's line (checked against the GitLab simulator, jose 6.2.18):
 * - its cooldown starts only after a SUCCESSFUL fetch: while the JWKS endpoint fails, every token
 *   with an unknown kid (every token, before the first success) makes a request, so a flood of
 *   bad tokens during a GitLab incident becomes a flood of requests to GitLab;
 * - its cooldown and cache age run on Date.now(), not on the injected Clock;
 * - it reads the whole response body, however large (only its customFetch hook could bound it).
 * Here every attempt, failed or not, starts the cooldown; concurrent lookups share one fetch;
 * bodies are bounded; time comes from the Clock.
 */
import { createLocalJWKSet, errors, type JSONWebKeySet } from "jose";
import { NatsbindError, describeError } from "../errors.ts";
import { nullLogger, type Logger } from "../observability/logger.ts";
import type { Clock } from "../runtime/clock.ts";

/** Discovery documents and key sets larger than this are refused (GitLab's are a few KiB). */
export const MAX_OIDC_DOCUMENT_BYTES = 1024 * 1024;
export const DEFAULT_FETCH_TIMEOUT_MS = 5_000;
/** Keys older than this are refetched before use (jose's default cacheMaxAge). */
export const DEFAULT_JWKS_MAX_AGE_MS = 10 * 60_000;
const MAX_URL_LENGTH = 2048;

/** A discovery or JWKS fetch that failed; the message names the URL and what went wrong. */
export class OidcFetchError extends NatsbindError {}

export interface GitLabJwksOptions {
  /** Exact issuer; the discovery document must name it. */
  issuer: string;
  /** Skip discovery and fetch the keys from here. */
  jwksUrl?: string;
  /** At most one fetch attempt per this (an unknown kid, expired keys, or a failure before). */
  cooldownMs: number;
  /** Keys are refetched when older than this (at least cooldownMs). */
  maxAgeMs?: number;
  fetchTimeoutMs?: number;
  clock: Clock;
  log?: Logger;
}

type KeySet = ReturnType<typeof createLocalJWKSet>;

export type KeyLookup =
  | { kind: "found"; keys: KeySet }
  /** The keys were fetched fine (now or within the cooldown) and none has this kid. */
  | { kind: "unknown_kid" }
  /** No usable keys and no successful fetch to tell: GitLab could not be asked or did not answer. */
  | { kind: "unavailable"; retryAfterS: number };

export class GitLabJwks {
  readonly #issuer: string;
  readonly #cooldownMs: number;
  readonly #maxAgeMs: number;
  readonly #fetchTimeoutMs: number;
  readonly #clock: Clock;
  readonly #log: Logger;
  #jwksUrl: URL | undefined;
  #keys: { set: KeySet; fetchedAt: number } | undefined;
  #lastAttemptAt = -Infinity;
  #lastAttemptFailed = false;
  #pending: Promise<void> | undefined;

  constructor(opts: GitLabJwksOptions) {
    for (const [name, value] of [
      ["cooldownMs", opts.cooldownMs],
      ["maxAgeMs", opts.maxAgeMs ?? DEFAULT_JWKS_MAX_AGE_MS],
      ["fetchTimeoutMs", opts.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS],
    ] as const) {
      if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be > 0, got ${value}`);
    }
    this.#issuer = opts.issuer;
    this.#cooldownMs = opts.cooldownMs;
    // Keys that expire inside a cooldown could not be refetched until it ends.
    this.#maxAgeMs = Math.max(opts.maxAgeMs ?? DEFAULT_JWKS_MAX_AGE_MS, opts.cooldownMs);
    this.#fetchTimeoutMs = opts.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS;
    this.#clock = opts.clock;
    this.#log = (opts.log ?? nullLogger).child({ component: "gitlab-jwks" });
    if (opts.jwksUrl !== undefined) this.#jwksUrl = httpUrl(opts.jwksUrl, "jwksUrl");
  }

  /** The keys for an RS256 token with this kid, refetching them when allowed. Never throws. */
  async lookup(kid: string): Promise<KeyLookup> {
    if (!this.#fresh()) {
      await this.#refreshUnlessCoolingDown("first use or keys expired");
      if (!this.#fresh()) return this.#unavailable();
    }
    let keys = this.#keys!.set;
    if (await hasKey(keys, kid)) return { kind: "found", keys };
    // GitLab may have rotated its key ("may change without any notice"): ask again, once per cooldown.
    await this.#refreshUnlessCoolingDown("unknown kid");
    if (!this.#fresh()) return this.#unavailable();
    keys = this.#keys!.set;
    if (await hasKey(keys, kid)) return { kind: "found", keys };
    // A failed refetch could not tell whether the kid is GitLab's new key.
    if (this.#lastAttemptFailed) return this.#unavailable();
    return { kind: "unknown_kid" };
  }

  #fresh(): boolean {
    return this.#keys !== undefined && this.#clock.now() < this.#keys.fetchedAt + this.#maxAgeMs;
  }

  #unavailable(): KeyLookup {
    const waitMs = this.#lastAttemptAt + this.#cooldownMs - this.#clock.now();
    return { kind: "unavailable", retryAfterS: Math.max(1, Math.ceil(waitMs / 1000)) };
  }

  /** Joins the fetch under way, or starts one unless the last attempt was within the cooldown. */
  #refreshUnlessCoolingDown(why: string): Promise<void> {
    if (this.#pending) return this.#pending;
    if (this.#clock.now() < this.#lastAttemptAt + this.#cooldownMs) return Promise.resolve();
    const pending = this.#refresh(why).finally(() => {
      if (this.#pending === pending) this.#pending = undefined;
    });
    this.#pending = pending;
    return pending;
  }

  async #refresh(why: string): Promise<void> {
    this.#lastAttemptAt = this.#clock.now();
    try {
      const url = this.#jwksUrl ?? (await this.#discover());
      const document = await this.#fetchJson(url, "JWKS");
      let set: KeySet;
      try {
        set = createLocalJWKSet(document as JSONWebKeySet);
      } catch (cause) {
        throw new OidcFetchError(`JWKS ${url.href} is not a JSON Web Key Set`, { cause });
      }
      this.#keys = { set, fetchedAt: this.#clock.now() };
      this.#lastAttemptFailed = false;
      const kids = set.jwks().keys.map((k) => (typeof k.kid === "string" ? k.kid.slice(0, 128) : null));
      this.#log.info(
        { jwksUrl: url.href, why, keys: kids.length, kids },
        "fetched GitLab's ID token signing keys",
      );
    } catch (err) {
      this.#lastAttemptFailed = true;
      this.#log.warn(
        { why, error: describeError(err), retryInMs: this.#cooldownMs },
        "cannot fetch GitLab's ID token signing keys",
      );
    }
  }

  /** jwks_uri of `<issuer>/.well-known/openid-configuration`, kept once found. */
  async #discover(): Promise<URL> {
    const url = new URL(`${this.#issuer.replace(/\/+$/, "")}/.well-known/openid-configuration`);
    const doc = await this.#fetchJson(url, "discovery document");
    if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
      throw new OidcFetchError(`discovery document ${url.href} is not a JSON object`);
    }
    const { issuer, jwks_uri: jwksUri } = doc as Record<string, unknown>;
    // OpenID Connect Discovery 1.0, 4.3: the issuer must be the one the document was fetched for.
    if (issuer !== this.#issuer) {
      throw new OidcFetchError(
        `discovery document ${url.href} names issuer ${JSON.stringify(String(issuer).slice(0, 256))}, not the configured ${JSON.stringify(this.#issuer)}`,
      );
    }
    this.#jwksUrl = httpUrl(jwksUri, `jwks_uri of ${url.href}`);
    return this.#jwksUrl;
  }

  /** GET a JSON document: 200 only, no redirects, at most MAX_OIDC_DOCUMENT_BYTES, within the timeout. */
  async #fetchJson(url: URL, what: string): Promise<unknown> {
    const abort = new AbortController();
    const timer = this.#clock.setTimeout(() => abort.abort(), this.#fetchTimeoutMs);
    const failed = (problem: string, cause?: unknown): OidcFetchError =>
      new OidcFetchError(
        `${what} ${url.href}: ${abort.signal.aborted ? `no answer within ${this.#fetchTimeoutMs} ms` : problem}`,
        { cause },
      );
    try {
      let response: Response;
      try {
        response = await fetch(url, {
          signal: abort.signal,
          redirect: "manual",
          headers: { accept: "application/json, application/jwk-set+json" },
        });
      } catch (cause) {
        throw failed(describeFetchError(cause), cause);
      }
      if (response.status !== 200) {
        await response.body?.cancel().catch(() => undefined);
        throw failed(`answered HTTP ${response.status}, expected 200`);
      }
      const tooLarge = `is larger than ${MAX_OIDC_DOCUMENT_BYTES} bytes`;
      if (Number(response.headers.get("content-length")) > MAX_OIDC_DOCUMENT_BYTES) {
        await response.body?.cancel().catch(() => undefined);
        throw failed(tooLarge);
      }
      const chunks: Uint8Array[] = [];
      let size = 0;
      try {
        // Leaving the loop early cancels the stream: the rest is never read.
        for await (const chunk of response.body ?? []) {
          size += chunk.byteLength;
          if (size > MAX_OIDC_DOCUMENT_BYTES) throw failed(tooLarge);
          chunks.push(chunk);
        }
      } catch (cause) {
        throw cause instanceof OidcFetchError
          ? cause
          : failed(`reading the body: ${describeFetchError(cause)}`);
      }
      try {
        return JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        throw failed("is not JSON");
      }
    } finally {
      this.#clock.clearTimeout(timer);
    }
  }
}

/** Whether jose's key selection (kid, kty RSA, alg RS256 or none, use sig) finds a key. */
async function hasKey(keys: KeySet, kid: string): Promise<boolean> {
  try {
    await keys({ alg: "RS256", kid });
    return true;
  } catch (err) {
    // Several matches, or a key that fails to import: let jwtVerify try them and say what is wrong.
    return !(err instanceof errors.JWKSNoMatchingKey);
  }
}

function httpUrl(value: unknown, what: string): URL {
  if (typeof value !== "string" || value.length > MAX_URL_LENGTH || !URL.canParse(value)) {
    throw new OidcFetchError(
      `${what} must be an http:// or https:// URL of at most ${MAX_URL_LENGTH} characters`,
    );
  }
  const url = new URL(value);
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new OidcFetchError(`${what} must be an http:// or https:// URL, not ${url.protocol}`);
  }
  return url;
}

/** undici's "fetch failed" says nothing; its cause has the code (ECONNREFUSED, ENOTFOUND, ...). */
function describeFetchError(err: unknown): string {
  const cause = err instanceof Error ? err.cause : undefined;
  const code =
    typeof cause === "object" && cause !== null && "code" in cause ? String(cause.code) : undefined;
  return code ? `${describeError(err)} (${code})` : describeError(err);
}
