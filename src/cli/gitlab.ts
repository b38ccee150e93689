/** `natsbind gitlab projects`: what a scope selects in GitLab right now (a dry run of the inventory). */
import { parseArgs } from "node:util";
import { loadConfig, readSecretFile } from "../config/config.ts";
import { GitbeakerGitLab } from "../gitlab/client.ts";
import { ProjectInventory } from "../gitlab/inventory.ts";
import { UsageError } from "./usage.ts";

function scopeEntry(value: string): number | string {
  return /^[1-9][0-9]{0,15}$/.test(value) ? Number(value) : value;
}

export async function gitlabCommand(args: string[]): Promise<void> {
  const [verb, ...rest] = args;
  if (verb !== "projects") throw new UsageError(`unknown gitlab command "${verb ?? ""}" (projects)`);
  const { values } = parseArgs({
    args: rest,
    options: {
      config: { type: "string", default: "natsbind.yaml" },
      group: { type: "string", multiple: true, default: [] },
      project: { type: "string", multiple: true, default: [] },
    },
  });
  if (values.group.length + values.project.length === 0) {
    throw new UsageError("gitlab projects needs at least one --group or --project (id or full path)");
  }
  const config = await loadConfig(values.config);
  if (!config.gitlab) throw new UsageError(`${values.config} has no gitlab section`);
  const gitlab = new GitbeakerGitLab({
    url: config.gitlab.url,
    token: await readSecretFile(config.gitlab.tokenFile, "GitLab token"),
    timeoutMs: config.gitlab.requestTimeout,
  });
  const inventory = new ProjectInventory(gitlab, {
    groups: values.group.map(scopeEntry),
    projects: values.project.map(scopeEntry),
  });
  await inventory.resync();
  const projects = [...inventory.snapshot().values()].sort((a, b) => a.id - b.id);
  for (const p of projects) console.log(`${p.id}\t${p.namespaceId}\t${p.visibility}\t${p.pathWithNamespace}`);
  console.error(`${projects.length} projects`);
}
