import {
  BUCKETS,
  type Histogram,
  type LabeledCounter,
  type LogCounts,
  type Stats,
} from "./stats.ts";

function escapeLabel(value: unknown): string {
  return String(value ?? "").replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll(
    "\n",
    "\\n",
  );
}

function labels(names: readonly string[], values: readonly unknown[]): string {
  return names.map((name, i) => `${name}="${escapeLabel(values[i])}"`).join(",");
}

/** Lines of one counter family. */
function counter(
  name: string,
  help: string,
  labelNames: readonly string[],
  values: LabeledCounter,
): string[] {
  const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} counter`];
  for (const series of values.series) {
    lines.push(`${name}{${labels(labelNames, series.labels)}} ${series.value}`);
  }
  return lines;
}

function histogram(
  name: string,
  help: string,
  series: [provider: string, histogram: Histogram][],
): string[] {
  const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`];
  for (const [provider, h] of series) {
    const label = `provider="${escapeLabel(provider)}"`;
    let cumulative = 0;
    BUCKETS.forEach((bound, i) => {
      cumulative += h.counts[i];
      lines.push(`${name}_bucket{${label},le="${bound}"} ${cumulative}`);
    });
    lines.push(`${name}_bucket{${label},le="+Inf"} ${h.count}`);
    lines.push(`${name}_sum{${label}} ${h.sum}`);
    lines.push(`${name}_count{${label}} ${h.count}`);
  }
  return lines;
}

/** The statistics in Prometheus' text exposition format (version 0.0.4). */
export function renderMetrics(stats: Stats, log: LogCounts): string {
  const providers = [...stats.providers];
  return [
    ...counter(
      "llm_router_requests_total",
      "Requests answered, by endpoint, answering provider, client model and status sent.",
      ["endpoint", "provider", "model", "status"],
      stats.requests,
    ),
    ...counter(
      "llm_router_upstream_attempts_total",
      "Attempts sent to providers, by outcome (ok or the failure kind).",
      ["provider", "outcome"],
      stats.attempts,
    ),
    ...counter(
      "llm_router_tokens_total",
      "Tokens reported in usage, by answering provider, client model and kind.",
      ["provider", "model", "kind"],
      stats.tokens,
    ),
    ...counter(
      "llm_router_client_requests_total",
      "Requests by inbound key name (never the key) and status.",
      ["client", "status"],
      stats.clientRequests,
    ),
    ...counter(
      "llm_router_client_tokens_total",
      "Tokens reported in usage, by inbound key name and kind.",
      ["client", "kind"],
      stats.clientTokens,
    ),
    ...histogram(
      "llm_router_request_duration_seconds",
      "Time from request to last byte, by answering provider.",
      providers.map(([name, s]) => [name, s.duration]),
    ),
    ...histogram(
      "llm_router_ttfb_seconds",
      "Time from request to first body byte, by answering provider.",
      providers.map(([name, s]) => [name, s.ttfb]),
    ),
    "# HELP llm_router_log_write_errors_total Request-log batches that could not be written.",
    "# TYPE llm_router_log_write_errors_total counter",
    `llm_router_log_write_errors_total ${log.writeErrors}`,
    "# HELP llm_router_log_dropped_records_total Records let go unwritten because the request-log queue was full.",
    "# TYPE llm_router_log_dropped_records_total counter",
    `llm_router_log_dropped_records_total ${log.droppedRecords}`,
    "",
  ].join("\n");
}
