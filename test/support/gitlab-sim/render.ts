// JSON shapes of the REST API v4 entities the simulator serves (API::Entities::Group, Project,
// BasicProjectDetails, Environment), with the fields GitLab documents; constant values where the
// simulator has no model for a field.
import type { SimStore } from "./store.ts";
import type { SimEnvironment, SimGroup, SimProject } from "./types.ts";

export function groupJson(store: SimStore, base: string, g: SimGroup): Record<string, unknown> {
  const fullPath = store.groupFullPath(g);
  return {
    id: g.id,
    web_url: `${base}/groups/${fullPath}`,
    name: g.name,
    path: g.path,
    description: g.description,
    visibility: g.visibility,
    share_with_group_lock: false,
    require_two_factor_authentication: false,
    two_factor_grace_period: 48,
    project_creation_level: "developer",
    auto_devops_enabled: null,
    subgroup_creation_level: "maintainer",
    emails_disabled: false,
    emails_enabled: true,
    mentions_disabled: null,
    lfs_enabled: true,
    default_branch: null,
    default_branch_protection: 2,
    avatar_url: null,
    request_access_enabled: true,
    full_name: store.groupFullName(g),
    full_path: fullPath,
    created_at: g.createdAt,
    parent_id: g.parentId,
    organization_id: 1,
    shared_runners_setting: "enabled",
    ldap_cn: null,
    ldap_access: null,
    wiki_access_level: "enabled",
    marked_for_deletion_on: null,
  };
}

function namespaceJson(store: SimStore, base: string, g: SimGroup): Record<string, unknown> {
  const fullPath = store.groupFullPath(g);
  return {
    id: g.id,
    name: g.name,
    path: g.path,
    kind: "group",
    full_path: fullPath,
    parent_id: g.parentId,
    avatar_url: null,
    web_url: `${base}/groups/${fullPath}`,
  };
}

/** `simple`: the reduced shape of `?simple=true` (no visibility, archived, _links, ...). */
export function projectJson(
  store: SimStore,
  base: string,
  p: SimProject,
  simple = false,
): Record<string, unknown> {
  const group = store.group(p.groupId);
  const pathWithNamespace = store.projectFullPath(p);
  const webUrl = `${base}/${pathWithNamespace}`;
  const host = new URL(base).host;
  const basic: Record<string, unknown> = {
    id: p.id,
    description: p.description,
    name: p.name,
    name_with_namespace: `${store.groupFullName(group)} / ${p.name}`,
    path: p.path,
    path_with_namespace: pathWithNamespace,
    created_at: p.createdAt,
    default_branch: p.defaultBranch,
    tag_list: [],
    topics: [],
    ssh_url_to_repo: `git@${new URL(base).hostname}:${pathWithNamespace}.git`,
    http_url_to_repo: `${webUrl}.git`,
    web_url: webUrl,
    readme_url: `${webUrl}/-/blob/${p.defaultBranch}/README.md`,
    forks_count: 0,
    avatar_url: null,
    star_count: 0,
    last_activity_at: p.updatedAt,
    namespace: namespaceJson(store, base, group),
  };
  if (simple) return basic;
  const api = `${base}/api/v4/projects/${p.id}`;
  return {
    ...basic,
    container_registry_image_prefix: `${host}/${pathWithNamespace}`,
    _links: {
      self: api,
      issues: `${api}/issues`,
      merge_requests: `${api}/merge_requests`,
      repo_branches: `${api}/repository/branches`,
      labels: `${api}/labels`,
      events: `${api}/events`,
      members: `${api}/members`,
      cluster_agents: `${api}/cluster_agents`,
    },
    packages_enabled: true,
    empty_repo: false,
    archived: p.archived,
    visibility: p.visibility,
    resolve_outdated_diff_discussions: false,
    container_registry_enabled: true,
    issues_enabled: true,
    merge_requests_enabled: true,
    wiki_enabled: true,
    jobs_enabled: true,
    snippets_enabled: true,
    shared_runners_enabled: true,
    creator_id: 1,
    import_status: "none",
    open_issues_count: 0,
    updated_at: p.updatedAt,
    ci_default_git_depth: 20,
    ci_config_path: null,
    ci_id_token_sub_claim_components: ["project_path", "ref_type", "ref"],
    shared_with_groups: [],
    only_allow_merge_if_pipeline_succeeds: false,
    request_access_enabled: true,
    marked_for_deletion_on: null,
  };
}

export function environmentJson(e: SimEnvironment): Record<string, unknown> {
  return {
    id: e.id,
    name: e.name,
    slug: e.slug,
    description: null,
    external_url: e.externalUrl,
    created_at: e.createdAt,
    updated_at: e.updatedAt,
    tier: e.tier,
    state: e.state,
    auto_stop_at: null,
    auto_stop_setting: "always",
    kubernetes_namespace: null,
    flux_resource_path: null,
  };
}
