import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { NODE_FLAGS } from "../../src/cli/node-flags.ts";

const ROOT = join(import.meta.dirname, "..", "..");

describe("node flags of natsbind's launchers", () => {
  it("the bin's shebang passes exactly NODE_FLAGS", async () => {
    const first = (await readFile(join(ROOT, "src", "cli", "main.ts"), "utf8")).split("\n")[0];
    assert.equal(first, `#!/usr/bin/env -S node ${NODE_FLAGS.join(" ")}`);
  });

  it("the npm script passes exactly NODE_FLAGS", async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, "package.json"), "utf8")) as {
      scripts: Record<string, string>;
    };
    assert.equal(pkg.scripts.natsbind, `node ${NODE_FLAGS.join(" ")} src/cli/main.ts`);
  });

  it("this node accepts them", () => {
    const out = execFileSync(
      process.execPath,
      [...NODE_FLAGS, "-p", `process.execArgv.slice(0, ${NODE_FLAGS.length}).join(" ")`],
      {
        encoding: "utf8",
      },
    );
    assert.equal(out.trim(), NODE_FLAGS.join(" "));
  });
});
