import { removeNullMember, setMember } from "../body.ts";
import type { Config } from "../config.ts";
import { asObject, type JsonObject, tryParseJson } from "../json.ts";
import type { EventFilter, UsageInjection } from "./mod.ts";

/**
 * OpenAI streams carry usage only when the client asks (`stream_options.include_usage`). With
 * `openai.stream_usage: "inject"` the router asks on the client's behalf, so the log always has
 * usage, and hides what that changes in the stream: the `"usage":null` member of every chunk
 * and the final usage-only chunk. The client gets the bytes it would have got without it.
 */
export function openaiUsageInjection(config: Config, fields: JsonObject): UsageInjection | null {
  if (config.openai.stream_usage !== "inject" || fields.stream !== true) return null;
  const options = asObject(fields.stream_options);
  if (options?.include_usage === true) return null;
  const json = JSON.stringify({ ...options, include_usage: true });
  return { splice: (body) => setMember(body, "stream_options", json), filter: hideInjectedUsage };
}

const hideInjectedUsage: EventFilter = (raw, data) => {
  if (data === "[DONE]") return raw;
  const chunk = asObject(tryParseJson(data));
  if (chunk === null || !("usage" in chunk)) return raw;
  if (chunk.usage !== null) {
    return Array.isArray(chunk.choices) && chunk.choices.length === 0 ? null : raw;
  }
  const start = raw.indexOf(0x7b);
  if (start === -1) return raw;
  const lineEnd = raw.findIndex((b, i) => i > start && (b === 0x0a || b === 0x0d));
  const end = lineEnd === -1 ? raw.length : lineEnd;
  const edited = removeNullMember(new Uint8Array(raw.subarray(start, end)), "usage");
  if (edited === null) return raw;
  const out = new Uint8Array(raw.length - (end - start) + edited.length);
  out.set(raw.subarray(0, start));
  out.set(edited, start);
  out.set(raw.subarray(end), start + edited.length);
  return out;
};
