// The HTTP listener over TLS with certificates made by openssl in a temp dir: HTTPS served, a
// swapped pair served to new connections (files renamed in place, and a Kubernetes Secret volume's
// ..data symlink swap), a broken replacement refused with the old pair kept, close() stopping the
// watcher; and plainHttpWarning.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import {
  mkdtempSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { get as httpsGet } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import type { TLSSocket } from "node:tls";
import { HttpServerError, plainHttpWarning, startHttpServer } from "../../src/http/server.ts";
import type { HttpServer } from "../../src/http/server.ts";

type Pair = { cert: string; key: string; fingerprint: string };

function makePair(dir: string, name: string): Pair {
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      keyFile,
      "-out",
      certFile,
      "-days",
      "1",
      "-subj",
      `/CN=natsbind-test-${name}`,
      "-addext",
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ],
    { stdio: "ignore" },
  );
  const cert = readFileSync(certFile, "utf8");
  return { cert, key: readFileSync(keyFile, "utf8"), fingerprint: new X509Certificate(cert).fingerprint256 };
}

/** The fingerprint of the certificate a new TLS connection is served. */
function peerFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: "127.0.0.1", port, rejectUnauthorized: false }, () => {
      const fingerprint = socket.getPeerCertificate().fingerprint256;
      socket.end();
      resolve(fingerprint);
    });
    socket.on("error", reject);
  });
}

async function waitFor(
  what: string,
  check: () => Promise<boolean> | boolean,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Replaces a file the way tools that renew certificates do: write beside it, rename over it. */
function replaceFile(path: string, content: string): void {
  writeFileSync(`${path}.new`, content);
  renameSync(`${path}.new`, path);
}

type LogRecord = { level: string; msg: string; obj: Record<string, unknown> };

function recordingLog(records: LogRecord[]) {
  return {
    info: (obj: Record<string, unknown>, msg: string) => records.push({ level: "info", msg, obj }),
    warn: (obj: Record<string, unknown>, msg: string) => records.push({ level: "warn", msg, obj }),
  };
}

function fsWatchers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === "FSEventWrap").length;
}

describe("http server over TLS", () => {
  let root: string;
  let pairA: Pair;
  let pairB: Pair;
  let pairC: Pair;
  const servers: HttpServer[] = [];

  before(() => {
    root = mkdtempSync(join(tmpdir(), "natsbind-tls-"));
    const made = join(root, "made");
    mkdirSync(made);
    pairA = makePair(made, "a");
    pairB = makePair(made, "b");
    pairC = makePair(made, "c");
  });
  after(async () => {
    await Promise.all(servers.map((s) => s.close()));
    rmSync(root, { recursive: true, force: true });
  });

  let dirs = 0;
  function liveDir(pair: Pair): { certFile: string; keyFile: string } {
    const dir = join(root, `live-${++dirs}`);
    mkdirSync(dir);
    const files = { certFile: join(dir, "tls.crt"), keyFile: join(dir, "tls.key") };
    writeFileSync(files.certFile, pair.cert);
    writeFileSync(files.keyFile, pair.key, { mode: 0o600 });
    return files;
  }

  async function start(
    files: { certFile: string; keyFile: string },
    records: LogRecord[] = [],
  ): Promise<HttpServer> {
    const server = await startHttpServer({
      host: "127.0.0.1",
      port: 0,
      routes: {},
      tls: { ...files, debounceMs: 20 },
      log: recordingLog(records),
    });
    servers.push(server);
    return server;
  }

  it("serves HTTPS with the configured pair (and not plain HTTP)", async () => {
    const server = await start(liveDir(pairA));
    assert.equal(server.url, `https://127.0.0.1:${server.port}`);
    const reply = await new Promise<{ status: number; body: string; fingerprint: string }>(
      (resolve, reject) => {
        httpsGet(`${server.url}/healthz`, { ca: pairA.cert }, (res) => {
          const fingerprint = (res.socket as TLSSocket).getPeerCertificate().fingerprint256;
          let body = "";
          res.on("data", (c: Buffer) => (body += c.toString()));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body, fingerprint }));
        }).on("error", reject);
      },
    );
    assert.deepEqual(reply, { status: 200, body: "ok", fingerprint: pairA.fingerprint });
    await assert.rejects(fetch(`http://127.0.0.1:${server.port}/healthz`));
  });

  it("serves a pair replaced on disk to new connections", async () => {
    const files = liveDir(pairA);
    const records: LogRecord[] = [];
    const server = await start(files, records);
    assert.equal(await peerFingerprint(server.port), pairA.fingerprint);
    replaceFile(files.keyFile, pairB.key);
    replaceFile(files.certFile, pairB.cert);
    await waitFor(
      "pair B to be served",
      async () => (await peerFingerprint(server.port)) === pairB.fingerprint,
    );
    const reloaded = records.filter((r) => r.msg === "TLS certificate reloaded");
    assert.ok(reloaded.length >= 1);
    assert.equal(reloaded.at(-1)!.obj.fingerprint256, pairB.fingerprint);
    assert.equal(await server.reloadTls!(), "unchanged");
  });

  it("follows a Kubernetes Secret volume's ..data symlink swap", async () => {
    const volume = join(root, "secret-volume");
    mkdirSync(join(volume, "..v1"), { recursive: true });
    writeFileSync(join(volume, "..v1", "tls.crt"), pairA.cert);
    writeFileSync(join(volume, "..v1", "tls.key"), pairA.key);
    symlinkSync("..v1", join(volume, "..data"));
    symlinkSync("..data/tls.crt", join(volume, "tls.crt"));
    symlinkSync("..data/tls.key", join(volume, "tls.key"));
    const server = await start({ certFile: join(volume, "tls.crt"), keyFile: join(volume, "tls.key") });
    assert.equal(await peerFingerprint(server.port), pairA.fingerprint);
    // What the kubelet's atomic writer does: a new timestamped dir, then ..data renamed onto it.
    mkdirSync(join(volume, "..v2"));
    writeFileSync(join(volume, "..v2", "tls.crt"), pairC.cert);
    writeFileSync(join(volume, "..v2", "tls.key"), pairC.key);
    symlinkSync("..v2", join(volume, "..data_tmp"));
    renameSync(join(volume, "..data_tmp"), join(volume, "..data"));
    rmSync(join(volume, "..v1"), { recursive: true });
    await waitFor(
      "pair C to be served",
      async () => (await peerFingerprint(server.port)) === pairC.fingerprint,
    );
  });

  it("keeps the old pair when the new one is broken, logs it once, and takes a good one after", async () => {
    const files = liveDir(pairA);
    const records: LogRecord[] = [];
    const server = await start(files, records);
    const refusals = () => records.filter((r) => r.level === "warn");
    // A key that does not match the certificate.
    replaceFile(files.keyFile, pairB.key);
    await waitFor("the mismatched key to be refused", () => refusals().length === 1);
    assert.match(String(refusals()[0]!.obj.err), /cannot be used/);
    assert.equal(await peerFingerprint(server.port), pairA.fingerprint);
    assert.equal(await server.reloadTls!(), "refused");
    assert.equal(refusals().length, 1, "the same broken content is logged once");
    // Not a certificate at all.
    replaceFile(files.certFile, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    await waitFor("the garbage certificate to be refused", () => refusals().length === 2);
    assert.equal(await peerFingerprint(server.port), pairA.fingerprint);
    for (const r of records) {
      const line = JSON.stringify(r);
      assert.ok(
        !line.includes("PRIVATE KEY") && !line.includes(pairB.key.split("\n")[1]!),
        "no key material logged",
      );
    }
    // A good pair again.
    replaceFile(files.certFile, pairB.cert);
    await waitFor(
      "pair B to be served",
      async () => (await peerFingerprint(server.port)) === pairB.fingerprint,
    );
  });

  it("refuses to start with a pair that cannot serve, naming the files", async () => {
    const files = liveDir(pairA);
    writeFileSync(files.keyFile, pairB.key);
    await assert.rejects(
      startHttpServer({ host: "127.0.0.1", port: 0, routes: {}, tls: files }),
      (err: unknown) =>
        err instanceof HttpServerError &&
        err.message.includes(files.certFile) &&
        err.message.includes(files.keyFile) &&
        !err.message.includes("BEGIN"),
    );
    await assert.rejects(
      startHttpServer({
        host: "127.0.0.1",
        port: 0,
        routes: {},
        tls: { ...files, keyFile: join(root, "nope.key") },
      }),
      /cannot read TLS key file .*nope\.key: ENOENT/,
    );
  });

  it("close() stops watching the files", async () => {
    const before = fsWatchers();
    const files = liveDir(pairA);
    const records: LogRecord[] = [];
    const server = await startHttpServer({
      host: "127.0.0.1",
      port: 0,
      routes: {},
      tls: { ...files, debounceMs: 1 },
      log: recordingLog(records),
    });
    servers.push(server);
    assert.equal(fsWatchers(), before + 1);
    await server.close();
    // A closed watcher's handle is released by the event loop shortly after close().
    await waitFor("the watcher to be released", () => fsWatchers() === before);
    assert.equal(await server.reloadTls!(), "unchanged");
    assert.deepEqual(records, []);
  });
});

describe("plainHttpWarning", () => {
  it("is silent with TLS or on a loopback address", () => {
    for (const listen of [
      "127.0.0.1:8080",
      "127.1.2.3:80",
      "[::1]:8080",
      "[0:0:0:0:0:0:0:1]:8080",
      "localhost:8080",
      "LOCALHOST:8080",
    ])
      assert.equal(plainHttpWarning(listen, false), undefined, listen);
    for (const listen of ["0.0.0.0:8080", "[::]:8080", "10.0.0.5:8080"])
      assert.equal(plainHttpWarning(listen, true), undefined, listen);
  });

  it("warns on plain HTTP anywhere else, naming the address and the fix", () => {
    for (const listen of [
      "0.0.0.0:8080",
      "[::]:8080",
      "10.0.0.5:8080",
      "128.0.0.1:8080",
      "[fe80::1]:8080",
      "natsbind.example:8080",
      "localhost.example:8080",
    ]) {
      const warning = plainHttpWarning(listen, false);
      assert.ok(warning, listen);
      assert.ok(warning.includes(listen), listen);
      assert.match(warning, /\/v1\/credentials over plain HTTP/);
      assert.match(warning, /http\.tls/);
    }
  });
});
