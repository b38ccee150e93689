/**
 * The GitLab side of the NatsBindingPolicy gate, over GitLabPort: the ancestor chain of group ids
 * of what a binding selects, and the resolution of a policy's granted paths to group ids.
 *
 * Ids, not paths: a path is resolved once, when natsbind first sees it, and the id is recorded in
 * the policy's status; later the id is checked (still there? renamed?) but the path is not looked
 * up again, so a group deleted and re-created at the same path (a new id) is not granted.
 */
import type { GitLabSelector } from "../api/v1alpha1/types.ts";
import type { PolicyGroupStatus } from "../api/v1alpha1/policy.ts";
import { GitLabNotFoundError } from "../gitlab/errors.ts";
import type { GitLabPort } from "../gitlab/port.ts";

/** GitLab nests groups at most 20 deep; a longer chain means a cycle or a lying server. */
export const MAX_GROUP_DEPTH = 20;

async function groupOrUndefined(gitlab: GitLabPort, ref: number | string) {
  try {
    return await gitlab.group(ref);
  } catch (err) {
    if (err instanceof GitLabNotFoundError) return undefined;
    throw err;
  }
}

/** Parent links of groups by id, remembered for a while (a transfer is seen once an entry expires). */
export interface ParentCache {
  get(groupId: number): number | null | undefined;
  set(groupId: number, parentId: number | null): void;
}

/**
 * Group ids from what `selector` selects up to its top-level group; empty when the group or project
 * does not exist (or natsbind's token cannot see it), or the project lives in a user's namespace.
 * The selector itself is always looked up afresh (a path may now name another group); parent links
 * above it may come from `parents`. Other GitLab failures throw (the reconcile is retried).
 */
export async function ancestorChain(
  gitlab: GitLabPort,
  selector: GitLabSelector,
  parents?: ParentCache,
): Promise<number[]> {
  let start: number | string;
  if (selector.kind === "group") {
    start = selector.group;
  } else {
    const project = await gitlab.project(selector.project);
    if (!project) return [];
    start = project.namespaceId;
  }
  const first = await groupOrUndefined(gitlab, start);
  if (!first) return [];
  parents?.set(first.id, first.parentId);
  const chain: number[] = [first.id];
  let next = first.parentId;
  while (next !== null) {
    if (chain.length >= MAX_GROUP_DEPTH) return []; // not a tree: grant nothing
    if (chain.includes(next)) return []; // a cycle: not a tree, grant nothing
    const id: number = next;
    let parent = parents?.get(id);
    if (parent === undefined) {
      const group = await groupOrUndefined(gitlab, id);
      // A parent the token cannot see ends the chain (grants above it are not seen: refuse, not guess).
      if (!group) return chain;
      parent = group.parentId;
      parents?.set(id, parent);
    }
    chain.push(id);
    next = parent;
  }
  return chain;
}

export interface ResolvedGroups {
  /** status.groups: every path of the spec that has an id, in spec order. */
  groups: PolicyGroupStatus[];
  /** Paths that grant nothing now, each with why (no group path of another tenant: admin input). */
  problems: string[];
}

/**
 * The policy's status.groups for `paths`: a path already in `previous` keeps its id (the group is
 * looked up by id: renamed -> currentPath, gone -> no currentPath and a problem); a new path is
 * resolved now. Entries for paths no longer in the spec are dropped. GitLab failures other than
 * not-found throw, leaving the recorded ids as they were.
 */
export async function resolvePolicyGroups(
  gitlab: GitLabPort,
  paths: readonly string[],
  previous: readonly PolicyGroupStatus[],
): Promise<ResolvedGroups> {
  const known = new Map(previous.map((g) => [g.path, g]));
  const groups: PolicyGroupStatus[] = [];
  const problems: string[] = [];
  for (const path of paths) {
    const recorded = known.get(path);
    if (recorded) {
      const group = await groupOrUndefined(gitlab, recorded.id);
      if (group) {
        groups.push({ path, id: recorded.id, currentPath: group.fullPath });
      } else {
        groups.push({ path, id: recorded.id });
        problems.push(
          `${path}: group ${recorded.id} no longer exists; a group now at that path is not granted ` +
            "(remove the path from spec.gitlab.groups, then add it again to grant the new group)",
        );
      }
      continue;
    }
    const group = await groupOrUndefined(gitlab, path);
    if (group) groups.push({ path, id: group.id, currentPath: group.fullPath });
    else
      problems.push(`${path}: no such GitLab group (or natsbind's token cannot see it); nothing granted yet`);
  }
  return { groups, problems };
}
