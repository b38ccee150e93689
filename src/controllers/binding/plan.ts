/**
 * plan(): from the observed state of one binding to what must change. PURE: no I/O, no clock, no
 * randomness; the same observation always gives the same plan.
 *
 * Keys are not invented here: a slot without keys (or missing a role key) is listed in
 * `ensureKeys`. The reconciler applies that, re-reads the slots and plans again, so every account
 * JWT it pushes names keys that are already stored. An account is pushed only when the claims
 * hash of what it should say differs from what the resolver holds.
 *
 * Ownership (ownership.ts): an account the resolver holds is pushed over or removed only when the
 * JWT there is natsbind's own for the same slot; otherwise it is listed in `notOwned` and left
 * alone. Slots the key store does not trust are never planned for (no keys made in their place).
 */
import { accountLimits, desiredRoles } from "../../api/v1alpha1/desired.ts";
import { safeToken } from "../../api/v1alpha1/templates.ts";
import type { NatsBinding } from "../../api/v1alpha1/types.ts";
import type { GitLabProject } from "../../gitlab/port.ts";
import type { AccountRef, StoredAccount, UntrustedSlot } from "../../keystore/port.ts";
import { listedRoleKeys, refKey } from "../../keystore/port.ts";
import { accountClaims, claimsHash, type DesiredAccount, type JwtClaims } from "../../nats/claims.ts";
import { describeError } from "../../errors.ts";
import { createHash } from "node:crypto";
import { notOwnedProblem, type HeldOwner } from "./ownership.ts";

export interface PlanInput {
  /** The binding's key, "namespace/name" (or "name" in local mode). */
  bindingKey: string;
  binding: Pick<NatsBinding, "spec">;
  /** The projects in the binding's scope (a complete inventory snapshot). */
  projects: readonly GitLabProject[];
  /**
   * Ids of selected projects an older binding holds (see overlap.ts): no account is wanted for
   * them, and this binding's existing slots for them go to `conflict`, never to remove or retain.
   */
  heldElsewhere?: ReadonlySet<number>;
  /** Available GitLab environments per project id; read only for environments.fromGitLab. */
  environments: ReadonlyMap<number, readonly string[]>;
  /** The binding's stored slots (public keys). */
  slots: readonly StoredAccount[];
  /** account public key -> claims hash the resolver holds (absent: the resolver has none). */
  resolverHashes: Pick<ReadonlyMap<string, string>, "get" | "has">;
  /**
   * account public key -> whose the JWT the resolver holds is (ownership.ts heldOwner). An account
   * the resolver holds with a different hash is pushed over or removed only when this says it is
   * the slot's own; without an entry it counts as not natsbind's.
   */
  resolverOwners?: Pick<ReadonlyMap<string, HeldOwner>, "get">;
  /** Slots the key store did not trust (KeyStore.list): reported, and no keys made in their place. */
  untrusted?: readonly UntrustedSlot[];
  /** Operator signing public key that issues the account JWTs. */
  issuer: string;
  /**
   * Optional memo of built claims per account, reused across plans when nothing that feeds the
   * claims changed (building and hashing 10,000 accounts costs ~0.25 s). It only saves work: the
   * plan is the same with or without it.
   */
  memo?: Map<string, PlanMemoEntry>;
}

/**
 * What plan() remembers of an account's claims: their hash, and what they were built from. The
 * project and slot are the objects themselves: the inventory and the key store replace them on a
 * change and never change one in place, so the same objects (and spec) mean the same claims,
 * without serialising anything; other objects are compared by a digest of their serialisation
 * (a digest, not the text: ~1 KB per account is 100 MB for a binding of 100,000).
 */
export interface PlanMemoEntry {
  inputs: string;
  hash: string;
  spec: string;
  project: GitLabProject;
  slot: StoredAccount;
}

export interface PlannedPush {
  ref: AccountRef;
  account: string;
  /**
   * Builds the account's claims (pure, deterministic). A function rather than a value so a plan
   * of 10,000 pushes does not hold 10,000 claims objects: apply builds each one when it pushes.
   */
  claims: () => JwtClaims;
  hash: string;
  reason: "missing" | "stale";
}

export interface Plan {
  /** Slots to create, or to complete with role keys, before anything can be pushed. */
  ensureKeys: Array<{ ref: AccountRef; roles: string[] }>;
  push: PlannedPush[];
  upToDate: Array<{ ref: AccountRef; account: string; hash: string }>;
  /** Slots no longer desired, deletionPolicy Delete: delete from the resolver, then the keys. */
  remove: StoredAccount[];
  /** Slots no longer desired, deletionPolicy Retain: left as they are (reported in status). */
  retain: StoredAccount[];
  /**
   * Slots of projects an older binding holds: left exactly as they are (not pushed, removed,
   * released or retained) whatever the deletionPolicy; reported in status. A conflict deletes nothing.
   */
  conflict: StoredAccount[];
  /** Accounts that cannot be built (e.g. a subject that does not render); the rest proceeds. */
  problems: Array<{ ref: AccountRef; message: string }>;
  /** Accounts on the resolver that are not natsbind's for their slot: not pushed, not removed. */
  notOwned: Array<{ ref: AccountRef; account: string; message: string }>;
  /** Slots the key store did not trust, as it reported them. */
  untrusted: UntrustedSlot[];
}

function desiredRefs(input: PlanInput): Array<{ ref: AccountRef; project: GitLabProject }> {
  const spec = input.binding.spec;
  const held = input.heldElsewhere;
  const projects =
    held && held.size > 0 ? input.projects.filter((p) => !held.has(p.id)) : [...input.projects];
  // An inventory listing is in id order already: sorting is then one pass.
  if (!projects.every((p, i) => i === 0 || projects[i - 1]!.id < p.id)) projects.sort((a, b) => a.id - b.id);
  if (spec.accountPer === "project") {
    return projects.map((project) => ({
      ref: { binding: input.bindingKey, projectId: project.id },
      project,
    }));
  }
  const out: Array<{ ref: AccountRef; project: GitLabProject }> = [];
  for (const project of projects) {
    const names =
      spec.environments?.kind === "list"
        ? spec.environments.names
        : (input.environments.get(project.id) ?? []);
    for (const environment of [...new Set(names)].sort()) {
      out.push({ ref: { binding: input.bindingKey, projectId: project.id, environment }, project });
    }
  }
  return out;
}

/** What the account of `project` (and environment) should say, with the slot's keys. */
export function desiredAccount(
  input: Pick<PlanInput, "bindingKey" | "binding">,
  project: GitLabProject,
  slot: StoredAccount,
): DesiredAccount {
  const environment = slot.ref.environment;
  const roles = desiredRoles(input.binding, {
    project,
    ...(environment !== undefined ? { environment } : {}),
  });
  // Tags can feed {{account-tag(x)}} templates on the server: anything not an id is a safe token.
  const tags = [
    `gitlab-project-id:${project.id}`,
    `gitlab-namespace-id:${project.namespaceId}`,
    `natsbind-binding:${safeToken(input.bindingKey)}`,
    ...(environment !== undefined ? [`environment:${safeToken(environment)}`] : []),
  ];
  return {
    publicKey: slot.account,
    name:
      environment !== undefined ? `${project.pathWithNamespace} (${environment})` : project.pathWithNamespace,
    description: `GitLab project ${project.pathWithNamespace} (id ${project.id})${
      environment !== undefined ? `, environment ${environment}` : ""
    }, managed by natsbind binding ${input.bindingKey}`,
    tags,
    limits: accountLimits(input.binding),
    ...(project.webUrl ? { infoUrl: project.webUrl } : {}),
    // Every key of a role the slot lists (active, prepared, retiring) carries the role's template,
    // in key order: activating a prepared key changes which one issues, not the JWT (no push).
    signingKeys: roles.flatMap((r) =>
      listedRoleKeys(slot, r.role)
        .sort()
        .map((key) => ({ key, role: r.role, template: r.template })),
    ),
    ...(slot.revocations && Object.keys(slot.revocations).length > 0
      ? { revocations: slot.revocations }
      : {}),
  };
}

/** A plan that does nothing. */
export function emptyPlan(): Plan {
  return {
    ensureKeys: [],
    push: [],
    upToDate: [],
    remove: [],
    retain: [],
    conflict: [],
    problems: [],
    notOwned: [],
    untrusted: [],
  };
}

/**
 * A binding's slots by ref, keyed by project id (a number) rather than by a ref key string. Of
 * two slots with the same ref the last wins, as a Map by ref key did.
 */
function indexSlots(list: readonly StoredAccount[]): { get(ref: AccountRef): StoredAccount | undefined } {
  const byProject = new Map<number, StoredAccount[]>();
  for (const slot of list) {
    const same = byProject.get(slot.ref.projectId);
    if (!same) byProject.set(slot.ref.projectId, [slot]);
    else same.push(slot);
  }
  return {
    get(ref) {
      const same = byProject.get(ref.projectId);
      if (!same) return undefined;
      for (let i = same.length - 1; i >= 0; i--) {
        const slot = same[i]!;
        if (slot.ref.environment === ref.environment && slot.ref.binding === ref.binding) return slot;
      }
      return undefined;
    },
  };
}

export function plan(input: PlanInput): Plan {
  const result: Plan = { ...emptyPlan(), untrusted: [...(input.untrusted ?? [])] };
  const untrusted = new Set(result.untrusted.flatMap((u) => (u.ref ? [refKey(u.ref)] : [])));
  const slots = indexSlots(input.slots);
  const roleNames = input.binding.spec.roles.map((r) => r.name);
  /** Slots of desired refs (by object: no key strings for 100,000 slots). */
  const wanted = new Set<StoredAccount>();
  let specKey = `${input.issuer}\u0000${input.bindingKey}\u0000${JSON.stringify(input.binding.spec)}`;
  // The memo's own copy, when equal: its entries then match by reference, not character by character.
  const remembered = input.memo?.values().next().value?.spec;
  if (remembered === specKey) specKey = remembered;

  const notOwned = (ref: AccountRef, account: string): string | undefined => {
    if (!input.resolverHashes.has(account)) return undefined; // absent: nobody's account to take
    const owner = input.resolverOwners?.get(account) ?? { problem: "natsbind has not checked its owner" };
    return notOwnedProblem(account, input.bindingKey, ref, owner);
  };

  for (const { ref, project } of desiredRefs(input)) {
    const slot = slots.get(ref);
    if (slot) wanted.add(slot);
    // A forged or broken slot in this place: its keys are not used, and none are made to replace it.
    if (untrusted.size > 0 && untrusted.has(refKey(ref))) continue;
    if (!slot || roleNames.some((r) => !slot.roles[r])) {
      result.ensureKeys.push({ ref, roles: roleNames });
      continue;
    }
    const build = (): JwtClaims => accountClaims(desiredAccount(input, project, slot), input.issuer);
    const known = input.memo?.get(slot.account);
    let hash =
      known && known.spec === specKey && known.project === project && known.slot === slot
        ? known.hash
        : undefined;
    if (hash === undefined) {
      const inputs = createHash("sha256")
        .update(specKey)
        .update("\u0000")
        .update(
          JSON.stringify([
            project,
            slot.roles,
            ref.environment ?? null,
            slot.rotation ?? null,
            slot.revocations ?? null,
          ]),
        )
        .digest("base64");
      if (known?.inputs === inputs) hash = known.hash;
      else {
        try {
          hash = claimsHash(build());
        } catch (err) {
          input.memo?.delete(slot.account);
          result.problems.push({ ref, message: describeError(err) });
          continue;
        }
      }
      input.memo?.set(slot.account, { inputs, hash, spec: specKey, project, slot });
    }
    const held = input.resolverHashes.get(slot.account);
    const foreign = held === hash ? undefined : notOwned(ref, slot.account);
    if (held === hash) result.upToDate.push({ ref, account: slot.account, hash });
    else if (foreign) result.notOwned.push({ ref, account: slot.account, message: foreign });
    else
      result.push.push({
        ref,
        account: slot.account,
        claims: build,
        hash,
        reason: held === undefined ? "missing" : "stale",
      });
  }

  // Only slots no longer wanted are left: sorted (few, usually none), not every slot.
  const unwanted = input.slots.filter((slot) => !wanted.has(slots.get(slot.ref)!));
  for (const slot of unwanted.sort((a, b) => refKey(a.ref).localeCompare(refKey(b.ref)))) {
    if (input.heldElsewhere?.has(slot.ref.projectId)) {
      result.conflict.push(slot);
      continue;
    }
    if (input.binding.spec.deletionPolicy !== "Delete") {
      result.retain.push(slot);
      continue;
    }
    const foreign = notOwned(slot.ref, slot.account);
    if (foreign) result.notOwned.push({ ref: slot.ref, account: slot.account, message: foreign });
    else result.remove.push(slot);
  }
  return result;
}
