// The Helm chart (charts/natsbind) with the real helm (scripts/tools.sh): lint with default and full
// values, one source of truth with deploy/ (the default render is deploy/base object by object and
// field by field, watchNamespace renders deploy/single-namespace, charts/natsbind/crds is crds/ byte
// for byte; a drift fails naming the object and field), the rendered manifests applied to a real
// kube-apiserver with `kubectl apply --server-side`, and hostile values refused by values.schema.json
// or the templates with a message naming the value.
import assert from "node:assert/strict";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { parse as parseYaml } from "yaml";
import { NODE_FLAGS } from "../../src/cli/node-flags.ts";
import { parseConfig, type Config } from "../../src/config/config.ts";
import {
  CHART_DIR,
  chartDrift,
  describeObject,
  helm,
  kustomize,
  renderChart,
  runCommand,
  templateArgs,
  type CommandResult,
  type Manifest,
} from "../support/helm.ts";
import { startKubeApiserver, waitForCrdEstablished, type KubeApiserver } from "../support/kube.ts";
import { liveProcessCount, REPO_ROOT, removeDir, tempDir, toolBinary } from "../support/process.ts";

const FULL_VALUES = join(CHART_DIR, "ci", "full-values.yaml");
const NAMESPACE = "natsbind";
const WATCHED = "team-a";

/** What deploy/ has and the chart does not render, and why (the test fails if deploy/ loses one). */
const NOT_IN_CHART = {
  // Helm installs into an existing namespace (or `helm install --create-namespace`); a chart that
  // creates its own release namespace fails there. docs/install.md labels it for Pod Security.
  [`Namespace ${NAMESPACE}`]: "the release namespace",
  // Installed from charts/natsbind/crds (Helm's crds/ directory), compared byte for byte below.
  "CustomResourceDefinition natsbindings.natsbind.io": "charts/natsbind/crds",
  "CustomResourceDefinition natsbindingpolicies.natsbind.io": "charts/natsbind/crds",
};
/** What the default render has beyond deploy/base. */
const CHART_ONLY = { [`PodDisruptionBudget ${NAMESPACE}/natsbind`]: "podDisruptionBudget.enabled" };

function only(objects: Manifest[], kind: string, name?: string): Manifest {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  assert.equal(found.length, 1, `one ${kind} ${name ?? ""}, found ${found.map(describeObject).join(", ")}`);
  return found[0]!;
}

type Container = {
  image: string;
  command: string[];
  args: string[];
  volumeMounts: { name: string; mountPath: string; readOnly?: boolean }[];
  securityContext: Record<string, unknown>;
};
type PodSpec = {
  containers: Container[];
  volumes: { name: string; secret?: { secretName: string; defaultMode: number } }[];
  imagePullSecrets?: unknown;
  serviceAccountName: string;
};
function podSpec(objects: Manifest[]): { spec: PodSpec; annotations: Record<string, string> } {
  const template = (
    only(objects, "Deployment").spec as {
      template: { spec: PodSpec; metadata: { annotations: Record<string, string> } };
    }
  ).template;
  return { spec: template.spec, annotations: template.metadata.annotations };
}

function configOf(objects: Manifest[]): Config {
  const configMap = only(objects, "ConfigMap");
  const text = (configMap.data as Record<string, string>)["natsbind.yaml"]!;
  return parseConfig(parseYaml(text), `${describeObject(configMap)} natsbind.yaml`, "/etc/natsbind/config");
}

describe(
  "charts/natsbind: helm lint, helm template, deploy/ in step, a real apiserver",
  { timeout: 180_000 },
  () => {
    let dir: string;
    let base: Manifest[];
    let single: Manifest[];
    let kube: KubeApiserver | undefined;
    let kubeconfig: string;

    before(async () => {
      dir = await tempDir("helm");
      [base, single] = await Promise.all([
        kustomize(join(REPO_ROOT, "deploy", "base")),
        kustomize(join(REPO_ROOT, "deploy", "single-namespace")),
      ]);
      kube = await startKubeApiserver();
      kubeconfig = join(dir, "kubeconfig");
      await writeFile(kubeconfig, kube.kubeConfig().exportConfig(), { mode: 0o600 });
    });

    after(async () => {
      await kube?.stop();
      if (dir) await removeDir(dir);
      assert.equal(liveProcessCount(), 0, "etcd and kube-apiserver were stopped");
    });

    const kubectl = async (args: string[], input?: string): Promise<string> => {
      const result = await runCommand(toolBinary("kubectl"), ["--kubeconfig", kubeconfig, ...args], {
        input,
      });
      assert.equal(result.code, 0, `kubectl ${args.join(" ")}: ${result.stderr}`);
      return result.stdout;
    };

    const valuesFile = async (name: string, text: string): Promise<string> => {
      const path = join(dir, `${name}.yaml`);
      await writeFile(path, text);
      return path;
    };

    it("helm lint --strict passes with the default values and with ci/full-values.yaml", async (t) => {
      for (const args of [[], ["--values", FULL_VALUES]]) {
        const result = await helm(["lint", "--strict", CHART_DIR, ...args]);
        t.diagnostic(
          `$ helm lint --strict charts/natsbind ${args.join(" ")}\n${result.stdout}${result.stderr}`,
        );
        assert.equal(result.code, 0, `helm lint ${args.join(" ")}: ${result.stdout}${result.stderr}`);
        assert.match(result.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
        assert.doesNotMatch(result.stdout, /\[(WARNING|ERROR)\]/);
      }
    });

    it("charts/natsbind/crds holds crds/*.yaml byte for byte (scripts/gen-crd.ts writes both)", async () => {
      const yamls = (names: string[]): string[] => names.filter((n) => n.endsWith(".yaml")).sort();
      const source = yamls(await readdir(join(REPO_ROOT, "crds"))).filter((n) => n !== "kustomization.yaml");
      const chart = yamls(await readdir(join(CHART_DIR, "crds")));
      assert.deepEqual(chart, source, "the chart's CRD files are crds/'s");
      for (const name of source) {
        const [a, b] = await Promise.all([
          readFile(join(REPO_ROOT, "crds", name)),
          readFile(join(CHART_DIR, "crds", name)),
        ]);
        assert.ok(a.equals(b), `charts/natsbind/crds/${name} differs from crds/${name}: run make crds`);
      }
      const check = await runCommand(process.execPath, [join(REPO_ROOT, "scripts", "gen-crd.ts"), "--check"]);
      assert.equal(check.code, 0, `node scripts/gen-crd.ts --check: ${check.stderr}`);
    });

    it("default values render deploy/base: every object, field by field", async () => {
      const { objects } = await renderChart();
      assert.deepEqual(chartDrift(objects, base, { notInChart: NOT_IN_CHART, chartOnly: CHART_ONLY }), []);
      // What the comparison leaves out on purpose, checked here: the chart's selectors carry the
      // release, and the webhook relay trusts exactly the pods the Deployment selects.
      const deployment = only(objects, "Deployment") as Manifest & {
        spec: { selector: { matchLabels: Record<string, string> } };
      };
      assert.equal(deployment.spec.selector.matchLabels["app.kubernetes.io/instance"], "natsbind");
      assert.deepEqual(configOf(objects).kubernetes.relay.podLabels, deployment.spec.selector.matchLabels);
      assert.deepEqual(
        (only(objects, "Service").spec as { selector: unknown }).selector,
        deployment.spec.selector.matchLabels,
      );
    });

    it("watchNamespace: team-a renders deploy/single-namespace: a Role in team-a, no cluster-wide Secrets", async () => {
      const { objects } = await renderChart({ set: { watchNamespace: WATCHED } });
      assert.deepEqual(chartDrift(objects, single, { notInChart: NOT_IN_CHART, chartOnly: CHART_ONLY }), []);
      assert.equal(only(objects, "Role", "natsbind").metadata.namespace, WATCHED);
      assert.deepEqual(
        objects.filter((o) => o.kind === "ClusterRole").map((o) => o.metadata.name),
        ["natsbind-cluster-scoped"],
      );
    });

    it("a drift fails naming the object and the field, either side", async () => {
      const { objects } = await renderChart({
        set: { "resources.limits.memory": "2Gi", "config.gitlab.resyncInterval": "5m", replicas: 3 },
      });
      const drifts = chartDrift(objects, base, { notInChart: NOT_IN_CHART, chartOnly: CHART_ONLY });
      assert.deepEqual(drifts.sort(), [
        'ConfigMap natsbind/natsbind-config: data["natsbind.yaml"].gitlab.resyncInterval: chart 300000, deploy/ 600000',
        "Deployment natsbind/natsbind: spec.replicas: chart 3, deploy/ 2",
        'Deployment natsbind/natsbind: spec.template.spec.containers[natsbind].resources.limits.memory: chart "2Gi", deploy/ "1Gi"',
      ]);
      // deploy/ changed instead: a verb more in its ClusterRole, a volume less, a new object.
      const changed = structuredClone(base);
      const role = only(changed, "ClusterRole", "natsbind") as Manifest & { rules: { verbs: string[] }[] };
      role.rules[3]!.verbs.push("patch");
      const pod = podSpec(changed).spec;
      pod.volumes = pod.volumes.filter((v) => v.name !== "tmp");
      changed.push({
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: { name: "extra", namespace: NAMESPACE },
      });
      const { objects: defaults } = await renderChart();
      assert.deepEqual(
        chartDrift(defaults, changed, { notInChart: NOT_IN_CHART, chartOnly: CHART_ONLY }).sort(),
        [
          'ClusterRole natsbind: rules[3].verbs[6]: chart (absent), deploy/ "patch"',
          "ConfigMap natsbind/extra: in deploy/, not rendered by the chart",
          'Deployment natsbind/natsbind: spec.template.spec.volumes[tmp]: chart {"name":"tmp","emptyDir":{"sizeLimit":"64Mi"}}, deploy/ (absent)',
        ],
      );
    });

    it("full values: every optional part renders, natsbind.yaml is valid and names the mounted files", async () => {
      const { objects } = await renderChart({ valuesFiles: [FULL_VALUES] });
      const kinds = objects.map(describeObject).sort();
      for (const expected of [
        "PodDisruptionBudget natsbind/natsbind",
        "NetworkPolicy natsbind/natsbind",
        "ServiceMonitor natsbind/natsbind",
        "PrometheusRule natsbind/natsbind",
        `Role ${WATCHED}/natsbind`,
        `RoleBinding ${WATCHED}/natsbind`,
        "ServiceAccount natsbind/natsbind-controller",
      ])
        assert.ok(kinds.includes(expected), `${expected} in ${kinds.join(", ")}`);
      assert.ok(!kinds.includes("ClusterRole natsbind"), "no cluster-wide Secrets with watchNamespace");

      const config = configOf(objects);
      const { spec, annotations } = podSpec(objects);
      const container = spec.containers[0]!;
      const mounted = (path: string): string | undefined => {
        const mount = container.volumeMounts.find((m) => path.startsWith(`${m.mountPath}/`));
        assert.equal(mount?.readOnly, true, `${path} is on a read-only mount`);
        const volume = spec.volumes.find((v) => v.name === mount!.name);
        assert.equal(volume?.secret?.defaultMode, 0o400, `${path}: Secret files 0400`);
        return volume?.secret?.secretName;
      };
      assert.equal(mounted(config.nats.systemSigningKey!), "acme-nats-keys");
      assert.equal(config.nats.systemCreds, undefined);
      assert.equal(mounted(config.nats.operatorSigningKey), "acme-nats-keys");
      assert.equal(mounted(config.gitlab!.webhookSecretFile!), "acme-gitlab");
      assert.equal(mounted(config.credentials!.callout!.credsFile), "acme-callout");
      assert.equal(mounted(config.credentials!.callout!.signingKeyFile), "acme-callout");
      assert.equal(config.kubernetes.namespace, WATCHED);
      assert.equal(config.credentials?.audience, "https://natsbind.example.com");
      assert.equal(config.nats.timeoutMs, 4000);
      assert.equal(container.image, "registry.example.com/natsbind:0.1.0-rc.1");
      assert.deepEqual([...container.command, ...container.args].slice(0, 1 + NODE_FLAGS.length), [
        "node",
        ...NODE_FLAGS,
      ]);
      assert.deepEqual(spec.imagePullSecrets, [{ name: "registry-credentials" }]);
      assert.equal(spec.serviceAccountName, "natsbind-controller");
      for (const binding of objects.filter((o) => o.kind.endsWith("Binding")))
        assert.deepEqual(
          (binding.subjects as unknown[])[0],
          { kind: "ServiceAccount", name: "natsbind-controller", namespace: NAMESPACE },
          describeObject(binding),
        );

      // The Lease natsbind.yaml names is the one its Role may update.
      const leaderRole = only(objects, "Role", "natsbind-leader-election") as Manifest & {
        rules: { resourceNames?: string[] }[];
      };
      assert.equal(config.kubernetes.leaderElection.namespace, leaderRole.metadata.namespace);
      assert.ok(
        leaderRole.rules.some((r) => r.resourceNames?.includes(config.kubernetes.leaderElection.name)),
      );

      // The rule file is read, not templated: {{ $value }} and {{ $labels }} reach Prometheus as written.
      const rule = only(objects, "PrometheusRule");
      const file = parseYaml(await readFile(join(CHART_DIR, "files", "prometheus-rules.yaml"), "utf8")) as {
        groups: unknown;
      };
      assert.deepEqual((rule.spec as { groups: unknown }).groups, file.groups);
      assert.equal((rule.metadata.labels as Record<string, string>).release, "kube-prometheus-stack");

      // A changed natsbind.yaml rolls the pods: the checksum follows the config.
      const { objects: other } = await renderChart({
        valuesFiles: [FULL_VALUES],
        set: { "config.nats.timeoutMs": 3000 },
      });
      assert.notEqual(podSpec(other).annotations["checksum/config"], annotations["checksum/config"]);
      assert.match(annotations["checksum/config"]!, /^[0-9a-f]{64}$/);
    });

    it("the values examples of docs/install.md and charts/natsbind/README.md render a valid natsbind.yaml", async () => {
      const examples: [string, string][] = [];
      // install.md's my-values.yaml; the chart README's example starts with config: (install.md
      // has another such block: the NATS chart's values).
      for (const [doc, start] of [
        ["docs/install.md", "# my-values.yaml"],
        ["charts/natsbind/README.md", "config:"],
      ] as const) {
        const text = await readFile(join(REPO_ROOT, doc), "utf8");
        for (const [, block] of text.matchAll(/```yaml\n([\s\S]*?)```/g))
          if (block!.startsWith(start)) examples.push([doc, block!]);
      }
      assert.equal(examples.length, 2, "one example in each");
      for (const [i, [doc, block]] of examples.entries()) {
        const { objects } = await renderChart({ valuesFiles: [await valuesFile(`example-${i}`, block)] });
        const config = configOf(objects);
        assert.equal(config.mode, "kubernetes", doc);
        assert.ok(config.nats.systemSigningKey, `${doc}: natsbind's own system users`);
      }
    });

    it("another release name prefixes every name, and the Lease, its Role and the relay labels follow", async () => {
      const { objects } = await renderChart({ release: "acme", namespace: "platform" });
      const names = objects.map(describeObject).sort();
      assert.ok(names.includes("Deployment platform/acme-natsbind"), names.join(", "));
      assert.ok(names.includes("ClusterRole acme-natsbind-cluster-scoped"));
      const config = configOf(objects);
      assert.deepEqual(config.kubernetes.leaderElection, {
        ...config.kubernetes.leaderElection,
        namespace: "platform",
        name: "acme-natsbind",
      });
      const leaderRole = only(objects, "Role", "acme-natsbind-leader-election") as Manifest & {
        rules: { resourceNames?: string[] }[];
      };
      assert.deepEqual(leaderRole.rules[1]!.resourceNames, ["acme-natsbind"]);
      assert.equal(config.kubernetes.relay.podLabels["app.kubernetes.io/instance"], "acme");
      assert.equal((only(objects, "ConfigMap").metadata.name as string) + "", "acme-natsbind-config");
    });

    // --- a real apiserver ---

    const applyRendered = async (args: string[], t: { diagnostic(m: string): void }): Promise<string> => {
      const rendered = await helm(args);
      assert.equal(rendered.code, 0, rendered.stderr);
      const out = await kubectl(
        ["apply", "--server-side", "--field-manager=helm-test", "-f", "-"],
        rendered.stdout,
      );
      t.diagnostic(
        `$ helm ${args.join(" ").replace(CHART_DIR, "charts/natsbind")} | kubectl apply --server-side -f -\n${out}`,
      );
      return out;
    };

    it("helm install creates the CRDs and every object; helm upgrade rolls a config change; a bad upgrade changes nothing", async (t) => {
      const home = join(dir, "helm-home");
      const run = async (args: string[]): Promise<CommandResult> => {
        const result = await helm([...args, "--kubeconfig", kubeconfig], { home });
        t.diagnostic(
          `$ helm ${args.join(" ").replace(CHART_DIR, "charts/natsbind")}\n${result.stdout}${result.stderr}`,
        );
        return result;
      };
      const installed = await run([
        "install",
        "acme",
        CHART_DIR,
        "--namespace",
        "platform",
        "--create-namespace",
      ]);
      assert.equal(installed.code, 0, installed.stderr);
      assert.match(installed.stdout, /STATUS: deployed/);
      const kc = kube!.kubeConfig();
      for (const crd of ["natsbindings.natsbind.io", "natsbindingpolicies.natsbind.io"])
        await waitForCrdEstablished(kc, crd);
      const deployment = async (): Promise<Manifest> =>
        JSON.parse(
          await kubectl(["get", "deployment", "acme-natsbind", "-n", "platform", "-o", "json"]),
        ) as Manifest;
      const checksum = (d: Manifest): string =>
        (d.spec as { template: { metadata: { annotations: Record<string, string> } } }).template.metadata
          .annotations["checksum/config"]!;
      const before = await deployment();
      assert.equal((before.spec as { replicas: number }).replicas, 2);

      const upgraded = await run([
        "upgrade",
        "acme",
        CHART_DIR,
        "--namespace",
        "platform",
        "--reuse-values",
        "--set",
        "config.gitlab.resyncInterval=5m",
      ]);
      assert.equal(upgraded.code, 0, upgraded.stderr);
      const after = await deployment();
      assert.notEqual(checksum(after), checksum(before), "a changed natsbind.yaml rolls the pods");
      const configMap = JSON.parse(
        await kubectl(["get", "configmap", "acme-natsbind-config", "-n", "platform", "-o", "json"]),
      ) as Manifest;
      assert.match((configMap.data as Record<string, string>)["natsbind.yaml"]!, /resyncInterval: 5m/);

      const refused = await run([
        "upgrade",
        "acme",
        CHART_DIR,
        "--namespace",
        "platform",
        "--reuse-values",
        "--set-json",
        'replicas="two"',
      ]);
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, /at '\/replicas': got string, want integer/);
      assert.equal(checksum(await deployment()), checksum(after), "the refused upgrade changed nothing");
      const history = await run(["history", "acme", "--namespace", "platform", "--output", "json"]);
      assert.deepEqual(
        (JSON.parse(history.stdout) as { revision: number; status: string }[]).map((r) => [
          r.revision,
          r.status,
        ]),
        [
          [1, "superseded"],
          [2, "deployed"],
        ],
      );

      // helm upgrade leaves crds/ alone; docs/install.md's command updates them. Helm applied them
      // as field manager "helm": applying as the same manager also drops a field the new CRD no
      // longer has (as another manager, with --force-conflicts, the field would stay).
      const crdFile = join(CHART_DIR, "crds", "natsbinding.yaml");
      const original = await readFile(crdFile, "utf8");
      const categories = "    categories:\n      - natsbind\n";
      assert.ok(original.includes(categories));
      const upgradeCrds = ["apply", "--server-side", "--field-manager=helm", "--force-conflicts", "-f", "-"];
      const crdNames = async (): Promise<string> =>
        kubectl(["get", "crd", "natsbindings.natsbind.io", "-o", "jsonpath={.spec.names}"]);
      await kubectl(
        upgradeCrds,
        original.replace(categories, "").replace("      - nb\n", "      - nb\n      - nbx\n"),
      );
      const changed = JSON.parse(await crdNames()) as { shortNames: string[]; categories?: string[] };
      assert.deepEqual(changed.shortNames, ["nb", "nbx"], "the new CRD is in place");
      assert.equal(changed.categories, undefined, "a field the new CRD dropped is gone");
      await kubectl(upgradeCrds, original);
      assert.deepEqual((JSON.parse(await crdNames()) as { categories: string[] }).categories, ["natsbind"]);
    });

    it("the CRDs from charts/natsbind/crds and the default render are accepted by the apiserver", async (t) => {
      // As `helm install --create-namespace` plus the Pod Security label docs/install.md sets.
      await kubectl(["create", "namespace", NAMESPACE]);
      await kubectl(["label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"]);
      await kubectl(["apply", "--server-side", "-f", join(CHART_DIR, "crds")]);
      const kc = kube!.kubeConfig();
      for (const crd of ["natsbindings.natsbind.io", "natsbindingpolicies.natsbind.io"])
        await waitForCrdEstablished(kc, crd);

      const out = await applyRendered(templateArgs(), t);
      const { objects } = await renderChart();
      const applied = out.trim().split("\n");
      for (const o of objects) {
        const group = o.apiVersion.includes("/") ? `.${o.apiVersion.split("/")[0]!}` : "";
        const line = `${o.kind.toLowerCase()}${group}/${String(o.metadata.name)} serverside-applied`;
        assert.ok(applied.includes(line), `${line} in:\n${out}`);
      }
      assert.equal(applied.length, objects.length, "one line per rendered object");
      // The pod the Deployment would create passes Pod Security "restricted" (dry run: no controllers here).
      await assertPodAdmitted(objects);
    });

    const assertPodAdmitted = async (objects: Manifest[]): Promise<void> => {
      const pod = {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name: "natsbind-pod-security", namespace: NAMESPACE },
        spec: podSpec(objects).spec,
      };
      await kubectl(["create", "--dry-run=server", "--validate=strict", "-f", "-"], JSON.stringify(pod));
      // The check has teeth: the same pod allowed to escalate privileges is refused.
      const loose = structuredClone(pod);
      (
        loose.spec.containers[0] as unknown as { securityContext: Record<string, unknown> }
      ).securityContext.allowPrivilegeEscalation = true;
      const refused = await runCommand(
        toolBinary("kubectl"),
        ["--kubeconfig", kubeconfig, "create", "--dry-run=server", "-f", "-"],
        { input: JSON.stringify(loose) },
      );
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, /violates PodSecurity "restricted/);
    };

    it("the full render is accepted too, ServiceMonitor and PrometheusRule by minimal prometheus-operator CRDs", async (t) => {
      await kubectl(["create", "namespace", WATCHED]);
      // The test apiserver has no prometheus-operator: test/support/monitoring-crds.yaml declares the
      // two kinds with the fields the chart renders; strict field validation refuses any other.
      await kubectl([
        "apply",
        "--server-side",
        "-f",
        join(REPO_ROOT, "test", "support", "monitoring-crds.yaml"),
      ]);
      const kc = kube!.kubeConfig();
      for (const crd of ["servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"])
        await waitForCrdEstablished(kc, crd);
      const out = await applyRendered(templateArgs({ valuesFiles: [FULL_VALUES] }), t);
      for (const line of [
        "servicemonitor.monitoring.coreos.com/natsbind serverside-applied",
        "prometheusrule.monitoring.coreos.com/natsbind serverside-applied",
        "networkpolicy.networking.k8s.io/natsbind serverside-applied",
        "poddisruptionbudget.policy/natsbind serverside-applied",
        "role.rbac.authorization.k8s.io/natsbind serverside-applied",
      ])
        assert.ok(out.includes(line), `${line} in:\n${out}`);
      await assertPodAdmitted((await renderChart({ valuesFiles: [FULL_VALUES] })).objects);

      // The minimal CRDs have teeth: a misspelt ServiceMonitor field is refused under strict validation.
      const monitor = structuredClone(
        only((await renderChart({ valuesFiles: [FULL_VALUES] })).objects, "ServiceMonitor"),
      ) as Manifest & { spec: { endpoints: Record<string, unknown>[] } };
      monitor.spec.endpoints[0]!.scrapeTimout = "5s";
      const refused = await runCommand(
        toolBinary("kubectl"),
        ["--kubeconfig", kubeconfig, "apply", "--server-side", "--dry-run=server", "-f", "-"],
        { input: JSON.stringify(monitor) },
      );
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, /\.spec\.endpoints\[0\]\.scrapeTimout: field not declared in schema/);
    });

    // --- hostile or mistyped values ---

    const refusals: [what: string, values: string, message: RegExp][] = [
      ["replicas as a word", "replicas: two\n", /at '\/replicas': got string, want integer/],
      [
        "an unknown top-level key (a typo)",
        "replica: 3\n",
        /at '': additional properties 'replica' not allowed/,
      ],
      [
        "an unknown nested key",
        "podDisruptionBudget:\n  minAvailable: 1\n",
        /at '\/podDisruptionBudget': additional properties 'minAvailable' not allowed/,
      ],
      [
        "a pull policy Kubernetes does not know",
        "image:\n  pullPolicy: Sometimes\n",
        /at '\/image\/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'/,
      ],
      [
        "a watched namespace that is no DNS label",
        "watchNamespace: Team_A\n",
        /at '\/watchNamespace': 'Team_A' does not match pattern/,
      ],
      [
        "a system user kind that does not exist",
        "secrets:\n  nats:\n    systemUser: password\n",
        /at '\/secrets\/nats\/systemUser': value must be one of 'creds', 'signingKey'/,
      ],
      [
        "a NATS server that is not a NATS URL",
        'config:\n  nats:\n    servers: ["http://nats:4222"]\n',
        /at '\/config\/nats\/servers\/0': 'http:\/\/nats:4222' does not match pattern/,
      ],
      [
        "a scrape interval that is no duration",
        "serviceMonitor:\n  interval: often\n",
        /at '\/serviceMonitor\/interval': 'often' does not match pattern/,
      ],
      [
        "NetworkPolicy peers that are not a list",
        "networkPolicy:\n  ingressFrom: everyone\n",
        /at '\/networkPolicy\/ingressFrom': got string, want array/,
      ],
      [
        "config.mode (the chart's)",
        "config:\n  mode: local\n",
        /config\.mode is set by the chart: the chart runs natsbind in Kubernetes mode/,
      ],
      [
        "a signing key path next to the mounted Secret",
        "config:\n  nats:\n    operatorSigningKey: /tmp/evil.nk\n",
        /config\.nats\.operatorSigningKey is set by the chart: the chart reads operator-signing\.nk from Secret secrets\.nats\.name/,
      ],
      [
        "kubernetes.namespace instead of watchNamespace",
        "config:\n  kubernetes:\n    namespace: team-b\n",
        /config\.kubernetes\.namespace is set by the chart: set watchNamespace/,
      ],
      [
        "the Lease moved away from its Role",
        "config:\n  kubernetes:\n    leaderElection: { name: other }\n",
        /config\.kubernetes\.leaderElection\.name is set by the chart/,
      ],
      [
        "no service account to run as",
        "serviceAccount:\n  create: false\n",
        /serviceAccount\.name: name the existing service account when serviceAccount\.create is false/,
      ],
      [
        "the callout without credentials",
        "secrets:\n  callout:\n    name: natsbind-callout\n",
        /secrets\.callout\.name needs a credentials section/,
      ],
    ];

    it("hostile or mistyped values: helm template and helm lint refuse each, naming the value", async (t) => {
      for (const [i, [what, text, message]] of refusals.entries()) {
        const file = await valuesFile(`refused-${i}`, text);
        const result = await helm([...templateArgs(), "--values", file]);
        assert.notEqual(result.code, 0, `${what}: helm template accepted it`);
        assert.equal(result.stdout, "", `${what}: nothing rendered`);
        assert.match(result.stderr, message, `${what}: ${result.stderr}`);
        t.diagnostic(`${what}: ${result.stderr.trim()}`);
      }
      const lint = await helm([
        "lint",
        CHART_DIR,
        "--values",
        await valuesFile("lint-refused", "replicas: two\n"),
      ]);
      t.diagnostic(`$ helm lint charts/natsbind --values (replicas: two)\n${lint.stdout}${lint.stderr}`);
      assert.notEqual(lint.code, 0);
      assert.match(lint.stdout + lint.stderr, /replicas/);
      assert.match(lint.stderr, /1 chart\(s\) linted, 1 chart\(s\) failed/);
    });
  },
);
