/** `natsbind run` (local or Kubernetes mode) and `natsbind status` (local mode). */
import { parseArgs } from "node:util";
import { loadConfig } from "../config/config.ts";
import { NatsbindError } from "../errors.ts";
import { runController } from "../main.ts";
import { StatusFiles } from "../store/status-files.ts";

export async function runCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: "string", default: "natsbind.yaml" } } });
  const config = await loadConfig(values.config);
  const running = await runController(config);
  const lost = await new Promise<string | undefined>((resolve) => {
    const stop = (reason?: string): void => {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
      void running.stop().then(
        () => resolve(reason),
        () => resolve(reason),
      );
    };
    const onSignal = (): void => stop();
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
    void running.stopped.then((reason) => stop(reason));
  });
  // Stopped on its own (lost the leader lease): exit non-zero so Kubernetes restarts the container.
  if (lost !== undefined) throw new RunStoppedError(`natsbind stopped: ${lost}`);
}

export class RunStoppedError extends NatsbindError {}
export class StatusModeError extends NatsbindError {}

function pad(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

export async function statusCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: "string", default: "natsbind.yaml" } } });
  const config = await loadConfig(values.config);
  if (config.mode === "kubernetes") {
    throw new StatusModeError(
      "natsbind status reads local status files; in Kubernetes mode the status is on the NatsBinding " +
        "objects: kubectl get nb -A, kubectl describe nb NAME -n NAMESPACE",
    );
  }
  const all = await new StatusFiles(config.state.directory).readAll();
  if (all.length === 0) {
    console.log(`no binding status in ${config.state.directory} (is natsbind run running?)`);
    return;
  }
  const bindings = [["BINDING", "READY", "PROJECTS", "ACCOUNTS", "RETAINED", "PROBLEMS", "MESSAGE"]];
  for (const { key, status } of all) {
    const ready = status.conditions.find((c) => c.type === "Ready");
    bindings.push([
      key,
      ready?.status ?? "Unknown",
      String(status.counts.projects),
      String(status.counts.accounts),
      String(status.counts.retained),
      String(status.counts.problems),
      (ready?.message ?? "").slice(0, 80),
    ]);
  }
  console.log(pad(bindings));
  const accounts = [["BINDING", "PROJECT", "PATH", "ENVIRONMENT", "ACCOUNT", "STATE", "PUSHED"]];
  for (const { key, status } of all) {
    for (const a of status.accounts) {
      accounts.push([
        key,
        String(a.projectId),
        a.projectPath,
        a.environment ?? "-",
        a.account,
        a.state,
        a.pushedAt ?? "-",
      ]);
    }
    if (status.accountsTruncated)
      accounts.push([key, `(+${status.accountsTruncated} more)`, "", "", "", "", ""]);
  }
  console.log();
  console.log(pad(accounts));
  const rotation = [
    [
      "BINDING",
      "NEXT ROTATION",
      "OLDEST KEY SINCE",
      "ACTIVE",
      "PREPARED",
      "RETIRING",
      "WAITING CONNS",
      "LAST FAILURE",
    ],
  ];
  for (const { key, status } of all) {
    const r = status.rotation;
    if (!r) continue;
    rotation.push([
      key,
      r.nextRotation ?? "-",
      r.oldestActiveKeySince ?? "-",
      String(r.accounts.active),
      String(r.accounts.prepared),
      String(r.accounts.retiring),
      String(r.waitingConnections),
      r.lastFailure ? `${r.lastFailure.time} ${r.lastFailure.message}`.slice(0, 80) : "-",
    ]);
  }
  if (rotation.length > 1) {
    console.log();
    console.log(pad(rotation));
  }
}
