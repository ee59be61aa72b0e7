import type { Span } from "@opentelemetry/api";
import { dialects } from "./providers/mod.ts";
import type { RequestRecord } from "./record.ts";

/**
 * With Deno's built-in OpenTelemetry on (`OTEL_DENO=true`), spans carry who answered; without
 * it there is no span and this never runs. Attributes follow the GenAI semantic conventions
 * where one exists. Deno's server span gets them at the commit (it closes when the handler
 * returns); the router's own `llm_router.request` span gets them, usage included, at the end.
 */
export function annotateSpan(span: Span, record: RequestRecord): void {
  const attributes: Record<string, string | number> = {};
  if (record.endpoint !== null) attributes["gen_ai.provider.name"] = record.endpoint;
  if (record.model !== null) attributes["gen_ai.request.model"] = record.model;
  if (record.upstream_model !== null) attributes["gen_ai.response.model"] = record.upstream_model;
  if (record.provider !== null) attributes["llm_router.provider"] = record.provider;
  attributes["llm_router.attempts"] = record.attempts.length;
  if (record.usage !== null && record.endpoint !== null) {
    const tokens = dialects[record.endpoint].tokens(record.usage);
    attributes["gen_ai.usage.input_tokens"] = tokens.input;
    attributes["gen_ai.usage.output_tokens"] = tokens.output;
  }
  span.setAttributes(attributes);
}
