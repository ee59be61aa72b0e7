import { type Span, trace as otel } from "@opentelemetry/api";
import type { Config } from "./config.ts";
import { asObject, tryParseJson } from "./json.ts";
import type { RecordSink } from "./log.ts";
import { type Dialect, dialects } from "./providers/mod.ts";
import { type RequestRecord, Trace } from "./record.ts";
import { forward, reject, type RouterDeps } from "./router.ts";
import { renderMetrics } from "./metrics.ts";
import { Stats } from "./stats.ts";
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

/** What the handler needs from the outside world; tests inject their own. */
export interface AppDeps extends Partial<RouterDeps> {
  sink: RecordSink;
  stats?: Stats;
}

const decoder = new TextDecoder();

/** The credentials a client presented, kept only to scrub them from its log record. */
function clientSecrets(headers: Headers): string[] {
  const bearer = headers.get("authorization")?.replace(/^Bearer\s+/i, "");
  return [bearer, headers.get("x-api-key")].filter((value): value is string => !!value);
}

/**
 * Builds the router as a plain function from request to response, so tests can call it
 * directly or behind `Deno.serve`, and `main.ts` stays the only place that touches the process.
 */
export function createHandler(
  config: Config,
  deps: AppDeps,
): (request: Request) => Promise<Response> {
  const { sink } = deps;
  const stats = deps.stats ?? new Stats();
  const routerDeps: RouterDeps = {
    fetch: deps.fetch ?? fetch,
    now: deps.now ?? (() => performance.now()),
  };
  const startTrace = (request: Request, url: URL, dialect: Dialect) => {
    const span = otel.getActiveSpan();
    const secrets = clientSecrets(request.headers);
    const trace = new Trace(
      { requestId: crypto.randomUUID(), path: url.pathname, now: routerDeps.now },
      (record) => {
        stats.add(record);
        sink.write(record, secrets);
        if (span !== undefined) annotateSpan(span, record);
      },
    );
    trace.record.endpoint = dialect.type;
    return { dialect, trace, span };
  };

  return async (request) => {
    const url = new URL(request.url);
    const route = API_ROUTES[url.pathname];
    if (route !== undefined) {
      const context = startTrace(request, url, route.dialect);
      if (request.method !== "POST") {
        const message = `Method ${request.method} is not allowed on ${url.pathname}`;
        return withAllow(reject(context, 405, message, "method_not_allowed"), "POST");
      }
      const response = await serveApi(config, request, url, route, context, routerDeps);
      if (context.span !== undefined) annotateSpan(context.span, context.trace.record);
      return response;
    }
    const dialect = dialectForPath(url.pathname);
    if (dialect !== undefined) {
      const message = `No route for ${request.method} ${url.pathname}`;
      return reject(startTrace(request, url, dialect), 404, message, "not_found");
    }
    const page = PAGES[url.pathname];
    if (page === undefined) {
      return plainError(404, `No route for ${request.method} ${url.pathname}`, "not_found");
    }
    if (request.method !== "GET" && request.method !== "HEAD") {
      const message = `Method ${request.method} is not allowed on ${url.pathname}`;
      return withAllow(plainError(405, message, "method_not_allowed"), "GET, HEAD");
    }
    return page(stats, sink);
  };
}

/** Read-only pages for operators. */
const PAGES: Record<string, (stats: Stats, sink: RecordSink) => Response> = {
  "/health": () => Response.json({ status: "ok", version: VERSION }),
  "/stats": (stats, sink) => Response.json(stats.toJSON(sink.writeErrors)),
  "/metrics": (stats, sink) =>
    new Response(renderMetrics(stats, sink.writeErrors), {
      headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
    }),
};

/**
 * With Deno's built-in OpenTelemetry on (`OTEL_DENO=true`), the request's span carries who
 * answered; without it the span is undefined and this never runs. Attributes follow the GenAI
 * semantic conventions where one exists.
 */
function annotateSpan(span: Span, record: RequestRecord): void {
  const attributes: Record<string, string | number> = {};
  if (record.endpoint !== null) attributes["gen_ai.provider.name"] = record.endpoint;
  if (record.model !== null) attributes["gen_ai.request.model"] = record.model;
  if (record.upstream_model !== null) attributes["gen_ai.response.model"] = record.upstream_model;
  if (record.provider !== null) attributes["llm_router.provider"] = record.provider;
  attributes["llm_router.attempts"] = record.attempts.length;
  if (record.usage !== null && record.endpoint !== null) {
    const tokens = dialects[record.endpoint].tokens(record.usage);
    attributes["gen_ai.usage.input_tokens"] = tokens.input;
    attributes["gen_ai.usage.output_tokens"] = tokens.output;
  }
  span.setAttributes(attributes);
}

async function serveApi(
  config: Config,
  request: Request,
  url: URL,
  route: ApiRoute,
  context: { dialect: Dialect; trace: Trace },
  deps: RouterDeps,
): Promise<Response> {
  const { trace } = context;
  let body: Uint8Array<ArrayBuffer>;
  try {
    body = await request.bytes();
  } catch (error) {
    if (request.signal.aborted) {
      trace.record.status = 499;
      trace.record.error = { type: "client_aborted", message: "Client closed the connection" };
      trace.finish();
      return new Response(null, { status: 499 });
    }
    return reject(context, 400, `Could not read the request body: ${error}`, "invalid_body");
  }
  const text = decoder.decode(body);
  const json = tryParseJson(text);
  trace.record.request = json === undefined ? text : json;
  const fields = asObject(json);
  if (fields === null) {
    const what = json === undefined ? "valid JSON" : "a JSON object";
    return reject(context, 400, `Request body must be ${what}`, "invalid_body");
  }
  if (typeof fields.model !== "string") {
    return reject(context, 400, 'Request body needs a string "model" field', "invalid_model");
  }
  if (fields.stream !== undefined && typeof fields.stream !== "boolean") {
    return reject(context, 400, '"stream" must be a boolean', "invalid_stream");
  }
  trace.record.model = fields.model;
  trace.record.stream = fields.stream === true;
  return await forward(config, {
    ...route,
    search: url.search,
    headers: request.headers,
    body,
    model: fields.model,
    stream: fields.stream === true,
    signal: request.signal,
    trace,
    usageInjection: route.dialect.usageInjection?.(config, fields) ?? null,
  }, deps);
}

function withAllow(response: Response, allow: string): Response {
  response.headers.set("allow", allow);
  return response;
}

function dialectForPath(path: string): Dialect | undefined {
  if (path.startsWith("/anthropic/")) return dialects.anthropic;
  if (path.startsWith("/openai/")) return dialects.openai;
  return undefined;
}

/** An error outside the API endpoints (unknown path, wrong method), OpenAI-shaped JSON. */
function plainError(status: number, message: string, code: string): Response {
  return Response.json(dialects.openai.errorBody(status, message, code), { status });
}
