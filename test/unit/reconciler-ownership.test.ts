// The reconciler pushes over or deletes an account on the resolver only when the resolver has none
// for that key or holds natsbind's own JWT for the same slot (issuer + binding/project tags). Fakes:
// an in-memory resolver that counts requests, a directory key store in a temp dir, status and
// event recorders; the JWTs are really signed and verified.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseBinding } from "../../src/api/v1alpha1/schema.ts";
import type { NatsBinding } from "../../src/api/v1alpha1/types.ts";
import { heldOwner, ownerKey } from "../../src/controllers/binding/ownership.ts";
import {
  BindingReconciler,
  type BindingEntry,
  type Refusal,
} from "../../src/controllers/binding/reconciler.ts";
import type { BindingStatus } from "../../src/controllers/binding/status.ts";
import type { GitLabProject } from "../../src/gitlab/port.ts";
import { DirectoryKeyStore } from "../../src/keystore/directory.ts";
import type { AccountRef } from "../../src/keystore/port.ts";
import { accountClaims, decodeJwt, signJwt } from "../../src/nats/claims.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import type { AccountResolver, ResolverOutcome } from "../../src/nats/resolver.ts";
import { ManualClock } from "../../src/runtime/clock.ts";
import { fixedKeys } from "./fixed-keys.ts";

const KEY = "team-a/app";
const signer = fixedKeys.operatorSigning();
const operator = fixedKeys.operator();
const DRIFT_MS = 600_000;

let root: string;
let n = 0;
before(async () => {
  root = await mkdtemp(join(tmpdir(), "natsbind-ownership-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

function spec(deletionPolicy: "Delete" | "Retain" = "Delete"): NatsBinding {
  return parseBinding(
    {
      apiVersion: "natsbind.io/v1alpha1",
      kind: "NatsBinding",
      metadata: { name: "app", namespace: "team-a" },
      spec: {
        gitlab: { group: "team-a" },
        deletionPolicy,
        roles: [{ name: "ci", publish: { allow: ["ci.{{project.slug}}.>"] } }],
      },
    },
    "test",
  );
}

function project(id: number): GitLabProject {
  return {
    id,
    name: `p${id}`,
    path: `p${id}`,
    pathWithNamespace: `team-a/p${id}`,
    namespaceId: 10,
    namespaceFullPath: "team-a",
    visibility: "private",
    archived: false,
  };
}

/** A full resolver in memory: what it holds, and every request made to it. */
class FakeResolver implements AccountResolver {
  readonly held = new Map<string, string>();
  readonly calls: string[] = [];
  async push(jwt: string): Promise<ResolverOutcome> {
    const claims = decodeJwt(jwt);
    this.calls.push(`push ${claims.sub}`);
    this.held.set(claims.sub, jwt);
    return { accounts: [claims.sub], replies: [] };
  }
  async lookup(account: string): Promise<string | undefined> {
    this.calls.push(`lookup ${account}`);
    return this.held.get(account);
  }
  async list(): Promise<string[]> {
    return [...this.held.keys()].sort();
  }
  async delete(accounts: string[]): Promise<ResolverOutcome> {
    this.calls.push(`delete ${accounts.join(",")}`);
    for (const a of accounts) this.held.delete(a);
    return { accounts, replies: [] };
  }
}

/** An account JWT signed by `issuer`, tagged as given: an admin's account or another binding's. */
function accountJwt(account: string, issuer: NKeyPair, tags: string[], name = "finance"): string {
  const claims = accountClaims(
    { publicKey: account, name, tags, signingKeys: [NKeyPair.generate("account").publicKey] },
    issuer.publicKey,
  );
  return signJwt(claims, issuer, 1_700_000_000);
}

function harness(projects: GitLabProject[], binding = spec()) {
  const keys = new DirectoryKeyStore(join(root, `keys-${++n}`), { owner: true });
  const resolver = new FakeResolver();
  const statuses = new Map<string, BindingStatus>();
  const refusals: Refusal[] = [];
  let entry: BindingEntry | undefined = { kind: "valid", binding, generation: 1 };
  let selected = projects;
  const reconciler = new BindingReconciler({
    bindings: { get: () => entry, validKeys: () => (entry ? [KEY] : []), createdAt: () => undefined },
    projects: {
      projects: async () => selected,
      knownProjects: () => selected,
      environments: async () => [],
    },
    keys,
    resolver,
    statuses: {
      write: async (key, status) => void statuses.set(key, status),
      remove: async (key) => void statuses.delete(key),
    },
    signer,
    clock: new ManualClock(Date.UTC(2026, 10, 29)),
    driftCheckMs: DRIFT_MS,
    events: { refused: (_key, r) => void refusals.push(r) },
  });
  return {
    keys,
    resolver,
    reconciler,
    refusals,
    status: () => statuses.get(KEY),
    select: (p: GitLabProject[]) => void (selected = p),
    gone: () => void (entry = undefined),
  };
}

const ref = (projectId: number): AccountRef => ({ binding: KEY, projectId });
const ownTags = (projectId: number, bindingKey = KEY) => [
  `gitlab-project-id:${projectId}`,
  `natsbind-binding:${ownerKey(bindingKey, ref(projectId)).split("\u0000")[0]}`,
];

function ready(status: BindingStatus | undefined) {
  return status?.conditions.find((c) => c.type === "Ready");
}

describe("heldOwner", () => {
  const account = NKeyPair.generate("account").publicKey;
  const issuers = new Set([signer.publicKey]);

  it("takes natsbind's own JWT for the slot as owned", () => {
    const held = heldOwner(accountJwt(account, signer, ownTags(1)), account, issuers);
    assert.deepEqual(held, { owner: ownerKey(KEY, ref(1)) });
  });

  it("refuses another issuer, another account's JWT and missing or doubled tags", () => {
    // The operator itself (nsc) made it: not natsbind's signing key.
    const admin = heldOwner(accountJwt(account, operator, ownTags(1)), account, issuers);
    assert.match("problem" in admin ? admin.problem : "", /issued by O[A-Z2-7]+, not by natsbind/);
    // A forged signature under natsbind's issuer never gets this far: the servers verify it before
    // storing (test/integration/resolver.test.ts), so heldOwner() checks the issuer only.
    const other = NKeyPair.generate("account").publicKey;
    assert.ok("problem" in heldOwner(accountJwt(other, signer, ownTags(1)), account, issuers));
    assert.ok("problem" in heldOwner(accountJwt(account, signer, ["gitlab-project-id:1"]), account, issuers));
    const twice = [...ownTags(1), "gitlab-project-id:2"];
    assert.ok("problem" in heldOwner(accountJwt(account, signer, twice), account, issuers));
    assert.ok("problem" in heldOwner("not a jwt", account, issuers));
  });
});

describe("BindingReconciler ownership", () => {
  it("pushes an absent account, and costs no extra resolver request in the steady state", async () => {
    const h = harness([project(1)]);
    await h.reconciler.reconcile(KEY);
    const [slot] = await h.keys.list(KEY);
    assert.ok(h.resolver.held.has(slot!.account), "pushed");
    assert.ok(!h.resolver.calls.includes(`lookup ${slot!.account}`), "keys it generated: no lookup");
    assert.equal(ready(h.status())?.status, "True");
    h.resolver.calls.length = 0;
    await h.reconciler.reconcile(KEY);
    assert.deepEqual(h.resolver.calls, [], "ownership rides on the cached lookups");
    assert.deepEqual(h.refusals, []);
  });

  it("never pushes over an account an admin made, and reports it once", async () => {
    const h = harness([project(1), project(2)]);
    // The slot of project 1 holds the keys of an account the resolver already has from the admin.
    const keys = await h.keys.ensure(ref(1), ["ci"]);
    const finance = accountJwt(keys.account, operator, ["team:finance"]);
    h.resolver.held.set(keys.account, finance);
    await h.reconciler.reconcile(KEY);
    assert.equal(h.resolver.held.get(keys.account), finance, "the admin's JWT is unchanged");
    assert.ok(!h.resolver.calls.includes(`push ${keys.account}`));
    const r = ready(h.status());
    assert.equal(r?.status, "False");
    assert.equal(r?.reason, "AccountNotOwned");
    assert.match(r!.message, new RegExp(`account ${keys.account} on the NATS resolver is not natsbind's`));
    const problem = h.status()!.accounts.find((a) => a.projectId === 1);
    assert.equal(problem?.state, "Problem");
    assert.equal(problem?.account, keys.account);
    const other = h.status()!.accounts.find((a) => a.projectId === 2);
    assert.equal(other?.state, "Ready", "the binding's other accounts keep working");
    assert.deepEqual(
      h.refusals.map((x) => [x.reason, x.account]),
      [["AccountNotOwned", keys.account]],
    );
    await h.reconciler.reconcile(KEY);
    assert.equal(h.refusals.length, 1, "reported once while it stays the same");
    assert.equal(h.resolver.held.get(keys.account), finance);
  });

  it("looks up keys ensure() found rather than generated, and refuses a foreign account there", async () => {
    const h = harness([project(1)]);
    // A slot with an account key but no role key yet: ensure() completes it and generates no account.
    const keys = await h.keys.ensure(ref(1), []);
    const finance = accountJwt(keys.account, operator, []);
    h.resolver.held.set(keys.account, finance);
    await h.reconciler.reconcile(KEY);
    assert.ok(h.resolver.calls.includes(`lookup ${keys.account}`));
    assert.equal(h.resolver.held.get(keys.account), finance);
    assert.equal(ready(h.status())?.reason, "AccountNotOwned");
  });

  it("never pushes over or deletes the account of another binding for the same project id", async () => {
    const h = harness([project(1)]);
    const keys = await h.keys.ensure(ref(1), ["ci"]);
    const theirs = accountJwt(keys.account, signer, ownTags(1, "team-b/app"));
    h.resolver.held.set(keys.account, theirs);
    await h.reconciler.reconcile(KEY);
    assert.equal(h.resolver.held.get(keys.account), theirs);
    assert.equal(ready(h.status())?.reason, "AccountNotOwned");
    // No longer selected, deletionPolicy Delete: still not deleted, keys kept.
    h.select([]);
    await h.reconciler.reconcile(KEY);
    assert.equal(h.resolver.held.get(keys.account), theirs);
    assert.ok(!h.resolver.calls.some((c) => c.startsWith("delete")));
    assert.equal((await h.keys.list(KEY)).length, 1, "the key store is unchanged");
    assert.equal(ready(h.status())?.reason, "AccountNotOwned");
  });

  it("under Delete removes its own accounts, and refuses an account that was replaced since the last lookup", async () => {
    const h = harness([project(1), project(2), project(3)]);
    await h.reconciler.reconcile(KEY);
    const slots = await h.keys.list(KEY);
    const [own, replaced, absent] = slots.map((s) => s.account);
    assert.equal(slots.length, 3);
    // Someone with resolver access replaced project 2's account since natsbind pushed it; project 3's
    // account is gone from the resolver. natsbind's cache still says both are its own.
    const billing = accountJwt(replaced!, operator, [], "billing");
    h.resolver.held.set(replaced!, billing);
    h.resolver.held.delete(absent!);
    h.select([]);
    h.resolver.calls.length = 0;
    await h.reconciler.reconcile(KEY);
    assert.ok(!h.resolver.held.has(own!), "its own account is deleted");
    assert.equal(h.resolver.held.get(replaced!), billing, "the replaced account is left alone");
    assert.ok(!h.resolver.calls.includes(`delete ${replaced}`));
    assert.deepEqual(
      (await h.keys.list(KEY)).map((s) => s.account),
      [replaced],
      "keys kept only for the refused one",
    );
    for (const account of [own, replaced, absent])
      assert.ok(h.resolver.calls.includes(`lookup ${account}`), "a fresh lookup before each delete");
    assert.equal(ready(h.status())?.reason, "AccountNotOwned");
    assert.deepEqual(
      h.refusals.map((x) => x.account),
      [replaced],
    );
  });

  it("when the binding is gone under Delete, deletes only what is its own", async () => {
    const h = harness([project(1), project(2)]);
    await h.reconciler.reconcile(KEY);
    const [own, foreign] = (await h.keys.list(KEY)).map((s) => s.account);
    const billing = accountJwt(foreign!, operator, [], "billing");
    h.resolver.held.set(foreign!, billing);
    h.gone();
    await h.reconciler.reconcile(KEY);
    assert.ok(!h.resolver.held.has(own!));
    assert.equal(h.resolver.held.get(foreign!), billing);
    assert.deepEqual(
      h.refusals.map((x) => [x.reason, x.account]),
      [["AccountNotOwned", foreign]],
    );
  });
});
