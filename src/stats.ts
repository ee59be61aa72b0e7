import type { Attempt, AttemptError } from "./attempt.ts";
import { dialects, type TokenCounts } from "./providers/mod.ts";
import type { RequestRecord } from "./record.ts";

/** Why an attempt failed, in the few buckets operators alert on. */
export type FailureReason = "timeout" | "network" | "429" | "401" | "5xx" | "other";

/** Upper bounds of the latency histograms, in seconds, as Prometheus clients conventionally use. */
export const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
/** Where model names the config does not know, and no provider answered, are counted. */
const OTHER_MODELS = "(other)";
const MAX_MODEL_NAME = 256;

/** Recent samples kept per series for percentiles; old ones are overwritten. */
const RECENT = 1024;

/** A latency histogram with cumulative-ready buckets and a ring of recent values for percentiles. */
export class Histogram {
  counts = new Array<number>(BUCKETS.length + 1).fill(0);
  sum = 0;
  count = 0;
  #recent: number[] = [];
  #next = 0;

  observe(ms: number): void {
    const seconds = ms / 1000;
    let i = 0;
    while (i < BUCKETS.length && seconds > BUCKETS[i]) i++;
    this.counts[i]++;
    this.sum += seconds;
    this.count++;
    if (this.#recent.length < RECENT) this.#recent.push(ms);
    else this.#recent[this.#next] = ms;
    this.#next = (this.#next + 1) % RECENT;
  }

  /** Nearest-rank p50/p95/p99 in milliseconds over the recent samples; null when none. */
  percentiles(): { p50: number | null; p95: number | null; p99: number | null } {
    const sorted = [...this.#recent].sort((a, b) => a - b);
    const at = (q: number) =>
      sorted.length === 0 ? null : sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
    return { p50: at(0.5), p95: at(0.95), p99: at(0.99) };
  }
}

/** What the request log's writer counts, as the statistics show it. */
export interface LogCounts {
  readonly writeErrors: number;
  readonly droppedRecords: number;
}

export type LabelValue = string | number | null;

/** One combination of label values and its count. */
export interface LabeledSeries {
  readonly labels: readonly LabelValue[];
  value: number;
}

type LabelNode = Map<LabelValue, LabelNode | LabeledSeries>;

/**
 * A counter per combination of label values, as `/metrics` exports them. The combination is
 * found through a map per label, so counting one seen before builds no key.
 */
export class LabeledCounter {
  /** In the order first counted. */
  readonly series: LabeledSeries[] = [];
  #root: LabelNode = new Map();

  /** Adds `by` to the count of `labels`; every call for one counter passes as many labels. */
  add(labels: readonly LabelValue[], by: number): void {
    let node = this.#root;
    const last = labels.length - 1;
    for (let i = 0; i < last; i++) {
      let next = node.get(labels[i]) as LabelNode | undefined;
      if (next === undefined) node.set(labels[i], next = new Map());
      node = next;
    }
    let found = node.get(labels[last]) as LabeledSeries | undefined;
    if (found === undefined) {
      found = { labels: [...labels], value: 0 };
      node.set(labels[last], found);
      this.series.push(found);
    }
    found.value += by;
  }
}

/** Counters for one provider or one model. */
export interface SeriesStats {
  requests: number;
  successes: number;
  failures: Record<FailureReason, number>;
  fallbacks: number;
  tokens: TokenCounts;
  duration: Histogram;
  ttfb: Histogram;
}

function newSeries(): SeriesStats {
  return {
    requests: 0,
    successes: 0,
    failures: { timeout: 0, network: 0, "429": 0, "401": 0, "5xx": 0, other: 0 },
    fallbacks: 0,
    tokens: { input: 0, output: 0, cache_read: 0, cache_write: 0 },
    duration: new Histogram(),
    ttfb: new Histogram(),
  };
}

/** Sorts an attempt's failure into the reasons `/stats` reports. */
export function failureReason(status: number | null, error: AttemptError): FailureReason {
  if (error === "timeout") return "timeout";
  if (error === "connect_error" || error === "stream_interrupted") return "network";
  if (status === 429) return "429";
  if (status === 401) return "401";
  if (status !== null && status >= 500) return "5xx";
  return "other";
}

/**
 * Live, in-memory statistics fed by finished request records. Per provider, `requests` counts
 * attempts sent to it; per model, requests made for it. Tokens and latency go to the provider
 * that answered.
 */
export class Stats {
  readonly started = Date.now();
  readonly providers = new Map<string, SeriesStats>();
  readonly models = new Map<string, SeriesStats>();
  /** Per inbound key name, so usage can be told apart per client. */
  readonly clients = new Map<string, SeriesStats>();
  /** Requests by endpoint, provider, model and status: the counter `/metrics` exports. */
  readonly requests = new LabeledCounter();
  /** Attempts by provider and outcome (`ok`, or the attempt's error kind). */
  readonly attempts = new LabeledCounter();
  /** Tokens by answering provider, client model and kind. */
  readonly tokens = new LabeledCounter();
  /** Requests by inbound key name and status; tokens by key name and kind. */
  readonly clientRequests = new LabeledCounter();
  readonly clientTokens = new LabeledCounter();

  /**
   * `isConfigured` tells the model names the config knows (mapping keys, providers' `models`).
   * Other names a client sends are counted under `(other)` unless a provider answered them,
   * so made-up names cannot grow the statistics without bound.
   */
  constructor(private readonly isConfigured: (model: string) => boolean = () => true) {}

  #modelLabel(record: RequestRecord): string | null {
    const name = record.model;
    if (name === null) return null;
    const answered = record.provider !== null && record.status !== null && record.status < 400;
    const known = this.isConfigured(name) || answered;
    return known && name.length <= MAX_MODEL_NAME ? name : OTHER_MODELS;
  }

  add(record: RequestRecord): void {
    const label = this.#modelLabel(record);
    this.requests.add([record.endpoint, record.provider, label, record.status], 1);
    if (record.client !== null) this.clientRequests.add([record.client, record.status], 1);
    const model = label === null ? null : series(this.models, label);
    if (model !== null) model.requests++;
    const client = record.client === null ? null : series(this.clients, record.client);
    if (client !== null) {
      client.requests++;
      if (record.error === null) client.successes++;
    }
    record.attempts.forEach((attempt, i) => {
      const provider = series(this.providers, attempt.provider);
      provider.requests++;
      this.attempts.add([attempt.provider, outcomeOf(attempt)], 1);
      if (attempt.error === null) {
        provider.successes++;
      } else if (attempt.error !== "client_aborted") {
        provider.failures[failureReason(attempt.status, attempt.error)]++;
      }
      if (i < record.attempts.length - 1) provider.fallbacks++;
    });
    if (model !== null) {
      model.fallbacks += Math.max(0, record.attempts.length - 1);
      if (record.error === null) model.successes++;
      else {
        const last = record.attempts.at(-1);
        const reason = last?.error ? failureReason(last.status, last.error) : "other";
        model.failures[reason]++;
      }
    }
    const answered = record.provider === null ? null : series(this.providers, record.provider);
    const tokens = record.endpoint === null || record.usage === null
      ? null
      : dialects[record.endpoint].tokens(record.usage);
    for (const target of [answered, model, client]) {
      if (target === null) continue;
      if (record.duration_ms !== null) target.duration.observe(record.duration_ms);
      if (record.ttfb_ms !== null) target.ttfb.observe(record.ttfb_ms);
      if (tokens === null) continue;
      for (const kind of Object.keys(tokens) as (keyof TokenCounts)[]) {
        target.tokens[kind] += tokens[kind];
      }
    }
    if (tokens !== null) {
      for (const kind of Object.keys(tokens) as (keyof TokenCounts)[]) {
        this.tokens.add([record.provider, label, kind], tokens[kind]);
        if (record.client !== null) this.clientTokens.add([record.client, kind], tokens[kind]);
      }
    }
  }

  /** The `/stats` document; `log` gives the request log writer's counts. */
  toJSON(log: LogCounts): object {
    const view = (map: Map<string, SeriesStats>) =>
      Object.fromEntries(
        [...map].map(([name, s]) => [name, {
          requests: s.requests,
          successes: s.successes,
          failures: s.failures,
          fallbacks: s.fallbacks,
          tokens: s.tokens,
          duration_ms: s.duration.percentiles(),
          ttfb_ms: s.ttfb.percentiles(),
        }]),
      );
    let total = 0;
    for (const { value } of this.requests.series) total += value;
    return {
      uptime_s: Math.round((Date.now() - this.started) / 1000),
      requests: total,
      log_write_errors: log.writeErrors,
      log_dropped_records: log.droppedRecords,
      providers: view(this.providers),
      models: view(this.models),
      clients: view(this.clients),
    };
  }
}

/** An attempt's outcome label: `ok`, `client_aborted`, or its failure reason. */
function outcomeOf(attempt: Attempt): string {
  if (attempt.error === null || attempt.error === "client_aborted") return attempt.error ?? "ok";
  return failureReason(attempt.status, attempt.error);
}

function series(map: Map<string, SeriesStats>, name: string): SeriesStats {
  let found = map.get(name);
  if (found === undefined) {
    found = newSeries();
    map.set(name, found);
  }
  return found;
}
