import { describe, it, after } from "node:test";
import assert from "node:assert/strict";
import { Agent, request } from "node:http";
import type { IncomingHttpHeaders, ServerResponse } from "node:http";
import { HttpServerError, startHttpServer } from "../../src/http/server.ts";
import type { HttpServer } from "../../src/http/server.ts";

type Reply = { status: number; headers: IncomingHttpHeaders; body: string };

/** One request over `agent` (keep-alive when the agent is), body read to the end. */
function get(url: string, agent?: Agent): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString("utf8"),
        }),
      );
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

async function waitFor(what: string, condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe("http server", () => {
  const servers: HttpServer[] = [];
  after(async () => {
    await Promise.all(servers.map((s) => s.close()));
  });
  async function start(opts: Partial<Parameters<typeof startHttpServer>[0]> = {}): Promise<HttpServer> {
    const server = await startHttpServer({ host: "127.0.0.1", port: 0, routes: {}, ...opts });
    servers.push(server);
    return server;
  }

  it("answers /healthz with 200 ok on a free port", async () => {
    const server = await start();
    assert.ok(server.port > 0);
    assert.equal(server.url, `http://127.0.0.1:${server.port}`);
    const res = await fetch(`${server.url}/healthz`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok");
    const head = await fetch(`${server.url}/healthz`, { method: "HEAD" });
    assert.equal(head.status, 200);
    const post = await fetch(`${server.url}/healthz`, { method: "POST" });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
  });

  it("flips /readyz with readiness(), and a throwing readiness means not ready", async () => {
    let ready = false;
    let throws = false;
    const server = await start({
      readiness: () => {
        if (throws) throw new Error("boom");
        return ready;
      },
    });
    let res = await fetch(`${server.url}/readyz`);
    assert.equal(res.status, 503);
    assert.equal(await res.text(), "not ready");
    ready = true;
    res = await fetch(`${server.url}/readyz?verbose=1`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok");
    ready = false;
    res = await fetch(`${server.url}/readyz`);
    assert.equal(res.status, 503);
    await res.text();
    throws = true;
    res = await fetch(`${server.url}/readyz`);
    assert.equal(res.status, 503);
    await res.text();
  });

  it("routes by exact path, ignores the query, and answers 404 JSON otherwise", async () => {
    const server = await start({
      routes: {
        "/hello": (_req, res) => {
          res.writeHead(200, { "content-type": "text/plain" });
          res.end("hi");
        },
        "/throws": () => {
          throw new Error("handler bug");
        },
      },
    });
    let res = await fetch(`${server.url}/hello?x=1`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "hi");
    for (const path of ["/hello/", "/hello/x", "/nope", "/"]) {
      res = await fetch(`${server.url}${path}`);
      assert.equal(res.status, 404, path);
      assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
      assert.deepEqual(await res.json(), { error: "not found" });
    }
    res = await fetch(`${server.url}/throws`);
    assert.equal(res.status, 500);
    assert.deepEqual(await res.json(), { error: "internal error" });
    res = await fetch(`${server.url}/healthz`);
    assert.equal(res.status, 200, "a throwing handler does not break the server");
    await res.text();
  });

  it("refuses routes that are not paths or shadow the built-ins", async () => {
    await assert.rejects(
      startHttpServer({ host: "127.0.0.1", port: 0, routes: { "/healthz": () => {} } }),
      HttpServerError,
    );
    await assert.rejects(
      startHttpServer({ host: "127.0.0.1", port: 0, routes: { webhooks: () => {} } }),
      /must be a path/,
    );
  });

  it("reports a port in use as an HttpServerError", async () => {
    const first = await start();
    await assert.rejects(
      startHttpServer({ host: "127.0.0.1", port: first.port, routes: {} }),
      (err: unknown) => err instanceof HttpServerError && /listen on 127\.0\.0\.1/.test(err.message),
    );
  });

  it("close() finishes while a keep-alive connection is open and idle", async () => {
    const server = await startHttpServer({ host: "127.0.0.1", port: 0, routes: {} });
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await get(`${server.url}/healthz`, agent);
      assert.equal(first.status, 200);
      assert.equal(first.headers.connection, "keep-alive");
      // The socket now sits idle in the agent's pool; close() must not wait for it.
      assert.equal(Object.values(agent.freeSockets).flat().length, 1);
      await server.close();
      await waitFor(
        "the pooled socket to be closed",
        () => Object.values(agent.freeSockets).flat().length === 0,
      );
      await assert.rejects(fetch(`${server.url}/healthz`));
    } finally {
      agent.destroy();
    }
  });

  it("close() lets an in-flight request finish, then closes its keep-alive connection", async () => {
    let pending: ServerResponse | undefined;
    const server = await startHttpServer({
      host: "127.0.0.1",
      port: 0,
      routes: {
        "/slow": (_req, res) => {
          pending = res;
        },
      },
    });
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const reply = get(`${server.url}/slow`, agent);
      await waitFor("the request to reach the handler", () => pending !== undefined);
      let closed = false;
      const closing = server.close().then(() => {
        closed = true;
      });
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(closed, false, "close() waits for the in-flight request");
      pending!.writeHead(200, { "content-type": "text/plain" });
      pending!.end("done");
      const res = await reply;
      assert.equal(res.status, 200);
      assert.equal(res.body, "done");
      assert.equal(res.headers.connection, "close");
      await closing;
      assert.equal(closed, true);
    } finally {
      agent.destroy();
    }
  });
});
