import { trace as otel } from "@opentelemetry/api";
import type { Config } from "./config.ts";
import { AfterResponse } from "./after_response.ts";
import { Gate, presentedKeys } from "./auth.ts";
import { createHttpClient } from "./http_client.ts";
import { corsHeaders, preflight } from "./cors.ts";
import { ProviderHealth } from "./health.ts";
import { readClientBody, SHUTTING_DOWN } from "./intake.ts";
import type { RecordSink } from "./log.ts";
import { PAGES } from "./pages.ts";
import { type Dialect, dialects } from "./providers/mod.ts";
import {
  API_ROUTES,
  type ApiRoute,
  describeModel,
  dialectForPath,
  listModels,
  MODEL_LISTS,
  modelPath,
} from "./routes.ts";
import { Trace } from "./record.ts";
import { InFlight } from "./upstream.ts";
import { clientGone, reject } from "./respond.ts";
import { forward, type RouterDeps } from "./router.ts";
import { Stats } from "./stats.ts";
import { annotateSpan } from "./telemetry.ts";
import { VERSION } from "./version.ts";

const tracer = otel.getTracer("llm-api-router", VERSION);

/** What the handler needs from the outside world; tests inject their own. */
export interface AppDeps extends Partial<RouterDeps> {
  sink: RecordSink;
  stats?: Stats;
  /** Where records wait for their answer to go out; the server flushes it when it stops. */
  afterResponse?: AfterResponse;
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
  const stats = deps.stats ?? new Stats((model) => {
    const current = config();
    return Object.hasOwn(current.model_mapping, model) ||
      current.providers.some((provider) => provider.models?.includes(model));
  });
  const now = deps.now ?? (() => performance.now());
  const routerDeps: RouterDeps = {
    upstream: deps.upstream ?? createHttpClient(),
    now,
    health: deps.health ?? new ProviderHealth(),
    inFlight: deps.inFlight ?? new InFlight(now),
  };
  const afterResponse = deps.afterResponse ?? new AfterResponse((error) => {
    console.error(`A finished request could not be recorded: ${error}`);
  });
  const gates = new WeakMap<Config, Gate>();
  const gateFor = (current: Config) => {
    let gate = gates.get(current);
    if (gate === undefined) gates.set(current, gate = new Gate(current.auth));
    return gate;
  };
  let inFlight = 0;

  /** A request's record; `dialect` null for paths outside the APIs (errors then look OpenAI's). */
  const startTrace = (request: Request, url: URL, dialect: Dialect | null) => {
    const span = otel.getActiveSpan();
    // Deno's server span ends when the handler returns; this one lasts until the body has ended.
    const requestSpan = span === undefined ? undefined : tracer.startSpan("llm_router.request");
    // Kept only to scrub the client's own credentials from its log record.
    const secrets = presentedKeys(request.headers);
    const admission = { counted: false };
    const trace = new Trace(
      { requestId: crypto.randomUUID(), path: url.pathname, now: routerDeps.now },
      (record, complete) => {
        if (admission.counted) inFlight--;
        afterResponse.run(() => {
          try {
            complete?.();
          } catch (error) {
            // A body the tap cannot read costs the record its usage, never the record itself.
            record.error ??= { type: "router_error", message: `Could not read the body: ${error}` };
          }
          stats.add(record);
          if (requestSpan !== undefined) {
            annotateSpan(requestSpan, record);
            requestSpan.end();
          }
          sink.write(record, secrets);
        });
      },
    );
    trace.record.endpoint = dialect?.type ?? null;
    return { dialect: dialect ?? dialects.openai, trace, span, admission };
  };

  async function serveApi(
    request: Request,
    url: URL,
    route: ApiRoute,
    current: Config,
  ): Promise<Response> {
    const arrived = routerDeps.now();
    const context = startTrace(request, url, route.dialect);
    const { trace } = context;
    if (request.method !== "POST") {
      const message = `Method ${request.method} is not allowed on ${url.pathname}`;
      return withAllow(reject(context, 405, message, "method_not_allowed"), "POST");
    }
    const gate = gateFor(current);
    if (gate.enabled) {
      trace.record.client = gate.identify(request.headers);
      if (trace.record.client === null) {
        return reject(context, 401, UNAUTHORIZED, "invalid_api_key");
      }
    }
    const limit = current.limits.max_concurrent;
    if (limit !== undefined && inFlight >= limit) {
      const message = `The router is at its limit of ${limit} concurrent requests; retry shortly`;
      return reject(context, 429, message, "too_many_requests", { "retry-after": "1" });
    }
    inFlight++;
    context.admission.counted = true;
    let body;
    try {
      body = await readClientBody(request, {
        maxBytes: current.limits.max_request_bytes,
        deadlineMs: current.timeouts.first_byte_ms,
      }, routerDeps.inFlight);
    } catch (error) {
      if (request.signal.aborted) return clientGone(trace);
      // Stopping the server ends uploads still under way.
      if (routerDeps.inFlight.stopping) {
        return reject(context, 503, SHUTTING_DOWN, "shutting_down");
      }
      return reject(context, 400, `Could not read the request body: ${error}`, "invalid_body");
    }
    trace.record.request = body.logged;
    if (!("fields" in body)) return reject(context, body.status, body.message, body.code);
    const { fields } = body;
    const model = String(fields.model);
    trace.record.model = model;
    trace.record.stream = fields.stream === true;
    let response: Response;
    try {
      response = await forward(current, {
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
    } catch (error) {
      // A bug must cost one request, never the record, the concurrency slot or the process.
      if (trace.finished) throw error;
      return reject(context, 502, `The router failed on this request: ${error}`, "router_error");
    }
    if (context.span !== undefined) annotateSpan(context.span, trace.record);
    return response;
  }

  /** The model list, or with `name` one model of it. */
  function serveModels(
    request: Request,
    url: URL,
    current: Config,
    models: { dialect: Dialect; name?: string },
  ): Response {
    const { dialect, name } = models;
    if (request.method === "OPTIONS") {
      const allowed = preflight(current.cors.origins, request, "GET, HEAD");
      if (allowed !== null) return allowed;
    }
    if (request.method !== "GET" && request.method !== "HEAD") {
      const message = `Method ${request.method} is not allowed on ${url.pathname}`;
      const body = dialect.errorBody(405, message, "method_not_allowed");
      return Response.json(body, { status: 405, headers: { allow: "GET, HEAD" } });
    }
    const gate = gateFor(current);
    if (gate.enabled && gate.identify(request.headers) === null) {
      return Response.json(dialect.errorBody(401, UNAUTHORIZED, "invalid_api_key"), {
        status: 401,
      });
    }
    return name === undefined
      ? listModels(current, dialect)
      : describeModel(current, dialect, name);
  }

  function servePage(request: Request, url: URL, current: Config): Response {
    const page = PAGES[url.pathname];
    const refuse = (status: number, message: string, code: string) =>
      reject(startTrace(request, url, null), status, message, code);
    if (page === undefined) {
      return refuse(404, `No route for ${request.method} ${url.pathname}`, "not_found");
    }
    if (request.method !== "GET" && request.method !== "HEAD") {
      const message = `Method ${request.method} is not allowed on ${url.pathname}`;
      return withAllow(refuse(405, message, "method_not_allowed"), "GET, HEAD");
    }
    const gate = gateFor(current);
    const open = url.pathname === "/health" || !gate.protectPages;
    if (!open && gate.enabled && gate.identify(request.headers) === null) {
      return refuse(401, UNAUTHORIZED, "invalid_api_key");
    }
    // The statistics include every request answered so far.
    if (url.pathname !== "/health") afterResponse.flush();
    return page({ config, stats, sink, health: routerDeps.health });
  }

  async function dispatch(request: Request, url: URL, current: Config): Promise<Response> {
    const route = API_ROUTES[url.pathname];
    if (route !== undefined) {
      const allowed = request.method === "OPTIONS"
        ? preflight(current.cors.origins, request, "POST")
        : null;
      return allowed ?? await serveApi(request, url, route, current);
    }
    const listed = MODEL_LISTS[url.pathname];
    if (listed !== undefined) return serveModels(request, url, current, { dialect: listed });
    const model = modelPath(url.pathname);
    if (model !== undefined) return serveModels(request, url, current, model);
    const dialect = dialectForPath(url.pathname);
    if (dialect !== undefined) {
      const message = `No route for ${request.method} ${url.pathname}`;
      return reject(startTrace(request, url, dialect), 404, message, "not_found");
    }
    return servePage(request, url, current);
  }

  return async (request) => {
    const current = config();
    const response = await dispatch(request, new URL(request.url), current);
    const cors = corsHeaders(current.cors.origins, request.headers.get("origin"));
    if (cors !== null) {
      for (const [name, value] of Object.entries(cors)) {
        // A provider's own `vary` (say, on accept-encoding) still holds: origin is added to it.
        if (name === "vary") response.headers.append(name, value);
        else response.headers.set(name, value);
      }
    }
    return response;
  };
}

const UNAUTHORIZED =
  "Missing or unknown API key: send one of the router's keys as Authorization: Bearer <key> or x-api-key";
