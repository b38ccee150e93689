/**
 * `natsbind callout setup`: the auth callout for an operator that already runs (natsbind init
 * without --callout, or any operator whose signing key natsbind.yaml names). It makes what
 * `init --callout` makes (credentials/callout-account.ts), writes the files under --out, keys first,
 * and pushes the callout account to the resolver. What is left for the operator: append the written
 * nats-server snippet (default_sentinel, max_control_line) to each server's config and reload it
 * (both settings reload), and add the printed credentials section to natsbind.yaml.
 */
import { mkdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { loadConfig } from "../config/config.ts";
import { createCalloutAccount } from "../credentials/callout-account.ts";
import { connectResolver } from "../nats/from-config.ts";
import { ResolverUnsupportedError } from "../nats/resolver.ts";
import { FEATURE_VERSIONS, describeServers, serversBelow } from "../nats/server-versions.ts";
import { writeFileAtomic } from "../store/files.ts";
import {
  calloutFiles,
  calloutServerConfig,
  checkAudience,
  checkTarget,
  credentialsSection,
  DEFAULT_AUDIENCE,
  INIT_LAYOUT,
} from "./init.ts";
import { UsageError } from "./usage.ts";

/** The nats-server snippet `callout setup` writes next to the keys. */
export const CALLOUT_SERVER_SNIPPET = "nats-server-callout.conf";

export async function calloutCommand(args: string[]): Promise<void> {
  const [verb, ...rest] = args;
  if (verb !== "setup") throw new UsageError(`callout: unknown subcommand "${verb ?? ""}" (expected setup)`);
  const { values } = parseArgs({
    args: rest,
    options: {
      config: { type: "string", default: "natsbind.yaml" },
      out: { type: "string" },
      audience: { type: "string", default: DEFAULT_AUDIENCE },
      force: { type: "boolean", default: false },
    },
  });
  if (!values.out) throw new UsageError("callout setup: --out DIR is required");
  checkAudience(values.audience);
  const config = await loadConfig(values.config);
  const outDir = resolve(values.out);
  await checkTarget(outDir, values.force);

  const { resolver, signer } = await connectResolver(config.nats);
  try {
    // Before anything is written: the snippet's default_sentinel is an unknown field to older
    // servers (nats-server 2.10 refuses the reload), and without it token-only clients never get in.
    const old = serversBelow(await resolver.serverVersions(), FEATURE_VERSIONS.defaultSentinel);
    if (old.length > 0)
      throw new ResolverUnsupportedError(
        `callout setup: the auth callout's default_sentinel needs nats-server >= ${FEATURE_VERSIONS.defaultSentinel} ` +
          `on every server; older: ${describeServers(old)}. Upgrade them first; nothing was written or pushed`,
      );
    const callout = createCalloutAccount({
      operatorSigningKey: signer,
      issuedAt: Math.floor(Date.now() / 1000),
    });
    await mkdir(join(outDir, "operator"), { recursive: true, mode: 0o700 });
    // Keys and creds before the push: an account on the servers whose keys are lost is a dead end.
    for (const [path, data, mode] of calloutFiles(callout))
      await writeFileAtomic(join(outDir, path), data, mode);
    await writeFileAtomic(
      join(outDir, CALLOUT_SERVER_SNIPPET),
      calloutServerConfig(callout.sentinelJwt),
      0o644,
    );
    const outcome = await resolver.push(callout.accountJwt);
    console.log(`callout account    ${callout.account.publicKey}`);
    console.log(`callout signing    ${callout.signingKey.publicKey}`);
    console.log(`callout user       ${callout.serviceUser.publicKey}`);
    for (const r of outcome.replies) console.log(`  push on ${r.server}: ${r.code} ${r.message}`);
    console.log(
      `wrote ${outDir}: ${[...calloutFiles(callout).map(([p]) => p), CALLOUT_SERVER_SNIPPET].join(", ")}`,
    );
    console.log(
      `keep ${INIT_LAYOUT.calloutAccountKey} offline: natsbind needs the signing key and the creds only`,
    );
    console.log("");
    // nats-server resolves an include relative to the including file, absolute paths too: so the
    // snippet is to be appended (or included by a path relative to each server's config).
    console.log(
      `1. every nats-server (>= 2.11.2): append ${join(outDir, CALLOUT_SERVER_SNIPPET)} to its config`,
    );
    console.log(
      "   (or include it by a path relative to that config), then reload: nats-server --signal reload",
    );
    console.log("2. natsbind.yaml: merge this into credentials, then restart natsbind:");
    console.log(credentialsSection(values.audience, outDir).replace(/^/gm, "   ").trimEnd());
    for (const k of [callout.account, callout.signingKey, callout.serviceUser]) k.clear();
  } finally {
    await resolver.close();
  }
}
