/**
 * `natsbind operator status|add-signing-key|activate|retire`: operator signing-key rotation
 * (src/operator/phases.ts; runbook docs/runbooks/rotate-operator-signing-key.md). Output names
 * public keys only; a progress line goes to stderr when it is a terminal, nothing otherwise.
 */
import { parseArgs } from "node:util";
import { loadConfig, type Config } from "../config/config.ts";
import { openSystemConnection } from "../nats/from-config.ts";
import { RESOLVER_USER_ROLE } from "../nats/system-user.ts";
import { createLogger } from "../observability/logger.ts";
import { NatsResolver } from "../nats/resolver.ts";
import type { ScanProgress } from "../operator/inventory.ts";
import { activate, addSigningKey, operatorStatus, retire, type OperatorStatus } from "../operator/phases.ts";
import { UsageError } from "./usage.ts";

/** The system account as natsbind.yaml says (creds, or a user issued with nats.systemSigningKey). */
async function connect(nats: Config["nats"]): Promise<NatsResolver> {
  const connection = await openSystemConnection(nats, RESOLVER_USER_ROLE, {
    log: createLogger({ level: "warn", base: { app: "natsbind" } }),
  });
  return NatsResolver.connect({
    servers: nats.servers,
    connection,
    timeoutMs: nats.timeoutMs,
    ...(nats.expectedServers ? { expectedServers: nats.expectedServers } : {}),
  });
}

/** A progress line on a terminal (stderr), redrawn at most 10 times a second; none otherwise. */
function progressLine(label: string): { update(p: ScanProgress): void; done(): void } {
  const tty = process.stderr.isTTY === true;
  let last = 0;
  let drawn = false;
  return {
    update(p) {
      if (!tty) return;
      const t = performance.now();
      if (p.done !== p.total && t - last < 100) return;
      last = t;
      process.stderr.write(`\r${label}: ${p.done}/${p.total} accounts`);
      drawn = true;
    },
    done() {
      if (tty && drawn) process.stderr.write("\n");
      drawn = false;
    },
  };
}

function required(values: Record<string, unknown>, command: string, flags: string[]): void {
  const missing = flags.filter((f) => typeof values[f] !== "string" || values[f] === "");
  if (missing.length > 0)
    throw new UsageError(`operator ${command} needs ${missing.map((f) => `--${f}`).join(", ")}`);
}

function printStatus(s: OperatorStatus): void {
  const line = (text = ""): void => void process.stdout.write(`${text}\n`);
  const name = s.servers.flatMap((x) => x.operators).find((o) => o.operator === s.operator)?.name;
  line(`operator            ${s.operator ?? "(no server trusts natsbind's key)"}${name ? ` (${name})` : ""}`);
  line(`natsbind signs with ${s.natsbindKey}`);
  if (s.previousKey) line(`previous key        ${s.previousKey} (until retired)`);
  line(`servers (${s.servers.length}):`);
  for (const server of s.servers) {
    const op = server.operators.find((o) => o.operator === s.operator);
    const keys = op ? op.signingKeys.join(", ") : "does not trust this operator";
    line(`  ${server.server}  ${server.problem ?? keys}`);
  }
  line("signing keys:");
  for (const k of s.keys) {
    const flags = [k.natsbindSigns ? "natsbind signs with it" : "", k.previous ? "previous" : ""].filter(
      Boolean,
    );
    line(
      `  ${k.key}  trusted by ${k.trustedBy.length}/${s.servers.length}  signed ${k.accounts} account(s), ` +
        `${k.natsbindAccounts} natsbind's${flags.length ? `  [${flags.join(", ")}]` : ""}`,
    );
  }
  for (const o of s.otherIssuers)
    line(`  ${o.key}  not a key of the operator: signed ${o.accounts} account(s)`);
  line(
    `accounts: ${s.accounts}${s.mixed ? ` (${s.mixed} signed by different keys on different servers)` : ""}`,
  );
  for (const p of s.problems.slice(0, 10)) line(`problem: ${p}`);
  line("next:");
  for (const n of s.next) line(`  - ${n}`);
}

export async function operatorCommand(args: string[]): Promise<void> {
  const [verb, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      config: { type: "string", default: "natsbind.yaml" },
      json: { type: "boolean", default: false },
      seed: { type: "string" },
      key: { type: "string" },
      "all-accounts": { type: "boolean", default: false },
      "operator-seed": { type: "string" },
      "operator-jwt": { type: "string" },
      "out-jwt": { type: "string" },
      "out-seed": { type: "string" },
    },
  });
  if (positionals.length > 0) throw new UsageError(`operator ${verb ?? ""}: unexpected ${positionals[0]}`);
  switch (verb) {
    case "add-signing-key": {
      required(values, verb, ["operator-seed", "operator-jwt", "out-jwt", "out-seed"]);
      const r = await addSigningKey({
        operatorSeedFile: values["operator-seed"]!,
        operatorJwtFile: values["operator-jwt"]!,
        outJwtFile: values["out-jwt"]!,
        outSeedFile: values["out-seed"]!,
      });
      if (values.json) {
        process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
        return;
      }
      console.log(`operator        ${r.operator}`);
      console.log(`new signing key ${r.signingKey}${r.reused ? ` (reused from ${values["out-seed"]})` : ""}`);
      console.log(`signing keys    ${r.signingKeys.join(", ")}`);
      console.log(`wrote ${values["out-jwt"]}${r.reused ? "" : ` and ${values["out-seed"]} (0600)`}`);
      console.log(
        "next: put the new operator JWT into every nats-server's configuration and restart them one " +
          "at a time (a reload does not apply it), then natsbind operator activate --seed " +
          values["out-seed"],
      );
      return;
    }
    case "status": {
      const config = await loadConfig(values.config);
      const resolver = await connect(config.nats);
      const progress = progressLine("reading accounts");
      try {
        const s = await operatorStatus({ nats: config.nats, resolver, progress: (p) => progress.update(p) });
        progress.done();
        if (values.json) process.stdout.write(`${JSON.stringify(s, null, 2)}\n`);
        else printStatus(s);
      } finally {
        progress.done();
        await resolver.close();
      }
      return;
    }
    case "activate": {
      required(values, verb, ["seed"]);
      const config = await loadConfig(values.config);
      const resolver = await connect(config.nats);
      const progress = progressLine("re-signing");
      const t0 = performance.now();
      try {
        const r = await activate({
          nats: config.nats,
          resolver,
          seedFile: values.seed!,
          allAccounts: values["all-accounts"],
          progress: (p) => progress.update(p),
        });
        progress.done();
        const seconds = ((performance.now() - t0) / 1000).toFixed(1);
        console.log(
          `natsbind signs with ${r.signingKey}${r.replaced ? ` (was ${r.replaced})` : " (already)"}`,
        );
        console.log(`servers: ${r.servers.join(", ")} trust it`);
        console.log(
          `re-signed ${r.resigned} account(s) in ${seconds} s; ${r.alreadySigned} were signed by it already`,
        );
        for (const [key, n] of Object.entries(r.leftAlone))
          console.log(
            `left alone: ${n} account(s) signed by ${key} that are not natsbind's (--all-accounts re-signs them)`,
          );
        if (r.foreign > 0) console.log(`left alone: ${r.foreign} account(s) not issued by this operator`);
        for (const p of r.problems.slice(0, 10)) console.log(`problem: ${p}`);
      } finally {
        progress.done();
        await resolver.close();
      }
      return;
    }
    case "retire": {
      required(values, verb, ["key", "operator-seed", "operator-jwt", "out-jwt"]);
      const config = await loadConfig(values.config);
      const resolver = await connect(config.nats);
      const progress = progressLine("checking accounts");
      try {
        const r = await retire({
          nats: config.nats,
          resolver,
          key: values.key!,
          operatorSeedFile: values["operator-seed"]!,
          operatorJwtFile: values["operator-jwt"]!,
          outJwtFile: values["out-jwt"]!,
          progress: (p) => progress.update(p),
        });
        progress.done();
        console.log(`retired ${r.retired}: no account on ${r.servers.join(", ")} is signed by it`);
        console.log(`signing keys    ${r.signingKeys.join(", ")}`);
        console.log(
          `wrote ${values["out-jwt"]}${r.removedPrevious ? "; removed the previous seed file" : ""}`,
        );
        console.log(
          "next: put it into every nats-server's configuration (and nats.operatorJwt) and restart them " +
            "one at a time",
        );
      } finally {
        progress.done();
        await resolver.close();
      }
      return;
    }
    default:
      throw new UsageError(
        `unknown operator command "${verb ?? ""}" (status, add-signing-key, activate, retire)`,
      );
  }
}
