/**
 * natsbind's one HTTP listener: /healthz, /readyz and the routes the composition root mounts
 * (/webhooks/gitlab, /metrics, /v1/credentials). Routing is by exact path, query ignored.
 * Timeouts bound slow clients; close() stops accepting, lets in-flight requests finish, and
 * closes idle keep-alive connections so shutdown does not wait for clients to hang up.
 * With `tls` it serves HTTPS and re-reads the certificate and key when they change (src/http/tls.ts):
 * new connections get the new certificate, open ones keep theirs.
 */
import { createServer } from "node:http";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { Server as HttpsServer } from "node:https";
import { BlockList, isIP } from "node:net";
import type { AddressInfo } from "node:net";
import { TerminalError, describeError } from "../errors.ts";
import { checkTlsPair, readTlsPair, watchTlsFiles } from "./tls.ts";
import type { TlsFiles, TlsReload, TlsWatcher } from "./tls.ts";

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
  /**
   * Longest request head (request line and headers) Node accepts; longer gets 431. Default 32 KiB,
   * so a bearer token up to the exchange's 16 KiB bound reaches its handler (Node's own default
   * is 16 KiB for the whole head).
   */
  maxHeaderBytes?: number;
  /** Serve HTTPS with these PEM files, reloaded when they change. */
  tls?: TlsFiles & {
    /** Backstop re-read when file events are missed; default 60 s. */
    pollIntervalMs?: number;
    /** Wait after a file event before re-reading (one update is several events); default 100 ms. */
    debounceMs?: number;
  };
  log?: {
    warn(obj: Record<string, unknown>, msg: string): void;
    info?(obj: Record<string, unknown>, msg: string): void;
  };
};

export type HttpServer = {
  /** http://host:port (https:// with tls), with the bound port. */
  url: string;
  port: number;
  /** With tls: re-read the certificate and key now (they are also watched). */
  reloadTls?: () => Promise<TlsReload>;
  close(): Promise<void>;
};

export const DEFAULT_MAX_HEADER_BYTES = 32 * 1024;

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

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet("127.0.0.0", 8, "ipv4");
LOOPBACK.addAddress("::1", "ipv6");

/** True for 127.0.0.0/8, ::1 and localhost: addresses only this machine can reach. */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, "");
  if (/^localhost\.?$/i.test(bare)) return true;
  const family = isIP(bare);
  return family !== 0 && LOOPBACK.check(bare, family === 4 ? "ipv4" : "ipv6");
}

/**
 * The warning to log at start when `/v1/credentials` would be served over plain HTTP on an
 * address other machines can reach (ID tokens are bearer credentials: anyone on the path could
 * replay one); undefined when TLS is on or the listener is loopback-only. `listen` is
 * natsbind.yaml's http.listen ("host:port", "[v6]:port"). A host name other than localhost counts
 * as reachable: it may resolve to any interface.
 */
export function plainHttpWarning(listen: string, tls: boolean): string | undefined {
  if (tls) return undefined;
  const host = listen.slice(0, Math.max(0, listen.lastIndexOf(":")));
  if (isLoopbackHost(host)) return undefined;
  return (
    `serving /v1/credentials over plain HTTP on ${listen}, which is not a loopback address: ` +
    "CI ID tokens and the credentials issued for them cross the network unencrypted; " +
    "set http.tls (certFile, keyFile) or terminate TLS in front of natsbind (an Ingress) and " +
    "listen on a loopback or cluster-internal address"
  );
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

  const maxHeaderBytes = opts.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES;
  if (!Number.isSafeInteger(maxHeaderBytes) || maxHeaderBytes < 1024)
    throw new HttpServerError("maxHeaderBytes: must be an integer of at least 1024");
  const serverOptions = {
    headersTimeout: timeouts.headersMs,
    requestTimeout: timeouts.requestMs,
    keepAliveTimeout: timeouts.keepAliveMs,
    // How often headersTimeout/requestTimeout are enforced (default 30 s would dwarf them).
    connectionsCheckingInterval: Math.min(1_000, timeouts.headersMs, timeouts.requestMs),
    maxHeaderSize: maxHeaderBytes,
  };
  const tlsFiles = opts.tls ? { certFile: opts.tls.certFile, keyFile: opts.tls.keyFile } : undefined;
  let tlsPair: Awaited<ReturnType<typeof readTlsPair>> | undefined;
  if (tlsFiles) {
    // A pair that cannot serve is a start-up error naming the files, not a listener that fails
    // every handshake.
    try {
      tlsPair = await readTlsPair(tlsFiles);
      checkTlsPair(tlsPair, tlsFiles);
    } catch (err) {
      throw new HttpServerError(describeError(err), { cause: err });
    }
  }

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
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
  };
  const server: Server = tlsPair
    ? createHttpsServer(
        // The TLS handshake is part of the head: bound it like the headers.
        { ...serverOptions, cert: tlsPair.cert, key: tlsPair.key, handshakeTimeout: timeouts.headersMs },
        onRequest,
      )
    : createServer(serverOptions, onRequest);

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

  let tlsWatcher: TlsWatcher | undefined;
  if (tlsFiles && tlsPair) {
    const httpsServer = server as unknown as HttpsServer;
    tlsWatcher = watchTlsFiles({
      files: tlsFiles,
      current: tlsPair,
      // Only connections accepted after this get the new context.
      apply: (pair) => httpsServer.setSecureContext({ cert: pair.cert, key: pair.key }),
      ...(opts.log ? { log: opts.log } : {}),
      ...(opts.tls?.pollIntervalMs !== undefined ? { pollIntervalMs: opts.tls.pollIntervalMs } : {}),
      ...(opts.tls?.debounceMs !== undefined ? { debounceMs: opts.tls.debounceMs } : {}),
    });
  }

  let closed: Promise<void> | undefined;
  return {
    url: `${tlsFiles ? "https" : "http"}://${hostForUrl(opts.host)}:${port}`,
    port,
    ...(tlsWatcher ? { reloadTls: tlsWatcher.reload } : {}),
    close(): Promise<void> {
      closed ??= new Promise<void>((resolve, reject) => {
        closing = true;
        tlsWatcher?.close();
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
