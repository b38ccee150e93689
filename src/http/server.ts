/**
 * natsbind's one HTTP listener: /healthz, /readyz and the routes the composition root mounts
 * (/webhooks/gitlab, later /metrics and /v1/creds). Routing is by exact path, query ignored.
 * Timeouts bound slow clients; close() stops accepting, lets in-flight requests finish, and
 * closes idle keep-alive connections so shutdown does not wait for clients to hang up.
 */
import { createServer } from "node:http";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { TerminalError, describeError } from "../errors.ts";

export type RouteHandler = (req: IncomingMessage, res: ServerResponse) => void;

export type HttpServerOptions = {
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Exact paths ("/webhooks/gitlab") to handlers; /healthz and /readyz are built in. */
  routes: Record<string, RouteHandler>;
  /** /readyz answers 200 while this returns true, 503 otherwise; default: always ready. */
  readiness?: () => boolean;
  timeouts?: {
    /** Time to receive the request headers; default 10 s. */
    headersMs?: number;
    /** Time to receive the whole request; default 10 s. */
    requestMs?: number;
    /** Idle time before a keep-alive connection is closed; default 5 s. */
    keepAliveMs?: number;
    /** After close(), time to let in-flight requests finish before connections are cut; default 5 s. */
    closeGraceMs?: number;
  };
  log?: { warn(obj: Record<string, unknown>, msg: string): void };
};

export type HttpServer = {
  /** http://host:port, with the bound port. */
  url: string;
  port: number;
  close(): Promise<void>;
};

const BUILT_IN = new Set(["/healthz", "/readyz"]);

export class HttpServerError extends TerminalError {}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
  res.end(text);
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", ...headers });
  res.end(JSON.stringify(body));
}

function pathOf(url: string | undefined): string {
  const raw = url ?? "/";
  const end = raw.search(/[?#]/);
  return end === -1 ? raw : raw.slice(0, end);
}

function hostForUrl(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

export async function startHttpServer(opts: HttpServerOptions): Promise<HttpServer> {
  const routes = new Map<string, RouteHandler>();
  for (const [path, handler] of Object.entries(opts.routes)) {
    if (!path.startsWith("/") || /[?#]/.test(path))
      throw new HttpServerError(`route ${JSON.stringify(path)}: must be a path starting with "/"`);
    if (BUILT_IN.has(path)) throw new HttpServerError(`route ${path}: is built in`);
    routes.set(path, handler);
  }
  const readiness = opts.readiness ?? (() => true);
  const timeouts = {
    headersMs: opts.timeouts?.headersMs ?? 10_000,
    requestMs: opts.timeouts?.requestMs ?? 10_000,
    keepAliveMs: opts.timeouts?.keepAliveMs ?? 5_000,
    closeGraceMs: opts.timeouts?.closeGraceMs ?? 5_000,
  };
  let closing = false;
  const inFlight = new Set<ServerResponse>();

  const server = createServer(
    {
      headersTimeout: timeouts.headersMs,
      requestTimeout: timeouts.requestMs,
      keepAliveTimeout: timeouts.keepAliveMs,
      // How often headersTimeout/requestTimeout are enforced (default 30 s would dwarf them).
      connectionsCheckingInterval: Math.min(1_000, timeouts.headersMs, timeouts.requestMs),
    },
    (req, res) => {
      if (closing) res.shouldKeepAlive = false;
      inFlight.add(res);
      // A response that ends after close() leaves an idle keep-alive connection behind: close it
      // rather than wait for the client or the keep-alive timeout.
      res.once("close", () => {
        inFlight.delete(res);
        if (closing) setImmediate(() => server.closeIdleConnections());
      });
      const path = pathOf(req.url);
      try {
        if (BUILT_IN.has(path)) {
          if (req.method !== "GET" && req.method !== "HEAD") {
            res.setHeader("allow", "GET, HEAD");
            sendJson(res, 405, { error: "method not allowed" });
            return;
          }
          if (path === "/healthz") {
            sendText(res, 200, "ok");
            return;
          }
          let ready = false;
          try {
            ready = readiness();
          } catch (err) {
            opts.log?.warn({ err: describeError(err) }, "readiness check threw");
          }
          sendText(res, ready ? 200 : 503, ready ? "ok" : "not ready");
          return;
        }
        const handler = routes.get(path);
        if (handler === undefined) {
          sendJson(res, 404, { error: "not found" });
          return;
        }
        handler(req, res);
      } catch (err) {
        opts.log?.warn({ path, err: describeError(err) }, "request handler threw");
        if (!res.headersSent) sendJson(res, 500, { error: "internal error" }, { connection: "close" });
        else res.destroy();
      }
    },
  );

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      reject(new HttpServerError(`listen on ${opts.host}:${opts.port}: ${err.message}`, { cause: err }));
    };
    server.once("error", onError);
    server.listen(opts.port, opts.host, () => {
      server.off("error", onError);
      resolve();
    });
  });
  server.on("error", (err) => opts.log?.warn({ err: err.message }, "http server error"));
  const port = (server.address() as AddressInfo).port;

  let closed: Promise<void> | undefined;
  return {
    url: `http://${hostForUrl(opts.host)}:${port}`,
    port,
    close(): Promise<void> {
      closed ??= new Promise<void>((resolve, reject) => {
        closing = true;
        // Responses not yet started tell their clients this connection ends with them.
        for (const res of inFlight) if (!res.headersSent) res.shouldKeepAlive = false;
        const grace = setTimeout(() => server.closeAllConnections(), timeouts.closeGraceMs);
        grace.unref();
        // server.close() also closes idle keep-alive connections; busy ones close after their response.
        server.close((err) => {
          clearTimeout(grace);
          if (err) reject(err);
          else resolve();
        });
        server.closeIdleConnections();
      });
      return closed;
    },
  };
}
