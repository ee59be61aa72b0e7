/**
 * Live statistics end to end: `/stats` counts and percentiles after a scripted mix of successes,
 * fallbacks and failures; the latency histogram on its own; `/metrics` read back with a strict
 * parser of the Prometheus text format; and the OpenTelemetry span attributes of a real process
 * exporting OTLP/JSON to a collector started by the test.
 */
import assert from "node:assert/strict";
import { createHandler } from "../src/app.ts";
import { parseConfig } from "../src/config.ts";
import type { RequestRecord } from "../src/record.ts";
import { BUCKETS, failureReason, Histogram } from "../src/stats.ts";
import {
  closedPort,
  type MockReply,
  type MockRequest,
  type MockUpstream,
  openaiCompletion,
  openaiStreamChunks,
  sseHeaders,
  startMockUpstream,
} from "../tools/mock_upstream.ts";
import { provider, type RunningRouter, spawnRouter, startRouter } from "./harness.ts";

// deno-lint-ignore no-explicit-any
type Json = any;
type Api = "openai" | "anthropic";

const fixture = (name: string) => Deno.readTextFile(new URL(`./fixtures/${name}`, import.meta.url));

const ERRORS: Json = JSON.parse(await fixture("errors.json"));
/** The fixture completion with a cache hit, so `cache_read` is not trivially zero. */
const OPENAI_COMPLETION: Json = JSON.parse(await fixture("openai_chat_completion.json"));
OPENAI_COMPLETION.usage.prompt_tokens_details.cached_tokens = 8;
const OPENAI_STREAM = await fixture("openai_chat_stream_usage.sse");
const ANTHROPIC_MESSAGE: Json = JSON.parse(await fixture("anthropic_message.json"));
const ANTHROPIC_STREAM = await fixture("anthropic_messages_stream.sse");
const ANTHROPIC_TOOL_STREAM = await fixture("anthropic_messages_stream_tool_use.sse");

/** A model name that needs every escape of the exposition format: quote, backslash, newline. */
const WEIRD_MODEL = 'claude"q\\x\ny';

const ROUTE: Record<Api, string> = {
  openai: "/openai/v1/chat/completions",
  anthropic: "/anthropic/v1/messages",
};

/** An SSE fixture as one write per event, as a real upstream sends it. */
const events = (text: string) => text.split(/(?<=\n\n)/);

const modelOf = (req: MockRequest) => (req.json as { model?: string } | undefined)?.model;

/** The failing upstream: what goes wrong depends on the model asked for. */
function flakyReply(req: MockRequest): MockReply {
  switch (modelOf(req)) {
    case "gpt-429":
      // No Retry-After: with one, the provider would cool down and later steps would skip it.
      return { status: 429, body: ERRORS.openai["429"] };
    case "gpt-timeout":
      return { hang: "headers" };
    case "gpt-400":
      return { status: 400, body: ERRORS.openai["400"] };
    case "claude-plain":
      return { status: 401, body: ERRORS.anthropic["401"] };
    case "claude-stream":
      return { status: 503, body: ERRORS.anthropic["500"] };
  }
  return { status: 418, body: { error: `Unexpected model ${modelOf(req)} on the flaky mock` } };
}

/** The healthy upstream: fixture bodies with known usage for each API and mode. */
function goodReply(req: MockRequest): MockReply {
  const json = req.json as { model: string; stream?: boolean };
  if (req.path === "/v1/chat/completions") {
    if (!json.stream) return { body: OPENAI_COMPLETION };
    return { headers: { ...sseHeaders }, chunks: events(OPENAI_STREAM) };
  }
  if (!json.stream) return { body: ANTHROPIC_MESSAGE };
  const stream = json.model === WEIRD_MODEL ? ANTHROPIC_TOOL_STREAM : ANTHROPIC_STREAM;
  return { headers: { ...sseHeaders }, chunks: events(stream) };
}

/** One client request of the scenario and the status the client must see. */
interface Step {
  api: Api;
  model: string;
  stream: boolean;
  status: number;
}

const STEPS: Step[] = [
  { api: "openai", model: "gpt-plain", stream: false, status: 200 },
  { api: "openai", model: "gpt-stream", stream: true, status: 200 },
  { api: "openai", model: "gpt-429", stream: false, status: 200 },
  { api: "openai", model: "gpt-timeout", stream: true, status: 200 },
  { api: "openai", model: "gpt-conn", stream: false, status: 200 },
  { api: "openai", model: "gpt-400", stream: false, status: 400 },
  { api: "openai", model: "gpt-allfail", stream: false, status: 502 },
  { api: "anthropic", model: "claude-plain", stream: false, status: 200 },
  { api: "anthropic", model: "claude-stream", stream: true, status: 200 },
  { api: "anthropic", model: WEIRD_MODEL, stream: true, status: 200 },
];

interface Scenario {
  router: RunningRouter;
  records: RequestRecord[];
  close(): Promise<void>;
}

/**
 * Runs every step in order against two mocks and a closed port, and waits for all records.
 * Each model is pinned to its providers, so every attempt below is known in advance. No provider
 * fails often enough (or with a Retry-After) to be put in cooldown and skipped.
 */
async function runScenario(): Promise<Scenario> {
  const flaky = startMockUpstream(flakyReply);
  const good = startMockUpstream(goodReply);
  const mocks: MockUpstream[] = [flaky, good];
  const down = `http://127.0.0.1:${closedPort()}`;
  const pin = (...names: string[]) => names.map((name) => ({ provider: name }));
  const router = startRouter({
    providers: [
      provider("oa-flaky", "openai", flaky.url, { priority: 1, timeout_ms: 200 }),
      provider("oa-down", "openai", down, { priority: 2 }),
      provider("oa-good", "openai", good.url, { priority: 3 }),
      provider("an-flaky", "anthropic", flaky.url, { priority: 1 }),
      provider("an-good", "anthropic", good.url, { priority: 2 }),
    ],
    model_mapping: {
      "gpt-plain": pin("oa-good"),
      "gpt-stream": pin("oa-good"),
      "gpt-429": pin("oa-flaky", "oa-good"),
      "gpt-timeout": pin("oa-flaky", "oa-good"),
      "gpt-conn": pin("oa-down", "oa-good"),
      "gpt-400": pin("oa-flaky", "oa-good"),
      "gpt-allfail": pin("oa-down"),
      "claude-plain": pin("an-flaky", "an-good"),
      "claude-stream": pin("an-flaky", "an-good"),
      [WEIRD_MODEL]: pin("an-good"),
    },
  });
  const close = async () => {
    for (const mock of mocks) await mock.close();
    await router.close();
  };
  try {
    for (const step of STEPS) {
      const body = step.api === "openai"
        ? { model: step.model, stream: step.stream, messages: [{ role: "user", content: "Hi" }] }
        : {
          model: step.model,
          stream: step.stream,
          max_tokens: 64,
          messages: [{ role: "user", content: "Hi" }],
        };
      const response = await fetch(router.url + ROUTE[step.api], {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const text = await response.text();
      assert.equal(response.status, step.status, `${step.model}: ${text}`);
    }
    const records = await withTimeout(router.sink.waitFor(STEPS.length), "all records");
    return { router, records, close };
  } catch (error) {
    await close();
    throw error;
  }
}

async function withTimeout<T>(promise: Promise<T>, what: string, ms = 5000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`No ${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

type Reason = "timeout" | "network" | "429" | "401" | "5xx" | "other";
type Tokens = { input: number; output: number; cache_read: number; cache_write: number };

/** The counters of one `/stats` series, zero where not given. */
function counts(
  fields: {
    requests: number;
    successes: number;
    failures?: Partial<Record<Reason, number>>;
    fallbacks?: number;
    tokens?: Partial<Tokens>;
  },
): object {
  return {
    requests: fields.requests,
    successes: fields.successes,
    failures: {
      timeout: 0,
      network: 0,
      "429": 0,
      "401": 0,
      "5xx": 0,
      other: 0,
      ...fields.failures,
    },
    fallbacks: fields.fallbacks ?? 0,
    tokens: { input: 0, output: 0, cache_read: 0, cache_write: 0, ...fields.tokens },
  };
}

// Usage of the fixtures as the mocks send them.
const OA_PLAIN = { input: 19, output: 9, cache_read: 8 }; // completion, cached_tokens patched to 8
const OA_STREAM = { input: 19, output: 5 }; // the final usage chunk
const AN_PLAIN = { input: 12, output: 11 };
const AN_STREAM = { input: 472, output: 6, cache_read: 2048 }; // message_delta's 6 is cumulative
const AN_TOOLS = { input: 637, output: 89, cache_write: 1200 };

/** Percentiles by the nearest-rank method: the smallest sample with at least q of all at or below. */
function nearestRank(samples: (number | null)[]) {
  const sorted = samples.filter((v): v is number => v !== null).sort((a, b) => a - b);
  const at = (q: number) => sorted.length === 0 ? null : sorted[Math.ceil(q * sorted.length) - 1];
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99) };
}

Deno.test("/stats counts attempts, outcomes, fallbacks and tokens per provider and per model", async () => {
  const scenario = await runScenario();
  try {
    const response = await fetch(`${scenario.router.url}/stats`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type") ?? "", /^application\/json/);
    const stats: Json = await response.json();
    assert.equal(stats.requests, STEPS.length);
    assert.equal(stats.log_write_errors, 0);
    assert.equal(typeof stats.uptime_s, "number");

    const providers: Record<string, object> = {
      // 429 and timeout fell back; the 400 went back to the client as it was.
      "oa-flaky": counts({
        requests: 3,
        successes: 0,
        failures: { "429": 1, timeout: 1, other: 1 },
        fallbacks: 2,
      }),
      // Refused twice: once before a fallback, once as the only candidate (no fallback then).
      "oa-down": counts({ requests: 2, successes: 0, failures: { network: 2 }, fallbacks: 1 }),
      "oa-good": counts({
        requests: 5,
        successes: 5,
        tokens: { input: 19 * 5, output: 9 * 3 + 5 * 2, cache_read: 8 * 3 },
      }),
      "an-flaky": counts({
        requests: 2,
        successes: 0,
        failures: { "401": 1, "5xx": 1 },
        fallbacks: 2,
      }),
      "an-good": counts({
        requests: 3,
        successes: 3,
        tokens: { input: 12 + 472 + 637, output: 11 + 6 + 89, cache_read: 2048, cache_write: 1200 },
      }),
    };
    const models: Record<string, object> = {
      "gpt-plain": counts({ requests: 1, successes: 1, tokens: OA_PLAIN }),
      "gpt-stream": counts({ requests: 1, successes: 1, tokens: OA_STREAM }),
      "gpt-429": counts({ requests: 1, successes: 1, fallbacks: 1, tokens: OA_PLAIN }),
      "gpt-timeout": counts({ requests: 1, successes: 1, fallbacks: 1, tokens: OA_STREAM }),
      "gpt-conn": counts({ requests: 1, successes: 1, fallbacks: 1, tokens: OA_PLAIN }),
      "gpt-400": counts({ requests: 1, successes: 0, failures: { other: 1 } }),
      "gpt-allfail": counts({ requests: 1, successes: 0, failures: { network: 1 } }),
      "claude-plain": counts({ requests: 1, successes: 1, fallbacks: 1, tokens: AN_PLAIN }),
      "claude-stream": counts({ requests: 1, successes: 1, fallbacks: 1, tokens: AN_STREAM }),
      [WEIRD_MODEL]: counts({ requests: 1, successes: 1, tokens: AN_TOOLS }),
    };
    const withoutLatency = (series: Record<string, Json>) =>
      Object.fromEntries(
        Object.entries(series).map(([name, { duration_ms: _d, ttfb_ms: _t, ...rest }]) => [
          name,
          rest,
        ]),
      );
    assert.deepEqual(withoutLatency(stats.providers), providers);
    assert.deepEqual(withoutLatency(stats.models), models);

    // Latency goes to the provider that answered and to the client's model, from the records.
    const { records } = scenario;
    for (const name of Object.keys(providers)) {
      const answered = records.filter((r) => r.provider === name);
      assert.deepEqual(
        stats.providers[name].duration_ms,
        nearestRank(answered.map((r) => r.duration_ms)),
        `${name} duration_ms`,
      );
      assert.deepEqual(
        stats.providers[name].ttfb_ms,
        nearestRank(answered.map((r) => r.ttfb_ms)),
        `${name} ttfb_ms`,
      );
    }
    for (const name of Object.keys(models)) {
      const [record] = records.filter((r) => r.model === name);
      const one = (v: number | null) => ({ p50: v, p95: v, p99: v });
      assert.deepEqual(stats.models[name].duration_ms, one(record.duration_ms), name);
      assert.deepEqual(stats.models[name].ttfb_ms, one(record.ttfb_ms), name);
    }
    assert.deepEqual(stats.providers["oa-down"].duration_ms, { p50: null, p95: null, p99: null });
    // The timed-out attempt's 200 ms is part of the answer's latency.
    assert.ok(stats.models["gpt-timeout"].duration_ms.p50 >= 200);
    assert.ok(stats.models["gpt-timeout"].ttfb_ms.p50 >= 200);
    assert.ok(stats.providers["oa-good"].duration_ms.p99 >= 200);
  } finally {
    await scenario.close();
  }
});

Deno.test("failureReason sorts attempt failures into the /stats reasons", () => {
  assert.equal(failureReason(null, "timeout"), "timeout");
  assert.equal(failureReason(null, "connect_error"), "network");
  assert.equal(failureReason(200, "stream_interrupted"), "network");
  assert.equal(failureReason(429, "http_status"), "429");
  assert.equal(failureReason(401, "http_status"), "401");
  assert.equal(failureReason(500, "http_status"), "5xx");
  assert.equal(failureReason(529, "http_status"), "5xx");
  assert.equal(failureReason(400, "http_status"), "other");
  assert.equal(failureReason(403, "http_status"), "other");
});

Deno.test("histogram percentiles use the nearest-rank method over known samples", () => {
  const empty = new Histogram();
  assert.deepEqual(empty.percentiles(), { p50: null, p95: null, p99: null });

  const one = new Histogram();
  one.observe(42);
  assert.deepEqual(one.percentiles(), { p50: 42, p95: 42, p99: 42 });

  // Insertion order must not matter: 1..100 shuffled deterministically.
  const hundred = new Histogram();
  for (let i = 0; i < 100; i++) hundred.observe(((i * 37) % 100) + 1);
  assert.deepEqual(hundred.percentiles(), { p50: 50, p95: 95, p99: 99 });

  // The median of two samples is the lower one by nearest rank, never the maximum.
  const two = new Histogram();
  two.observe(20);
  two.observe(10);
  assert.deepEqual(two.percentiles(), { p50: 10, p95: 20, p99: 20 });

  const odd = new Histogram();
  for (const ms of [5, 1, 4, 2, 3]) odd.observe(ms);
  assert.deepEqual(odd.percentiles(), { p50: 3, p95: 5, p99: 5 });
});

Deno.test("histogram puts a sample on a bucket's upper bound into that bucket (le is inclusive)", () => {
  for (const [i, bound] of BUCKETS.entries()) {
    const h = new Histogram();
    h.observe(bound * 1000); // exactly on the bound
    h.observe(bound * 1000 + 0.001); // just above it
    const expected = new Array(BUCKETS.length + 1).fill(0);
    expected[i] = 1;
    expected[i + 1] = 1;
    assert.deepEqual(h.counts, expected, `bound ${bound}`);
    assert.equal(h.count, 2);
  }
  const h = new Histogram();
  h.observe(0);
  h.observe(120_000);
  h.observe(120_000.5);
  h.observe(3_600_000);
  const expected = new Array(BUCKETS.length + 1).fill(0);
  expected[0] = 1;
  expected[BUCKETS.length - 1] = 1;
  expected[BUCKETS.length] = 2; // only +Inf holds what is above the last bound
  assert.deepEqual(h.counts, expected);
  assert.equal(h.count, 4);
  assert.ok(Math.abs(h.sum - (0 + 120 + 120.0005 + 3600)) < 1e-9);
});

Deno.test("histogram percentiles cover the last 1024 samples while counts cover all", () => {
  const h = new Histogram();
  // Descending, so the samples kept are exactly 1024..1 when the ring holds the last 1024.
  for (let ms = 3000; ms >= 1; ms--) h.observe(ms);
  const { p95, p99 } = h.percentiles();
  // Over 1024 samples 1..1024: ranks 0.95*1024 = 972.8 and 0.99*1024 = 1013.76 round up.
  assert.equal(p95, 973);
  assert.equal(p99, 1014);
  assert.equal(h.count, 3000);
  assert.ok(Math.abs(h.sum - 3000 * 3001 / 2 / 1000) < 1e-6);
  // One more sample evicts the oldest kept (1024): the ring now holds 1023..1 and 5000.
  h.observe(5000);
  // Rank 1014 of [1..1023, 5000] is 1014; had the ring grown to 1025 it would be 1015.
  assert.equal(h.percentiles().p99, 1014);
  // 1024 new samples replace every old one.
  for (let i = 0; i < 1024; i++) h.observe(7);
  assert.deepEqual(h.percentiles(), { p50: 7, p95: 7, p99: 7 });
  assert.equal(h.count, 3000 + 1 + 1024);
});

// ---------------------------------------------------------------------------------------------
// A strict parser for the Prometheus text exposition format, version 0.0.4.

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Family {
  name: string;
  type: "counter" | "gauge" | "histogram" | "summary" | "untyped";
  help: string | null;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;
const FLOAT = /^(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);

class ParseError extends Error {}

/** The family a sample name belongs to, given the declared types. */
function familyOf(name: string, families: Map<string, Family>): Family | undefined {
  const exact = families.get(name);
  if (exact !== undefined && exact.type !== "histogram") return exact;
  for (const suffix of ["_bucket", "_sum", "_count"]) {
    if (!name.endsWith(suffix)) continue;
    const base = families.get(name.slice(0, -suffix.length));
    if (base?.type === "histogram") return base;
    if (base?.type === "summary" && suffix !== "_bucket") return base;
  }
  return undefined;
}

function unescape(text: string, quote: boolean, where: string): string {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\n") throw new ParseError(`Raw newline in ${where}`);
    if (c !== "\\") {
      if (quote && c === '"') throw new ParseError(`Unescaped quote in ${where}`);
      out += c;
      continue;
    }
    const next = text[++i];
    if (next === "\\") out += "\\";
    else if (next === "n") out += "\n";
    else if (quote && next === '"') out += '"';
    else throw new ParseError(`Invalid escape \\${next ?? "<end>"} in ${where}`);
  }
  return out;
}

/** Reads `{name="value",...}` from the start of `rest`; returns the labels and what follows. */
function parseLabels(rest: string, line: number): [Record<string, string>, string] {
  const labels: Record<string, string> = {};
  let s = rest.slice(1);
  for (;;) {
    if (s.startsWith("}")) return [labels, s.slice(1)];
    const name = s.match(LABEL_NAME)?.[0];
    if (name === undefined) throw new ParseError(`Line ${line}: bad label name in ${rest}`);
    if (name.startsWith("__")) throw new ParseError(`Line ${line}: reserved label ${name}`);
    if (name in labels) throw new ParseError(`Line ${line}: duplicate label ${name}`);
    s = s.slice(name.length);
    if (!s.startsWith('="')) throw new ParseError(`Line ${line}: expected =" after ${name}`);
    s = s.slice(2);
    let end = 0;
    while (end < s.length && s[end] !== '"') end += s[end] === "\\" ? 2 : 1;
    if (end >= s.length) throw new ParseError(`Line ${line}: unterminated value of ${name}`);
    labels[name] = unescape(s.slice(0, end), true, `line ${line} label ${name}`);
    s = s.slice(end + 1);
    if (s.startsWith(",")) s = s.slice(1);
    else if (!s.startsWith("}")) throw new ParseError(`Line ${line}: expected , or } in ${rest}`);
  }
}

function parseValue(text: string, line: number): number {
  if (!FLOAT.test(text)) throw new ParseError(`Line ${line}: bad value "${text}"`);
  if (text.endsWith("Inf")) return text.startsWith("-") ? -Infinity : Infinity;
  return text === "NaN" ? NaN : Number(text);
}

/**
 * Parses the exposition text strictly: every sample must belong to a family declared by a TYPE
 * line before it, a family's samples are contiguous, no series appears twice, and label values
 * use only the `\\`, `\"` and `\n` escapes.
 */
function parseExposition(text: string): Map<string, Family> {
  if (text.length > 0 && !text.endsWith("\n")) throw new ParseError("Text must end with \\n");
  const families = new Map<string, Family>();
  const finished = new Set<string>();
  const series = new Set<string>();
  let current: Family | undefined;
  text.slice(0, -1).split("\n").forEach((raw, i) => {
    const line = i + 1;
    if (raw.trim() === "") return;
    if (raw.startsWith("#")) {
      const m = raw.match(/^# (HELP|TYPE) ([^ ]+) ?(.*)$/);
      if (m === null) return; // a plain comment
      const [, keyword, name, rest] = m;
      if (!METRIC_NAME.test(name) || name.match(METRIC_NAME)![0] !== name) {
        throw new ParseError(`Line ${line}: bad metric name ${name}`);
      }
      let family = families.get(name);
      if (keyword === "TYPE") {
        if (!TYPES.has(rest)) throw new ParseError(`Line ${line}: unknown type ${rest}`);
        if (family?.samples.length || finished.has(name)) {
          throw new ParseError(`Line ${line}: TYPE of ${name} after its samples`);
        }
        if (family !== undefined && family.type !== "untyped") {
          throw new ParseError(`Line ${line}: second TYPE for ${name}`);
        }
        family ??= { name, type: "untyped", help: null, samples: [] };
        family.type = rest as Family["type"];
      } else {
        family ??= { name, type: "untyped", help: null, samples: [] };
        if (family.help !== null) throw new ParseError(`Line ${line}: second HELP for ${name}`);
        family.help = unescape(rest, false, `line ${line} HELP`);
      }
      families.set(name, family);
      return;
    }
    const name = raw.match(METRIC_NAME)?.[0];
    if (name === undefined) throw new ParseError(`Line ${line}: bad sample ${raw}`);
    let rest = raw.slice(name.length);
    let labels: Record<string, string> = {};
    if (rest.startsWith("{")) [labels, rest] = parseLabels(rest, line);
    const fields = rest.match(/^[ \t]+([^ \t]+)(?:[ \t]+(-?\d+))?$/);
    if (fields === null) throw new ParseError(`Line ${line}: bad value part "${rest}"`);
    const value = parseValue(fields[1], line);
    const family = familyOf(name, families);
    if (family === undefined) throw new ParseError(`Line ${line}: ${name} has no TYPE`);
    if (current !== family) {
      if (current !== undefined) finished.add(current.name);
      if (finished.has(family.name)) {
        throw new ParseError(`Line ${line}: samples of ${family.name} are not contiguous`);
      }
      current = family;
    }
    const key = JSON.stringify([name, Object.entries(labels).sort()]);
    if (series.has(key)) throw new ParseError(`Line ${line}: duplicate series ${raw}`);
    series.add(key);
    if (family.type === "histogram" && name.endsWith("_bucket") && !("le" in labels)) {
      throw new ParseError(`Line ${line}: bucket without le`);
    }
    family.samples.push({ name, labels, value });
  });
  return families;
}

Deno.test("the exposition parser rejects what Prometheus rejects", () => {
  const ok = [
    "# HELP a_total Some \\\\ help\\nmore",
    "# TYPE a_total counter",
    'a_total{x="q\\"b\\\\s\\nn",y="2",} 3 1700000000000',
    "# a comment",
    "# TYPE h histogram",
    'h_bucket{le="+Inf"} 1',
    "h_sum 1e-7",
    "h_count 1",
    "",
  ].join("\n");
  const families = parseExposition(ok);
  assert.equal(families.get("a_total")?.help, "Some \\ help\nmore");
  assert.deepEqual(families.get("a_total")?.samples, [
    { name: "a_total", labels: { x: 'q"b\\s\nn', y: "2" }, value: 3 },
  ]);
  assert.equal(families.get("h")?.samples.length, 3);
  const bad = [
    "# TYPE a counter\na 1", // no final newline
    "a 1\n", // no TYPE
    '# TYPE a counter\na{x="1""} 1\n', // unescaped quote
    '# TYPE a counter\na{x="\\t"} 1\n', // unknown escape
    '# TYPE a counter\na{1x="1"} 1\n', // bad label name
    '# TYPE a counter\na{x="1",x="2"} 1\n', // duplicate label
    "# TYPE a counter\na one\n", // bad value
    "# TYPE a counter\na 1\na 2\n", // duplicate series
    '# TYPE a counter\n# TYPE b counter\na 1\nb 1\na{x="1"} 1\n', // not contiguous
    "# TYPE a counter\na 1\n# TYPE a counter\n", // TYPE after samples
    "# TYPE 9a counter\n", // bad metric name
    "# TYPE h histogram\nh_bucket 1\n", // bucket without le
    "# TYPE a counter\na_bucket 1\n", // suffix of a counter is another metric
  ];
  for (const text of bad) assert.throws(() => parseExposition(text), ParseError, text);
});

/** The samples of `family` as a map from their labels (in `names` order) to their values. */
function byLabels(family: Family | undefined, names: string[]): Map<string, number> {
  assert.ok(family !== undefined, "family missing");
  const out = new Map<string, number>();
  for (const sample of family.samples) {
    assert.deepEqual(Object.keys(sample.labels).sort(), [...names].sort(), sample.name);
    out.set(JSON.stringify(names.map((n) => sample.labels[n])), sample.value);
  }
  return out;
}

const key = (...values: (string | number)[]) => JSON.stringify(values.map(String));

/** Checks one histogram family per provider against the records' own timings. */
function checkHistogram(
  found: Family | undefined,
  records: RequestRecord[],
  field: "duration_ms" | "ttfb_ms",
  providers: string[],
): void {
  assert.ok(found !== undefined && found.type === "histogram", `${field} histogram`);
  const family: Family = found;
  const seen = new Set(family.samples.map((s) => s.labels.provider));
  assert.deepEqual([...seen].sort(), [...providers].sort());
  for (const name of providers) {
    const values = records.filter((r) => r.provider === name && r[field] !== null)
      .map((r) => r[field]! / 1000);
    const of = (suffix: string): Sample[] =>
      family.samples.filter((s) => s.name === family.name + suffix);
    const buckets = of("_bucket").filter((s) => s.labels.provider === name);
    const les = buckets.map((s) => s.labels.le);
    assert.deepEqual(les, [...BUCKETS.map(String), "+Inf"], `${name} le order`);
    for (const [i, bucket] of buckets.entries()) {
      assert.deepEqual(Object.keys(bucket.labels).sort(), ["le", "provider"]);
      if (i > 0) assert.ok(bucket.value >= buckets[i - 1].value, `${name} non-decreasing`);
      const bound = Number(bucket.labels.le === "+Inf" ? Infinity : bucket.labels.le);
      assert.equal(bucket.value, values.filter((v) => v <= bound).length, `${name} le=${bound}`);
    }
    const [count] = of("_count").filter((s) => s.labels.provider === name);
    const [sum] = of("_sum").filter((s) => s.labels.provider === name);
    assert.ok(count !== undefined && sum !== undefined, `${name} _count and _sum`);
    assert.equal(buckets.at(-1)!.value, count.value, `${name} +Inf equals _count`);
    assert.equal(count.value, values.length);
    const expectedSum = values.reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(sum.value - expectedSum) < 1e-9, `${name} _sum ${sum.value}`);
  }
}

Deno.test("/metrics is valid exposition text with the counts and histograms the requests imply", async () => {
  const scenario = await runScenario();
  try {
    const response = await fetch(`${scenario.router.url}/metrics`);
    assert.equal(response.status, 200);
    const type = response.headers.get("content-type") ?? "";
    assert.match(type, /^text\/plain; version=0\.0\.4(; charset=utf-8)?$/);
    const families = parseExposition(await response.text());
    for (const family of families.values()) {
      assert.notEqual(family.type, "untyped", `${family.name} has a TYPE`);
      assert.ok(family.help, `${family.name} has HELP`);
    }

    const requests = families.get("llm_router_requests_total");
    assert.equal(requests?.type, "counter");
    assert.deepEqual(
      byLabels(requests, ["endpoint", "provider", "model", "status"]),
      new Map([
        [key("openai", "oa-good", "gpt-plain", 200), 1],
        [key("openai", "oa-good", "gpt-stream", 200), 1],
        [key("openai", "oa-good", "gpt-429", 200), 1],
        [key("openai", "oa-good", "gpt-timeout", 200), 1],
        [key("openai", "oa-good", "gpt-conn", 200), 1],
        [key("openai", "oa-flaky", "gpt-400", 400), 1],
        [key("openai", "", "gpt-allfail", 502), 1],
        [key("anthropic", "an-good", "claude-plain", 200), 1],
        [key("anthropic", "an-good", "claude-stream", 200), 1],
        [key("anthropic", "an-good", WEIRD_MODEL, 200), 1],
      ]),
    );

    const attempts = families.get("llm_router_upstream_attempts_total");
    assert.equal(attempts?.type, "counter");
    assert.deepEqual(
      byLabels(attempts, ["provider", "outcome"]),
      new Map([
        [key("oa-good", "ok"), 5],
        [key("oa-flaky", "429"), 1],
        [key("oa-flaky", "other"), 1], // the 400 passed through
        [key("oa-flaky", "timeout"), 1],
        [key("oa-down", "network"), 2],
        [key("an-flaky", "401"), 1],
        [key("an-flaky", "5xx"), 1],
        [key("an-good", "ok"), 3],
      ]),
    );

    const tokens = families.get("llm_router_tokens_total");
    assert.equal(tokens?.type, "counter");
    const expectedTokens = new Map<string, number>();
    const usage: [string, string, Partial<Tokens>][] = [
      ["oa-good", "gpt-plain", OA_PLAIN],
      ["oa-good", "gpt-stream", OA_STREAM],
      ["oa-good", "gpt-429", OA_PLAIN],
      ["oa-good", "gpt-timeout", OA_STREAM],
      ["oa-good", "gpt-conn", OA_PLAIN],
      ["an-good", "claude-plain", AN_PLAIN],
      ["an-good", "claude-stream", AN_STREAM],
      ["an-good", WEIRD_MODEL, AN_TOOLS],
    ];
    for (const [provider, model, counts] of usage) {
      for (const kind of ["input", "output", "cache_read", "cache_write"] as const) {
        expectedTokens.set(key(provider, model, kind), counts[kind] ?? 0);
      }
    }
    assert.deepEqual(byLabels(tokens, ["provider", "model", "kind"]), expectedTokens);

    const providers = ["oa-flaky", "oa-down", "oa-good", "an-flaky", "an-good"];
    const { records } = scenario;
    checkHistogram(
      families.get("llm_router_request_duration_seconds"),
      records,
      "duration_ms",
      providers,
    );
    checkHistogram(families.get("llm_router_ttfb_seconds"), records, "ttfb_ms", providers);
  } finally {
    await scenario.close();
  }
});

// ---------------------------------------------------------------------------------------------
// OpenTelemetry: a real router process exporting OTLP/JSON to a collector in this test.

interface OtlpAttribute {
  key: string;
  value: { stringValue?: string; intValue?: string; doubleValue?: number; boolValue?: boolean };
}

interface OtlpSpan {
  name: string;
  kind: number;
  attributes: OtlpAttribute[];
}

function attributeMap(attributes: OtlpAttribute[]): Record<string, unknown> {
  return Object.fromEntries(attributes.map(({ key, value }) => {
    if (value.intValue !== undefined) return [key, Number(value.intValue)];
    return [key, value.stringValue ?? value.doubleValue ?? value.boolValue];
  }));
}

/** Receives OTLP/HTTP JSON exports and keeps the spans and their resources. */
function startCollector() {
  const spans: { resource: Record<string, unknown>; span: OtlpSpan }[] = [];
  const contentTypes: string[] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
    const text = await req.text();
    if (new URL(req.url).pathname === "/v1/traces") {
      contentTypes.push(req.headers.get("content-type") ?? "");
      const body = JSON.parse(text);
      for (const rs of body.resourceSpans ?? []) {
        const resource = attributeMap(rs.resource?.attributes ?? []);
        for (const ss of rs.scopeSpans ?? []) {
          for (const span of ss.spans ?? []) spans.push({ resource, span });
        }
      }
    }
    return Response.json({});
  });
  return { url: `http://127.0.0.1:${server.addr.port}`, spans, contentTypes, server };
}

/**
 * Runs `main.ts` with Deno's OpenTelemetry exporting OTLP/JSON to a collector of our own, sends
 * each body to the OpenAI endpoint, stops the router with SIGTERM and returns the server spans
 * of those requests, with their resource attributes.
 */
async function serverSpansOf(
  config: object,
  bodies: object[],
  which: "server" | "request" = "server",
): Promise<{
  spans: { resource: Record<string, unknown>; attributes: Record<string, unknown> }[];
  records: RequestRecord[];
}> {
  const collector = startCollector();
  const logDir = await Deno.makeTempDir();
  try {
    const { url, child, finished } = await spawnRouter(["--port", "0", "--log-dir", logDir], {
      env: {
        LLM_ROUTER_CONFIG: JSON.stringify(config),
        OTEL_DENO: "true",
        OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
        OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
        OTEL_SERVICE_NAME: "llm-api-router",
        OTEL_BSP_SCHEDULE_DELAY: "100",
      },
    });
    try {
      for (const body of bodies) {
        const response = await fetch(`${url}/openai/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
        });
        const text = await response.text();
        assert.equal(response.status, 200, text);
      }
    } finally {
      child.kill("SIGTERM");
    }
    const { code, stderr } = await finished;
    assert.equal(code, 0, stderr);
    assert.ok(collector.contentTypes.length > 0, "the collector received POST /v1/traces");
    for (const type of collector.contentTypes) assert.match(type, /^application\/json/);
    const servers = collector.spans
      .map(({ resource, span }) => ({ resource, span, attributes: attributeMap(span.attributes) }))
      .filter(({ span, attributes }) =>
        which === "server"
          ? span.kind === 2 && attributes["url.path"] === "/openai/v1/chat/completions"
          : span.name === "llm_router.request"
      );
    assert.equal(servers.length, bodies.length, JSON.stringify(collector.spans));
    const log = await Deno.readTextFile(`${logDir}/requests.jsonl`);
    return {
      spans: servers.map(({ resource, attributes }) => ({ resource, attributes })),
      records: log.trim().split("\n").map((line) => JSON.parse(line)),
    };
  } finally {
    await collector.server.shutdown();
    await Deno.remove(logDir, { recursive: true });
  }
}

Deno.test("with OTEL_DENO=true the server span carries provider, models and attempts", async () => {
  const first = startMockUpstream(() => ({ status: 503, body: ERRORS.openai["500"] }));
  const second = startMockUpstream();
  try {
    const config = {
      providers: [
        provider("first", "openai", first.url, { priority: 1 }),
        provider("second", "openai", second.url, { priority: 2 }),
      ],
      model_mapping: { "gpt-otel": ["gpt-upstream"] },
    };
    const { spans } = await serverSpansOf(config, [
      { model: "gpt-otel", stream: false, messages: [] },
      { model: "gpt-otel", stream: true, messages: [] },
    ]);
    for (const { resource, attributes } of spans) {
      assert.equal(resource["service.name"], "llm-api-router");
      const all = JSON.stringify(attributes);
      assert.equal(attributes["llm_router.provider"], "second", all);
      assert.equal(attributes["gen_ai.request.model"], "gpt-otel", all);
      assert.equal(attributes["gen_ai.response.model"], "gpt-upstream", all);
      assert.equal(attributes["llm_router.attempts"], 2, all);
    }
  } finally {
    await first.close();
    await second.close();
  }
});

Deno.test("with OTEL_DENO=true the llm_router.request span carries the answer's token usage", async () => {
  // Both bodies end well after the handler has returned its Response, as a real model's do.
  const mock = startMockUpstream((req) => {
    const { model, stream } = req.json as { model: string; stream: boolean };
    if (stream) {
      return { chunks: openaiStreamChunks(model, { includeUsage: true }), chunkDelayMs: 30 };
    }
    const text = JSON.stringify(openaiCompletion(model));
    const half = text.length >> 1;
    return {
      headers: { "content-type": "application/json" },
      chunks: [text.slice(0, half), text.slice(half)],
      chunkDelayMs: 50,
    };
  });
  try {
    const config = { providers: [provider("only", "openai", mock.url)] };
    const { spans, records } = await serverSpansOf(config, [
      { model: "gpt-otel", stream: false, messages: [] },
      { model: "gpt-otel", stream: true, stream_options: { include_usage: true }, messages: [] },
    ], "request");
    // The records have the usage, so only its way onto the span can lose it.
    assert.deepEqual(records.map((r) => [r.stream, r.usage?.prompt_tokens]), [
      [false, 12],
      [true, 12],
    ]);
    const [plain, streamed] = spans;
    for (const { attributes } of spans) assert.equal(attributes["llm_router.provider"], "only");
    // The mock's usage: 12 prompt tokens; 4 completion tokens, or one per delta (3) when streaming.
    for (const [{ attributes }, output] of [[plain, 4], [streamed, 3]] as const) {
      const all = JSON.stringify(attributes);
      assert.equal(attributes["gen_ai.usage.input_tokens"], 12, all);
      assert.equal(attributes["gen_ai.usage.output_tokens"], output, all);
    }
  } finally {
    await mock.close();
  }
});

Deno.test("/stats and /metrics report the request log's write errors and dropped records", async () => {
  const config = parseConfig(
    JSON.stringify({ providers: [provider("p", "openai", "http://127.0.0.1:9")] }),
    () => undefined,
  );
  const sink = { write() {}, close: () => Promise.resolve(), writeErrors: 2, droppedRecords: 5 };
  const handler = createHandler(() => config, { sink });
  const stats = await (await handler(new Request("http://router/stats"))).json();
  assert.equal(stats.log_write_errors, 2);
  assert.equal(stats.log_dropped_records, 5);
  const metrics = await (await handler(new Request("http://router/metrics"))).text();
  assert.match(metrics, /^llm_router_log_write_errors_total 2$/m);
  assert.match(metrics, /^llm_router_log_dropped_records_total 5$/m);
});

Deno.test("usage numbers a provider makes up (negative, huge) count as 0, so counters never fall or overflow", async () => {
  const usages = [
    { prompt_tokens: -1000, completion_tokens: 3, total_tokens: -997 },
    { prompt_tokens: 1e308, completion_tokens: 3, total_tokens: 1e308 },
    { prompt_tokens: 1e308, completion_tokens: 3, total_tokens: 1e308 },
    { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 },
  ];
  let n = 0;
  const mock = startMockUpstream(() => ({
    body: { ...openaiCompletion("gpt-4o"), usage: usages[n++] },
  }));
  const router = startRouter({ providers: [provider("oa", "openai", mock.url)] });
  try {
    for (const _ of usages) {
      const response = await fetch(`${router.url}/openai/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "gpt-4o", messages: [{ role: "user", content: "Hi" }] }),
      });
      await response.body?.cancel();
    }
    const records = await router.sink.waitFor(usages.length);
    assert.deepEqual(records.map((r) => r.usage), usages, "the log keeps what the provider sent");
    const stats: Json = await (await fetch(`${router.url}/stats`)).json();
    assert.deepEqual(
      [stats.providers.oa.tokens.input, stats.providers.oa.tokens.output],
      [5, 12],
    );
    const metrics = await (await fetch(`${router.url}/metrics`)).text();
    const input = metrics.split("\n").find((line) =>
      line.startsWith("llm_router_tokens_total{") && line.includes('kind="input"')
    );
    assert.equal(input?.split(" ").at(-1), "5", input);
  } finally {
    await router.close();
    await mock.close();
  }
});
