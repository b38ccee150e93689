/**
 * The resolver connection and operator signing key as natsbind.yaml's `nats` section describes
 * them: one place for every command that talks to the resolver.
 */
import {
  MAX_CREDS_FILE_BYTES,
  MAX_OPERATOR_JWT_BYTES,
  readConfigReferencedFile,
  type Config,
} from "../config/config.ts";
import { readSeedFile } from "../store/key-directory.ts";
import { trustedOperatorFromJwt } from "./claims.ts";
import type { NKeyPair } from "./keys.ts";
import { NatsResolver } from "./resolver.ts";
import { assertEveryServerTrusts } from "../operator/inventory.ts";
import { LiveOperatorKeys, type LiveOperatorKeysOptions } from "../operator/live-keys.ts";

export async function connectResolver(
  nats: Config["nats"],
): Promise<{ resolver: NatsResolver; signer: NKeyPair }> {
  const signer = await readSeedFile(nats.operatorSigningKey, "operator");
  const creds = await readConfigReferencedFile(nats.systemCreds, "nats.systemCreds", MAX_CREDS_FILE_BYTES);
  const operatorJwt = nats.operatorJwt
    ? await readConfigReferencedFile(nats.operatorJwt, "nats.operatorJwt", MAX_OPERATOR_JWT_BYTES)
    : undefined;
  const resolver = await NatsResolver.connect({
    servers: nats.servers,
    creds: new TextEncoder().encode(creds),
    timeoutMs: nats.timeoutMs,
    operatorSigningKey: signer,
    // Without the operator JWT, trust only the key natsbind signs with.
    trustedOperator:
      nats.operatorJwt && operatorJwt !== undefined
        ? trustedOperatorFromJwt(operatorJwt, nats.operatorJwt)
        : { publicKey: signer.publicKey, signingKeys: [signer.publicKey] },
    ...(nats.expectedServers ? { expectedServers: nats.expectedServers } : {}),
  });
  return { resolver, signer };
}

/**
 * connectResolver for `natsbind run`: the operator keys are re-read when their files change
 * (operator activate), and the resolver's push() check follows them. A new signing key is used only
 * once every server trusts it. Call keys.watch() to start watching, keys.close() to stop.
 */
export async function connectLiveResolver(
  nats: Config["nats"],
  opts: Pick<LiveOperatorKeysOptions, "log" | "exclusive" | "pollIntervalMs"> = {},
): Promise<{ resolver: NatsResolver; keys: LiveOperatorKeys }> {
  const connected: { resolver?: NatsResolver } = {};
  const keys: LiveOperatorKeys = await LiveOperatorKeys.load({
    ...opts,
    signingKeyFile: nats.operatorSigningKey,
    ...(nats.operatorJwt ? { operatorJwtFile: nats.operatorJwt } : {}),
    approve: async (key) => {
      if (!connected.resolver) throw new Error("not connected yet");
      await assertEveryServerTrusts(connected.resolver, keys.signer.publicKey, key);
    },
  });
  const creds = await readConfigReferencedFile(nats.systemCreds, "nats.systemCreds", MAX_CREDS_FILE_BYTES);
  const resolver = await NatsResolver.connect({
    servers: nats.servers,
    creds: new TextEncoder().encode(creds),
    timeoutMs: nats.timeoutMs,
    operatorSigningKey: keys.signer,
    trustedOperator: keys.trustedOperator,
    ...(nats.expectedServers ? { expectedServers: nats.expectedServers } : {}),
  });
  connected.resolver = resolver;
  return { resolver, keys };
}
