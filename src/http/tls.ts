/**
 * The HTTP listener's certificate and key (`http.tls: {certFile, keyFile}`), read bounded, checked
 * as a pair before use, and re-read when they change: fs.watch on their directories (a Kubernetes
 * Secret volume swaps a `..data` symlink, a cert-manager or ACME renewal renames files in place)
 * and a slow poll behind it (watching is not reliable everywhere). A new pair is used only if it
 * loads and the key matches the certificate; otherwise the old one stays and the failure is logged
 * once per distinct content. Errors name files, never their content.
 */
import { X509Certificate, createHash } from "node:crypto";
import { watch } from "node:fs";
import type { FSWatcher } from "node:fs";
import { dirname } from "node:path";
import { createSecureContext } from "node:tls";
import { TerminalError, describeError } from "../errors.ts";
import { readBoundedFile } from "../store/files.ts";

/** A certificate chain or a key is a few KiB; a file far larger is the wrong file. */
export const MAX_TLS_FILE_BYTES = 1024 * 1024;
export const DEFAULT_TLS_POLL_MS = 60_000;
/** Events of one update (cert written, key written, symlink swapped) are taken together. */
export const DEFAULT_TLS_DEBOUNCE_MS = 100;

export type TlsFiles = { certFile: string; keyFile: string };

export type TlsPair = { cert: Buffer; key: Buffer };

export class TlsFilesError extends TerminalError {}

/** What a reload did: a new pair in use, nothing new on disk, or a new pair refused (old one kept). */
export type TlsReload = "reloaded" | "unchanged" | "refused";

export type TlsLogger = {
  info?(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
};

async function readTlsFile(path: string, what: string): Promise<Buffer> {
  let read;
  try {
    read = await readBoundedFile(path, MAX_TLS_FILE_BYTES);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? describeError(err);
    throw new TlsFilesError(`cannot read TLS ${what} file ${path}: ${code}`, { cause: err });
  }
  switch (read.kind) {
    case "ok":
      if (read.data.length === 0) throw new TlsFilesError(`TLS ${what} file ${path} is empty`);
      return read.data;
    case "missing":
      throw new TlsFilesError(`cannot read TLS ${what} file ${path}: ENOENT`);
    case "not-a-file":
      throw new TlsFilesError(`TLS ${what} file ${path} is not a regular file`);
    case "too-large":
      throw new TlsFilesError(`TLS ${what} file ${path} is larger than ${MAX_TLS_FILE_BYTES} bytes`);
  }
}

/** Both files, as they are now. */
export async function readTlsPair(files: TlsFiles): Promise<TlsPair> {
  const [cert, key] = await Promise.all([
    readTlsFile(files.certFile, "certificate"),
    readTlsFile(files.keyFile, "key"),
  ]);
  return { cert, key };
}

/** Facts about the pair's leaf certificate for log lines (public data only). */
export type CertificateFacts = { subject: string; validTo: string; fingerprint256: string };

/**
 * Throws a TlsFilesError naming the files when the pair cannot serve TLS (not PEM, encrypted
 * key, key not matching the certificate); else the leaf certificate's facts.
 */
export function checkTlsPair(pair: TlsPair, files: TlsFiles): CertificateFacts {
  try {
    createSecureContext({ cert: pair.cert, key: pair.key });
    const leaf = new X509Certificate(pair.cert);
    return { subject: leaf.subject, validTo: leaf.validTo, fingerprint256: leaf.fingerprint256 };
  } catch (err) {
    // OpenSSL's messages ("key values mismatch", "no start line") name no key material.
    throw new TlsFilesError(
      `TLS certificate ${files.certFile} and key ${files.keyFile} cannot be used: ${describeError(err)}`,
      { cause: err },
    );
  }
}

function digest(pair: TlsPair): string {
  return createHash("sha256").update(pair.cert).update("\0").update(pair.key).digest("hex");
}

export type TlsWatcherOptions = {
  files: TlsFiles;
  /** The pair in use now (already checked). */
  current: TlsPair;
  /** Puts a checked pair into use (server.setSecureContext). */
  apply: (pair: TlsPair) => void;
  log?: TlsLogger;
  pollIntervalMs?: number;
  debounceMs?: number;
};

export type TlsWatcher = {
  /** Re-reads the files now; concurrent calls share one read. */
  reload(): Promise<TlsReload>;
  close(): void;
};

export function watchTlsFiles(opts: TlsWatcherOptions): TlsWatcher {
  const { files, apply, log } = opts;
  const debounceMs = opts.debounceMs ?? DEFAULT_TLS_DEBOUNCE_MS;
  let applied = digest(opts.current);
  /** The last content that was refused, so a broken pair left on disk is logged once. */
  let refused: string | undefined;
  let closed = false;
  let running: Promise<TlsReload> | undefined;
  let again = false;

  const attempt = async (): Promise<TlsReload> => {
    let pair: TlsPair;
    try {
      pair = await readTlsPair(files);
    } catch (err) {
      const key = `unreadable:${describeError(err)}`;
      if (refused !== key)
        log?.warn({ err: describeError(err) }, "TLS files unreadable; the current certificate stays in use");
      refused = key;
      return "refused";
    }
    const seen = digest(pair);
    if (seen === applied) {
      refused = undefined;
      return "unchanged";
    }
    if (seen === refused) return "refused";
    let facts: CertificateFacts;
    try {
      facts = checkTlsPair(pair, files);
    } catch (err) {
      refused = seen;
      log?.warn({ err: describeError(err) }, "new TLS certificate refused; the current one stays in use");
      return "refused";
    }
    if (closed) return "unchanged";
    apply(pair);
    applied = seen;
    refused = undefined;
    log?.info?.({ certFile: files.certFile, ...facts }, "TLS certificate reloaded");
    return "reloaded";
  };

  const reload = (): Promise<TlsReload> => {
    if (closed) return Promise.resolve("unchanged");
    if (running) {
      // A change seen while reading may have been missed by that read: read once more after it.
      again = true;
      return running;
    }
    running = (async () => {
      let result: TlsReload;
      do {
        again = false;
        result = await attempt();
      } while (again && !closed);
      return result;
    })().finally(() => {
      running = undefined;
    });
    return running;
  };

  let debounce: ReturnType<typeof setTimeout> | undefined;
  const soon = (): void => {
    if (closed) return;
    clearTimeout(debounce);
    debounce = setTimeout(() => void reload(), debounceMs);
    debounce.unref();
  };

  const watchers: FSWatcher[] = [];
  for (const dir of new Set([dirname(files.certFile), dirname(files.keyFile)])) {
    try {
      // Ref'd like the listener it serves: close() must stop it (a forgotten close shows as a hang).
      const watcher = watch(dir, soon);
      watcher.on("error", (err) => {
        log?.warn({ dir, err: describeError(err) }, "watching TLS files failed; polling continues");
        watcher.close();
      });
      watchers.push(watcher);
    } catch (err) {
      log?.warn({ dir, err: describeError(err) }, "cannot watch TLS files; polling instead");
    }
  }
  const poll = setInterval(() => void reload(), opts.pollIntervalMs ?? DEFAULT_TLS_POLL_MS);
  poll.unref();

  return {
    reload,
    close() {
      closed = true;
      clearTimeout(debounce);
      clearInterval(poll);
      for (const watcher of watchers) watcher.close();
    },
  };
}
