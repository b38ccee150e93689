/**
 * natsbind's configuration file (natsbind.yaml): read and validated once, here. Every error names
 * the file and the field path. Relative paths resolve against the file's directory.
 */
import { dirname, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { TerminalError } from "../errors.ts";
import { isPublicKey } from "../nats/keys.ts";
import {
  DEFAULT_SYSTEM_USER_LIFETIME_MS,
  MAX_SYSTEM_USER_LIFETIME_MS,
  MIN_SYSTEM_USER_LIFETIME_MS,
} from "../nats/system-user.ts";
import { readRequiredTextFile } from "../store/files.ts";
import { yamlNestingProblem } from "../nesting.ts";
import { parseDuration } from "../units.ts";

export class ConfigError extends TerminalError {}

export const MAX_CONFIG_BYTES = 256 * 1024;

const natsUrl = z
  .string()
  .regex(/^(nats|tls|ws|wss):\/\/[^\s]+$/, "must be a nats://, tls://, ws:// or wss:// URL");

const duration = (minMs: number, maxMs: number) =>
  z.string().transform((text, ctx) => {
    const parsed = parseDuration(text, maxMs);
    if ("problem" in parsed) {
      ctx.addIssue({ code: "custom", message: parsed.problem });
      return z.NEVER;
    }
    if (parsed.value < minMs) {
      ctx.addIssue({ code: "custom", message: `must be at least ${minMs} ms` });
      return z.NEVER;
    }
    return parsed.value;
  });

const listenAddress = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'must be "host:port", e.g. "127.0.0.1:8080"')
  .refine((v) => Number(v.slice(v.lastIndexOf(":") + 1)) <= 65535, "port must be <= 65535");

const dnsLabel = z
  .string()
  .regex(/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/, "must be a DNS label (lower-case letters, digits, '-')");

const labelName = /^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const labelValue = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;

const MINUTE_MS = 60_000;

/**
 * CI credentials (src/credentials/): GitLab CI ID tokens exchanged for short-lived NATS user JWTs,
 * through POST /v1/credentials and, when `callout` is set, the NATS auth callout.
 */
const CredentialsSchema = z
  .strictObject({
    /** The ID token's `aud` must contain this (the `aud` of `id_tokens:` in .gitlab-ci.yml). */
    audience: z.string().min(1).max(512),
    /** Exact `iss`; default gitlab.url (without a trailing slash). */
    issuer: z
      .string()
      .regex(/^https?:\/\/[^\s]+$/, "must be an http:// or https:// URL")
      .max(2048)
      .optional(),
    /** JWKS URL; default: jwks_uri of <issuer>/.well-known/openid-configuration. */
    jwksUrl: z
      .string()
      .regex(/^https?:\/\/[^\s]+$/, "must be an http:// or https:// URL")
      .max(2048)
      .optional(),
    /** Longest lifetime of an issued user JWT. */
    maxTtl: duration(MINUTE_MS, 3_600_000).default(900_000),
    /** Lifetime when the request names none. */
    defaultTtl: duration(10_000, 3_600_000).default(600_000),
    /** Clock skew allowed on exp, nbf and iat. */
    leeway: duration(0, 300_000).default(60_000),
    /** Tokens issued longer ago than this are refused (GitLab's longest job timeout is far below). */
    maxTokenAge: duration(MINUTE_MS, 7 * 86_400_000).default(86_400_000),
    /** An unknown `kid` refetches the JWKS at most once per this. */
    jwksCooldown: duration(1_000, 3_600_000).default(30_000),
    /** NATS URLs handed to jobs in the answer; default nats.servers. */
    servers: z.array(natsUrl).min(1).max(64).optional(),
    rateLimit: z
      .strictObject({
        perProjectPerMinute: z.number().int().min(1).max(1_000_000).default(600),
        perClientPerMinute: z.number().int().min(1).max(1_000_000).default(1_200),
      })
      .prefault({}),
    audit: z
      .strictObject({
        /** Append JSON lines here (0600); absent: standard output. */
        file: z.string().min(1).optional(),
        /** Also log nats.connect / nats.disconnect of issued users from $SYS.ACCOUNT.*.(DIS)CONNECT. */
        connections: z.boolean().default(true),
      })
      .prefault({}),
    /** NATS auth callout (nats-server >= 2.11.2): written by `natsbind init --callout`. */
    callout: z
      .strictObject({
        /** Creds of natsbind's callout user (an auth_users entry of the callout account). */
        credsFile: z.string().min(1),
        /** Seed file of the callout account key (or one of its signing keys): signs the responses. */
        signingKeyFile: z.string().min(1),
        /**
         * Connections answering the callout, each starting at another of nats.servers: a server
         * that stops never leaves the callout without a subscriber.
         */
        connections: z.number().int().min(1).max(16).default(2),
      })
      .optional(),
  })
  .refine((c) => c.defaultTtl <= c.maxTtl, {
    message: "defaultTtl must not be longer than maxTtl",
    path: ["defaultTtl"],
  });

const longDuration = (minMs: number, maxMs: number, allowZero = false) =>
  z.string().transform((text, ctx) => {
    const parsed = parseDuration(text, maxMs, { days: true });
    if ("problem" in parsed) {
      ctx.addIssue({ code: "custom", message: parsed.problem });
      return z.NEVER;
    }
    if (parsed.value < minMs && !(allowZero && parsed.value === 0)) {
      ctx.addIssue({
        code: "custom",
        message: `must be at least ${minMs} ms${allowZero ? ' (or "0")' : ""}`,
      });
      return z.NEVER;
    }
    return parsed.value;
  });

/** Signing-key rotation defaults (a NatsBinding's spec.rotation overrides them) and its pace. */
const RotationConfigSchema = z
  .strictObject({
    /** Rotate a role signing key once it is this old; "0": only when asked (natsbind rotate). */
    every: longDuration(3_600_000, 3650 * 86_400_000, true).default(90 * 86_400_000),
    /** A replaced key still used by live connections stays listed at most this long. */
    gracePeriod: longDuration(3_600_000, 3650 * 86_400_000).default(86_400_000),
    /** Scheduled rotations started per minute, across all bindings (manual ones are not limited). */
    maxStartsPerMinute: z.number().int().min(1).max(100_000).default(60),
  })
  .prefault({});

export const ConfigSchema = z.strictObject({
  mode: z.enum(["local", "kubernetes"]).default("local"),
  nats: z
    .strictObject({
      servers: z.array(natsUrl).min(1).max(64),
      /** Creds of a system-account user, used to talk to the account resolver (long-lived). */
      systemCreds: z.string().min(1).optional(),
      /**
       * Instead of systemCreds: seed file of a signing key of the system account. natsbind issues
       * itself least-privilege system users that live systemUserLifetime (src/nats/system-user.ts).
       */
      systemSigningKey: z.string().min(1).optional(),
      /** The system account's public key; default: the operator JWT's system_account. */
      systemAccount: z
        .string()
        .refine((k) => isPublicKey(k, "account"), "must be an account public key (A...)")
        .optional(),
      /** Lifetime of each issued system user; renewed after a third of it. */
      systemUserLifetime: duration(MIN_SYSTEM_USER_LIFETIME_MS, MAX_SYSTEM_USER_LIFETIME_MS).optional(),
      /** Operator signing key seed file: signs account JWTs. The identity key is never needed. */
      operatorSigningKey: z.string().min(1),
      /** The operator JWT: its signing keys are the issuers push() accepts. Default: only ours. */
      operatorJwt: z.string().min(1).optional(),
      timeoutMs: z.number().int().min(100).max(120_000).default(5_000),
      /** Number of resolver servers; omit to discover them with $SYS.REQ.SERVER.PING. */
      expectedServers: z.number().int().min(1).max(1_000).optional(),
    })
    .superRefine((n, ctx) => {
      const problem = (path: string, message: string): void => {
        ctx.addIssue({ code: "custom", path: [path], message });
      };
      if (n.systemCreds === undefined && n.systemSigningKey === undefined)
        problem(
          "systemSigningKey",
          "set nats.systemSigningKey (natsbind issues itself short-lived system users) or nats.systemCreds",
        );
      if (n.systemCreds !== undefined && n.systemSigningKey !== undefined)
        problem("systemCreds", "set only one of nats.systemCreds and nats.systemSigningKey");
      if (n.systemSigningKey === undefined) {
        for (const field of ["systemAccount", "systemUserLifetime"] as const)
          if (n[field] !== undefined) problem(field, "is used only with nats.systemSigningKey");
        return;
      }
      if (n.operatorJwt === undefined && n.systemAccount === undefined)
        problem("systemAccount", "is required with nats.systemSigningKey when nats.operatorJwt is not set");
      const lifetime = n.systemUserLifetime ?? DEFAULT_SYSTEM_USER_LIFETIME_MS;
      if (lifetime < 3 * n.timeoutMs)
        problem(
          "systemUserLifetime",
          `must be at least 3 x nats.timeoutMs (${3 * n.timeoutMs} ms): a renewed connection closes ` +
            "only after its requests in flight, within two thirds of the lifetime",
        );
    }),
  gitlab: z
    .strictObject({
      url: z.string().regex(/^https?:\/\/[^\s]+$/, "must be an http:// or https:// URL"),
      /** File holding an access token with read_api; read at start, never logged. */
      tokenFile: z.string().min(1),
      /** File holding the webhook secret GitLab sends in X-Gitlab-Token. */
      webhookSecretFile: z.string().min(1).optional(),
      /** Full resync of every scope: the safety net for missed webhooks. */
      resyncInterval: duration(30_000, 86_400_000).default(600_000),
      requestTimeout: duration(100, 300_000).default(30_000),
    })
    .optional(),
  /** Kubernetes mode: where NatsBindings are watched and how replicas elect a leader. */
  kubernetes: z
    .strictObject({
      /** Kubeconfig file; absent: the pod's service account (or $KUBECONFIG, as client-node does). */
      kubeconfig: z.string().min(1).optional(),
      /** Watch NatsBindings (and their Secrets) in this namespace only; absent: every namespace. */
      namespace: dnsLabel.optional(),
      leaderElection: z
        .strictObject({
          enabled: z.boolean().default(true),
          /** Namespace and name of the coordination.k8s.io Lease. */
          namespace: dnsLabel.default("natsbind"),
          name: dnsLabel.default("natsbind"),
          leaseDuration: duration(1_000, 600_000).default(15_000),
          renewDeadline: duration(500, 600_000).default(10_000),
          retryPeriod: duration(100, 600_000).default(2_000),
        })
        .refine((l) => l.leaseDuration > l.renewDeadline, {
          message: "leaseDuration must be longer than renewDeadline",
          path: ["leaseDuration"],
        })
        .refine((l) => l.renewDeadline > l.retryPeriod * 1.2, {
          message: "renewDeadline must be longer than 1.2 x retryPeriod",
          path: ["renewDeadline"],
        })
        .prefault({}),
      /**
       * Webhook relay between replicas: a follower sends signals only to the Lease holder's pod,
       * and only if that pod is one of natsbind's own (these labels, in this namespace).
       */
      relay: z
        .strictObject({
          /** Namespace of natsbind's pods; default: leaderElection.namespace. */
          namespace: dnsLabel.optional(),
          /** Labels every natsbind pod carries (the Deployment's selector). */
          podLabels: z
            .record(
              z.string().regex(labelName, "must be a label name"),
              z.string().regex(labelValue, "must be a label value"),
            )
            .refine((l) => Object.keys(l).length > 0, "must name at least one label")
            .default({ "app.kubernetes.io/name": "natsbind", "app.kubernetes.io/component": "controller" }),
          /** Name of the pods' container port the HTTP listener is on. */
          portName: z
            .string()
            .regex(/^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$/, "must be a port name (IANA_SVC_NAME)")
            .default("http"),
          /** This replica's pod name; default: the host name (a pod's host name is its name). */
          podName: z
            .string()
            .regex(/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/, "must be a pod name (DNS subdomain)")
            .optional(),
        })
        .prefault({}),
    })
    .prefault({}),
  rotation: RotationConfigSchema,
  /** Revocations (natsbind credentials revoke) stay in the account JWT this long after their time. */
  revocations: z
    .strictObject({
      /**
       * Default: credentials.maxTtl + leeway + 5 s (natsbind's own users have all expired by then)
       * with a credentials section, 7 days without one (users issued elsewhere live longer).
       */
      retention: longDuration(60_000, 3650 * 86_400_000).optional(),
    })
    .prefault({}),
  bindings: z.strictObject({ directory: z.string().min(1).default("bindings") }).prefault({}),
  keys: z.strictObject({ directory: z.string().min(1).default("keys") }).prefault({}),
  /** Local mode: status files, one per binding (what `natsbind status` reads). */
  state: z.strictObject({ directory: z.string().min(1).default("state") }).prefault({}),
  http: z
    .strictObject({
      listen: listenAddress.default("127.0.0.1:8080"),
      /** Serve HTTPS (ID tokens are bearer credentials); the files are re-read when they change. */
      tls: z.strictObject({ certFile: z.string().min(1), keyFile: z.string().min(1) }).optional(),
    })
    .prefault({}),
  credentials: CredentialsSchema.optional(),
});

export type Config = z.output<typeof ConfigSchema>;

function formatIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => `${issue.path.length ? issue.path.join(".") : "(top level)"}: ${issue.message}`)
    .join("; ");
}

/** Validates an already-parsed document; `source` names it in errors. */
export function parseConfig(document: unknown, source: string, baseDir: string): Config {
  const result = ConfigSchema.safeParse(document ?? {});
  if (!result.success) throw new ConfigError(`${source}: ${formatIssues(result.error)}`);
  const config = result.data;
  // GitLab's iss is its URL without a trailing slash. Without a gitlab section `natsbind run` says
  // what is missing; other commands (accounts, status) do not need it.
  if (config.credentials && config.credentials.issuer === undefined && config.gitlab) {
    config.credentials.issuer = config.gitlab.url.replace(/\/+$/, "");
  }
  const at = (p: string): string => resolve(baseDir, p);
  return {
    ...config,
    nats: {
      ...config.nats,
      ...(config.nats.systemCreds ? { systemCreds: at(config.nats.systemCreds) } : {}),
      ...(config.nats.systemSigningKey ? { systemSigningKey: at(config.nats.systemSigningKey) } : {}),
      operatorSigningKey: at(config.nats.operatorSigningKey),
      ...(config.nats.operatorJwt ? { operatorJwt: at(config.nats.operatorJwt) } : {}),
    },
    kubernetes: {
      ...config.kubernetes,
      ...(config.kubernetes.kubeconfig ? { kubeconfig: at(config.kubernetes.kubeconfig) } : {}),
    },
    bindings: { directory: at(config.bindings.directory) },
    keys: { directory: at(config.keys.directory) },
    state: { directory: at(config.state.directory) },
    http: {
      ...config.http,
      ...(config.http.tls
        ? { tls: { certFile: at(config.http.tls.certFile), keyFile: at(config.http.tls.keyFile) } }
        : {}),
    },
    ...(config.credentials
      ? {
          credentials: {
            ...config.credentials,
            audit: {
              ...config.credentials.audit,
              ...(config.credentials.audit.file ? { file: at(config.credentials.audit.file) } : {}),
            },
            ...(config.credentials.callout
              ? {
                  callout: {
                    ...config.credentials.callout,
                    credsFile: at(config.credentials.callout.credsFile),
                    signingKeyFile: at(config.credentials.callout.signingKeyFile),
                  },
                }
              : {}),
          },
        }
      : {}),
    ...(config.gitlab
      ? {
          gitlab: {
            ...config.gitlab,
            tokenFile: at(config.gitlab.tokenFile),
            ...(config.gitlab.webhookSecretFile
              ? { webhookSecretFile: at(config.gitlab.webhookSecretFile) }
              : {}),
          },
        }
      : {}),
  };
}

export const MAX_SECRET_FILE_BYTES = 4096;

/**
 * Reads a secret (token, webhook secret) from a file: bounded, trimmed, non-empty. Errors name
 * the file, never the content.
 */
export async function readSecretFile(path: string, what: string): Promise<string> {
  const text = await readRequiredTextFile(path, MAX_SECRET_FILE_BYTES, {
    unreadable: (reason, cause) => new ConfigError(`cannot read ${what} file ${path}: ${reason}`, { cause }),
    tooLarge: () => new ConfigError(`${what} file ${path} is larger than ${MAX_SECRET_FILE_BYTES} bytes`),
  });
  const secret = text.trim();
  if (secret.length === 0) throw new ConfigError(`${what} file ${path} is empty`);
  if (/\s/.test(secret)) throw new ConfigError(`${what} file ${path} holds more than one word`);
  return secret;
}

/** A creds file: a user JWT (a few KiB even with long permission lists) and a seed. */
export const MAX_CREDS_FILE_BYTES = 64 * 1024;
/** The operator JWT: claims plus signing keys and service URLs. */
export const MAX_OPERATOR_JWT_BYTES = 64 * 1024;
/** A kubeconfig (`kubernetes.kubeconfig`): embedded certificates make it tens of KiB at most. */
export const MAX_KUBECONFIG_BYTES = 256 * 1024;

/**
 * Reads a file natsbind.yaml names (`nats.systemCreds`, `nats.operatorJwt`) whole, bounded: it is
 * measured before it is read, so a wrong path (a log, a device, a huge file) is refused, not loaded.
 * Errors name the file and the field, never the content.
 */
export async function readConfigReferencedFile(
  path: string,
  what: string,
  maxBytes: number,
): Promise<string> {
  return readRequiredTextFile(path, maxBytes, {
    unreadable: (reason, cause) => new ConfigError(`cannot read ${what} file ${path}: ${reason}`, { cause }),
    tooLarge: () => new ConfigError(`${what} file ${path} is larger than ${maxBytes} bytes`),
  });
}

export async function loadConfig(path: string): Promise<Config> {
  const text = await readRequiredTextFile(path, MAX_CONFIG_BYTES, {
    unreadable: (reason, cause) => new ConfigError(`cannot read config ${path}: ${reason}`, { cause }),
    tooLarge: () => new ConfigError(`${path}: larger than ${MAX_CONFIG_BYTES} bytes`),
  });
  const tooDeep = yamlNestingProblem(text);
  if (tooDeep !== undefined) throw new ConfigError(`${path}: ${tooDeep}`);
  let document: unknown;
  try {
    document = parseYaml(text, { maxAliasCount: 100 });
  } catch (cause) {
    throw new ConfigError(`${path}: not valid YAML: ${(cause as Error).message}`, { cause });
  }
  return parseConfig(document, path, dirname(resolve(path)));
}
