/**
 * GitLab webhooks on a follower. Both replicas sit behind one Service, so about half of GitLab's
 * deliveries reach a replica that does not reconcile. Answering 503 would make GitLab disable the
 * hook; dropping them would leave changes to the next resync. A follower therefore relays each
 * delivery, unread, to the leader: the leader's holderIdentity in the Lease ends with
 * "@<its webhook base URL>" (see leaderIdentity()); the follower's elector reads the Lease every
 * retryPeriod anyway, so the relay asks it rather than the apiserver. The leader authenticates and validates it as
 * any delivery. A relayed delivery is never relayed again (no loops while the lease moves); with no
 * known leader, or when the leader does not answer, the follower answers 503.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { networkInterfaces } from "node:os";
import { WEBHOOK_PATH, DEFAULT_MAX_BODY_BYTES } from "../gitlab/webhook.ts";
import type { Logger } from "../observability/logger.ts";

export const RELAYED_HEADER = "x-natsbind-relayed";
/** Request headers a delivery keeps when relayed. */
const KEPT_HEADERS = [
  "content-type",
  "x-gitlab-token",
  "x-gitlab-event",
  "x-gitlab-event-uuid",
  "x-gitlab-webhook-uuid",
  "x-gitlab-instance",
  "idempotency-key",
  "user-agent",
];
const RELAY_TIMEOUT_MS = 5_000;

/**
 * This replica's holderIdentity: "<host>_<pid>@http://<address>:<port>". The address is the
 * listener's own when it binds one, else the first non-internal IPv4 address (the pod IP).
 */
export function leaderIdentity(hostName: string, pid: number, listen: string, port: number): string {
  const host = listen.slice(0, listen.lastIndexOf(":")).replace(/^\[|\]$/g, "");
  let address = host;
  if (host === "0.0.0.0" || host === "::" || host === "") {
    const external = Object.values(networkInterfaces())
      .flat()
      .find((i) => i && i.family === "IPv4" && !i.internal);
    address = external?.address ?? "127.0.0.1";
  }
  const shown = address.includes(":") ? `[${address}]` : address;
  return `${hostName}_${pid}@http://${shown}:${port}`;
}

/** The webhook base URL in a holderIdentity, if it has one. */
export function urlOfIdentity(identity: string | undefined): string | undefined {
  const at = identity?.lastIndexOf("@") ?? -1;
  if (!identity || at < 0) return undefined;
  const url = identity.slice(at + 1);
  return /^http:\/\/[^\s/@]+$/.test(url) ? url : undefined;
}

export interface WebhookRelayOptions {
  /** The holder identity of the Lease as last seen (LeaderElector.holder()). */
  leader: () => string | undefined;
  self: string;
  log: Logger;
}

export function createWebhookRelay(
  o: WebhookRelayOptions,
): (req: IncomingMessage, res: ServerResponse) => void {
  const leaderUrl = (): string | undefined => {
    const holder = o.leader();
    return holder && holder !== o.self ? urlOfIdentity(holder) : undefined;
  };

  const refuse = (res: ServerResponse, message: string): void => {
    if (res.headersSent) return;
    res.writeHead(503, { "content-type": "application/json", "retry-after": "5" });
    res.end(JSON.stringify({ message }));
  };

  return (req, res) => {
    void (async () => {
      if (req.method !== "POST") {
        req.resume();
        res.writeHead(405, { allow: "POST", "content-type": "application/json" });
        res.end(JSON.stringify({ message: "use POST" }));
        return;
      }
      if (req.headers[RELAYED_HEADER]) {
        req.resume();
        return refuse(res, "relayed to a replica that is not the leader either");
      }
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of req as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > DEFAULT_MAX_BODY_BYTES) {
          res.writeHead(413, { "content-type": "application/json" });
          res.end(JSON.stringify({ message: `body larger than ${DEFAULT_MAX_BODY_BYTES} bytes` }));
          return;
        }
        chunks.push(chunk);
      }
      const url = leaderUrl();
      if (!url) return refuse(res, "no natsbind leader to relay to");
      const headers: Record<string, string> = { [RELAYED_HEADER]: o.self };
      for (const name of KEPT_HEADERS) {
        const value = req.headers[name];
        if (typeof value === "string") headers[name] = value;
      }
      try {
        const answer = await fetch(`${url}${WEBHOOK_PATH}`, {
          method: req.method ?? "POST",
          headers,
          body: Buffer.concat(chunks),
          signal: AbortSignal.timeout(RELAY_TIMEOUT_MS),
        });
        const body = await answer.text();
        res.writeHead(answer.status, {
          "content-type": answer.headers.get("content-type") ?? "application/json",
        });
        res.end(body);
      } catch (err) {
        o.log.warn({ err, leader: url }, "webhook relay: the leader did not answer");
        refuse(res, "the natsbind leader did not answer");
      }
    })().catch((err) => {
      o.log.warn({ err }, "webhook relay failed");
      refuse(res, "relay failed");
    });
  };
}
