/**
 * Which scopes a webhook signal concerns. Pure: a signal is a hint anyone with the webhook secret
 * can send (every group owner with a group hook knows it), so it may only make natsbind look again
 * where the signal could have changed something, never everywhere.
 *
 * A scope knows, from its last listing, the ids of its root groups and of every group holding one
 * of its projects, its root full paths, and its project ids. A group signal concerns it when the
 * group id is one of those (or, for subgroup events, the parent's id), or when the group's full
 * path (old or new) is a root, below one, or above one (renaming an ancestor moves every path).
 * A project signal concerns it when the project id is held, when GitLab's `project_namespace_id`
 * (the parent namespace) is a known group, or when its path (old or new) lies inside a root. Paths
 * are compared case-insensitively, as GitLab routes them; empty subgroups are only known by path,
 * which real deliveries always carry.
 */
import type { GitLabSignal } from "./signals.ts";

export interface ScopeView {
  /** Root groups the scope selects (paths lower-case). */
  roots: ReadonlyArray<{ id: number; fullPath: string }>;
  /** Only projects directly in the roots count. */
  directOnly: boolean;
  /** Root group ids and the namespace ids of the projects listed. */
  groupIds: { has(id: number): boolean };
  /** Project ids the scope holds now. */
  projectIds: { has(id: number): boolean };
  /** Single projects the scope names: configured ids and the ids they resolved to. */
  singleIds: { has(id: number): boolean };
  /** Single projects the scope names: configured paths and current paths (lower-case). */
  singlePaths: readonly string[];
}

/** `path` is `ancestor` or below it. */
function within(path: string, ancestor: string): boolean {
  return path === ancestor || path.startsWith(`${ancestor}/`);
}

function parentPath(path: string): string {
  const i = path.lastIndexOf("/");
  return i === -1 ? "" : path.slice(0, i);
}

function lower(paths: Array<string | undefined>): string[] {
  return paths.filter((p): p is string => p !== undefined).map((p) => p.toLowerCase());
}

export function signalConcerns(signal: GitLabSignal, view: ScopeView): boolean {
  if (signal.kind === "group") {
    if (view.groupIds.has(signal.groupId)) return true;
    const subgroupEvent = signal.event === "subgroup_create" || signal.event === "subgroup_destroy";
    if (subgroupEvent && !view.directOnly && signal.parentGroupId !== undefined)
      if (view.groupIds.has(signal.parentGroupId)) return true;
    for (const path of lower([signal.fullPath, signal.oldFullPath])) {
      for (const root of view.roots) {
        // An ancestor (or the root itself) changes the root's paths; a descendant matters only
        // when subgroups are selected.
        if (within(root.fullPath, path)) return true;
        if (!view.directOnly && within(path, root.fullPath)) return true;
      }
      if (view.singlePaths.some((p) => within(p, path))) return true;
    }
    return false;
  }
  if (view.projectIds.has(signal.projectId) || view.singleIds.has(signal.projectId)) return true;
  if (signal.namespaceId !== undefined && view.groupIds.has(signal.namespaceId)) {
    if (!view.directOnly || view.roots.some((r) => r.id === signal.namespaceId)) return true;
  }
  for (const path of lower([signal.path, signal.oldPath])) {
    const parent = parentPath(path);
    for (const root of view.roots) {
      if (view.directOnly ? parent === root.fullPath : within(parent, root.fullPath)) return true;
    }
    if (view.singlePaths.includes(path)) return true;
  }
  return false;
}
