/**
 * GitLab inventory benchmark (`make bench` runs it after bench/run.ts).
 *
 *  1. Full inventory of 10,000 projects in nested subgroups through GitbeakerGitLab against the
 *     GitLab simulator: requests made (must be ceil(10,000 / 100) + 1: the pages plus resolving
 *     the scope group) and wall time; baseline: the same 100 pages fetched with plain fetch and
 *     JSON.parse, so the ratio is what gitbeaker, validation and our transport add.
 *  2. diffSnapshots of two 10,000-project snapshots (1% renamed, transferred, updated, created,
 *     deleted each); target < 50 ms. Baseline: diffing a snapshot with an identical copy.
 * Medians over runs after a warm-up.
 */
import { performance } from "node:perf_hooks";
import { GitbeakerGitLab } from "../src/gitlab/client.ts";
import { ProjectInventory, diffSnapshots, snapshotOf } from "../src/gitlab/inventory.ts";
import type { GitLabProject } from "../src/gitlab/port.ts";
import { GitLabSimulator } from "../test/support/gitlab-sim.ts";
import { median, timed, verdict } from "./common.ts";

const PROJECTS = 10_000;
const RUNS = 7;
const DIFF_RUNS = 21;
const DIFF_TARGET_MS = 50;

const fmt = (ms: number): string => `${ms.toFixed(1)} ms`;

async function inventorySection(): Promise<void> {
  const sim = await GitLabSimulator.start();
  try {
    const { root } = sim.populate({ rootPath: "bench", projects: PROJECTS, depth: 3, fanout: 5 });
    const gitlab = new GitbeakerGitLab({ url: sim.url, token: sim.token });

    const ours: number[] = [];
    const requests: number[] = [];
    for (let run = 0; run <= RUNS; run++) {
      const inventory = new ProjectInventory(gitlab, { groups: ["bench"], projects: [] });
      sim.resetRequests();
      const ms = await timed(() => inventory.resync());
      if (inventory.snapshot().size !== PROJECTS)
        throw new Error(`listed ${inventory.snapshot().size} projects`);
      if (run === 0) continue; // warm-up
      ours.push(ms);
      requests.push(sim.requests.length);
    }

    const plain: number[] = [];
    for (let run = 0; run <= RUNS; run++) {
      let count = 0;
      const ms = await timed(async () => {
        for (let page = 1; page <= Math.ceil(PROJECTS / 100); page++) {
          const url = `${sim.url}/api/v4/groups/${root.id}/projects?include_subgroups=true&per_page=100&page=${page}&order_by=id&sort=asc`;
          const res = await fetch(url, { headers: { "private-token": sim.token } });
          count += ((await res.json()) as unknown[]).length;
        }
      });
      if (count !== PROJECTS) throw new Error(`plain fetch listed ${count}`);
      if (run > 0) plain.push(ms);
    }

    const expected = Math.ceil(PROJECTS / 100) + 1;
    console.log(`\n== GitLab inventory of ${PROJECTS.toLocaleString()} projects (simulator on loopback) ==`);
    console.log(
      `requests per full inventory: ${[...new Set(requests)].join(", ")} (expected ${expected}: pages + scope group)`,
    );
    console.log(
      `natsbind ProjectInventory.resync (gitbeaker + validation): median ${fmt(median(ours))} over ${RUNS} runs`,
    );
    console.log(`baseline: plain fetch + JSON.parse of the same pages:       median ${fmt(median(plain))}`);
    console.log(`ratio natsbind / baseline: ${(median(ours) / median(plain)).toFixed(2)}x`);
    if (requests.some((r) => r !== expected))
      throw new Error(`request count ${requests.join(",")} != ${expected}`);
  } finally {
    await sim.stop();
  }
}

function project(id: number, ns: number): GitLabProject {
  return {
    id,
    name: `project-${id}`,
    path: `project-${id}`,
    pathWithNamespace: `bench/g${ns}/project-${id}`,
    namespaceId: ns,
    namespaceFullPath: `bench/g${ns}`,
    visibility: "private",
    archived: false,
  };
}

function diffSection(): void {
  const before = Array.from({ length: PROJECTS }, (_, i) => project(i + 1, (i % 50) + 1));
  const after = before.map((p) => ({ ...p }));
  for (let i = 0; i < PROJECTS; i += 100) {
    after[i] = {
      ...after[i]!,
      path: `renamed-${i}`,
      pathWithNamespace: `${after[i]!.namespaceFullPath}/renamed-${i}`,
    };
    after[i + 1] = { ...after[i + 1]!, namespaceId: 999, namespaceFullPath: "bench/moved" };
    after[i + 2] = { ...after[i + 2]!, visibility: "internal" };
  }
  const deleted = new Set(after.filter((_, i) => i % 100 === 3).map((p) => p.id));
  const next = after.filter((p) => !deleted.has(p.id));
  for (let i = 0; i < PROJECTS / 100; i++) next.push(project(PROJECTS + 1 + i, 7));
  const a = snapshotOf(before);
  const b = snapshotOf(next);
  const same = snapshotOf(before.map((p) => ({ ...p })));

  const changed: number[] = [];
  const unchanged: number[] = [];
  let diff = diffSnapshots(a, b);
  for (let run = 0; run <= DIFF_RUNS; run++) {
    const t1 = performance.now();
    diff = diffSnapshots(a, b);
    const t2 = performance.now();
    diffSnapshots(a, same);
    const t3 = performance.now();
    if (run > 0) {
      changed.push(t2 - t1);
      unchanged.push(t3 - t2);
    }
  }
  const counts = [diff.created, diff.deleted, diff.renamed, diff.transferred, diff.updated].map(
    (l) => l.length,
  );
  if (counts.some((c) => c !== PROJECTS / 100)) throw new Error(`unexpected diff counts ${counts.join(",")}`);
  const m = median(changed);
  console.log(`\n== diffSnapshots of two ${PROJECTS.toLocaleString()}-project snapshots ==`);
  console.log(
    `changes found: created ${counts[0]}, deleted ${counts[1]}, renamed ${counts[2]}, transferred ${counts[3]}, updated ${counts[4]}`,
  );
  console.log(`diff with 5% changed: median ${m.toFixed(2)} ms over ${DIFF_RUNS} runs`);
  console.log(
    `baseline: diff of identical snapshots: median ${median(unchanged).toFixed(2)} ms (ratio ${(m / median(unchanged)).toFixed(2)}x)`,
  );
  console.log(`target < ${DIFF_TARGET_MS} ms: ${verdict(m < DIFF_TARGET_MS)}`);
}

await inventorySection();
diffSection();
