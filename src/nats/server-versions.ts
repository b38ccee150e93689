/**
 * Which nats-server versions natsbind supports, and what needs a newer one (README, "Supported
 * nats-server versions"; docs/nats-topologies.md). Pure: versions come from the servers' own
 * answers on the system account (`server.ver` of every $SYS reply).
 *
 * Each minimum was found by running natsbind's tests against real servers (test/integration/
 * versions.test.ts runs them on the oldest of each line):
 * - 2.10.0: the oldest line natsbind supports and tests (2.10.29): resolver, provisioning, the
 *   exchange, revocations, connections, operator signing-key rotation.
 * - 2.11.0: a NATS function inside a subject token (`build.p{{tag(x)}}.>`): 2.10 expands a
 *   function only when it is a whole token and keeps any other as literal text, so the user is
 *   silently denied what the role allows (seen on 2.10.29; nats-server server/auth.go).
 * - 2.11.2: `default_sentinel`, which lets auth-callout clients connect with nothing but a token;
 *   2.10 refuses the option ("unknown field") and its clients must present the sentinel's creds.
 */

export interface ServerVersion {
  /** server_name (or id). */
  server: string;
  /** As the server reports it: "2.10.29", "2.12.0-RC.1", "2.15.0-dev". */
  version: string;
}

/** The oldest nats-server natsbind supports. */
export const MIN_SUPPORTED_VERSION = "2.10.0";

export const FEATURE_VERSIONS = {
  /** A NATS template function that is only part of a subject token. */
  functionInsideToken: "2.11.0",
  /** `default_sentinel` (the auth callout for clients with only a token). */
  defaultSentinel: "2.11.2",
} as const;

type Triple = [number, number, number];

/** major.minor.patch of a version string (a leading "v" and any suffix ignored); undefined if none. */
export function parseVersion(version: string): Triple | undefined {
  const m = /^v?(\d{1,4})\.(\d{1,4})\.(\d{1,6})/.exec(version.trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

/** Is `version` at least `minimum`? A version that does not parse is not. */
export function atLeast(version: string, minimum: string): boolean {
  const v = parseVersion(version);
  const min = parseVersion(minimum);
  if (!v || !min) return false;
  for (let i = 0; i < 3; i++) if (v[i] !== min[i]) return v[i]! > min[i]!;
  return true;
}

/** The servers below `minimum`, sorted by name. */
export function serversBelow(servers: ServerVersion[], minimum: string): ServerVersion[] {
  return servers
    .filter((s) => !atLeast(s.version, minimum))
    .sort((a, b) => (a.server < b.server ? -1 : a.server > b.server ? 1 : 0));
}

/** "east-0 (2.10.29), leaf-1 (2.10.29)"; at most 5 named, then "and N more". */
export function describeServers(servers: ServerVersion[]): string {
  const named = servers.slice(0, 5).map((s) => `${s.server} (${s.version || "no version"})`);
  if (servers.length > 5) named.push(`and ${servers.length - 5} more`);
  return named.join(", ");
}

/** A scoped signing key's template subject that puts a NATS function inside a token. */
export interface FunctionInsideToken {
  role: string;
  subject: string;
}

const FUNCTION = /\{\{[^{}]*\}\}/;
const WHOLE_TOKEN_FUNCTION = /^\{\{[^{}]*\}\}$/;

/**
 * Template subjects of an account JWT's scoped signing keys in which a `{{...}}` function is not
 * a whole subject token: what nats-server < 2.11.0 does not expand.
 */
export function functionsInsideTokens(accountNats: Record<string, unknown>): FunctionInsideToken[] {
  const found: FunctionInsideToken[] = [];
  const keys = Array.isArray(accountNats.signing_keys) ? (accountNats.signing_keys as unknown[]) : [];
  for (const entry of keys) {
    if (!entry || typeof entry !== "object") continue;
    const { role, template } = entry as { role?: unknown; template?: unknown };
    if (!template || typeof template !== "object") continue;
    for (const direction of ["pub", "sub"] as const) {
      const lists = (template as Record<string, unknown>)[direction];
      if (!lists || typeof lists !== "object") continue;
      for (const kind of ["allow", "deny"] as const) {
        const subjects = (lists as Record<string, unknown>)[kind];
        if (!Array.isArray(subjects)) continue;
        for (const subject of subjects) {
          if (typeof subject !== "string" || !FUNCTION.test(subject)) continue;
          const partial = subject
            .split(".")
            .some((token) => token.includes("{{") && !WHOLE_TOKEN_FUNCTION.test(token));
          if (partial) found.push({ role: typeof role === "string" ? role : "", subject });
        }
      }
    }
  }
  return found;
}
