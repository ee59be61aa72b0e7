/**
 * The headers a page may read: all of them (the router never allows credentials, so `*` is a
 * wildcard), and by name, for browsers that do not take `*`, the request ids the SDKs report and
 * the retry hints they follow.
 */
const EXPOSED = [
  "*",
  "x-request-id",
  "request-id",
  "retry-after",
  "retry-after-ms",
  "x-should-retry",
  "x-llm-router-provider",
  "x-llm-router-attempts",
  "x-llm-router-upstream-request-id",
].join(", ");

/**
 * Cross-origin access, off unless `cors.origins` lists origins (or `*`). Returns the headers to
 * add for this request's `Origin`, or null when it gets none.
 */
export function corsHeaders(
  origins: readonly string[],
  origin: string | null,
): Record<string, string> | null {
  if (origin === null || origins.length === 0) return null;
  if (!origins.includes("*") && !origins.includes(origin)) return null;
  return {
    "access-control-allow-origin": origins.includes("*") ? "*" : origin,
    "access-control-expose-headers": EXPOSED,
    vary: "origin",
  };
}

/** The answer to a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`). */
export function preflight(
  origins: readonly string[],
  request: Request,
  methods: string,
): Response | null {
  const allowed = corsHeaders(origins, request.headers.get("origin"));
  if (allowed === null || !request.headers.has("access-control-request-method")) return null;
  return new Response(null, {
    status: 204,
    headers: {
      ...allowed,
      "access-control-allow-methods": methods,
      "access-control-allow-headers": request.headers.get("access-control-request-headers") ?? "",
      "access-control-max-age": "600",
    },
  });
}
