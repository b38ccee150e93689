/**
 * The servers a local-mode end-to-end test needs, started together: a test operator (with the auth
 * callout when asked), a nats-server in operator mode, the GitLab simulator, a temp directory with
 * bindings/ and the GitLab token file natsbind.yaml names, and a resolver connection for
 * assertions. stop() takes them down in reverse order.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parseConfig, type Config } from "../../src/config/config.ts";
import type { NatsResolver } from "../../src/nats/resolver.ts";
import { GitLabSimulator } from "./gitlab-sim.ts";
import { startNatsServer, type NatsServer } from "./nats-server.ts";
import { createTestOperator, natsConfigSection, operatorResolver, type TestOperator } from "./operator.ts";
import { removeDir, tempDir } from "./process.ts";

export interface LocalRig {
  op: TestOperator;
  server: NatsServer;
  sim: GitLabSimulator;
  /** Holds bindings/ (empty), the GitLab token file `token`, and what natsbind writes. */
  dir: string;
  resolver: NatsResolver;
  /**
   * natsbind.yaml for local mode over these servers (resync 1h, a free loopback port), with `extra`
   * top-level sections (credentials, ...) merged in; parsed against dir.
   */
  config(extra?: Record<string, unknown>): Config;
  stop(): Promise<void>;
}

export async function startLocalRig(o: { name: string; callout?: boolean }): Promise<LocalRig> {
  const op = await createTestOperator({ callout: o.callout ?? false });
  const server = await startNatsServer(op.serverOptions);
  const sim = await GitLabSimulator.start();
  const dir = await tempDir(o.name);
  await mkdir(join(dir, "bindings"));
  await writeFile(join(dir, "token"), sim.token);
  const resolver = await operatorResolver(op, server.url);
  return {
    op,
    server,
    sim,
    dir,
    resolver,
    config: (extra = {}) =>
      parseConfig(
        {
          nats: natsConfigSection(op, [server.url]),
          gitlab: { url: sim.url, tokenFile: "token", resyncInterval: "1h" },
          http: { listen: "127.0.0.1:0" },
          ...extra,
        },
        "test config",
        dir,
      ),
    async stop() {
      await resolver.close();
      await sim.stop();
      await server.stop();
      await op.remove();
      await removeDir(dir);
    },
  };
}
