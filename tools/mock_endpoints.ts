/**
 * Real-shaped payloads for the endpoints beside chat and messages: OpenAI's Responses API and
 * embeddings, and Anthropic's count_tokens; and the text helpers every mock payload shares.
 *
 * Field names follow the official SDKs' types (openai `resources/responses`, `embeddings`;
 * @anthropic-ai/sdk `MessageTokensCount`). Everything here is pure.
 * @module
 */

export const DEFAULT_TEXT = "Hello from the mock";
export const PROMPT_TOKENS = 12;

export function mockId(prefix: string): string {
  return prefix + crypto.randomUUID().replaceAll("-", "").slice(0, 24);
}

export function countTokens(text: string): number {
  return Math.max(1, text.split(/\s+/).filter(Boolean).length);
}

/** Split into n non-empty pieces by code point, repeating the text when n exceeds its length. */
export function splitText(text: string, n: number): string[] {
  const unit = Array.from(text || " ");
  let chars = unit;
  while (chars.length < n) chars = [...chars, " ", ...unit];
  return Array.from(
    { length: Math.max(0, n) },
    (_, i) =>
      chars.slice(Math.floor(i * chars.length / n), Math.floor((i + 1) * chars.length / n)).join(
        "",
      ),
  );
}

/** Options for a Responses API answer; the token details default to zero. */
export interface ResponseOptions {
  text?: string;
  cachedTokens?: number;
  reasoningTokens?: number;
}

/** The Responses API's usage object, with both detail objects the real API always sends. */
export function openaiResponseUsage(output: number, opts: ResponseOptions = {}): object {
  return {
    input_tokens: PROMPT_TOKENS,
    input_tokens_details: { cache_write_tokens: 0, cached_tokens: opts.cachedTokens ?? 0 },
    output_tokens: output,
    output_tokens_details: { reasoning_tokens: opts.reasoningTokens ?? 0 },
    total_tokens: PROMPT_TOKENS + output,
  };
}

const outputText = (text: string) => ({ type: "output_text", annotations: [], logprobs: [], text });

/** A `response` object around `output`; `usage` null is how in-progress snapshots carry it. */
function responseObject(
  head: { id: string; created_at: number; model: string },
  state: { status: string; output: object[]; usage: object | null; completed_at: number | null },
): object {
  return {
    id: head.id,
    object: "response",
    created_at: head.created_at,
    status: state.status,
    background: false,
    completed_at: state.completed_at,
    error: null,
    incomplete_details: null,
    instructions: null,
    max_output_tokens: null,
    model: head.model,
    output: state.output,
    parallel_tool_calls: true,
    previous_response_id: null,
    reasoning: { effort: null, summary: null },
    service_tier: "default",
    store: true,
    temperature: 1,
    text: { format: { type: "text" }, verbosity: "medium" },
    tool_choice: "auto",
    tools: [],
    top_p: 1,
    truncation: "disabled",
    usage: state.usage,
    user: null,
    metadata: {},
  };
}

function head(model: string) {
  return { id: mockId("resp_mock"), created_at: Math.floor(Date.now() / 1000), model };
}

function message(id: string, status: string, content: object[]): object {
  return { id, type: "message", status, content, role: "assistant" };
}

/** A non-streaming Responses API answer: one assistant message with one `output_text` part. */
export function openaiResponse(model: string, opts: ResponseOptions = {}): object {
  const text = opts.text ?? DEFAULT_TEXT;
  const start = head(model);
  return responseObject(start, {
    status: "completed",
    output: [message(mockId("msg_mock"), "completed", [outputText(text)])],
    usage: openaiResponseUsage(countTokens(text), opts),
    completed_at: start.created_at,
  });
}

/**
 * A Responses API stream in the real order: `response.created` and `response.in_progress`
 * (snapshots without output or usage), the item and part announcements, `events` text deltas,
 * the `.done` events, and `response.completed` with the whole response and its usage. Each
 * event is `event: <type>` plus data that starts with `type` and `sequence_number`.
 */
export function openaiResponseStreamChunks(
  model: string,
  opts: ResponseOptions & { events?: number } = {},
): string[] {
  const pieces = splitText(opts.text ?? DEFAULT_TEXT, opts.events ?? 3);
  const text = pieces.join("");
  const start = head(model);
  const itemId = mockId("msg_mock");
  let sequence = 0;
  const ev = (type: string, fields: object) =>
    `event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: sequence++, ...fields })}\n\n`;
  const snapshot = { status: "in_progress", output: [], usage: null, completed_at: null };
  const at = { item_id: itemId, output_index: 0, content_index: 0 };
  const done = message(itemId, "completed", [outputText(text)]);
  const completed = responseObject(start, {
    status: "completed",
    output: [done],
    usage: openaiResponseUsage(countTokens(text), opts),
    completed_at: start.created_at,
  });
  return [
    ev("response.created", { response: responseObject(start, snapshot) }),
    ev("response.in_progress", { response: responseObject(start, snapshot) }),
    ev("response.output_item.added", {
      output_index: 0,
      item: message(itemId, "in_progress", []),
    }),
    ev("response.content_part.added", { ...at, part: outputText("") }),
    ...pieces.map((delta) => ev("response.output_text.delta", { ...at, delta, logprobs: [] })),
    ev("response.output_text.done", { ...at, text, logprobs: [] }),
    ev("response.content_part.done", { ...at, part: outputText(text) }),
    ev("response.output_item.done", { output_index: 0, item: done }),
    ev("response.completed", { response: completed }),
  ];
}

/** The Responses API's stream `error` event (`ResponseErrorEvent`), as a provider sends it. */
export function openaiResponseErrorEvent(
  message: string,
  opts: { code?: string; sequenceNumber?: number } = {},
): string {
  const data = {
    type: "error",
    sequence_number: opts.sequenceNumber ?? 0,
    code: opts.code ?? "server_error",
    message,
    param: null,
  };
  return `event: error\ndata: ${JSON.stringify(data)}\n\n`;
}

/** FNV-1a, to seed a text's vector so the same input always embeds the same. */
function hash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** A unit-length vector of float32 values, so `float` and `base64` answers decode the same. */
export function mockEmbedding(input: string, dimensions = 8): number[] {
  let state = hash(input) || 1;
  const raw = Array.from({ length: dimensions }, () => {
    state = Math.imul(state ^ (state >>> 15), 0x2c1b3c6d) >>> 0;
    state ^= state << 13;
    state >>>= 0;
    return state / 0x100000000 * 2 - 1;
  });
  const norm = Math.hypot(...raw) || 1;
  return Array.from(new Float32Array(raw.map((x) => x / norm)));
}

/** Little-endian float32 bytes in base64: what `encoding_format: "base64"` returns. */
export function embeddingBase64(vector: number[]): string {
  const bytes = new Uint8Array(new Float32Array(vector).buffer);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** The inputs an embeddings request names: a string, strings, a token array, or token arrays. */
function embeddingInputs(input: unknown): { key: string; tokens: number }[] {
  const one = (item: unknown) =>
    typeof item === "string"
      ? { key: item, tokens: countTokens(item) }
      : { key: JSON.stringify(item), tokens: Array.isArray(item) ? item.length : 1 };
  if (Array.isArray(input) && input.length > 0 && typeof input[0] !== "number") {
    return input.map(one);
  }
  return [one(input ?? "")];
}

/**
 * An embeddings answer (`CreateEmbeddingResponse`) for the request's `input`: one embedding per
 * input, float arrays or base64 strings as `encoding_format` asks, usage with the two counters.
 */
export function openaiEmbeddings(
  model: string,
  input: unknown,
  opts: { encodingFormat?: unknown; dimensions?: unknown } = {},
): object {
  const dimensions = typeof opts.dimensions === "number" ? opts.dimensions : 8;
  const inputs = embeddingInputs(input);
  const tokens = inputs.reduce((sum, item) => sum + item.tokens, 0);
  return {
    object: "list",
    data: inputs.map((item, index) => {
      const vector = mockEmbedding(item.key, dimensions);
      const embedding = opts.encodingFormat === "base64" ? embeddingBase64(vector) : vector;
      return { object: "embedding", index, embedding };
    }),
    model,
    usage: { prompt_tokens: tokens, total_tokens: tokens },
  };
}

/** Every string in a value except the `role` and `type` tags, for token counting. */
function texts(value: unknown, key = ""): string[] {
  if (typeof value === "string") return key === "role" || key === "type" ? [] : [value];
  if (Array.isArray(value)) return value.flatMap((item) => texts(item));
  if (value === null || typeof value !== "object") return [];
  return Object.entries(value).flatMap(([k, v]) => texts(v, k));
}

/**
 * Anthropic's count_tokens answer (`MessageTokensCount`): the words of the request's system
 * prompt, messages and tools, so different requests count differently.
 */
export function anthropicTokenCount(request: unknown): { input_tokens: number } {
  const body = (request ?? {}) as Record<string, unknown>;
  const words = texts([body.system, body.messages, body.tools]).join(" ");
  return { input_tokens: countTokens(words) };
}
