import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { parseBinding } from "../../src/api/v1alpha1/schema.ts";
import { ownerKey, type HeldOwner } from "../../src/controllers/binding/ownership.ts";
import { plan, type PlanInput } from "../../src/controllers/binding/plan.ts";
import type { GitLabProject } from "../../src/gitlab/port.ts";
import type { StoredAccount } from "../../src/keystore/port.ts";
import { NKeyPair } from "../../src/nats/keys.ts";
import { subjectProblem } from "../../src/nats/subjects.ts";
import { fixedKeys } from "./fixed-keys.ts";

const issuer = fixedKeys.operatorSigning().publicKey;

function binding(spec: Record<string, unknown>) {
  return parseBinding(
    {
      apiVersion: "natsbind.io/v1alpha1",
      kind: "NatsBinding",
      metadata: { name: "acme-ci", namespace: "natsbind" },
      spec: {
        gitlab: { group: "acme" },
        roles: [
          {
            name: "ci",
            publish: { allow: ["build.status.{{project.slug}}.>"] },
            subscribe: { allow: ["_INBOX.>"] },
          },
        ],
        ...spec,
      },
    },
    "test",
  );
}

function project(id: number, path = `p${id}`, ns = "acme/team", nsId = 10): GitLabProject {
  return {
    id,
    name: path,
    path,
    pathWithNamespace: `${ns}/${path}`,
    namespaceId: nsId,
    namespaceFullPath: ns,
    visibility: "private",
    archived: false,
  };
}

function slot(projectId: number, roles: string[] = ["ci"], environment?: string): StoredAccount {
  return {
    ref: { binding: "natsbind/acme-ci", projectId, ...(environment !== undefined ? { environment } : {}) },
    account: NKeyPair.generate("account").publicKey,
    roles: Object.fromEntries(roles.map((r) => [r, NKeyPair.generate("account").publicKey])),
  };
}

function input(over: Partial<PlanInput>): PlanInput {
  return {
    bindingKey: "natsbind/acme-ci",
    binding: binding({}),
    projects: [],
    environments: new Map(),
    slots: [],
    resolverHashes: new Map(),
    issuer,
    ...over,
  };
}

describe("plan", () => {
  it("asks for keys before anything can be pushed", () => {
    const p = plan(input({ projects: [project(2), project(1)] }));
    assert.deepEqual(p.ensureKeys, [
      { ref: { binding: "natsbind/acme-ci", projectId: 1 }, roles: ["ci"] },
      { ref: { binding: "natsbind/acme-ci", projectId: 2 }, roles: ["ci"] },
    ]);
    assert.deepEqual(p.push, []);
  });

  it("pushes accounts the resolver lacks, with rendered roles and immutable-id tags", () => {
    const s1 = slot(1);
    const p = plan(input({ projects: [project(1, "api")], slots: [s1] }));
    assert.equal(p.push.length, 1);
    const { reason, account } = p.push[0]!;
    const claims = p.push[0]!.claims();
    assert.equal(reason, "missing");
    assert.equal(account, s1.account);
    assert.equal(claims.sub, s1.account);
    assert.equal(claims.iss, issuer);
    assert.equal(claims.name, "acme/team/api");
    // Tags can feed {{account-tag(x)}} templates, so controller-rendered values go through safeToken.
    const tags = claims.nats.tags as string[];
    assert.deepEqual(tags.slice(0, 2), ["gitlab-project-id:1", "gitlab-namespace-id:10"]);
    assert.match(tags[2]!, /^natsbind-binding:natsbind_acme-ci-[0-9a-f]{8}$/);
    const [scoped] = claims.nats.signing_keys as Array<{
      key: string;
      role: string;
      template: { pub: { allow: string[] } };
    }>;
    assert.equal(scoped!.key, s1.roles.ci);
    assert.deepEqual(scoped!.template.pub.allow, ["build.status.api.>"]);
  });

  it("is idempotent: what the resolver already holds is not pushed again", () => {
    const s1 = slot(1);
    const first = plan(input({ projects: [project(1)], slots: [s1] }));
    const held = new Map([[s1.account, first.push[0]!.hash]]);
    const second = plan(input({ projects: [project(1)], slots: [s1], resolverHashes: held }));
    assert.deepEqual(second.push, []);
    assert.deepEqual(second.upToDate, [{ ref: s1.ref, account: s1.account, hash: first.push[0]!.hash }]);
    assert.deepEqual(
      plan(input({ projects: [project(1)], slots: [s1], resolverHashes: held })),
      second,
      "pure",
    );
  });

  it("gives the same plan with a memo, and reuses built claims while their inputs are unchanged", () => {
    const s1 = slot(1);
    const memo = new Map();
    const a = plan(input({ projects: [project(1)], slots: [s1], memo }));
    const b = plan(input({ projects: [project(1)], slots: [s1], memo }));
    assert.deepEqual(b.push[0]!.claims(), a.push[0]!.claims());
    assert.equal(memo.size, 1, "one memo entry, reused");
    const renamed = plan(input({ projects: [project(1, "new")], slots: [s1], memo }));
    assert.notEqual(renamed.push[0]!.hash, a.push[0]!.hash, "rebuilt when the project changed");
    // Without the memo the plan is the same, claims builders aside.
    const strip = (p: ReturnType<typeof plan>) =>
      p.push.map(({ claims, ...rest }) => ({ ...rest, claims: claims() }));
    assert.deepEqual(strip(b), strip(plan(input({ projects: [project(1)], slots: [s1] }))));
  });

  it("re-pushes a renamed or transferred project under the same account key", () => {
    const s1 = slot(1);
    const first = plan(input({ projects: [project(1, "api")], slots: [s1] }));
    const held = new Map([[s1.account, first.push[0]!.hash]]);
    // natsbind's own JWT for this slot is on the resolver (ownership.ts): it may be pushed over.
    const resolverOwners = new Map([[s1.account, { owner: ownerKey("natsbind/acme-ci", s1.ref) }]]);
    const moved = plan(
      input({
        projects: [project(1, "api-v2", "acme/other", 11)],
        slots: [s1],
        resolverHashes: held,
        resolverOwners,
      }),
    );
    assert.equal(moved.push.length, 1);
    assert.equal(moved.push[0]!.reason, "stale");
    assert.equal(moved.push[0]!.account, s1.account);
    assert.equal(moved.push[0]!.claims().name, "acme/other/api-v2");
    assert.ok((moved.push[0]!.claims().nats.tags as string[]).includes("gitlab-namespace-id:11"));
  });

  it("removes accounts no longer wanted under Delete, and retains them under Retain", () => {
    const gone = slot(9);
    const del = plan(input({ binding: binding({ deletionPolicy: "Delete" }), slots: [gone] }));
    assert.deepEqual(del.remove, [gone]);
    const keep = plan(input({ slots: [gone] }));
    assert.deepEqual(keep.retain, [gone]);
    assert.deepEqual(keep.remove, []);
  });

  it("leaves the slots of projects an older binding holds exactly as they are, under Delete and Retain", () => {
    const held = slot(2);
    const heldEnv = slot(2, ["ci"], "production");
    const gone = slot(9);
    const mine = slot(1);
    for (const deletionPolicy of ["Delete", "Retain"] as const) {
      const p = plan(
        input({
          binding: binding({ deletionPolicy }),
          projects: [project(1), project(2), project(3)],
          heldElsewhere: new Set([2, 3]),
          slots: [held, heldEnv, gone, mine],
        }),
      );
      assert.deepEqual(
        p.conflict,
        [held, heldEnv].sort((a, b) => (a.ref.environment ?? "").localeCompare(b.ref.environment ?? "")),
        deletionPolicy,
      );
      assert.deepEqual(
        p.ensureKeys.map((e) => e.ref.projectId),
        [],
        "no keys for a held project (3) although this binding selects it",
      );
      assert.deepEqual(
        p.push.map((x) => x.ref.projectId),
        [1],
        "held slots are not pushed",
      );
      assert.deepEqual(
        deletionPolicy === "Delete" ? p.remove : p.retain,
        [gone],
        "only the unselected one goes",
      );
      assert.deepEqual(deletionPolicy === "Delete" ? p.retain : p.remove, []);
    }
  });

  it("asks for a role key when a role is added", () => {
    const s1 = slot(1, ["ci"]);
    const b = binding({
      roles: [
        { name: "ci", publish: { allow: ["a.>"] } },
        { name: "deploy", subscribe: { allow: ["deploy.{{project.id}}"] } },
      ],
    });
    const p = plan(input({ binding: b, projects: [project(1)], slots: [s1] }));
    assert.deepEqual(p.ensureKeys, [{ ref: s1.ref, roles: ["ci", "deploy"] }]);
  });

  it("makes one account per environment, from the list or from GitLab", () => {
    const listed = plan(
      input({
        binding: binding({ accountPer: "environment", environments: { names: ["staging", "production"] } }),
        projects: [project(1)],
      }),
    );
    assert.deepEqual(
      listed.ensureKeys.map((e) => e.ref.environment),
      ["production", "staging"],
    );
    const fromGitLab = binding({
      accountPer: "environment",
      environments: { fromGitLab: true },
      roles: [{ name: "ci", publish: { allow: ["deploy.{{environment}}.>"] } }],
    });
    const prod = slot(1, ["ci"], "Production EU");
    const p = plan(
      input({
        binding: fromGitLab,
        projects: [project(1), project(2)],
        environments: new Map([[1, ["Production EU"]]]),
        slots: [prod],
      }),
    );
    assert.deepEqual(p.ensureKeys, []);
    assert.equal(p.push.length, 1);
    assert.equal(p.push[0]!.claims().name, "acme/team/p1 (Production EU)");
    const allow = (
      p.push[0]!.claims().nats.signing_keys as Array<{ template: { pub: { allow: string[] } } }>
    )[0]!.template.pub.allow[0]!;
    assert.match(allow, /^deploy\.production_eu-[0-9a-f]{8}\.>$/);
  });

  it("renders hostile project paths into safe subjects", () => {
    const hostile = [project(1, "a b"), project(2, "x.*.>"), project(3, ">"), project(4, "UPPER.case")];
    const slots = hostile.map((p) => slot(p.id));
    const b = binding({
      roles: [{ name: "ci", publish: { allow: ["build.{{project.slug}}.{{project.path}}.x"] } }],
    });
    const p = plan(input({ binding: b, projects: hostile, slots }));
    assert.equal(p.problems.length, 0, JSON.stringify(p.problems));
    for (const push of p.push) {
      const subject = (
        push.claims().nats.signing_keys as Array<{ template: { pub: { allow: string[] } } }>
      )[0]!.template.pub.allow[0]!;
      assert.equal(subjectProblem(subject, false), undefined, subject);
      assert.ok(subject.startsWith("build.") && subject.endsWith(".x"), subject);
    }
  });

  describe("ownership", () => {
    const foreign: HeldOwner = { problem: "it was issued by OXXX, not by natsbind's operator signing key" };

    it("pushes an account the resolver lacks, and never pushes over one that is not the slot's", () => {
      const s1 = slot(1);
      const s2 = slot(2);
      const s3 = slot(3);
      const hashes = new Map([
        [s2.account, "their-hash"],
        [s3.account, "other-binding-hash"],
      ]);
      const owners = new Map([
        [s2.account, foreign],
        // natsbind's own account, but of another binding's slot for the same project id.
        [s3.account, { owner: ownerKey("team-b/app", { binding: "team-b/app", projectId: 3 }) } as HeldOwner],
      ]);
      const p = plan(
        input({
          projects: [project(1), project(2), project(3)],
          slots: [s1, s2, s3],
          resolverHashes: hashes,
          resolverOwners: owners,
        }),
      );
      assert.deepEqual(
        p.push.map((x) => [x.account, x.reason]),
        [[s1.account, "missing"]],
      );
      assert.deepEqual(
        p.notOwned.map((x) => x.account),
        [s2.account, s3.account],
      );
      assert.match(p.notOwned[0]!.message, new RegExp(`account ${s2.account} on the NATS resolver is not`));
      assert.match(p.notOwned[1]!.message, /belongs to another binding, project or environment/);
    });

    it("counts an account held without a checked owner as not natsbind's", () => {
      const s1 = slot(1);
      const p = plan(
        input({ projects: [project(1)], slots: [s1], resolverHashes: new Map([[s1.account, "x"]]) }),
      );
      assert.deepEqual(p.push, []);
      assert.match(p.notOwned[0]!.message, /natsbind has not checked its owner/);
    });

    it("removes under Delete only accounts that are absent or the slot's own", () => {
      const absent = slot(7);
      const mine = slot(8);
      const theirs = slot(9);
      const p = plan(
        input({
          binding: binding({ deletionPolicy: "Delete" }),
          slots: [absent, mine, theirs],
          resolverHashes: new Map([
            [mine.account, "h8"],
            [theirs.account, "h9"],
          ]),
          resolverOwners: new Map([
            [mine.account, { owner: ownerKey("natsbind/acme-ci", mine.ref) } as HeldOwner],
            [theirs.account, foreign],
          ]),
        }),
      );
      assert.deepEqual(p.remove, [absent, mine]);
      assert.deepEqual(
        p.notOwned.map((x) => x.account),
        [theirs.account],
      );
    });

    it("makes no keys in the place of an untrusted slot, and reports it", () => {
      const untrusted = [
        {
          source: "Secret natsbind/nb-acme-ci-1",
          ref: { binding: "natsbind/acme-ci", projectId: 1 },
          message: "m",
        },
        { source: "Secret natsbind/nb-acme-ci-x", message: "no ref" },
      ];
      const p = plan(input({ projects: [project(1), project(2)], untrusted }));
      assert.deepEqual(
        p.ensureKeys.map((e) => e.ref.projectId),
        [2],
      );
      assert.deepEqual(p.untrusted, untrusted);
    });
  });
});
