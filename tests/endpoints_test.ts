/**
 * The endpoints beside chat and messages, end to end through the official clients' own methods:
 * the Responses API (plain and streaming), embeddings, count_tokens and both model lists, with
 * the router's usual rules: model mapping, fallback, transparent bytes, usage, records, stats.
 */
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import type { RequestRecord } from "../src/record.ts";
import {
  anthropicTokenCount,
  defaultReply,
  embeddingBase64,
  failureReply,
  mockEmbedding,
  type MockReply,
  type MockScript,
  type MockUpstream,
  openaiEmbeddings,
  openaiResponse,
  openaiResponseErrorEvent,
  openaiResponseStreamChunks,
  sseHeaders,
  startMockUpstream,
} from "../tools/mock_upstream.ts";
import { provider, type RunningRouter, startRouter } from "./harness.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

const CLIENT_KEY = "sk-client-key-not-for-upstream";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Starts one mock per script and a router over them; closes everything afterwards. */
async function withRouter(
  scripts: MockScript[],
  config: (mocks: MockUpstream[]) => object,
  run: (router: RunningRouter, mocks: MockUpstream[]) => Promise<void>,
): Promise<void> {
  const mocks = scripts.map((script) => startMockUpstream(script));
  const router = startRouter(config(mocks));
  try {
    await run(router, mocks);
  } finally {
    await router.close();
    await Promise.all(mocks.map((mock) => mock.close()));
  }
}

/** What an SDK sent and got back, byte for byte, through its `fetch` option. */
interface Wire {
  sent: string[];
  received: Uint8Array[];
  fetch: typeof fetch;
}

function wire(): Wire {
  const log: Wire = {
    sent: [],
    received: [],
    fetch: async (input, init) => {
      log.sent.push(await new Response(init?.body ?? null).text());
      const response = await fetch(input, init);
      log.received.push(new Uint8Array(await response.clone().arrayBuffer()));
      return response;
    },
  };
  return log;
}

function openaiClient(router: RunningRouter, base = "/openai", fetchFn?: typeof fetch): OpenAI {
  return new OpenAI({
    apiKey: CLIENT_KEY,
    baseURL: `${router.url}${base}`,
    maxRetries: 0,
    ...(fetchFn ? { fetch: fetchFn } : {}),
  });
}

function anthropicClient(router: RunningRouter): Anthropic {
  return new Anthropic({ apiKey: CLIENT_KEY, baseURL: `${router.url}/anthropic`, maxRetries: 0 });
}

const attemptsOf = (record: RequestRecord) =>
  record.attempts.map((a) => [a.provider, a.model, a.status, a.error]);

const modelSent = (mock: MockUpstream, i = 0) => (mock.requests[i].json as Json).model;

const failing: MockScript = (req) => failureReply(req.path, 503);

const sse = (chunks: string[], extra: Partial<MockReply> = {}): MockReply => ({
  headers: { ...sseHeaders },
  chunks,
  ...extra,
});

/** The JSON data of each event in a complete SSE text. */
function sseData(text: string): Json[] {
  return text.split("\n\n").filter(Boolean).map((block) =>
    JSON.parse(block.split("\n").find((line) => line.startsWith("data: "))!.slice(6))
  );
}

// --- Responses API, non-streaming ---------------------------------------------------------------

for (const base of ["/openai", "/openai/v1"]) {
  Deno.test(`responses.create via ${base} gets output_text; the record has the Responses usage`, async () => {
    await withRouter(
      [defaultReply],
      ([mock]) => ({
        providers: [provider("oa", "openai", mock.url)],
        model_mapping: { fast: ["gpt-upstream"] },
      }),
      async (router, [mock]) => {
        const client = openaiClient(router, base);
        const response = await client.responses.create({ model: "fast", input: "Say hi" });
        assert.equal(response.output_text, "Hello from the mock");
        assert.equal(response.model, "gpt-upstream");
        assert.equal(mock.requests.length, 1);
        assert.equal(mock.requests[0].path, "/v1/responses");
        assert.deepEqual(mock.requests[0].json, { model: "gpt-upstream", input: "Say hi" });
        assert.equal(mock.requests[0].headers.get("authorization"), "Bearer sk-oa-secret");
        const [record] = await router.sink.waitFor(1);
        assert.equal(record.endpoint, "openai");
        assert.equal(record.path, `${base}/responses`);
        assert.deepEqual(
          [record.model, record.upstream_model, record.provider, record.stream, record.status],
          ["fast", "gpt-upstream", "oa", false, 200],
        );
        assert.deepEqual(record.usage, {
          input_tokens: 12,
          input_tokens_details: { cache_write_tokens: 0, cached_tokens: 0 },
          output_tokens: 4,
          output_tokens_details: { reasoning_tokens: 0 },
          total_tokens: 16,
        });
        assert.deepEqual(record.usage, response.usage);
        assert.equal((record.response as Json).id, response.id);
        assert.deepEqual(record.request, { model: "fast", input: "Say hi" });
        assert.equal(record.error, null);
      },
    );
  });
}

Deno.test("responses.create falls back on 503 to the next provider with the mapped model", async () => {
  await withRouter(
    [failing, defaultReply],
    ([a, b]) => ({
      providers: [
        provider("a", "openai", a.url, { priority: 1 }),
        provider("b", "openai", b.url, { priority: 2 }),
      ],
      model_mapping: { fast: ["gpt-upstream"] },
    }),
    async (router, [a, b]) => {
      const response = await openaiClient(router).responses.create({ model: "fast", input: "Hi" });
      assert.equal(response.output_text, "Hello from the mock");
      assert.deepEqual([modelSent(a), modelSent(b)], ["gpt-upstream", "gpt-upstream"]);
      const [record] = await router.sink.waitFor(1);
      assert.deepEqual(attemptsOf(record), [
        ["a", "gpt-upstream", 503, "http_status"],
        ["b", "gpt-upstream", 200, null],
      ]);
      assert.equal(record.provider, "b");
      assert.equal(record.status, 200);
      assert.equal((record.usage as Json).output_tokens, 4);
    },
  );
});

// --- Responses API, streaming -------------------------------------------------------------------

Deno.test("responses stream reaches response.completed; the record takes its usage and response", async () => {
  const chunks = openaiResponseStreamChunks("gpt-upstream", { events: 4, cachedTokens: 2 });
  const completed = sseData(chunks.at(-1)!)[0].response;
  await withRouter(
    [() => sse(chunks)],
    // `inject` asks chat streams for usage; the Responses API has it anyway and must be left alone.
    ([mock]) => ({
      providers: [provider("oa", "openai", mock.url)],
      model_mapping: { fast: ["gpt-upstream"] },
      openai: { stream_usage: "inject" },
    }),
    async (router, [mock]) => {
      const log = wire();
      const client = openaiClient(router, "/openai", log.fetch);
      const stream = await client.responses.create({ model: "fast", input: "Hi", stream: true });
      const types: string[] = [];
      let text = "";
      let final: Json = null;
      for await (const event of stream) {
        types.push(event.type);
        if (event.type === "response.output_text.delta") text += event.delta;
        if (event.type === "response.completed") final = event.response;
      }
      assert.equal(types.at(-1), "response.completed");
      assert.equal(types.length, chunks.length);
      assert.equal(text, "Hello from the mock");
      assert.deepEqual(final.usage, completed.usage);
      assert.equal(decoder.decode(log.received[0]), chunks.join(""), "bytes pass through");
      const expectedBody = log.sent[0].replace('"model":"fast"', '"model":"gpt-upstream"');
      assert.equal(decoder.decode(mock.requests[0].body), expectedBody, "only the model changed");
      const [record] = await router.sink.waitFor(1);
      assert.deepEqual(
        [record.endpoint, record.path, record.stream, record.status, record.provider],
        ["openai", "/openai/responses", true, 200, "oa"],
      );
      assert.deepEqual(record.usage, completed.usage);
      assert.deepEqual(record.response, completed);
      assert.equal(record.stream_complete, true);
      assert.equal(record.stream_events, chunks.length);
      assert.equal(record.error, null);
    },
  );
});

const created = (model: string) => openaiResponseStreamChunks(model).slice(0, 2);

/** `response.failed` as the API sends it: the response so far, with its error. */
function responseFailed(model: string, message: string): string {
  const [event] = sseData(created(model)[0]);
  const response = {
    ...event.response,
    status: "failed",
    error: { code: "server_error", message },
  };
  const data = { type: "response.failed", sequence_number: 2, response };
  return `event: response.failed\ndata: ${JSON.stringify(data)}\n\n`;
}

const FAILING_STARTS: Record<string, string[]> = {
  "error as the first event": [openaiResponseErrorEvent("Provider A is overloaded")],
  "error after response.created": [
    ...created("gpt-upstream"),
    openaiResponseErrorEvent("Provider A is overloaded", { sequenceNumber: 2 }),
  ],
  "response.failed after response.created": [
    ...created("gpt-upstream"),
    responseFailed("gpt-upstream", "Provider A is overloaded"),
  ],
};

for (const [name, failingChunks] of Object.entries(FAILING_STARTS)) {
  Deno.test(`responses stream failing before output (${name}) falls back; the client gets only B's events`, async () => {
    const bChunks = openaiResponseStreamChunks("gpt-upstream");
    await withRouter(
      [() => sse(failingChunks, { chunkDelayMs: 5 }), () => sse(bChunks)],
      ([a, b]) => ({
        providers: [
          provider("a", "openai", a.url),
          provider("b", "openai", b.url, { priority: 2 }),
        ],
        model_mapping: { fast: ["gpt-upstream"] },
      }),
      async (router, [a, b]) => {
        const log = wire();
        const client = openaiClient(router, "/openai", log.fetch);
        const stream = await client.responses.create({ model: "fast", input: "Hi", stream: true });
        let text = "";
        for await (const event of stream) {
          if (event.type === "response.output_text.delta") text += event.delta;
        }
        assert.equal(text, "Hello from the mock");
        assert.equal(decoder.decode(log.received[0]), bChunks.join(""));
        assert.deepEqual([a.requests.length, b.requests.length], [1, 1]);
        const [record] = await router.sink.waitFor(1);
        assert.deepEqual(attemptsOf(record), [
          ["a", "gpt-upstream", 200, "error_event"],
          ["b", "gpt-upstream", 200, null],
        ]);
        assert.equal(record.provider, "b");
        assert.equal(record.stream_complete, true);
        assert.equal((record.usage as Json).total_tokens, 16);
      },
    );
  });
}

Deno.test("responses stream reset after commit ends with an error event the SDK raises", async () => {
  const chunks = openaiResponseStreamChunks("gpt-upstream", { events: 4 });
  const sent = chunks.slice(0, 6); // through the second text delta
  await withRouter(
    [() => sse(sent, { reset: true }), defaultReply],
    ([a, b]) => ({
      providers: [provider("a", "openai", a.url), provider("b", "openai", b.url, { priority: 2 })],
      model_mapping: { fast: ["gpt-upstream"] },
    }),
    async (router, [a, b]) => {
      const log = wire();
      const client = openaiClient(router, "/openai", log.fetch);
      const stream = await client.responses.create({ model: "fast", input: "Hi", stream: true });
      const types: string[] = [];
      await assert.rejects(async () => {
        for await (const event of stream) types.push(event.type);
      }, (error: unknown) => {
        assert.ok(error instanceof OpenAI.APIError, String(error));
        return true;
      });
      assert.deepEqual(types, sent.map((chunk) => sseData(chunk)[0].type));
      const received = decoder.decode(log.received[0]);
      assert.ok(received.startsWith(sent.join("")), "the committed events arrive as sent");
      const tail = received.slice(sent.join("").length);
      assert.match(tail, /^event: error\ndata: \{.*\}\n\n$/);
      assert.equal(sseData(tail)[0].type, "error");
      assert.deepEqual([a.requests.length, b.requests.length], [1, 0], "no fallback after commit");
      const [record] = await router.sink.waitFor(1);
      assert.deepEqual(attemptsOf(record), [["a", "gpt-upstream", 200, "stream_interrupted"]]);
      assert.equal(record.status, 200);
      assert.equal(record.error?.type, "stream_interrupted");
      assert.equal(record.stream_complete, false);
      assert.equal(record.stream_events, sent.length);
      assert.equal(record.usage, null);
    },
  );
});

const ENDINGS: Record<string, () => string> = {
  "event: error": () => openaiResponseErrorEvent("Provider A is overloaded", { sequenceNumber: 2 }),
  "response.failed": () => responseFailed("gpt-upstream", "Provider A is overloaded"),
};

for (const [name, ending] of Object.entries(ENDINGS)) {
  Deno.test(`a Responses ${name} reaching the client logs the provider's own message`, async () => {
    // The last provider's error events go to the client as sent; the record names their message.
    const sent = [...created("gpt-upstream"), ending()].join("");
    await withRouter(
      [() => sse([sent])],
      ([a]) => ({ providers: [provider("a", "openai", a.url)] }),
      async (router) => {
        const log = wire();
        const client = openaiClient(router, "/openai", log.fetch);
        const stream = await client.responses.create({ model: "m", input: "Hi", stream: true });
        // The SDK raises on `event: error`; `response.failed` is an ordinary event to it.
        const drained = (async () => {
          for await (const _ of stream) { /* drain */ }
        })();
        if (name === "event: error") await assert.rejects(drained, OpenAI.APIError);
        else await drained;
        assert.equal(decoder.decode(log.received[0]), sent, "the events arrive as sent");
        const [record] = await router.sink.waitFor(1);
        assert.deepEqual(attemptsOf(record), [["a", "m", 200, "error_event"]]);
        assert.equal(record.error?.type, "error_event");
        assert.equal(record.error?.message, "Provider A is overloaded");
      },
    );
  });
}

// --- Embeddings ---------------------------------------------------------------------------------

Deno.test("embeddings.create: bytes pass through both ways, usage is logged", async () => {
  // Pretty-printed, so re-serialising anywhere on the way would show.
  const replyText = (req: { json: unknown }) => {
    const json = req.json as Json;
    const body = openaiEmbeddings(json.model, json.input, { encodingFormat: json.encoding_format });
    return JSON.stringify(body, null, 2);
  };
  const replies: string[] = [];
  await withRouter(
    [(req) => {
      replies.push(replyText(req));
      return { headers: { "content-type": "application/json" }, body: replies.at(-1) };
    }],
    ([mock]) => ({
      providers: [provider("oa", "openai", mock.url)],
      model_mapping: { "embed-small": ["text-embedding-3-small"] },
    }),
    async (router, [mock]) => {
      const log = wire();
      const input = ["the first text", "second"];
      const client = openaiClient(router, "/openai/v1", log.fetch);
      const unmapped = await client.embeddings.create({ model: "text-embedding-3-small", input });
      assert.deepEqual(Array.from(unmapped.data[0].embedding), mockEmbedding("the first text"));
      assert.deepEqual(Array.from(unmapped.data[1].embedding), mockEmbedding("second"));
      assert.equal(mock.requests[0].path, "/v1/embeddings");
      assert.equal(decoder.decode(mock.requests[0].body), log.sent[0], "request bytes unchanged");
      assert.equal(decoder.decode(log.received[0]), replies[0], "response bytes unchanged");

      await client.embeddings.create({ model: "embed-small", input: "x" });
      assert.equal(
        decoder.decode(mock.requests[1].body),
        log.sent[1].replace('"model":"embed-small"', '"model":"text-embedding-3-small"'),
      );
      const [first, second] = await router.sink.waitFor(2);
      assert.deepEqual(
        [first.endpoint, first.path, first.model, first.provider, first.status, first.stream],
        ["openai", "/openai/v1/embeddings", "text-embedding-3-small", "oa", 200, false],
      );
      assert.deepEqual(first.usage, { prompt_tokens: 4, total_tokens: 4 });
      assert.deepEqual(first.response, JSON.parse(replies[0]));
      assert.equal(first.bytes_forwarded, encoder.encode(replies[0]).length);
      assert.deepEqual([second.model, second.upstream_model], [
        "embed-small",
        "text-embedding-3-small",
      ]);
      assert.deepEqual(second.usage, { prompt_tokens: 1, total_tokens: 1 });
      assert.equal(
        (second.response as Json).data[0].embedding,
        embeddingBase64(mockEmbedding("x")),
        "the log keeps the body as sent (base64, as the SDK asked)",
      );
    },
  );
});

// --- count_tokens -------------------------------------------------------------------------------

Deno.test("messages.countTokens gets input_tokens through mapping and fallback", async () => {
  await withRouter(
    [(req) => failureReply(req.path, 529), defaultReply],
    ([a, b]) => ({
      providers: [
        provider("a", "anthropic", a.url),
        provider("b", "anthropic", b.url, { priority: 2 }),
      ],
      model_mapping: { sonnet: ["claude-upstream"] },
    }),
    async (router, [a, b]) => {
      const params = {
        model: "sonnet",
        system: "Answer briefly",
        messages: [{ role: "user" as const, content: "How many tokens is this?" }],
      };
      const counted = await anthropicClient(router).messages.countTokens(params);
      assert.deepEqual(counted, anthropicTokenCount(params));
      assert.equal(counted.input_tokens, 7);
      for (const mock of [a, b]) {
        assert.equal(mock.requests.length, 1);
        assert.equal(mock.requests[0].path, "/v1/messages/count_tokens");
        assert.equal(modelSent(mock), "claude-upstream");
      }
      assert.equal(b.requests[0].headers.get("x-api-key"), "sk-b-secret");
      assert.ok(b.requests[0].headers.get("anthropic-version"));
      const [record] = await router.sink.waitFor(1);
      assert.deepEqual(
        [record.endpoint, record.path, record.model, record.upstream_model, record.provider],
        ["anthropic", "/anthropic/v1/messages/count_tokens", "sonnet", "claude-upstream", "b"],
      );
      assert.deepEqual(attemptsOf(record), [
        ["a", "claude-upstream", 529, "http_status"],
        ["b", "claude-upstream", 200, null],
      ]);
      assert.deepEqual(record.response, { input_tokens: 7 });
      assert.equal(record.usage, null, "a count is not usage: nothing was generated or billed");
    },
  );
});

// --- Model lists --------------------------------------------------------------------------------

/** Names each type serves only because of the providers' `models` lists. */
function listConfig(oa: string, an: string): object {
  return {
    providers: [
      provider("oa", "openai", oa, { models: ["gpt-4o", "text-embedding-3-small"] }),
      provider("an", "anthropic", an, { models: ["claude-sonnet"] }),
    ],
    model_mapping: {
      chat: ["gpt-4o"],
      sonnet: ["claude-sonnet"],
      both: ["gpt-4o", "claude-sonnet"],
      embed: ["text-embedding-3-small"],
      pinned: [{ provider: "an", model: "claude-sonnet" }],
      orphan: ["gpt-5-unlisted"],
    },
  };
}

Deno.test("models.list (OpenAI) gives the mapping's names an OpenAI provider serves", async () => {
  await withRouter(
    [defaultReply, defaultReply],
    ([oa, an]) => listConfig(oa.url, an.url),
    async (router, mocks) => {
      for (const base of ["/openai", "/openai/v1"]) {
        const ids: string[] = [];
        const models: Json[] = [];
        for await (const model of openaiClient(router, base).models.list()) {
          ids.push(model.id);
          models.push(model);
        }
        assert.deepEqual(ids, ["chat", "both", "embed"], base);
        for (const model of models) {
          assert.equal(model.object, "model");
          assert.equal(typeof model.created, "number");
          assert.equal(typeof model.owned_by, "string");
        }
      }
      const raw: Json = await (await fetch(`${router.url}/openai/models`)).json();
      assert.equal(raw.object, "list");
      assert.deepEqual(mocks.map((m) => m.requests.length), [0, 0], "answered by the router");
    },
  );
});

Deno.test("models.list (Anthropic) gives the mapping's names an Anthropic provider serves", async () => {
  await withRouter(
    [defaultReply, defaultReply],
    ([oa, an]) => listConfig(oa.url, an.url),
    async (router, mocks) => {
      const models: Json[] = [];
      for await (const model of anthropicClient(router).models.list()) models.push(model);
      assert.deepEqual(models.map((m) => m.id), ["sonnet", "both", "pinned"]);
      for (const model of models) {
        assert.equal(model.type, "model");
        assert.equal(model.display_name, model.id);
        assert.ok(!Number.isNaN(Date.parse(model.created_at)));
      }
      const raw: Json = await (await fetch(`${router.url}/anthropic/v1/models`)).json();
      assert.deepEqual(
        [raw.has_more, raw.first_id, raw.last_id],
        [false, "sonnet", "pinned"],
      );
      assert.deepEqual(mocks.map((m) => m.requests.length), [0, 0], "answered by the router");
    },
  );
});

Deno.test("models.retrieve answers a name the router routes, and 404 in the API's format for one it does not", async () => {
  await withRouter(
    [defaultReply, defaultReply],
    ([oa, an]) => {
      const config = listConfig(oa.url, an.url) as { model_mapping: Record<string, unknown> };
      config.model_mapping["team/fast"] = ["gpt-4o"];
      return config;
    },
    async (router, mocks) => {
      for (const base of ["/openai", "/openai/v1"]) {
        const client = openaiClient(router, base);
        // Mapped, slashed (the SDK encodes the slash), and served as it is by a provider's list.
        for (const name of ["chat", "team/fast", "gpt-4o"]) {
          const model = await client.models.retrieve(name);
          assert.deepEqual([model.id, model.object], [name, "model"], `${base} ${name}`);
        }
        for (const name of ["sonnet", "orphan", "nothing-like-it"]) {
          await assert.rejects(client.models.retrieve(name), (error: unknown) => {
            assert.ok(error instanceof OpenAI.NotFoundError, String(error));
            assert.equal((error.error as Json).code, "model_not_found");
            assert.match(error.message, new RegExp(name));
            return true;
          });
        }
      }
      const client = anthropicClient(router);
      const sonnet = await client.models.retrieve("pinned");
      assert.deepEqual([sonnet.id, sonnet.type, sonnet.display_name], [
        "pinned",
        "model",
        "pinned",
      ]);
      await assert.rejects(client.models.retrieve("chat"), Anthropic.NotFoundError);
      const raw: Json = await (await fetch(`${router.url}/openai/v1/models/team/fast`)).json();
      assert.equal(raw.id, "team/fast", "a raw slash is part of the name too");
      assert.deepEqual(mocks.map((m) => m.requests.length), [0, 0], "answered by the router");
    },
  );
});

Deno.test("the Anthropic routes answer without /v1 too, as clients whose base URL holds it call", async () => {
  await withRouter(
    [defaultReply, defaultReply],
    ([oa, an]) => listConfig(oa.url, an.url),
    async (router, [, an]) => {
      const post = (path: string, body: object) =>
        fetch(`${router.url}/anthropic${path}`, {
          method: "POST",
          headers: { "content-type": "application/json", "x-api-key": CLIENT_KEY },
          body: JSON.stringify(body),
        });
      const messages = [{ role: "user", content: "Hi" }];
      const message: Json = await (await post("/messages", {
        model: "sonnet",
        max_tokens: 8,
        messages,
      })).json();
      assert.equal(message.type, "message");
      const counted: Json = await (await post("/messages/count_tokens", {
        model: "sonnet",
        messages,
      })).json();
      assert.equal(typeof counted.input_tokens, "number");
      assert.deepEqual(an.requests.map((r) => r.path), [
        "/v1/messages",
        "/v1/messages/count_tokens",
      ]);
      const list: Json = await (await fetch(`${router.url}/anthropic/models`)).json();
      assert.deepEqual(list.data.map((m: Json) => m.id), ["sonnet", "both", "pinned"]);
      const records = await router.sink.waitFor(2);
      assert.deepEqual(records.map((r) => [r.path, r.endpoint, r.status]), [
        ["/anthropic/messages", "anthropic", 200],
        ["/anthropic/messages/count_tokens", "anthropic", 200],
      ]);
    },
  );
});

Deno.test("POST on a model list answers 405 with Allow in the API's error format", async () => {
  await withRouter(
    [defaultReply, defaultReply],
    ([oa, an]) => listConfig(oa.url, an.url),
    async (router) => {
      for (const path of ["/openai/models", "/openai/v1/models", "/anthropic/v1/models"]) {
        const response = await fetch(router.url + path, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "chat" }),
        });
        assert.equal(response.status, 405, path);
        assert.equal(response.headers.get("allow"), "GET, HEAD");
        const body: Json = await response.json();
        if (path.startsWith("/anthropic")) {
          assert.equal(body.type, "error");
          assert.match(body.error.message, /POST/);
        } else {
          assert.equal(body.error.code, "method_not_allowed");
        }
      }
      const sdkPost = openaiClient(router).post("/models", { body: {} });
      await assert.rejects(sdkPost, (error: unknown) => {
        assert.ok(error instanceof OpenAI.APIError && error.status === 405, String(error));
        return true;
      });
    },
  );
});

// --- Statistics ---------------------------------------------------------------------------------

Deno.test("/stats counts Responses usage: input, output and cached tokens", async () => {
  const script: MockScript = (req) => {
    const json = req.json as Json;
    if (req.path.endsWith("/responses")) {
      if (json.stream) {
        return sse(openaiResponseStreamChunks(json.model, { text: "x y", cachedTokens: 3 }));
      }
      return { body: openaiResponse(json.model, { text: "a b c", cachedTokens: 5 }) };
    }
    return defaultReply(req);
  };
  await withRouter(
    [script, defaultReply],
    ([oa, an]) => ({
      providers: [provider("oa", "openai", oa.url), provider("an", "anthropic", an.url)],
      model_mapping: { fast: ["gpt-upstream"] },
    }),
    async (router) => {
      const client = openaiClient(router);
      await client.responses.create({ model: "fast", input: "Hi" });
      const stream = await client.responses.create({ model: "fast", input: "Hi", stream: true });
      for await (const _ of stream) { /* drain */ }
      // A token count is not consumption: it must not add to the totals.
      await anthropicClient(router).messages.countTokens({
        model: "claude-x",
        messages: [{ role: "user", content: "many words that would count" }],
      });
      await router.sink.waitFor(3);
      const stats: Json = await (await fetch(`${router.url}/stats`)).json();
      const expected = { input: 12 + 12, output: 3 + 2, cache_read: 5 + 3, cache_write: 0 };
      assert.deepEqual(stats.providers.oa.tokens, expected);
      assert.deepEqual(stats.models.fast.tokens, expected);
      assert.deepEqual(stats.providers.an.tokens, {
        input: 0,
        output: 0,
        cache_read: 0,
        cache_write: 0,
      });
    },
  );
});
