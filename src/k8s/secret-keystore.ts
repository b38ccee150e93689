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
 *   natsbind.io/roles=<JSON {role: signing public key}>, natsbind.io/environment=<exact environment
 *   name> (environment slots only). The slot is read from these, not from the ownerReference, so a
 *   Secret released from its binding (release(), for deletionPolicy Retain) still reads the same.
 * Data: account.nk (the account seed), role-<role>.nk (one signing key seed per role; role names
 *   are DNS labels). Type Opaque.
 * ownerReferences: the NatsBinding (controller: true, blockOwnerDeletion: false); the owner's uid
 *   comes from the `owner` callback (the binding informer), and no Secret is written without one.
 *
 * Reads (list, get) come from an Informer<V1Secret> over the account Secrets, shared by all
 * bindings. ensure() makes no request when the cache has every role; otherwise it creates the
 * Secret (409 AlreadyExists: another writer won, read it and take its keys) or replaces it with
 * the resourceVersion seen (409 Conflict: read again and retry), never replacing a stored key,
 * and returns only after the apiserver accepted the write; the result goes into the informer at
 * once. Secrets are checked before use: a Secret natsbind did not write, or one with missing or bad
 * labels, annotations or seeds, is a KeyStoreError naming the Secret, never showing its data.
 *
 * Trust: anyone who may edit Secrets in the namespace can write these, so the annotations are
 * claims. A Secret is trusted only when account.nk derives natsbind.io/account and each
 * role-<role>.nk derives its key in natsbind.io/roles, and its labels, name and (when it has one)
 * NatsBinding ownerReference agree with the binding its annotation names in its own namespace
 * (checkAccountSecret; derived once per Secret version). list() leaves untrusted Secrets out and
 * reports them to the caller; get(), ensure() and remove() refuse them. The reconciler never
 * signs, pushes or deletes with an untrusted slot, and checks on the resolver that an account is
 * natsbind's own before pushing over or deleting it (src/controllers/binding/ownership.ts).
 */
import { createHash } from "node:crypto";
import { CoreV1Api } from "@kubernetes/client-node";
import type { KubeConfig, V1OwnerReference, V1Secret } from "@kubernetes/client-node";
import type {
  AccountKeys,
  AccountRef,
  KeyStore,
  SlotChange,
  StoredAccount,
  UntrustedSlot,
} from "../keystore/port.ts";
import { isPublicKey, NKeyPair } from "../nats/keys.ts";
import type { Logger } from "../observability/logger.ts";
import { nullLogger } from "../observability/logger.ts";
import type { Clock } from "../runtime/clock.ts";
import { KeyStoreError } from "../store/key-directory.ts";
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
export const ACCOUNT_SEED_KEY = "account.nk";
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
 * the annotations, public keys well-formed, role names DNS labels, sizes bounded. Seeds are not read.
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
  return { ref, account: account!, roles };
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
 * The slot a Secret holds, trusted: parseAccountSecret's checks, and every seed it holds derives
 * the public key its annotations name (account.nk the account key, role-<role>.nk each role key).
 * Annotations are writable by anyone who may edit Secrets in the namespace; the seeds prove which
 * keys the slot really has, so a Secret naming an account it has no seed for is never used.
 */
export function checkAccountSecret(secret: V1Secret): StoredAccount {
  const slot = parseAccountSecret(secret);
  loadAccountKeys(secret, slot);
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
  return { ...slot, ref: { ...slot.ref }, roles: { ...slot.roles }, accountKey, roleKeys };
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
  // ensure()/remove() of one slot run one at a time in this process: no needless conflicts.
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
      .map((s) => ({ ...s, ref: { ...s.ref }, roles: { ...s.roles } }));
  }

  async get(ref: AccountRef): Promise<AccountKeys | undefined> {
    const { namespace } = parseBindingKey(ref.binding);
    this.#requireSynced();
    const secret = this.#secrets.get(namespace, accountSecretName(ref));
    if (!secret) return undefined;
    return loadAccountKeys(secret, this.#slotOf(secret, ref));
  }

  ensure(ref: AccountRef, roles: readonly string[]): Promise<AccountKeys> {
    return this.#serialised(ref, () => this.#ensure(ref, roles));
  }

  // Rotation state in Secrets is being built (issue 11); until then a change is refused, loudly.
  update(ref: AccountRef, _change: SlotChange): Promise<StoredAccount> {
    return Promise.reject(
      new KeyStoreError(`key store: ${ref.binding}: rotation is not stored in Secrets yet`),
    );
  }

  forget(_ref: AccountRef, _keys: readonly string[]): Promise<void> {
    return Promise.resolve();
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

  async #ensure(ref: AccountRef, roles: readonly string[]): Promise<AccountKeys> {
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
        const created = await this.#create(ref, roles, namespace, name, what);
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
      const updated = await this.#addRoles(live, current, missing, ref, what);
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
    namespace: string,
    name: string,
    what: string,
  ): Promise<AccountKeys | undefined> {
    const ownerReference = this.#ownerReference(ref, what);
    const accountKey = NKeyPair.generate("account");
    const roleKeys = new Map<string, NKeyPair>();
    for (const role of roles) if (!roleKeys.has(role)) roleKeys.set(role, NKeyPair.generate("account"));
    const keys: AccountKeys = {
      ref: { ...ref },
      account: accountKey.publicKey,
      roles: Object.fromEntries([...roleKeys].map(([role, key]) => [role, key.publicKey])),
      accountKey,
      roleKeys,
    };
    const annotations: Record<string, string> = {
      [ANNOTATION_BINDING]: parseBindingKey(ref.binding).name,
      [ANNOTATION_ACCOUNT]: keys.account,
      [ANNOTATION_ROLES]: JSON.stringify(keys.roles),
    };
    if (ref.environment !== undefined) annotations[ANNOTATION_ENVIRONMENT] = ref.environment;
    const data: Record<string, string> = { [ACCOUNT_SEED_KEY]: encodeSeed(accountKey) };
    for (const [role, key] of roleKeys) data[roleSeedKey(role)] = encodeSeed(key);
    let created: V1Secret;
    try {
      created = await this.#core.createNamespacedSecret({
        namespace,
        body: {
          apiVersion: "v1",
          kind: "Secret",
          type: "Opaque",
          metadata: {
            name,
            namespace,
            labels: accountSecretLabels(ref),
            annotations,
            ownerReferences: [ownerReference],
          },
          data,
        },
      });
    } catch (err) {
      if (isAlreadyExists(err)) return undefined;
      throw apiFailure("create", what, err);
    }
    this.#secrets.upsert(created);
    this.#log.info({ secret: what, account: keys.account, roles: keys.roles }, "stored new account keys");
    return { ...keys, created: true };
  }

  /** Adds keys for `missing` roles with the resourceVersion seen; undefined on a conflict. */
  async #addRoles(
    live: V1Secret,
    current: AccountKeys,
    missing: readonly string[],
    ref: AccountRef,
    what: string,
  ): Promise<AccountKeys | undefined> {
    const ownerReference = this.#ownerReference(ref, what);
    const roleKeys = new Map(current.roleKeys);
    const data: Record<string, string> = { ...live.data };
    for (const role of missing) {
      const key = NKeyPair.generate("account");
      roleKeys.set(role, key);
      data[roleSeedKey(role)] = encodeSeed(key);
    }
    const roles = Object.fromEntries([...roleKeys].map(([role, key]) => [role, key.publicKey]));
    const metadata = live.metadata!;
    // The binding's current uid: a binding deleted and made again adopts its Secrets.
    const ownerReferences = [
      ...(metadata.ownerReferences ?? []).filter((o) => !(o.kind === KIND && o.controller === true)),
      ownerReference,
    ];
    let replaced: V1Secret;
    try {
      replaced = await this.#core.replaceNamespacedSecret({
        namespace: metadata.namespace!,
        name: metadata.name!,
        body: {
          ...live,
          metadata: {
            ...metadata,
            annotations: { ...metadata.annotations, [ANNOTATION_ROLES]: JSON.stringify(roles) },
            ownerReferences,
          },
          data,
        },
      });
    } catch (err) {
      if (isConflict(err)) return undefined;
      throw apiFailure("replace", what, err);
    }
    this.#secrets.upsert(replaced);
    this.#log.info({ secret: what, account: current.account, added: missing }, "stored new role keys");
    return { ...current, roles, roleKeys };
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
