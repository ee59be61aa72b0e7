/**
 * Shared pieces of the fault-injection suite (timeouts, cooldown, bad input, lifecycle): request
 * bodies per API, a router in front of scripted mocks, and byte-exact body reading.
 */
import assert from "node:assert/strict";
import type { RequestRecord } from "../src/record.ts";
import {
  anthropicMessage,
  anthropicStreamChunks,
  type MockScript,
  type MockUpstream,
  openaiCompletion,
  openaiStreamChunks,
  sseHeaders,
  startMockUpstream,
} from "../tools/mock_upstream.ts";
import { provider, type RunningRouter, startRouter, within as withinHarness } from "./harness.ts";

export type Api = "openai" | "anthropic";
export const APIS: readonly Api[] = ["openai", "anthropic"];

export const ROUTE: Record<Api, string> = {
  openai: "/openai/v1/chat/completions",
  anthropic: "/anthropic/v1/messages",
};

export const MODEL: Record<Api, string> = { openai: "gpt-4o", anthropic: "claude-mock-1" };

const encoder = new TextEncoder();

/** A client body for `api`, as JSON text. */
export function requestText(api: Api, options: { stream?: boolean; model?: string } = {}): string {
  const messages = [{ role: "user", content: "Hi" }];
  const model = options.model ?? MODEL[api];
  const stream = options.stream ?? false;
  return JSON.stringify(
    api === "openai" ? { model, stream, messages } : { model, max_tokens: 64, stream, messages },
  );
}

/** POSTs a JSON body to the router's endpoint for `api`. */
export function post(
  url: string,
  api: Api,
  options: { stream?: boolean; model?: string; signal?: AbortSignal } = {},
): Promise<Response> {
  return fetch(url + ROUTE[api], {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: requestText(api, options),
    signal: options.signal,
  });
}

/** Fixed stream chunks for `api` with `events` content deltas, so bytes can be compared. */
export function streamChunks(api: Api, events = 3, model = MODEL[api]): string[] {
  return api === "openai"
    ? openaiStreamChunks(model, { events })
    : anthropicStreamChunks(model, { events });
}

/** A fixed non-streaming answer for `api`. */
export function answerText(api: Api, text = "fixed answer"): string {
  const model = MODEL[api];
  return JSON.stringify(
    api === "openai" ? openaiCompletion(model, text) : anthropicMessage(model, text),
  );
}

/**
 * The stream's chunks before its first output event (OpenAI: the role-only chunk; Anthropic:
 * message_start, content_block_start and ping), and the rest.
 */
export function splitAtFirstOutput(api: Api, chunks: string[]): [string[], string[]] {
  const cut = api === "openai" ? 1 : 3;
  return [chunks.slice(0, cut), chunks.slice(cut)];
}

export { sseHeaders };

/** The harness's `within`, with this suite's longer default wait of 4 s. */
export function within<T>(promise: Promise<T>, what: string, ms = 4000): Promise<T> {
  return withinHarness(promise, what, ms);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function until(condition: () => boolean, what = "a condition"): Promise<void> {
  await within(
    (async () => {
      while (!condition()) await sleep(5);
    })(),
    what,
  );
}

/** The whole body as bytes. */
export async function bytesOf(response: Response): Promise<Uint8Array> {
  return new Uint8Array(await response.arrayBuffer());
}

export function utf8(text: string): Uint8Array<ArrayBuffer> {
  return encoder.encode(text);
}

/** The one record a test's single request produced. */
export async function onlyRecord(router: RunningRouter): Promise<RequestRecord> {
  const records = await within(router.sink.waitFor(1), "the record");
  assert.equal(records.length, 1, "exactly one record");
  return records[0];
}

/** The record's attempts as [provider, status, error] triples, for exact comparison. */
export function attemptsOf(record: RequestRecord): [string, number | null, string | null][] {
  return record.attempts.map((a) => [a.provider, a.status, a.error]);
}

export interface Setup {
  router: RunningRouter;
  mocks: MockUpstream[];
}

/**
 * Runs `body` with a router in front of one mock per script, named "a", "b", ... of type `api`,
 * in that priority order; `config` adds top-level sections and `extra` per-provider fields.
 */
export async function withMocks(
  api: Api,
  scripts: MockScript[],
  options: { config?: object; extra?: object[]; urls?: string[] },
  body: (setup: Setup) => Promise<void>,
): Promise<void> {
  const mocks = scripts.map((script) => startMockUpstream(script));
  const urls = [...mocks.map((mock) => mock.url), ...(options.urls ?? [])];
  const router = startRouter({
    providers: urls.map((url, i) => provider("abcdef"[i], api, url, options.extra?.[i] ?? {})),
    ...options.config,
  });
  try {
    await body({ router, mocks });
  } finally {
    for (const mock of mocks) await mock.close();
    await router.close();
  }
}
