// The simulator's state: groups, projects, environments, routes and redirects, and the webhook
// events every mutation causes (handed to a sink; hooks.ts turns them into deliveries).
import type {
  PopulateOptions,
  PopulateResult,
  SimEnvironment,
  SimEnvironmentState,
  SimGroup,
  SimProject,
  SimVisibility,
} from "./types.ts";

/** A webhook event before it is matched to hooks. */
export type SimEvent =
  | { target: "system"; payload: Record<string, unknown> }
  | {
      target: "group";
      header: "Project Hook" | "Subgroup Hook";
      /** The group whose hooks, and whose ancestors' hooks, receive it (self_and_ancestors). */
      groupIds: number[];
      payload: Record<string, unknown>;
    };

/** One simulator mutation's events, in the order GitLab would fire them. */
export type EventSink = (events: SimEvent[]) => void;

type RouteRef = { kind: "group" | "project"; id: number };

/** GitLab's path rule, simplified: starts with a letter, digit or '_', then [A-Za-z0-9_.-]. */
const PATH_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;

const OWNERS = [{ name: "Administrator", email: "admin@example.com" }];

export function pathFromName(name: string): string {
  const path = name
    .trim()
    .toLowerCase()
    .replace(/[^a-z0-9_.-]+/g, "-")
    .replace(/-{2,}/g, "-")
    .replace(/^[-.]+|[-.]+$/g, "");
  return path === "" ? "x" : path;
}

function checkPath(path: string): void {
  if (!PATH_RE.test(path) || /\.(git|atom)$/i.test(path)) {
    throw new Error(`gitlab-sim: invalid path ${JSON.stringify(path)}`);
  }
}

/** Hook payload timestamps have no milliseconds: 2012-07-21T07:30:54Z. */
function hookTime(iso: string): string {
  return iso.replace(/\.\d{3}Z$/, "Z");
}

/** GitLab's environment tier guess from the name (Environment#guess_tier). */
export function guessTier(name: string): string {
  if (/(dev|review|trunk)/i.test(name)) return "development";
  if (/(test|tst|int|ac(ce|)pt|qa|qc|control|quality)/i.test(name)) return "testing";
  if (/(st(a|)g|mod(e|)l|pre|demo|non)/i.test(name)) return "staging";
  if (/(pr(o|)d|live)/i.test(name)) return "production";
  return "other";
}

/** GitLab's environment slug: [a-z0-9-], starts with a letter, <= 24 chars, suffix when changed. */
export function environmentSlug(name: string, id: number): string {
  let slug = name.toLowerCase().replace(/[^a-z0-9]/g, "-");
  if (!/^[a-z]/.test(slug)) slug = `env-${slug}`;
  slug = slug.replace(/-{2,}/g, "-");
  if (slug.length > 24 || slug !== name) {
    slug = slug.slice(0, 17);
    if (!slug.endsWith("-")) slug += "-";
    // GitLab appends 6 random [a-z0-9]; derived from the id here so it is stable.
    const suffix = ((id * 2654435761) % 2176782336).toString(36).padStart(6, "0").slice(-6);
    return slug + suffix;
  }
  return slug.replace(/-$/, "");
}

export class SimStore {
  readonly groups = new Map<number, SimGroup>();
  readonly projects = new Map<number, SimProject>();
  private readonly childGroups = new Map<number, Set<number>>();
  private readonly groupProjects = new Map<number, Set<number>>();
  /** Routes below each group (lower-case path -> subgroup or project); top-level groups in rootRoutes. */
  private readonly routes = new Map<number, Map<string, RouteRef>>();
  private readonly rootRoutes = new Map<string, number>();
  /** Redirect routes of projects (lower-case old full path -> project id), as left by renames. */
  private readonly projectRedirects = new Map<string, number>();
  private namespaceSeq = 0;
  private projectSeq = 0;
  private environmentSeq = 0;
  private lastTimeMs = 0;

  private readonly sink: EventSink;

  constructor(sink: EventSink) {
    this.sink = sink;
  }

  /** A strictly increasing timestamp, so created_at order equals creation order. */
  private now(): string {
    const t = Math.max(Date.now(), this.lastTimeMs + 1);
    this.lastTimeMs = t;
    return new Date(t).toISOString();
  }

  // ---------------------------------------------------------------- lookups

  group(id: number): SimGroup {
    const g = this.groups.get(id);
    if (!g) throw new Error(`gitlab-sim: no group ${id}`);
    return g;
  }

  project(id: number): SimProject {
    const p = this.projects.get(id);
    if (!p) throw new Error(`gitlab-sim: no project ${id}`);
    return p;
  }

  groupFullPath(g: SimGroup): string {
    const parts: string[] = [];
    for (
      let cur: SimGroup | undefined = g;
      cur;
      cur = cur.parentId === null ? undefined : this.groups.get(cur.parentId)
    ) {
      parts.push(cur.path);
    }
    return parts.reverse().join("/");
  }

  groupFullName(g: SimGroup): string {
    const parts: string[] = [];
    for (
      let cur: SimGroup | undefined = g;
      cur;
      cur = cur.parentId === null ? undefined : this.groups.get(cur.parentId)
    ) {
      parts.push(cur.name);
    }
    return parts.reverse().join(" / ");
  }

  projectFullPath(p: SimProject): string {
    return `${this.groupFullPath(this.group(p.groupId))}/${p.path}`;
  }

  /** The group and its ancestors, nearest first. */
  selfAndAncestors(groupId: number): number[] {
    const ids: number[] = [];
    for (
      let cur = this.groups.get(groupId);
      cur;
      cur = cur.parentId === null ? undefined : this.groups.get(cur.parentId)
    ) {
      ids.push(cur.id);
    }
    return ids;
  }

  /** Every group below `groupId` (not itself), breadth-first. */
  descendantGroupIds(groupId: number): number[] {
    const out: number[] = [];
    const queue = [groupId];
    for (let i = 0; i < queue.length; i++) {
      const id = queue[i] as number;
      for (const child of this.childGroups.get(id) ?? []) {
        out.push(child);
        queue.push(child);
      }
    }
    return out;
  }

  directSubgroupIds(groupId: number): number[] {
    return [...(this.childGroups.get(groupId) ?? [])];
  }

  directProjectIds(groupId: number): number[] {
    return [...(this.groupProjects.get(groupId) ?? [])];
  }

  private resolveRoute(fullPath: string): RouteRef | undefined {
    const segments = fullPath.toLowerCase().split("/");
    const first = segments[0];
    if (first === undefined || first === "") return undefined;
    const rootId = this.rootRoutes.get(first);
    if (rootId === undefined) return undefined;
    let ref: RouteRef = { kind: "group", id: rootId };
    for (let i = 1; i < segments.length; i++) {
      if (ref.kind !== "group") return undefined;
      const next = this.routes.get(ref.id)?.get(segments[i] as string);
      if (!next) return undefined;
      ref = next;
    }
    return ref;
  }

  /** Case-insensitive full path lookup; no redirects (GitLab's API find_group does not follow them). */
  groupByFullPath(fullPath: string): SimGroup | undefined {
    const ref = this.resolveRoute(fullPath);
    return ref?.kind === "group" ? this.groups.get(ref.id) : undefined;
  }

  /** Case-insensitive; follows redirect routes left by renames and transfers (like find_project). */
  projectByFullPath(fullPath: string): SimProject | undefined {
    const ref = this.resolveRoute(fullPath);
    if (ref?.kind === "project") return this.projects.get(ref.id);
    if (ref) return undefined;
    const redirected = this.projectRedirects.get(fullPath.toLowerCase());
    return redirected === undefined ? undefined : this.projects.get(redirected);
  }

  // ---------------------------------------------------------------- routes

  private routeTable(parentId: number | null): Map<string, RouteRef> | Map<string, number> {
    if (parentId === null) return this.rootRoutes;
    let table = this.routes.get(parentId);
    if (!table) {
      table = new Map();
      this.routes.set(parentId, table);
    }
    return table;
  }

  private claimRoute(parentId: number | null, path: string, ref: RouteRef, fullPath: string): void {
    checkPath(path);
    const key = path.toLowerCase();
    if (parentId === null) {
      if (ref.kind !== "group") throw new Error("gitlab-sim: a project needs a group");
      if (this.rootRoutes.has(key)) throw new Error(`gitlab-sim: path ${JSON.stringify(path)} is taken`);
      this.rootRoutes.set(key, ref.id);
    } else {
      const table = this.routeTable(parentId) as Map<string, RouteRef>;
      if (table.has(key)) {
        throw new Error(`gitlab-sim: path ${JSON.stringify(fullPath)} is taken`);
      }
      table.set(key, ref);
    }
    // A live route wins over a redirect: GitLab deletes the redirect when the path is reclaimed.
    this.projectRedirects.delete(fullPath.toLowerCase());
    this.dropRedirectsBelow(fullPath);
  }

  private releaseRoute(parentId: number | null, path: string): void {
    this.routeTable(parentId).delete(path.toLowerCase());
  }

  private dropRedirectsBelow(fullPath: string): void {
    if (this.projectRedirects.size === 0) return;
    const prefix = `${fullPath.toLowerCase()}/`;
    for (const key of [...this.projectRedirects.keys()]) {
      if (key.startsWith(prefix)) this.projectRedirects.delete(key);
    }
  }

  private addProjectRedirect(oldFullPath: string, projectId: number): void {
    this.projectRedirects.set(oldFullPath.toLowerCase(), projectId);
  }

  // ---------------------------------------------------------------- payloads

  private projectSystemPayload(
    p: SimProject,
    eventName: string,
    extra: Record<string, unknown> = {},
  ): Record<string, unknown> {
    const group = this.group(p.groupId);
    return {
      created_at: hookTime(p.createdAt),
      updated_at: hookTime(p.updatedAt),
      event_name: eventName,
      name: p.name,
      owner_email: "",
      owner_name: group.name,
      owners: OWNERS.map((o) => ({ ...o })),
      path: p.path,
      path_with_namespace: this.projectFullPath(p),
      project_id: p.id,
      project_namespace_id: p.projectNamespaceId,
      project_visibility: p.visibility,
      ...extra,
    };
  }

  private projectGroupHookPayload(p: SimProject, eventName: string): Record<string, unknown> {
    return {
      event_name: eventName,
      created_at: hookTime(p.createdAt),
      updated_at: hookTime(p.updatedAt),
      name: p.name,
      path: p.path,
      path_with_namespace: this.projectFullPath(p),
      project_id: p.id,
      project_namespace_id: p.projectNamespaceId,
      owners: OWNERS.map((o) => ({ ...o })),
      project_visibility: p.visibility,
    };
  }

  private groupSystemPayload(
    g: SimGroup,
    eventName: string,
    extra: Record<string, unknown> = {},
  ): Record<string, unknown> {
    return {
      created_at: hookTime(g.createdAt),
      updated_at: hookTime(g.updatedAt),
      event_name: eventName,
      name: g.name,
      path: g.path,
      full_path: this.groupFullPath(g),
      group_id: g.id,
      ...extra,
    };
  }

  private subgroupPayload(g: SimGroup, eventName: string): Record<string, unknown> {
    const parent = this.group(g.parentId as number);
    return {
      created_at: hookTime(g.createdAt),
      updated_at: hookTime(g.updatedAt),
      event_name: eventName,
      name: g.name,
      path: g.path,
      full_path: this.groupFullPath(g),
      group_id: g.id,
      parent_group_id: parent.id,
      parent_name: parent.name,
      parent_path: parent.path,
      parent_full_path: this.groupFullPath(parent),
    };
  }

  private projectCreatedEvents(p: SimProject): SimEvent[] {
    return [
      { target: "system", payload: this.projectSystemPayload(p, "project_create") },
      {
        target: "group",
        header: "Project Hook",
        groupIds: this.selfAndAncestors(p.groupId),
        payload: this.projectGroupHookPayload(p, "project_create"),
      },
    ];
  }

  private projectDestroyedEvents(p: SimProject): SimEvent[] {
    return [
      { target: "system", payload: this.projectSystemPayload(p, "project_destroy") },
      {
        target: "group",
        header: "Project Hook",
        groupIds: this.selfAndAncestors(p.groupId),
        payload: this.projectGroupHookPayload(p, "project_destroy"),
      },
    ];
  }

  // ---------------------------------------------------------------- mutations

  private insertGroup(o: {
    name: string;
    path?: string;
    parentId?: number | null;
    visibility?: SimVisibility;
    description?: string;
  }): { group: SimGroup; events: SimEvent[] } {
    const parentId = o.parentId ?? null;
    if (parentId !== null) this.group(parentId);
    const path = o.path ?? pathFromName(o.name);
    const parentPath = parentId === null ? "" : `${this.groupFullPath(this.group(parentId))}/`;
    const id = this.namespaceSeq + 1;
    this.claimRoute(parentId, path, { kind: "group", id }, parentPath + path);
    this.namespaceSeq = id;
    const at = this.now();
    const group: SimGroup = {
      id,
      name: o.name,
      path,
      parentId,
      visibility: o.visibility ?? "private",
      description: o.description ?? "",
      createdAt: at,
      updatedAt: at,
    };
    this.groups.set(id, group);
    if (parentId !== null) {
      let set = this.childGroups.get(parentId);
      if (!set) this.childGroups.set(parentId, (set = new Set()));
      set.add(id);
    }
    const events: SimEvent[] = [
      { target: "system", payload: this.groupSystemPayload(group, "group_create") },
    ];
    if (parentId !== null) {
      events.push({
        target: "group",
        header: "Subgroup Hook",
        groupIds: this.selfAndAncestors(parentId),
        payload: this.subgroupPayload(group, "subgroup_create"),
      });
    }
    return { group, events };
  }

  createGroup(o: {
    name: string;
    path?: string;
    parentId?: number;
    visibility?: SimVisibility;
    description?: string;
  }): SimGroup {
    const { group, events } = this.insertGroup(o);
    this.sink(events);
    return group;
  }

  private insertProject(o: {
    name: string;
    path?: string;
    groupId: number;
    visibility?: SimVisibility;
    description?: string;
    defaultBranch?: string;
  }): SimProject {
    const group = this.group(o.groupId);
    const path = o.path ?? pathFromName(o.name);
    const id = this.projectSeq + 1;
    this.claimRoute(group.id, path, { kind: "project", id }, `${this.groupFullPath(group)}/${path}`);
    this.projectSeq = id;
    this.namespaceSeq += 1;
    const at = this.now();
    const project: SimProject = {
      id,
      name: o.name,
      path,
      groupId: group.id,
      visibility: o.visibility ?? "private",
      environments: [],
      projectNamespaceId: this.namespaceSeq,
      description: o.description ?? "",
      defaultBranch: o.defaultBranch ?? "main",
      archived: false,
      createdAt: at,
      updatedAt: at,
    };
    this.projects.set(id, project);
    let set = this.groupProjects.get(group.id);
    if (!set) this.groupProjects.set(group.id, (set = new Set()));
    set.add(id);
    return project;
  }

  createProject(o: {
    name: string;
    path?: string;
    groupId: number;
    visibility?: SimVisibility;
    description?: string;
    defaultBranch?: string;
  }): SimProject {
    const project = this.insertProject(o);
    this.sink(this.projectCreatedEvents(project));
    return project;
  }

  /**
   * Path change: project_rename (with old_path_with_namespace) and a redirect from the old path.
   * Name-only change: project_update (GitLab fires project_update unless the path changed).
   */
  renameProject(id: number, o: { name?: string; path?: string }): void {
    const p = this.project(id);
    const oldFullPath = this.projectFullPath(p);
    const newPath = o.path ?? p.path;
    const newName = o.name ?? p.name;
    const pathChanged = newPath !== p.path;
    if (!pathChanged && newName === p.name) return;
    if (pathChanged) {
      const group = this.group(p.groupId);
      const groupPath = this.groupFullPath(group);
      if (newPath.toLowerCase() === p.path.toLowerCase()) {
        checkPath(newPath);
      } else {
        this.claimRoute(group.id, newPath, { kind: "project", id }, `${groupPath}/${newPath}`);
        this.releaseRoute(group.id, p.path);
      }
      (this.routeTable(group.id) as Map<string, RouteRef>).set(newPath.toLowerCase(), {
        kind: "project",
        id,
      });
      p.path = newPath;
      if (this.projectFullPath(p).toLowerCase() !== oldFullPath.toLowerCase())
        this.addProjectRedirect(oldFullPath, id);
    }
    p.name = newName;
    p.updatedAt = this.now();
    this.sink([
      {
        target: "system",
        payload: pathChanged
          ? this.projectSystemPayload(p, "project_rename", { old_path_with_namespace: oldFullPath })
          : this.projectSystemPayload(p, "project_update"),
      },
    ]);
  }

  /** project_transfer (system hook only) and a redirect from the old path. */
  transferProject(id: number, newGroupId: number): void {
    const p = this.project(id);
    if (p.groupId === newGroupId)
      throw new Error(`gitlab-sim: project ${id} is already in group ${newGroupId}`);
    const target = this.group(newGroupId);
    const oldFullPath = this.projectFullPath(p);
    this.claimRoute(target.id, p.path, { kind: "project", id }, `${this.groupFullPath(target)}/${p.path}`);
    this.releaseRoute(p.groupId, p.path);
    this.groupProjects.get(p.groupId)?.delete(id);
    let set = this.groupProjects.get(target.id);
    if (!set) this.groupProjects.set(target.id, (set = new Set()));
    set.add(id);
    p.groupId = target.id;
    p.updatedAt = this.now();
    this.addProjectRedirect(oldFullPath, id);
    this.sink([
      {
        target: "system",
        payload: this.projectSystemPayload(p, "project_transfer", { old_path_with_namespace: oldFullPath }),
      },
    ]);
  }

  private removeProject(p: SimProject): SimEvent[] {
    const events = this.projectDestroyedEvents(p);
    this.releaseRoute(p.groupId, p.path);
    this.groupProjects.get(p.groupId)?.delete(p.id);
    this.projects.delete(p.id);
    for (const [key, target] of [...this.projectRedirects]) {
      if (target === p.id) this.projectRedirects.delete(key);
    }
    return events;
  }

  deleteProject(id: number): void {
    this.sink(this.removeProject(this.project(id)));
  }

  /**
   * group_rename (system hook) on any name or path change; a path change moves every descendant's
   * full path and leaves redirects for the descendant projects.
   */
  renameGroup(id: number, o: { name?: string; path?: string }): void {
    const g = this.group(id);
    const newPath = o.path ?? g.path;
    const newName = o.name ?? g.name;
    if (newPath === g.path && newName === g.name) return;
    const oldPath = g.path;
    const oldFullPath = this.groupFullPath(g);
    if (newPath !== g.path) {
      const parentPrefix = g.parentId === null ? "" : `${this.groupFullPath(this.group(g.parentId))}/`;
      const descendantProjects = [id, ...this.descendantGroupIds(id)].flatMap((gid) =>
        this.directProjectIds(gid).map((pid) => this.project(pid)),
      );
      const oldProjectPaths = descendantProjects.map((p) => [p.id, this.projectFullPath(p)] as const);
      if (newPath.toLowerCase() !== oldPath.toLowerCase()) {
        this.claimRoute(g.parentId, newPath, { kind: "group", id }, parentPrefix + newPath);
        this.releaseRoute(g.parentId, oldPath);
      } else {
        checkPath(newPath);
      }
      if (g.parentId === null) this.rootRoutes.set(newPath.toLowerCase(), id);
      else
        (this.routeTable(g.parentId) as Map<string, RouteRef>).set(newPath.toLowerCase(), {
          kind: "group",
          id,
        });
      g.path = newPath;
      if (newPath.toLowerCase() !== oldPath.toLowerCase()) {
        for (const [pid, old] of oldProjectPaths) this.addProjectRedirect(old, pid);
      }
    }
    g.name = newName;
    g.updatedAt = this.now();
    this.sink([
      {
        target: "system",
        payload: this.groupSystemPayload(g, "group_rename", {
          old_path: oldPath,
          old_full_path: oldFullPath,
        }),
      },
    ]);
  }

  /**
   * Deletes the group with its subgroups and projects, in the order of GitLab's Groups::DestroyService:
   * a group's projects, then its subgroups (recursively), then the group. Every project fires
   * project_destroy, every group group_destroy (system hooks) and, below a parent, subgroup_destroy.
   */
  deleteGroup(id: number): { removedGroupIds: number[] } {
    const g = this.group(id);
    const events: SimEvent[] = [];
    const removed: number[] = [];
    const destroy = (group: SimGroup): void => {
      for (const pid of this.directProjectIds(group.id))
        events.push(...this.removeProject(this.project(pid)));
      for (const child of this.directSubgroupIds(group.id)) destroy(this.group(child));
      events.push({ target: "system", payload: this.groupSystemPayload(group, "group_destroy") });
      if (group.parentId !== null) {
        events.push({
          target: "group",
          header: "Subgroup Hook",
          groupIds: this.selfAndAncestors(group.parentId),
          payload: this.subgroupPayload(group, "subgroup_destroy"),
        });
      }
      this.releaseRoute(group.parentId, group.path);
      if (group.parentId !== null) this.childGroups.get(group.parentId)?.delete(group.id);
      this.childGroups.delete(group.id);
      this.groupProjects.delete(group.id);
      this.routes.delete(group.id);
      this.groups.delete(group.id);
      removed.push(group.id);
    };
    destroy(g);
    this.sink(events);
    return { removedGroupIds: removed };
  }

  addEnvironment(
    projectId: number,
    o: { name: string; state?: SimEnvironmentState; tier?: string; externalUrl?: string },
  ): SimEnvironment {
    const p = this.project(projectId);
    if (p.environments.some((e) => e.name === o.name)) {
      throw new Error(`gitlab-sim: project ${projectId} already has environment ${JSON.stringify(o.name)}`);
    }
    const id = ++this.environmentSeq;
    const at = this.now();
    const env: SimEnvironment = {
      id,
      name: o.name,
      state: o.state ?? "available",
      tier: o.tier ?? guessTier(o.name),
      slug: environmentSlug(o.name, id),
      externalUrl: o.externalUrl ?? null,
      createdAt: at,
      updatedAt: at,
    };
    p.environments.push(env);
    return env;
  }

  setEnvironmentState(projectId: number, environmentId: number, state: SimEnvironmentState): void {
    const env = this.project(projectId).environments.find((e) => e.id === environmentId);
    if (!env) throw new Error(`gitlab-sim: project ${projectId} has no environment ${environmentId}`);
    env.state = state;
    env.updatedAt = this.now();
  }

  /** Creates `rootPath` with `depth` levels of `fanout` subgroups and spreads the projects over all of them. */
  populate(o: PopulateOptions): PopulateResult {
    const depth = o.depth ?? 2;
    const fanout = o.fanout ?? 5;
    if (!Number.isInteger(o.projects) || o.projects < 0) throw new Error("gitlab-sim: projects must be >= 0");
    if (!Number.isInteger(depth) || depth < 0 || !Number.isInteger(fanout) || fanout < 1) {
      throw new Error("gitlab-sim: depth must be >= 0 and fanout >= 1");
    }
    const events: SimEvent[] = [];
    const root = this.insertGroup({ name: o.rootPath, path: o.rootPath });
    events.push(...root.events);
    const groups: SimGroup[] = [root.group];
    let level: SimGroup[] = [root.group];
    for (let d = 1; d <= depth; d++) {
      const next: SimGroup[] = [];
      for (const parent of level) {
        for (let i = 1; i <= fanout; i++) {
          const created = this.insertGroup({
            name: `${parent.name} ${d}.${i}`,
            path: `g${d}-${i}`,
            parentId: parent.id,
          });
          events.push(...created.events);
          next.push(created.group);
        }
      }
      groups.push(...next);
      level = next;
    }
    const projects: SimProject[] = [];
    for (let i = 0; i < o.projects; i++) {
      const group = groups[i % groups.length] as SimGroup;
      const project = this.insertProject({
        name: `Project ${i + 1}`,
        path: `project-${i + 1}`,
        groupId: group.id,
      });
      events.push(...this.projectCreatedEvents(project));
      projects.push(project);
    }
    this.sink(events);
    return { root: root.group, groups, projects };
  }
}
