// Local mode must not load @kubernetes/client-node: it alone adds ~55 MB RSS (src/main.ts loads
// src/k8s/mode.ts only in Kubernetes mode). A resolve hook reports what a fresh process loads.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";

const ROOT = join(import.meta.dirname, "..", "..");

function loadsClientNode(entry: string): boolean {
  const script = `
    import { registerHooks } from "node:module";
    let loaded = false;
    registerHooks({
      resolve(specifier, context, next) {
        const result = next(specifier, context);
        if (result.url.includes("/@kubernetes/client-node/")) loaded = true;
        return result;
      },
    });
    await import(${JSON.stringify(join(ROOT, entry))});
    process.stdout.write(String(loaded));
  `;
  return (
    execFileSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" }) === "true"
  );
}

describe("lazy imports", () => {
  it("the composition root (local mode) does not load @kubernetes/client-node", () => {
    assert.equal(loadsClientNode("src/main.ts"), false);
  });

  it("natsbind credentials revoke loads its Kubernetes half only in Kubernetes mode", () => {
    assert.equal(loadsClientNode("src/cli/credentials.ts"), false);
    assert.equal(loadsClientNode("src/cli/revoke.ts"), false);
    assert.equal(loadsClientNode("src/cli/revoke-kubernetes.ts"), true);
  });

  it("Kubernetes mode does (the check can tell)", () => {
    assert.equal(loadsClientNode("src/k8s/mode.ts"), true);
  });
});
