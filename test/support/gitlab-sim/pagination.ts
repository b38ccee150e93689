// GitLab's offset pagination (Gitlab::Pagination::OffsetPagination + OffsetHeaderBuilder).

/** Above this many records GitLab paginates without counting: no X-Total, X-Total-Pages, rel="last". */
export const COUNT_LIMIT = 10_000;
export const DEFAULT_PER_PAGE = 20;
export const MAX_PER_PAGE = 100;

export class BadRequest extends Error {
  readonly body: Record<string, unknown>;

  constructor(body: Record<string, unknown>) {
    super(JSON.stringify(body));
    this.body = body;
  }
}

function intParam(query: URLSearchParams, name: string): number | undefined {
  const raw = query.get(name);
  if (raw === null || raw === "") return undefined;
  if (!/^[-+]?\d+$/.test(raw.trim())) throw new BadRequest({ error: `${name} is invalid` });
  return Number(raw);
}

/** Ruby's Hash#to_query: `k=v` pairs, CGI-escaped (space as '+'), sorted. */
function toQuery(entries: Array<[string, string]>): string {
  const esc = (s: string): string => encodeURIComponent(s).replace(/%20/g, "+");
  return entries
    .map(([k, v]) => `${esc(k)}=${esc(v)}`)
    .sort()
    .join("&");
}

export interface PageRequest {
  /** Absolute base URL: http://127.0.0.1:PORT */
  base: string;
  /** Raw request path (still percent-encoded). */
  rawPath: string;
  query: URLSearchParams;
  /**
   * Parameters Grape adds to `params` (route params like `id`, declared defaults) that GitLab's
   * Link URLs therefore carry even when the client did not send them.
   */
  linkParams: Record<string, string>;
}

export interface Page<T> {
  items: T[];
  headers: Record<string, string>;
}

/** page and per_page as GitLab applies them; 400 (BadRequest) when not integers. */
export function parsePaging(query: URLSearchParams): { page: number; perPage: number } {
  let page = intParam(query, "page") ?? 1;
  if (page < 1) page = 1;
  let perPage = intParam(query, "per_page") ?? DEFAULT_PER_PAGE;
  if (perPage < 1) perPage = DEFAULT_PER_PAGE;
  if (perPage > MAX_PER_PAGE) perPage = MAX_PER_PAGE;
  return { page, perPage };
}

export function paginate<T>(all: readonly T[], req: PageRequest): Page<T> {
  const { page, perPage } = parsePaging(req.query);

  const total = all.length;
  const withoutCount = total > COUNT_LIMIT;
  const totalPages = Math.max(1, Math.ceil(total / perPage));
  const outOfRange = page > totalPages;
  const items = all.slice((page - 1) * perPage, page * perPage);
  const nextPage = !outOfRange && page * perPage < total ? page + 1 : null;
  const prevPage = page > 1 && !outOfRange ? page - 1 : null;

  const kept: Array<[string, string]> = [...req.query].filter(([k]) => k !== "page" && k !== "per_page");
  for (const [k, v] of Object.entries(req.linkParams)) {
    if (!req.query.has(k)) kept.push([k, v]);
  }
  kept.push(["per_page", String(perPage)]);
  const href = (p: number): string => `${req.base}${req.rawPath}?${toQuery([...kept, ["page", String(p)]])}`;
  const links: string[] = [];
  if (prevPage !== null) links.push(`<${href(prevPage)}>; rel="prev"`);
  if (nextPage !== null) links.push(`<${href(nextPage)}>; rel="next"`);
  links.push(`<${href(1)}>; rel="first"`);
  if (!withoutCount) links.push(`<${href(totalPages)}>; rel="last"`);

  const headers: Record<string, string> = {
    "X-Per-Page": String(perPage),
    "X-Page": String(page),
    "X-Next-Page": nextPage === null ? "" : String(nextPage),
    "X-Prev-Page": prevPage === null ? "" : String(prevPage),
    Link: links.join(", "),
  };
  if (!withoutCount) {
    headers["X-Total"] = String(total);
    headers["X-Total-Pages"] = String(totalPages);
  }
  return { items, headers };
}
