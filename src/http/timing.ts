/**
 * A route handler wrapped to observe how long its answers take, by status code: from the request
 * reaching the handler to the response being closed (sent, or the connection gone).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Histogram } from "../observability/metrics.ts";

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

export function timedHandler(handler: Handler, histogram: Histogram<"code">): Handler {
  return (req, res) => {
    const started = performance.now();
    res.once("close", () => {
      histogram.labels({ code: String(res.statusCode) }).observe((performance.now() - started) / 1000);
    });
    handler(req, res);
  };
}
