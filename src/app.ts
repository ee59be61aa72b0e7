import type { Config } from "./config.ts";
import { asObject, tryParseJson } from "./json.ts";
import type { RecordSink } from "./log.ts";
import { type Dialect, dialects } from "./providers/mod.ts";
import { Trace } from "./record.ts";
import { forward, reject, type RouterDeps } from "./router.ts";
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
}

const decoder = new TextDecoder();

/**
 * Builds the router as a plain function from request to response, so tests can call it
 * directly or behind `Deno.serve`, and `main.ts` stays the only place that touches the process.
 */
export function createHandler(
  config: Config,
  deps: AppDeps,
): (request: Request) => Promise<Response> {
  const routerDeps: RouterDeps = {
    fetch: deps.fetch ?? fetch,
    now: deps.now ?? (() => performance.now()),
  };
  return async (request) => {
    const url = new URL(request.url);
    const route = API_ROUTES[url.pathname];
    if (route !== undefined) {
      if (request.method !== "POST") {
        return plainError(405, `Method ${request.method} is not allowed on ${url.pathname}`, {
          allow: "POST",
          dialect: route.dialect,
        });
      }
      return await serveApi(config, request, url, route, deps.sink, routerDeps);
    }
    if (url.pathname === "/health") {
      if (request.method !== "GET" && request.method !== "HEAD") {
        return plainError(405, `Method ${request.method} is not allowed on /health`, {
          allow: "GET, HEAD",
        });
      }
      return Response.json({ status: "ok", version: VERSION });
    }
    return plainError(404, `No route for ${request.method} ${url.pathname}`, {
      dialect: dialectForPath(url.pathname),
    });
  };
}

async function serveApi(
  config: Config,
  request: Request,
  url: URL,
  route: ApiRoute,
  sink: RecordSink,
  deps: RouterDeps,
): Promise<Response> {
  const trace = new Trace(
    { requestId: crypto.randomUUID(), path: url.pathname, now: deps.now },
    (record) => sink.write(record),
  );
  trace.record.endpoint = route.dialect.type;
  const context = { dialect: route.dialect, trace };
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
  }, deps);
}

function dialectForPath(path: string): Dialect | undefined {
  if (path.startsWith("/anthropic/")) return dialects.anthropic;
  if (path.startsWith("/openai/")) return dialects.openai;
  return undefined;
}

/** An error outside any request record (unknown path, wrong method), in the path's API format. */
function plainError(
  status: number,
  message: string,
  options: { dialect?: Dialect; allow?: string },
): Response {
  const code = status === 405 ? "method_not_allowed" : "not_found";
  const body = (options.dialect ?? dialects.openai).errorBody(status, message, code);
  const headers: Record<string, string> = {};
  if (options.allow !== undefined) headers.allow = options.allow;
  return Response.json(body, { status, headers });
}
