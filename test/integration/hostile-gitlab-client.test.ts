// Issue 9, finding 5: a GitLab (or whatever answers at its address) that redirects the client
// elsewhere or answers with an endless body. Real loopback servers (node:http and node:net) against
// GitbeakerGitLab, our transport under gitbeaker.
import { describe, it, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createNetServer, type Server as NetServer, type Socket } from "node:net";
import type { AddressInfo } from "node:net";
import { inspect } from "node:util";
import { GitbeakerGitLab } from "../../src/gitlab/client.ts";
import {
  GitLabNotFoundError,
  GitLabRedirectError,
  GitLabResponseError,
  GitLabResponseTooLargeError,
} from "../../src/gitlab/errors.ts";
import { DEFAULT_MAX_RESPONSE_BYTES, MAX_REDIRECTS } from "../../src/gitlab/transport.ts";
import { waitFor } from "../support/process.ts";

const TOKEN = "glpat-hostile-test-token-0123456789";
const MiB = 1024 * 1024;
const HUGE = 200 * 1000 * 1000; // the 200 MB page of the finding
const CHUNK = Buffer.alloc(64 * 1024, 0x61);

const PROJECT = {
  id: 2,
  name: "api",
  path: "api",
  path_with_namespace: "acme/api",
  visibility: "private",
  archived: false,
  namespace: { id: 3, full_path: "acme", kind: "group" },
};

interface Seen {
  path: string;
  token: string | undefined;
}

type Handler = (req: IncomingMessage, res: ServerResponse, seen: Seen[]) => void;

/** A loopback HTTP server whose behaviour each test sets; it records every request it gets. */
class Origin {
  readonly seen: Seen[] = [];
  handler: Handler = (_req, res) => res.writeHead(404).end();
  readonly #server: Server;
  url = "";

  constructor() {
    this.#server = createServer((req, res) => {
      this.seen.push({ path: req.url ?? "", token: req.headers["private-token"] as string | undefined });
      this.handler(req, res, this.seen);
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((r) => this.#server.listen({ host: "127.0.0.1", port: 0 }, r));
    this.url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}

/** Writes `total` bytes as fast as the reader takes them; resolves with what was written by the close. */
function stream(res: ServerResponse, total: number): Promise<{ written: number; complete: boolean }> {
  return new Promise((resolve) => {
    let written = 0;
    let closed = false;
    res.on("close", () => {
      closed = true;
      resolve({ written, complete: written >= total && res.writableFinished });
    });
    res.on("error", () => undefined);
    const pump = (): void => {
      while (!closed && written < total) {
        written += CHUNK.length;
        if (!res.write(CHUNK)) return void res.once("drain", pump);
      }
      if (!closed) res.end();
    };
    pump();
  });
}

/** Every way an error is rendered: none may show the token. */
function renderings(err: unknown): string {
  const e = err as Error;
  return [String(e), e.message, e.stack, inspect(e, { depth: 5 }), JSON.stringify(e)].join("\n");
}

function client(url: string, extra: { maxResponseBytes?: number } = {}): GitbeakerGitLab {
  return new GitbeakerGitLab({
    url,
    token: TOKEN,
    timeoutMs: 20_000,
    // Retries would only repeat the attack; a policy that waits nothing keeps a wrong retry visible.
    retry: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 1, maxTotalMs: 5_000 },
    ...extra,
  });
}

/** Peak RSS growth while `run` runs, sampled every 5 ms. */
async function peakRssGrowth<T>(run: () => Promise<T>): Promise<{ result: T; growth: number }> {
  globalThis.gc?.();
  const base = process.memoryUsage.rss();
  let peak = base;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 5);
  try {
    const result = await run();
    peak = Math.max(peak, process.memoryUsage.rss());
    return { result, growth: peak - base };
  } finally {
    clearInterval(timer);
  }
}

describe("hostile GitLab: redirects", { timeout: 60_000 }, () => {
  let gitlab: Origin;
  let elsewhere: Origin;
  before(async () => {
    gitlab = await new Origin().start();
    elsewhere = await new Origin().start();
    elsewhere.handler = (_req, res) => res.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
  after(async () => {
    await gitlab?.stop();
    await elsewhere?.stop();
  });
  beforeEach(() => {
    gitlab.seen.length = 0;
    elsewhere.seen.length = 0;
  });

  it("refuses a 302 to another origin: that origin receives nothing, the error names status and origin", async () => {
    gitlab.handler = (_req, res) =>
      res.writeHead(302, { location: `${elsewhere.url}/api/v4/projects/1?steal=1` }).end();
    const err = await client(gitlab.url)
      .project(1)
      .then(
        () => assert.fail("followed"),
        (e: unknown) => e,
      );
    assert.ok(err instanceof GitLabRedirectError, String(err));
    assert.match(err.message, /GET \/projects\/1: GitLab answered 302 redirecting to another origin/);
    assert.ok(err.message.includes(`(${elsewhere.url})`), err.message);
    assert.equal(err.request.status, 302);
    assert.equal(elsewhere.seen.length, 0, "the other origin got no request at all");
    assert.equal(gitlab.seen.length, 1, "not retried");
    assert.equal(gitlab.seen[0]!.token, TOKEN, "the configured origin did get the token");
    assert.ok(!renderings(err).includes(TOKEN), "no rendering of the error shows the token");
  });

  it("refuses a redirect to the same host and port under another scheme, and one without Location", async () => {
    const host = new URL(gitlab.url).host;
    gitlab.handler = (_req, res) => res.writeHead(307, { location: `https://${host}/api/v4/groups/1` }).end();
    await assert.rejects(client(gitlab.url).group(1), (e: Error) => {
      assert.ok(e instanceof GitLabRedirectError);
      assert.match(e.message, new RegExp(`307 redirecting to another origin \\(https://${host}\\)`));
      return true;
    });
    gitlab.handler = (_req, res) => res.writeHead(301).end();
    await assert.rejects(client(gitlab.url).group(1), (e: Error) => {
      assert.ok(e instanceof GitLabRedirectError);
      assert.match(e.message, /301 without a valid Location; not followed/);
      return true;
    });
  });

  it("follows a same-origin redirect with the token", async () => {
    gitlab.handler = (req, res) => {
      if (req.url?.startsWith("/api/v4/projects/acme%2Fold"))
        return void res.writeHead(301, { location: "/api/v4/projects/2" }).end();
      if (req.url === "/api/v4/projects/2")
        return void res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(PROJECT));
      res.writeHead(404).end();
    };
    const project = await client(gitlab.url).project("acme/old");
    assert.equal(project?.id, 2);
    assert.equal(project?.pathWithNamespace, "acme/api");
    assert.deepEqual(
      gitlab.seen.map((s) => [s.path, s.token]),
      [
        ["/api/v4/projects/acme%2Fold", TOKEN],
        ["/api/v4/projects/2", TOKEN],
      ],
    );
  });

  it("stops an endless redirect loop after a few hops", async () => {
    gitlab.handler = (_req, res) =>
      res.writeHead(302, { location: `/api/v4/loop/${gitlab.seen.length}` }).end("redirecting");
    await assert.rejects(client(gitlab.url).group(1), (e: Error) => {
      assert.ok(e instanceof GitLabRedirectError, String(e));
      assert.match(
        e.message,
        new RegExp(`GET /groups/1: more than ${MAX_REDIRECTS} redirects \\(last 302\\)`),
      );
      return true;
    });
    assert.equal(
      gitlab.seen.length,
      MAX_REDIRECTS + 1,
      "the first request and MAX_REDIRECTS hops, not retried",
    );
  });
});

describe("hostile GitLab: endless bodies", { timeout: 120_000 }, () => {
  let gitlab: Origin;
  let streamed: Promise<{ written: number; complete: boolean }> | undefined;
  before(async () => {
    gitlab = await new Origin().start();
  });
  after(async () => {
    await gitlab?.stop();
  });
  beforeEach(() => {
    gitlab.seen.length = 0;
    streamed = undefined;
  });

  it("refuses a 200 MB streamed page past the cap without buffering it", async () => {
    // No Content-Length (chunked): only counting the bytes as they arrive can stop it.
    gitlab.handler = (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      streamed = stream(res, HUGE);
    };
    const { result: err, growth } = await peakRssGrowth(() =>
      client(gitlab.url)
        .project(1)
        .then(
          () => assert.fail("read it all"),
          (e: unknown) => e,
        ),
    );
    assert.ok(err instanceof GitLabResponseTooLargeError, String(err));
    assert.equal(
      err.message,
      `GET /projects/1: response body larger than ${DEFAULT_MAX_RESPONSE_BYTES} bytes; refused`,
    );
    assert.ok(!renderings(err).includes(TOKEN));
    const sent = await streamed!;
    assert.equal(sent.complete, false, "the client dropped the connection");
    assert.ok(
      sent.written < DEFAULT_MAX_RESPONSE_BYTES + 16 * MiB,
      `server wrote ${sent.written} bytes before the client hung up (cap ${DEFAULT_MAX_RESPONSE_BYTES})`,
    );
    // Reading the page whole costs well over its 200 MB; the cap keeps growth to about the cap.
    assert.ok(growth < 100 * MiB, `RSS grew ${Math.round(growth / MiB)} MiB`);
    assert.equal(gitlab.seen.length, 1, "an oversized answer is not retried");
  });

  it("refuses a Content-Length above the cap before reading the body", async () => {
    gitlab.handler = (_req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": String(HUGE) });
      streamed = stream(res, HUGE);
    };
    await assert.rejects(client(gitlab.url, { maxResponseBytes: MiB }).group(7), (e: Error) => {
      assert.ok(e instanceof GitLabResponseTooLargeError, String(e));
      assert.equal(e.message, `GET /groups/7: response body larger than ${MiB} bytes; refused`);
      return true;
    });
    const sent = await streamed!;
    assert.equal(sent.complete, false);
    assert.ok(sent.written < 16 * MiB, `server wrote ${sent.written} bytes`);
  });

  it("reads at most 4 KiB of an error body, however long it is", async () => {
    gitlab.handler = (_req, res) => {
      res.writeHead(404, { "content-type": "application/json" });
      res.write(JSON.stringify({ message: "404 Project Not Found", pad: "" }).slice(0, -2));
      streamed = stream(res, HUGE);
    };
    await assert.rejects(client(gitlab.url).group(9), GitLabNotFoundError);
    const sent = await streamed!;
    assert.equal(sent.complete, false);
    assert.ok(sent.written < 16 * MiB, `server wrote ${sent.written} bytes`);
  });
});

describe("hostile GitLab: a lying Content-Length", { timeout: 60_000 }, () => {
  let server: NetServer;
  let url = "";
  let sockets: Array<Promise<number>> = [];
  before(async () => {
    // Raw sockets: node:http would refuse to send more than the Content-Length it announced.
    server = createNetServer((socket: Socket) => {
      sockets.push(
        new Promise((resolve) => {
          let written = 0;
          socket.once("data", () => {
            socket.write("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n");
            const pump = (): void => {
              while (!socket.destroyed && written < HUGE) {
                written += CHUNK.length;
                if (!socket.write(CHUNK)) return void socket.once("drain", pump);
              }
              socket.end();
            };
            pump();
          });
          socket.on("error", () => undefined);
          socket.on("close", () => resolve(written));
        }),
      );
    });
    await new Promise<void>((r) => server.listen({ host: "127.0.0.1", port: 0 }, r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    await new Promise<void>((r) => server.close(() => r()));
  });

  it("announces 16 bytes and sends 200 MB: 16 bytes are read, the rest is never taken in", async () => {
    sockets = [];
    const { result: err, growth } = await peakRssGrowth(() =>
      client(url)
        .group(1)
        .then(
          () => assert.fail("accepted"),
          (e: unknown) => e,
        ),
    );
    assert.ok(err instanceof GitLabResponseError, String(err));
    assert.equal((err as Error).message, "GET /groups/1: response is not valid JSON");
    await waitFor(async () => sockets.length >= 1, { what: "the connection", timeoutMs: 5_000 });
    const written = await sockets[0]!;
    assert.ok(written < 16 * MiB, `server wrote ${written} bytes before the client hung up`);
    assert.ok(growth < 100 * MiB, `RSS grew ${Math.round(growth / MiB)} MiB`);
  });
});
