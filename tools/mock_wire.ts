/**
 * Real-shaped OpenAI and Anthropic payloads for the mock upstream, and its default replies.
 *
 * The shapes follow tests/fixtures, so code tested against the mock parses the real APIs too.
 * Everything here is pure: the benchmark can pre-build chunks once and reuse them.
 * @module
 */
import {
  anthropicTokenCount,
  countTokens,
  DEFAULT_TEXT,
  mockId,
  openaiEmbeddings,
  openaiResponse,
  openaiResponseStreamChunks,
  PROMPT_TOKENS,
  splitText,
} from "./mock_endpoints.ts";
import type { MockReply, MockRequest } from "./mock_upstream.ts";

export * from "./mock_endpoints.ts";

/** The headers both real APIs send on streams, so content-type checks see a real SSE reply. */
export const sseHeaders: Readonly<Record<string, string>> = Object.freeze({
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
});

/** A non-streaming chat.completion, so usage extraction has the three OpenAI counters to read. */
export function openaiCompletion(model: string, text = DEFAULT_TEXT): object {
  const completion = countTokens(text);
  return {
    id: mockId("chatcmpl-mock"),
    object: "chat.completion",
    created: Math.floor(Date.now() / 1000),
    model,
    choices: [{
      index: 0,
      message: { role: "assistant", content: text, refusal: null, annotations: [] },
      logprobs: null,
      finish_reason: "stop",
    }],
    usage: {
      prompt_tokens: PROMPT_TOKENS,
      completion_tokens: completion,
      total_tokens: PROMPT_TOKENS + completion,
    },
    service_tier: "default",
    system_fingerprint: "fp_mock",
  };
}

/**
 * OpenAI SSE events as the real API orders them: the role-only first chunk carries no output
 * (so commit-on-first-output logic is exercised), and with includeUsage every chunk has
 * `usage: null` until a final `choices: []` chunk, exactly like `stream_options.include_usage`.
 * The text is repeated when `events` exceeds its length, so every content delta carries text.
 */
export function openaiStreamChunks(
  model: string,
  opts: { text?: string; events?: number; includeUsage?: boolean } = {},
): string[] {
  const pieces = splitText(opts.text ?? DEFAULT_TEXT, opts.events ?? 3);
  const base = {
    id: mockId("chatcmpl-mock"),
    object: "chat.completion.chunk",
    created: Math.floor(Date.now() / 1000),
    model,
    system_fingerprint: "fp_mock",
  };
  const usageNull = opts.includeUsage ? { usage: null } : {};
  const chunk = (delta: object, finish: string | null) => ({
    ...base,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    ...usageNull,
  });
  const events: object[] = [
    chunk({ role: "assistant", content: "" }, null),
    ...pieces.map((content) => chunk({ content }, null)),
    chunk({}, "stop"),
  ];
  if (opts.includeUsage) {
    const usage = {
      prompt_tokens: PROMPT_TOKENS,
      completion_tokens: pieces.length,
      total_tokens: PROMPT_TOKENS + pieces.length,
    };
    events.push({ ...base, choices: [], usage });
  }
  return [...events.map((e) => `data: ${JSON.stringify(e)}\n\n`), "data: [DONE]\n\n"];
}

/** A non-streaming Anthropic message, with the cache counters the router must log as-is. */
export function anthropicMessage(model: string, text = DEFAULT_TEXT): object {
  return {
    id: mockId("msg_mock"),
    type: "message",
    role: "assistant",
    model,
    content: [{ type: "text", text }],
    stop_reason: "end_turn",
    stop_sequence: null,
    usage: {
      input_tokens: PROMPT_TOKENS,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 0,
      output_tokens: countTokens(text),
    },
  };
}

/**
 * Anthropic SSE events in the real order: message_start (input usage, output_tokens 1), a ping
 * that carries no output, the text deltas, and a message_delta whose usage is cumulative.
 */
export function anthropicStreamChunks(
  model: string,
  opts: { text?: string; events?: number } = {},
): string[] {
  const pieces = splitText(opts.text ?? DEFAULT_TEXT, opts.events ?? 3);
  const ev = (type: string, fields: object = {}) =>
    `event: ${type}\ndata: ${JSON.stringify({ type, ...fields })}\n\n`;
  const message = {
    id: mockId("msg_mock"),
    type: "message",
    role: "assistant",
    model,
    content: [],
    stop_reason: null,
    stop_sequence: null,
    usage: {
      input_tokens: PROMPT_TOKENS,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 0,
      output_tokens: 1,
    },
  };
  return [
    ev("message_start", { message }),
    ev("content_block_start", { index: 0, content_block: { type: "text", text: "" } }),
    ev("ping"),
    ...pieces.map((text) =>
      ev("content_block_delta", { index: 0, delta: { type: "text_delta", text } })
    ),
    ev("content_block_stop", { index: 0 }),
    ev("message_delta", {
      delta: { stop_reason: "end_turn", stop_sequence: null },
      usage: { output_tokens: pieces.length },
    }),
    ev("message_stop"),
  ];
}

/** The endpoints the mock answers, by the path's ending (with or without `/v1`). */
type Endpoint = "chat" | "responses" | "embeddings" | "messages" | "count_tokens";

function endpointOf(path: string): Endpoint | undefined {
  if (path.endsWith("/chat/completions")) return "chat";
  if (path.endsWith("/responses")) return "responses";
  if (path.endsWith("/embeddings")) return "embeddings";
  if (path.endsWith("/v1/messages")) return "messages";
  if (path.endsWith("/v1/messages/count_tokens")) return "count_tokens";
  return undefined;
}

function apiOf(path: string): "openai" | "anthropic" | undefined {
  const endpoint = endpointOf(path);
  if (endpoint === undefined) return undefined;
  return endpoint === "messages" || endpoint === "count_tokens" ? "anthropic" : "openai";
}

/**
 * Answer like the real API for the path, echoing the request's model so tests can see which
 * model the router sent; `events` sets the number of content deltas when streaming.
 */
export function defaultReply(
  req: MockRequest,
  _n = 0,
  opts: { events?: number } = {},
): MockReply {
  const endpoint = endpointOf(req.path);
  if (req.method !== "POST" || !endpoint) {
    const message = `No mock route for ${req.method} ${req.path}`;
    return {
      status: 404,
      body: { error: { message, type: "invalid_request_error", param: null, code: "not_found" } },
    };
  }
  const json = (req.json ?? {}) as {
    model?: unknown;
    stream?: unknown;
    stream_options?: { include_usage?: unknown };
    input?: unknown;
    encoding_format?: unknown;
    dimensions?: unknown;
  };
  const model = typeof json.model === "string" ? json.model : "mock-model";
  switch (endpoint) {
    case "embeddings": {
      const { encoding_format: encodingFormat, dimensions } = json;
      return { body: openaiEmbeddings(model, json.input, { encodingFormat, dimensions }) };
    }
    case "count_tokens":
      return { body: anthropicTokenCount(req.json) };
    case "responses":
      return json.stream === true
        ? {
          headers: { ...sseHeaders },
          chunks: openaiResponseStreamChunks(model, { events: opts.events }),
        }
        : { body: openaiResponse(model) };
  }
  if (json.stream !== true) {
    return { body: endpoint === "chat" ? openaiCompletion(model) : anthropicMessage(model) };
  }
  const includeUsage = json.stream_options?.include_usage === true;
  const chunks = endpoint === "chat"
    ? openaiStreamChunks(model, { events: opts.events, includeUsage })
    : anthropicStreamChunks(model, { events: opts.events });
  return { headers: { ...sseHeaders }, chunks };
}

/** An API-shaped error for the path's API, so the router classifies it as a real one. */
export function failureReply(path: string, status: number): MockReply {
  const message = `Mock upstream failure with status ${status}`;
  if (apiOf(path) === "anthropic") {
    const type = status === 529
      ? "overloaded_error"
      : status === 429
      ? "rate_limit_error"
      : "api_error";
    return { status, body: { type: "error", error: { type, message } } };
  }
  return { status, body: { error: { message, type: "server_error", param: null, code: null } } };
}
