// OIDC side of the simulator: RSA signing keys, the JWKS and discovery documents, RS256 ID tokens
// with GitLab's CI claim set. node:crypto only.
import {
  createHash,
  createHmac,
  generateKeyPairSync,
  randomBytes,
  randomUUID,
  sign,
  type KeyObject,
} from "node:crypto";
import { guessTier, type SimStore } from "./store.ts";
import type { MintIdTokenOptions, SimTokenSigner } from "./types.ts";

export interface PublicJwk {
  kty: "RSA";
  kid: string;
  e: string;
  n: string;
  use: "sig";
  alg: "RS256";
}

interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  jwk: PublicJwk;
}

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString("base64url");
}

/** RFC 7638 JWK thumbprint (SHA-256, base64url), which is what GitLab's kid looks like. */
function thumbprint(e: string, n: string): string {
  return createHash("sha256")
    .update(JSON.stringify({ e, kty: "RSA", n }))
    .digest("base64url");
}

function newSigningKey(): SigningKey {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const exported = publicKey.export({ format: "jwk" });
  if (typeof exported.e !== "string" || typeof exported.n !== "string") throw new Error("RSA export failed");
  const kid = thumbprint(exported.e, exported.n);
  return {
    kid,
    privateKey,
    jwk: { kty: "RSA", kid, e: exported.e, n: exported.n, use: "sig", alg: "RS256" },
  };
}

/** The `alg` a signer produces, the header's default. */
function signerAlg(signer: SimTokenSigner): string {
  if (signer === "unsigned") return "none";
  if ("rsaKey" in signer) return "RS256";
  if ("ecKey" in signer) return "ES256";
  return "HS256";
}

/**
 * A compact JWS over `header` and `payload`, signed as `signer` says whatever the header claims:
 * hostile tests lie in the header (alg, kid) on purpose. `undefined` header fields are left out.
 */
export function signJws(
  header: Record<string, unknown>,
  payload: Record<string, unknown>,
  signer: SimTokenSigner,
): string {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  if (signer === "unsigned") return `${input}.`;
  let signature: Buffer;
  if ("rsaKey" in signer) signature = sign("sha256", Buffer.from(input), signer.rsaKey);
  else if ("ecKey" in signer) {
    signature = sign("sha256", Buffer.from(input), { key: signer.ecKey, dsaEncoding: "ieee-p1363" });
  } else signature = createHmac("sha256", signer.hmacSecret).update(input).digest();
  return `${input}.${signature.toString("base64url")}`;
}

export class OidcKeys {
  private keys: SigningKey[] = [newSigningKey()];

  get current(): SigningKey {
    return this.keys[this.keys.length - 1] as SigningKey;
  }

  get currentKid(): string {
    return this.current.kid;
  }

  /** New key for signing; the JWKS keeps the old ones unless keepOld is false. */
  rotate(keepOld = true): string {
    const key = newSigningKey();
    this.keys = keepOld ? [...this.keys, key] : [key];
    return key.kid;
  }

  jwks(): { keys: PublicJwk[] } {
    return { keys: this.keys.map((k) => ({ ...k.jwk })) };
  }
}

export function discoveryDocument(issuer: string): Record<string, unknown> {
  return {
    issuer,
    authorization_endpoint: `${issuer}/oauth/authorize`,
    token_endpoint: `${issuer}/oauth/token`,
    revocation_endpoint: `${issuer}/oauth/revoke`,
    introspection_endpoint: `${issuer}/oauth/introspect`,
    userinfo_endpoint: `${issuer}/oauth/userinfo`,
    jwks_uri: `${issuer}/oauth/discovery/keys`,
    scopes_supported: [
      "api",
      "read_api",
      "read_user",
      "read_repository",
      "write_repository",
      "read_registry",
      "write_registry",
      "sudo",
      "admin_mode",
      "openid",
      "profile",
      "email",
    ],
    response_types_supported: ["code"],
    response_modes_supported: ["query", "fragment", "form_post"],
    grant_types_supported: [
      "authorization_code",
      "password",
      "client_credentials",
      "device_code",
      "refresh_token",
    ],
    token_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post"],
    subject_types_supported: ["public"],
    id_token_signing_alg_values_supported: ["RS256"],
    claim_types_supported: ["normal"],
    claims_supported: [
      "iss",
      "sub",
      "aud",
      "exp",
      "iat",
      "sub_legacy",
      "name",
      "nickname",
      "preferred_username",
      "email",
      "email_verified",
      "website",
      "profile",
      "picture",
      "groups",
      "groups_direct",
    ],
    code_challenge_methods_supported: ["plain", "S256"],
  };
}

/**
 * A CI job ID token as GitLab issues it for `id_tokens:`. Claim order and types follow GitLab's
 * documented example: ids and booleans are strings, except runner_id (a number) and iat/nbf/exp.
 */
export function mintIdToken(
  store: SimStore,
  keys: OidcKeys,
  issuer: string,
  counters: { pipeline: number; job: number },
  o: MintIdTokenOptions,
): string {
  const project = store.project(o.projectId);
  const group = store.group(project.groupId);
  const projectPath = store.projectFullPath(project);
  const refType = o.refType ?? "branch";
  const ref = o.ref ?? project.defaultBranch;
  const refPath = refType === "branch" ? `refs/heads/${ref}` : `refs/tags/${ref}`;
  const refProtected = o.refProtected ?? (refType === "branch" && ref === project.defaultBranch);
  const sha = randomBytes(20).toString("hex");
  const iat = o.nowS ?? Math.floor(Date.now() / 1000);
  counters.pipeline += 1;
  counters.job += 1;

  const claims: Record<string, unknown> = {
    namespace_id: String(group.id),
    namespace_path: store.groupFullPath(group),
    project_id: String(project.id),
    project_path: projectPath,
    user_id: "1",
    user_login: "root",
    user_email: "admin@example.com",
    user_access_level: "owner",
    pipeline_id: String(counters.pipeline),
    pipeline_source: "push",
    job_id: String(counters.job),
    ref,
    ref_type: refType,
    ref_path: refPath,
    ref_protected: String(refProtected),
  };
  if (o.environment !== undefined) {
    const env = project.environments.find((e) => e.name === o.environment);
    claims.environment = o.environment;
    claims.environment_protected = String(o.environmentProtected ?? false);
    claims.deployment_tier = env?.tier ?? guessTier(o.environment);
    claims.environment_action = "start";
  }
  Object.assign(claims, {
    runner_id: 1,
    runner_environment: "self-hosted",
    sha,
    project_visibility: project.visibility,
    ci_config_ref_uri: `${new URL(issuer).host}/${projectPath}//.gitlab-ci.yml@${refPath}`,
    ci_config_sha: sha,
    jti: randomUUID(),
    iss: issuer,
    iat,
    nbf: iat - 5,
    exp: iat + (o.expiresInS ?? 3600),
    sub: `project_path:${projectPath}:ref_type:${refType}:ref:${ref}`,
    aud: o.aud,
  });
  if (o.extra) Object.assign(claims, o.extra);
  const key = keys.current;
  const signer: SimTokenSigner = o.signWith ?? { rsaKey: key.privateKey };
  const header = { kid: key.kid, typ: "JWT", alg: signerAlg(signer), ...o.header };
  return signJws(header, claims, signer);
}
