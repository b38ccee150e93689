/**
 * A binding's status, as natsbind reports it (local status files, later the CRD's status
 * subresource). Condition names and reasons are constants here, in one place. Public data only:
 * account public keys and claims hashes, never seeds, creds or user JWTs.
 */

export const CONDITION = {
  Ready: "Ready",
  GitLabSynced: "GitLabSynced",
  ResolverSynced: "ResolverSynced",
} as const;
export type ConditionType = (typeof CONDITION)[keyof typeof CONDITION];

export const REASON = {
  Reconciled: "Reconciled",
  InvalidSpec: "InvalidSpec",
  Conflict: "Conflict",
  /** No NatsBindingPolicy allows it (Kubernetes mode): nothing was read, created or deleted. */
  Forbidden: "Forbidden",
  GitLabError: "GitLabError",
  ResolverError: "ResolverError",
  KeyStoreError: "KeyStoreError",
  AccountProblems: "AccountProblems",
  /** An account on the resolver is not natsbind's for its slot: not pushed over, not deleted. */
  AccountNotOwned: "AccountNotOwned",
  /** A key slot's seeds do not derive the keys it names (or it is broken): not used. */
  UntrustedKeys: "UntrustedKeys",
  Progressing: "Progressing",
} as const;

export interface Condition {
  type: ConditionType;
  status: "True" | "False" | "Unknown";
  reason: string;
  message: string;
  observedGeneration: number;
  /** ISO 8601, set when status changes. */
  lastTransitionTime: string;
}

export interface AccountSummary {
  projectId: number;
  projectPath: string;
  environment?: string;
  account: string;
  claimsHash?: string;
  /** ISO 8601 of the last push natsbind made, if any. */
  pushedAt?: string;
  /** Conflict: an older binding holds the project; this account is left exactly as it is. */
  state: "Ready" | "Pending" | "Retained" | "Conflict" | "Problem";
  message?: string;
  /** ISO 8601: when the oldest active role signing key of the account started issuing. */
  keysActiveSince?: string;
  /** Rotation phase of its role keys: active (nothing in flight), prepared, or retiring. */
  keyPhase?: "active" | "prepared" | "retiring";
}

/** status.rotation: signing-key rotation of the binding's accounts (src/rotation/). */
export interface RotationStatus {
  /** ISO 8601 of the next scheduled rotation of any account, if one is scheduled. */
  nextRotation?: string;
  /** ISO 8601: the oldest active role key's start (its age is what rotation bounds). */
  oldestActiveKeySince?: string;
  /** Accounts per phase (an account with any prepared key counts as prepared, then retiring). */
  accounts: { active: number; prepared: number; retiring: number };
  /** Live connections on replaced keys kept past their overlap (see gracePeriod). */
  waitingConnections: number;
  /** The last rotation step that failed (kept until another fails or natsbind restarts). */
  lastFailure?: { time: string; message: string };
  /** The last emergency rotation: when, how many role keys (per account and role), connections cut off. */
  lastEmergency?: { time: string; accounts: number; connectionsClosed: number };
}

export const MAX_ACCOUNT_SUMMARIES = 200;

export interface BindingStatus {
  observedGeneration: number;
  conditions: Condition[];
  counts: {
    projects: number;
    accounts: number;
    pushed: number;
    upToDate: number;
    retained: number;
    problems: number;
  };
  /** At most MAX_ACCOUNT_SUMMARIES entries; `accountsTruncated` says how many were left out. */
  accounts: AccountSummary[];
  accountsTruncated?: number;
  rotation?: RotationStatus;
}

/** Sets a condition, keeping lastTransitionTime when its status did not change. */
export function setCondition(
  conditions: readonly Condition[],
  next: Omit<Condition, "lastTransitionTime">,
  nowIso: string,
): Condition[] {
  const previous = conditions.find((c) => c.type === next.type);
  const lastTransitionTime =
    previous && previous.status === next.status ? previous.lastTransitionTime : nowIso;
  return [...conditions.filter((c) => c.type !== next.type), { ...next, lastTransitionTime }].sort((a, b) =>
    a.type.localeCompare(b.type),
  );
}
