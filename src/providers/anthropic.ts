import type { EventSourceMessage } from "eventsource-parser";
import { asObject, count, type JsonObject, tryParseJson } from "../json.ts";
import { TextBudget, TextPieces } from "./budget.ts";
import type { Dialect, EventRole, StreamAssembler } from "./mod.ts";

const OUTPUT_EVENTS = new Set(["content_block_delta", "message_delta", "message_stop"]);

/** Copies the fields of `from` that carry a value; Anthropic's stream usage is cumulative. */
function mergeDefined(into: JsonObject, from: JsonObject): void {
  for (const [key, value] of Object.entries(from)) {
    if (value !== null && value !== undefined) into[key] = value;
  }
}

/** A block's growing texts until it stops: its `text` or `thinking`, its tool input's JSON. */
interface OpenBlock {
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
  #open = new Map<number, OpenBlock>();
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
    let open = this.#open.get(index);
    if (open === undefined) this.#open.set(index, open = {});
    const keep = (text: unknown) => this.#budget.take(String(text ?? ""));
    switch (delta.type) {
      case "text_delta":
        (open.text ??= new TextPieces(String(block.text ?? ""))).add(keep(delta.text));
        break;
      case "thinking_delta":
        (open.thinking ??= new TextPieces(String(block.thinking ?? ""))).add(keep(delta.thinking));
        break;
      case "signature_delta":
        block.signature = delta.signature;
        break;
      case "input_json_delta":
        (open.json ??= new TextPieces()).add(keep(delta.partial_json));
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
    const open = this.#open.get(index);
    if (open === undefined) return;
    this.#open.delete(index);
    const block = this.#blocks.get(index);
    if (block === undefined) return;
    if (open.text !== undefined) block.text = open.text.toString();
    if (open.thinking !== undefined) block.thinking = open.thinking.toString();
    if (open.json !== undefined) {
      const json = open.json.toString();
      const input = json === "" ? {} : tryParseJson(json);
      block.input = input === undefined ? json : input;
    }
  }

  response(): JsonObject | null {
    if (this.#message === null) return null;
    for (const index of [...this.#open.keys()]) this.#finishBlock(index);
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
  modelList(names) {
    const data = names.map((id) => ({
      type: "model",
      id,
      display_name: id,
      created_at: "1970-01-01T00:00:00Z",
    }));
    return { data, has_more: false, first_id: names[0] ?? null, last_id: names.at(-1) ?? null };
  },
  newAssembler: (textLimit) => new MessageStreamAssembler(textLimit),
};
