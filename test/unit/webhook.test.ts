import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:http";
import { TerminalError } from "../../src/errors.ts";
import { parseWebhook } from "../../src/gitlab/signals.ts";
import type { GitLabSignal } from "../../src/gitlab/signals.ts";
import { DeliveryDedupe, WEBHOOK_PATH, createWebhookHandler } from "../../src/gitlab/webhook.ts";
import type { WebhookHandler, WebhookHandlerOptions } from "../../src/gitlab/webhook.ts";
import { startHttpServer } from "../../src/http/server.ts";
import type { HttpServer } from "../../src/http/server.ts";

const SECRET = "s3cret-webhook-token";
const MAX_BODY = 4096;

const renamePayload = {
  event_name: "project_rename",
  created_at: "2024-01-01T00:00:00Z",
  updated_at: "2024-01-02T00:00:00Z",
  name: "api",
  path: "api",
  path_with_namespace: "platform/api",
  project_id: 42,
  project_namespace_id: 7,
  owner_name: "Someone",
  owner_email: "someone@example.com",
  owners: [{ name: "Someone", email: "someone@example.com" }],
  project_visibility: "private",
  old_path_with_namespace: "platform/api-old",
};

type Harness = {
  server: HttpServer;
  url: string;
  signals: GitLabSignal[];
  logs: { level: string; obj: Record<string, unknown>; msg: string }[];
  handler: WebhookHandler;
  clock: { now: number };
};

async function harness(overrides: Partial<WebhookHandlerOptions> = {}): Promise<Harness> {
  const signals: GitLabSignal[] = [];
  const logs: Harness["logs"] = [];
  const clock = { now: 1_700_000_000_000 };
  const handler = createWebhookHandler({
    secretToken: SECRET,
    maxBodyBytes: MAX_BODY,
    now: () => clock.now,
    onSignal: (s) => signals.push(s),
    log: {
      info: (obj, msg) => logs.push({ level: "info", obj, msg }),
      warn: (obj, msg) => logs.push({ level: "warn", obj, msg }),
    },
    ...overrides,
  });
  const server = await startHttpServer({ host: "127.0.0.1", port: 0, routes: { [WEBHOOK_PATH]: handler } });
  return { server, url: `${server.url}${WEBHOOK_PATH}`, signals, logs, handler, clock };
}

function deliver(
  h: Harness,
  body: unknown,
  headers: Record<string, string> = {},
  event = "System Hook",
): Promise<Response> {
  return fetch(h.url, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "x-gitlab-token": SECRET,
      "x-gitlab-event": event,
      ...headers,
    },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

async function waitFor(what: string, condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe("parseWebhook", () => {
  it("reads a system-hook project_rename", () => {
    assert.deepEqual(parseWebhook("System Hook", renamePayload), {
      ok: true,
      signal: {
        kind: "project",
        event: "project_rename",
        projectId: 42,
        namespaceId: 7,
        path: "platform/api",
        oldPath: "platform/api-old",
      },
    });
  });

  it("reads system-hook group events and drops null fields", () => {
    assert.deepEqual(
      parseWebhook("System Hook", {
        event_name: "group_rename",
        group_id: 9,
        name: "Platform",
        path: "platform2",
        full_path: "platform2",
        old_path: "platform",
        old_full_path: "platform",
      }),
      {
        ok: true,
        signal: {
          kind: "group",
          event: "group_rename",
          groupId: 9,
          fullPath: "platform2",
          oldFullPath: "platform",
        },
      },
    );
    assert.deepEqual(
      parseWebhook("System Hook", {
        event_name: "group_destroy",
        group_id: 9,
        full_path: null,
        old_full_path: null,
      }),
      { ok: true, signal: { kind: "group", event: "group_destroy", groupId: 9 } },
    );
  });

  it("reads group-webhook project and subgroup events", () => {
    assert.deepEqual(
      parseWebhook("Project Hook", {
        event_name: "project_create",
        project_id: 43,
        project_namespace_id: 9,
        path_with_namespace: "platform/new",
      }),
      {
        ok: true,
        signal: {
          kind: "project",
          event: "project_create",
          projectId: 43,
          namespaceId: 9,
          path: "platform/new",
        },
      },
    );
    assert.deepEqual(
      parseWebhook("Subgroup Hook", {
        event_name: "subgroup_destroy",
        group_id: 11,
        name: "team",
        path: "team",
        full_path: "platform/team",
        parent_group_id: 9,
        parent_name: "Platform",
        parent_path: "platform",
        parent_full_path: "platform",
      }),
      {
        ok: true,
        signal: {
          kind: "group",
          event: "subgroup_destroy",
          groupId: 11,
          fullPath: "platform/team",
          parentGroupId: 9,
        },
      },
    );
  });

  it("calls unhandled headers and event names unknown", () => {
    for (const [header, body] of [
      [undefined, renamePayload],
      ["Push Hook", renamePayload],
      ["system hook", renamePayload],
      ["System Hook", { ...renamePayload, event_name: "repository_update" }],
      ["System Hook", { object_kind: "merge_request" }],
      ["Group Hook", { event_name: "user_add_to_group", group_id: 1 }],
    ] as const) {
      const result = parseWebhook(header, body);
      assert.equal(result.ok, false);
      assert.equal(!result.ok && result.reason, "unknown-event", `${header} ${JSON.stringify(body)}`);
    }
    const long = parseWebhook("System Hook", { event_name: "x".repeat(5000) });
    assert.ok(!long.ok && long.message.length < 200, "long event names are cut in messages");
  });

  it("refuses broken payloads naming the field", () => {
    const cases: [unknown, RegExp][] = [
      [{ ...renamePayload, project_id: "abc" }, /project_id: must be a positive integer/],
      [{ ...renamePayload, project_id: 0 }, /project_id: must be a positive integer/],
      [{ ...renamePayload, project_id: -3 }, /project_id: must be a positive integer/],
      [{ ...renamePayload, project_id: 1.5 }, /project_id: must be a positive integer/],
      [{ ...renamePayload, project_id: 2 ** 53 }, /project_id: must be a positive integer/],
      [{ ...renamePayload, project_id: undefined }, /project_id: is required/],
      [{ ...renamePayload, project_namespace_id: "7" }, /project_namespace_id: must be a positive integer/],
      [
        { ...renamePayload, path_with_namespace: "a".repeat(1025) },
        /path_with_namespace: must be at most 1024/,
      ],
      [{ ...renamePayload, old_path_with_namespace: "" }, /old_path_with_namespace: must not be empty/],
      [{ ...renamePayload, path_with_namespace: "a\nb" }, /path_with_namespace: must not contain control/],
      [{ event_name: "subgroup_create", group_id: 5, parent_group_id: "x" }, /parent_group_id: must be a/],
      [{ event_name: "group_create", full_path: "g" }, /group_id: is required/],
      [{ event_name: 5 }, /event_name: must be a string/],
      [[renamePayload], /body must be a JSON object/],
      [null, /body must be a JSON object/],
    ];
    for (const [body, message] of cases) {
      const result = parseWebhook("System Hook", body);
      assert.equal(result.ok, false, JSON.stringify(body));
      assert.equal(!result.ok && result.reason, "invalid");
      assert.match(!result.ok ? result.message : "", message);
    }
    assert.ok(parseWebhook("System Hook", { ...renamePayload, path_with_namespace: "a".repeat(1024) }).ok);
  });
});

describe("DeliveryDedupe", () => {
  it("forgets keys after the TTL and drops the least recently seen beyond maxEntries", () => {
    const dedupe = new DeliveryDedupe(2, 1_000);
    dedupe.add("a", 0);
    assert.equal(dedupe.has("a", 999), true);
    assert.equal(dedupe.has("a", 1_000), false);
    assert.equal(dedupe.size, 0);

    dedupe.add("a", 0);
    dedupe.add("b", 1);
    assert.equal(dedupe.has("a", 2), true); // a is now the most recently seen
    dedupe.add("c", 3);
    assert.equal(dedupe.size, 2);
    assert.equal(dedupe.has("b", 4), false);
    assert.equal(dedupe.has("a", 4), true);
    assert.equal(dedupe.has("c", 4), true);
  });
});

describe("gitlab webhook receiver", () => {
  let h: Harness;
  before(async () => {
    h = await harness();
  });
  after(async () => {
    await h.server.close();
  });

  it("accepts a system-hook project_rename and emits one signal", async () => {
    const before = h.signals.length;
    const res = await deliver(h, renamePayload);
    assert.equal(res.status, 202);
    assert.deepEqual(await res.json(), { status: "accepted" });
    await waitFor("the signal", () => h.signals.length > before);
    assert.equal(h.signals.length, before + 1);
    assert.deepEqual(h.signals.at(-1), {
      kind: "project",
      event: "project_rename",
      projectId: 42,
      namespaceId: 7,
      path: "platform/api",
      oldPath: "platform/api-old",
    });
  });

  it("answers 401 and emits nothing for a wrong, missing or different-length token", async () => {
    const before = h.signals.length;
    const rejected = h.handler.counters.rejected.unauthorized;
    for (const token of [
      "s3cret-webhook-tokeN", // same length, last byte differs
      "s",
      SECRET + "x",
      "x".repeat(8192),
      "",
      undefined,
    ]) {
      const headers: Record<string, string> = {
        "content-type": "application/json",
        "x-gitlab-event": "System Hook",
      };
      if (token !== undefined) headers["x-gitlab-token"] = token;
      const res = await fetch(h.url, { method: "POST", headers, body: JSON.stringify(renamePayload) });
      assert.equal(res.status, 401, `token of length ${token?.length}`);
      assert.deepEqual(await res.json(), { error: "missing or wrong X-Gitlab-Token" });
    }
    assert.equal(h.signals.length, before);
    assert.equal(h.handler.counters.rejected.unauthorized, rejected + 6);
  });

  it("answers 413 for a body over the limit, declared by Content-Length", async () => {
    const before = h.signals.length;
    const big = { ...renamePayload, padding: "x".repeat(MAX_BODY) };
    const res = await deliver(h, big);
    assert.equal(res.status, 413);
    assert.deepEqual(await res.json(), { error: `body larger than ${MAX_BODY} bytes` });
    assert.equal(h.signals.length, before);
    // The connection is still usable: the next delivery goes through.
    const next = await deliver(h, renamePayload);
    assert.equal(next.status, 202);
    await next.text();
  });

  it("answers 413 for a chunked body without Content-Length once it passes the limit", async () => {
    const before = h.signals.length;
    const tooLarge = h.handler.counters.rejected["too-large"];
    const text = JSON.stringify({ ...renamePayload, padding: "x".repeat(MAX_BODY) });
    const bytes = new TextEncoder().encode(text);
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < bytes.length; i += 512) controller.enqueue(bytes.subarray(i, i + 512));
        controller.close();
      },
    });
    const res = await fetch(h.url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-gitlab-token": SECRET,
        "x-gitlab-event": "System Hook",
      },
      body,
      duplex: "half",
    } as RequestInit);
    assert.equal(res.status, 413);
    await res.text();
    assert.equal(h.signals.length, before);
    assert.equal(h.handler.counters.rejected["too-large"], tooLarge + 1);
  });

  it("answers 413 without Content-Length on a raw chunked request", async () => {
    // node:http, to be sure no Content-Length is sent and the body arrives in several chunks.
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(
        h.url,
        {
          method: "POST",
          headers: {
            "content-type": "application/json",
            "x-gitlab-token": SECRET,
            "x-gitlab-event": "System Hook",
          },
        },
        (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
        },
      );
      req.on("error", reject);
      for (let i = 0; i < 4; i++) req.write("x".repeat(MAX_BODY / 2));
      req.end();
    });
    assert.equal(status, 413);
  });

  it("answers 415 for a body that is not JSON by Content-Type", async () => {
    const res = await deliver(h, renamePayload, { "content-type": "text/plain" });
    assert.equal(res.status, 415);
    await res.text();
    const ok = await deliver(h, renamePayload, { "content-type": "application/json; charset=utf-8" });
    assert.equal(ok.status, 202);
    await ok.text();
  });

  it("answers 405 to anything but POST", async () => {
    const res = await fetch(h.url, { headers: { "x-gitlab-token": SECRET } });
    assert.equal(res.status, 405);
    assert.equal(res.headers.get("allow"), "POST");
    await res.text();
  });

  it("answers 400 for malformed JSON", async () => {
    const before = h.signals.length;
    const res = await deliver(h, '{"event_name": "project_rename", ');
    assert.equal(res.status, 400);
    assert.deepEqual(await res.json(), { error: "body is not valid JSON" });
    assert.equal(h.signals.length, before);
  });

  // Issue 9, finding 9: nesting is bounded before JSON.parse builds it.
  it("answers 400 to a body nested deeper than 64 levels, before parsing it", async () => {
    const before = h.signals.length;
    const res = await deliver(h, `{"event_name": ${"[".repeat(MAX_BODY - 20)}`);
    assert.equal(res.status, 400);
    assert.deepEqual(await res.json(), { error: "body nests deeper than 64 levels at line 1; not parsed" });
    assert.equal(h.signals.length, before);
    assert.equal(h.handler.counters.rejected["malformed-json"] >= 1, true);
  });

  it("answers 202 to an unknown event and emits nothing", async () => {
    const before = h.signals.length;
    const ignored = h.handler.counters.ignored;
    for (const [event, body] of [
      ["System Hook", { event_name: "user_create", user_id: 5 }],
      ["Push Hook", { object_kind: "push" }],
    ] as const) {
      const res = await deliver(h, body, {}, event);
      assert.equal(res.status, 202);
      assert.deepEqual(await res.json(), { status: "ignored" });
    }
    assert.equal(h.signals.length, before);
    assert.equal(h.handler.counters.ignored, ignored + 2);
  });

  it("answers 400 naming the field for an invalid payload", async () => {
    const before = h.signals.length;
    const res = await deliver(h, { ...renamePayload, project_id: "abc" });
    assert.equal(res.status, 400);
    const body = (await res.json()) as { error: string };
    assert.match(body.error, /project_id/);
    assert.match(body.error, /must be a positive integer/);
    assert.equal(h.signals.length, before);
  });

  it("processes a retried delivery with the same Idempotency-Key once", async () => {
    const before = h.signals.length;
    const duplicates = h.handler.counters.duplicates;
    const headers = { "idempotency-key": "0b9c6d3e-5f51-4a35-9d0e-8f1a2b3c4d5e" };
    const first = await deliver(h, renamePayload, headers);
    assert.equal(first.status, 202);
    await first.text();
    const retry = await deliver(h, renamePayload, headers);
    assert.equal(retry.status, 200);
    assert.deepEqual(await retry.json(), { status: "duplicate" });
    await waitFor("the signal", () => h.signals.length > before);
    assert.equal(h.signals.length, before + 1);
    assert.equal(h.handler.counters.duplicates, duplicates + 1);
    // Another delivery is not a retry.
    const other = await deliver(h, renamePayload, { "idempotency-key": "another" });
    assert.equal(other.status, 202);
    await other.text();
    assert.equal(h.signals.length, before + 2);
  });

  it("falls back to X-Gitlab-Event-UUID for dedupe", async () => {
    const before = h.signals.length;
    const headers = { "x-gitlab-event-uuid": "13792a34-cac6-4fda-95a8-c58e00a3954e" };
    assert.equal((await deliver(h, renamePayload, headers)).status, 202);
    assert.equal((await deliver(h, renamePayload, headers)).status, 200);
    assert.equal(h.signals.length, before + 1);
  });

  it("refuses an overlong Idempotency-Key", async () => {
    const res = await deliver(h, renamePayload, { "idempotency-key": "k".repeat(1000) });
    assert.equal(res.status, 400);
    assert.match(((await res.json()) as { error: string }).error, /Idempotency-Key/);
  });

  it("never logs the token or the body", () => {
    const logged = JSON.stringify(h.logs);
    assert.ok(h.logs.length > 0);
    assert.ok(!logged.includes(SECRET), "token in logs");
    assert.ok(!logged.includes("someone@example.com"), "body in logs");
    assert.ok(!logged.includes("platform/api-old"), "body in logs");
  });
});

describe("gitlab webhook receiver, with a fake clock and failing sinks", () => {
  it("forgets a delivery key after the TTL", async () => {
    const h = await harness({ dedupe: { ttlMs: 60_000 } });
    try {
      const headers = { "idempotency-key": "retry-me" };
      assert.equal((await deliver(h, renamePayload, headers)).status, 202);
      h.clock.now += 59_999;
      assert.equal((await deliver(h, renamePayload, headers)).status, 200);
      h.clock.now += 1;
      assert.equal((await deliver(h, renamePayload, headers)).status, 202, "expired: a new delivery");
      assert.equal(h.signals.length, 2);
    } finally {
      await h.server.close();
    }
  });

  it("keeps at most maxEntries delivery keys", async () => {
    const h = await harness({ dedupe: { maxEntries: 2 } });
    try {
      for (const key of ["a", "b", "c"])
        assert.equal((await deliver(h, renamePayload, { "idempotency-key": key })).status, 202);
      assert.equal(
        (await deliver(h, renamePayload, { "idempotency-key": "a" })).status,
        202,
        "a was evicted",
      );
      assert.equal((await deliver(h, renamePayload, { "idempotency-key": "c" })).status, 200);
    } finally {
      await h.server.close();
    }
  });

  it("keeps serving when onSignal throws", async () => {
    let calls = 0;
    const h = await harness({
      onSignal: () => {
        calls += 1;
        throw new Error("queue is broken");
      },
    });
    try {
      const first = await deliver(h, renamePayload);
      assert.equal(first.status, 202);
      await first.text();
      const second = await deliver(h, { ...renamePayload, project_id: 43 });
      assert.equal(second.status, 202);
      await second.text();
      await waitFor("both signals", () => calls === 2);
      assert.equal(h.handler.counters.sinkErrors, 2);
      assert.equal(h.handler.counters.accepted, 2);
      assert.ok(h.logs.some((l) => l.level === "warn" && /sink threw/.test(l.msg)));
    } finally {
      await h.server.close();
    }
  });

  it("bounds authenticated bodies in flight: over budget they wait unread, past the line 503", async () => {
    const h = await harness({ inFlight: { maxRequests: 1, maxWaiting: 1 } });
    try {
      const body = JSON.stringify(renamePayload);
      // The first delivery sends half its body and holds the only slot.
      const first = request(h.url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "content-length": String(Buffer.byteLength(body)),
          "x-gitlab-token": SECRET,
          "x-gitlab-event": "System Hook",
        },
      });
      const firstAnswer = new Promise<number>((resolve, reject) => {
        first.on("response", (res) => {
          res.resume();
          resolve(res.statusCode!);
        });
        first.on("error", reject);
      });
      first.write(body.slice(0, 10));
      await waitFor("the first delivery in flight", () => h.handler.counters.received === 1);
      const second = deliver(h, { ...renamePayload, project_id: 43 });
      await waitFor("the second delivery waiting", () => h.handler.counters.received === 2);
      const third = await deliver(h, { ...renamePayload, project_id: 44 });
      assert.equal(third.status, 503, "the waiting line is full");
      assert.equal(h.handler.counters.rejected.busy, 1);
      assert.equal(h.signals.length, 0, "nothing applied while the first body is incomplete");
      first.end(body.slice(10));
      assert.equal(await firstAnswer, 202);
      assert.equal((await second).status, 202, "the waiting delivery is read once the slot is free");
      await waitFor("both signals", () => h.signals.length === 2);
      assert.deepEqual(
        h.signals.map((s) => (s.kind === "project" ? s.projectId : 0)),
        [42, 43],
      );
    } finally {
      await h.server.close();
    }
  });

  it("refuses an empty secret and bad limits at construction", () => {
    assert.throws(() => createWebhookHandler({ secretToken: "", onSignal: () => {} }), TerminalError);
    assert.throws(
      () => createWebhookHandler({ secretToken: "x", maxBodyBytes: 0, onSignal: () => {} }),
      /maxBodyBytes/,
    );
    assert.throws(
      () => createWebhookHandler({ secretToken: "x", dedupe: { ttlMs: -1 }, onSignal: () => {} }),
      /dedupe\.ttlMs/,
    );
  });
});
