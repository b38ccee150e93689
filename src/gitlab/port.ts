/**
 * What natsbind needs from GitLab: the narrow port the inventory and controller depend on.
 * Records carry immutable ids; paths and names are attributes that can change.
 */

export interface GitLabGroup {
  id: number;
  name: string;
  path: string;
  fullPath: string;
  parentId: number | null;
}

export interface GitLabProject {
  id: number;
  name: string;
  path: string;
  pathWithNamespace: string;
  namespaceId: number;
  namespaceFullPath: string;
  visibility: "private" | "internal" | "public";
  archived: boolean;
  /** The project's page, when GitLab sent one. */
  webUrl?: string;
}

export interface GitLabEnvironment {
  id: number;
  name: string;
  slug: string;
  state: string;
  tier: string | null;
}

export interface GitLabPort {
  /** A group by numeric id or full path; GitLabNotFoundError when absent or invisible. */
  group(idOrPath: number | string): Promise<GitLabGroup>;
  /** A project by numeric id or full path; undefined when GitLab answers 404. */
  project(idOrPath: number | string): Promise<GitLabProject | undefined>;
  /** Every project of the group and its subgroups, all pages; throws rather than return part. */
  groupProjects(groupId: number): Promise<GitLabProject[]>;
  /** Every descendant group, all pages. */
  descendantGroups(groupId: number): Promise<GitLabGroup[]>;
  /** The project's available environments. */
  environments(projectId: number): Promise<GitLabEnvironment[]>;
}
