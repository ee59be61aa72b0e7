import { type Attempt, type AttemptError, fallsBack } from "./attempt.ts";
import { spliceModel } from "./body.ts";
import type { Config } from "./config.ts";
import { type ProviderHealth, RETRY_AFTER_STATUSES, retryAfterMs } from "./health.ts";
import { type Candidate, candidatesFor, unservedModel } from "./plan.ts";
import type { Dialect, UsageInjection } from "./providers/mod.ts";
import type { Trace } from "./record.ts";
import { type PlainHead, readPlainHead, SseRelay } from "./relay.ts";
import { allFailed, clientGone, commitResponse, reject } from "./respond.ts";
import type { BodyReader, UpstreamClient, UpstreamResponse } from "./http_client.ts";
import { AttemptSignal, type InFlight, upstreamRequestHeaders } from "./upstream.ts";

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
  /** When the request arrived, on the `now()` clock: timeouts count from here. */
  arrived: number;
  /** Set when the router asks upstream for stream usage the client did not request. */
  usageInjection: UsageInjection | null;
}

/** Shared state and effects, injected so tests can drive clocks and count upstream calls. */
export interface RouterDeps {
  upstream: UpstreamClient;
  /** Monotonic milliseconds, for durations and deadlines. */
  now: () => number;
  health: ProviderHealth;
  /** The attempts in flight, which shutdown aborts after its grace period. */
  inFlight: InFlight;
}

/**
 * How much of a plain answer the tap keeps: enough for the log's cut and, up to 16 MiB, for the
 * usage at the end of a JSON body; a longer body is logged cut and without usage.
 */
function keepBytes(config: Config): number {
  const cap = config.logging.max_body_bytes;
  return cap === 0 ? Infinity : Math.max(cap, 16 * 1024 * 1024);
}

/** Reads a plain answer ahead of commit, with the length its provider declared, if any. */
function readAhead(
  body: BodyReader,
  headers: Headers,
  signal: AttemptSignal,
): Promise<PlainHead> {
  const length = Number(headers.get("content-length") ?? NaN);
  const declared = Number.isFinite(length) ? length : null;
  return readPlainHead(body, declared, (pending) => signal.reading(pending));
}

/** How one attempt ended when it did not commit. */
interface Failure {
  candidate: Candidate;
  error: AttemptError;
  /** When the provider said it takes requests again (`Retry-After`), as epoch ms. */
  retryAfterUntil: number | null;
  status: number | null;
  /** An answer with a fallback status, kept unread in case it is the one the client gets. */
  kept: { upstream: UpstreamResponse; signal: AttemptSignal } | null;
}

/** Lets go of a kept answer that the client will not get after all. */
async function release(failure: Failure | null): Promise<void> {
  if (failure?.kept == null) return;
  failure.kept.signal.abandon();
  await failure.kept.upstream.body?.cancel().catch(() => {});
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/** Exponential backoff with full jitter before same-provider retry `n` (1-based). */
function backoff(retries: Config["retries"], n: number): number {
  return Math.random() * Math.min(retries.max_backoff_ms, retries.backoff_ms * 2 ** (n - 1));
}

/**
 * Tries the candidates in order until one commits, and returns the client's response. Nothing
 * reaches the client before the commit, so a failed attempt leaves no trace in its answer.
 * Providers cooling down are passed over (listed in `skipped`) unless nothing else is left; when
 * all else has failed, the router waits for the soonest one to recover if that fits in the
 * request's time, rather than failing at once.
 */
export async function forward(
  config: Config,
  request: ForwardRequest,
  deps: RouterDeps,
): Promise<Response> {
  const { dialect, model, trace } = request;
  const candidates = candidatesFor(config, dialect, model);
  if (candidates.length === 0) {
    return reject(request, 404, unservedModel(dialect, model), "model_not_found");
  }
  const coolingUntil = (c: Candidate) => deps.health.coolingUntil(c.provider.name);
  let queue = candidates.filter((c) => coolingUntil(c) === null);
  let cooling = candidates.filter((c) => coolingUntil(c) !== null);
  if (queue.length === 0) {
    queue = cooling.sort((a, b) => coolingUntil(a)! - coolingUntil(b)!);
    cooling = [];
  }
  for (const name of new Set(cooling.map((c) => c.provider.name))) {
    trace.record.skipped.push({ provider: name, reason: "cooldown" });
  }
  const deadline = request.arrived + config.timeouts.total_ms;
  // Candidates worth waiting for, with when they recover: those skipped for a cooldown, and
  // those that answered with a Retry-After. Each is waited for at most once.
  const recovering = new Map<Candidate, number>(cooling.map((c) => [c, coolingUntil(c)!]));
  const waited = new Set<Candidate>();
  let failure: Failure | null = null;
  for (;;) {
    if (deps.now() >= deadline) break;
    let candidate = queue.shift();
    if (candidate === undefined) {
      // A client on a retry of its own waits by itself, for the Retry-After it is passed: a
      // wait here too would double each of its waits and its calls on a limited provider.
      if (retryingClient(request.headers)) break;
      candidate = await waitForRecovery(recovering, waited, deadline, request, deps);
      if (candidate === undefined) break;
    }
    await release(failure);
    const outcome = await tryCandidate(config, request, candidate, queue.length === 0, deps);
    if (outcome instanceof Response) return outcome;
    failure = outcome;
    if (outcome.retryAfterUntil !== null) recovering.set(candidate, outcome.retryAfterUntil);
    if (request.signal.aborted || deps.inFlight.signal.aborted) break;
  }
  if (request.signal.aborted) {
    await release(failure);
    return clientGone(trace);
  }
  if (failure?.kept) {
    // The last answer, a fallback status with nothing left to try, goes out unchanged.
    const { upstream, signal } = failure.kept;
    signal.commit();
    let head: PlainHead | null = null;
    if (upstream.body !== null) {
      try {
        head = await readAhead(upstream.body, upstream.headers, signal);
      } catch {
        signal.abandon();
        if (request.signal.aborted) return clientGone(trace);
        // The answer broke off: its attempt says how, so a timeout gives 504, not 502.
        const kept = trace.record.attempts.at(-1);
        if (kept !== undefined) kept.error = signal.failureKind("stream_interrupted");
        return allFailed(request);
      }
    }
    return commitResponse(
      {
        dialect,
        trace,
        candidate: failure.candidate,
        signal,
        close: () => {},
        onOutcome: () => {},
        keepBytes: keepBytes(config),
      },
      upstream,
      head,
    );
  }
  return allFailed(request);
}

/** The official SDKs number their own retries; on the first try the count is 0. */
function retryingClient(headers: Headers): boolean {
  return Number(headers.get("x-stainless-retry-count")) > 0;
}

/**
 * With nothing left to try, picks the candidate that recovers soonest and waits for it, if
 * that fits before the request's deadline; undefined when none does.
 */
async function waitForRecovery(
  recovering: Map<Candidate, number>,
  waited: Set<Candidate>,
  deadline: number,
  request: ForwardRequest,
  deps: RouterDeps,
): Promise<Candidate | undefined> {
  let best: { candidate: Candidate; wait: number } | undefined;
  for (const [candidate, until] of recovering) {
    const wait = Math.max(0, until - Date.now());
    if (!waited.has(candidate) && (best === undefined || wait < best.wait)) {
      best = { candidate, wait };
    }
  }
  if (best === undefined || deps.now() + best.wait >= deadline) return undefined;
  waited.add(best.candidate);
  await sleep(best.wait, AbortSignal.any([request.signal, deps.inFlight.signal]));
  return request.signal.aborted || deps.inFlight.signal.aborted ? undefined : best.candidate;
}

/**
 * One candidate, with its same-provider retries (connection errors and 5xx only, with
 * exponential backoff and jitter): a committed response, or how it failed.
 */
async function tryCandidate(
  config: Config,
  request: ForwardRequest,
  candidate: Candidate,
  last: boolean,
  deps: RouterDeps,
): Promise<Response | Failure> {
  let body = candidate.model === request.model
    ? request.body
    : spliceModel(request.body, candidate.model);
  if (request.usageInjection !== null) body = request.usageInjection.splice(body);
  for (let retry = 0;; retry++) {
    const retriesLeft = retry < config.retries.per_provider;
    const outcome = await attempt(config, request, candidate, body, last, deps);
    if (outcome instanceof Response) return outcome;
    const retryable = outcome.error === "connect_error" ||
      (outcome.status !== null && outcome.status >= 500);
    const wait = backoff(config.retries, retry + 1);
    if (
      !retriesLeft || !retryable || deps.now() + wait >= request.arrived + config.timeouts.total_ms
    ) {
      return outcome;
    }
    await release(outcome);
    await sleep(wait, AbortSignal.any([request.signal, deps.inFlight.signal]));
    if (request.signal.aborted || deps.inFlight.signal.aborted) return outcome;
  }
}

async function attempt(
  config: Config,
  request: ForwardRequest,
  candidate: Candidate,
  body: Uint8Array<ArrayBuffer>,
  last: boolean,
  deps: RouterDeps,
): Promise<Response | Failure> {
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
  const failed = (error: AttemptError, kept: Failure["kept"], headers: Headers | null): Failure => {
    close(error);
    const status = record.status;
    // Running out of the request's own time says nothing about the provider.
    if (signal.timedOut !== "total") {
      deps.health.failed(provider.name, { error, status, headers }, config.cooldown);
    }
    let retryAfterUntil: number | null = null;
    if (headers !== null && status !== null && RETRY_AFTER_STATUSES.has(status)) {
      const wait = retryAfterMs(headers, Date.now());
      if (wait !== null) {
        retryAfterUntil = Date.now() + Math.min(wait, config.cooldown.max_retry_after_ms);
      }
    }
    return { error, status, kept, candidate, retryAfterUntil };
  };
  const signal = new AttemptSignal(request.signal, {
    firstByteMs: provider.timeouts.first_byte_ms,
    idleMs: provider.timeouts.idle_ms,
    deadline: request.arrived + provider.timeouts.total_ms,
  }, deps.inFlight);
  let upstream: UpstreamResponse;
  try {
    upstream = await deps.upstream({
      url: provider.base_url + request.upstreamPath + request.search,
      headers: upstreamRequestHeaders(request.headers, request.dialect, provider.api_key),
      body,
      signal: signal.signal,
    });
  } catch {
    signal.abandon();
    return failed(signal.failureKind(), null, null);
  }
  record.status = upstream.status;
  if (upstream.status < 200 || upstream.status > 599) {
    // Not a status a Response can carry on: no answer at all, as far as the client is concerned.
    signal.abandon();
    await upstream.body?.cancel().catch(() => {});
    return failed("http_status", null, null);
  }
  if (fallsBack(upstream.status)) {
    if (last) return failed("http_status", { upstream, signal }, upstream.headers);
    signal.abandon();
    await upstream.body?.cancel().catch(() => {});
    return failed("http_status", null, upstream.headers);
  }
  const context = {
    dialect: request.dialect,
    trace: request.trace,
    candidate,
    signal,
    close,
    keepBytes: keepBytes(config),
    onOutcome: (error: AttemptError | null) => {
      if (error === null) deps.health.succeeded(provider.name);
      else {deps.health.failed(
          provider.name,
          { error, status: null, headers: null },
          config.cooldown,
        );}
    },
  };
  // Only a success is a stream; an error labelled as one is a body like any other. Media types
  // are case-insensitive.
  const isSse = upstream.status < 300 &&
    (upstream.headers.get("content-type") ?? "").toLowerCase().includes("text/event-stream");
  if (upstream.body === null) {
    signal.commit();
    return commitResponse(context, upstream, null);
  }
  if (!isSse) {
    signal.commit();
    let head: PlainHead;
    try {
      head = await readAhead(upstream.body, upstream.headers, signal);
    } catch {
      signal.abandon();
      return failed(signal.failureKind("stream_interrupted"), null, null);
    }
    return commitResponse(context, upstream, head);
  }
  const relay = new SseRelay(upstream.body, request.dialect, {
    filter: request.usageInjection?.filter ?? null,
    onReading: (pending) => signal.reading(pending),
    textLimit: config.logging.max_body_bytes,
  });
  if (last) {
    relay.onFirstOutput = () => signal.commit();
    return commitResponse(context, upstream, relay);
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
    return failed(verdict, null, null);
  }
  signal.commit();
  return commitResponse(context, upstream, relay);
}
