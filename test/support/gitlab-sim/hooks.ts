// System hooks and group webhooks: matching events to hooks, queueing, delivering, redelivering.
import { randomUUID } from "node:crypto";
import type { SimEvent } from "./store.ts";
import type { Delivery } from "./types.ts";

export interface SimHook {
  id: number;
  kind: "system" | "group";
  /** For group hooks. */
  groupId: number | null;
  url: string;
  secretToken: string;
}

interface Pending {
  hook: SimHook;
  header: string;
  payload: Record<string, unknown>;
  eventUuid: string;
  idempotencyKey: string;
}

export interface HookSettings {
  instanceUrl: string;
  version: string;
  timeoutMs: number;
}

export class HookQueue {
  private readonly hooks: SimHook[] = [];
  private pending: Pending[] = [];
  /** Every delivered event by Idempotency-Key, for redeliver(). */
  private readonly sent = new Map<string, { pending: Pending; attempts: number }>();
  private hookSeq = 0;

  private readonly settings: HookSettings;

  constructor(settings: HookSettings) {
    this.settings = settings;
  }

  addSystemHook(url: string, secretToken: string): SimHook {
    return this.add({ kind: "system", groupId: null, url, secretToken });
  }

  addGroupHook(groupId: number, url: string, secretToken: string): SimHook {
    return this.add({ kind: "group", groupId, url, secretToken });
  }

  private add(o: Omit<SimHook, "id">): SimHook {
    const hook: SimHook = { id: ++this.hookSeq, ...o };
    this.hooks.push(hook);
    return hook;
  }

  /** Group hooks of deleted groups go away with them (queued deliveries stay). */
  removeGroupHooks(groupIds: readonly number[]): void {
    const gone = new Set(groupIds);
    for (let i = this.hooks.length - 1; i >= 0; i--) {
      const hook = this.hooks[i] as SimHook;
      if (hook.kind === "group" && hook.groupId !== null && gone.has(hook.groupId)) this.hooks.splice(i, 1);
    }
  }

  pendingSummary(): Array<{ event: string; eventName: string; url: string }> {
    return this.pending.map((p) => ({
      event: p.header,
      eventName: String(p.payload.event_name),
      url: p.hook.url,
    }));
  }

  /** One mutation's events: one X-Gitlab-Event-UUID for all, one Idempotency-Key per (hook, event). */
  enqueue(events: readonly SimEvent[]): void {
    if (this.hooks.length === 0 || events.length === 0) return;
    const eventUuid = randomUUID();
    for (const event of events) {
      for (const hook of this.hooks) {
        let header: string;
        if (event.target === "system") {
          if (hook.kind !== "system") continue;
          header = "System Hook";
        } else {
          if (hook.kind !== "group" || hook.groupId === null || !event.groupIds.includes(hook.groupId))
            continue;
          header = event.header;
        }
        this.pending.push({
          hook,
          header,
          payload: structuredClone(event.payload),
          eventUuid,
          idempotencyKey: randomUUID(),
        });
      }
    }
  }

  /** POSTs everything queued, one at a time, in order. */
  async deliverPending(): Promise<Delivery[]> {
    const batch = this.pending;
    this.pending = [];
    const out: Delivery[] = [];
    for (const p of batch) {
      this.sent.set(p.idempotencyKey, { pending: p, attempts: 1 });
      out.push(await this.post(p, 1));
    }
    return out;
  }

  /** Sends the delivery's event again: same Idempotency-Key and X-Gitlab-Event-UUID, new Webhook-UUID. */
  async redeliver(d: Pick<Delivery, "idempotencyKey">): Promise<Delivery> {
    const entry = this.sent.get(d.idempotencyKey);
    if (!entry) throw new Error(`gitlab-sim: no delivery with Idempotency-Key ${d.idempotencyKey}`);
    entry.attempts += 1;
    return this.post(entry.pending, entry.attempts);
  }

  private async post(p: Pending, attempt: number): Promise<Delivery> {
    const webhookUuid = randomUUID();
    const headers: Record<string, string> = {
      "Content-Type": "application/json",
      "User-Agent": `GitLab/${this.settings.version}`,
      "X-Gitlab-Event": p.header,
      "X-Gitlab-Webhook-UUID": webhookUuid,
      "X-Gitlab-Instance": this.settings.instanceUrl,
      "X-Gitlab-Event-UUID": p.eventUuid,
      "Idempotency-Key": p.idempotencyKey,
    };
    if (p.hook.secretToken !== "") headers["X-Gitlab-Token"] = p.hook.secretToken;
    const delivery: Delivery = {
      uuid: p.eventUuid,
      idempotencyKey: p.idempotencyKey,
      event: p.header,
      eventName: String(p.payload.event_name),
      url: p.hook.url,
      status: 0,
      webhookUuid,
      hookId: p.hook.id,
      attempt,
      payload: structuredClone(p.payload),
      headers,
    };
    try {
      const res = await fetch(p.hook.url, {
        method: "POST",
        headers,
        body: JSON.stringify(p.payload),
        signal: AbortSignal.timeout(this.settings.timeoutMs),
        redirect: "manual",
      });
      delivery.status = res.status;
      await res.arrayBuffer().catch(() => undefined);
    } catch (err) {
      delivery.error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    }
    return delivery;
  }
}
