/** Work left until an answer has gone out: the queue itself, and the handler's use of it. */
import assert from "node:assert/strict";
import { AfterResponse } from "../src/after_response.ts";
import { createHandler } from "../src/app.ts";
import { parseConfig } from "../src/config.ts";
import type { UpstreamClient } from "../src/http_client.ts";
import { InFlight } from "../src/upstream.ts";
import { MemorySink } from "./harness.ts";

/** Longer than the queue's batching delay. */
const later = () => new Promise((resolve) => setTimeout(resolve, 50));

Deno.test("queued tasks run later, in order, in one batch; flush runs them at once", async () => {
  const ran: string[] = [];
  const queue = new AfterResponse(() => {});
  queue.run(() => ran.push("a"));
  queue.run(() => ran.push("b"));
  assert.equal(ran.length, 0, "nothing runs in the turn that queued it");
  await later();
  assert.deepEqual(ran, ["a", "b"]);
  queue.run(() => ran.push("c"));
  queue.flush();
  assert.deepEqual(ran, ["a", "b", "c"]);
  await later();
  assert.deepEqual(ran, ["a", "b", "c"], "a flushed task does not run twice");
});

Deno.test("a task that throws is reported and the others still run", () => {
  const reported: unknown[] = [];
  const queue = new AfterResponse((error) => reported.push(error));
  const ran: string[] = [];
  queue.run(() => ran.push("a"));
  queue.run(() => {
    throw new Error("broken");
  });
  queue.run(() => ran.push("c"));
  queue.flush();
  assert.deepEqual(ran, ["a", "c"]);
  assert.equal(reported.length, 1);
  assert.match(String(reported[0]), /broken/);
});

const ANSWER = JSON.stringify({
  id: "chatcmpl-1",
  object: "chat.completion",
  model: "gpt-4o-mini",
  choices: [{ index: 0, message: { role: "assistant", content: "Hi" }, finish_reason: "stop" }],
  usage: { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 },
});

/** A provider answering `ANSWER` without a socket, so the test sees the handler's own turns. */
const upstream: UpstreamClient = () => {
  const bytes = new TextEncoder().encode(ANSWER);
  return Promise.resolve({
    status: 200,
    statusText: "OK",
    headers: new Headers({
      "content-type": "application/json",
      "content-length": String(bytes.length),
    }),
    body: new ReadableStream({
      type: "bytes",
      start(controller) {
        controller.enqueue(bytes);
        controller.close();
      },
    }).getReader(),
    decoded: false,
  });
};

Deno.test("a plain answer is returned before its record is read and handed on", async () => {
  const config = parseConfig(
    JSON.stringify({
      providers: [{ name: "p", type: "openai", api_key: "sk-p-secret", base_url: "http://x/v1" }],
    }),
    () => undefined,
  );
  const sink = new MemorySink();
  const inFlight = new InFlight();
  const handler = createHandler(() => config, { sink, upstream, inFlight });
  const body = JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "x" }] });
  try {
    const response = await handler(
      new Request("http://router/openai/chat/completions", {
        method: "POST",
        headers: { "content-type": "application/json", "content-length": String(body.length) },
        body,
      }),
    );
    assert.equal(response.status, 200);
    assert.equal(sink.records.length, 0, "the record waits until the answer has gone out");
    assert.equal(await response.text(), ANSWER);
    const [record] = await sink.waitFor(1);
    assert.deepEqual(record.usage, { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 });
    assert.deepEqual(record.response, JSON.parse(ANSWER));
    assert.equal(record.error, null);

    // A statistics page counts every request answered before it, queued or not.
    await (await handler(
      new Request("http://router/openai/chat/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      }),
    )).text();
    const stats = await (await handler(new Request("http://router/stats"))).json();
    assert.equal(stats.providers.p.requests, 2);
  } finally {
    inFlight.close();
  }
});
