import type { Attempt } from "./attempt.ts";
import type { JsonObject } from "./json.ts";
import type { ApiType } from "./providers/mod.ts";

/** A provider passed over without an attempt, and why. */
export interface Skipped {
  provider: string;
  reason: string;
}

/** One line of the request log. Every field is always present; null means not known. */
export interface RequestRecord {
  ts: string;
  request_id: string;
  endpoint: ApiType | null;
  path: string;
  client: string | null;
  model: string | null;
  upstream_model: string | null;
  provider: string | null;
  stream: boolean | null;
  status: number | null;
  duration_ms: number | null;
  ttfb_ms: number | null;
  attempts: Attempt[];
  skipped: Skipped[];
  retries: number;
  usage: JsonObject | null;
  request: unknown;
  response: unknown;
  stream_events: number | null;
  stream_complete: boolean | null;
  bytes_forwarded: number;
  error: { type: string; message: string } | null;
}

/**
 * The record of one request while it is under way. Timings are taken from one monotonic clock,
 * and `finish` hands the record on exactly once, however many paths (end, error, cancel) reach it.
 */
export class Trace {
  readonly record: RequestRecord;
  #started: number;
  #now: () => number;
  #onFinish: (record: RequestRecord, complete: (() => void) | undefined) => void;
  #finished = false;

  constructor(
    init: { requestId: string; path: string; now: () => number },
    onFinish: (record: RequestRecord, complete: (() => void) | undefined) => void,
  ) {
    this.#now = init.now;
    this.#started = init.now();
    this.#onFinish = onFinish;
    this.record = {
      ts: new Date().toISOString(),
      request_id: init.requestId,
      endpoint: null,
      path: init.path,
      client: null,
      model: null,
      upstream_model: null,
      provider: null,
      stream: null,
      status: null,
      duration_ms: null,
      ttfb_ms: null,
      attempts: [],
      skipped: [],
      retries: 0,
      usage: null,
      request: null,
      response: null,
      stream_events: null,
      stream_complete: null,
      bytes_forwarded: 0,
      error: null,
    };
  }

  /** Milliseconds since the request arrived. */
  elapsed(): number {
    return Math.round((this.#now() - this.#started) * 100) / 100;
  }

  /** Notes the first byte of the body going out to the client. */
  markFirstByte(): void {
    this.record.ttfb_ms ??= this.elapsed();
  }

  get finished(): boolean {
    return this.#finished;
  }

  /**
   * Ends the record now. `complete`, when given, fills in what can wait until the answer has
   * gone out (what the tap reads from the body); it runs before the statistics and the log see
   * the record.
   */
  finish(complete?: () => void): void {
    if (this.#finished) return;
    this.#finished = true;
    const record = this.record;
    record.duration_ms = this.elapsed();
    record.retries = Math.max(0, record.attempts.length - 1);
    this.#onFinish(record, complete);
  }
}
