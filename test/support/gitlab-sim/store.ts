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

/** Options of createGroup (the simulator's public createGroup takes the same). */
export interface NewGroup {
  name: string;
  path?: string;
  parentId?: number;
  visibility?: SimVisibility;
  description?: string;
}

/** Options of createProject. */
export interface NewProject {
  name: string;
  path?: string;
  groupId: number;
  visibility?: SimVisibility;
  description?: string;
  defaultBranch?: string;
}

/** Options of addEnvironment. */
export interface NewEnvironment {
  name: string;
  state?: SimEnvironmentState;
  tier?: string;
  externalUrl?: string;
}

/** Options of renameGroup and renameProject: what is not given stays. */
export interface Rename {
  name?: string;
  path?: string;
}

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

function addTo(index: Map<number, Set<number>>, key: number, id: number): void {
  let set = index.get(key);
  if (!set) index.set(key, (set = new Set()));
  set.add(id);
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
  /** Routes below each group (lower-case path -> subgroup or project); top-level groups under null. */
  private readonly routes = new Map<number | null, Map<string, RouteRef>>();
  /** Redirect routes of projects (lower-case old full path -> project id), as left by renames. */
  private readonly projectRedirects = new Map<string, number>();
  private namespaceSeq = 0;
  private projectSeq = 0;
  private environmentSeq = 0;
  private lastTimeMs = 0;
  /**
   * Bumped by every change that can alter a listing (groups and projects created, renamed,
   * transferred or deleted): the simulator keeps sorted listings until it changes.
   */
  version = 0;

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

  /** The group and its ancestors, nearest first. */
  private lineage(g: SimGroup | undefined): SimGroup[] {
    const out: SimGroup[] = [];
    for (let cur = g; cur; cur = cur.parentId === null ? undefined : this.groups.get(cur.parentId)) {
      out.push(cur);
    }
    return out;
  }

  groupFullPath(g: SimGroup): string {
    return this.lineage(g)
      .reverse()
      .map((x) => x.path)
      .join("/");
  }

  groupFullName(g: SimGroup): string {
    return this.lineage(g)
      .reverse()
      .map((x) => x.name)
      .join(" / ");
  }

  projectFullPath(p: SimProject): string {
    return `${this.groupFullPath(this.group(p.groupId))}/${p.path}`;
  }

  /** The group and its ancestors, nearest first. */
  selfAndAncestors(groupId: number): number[] {
    return this.lineage(this.groups.get(groupId)).map((x) => x.id);
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

  /** The group's projects and, with `withSubgroups`, those of every group below it. */
  projectsOf(groupId: number, withSubgroups: boolean): SimProject[] {
    const groupIds = withSubgroups ? [groupId, ...this.descendantGroupIds(groupId)] : [groupId];
    return groupIds.flatMap((gid) => this.directProjectIds(gid).map((pid) => this.project(pid)));
  }

  private resolveRoute(fullPath: string): RouteRef | undefined {
    let ref: RouteRef | undefined;
    for (const segment of fullPath.toLowerCase().split("/")) {
      if (ref && ref.kind !== "group") return undefined;
      ref = this.routes.get(ref ? ref.id : null)?.get(segment);
      if (!ref) return undefined;
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

  private claimRoute(parentId: number | null, path: string, ref: RouteRef, fullPath: string): void {
    checkPath(path);
    if (parentId === null && ref.kind !== "group") throw new Error("gitlab-sim: a project needs a group");
    let table = this.routes.get(parentId);
    if (!table) this.routes.set(parentId, (table = new Map()));
    const key = path.toLowerCase();
    if (table.has(key)) throw new Error(`gitlab-sim: path ${JSON.stringify(fullPath)} is taken`);
    table.set(key, ref);
    // A live route wins over a redirect: GitLab deletes the redirect when the path is reclaimed.
    this.projectRedirects.delete(fullPath.toLowerCase());
    this.dropRedirectsBelow(fullPath);
  }

  private releaseRoute(parentId: number | null, path: string): void {
    this.routes.get(parentId)?.delete(path.toLowerCase());
  }

  /**
   * Renames the route of a group or project in place. A change of case only keeps the route (and
   * any redirects); returns whether the lower-case path, and so the route, changed.
   */
  private renameRoute(
    parentId: number | null,
    oldPath: string,
    newPath: string,
    ref: RouteRef,
    newFullPath: string,
  ): boolean {
    if (newPath.toLowerCase() === oldPath.toLowerCase()) {
      checkPath(newPath);
      return false;
    }
    this.claimRoute(parentId, newPath, ref, newFullPath);
    this.releaseRoute(parentId, oldPath);
    return true;
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

  /** System hook payload of group events; `extra` (old paths, parent fields) goes last. */
  private groupPayload(
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

  /** project_create / project_destroy: system hooks, and group hooks of the group and its ancestors. */
  private projectEvents(p: SimProject, action: "create" | "destroy"): SimEvent[] {
    const eventName = `project_${action}`;
    return [
      { target: "system", payload: this.projectSystemPayload(p, eventName) },
      {
        target: "group",
        header: "Project Hook",
        groupIds: this.selfAndAncestors(p.groupId),
        payload: this.projectGroupHookPayload(p, eventName),
      },
    ];
  }

  /** group_create / group_destroy (system hooks) and, below a parent, subgroup_create / subgroup_destroy. */
  private groupEvents(g: SimGroup, action: "create" | "destroy"): SimEvent[] {
    const events: SimEvent[] = [{ target: "system", payload: this.groupPayload(g, `group_${action}`) }];
    if (g.parentId !== null) {
      const parent = this.group(g.parentId);
      events.push({
        target: "group",
        header: "Subgroup Hook",
        groupIds: this.selfAndAncestors(parent.id),
        payload: this.groupPayload(g, `subgroup_${action}`, {
          parent_group_id: parent.id,
          parent_name: parent.name,
          parent_path: parent.path,
          parent_full_path: this.groupFullPath(parent),
        }),
      });
    }
    return events;
  }

  // ---------------------------------------------------------------- mutations

  private insertGroup(o: NewGroup): SimGroup {
    this.version += 1;
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
    if (parentId !== null) addTo(this.childGroups, parentId, id);
    return group;
  }

  createGroup(o: NewGroup): SimGroup {
    const group = this.insertGroup(o);
    this.sink(this.groupEvents(group, "create"));
    return group;
  }

  private insertProject(o: NewProject): SimProject {
    this.version += 1;
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
    addTo(this.groupProjects, group.id, id);
    return project;
  }

  createProject(o: NewProject): SimProject {
    const project = this.insertProject(o);
    this.sink(this.projectEvents(project, "create"));
    return project;
  }

  /**
   * Path change: project_rename (with old_path_with_namespace) and a redirect from the old path.
   * Name-only change: project_update (GitLab fires project_update unless the path changed).
   */
  renameProject(id: number, o: Rename): void {
    this.version += 1;
    const p = this.project(id);
    const oldFullPath = this.projectFullPath(p);
    const newPath = o.path ?? p.path;
    const newName = o.name ?? p.name;
    const pathChanged = newPath !== p.path;
    if (!pathChanged && newName === p.name) return;
    if (pathChanged) {
      const newFullPath = `${this.groupFullPath(this.group(p.groupId))}/${newPath}`;
      const moved = this.renameRoute(p.groupId, p.path, newPath, { kind: "project", id }, newFullPath);
      p.path = newPath;
      if (moved) this.addProjectRedirect(oldFullPath, id);
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
    this.version += 1;
    const p = this.project(id);
    if (p.groupId === newGroupId)
      throw new Error(`gitlab-sim: project ${id} is already in group ${newGroupId}`);
    const target = this.group(newGroupId);
    const oldFullPath = this.projectFullPath(p);
    this.claimRoute(target.id, p.path, { kind: "project", id }, `${this.groupFullPath(target)}/${p.path}`);
    this.releaseRoute(p.groupId, p.path);
    this.groupProjects.get(p.groupId)?.delete(id);
    addTo(this.groupProjects, target.id, id);
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
    this.version += 1;
    const events = this.projectEvents(p, "destroy");
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
  renameGroup(id: number, o: Rename): void {
    this.version += 1;
    const g = this.group(id);
    const newPath = o.path ?? g.path;
    const newName = o.name ?? g.name;
    if (newPath === g.path && newName === g.name) return;
    const oldPath = g.path;
    const oldFullPath = this.groupFullPath(g);
    if (newPath !== g.path) {
      const parentPrefix = g.parentId === null ? "" : `${this.groupFullPath(this.group(g.parentId))}/`;
      const oldProjectPaths = this.projectsOf(id, true).map((p) => [p.id, this.projectFullPath(p)] as const);
      const moved = this.renameRoute(
        g.parentId,
        oldPath,
        newPath,
        { kind: "group", id },
        parentPrefix + newPath,
      );
      g.path = newPath;
      if (moved) for (const [pid, old] of oldProjectPaths) this.addProjectRedirect(old, pid);
    }
    g.name = newName;
    g.updatedAt = this.now();
    this.sink([
      {
        target: "system",
        payload: this.groupPayload(g, "group_rename", {
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
    this.version += 1;
    const g = this.group(id);
    const events: SimEvent[] = [];
    const removed: number[] = [];
    const destroy = (group: SimGroup): void => {
      for (const pid of this.directProjectIds(group.id))
        events.push(...this.removeProject(this.project(pid)));
      for (const child of this.directSubgroupIds(group.id)) destroy(this.group(child));
      events.push(...this.groupEvents(group, "destroy"));
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

  addEnvironment(projectId: number, o: NewEnvironment): SimEnvironment {
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
    const root = this.insertGroup({ name: o.rootPath, path: o.rootPath });
    const events = this.groupEvents(root, "create");
    const groups: SimGroup[] = [root];
    let level: SimGroup[] = [root];
    for (let d = 1; d <= depth; d++) {
      const next: SimGroup[] = [];
      for (const parent of level) {
        for (let i = 1; i <= fanout; i++) {
          const created = this.insertGroup({
            name: `${parent.name} ${d}.${i}`,
            path: `g${d}-${i}`,
            parentId: parent.id,
          });
          events.push(...this.groupEvents(created, "create"));
          next.push(created);
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
      events.push(...this.projectEvents(project, "create"));
      projects.push(project);
    }
    this.sink(events);
    return { root, groups, projects };
  }
}
