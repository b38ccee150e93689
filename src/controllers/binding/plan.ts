/**
 * plan(): from the observed state of one binding to what must change. PURE: no I/O, no clock, no
 * randomness; the same observation always gives the same plan.
 *
 * Keys are not invented here: a slot without keys (or missing a role key) is listed in
 * `ensureKeys`. The reconciler applies that, re-reads the slots and plans again, so every account
 * JWT it pushes names keys that are already stored. An account is pushed only when the claims
 * hash of what it should say differs from what the resolver holds.
 */
import { accountLimits, desiredRoles } from "../../api/v1alpha1/desired.ts";
import { safeToken } from "../../api/v1alpha1/templates.ts";
import type { NatsBinding } from "../../api/v1alpha1/types.ts";
import type { GitLabProject } from "../../gitlab/port.ts";
import type { AccountRef, StoredAccount } from "../../keystore/port.ts";
import { refKey } from "../../keystore/port.ts";
import { accountClaims, claimsHash, type DesiredAccount, type JwtClaims } from "../../nats/claims.ts";
import { describeError } from "../../errors.ts";

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
  resolverHashes: ReadonlyMap<string, string>;
  /** Operator signing public key that issues the account JWTs. */
  issuer: string;
  /**
   * Optional memo of built claims per account, reused across plans when nothing that feeds the
   * claims changed (building and hashing 10,000 accounts costs ~0.25 s). It only saves work: the
   * plan is the same with or without it.
   */
  memo?: Map<string, { inputs: string; hash: string }>;
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
}

function desiredRefs(input: PlanInput): Array<{ ref: AccountRef; project: GitLabProject }> {
  const spec = input.binding.spec;
  const projects = input.projects.filter((p) => !input.heldElsewhere?.has(p.id)).sort((a, b) => a.id - b.id);
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
    signingKeys: roles.map((r) => ({ key: slot.roles[r.role]!, role: r.role, template: r.template })),
  };
}

export function plan(input: PlanInput): Plan {
  const result: Plan = {
    ensureKeys: [],
    push: [],
    upToDate: [],
    remove: [],
    retain: [],
    conflict: [],
    problems: [],
  };
  const slots = new Map(input.slots.map((s) => [refKey(s.ref), s]));
  const roleNames = input.binding.spec.roles.map((r) => r.name);
  const wanted = new Set<string>();
  const specKey = `${input.issuer}\u0000${input.bindingKey}\u0000${JSON.stringify(input.binding.spec)}`;

  for (const { ref, project } of desiredRefs(input)) {
    wanted.add(refKey(ref));
    const slot = slots.get(refKey(ref));
    const missingRoles = roleNames.filter((r) => !slot?.roles[r]);
    if (!slot || missingRoles.length > 0) {
      result.ensureKeys.push({ ref, roles: roleNames });
      continue;
    }
    const inputs = `${specKey}\u0000${JSON.stringify([project, slot.roles, ref.environment ?? null])}`;
    const build = (): JwtClaims => accountClaims(desiredAccount(input, project, slot), input.issuer);
    let hash =
      input.memo?.get(slot.account)?.inputs === inputs ? input.memo.get(slot.account)!.hash : undefined;
    if (hash === undefined) {
      try {
        hash = claimsHash(build());
      } catch (err) {
        input.memo?.delete(slot.account);
        result.problems.push({ ref, message: describeError(err) });
        continue;
      }
      input.memo?.set(slot.account, { inputs, hash });
    }
    const held = input.resolverHashes.get(slot.account);
    if (held === hash) result.upToDate.push({ ref, account: slot.account, hash });
    else
      result.push.push({
        ref,
        account: slot.account,
        claims: build,
        hash,
        reason: held === undefined ? "missing" : "stale",
      });
  }

  for (const slot of [...input.slots].sort((a, b) => refKey(a.ref).localeCompare(refKey(b.ref)))) {
    if (wanted.has(refKey(slot.ref))) continue;
    if (input.heldElsewhere?.has(slot.ref.projectId)) {
      result.conflict.push(slot);
      continue;
    }
    (input.binding.spec.deletionPolicy === "Delete" ? result.remove : result.retain).push(slot);
  }
  return result;
}
