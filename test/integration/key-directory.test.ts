// Issue 9, finding 8, end to end: `natsbind run` (local mode) finds its key directory at 0777 and
// makes it 0700 before it writes a seed, saying so in its log; one it cannot fix stops the start.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parseConfig, type Config } from "../../src/config/config.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { runController } from "../../src/main.ts";
import { KeyDirectoryModeError } from "../../src/store/key-directory.ts";
import { GitLabSimulator } from "../support/gitlab-sim.ts";
import { startNatsServer, type NatsServer } from "../support/nats-server.ts";
import { createTestOperator, natsConfigSection, type TestOperator } from "../support/operator.ts";
import { removeDir, tempDir } from "../support/process.ts";

describe("natsbind run: the key directory", { timeout: 60_000 }, () => {
  let op: TestOperator;
  let server: NatsServer;
  let sim: GitLabSimulator;
  let dir: string;
  let config: Config;

  before(async () => {
    op = await createTestOperator();
    server = await startNatsServer(op.serverOptions);
    sim = await GitLabSimulator.start();
    dir = await tempDir("keydir");
    await mkdir(join(dir, "bindings"));
    await writeFile(join(dir, "token"), sim.token);
    config = parseConfig(
      {
        nats: natsConfigSection(op, [server.url]),
        gitlab: { url: sim.url, tokenFile: "token", resyncInterval: "1h" },
        http: { listen: "127.0.0.1:0" },
      },
      "test config",
      dir,
    );
  });

  after(async () => {
    await sim?.stop();
    await server?.stop();
    await op?.remove();
    if (dir) await removeDir(dir);
  });

  it("a 0777 key directory (and accounts/ in it) is made 0700 at start, and the log says so", async () => {
    const keys = config.keys.directory;
    await mkdir(join(keys, "accounts"), { recursive: true });
    await chmod(keys, 0o777);
    await chmod(join(keys, "accounts"), 0o777);
    const lines: string[] = [];
    const controller = await runController(config, {
      log: createLogger({ write: (line) => lines.push(line), level: "warn" }),
    });
    try {
      assert.equal((await stat(keys)).mode & 0o777, 0o700);
      assert.equal((await stat(join(keys, "accounts"))).mode & 0o777, 0o700);
      const tightened = lines
        .map((l) => JSON.parse(l) as { msg: string; path?: string; from?: string; to?: string })
        .filter((r) => r.msg === "key directory was open to other users: mode tightened");
      assert.deepEqual(
        tightened.map((r) => [r.path, r.from, r.to]).sort(),
        [
          [keys, "0777", "0700"],
          [join(keys, "accounts"), "0777", "0700"],
        ].sort(),
      );
    } finally {
      await controller.stop();
    }
  });

  it("a key directory that is not a directory stops the start, naming it", async () => {
    const file = join(dir, "not-a-dir");
    await writeFile(file, "x");
    await assert.rejects(
      runController({ ...config, keys: { directory: file } }, { log: createLogger({ write: () => {} }) }),
      (err: unknown) => err instanceof KeyDirectoryModeError && err.message.includes(file),
    );
  });
});
