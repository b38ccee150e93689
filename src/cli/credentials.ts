/**
 * `natsbind credentials <command>`: today `revoke` (src/cli/revoke.ts). Kubernetes mode's half
 * (src/cli/revoke-kubernetes.ts, with @kubernetes/client-node) is loaded only when the config says
 * so, and from here rather than from revoke.ts, which it imports.
 */
import { loadConfig } from "../config/config.ts";
import { redactSecrets } from "../observability/logger.ts";
import { parseRevokeArgs, revokeLocally } from "./revoke.ts";
import { UsageError } from "./usage.ts";

export async function credentialsCommand(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub !== "revoke")
    throw new UsageError(
      sub === undefined
        ? "credentials: which one? (revoke)"
        : `credentials: unknown command ${JSON.stringify(redactSecrets(sub, 40))}`,
    );
  await revokeCommand(rest);
}

async function revokeCommand(args: string[]): Promise<void> {
  const a = parseRevokeArgs(args);
  const say = (line: string): void => void process.stderr.write(`${line}\n`);
  const config = await loadConfig(a.configPath);
  // Kubernetes mode's modules (client-node) are loaded only when used: local mode stays small.
  if (config.mode === "kubernetes")
    await (await import("./revoke-kubernetes.ts")).revokeInKubernetes(a, config, say);
  else await revokeLocally(a, say);
}
