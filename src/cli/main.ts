#!/usr/bin/env -S node --max-semi-space-size=16
/**
 * natsbind command line. Subcommands parse their own flags; errors print one line and exit 1 (2 for
 * usage errors). Nothing printed here ever contains a seed or creds.
 */
import { parseArgs } from "node:util";
import { NatsbindError } from "../errors.ts";
import { INIT_LAYOUT, initOperator } from "./init.ts";
import { accountsCommand } from "./accounts.ts";
import { calloutCommand } from "./callout.ts";
import { gitlabCommand } from "./gitlab.ts";
import { runCommand, statusCommand } from "./run.ts";
import { credentialsCommand } from "./credentials.ts";
import { rotateCommand } from "./rotate.ts";
import { operatorCommand } from "./operator.ts";
import { OPERATOR_USAGE, UsageError } from "./usage.ts";

const USAGE = `usage: natsbind <command> [flags]

commands:
  init --out DIR [--name OPERATOR] [--port N] [--monitor-port N] [--force]
       [--callout [--audience AUD]]
        create an operator, its signing key, the system account and user, a nats-server config
        and a starter natsbind.yaml in DIR. --callout adds the NATS auth callout for CI jobs
        (nats-server >= 2.11.2): a callout account, natsbind's callout user and response signing
        key, a deny-all bearer sentinel as default_sentinel, and credentials.callout in
        natsbind.yaml (credentials.audience: AUD, default "natsbind")
  callout setup --config FILE --out DIR [--audience AUD] [--force]
        the auth callout for a running operator (natsbind.yaml's operator signing key): writes
        what init --callout writes to DIR, pushes the callout account, and prints the nats-server
        include line and the credentials section for natsbind.yaml
  accounts push-sample --config FILE --name NAME --project-id ID
        create (or reuse) an account with a scoped "ci" signing key and push it to the resolver
  accounts list --config FILE          accounts the resolver holds
  accounts lookup --config FILE ID     an account's claims as the resolver holds them
  accounts delete --config FILE ID...  delete accounts from the resolver
  gitlab projects --config FILE [--group G]... [--project P]...
        list the projects a scope selects (ids or full paths; groups include subgroups):
        id, namespace id, visibility, path
  rotate --config FILE --binding NAME [--project ID [--environment ENV]] [--role ROLE]
         [--emergency] [--timeout 2m]
        rotate role signing keys now (local mode): a new key is listed, pushed, then issues; the
        old one retires after the overlap. --emergency removes every key of the role at once (a
        leak) and reports the connections closed. Hands the work to a running natsbind run, or
        does it here when none runs. Kubernetes: annotate the NatsBinding natsbind.io/rotate
  credentials revoke --config FILE --binding NAME --project ID [--environment ENV]
         (--user UKEY [--user UKEY]... | --job ID | --pipeline ID | --all) [--timeout 2m]
        revoke users of the project's account(s): by user public key, every user natsbind
        issued to a CI job or pipeline (from the audit file and the live connections tagged
        job:ID / pipeline:ID), or every user issued until now (--all). Stored with the account's
        keys (every later push carries it until it expires), pushed, and done when the NATS
        servers hold it; one audit line per revoked key (stdout unless credentials.audit.file).
        Local mode: hands it to a running natsbind run, or does it here when none runs.
        Kubernetes (--binding NAMESPACE/NAME): writes the account's Secret; the leader pushes
${OPERATOR_USAGE}  run --config FILE                    run the controller in local mode (until SIGTERM/SIGINT)
  status --config FILE                 bindings and accounts as natsbind run last reported them
  help                                 this text
`;

async function init(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      out: { type: "string" },
      name: { type: "string" },
      port: { type: "string" },
      "monitor-port": { type: "string" },
      force: { type: "boolean", default: false },
      callout: { type: "boolean", default: false },
      audience: { type: "string" },
    },
  });
  if (!values.out) throw new UsageError("init: --out DIR is required");
  if (values.audience !== undefined && !values.callout)
    throw new UsageError("init: --audience needs --callout");
  const port = (flag: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > 65535)
      throw new UsageError(`init: ${flag} must be a port number (1-65535)`);
    return n;
  };
  const result = await initOperator({
    outDir: values.out,
    force: values.force,
    callout: values.callout,
    ...(values.audience !== undefined ? { audience: values.audience } : {}),
    ...(values.name ? { operatorName: values.name } : {}),
    ...(values.port ? { natsPort: port("--port", values.port)! } : {}),
    ...(values["monitor-port"] ? { monitorPort: port("--monitor-port", values["monitor-port"])! } : {}),
  });
  console.log(`operator           ${result.operator}`);
  console.log(`operator signing   ${result.operatorSigningKey}`);
  console.log(`system account     ${result.systemAccount}`);
  if (result.callout) {
    console.log(`callout account    ${result.callout.account}`);
    console.log(`callout signing    ${result.callout.signingKey}`);
    console.log(`callout user       ${result.callout.serviceUser}`);
  }
  console.log(`wrote ${result.files.length} files to ${result.outDir}:`);
  for (const f of result.files) console.log(`  ${f}`);
  console.log(
    `keep ${INIT_LAYOUT.operatorKey} offline: natsbind needs only ${INIT_LAYOUT.operatorSigningKey}`,
  );
  if (result.callout) {
    console.log(
      `keep ${INIT_LAYOUT.calloutAccountKey} offline too; the callout needs nats-server >= 2.11.2 ` +
        "(default_sentinel) and gitlab.url in natsbind.yaml",
    );
  }
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case "init":
        await init(rest);
        return 0;
      case "accounts":
        await accountsCommand(rest);
        return 0;
      case "callout":
        await calloutCommand(rest);
        return 0;
      case "gitlab":
        await gitlabCommand(rest);
        return 0;
      case "operator":
        await operatorCommand(rest);
        return 0;
      case "run":
        await runCommand(rest);
        return 0;
      case "rotate":
        await rotateCommand(rest);
        return 0;
      case "credentials":
        await credentialsCommand(rest);
        return 0;
      case "status":
        await statusCommand(rest);
        return 0;
      case undefined:
      case "help":
      case "--help":
      case "-h":
        process.stdout.write(USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (err) {
    const usage = err instanceof UsageError || (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS");
    const name = err instanceof NatsbindError ? `${err.name}: ` : "";
    console.error(`natsbind: ${name}${(err as Error).message ?? String(err)}`);
    if (usage) console.error("run 'natsbind help' for usage");
    return usage ? 2 : 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
