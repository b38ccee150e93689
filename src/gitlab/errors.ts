/**
 * GitLab failures, one class per thing a caller decides on. Messages name the request
 * (method and path, never the token) and what GitLab said.
 */
import { NatsbindError, TerminalError } from "../errors.ts";

export interface GitLabRequestInfo {
  method: string;
  /** Path below the API root, without the query string. */
  path: string;
  status?: number;
}

export class GitLabError extends NatsbindError {
  readonly request: GitLabRequestInfo;
  constructor(message: string, request: GitLabRequestInfo, options?: { cause?: unknown }) {
    super(message, options);
    this.request = request;
  }
}

/** 401: the token is missing, wrong, expired or revoked. Retrying does not help. */
export class GitLabAuthError extends GitLabError {}
/** 403: the token works but may not do this (scope or membership). */
export class GitLabForbiddenError extends GitLabError {}
/** 404: no such group or project, or the token cannot see it (GitLab does not tell which). */
export class GitLabNotFoundError extends GitLabError {}
/** 429 or 5xx (or the network) kept failing past the retry budget. */
export class GitLabUnavailableError extends GitLabError {}
/** A response that does not have the shape GitLab documents. */
export class GitLabResponseError extends GitLabError {}
/** Any other 4xx: the request itself is wrong. */
export class GitLabRequestError extends GitLabError {}

/** A scope (group or project) that cannot be resolved as configured. */
export class GitLabScopeError extends TerminalError {}
/**
 * A redirect natsbind does not follow: to another origin (the token is only ever sent to the
 * configured one), without a usable Location, or more of them than a real GitLab sends.
 */
export class GitLabRedirectError extends GitLabError {}
/** A response body over the byte cap, refused while it streamed in (or from its Content-Length). */
export class GitLabResponseTooLargeError extends GitLabResponseError {}
