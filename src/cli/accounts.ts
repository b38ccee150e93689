/** `natsbind accounts ...`: operator-facing resolver commands, also what `make demo` shows. */
import { parseArgs } from "node:util";
import { loadConfig, type Config } from "../config/config.ts";
import { NatsbindError } from "../errors.ts";
import {
  accountClaims,
  claimsHash,
  decodeJwt,
  jwtClaimsHash,
  signJwt,
  type DesiredAccount,
} from "../nats/claims.ts";
import { NKeyPair } from "../nats/keys.ts";
import { connectResolver } from "../nats/from-config.ts";
import type { ResolverOutcome } from "../nats/resolver.ts";
import { UsageError } from "./usage.ts";
import { KeyDirectory } from "../store/key-directory.ts";

function printOutcome(verb: string, outcome: ResolverOutcome): void {
  for (const r of outcome.replies)
    console.log(`  ${verb} ${outcome.accounts.join(",")} on ${r.server}: ${r.code} ${r.message}`);
}

/**
 * The sample account of the demo: account key + a scoped "ci" signing key whose users may publish
 * and subscribe only below build.<project-id>. Keys are saved before the JWT is pushed.
 */
async function pushSample(config: Config, name: string, projectId: string): Promise<void> {
  if (!/^[1-9][0-9]{0,18}$/.test(projectId)) throw new UsageError("--project-id must be a positive integer");
  const keys = new KeyDirectory(config.keys.directory);
  const { resolver, signer } = await connectResolver(config.nats);
  const account = NKeyPair.generate("account");
  const ciKey = NKeyPair.generate("account");
  await keys.save(account);
  await keys.save(ciKey);
  const desired: DesiredAccount = {
    publicKey: account.publicKey,
    name,
    description: `sample account for GitLab project ${projectId}`,
    tags: [`project:${projectId}`],
    signingKeys: [
      {
        key: ciKey.publicKey,
        role: "ci",
        description: "CI jobs: publish and subscribe below build.<project>",
        template: {
          pub: { allow: ["build.{{tag(project)}}.>"] },
          sub: { allow: ["build.{{tag(project)}}.>", "_INBOX.>"] },
        },
      },
    ],
  };
  const claims = accountClaims(desired, signer.publicKey);
  const jwt = signJwt(claims, signer, Math.floor(Date.now() / 1000));
  try {
    console.log(`account ${account.publicKey} (${name}), ci signing key ${ciKey.publicKey}`);
    printOutcome("push", await resolver.push(jwt));
    const held = await resolver.lookup(account.publicKey);
    const same = held !== undefined && jwtClaimsHash(held) === claimsHash(claims);
    console.log(`  lookup: resolver holds the account, claims hash ${same ? "matches" : "DIFFERS"}`);
    if (!same) throw new NatsbindError(`resolver returned different claims for ${account.publicKey}`);
  } finally {
    await resolver.close();
  }
}

export async function accountsCommand(args: string[]): Promise<void> {
  const [verb, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      config: { type: "string", default: "natsbind.yaml" },
      name: { type: "string" },
      "project-id": { type: "string" },
    },
  });
  const config = await loadConfig(values.config);
  switch (verb) {
    case "push-sample":
      if (!values.name || !values["project-id"])
        throw new UsageError("push-sample needs --name and --project-id");
      return pushSample(config, values.name, values["project-id"]);
    case "list": {
      const { resolver } = await connectResolver(config.nats);
      try {
        for (const a of await resolver.list()) console.log(a);
      } finally {
        await resolver.close();
      }
      return;
    }
    case "lookup": {
      if (positionals.length !== 1) throw new UsageError("lookup needs exactly one account public key");
      const { resolver } = await connectResolver(config.nats);
      try {
        const jwt = await resolver.lookup(positionals[0]!);
        if (!jwt) throw new NatsbindError(`the resolver holds no account ${positionals[0]}`);
        const { name, sub, iss, nats } = decodeJwt(jwt);
        console.log(JSON.stringify({ name, sub, iss, nats }, null, 2));
      } finally {
        await resolver.close();
      }
      return;
    }
    case "delete": {
      if (positionals.length === 0) throw new UsageError("delete needs account public keys");
      const { resolver } = await connectResolver(config.nats);
      try {
        printOutcome("delete", await resolver.delete(positionals));
      } finally {
        await resolver.close();
      }
      return;
    }
    default:
      throw new UsageError(`unknown accounts command "${verb ?? ""}" (push-sample, list, lookup, delete)`);
  }
}
