// Every manifest in deploy/ is accepted by a real kube-apiserver, and says what natsbind needs.
//
// There is no kustomize binary here, so the test resolves deploy/base/kustomization.yaml (and the
// deploy/single-namespace overlay) itself: `resources` (files, and directories with their own
// kustomization) and `patches` of two kinds only, whole-object deletes ($patch: delete) and
// ConfigMap data keys, whose strategic-merge result is unambiguous. A kustomization using anything
// else fails the test rather than being applied differently from what `kubectl apply -k` would send. The CRDs are created for real (and waited on until Established),
// so is the Namespace; every other object is created with a server-side dry run (dryRun=All), which
// runs validation and admission (PodSecurity included) without persisting. The RBAC objects of each
// variant are then created for real and checked with SubjectAccessReviews and with natsbind's own
// Kubernetes adapters making their calls as the service account (impersonation): it may do exactly
// what the controller does, and nothing next to it; in the single-namespace variant, nothing with
// Secrets outside the watched namespace.
import assert from "node:assert/strict";
import { readdir, readFile, stat } from "node:fs/promises";
import { join, relative, resolve, sep } from "node:path";
import { after, before, describe, it } from "node:test";
import { request, type RequestOptions } from "node:https";
import {
  AuthorizationV1Api,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  KubernetesObjectApi,
  PatchStrategy,
  setHeaderOptions,
  type KubernetesObject,
  type V1ClusterRole,
  type V1ConfigMap,
  type V1Container,
  type V1Deployment,
  type V1Ingress,
  type V1PolicyRule,
  type V1Role,
  type V1RoleBinding,
  type V1Service,
} from "@kubernetes/client-node";
import { parse as parseYaml, parseAllDocuments } from "yaml";
import { NODE_FLAGS } from "../../src/cli/node-flags.ts";
import { parseConfig } from "../../src/config/config.ts";
import { parsePolicySpec } from "../../src/api/v1alpha1/policy.ts";
import { parseBinding } from "../../src/api/v1alpha1/schema.ts";
import { PLURAL } from "../../src/api/v1alpha1/crd.ts";
import { GROUP, VERSION } from "../../src/api/v1alpha1/types.ts";
import { apiStatusCode } from "../../src/k8s/api-errors.ts";
import type { NatsBindingObject } from "../../src/k8s/bindings.ts";
import { EventRecorder } from "../../src/k8s/events.ts";
import { Informer } from "../../src/k8s/informer.ts";
import { SecretKeyStore } from "../../src/k8s/secret-keystore.ts";
import { KubeStatusWriter } from "../../src/k8s/status.ts";
import { nullLogger } from "../../src/observability/logger.ts";
import { systemClock } from "../../src/runtime/clock.ts";
import { leaseClient } from "../../src/runtime/leader.ts";
import { startKubeApiserver, waitForCrdEstablished } from "../support/kube.ts";
import type { KubeApiserver } from "../support/kube.ts";
import { liveProcessCount, REPO_ROOT, waitFor } from "../support/process.ts";

const DEPLOY_DIR = join(REPO_ROOT, "deploy");
const BASE_DIR = join(DEPLOY_DIR, "base");
const SINGLE_NAMESPACE_DIR = join(DEPLOY_DIR, "single-namespace");
const SAMPLES_DIR = join(DEPLOY_DIR, "samples");
/** prometheus-operator objects and promtool tests: checked by test/{unit,integration}/monitoring.test.ts. */
const MONITORING_DIR = join(DEPLOY_DIR, "monitoring");
const NAMESPACE = "natsbind";
/** Where the test puts samples that name no namespace (a team's namespace). */
const SAMPLE_NAMESPACE = "team-a";
/** Another team's namespace. */
const OTHER_NAMESPACE = "team-b";
const SERVICE_ACCOUNT_USER = `system:serviceaccount:${NAMESPACE}:natsbind`;

type Manifest = KubernetesObject & Record<string, unknown>;

interface Located {
  /** Path relative to the repository, e.g. deploy/base/deployment.yaml. */
  source: string;
  object: Manifest;
}

const KUSTOMIZATION_FILES = ["kustomization.yaml", "kustomization.yml", "Kustomization"];
/** Anything else (namespace, labels, generators, ...) would transform what is applied. */
const KUSTOMIZATION_KEYS = new Set(["apiVersion", "kind", "resources", "patches"]);

function repoPath(path: string): string {
  return relative(REPO_ROOT, path).split(sep).join("/");
}

function describeObject(o: KubernetesObject): string {
  const ns = o.metadata?.namespace ? `${o.metadata.namespace}/` : "";
  return `${o.kind} ${ns}${o.metadata?.name}`;
}

/**
 * All documents of a YAML stream, read as kubectl and kustomize read them (YAML 1.1). They must read
 * the same as YAML 1.2: `0400` (octal in 1.1, decimal in 1.2) or `yes` would otherwise mean one thing
 * to kubectl and another to a reviewer or tool using a current parser.
 */
function parseManifests(text: string, source: string): Manifest[] {
  const read = (version: "1.1" | "1.2"): unknown[] => {
    const docs = parseAllDocuments(text, { version, prettyErrors: true });
    return Array.from(docs, (doc) => {
      if (doc.errors.length > 0) throw new Error(`${source}: ${doc.errors.map((e) => e.message).join("; ")}`);
      return doc.toJS({ maxAliasCount: 0 }) as unknown;
    });
  };
  const v11 = read("1.1");
  assert.deepEqual(v11, read("1.2"), `${source}: reads differently as YAML 1.1 (kubectl) and YAML 1.2`);
  return v11
    .filter((doc) => doc !== null && doc !== undefined)
    .map((doc, i) => {
      const o = doc as Manifest;
      assert.ok(
        typeof o.apiVersion === "string" &&
          typeof o.kind === "string" &&
          typeof o.metadata?.name === "string",
        `${source} document ${i}: needs apiVersion, kind and metadata.name`,
      );
      return o;
    });
}

async function isDirectory(path: string): Promise<boolean> {
  return (await stat(path)).isDirectory();
}

async function kustomizationFile(dir: string): Promise<string> {
  const names = new Set(await readdir(dir));
  const found = KUSTOMIZATION_FILES.filter((n) => names.has(n));
  assert.equal(found.length, 1, `${repoPath(dir)}: needs exactly one of ${KUSTOMIZATION_FILES.join(", ")}`);
  return join(dir, found[0]!);
}

/**
 * What `kustomize build dir` emits for a kustomization with only `resources`, in order; `read`
 * collects every file it read. File resources must lie inside the kustomization's directory
 * (kustomize's default load restrictor); directories must hold a kustomization themselves.
 */
async function buildKustomization(dir: string, read: Set<string>, stack: string[] = []): Promise<Located[]> {
  assert.ok(!stack.includes(dir), `kustomization cycle: ${[...stack, dir].map(repoPath).join(" -> ")}`);
  const file = await kustomizationFile(dir);
  read.add(file);
  const k = parseYaml(await readFile(file, "utf8"), { version: "1.1" }) as Record<string, unknown>;
  const source = repoPath(file);
  assert.equal(k.kind, "Kustomization", `${source}: kind`);
  for (const key of Object.keys(k)) {
    assert.ok(
      KUSTOMIZATION_KEYS.has(key),
      `${source}: "${key}" transforms the output; this test applies resources as written (use an overlay)`,
    );
  }
  assert.ok(Array.isArray(k.resources), `${source}: resources must be a list`);
  const out: Located[] = [];
  for (const entry of k.resources as unknown[]) {
    assert.ok(typeof entry === "string" && !entry.includes("://"), `${source}: resource ${String(entry)}`);
    const path = resolve(dir, entry);
    if (await isDirectory(path)) {
      out.push(...(await buildKustomization(path, read, [...stack, dir])));
      continue;
    }
    assert.ok(
      path.startsWith(dir + sep),
      `${source}: file ${entry} is outside the kustomization's directory (kustomize refuses it)`,
    );
    read.add(path);
    const text = await readFile(path, "utf8");
    out.push(...parseManifests(text, repoPath(path)).map((object) => ({ source: repoPath(path), object })));
  }
  for (const entry of (k.patches ?? []) as unknown[]) {
    const file = (entry as { path?: unknown } | null)?.path;
    assert.ok(
      typeof file === "string" && Object.keys(entry as object).length === 1,
      `${source}: patches: only {path: file} entries`,
    );
    const path = resolve(dir, file);
    assert.ok(
      path.startsWith(dir + sep),
      `${source}: patch ${file} is outside the kustomization's directory`,
    );
    read.add(path);
    for (const patch of parseManifests(await readFile(path, "utf8"), repoPath(path))) {
      applyPatch(out, patch, repoPath(path));
    }
  }
  const ids = new Map<string, string>();
  for (const { source: s, object } of out) {
    const id = `${(object.apiVersion ?? "").split("/")[0]} ${describeObject(object)}`;
    assert.ok(!ids.has(id), `${id} appears twice (${ids.get(id)} and ${s}); kustomize refuses duplicates`);
    ids.set(id, s);
  }
  return out;
}

function sameObject(a: KubernetesObject, b: KubernetesObject): boolean {
  const group = (o: KubernetesObject): string =>
    o.apiVersion?.includes("/") ? o.apiVersion.split("/")[0]! : "";
  return (
    group(a) === group(b) &&
    a.kind === b.kind &&
    a.metadata?.name === b.metadata?.name &&
    a.metadata?.namespace === b.metadata?.namespace
  );
}

/**
 * A strategic-merge patch, of the two kinds whose result needs no schema knowledge: `$patch:
 * delete` of a whole object, and ConfigMap `data` keys (a map: listed keys replaced, others kept).
 */
function applyPatch(out: Located[], patch: Manifest, source: string): void {
  const matches = out.filter((m) => sameObject(m.object, patch));
  assert.equal(matches.length, 1, `${source}: ${describeObject(patch)} must match one object`);
  const target = matches[0]!;
  const keys = Object.keys(patch).sort();
  const metadataKeys = Object.keys(patch.metadata ?? {}).filter((k) => k !== "name" && k !== "namespace");
  assert.deepEqual(metadataKeys, [], `${source}: a patch names its target only`);
  if (patch.$patch === "delete") {
    assert.deepEqual(keys, ["$patch", "apiVersion", "kind", "metadata"], `${source}: a delete patch`);
    out.splice(out.indexOf(target), 1);
    return;
  }
  assert.ok(
    patch.kind === "ConfigMap" && keys.join() === "apiVersion,data,kind,metadata",
    `${source}: only $patch: delete and ConfigMap data patches are understood here`,
  );
  const data = {
    ...(target.object.data as Record<string, string>),
    ...(patch.data as Record<string, string>),
  };
  target.object = { ...target.object, data };
  target.source = `${target.source} + ${source}`;
}

/**
 * `text` with its optional blocks switched on: after a comment line ending in "(uncomment below):",
 * the following comment lines at the same indentation lose their "# ". What the manifests offer in
 * comments is tested as it would be applied.
 */
function uncommented(text: string): { text: string; blocks: number } {
  const lines = text.split("\n");
  let blocks = 0;
  for (let i = 0; i < lines.length; i++) {
    const marker = /^(\s*)#.*\(uncomment below\):$/.exec(lines[i]!);
    if (!marker) continue;
    const indent = marker[1]!;
    blocks += 1;
    let j = i + 1;
    for (; j < lines.length && lines[j]!.startsWith(`${indent}# `); j++) {
      lines[j] = indent + lines[j]!.slice(indent.length + 2);
    }
    assert.ok(j > i + 1, `an empty block after line ${i + 1}`);
    i = j - 1;
  }
  return { text: lines.join("\n"), blocks };
}

async function yamlFilesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await yamlFilesUnder(path)));
    else if (/\.ya?ml$/.test(entry.name) || KUSTOMIZATION_FILES.includes(entry.name)) out.push(path);
  }
  return out.sort();
}

function only<T extends Manifest>(manifests: Located[], kind: string, name?: string): T {
  const found = manifests.filter(
    (m) => m.object.kind === kind && (!name || m.object.metadata?.name === name),
  );
  assert.equal(found.length, 1, `expected one ${kind}${name ? ` ${name}` : ""}, found ${found.length}`);
  return found[0]!.object as T;
}

function ofKind(manifests: Located[], kind: string): Manifest[] {
  return manifests.filter((m) => m.object.kind === kind).map((m) => m.object);
}

/** Every value in `expected` is in `actual` at the same path (the apiserver may add defaults). */
function assertContains(actual: unknown, expected: unknown, path: string): void {
  if (Array.isArray(expected)) {
    assert.ok(Array.isArray(actual), `${path}: expected a list, got ${JSON.stringify(actual)}`);
    assert.equal(actual.length, expected.length, `${path}: list length`);
    expected.forEach((e, i) => assertContains(actual[i], e, `${path}[${i}]`));
  } else if (typeof expected === "object" && expected !== null) {
    assert.ok(typeof actual === "object" && actual !== null, `${path}: missing (pruned?)`);
    for (const [k, v] of Object.entries(expected)) {
      assertContains((actual as Record<string, unknown>)[k], v, `${path}.${k}`);
    }
  } else {
    assert.equal(actual, expected, path);
  }
}

/** rules -> "group/resource[/subresource] [names]" -> sorted verbs. */
function verbsByResource(rules: V1PolicyRule[] | undefined): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const rule of rules ?? []) {
    assert.ok(!rule.nonResourceURLs, "no non-resource URLs");
    for (const group of rule.apiGroups ?? []) {
      for (const resource of rule.resources ?? []) {
        const key = `${group || "core"}/${resource}${rule.resourceNames ? ` ${rule.resourceNames.join(",")}` : ""}`;
        out[key] = [...new Set([...(out[key] ?? []), ...rule.verbs])].sort();
      }
    }
  }
  return out;
}

/**
 * Raw REST calls. KubernetesObjectApi finds each object's REST path (discovery), but its create()
 * re-serialises built-in kinds through client-node's typed models, which silently drops fields it
 * does not know (a typo, or JSON names such as x-kubernetes-preserve-unknown-fields): the apiserver
 * would then validate something other than the file. Here the body goes out exactly as parsed, and
 * fieldValidation=Strict makes the apiserver refuse unknown fields.
 */
class RawApi extends KubernetesObjectApi {
  #kc: KubeConfig | undefined;

  static forConfig(kc: KubeConfig): RawApi {
    const api = kc.makeApiClient(RawApi);
    api.#kc = kc;
    return api;
  }

  async createAsWritten(object: Manifest, opts: { dryRun: boolean }): Promise<Manifest> {
    const path = await this.specUriPath(structuredClone(object), "create");
    const query = `fieldValidation=Strict${opts.dryRun ? "&dryRun=All" : ""}`;
    return this.#send("POST", `${path}?${query}`, object);
  }

  async get(object: KubernetesObject): Promise<Manifest> {
    return this.#send("GET", await this.specUriPath(structuredClone(object), "read"));
  }

  async deleteAsWritten(object: Manifest): Promise<void> {
    await this.#send("DELETE", await this.specUriPath(structuredClone(object), "delete"));
  }

  /** Drops the finalizers of a NatsBinding (cleanup between tests, as the admin). */
  async patchAsAdmin(namespace: string, name: string): Promise<void> {
    const path = `/apis/${GROUP}/${VERSION}/namespaces/${namespace}/${PLURAL}/${name}`;
    await this.#send("PATCH", path, { metadata: { finalizers: null } }, "application/merge-patch+json");
  }

  async #send(
    method: string,
    path: string,
    body?: unknown,
    contentType = "application/json",
  ): Promise<Manifest> {
    const kc = this.#kc!;
    const url = new URL(path, kc.getCurrentCluster()!.server);
    const opts: RequestOptions = {
      method,
      headers: { accept: "application/json", "content-type": contentType },
      timeout: 10_000,
    };
    await kc.applyToHTTPSOptions(opts);
    const answer = await new Promise<{ status: number; text: string }>((resolveAnswer, reject) => {
      const req = request(url, opts, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => (text += chunk));
        res.on("end", () => resolveAnswer({ status: res.statusCode ?? 0, text }));
        res.on("error", reject);
      });
      req.on("timeout", () => req.destroy(new Error(`${method} ${path}: no answer in 10 s`)));
      req.on("error", reject);
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
    if (answer.status >= 300) {
      let message = answer.text.slice(0, 800);
      try {
        message = (JSON.parse(answer.text) as { message?: string }).message ?? message;
      } catch {
        // not a Status object: keep the text
      }
      throw new ApiError(answer.status, `${method} ${url.pathname}: HTTP ${answer.status}: ${message}`);
    }
    return JSON.parse(answer.text) as Manifest;
  }
}

class ApiError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

/** Creates (dry run "All", or for real); on failure names the object and the apiserver's answer. */
async function create(api: RawApi, object: Manifest, dryRun: boolean): Promise<Manifest> {
  try {
    return await api.createAsWritten(object, { dryRun });
  } catch (err) {
    throw new Error(
      `${dryRun ? "dry-run " : ""}create ${describeObject(object)}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
}

// The tests run in order and build on each other: the second creates the CRD and the namespaces the
// later ones use.
describe("deploy/: manifests", { timeout: 180_000 }, () => {
  let kube: KubeApiserver | undefined;
  let kc: KubeConfig;
  let objects: RawApi;
  let base: Located[];
  let single: Located[];
  const read = new Set<string>();
  let samples: Located[];

  before(async () => {
    base = await buildKustomization(BASE_DIR, read);
    single = await buildKustomization(SINGLE_NAMESPACE_DIR, read);
    samples = [];
    for (const file of await yamlFilesUnder(SAMPLES_DIR)) {
      const text = await readFile(file, "utf8");
      samples.push(
        ...parseManifests(text, repoPath(file)).map((object) => ({ source: repoPath(file), object })),
      );
    }
    kube = await startKubeApiserver();
    kc = kube.kubeConfig();
    objects = RawApi.forConfig(kc);
  });

  after(async () => {
    await kube?.stop();
    assert.equal(liveProcessCount(), 0, "etcd and kube-apiserver were stopped");
  });

  it("every YAML file under deploy/ is part of deploy/base, deploy/single-namespace, a sample or deploy/monitoring", async () => {
    const stray = (await yamlFilesUnder(DEPLOY_DIR)).filter(
      (f) => !read.has(f) && !f.startsWith(SAMPLES_DIR + sep) && !f.startsWith(MONITORING_DIR + sep),
    );
    assert.deepEqual(stray.map(repoPath), [], "files no kubectl apply -k of deploy/ would apply");
    assert.ok(samples.length > 0, "deploy/samples holds samples");
    const crd = only<Manifest & { spec?: { names?: { shortNames?: string[] } } }>(
      base,
      "CustomResourceDefinition",
      "natsbindings.natsbind.io",
    );
    assert.ok(crd.spec?.names?.shortNames?.includes("nb"), "docs/install.md says kubectl get nb");
    // Secrets hold keys and tokens: the user creates them; the base only refers to them.
    assert.deepEqual(ofKind(base, "Secret"), [], "no Secret is shipped");
  });

  it("the apiserver accepts every object of deploy/base, then every sample", async () => {
    assert.ok(kube);
    const crds = ofKind(base, "CustomResourceDefinition");
    assert.ok(
      crds.some((c) => c.metadata?.name === "natsbindings.natsbind.io"),
      "deploy/base includes the NatsBinding CRD (../../crds)",
    );
    // What must exist before anything can refer to it: CRDs (Established) and namespaces.
    for (const crd of crds) await create(objects, crd, false);
    for (const crd of crds) await waitForCrdEstablished(kc, crd.metadata!.name!);
    for (const ns of ofKind(base, "Namespace")) await create(objects, ns, false);

    for (const { source, object } of base) {
      if (object.kind === "CustomResourceDefinition" || object.kind === "Namespace") continue;
      const created = await create(objects, object, true);
      assert.equal(created.metadata?.name, object.metadata?.name, `${source}: ${describeObject(object)}`);
      // No namespace transformer: a namespaced object must say where it goes, or it lands wherever
      // the user's kubectl context points (the client fills in "default").
      assert.ok(
        created.metadata?.namespace === undefined || created.metadata.namespace === NAMESPACE,
        `${source}: ${describeObject(object)} must set metadata.namespace: ${NAMESPACE}`,
      );
    }

    await create(
      objects,
      { apiVersion: "v1", kind: "Namespace", metadata: { name: SAMPLE_NAMESPACE } },
      false,
    );
    for (const { source, object } of samples) {
      const sample = structuredClone(object);
      if (sample.kind === "NatsBindingPolicy") {
        // Cluster-scoped: natsbind's validation agrees with the CRD's, and nothing is pruned.
        parsePolicySpec(sample.spec, source);
        await create(objects, sample, false);
        assertContains((await objects.get(sample)).spec, sample.spec, `${source}: spec`);
        continue;
      }
      sample.metadata!.namespace ??= SAMPLE_NAMESPACE;
      if (sample.kind !== "NatsBinding") {
        await create(objects, sample, true);
        continue;
      }
      // natsbind's own validation agrees with the CRD's.
      parseBinding(sample, source);
      // Created for real and read back: the CRD's schema keeps every field (nothing pruned).
      await create(objects, sample, false);
      const stored = await objects.get(sample);
      assertContains(stored.spec, sample.spec, `${source}: spec`);
    }
    assert.ok(
      samples.some((s) => s.object.kind === "NatsBinding"),
      "deploy/samples holds a NatsBinding",
    );
    assert.ok(
      samples.some((s) => s.object.kind === "NatsBindingPolicy" && s.object.metadata?.name === "permissive"),
      "deploy/samples holds the permissive NatsBindingPolicy docs/install.md names",
    );
  });

  it("the Deployment's pod passes PodSecurity restricted in its namespace", async () => {
    const ns = only<Manifest>(base, "Namespace", NAMESPACE);
    assert.equal(ns.metadata?.labels?.["pod-security.kubernetes.io/enforce"], "restricted");
    const deployment = only<V1Deployment & Manifest>(base, "Deployment", "natsbind");
    const pod = (spec: unknown): Manifest => ({
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "natsbind-pod-security", namespace: NAMESPACE },
      spec,
    });
    await create(objects, pod(deployment.spec?.template.spec), true);

    // The check has teeth: the same pod allowed to escalate privileges is refused.
    const loose = structuredClone(deployment.spec!.template.spec!);
    loose.containers[0]!.securityContext!.allowPrivilegeEscalation = true;
    await assert.rejects(
      objects.createAsWritten(pod(loose), { dryRun: true }),
      (err: unknown) => err instanceof ApiError && err.status === 403 && /restricted/.test(err.message),
    );
  });

  it("the apiserver accepts every object of deploy/single-namespace; its config and Role name one namespace", async () => {
    await create(
      objects,
      { apiVersion: "v1", kind: "Namespace", metadata: { name: OTHER_NAMESPACE } },
      false,
    );
    for (const { source, object } of single) {
      if (object.kind === "CustomResourceDefinition" || object.kind === "Namespace") continue;
      const created = await create(objects, object, true);
      assert.ok(
        [undefined, NAMESPACE, SAMPLE_NAMESPACE].includes(created.metadata?.namespace),
        `${source}: ${describeObject(object)} in ${created.metadata?.namespace}`,
      );
    }
    const text = only<V1ConfigMap & Manifest>(single, "ConfigMap", "natsbind-config").data?.["natsbind.yaml"];
    const baseText = only<V1ConfigMap & Manifest>(base, "ConfigMap", "natsbind-config").data?.[
      "natsbind.yaml"
    ];
    const config = parseConfig(parseYaml(text!), "single-namespace natsbind.yaml", "/etc/natsbind/config");
    const baseConfig = parseConfig(parseYaml(baseText!), "base natsbind.yaml", "/etc/natsbind/config");
    assert.equal(config.kubernetes.namespace, SAMPLE_NAMESPACE);
    // The patch repeats the whole file: it must stay the base's but for the namespace.
    assert.deepEqual(
      { ...config, kubernetes: { ...config.kubernetes, namespace: undefined } },
      {
        ...baseConfig,
        kubernetes: { ...baseConfig.kubernetes, namespace: undefined },
      },
    );
    const role = only<V1Role & Manifest>(single, "Role", "natsbind");
    assert.equal(role.metadata?.namespace, config.kubernetes.namespace);
    assert.equal(
      only<V1RoleBinding & Manifest>(single, "RoleBinding", "natsbind").metadata?.namespace,
      SAMPLE_NAMESPACE,
    );
    // No cluster-wide rule on anything namespaced is left.
    for (const clusterRole of ofKind(single, "ClusterRole") as V1ClusterRole[]) {
      assert.equal(clusterRole.metadata?.name, "natsbind-cluster-scoped");
    }
  });

  /** The SubjectAccessReview answer for the service account. */
  const may = async (verb: string, resource: string, namespace: string, name?: string): Promise<boolean> => {
    const [group, plural, subresource] = resource.includes("/")
      ? (resource.split("/") as [string, string, string?])
      : ["", resource, undefined];
    const review = await kc.makeApiClient(AuthorizationV1Api).createSubjectAccessReview({
      body: {
        spec: {
          user: SERVICE_ACCOUNT_USER,
          groups: ["system:serviceaccounts", `system:serviceaccounts:${NAMESPACE}`, "system:authenticated"],
          resourceAttributes: { group, resource: plural, subresource, verb, namespace, name },
        },
      },
    });
    return review.status?.allowed === true;
  };
  type Check = [verb: string, resource: string, namespace: string, name?: string];
  const assertMay = async (allowed: Check[], denied: Check[], variant: string): Promise<void> => {
    for (const [verb, resource, namespace, name] of allowed) {
      assert.equal(
        await may(verb, resource, namespace, name),
        true,
        `${variant}: may ${verb} ${resource} in "${namespace}" ${name ?? ""}`,
      );
    }
    for (const [verb, resource, namespace, name] of denied) {
      assert.equal(
        await may(verb, resource, namespace, name),
        false,
        `${variant}: may not ${verb} ${resource} in "${namespace}" ${name ?? ""}`,
      );
    }
  };
  const each = (verbs: string[], resource: string, namespace: string): Check[] =>
    verbs.map((v): Check => [v, resource, namespace]);

  /** Every call natsbind makes in a namespace it watches, by module. */
  const namespacedCalls = (ns: string): Check[] => [
    ...each(["list", "watch", "get", "patch"], "natsbind.io/natsbindings", ns), // informer, status re-read, finalizer
    ["update", "natsbind.io/natsbindings/status", ns], // KubeStatusWriter
    ["update", "natsbind.io/natsbindings/finalizers", ns], // ownerReferences (OwnerReferencesPermissionEnforcement)
    ...each(["list", "watch", "get", "create", "update", "delete"], "secrets", ns), // SecretKeyStore
    ...each(["create", "patch"], "events", ns), // EventRecorder
  ];
  /** Cluster-scoped and natsbind-namespace calls, the same in every variant. */
  const sharedCalls: Check[] = [
    ...each(["get", "list", "watch"], "natsbind.io/natsbindingpolicies", ""),
    ["update", "natsbind.io/natsbindingpolicies/status", ""],
    ...each(["get", "list", "watch"], "namespaces", ""),
    ["create", "coordination.k8s.io/leases", NAMESPACE],
    ["get", "coordination.k8s.io/leases", NAMESPACE, "natsbind"],
    ["update", "coordination.k8s.io/leases", NAMESPACE, "natsbind"],
    // The webhook relay reads the Lease holder's pod (k8s/leader-pod.ts).
    ["get", "pods", NAMESPACE, "natsbind-abc"],
  ];
  /** Never, in any variant. */
  const neverCalls: Check[] = [
    ...each(["create", "update", "delete", "deletecollection"], "natsbind.io/natsbindings", SAMPLE_NAMESPACE),
    ...each(["get", "patch"], "natsbind.io/natsbindings/status", SAMPLE_NAMESPACE),
    ...each(["create", "update", "patch", "delete"], "natsbind.io/natsbindingpolicies", ""),
    ["patch", "natsbind.io/natsbindingpolicies/status", ""],
    ...each(["create", "update", "patch", "delete"], "namespaces", ""),
    ...each(["patch", "deletecollection"], "secrets", SAMPLE_NAMESPACE),
    ["delete", "events", SAMPLE_NAMESPACE],
    ...each(["get", "create", "update", "patch", "delete"], "configmaps", NAMESPACE),
    ...each(["create", "update", "delete"], "configmaps", SAMPLE_NAMESPACE),
    ["create", "pods/exec", SAMPLE_NAMESPACE],
    ["create", "pods/exec", NAMESPACE],
    ["list", "pods", SAMPLE_NAMESPACE],
    ["get", "pods", SAMPLE_NAMESPACE, "natsbind-abc"],
    ["list", "pods", NAMESPACE],
    ["update", "pods", NAMESPACE, "natsbind-abc"],
    ["create", "serviceaccounts/token", NAMESPACE],
    ["create", "rbac.authorization.k8s.io/rolebindings", SAMPLE_NAMESPACE],
    ["escalate", "rbac.authorization.k8s.io/clusterroles", ""],
    ["bind", "rbac.authorization.k8s.io/clusterroles", ""],
    ["get", "coordination.k8s.io/leases", SAMPLE_NAMESPACE, "natsbind"],
    ["update", "coordination.k8s.io/leases", NAMESPACE, "someone-else"],
    ["delete", "coordination.k8s.io/leases", NAMESPACE, "natsbind"],
    ["list", "coordination.k8s.io/leases", NAMESPACE],
  ];

  /** A KubeConfig that acts as the service account (Impersonate-User), as `kubectl --as` does. */
  const asServiceAccount = (): KubeConfig => {
    const impersonating = new KubeConfig();
    impersonating.loadFromOptions({
      clusters: [{ name: "test", server: kube!.server, skipTLSVerify: true }],
      users: [{ name: "natsbind", token: kube!.token, impersonateUser: SERVICE_ACCOUNT_USER }],
      contexts: [{ name: "natsbind", cluster: "test", user: "natsbind" }],
      currentContext: "natsbind",
    });
    return impersonating;
  };

  /**
   * natsbind's own adapters make their calls as the service account: the Secret informer (list and
   * watch, cluster-wide or in the watched namespace), the key store (create, get, update, delete),
   * the status writer (update status; get after a conflict), the finalizer patch, Events (create,
   * then patch for a repeat) and the Lease (create, get, update).
   */
  const runControllerCalls = async (sa: KubeConfig, watched: string | undefined): Promise<void> => {
    const binding = (await objects.get({
      apiVersion: `${GROUP}/${VERSION}`,
      kind: "NatsBinding",
      metadata: { name: "acme-ci", namespace: SAMPLE_NAMESPACE },
    })) as NatsBindingObject;
    const key = `${SAMPLE_NAMESPACE}/acme-ci`;
    const informer = SecretKeyStore.informer({ kubeConfig: sa, ...(watched ? { namespace: watched } : {}) });
    const bindingInformer = new Informer<NatsBindingObject>({
      kubeConfig: sa,
      path: watched
        ? `/apis/${GROUP}/${VERSION}/namespaces/${watched}/${PLURAL}`
        : `/apis/${GROUP}/${VERSION}/${PLURAL}`,
    });
    try {
      // An informer retries a 403 forever: a missing right shows as this deadline.
      let deadline: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all([informer.start(), bindingInformer.start()]),
        new Promise((_, reject) => {
          deadline = setTimeout(
            () => reject(new Error("informers not synced in 15 s: a missing right?")),
            15_000,
          );
        }),
      ]).finally(() => clearTimeout(deadline));
      const store = new SecretKeyStore({
        kubeConfig: sa,
        secrets: informer,
        owner: () => ({ name: binding.metadata!.name!, uid: binding.metadata!.uid! }),
      });
      const ref = { binding: key, projectId: 4242 };
      const keys = await store.ensure(ref, ["ci"]); // create
      await store.ensure(ref, ["ci", "deploy"]); // get + update (a role added)
      await waitFor(async () => (await store.list(key)).some((a) => a.roles.deploy), {
        what: "the watch to deliver the updated Secret",
        timeoutMs: 10_000,
      });
      assert.equal((await store.get(ref))?.account, keys.account);
      await store.remove(ref); // delete

      const core = sa.makeApiClient(CoreV1Api);
      const customObjects = sa.makeApiClient(CustomObjectsApi);
      const recorder = new EventRecorder({
        core,
        clock: systemClock,
        log: nullLogger,
        instance: "rbac-test",
      });
      const target = { namespace: SAMPLE_NAMESPACE, name: "acme-ci", uid: binding.metadata!.uid! };
      recorder.normal(target, "RbacTest", "same message twice: created, then its count patched");
      await waitFor(async () => recorder.written === 1, { what: "the Event created", timeoutMs: 10_000 });
      recorder.normal(target, "RbacTest", "same message twice: created, then its count patched");
      await waitFor(async () => recorder.written === 2, { what: "the Event patched", timeoutMs: 10_000 });

      // Status: written from a stale object, so the 409 path (get) runs too.
      const writer = new KubeStatusWriter({
        api: customObjects,
        cache: {
          get: () => ({ ...binding, metadata: { ...binding.metadata, resourceVersion: "1" } }),
          upsert: () => undefined,
        },
      });
      const now = new Date().toISOString();
      await writer.write(key, {
        observedGeneration: 1,
        conditions: [
          {
            type: "Ready",
            status: "False",
            reason: "Progressing",
            message: "rbac test",
            observedGeneration: 1,
            lastTransitionTime: now,
          },
        ],
        counts: { projects: 0, accounts: 0, pushed: 0, upToDate: 0, retained: 0, problems: 0 },
        accounts: [],
      });
      assert.equal(writer.conflicts, 1, "one 409 and a re-read (get)");
      await customObjects.patchNamespacedCustomObject(
        {
          group: GROUP,
          version: VERSION,
          namespace: SAMPLE_NAMESPACE,
          plural: PLURAL,
          name: "acme-ci",
          body: { metadata: { finalizers: ["natsbind.io/cleanup"] } },
        },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
      );

      const leases = leaseClient(sa);
      const lease = await leases.create(NAMESPACE, {
        metadata: { name: "natsbind", namespace: NAMESPACE },
        spec: { holderIdentity: "rbac-test", leaseDurationSeconds: 15 },
      });
      const read = await leases.get(NAMESPACE, "natsbind");
      assert.ok(read);
      await leases.replace(NAMESPACE, { ...read, spec: { ...read.spec, holderIdentity: "rbac-test-2" } });
      assert.equal(lease.metadata?.name, "natsbind");
    } finally {
      informer.stop();
      bindingInformer.stop();
      // Leave nothing for the next variant: the finalizer and the Lease go (as the admin).
      await objects.patchAsAdmin(SAMPLE_NAMESPACE, "acme-ci");
      await kc
        .makeApiClient(CoordinationV1Api)
        .deleteNamespacedLease({ namespace: NAMESPACE, name: "natsbind" })
        .catch(() => undefined);
    }
  };

  /** The same calls outside what the variant grants are refused by the apiserver (403). */
  const assertRefused = async (what: string, call: () => Promise<unknown>): Promise<void> => {
    await assert.rejects(call(), (err: unknown) => apiStatusCode(err) === 403, what);
  };

  const createRbac = async (manifests: Located[]): Promise<void> => {
    for (const kind of ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]) {
      for (const object of ofKind(manifests, kind)) await create(objects, object, false);
    }
  };
  const deleteRbac = async (manifests: Located[]): Promise<void> => {
    for (const kind of ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]) {
      for (const object of ofKind(manifests, kind)) await objects.deleteAsWritten(object);
    }
  };

  it("RBAC, all namespaces (deploy/base): exactly the calls natsbind makes, made for real", async () => {
    const clusterRole = only<V1ClusterRole & Manifest>(base, "ClusterRole", "natsbind");
    assert.deepEqual(verbsByResource(clusterRole.rules), {
      "natsbind.io/natsbindings": ["get", "list", "patch", "watch"],
      "natsbind.io/natsbindings/status": ["update"],
      "natsbind.io/natsbindings/finalizers": ["update"],
      "core/secrets": ["create", "delete", "get", "list", "update", "watch"],
      "core/events": ["create", "patch"],
    });
    assert.deepEqual(
      verbsByResource(only<V1ClusterRole & Manifest>(base, "ClusterRole", "natsbind-cluster-scoped").rules),
      {
        "natsbind.io/natsbindingpolicies": ["get", "list", "watch"],
        "natsbind.io/natsbindingpolicies/status": ["update"],
        "core/namespaces": ["get", "list", "watch"],
      },
    );
    const leaderRole = only<V1Role & Manifest>(base, "Role", "natsbind-leader-election");
    assert.equal(leaderRole.metadata?.namespace, NAMESPACE);
    assert.deepEqual(verbsByResource(leaderRole.rules), {
      "coordination.k8s.io/leases": ["create"],
      "coordination.k8s.io/leases natsbind": ["get", "update"],
    });
    const relayRole = only<V1Role & Manifest>(base, "Role", "natsbind-webhook-relay");
    assert.equal(relayRole.metadata?.namespace, NAMESPACE);
    assert.deepEqual(verbsByResource(relayRole.rules), { "core/pods": ["get"] });
    for (const binding of [...ofKind(base, "ClusterRoleBinding"), ...ofKind(base, "RoleBinding")]) {
      assert.deepEqual((binding as V1RoleBinding & Manifest).subjects, [
        { kind: "ServiceAccount", name: "natsbind", namespace: NAMESPACE },
      ]);
    }

    for (const object of ofKind(base, "ServiceAccount")) await create(objects, object, false);
    await createRbac(base);
    await assertMay(
      [
        ...namespacedCalls(SAMPLE_NAMESPACE),
        ...namespacedCalls(OTHER_NAMESPACE),
        // The informers list and watch across namespaces.
        ...each(["list", "watch"], "natsbind.io/natsbindings", ""),
        ...each(["list", "watch"], "secrets", ""),
        ...sharedCalls,
      ],
      neverCalls,
      "deploy/base",
    );
    await runControllerCalls(asServiceAccount(), undefined);
    await deleteRbac(base);
  });

  // Issue 9, finding 6: the ClusterRole let natsbind read and write every Secret in the cluster.
  // With kubernetes.namespace set, it now can touch Secrets in that namespace only.
  it("RBAC, one namespace (deploy/single-namespace): no Secret outside team-a, for real", async () => {
    const role = only<V1Role & Manifest>(single, "Role", "natsbind");
    assert.deepEqual(
      verbsByResource(role.rules),
      verbsByResource(only<V1ClusterRole & Manifest>(base, "ClusterRole", "natsbind").rules),
    );
    assert.equal(ofKind(single, "ClusterRoleBinding").length, 1);

    await createRbac(single);
    await assertMay(
      [...namespacedCalls(SAMPLE_NAMESPACE), ...sharedCalls],
      [
        ...neverCalls,
        ...namespacedCalls(OTHER_NAMESPACE),
        ...namespacedCalls(NAMESPACE), // natsbind's own Secrets (system creds, signing key) included
        ...namespacedCalls("kube-system"),
        // Cluster-wide: no list or watch across namespaces, no create or delete anywhere else.
        ...each(["get", "list", "watch", "create", "update", "delete"], "secrets", ""),
        ...each(["list", "watch"], "natsbind.io/natsbindings", ""),
      ],
      "deploy/single-namespace",
    );
    const sa = asServiceAccount();
    await runControllerCalls(sa, SAMPLE_NAMESPACE);
    // The attack: as natsbind, read or write Secrets elsewhere. The apiserver refuses each.
    const core = sa.makeApiClient(CoreV1Api);
    await assertRefused("list Secrets cluster-wide", () => core.listSecretForAllNamespaces());
    await assertRefused("list Secrets in team-b", () =>
      core.listNamespacedSecret({ namespace: OTHER_NAMESPACE }),
    );
    await assertRefused("read natsbind's own Secrets", () =>
      core.listNamespacedSecret({ namespace: NAMESPACE }),
    );
    await assertRefused("create a Secret in team-b", () =>
      core.createNamespacedSecret({
        namespace: OTHER_NAMESPACE,
        body: { metadata: { name: "planted" }, stringData: { x: "y" } },
      }),
    );
    await assertRefused("watch NatsBindings cluster-wide", () =>
      sa
        .makeApiClient(CustomObjectsApi)
        .listClusterCustomObject({ group: GROUP, version: VERSION, plural: PLURAL }),
    );
    await deleteRbac(single);
  });

  it("the Deployment: 2 replicas, probes, non-root, read-only root, resources, the V8 flags, the mounts", () => {
    const deployment = only<V1Deployment & Manifest>(base, "Deployment", "natsbind");
    const spec = deployment.spec!;
    const pod = spec.template.spec!;
    assert.equal(spec.replicas, 2);
    assert.equal(pod.containers.length, 1);
    const c: V1Container = pod.containers[0]!;

    assert.equal(c.livenessProbe?.httpGet?.path, "/healthz");
    assert.equal(c.readinessProbe?.httpGet?.path, "/readyz");
    assert.deepEqual(c.ports, [{ name: "http", containerPort: 8080, protocol: "TCP" }]);
    for (const probe of [c.startupProbe, c.livenessProbe, c.readinessProbe]) {
      assert.equal(probe?.httpGet?.port, "http");
    }

    assert.equal(pod.securityContext?.runAsNonRoot, true);
    assert.equal(pod.securityContext?.runAsUser, 1000);
    assert.equal(pod.securityContext?.seccompProfile?.type, "RuntimeDefault");
    assert.equal(c.securityContext?.runAsNonRoot, true);
    assert.equal(c.securityContext?.readOnlyRootFilesystem, true);
    assert.equal(c.securityContext?.allowPrivilegeEscalation, false);
    assert.deepEqual(c.securityContext?.capabilities?.drop, ["ALL"]);
    assert.equal(pod.automountServiceAccountToken, true);
    assert.equal(pod.serviceAccountName, only(base, "ServiceAccount").metadata?.name);

    assert.ok(c.resources?.requests?.cpu, "cpu request");
    assert.ok(c.resources?.requests?.memory, "memory request");
    assert.ok(c.resources?.limits?.memory, "memory limit");

    // NODE_FLAGS come before the script: node ignores flags placed after it.
    const argv = [...(c.command ?? []), ...(c.args ?? [])];
    assert.deepEqual(argv.slice(0, 1 + NODE_FLAGS.length), ["node", ...NODE_FLAGS]);
    assert.ok(argv.includes("--max-semi-space-size=16"));
    assert.deepEqual(argv.slice(1 + NODE_FLAGS.length), [
      "/app/dist/cli/main.js",
      "run",
      "--config",
      "/etc/natsbind/config/natsbind.yaml",
    ]);

    const mounts = Object.fromEntries((c.volumeMounts ?? []).map((m) => [m.name, m]));
    const volumes = Object.fromEntries((pod.volumes ?? []).map((v) => [v.name, v]));
    assert.equal(volumes.config?.configMap?.name, "natsbind-config");
    assert.equal(mounts.config?.mountPath, "/etc/natsbind/config");
    for (const [name, secretName, path] of [
      ["nats", "natsbind-nats", "/etc/natsbind/nats"],
      ["gitlab", "natsbind-gitlab", "/etc/natsbind/gitlab"],
    ] as const) {
      assert.equal(volumes[name]?.secret?.secretName, secretName);
      assert.equal(volumes[name]?.secret?.defaultMode, 0o400, `${secretName} files 0400`);
      assert.equal(volumes[name]?.secret?.optional, undefined, `${secretName} is required`);
      assert.equal(mounts[name]?.mountPath, path);
      assert.equal(mounts[name]?.readOnly, true);
    }
    // Secret files are root-owned: fsGroup lets uid 1000 read them.
    assert.equal(pod.securityContext?.fsGroup, 1000);
    assert.ok(volumes.tmp?.emptyDir, "an emptyDir");
    assert.equal(mounts.tmp?.mountPath, "/tmp");

    const service = only<V1Service & Manifest>(base, "Service", "natsbind");
    assert.deepEqual(service.spec?.ports, [
      { name: "http", port: 8080, targetPort: "http", protocol: "TCP" },
    ]);
    assert.deepEqual(service.spec?.selector, spec.selector.matchLabels);
    for (const [k, v] of Object.entries(spec.selector.matchLabels ?? {})) {
      assert.equal(spec.template.metadata?.labels?.[k], v, `pod label ${k}`);
    }
    assert.equal(spec.template.metadata?.labels?.["app.kubernetes.io/name"], "natsbind");
  });

  it("the ConfigMap's natsbind.yaml: Kubernetes mode, files where the Secrets are mounted, the Lease the Role names", () => {
    const configMap = only<V1ConfigMap & Manifest>(base, "ConfigMap", "natsbind-config");
    const text = configMap.data?.["natsbind.yaml"];
    assert.ok(text, "key natsbind.yaml");
    const document = parseYaml(text) as Record<string, unknown>;
    assert.equal(document.mode, "kubernetes");
    const config = parseConfig(document, "ConfigMap natsbind-config natsbind.yaml", "/etc/natsbind/config");
    assert.equal(config.mode, "kubernetes");
    assert.equal(config.nats.systemCreds, "/etc/natsbind/nats/system.creds");
    assert.equal(config.nats.operatorSigningKey, "/etc/natsbind/nats/operator-signing.nk");
    assert.equal(config.nats.operatorJwt, "/etc/natsbind/nats/operator.jwt");
    assert.equal(config.gitlab?.tokenFile, "/etc/natsbind/gitlab/token");
    assert.equal(config.gitlab?.webhookSecretFile, "/etc/natsbind/gitlab/webhook-secret");
    assert.equal(config.http.listen, "0.0.0.0:8080");
    // Cluster-wide (no kubernetes.namespace) goes with the ClusterRoleBinding.
    assert.equal(config.kubernetes.namespace, undefined);
    assert.equal(
      only<V1RoleBinding & Manifest>(base, "ClusterRoleBinding", "natsbind").roleRef.name,
      "natsbind",
    );
    const lease = config.kubernetes.leaderElection;
    const leaderRole = only<V1Role & Manifest>(base, "Role", "natsbind-leader-election");
    assert.equal(lease.namespace, leaderRole.metadata?.namespace);
    assert.ok(
      leaderRole.rules?.some((r) => r.resourceNames?.includes(lease.name)),
      `the Role names Lease ${lease.name}`,
    );
    // The webhook relay trusts a Lease holder only as a pod with these labels, in this namespace,
    // with this port: they must be the Deployment's, and the Role must let it read them.
    const relay = config.kubernetes.relay;
    const deployment = only<V1Deployment & Manifest>(base, "Deployment", "natsbind");
    const podNamespace = relay.namespace ?? lease.namespace;
    assert.equal(podNamespace, deployment.metadata?.namespace);
    for (const [k, v] of Object.entries(relay.podLabels))
      assert.equal(deployment.spec?.template.metadata?.labels?.[k], v, `pod label ${k}`);
    assert.ok(
      deployment.spec?.template.spec?.containers.some((c) =>
        c.ports?.some((p) => p.name === relay.portName && p.containerPort === 8080),
      ),
      `a container port named ${relay.portName} on the listener's port`,
    );
    assert.equal(
      only<V1Role & Manifest>(base, "Role", "natsbind-webhook-relay").metadata?.namespace,
      podNamespace,
    );
  });

  it("CI credentials: the Service carries the listener; the credentials Ingress routes /v1/credentials alone, over TLS", () => {
    const service = only<V1Service & Manifest>(base, "Service", "natsbind");
    const port = service.spec?.ports?.[0];
    assert.equal(port?.name, "http");
    const deployment = only<V1Deployment & Manifest>(base, "Deployment", "natsbind");
    assert.ok(
      deployment.spec?.template.spec?.containers[0]?.ports?.some((p) => p.name === port?.targetPort),
      "the Service's target port is the container's listener (http.listen :8080)",
    );
    const ingresses = samples
      .filter((s) => s.object.kind === "Ingress")
      .map((s) => s.object as V1Ingress & Manifest);
    const routes = (name: string): string[] =>
      ingresses
        .find((i) => i.metadata?.name === name)!
        .spec!.rules!.flatMap((r) =>
          r.http!.paths.map(
            (p) => `${p.pathType} ${p.path} -> ${p.backend.service?.name}:${p.backend.service?.port?.name}`,
          ),
        );
    assert.deepEqual(routes("natsbind-credentials"), ["Exact /v1/credentials -> natsbind:http"]);
    assert.deepEqual(
      routes("natsbind-webhooks"),
      ["Exact /webhooks/gitlab -> natsbind:http"],
      "webhooks keep their own route",
    );
    for (const ingress of ingresses) {
      const hosts = ingress.spec!.rules!.map((r) => r.host);
      assert.deepEqual(
        ingress.spec!.tls?.flatMap((t) => t.hosts),
        hosts,
        `${ingress.metadata?.name}: TLS for every host`,
      );
    }
  });

  it("CI credentials: uncommenting the callout blocks mounts Secret natsbind-callout (0400) where credentials.callout reads, and the apiserver accepts it", async () => {
    const deploymentText = uncommented(await readFile(join(BASE_DIR, "deployment.yaml"), "utf8"));
    const configText = uncommented(await readFile(join(BASE_DIR, "configmap.yaml"), "utf8"));
    assert.equal(deploymentText.blocks, 2, "deployment.yaml: the volume mount and the volume");
    assert.equal(configText.blocks, 1, "configmap.yaml: the credentials section");

    const deployment = parseManifests(
      deploymentText.text,
      "deployment.yaml (uncommented)",
    )[0] as V1Deployment & Manifest;
    await create(objects, deployment, true);
    const pod = deployment.spec!.template.spec!;
    const volume = pod.volumes?.find((v) => v.name === "callout");
    assert.equal(volume?.secret?.secretName, "natsbind-callout");
    assert.equal(volume?.secret?.defaultMode, 0o400);
    const mount = pod.containers[0]!.volumeMounts?.find((m) => m.name === "callout");
    assert.equal(mount?.readOnly, true);

    const configMap = parseManifests(configText.text, "configmap.yaml (uncommented)")[0] as V1ConfigMap &
      Manifest;
    await create(objects, configMap, true);
    const config = parseConfig(
      parseYaml(configMap.data!["natsbind.yaml"]!),
      "ConfigMap natsbind-config natsbind.yaml (uncommented)",
      "/etc/natsbind/config",
    );
    const credentials = config.credentials;
    assert.ok(credentials?.callout, "a credentials section with callout");
    for (const file of [credentials.callout.credsFile, credentials.callout.signingKeyFile]) {
      assert.ok(file.startsWith(`${mount!.mountPath}/`), `${file} is in the mounted Secret`);
    }
    assert.ok(
      credentials.servers?.every((s) => !s.includes(".svc")),
      "jobs get an address outside the cluster",
    );
    // deploy/single-namespace repeats the whole natsbind.yaml, this block included.
    const singleText = uncommented(
      await readFile(join(SINGLE_NAMESPACE_DIR, "natsbind-config.yaml"), "utf8"),
    );
    assert.equal(singleText.blocks, 1);
    const singleMap = parseManifests(
      singleText.text,
      "natsbind-config.yaml (uncommented)",
    )[0] as V1ConfigMap & Manifest;
    const singleConfig = parseConfig(
      parseYaml(singleMap.data!["natsbind.yaml"]!),
      "single",
      "/etc/natsbind/config",
    );
    assert.deepEqual(singleConfig.credentials, credentials);
  });

  it("the Dockerfile: Node 24, non-root, and the same command as the Deployment", async () => {
    const dockerfile = await readFile(join(REPO_ROOT, "Dockerfile"), "utf8");
    const instructions = dockerfile
      .replace(/\\\n/g, " ")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith("#"));
    const last = (name: string): string => {
      const found = instructions.filter((l) => l.toUpperCase().startsWith(`${name} `));
      assert.ok(found.length > 0, `Dockerfile has ${name}`);
      return found
        .at(-1)!
        .slice(name.length + 1)
        .trim();
    };
    assert.match(last("ARG"), /^NODE_IMAGE=node:24[.\d]*-/);
    assert.equal(last("FROM"), "${NODE_IMAGE}");
    assert.equal(last("USER"), "1000:1000");
    const entrypoint = JSON.parse(last("ENTRYPOINT")) as string[];
    const cmd = JSON.parse(last("CMD")) as string[];

    const c = only<V1Deployment & Manifest>(base, "Deployment", "natsbind").spec!.template.spec!
      .containers[0]!;
    assert.deepEqual([...entrypoint, ...cmd], [...(c.command ?? []), ...(c.args ?? [])]);
    const dockerignore = await readFile(join(REPO_ROOT, ".dockerignore"), "utf8");
    assert.match(dockerignore, /^!src\/$/m, ".dockerignore lets src/ in");
  });
});
