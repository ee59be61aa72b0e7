import { type Attempt, type AttemptError, fallsBack } from "./attempt.ts";
import { spliceModel } from "./body.ts";
import type { Config } from "./config.ts";
import type { Dialect, UsageInjection } from "./providers/mod.ts";
import type { Trace } from "./record.ts";
import { type RelayEnd, type RelayHooks, relayPlainBody, SseRelay } from "./relay.ts";
import { AttemptSignal, clientResponseHeaders, upstreamRequestHeaders } from "./upstream.ts";

type Provider = Config["providers"][number];

/** One (provider, upstream model) pair to try. */
export interface Candidate {
  provider: Provider;
  model: string;
}

/**
 * The attempt order for a model: providers of the endpoint's type by ascending priority (ties in
 * config order), and for each, the mapping's targets that apply to it, in list order. A model
 * with no mapping is forwarded under its own name. Each pair appears once.
 */
export function planCandidates(config: Config, dialect: Dialect, model: string): Candidate[] {
  const targets = config.model_mapping[model] ?? [model];
  const providers = config.providers
    .filter((provider) => provider.type === dialect.type)
    .sort((a, b) => a.priority - b.priority);
  const seen = new Set<string>();
  const candidates: Candidate[] = [];
  for (const provider of providers) {
    for (const target of targets) {
      let upstreamModel: string;
      if (typeof target === "string") {
        if (provider.models !== undefined && !provider.models.includes(target)) continue;
        upstreamModel = target;
      } else {
        if (target.provider !== provider.name) continue;
        upstreamModel = target.model ?? model;
      }
      const key = JSON.stringify([provider.name, upstreamModel]);
      if (seen.has(key)) continue;
      seen.add(key);
      candidates.push({ provider, model: upstreamModel });
    }
  }
  return candidates;
}

/** What the router needs of one validated client request. */
export interface ForwardRequest {
  dialect: Dialect;
  /** The path under the provider's base URL, e.g. `/chat/completions`. */
  upstreamPath: string;
  search: string;
  headers: Headers;
  body: Uint8Array<ArrayBuffer>;
  model: string;
  stream: boolean;
  signal: AbortSignal;
  trace: Trace;
  /** Set when the router asks upstream for stream usage the client did not request. */
  usageInjection: UsageInjection | null;
}

/** Injected so tests can count or fail upstream calls without patching globals. */
export interface RouterDeps {
  fetch: typeof fetch;
  now: () => number;
}

/**
 * Answers with the router's own error in the endpoint's format, and finishes the record with it.
 * `code` names the failure in both the body and the record's `error.type`.
 */
export function reject(
  request: { dialect: Dialect; trace: Trace },
  status: number,
  message: string,
  code: string,
): Response {
  const { dialect, trace } = request;
  const body = dialect.errorBody(status, message, code);
  trace.record.status = status;
  trace.record.error = { type: code, message };
  trace.record.response = body;
  trace.markFirstByte();
  trace.finish();
  return Response.json(body, { status, headers: { "x-request-id": trace.record.request_id } });
}

/**
 * Tries the candidates in order until one commits, and returns the client's response. Nothing
 * reaches the client before the commit, so a failed attempt leaves no trace in its answer.
 */
export async function forward(
  config: Config,
  request: ForwardRequest,
  deps: RouterDeps,
): Promise<Response> {
  const { dialect, model } = request;
  const candidates = planCandidates(config, dialect, model);
  if (candidates.length === 0) {
    const message = `No ${dialect.type} provider serves model "${model}"`;
    return reject(request, 404, message, "model_not_found");
  }
  const bodies = new Map<string, Uint8Array<ArrayBuffer>>();
  for (let i = 0; i < candidates.length; i++) {
    const candidate = candidates[i];
    let body = bodies.get(candidate.model);
    if (body === undefined) {
      body = candidate.model === model ? request.body : spliceModel(request.body, candidate.model);
      if (request.usageInjection !== null) body = request.usageInjection.splice(body);
      bodies.set(candidate.model, body);
    }
    const response = await attempt(request, candidate, body, i === candidates.length - 1, deps);
    if (response !== null) return response;
    if (request.signal.aborted) break;
  }
  return allFailed(request);
}

async function attempt(
  request: ForwardRequest,
  candidate: Candidate,
  body: Uint8Array<ArrayBuffer>,
  last: boolean,
  deps: RouterDeps,
): Promise<Response | null> {
  const { provider } = candidate;
  const started = deps.now();
  const record: Attempt = {
    provider: provider.name,
    model: candidate.model,
    status: null,
    error: null,
    duration_ms: 0,
  };
  request.trace.record.attempts.push(record);
  const close = (error: AttemptError | null) => {
    record.error = error;
    record.duration_ms = Math.round((deps.now() - started) * 100) / 100;
  };
  const signal = new AttemptSignal(request.signal, provider.timeout_ms);
  let upstream: Response;
  try {
    upstream = await deps.fetch(provider.base_url + request.upstreamPath + request.search, {
      method: "POST",
      headers: upstreamRequestHeaders(request.headers, request.dialect, provider.api_key),
      body,
      signal: signal.signal,
    });
  } catch {
    signal.abandon();
    close(signal.failureKind());
    return null;
  }
  record.status = upstream.status;
  const isSse = (upstream.headers.get("content-type") ?? "").includes("text/event-stream");
  if (fallsBack(upstream.status) && !last) {
    signal.abandon();
    await upstream.body?.cancel().catch(() => {});
    close("http_status");
    return null;
  }
  if (!isSse || upstream.body === null || fallsBack(upstream.status)) {
    signal.commit();
    return commit(request, candidate, upstream, signal, close, null);
  }
  const relay = new SseRelay(
    upstream.body,
    request.dialect,
    request.usageInjection?.filter ?? null,
  );
  if (last) {
    relay.onFirstOutput = () => signal.commit();
    return commit(request, candidate, upstream, signal, close, relay);
  }
  let verdict: AttemptError | "commit";
  try {
    verdict = await relay.awaitCommit();
  } catch {
    verdict = signal.failureKind("stream_interrupted");
  }
  if (verdict !== "commit") {
    signal.abandon();
    await relay.discard();
    close(verdict);
    return null;
  }
  signal.commit();
  return commit(request, candidate, upstream, signal, close, relay);
}

/** Hands the provider's answer to the client; the record is finished when its body ends. */
function commit(
  request: ForwardRequest,
  candidate: Candidate,
  upstream: Response,
  signal: AttemptSignal,
  close: (error: AttemptError | null) => void,
  relay: SseRelay | null,
): Response {
  const { trace, dialect } = request;
  const record = trace.record;
  record.provider = candidate.provider.name;
  record.upstream_model = candidate.model;
  record.status = upstream.status;
  const headers = clientResponseHeaders(upstream.headers);
  const upstreamRequestId = headers.get("x-request-id");
  if (upstreamRequestId !== null) {
    headers.set("x-llm-router-upstream-request-id", upstreamRequestId);
  }
  headers.set("x-request-id", record.request_id);
  headers.set("x-llm-router-provider", candidate.provider.name);
  headers.set("x-llm-router-attempts", String(record.attempts.length));
  const hooks: RelayHooks = {
    onFirstByte: () => trace.markFirstByte(),
    failureKind: () => signal.failureKind("stream_interrupted"),
    onEnd: (end: RelayEnd) => {
      signal.abandon();
      const httpError = fallsBack(upstream.status) || upstream.status >= 400;
      close(end.error ?? (httpError ? "http_status" : null));
      record.usage = end.usage;
      record.response = end.response;
      record.stream_events = end.streamEvents;
      record.stream_complete = end.streamComplete;
      if (end.error === "client_aborted") record.status = 499;
      if (end.error !== null) {
        record.error = { type: end.error, message: end.message ?? end.error };
      } else if (httpError) {
        record.error = { type: "http_status", message: `Provider answered ${upstream.status}` };
      }
      trace.finish();
    },
  };
  if (upstream.body === null) {
    trace.markFirstByte();
    hooks.onEnd({
      error: null,
      message: null,
      usage: null,
      response: null,
      streamEvents: null,
      streamComplete: null,
    });
    return new Response(null, { status: upstream.status, headers });
  }
  const body = relay === null
    ? relayPlainBody(upstream.body, dialect, hooks)
    : relay.clientStream(hooks);
  return new Response(body, { status: upstream.status, statusText: upstream.statusText, headers });
}

/** Every attempt failed before any provider answered: 502 or 504 listing what happened. */
function allFailed(request: ForwardRequest): Response {
  const { trace } = request;
  const attempts = trace.record.attempts;
  const last = attempts[attempts.length - 1];
  if (last?.error === "client_aborted" || request.signal.aborted) {
    trace.record.status = 499;
    trace.record.error = { type: "client_aborted", message: "Client closed the connection" };
    trace.finish();
    return new Response(null, { status: 499 });
  }
  const timedOut = last?.error === "timeout";
  const status = timedOut ? 504 : 502;
  const list = attempts.map((a) => `${a.provider} (${a.model}): ${describe(a)}`).join("; ");
  const message = `All ${attempts.length} attempt(s) failed: ${list}`;
  const code = timedOut ? "upstream_timeout" : "upstream_unavailable";
  return reject(request, status, message, code);
}

function describe(attempt: Attempt): string {
  if (attempt.error === "http_status") return `HTTP ${attempt.status}`;
  return attempt.error ?? "failed";
}
