import type { EventSourceMessage } from "eventsource-parser";
import { asObject, count, type JsonObject, tryParseJson } from "../json.ts";
import { TextBudget } from "./budget.ts";
import { TextPieces } from "./text_pieces.ts";
import type { Dialect, EventRole, StreamAssembler } from "./mod.ts";
import { openaiUsageInjection } from "./openai_usage.ts";

interface ToolCall {
  id?: string;
  type: string;
  function: { name: string; arguments: string };
}

interface Choice {
  index: number;
  message: {
    role: string;
    content: string | null;
    refusal: string | null;
    tool_calls?: ToolCall[];
  };
  finish_reason: string | null;
}

/** A choice while its deltas arrive: the growing texts kept as pieces. */
interface ChoiceState {
  index: number;
  role: string;
  content: TextPieces | null;
  refusal: TextPieces | null;
  toolCalls?: ToolCallState[];
  finishReason: string | null;
}

interface ToolCallState {
  id?: string;
  type: string;
  name: string;
  arguments: TextPieces;
}

/** Choices and tool calls beyond this index are not reassembled: no provider sends so many. */
const MAX_INDEX = 1024;

function nonEmpty(value: unknown): boolean {
  return typeof value === "string" ? value.length > 0 : value !== undefined && value !== null;
}

/** Rebuilds a `chat.completion` object from `chat.completion.chunk` events. */
class ChatStreamAssembler implements StreamAssembler {
  complete = false;
  malformed = 0;
  usage: JsonObject | null = null;
  #head: JsonObject | null = null;
  #choices = new Map<number, ChoiceState>();
  #budget: TextBudget;

  constructor(textLimit: number) {
    this.#budget = new TextBudget(textLimit);
  }

  add(event: EventSourceMessage): EventRole {
    // As the official clients read a stream: an `error` event, or a chunk with a non-null `error`.
    if (event.event === "error") return "error";
    if (event.data === "[DONE]") {
      this.complete = true;
      return "output";
    }
    const chunk = asObject(tryParseJson(event.data));
    if (chunk === null) {
      this.malformed++;
      return "hold";
    }
    if (chunk.error !== undefined && chunk.error !== null) return "error";
    // Azure's first chunk can be a content-filter note with an empty id and model.
    if (this.#head === null || (!this.#head.id && chunk.id)) this.#head = chunk;
    const usage = asObject(chunk.usage);
    if (usage !== null) this.usage = usage;
    let output = usage !== null;
    for (const raw of Array.isArray(chunk.choices) ? chunk.choices : []) {
      const choice = asObject(raw);
      if (choice === null) continue;
      const delta = asObject(choice.delta) ?? {};
      output ||= nonEmpty(delta.content) || nonEmpty(delta.tool_calls) ||
        nonEmpty(delta.refusal) || nonEmpty(choice.finish_reason);
      this.#fold(choice, delta);
    }
    return output ? "output" : "hold";
  }

  #fold(choice: JsonObject, delta: JsonObject): void {
    const index = typeof choice.index === "number" ? choice.index : 0;
    if (!(index >= 0 && index < MAX_INDEX)) return;
    let state = this.#choices.get(index);
    if (state === undefined) {
      state = { index, role: "assistant", content: null, refusal: null, finishReason: null };
      this.#choices.set(index, state);
    }
    const keep = (text: string) => this.#budget.take(text);
    if (typeof delta.role === "string") state.role = delta.role;
    if (typeof delta.content === "string") {
      (state.content ??= new TextPieces()).add(keep(delta.content));
    }
    if (typeof delta.refusal === "string") {
      (state.refusal ??= new TextPieces()).add(keep(delta.refusal));
    }
    if (typeof choice.finish_reason === "string") state.finishReason = choice.finish_reason;
    if (!Array.isArray(delta.tool_calls)) return;
    const calls = state.toolCalls ??= [];
    for (const raw of delta.tool_calls) {
      const part = asObject(raw);
      if (part === null) continue;
      const at = typeof part.index === "number" ? part.index : calls.length;
      if (!(at >= 0 && at < MAX_INDEX)) continue;
      const call = calls[at] ??= { type: "function", name: "", arguments: new TextPieces() };
      if (typeof part.id === "string") call.id = part.id;
      if (typeof part.type === "string") call.type = part.type;
      const fn = asObject(part.function);
      if (typeof fn?.name === "string") call.name += fn.name;
      if (typeof fn?.arguments === "string") call.arguments.add(keep(fn.arguments));
    }
  }

  response(): JsonObject | null {
    if (this.#head === null) return null;
    const { id, created, model, system_fingerprint, service_tier } = this.#head;
    const choices = [...this.#choices.values()].sort((a, b) => a.index - b.index).map(choiceOf);
    return {
      id,
      object: "chat.completion",
      created,
      model,
      ...(service_tier === undefined ? {} : { service_tier }),
      ...(system_fingerprint === undefined ? {} : { system_fingerprint }),
      choices,
      usage: this.usage,
    };
  }
}

function choiceOf(state: ChoiceState): Choice {
  const message: Choice["message"] = {
    role: state.role,
    content: state.content?.toString() ?? null,
    refusal: state.refusal?.toString() ?? null,
  };
  if (state.toolCalls !== undefined) {
    message.tool_calls = state.toolCalls.map(({ id, type, name, arguments: args }) => ({
      ...(id === undefined ? {} : { id }),
      type,
      function: { name, arguments: args.toString() },
    }));
  }
  return { index: state.index, message, finish_reason: state.finishReason };
}

/** OpenAI's chat completions API: bearer auth, `{"error": {...}}` bodies, `data:`-only streams. */
export const openai: Dialect = {
  type: "openai",
  requestIdHeader: "x-request-id",
  prepareHeaders(headers, apiKey) {
    if (apiKey !== undefined) headers.authorization = `Bearer ${apiKey}`;
  },
  errorBody(status, message, code) {
    const type = status >= 500 ? "upstream_error" : "invalid_request_error";
    return { error: { message, type, param: null, code } };
  },
  streamErrorEvent(message) {
    const body = { error: { message, type: "upstream_error", code: "stream_interrupted" } };
    return `data: ${JSON.stringify(body)}\n\n`;
  },
  usageOf(body) {
    return asObject(asObject(body)?.usage);
  },
  tokens(usage) {
    // Chat completions and embeddings say prompt/completion; the Responses API input/output.
    const details = asObject(usage.prompt_tokens_details ?? usage.input_tokens_details);
    return {
      input: count(usage.prompt_tokens ?? usage.input_tokens),
      output: count(usage.completion_tokens ?? usage.output_tokens),
      cache_read: count(details?.cached_tokens),
      cache_write: 0,
    };
  },
  usageInjection: openaiUsageInjection,
  modelEntry: (id) => ({ id, object: "model", created: 0, owned_by: "llm-api-router" }),
  modelList(names) {
    return { object: "list", data: names.map(openai.modelEntry) };
  },
  newAssembler: (textLimit) => new ChatStreamAssembler(textLimit),
};
