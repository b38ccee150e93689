/**
 * The contract between runController (src/main.ts, the composition root) and a mode: what it
 * hands local mode (in main.ts) and Kubernetes mode (src/k8s/mode.ts), and what a mode gives
 * back. In its own file so that a mode depends on the contract, not on the root that imports it.
 */
import type { KeyPair } from "@nats-io/nkeys";
import type { Config } from "./config/config.ts";
import type { ProjectInventories } from "./controllers/binding/projects.ts";
import type { ReconcilerEvents } from "./controllers/binding/reconciler.ts";
import type { CredentialSources } from "./credentials/directory.ts";
import type { GitLabPort } from "./gitlab/port.ts";
import type { GitLabSignal } from "./gitlab/signals.ts";
import type { KeyStore } from "./keystore/port.ts";
import type { AccountResolver } from "./nats/resolver.ts";
import type { Logger } from "./observability/logger.ts";
import type { Registry } from "./observability/metrics.ts";
import type { KeyRotator, RequestSource, RotationEvent } from "./rotation/rotator.ts";
import type { Clock } from "./runtime/clock.ts";
import type { Reconciler } from "./runtime/controller.ts";
import type { WorkQueue } from "./runtime/workqueue.ts";

export interface RunOptions {
  clock?: Clock;
  log?: Logger;
  workers?: number;
  /** Kubernetes mode: this replica's name in the Lease and in Events (default: host name + random). */
  identity?: string;
  /** Called after every reconcile: for tests and the demo. */
  onReconciled?: (key: string, outcome: string) => void;
  /** Called when an account was pushed: for tests and the demo. */
  onPushed?: (key: string, account: string, projectId: number) => void;
  /**
   * false: no CI credential doors (a CLI running the controller briefly); the rotation overlap still
   * follows config.credentials. Default: as configured.
   */
  credentials?: boolean;
  /** Called on every rotation phase change (src/rotation/rotator.ts): for tests and the CLI. */
  onRotation?: (key: string, event: RotationEvent) => void;
}

/** What runController hands a mode: the parts both modes share. */
export interface ModeContext {
  config: Config;
  clock: Clock;
  log: Logger;
  opts: RunOptions;
  queue: WorkQueue<string>;
  inventories: ProjectInventories;
  /** GitLab, for what the inventories do not cover (Kubernetes mode: the NatsBindingPolicy gate). */
  gitlab: GitLabPort;
  resolver: AccountResolver;
  signer: KeyPair;
  /** Keys whose account JWTs are natsbind's (with its tags): the operator JWT's, kept current. */
  trustedIssuers: ReadonlySet<string>;
  events: ReconcilerEvents;
  metrics: Registry;
  /** Builds and starts the controller around a reconciler; returns its stop. */
  startController(reconciler: Reconciler<string>): { stop(): Promise<void> };
  /** The HTTP listener's base URL (its real port when the config said 0). */
  url: string;
  /** Called by the mode when it starts or stops reconciling (signals are applied only while it does). */
  setReconciling(on: boolean): void;
  /**
   * Kubernetes mode: the key of the replica-to-replica webhook relay (derived from the webhook
   * secret); absent without a webhook secret.
   */
  relayKey: Buffer | undefined;
  /** Where a replica that does not reconcile puts the signals of deliveries it accepted. */
  setFollowerSignals(sink: (signal: GitLabSignal) => void): void;
  /** Called by the mode when it stopped on its own. */
  stoppedOnItsOwn(reason: string): void;
  /**
   * Where CI credential issuance finds bindings and keys (src/credentials/): every replica issues,
   * leader or not, so a mode sets this whether or not it reconciles.
   */
  setCredentialSources(sources: CredentialSources): void;
  /**
   * The rotation step over a mode's key store and request source (local: request files;
   * Kubernetes: annotations); `onEvent` adds the mode's own reporting (Kubernetes Events).
   */
  makeRotator(
    keys: KeyStore,
    requests: RequestSource,
    onEvent?: (key: string, event: RotationEvent) => void,
  ): KeyRotator;
}

export interface RunningMode {
  stop(): Promise<void>;
}
