import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { createParser, type EventSourceMessage } from "eventsource-parser";
import type { RequestRecord } from "../src/record.ts";
import {
  type MockReply,
  type MockUpstream,
  sseHeaders,
  startMockUpstream,
} from "../tools/mock_upstream.ts";
import { concat, provider, rawServer, type RunningRouter, startRouter, within } from "./harness.ts";
import { attemptsOf } from "./resilience_util.ts";

type Api = "openai" | "anthropic";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const PATHS: Record<Api, string> = {
  openai: "/openai/v1/chat/completions",
  anthropic: "/anthropic/v1/messages",
};

const MODELS: Record<Api, string> = { openai: "gpt-4o", anthropic: "claude-mock-1" };

async function fixture(name: string): Promise<Uint8Array> {
  return await Deno.readFile(new URL(`./fixtures/${name}`, import.meta.url));
}

async function fixtureText(name: string): Promise<string> {
  return decoder.decode(await fixture(name));
}

function toCrlf(bytes: Uint8Array): Uint8Array {
  return encoder.encode(decoder.decode(bytes).replaceAll("\n", "\r\n"));
}

/**
 * Cuts bytes inside every CRLF, after the lead byte of every multi-byte character, inside every
 * `data:`, between the two newlines of every LF blank line, and every 61 bytes.
 */
function awkwardChunks(bytes: Uint8Array): Uint8Array[] {
  const cuts = new Set<number>();
  const dataField = encoder.encode("data:");
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === 0x0d && bytes[i + 1] === 0x0a) cuts.add(i + 1);
    if (bytes[i] === 0x0a && bytes[i + 1] === 0x0a) cuts.add(i + 1);
    if (bytes[i] >= 0xc0) cuts.add(i + 1);
    if (dataField.every((b, j) => bytes[i + j] === b)) cuts.add(i + 3);
    if (i % 61 === 0) cuts.add(i);
  }
  const sorted = [...cuts].filter((cut) => cut > 0 && cut < bytes.length).sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let from = 0;
  for (const cut of sorted) {
    chunks.push(bytes.slice(from, cut));
    from = cut;
  }
  chunks.push(bytes.slice(from));
  return chunks;
}

function assertBytes(actual: Uint8Array, expected: Uint8Array, label = "body"): void {
  const length = Math.min(actual.length, expected.length);
  let at = 0;
  while (at < length && actual[at] === expected[at]) at++;
  if (at === length && actual.length === expected.length) return;
  const around = (bytes: Uint8Array) =>
    JSON.stringify(decoder.decode(bytes.subarray(Math.max(0, at - 40), at + 40)));
  assert.fail(
    `${label}: ${actual.length} bytes, expected ${expected.length}; first difference at ${at}: ` +
      `got ${around(actual)}, expected ${around(expected)}`,
  );
}

/** Parses SSE like a client does: an event unfinished at end of input is not dispatched. */
function sseEvents(bytes: Uint8Array | string): EventSourceMessage[] {
  const events: EventSourceMessage[] = [];
  const parser = createParser({ onEvent: (event) => events.push(event) });
  parser.feed(typeof bytes === "string" ? bytes : decoder.decode(bytes));
  return events;
}

/** Splits LF-framed SSE text into its events, each with its blank line. */
function eventTexts(text: string): string[] {
  return text.split(/(?<=\n\n)/).filter((event) => event.length > 0);
}

function post(router: RunningRouter, api: Api, body: unknown): Promise<Response> {
  return fetch(router.url + PATHS[api], {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

function streamRequest(api: Api): object {
  const messages = [{ role: "user", content: "Say bonjour" }];
  return api === "openai"
    ? { model: MODELS.openai, stream: true, messages }
    : { model: MODELS.anthropic, max_tokens: 64, stream: true, messages };
}

async function bodyBytes(response: Response): Promise<Uint8Array> {
  return new Uint8Array(await response.arrayBuffer());
}

function sse(chunks: (string | Uint8Array)[], extra: MockReply = {}): MockReply {
  return { headers: { ...sseHeaders }, chunks, ...extra };
}

/** Runs `body` with a router in front of mock providers "a", "b"... of one API type. */
async function withProviders(
  api: Api,
  replies: { reply: MockReply | (() => MockReply); extra?: object }[],
  body: (router: RunningRouter, mocks: MockUpstream[]) => Promise<void>,
): Promise<void> {
  const mocks = replies.map(({ reply }) =>
    startMockUpstream(() => typeof reply === "function" ? reply() : reply)
  );
  const names = ["a", "b", "c"];
  const router = startRouter({
    providers: mocks.map((mock, i) => provider(names[i], api, mock.url, replies[i].extra)),
  });
  try {
    await body(router, mocks);
  } finally {
    for (const mock of mocks) await mock.close();
    await router.close();
  }
}

async function lastRecord(router: RunningRouter, count = 1): Promise<RequestRecord> {
  const records = await within(router.sink.waitFor(count), `${count} record(s)`);
  assert.equal(records.length, count);
  return records[count - 1];
}

/** The official clients pointed at the router, with their own retries off. */
function openaiClient(router: RunningRouter): OpenAI {
  return new OpenAI({ apiKey: "sk-client", baseURL: `${router.url}/openai`, maxRetries: 0 });
}

function anthropicClient(router: RunningRouter): Anthropic {
  return new Anthropic({ apiKey: "sk-client", baseURL: `${router.url}/anthropic`, maxRetries: 0 });
}

/** The Anthropic SDK reading a stream through the router raises an APIError of `type`. */
async function assertAnthropicStreamFails(router: RunningRouter, type: string): Promise<void> {
  await assert.rejects(async () => {
    const stream = await anthropicClient(router).messages.create({
      model: "claude-mock-1",
      max_tokens: 64,
      messages: [{ role: "user", content: "Hi" }],
      stream: true,
    });
    for await (const _ of stream) { /* drain */ }
  }, (error: unknown) => {
    assert.ok(error instanceof Anthropic.APIError, String(error));
    assert.equal(error.type, type);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------
// Unchanged bytes

const STREAM_FIXTURES: [Api, string][] = [
  ["openai", "openai_chat_stream_usage.sse"],
  ["openai", "openai_chat_stream_tool_calls.sse"],
  ["anthropic", "anthropic_messages_stream.sse"],
  ["anthropic", "anthropic_messages_stream_tool_use.sse"],
];

for (const [api, name] of STREAM_FIXTURES) {
  for (const crlf of [false, true]) {
    const endings = crlf ? "CRLF" : "LF";
    Deno.test(`${name} (${endings}) split at awkward offsets reaches the client byte for byte`, async () => {
      const raw = await fixture(name);
      const bytes = crlf ? toCrlf(raw) : raw;
      const chunks = awkwardChunks(bytes);
      assert.ok(chunks.length > 20, "the fixture is cut in many places");
      if (crlf) {
        assert.ok(chunks.some((chunk) => chunk[chunk.length - 1] === 0x0d), "a cut inside CRLF");
      }
      if (raw.some((b) => b >= 0x80)) {
        assert.ok(chunks.some((chunk) => chunk.at(-1)! >= 0xc0), "a cut inside a character");
      }
      await withProviders(
        api,
        [{ reply: sse(chunks, { chunkDelayMs: 1 }) }, { reply: sse(["data: [DONE]\n\n"]) }],
        async (router, [, b]) => {
          const response = await post(router, api, streamRequest(api));
          assert.equal(response.status, 200);
          assert.equal(response.headers.get("content-type"), sseHeaders["content-type"]);
          assert.equal(response.headers.get("x-llm-router-provider"), "a");
          assertBytes(await bodyBytes(response), bytes);
          const record = await lastRecord(router);
          assert.deepEqual(attemptsOf(record), [["a", 200, null]]);
          assert.equal(record.stream_complete, true);
          assert.equal(record.stream_events, sseEvents(bytes).length);
          assert.equal(record.error, null);
          assert.equal(b.requests.length, 0);
        },
      );
    });
  }
}

const JSON_FIXTURES: [Api, string][] = [
  ["openai", "openai_chat_completion.json"],
  ["anthropic", "anthropic_message.json"],
];

for (const [api, name] of JSON_FIXTURES) {
  for (const crlf of [false, true]) {
    const endings = crlf ? "CRLF" : "LF";
    Deno.test(`${name} (${endings}) sent in awkward chunks reaches the client byte for byte`, async () => {
      const raw = await fixture(name);
      const bytes = crlf ? toCrlf(raw) : raw;
      // Cut every 7 bytes: inside keys, numbers, CRLFs.
      const chunks: Uint8Array[] = [];
      for (let i = 0; i < bytes.length; i += 7) chunks.push(bytes.slice(i, i + 7));
      const reply: MockReply = {
        headers: { "content-type": "application/json" },
        chunks,
        chunkDelayMs: 1,
      };
      await withProviders(api, [{ reply }], async (router) => {
        const request = { ...streamRequest(api), stream: false };
        const response = await post(router, api, request);
        assert.equal(response.status, 200);
        assert.equal(response.headers.get("content-type"), "application/json");
        assertBytes(await bodyBytes(response), bytes);
        const record = await lastRecord(router);
        assert.deepEqual(record.response, JSON.parse(decoder.decode(raw)));
        assert.deepEqual(record.usage, JSON.parse(decoder.decode(raw)).usage);
        assert.deepEqual(attemptsOf(record), [["a", 200, null]]);
      });
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Official SDKs

Deno.test("OpenAI SDK streams through the router and the record has usage and the reassembled completion", async () => {
  const bytes = await fixture("openai_chat_stream_usage.sse");
  await withProviders(
    "openai",
    [{ reply: sse(awkwardChunks(bytes), { chunkDelayMs: 1 }) }],
    async (router, [a]) => {
      const client = openaiClient(router);
      const stream = await client.chat.completions.create({
        model: "gpt-4o",
        messages: [{ role: "user", content: "Say bonjour" }],
        stream: true,
        stream_options: { include_usage: true },
      });
      let text = "";
      let usage: unknown = null;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta?.content ?? "";
        if (chunk.usage) usage = chunk.usage;
      }
      assert.equal(text, "Bonjour à vous 👋");
      const expectedUsage = {
        prompt_tokens: 19,
        completion_tokens: 5,
        total_tokens: 24,
        prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
        completion_tokens_details: {
          reasoning_tokens: 0,
          audio_tokens: 0,
          accepted_prediction_tokens: 0,
          rejected_prediction_tokens: 0,
        },
      };
      assert.deepEqual(usage, expectedUsage);
      assert.deepEqual((a.requests[0].json as { stream_options: unknown }).stream_options, {
        include_usage: true,
      });
      const record = await lastRecord(router);
      assert.equal(record.status, 200);
      assert.equal(record.provider, "a");
      assert.equal(record.stream, true);
      assert.deepEqual(record.usage, expectedUsage);
      assert.equal(record.stream_events, 7);
      assert.equal(record.stream_complete, true);
      assert.equal(typeof record.ttfb_ms, "number");
      assert.equal(record.error, null);
      assert.deepEqual(record.response, {
        id: "chatcmpl-9xQ2rT5vLm",
        object: "chat.completion",
        created: 1764460800,
        model: "gpt-4o-2024-08-06",
        service_tier: "default",
        system_fingerprint: "fp_b7d65f1a5b",
        choices: [{
          index: 0,
          message: { role: "assistant", content: "Bonjour à vous 👋", refusal: null },
          finish_reason: "stop",
        }],
        usage: expectedUsage,
      });
    },
  );
});

Deno.test("OpenAI SDK streams tool calls through the router and the record reassembles them", async () => {
  const bytes = await fixture("openai_chat_stream_tool_calls.sse");
  await withProviders("openai", [{ reply: sse(awkwardChunks(bytes)) }], async (router) => {
    const client = openaiClient(router);
    const stream = await client.chat.completions.create({
      model: "gpt-4o",
      messages: [{ role: "user", content: "Weather and time in Paris?" }],
      stream: true,
    });
    let finish: string | null = null;
    for await (const chunk of stream) finish = chunk.choices[0]?.finish_reason ?? finish;
    assert.equal(finish, "tool_calls");
    const record = await lastRecord(router);
    assert.equal(record.usage, null);
    assert.equal(record.stream_complete, true);
    const response = record.response as { choices: { message: unknown }[] };
    assert.deepEqual(response.choices[0].message, {
      role: "assistant",
      content: null,
      refusal: null,
      tool_calls: [
        {
          id: "call_Qm3v8Xw1",
          type: "function",
          function: { name: "get_weather", arguments: '{"location": "Paris"}' },
        },
        {
          id: "call_Zr9k2Lp4",
          type: "function",
          function: { name: "get_time", arguments: '{"tz": "Europe/Paris"}' },
        },
      ],
    });
  });
});

const ANTHROPIC_TEXT_USAGE = {
  input_tokens: 472,
  cache_creation_input_tokens: 0,
  cache_read_input_tokens: 2048,
  output_tokens: 6,
};

Deno.test("Anthropic SDK messages.create stream works through the router and the record merges usage", async () => {
  const bytes = await fixture("anthropic_messages_stream.sse");
  await withProviders(
    "anthropic",
    [{ reply: sse(awkwardChunks(bytes), { chunkDelayMs: 1 }) }],
    async (router) => {
      const client = anthropicClient(router);
      const stream = await client.messages.create({
        model: "claude-mock-1",
        max_tokens: 64,
        messages: [{ role: "user", content: "Say bonjour" }],
        stream: true,
      });
      let text = "";
      const types: string[] = [];
      for await (const event of stream) {
        types.push(event.type);
        if (event.type === "content_block_delta" && event.delta.type === "text_delta") {
          text += event.delta.text;
        }
      }
      assert.equal(text, "Bonjour à vous 👋");
      assert.equal(types.at(-1), "message_stop");
      const record = await lastRecord(router);
      assert.equal(record.status, 200);
      assert.equal(record.provider, "a");
      assert.deepEqual(record.usage, ANTHROPIC_TEXT_USAGE);
      assert.equal(record.stream_events, 8);
      assert.equal(record.stream_complete, true);
      assert.equal(typeof record.ttfb_ms, "number");
      assert.equal(record.error, null);
      assert.deepEqual(record.response, {
        id: "msg_01XFDUDYJgAACzvnptvVoYEL",
        type: "message",
        role: "assistant",
        model: "claude-sonnet-4-5-20250929",
        content: [{ type: "text", text: "Bonjour à vous 👋" }],
        stop_reason: "end_turn",
        stop_sequence: null,
        usage: ANTHROPIC_TEXT_USAGE,
      });
    },
  );
});

Deno.test("Anthropic SDK messages.stream with thinking and tool use works and the record reassembles it", async () => {
  const bytes = await fixture("anthropic_messages_stream_tool_use.sse");
  await withProviders("anthropic", [{ reply: sse(awkwardChunks(bytes)) }], async (router) => {
    const client = anthropicClient(router);
    let text = "";
    const stream = client.messages.stream({
      model: "claude-mock-1",
      max_tokens: 1024,
      messages: [{ role: "user", content: "Weather in Paris?" }],
    });
    stream.on("text", (delta) => text += delta);
    const final = await stream.finalMessage();
    assert.equal(text, "Let me check the weather.");
    assert.equal(final.stop_reason, "tool_use");
    const usage = {
      input_tokens: 637,
      cache_creation_input_tokens: 1200,
      cache_read_input_tokens: 0,
      output_tokens: 89,
    };
    const record = await lastRecord(router);
    assert.deepEqual(record.usage, usage);
    assert.equal(record.stream_complete, true);
    assert.equal(record.stream_events, 15);
    assert.equal(typeof record.ttfb_ms, "number");
    assert.deepEqual(record.response, {
      id: "msg_014p7gG3wDgGV9EUtLvnow3U",
      type: "message",
      role: "assistant",
      model: "claude-sonnet-4-5-20250929",
      content: [
        {
          type: "thinking",
          thinking: "The user wants the weather in Paris.",
          signature: "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds",
        },
        { type: "text", text: "Let me check the weather." },
        {
          type: "tool_use",
          id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
          name: "get_weather",
          input: { location: "Paris", unit: "celsius" },
        },
      ],
      stop_reason: "tool_use",
      stop_sequence: null,
      usage,
    });
  });
});

// ---------------------------------------------------------------------------------------------
// First-event commit rule

/** Non-output events provider A sends first; their ids must never reach the client. */
const HELD: Record<Api, { marker: string; events: string; error: () => Promise<string> }> = {
  openai: {
    marker: "chatcmpl-A-held-never-sent",
    events: `data: ${
      JSON.stringify({
        id: "chatcmpl-A-held-never-sent",
        object: "chat.completion.chunk",
        created: 1764460000,
        model: "gpt-4o-2024-08-06",
        choices: [{
          index: 0,
          delta: { role: "assistant", content: "" },
          logprobs: null,
          finish_reason: null,
        }],
      })
    }\n\n`,
    error: () =>
      Promise.resolve(
        `data: ${
          JSON.stringify({
            error: {
              message: "The server had an error while processing your request.",
              type: "server_error",
              param: null,
              code: null,
            },
          })
        }\n\n`,
      ),
  },
  anthropic: {
    marker: "msg_A_held_never_sent",
    events: `event: message_start\ndata: ${
      JSON.stringify({
        type: "message_start",
        message: {
          id: "msg_A_held_never_sent",
          type: "message",
          role: "assistant",
          model: "claude-sonnet-4-5-20250929",
          content: [],
          stop_reason: null,
          stop_sequence: null,
          usage: { input_tokens: 9, output_tokens: 1 },
        },
      })
    }\n\nevent: ping\ndata: {"type": "ping"}\n\n`,
    error: () => fixtureText("anthropic_stream_overloaded.sse"),
  },
};

const B_FIXTURE: Record<Api, string> = {
  openai: "openai_chat_stream_usage.sse",
  anthropic: "anthropic_messages_stream.sse",
};

type Failure =
  | "error_event"
  | "timeout"
  | "stream_interrupted (close)"
  | "stream_interrupted (reset)";

async function failingBeforeOutput(api: Api, failure: Failure): Promise<MockReply> {
  const held = HELD[api].events;
  switch (failure) {
    case "error_event":
      // The delay makes the held events and the error event arrive in separate reads.
      return sse([held, await HELD[api].error()], { chunkDelayMs: 20 });
    case "timeout":
      return sse([held], { hang: "body" });
    case "stream_interrupted (close)":
      return sse([held]);
    case "stream_interrupted (reset)":
      return sse([held], { reset: true });
  }
}

const FAILURES: Failure[] = [
  "error_event",
  "timeout",
  "stream_interrupted (close)",
  "stream_interrupted (reset)",
];

for (const api of ["anthropic", "openai"] as const) {
  for (const failure of FAILURES) {
    Deno.test(`${api} stream failing before output (${failure}) falls back; the client gets only B's bytes`, async () => {
      const aReply = await failingBeforeOutput(api, failure);
      const bBytes = await fixture(B_FIXTURE[api]);
      await withProviders(
        api,
        [{ reply: aReply, extra: { timeout_ms: 300 } }, { reply: sse(awkwardChunks(bBytes)) }],
        async (router, [a, b]) => {
          const response = await post(router, api, streamRequest(api));
          assert.equal(response.status, 200);
          assert.equal(response.headers.get("x-llm-router-provider"), "b");
          assert.equal(response.headers.get("x-llm-router-attempts"), "2");
          const received = await bodyBytes(response);
          assert.ok(
            !decoder.decode(received).includes(HELD[api].marker),
            "A's id reached the client",
          );
          assertBytes(received, bBytes);
          const record = await lastRecord(router);
          const kind = failure.split(" ")[0];
          assert.deepEqual(attemptsOf(record), [["a", 200, kind], ["b", 200, null]]);
          assert.equal(record.provider, "b");
          assert.equal(record.status, 200);
          assert.equal(record.retries, 1);
          assert.equal(record.stream_complete, true);
          assert.equal(a.requests.length, 1);
          assert.equal(b.requests.length, 1);
        },
      );
    });
  }
}

Deno.test("anthropic: the last provider's message_start and error event reach the client as sent", async () => {
  const sent = encoder.encode(HELD.anthropic.events + await HELD.anthropic.error());
  await withProviders("anthropic", [{ reply: sse(awkwardChunks(sent)) }], async (router) => {
    const response = await post(router, "anthropic", streamRequest("anthropic"));
    assert.equal(response.status, 200);
    assertBytes(await bodyBytes(response), sent);
    const record = await lastRecord(router);
    assert.deepEqual(attemptsOf(record), [["a", 200, "error_event"]]);
    assert.equal(record.provider, "a");

    await assertAnthropicStreamFails(router, "overloaded_error");
    await lastRecord(router, 2);
  });
});

Deno.test("openai: the last provider's role chunk and error chunk reach the client as sent", async () => {
  const sent = encoder.encode(HELD.openai.events + await HELD.openai.error());
  await withProviders("openai", [{ reply: sse(awkwardChunks(sent)) }], async (router) => {
    const response = await post(router, "openai", streamRequest("openai"));
    assert.equal(response.status, 200);
    assertBytes(await bodyBytes(response), sent);
    const record = await lastRecord(router);
    assert.deepEqual(attemptsOf(record), [["a", 200, "error_event"]]);

    const client = openaiClient(router);
    await assert.rejects(async () => {
      const stream = await client.chat.completions.create({
        model: "gpt-4o",
        messages: [{ role: "user", content: "Hi" }],
        stream: true,
      });
      for await (const _ of stream) { /* drain */ }
    }, OpenAI.APIError);
    await lastRecord(router, 2);
  });
});

Deno.test("more than 64 KiB of held events commits to a provider that is not the last", async () => {
  const ping = 'event: ping\ndata: {"type": "ping"}\n\n';
  const pings = ping.repeat(Math.ceil(70 * 1024 / ping.length));
  const sent = encoder.encode(HELD.anthropic.events + pings);
  assert.ok(sent.length > 64 * 1024);
  // A then stalls: without the hold limit the router would wait for output, time out and go to B.
  const pieces: Uint8Array[] = [];
  for (let i = 0; i < sent.length; i += 4096) pieces.push(sent.slice(i, i + 4096));
  const aReply = sse(pieces, { hang: "body" });
  await withProviders(
    "anthropic",
    [{ reply: aReply, extra: { timeout_ms: 300 } }, { reply: sse(["event: message_stop\n\n"]) }],
    async (router, [a, b]) => {
      const response = await post(router, "anthropic", streamRequest("anthropic"));
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("x-llm-router-provider"), "a");
      await new Promise((resolve) => setTimeout(resolve, 600));
      const reader = response.body!.getReader();
      const parts: Uint8Array[] = [];
      let length = 0;
      while (length < sent.length) {
        const { done, value } = await reader.read();
        if (done) break;
        parts.push(value);
        length += value.length;
      }
      await reader.cancel();
      assertBytes(concat(parts), sent);
      await within(a.whenAborted(), "the upstream to see the abort");
      const record = await lastRecord(router);
      assert.deepEqual(record.attempts.map((x) => x.provider), ["a"]);
      assert.equal(record.provider, "a");
      assert.equal(b.requests.length, 0);
    },
  );
});

// ---------------------------------------------------------------------------------------------
// Upstream failure after commit

type Ending = "reset" | "clean end" | "clean end, last event unterminated";

/** Whole events A sends after commit, and the tail (possibly partial) it sends before failing. */
async function committedThenFailing(
  api: Api,
  ending: Ending,
): Promise<{ whole: string; reply: MockReply }> {
  const events = eventTexts(await fixtureText(B_FIXTURE[api]));
  // Both fixtures: the events up to the first text delta, then the second text delta.
  const count = api === "openai" ? 2 : 4;
  const whole = events.slice(0, count).join("");
  const next = encoder.encode(events[count]);
  let chunks: Uint8Array[];
  switch (ending) {
    case "reset": {
      // Cut inside the next event, inside a multi-byte character.
      const cut = next.findIndex((b) => b >= 0xc0) + 1;
      chunks = [...awkwardChunks(encoder.encode(whole)), next.slice(0, cut)];
      return { whole, reply: sse(chunks, { reset: true }) };
    }
    case "clean end":
      return { whole, reply: sse(awkwardChunks(encoder.encode(whole))) };
    case "clean end, last event unterminated": {
      const unterminated = encoder.encode(events[count].replace(/\n\n$/, ""));
      return { whole, reply: sse([...awkwardChunks(encoder.encode(whole)), unterminated]) };
    }
  }
}

function assertOneErrorEventAtEnd(api: Api, received: Uint8Array): void {
  const events = sseEvents(received);
  const last = events.at(-1);
  assert.ok(last !== undefined, "the client got events");
  let data: { type?: string; error?: { type?: string; code?: string; message?: unknown } };
  try {
    data = JSON.parse(last.data);
  } catch {
    assert.fail(`the last event is not one well-formed event: ${JSON.stringify(last)}`);
  }
  if (api === "openai") {
    assert.equal(last.event, undefined);
    assert.deepEqual(Object.keys(data), ["error"]);
    assert.equal(data.error?.type, "upstream_error");
    assert.equal(data.error?.code, "stream_interrupted");
    assert.equal(typeof data.error?.message, "string");
    assert.ok(!events.some((event) => event.data === "[DONE]"), "a fake [DONE]");
    assert.equal(events.filter((event) => event.data.includes('"error"')).length, 1);
  } else {
    assert.equal(last.event, "error");
    assert.equal(data.type, "error");
    assert.equal(data.error?.type, "api_error");
    assert.equal(typeof data.error?.message, "string");
    assert.ok(!events.some((event) => event.event === "message_stop"), "a fake message_stop");
    assert.equal(events.filter((event) => event.event === "error").length, 1);
  }
  const text = decoder.decode(received);
  assert.ok(/(\n\n|\r\n\r\n|\r\r)$/.test(text), "the error event is terminated");
}

const ENDINGS: Ending[] = ["reset", "clean end", "clean end, last event unterminated"];

for (const api of ["openai", "anthropic"] as const) {
  for (const ending of ENDINGS) {
    Deno.test(`${api} stream failing after commit (${ending}) ends with one error event; the SDK raises`, async () => {
      const { whole, reply } = await committedThenFailing(api, ending);
      await withProviders(
        api,
        [{ reply }, { reply: sse(["data: [DONE]\n\n"]) }],
        async (router, [, b]) => {
          const response = await post(router, api, streamRequest(api));
          assert.equal(response.status, 200);
          assert.equal(response.headers.get("x-llm-router-provider"), "a");
          const received = await bodyBytes(response);
          assertBytes(received.subarray(0, whole.length), encoder.encode(whole), "committed part");
          assertOneErrorEventAtEnd(api, received);
          if (ending !== "clean end, last event unterminated") {
            // Exactly the whole events, then the error event: a partial event is never forwarded.
            assert.equal(sseEvents(received).length, sseEvents(whole).length + 1);
            assert.equal(sseEvents(received.subarray(whole.length)).length, 1);
          }
          const record = await lastRecord(router);
          assert.equal(record.status, 200);
          assert.equal(record.error?.type, "stream_interrupted");
          assert.equal(record.stream_complete, false);
          assert.deepEqual(attemptsOf(record), [["a", 200, "stream_interrupted"]]);
          assert.equal(b.requests.length, 0);

          if (api === "openai") {
            const client = openaiClient(router);
            let text = "";
            await assert.rejects(async () => {
              const stream = await client.chat.completions.create({
                model: "gpt-4o",
                messages: [{ role: "user", content: "Hi" }],
                stream: true,
              });
              for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
            }, OpenAI.APIError);
            assert.ok(text.startsWith("Bonjour"));
          } else {
            await assertAnthropicStreamFails(router, "api_error");
          }
          await lastRecord(router, 2);
        },
      );
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Non-SSE answers to streaming requests

Deno.test("a streaming request answered with a non-SSE 200 JSON body passes through unchanged", async () => {
  const bytes = await fixture("openai_chat_completion.json");
  const reply: MockReply = {
    headers: { "content-type": "application/json" },
    chunks: awkwardChunks(bytes),
  };
  await withProviders(
    "openai",
    [{ reply }, { reply: sse(["data: [DONE]\n\n"]) }],
    async (router, [, b]) => {
      const response = await post(router, "openai", streamRequest("openai"));
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("content-type"), "application/json");
      assertBytes(await bodyBytes(response), bytes);
      const record = await lastRecord(router);
      assert.equal(record.stream, true);
      assert.deepEqual(record.response, JSON.parse(decoder.decode(bytes)));
      assert.deepEqual(record.usage, JSON.parse(decoder.decode(bytes)).usage);
      assert.deepEqual(attemptsOf(record), [["a", 200, null]]);
      assert.equal(b.requests.length, 0);
    },
  );
});

Deno.test("a streaming request answered with 400 JSON is returned unchanged without fallback", async () => {
  const errors = JSON.parse(await fixtureText("errors.json"));
  const bytes = encoder.encode(JSON.stringify(errors.anthropic["400"], null, 2));
  const reply: MockReply = {
    status: 400,
    headers: { "content-type": "application/json" },
    body: bytes,
  };
  await withProviders(
    "anthropic",
    [{ reply }, { reply: sse(["event: message_stop\n\n"]) }],
    async (router, [, b]) => {
      const response = await post(router, "anthropic", streamRequest("anthropic"));
      assert.equal(response.status, 400);
      assert.equal(response.headers.get("content-type"), "application/json");
      assertBytes(await bodyBytes(response), bytes);
      const record = await lastRecord(router);
      assert.equal(record.status, 400);
      assert.equal(record.provider, "a");
      assert.deepEqual(attemptsOf(record), [["a", 400, "http_status"]]);
      assert.equal(b.requests.length, 0);
    },
  );
});

// ---------------------------------------------------------------------------------------------
// Usage only when the client asked for it

Deno.test("an OpenAI stream without include_usage logs usage null and the router adds no stream_options", async () => {
  const mock = startMockUpstream();
  const router = startRouter({
    model_mapping: { "gpt-4": ["gpt-4o"] },
    providers: [provider("a", "openai", mock.url)],
  });
  try {
    const sent =
      '{ "stream" : true,"model":  "gpt-4" ,\n "messages": [{"role":"user","content":"\\u00e9t\\u00e9"}], "n": 1.0}';
    const response = await post(router, "openai", sent);
    assert.equal(response.status, 200);
    const events = sseEvents(await bodyBytes(response));
    assert.equal(events.at(-1)?.data, "[DONE]");
    assert.equal(mock.requests.length, 1);
    assert.equal(decoder.decode(mock.requests[0].body), sent.replace('"gpt-4"', '"gpt-4o"'));
    const record = await lastRecord(router);
    assert.equal(record.usage, null);
    assert.equal(record.stream_complete, true);
    assert.equal(record.upstream_model, "gpt-4o");
    assert.equal((record.response as { usage: unknown }).usage, null);
  } finally {
    await mock.close();
    await router.close();
  }
});

/** A whole stream of each API, its end marker included. */
const WHOLE_STREAM: Record<Api, string> = {
  openai: "openai_chat_stream_usage.sse",
  anthropic: "anthropic_messages_stream.sse",
};

for (const api of ["openai", "anthropic"] as const) {
  Deno.test(`${api}: a client that leaves once the end marker reached it had the whole answer; one that leaves before did not`, async () => {
    const sse = await fixtureText(WHOLE_STREAM[api]);
    const marker = api === "openai" ? "[DONE]" : "message_stop";
    // The provider sends every event (then only the first half), then keeps the connection open:
    // the client leaves first.
    const half = sse.slice(0, sse.indexOf("\n\n", sse.length / 2) + 2);
    let served = 0;
    const mock = startMockUpstream(() => ({ chunks: [served++ === 0 ? sse : half], hang: "body" }));
    const router = startRouter({ providers: [provider("p", api, mock.url)] });
    try {
      for (const leaveAt of [marker, "data:"]) {
        const response = await post(router, api, streamRequest(api));
        const reader = response.body!.getReader();
        let seen = "";
        while (!seen.includes(leaveAt)) {
          const { done, value } = await reader.read();
          assert.ok(!done, `the stream ended before ${leaveAt}`);
          seen += decoder.decode(value);
        }
        await reader.cancel();
      }
      const [whole, cut] = await router.sink.waitFor(2);
      assert.deepEqual([whole.status, whole.error, whole.stream_complete], [200, null, true]);
      assert.equal(cut.status, 499);
      assert.equal(cut.error?.type, "client_aborted");
    } finally {
      await router.close();
      await mock.close();
    }
  });
}

for (const api of ["openai", "anthropic"] as const) {
  Deno.test(`${api}: a provider that drops the connection after its end marker sent the whole answer`, async () => {
    const sse = await fixtureText(WHOLE_STREAM[api]);
    // Chunked, every event sent, then the connection closes without the body's last chunk.
    const cut = rawServer(
      "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
      `${encoder.encode(sse).length.toString(16)}\r\n${sse}\r\n`,
    );
    const router = startRouter({ providers: [provider("p", api, cut.url)] });
    try {
      const response = await post(router, api, streamRequest(api));
      assert.equal(await response.text(), sse, "the events as sent, and no error event after");
      const [record] = await router.sink.waitFor(1);
      assert.deepEqual([record.status, record.error, record.stream_complete], [200, null, true]);
      assert.deepEqual(attemptsOf(record), [["p", 200, null]]);
    } finally {
      await router.close();
      cut.close();
    }
  });
}
