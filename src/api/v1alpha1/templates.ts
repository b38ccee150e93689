/**
 * Role subjects are templates. Two kinds of `{{...}}` expressions may appear in them:
 *
 * - controller variables, rendered here at reconcile time from GitLab values:
 *   `{{project.id}}`, `{{project.slug}}`, `{{project.path}}`, `{{namespace.path}}`, `{{environment}}`;
 * - NATS server functions, passed through for nats-server to render when it issues a user:
 *   `{{name()}}`, `{{subject()}}`, `{{account-subject()}}`, `{{tag(x)}}`, `{{account-tag(x)}}`.
 *
 * Anything else is an error, `{{account-name()}}` included: nats-server would put the account JWT's
 * name, the raw GitLab path ("acme/My Project"), into the subject unchecked; `{{project.path}}` is
 * the same path through safeToken. `{{account-tag(x)}}` is safe: natsbind sets every account tag
 * from ids or safeToken (controllers/binding/plan.ts). Spaces inside the braces are allowed and
 * normalised away.
 *
 * The safety guarantee: every GitLab-controlled value (paths, names, environments) goes through
 * safeToken, so it can never put a wildcard, whitespace, a dot or an empty token into a subject.
 */
import { createHash } from "node:crypto";
import { TerminalError } from "../../errors.ts";
import { subjectProblem } from "../../nats/subjects.ts";

/** A subject template that does not parse, or a rendered subject that is not a valid subject. */
export class SubjectTemplateError extends TerminalError {}

export const CONTROLLER_VARIABLES = [
  "project.id",
  "project.slug",
  "project.path",
  "namespace.path",
  "environment",
] as const;
export type ControllerVariable = (typeof CONTROLLER_VARIABLES)[number];

const NATS_FUNCTIONS_NO_ARGUMENT = ["name", "subject", "account-subject"];
/** Refused: renders the account JWT name (the raw GitLab path) past safeToken. */
const ACCOUNT_NAME_FUNCTION = "account-name";
const NATS_FUNCTIONS_TAG = ["tag", "account-tag"];
/** Tag names as nats-server looks them up (the part of a `name:value` tag before the colon). */
const TAG_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

export const MAX_TOKEN_LENGTH = 64;
const HASH_HEX_LENGTH = 8;
const HASHED_SUFFIX = /-[0-9a-f]{8}$/;

/**
 * One NATS subject token from any string, deterministically:
 *
 * 1. lower-case the value; replace every run of characters outside [a-z0-9_-] with one `_`; trim
 *    leading and trailing `_`.
 * 2. If that left the value exactly as given, non-empty, at most 64 characters and not ending in
 *    `-` + 8 hex digits, it is the token.
 * 3. Otherwise (any change is treated as lossy: "A B" and "a_b" would meet), the token is the cleaned
 *    value cut to 55 characters (trailing `_` trimmed) + `-` + the first 8 hex digits of
 *    sha256(original value, UTF-8).
 *
 * The result matches /^[a-z0-9_-]{1,64}$/: never empty, never `*`, `>`, `.`, whitespace or a control
 * character. Values kept as they are never end in `-` + 8 hex digits and changed ones always do, so
 * two different values give the same token only if sha256 prefixes collide.
 */
export function safeToken(value: string): string {
  const cleaned = value
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, "_")
    .replace(/^_+|_+$/g, "");
  if (
    cleaned === value &&
    cleaned.length > 0 &&
    cleaned.length <= MAX_TOKEN_LENGTH &&
    !HASHED_SUFFIX.test(cleaned)
  ) {
    return cleaned;
  }
  const hash = createHash("sha256").update(value, "utf8").digest("hex").slice(0, HASH_HEX_LENGTH);
  const prefix = cleaned.slice(0, MAX_TOKEN_LENGTH - 1 - HASH_HEX_LENGTH).replace(/_+$/, "");
  return `${prefix}-${hash}`;
}

/** A GitLab path ("acme/backend/api") as dot-separated safe tokens ("acme.backend.api"). */
export function safePathTokens(path: string): string {
  return path.split("/").map(safeToken).join(".");
}

/** What a subject template is made of, once parsed. */
export type TemplatePart =
  | { kind: "literal"; text: string }
  | { kind: "variable"; name: ControllerVariable }
  /** A NATS function, normalised to `{{name(arg)}}`. */
  | { kind: "function"; text: string };

export interface ParsedTemplate {
  parts: TemplatePart[];
  /** The template with every expression in its canonical spelling. */
  normalized: string;
  variables: ReadonlySet<ControllerVariable>;
}

function describeExpression(inner: string): string {
  const shown = inner.length > 64 ? `${inner.slice(0, 64)}…` : inner;
  return JSON.stringify(`{{${shown}}}`);
}

function classify(inner: string): TemplatePart | string {
  const expression = inner.trim();
  if ((CONTROLLER_VARIABLES as readonly string[]).includes(expression)) {
    return { kind: "variable", name: expression as ControllerVariable };
  }
  const call = /^([a-z-]+)\(\s*([^()\s{}]*)\s*\)$/.exec(expression);
  if (call) {
    const [, name = "", argument = ""] = call;
    if (name === ACCOUNT_NAME_FUNCTION) {
      return (
        `uses ${describeExpression(inner)}: the account name is the raw GitLab path, which may hold ` +
        `dots, spaces or wildcards; use {{project.path}} (the same path as safe subject tokens)`
      );
    }
    if (NATS_FUNCTIONS_NO_ARGUMENT.includes(name)) {
      if (argument === "") return { kind: "function", text: `{{${name}()}}` };
      return `uses ${describeExpression(inner)}: ${name}() takes no argument`;
    }
    if (NATS_FUNCTIONS_TAG.includes(name)) {
      if (TAG_NAME.test(argument)) return { kind: "function", text: `{{${name}(${argument})}}` };
      return `uses ${describeExpression(inner)}: ${name}() needs a tag name of letters, digits, "_", "-" or "."`;
    }
  }
  return (
    `uses unknown template ${describeExpression(inner)} (controller variables: ` +
    `${CONTROLLER_VARIABLES.map((v) => `{{${v}}}`).join(", ")}, NATS functions: ` +
    `{{name()}}, {{subject()}}, {{account-subject()}}, {{tag(x)}}, {{account-tag(x)}})`
  );
}

/** Parses a subject template; returns its parts, or every problem found. */
export function parseSubjectTemplate(template: string): ParsedTemplate | { problems: string[] } {
  const parts: TemplatePart[] = [];
  const problems: string[] = [];
  const literal = (text: string): void => {
    if (text) parts.push({ kind: "literal", text });
  };
  let at = 0;
  while (at < template.length) {
    const open = template.indexOf("{{", at);
    const stray = template.indexOf("}}", at);
    if (stray !== -1 && (open === -1 || stray < open)) {
      problems.push('has "}}" without a matching "{{"');
      literal(template.slice(at, stray + 2));
      at = stray + 2;
      continue;
    }
    if (open === -1) {
      literal(template.slice(at));
      break;
    }
    literal(template.slice(at, open));
    const close = template.indexOf("}}", open + 2);
    if (close === -1) {
      problems.push('has "{{" without a closing "}}"');
      break;
    }
    const part = classify(template.slice(open + 2, close));
    if (typeof part === "string") problems.push(part);
    else parts.push(part);
    at = close + 2;
  }
  if (problems.length) return { problems };
  const variables = new Set<ControllerVariable>();
  const normalized = parts
    .map((p) => {
      if (p.kind === "literal") return p.text;
      if (p.kind === "function") return p.text;
      variables.add(p.name);
      return `{{${p.name}}}`;
    })
    .join("");
  return { parts, normalized, variables };
}

function assemble(parts: TemplatePart[], value: (name: ControllerVariable) => string): string {
  return parts.map((p) => (p.kind === "literal" || p.kind === "function" ? p.text : value(p.name))).join("");
}

/**
 * Problems of a subject template as written in a binding: unknown expressions, `{{environment}}`
 * when accounts are not per environment, and a shape that can never render to a valid subject
 * (checked with every expression replaced by one sample token).
 */
export function subjectTemplateProblems(
  template: string,
  options: { environmentAllowed: boolean },
): string[] {
  const parsed = parseSubjectTemplate(template);
  if ("problems" in parsed) return parsed.problems;
  const problems: string[] = [];
  if (parsed.variables.has("environment") && !options.environmentAllowed) {
    problems.push("uses {{environment}}, which needs accountPer: environment");
  }
  const sample = parsed.parts.map((p) => (p.kind === "literal" ? p.text : "x")).join("");
  const problem = subjectProblem(sample);
  if (problem) problems.push(`is not a valid subject template: with its expressions filled in it ${problem}`);
  return problems;
}

/** The values controller variables render from: a GitLab project and, per environment, its name. */
export interface TemplateVars {
  project: { id: number; path: string; pathWithNamespace: string; namespaceFullPath: string };
  /** Set only when accounts are per environment. */
  environment?: string;
}

function variableValue(name: ControllerVariable, vars: TemplateVars): string {
  switch (name) {
    case "project.id":
      if (!Number.isSafeInteger(vars.project.id) || vars.project.id <= 0) {
        throw new SubjectTemplateError(`project id ${String(vars.project.id)} is not a positive integer`);
      }
      return String(vars.project.id);
    case "project.slug":
      return safeToken(vars.project.path);
    case "project.path":
      return safePathTokens(vars.project.pathWithNamespace);
    case "namespace.path":
      return safePathTokens(vars.project.namespaceFullPath);
    case "environment":
      if (vars.environment === undefined) {
        throw new SubjectTemplateError("{{environment}} is used but the account has no environment");
      }
      return safeToken(vars.environment);
  }
}

/**
 * Renders the controller variables of a subject template; NATS functions stay for the server.
 * Throws a SubjectTemplateError for an invalid template or when the result is not a valid subject
 * (for GitLab values that can only be length: safe tokens carry no wildcard, dot or whitespace).
 */
export function renderSubject(template: string, vars: TemplateVars): string {
  const parsed = parseSubjectTemplate(template);
  if ("problems" in parsed) {
    throw new SubjectTemplateError(
      `subject template ${JSON.stringify(template)} ${parsed.problems.join("; ")}`,
    );
  }
  const subject = assemble(parsed.parts, (name) => variableValue(name, vars));
  const problem = subjectProblem(subject);
  if (problem) {
    const shown = subject.length > 120 ? `${subject.slice(0, 120)}…` : subject;
    throw new SubjectTemplateError(
      `subject template ${JSON.stringify(template)} rendered for project ${vars.project.id} to ` +
        `${JSON.stringify(shown)}, which ${problem}`,
    );
  }
  return subject;
}
