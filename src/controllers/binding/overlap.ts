/**
 * Overlapping bindings (PURE). A project selected by several bindings belongs to the oldest: by
 * creation time (Kubernetes metadata.creationTimestamp; local mode: the file's explicit
 * metadata.creationTimestamp, else when natsbind first saw the binding), ties broken by key. Age,
 * not name, decides, so a binding named "aaa" created later takes nothing. The younger binding
 * reports the conflict and leaves its own accounts for those projects exactly as they are.
 */

/** A binding's age for ordering: creation time (ms since epoch; undefined = unknown) and key. */
export interface BindingAge {
  key: string;
  createdAt: number | undefined;
}

/**
 * Negative when `a` is older than `b`. An unknown creation time counts as the youngest: a binding
 * whose age natsbind cannot tell never takes projects from one whose age it can.
 */
export function compareAge(a: BindingAge, b: BindingAge): number {
  const ta = a.createdAt ?? Number.POSITIVE_INFINITY;
  const tb = b.createdAt ?? Number.POSITIVE_INFINITY;
  if (ta !== tb) return ta < tb ? -1 : 1;
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

function namespaceOf(key: string): string {
  const slash = key.indexOf("/");
  return slash < 0 ? "" : key.slice(0, slash);
}

function nameOf(key: string): string {
  return key.slice(key.indexOf("/") + 1);
}

/**
 * How `self`'s status names the binding `holder`: by name when it is in the same namespace (local
 * keys without a namespace share one), else only "another binding", so a tenant's status never
 * tells the names of other tenants' bindings.
 */
export function holderLabel(self: string, holder: string): string {
  return namespaceOf(self) === namespaceOf(holder) ? `binding ${nameOf(holder)}` : "another binding";
}

/** The Ready message of a binding whose selected projects (id -> holder key) an older binding holds. */
export function conflictMessage(self: string, conflicts: ReadonlyMap<number, string>, max = 5): string {
  const listed = [...conflicts]
    .sort(([a], [b]) => a - b)
    .slice(0, max)
    .map(([id, holder]) => `${id} (${holderLabel(self, holder)})`)
    .join(", ");
  const more = conflicts.size > max ? `, and ${conflicts.size - max} more` : "";
  return (
    `${conflicts.size} selected project(s) belong to an older binding and are left to it: ${listed}${more}; ` +
    "this binding's own accounts for them (if any) are left as they are"
  );
}
