/**
 * NATS subject rules, checked before anything reaches a JWT: tokens separated by ".", none empty,
 * no whitespace, `*` and `>` only as whole tokens and `>` only last.
 */
export const MAX_SUBJECT_LENGTH = 512;

/** True for C0 control characters and DEL, which no name or subject may carry. */
export function hasControlCharacter(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x20 || code === 0x7f) return true;
  }
  return false;
}

/** Returns a reason the subject is invalid, or undefined when it is valid. */
export function subjectProblem(subject: string, allowWildcards = true): string | undefined {
  if (subject.length === 0) return "is empty";
  if (subject.length > MAX_SUBJECT_LENGTH) return `is longer than ${MAX_SUBJECT_LENGTH} characters`;
  if (/\s/u.test(subject) || hasControlCharacter(subject))
    return "contains whitespace or a control character";
  const tokens = subject.split(".");
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!;
    if (token.length === 0) return "has an empty token";
    const wildcard = token === "*" || token === ">";
    if (!wildcard && /[*>]/.test(token)) return `has a wildcard inside token "${token}"`;
    if (wildcard && !allowWildcards) return "contains a wildcard";
    if (token === ">" && i !== tokens.length - 1) return `has ">" before its last token`;
  }
  return undefined;
}
