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
