/** Why an attempt did not produce the answer; null on an attempt that did. */
export type AttemptError =
  | "connect_error"
  | "timeout"
  | "http_status"
  | "error_event"
  | "stream_interrupted"
  | "client_aborted";

/** One try of one (provider, model) pair, as the log record lists it. */
export interface Attempt {
  provider: string;
  model: string;
  status: number | null;
  error: AttemptError | null;
  duration_ms: number;
}

/**
 * Statuses that say "this provider, not this request": another provider may well succeed.
 * Every 5xx (Anthropic's 529 included) falls back too. Anything else is the client's own error
 * and goes back to it unchanged.
 */
const FALLBACK_STATUSES: ReadonlySet<number> = new Set([401, 403, 404, 408, 409, 429]);

/** Whether an upstream answer with this status should make the router try the next candidate. */
export function fallsBack(status: number): boolean {
  return status >= 500 || FALLBACK_STATUSES.has(status);
}
