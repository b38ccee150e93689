/**
 * From a validated binding to the claims inputs of one account: pure, no I/O, no clock.
 */
import type { AccountLimits, PermissionTemplate, SubjectPermission } from "../../nats/claims.ts";
import { renderSubject, type TemplateVars } from "./templates.ts";
import type { NatsBinding, SubjectRules } from "./types.ts";

export interface DesiredRole {
  /** The role name; one scoped signing key per role. */
  role: string;
  template: PermissionTemplate;
}

function render(subjects: readonly string[], vars: TemplateVars): string[] {
  // Two templates may render alike (e.g. a literal and a variable); keep the first, in order.
  return [...new Set(subjects.map((s) => renderSubject(s, vars)))];
}

function permission(rules: SubjectRules, vars: TemplateVars): SubjectPermission | undefined {
  const out: SubjectPermission = {};
  const allow = render(rules.allow, vars);
  const deny = render(rules.deny, vars);
  if (allow.length) out.allow = allow;
  if (deny.length) out.deny = deny;
  return allow.length || deny.length ? out : undefined;
}

/**
 * The permission template of each role, with controller variables rendered for one account
 * (project, and environment when accounts are per environment), in the binding's role order.
 * Throws a SubjectTemplateError (terminal) when a subject cannot render to a valid subject.
 */
export function desiredRoles(binding: Pick<NatsBinding, "spec">, vars: TemplateVars): DesiredRole[] {
  return binding.spec.roles.map((role) => {
    const template: PermissionTemplate = {};
    const pub = permission(role.publish, vars);
    const sub = permission(role.subscribe, vars);
    if (pub) template.pub = pub;
    if (sub) template.sub = sub;
    if (role.responses) template.responses = { max: role.responses.max, ttlMs: role.responses.ttlMs };
    return { role: role.name, template };
  });
}

/**
 * The account limits of the binding, in claims.ts's shape: absent fields stay absent (unlimited);
 * JetStream is present only when configured, with absent storage as 0 and absent counts unlimited.
 */
export function accountLimits(binding: Pick<NatsBinding, "spec">): AccountLimits {
  const l = binding.spec.limits;
  const out: AccountLimits = {};
  if (l.connections !== undefined) out.connections = l.connections;
  if (l.subscriptions !== undefined) out.subscriptions = l.subscriptions;
  if (l.payload !== undefined) out.payload = l.payload;
  if (l.data !== undefined) out.data = l.data;
  if (l.jetstream) {
    out.jetstream = {
      memoryStorage: l.jetstream.memory,
      diskStorage: l.jetstream.disk,
      streams: l.jetstream.streams ?? -1,
      consumers: l.jetstream.consumers ?? -1,
    };
  }
  return out;
}
