// Every manifest in deploy/ is accepted by a real kube-apiserver, and says what natsbind needs.
//
// There is no kustomize binary here, so the test resolves deploy/base/kustomization.yaml itself:
// `resources` only (files, and directories with their own kustomization), no transformers. A
// kustomization using anything else fails the test rather than being applied differently from what
// `kubectl apply -k` would send. The CRDs are created for real (and waited on until Established),
// so is the Namespace; every other object is created with a server-side dry run (dryRun=All), which
// runs validation and admission (PodSecurity included) without persisting. The RBAC objects are then
// created for real and checked with SubjectAccessReviews: the service account may do exactly what
// the controller does, and nothing next to it.
import assert from "node:assert/strict";
import { readdir, readFile, stat } from "node:fs/promises";
import { join, relative, resolve, sep } from "node:path";
import { after, before, describe, it } from "node:test";
import { request, type RequestOptions } from "node:https";
import {
  AuthorizationV1Api,
  KubernetesObjectApi,
  type KubeConfig,
  type KubernetesObject,
  type V1ClusterRole,
  type V1ConfigMap,
  type V1Container,
  type V1Deployment,
  type V1PolicyRule,
  type V1Role,
  type V1RoleBinding,
  type V1Service,
} from "@kubernetes/client-node";
import { parse as parseYaml, parseAllDocuments } from "yaml";
import { NODE_FLAGS } from "../../src/cli/node-flags.ts";
import { parseConfig } from "../../src/config/config.ts";
import { parseBinding } from "../../src/api/v1alpha1/schema.ts";
import { startKubeApiserver, waitForCrdEstablished } from "../support/kube.ts";
import type { KubeApiserver } from "../support/kube.ts";
import { liveProcessCount, REPO_ROOT } from "../support/process.ts";

const DEPLOY_DIR = join(REPO_ROOT, "deploy");
const BASE_DIR = join(DEPLOY_DIR, "base");
const SAMPLES_DIR = join(DEPLOY_DIR, "samples");
const NAMESPACE = "natsbind";
/** Where the test puts samples that name no namespace (a team's namespace). */
const SAMPLE_NAMESPACE = "team-a";
const SERVICE_ACCOUNT_USER = `system:serviceaccount:${NAMESPACE}:natsbind`;

type Manifest = KubernetesObject & Record<string, unknown>;

interface Located {
  /** Path relative to the repository, e.g. deploy/base/deployment.yaml. */
  source: string;
  object: Manifest;
}

const KUSTOMIZATION_FILES = ["kustomization.yaml", "kustomization.yml", "Kustomization"];
/** Anything else (namespace, labels, patches, generators, ...) would transform what is applied. */
const KUSTOMIZATION_KEYS = new Set(["apiVersion", "kind", "resources"]);

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
  const ids = new Map<string, string>();
  for (const { source: s, object } of out) {
    const id = `${(object.apiVersion ?? "").split("/")[0]} ${describeObject(object)}`;
    assert.ok(!ids.has(id), `${id} appears twice (${ids.get(id)} and ${s}); kustomize refuses duplicates`);
    ids.set(id, s);
  }
  return out;
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

  async #send(method: string, path: string, body?: unknown): Promise<Manifest> {
    const kc = this.#kc!;
    const url = new URL(path, kc.getCurrentCluster()!.server);
    const opts: RequestOptions = {
      method,
      headers: { accept: "application/json", "content-type": "application/json" },
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
  const read = new Set<string>();
  let samples: Located[];

  before(async () => {
    base = await buildKustomization(BASE_DIR, read);
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

  it("every YAML file under deploy/ is part of deploy/base or a sample", async () => {
    const stray = (await yamlFilesUnder(DEPLOY_DIR)).filter(
      (f) => !read.has(f) && !f.startsWith(SAMPLES_DIR + sep),
    );
    assert.deepEqual(stray.map(repoPath), [], "files kubectl apply -k deploy/base would not apply");
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

  it("RBAC: the service account may do exactly what the controller does", async () => {
    const clusterRole = only<V1ClusterRole & Manifest>(base, "ClusterRole", "natsbind");
    assert.deepEqual(verbsByResource(clusterRole.rules), {
      "natsbind.io/natsbindings": ["get", "list", "patch", "watch"],
      "natsbind.io/natsbindings/status": ["get", "patch", "update"],
      "natsbind.io/natsbindings/finalizers": ["update"],
      "core/secrets": ["create", "delete", "get", "list", "update", "watch"],
      "core/events": ["create", "patch"],
    });
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

    // Created for real: the authorizer answers for the service account.
    for (const kind of ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]) {
      for (const object of ofKind(base, kind)) await create(objects, object, false);
    }
    const authz = kc.makeApiClient(AuthorizationV1Api);
    const may = async (
      verb: string,
      resource: string,
      namespace: string,
      name?: string,
    ): Promise<boolean> => {
      const [group, plural, subresource] = resource.includes("/")
        ? (resource.split("/") as [string, string, string?])
        : ["", resource, undefined];
      const review = await authz.createSubjectAccessReview({
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
    // [verb, group/resource[/subresource] (core: no group), namespace, name?]
    const allowed: Array<[string, string, string, string?]> = [
      ...["get", "list", "watch", "patch"].map((v): [string, string, string] => [
        v,
        "natsbind.io/natsbindings",
        SAMPLE_NAMESPACE,
      ]),
      ...["get", "update", "patch"].map((v): [string, string, string] => [
        v,
        "natsbind.io/natsbindings/status",
        SAMPLE_NAMESPACE,
      ]),
      ["update", "natsbind.io/natsbindings/finalizers", SAMPLE_NAMESPACE],
      ...["get", "list", "watch", "create", "update", "delete"].map((v): [string, string, string] => [
        v,
        "secrets",
        SAMPLE_NAMESPACE,
      ]),
      ["create", "events", SAMPLE_NAMESPACE],
      ["patch", "events", SAMPLE_NAMESPACE],
      ["create", "coordination.k8s.io/leases", NAMESPACE],
      ["get", "coordination.k8s.io/leases", NAMESPACE, "natsbind"],
      ["update", "coordination.k8s.io/leases", NAMESPACE, "natsbind"],
      ["get", "pods", NAMESPACE, "natsbind-abc"],
    ];
    const denied: Array<[string, string, string, string?]> = [
      ["create", "natsbind.io/natsbindings", SAMPLE_NAMESPACE],
      ["update", "natsbind.io/natsbindings", SAMPLE_NAMESPACE],
      ["delete", "natsbind.io/natsbindings", SAMPLE_NAMESPACE],
      ["patch", "secrets", SAMPLE_NAMESPACE],
      ["deletecollection", "secrets", SAMPLE_NAMESPACE],
      ["delete", "events", SAMPLE_NAMESPACE],
      ["get", "configmaps", NAMESPACE],
      ["list", "pods", SAMPLE_NAMESPACE],
      ["get", "pods", SAMPLE_NAMESPACE, "natsbind-abc"],
      ["list", "pods", NAMESPACE],
      ["update", "pods", NAMESPACE, "natsbind-abc"],
      ["get", "coordination.k8s.io/leases", SAMPLE_NAMESPACE, "natsbind"],
      ["update", "coordination.k8s.io/leases", NAMESPACE, "someone-else"],
      ["delete", "coordination.k8s.io/leases", NAMESPACE, "natsbind"],
      ["list", "coordination.k8s.io/leases", NAMESPACE],
    ];
    for (const [verb, resource, namespace, name] of allowed) {
      assert.equal(
        await may(verb, resource, namespace, name),
        true,
        `may ${verb} ${resource} in ${namespace}`,
      );
    }
    for (const [verb, resource, namespace, name] of denied) {
      assert.equal(
        await may(verb, resource, namespace, name),
        false,
        `may not ${verb} ${resource} in ${namespace}`,
      );
    }
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
    assert.equal(ofKind(base, "ClusterRoleBinding").length, 1);
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
