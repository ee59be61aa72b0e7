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

function copyHeaders(
  from: Headers,
  dropped: ReadonlySet<string>,
  droppedPrefix?: string,
): Headers {
  const named = (from.get("connection") ?? "").toLowerCase().split(",").map((name) => name.trim());
  const out = new Headers();
  for (const [name, value] of from) {
    if (dropped.has(name) || named.includes(name)) continue;
    if (droppedPrefix !== undefined && name.startsWith(droppedPrefix)) continue;
    out.append(name, value);
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
  // The body is known to be JSON: say so, whatever (or nothing) the client's header said.
  headers.set("content-type", "application/json");
  dialect.prepareHeaders(headers, apiKey);
  return headers;
}

/**
 * The provider's end-to-end response headers; the router's own are added by the caller. A
 * provider's CORS headers are dropped too: cross-origin access is the router's to grant.
 */
export function clientResponseHeaders(upstream: Headers): Headers {
  return copyHeaders(upstream, RESPONSE_DROPPED, "access-control-");
}

/** How long one attempt may take; `deadline` is on the `now()` clock. */
export interface AttemptLimits {
  firstByteMs: number;
  idleMs: number;
  deadline: number;
}

type TimeoutName = "first_byte" | "idle" | "total";

/**
 * The attempts in flight, so that shutdown can abort those still running after its grace
 * period. A registry rather than one more signal in every attempt's `AbortSignal.any`: a
 * long-lived source signal keeps a reference to each dependent it ever had.
 */
export class InFlight {
  #live = new Set<AttemptSignal>();
  #stopping = new AbortController();

  /** Fires when the router stops waiting; waits between attempts listen to it. */
  get signal(): AbortSignal {
    return this.#stopping.signal;
  }

  add(attempt: AttemptSignal): void {
    this.#live.add(attempt);
  }

  delete(attempt: AttemptSignal): void {
    this.#live.delete(attempt);
  }

  abortAll(): void {
    this.#stopping.abort(new DOMException("Router is shutting down", "AbortError"));
    for (const attempt of this.#live) attempt.abandon("Router is shutting down");
  }
}

/**
 * The abort signal of one attempt: the client's own signal combined with the attempt's
 * timeouts. The first-byte timeout runs until the commit point; the idle timeout, once the body
 * flows, fires after a gap between chunks; the total one at the request's deadline. Aborting
 * frees the upstream connection at once.
 */
export class AttemptSignal {
  readonly signal: AbortSignal;
  #client: AbortSignal;
  #timeout = new AbortController();
  #timers: ReturnType<typeof setTimeout>[] = [];
  #firstByte: ReturnType<typeof setTimeout> | undefined;
  #idle: ReturnType<typeof setTimeout> | undefined;
  #limits: AttemptLimits;
  #now: () => number;
  #lastActivity = 0;
  #reading = false;
  #registry: InFlight;

  constructor(
    client: AbortSignal,
    limits: AttemptLimits,
    options: { now: () => number; registry: InFlight },
  ) {
    this.#client = client;
    this.#limits = limits;
    this.#now = options.now;
    this.#registry = options.registry;
    this.#firstByte = setTimeout(() => this.#fire("first_byte"), limits.firstByteMs);
    const total = Math.max(0, limits.deadline - this.#now());
    this.#timers.push(setTimeout(() => this.#fire("total"), total));
    this.signal = AbortSignal.any([client, this.#timeout.signal]);
    this.#registry.add(this);
  }

  #fire(name: TimeoutName): void {
    this.#clear();
    if (!this.#timeout.signal.aborted) {
      this.#timeout.abort(new DOMException(`${name} timeout`, "TimeoutError"));
    }
  }

  #clear(): void {
    clearTimeout(this.#firstByte);
    clearTimeout(this.#idle);
    for (const timer of this.#timers) clearTimeout(timer);
  }

  /** The attempt reached its commit point: the first-byte timeout no longer applies. */
  commit(): void {
    clearTimeout(this.#firstByte);
  }

  /**
   * The relay starts (true) or ends (false) a read from upstream. The idle timeout counts only
   * while a read is pending: a client that reads slowly holds back the reads (backpressure), and
   * that is no fault of the provider's. The timer is re-armed lazily, not once per chunk.
   */
  reading(pending: boolean): void {
    this.#reading = pending;
    this.#lastActivity = this.#now();
    if (pending && this.#idle === undefined) this.#armIdle(this.#limits.idleMs);
  }

  #armIdle(ms: number): void {
    this.#idle = setTimeout(() => {
      this.#idle = undefined;
      if (!this.#reading) return;
      const quiet = this.#now() - this.#lastActivity;
      if (quiet >= this.#limits.idleMs - 1) this.#fire("idle");
      else this.#armIdle(this.#limits.idleMs - quiet);
    }, ms);
  }

  /** Ends the attempt's timers and aborts whatever of it is still running. */
  abandon(reason = "Attempt abandoned"): void {
    this.#clear();
    this.#registry.delete(this);
    if (!this.#timeout.signal.aborted) this.#timeout.abort(new DOMException(reason, "AbortError"));
  }

  /** Which timeout ended the attempt, if one did. */
  get timedOut(): TimeoutName | null {
    const reason = this.#timeout.signal.reason;
    if (!(reason instanceof DOMException) || reason.name !== "TimeoutError") return null;
    return reason.message.split(" ")[0] as TimeoutName;
  }

  /** Names what a failed fetch (or, with `otherwise`, a failed body read) ran into. */
  failureKind(otherwise: AttemptError = "connect_error"): AttemptError {
    if (this.#client.aborted) return "client_aborted";
    return this.timedOut === null ? otherwise : "timeout";
  }
}
