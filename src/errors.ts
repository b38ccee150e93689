/**
 * Base of every error natsbind throws on purpose. `name` identifies the failure; `cause` keeps the
 * underlying error. Messages name what is wrong and never carry secrets (seeds, creds, user JWTs).
 */
export class NatsbindError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A spec or input that will never work as given: retrying does not help until it changes. */
export class TerminalError extends NatsbindError {}

/** Renders an unknown thrown value as a one-line message, for wrapping. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
