import type { EventSourceMessage } from "eventsource-parser";
import { anthropic } from "./anthropic.ts";
import { openai } from "./openai.ts";
import type { Config } from "../config.ts";
import type { JsonObject } from "../json.ts";

/** The two wire formats the router speaks; a provider and an endpoint each have one. */
export type ApiType = "openai" | "anthropic";

/**
 * How one stream event bears on the commit decision: `output` is model output (the router may
 * commit to this provider), `error` is the API's own error event, `hold` is anything else.
 */
export type EventRole = "hold" | "output" | "error";

/** Per-stream state that rebuilds the final response object from a stream's events. */
export interface StreamAssembler {
  /** Folds one event in and says what it means for the commit decision. */
  add(event: EventSourceMessage): EventRole;
  /** True once the stream's own end marker (`[DONE]`, `message_stop`) arrived. */
  readonly complete: boolean;
  /** Events whose data could not be parsed: the log says the stream was malformed. */
  readonly malformed: number;
  /** The API's usage object as sent (merged across events), or null when none came. */
  readonly usage: JsonObject | null;
  /** The reassembled response, shaped like the API's non-streaming answer. */
  response(): JsonObject | null;
}

/** Everything the rest of the router needs to know about one API; nothing else asks the type. */
export interface Dialect {
  readonly type: ApiType;
  /** The header this API's clients read a request's id from, for the router's own answers. */
  readonly requestIdHeader: string;
  /** Sets what a forwarded request needs: the provider's key (never the client's), defaults. */
  prepareHeaders(headers: Record<string, string>, apiKey: string | undefined): void;
  /** The router's own error body for `status`, in the format this API's clients parse. */
  errorBody(status: number, message: string, code: string): JsonObject;
  /** One SSE event that ends a committed stream with an error the official clients raise. */
  streamErrorEvent(message: string): string;
  /** Usage from a non-streaming response body. */
  usageOf(body: unknown): JsonObject | null;
  /** Set when this API can ask upstream for usage the client did not request (opt-in). */
  usageInjection?(config: Config, fields: JsonObject): UsageInjection | null;
  /** The client-facing model names, in this API's own model-list format. */
  modelList(names: readonly string[]): JsonObject;
  /** One client-facing model name, as this API answers a request for a single model. */
  modelEntry(name: string): JsonObject;
  /** The usage object's counts in the router's own vocabulary, for statistics. */
  tokens(usage: JsonObject): TokenCounts;
  /** A fresh reassembly for one stream, keeping at most `textLimit` characters of text. */
  newAssembler(textLimit: number): StreamAssembler;
}

/**
 * Rewrites one raw SSE event on its way to the client: the same bytes, new bytes, or null to
 * drop it. `data` is the event's data field.
 */
export type EventFilter = (raw: Uint8Array, data: string) => Uint8Array | null;

/** How a request asks upstream for usage, and how the answer's extra bytes are hidden again. */
export interface UsageInjection {
  splice(body: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer>;
  filter: EventFilter;
}

/** Token counts in one vocabulary for both APIs. */
export interface TokenCounts {
  input: number;
  output: number;
  cache_read: number;
  cache_write: number;
}

export const dialects: Record<ApiType, Dialect> = { openai, anthropic };
