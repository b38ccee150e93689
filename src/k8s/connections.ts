/**
 * Kubernetes API connections reused across requests.
 *
 * client-node 2.x (KubeConfig.applySecurityAuthentication) builds a new undici Agent for every
 * request whenever the cluster has TLS options (a CA, a client certificate, or skipTLSVerify, i.e.
 * every real cluster), so every request opens its own TCP + TLS connection: 10,000 Secret creates
 * were 10,000 handshakes, ~4x the wall time and ~3x the client CPU of the same creates over kept-
 * alive connections (bench/k8s.ts), and the apiserver paid for each handshake too. This keeps one
 * Agent (a pool of keep-alive connections) per cluster and TLS options, built by client-node's own
 * factory; only a change of those options (a rotated client certificate from an exec plugin) makes
 * a new one, and the previous one is closed once its requests (watches included) are done.
 * Credentials in headers (tokens, re-read by client-node per request) are unaffected.
 */
import { createHash } from "node:crypto";
import type { AgentOptions } from "node:https";
import type { Cluster, KubeConfig } from "@kubernetes/client-node";

interface Dispatcher {
  close(): Promise<void>;
}

type DispatcherFactory = (cluster: Cluster | null, agentOptions: AgentOptions) => Dispatcher | undefined;

/**
 * Makes every API client, watch and list of `kc` share connections. Returns false (and leaves `kc`
 * as it was, one connection per request) when client-node no longer has the factory this wraps;
 * test/integration/k8s-connections.test.ts fails then.
 */
export function reuseConnections(kc: KubeConfig): boolean {
  const target = kc as unknown as { createDispatcher?: DispatcherFactory };
  const make = target.createDispatcher;
  if (typeof make !== "function") return false;
  const current = new Map<string, { options: string; dispatcher: Dispatcher | undefined }>();
  target.createDispatcher = (cluster, agentOptions) => {
    // What the Agent is built from: the cluster and the TLS options client-node derived for it.
    const options = createHash("sha256")
      .update(JSON.stringify([cluster?.server, kc.createDispatcherOptions(cluster, agentOptions)]))
      .digest("hex");
    const slot = cluster?.name ?? "";
    const held = current.get(slot);
    if (held && held.options === options) return held.dispatcher;
    const dispatcher = make.call(kc, cluster, agentOptions);
    current.set(slot, { options, dispatcher });
    void held?.dispatcher?.close().catch(() => undefined);
    return dispatcher;
  };
  return true;
}
