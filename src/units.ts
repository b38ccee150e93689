/**
 * Kubernetes-style byte quantities ("64Mi", "1Gi", "500M", "1024") and Go-style durations ("5s",
 * "1m30s"), as NatsBinding specs and natsbind.yaml write them. Pure parsers returning a value or a problem, so the
 * schema can report the problem at the field's path and the normalizer can convert.
 */

const BINARY: Record<string, bigint> = {
  Ki: 1n << 10n,
  Mi: 1n << 20n,
  Gi: 1n << 30n,
  Ti: 1n << 40n,
  Pi: 1n << 50n,
  Ei: 1n << 60n,
};
const DECIMAL: Record<string, bigint> = {
  k: 10n ** 3n,
  M: 10n ** 6n,
  G: 10n ** 9n,
  T: 10n ** 12n,
  P: 10n ** 15n,
  E: 10n ** 18n,
};

export const MAX_QUANTITY_LENGTH = 32;
const QUANTITY = /^([0-9]+)(?:\.([0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$/;

export type Parsed<T> = { value: T } | { problem: string };

/**
 * A byte count from a non-negative integer or a Kubernetes quantity string: decimal digits with an
 * optional fraction and an optional suffix (Ki Mi Gi Ti Pi Ei = powers of 1024, k M G T P E =
 * powers of 1000). The result must be a whole number of bytes within Number.MAX_SAFE_INTEGER.
 */
export function parseByteQuantity(input: unknown): Parsed<number> {
  const hint = "a byte quantity such as 1024, 64Mi, 1Gi or 500M";
  if (typeof input === "number") {
    if (!Number.isSafeInteger(input) || input < 0) return { problem: `must be ${hint} (>= 0)` };
    return { value: input };
  }
  if (typeof input !== "string") return { problem: `must be ${hint}` };
  const shown = JSON.stringify(input.slice(0, MAX_QUANTITY_LENGTH));
  const match = input.length <= MAX_QUANTITY_LENGTH ? QUANTITY.exec(input) : null;
  if (!match) return { problem: `${shown} is not ${hint}` };
  const [, whole = "0", fraction = "", suffix = ""] = match;
  const multiplier = BINARY[suffix] ?? DECIMAL[suffix] ?? 1n;
  const scale = 10n ** BigInt(fraction.length);
  const scaled = BigInt(whole + fraction) * multiplier;
  if (scaled % scale !== 0n) return { problem: `${shown} is not a whole number of bytes` };
  const bytes = scaled / scale;
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) return { problem: `${shown} is too large` };
  return { value: Number(bytes) };
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION = /^(?:[0-9]+(?:ms|s|m|h))+$/;
/** Long durations (key rotation periods) may use days too: "90d", "1d12h". */
const LONG_DURATION = /^(?:[0-9]+(?:ms|s|m|h|d))+$/;
export const MAX_DURATION_LENGTH = 32;

/** Milliseconds from a Go-style duration of whole units ("500ms", "5s", "1m30s", "0"), at most `maxMs`. */
export function parseDuration(input: unknown, maxMs: number, opts: { days?: boolean } = {}): Parsed<number> {
  const hint = opts.days
    ? 'a duration such as "90d", "12h" or "1d12h"'
    : 'a duration such as "500ms", "5s" or "1m30s"';
  if (typeof input !== "string") return { problem: `must be ${hint}` };
  if (input === "0") return { value: 0 };
  const shown = JSON.stringify(input.slice(0, MAX_DURATION_LENGTH));
  if (input.length > MAX_DURATION_LENGTH || !(opts.days ? LONG_DURATION : DURATION).test(input))
    return { problem: `${shown} is not ${hint}` };
  let ms = 0;
  for (const [, amount, unit] of input.matchAll(/([0-9]+)(ms|s|m|h|d)/g)) {
    ms += Number(amount) * DURATION_UNITS[unit!]!;
  }
  if (!Number.isSafeInteger(ms) || ms > maxMs) return { problem: `${shown} is longer than ${maxMs} ms` };
  return { value: ms };
}
