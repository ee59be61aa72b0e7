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
 * Never sent to the client: the body goes out without a declared length (Deno sets its own),
 * and a provider's cookies are not the client's business.
 */
const RESPONSE_DROPPED = new Set([...HOP_BY_HOP, "content-length", "set-cookie"]);

/** Header names a `Connection` header lists: they too describe only that connection. */
function connectionScoped(headers: Headers): string[] {
  const connection = headers.get("connection");
  return connection === null ? [] : connection.toLowerCase().split(",").map((name) => name.trim());
}

/**
 * The client's end-to-end headers, with the provider's credentials in place of the client's, as
 * the plain record the upstream client sends.
 */
export function upstreamRequestHeaders(
  client: Headers,
  dialect: Dialect,
  apiKey: string | undefined,
): Record<string, string> {
  const named = connectionScoped(client);
  // No prototype: a client's header may be called `__proto__`.
  const headers: Record<string, string> = Object.create(null);
  // forEach, not for-of: Deno's Headers iterator lists and sorts all the fields again at every
  // step, about 8 times the cost for a client's usual handful.
  client.forEach((value, name) => {
    if (!REQUEST_DROPPED.has(name) && !named.includes(name)) headers[name] = value;
  });
  // The body is known to be JSON: say so, whatever (or nothing) the client's header said.
  headers["content-type"] = "application/json";
  dialect.prepareHeaders(headers, apiKey);
  return headers;
}

/**
 * The provider's end-to-end response headers followed by the router's own (`own`, lower-case
 * names, which take the place of any the provider sent under the same name), as the list a
 * `Response` takes. A provider's CORS headers are dropped too: cross-origin access is the
 * router's to grant. So are `x-llm-router-*` headers: those names are the router's.
 */
export function clientResponseHeaders(
  upstream: Headers,
  decoded: boolean,
  own: Record<string, string>,
): [string, string][] {
  const named = connectionScoped(upstream);
  const out: [string, string][] = [];
  upstream.forEach((value, name) => {
    if (RESPONSE_DROPPED.has(name) || named.includes(name) || Object.hasOwn(own, name)) return;
    // A body the upstream client decoded is plain; an encoding it could not undo stays labelled.
    if (decoded && name === "content-encoding") return;
    if (name.startsWith("access-control-") || name.startsWith("x-llm-router-")) return;
    out.push([name, value]);
  });
  for (const name in own) out.push([name, own[name]]);
  return out;
}

/** How long one attempt may take; `deadline` is on the `now()` clock. */
export interface AttemptLimits {
  firstByteMs: number;
  idleMs: number;
  deadline: number;
}

type TimeoutName = "first_byte" | "idle" | "total";

/** Something in flight with a time limit: an attempt, or a client body still arriving. */
export interface Deadline {
  /** Acts on a limit that is due at `now`; otherwise returns when the next one falls due. */
  check(now: number): number;
  /** Ends it at once, as shutdown does after its grace period. */
  abandon(reason: string): void;
}

/**
 * What is in flight with a time limit: shutdown abandons what is still running after its grace
 * period, and one shared timer, set for the soonest due limit, checks them all. A timer per
 * attempt (two or three, re-armed as chunks arrive) cost more than the rest of an attempt's
 * bookkeeping, and a long-lived signal in every attempt's `AbortSignal.any` kept a reference
 * per attempt. The timer is left to run out rather than cleared when nothing is in flight, so
 * one request after another does not set and clear one each.
 */
export class InFlight {
  #live = new Set<Deadline>();
  #stopped = new AbortController();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #wakeAt = Infinity;
  #stopping = false;
  readonly now: () => number;

  constructor(now: () => number = () => performance.now()) {
    this.now = now;
  }

  /** Fires when the router stops waiting; waits between attempts listen to it. */
  get signal(): AbortSignal {
    return this.#stopped.signal;
  }

  /** True once the server has begun to stop (before its grace period ends). */
  get stopping(): boolean {
    return this.#stopping;
  }

  beginStop(): void {
    this.#stopping = true;
  }

  /** Tracks `entry` until `delete`, checking it by `dueAt` at the latest. */
  add(entry: Deadline, dueAt: number): void {
    this.#live.add(entry);
    this.checkBy(dueAt);
  }

  delete(entry: Deadline): void {
    this.#live.delete(entry);
  }

  /** Makes sure the limits are checked at `at` (on the `now()` clock) or earlier. */
  checkBy(at: number): void {
    if (at >= this.#wakeAt) return;
    clearTimeout(this.#timer);
    this.#wakeAt = at;
    // setTimeout cannot wait longer than 2^31 - 1 ms; a later limit is checked again then.
    const delay = Math.min(Math.max(0, at - this.now()), 2 ** 31 - 1);
    this.#timer = setTimeout(() => this.#check(), delay);
    // A timer left to run out must not keep a finished process alive.
    Deno.unrefTimer(this.#timer);
  }

  #check(): void {
    this.#timer = undefined;
    this.#wakeAt = Infinity;
    const now = this.now();
    let next = Infinity;
    for (const entry of this.#live) next = Math.min(next, entry.check(now));
    if (next !== Infinity) this.checkBy(next);
  }

  abortAll(): void {
    this.#stopped.abort(new DOMException("Router is shutting down", "AbortError"));
    for (const entry of this.#live) entry.abandon("Router is shutting down");
  }

  /** Stops the timer, once the server has stopped. */
  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#wakeAt = Infinity;
  }
}

/**
 * The abort signal of one attempt: aborted when the client leaves or a timeout fires. The
 * first-byte timeout runs until the commit point; the idle timeout, once the body flows, fires
 * after a gap between chunks; the total one at the request's deadline. Aborting frees the
 * upstream connection at once.
 */
export class AttemptSignal implements Deadline {
  readonly signal: AbortSignal;
  #client: AbortSignal;
  #controller = new AbortController();
  #onClientAbort = () => this.#controller.abort(this.#client.reason);
  #firstByteAt: number;
  #deadline: number;
  #idleMs: number;
  #readSince = 0;
  #reading = false;
  #registry: InFlight;

  constructor(client: AbortSignal, limits: AttemptLimits, registry: InFlight) {
    this.#client = client;
    this.#registry = registry;
    this.#firstByteAt = registry.now() + limits.firstByteMs;
    this.#deadline = limits.deadline;
    this.#idleMs = limits.idleMs;
    this.signal = this.#controller.signal;
    if (client.aborted) this.#onClientAbort();
    else client.addEventListener("abort", this.#onClientAbort, { once: true });
    registry.add(this, Math.min(this.#firstByteAt, this.#deadline));
  }

  /** Fires a timeout that is due at `now`; otherwise returns when the next one falls due. */
  check(now: number): number {
    const idleAt = this.#reading ? this.#readSince + this.#idleMs : Infinity;
    const due = Math.min(this.#firstByteAt, this.#deadline, idleAt);
    if (now < due) return due;
    const name: TimeoutName = due === this.#firstByteAt
      ? "first_byte"
      : due === this.#deadline
      ? "total"
      : "idle";
    this.finish();
    if (!this.signal.aborted) {
      this.#controller.abort(new DOMException(`${name} timeout`, "TimeoutError"));
    }
    return Infinity;
  }

  /** The attempt reached its commit point: the first-byte timeout no longer applies. */
  commit(): void {
    this.#firstByteAt = Infinity;
  }

  /**
   * The relay starts (true) or ends (false) a read from upstream. The idle timeout counts only
   * while a read is pending: a client that reads slowly holds back the reads (backpressure), and
   * that is no fault of the provider's.
   */
  reading(pending: boolean): void {
    this.#reading = pending;
    if (!pending) return;
    this.#readSince = this.#registry.now();
    this.#registry.checkBy(this.#readSince + this.#idleMs);
  }

  /**
   * Ends the attempt: its timeouts and its interest in the client's signal end. Enough alone for
   * an answer read to its end, where nothing is left to abort.
   */
  finish(): void {
    this.#registry.delete(this);
    this.#client.removeEventListener("abort", this.#onClientAbort);
  }

  /** Ends the attempt and aborts whatever of it is still running. */
  abandon(reason = "Attempt abandoned"): void {
    this.finish();
    if (!this.signal.aborted) this.#controller.abort(new DOMException(reason, "AbortError"));
  }

  /** Which timeout ended the attempt, if one did. */
  get timedOut(): TimeoutName | null {
    const reason = this.signal.reason;
    if (!(reason instanceof DOMException) || reason.name !== "TimeoutError") return null;
    return reason.message.split(" ")[0] as TimeoutName;
  }

  /** Names what a failed fetch (or, with `otherwise`, a failed body read) ran into. */
  failureKind(otherwise: AttemptError = "connect_error"): AttemptError {
    if (this.#client.aborted) return "client_aborted";
    return this.timedOut === null ? otherwise : "timeout";
  }
}
