import type { EventSourceMessage } from "eventsource-parser";
import { asObject, type JsonObject, tryParseJson } from "../json.ts";
import type { Dialect, EventRole, StreamAssembler } from "./mod.ts";
import { openai } from "./openai.ts";

/** Types that end a Responses stream as the API meant it to end. */
const END_TYPES = new Set(["response.completed", "response.incomplete"]);

/**
 * Follows a Responses API stream. Every `response.*` lifecycle event carries the response
 * object so far, and `response.completed` carries it whole with its usage, so the last one seen
 * is the reassembled answer. Deltas and finished items are model output.
 */
class ResponsesStreamAssembler implements StreamAssembler {
  complete = false;
  malformed = 0;
  usage: JsonObject | null = null;
  #response: JsonObject | null = null;

  add(event: EventSourceMessage): EventRole {
    const data = asObject(tryParseJson(event.data));
    if (data === null) {
      this.malformed++;
      return "hold";
    }
    const type = String(data.type ?? event.event ?? "");
    const response = asObject(data.response);
    if (response !== null) {
      this.#response = response;
      this.usage = asObject(response.usage) ?? this.usage;
    }
    if (type === "error" || type === "response.failed") return "error";
    if (END_TYPES.has(type)) {
      this.complete = true;
      return "output";
    }
    return type.endsWith(".delta") || type.endsWith(".done") ? "output" : "hold";
  }

  response(): JsonObject | null {
    return this.#response;
  }
}

/**
 * OpenAI's Responses API: the same auth and errors as chat completions, its own stream events.
 * The router's stream error event carries both the Responses shape (`type: "error"`) and the
 * `error` member the official clients raise on.
 */
export const openaiResponses: Dialect = {
  ...openai,
  usageInjection: undefined,
  streamErrorEvent(message) {
    const code = "stream_interrupted";
    const body = {
      type: "error",
      code,
      message,
      param: null,
      error: { message, type: "upstream_error", code },
    };
    return `event: error\ndata: ${JSON.stringify(body)}\n\n`;
  },
  // Its response events carry whole objects, no growing text: nothing to budget.
  newAssembler: () => new ResponsesStreamAssembler(),
};
