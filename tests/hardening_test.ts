/**
 * What a hostile client or a broken provider must not be able to do: lock the router, crash it,
 * make it hold unbounded memory, or turn a provider's answer into the router's own error.
 */
import assert from "node:assert/strict";
import { SseFramer } from "../src/sse.ts";
import { Stats } from "../src/stats.ts";
import type { RequestRecord } from "../src/record.ts";
import { openaiStreamChunks, sseHeaders, startMockUpstream } from "../tools/mock_upstream.ts";
import { provider, rawServer, startRouter } from "./harness.ts";
import { attemptsOf } from "./resilience_util.ts";

const chat = (model: string, extra: object = {}) =>
  JSON.stringify({ model, messages: [{ role: "user", content: "Hi" }], ...extra });

function post(url: string, body: string | ReadableStream<Uint8Array>, headers = {}) {
  return fetch(`${url}/openai/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body,
  });
}

Deno.test("a model named like an Object prototype member is just a model name", async () => {
  const mock = startMockUpstream();
  const router = startRouter({
    providers: [provider("p", "openai", mock.url)],
    model_mapping: { "gpt-4": ["gpt-4o"] },
    limits: { max_concurrent: 1 },
  });
  for (const model of ["constructor", "toString", "__proto__", "hasOwnProperty"]) {
    const response = await post(router.url, chat(model));
    assert.equal(response.status, 200, model);
    assert.equal((await response.json()).model, model, "forwarded unchanged, as unmapped");
  }
  const records = await router.sink.waitFor(4);
  assert.deepEqual(records.map((r) => r.status), [200, 200, 200, 200], "every slot released");
  await router.close();
  await mock.close();
});

/** A server answering every request with `status`, which Deno.serve cannot send. */
function rawStatusServer(status: number): { url: string; close(): void } {
  const body = '{"error":{"message":"odd"}}';
  const head = `HTTP/1.1 ${status} Odd\r\ncontent-type: application/json\r\n` +
    `content-length: ${body.length}\r\nconnection: close\r\n\r\n`;
  return rawServer(head, body);
}

Deno.test("a status a Response cannot carry counts as a failed attempt, not a crash", async () => {
  const odd = rawStatusServer(600);
  const good = startMockUpstream();
  const router = startRouter({
    providers: [provider("odd", "openai", odd.url), provider("good", "openai", good.url)],
    limits: { max_concurrent: 1 },
  });
  const fallback = await post(router.url, chat("gpt-4o"));
  assert.equal(fallback.status, 200);
  assert.equal(fallback.headers.get("x-llm-router-provider"), "good");
  await fallback.body?.cancel();
  const [record] = await router.sink.waitFor(1);
  assert.deepEqual(attemptsOf(record), [
    ["odd", 600, "http_status"],
    ["good", 200, null],
  ]);
  await router.close();

  const alone = startRouter({ providers: [provider("odd", "openai", odd.url)] });
  const response = await post(alone.url, chat("gpt-4o"));
  assert.equal(response.status, 502);
  assert.equal((await response.json()).error.code, "upstream_unavailable");
  await alone.close();
  odd.close();
  await good.close();
});

Deno.test("hostile stream indices neither crash the router nor stall it", async () => {
  const chunks = openaiStreamChunks("gpt-4o", { events: 2 });
  const hostile = 'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m",' +
    '"choices":[{"index":4294967294,"delta":{"tool_calls":[{"index":4294967294,"id":"t",' +
    '"function":{"name":"f","arguments":"{}"}}]},"finish_reason":null}]}\n\n';
  const mock = startMockUpstream(() => ({
    headers: sseHeaders,
    chunks: [chunks[0], hostile, ...chunks.slice(1)],
  }));
  const router = startRouter({ providers: [provider("p", "openai", mock.url)] });
  const started = performance.now();
  const response = await post(router.url, chat("gpt-4o", { stream: true }));
  const text = await response.text();
  assert.equal(text, [chunks[0], hostile, ...chunks.slice(1)].join(""), "bytes pass unchanged");
  const [record] = await router.sink.waitFor(1);
  assert.equal(record.stream_complete, true);
  assert.ok(performance.now() - started < 2000, "no stall over a sparse index");
  await router.close();
  await mock.close();
});

Deno.test("model names nobody configured or answered are counted as (other)", () => {
  const stats = new Stats((model) => model === "gpt-4");
  const base = {
    endpoint: "openai",
    provider: null,
    status: 404,
    attempts: [],
    usage: null,
    client: null,
    duration_ms: 1,
    ttfb_ms: 1,
    error: { type: "model_not_found", message: "" },
  };
  for (let i = 0; i < 50; i++) {
    stats.add({ ...base, model: `made-up-${i}` } as unknown as RequestRecord);
  }
  stats.add({ ...base, model: "gpt-4" } as unknown as RequestRecord);
  stats.add(
    {
      ...base,
      model: "upstream-only",
      provider: "p",
      status: 200,
      error: null,
    } as unknown as RequestRecord,
  );
  assert.deepEqual([...stats.models.keys()].sort(), ["(other)", "gpt-4", "upstream-only"]);
  assert.equal(stats.models.get("(other)")?.requests, 50);
});

/** Opens a raw connection and sends headers and the start of a body, framed as `framing`. */
async function startUpload(url: string, framing: string): Promise<Deno.TcpConn> {
  const { hostname, port } = new URL(url);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  const part = '{"model":"gpt-4o",';
  const body = framing.startsWith("content-length")
    ? part
    : `${part.length.toString(16)}\r\n${part}\r\n`;
  const head = "POST /openai/chat/completions HTTP/1.1\r\nhost: x\r\n" +
    `content-type: application/json\r\n${framing}\r\n\r\n${body}`;
  await conn.write(new TextEncoder().encode(head));
  return conn;
}

/** Sends headers and part of a body over a raw socket, then stops; returns the status line. */
async function stalledRequest(url: string, framing: string): Promise<string> {
  const conn = await startUpload(url, framing);
  const buffer = new Uint8Array(4096);
  const read = await conn.read(buffer);
  conn.close();
  return new TextDecoder().decode(buffer.subarray(0, read ?? 0)).split("\r\n")[0];
}

for (const framing of ["content-length: 100", "transfer-encoding: chunked"]) {
  Deno.test(`a client that stops sending its body (${framing}) gets 408 and frees its slot`, async () => {
    const mock = startMockUpstream();
    const router = startRouter({
      providers: [provider("p", "openai", mock.url)],
      timeouts: { first_byte_ms: 300 },
      limits: { max_concurrent: 1 },
    });
    try {
      assert.equal(await stalledRequest(router.url, framing), "HTTP/1.1 408 Request Timeout");
      const next = await post(router.url, chat("gpt-4o"));
      assert.equal(next.status, 200, "the slot was freed");
      await next.body?.cancel();
      assert.equal(mock.requests.length, 1, "the stalled request never reached a provider");
      const [record] = await router.sink.waitFor(1);
      assert.equal(record.status, 408);
    } finally {
      await router.close();
      await mock.close();
    }
  });
}

Deno.test("clients that declare large bodies and send little do not make the router hold that much memory", async () => {
  const mock = startMockUpstream();
  const router = startRouter({
    providers: [provider("p", "openai", mock.url)],
    limits: { max_request_bytes: 32 * 1024 * 1024 },
    timeouts: { first_byte_ms: 2000 },
  });
  const conns: Deno.TcpConn[] = [];
  try {
    const before = Deno.memoryUsage().rss;
    for (let i = 0; i < 40; i++) {
      conns.push(await startUpload(router.url, `content-length: ${32 * 1024 * 1024}`));
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    // 40 x 32 MiB would be 1.25 GiB if each declared length were set aside up front.
    const grown = (Deno.memoryUsage().rss - before) / 2 ** 20;
    assert.ok(grown < 200, `RSS grew by ${grown.toFixed(0)} MiB`);
  } finally {
    for (const conn of conns) conn.close();
    await router.close();
    await mock.close();
  }
});

Deno.test("with retries configured, the last provider's own answer still reaches the client", async () => {
  const limited = startMockUpstream(() => ({
    status: 429,
    headers: { "retry-after": "30" },
    body: { error: { message: "slow down", type: "requests", code: "rate_limit_exceeded" } },
  }));
  const router = startRouter({
    providers: [provider("p", "openai", limited.url)],
    retries: { per_provider: 2 },
    timeouts: { total_ms: 2000 },
  });
  const response = await post(router.url, chat("gpt-4o"));
  assert.equal(response.status, 429);
  assert.equal(response.headers.get("retry-after"), "30");
  assert.equal((await response.json()).error.code, "rate_limit_exceeded");
  assert.equal(limited.requests.length, 1, "a 429 is not retried");
  await router.close();
  await limited.close();
});

Deno.test("once the request's time is spent, later providers are neither tried nor blamed", async () => {
  const hang = startMockUpstream(() => ({ hang: "headers" }));
  const good = startMockUpstream();
  const router = startRouter({
    providers: [provider("hang", "openai", hang.url), provider("good", "openai", good.url)],
    timeouts: { total_ms: 300, first_byte_ms: 10_000 },
  });
  for (let i = 0; i < 3; i++) {
    const response = await post(router.url, chat("gpt-4o"));
    assert.equal(response.status, 504);
    await response.body?.cancel();
  }
  assert.equal(good.requests.length, 0, "no attempt after the deadline");
  const health = await (await fetch(`${router.url}/health/providers`)).json();
  const state = Object.fromEntries(
    health.providers.map((p: { name: string; state: string }) => [p.name, p.state]),
  );
  assert.equal(state.good, "ok");
  assert.equal(state.hang, "ok", "the request's own deadline is not the provider's failure");
  await router.close();
  await hang.close();
  await good.close();
});

Deno.test("an SSE event that never ends is refused instead of buffered", () => {
  const framer = new SseFramer();
  const piece = new Uint8Array(1024 * 1024).fill(0x61);
  assert.equal(framer.push(new TextEncoder().encode("data: ")), null);
  assert.throws(() => {
    for (let i = 0; i < 20; i++) framer.push(piece);
  }, /grew past/);
});

Deno.test("client headers named like Object prototype members are forwarded as plain headers", async () => {
  const mock = startMockUpstream();
  const router = startRouter({ providers: [provider("p", "anthropic", mock.url)] });
  const response = await fetch(`${router.url}/anthropic/v1/messages`, {
    method: "POST",
    // Pairs, since `"__proto__": value` in an object literal sets no property.
    headers: [
      ["content-type", "application/json"],
      ["__proto__", "not-a-prototype"],
      ["constructor", "c"],
      ["anthropic-version", "2023-01-01"],
    ],
    body: JSON.stringify({ model: "claude-x", max_tokens: 5, messages: [] }),
  });
  assert.equal(response.status, 200);
  await response.body?.cancel();
  const [sent] = mock.requests;
  assert.equal(sent.headers.get("__proto__"), "not-a-prototype");
  assert.equal(sent.headers.get("constructor"), "c");
  assert.equal(sent.headers.get("anthropic-version"), "2023-01-01", "the client's version is kept");
  assert.equal(sent.headers.get("x-api-key"), "sk-p-secret");
  await router.close();
  await mock.close();
});
