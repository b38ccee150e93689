/**
 * KeyStore over Kubernetes Secrets (Kubernetes mode): one Secret per account slot, in the
 * binding's namespace. Binding keys are "namespace/name".
 *
 * Secret name (accountSecretName):
 *   project slot        nb-<binding>-<projectId>                    nb-acme-ci-42
 *   environment slot    nb-<binding>-<projectId>-<env>-<hash8>      nb-acme-ci-42-production-ab12cd34
 *   <env>    the environment lower-cased, each run of characters outside [a-z0-9] turned into "-",
 *            trimmed of "-", at most 40 characters (may be empty, then the "-" before <hash8> goes too)
 *   <hash8>  the first 8 hex digits of SHA-256 of the exact environment name, always: environments
 *            that differ only in case or punctuation ("Prod", "prod", "prod!") get different Secrets
 *   When the name would be longer than 253 characters (a DNS subdomain), <binding> is cut and
 *   followed by "-" and the first 8 hex digits of SHA-256 of the whole binding name.
 *
 * Labels: app.kubernetes.io/managed-by=natsbind, natsbind.io/binding=<binding name>,
 *   natsbind.io/project-id=<id>, natsbind.io/environment=<environment> (environment slots only).
 *   A value that is not a valid label value (over 63 characters, other characters) is written as
 *   its readable part (at most 54 characters) + "-" + <hash8 of the value>.
 * Annotations: natsbind.io/binding=<exact binding name>, natsbind.io/account=<account public key>,
 *   natsbind.io/roles=<JSON {role: active signing public key}>, natsbind.io/environment=<exact
 *   environment name> (environment slots only), and while there is such state:
 *   natsbind.io/rotation=<JSON {role: {activeSince?, prepared?: {key, since}, retiring?: [{key,
 *   since, notBefore}], emergencyAt?}}> (times in ms since the epoch; at most 16 retiring keys per
 *   role, 128 KiB)
 *   and natsbind.io/discard=<JSON [public key]> (keys no longer named whose seeds are still
 *   stored, until forget(); at most 256, 16 KiB). The slot is read from these, not from the
 *   ownerReference, so a Secret released from its binding (release(), for deletionPolicy Retain)
 *   still reads the same.
 * Data: account.nk (the account seed), role-<role>.nk (the seed of each role's ACTIVE signing key;
 *   role names are DNS labels), key-<PUBLICKEY>.nk (the seed of every other stored key: prepared,
 *   retiring, discarded), revocations.json (when there are revocations: compact JSON {user public
 *   key or "*": unix seconds}, at most 10,000 entries, 800 KiB: too large for annotations, whose
 *   total is limited to 256 KiB). Type Opaque. When a prepared key becomes active its seed moves to
 *   role-<role>.nk and the former active seed to key-<PUBLICKEY>.nk, in the same write as the slot
 *   state: a Secret write is atomic, so a seed is always stored before (with) the slot naming it.
 *   Secrets written before rotation state existed (no rotation, discard, key-*.nk, revocations)
 *   read unchanged. A write that would make the Secret larger than 900 KiB (the apiserver's limit
 *   is 1 MiB) is refused naming the Secret.
 * ownerReferences: the NatsBinding (controller: true, blockOwnerDeletion: false); the owner's uid
 *   comes from the `owner` callback (the binding informer), and no Secret is written without one.
 *
 * Reads (list, get) come from an Informer<V1Secret> over the account Secrets, shared by all
 * bindings. ensure() makes no request when the cache has every role; otherwise it creates the
 * Secret (409 AlreadyExists: another writer won, read it and take its keys) or replaces it with
 * the resourceVersion seen (409 Conflict: read again and retry), never replacing a stored key,
 * and returns only after the apiserver accepted the write; the result goes into the informer at
 * once. update() and forget() run in the same per-slot queue as ensure(): they start from the
 * informer's copy, replace the Secret with the resourceVersion seen and, on a conflict, read it
 * again and apply the (pure) change again, so concurrent writers never lose a change. update()
 * never deletes a seed (keys it stops naming go to discard); forget() deletes only seeds of keys
 * listed in discard and not named. Secrets are checked before use: a Secret natsbind did not
 * write, or one with missing or bad labels, annotations or seeds, is a KeyStoreError naming the
 * Secret, never showing its data. Every Secret natsbind writes passes the same check first.
 *
 * Trust: anyone who may edit Secrets in the namespace can write these, so the annotations are
 * claims. A Secret is trusted only when every key it names has a seed in it that derives that key
 * (account.nk the account key, role-<role>.nk each active key, key-<PUBLICKEY>.nk each prepared
 * and retiring key), its rotation, discard and revocations values are well-formed and bounded,
 * and its labels, name and (when it has one) NatsBinding ownerReference agree with the binding
 * its annotation names in its own namespace (checkAccountSecret; derived once per Secret
 * version). list() leaves untrusted Secrets out and reports them to the caller; get(), ensure(),
 * update() and remove() refuse them, forget() leaves them alone. The reconciler never signs,
 * pushes or deletes with an untrusted slot, and checks on the resolver that an account is
 * natsbind's own before pushing over or deleting it (src/controllers/binding/ownership.ts).
 */
import { createHash } from "node:crypto";
import { isDeepStrictEqual } from "node:util";
import { CoreV1Api } from "@kubernetes/client-node";
import type { KubeConfig, V1OwnerReference, V1Secret } from "@kubernetes/client-node";
import { z } from "zod";
import type {
  AccountKeys,
  AccountRef,
  KeyStore,
  RoleRotation,
  SlotChange,
  StoredAccount,
  UntrustedSlot,
} from "../keystore/port.ts";
import { checkSlotChange, namedKeys } from "../keystore/port.ts";
import { MAX_REVOCATIONS, REVOKE_ALL } from "../nats/claims.ts";
import { isPublicKey, NKeyPair } from "../nats/keys.ts";
import { jsonNestingProblem } from "../nesting.ts";
import type { Logger } from "../observability/logger.ts";
import { nullLogger } from "../observability/logger.ts";
import type { Clock } from "../runtime/clock.ts";
import { KeyStoreError } from "../keystore/port.ts";
import { isAlreadyExists, isConflict, isNotFound, KubernetesApiError } from "./api-errors.ts";
import { GROUP, KIND, VERSION } from "./bindings.ts";
import { Informer } from "./informer.ts";

export { KeyStoreError };

export const LABEL_MANAGED_BY = "app.kubernetes.io/managed-by";
export const MANAGED_BY = "natsbind";
export const LABEL_BINDING = "natsbind.io/binding";
export const LABEL_PROJECT_ID = "natsbind.io/project-id";
export const LABEL_ENVIRONMENT = "natsbind.io/environment";
export const ANNOTATION_BINDING = "natsbind.io/binding";
export const ANNOTATION_ACCOUNT = "natsbind.io/account";
export const ANNOTATION_ROLES = "natsbind.io/roles";
export const ANNOTATION_ENVIRONMENT = "natsbind.io/environment";
export const ANNOTATION_ROTATION = "natsbind.io/rotation";
export const ANNOTATION_DISCARD = "natsbind.io/discard";
export const ACCOUNT_SEED_KEY = "account.nk";
export const REVOCATIONS_KEY = "revocations.json";
/** Selects the account key Secrets (and no other Secret natsbind may manage). */
export const ACCOUNT_SECRET_SELECTOR = `${LABEL_MANAGED_BY}=${MANAGED_BY},${LABEL_PROJECT_ID}`;

const MAX_NAME = 253;
const MAX_ENV_PART = 40;
const MAX_LABEL_VALUE = 63;
const MAX_ROLES = 64;
const MAX_ROLES_ANNOTATION = 16 * 1024;
const MAX_ENVIRONMENT = 255;
/** An encoded seed is 58 characters; base64 of it (and a newline) is 80. */
const MAX_SEED_BASE64 = 128;
// Bounds of the rotation state (the directory store's too). 64 roles with a prepared and 16
// retiring keys each are ~116 KB of JSON; annotations together may not pass 256 KiB.
const MAX_RETIRING = 16;
const MAX_DISCARD = 256;
const MAX_ROTATION_ANNOTATION = 128 * 1024;
const MAX_DISCARD_ANNOTATION = 16 * 1024;
/** 10,000 revocations of 16-digit times are 760,000 bytes of compact JSON. */
const MAX_REVOCATIONS_BYTES = 800 * 1024;
/** What natsbind writes into one Secret at most (data and annotations): the apiserver's limit is 1 MiB. */
const MAX_SECRET_BYTES = 900 * 1024;
/** ensure() attempts when other writers keep changing the Secret. */
const MAX_WRITE_ATTEMPTS = 5;

const ROLE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const PROJECT_ID = /^[1-9][0-9]{0,15}$/;

function hash8(value: string): string {
  return createHash("sha256").update(value).digest("hex").slice(0, 8);
}

/** Removes characters that may not end a DNS name or label value. */
function trimEnd(value: string): string {
  return value.replace(/[^A-Za-z0-9]+$/, "");
}

/** The binding's namespace and name; a key without a namespace is a programming error. */
export function parseBindingKey(binding: string): { namespace: string; name: string } {
  const slash = binding.indexOf("/");
  const namespace = binding.slice(0, slash);
  const name = binding.slice(slash + 1);
  if (
    slash <= 0 ||
    !DNS_SUBDOMAIN.test(name) ||
    name.length > MAX_NAME ||
    !/^[a-z0-9-]{1,63}$/.test(namespace)
  )
    throw new KeyStoreError(`key store: binding key ${JSON.stringify(binding)} is not "namespace/name"`);
  return { namespace, name };
}

/** The environment's part of a Secret name: "<env>-<hash8>" (see the file header). */
function environmentPart(environment: string): string {
  const readable = environment
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+/, "")
    .slice(0, MAX_ENV_PART)
    .replace(/-+$/, "");
  return readable ? `${readable}-${hash8(environment)}` : hash8(environment);
}

/** The name of the Secret holding a slot's keys (documented in the file header). */
export function accountSecretName(ref: AccountRef): string {
  const { name } = parseBindingKey(ref.binding);
  const suffix = `-${ref.projectId}${ref.environment !== undefined ? `-${environmentPart(ref.environment)}` : ""}`;
  const whole = `nb-${name}${suffix}`;
  if (whole.length <= MAX_NAME) return whole;
  const room = MAX_NAME - "nb-".length - suffix.length - "-".length - 8;
  return `nb-${trimEnd(name.slice(0, room))}-${hash8(name)}${suffix}`;
}

/** `value` if it is a valid label value, else its readable part + "-" + hash8 (see the file header). */
export function labelValue(value: string): string {
  if (value.length <= MAX_LABEL_VALUE && LABEL_VALUE.test(value)) return value;
  const readable = trimEnd(
    value
      .replace(/[^A-Za-z0-9_.-]+/g, "-")
      .replace(/^[^A-Za-z0-9]+/, "")
      .slice(0, MAX_LABEL_VALUE - 9),
  );
  return readable ? `${readable}-${hash8(value)}` : hash8(value);
}

/** Labels of a slot's Secret. */
export function accountSecretLabels(ref: AccountRef): Record<string, string> {
  const labels: Record<string, string> = {
    [LABEL_MANAGED_BY]: MANAGED_BY,
    [LABEL_BINDING]: labelValue(parseBindingKey(ref.binding).name),
    [LABEL_PROJECT_ID]: String(ref.projectId),
  };
  if (ref.environment !== undefined) labels[LABEL_ENVIRONMENT] = labelValue(ref.environment);
  return labels;
}

function roleSeedKey(role: string): string {
  return `role-${role}.nk`;
}

/** Where a key other than the account key and the roles' active keys keeps its seed. */
function keySeedKey(publicKey: string): string {
  return `key-${publicKey}.nk`;
}

const KEY_SEED = /^key-([A-Z2-7]{56})\.nk$/;

/** The data key holding the seed of `publicKey`, a key `slot` names. */
function seedDataKey(slot: StoredAccount, publicKey: string): string {
  if (publicKey === slot.account) return ACCOUNT_SEED_KEY;
  const role = Object.keys(slot.roles).find((r) => slot.roles[r] === publicKey);
  return role !== undefined ? roleSeedKey(role) : keySeedKey(publicKey);
}

const signingKey = z.string().refine((k) => isPublicKey(k, "account"), "not an account public key");
const epochMs = z.number().int().nonnegative().max(8_640_000_000_000_000);
const rotationSchema = z.record(
  z.string().regex(ROLE, "not a DNS label"),
  z.strictObject({
    activeSince: epochMs.optional(),
    prepared: z.strictObject({ key: signingKey, since: epochMs }).optional(),
    retiring: z
      .array(z.strictObject({ key: signingKey, since: epochMs, notBefore: epochMs }))
      .max(MAX_RETIRING)
      .optional(),
    emergencyAt: epochMs.optional(),
  }),
);
const discardSchema = z.array(signingKey).max(MAX_DISCARD);
const revocationsSchema = z
  .record(
    z.string().refine((k) => k === REVOKE_ALL || isPublicKey(k, "user"), 'not a user public key or "*"'),
    z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  )
  .refine((r) => Object.keys(r).length <= MAX_REVOCATIONS, `more than ${MAX_REVOCATIONS} entries`);

/** Field names, role names and public keys: what a path in these values may show (never a seed). */
const SHOWN_SEGMENT = /^(?:[a-z][A-Za-z]{0,15}|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?|\*)$/;

/** A path segment or field name as public text: shown only when it cannot be a seed. */
function shown(segment: PropertyKey): string {
  if (typeof segment === "number") return String(segment);
  return typeof segment === "string" && (SHOWN_SEGMENT.test(segment) || isPublicKey(segment))
    ? segment
    : "(key)";
}

/**
 * The first problem zod found, as public text. Record keys and unknown field names are the
 * Secret's own text (anyone who may edit it chooses them), so they are shown only when shown()
 * allows; zod's own messages name expectations, not input, except for unknown fields.
 */
function describeIssue(error: z.ZodError): string {
  let issue = error.issues[0];
  if (issue === undefined) return "(top level): invalid";
  // A bad record key: what is wrong with it is one level down.
  if (issue.code === "invalid_key" && issue.issues[0]) issue = { ...issue.issues[0], path: issue.path };
  const message =
    issue.code === "unrecognized_keys"
      ? `unknown field(s) ${issue.keys.map(shown).join(", ")}`
      : issue.message;
  return `${issue.path.map(shown).join(".") || "(top level)"}: ${message}`;
}

/** Every key named once: a slot listing one twice (or discarding a key it names) is not natsbind's. */
function duplicateKeyProblem(slot: StoredAccount): string | undefined {
  const seen = new Set<string>();
  for (const key of namedKeys(slot)) {
    if (seen.has(key)) return `names key ${key} twice`;
    seen.add(key);
  }
  for (const key of slot.discard ?? []) {
    if (seen.has(key)) return `annotation ${ANNOTATION_DISCARD} lists ${key}, which the slot names`;
    seen.add(key);
  }
  return undefined;
}

function copyRotation([role, state]: [string, RoleRotation]): [string, RoleRotation] {
  const copy: RoleRotation = { ...state };
  if (state.prepared) copy.prepared = { ...state.prepared };
  if (state.retiring) copy.retiring = state.retiring.map((k) => ({ ...k }));
  return [role, copy];
}

/** A copy of a slot's public view that callers may change without changing the store's. */
function copySlot(slot: StoredAccount): StoredAccount {
  const copy: StoredAccount = { ...slot, ref: { ...slot.ref }, roles: { ...slot.roles } };
  if (slot.rotation) copy.rotation = Object.fromEntries(Object.entries(slot.rotation).map(copyRotation));
  if (slot.revocations) copy.revocations = { ...slot.revocations };
  if (slot.discard) copy.discard = [...slot.discard];
  return copy;
}

/** The annotations of a Secret holding `slot`, over `base` (the Secret's other annotations). */
function slotAnnotations(
  base: Record<string, string> | undefined,
  slot: StoredAccount,
): Record<string, string> {
  const annotations: Record<string, string> = {
    ...base,
    [ANNOTATION_ACCOUNT]: slot.account,
    [ANNOTATION_ROLES]: JSON.stringify(slot.roles),
  };
  delete annotations[ANNOTATION_ROTATION];
  delete annotations[ANNOTATION_DISCARD];
  if (slot.rotation && Object.keys(slot.rotation).length > 0)
    annotations[ANNOTATION_ROTATION] = JSON.stringify(slot.rotation);
  if (slot.discard && slot.discard.length > 0) annotations[ANNOTATION_DISCARD] = JSON.stringify(slot.discard);
  return annotations;
}

/** Sets or (for no revocations) deletes revocations.json in a Secret's data. */
function setRevocations(data: Record<string, string>, revocations: Record<string, number> | undefined): void {
  if (revocations && Object.keys(revocations).length > 0)
    data[REVOCATIONS_KEY] = Buffer.from(JSON.stringify(revocations)).toString("base64");
  else delete data[REVOCATIONS_KEY];
}

function sameRef(a: AccountRef, b: AccountRef): boolean {
  return a.binding === b.binding && a.projectId === b.projectId && a.environment === b.environment;
}

function describeRef(ref: AccountRef): string {
  const env = ref.environment !== undefined ? `, environment ${JSON.stringify(ref.environment)}` : "";
  return `binding ${ref.binding}, project ${ref.projectId}${env}`;
}

function secretName(secret: V1Secret): string {
  return `Secret ${secret.metadata?.namespace ?? "?"}/${secret.metadata?.name ?? "?"}`;
}

function encodeSeed(key: NKeyPair): string {
  return Buffer.from(key.getSeed()).toString("base64");
}

/**
 * The binding key ("namespace/name") an account Secret belongs to, from its natsbind.io/binding
 * annotation (which holds the name only), unchecked: for routing watch events to a binding.
 */
export function bindingKeyOfSecret(secret: V1Secret): string | undefined {
  const name = secret.metadata?.annotations?.[ANNOTATION_BINDING];
  const namespace = secret.metadata?.namespace;
  return name && namespace ? `${namespace}/${name}` : undefined;
}

/**
 * The public view of a slot's Secret, checked: written by natsbind, labels and name consistent with
 * the annotations, public keys well-formed, role names DNS labels, rotation state only for roles
 * with an active key, no key named twice, rotation, discard and revocations.json well-formed and
 * bounded. Seeds are not read.
 */
export function parseAccountSecret(secret: V1Secret): StoredAccount {
  const what = secretName(secret);
  const fail = (problem: string): never => {
    throw new KeyStoreError(`key store: ${what}: ${problem}`);
  };
  const labels = secret.metadata?.labels ?? {};
  const annotations = secret.metadata?.annotations ?? {};
  if (labels[LABEL_MANAGED_BY] !== MANAGED_BY)
    fail(`was not written by natsbind (label ${LABEL_MANAGED_BY})`);

  const idText = labels[LABEL_PROJECT_ID];
  if (idText === undefined || !PROJECT_ID.test(idText)) fail(`label ${LABEL_PROJECT_ID} is not a project id`);
  const projectId = Number(idText);

  const bindingName = annotations[ANNOTATION_BINDING];
  if (bindingName === undefined || bindingName.length > MAX_NAME || !DNS_SUBDOMAIN.test(bindingName))
    fail(`annotation ${ANNOTATION_BINDING} is not a binding name`);
  const binding = `${secret.metadata?.namespace ?? ""}/${bindingName}`;

  const environment = annotations[ANNOTATION_ENVIRONMENT];
  if (environment !== undefined && (environment.length === 0 || environment.length > MAX_ENVIRONMENT))
    fail(`annotation ${ANNOTATION_ENVIRONMENT} must be 1 to ${MAX_ENVIRONMENT} characters`);
  const ref: AccountRef =
    environment === undefined ? { binding, projectId } : { binding, projectId, environment };

  const expected = accountSecretLabels(ref);
  for (const label of [LABEL_BINDING, LABEL_ENVIRONMENT]) {
    if (labels[label] !== expected[label])
      fail(`label ${label} does not match the slot (${describeRef(ref)})`);
  }
  if (secret.metadata?.name !== accountSecretName(ref))
    fail(`its name is not the name of its slot (${describeRef(ref)})`);
  // The binding it claims must be the one that owns it, when one does (release() drops the owner).
  for (const owner of secret.metadata?.ownerReferences ?? []) {
    if (owner.kind === KIND && owner.apiVersion?.startsWith(`${GROUP}/`) && owner.name !== bindingName)
      fail(`it is owned by binding ${JSON.stringify(owner.name?.slice(0, MAX_NAME))}, not ${bindingName}`);
  }

  const account = annotations[ANNOTATION_ACCOUNT];
  if (account === undefined || !isPublicKey(account, "account"))
    fail(`annotation ${ANNOTATION_ACCOUNT} is not an account public key`);

  const rolesText = annotations[ANNOTATION_ROLES] ?? "{}";
  if (rolesText.length > MAX_ROLES_ANNOTATION)
    fail(`annotation ${ANNOTATION_ROLES} is larger than ${MAX_ROLES_ANNOTATION} characters`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(rolesText);
  } catch {
    fail(`annotation ${ANNOTATION_ROLES} is not JSON`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
    fail(`annotation ${ANNOTATION_ROLES} is not a JSON object`);
  const entries = Object.entries(parsed as Record<string, unknown>);
  if (entries.length > MAX_ROLES) fail(`annotation ${ANNOTATION_ROLES} names more than ${MAX_ROLES} roles`);
  const roles: Record<string, string> = {};
  for (const [role, pub] of entries) {
    if (!ROLE.test(role))
      fail(`annotation ${ANNOTATION_ROLES}: role ${JSON.stringify(role.slice(0, 64))} is not a DNS label`);
    if (typeof pub !== "string" || !isPublicKey(pub, "account"))
      fail(`annotation ${ANNOTATION_ROLES}: role ${role} is not an account public key`);
    roles[role] = pub as string;
  }
  const slot: StoredAccount = { ref, account: account!, roles };

  const rotation = parseBounded(annotations[ANNOTATION_ROTATION], `annotation ${ANNOTATION_ROTATION}`, {
    maxLength: MAX_ROTATION_ANNOTATION,
    schema: rotationSchema,
    fail,
  });
  if (rotation !== undefined) {
    for (const role of Object.keys(rotation))
      if (roles[role] === undefined)
        fail(`annotation ${ANNOTATION_ROTATION}: role ${role} has no active key in ${ANNOTATION_ROLES}`);
    if (Object.keys(rotation).length > 0) slot.rotation = rotation as Record<string, RoleRotation>;
  }
  const discard = parseBounded(annotations[ANNOTATION_DISCARD], `annotation ${ANNOTATION_DISCARD}`, {
    maxLength: MAX_DISCARD_ANNOTATION,
    schema: discardSchema,
    fail,
  });
  if (discard !== undefined && discard.length > 0) slot.discard = discard;

  const encoded = secret.data?.[REVOCATIONS_KEY];
  if (encoded !== undefined) {
    // Base64 of n bytes is 4 * ceil(n / 3) characters.
    if (typeof encoded !== "string" || encoded.length > 4 * Math.ceil(MAX_REVOCATIONS_BYTES / 3))
      fail(`${REVOCATIONS_KEY} is larger than ${MAX_REVOCATIONS_BYTES} bytes`);
    const revocations = parseBounded(Buffer.from(encoded, "base64").toString("utf8"), REVOCATIONS_KEY, {
      maxLength: MAX_REVOCATIONS_BYTES,
      schema: revocationsSchema,
      fail,
    });
    if (revocations !== undefined && Object.keys(revocations).length > 0) slot.revocations = revocations;
  }
  const duplicate = duplicateKeyProblem(slot);
  if (duplicate !== undefined) fail(duplicate);
  return slot;
}

/** A bounded JSON value of a Secret (annotation or data entry) checked against `schema`. */
function parseBounded<T>(
  text: string | undefined,
  what: string,
  opts: { maxLength: number; schema: z.ZodType<T>; fail: (problem: string) => never },
): T | undefined {
  if (text === undefined) return undefined;
  const { fail } = opts;
  if (text.length > opts.maxLength) fail(`${what} is larger than ${opts.maxLength} characters`);
  const tooDeep = jsonNestingProblem(text);
  if (tooDeep !== undefined) fail(`${what} ${tooDeep}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    fail(`${what} is not JSON`);
  }
  const result = opts.schema.safeParse(parsed);
  if (!result.success) fail(`${what}: ${describeIssue(result.error)}`);
  return result.data;
}

/** Decodes one seed of a Secret and checks it is the key its annotation names. */
function loadSeed(secret: V1Secret, dataKey: string, publicKey: string): NKeyPair {
  const what = secretName(secret);
  const encoded = secret.data?.[dataKey];
  if (encoded === undefined)
    throw new KeyStoreError(
      `key store: ${what}: names ${publicKey} but has no ${dataKey}: restore it from backup (a JWT may name it)`,
    );
  if (typeof encoded !== "string" || encoded.length > MAX_SEED_BASE64)
    throw new KeyStoreError(
      `key store: ${what}: ${dataKey} is not a seed (larger than ${MAX_SEED_BASE64} bytes)`,
    );
  let key: NKeyPair;
  try {
    key = NKeyPair.fromSeed(Buffer.from(encoded, "base64"), "account", `${what}: ${dataKey}`);
  } catch (cause) {
    throw new KeyStoreError(`key store: ${cause instanceof Error ? cause.message : "bad seed"}`, { cause });
  }
  if (key.publicKey !== publicKey)
    throw new KeyStoreError(
      `key store: ${what}: ${dataKey} holds the seed of ${key.publicKey}, not ${publicKey}`,
    );
  return key;
}

/**
 * The slot a Secret holds, trusted: parseAccountSecret's checks, and every key it names has a seed
 * that derives it (account.nk the account key, role-<role>.nk each active key, key-<PUBLICKEY>.nk
 * each prepared and retiring key). Annotations are writable by anyone who may edit Secrets in the
 * namespace; the seeds prove which keys the slot really has, so a Secret naming an account it has
 * no seed for is never used. Seeds of discarded keys are not checked: they never sign.
 */
export function checkAccountSecret(secret: V1Secret): StoredAccount {
  const slot = parseAccountSecret(secret);
  for (const key of namedKeys(slot)) loadSeed(secret, seedDataKey(slot, key), key);
  return slot;
}

/** The slot an untrusted Secret claims to be and sits in, when its metadata says that much. */
function claimedRef(secret: V1Secret): AccountRef | undefined {
  const idText = secret.metadata?.labels?.[LABEL_PROJECT_ID];
  const name = secret.metadata?.annotations?.[ANNOTATION_BINDING];
  const environment = secret.metadata?.annotations?.[ANNOTATION_ENVIRONMENT];
  if (idText === undefined || !PROJECT_ID.test(idText)) return undefined;
  if (name === undefined || name.length > MAX_NAME || !DNS_SUBDOMAIN.test(name)) return undefined;
  if (environment !== undefined && (environment.length === 0 || environment.length > MAX_ENVIRONMENT))
    return undefined;
  const binding = `${secret.metadata?.namespace ?? ""}/${name}`;
  const projectId = Number(idText);
  const ref = environment === undefined ? { binding, projectId } : { binding, projectId, environment };
  // Only the slot whose place (Secret name) it takes: a mislabelled Secret blocks no other slot.
  try {
    return secret.metadata?.name === accountSecretName(ref) ? ref : undefined;
  } catch {
    return undefined; // not even a valid binding key
  }
}

/** A slot's keys from its Secret: the public view plus every seed it names, checked. */
function loadAccountKeys(secret: V1Secret, slot: StoredAccount): AccountKeys {
  const accountKey = loadSeed(secret, ACCOUNT_SEED_KEY, slot.account);
  const roleKeys = new Map<string, NKeyPair>();
  for (const [role, pub] of Object.entries(slot.roles))
    roleKeys.set(role, loadSeed(secret, roleSeedKey(role), pub));
  return { ...copySlot(slot), accountKey, roleKeys };
}

/**
 * The Secret `live` holding the slot `next` in place of `current` (a trusted slot read from `live`):
 * the active keys' seeds under role-<role>.nk, every other named or discarded key's under
 * key-<PUBLICKEY>.nk, taken from `live` or from `made` (the keys generate() made, saved only when
 * `next` names them). No seed leaves the Secret: a key `next` stops naming is in its discard list.
 * Returns the body and the keys whose seeds were not derived yet (discarded keys named again).
 */
function secretWithSlot(
  live: V1Secret,
  current: StoredAccount,
  next: StoredAccount,
  made: ReadonlyMap<string, NKeyPair>,
): { body: V1Secret; underived: string[] } {
  const data: Record<string, string> = { ...live.data };
  // public key -> stored seed (base64), and which of them the trust check derived.
  const seeds = new Map<string, string>();
  const derived = new Set(namedKeys(current));
  for (const [name, value] of Object.entries(data)) {
    const match = KEY_SEED.exec(name);
    if (match) seeds.set(match[1]!, value);
  }
  for (const [role, pub] of Object.entries(current.roles)) {
    const value = data[roleSeedKey(role)];
    if (value !== undefined) seeds.set(pub, value);
    delete data[roleSeedKey(role)];
  }
  const named = namedKeys(next);
  for (const pub of named) {
    const key = made.get(pub);
    if (key) {
      seeds.set(pub, encodeSeed(key));
      derived.add(pub);
    }
  }
  const active = new Set(Object.values(next.roles));
  for (const pub of [...named, ...(next.discard ?? [])]) {
    if (pub === next.account) continue;
    const seed = seeds.get(pub);
    if (seed === undefined) {
      if (next.discard?.includes(pub)) continue; // nothing stored to keep
      throw new TypeError(`a slot change names key ${pub}, which is neither stored nor made by generate()`);
    }
    if (!active.has(pub)) data[keySeedKey(pub)] = seed;
    else delete data[keySeedKey(pub)];
  }
  for (const [role, pub] of Object.entries(next.roles)) data[roleSeedKey(role)] = seeds.get(pub)!;
  setRevocations(data, next.revocations);
  const metadata = live.metadata!;
  return {
    body: {
      ...live,
      metadata: { ...metadata, annotations: slotAnnotations(metadata.annotations, next) },
      data,
    },
    underived: named.filter((pub) => !derived.has(pub)),
  };
}

/** Bytes a Secret takes against the apiserver's limit: decoded data and annotations. */
function secretBytes(secret: V1Secret): number {
  let bytes = 0;
  for (const value of Object.values(secret.data ?? {})) bytes += Buffer.byteLength(value, "base64");
  for (const [name, value] of Object.entries(secret.metadata?.annotations ?? {}))
    bytes += Buffer.byteLength(name) + Buffer.byteLength(value);
  return bytes;
}

/**
 * The slot `body` holds, checked as a reader would check it before it is written: the store never
 * writes a Secret it would not trust, nor one the apiserver would refuse for its size. `derive`:
 * the keys whose seeds were not derived yet (the others are fresh or came from a trusted Secret).
 */
function checkBeforeWrite(body: V1Secret, what: string, derive: readonly string[] = []): StoredAccount {
  const bytes = secretBytes(body);
  if (bytes > MAX_SECRET_BYTES)
    throw new KeyStoreError(
      `key store: ${what} would hold ${bytes} bytes, more than the ${MAX_SECRET_BYTES} natsbind writes into one Secret (the apiserver refuses more than 1 MiB): not written`,
    );
  try {
    const slot = parseAccountSecret(body);
    for (const key of namedKeys(slot)) {
      const dataKey = seedDataKey(slot, key);
      if (body.data?.[dataKey] === undefined || derive.includes(key)) loadSeed(body, dataKey, key);
    }
    return slot;
  } catch (err) {
    if (!(err instanceof KeyStoreError)) throw err;
    throw new KeyStoreError(
      `key store: ${what} not written, it would not be trusted: ${err.message.replace(`key store: ${what}: `, "")}`,
    );
  }
}

/** Whether the apiserver stored what natsbind sent (everything the trust check reads). */
function sameContent(sent: V1Secret, stored: V1Secret): boolean {
  const view = (s: V1Secret) => ({
    namespace: s.metadata?.namespace,
    name: s.metadata?.name,
    labels: s.metadata?.labels ?? {},
    annotations: s.metadata?.annotations ?? {},
    owners: (s.metadata?.ownerReferences ?? []).map((o) => [o.apiVersion, o.kind, o.name]),
    data: s.data ?? {},
  });
  return isDeepStrictEqual(view(sent), view(stored));
}

/** The binding a Secret belongs to: its name and uid (from the binding informer). */
export type OwnerLookup = (binding: string) => { name: string; uid: string } | undefined;

/** What the store needs of the Secret informer. */
export interface SecretCache {
  hasSynced(): boolean;
  get(namespace: string, name: string): V1Secret | undefined;
  list(namespace?: string): V1Secret[];
  upsert(obj: V1Secret): void;
  forget(namespace: string, name: string): void;
}

export interface SecretKeyStoreOptions {
  kubeConfig: KubeConfig;
  /** The informer over account Secrets (SecretKeyStore.informer()), started by the caller. */
  secrets: SecretCache;
  owner: OwnerLookup;
  log?: Logger;
  /** The API client; default one from kubeConfig. */
  core?: CoreV1Api;
}

export class SecretKeyStore implements KeyStore {
  readonly #core: CoreV1Api;
  readonly #secrets: SecretCache;
  readonly #owner: OwnerLookup;
  readonly #log: Logger;
  // Writes of one slot (ensure, update, forget, remove) run one at a time in this process: no
  // needless conflicts, and a change is applied to the slot the previous one wrote.
  readonly #locks = new Map<string, Promise<unknown>>();
  // Checked public views per Secret object (objects are replaced, never changed, on update): the
  // seeds are derived once per version of a Secret, not on every list().
  readonly #parsed = new WeakMap<V1Secret, StoredAccount | KeyStoreError>();

  constructor(opts: SecretKeyStoreOptions) {
    this.#core = opts.core ?? opts.kubeConfig.makeApiClient(CoreV1Api);
    this.#secrets = opts.secrets;
    this.#owner = opts.owner;
    this.#log = (opts.log ?? nullLogger).child({ component: "secret-keystore" });
  }

  /**
   * The informer the store reads: account Secrets of one namespace, or of all namespaces (the
   * default). One serves every binding; the caller starts and stops it.
   */
  static informer(opts: {
    kubeConfig: KubeConfig;
    namespace?: string;
    clock?: Clock;
    log?: Logger;
  }): Informer<V1Secret> {
    return new Informer<V1Secret>({
      kubeConfig: opts.kubeConfig,
      path: opts.namespace ? `/api/v1/namespaces/${opts.namespace}/secrets` : "/api/v1/secrets",
      labelSelector: ACCOUNT_SECRET_SELECTOR,
      name: opts.namespace ? `account-secrets/${opts.namespace}` : "account-secrets",
      clock: opts.clock,
      log: opts.log,
    });
  }

  #requireSynced(): void {
    if (!this.#secrets.hasSynced())
      throw new KeyStoreError("key store: the Secret informer has not synced yet");
  }

  #parse(secret: V1Secret): StoredAccount {
    let parsed = this.#parsed.get(secret);
    if (parsed === undefined) {
      try {
        parsed = checkAccountSecret(secret);
      } catch (err) {
        if (!(err instanceof KeyStoreError)) throw err;
        parsed = err;
      }
      this.#parsed.set(secret, parsed);
    }
    if (parsed instanceof KeyStoreError) throw parsed;
    return parsed;
  }

  /** A Secret this store just wrote: its checked slot is known, when the apiserver stored what was sent. */
  #wrote(sent: V1Secret, stored: V1Secret, slot: StoredAccount): void {
    if (sameContent(sent, stored)) this.#parsed.set(stored, slot);
    this.#secrets.upsert(stored);
  }

  /** The slot's Secret as the informer has it; undefined: not there or not synced (read it). */
  #cached(namespace: string, name: string): V1Secret | undefined {
    return this.#secrets.hasSynced() ? this.#secrets.get(namespace, name) : undefined;
  }

  /** Replaces a Secret with the resourceVersion it carries; "conflict" or "gone" when it changed. */
  async #replace(body: V1Secret, what: string): Promise<V1Secret | "conflict" | "gone"> {
    try {
      return await this.#core.replaceNamespacedSecret({
        namespace: body.metadata!.namespace!,
        name: body.metadata!.name!,
        body,
      });
    } catch (err) {
      if (isConflict(err)) return "conflict";
      if (isNotFound(err)) return "gone";
      throw apiFailure("replace", what, err);
    }
  }

  /** The slot's Secret parsed and checked against `ref`. */
  #slotOf(secret: V1Secret, ref: AccountRef): StoredAccount {
    const slot = this.#parse(secret);
    if (!sameRef(slot.ref, ref))
      throw new KeyStoreError(
        `key store: ${secretName(secret)} belongs to another slot (${describeRef(slot.ref)}), not ${describeRef(ref)}`,
      );
    return slot;
  }

  async list(binding: string, untrusted?: UntrustedSlot[]): Promise<StoredAccount[]> {
    const { namespace, name } = parseBindingKey(binding);
    this.#requireSynced();
    const label = labelValue(name);
    const slots: StoredAccount[] = [];
    for (const secret of this.#secrets.list(namespace)) {
      if (secret.metadata?.labels?.[LABEL_BINDING] !== label) continue;
      let slot: StoredAccount;
      try {
        slot = this.#parse(secret);
      } catch (err) {
        if (!(err instanceof KeyStoreError)) throw err;
        // Never used; reported to the binding it claims (its labels name it), by name, no data.
        const ref = claimedRef(secret);
        if (!ref || ref.binding === binding)
          untrusted?.push({ source: secretName(secret), ...(ref ? { ref } : {}), message: err.message });
        continue;
      }
      // A hashed label is shared by long names with the same readable part and hash: check the owner.
      if (slot.ref.binding === binding) slots.push(slot);
    }
    return slots
      .sort(
        (a, b) =>
          a.ref.projectId - b.ref.projectId ||
          (a.ref.environment ?? "").localeCompare(b.ref.environment ?? ""),
      )
      .map(copySlot);
  }

  async get(ref: AccountRef): Promise<AccountKeys | undefined> {
    const { namespace } = parseBindingKey(ref.binding);
    this.#requireSynced();
    const secret = this.#secrets.get(namespace, accountSecretName(ref));
    if (!secret) return undefined;
    return loadAccountKeys(secret, this.#slotOf(secret, ref));
  }

  ensure(ref: AccountRef, roles: readonly string[], at?: number): Promise<AccountKeys> {
    return this.#serialised(ref, () => this.#ensure(ref, roles, at));
  }

  update(ref: AccountRef, change: SlotChange): Promise<StoredAccount> {
    return this.#serialised(ref, () => this.#update(ref, change));
  }

  forget(ref: AccountRef, keys: readonly string[]): Promise<void> {
    return this.#serialised(ref, () => this.#forget(ref, keys));
  }

  remove(ref: AccountRef): Promise<void> {
    return this.#serialised(ref, () => this.#remove(ref));
  }

  #serialised<R>(ref: AccountRef, fn: () => Promise<R>): Promise<R> {
    let key: string;
    try {
      key = `${parseBindingKey(ref.binding).namespace}/${accountSecretName(ref)}`;
    } catch (err) {
      return Promise.reject(err);
    }
    const previous = this.#locks.get(key) ?? Promise.resolve();
    const run = previous.then(fn, fn);
    const settled = run.catch(() => undefined);
    this.#locks.set(key, settled);
    void settled.then(() => {
      if (this.#locks.get(key) === settled) this.#locks.delete(key);
    });
    return run;
  }

  async #ensure(ref: AccountRef, roles: readonly string[], at: number | undefined): Promise<AccountKeys> {
    const { namespace } = parseBindingKey(ref.binding);
    for (const role of roles) {
      if (!ROLE.test(role))
        throw new KeyStoreError(`key store: role ${JSON.stringify(role.slice(0, 64))} is not a DNS label`);
    }
    if (new Set(roles).size > MAX_ROLES) throw new KeyStoreError(`key store: more than ${MAX_ROLES} roles`);
    const name = accountSecretName(ref);
    const what = `Secret ${namespace}/${name}`;

    // Everything already there: no request at all.
    const cached = this.#secrets.hasSynced() ? this.#secrets.get(namespace, name) : undefined;
    if (cached) {
      const slot = this.#slotOf(cached, ref);
      if (roles.every((role) => slot.roles[role] !== undefined)) return loadAccountKeys(cached, slot);
    }

    // The first attempt trusts a synced cache: a create fails when the Secret exists and an update
    // carries the resourceVersion seen, so a stale cache costs one more attempt, never a key.
    let seen: V1Secret | undefined | "unknown" = this.#secrets.hasSynced() ? cached : "unknown";
    for (let attempt = 1; attempt <= MAX_WRITE_ATTEMPTS; attempt++) {
      const live = seen === "unknown" ? await this.#read(namespace, name, what) : seen;
      seen = "unknown";
      if (!live) {
        const created = await this.#create(ref, roles, at, namespace, name, what);
        if (created) return created;
        continue; // AlreadyExists: another writer got there first; take its keys.
      }
      const slot = this.#slotOf(live, ref);
      const current = loadAccountKeys(live, slot);
      const missing = [...new Set(roles)].filter((role) => slot.roles[role] === undefined);
      if (missing.length === 0) {
        this.#secrets.upsert(live);
        return current;
      }
      const updated = await this.#addRoles(live, current, missing, at, ref, what);
      if (updated) return updated;
      this.#log.debug({ secret: what, attempt }, "Secret changed under us: reading it again");
    }
    throw new KeyStoreError(
      `key store: ${what} kept changing during ${MAX_WRITE_ATTEMPTS} attempts to store keys`,
    );
  }

  async #read(namespace: string, name: string, what: string): Promise<V1Secret | undefined> {
    try {
      return await this.#core.readNamespacedSecret({ namespace, name });
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw apiFailure("get", what, err);
    }
  }

  #ownerReference(ref: AccountRef, what: string): V1OwnerReference {
    const owner = this.#owner(ref.binding);
    if (!owner)
      throw new KeyStoreError(`key store: binding ${ref.binding} is not known (yet): cannot write ${what}`);
    return {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: KIND,
      name: owner.name,
      uid: owner.uid,
      controller: true,
      blockOwnerDeletion: false,
    };
  }

  /** Creates the slot's Secret with fresh keys; undefined when it exists already. */
  async #create(
    ref: AccountRef,
    roles: readonly string[],
    at: number | undefined,
    namespace: string,
    name: string,
    what: string,
  ): Promise<AccountKeys | undefined> {
    const ownerReference = this.#ownerReference(ref, what);
    const accountKey = NKeyPair.generate("account");
    const roleKeys = new Map<string, NKeyPair>();
    for (const role of roles) if (!roleKeys.has(role)) roleKeys.set(role, NKeyPair.generate("account"));
    const slot: StoredAccount = {
      ref: { ...ref },
      account: accountKey.publicKey,
      roles: Object.fromEntries([...roleKeys].map(([role, key]) => [role, key.publicKey])),
    };
    if (at !== undefined && roleKeys.size > 0)
      slot.rotation = Object.fromEntries([...roleKeys.keys()].map((role) => [role, { activeSince: at }]));
    const base: Record<string, string> = { [ANNOTATION_BINDING]: parseBindingKey(ref.binding).name };
    if (ref.environment !== undefined) base[ANNOTATION_ENVIRONMENT] = ref.environment;
    const data: Record<string, string> = { [ACCOUNT_SEED_KEY]: encodeSeed(accountKey) };
    for (const [role, key] of roleKeys) data[roleSeedKey(role)] = encodeSeed(key);
    const body: V1Secret = {
      apiVersion: "v1",
      kind: "Secret",
      type: "Opaque",
      metadata: {
        name,
        namespace,
        labels: accountSecretLabels(ref),
        annotations: slotAnnotations(base, slot),
        ownerReferences: [ownerReference],
      },
      data,
    };
    const checked = checkBeforeWrite(body, what);
    let created: V1Secret;
    try {
      created = await this.#core.createNamespacedSecret({ namespace, body });
    } catch (err) {
      if (isAlreadyExists(err)) return undefined;
      throw apiFailure("create", what, err);
    }
    this.#wrote(body, created, checked);
    // Debug, as the other routine per-slot writes: they come by the thousand (a cold start, a role
    // added, a rotation phase), and one line per Secret was 12% of natsbind's CPU creating 10,000
    // (bench/k8s.ts); each reconcile's Event and status count them.
    this.#log.debug({ secret: what, account: slot.account, roles: slot.roles }, "stored new account keys");
    return { ...copySlot(checked), accountKey, roleKeys, created: true };
  }

  /** Adds keys for `missing` roles with the resourceVersion seen; undefined on a conflict. */
  async #addRoles(
    live: V1Secret,
    current: AccountKeys,
    missing: readonly string[],
    at: number | undefined,
    ref: AccountRef,
    what: string,
  ): Promise<AccountKeys | undefined> {
    const ownerReference = this.#ownerReference(ref, what);
    const roleKeys = new Map(current.roleKeys);
    const data: Record<string, string> = { ...live.data };
    const rotation = { ...current.rotation };
    for (const role of missing) {
      const key = NKeyPair.generate("account");
      roleKeys.set(role, key);
      data[roleSeedKey(role)] = encodeSeed(key);
      if (at !== undefined) rotation[role] = { activeSince: at };
    }
    const { accountKey: _a, roleKeys: _r, created: _c, ...slot } = current;
    slot.roles = Object.fromEntries([...roleKeys].map(([role, key]) => [role, key.publicKey]));
    if (Object.keys(rotation).length > 0) slot.rotation = rotation;
    const metadata = live.metadata!;
    // The binding's current uid: a binding deleted and made again adopts its Secrets.
    const ownerReferences = [
      ...(metadata.ownerReferences ?? []).filter((o) => !(o.kind === KIND && o.controller === true)),
      ownerReference,
    ];
    const body: V1Secret = {
      ...live,
      metadata: { ...metadata, annotations: slotAnnotations(metadata.annotations, slot), ownerReferences },
      data,
    };
    const checked = checkBeforeWrite(body, what);
    const replaced = await this.#replace(body, what);
    if (replaced === "conflict") return undefined;
    if (replaced === "gone") return undefined; // deleted meanwhile: the next attempt creates it
    this.#wrote(body, replaced, checked);
    this.#log.debug({ secret: what, account: current.account, added: missing }, "stored new role keys");
    return { ...copySlot(checked), accountKey: current.accountKey, roleKeys };
  }

  async #update(ref: AccountRef, change: SlotChange): Promise<StoredAccount> {
    const { namespace } = parseBindingKey(ref.binding);
    const name = accountSecretName(ref);
    const what = `Secret ${namespace}/${name}`;
    // The informer's copy first: a stale one costs a conflict and a read, never a lost change.
    let live = this.#cached(namespace, name);
    for (let attempt = 1; attempt <= MAX_WRITE_ATTEMPTS; attempt++) {
      live ??= await this.#read(namespace, name, what);
      if (!live) throw new KeyStoreError(`key store: no slot for ${describeRef(ref)} to change (${what})`);
      const current = this.#slotOf(live, ref);
      const made = new Map<string, NKeyPair>();
      const generate = (): string => {
        const key = NKeyPair.generate("account");
        made.set(key.publicKey, key);
        return key.publicKey;
      };
      const proposed = change(copySlot(current), generate);
      if (!proposed) return copySlot(current);
      const next = checkSlotChange(current, proposed);
      if (isDeepStrictEqual(next, current)) return copySlot(current); // nothing to write
      const { body, underived } = secretWithSlot(live, current, next, made);
      const checked = checkBeforeWrite(body, what, underived);
      const replaced = await this.#replace(body, what);
      if (replaced === "gone")
        throw new KeyStoreError(`key store: no slot for ${describeRef(ref)} to change (${what} was deleted)`);
      if (replaced !== "conflict") {
        this.#wrote(body, replaced, checked);
        this.#log.debug(
          {
            secret: what,
            account: checked.account,
            roles: checked.roles,
            discard: checked.discard?.length ?? 0,
          },
          "stored a change of the key slot",
        );
        return copySlot(checked);
      }
      this.#log.debug({ secret: what, attempt }, "Secret changed under us: reading it again");
      live = undefined;
    }
    throw new KeyStoreError(
      `key store: ${what} kept changing during ${MAX_WRITE_ATTEMPTS} attempts to store a change`,
    );
  }

  async #forget(ref: AccountRef, keys: readonly string[]): Promise<void> {
    const { namespace } = parseBindingKey(ref.binding);
    const name = accountSecretName(ref);
    const what = `Secret ${namespace}/${name}`;
    const wanted = new Set(keys);
    let live = this.#cached(namespace, name);
    for (let attempt = 1; attempt <= MAX_WRITE_ATTEMPTS; attempt++) {
      live ??= await this.#read(namespace, name, what);
      if (!live) return;
      let current: StoredAccount;
      try {
        current = this.#slotOf(live, ref);
      } catch (err) {
        if (err instanceof KeyStoreError) return; // untrusted: list() reports it; nothing is deleted
        throw err;
      }
      const named = new Set(namedKeys(current));
      const discard = current.discard ?? [];
      const gone = discard.filter((k) => wanted.has(k) && !named.has(k));
      if (gone.length === 0) return;
      const data: Record<string, string> = { ...live.data };
      for (const key of gone) delete data[keySeedKey(key)];
      const left = { ...current, discard: discard.filter((k) => !gone.includes(k)) };
      const metadata = live.metadata!;
      const body: V1Secret = {
        ...live,
        metadata: { ...metadata, annotations: slotAnnotations(metadata.annotations, left) },
        data,
      };
      const checked = checkBeforeWrite(body, what);
      const replaced = await this.#replace(body, what);
      if (replaced === "gone") return;
      if (replaced !== "conflict") {
        this.#wrote(body, replaced, checked);
        this.#log.debug({ secret: what, account: current.account, keys: gone }, "deleted discarded keys");
        return;
      }
      live = undefined;
    }
    throw new KeyStoreError(
      `key store: ${what} kept changing during ${MAX_WRITE_ATTEMPTS} attempts to delete discarded keys`,
    );
  }

  async #remove(ref: AccountRef): Promise<void> {
    const { namespace } = parseBindingKey(ref.binding);
    const name = accountSecretName(ref);
    const what = `Secret ${namespace}/${name}`;
    for (let attempt = 1; attempt <= MAX_WRITE_ATTEMPTS; attempt++) {
      const live = await this.#read(namespace, name, what);
      if (!live) {
        this.#secrets.forget(namespace, name);
        return;
      }
      // Only a Secret of this very slot is deleted, and only the version just checked.
      this.#slotOf(live, ref);
      try {
        await this.#core.deleteNamespacedSecret({
          namespace,
          name,
          body: {
            preconditions: { uid: live.metadata?.uid, resourceVersion: live.metadata?.resourceVersion },
          },
        });
      } catch (err) {
        if (isConflict(err)) continue;
        if (!isNotFound(err)) throw apiFailure("delete", what, err);
      }
      this.#secrets.forget(namespace, name);
      this.#log.info({ secret: what }, "removed account keys");
      return;
    }
    throw new KeyStoreError(
      `key store: ${what} kept changing during ${MAX_WRITE_ATTEMPTS} attempts to delete it`,
    );
  }

  /**
   * Drops the binding's ownerReference from all its Secrets, so deleting the binding (Retain)
   * leaves the keys for the accounts that stay on the resolver: garbage collection would delete
   * owned Secrets. Returns the number of Secrets released.
   */
  async release(binding: string): Promise<number> {
    let released = 0;
    for (const slot of await this.list(binding)) {
      await this.#serialised(slot.ref, async () => {
        const { namespace } = parseBindingKey(binding);
        const name = accountSecretName(slot.ref);
        const what = `Secret ${namespace}/${name}`;
        for (let attempt = 1; attempt <= MAX_WRITE_ATTEMPTS; attempt++) {
          const live = await this.#read(namespace, name, what);
          if (!live) return;
          this.#slotOf(live, slot.ref);
          const metadata = live.metadata!;
          const kept = (metadata.ownerReferences ?? []).filter((o) => o.kind !== KIND);
          if (kept.length === (metadata.ownerReferences ?? []).length) return;
          try {
            const replaced = await this.#core.replaceNamespacedSecret({
              namespace,
              name,
              body: { ...live, metadata: { ...metadata, ownerReferences: kept } },
            });
            this.#secrets.upsert(replaced);
            released++;
            return;
          } catch (err) {
            if (isConflict(err)) continue;
            if (isNotFound(err)) return;
            throw apiFailure("replace", what, err);
          }
        }
        throw new KeyStoreError(
          `key store: ${what} kept changing during ${MAX_WRITE_ATTEMPTS} attempts to release it`,
        );
      });
    }
    return released;
  }
}

/** A failed API call as a KeyStoreError (the reconciler reports KeyStoreError as such), never with data. */
function apiFailure(verb: string, what: string, err: unknown): KeyStoreError {
  const apiError = new KubernetesApiError(verb, what, err);
  return new KeyStoreError(`key store: ${apiError.message}`, { cause: apiError });
}
