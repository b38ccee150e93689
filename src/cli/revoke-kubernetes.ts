/**
 * `natsbind credentials revoke` in Kubernetes mode (loaded only there: client-node is large). The
 * entries are written straight into the account's Secret with SecretKeyStore.update: the
 * apiserver's resourceVersion serialises this writer with natsbind's leader (a conflict re-reads
 * and applies the pure change again). The leader's Secret informer sees a change it did not make
 * and reconciles the binding, which pushes the account JWT with the entries; this command waits
 * until the resolver's JWT carries them. It reads through a Secret informer of the binding's
 * namespace, as natsbind does (src/k8s/mode.ts), and writes nothing but those updates.
 */
import { CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import type { Config } from "../config/config.ts";
import type { OpenedAuditSink } from "../credentials/audit.ts";
import { describeError, NatsbindError } from "../errors.ts";
import { isNotFound } from "../k8s/api-errors.ts";
import { GROUP, PLURAL, VERSION } from "../k8s/bindings.ts";
import { kubeConfigFrom } from "../k8s/mode.ts";
import { parseBindingKey, SecretKeyStore } from "../k8s/secret-keystore.ts";
import { connectResolver } from "../nats/from-config.ts";
import type { NatsResolver } from "../nats/resolver.ts";
import { createLogger, redactSecrets } from "../observability/logger.ts";
import { revocationRetentionMs } from "../main.ts";
import { changeRevocations } from "../rotation/revocations.ts";
import { systemClock } from "../runtime/clock.ts";
import {
  auditEvents,
  checkRevocationsFit,
  COMMAND,
  describeSlot,
  openSink,
  report,
  resolverCarries,
  revocationTargets,
  targetSlots,
  writeAudit,
  type RevocationTarget,
  type RevokeArgs,
} from "./revoke.ts";
import { RequestTimeoutError } from "./slot-requests.ts";
import { UsageError } from "./usage.ts";

/** Kubernetes: the Secret informer of the binding's namespace, synced, or an error by the deadline. */
async function startSecretInformer(kc: KubeConfig, namespace: string, deadline: number) {
  const informer = SecretKeyStore.informer({
    kubeConfig: kc,
    namespace,
    clock: systemClock,
    log: createLogger({ level: "error", base: { app: "natsbind" } }),
  });
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      informer.start(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new NatsbindError(
                `the account Secrets of namespace ${namespace} could not be listed in time: is the apiserver reachable, and may this kubeconfig list Secrets there?`,
              ),
            ),
          Math.max(0, deadline - Date.now()),
        );
      }),
    ]);
  } catch (err) {
    informer.stop();
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return informer;
}

export async function revokeInKubernetes(
  a: RevokeArgs,
  config: Config,
  say: (line: string) => void,
): Promise<void> {
  let namespace: string;
  let name: string;
  try {
    ({ namespace, name } = parseBindingKey(a.binding));
  } catch {
    throw new UsageError(
      `${COMMAND}: in Kubernetes mode --binding is NAMESPACE/NAME, e.g. team-a/acme (got ${JSON.stringify(redactSecrets(a.binding, 80))})`,
    );
  }
  const deadline = Date.now() + a.timeoutMs;
  const overlapMs = revocationRetentionMs(config);
  const kc = await kubeConfigFrom(config.kubernetes.kubeconfig);
  try {
    await kc.makeApiClient(CustomObjectsApi).getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural: PLURAL,
      name,
    });
  } catch (err) {
    if (isNotFound(err)) throw new UsageError(`${COMMAND}: no NatsBinding ${name} in namespace ${namespace}`);
    throw new NatsbindError(`read NatsBinding ${namespace}/${name}: ${describeError(err)}`);
  }
  const informer = await startSecretInformer(kc, namespace, deadline);
  let sink: OpenedAuditSink | undefined;
  let resolver: NatsResolver | undefined;
  try {
    // Read-only apart from update(): no Secret is created, so no owner is needed.
    const keys = new SecretKeyStore({ kubeConfig: kc, secrets: informer, owner: () => undefined });
    const slots = targetSlots(await keys.list(a.binding), a.binding, a.projectId, a.environment);
    sink = await openSink(config);
    ({ resolver } = await connectResolver(config.nats));
    const nowSec = Math.floor(Date.now() / 1000);
    const targets = await revocationTargets(a, slots, config, resolver, nowSec, say);
    for (const t of targets) checkRevocationsFit(t.slot, t.entries, Date.now(), overlapMs);

    const stored: RevocationTarget[] = [];
    try {
      for (const t of targets) {
        const slot = await keys.update(t.slot.ref, (s) => {
          // Checked again on the Secret as it is now (another writer may have added entries).
          checkRevocationsFit(s, t.entries, Date.now(), overlapMs);
          return changeRevocations(t.entries, Date.now(), overlapMs)(s);
        });
        stored.push({ slot, entries: t.entries });
        say(`revocation stored in the Secret of account ${slot.account} (${describeSlot(slot.ref)})`);
      }
    } finally {
      // Whatever was stored is audited, even when a later slot failed.
      const s = sink;
      sink = undefined;
      await writeAudit(s, auditEvents(a, a.binding, stored));
    }

    say("waiting for natsbind's leader to push it (it watches the account Secrets)");
    for (;;) {
      if (await resolverCarries(resolver, stored, overlapMs)) break;
      if (Date.now() > deadline)
        throw new RequestTimeoutError(
          `not on the NATS servers after ${Math.round(a.timeoutMs / 1000)} s: the revocation is stored in the ` +
            `account Secret(s) and natsbind's leader pushes it when it reconciles binding ${a.binding}; ` +
            "is natsbind running? See its Events (kubectl describe natsbinding) and logs",
        );
      await new Promise((r) => setTimeout(r, 200));
    }
    report(stored, config, overlapMs, say);
  } finally {
    informer.stop();
    await sink?.close();
    await resolver?.close();
  }
}
