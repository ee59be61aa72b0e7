import type { EventSourceMessage } from "eventsource-parser";
import { asObject, count, type JsonObject, tryParseJson } from "../json.ts";
import { TextBudget } from "./budget.ts";
import { TextPieces } from "./text_pieces.ts";
import type { Dialect, EventRole, StreamAssembler } from "./mod.ts";

const OUTPUT_EVENTS = new Set(["content_block_delta", "message_delta", "message_stop"]);

/** Copies the fields of `from` that carry a value; Anthropic's stream usage is cumulative. */
function mergeDefined(into: JsonObject, from: JsonObject): void {
  for (const [key, value] of Object.entries(from)) {
    if (value !== null && value !== undefined) into[key] = value;
  }
}

/**
 * A block's texts while its deltas arrive: its `text` or `thinking`, its tool input's JSON. They
 * are written into the block (`input` parsed) when it stops, or when the response is read.
 */
interface GrowingTexts {
  text?: TextPieces;
  thinking?: TextPieces;
  json?: TextPieces;
}

/** Rebuilds a `message` object from Messages API stream events. */
class MessageStreamAssembler implements StreamAssembler {
  complete = false;
  malformed = 0;
  usage: JsonObject | null = null;
  #message: JsonObject | null = null;
  /** By index; a map, so a hostile index cannot make a huge sparse array. */
  #blocks = new Map<number, JsonObject>();
  #growing = new Map<number, GrowingTexts>();
  #budget: TextBudget;

  constructor(textLimit: number) {
    this.#budget = new TextBudget(textLimit);
  }

  add(event: EventSourceMessage): EventRole {
    const data = asObject(tryParseJson(event.data));
    const type = data?.type ?? event.event;
    if (type === "error") return "error";
    if (data === null) {
      this.malformed++;
      return "hold";
    }
    switch (type) {
      case "message_start": {
        this.#message = { ...asObject(data.message) };
        const usage = asObject(this.#message.usage);
        if (usage !== null) this.usage = { ...usage };
        break;
      }
      case "content_block_start":
        this.#blocks.set(Number(data.index), { ...asObject(data.content_block) });
        // A block started again starts over.
        this.#growing.delete(Number(data.index));
        break;
      case "content_block_delta":
        this.#applyDelta(Number(data.index), asObject(data.delta) ?? {});
        break;
      case "content_block_stop":
        this.#finishBlock(Number(data.index));
        break;
      case "message_delta": {
        this.#message ??= {};
        mergeDefined(this.#message, asObject(data.delta) ?? {});
        const usage = asObject(data.usage);
        if (usage !== null) mergeDefined(this.usage ??= {}, usage);
        break;
      }
      case "message_stop":
        this.complete = true;
        break;
    }
    return OUTPUT_EVENTS.has(String(type)) ? "output" : "hold";
  }

  #applyDelta(index: number, delta: JsonObject): void {
    let block = this.#blocks.get(index);
    if (block === undefined) this.#blocks.set(index, block = {});
    let growing = this.#growing.get(index);
    if (growing === undefined) this.#growing.set(index, growing = {});
    const keep = (text: unknown) => this.#budget.take(String(text ?? ""));
    switch (delta.type) {
      case "text_delta":
        (growing.text ??= new TextPieces(String(block.text ?? ""))).add(keep(delta.text));
        break;
      case "thinking_delta":
        (growing.thinking ??= new TextPieces(String(block.thinking ?? ""))).add(
          keep(delta.thinking),
        );
        break;
      case "signature_delta":
        block.signature = delta.signature;
        break;
      case "input_json_delta":
        (growing.json ??= new TextPieces()).add(keep(delta.partial_json));
        break;
      case "citations_delta":
        block.citations = [
          ...(Array.isArray(block.citations) ? block.citations : []),
          delta.citation,
        ];
        break;
    }
  }

  /** Writes a block's texts into it, the tool input parsed from its JSON. */
  #finishBlock(index: number): void {
    const growing = this.#growing.get(index);
    if (growing === undefined) return;
    this.#growing.delete(index);
    const block = this.#blocks.get(index);
    if (block === undefined) return;
    if (growing.text !== undefined) block.text = growing.text.toString();
    if (growing.thinking !== undefined) block.thinking = growing.thinking.toString();
    if (growing.json !== undefined) {
      const json = growing.json.toString();
      const input = json === "" ? {} : tryParseJson(json);
      block.input = input === undefined ? json : input;
    }
  }

  response(): JsonObject | null {
    if (this.#message === null) return null;
    for (const index of [...this.#growing.keys()]) this.#finishBlock(index);
    const content = [...this.#blocks].sort(([a], [b]) => a - b).map(([, block]) => block);
    return { ...this.#message, content, usage: this.usage };
  }
}

const ERROR_TYPES: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  403: "permission_error",
  404: "not_found_error",
  413: "request_too_large",
  429: "rate_limit_error",
  504: "timeout_error",
  529: "overloaded_error",
};

/** Anthropic's Messages API: `x-api-key` auth, versioned by header, named stream events. */
export const anthropic: Dialect = {
  type: "anthropic",
  requestIdHeader: "request-id",
  prepareHeaders(headers, apiKey) {
    if (apiKey !== undefined) headers["x-api-key"] = apiKey;
    headers["anthropic-version"] ??= "2023-06-01";
  },
  errorBody(status, message) {
    const type = ERROR_TYPES[status] ?? (status >= 500 ? "api_error" : "invalid_request_error");
    return { type: "error", error: { type, message } };
  },
  streamErrorEvent(message) {
    const body = { type: "error", error: { type: "api_error", message } };
    return `event: error\ndata: ${JSON.stringify(body)}\n\n`;
  },
  usageOf(body) {
    return asObject(asObject(body)?.usage);
  },
  tokens(usage) {
    return {
      input: count(usage.input_tokens),
      output: count(usage.output_tokens),
      cache_read: count(usage.cache_read_input_tokens),
      cache_write: count(usage.cache_creation_input_tokens),
    };
  },
  modelEntry: (id) => ({
    type: "model",
    id,
    display_name: id,
    created_at: "1970-01-01T00:00:00Z",
  }),
  modelList(names) {
    const data = names.map(anthropic.modelEntry);
    return { data, has_more: false, first_id: names[0] ?? null, last_id: names.at(-1) ?? null };
  },
  newAssembler: (textLimit) => new MessageStreamAssembler(textLimit),
};
