import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import {
  anthropicStreamChunks,
  anthropicTokenCount,
  closedPort,
  defaultReply,
  failureReply,
  mockEmbedding,
  type MockScript,
  openaiResponse,
  openaiResponseErrorEvent,
  openaiStreamChunks,
  sseHeaders,
  startMockUpstream,
} from "../tools/mock_upstream.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

function post(url: string, body: unknown, init: RequestInit = {}): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    ...init,
  });
}

/** Minimal SSE parse for complete streams: one {event, data} per blank-line-separated block. */
function parseSse(text: string): { event?: string; data: string }[] {
  return text.split("\n\n").filter(Boolean).map((block) => {
    const lines = block.split("\n");
    const event = lines.find((l) => l.startsWith("event: "))?.slice(7);
    const data = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
    return { event, data };
  });
}

const decoder = new TextDecoder();

Deno.test("default OpenAI reply echoes the model with usage, with or without /v1", async () => {
  const upstream = startMockUpstream();
  try {
    for (const path of ["/v1/chat/completions", "/openai/chat/completions"]) {
      const res = await post(upstream.url + path, { model: "gpt-x", messages: [] });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("content-type"), "application/json");
      const body: Json = await res.json();
      assert.equal(body.object, "chat.completion");
      assert.equal(body.model, "gpt-x");
      assert.equal(body.choices[0].message.content, "Hello from the mock");
      const { prompt_tokens, completion_tokens, total_tokens } = body.usage;
      assert.equal(total_tokens, prompt_tokens + completion_tokens);
    }
  } finally {
    await upstream.close();
  }
});

Deno.test("default OpenAI stream ends with [DONE] and a usage chunk when asked", async () => {
  const upstream = startMockUpstream();
  try {
    const res = await post(upstream.url + "/v1/chat/completions", {
      model: "gpt-x",
      stream: true,
      stream_options: { include_usage: true },
    });
    assert.equal(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
    const events = parseSse(await res.text());
    assert.equal(events.at(-1)?.data, "[DONE]");
    const chunks: Json[] = events.slice(0, -1).map((e) => JSON.parse(e.data));
    assert.deepEqual(chunks[0].choices[0].delta, { role: "assistant", content: "" });
    const usageChunk = chunks.at(-1);
    assert.deepEqual(usageChunk.choices, []);
    assert.equal(usageChunk.usage.completion_tokens, 3);
    const rest = chunks.slice(0, -1);
    assert.ok(rest.every((c) => c.usage === null && c.model === "gpt-x"));
    assert.equal(rest.at(-1).choices[0].finish_reason, "stop");
    const text = rest.map((c) => c.choices[0].delta.content ?? "").join("");
    assert.equal(text, "Hello from the mock");
  } finally {
    await upstream.close();
  }
});

Deno.test("default OpenAI stream has no usage key unless asked", async () => {
  const upstream = startMockUpstream();
  try {
    const res = await post(upstream.url + "/chat/completions", { model: "m", stream: true });
    const events = parseSse(await res.text());
    assert.equal(events.length, 1 + 3 + 1 + 1);
    assert.ok(events.slice(0, -1).every((e) => !("usage" in JSON.parse(e.data))));
  } finally {
    await upstream.close();
  }
});

Deno.test("default Anthropic reply echoes the model with cache usage", async () => {
  const upstream = startMockUpstream();
  try {
    const res = await post(upstream.url + "/v1/messages", { model: "claude-x", max_tokens: 5 });
    assert.equal(res.headers.get("content-type"), "application/json");
    const body: Json = await res.json();
    assert.equal(body.type, "message");
    assert.equal(body.model, "claude-x");
    assert.deepEqual(Object.keys(body.usage).sort(), [
      "cache_creation_input_tokens",
      "cache_read_input_tokens",
      "input_tokens",
      "output_tokens",
    ]);
  } finally {
    await upstream.close();
  }
});

Deno.test("default Anthropic stream runs message_start to message_stop", async () => {
  const upstream = startMockUpstream();
  try {
    const res = await post(upstream.url + "/v1/messages", { model: "claude-x", stream: true });
    assert.equal(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
    const events = parseSse(await res.text());
    assert.deepEqual(events.map((e) => e.event), [
      "message_start",
      "content_block_start",
      "ping",
      "content_block_delta",
      "content_block_delta",
      "content_block_delta",
      "content_block_stop",
      "message_delta",
      "message_stop",
    ]);
    const data: Json[] = events.map((e) => JSON.parse(e.data));
    assert.ok(data.every((d, i) => d.type === events[i].event));
    assert.equal(data[0].message.model, "claude-x");
    assert.equal(data[0].message.usage.output_tokens, 1);
    assert.equal(data[7].usage.output_tokens, 3);
    assert.equal(data.slice(3, 6).map((d) => d.delta.text).join(""), "Hello from the mock");
  } finally {
    await upstream.close();
  }
});

Deno.test("stream generators give every requested delta some text", () => {
  const openai = openaiStreamChunks("m", { text: "Hi 👋", events: 10 });
  assert.equal(openai.length, 1 + 10 + 1 + 1);
  const deltas = openai.slice(1, 11).map((e) => JSON.parse(e.slice(6)).choices[0].delta.content);
  assert.ok(deltas.every((d: string) => d.length > 0 && !d.includes("\uFFFD")));
  const anthropic = anthropicStreamChunks("m", { events: 7 });
  assert.equal(anthropic.filter((e) => e.startsWith("event: content_block_delta")).length, 7);
  assert.ok([...openai, ...anthropic].every((e) => e.endsWith("\n\n")));
});

Deno.test("unknown path answers 404 JSON", async () => {
  const upstream = startMockUpstream();
  try {
    const res = await fetch(upstream.url + "/v1/models");
    assert.equal(res.status, 404);
    const body: Json = await res.json();
    assert.match(body.error.message, /GET \/v1\/models/);
  } finally {
    await upstream.close();
  }
});

Deno.test("records every request in order, finished replies not counted as aborted", async () => {
  const seen: number[] = [];
  const upstream = startMockUpstream((_req, n) => {
    seen.push(n);
    return { status: 201, headers: { "x-mock": "yes" }, body: "plain" };
  });
  try {
    const first = await post(upstream.url + "/a?x=1", { model: "one" }, {
      headers: { "x-api-key": "k1" },
    });
    assert.equal(first.status, 201);
    assert.equal(first.headers.get("x-mock"), "yes");
    assert.equal(await first.text(), "plain");
    await (await fetch(upstream.url + "/b", { method: "PUT", body: "not json" })).body?.cancel();
    assert.deepEqual(seen, [0, 1]);
    const [a, b] = upstream.requests;
    assert.equal(upstream.requests.length, 2);
    assert.deepEqual([a.method, a.path, a.search], ["POST", "/a", "?x=1"]);
    assert.equal(a.headers.get("x-api-key"), "k1");
    assert.deepEqual(a.json, { model: "one" });
    assert.equal(decoder.decode(a.body), '{"model":"one"}');
    assert.deepEqual([b.method, b.json, decoder.decode(b.body)], ["PUT", undefined, "not json"]);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(upstream.aborted, 0);
  } finally {
    await upstream.close();
  }
});

Deno.test("with record off, replies are still numbered but no request is kept", async () => {
  const seen: number[] = [];
  const upstream = startMockUpstream((_req, n) => {
    seen.push(n);
    return { body: "plain" };
  }, { record: false });
  try {
    for (let i = 0; i < 3; i++) {
      assert.equal(await (await post(upstream.url + "/a", { model: "one" })).text(), "plain");
    }
    assert.deepEqual(seen, [0, 1, 2]);
    assert.equal(upstream.requests.length, 0);
  } finally {
    await upstream.close();
  }
});

Deno.test("scripted chunks arrive in order after delayMs and chunkDelayMs", async () => {
  const upstream = startMockUpstream(() => ({
    delayMs: 60,
    chunkDelayMs: 10,
    chunks: ["data: a\n\n", new TextEncoder().encode("data: b\n\n")],
  }));
  try {
    const started = performance.now();
    const res = await fetch(upstream.url);
    assert.ok(performance.now() - started >= 50, "headers were not delayed");
    assert.equal(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
    assert.equal(await res.text(), "data: a\n\ndata: b\n\n");
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(upstream.aborted, 0, "a late request.signal counted as an abort");
  } finally {
    await upstream.close();
  }
});

Deno.test("hang headers ends when the client aborts, and counts it", async () => {
  const upstream = startMockUpstream(() => ({ hang: "headers" }));
  try {
    const client = new AbortController();
    const res = fetch(upstream.url, { signal: client.signal });
    while (upstream.requests.length === 0) await new Promise((r) => setTimeout(r, 5));
    client.abort();
    await assert.rejects(res, { name: "AbortError" });
    await upstream.whenAborted();
    assert.equal(upstream.aborted, 1);
  } finally {
    await upstream.close();
  }
});

Deno.test("hang body sends the chunks, then holds until the client cancels", async () => {
  const upstream = startMockUpstream(() => ({ hang: "body", chunks: ["data: 1\n\n"] }));
  try {
    const res = await fetch(upstream.url);
    const reader = res.body!.getReader();
    assert.equal(decoder.decode((await reader.read()).value), "data: 1\n\n");
    const next = reader.read();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const settled = await Promise.race([
      next.then(() => "settled"),
      new Promise((r) => timer = setTimeout(r, 50, "pending")),
    ]);
    clearTimeout(timer);
    assert.equal(settled, "pending");
    await reader.cancel();
    await next;
    await upstream.whenAborted();
    assert.equal(upstream.aborted, 1);
  } finally {
    await upstream.close();
  }
});

Deno.test("client abort during delayMs counts once and ends the delay", async () => {
  const upstream = startMockUpstream(() => ({ delayMs: 5_000, body: "late" }));
  try {
    const started = performance.now();
    await assert.rejects(fetch(upstream.url, { signal: AbortSignal.timeout(30) }));
    await upstream.whenAborted();
    assert.equal(upstream.aborted, 1);
    await upstream.close();
    assert.ok(performance.now() - started < 1_000, "close waited for the delay");
  } finally {
    await upstream.close();
  }
});

Deno.test("close ends header and body hangs without counting aborts", async () => {
  const upstream = startMockUpstream((req) =>
    req.path === "/headers" ? { hang: "headers" } : { hang: "body", chunks: ["data: 1\n\n"] }
  );
  const res = await fetch(upstream.url + "/body");
  const reader = res.body!.getReader();
  await reader.read();
  const next = reader.read().then(() => "closed", () => "errored");
  const headerHang = fetch(upstream.url + "/headers");
  while (upstream.requests.length < 2) await new Promise((r) => setTimeout(r, 5));
  await upstream.close();
  assert.equal(await next, "errored");
  const late = await headerHang;
  assert.equal(late.status, 503);
  await late.body?.cancel();
  assert.equal(upstream.aborted, 0);
});

Deno.test("reset after the chunks makes the client's body read fail", async () => {
  const upstream = startMockUpstream(() => ({ chunks: ["data: partial\n\n"], reset: true }));
  try {
    const res = await fetch(upstream.url);
    assert.equal(res.status, 200);
    await assert.rejects(res.text());
    assert.equal(upstream.aborted, 0);
  } finally {
    await upstream.close();
  }
});

Deno.test("closedPort refuses connections", async () => {
  await assert.rejects(fetch(`http://127.0.0.1:${closedPort()}/`), TypeError);
});

Deno.test("failureReply speaks each API's error shape", async () => {
  assert.deepEqual(failureReply("/v1/chat/completions", 503), {
    status: 503,
    body: {
      error: {
        message: "Mock upstream failure with status 503",
        type: "server_error",
        param: null,
        code: null,
      },
    },
  });
  const anthropicType = (status: number) =>
    (failureReply("/v1/messages", status).body as Json).error.type;
  assert.deepEqual([529, 429, 500].map(anthropicType), [
    "overloaded_error",
    "rate_limit_error",
    "api_error",
  ]);
  const script: MockScript = (req) => failureReply(req.path, 529);
  const upstream = startMockUpstream(script);
  try {
    const res = await post(upstream.url + "/v1/messages", { model: "m" });
    assert.equal(res.status, 529);
    assert.equal(res.headers.get("content-type"), "application/json");
    const body: Json = await res.json();
    assert.equal(body.type, "error");
    assert.equal(body.error.type, "overloaded_error");
  } finally {
    await upstream.close();
  }
});

Deno.test("default Responses reply is a completed response the OpenAI SDK reads", async () => {
  const upstream = startMockUpstream();
  try {
    const raw = await post(upstream.url + "/v1/responses", { model: "gpt-r", input: "Hi" });
    assert.equal(raw.headers.get("content-type"), "application/json");
    const body: Json = await raw.json();
    assert.deepEqual([body.object, body.status, body.model], ["response", "completed", "gpt-r"]);
    assert.deepEqual(body.output[0].content, [
      { type: "output_text", annotations: [], logprobs: [], text: "Hello from the mock" },
    ]);
    assert.deepEqual(body.usage, {
      input_tokens: 12,
      input_tokens_details: { cache_write_tokens: 0, cached_tokens: 0 },
      output_tokens: 4,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: 16,
    });
    const client = new OpenAI({ apiKey: "sk-test", baseURL: `${upstream.url}/v1`, maxRetries: 0 });
    const response = await client.responses.create({ model: "gpt-r", input: "Hi" });
    assert.equal(response.output_text, "Hello from the mock");
    assert.equal(upstream.requests[1].path, "/v1/responses");
  } finally {
    await upstream.close();
  }
});

Deno.test("Responses generator honours text and token details", () => {
  const body: Json = openaiResponse("m", { text: "a b c", cachedTokens: 5, reasoningTokens: 2 });
  assert.equal(body.output[0].content[0].text, "a b c");
  assert.equal(body.usage.output_tokens, 3);
  assert.equal(body.usage.input_tokens_details.cached_tokens, 5);
  assert.equal(body.usage.output_tokens_details.reasoning_tokens, 2);
});

Deno.test("default Responses stream runs response.created to response.completed", async () => {
  const upstream = startMockUpstream();
  try {
    const res = await post(upstream.url + "/v1/responses", {
      model: "gpt-r",
      input: "Hi",
      stream: true,
    });
    assert.equal(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
    const events = parseSse(await res.text());
    assert.deepEqual(events.map((e) => e.event), [
      "response.created",
      "response.in_progress",
      "response.output_item.added",
      "response.content_part.added",
      "response.output_text.delta",
      "response.output_text.delta",
      "response.output_text.delta",
      "response.output_text.done",
      "response.content_part.done",
      "response.output_item.done",
      "response.completed",
    ]);
    const data: Json[] = events.map((e) => JSON.parse(e.data));
    data.forEach((d, i) => {
      assert.deepEqual(Object.keys(d).slice(0, 2), ["type", "sequence_number"]);
      assert.equal(d.type, events[i].event);
      assert.equal(d.sequence_number, i);
    });
    assert.equal(data[0].response.status, "in_progress");
    assert.equal(data[0].response.usage, null);
    assert.deepEqual(data[0].response.output, []);
    const text = data.slice(4, 7).map((d) => d.delta).join("");
    assert.equal(text, "Hello from the mock");
    assert.equal(data[7].text, text);
    assert.equal(data[9].item.content[0].text, text);
    const itemId = data[2].item.id;
    assert.ok(data.slice(3, 9).every((d) => d.item_id === itemId));
    const completed = data[10].response;
    assert.deepEqual([completed.status, completed.model], ["completed", "gpt-r"]);
    assert.equal(completed.id, data[0].response.id);
    assert.deepEqual(completed.output, [data[9].item]);
    assert.equal(completed.usage.output_tokens, 4);
  } finally {
    await upstream.close();
  }
});

Deno.test("the OpenAI SDK streams the mock's Responses events to response.completed", async () => {
  const upstream = startMockUpstream((req) => defaultReply(req, 0, { events: 5 }));
  try {
    const client = new OpenAI({ apiKey: "sk-test", baseURL: `${upstream.url}/v1`, maxRetries: 0 });
    const stream = await client.responses.create({ model: "gpt-r", input: "Hi", stream: true });
    const types: string[] = [];
    let text = "";
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "response.output_text.delta") text += event.delta;
    }
    assert.equal(types.filter((t) => t === "response.output_text.delta").length, 5);
    assert.equal(types.at(-1), "response.completed");
    assert.equal(text, "Hello from the mock");
  } finally {
    await upstream.close();
  }
});

Deno.test("Responses error event has ResponseErrorEvent's fields and the SDK raises it", async () => {
  const event = openaiResponseErrorEvent("Overloaded", { code: "server_error" });
  assert.equal(event.split("\n")[0], "event: error");
  assert.deepEqual(JSON.parse(event.split("\n")[1].slice(6)), {
    type: "error",
    sequence_number: 0,
    code: "server_error",
    message: "Overloaded",
    param: null,
  });
  const upstream = startMockUpstream(() => ({ headers: { ...sseHeaders }, chunks: [event] }));
  try {
    const client = new OpenAI({ apiKey: "sk-test", baseURL: `${upstream.url}/v1`, maxRetries: 0 });
    const stream = await client.responses.create({ model: "m", input: "Hi", stream: true });
    await assert.rejects(async () => {
      for await (const _ of stream) { /* drain */ }
    }, (error: Json) => error instanceof OpenAI.APIError && /Overloaded/.test(error.message));
  } finally {
    await upstream.close();
  }
});

Deno.test("default embeddings reply gives one vector per input, float or base64", async () => {
  const upstream = startMockUpstream();
  try {
    const input = ["first text here", "second"];
    const floats: Json = await (await post(upstream.url + "/v1/embeddings", {
      model: "emb",
      input,
      encoding_format: "float",
    })).json();
    assert.deepEqual(Object.keys(floats), ["object", "data", "model", "usage"]);
    assert.equal(floats.object, "list");
    assert.equal(floats.model, "emb");
    assert.deepEqual(floats.usage, { prompt_tokens: 4, total_tokens: 4 });
    assert.deepEqual(floats.data.map((d: Json) => [d.object, d.index]), [
      ["embedding", 0],
      ["embedding", 1],
    ]);
    const [a, b] = floats.data.map((d: Json) => d.embedding as number[]);
    assert.equal(a.length, 8);
    assert.notDeepEqual(a, b);
    assert.ok(Math.abs(Math.hypot(...a) - 1) < 1e-5, "unit length");
    assert.deepEqual(a, mockEmbedding("first text here"));
    const base64: Json = await (await post(upstream.url + "/embeddings", {
      model: "emb",
      input: "first text here",
      encoding_format: "base64",
      dimensions: 4,
    })).json();
    assert.equal(typeof base64.data[0].embedding, "string");
    const bytes = Uint8Array.from(atob(base64.data[0].embedding), (c) => c.charCodeAt(0));
    assert.deepEqual(
      Array.from(new Float32Array(bytes.buffer)),
      mockEmbedding("first text here", 4),
    );
    // The SDK asks for base64 unless told otherwise, and decodes it to the same numbers.
    const client = new OpenAI({ apiKey: "sk-test", baseURL: `${upstream.url}/v1`, maxRetries: 0 });
    const viaSdk = await client.embeddings.create({ model: "emb", input });
    assert.equal((upstream.requests.at(-1)!.json as Json).encoding_format, "base64");
    assert.deepEqual(Array.from(viaSdk.data[1].embedding), b);
  } finally {
    await upstream.close();
  }
});

Deno.test("default count_tokens reply counts the request's words for the Anthropic SDK", async () => {
  const upstream = startMockUpstream();
  try {
    const client = new Anthropic({ apiKey: "sk-test", baseURL: upstream.url, maxRetries: 0 });
    const counted = await client.messages.countTokens({
      model: "claude-x",
      system: "Be brief",
      messages: [{ role: "user", content: [{ type: "text", text: "one two three" }] }],
    });
    assert.deepEqual(counted, { input_tokens: 5 });
    assert.equal(upstream.requests[0].path, "/v1/messages/count_tokens");
    assert.deepEqual(anthropicTokenCount({ model: "m", messages: [] }), { input_tokens: 1 });
  } finally {
    await upstream.close();
  }
});

Deno.test("failureReply speaks Anthropic's shape for count_tokens, OpenAI's for the rest", () => {
  const anthropicBody = failureReply("/v1/messages/count_tokens", 529).body as Json;
  assert.deepEqual(anthropicBody.type, "error");
  assert.equal(anthropicBody.error.type, "overloaded_error");
  for (const path of ["/v1/responses", "/v1/embeddings"]) {
    assert.equal((failureReply(path, 503).body as Json).error.type, "server_error");
  }
});
