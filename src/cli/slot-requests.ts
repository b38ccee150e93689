/**
 * What `natsbind rotate` and `natsbind credentials revoke` share (local mode): the request goes into
 * the binding's request file (src/rotation/request-files.ts); then either the running `natsbind
 * run` (it holds the key directory's lock) applies it at its next reconcile, or, when none runs,
 * this command runs the controller itself until the request is done and stops it. Either way one
 * process writes the slots, and the same reconcile code does the work.
 */
import { loadConfig, type Config } from "../config/config.ts";
import { NatsbindError } from "../errors.ts";
import { DirectoryKeyStore } from "../keystore/directory.ts";
import type { StoredAccount } from "../keystore/port.ts";
import { runController, type RunningController } from "../main.ts";
import { createLogger } from "../observability/logger.ts";
import { BindingFiles } from "../store/binding-files.ts";
import { runLockHolder, RunLockHeldError } from "../store/run-lock.ts";
import { StatusFiles } from "../store/status-files.ts";
import type { NatsBinding } from "../api/v1alpha1/types.ts";
import { UsageError } from "./usage.ts";

export class RequestTimeoutError extends NatsbindError {}

export interface LocalBinding {
  config: Config;
  binding: NatsBinding;
  key: string;
}

/** The config (local mode only) and the binding, which must be valid. */
export async function localBinding(configPath: string, key: string, command: string): Promise<LocalBinding> {
  const config = await loadConfig(configPath);
  if (config.mode !== "local")
    throw new UsageError(
      `${command} works on local mode's key directory; in Kubernetes mode ${
        command === "rotate"
          ? "annotate the NatsBinding: kubectl annotate natsbinding NAME -n NAMESPACE natsbind.io/rotate=$(date -u +%FT%TZ) --overwrite"
          : "use the same command with the Kubernetes config (it writes the account's Secret)"
      }`,
    );
  const snapshot = await new BindingFiles(config.bindings.directory).scan();
  const found = snapshot.bindings.get(key);
  if (!found) {
    const invalid = snapshot.invalid.find((i) => i.key === key);
    throw new UsageError(
      invalid
        ? `binding ${key} is invalid (${invalid.message}): fix it first`
        : `no binding ${key} in ${config.bindings.directory}`,
    );
  }
  return { config, binding: found.binding, key };
}

/** Slots of the binding that natsbind manages now (status: Ready), as stored. */
export async function managedSlots(config: Config, key: string): Promise<StoredAccount[]> {
  const slots = await new DirectoryKeyStore(config.keys.directory).list(key);
  const status = await new StatusFiles(config.state.directory).read(key).catch(() => undefined);
  if (!status || status.accountsTruncated) return slots;
  const notReady = new Set(
    status.accounts.filter((a) => a.state !== "Ready").map((a) => `${a.projectId}#${a.environment ?? ""}`),
  );
  return slots.filter((s) => !notReady.has(`${s.ref.projectId}#${s.ref.environment ?? ""}`));
}

/**
 * Waits until `done()` says the request is applied: handed to a running natsbind run, or done by a
 * controller this command starts (and stops) when none runs. `progress` gets one line per state.
 */
export async function applyRequest(
  lb: LocalBinding,
  done: () => Promise<boolean>,
  opts: { timeoutMs: number; progress: (line: string) => void },
): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  let own: RunningController | undefined;
  const holder = await runLockHolder(lb.config.keys.directory);
  if (holder !== undefined) {
    opts.progress(`natsbind run (pid ${holder}) holds ${lb.config.keys.directory}: it applies the request`);
  } else {
    opts.progress("no natsbind run holds the key directory: running the controller here until it is done");
    try {
      own = await runController(
        { ...lb.config, http: { ...lb.config.http, listen: "127.0.0.1:0" } },
        { log: createLogger({ level: "warn", base: { app: "natsbind" } }), credentials: false },
      );
    } catch (err) {
      // A natsbind run started meanwhile: it applies the request.
      if (!(err instanceof NatsbindError && /another natsbind run/.test(err.message))) throw err;
      opts.progress("a natsbind run started meanwhile: it applies the request");
    }
  }
  try {
    for (;;) {
      if (await done()) return;
      if (Date.now() > deadline)
        throw new RequestTimeoutError(
          `not done after ${Math.round(opts.timeoutMs / 1000)} s: the request stays in place and natsbind run ` +
            "applies it when it can; see natsbind status and natsbind run's log",
        );
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    await own?.stop();
  }
}

export { RunLockHeldError };
