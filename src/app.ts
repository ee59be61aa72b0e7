import { trace as otel } from "@opentelemetry/api";
import type { Config } from "./config.ts";
import { ProviderHealth } from "./health.ts";
import { readClientBody } from "./intake.ts";
import type { RecordSink } from "./log.ts";
import { PAGES } from "./pages.ts";
import { type Dialect, dialects } from "./providers/mod.ts";
import { Trace } from "./record.ts";
import { reject } from "./respond.ts";
import { forward, type RouterDeps } from "./router.ts";
import { Stats } from "./stats.ts";
import { annotateSpan } from "./telemetry.ts";
import { VERSION } from "./version.ts";

/** An API endpoint the router serves: which dialect, and where it goes under `base_url`. */
interface ApiRoute {
  dialect: Dialect;
  upstreamPath: string;
}

const API_ROUTES: Record<string, ApiRoute> = {
  "/openai/chat/completions": { dialect: dialects.openai, upstreamPath: "/chat/completions" },
  "/openai/v1/chat/completions": { dialect: dialects.openai, upstreamPath: "/chat/completions" },
  "/anthropic/v1/messages": { dialect: dialects.anthropic, upstreamPath: "/v1/messages" },
};

const tracer = otel.getTracer("llm-api-router", VERSION);

/** What the handler needs from the outside world; tests inject their own. */
export interface AppDeps extends Partial<RouterDeps> {
  sink: RecordSink;
  stats?: Stats;
}

/** The credentials a client presented, kept only to scrub them from its log record. */
function clientSecrets(headers: Headers): string[] {
  const bearer = headers.get("authorization")?.replace(/^Bearer\s+/i, "");
  return [bearer, headers.get("x-api-key")].filter((value): value is string => !!value);
}

function dialectForPath(path: string): Dialect | undefined {
  if (path.startsWith("/anthropic/")) return dialects.anthropic;
  if (path.startsWith("/openai/")) return dialects.openai;
  return undefined;
}

function withAllow(response: Response, allow: string): Response {
  response.headers.set("allow", allow);
  return response;
}

/**
 * Builds the router as a plain function from request to response, so tests can call it
 * directly or behind `Deno.serve`, and `main.ts` stays the only place that touches the process.
 * `config` is read once per request, so a reload reaches new requests while in-flight ones keep
 * theirs.
 */
export function createHandler(
  config: () => Config,
  deps: AppDeps,
): (request: Request) => Promise<Response> {
  const { sink } = deps;
  const stats = deps.stats ?? new Stats();
  const routerDeps: RouterDeps = {
    fetch: deps.fetch ?? fetch,
    now: deps.now ?? (() => performance.now()),
    health: deps.health ?? new ProviderHealth(),
    shutdown: deps.shutdown ?? new AbortController().signal,
  };
  const startTrace = (request: Request, url: URL, dialect: Dialect) => {
    const span = otel.getActiveSpan();
    // Deno's server span ends when the handler returns; this one lasts until the body has ended.
    const requestSpan = span === undefined ? undefined : tracer.startSpan("llm_router.request");
    const secrets = clientSecrets(request.headers);
    const trace = new Trace(
      { requestId: crypto.randomUUID(), path: url.pathname, now: routerDeps.now },
      (record) => {
        stats.add(record);
        sink.write(record, secrets);
        if (requestSpan === undefined) return;
        annotateSpan(requestSpan, record);
        requestSpan.end();
      },
    );
    trace.record.endpoint = dialect.type;
    return { dialect, trace, span };
  };

  async function serveApi(request: Request, url: URL, route: ApiRoute): Promise<Response> {
    const arrived = routerDeps.now();
    const current = config();
    const context = startTrace(request, url, route.dialect);
    const { trace } = context;
    if (request.method !== "POST") {
      const message = `Method ${request.method} is not allowed on ${url.pathname}`;
      return withAllow(reject(context, 405, message, "method_not_allowed"), "POST");
    }
    let body;
    try {
      body = await readClientBody(request, current.limits.max_request_bytes);
    } catch (error) {
      if (!request.signal.aborted) {
        return reject(context, 400, `Could not read the request body: ${error}`, "invalid_body");
      }
      trace.record.status = 499;
      trace.record.error = { type: "client_aborted", message: "Client closed the connection" };
      trace.finish();
      return new Response(null, { status: 499 });
    }
    trace.record.request = body.logged;
    if (!("fields" in body)) return reject(context, body.status, body.message, body.code);
    const { fields } = body;
    const model = String(fields.model);
    trace.record.model = model;
    trace.record.stream = fields.stream === true;
    const response = await forward(current, {
      ...route,
      search: url.search,
      headers: request.headers,
      body: body.bytes,
      model,
      stream: fields.stream === true,
      signal: request.signal,
      trace,
      arrived,
      usageInjection: route.dialect.usageInjection?.(current, fields) ?? null,
    }, routerDeps);
    if (context.span !== undefined) annotateSpan(context.span, trace.record);
    return response;
  }

  return async (request) => {
    const url = new URL(request.url);
    const route = API_ROUTES[url.pathname];
    if (route !== undefined) return await serveApi(request, url, route);
    const dialect = dialectForPath(url.pathname);
    if (dialect !== undefined) {
      const message = `No route for ${request.method} ${url.pathname}`;
      return reject(startTrace(request, url, dialect), 404, message, "not_found");
    }
    const page = PAGES[url.pathname];
    const openai = dialects.openai;
    if (page === undefined) {
      const body = openai.errorBody(
        404,
        `No route for ${request.method} ${url.pathname}`,
        "not_found",
      );
      return Response.json(body, { status: 404 });
    }
    if (request.method !== "GET" && request.method !== "HEAD") {
      const message = `Method ${request.method} is not allowed on ${url.pathname}`;
      const body = openai.errorBody(405, message, "method_not_allowed");
      return Response.json(body, { status: 405, headers: { allow: "GET, HEAD" } });
    }
    return page({ config, stats, sink, health: routerDeps.health });
  };
}
