import { NatsbindError } from "../errors.ts";

/** Wrong flags or arguments: exit code 2 and a pointer to `natsbind help`. */
export class UsageError extends NatsbindError {}

/** `natsbind operator ...` (src/cli/operator.ts), part of `natsbind help`. */
export const OPERATOR_USAGE = `  operator status --config FILE [--json]
        per server the operator signing keys it trusts (its VARZ); per key the accounts it signed
        on the resolver (every server's copy), and what to do next
  operator add-signing-key --operator-seed FILE --operator-jwt FILE --out-jwt FILE --out-seed FILE [--json]
        offline, where the operator identity seed lives: a new operator JWT listing the old and a
        new signing key, and the new key's seed (0600; an existing --out-seed is reused)
  operator activate --config FILE --seed FILE [--all-accounts]
        once every server trusts the new key (rolling restart with the new operator JWT): natsbind
        signs with it (nats.operatorSigningKey replaced, the old seed kept as <file>.previous) and
        every natsbind account is re-signed by it; --all-accounts re-signs the operator's other
        accounts too (the system account)
  operator retire --config FILE --key PUBKEY --operator-seed FILE --operator-jwt FILE --out-jwt FILE
        once no server holds an account the old key signed: the operator JWT without it
`;
