import type { AttemptError } from "./attempt.ts";
import type { Config } from "./config.ts";

/** What an operator (or a load balancer) sees of one provider at `GET /health/providers`. */
export interface ProviderState {
  name: string;
  state: "ok" | "cooling_down";
  cooling_until: string | null;
  recent_failures: number;
  last_error: { kind: AttemptError; status: number | null; at: string } | null;
}

interface Entry {
  failures: number[];
  coolingUntil: number;
  lastError: ProviderState["last_error"];
}

/** Statuses whose `Retry-After` tells when the provider will take requests again. */
export const RETRY_AFTER_STATUSES: ReadonlySet<number> = new Set([429, 503, 529]);

/**
 * Reads `retry-after-ms` (milliseconds) or `Retry-After` (seconds or an HTTP date) from an
 * answer, in milliseconds from `nowEpochMs`; null when absent or unreadable.
 */
export function retryAfterMs(headers: Headers, nowEpochMs: number): number | null {
  const ms = Number(headers.get("retry-after-ms") ?? NaN);
  if (Number.isFinite(ms) && ms >= 0) return ms;
  const value = headers.get("retry-after");
  if (value === null) return null;
  const seconds = Number(value);
  if (value.trim() !== "" && Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - nowEpochMs);
}

/** Failures that say the provider, not the request, is in trouble. */
function countsAgainst(error: AttemptError, status: number | null): boolean {
  if (error === "timeout" || error === "connect_error" || error === "stream_interrupted") {
    return true;
  }
  return error === "http_status" && status !== null && (status === 429 || status >= 500);
}

/**
 * Per-provider circuit state, kept across config reloads by provider name. A provider that
 * fails `cooldown.failures` times within `cooldown.window_ms` is passed over for
 * `cooldown.duration_ms`; a `Retry-After` on a 429/503/529 sets its cooldown directly. Times are
 * epoch milliseconds from the injected clock, so tests can drive them.
 */
export class ProviderHealth {
  #entries = new Map<string, Entry>();
  #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  #entry(name: string): Entry {
    let entry = this.#entries.get(name);
    if (entry === undefined) {
      entry = { failures: [], coolingUntil: 0, lastError: null };
      this.#entries.set(name, entry);
    }
    return entry;
  }

  /** The epoch ms until which `name` is cooling down, or null when it is not. */
  coolingUntil(name: string): number | null {
    const until = this.#entries.get(name)?.coolingUntil ?? 0;
    return until > this.#now() ? until : null;
  }

  succeeded(name: string): void {
    const entry = this.#entries.get(name);
    if (entry !== undefined) entry.failures = [];
  }

  /** Records a failed attempt; `headers` are the provider's answer's, when it sent one. */
  failed(
    name: string,
    failure: { error: AttemptError; status: number | null; headers: Headers | null },
    cooldown: Config["cooldown"],
  ): void {
    const { error, status, headers } = failure;
    if (error === "client_aborted") return;
    const now = this.#now();
    const entry = this.#entry(name);
    entry.lastError = { kind: error, status, at: new Date(now).toISOString() };
    if (!countsAgainst(error, status)) return;
    if (headers !== null && status !== null && RETRY_AFTER_STATUSES.has(status)) {
      const wait = retryAfterMs(headers, now);
      if (wait !== null) {
        entry.coolingUntil = now + Math.min(wait, cooldown.max_retry_after_ms);
        return;
      }
    }
    entry.failures = entry.failures.filter((at) => at > now - cooldown.window_ms);
    entry.failures.push(now);
    if (entry.failures.length >= cooldown.failures) {
      entry.coolingUntil = now + cooldown.duration_ms;
      entry.failures = [];
    }
  }

  /** The state of each named provider, for `GET /health/providers`. */
  report(names: readonly string[]): ProviderState[] {
    return names.map((name) => {
      const entry = this.#entries.get(name);
      const until = this.coolingUntil(name);
      return {
        name,
        state: until === null ? "ok" : "cooling_down",
        cooling_until: until === null ? null : new Date(until).toISOString(),
        recent_failures: entry?.failures.length ?? 0,
        last_error: entry?.lastError ?? null,
      };
    });
  }
}
