/**
 * kubernetes.kubeconfig is read like every file natsbind reads: bounded before it is read, and a
 * bad one is refused with an error naming the file, never quoting it (it holds credentials).
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { ConfigError, MAX_KUBECONFIG_BYTES } from "../../src/config/config.ts";
import { kubeConfigFrom } from "../../src/k8s/mode.ts";

const dir = await mkdtemp(join(tmpdir(), "natsbind-kubeconfig-"));
after(() => rm(dir, { recursive: true, force: true }));

const TOKEN = "sha256~do-not-print-this-bearer-token";
const valid = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: "${TOKEN}"}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`;

describe("kubeConfigFrom", () => {
  it("loads a kubeconfig file", async () => {
    const path = join(dir, "ok");
    await writeFile(path, valid);
    const kc = await kubeConfigFrom(path);
    assert.equal(kc.getCurrentCluster()?.server, "https://127.0.0.1:6443");
  });

  it("refuses an oversized file before reading it, naming the field and the file", async () => {
    const path = join(dir, "huge");
    await writeFile(path, valid + `# ${"x".repeat(MAX_KUBECONFIG_BYTES)}\n`);
    await assert.rejects(kubeConfigFrom(path), (err: Error) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, /kubernetes\.kubeconfig file .*huge is larger than 262144 bytes/);
      return true;
    });
  });

  it("refuses a device, a missing file and a broken kubeconfig without quoting it", async () => {
    await assert.rejects(
      kubeConfigFrom("/dev/zero"),
      /kubernetes\.kubeconfig file \/dev\/zero: not a regular file/,
    );
    await assert.rejects(
      kubeConfigFrom(join(dir, "missing")),
      /cannot read kubernetes\.kubeconfig file .*ENOENT/,
    );
    const path = join(dir, "broken");
    await writeFile(path, `users: [{name: u, user: {token: "${TOKEN}"\n  ]]`);
    await assert.rejects(kubeConfigFrom(path), (err: Error) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, /is not a valid kubeconfig/);
      assert.ok(!JSON.stringify({ m: err.message, s: err.stack, c: String(err.cause) }).includes(TOKEN));
      return true;
    });
  });
});
