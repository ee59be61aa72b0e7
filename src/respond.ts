import { type Attempt, type AttemptError, fallsBack } from "./attempt.ts";
import type { UpstreamResponse } from "./http_client.ts";
import type { Candidate } from "./plan.ts";
import type { Dialect } from "./providers/mod.ts";
import type { Trace } from "./record.ts";
import {
  type BodyRead,
  type PlainHead,
  type RelayEnd,
  type RelayHooks,
  relayPlainBody,
  SseRelay,
} from "./relay.ts";
import { type AttemptSignal, clientResponseHeaders } from "./upstream.ts";

/**
 * Answers with the router's own error in the endpoint's format, and finishes the record with it.
 * `code` names the failure in both the body and the record's `error.type`.
 */
export function reject(
  request: { dialect: Dialect; trace: Trace },
  status: number,
  message: string,
  code: string,
  headers: Record<string, string> = {},
): Response {
  const { dialect, trace } = request;
  const body = dialect.errorBody(status, message, code);
  trace.record.status = status;
  trace.record.error = { type: code, message };
  trace.record.response = body;
  trace.markFirstByte();
  trace.finish();
  const id = trace.record.request_id;
  return Response.json(body, {
    status,
    headers: { ...headers, "x-request-id": id, [dialect.requestIdHeader]: id },
  });
}

/** The record of a client that left before any answer reached it. */
export function clientGone(trace: Trace): Response {
  trace.record.status = 499;
  trace.record.error = { type: "client_aborted", message: "Client closed the connection" };
  trace.finish();
  return new Response(null, { status: 499 });
}

/** Every attempt failed before any provider answered usably: 502 or 504 listing them. */
export function allFailed(request: { dialect: Dialect; trace: Trace }): Response {
  const attempts = request.trace.record.attempts;
  const timedOut = attempts.at(-1)?.error === "timeout" || attempts.length === 0;
  const list = attempts.map((a) => `${a.provider} (${a.model}): ${describe(a)}`).join("; ");
  const message = attempts.length === 0
    ? "The request's time ran out before any provider could be tried"
    : `All ${attempts.length} attempt(s) failed: ${list}`;
  const code = timedOut ? "upstream_timeout" : "upstream_unavailable";
  return reject(request, timedOut ? 504 : 502, message, code);
}

function describe(attempt: Attempt): string {
  if (attempt.error === "http_status") return `HTTP ${attempt.status}`;
  return attempt.error ?? "failed";
}

/** What the commit needs besides the upstream answer. */
export interface CommitContext {
  dialect: Dialect;
  trace: Trace;
  candidate: Candidate;
  signal: AttemptSignal;
  /** Closes the attempt's record entry with its outcome. */
  close(error: AttemptError | null): void;
  /** Tells provider health how the committed answer ended. */
  onOutcome(error: AttemptError | null): void;
  /** How much of a plain body to keep for the record. */
  keepBytes: number;
}

/**
 * Hands the provider's answer to the client: its status, end-to-end headers and body bytes as
 * they come, plus the router's own headers. The record is finished when the body ends.
 */
export function commitResponse(
  context: CommitContext,
  upstream: UpstreamResponse,
  body: SseRelay | PlainHead | null,
): Response {
  const { trace, candidate, signal } = context;
  const record = trace.record;
  record.provider = candidate.provider.name;
  record.upstream_model = candidate.model;
  record.status = upstream.status;
  const own: Record<string, string> = {
    "x-request-id": record.request_id,
    "x-llm-router-provider": candidate.provider.name,
    "x-llm-router-attempts": String(record.attempts.length),
  };
  const upstreamRequestId = upstream.headers.get("x-request-id");
  if (upstreamRequestId !== null) own["x-llm-router-upstream-request-id"] = upstreamRequestId;
  const headers = clientResponseHeaders(upstream.headers, upstream.decoded, own);
  const httpError = upstream.status >= 400;
  const hooks: RelayHooks = {
    onFirstByte: () => trace.markFirstByte(),
    onReading: (pending) => signal.reading(pending),
    failureKind: () => signal.failureKind("stream_interrupted"),
    onEnd: (end: RelayEnd) => {
      if (end.error === null) signal.finish();
      else signal.abandon();
      context.close(end.error ?? (httpError ? "http_status" : null));
      if (!httpError) context.onOutcome(end.error);
      record.stream_events = end.streamEvents;
      record.stream_complete = end.streamComplete;
      record.bytes_forwarded = end.bytesForwarded;
      if (end.error === "client_aborted") record.status = 499;
      trace.finish(() => {
        const read = end.read();
        record.usage = read.usage;
        record.response = read.response;
        record.error = recordError(end, read, upstream.status);
      });
    },
  };
  if (body === null) {
    trace.markFirstByte();
    hooks.onEnd({
      error: null,
      message: null,
      read: () => ({ usage: null, response: null }),
      streamEvents: null,
      streamComplete: null,
      bytesForwarded: 0,
      malformedEvents: null,
    });
    return responseWith(null, { status: upstream.status }, headers);
  }
  const clientBody = body instanceof SseRelay
    ? body.clientStream(hooks)
    : relayPlainBody(body, context.dialect, hooks, context.keepBytes);
  // A reason phrase Response cannot carry (control bytes) is left out rather than thrown on.
  const statusText = /^[\t\x20-\x7e\x80-\xff]*$/.test(upstream.statusText)
    ? upstream.statusText
    : "";
  return responseWith(clientBody, { status: upstream.status, statusText }, headers);
}

/**
 * A `Response` whose header fields are appended once it exists: Deno converts a `headers` init
 * through WebIDL sequences, about four times the cost of appending the same fields.
 */
function responseWith(
  // Bodies whose constructor sets no content-type of its own, which the appended one would join.
  body: Uint8Array<ArrayBuffer> | ReadableStream<Uint8Array> | null,
  init: ResponseInit,
  headers: [string, string][],
): Response {
  const response = new Response(body, init);
  const fields = response.headers;
  for (const [name, value] of headers) fields.append(name, value);
  return response;
}

/** The record's `error` for a committed answer: what went wrong, or what looked wrong. */
function recordError(
  end: RelayEnd,
  read: BodyRead,
  status: number,
): { type: string; message: string } | null {
  if (end.error !== null) return { type: end.error, message: end.message ?? end.error };
  if (status >= 400 || fallsBack(status)) {
    return { type: "http_status", message: `Provider answered ${status}` };
  }
  if (end.malformedEvents !== null && end.malformedEvents > 0) {
    const message = `${end.malformedEvents} stream event(s) could not be parsed`;
    return { type: "malformed_stream", message };
  }
  if (end.malformedEvents === null && typeof read.response === "string" && status < 300) {
    return { type: "malformed_response", message: "Provider answered a body that is not JSON" };
  }
  return null;
}
