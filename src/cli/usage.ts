import { NatsbindError } from "../errors.ts";

/** Wrong flags or arguments: exit code 2 and a pointer to `natsbind help`. */
export class UsageError extends NatsbindError {}
