import type { AttemptError } from "./attempt.ts";
import type { Dialect } from "./providers/mod.ts";

/** Headers that describe one connection, not the message (RFC 9110 section 7.6.1). */
const HOP_BY_HOP = [
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
];

/** Never sent upstream: the router sets its own length, encoding and credentials. */
const REQUEST_DROPPED = new Set([
  ...HOP_BY_HOP,
  "host",
  "content-length",
  "accept-encoding",
  "authorization",
  "x-api-key",
]);

/**
 * Never sent to the client: fetch has already decoded the body, so the provider's length and
 * encoding no longer describe it; a provider's cookies are not the client's business.
 */
const RESPONSE_DROPPED = new Set([
  ...HOP_BY_HOP,
  "content-length",
  "content-encoding",
  "set-cookie",
]);

function copyHeaders(from: Headers, dropped: ReadonlySet<string>): Headers {
  const named = (from.get("connection") ?? "").toLowerCase().split(",").map((name) => name.trim());
  const out = new Headers();
  for (const [name, value] of from) {
    if (!dropped.has(name) && !named.includes(name)) out.append(name, value);
  }
  return out;
}

/** The client's end-to-end headers, with the provider's credentials in place of the client's. */
export function upstreamRequestHeaders(
  client: Headers,
  dialect: Dialect,
  apiKey: string | undefined,
): Headers {
  const headers = copyHeaders(client, REQUEST_DROPPED);
  if (!headers.has("content-type")) headers.set("content-type", "application/json");
  dialect.prepareHeaders(headers, apiKey);
  return headers;
}

/** The provider's end-to-end response headers; the router's own are added by the caller. */
export function clientResponseHeaders(upstream: Headers): Headers {
  return copyHeaders(upstream, RESPONSE_DROPPED);
}

/**
 * The abort signal of one attempt: the client's own signal combined with the attempt's deadline
 * for reaching its commit point. Committing clears the deadline; the client's signal stays, so a
 * client that leaves still aborts the upstream request.
 */
export class AttemptSignal {
  readonly signal: AbortSignal;
  #client: AbortSignal;
  #deadline = new AbortController();
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(client: AbortSignal, timeoutMs: number) {
    this.#client = client;
    this.#timer = setTimeout(() => {
      this.#deadline.abort(new DOMException("Attempt timed out", "TimeoutError"));
    }, timeoutMs);
    this.signal = AbortSignal.any([client, this.#deadline.signal]);
  }

  /** Stops the commit deadline. */
  commit(): void {
    clearTimeout(this.#timer);
  }

  /** Aborts an attempt the router gives up on, freeing its connection at once. */
  abandon(): void {
    clearTimeout(this.#timer);
    if (!this.#deadline.signal.aborted) {
      this.#deadline.abort(new DOMException("Abandoned", "AbortError"));
    }
  }

  /** Names what a failed fetch (or, with `otherwise`, a failed body read) ran into. */
  failureKind(otherwise: AttemptError = "connect_error"): AttemptError {
    if (this.#client.aborted) return "client_aborted";
    const reason = this.#deadline.signal.reason;
    if (reason instanceof DOMException && reason.name === "TimeoutError") return "timeout";
    return otherwise;
  }
}
