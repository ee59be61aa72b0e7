import assert from "node:assert/strict";
import OpenAI from "openai";
import { sseHeaders, startMockUpstream } from "../tools/mock_upstream.ts";
import { provider, startRouter } from "./harness.ts";

const withUsage = await Deno.readTextFile(
  new URL("./fixtures/openai_chat_stream_usage.sse", import.meta.url),
);
/** What OpenAI sends for the same answer when the client did not ask for usage. */
const withoutUsage = withUsage
  .split("\n\n")
  .filter((event) => !event.includes('"choices":[]'))
  .map((event) => event.replace(',"usage":null}', "}"))
  .join("\n\n");

/** A provider that, like OpenAI, adds usage only when asked. */
function usageAwareMock() {
  return startMockUpstream((request) => {
    const options = (request.json as { stream_options?: { include_usage?: boolean } })
      .stream_options;
    const text = options?.include_usage === true ? withUsage : withoutUsage;
    return { headers: sseHeaders, chunks: text.split(/(?<=\n\n)/) };
  });
}

function config(url: string, streamUsage: "off" | "inject") {
  return { providers: [provider("p", "openai", url)], openai: { stream_usage: streamUsage } };
}

async function streamRaw(url: string, body: object): Promise<string> {
  const response = await fetch(`${url}/openai/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return await response.text();
}

Deno.test("stream_usage inject: the client gets the bytes it would have got, the log gets usage", async () => {
  const mock = usageAwareMock();
  const router = startRouter(config(mock.url, "inject"));
  const clientBody = '{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Hi"}]}';
  const received = await streamRaw(router.url, JSON.parse(clientBody));
  assert.equal(received, withoutUsage);
  const upstream = mock.requests[0].json as Record<string, unknown>;
  assert.deepEqual(upstream.stream_options, { include_usage: true });
  const [record] = await router.sink.waitFor(1);
  assert.deepEqual(record.usage, {
    prompt_tokens: 19,
    completion_tokens: 5,
    total_tokens: 24,
    prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
    completion_tokens_details: {
      reasoning_tokens: 0,
      audio_tokens: 0,
      accepted_prediction_tokens: 0,
      rejected_prediction_tokens: 0,
    },
  });
  assert.equal((record.request as Record<string, unknown>).stream_options, undefined);
  await router.close();
  await mock.close();
});

Deno.test("stream_usage inject keeps other stream_options and leaves a client that asked alone", async () => {
  const mock = usageAwareMock();
  const router = startRouter(config(mock.url, "inject"));
  await streamRaw(router.url, {
    model: "gpt-4o",
    stream: true,
    stream_options: { include_obfuscation: false },
    messages: [],
  });
  assert.deepEqual((mock.requests[0].json as Record<string, unknown>).stream_options, {
    include_obfuscation: false,
    include_usage: true,
  });
  const asked = await streamRaw(router.url, {
    model: "gpt-4o",
    stream: true,
    stream_options: { include_usage: true },
    messages: [],
  });
  assert.equal(asked, withUsage, "a client that asked for usage gets it");
  await router.close();
  await mock.close();
});

Deno.test("stream_usage off sends the request untouched and logs no usage", async () => {
  const mock = usageAwareMock();
  const router = startRouter(config(mock.url, "off"));
  const body = '{"model":"gpt-4o","stream":true,"messages":[]}';
  const response = await fetch(`${router.url}/openai/chat/completions`, { method: "POST", body });
  assert.equal(await response.text(), withoutUsage);
  assert.equal(new TextDecoder().decode(mock.requests[0].body), body);
  const [record] = await router.sink.waitFor(1);
  assert.equal(record.usage, null);
  await router.close();
  await mock.close();
});

Deno.test("stream_usage inject works with the official client", async () => {
  const mock = usageAwareMock();
  const router = startRouter(config(mock.url, "inject"));
  const client = new OpenAI({ apiKey: "k", baseURL: `${router.url}/openai`, maxRetries: 0 });
  const stream = await client.chat.completions.create({
    model: "gpt-4o",
    stream: true,
    messages: [{ role: "user", content: "Hi" }],
  });
  let text = "";
  for await (const chunk of stream) {
    assert.equal("usage" in chunk, false, "no usage member the client did not ask for");
    text += chunk.choices[0]?.delta.content ?? "";
  }
  assert.equal(text, "Bonjour à vous 👋");
  const [record] = await router.sink.waitFor(1);
  assert.equal((record.usage as Record<string, number>).total_tokens, 24);
  await router.close();
  await mock.close();
});
