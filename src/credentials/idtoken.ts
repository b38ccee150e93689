/**
 * Verifies a GitLab CI ID token and returns the CI identity it proves, or why not. jose does the
 * JWS and claim checks (jwtVerify: RS256 only, exact iss, aud, exp/nbf/iat with the leeway, the
 * token's age, all at clock.now()); the keys come from GitLab's JWKS (jwks.ts: cached, refetched at
 * most once per cooldown); identityFromClaims checks GitLab's claims (types and bounds).
 *
 * Cheap refusals come first and touch nothing: the size (unparsed), the shape, then the header's
 * alg (RS256 only, before any key lookup) and kid. A refusal's message says what is wrong, never
 * the token and never a value read from an unverified token (the attacker chose them).
 */
import { decodeProtectedHeader, errors, jwtVerify, type JWTPayload } from "jose";
import { describeError } from "../errors.ts";
import { nullLogger, type Logger } from "../observability/logger.ts";
import type { Clock } from "../runtime/clock.ts";
import { identityFromClaims, type CiIdentity } from "./identity.ts";
import { GitLabJwks } from "./jwks.ts";

/** Longer tokens are refused before anything is decoded (GitLab's are about 1-2 KiB). */
export const MAX_ID_TOKEN_LENGTH = 16 * 1024;

/** Three base64url parts; the signature may be empty (alg none), which is refused by alg. */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

export interface IdTokenVerifierOptions {
  /** Exact iss (config credentials.issuer, default gitlab.url without trailing slash). */
  issuer: string;
  /** aud must contain it. */
  audience: string;
  /** Default: jwks_uri from <issuer>/.well-known/openid-configuration (fetched lazily, cached). */
  jwksUrl?: string;
  /** Clock skew allowed on exp, nbf and iat. */
  leewayMs: number;
  /** Tokens issued longer ago than this (plus the leeway) are refused ("too_old"). */
  maxTokenAgeMs: number;
  /** The JWKS is fetched at most once per this (unknown kid, expired keys, failures). */
  jwksCooldownMs: number;
  /** Keys older than this are refetched before use (default 10 min, at least jwksCooldownMs). */
  jwksMaxAgeMs?: number;
  /** Every time check reads clock.now(). */
  clock: Clock;
  /** Discovery and JWKS requests (default 5 s). */
  fetchTimeoutMs?: number;
  log?: Logger;
}

export type InvalidTokenReason =
  | "malformed"
  | "bad_algorithm"
  | "missing_kid"
  | "unknown_kid"
  | "bad_signature"
  | "wrong_issuer"
  | "wrong_audience"
  | "expired"
  | "not_yet_valid"
  | "issued_in_future"
  | "too_old"
  | "bad_claims";

export type VerifyRefusal =
  | { code: "invalid_token"; reason: InvalidTokenReason; message: string }
  /** GitLab's keys could not be fetched: nothing is known about the token. Retry after retryAfterS. */
  | { code: "unavailable"; reason: "jwks_unavailable"; message: string; retryAfterS: number };

export type VerifyResult = { identity: CiIdentity } | VerifyRefusal;

function invalid(reason: InvalidTokenReason, message: string): VerifyRefusal {
  return { code: "invalid_token", reason, message };
}

export class IdTokenVerifier {
  readonly #issuer: string;
  readonly #audience: string;
  readonly #leewayS: number;
  readonly #maxTokenAgeS: number;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #jwks: GitLabJwks;

  constructor(opts: IdTokenVerifierOptions) {
    if (!(opts.leewayMs >= 0) || !Number.isFinite(opts.leewayMs)) {
      throw new RangeError(`leewayMs must be >= 0, got ${opts.leewayMs}`);
    }
    if (!(opts.maxTokenAgeMs > 0) || !Number.isFinite(opts.maxTokenAgeMs)) {
      throw new RangeError(`maxTokenAgeMs must be > 0, got ${opts.maxTokenAgeMs}`);
    }
    this.#issuer = opts.issuer;
    this.#audience = opts.audience;
    this.#leewayS = opts.leewayMs / 1000;
    this.#maxTokenAgeS = opts.maxTokenAgeMs / 1000;
    this.#clock = opts.clock;
    this.#log = (opts.log ?? nullLogger).child({ component: "idtoken" });
    this.#jwks = new GitLabJwks({
      issuer: opts.issuer,
      ...(opts.jwksUrl !== undefined ? { jwksUrl: opts.jwksUrl } : {}),
      cooldownMs: opts.jwksCooldownMs,
      ...(opts.jwksMaxAgeMs !== undefined ? { maxAgeMs: opts.jwksMaxAgeMs } : {}),
      ...(opts.fetchTimeoutMs !== undefined ? { fetchTimeoutMs: opts.fetchTimeoutMs } : {}),
      clock: opts.clock,
      ...(opts.log ? { log: opts.log } : {}),
    });
  }

  /** Never throws: every failure is a refusal. */
  async verify(token: string): Promise<VerifyResult> {
    if (typeof token !== "string" || token.length > MAX_ID_TOKEN_LENGTH) {
      return invalid("malformed", `the token is longer than ${MAX_ID_TOKEN_LENGTH} characters`);
    }
    if (!COMPACT_JWS.test(token)) {
      return invalid("malformed", "the token is not a JWT (three base64url parts separated by dots)");
    }
    let header: ReturnType<typeof decodeProtectedHeader>;
    try {
      header = decodeProtectedHeader(token);
    } catch {
      return invalid("malformed", "the token's header is not a base64url-encoded JSON object");
    }
    if (header.alg !== "RS256") {
      return invalid("bad_algorithm", "the token must be signed with RS256, GitLab's ID token algorithm");
    }
    if (typeof header.kid !== "string" || header.kid === "") {
      return invalid("missing_kid", "the token's header has no kid (the id of GitLab's signing key)");
    }
    if (header.crit !== undefined) {
      // GitLab sends none; an extension (b64: false, ...) would change what the signature covers.
      return invalid(
        "malformed",
        "the token's header has critical extensions (crit), which GitLab never sends",
      );
    }

    const lookup = await this.#jwks.lookup(header.kid);
    if (lookup.kind === "unknown_kid") {
      return invalid("unknown_kid", "the token's kid names none of GitLab's signing keys");
    }
    if (lookup.kind === "unavailable") {
      return {
        code: "unavailable",
        reason: "jwks_unavailable",
        message: "GitLab's ID token signing keys cannot be fetched right now; retry later",
        retryAfterS: lookup.retryAfterS,
      };
    }

    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, lookup.keys, {
        algorithms: ["RS256"],
        issuer: this.#issuer,
        audience: this.#audience,
        clockTolerance: this.#leewayS,
        maxTokenAge: this.#maxTokenAgeS,
        currentDate: new Date(this.#clock.now()),
        requiredClaims: ["exp", "iat"],
      }));
    } catch (err) {
      return this.#refusalFor(err);
    }
    const checked = identityFromClaims(payload);
    if ("problem" in checked) return invalid("bad_claims", `the token's ${checked.problem}`);
    return { identity: checked.identity };
  }

  /** jose's error as a refusal; jose's messages and payloads are not passed on (they carry claims). */
  #refusalFor(err: unknown): VerifyRefusal {
    if (err instanceof errors.JWSSignatureVerificationFailed) {
      return invalid("bad_signature", "the token's signature does not verify with GitLab's signing key");
    }
    if (err instanceof errors.JWTExpired) {
      if (err.claim === "iat") {
        return invalid("too_old", `the token was issued more than ${this.#maxTokenAgeS} s ago`);
      }
      return invalid("expired", "the token has expired (exp)");
    }
    if (err instanceof errors.JWTClaimValidationFailed) {
      const claim = err.claim;
      if (claim === "iss") return invalid("wrong_issuer", `the token was not issued by ${this.#issuer}`);
      if (claim === "aud") {
        return invalid(
          "wrong_audience",
          `the token's aud does not contain ${JSON.stringify(this.#audience)}`,
        );
      }
      if (err.reason === "missing") return invalid("bad_claims", `the token's claim ${claim} is missing`);
      if (err.reason === "invalid")
        return invalid("bad_claims", `the token's claim ${claim} must be a number`);
      if (claim === "nbf") return invalid("not_yet_valid", "the token is not valid yet (nbf)");
      if (claim === "iat") return invalid("issued_in_future", "the token's iat is in the future");
    }
    if (err instanceof errors.JOSEAlgNotAllowed) {
      return invalid("bad_algorithm", "the token must be signed with RS256, GitLab's ID token algorithm");
    }
    if (err instanceof errors.JWKSNoMatchingKey) {
      return invalid("unknown_kid", "the token's kid names none of GitLab's signing keys");
    }
    if (err instanceof errors.JWTInvalid || err instanceof errors.JWSInvalid) {
      return invalid("malformed", "the token is not a well-formed signed JWT");
    }
    // A key GitLab serves that cannot verify (too short, unsupported), or a jose change: fail closed.
    this.#log.warn(
      { error: err instanceof Error ? err.name : typeof err, detail: describeError(err).slice(0, 200) },
      "ID token verification failed unexpectedly",
    );
    return invalid("bad_signature", "the token could not be verified with GitLab's signing keys");
  }
}
