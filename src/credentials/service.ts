/**
 * The one credential issuer behind both doors (exchange.ts, callout.ts): rate limits, ID token
 * verification, the owning binding by project id, the pure policy, the role's signing key, the user
 * JWT, and an audit line plus metrics for every answer. Every step that can say no does so with a
 * code the doors map to their protocol; nothing here throws for bad input.
 */
import type { Config } from "../config/config.ts";
import { describeError } from "../errors.ts";
import { NKeyPair, isPublicKey } from "../nats/keys.ts";
import type { Logger } from "../observability/logger.ts";
import type { Registry } from "../observability/metrics.ts";
import type { Clock } from "../runtime/clock.ts";
import { owningBinding, type CredentialSources, type ProjectIndex } from "./directory.ts";
import type { CiIdentity } from "./identity.ts";
import type { IssuedUser } from "./audit-connections.ts";
import { jobName, jobTags, signUserJwt, userExpiry } from "./issue.ts";
import { SlotKeyCache } from "./key-cache.ts";
import { decide } from "./policy.ts";
import { RateLimiter } from "./ratelimit.ts";
import type {
  AuditSink,
  CredentialAuditEvent,
  CredentialIssuer,
  IssueRequest,
  IssueResult,
  Refused,
} from "./types.ts";

export type CredentialsConfig = NonNullable<Config["credentials"]>;

export interface TokenVerifier {
  verify(
    token: string,
  ): Promise<
    | { identity: CiIdentity }
    | { code: "invalid_token" | "unavailable"; reason: string; message: string; retryAfterS?: number }
  >;
}

/** Remembers the users natsbind issued, so connection events of those users can be audited. */
export interface IssuedUserRegistry {
  add(user: IssuedUser): void;
}

export interface CredentialServiceOptions {
  config: CredentialsConfig;
  /** NATS URLs for jobs when credentials.servers is not set. */
  natsServers: readonly string[];
  verifier: TokenVerifier;
  projects: ProjectIndex;
  /** Set by the mode once it knows where bindings and keys are; undefined: not ready. */
  sources: () => CredentialSources | undefined;
  /**
   * Whether the account is on the NATS resolver (a lookup). A project created a moment ago has keys
   * before its account reaches the servers; issuing then would hand out credentials that cannot
   * connect yet. Absent: not checked.
   */
  accountLive?: (account: string) => Promise<boolean>;
  clock: Clock;
  log: Logger;
  audit: AuditSink;
  metrics: Registry;
  issued?: IssuedUserRegistry;
}

const MAX_LIVE_ACCOUNTS = 100_000;

/** How long after an unavailable answer a client may try again. */
const RETRY_AFTER_UNAVAILABLE_S = 5;

export class CredentialService implements CredentialIssuer {
  readonly #o: CredentialServiceOptions;
  readonly #perClient: RateLimiter;
  readonly #perProject: RateLimiter;
  readonly #issuedTotal;
  readonly #refusedTotal;
  readonly #latency;
  readonly #slotKeys: SlotKeyCache;
  readonly #live = new Set<string>();

  constructor(o: CredentialServiceOptions) {
    this.#o = o;
    this.#slotKeys = new SlotKeyCache({ clock: o.clock });
    this.#perClient = new RateLimiter(o.config.rateLimit.perClientPerMinute);
    this.#perProject = new RateLimiter(o.config.rateLimit.perProjectPerMinute);
    this.#issuedTotal = o.metrics.counter({
      name: "natsbind_credentials_issued_total",
      help: "User JWTs issued to CI jobs, by door and role.",
      labelNames: ["via", "role"],
    });
    this.#refusedTotal = o.metrics.counter({
      name: "natsbind_credentials_refused_total",
      help: "Credential requests refused, by door, code and reason.",
      labelNames: ["via", "code", "reason"],
    });
    this.#latency = o.metrics.histogram({
      name: "natsbind_credentials_issue_seconds",
      help: "Time to answer a credential request (issued or refused), by door.",
      labelNames: ["via"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    });
  }

  async issue(request: IssueRequest): Promise<IssueResult> {
    const started = performance.now();
    let result: IssueResult;
    try {
      result = await this.#issue(request);
    } catch (err) {
      // A bug or an unexpected store failure: no credentials, a log line without the token.
      this.#o.log.error({ err: describeError(err), via: request.via }, "credential issuance failed");
      result = {
        kind: "refused",
        code: "unavailable",
        reason: "internal_error",
        message: "natsbind could not issue credentials; try again later",
        retryAfterS: RETRY_AFTER_UNAVAILABLE_S,
      };
    }
    this.#latency.labels({ via: request.via }).observe((performance.now() - started) / 1000);
    this.#record(request, result);
    return result;
  }

  async #issue(req: IssueRequest): Promise<IssueResult> {
    const o = this.#o;
    // An issuance that cannot be audited is not made.
    if (o.audit.accepting && !o.audit.accepting()) {
      return refused(
        "unavailable",
        "audit_unavailable",
        "natsbind cannot write its audit log; try again later",
        {
          retryAfterS: RETRY_AFTER_UNAVAILABLE_S,
        },
      );
    }
    const now = o.clock.now();
    const byClient = this.#perClient.take(req.client, now);
    if (!byClient.allowed) {
      return refused("rate_limited", "client_rate", "too many requests from this client address", {
        retryAfterS: byClient.retryAfterS,
      });
    }
    if (req.role !== undefined && !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(req.role)) {
      return refused("bad_request", "bad_role", "role must be a role name (a DNS label)");
    }
    if (req.userPublicKey !== undefined && !isPublicKey(req.userPublicKey, "user")) {
      return refused("bad_request", "bad_public_key", "publicKey must be a NATS user public key (U...)");
    }
    if (req.ttlMs !== undefined && (!Number.isFinite(req.ttlMs) || req.ttlMs <= 0)) {
      return refused("bad_request", "bad_ttl", "ttl must be a positive duration");
    }
    const verified = await o.verifier.verify(req.token);
    if (!("identity" in verified)) {
      return refused(verified.code, verified.reason, verified.message, {
        ...(verified.code === "unavailable"
          ? { retryAfterS: Math.max(1, verified.retryAfterS ?? RETRY_AFTER_UNAVAILABLE_S) }
          : {}),
      });
    }
    const identity = verified.identity;
    const byProject = this.#perProject.take(String(identity.projectId), o.clock.now());
    if (!byProject.allowed) {
      return refused(
        "rate_limited",
        "project_rate",
        `too many requests for GitLab project ${identity.projectId}`,
        {
          retryAfterS: byProject.retryAfterS,
          identity,
        },
      );
    }
    const sources = o.sources();
    if (!sources) return unavailable("not_ready", "natsbind is starting", identity);
    const ownership = await owningBinding(sources, o.projects, identity.projectId);
    if (ownership.kind === "not_ready") return unavailable("not_ready", ownership.message, identity);
    const owner = ownership.kind === "owned" ? ownership.owner : undefined;
    const decision = decide(identity, owner, req.role);
    if (!decision.allowed) {
      return refused(decision.code, decision.reason, decision.message, {
        identity,
        ...(decision.role !== undefined ? { role: decision.role } : {}),
      });
    }
    const role = decision.role.name;
    const ref = {
      binding: owner!.key,
      projectId: identity.projectId,
      ...(decision.environment !== undefined ? { environment: decision.environment } : {}),
    };
    // Cached for a second (key-cache.ts): a store read is half the cost of an issuance.
    const slot = await this.#slotKeys.get(sources.keys, ref, role);
    if (!slot) {
      if (decision.environment !== undefined && owner!.binding.spec.environments?.kind === "gitlab") {
        return refused(
          "forbidden",
          "environment_not_bound",
          `the project has no account for environment ${decision.environment}`,
          { identity, role },
        );
      }
      return unavailable(
        "account_pending",
        `the account of project ${identity.projectId} is not created yet`,
        identity,
        role,
      );
    }
    if (!(await this.#accountLive(slot.account))) {
      return unavailable(
        "account_pending",
        `the account of project ${identity.projectId} is not on the NATS servers yet`,
        identity,
        role,
      );
    }
    const signingKey = slot.roleKeys.get(role);
    if (!signingKey)
      return unavailable(
        "role_key_pending",
        `the signing key of role ${role} is not created yet`,
        identity,
        role,
      );

    const issuedAt = o.clock.now();
    const expiresAtS = userExpiry(
      issuedAt,
      req.ttlMs ?? o.config.defaultTtl,
      o.config.maxTtl,
      identity.expiresAt,
    );
    if (expiresAtS * 1000 <= issuedAt + 1000) {
      return refused("invalid_token", "expired", "the ID token expires now: get a new one", {
        identity,
        role,
      });
    }
    const userKey = req.userPublicKey === undefined ? NKeyPair.generate("user") : undefined;
    const userPublicKey = req.userPublicKey ?? userKey!.getPublicKey();
    const jwt = signUserJwt({
      identity,
      role,
      account: slot.account,
      signingKey,
      userPublicKey,
      expiresAtS,
      issuedAtS: Math.floor(issuedAt / 1000),
    });
    o.issued?.add({
      userPublicKey,
      account: slot.account,
      issuer: signingKey.getPublicKey(),
      name: jobName(identity),
      tags: jobTags(identity, role),
      expiresAt: expiresAtS * 1000,
    });
    return {
      kind: "issued",
      account: slot.account,
      role,
      userPublicKey,
      jwt,
      ...(userKey ? { userKey } : {}),
      expiresAt: expiresAtS * 1000,
      servers: o.config.servers ?? o.natsServers,
      identity,
      binding: owner!.key,
    };
  }

  /**
   * A refusal a door made itself before asking (malformed HTTP request, CONNECT without a token):
   * one audit line and the refused counter, like the issuer's own refusals.
   */
  recordDoorRefusal(
    via: IssueRequest["via"],
    refusal: { client: string; code: string; reason?: string; message: string },
  ): void {
    const { client, code, message } = refusal;
    const reason = refusal.reason ?? "request";
    this.#refusedTotal.labels({ via, code, reason }).inc();
    this.#o.audit.write({
      event: "credentials.refused",
      time: new Date(this.#o.clock.now()).toISOString(),
      via,
      client,
      code,
      reason,
      message,
    });
  }

  /** Accounts seen on the resolver are remembered (bounded): one lookup per account, not per job. */
  async #accountLive(account: string): Promise<boolean> {
    const check = this.#o.accountLive;
    if (!check || this.#live.has(account)) return true;
    if (!(await check(account))) return false;
    if (this.#live.size >= MAX_LIVE_ACCOUNTS) this.#live.clear();
    this.#live.add(account);
    return true;
  }

  #record(req: IssueRequest, result: IssueResult): void {
    const time = new Date(this.#o.clock.now()).toISOString();
    const event: CredentialAuditEvent = {
      event: result.kind === "issued" ? "credentials.issued" : "credentials.refused",
      time,
      via: req.via,
      client: req.client,
      ...identityFields(result.identity),
    };
    if (result.kind === "issued") {
      this.#issuedTotal.labels({ via: req.via, role: result.role }).inc();
      Object.assign(event, {
        role: result.role,
        account: result.account,
        binding: result.binding,
        userPublicKey: result.userPublicKey,
        expiresAt: new Date(result.expiresAt).toISOString(),
      });
    } else {
      this.#refusedTotal.labels({ via: req.via, code: result.code, reason: result.reason }).inc();
      Object.assign(event, {
        ...(result.role !== undefined
          ? { role: result.role }
          : req.role !== undefined
            ? { role: req.role }
            : {}),
        code: result.code,
        reason: result.reason,
        message: result.message,
      });
    }
    this.#o.audit.write(event);
  }
}

function identityFields(identity: CiIdentity | undefined): Partial<CredentialAuditEvent> {
  if (!identity) return {};
  return {
    projectId: identity.projectId,
    projectPath: identity.projectPath,
    pipelineId: identity.pipelineId,
    jobId: identity.jobId,
    ref: identity.ref,
    refProtected: identity.refProtected,
    user: identity.userLogin,
    ...(identity.environment ? { environment: identity.environment.name } : {}),
  };
}

function refused(
  code: Refused["code"],
  reason: string,
  message: string,
  extra: Partial<Pick<Refused, "retryAfterS" | "identity" | "role">> = {},
): Refused {
  return { kind: "refused", code, reason, message, ...extra };
}

function unavailable(reason: string, message: string, identity: CiIdentity, role?: string): Refused {
  return refused("unavailable", reason, message, {
    retryAfterS: RETRY_AFTER_UNAVAILABLE_S,
    identity,
    ...(role !== undefined ? { role } : {}),
  });
}
