import assert from "node:assert/strict";
import type { RequestRecord } from "../src/record.ts";
import {
  anthropicStreamChunks,
  type MockReply,
  type MockUpstream,
  openaiStreamChunks,
  sseHeaders,
  startMockUpstream,
} from "../tools/mock_upstream.ts";
import { provider, type RunningRouter, startRouter, within } from "./harness.ts";

type Api = "openai" | "anthropic";

const decoder = new TextDecoder();

const PATHS: Record<Api, string> = {
  openai: "/openai/v1/chat/completions",
  anthropic: "/anthropic/v1/messages",
};

function requestBody(api: Api, stream: boolean): string {
  const messages = [{ role: "user", content: "Hi" }];
  return JSON.stringify(
    api === "openai"
      ? { model: "gpt-4o", stream, messages }
      : { model: "claude-mock-1", max_tokens: 64, stream, messages },
  );
}

function post(
  router: RunningRouter,
  api: Api,
  stream: boolean,
  signal?: AbortSignal,
): Promise<Response> {
  return fetch(router.url + PATHS[api], {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: requestBody(api, stream),
    signal,
  });
}

/** Runs `body` with a router in front of mock providers "a", "b" of one API type. */
async function withProviders(
  api: Api,
  replies: MockReply[],
  body: (router: RunningRouter, mocks: MockUpstream[]) => Promise<void>,
): Promise<void> {
  const mocks = replies.map((reply) => startMockUpstream(() => reply));
  const router = startRouter({
    providers: mocks.map((mock, i) => provider("ab"[i], api, mock.url)),
  });
  try {
    await body(router, mocks);
  } finally {
    for (const mock of mocks) await mock.close();
    await router.close();
  }
}

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 5));
}

async function onlyRecord(router: RunningRouter): Promise<RequestRecord> {
  const [record, ...rest] = await within(router.sink.waitFor(1), "the record");
  assert.equal(rest.length, 0);
  return record;
}

function assertClientAborted(record: RequestRecord): void {
  assert.equal(record.status, 499);
  assert.equal(record.error?.type, "client_aborted");
}

for (const api of ["openai", "anthropic"] as const) {
  for (const stream of [false, true]) {
    const kind = stream ? "streaming" : "non-streaming";
    Deno.test(`${api} ${kind}: a client that leaves before headers aborts the upstream request and is logged 499`, async () => {
      await withProviders(
        api,
        [{ hang: "headers" }, { body: { never: "used" } }],
        async (router, [a, b]) => {
          const controller = new AbortController();
          const response = post(router, api, stream, controller.signal);
          await until(() => a.requests.length === 1);
          controller.abort();
          await assert.rejects(response, (error: unknown) => {
            assert.equal((error as Error).name, "AbortError");
            return true;
          });
          await within(a.whenAborted(), "the upstream to see the abort");
          assert.equal(a.aborted, 1);
          const record = await onlyRecord(router);
          assertClientAborted(record);
          assert.deepEqual(record.attempts.map((x) => [x.provider, x.error]), [
            ["a", "client_aborted"],
          ]);
          // The router does not go on to the next provider for a client that has left.
          assert.equal(b.requests.length, 0);
        },
      );
    });
  }
}

/** A stream that commits (first output), sends a little more, then never ends. */
function committedThenHanging(api: Api): MockReply {
  const chunks = api === "openai"
    ? openaiStreamChunks("gpt-4o", { events: 6 }).slice(0, 4)
    : anthropicStreamChunks("claude-mock-1", { events: 6 }).slice(0, 5);
  return { headers: { ...sseHeaders }, chunks, hang: "body" };
}

for (const api of ["openai", "anthropic"] as const) {
  for (const last of [false, true]) {
    const where = last ? "from the last provider" : "from a provider with a fallback";
    Deno.test(`${api}: a client that cancels mid-stream ${where} aborts the upstream and is logged 499`, async () => {
      const replies: MockReply[] = [committedThenHanging(api)];
      if (!last) replies.push({ body: { never: "used" } });
      await withProviders(api, replies, async (router, [a, b]) => {
        const response = await post(router, api, true);
        assert.equal(response.status, 200);
        assert.equal(response.headers.get("x-llm-router-provider"), "a");
        const reader = response.body!.getReader();
        let text = "";
        while (!text.includes("\n\n")) {
          const { done, value } = await reader.read();
          assert.equal(done, false, "the stream ended before its first event");
          text += decoder.decode(value, { stream: true });
        }
        assert.ok(text.startsWith(api === "openai" ? "data: " : "event: message_start\n"));
        await reader.cancel();
        await within(a.whenAborted(), "the upstream to see the abort");
        assert.equal(a.aborted, 1);
        const record = await onlyRecord(router);
        assertClientAborted(record);
        assert.equal(record.provider, "a");
        assert.equal(record.stream_complete, false);
        assert.deepEqual(record.attempts.map((x) => [x.provider, x.error]), [
          ["a", "client_aborted"],
        ]);
        if (b !== undefined) assert.equal(b.requests.length, 0);
      });
    });
  }
}

Deno.test("a client that leaves while the router holds events aborts the upstream and is logged 499", async () => {
  const held = anthropicStreamChunks("claude-mock-1").slice(0, 1);
  await withProviders(
    "anthropic",
    [{ headers: { ...sseHeaders }, chunks: held, hang: "body" }, { body: { never: "used" } }],
    async (router, [a, b]) => {
      const controller = new AbortController();
      const response = post(router, "anthropic", true, controller.signal);
      await until(() => a.requests.length === 1);
      // Let message_start reach the router, which holds it waiting for output.
      await new Promise((resolve) => setTimeout(resolve, 50));
      controller.abort();
      await assert.rejects(response);
      await within(a.whenAborted(), "the upstream to see the abort");
      assert.equal(a.aborted, 1);
      const record = await onlyRecord(router);
      assertClientAborted(record);
      assert.deepEqual(record.attempts.map((x) => [x.provider, x.error]), [
        ["a", "client_aborted"],
      ]);
      assert.equal(b.requests.length, 0);
    },
  );
});

for (const api of ["openai", "anthropic"] as const) {
  for (const stream of [false, true]) {
    const kind = stream ? "streaming" : "non-streaming";
    Deno.test(`${api} ${kind}: a complete response does not abort the upstream request`, async () => {
      const mock = startMockUpstream();
      const router = startRouter({ providers: [provider("a", api, mock.url)] });
      try {
        for (let i = 0; i < 3; i++) {
          const response = await post(router, api, stream);
          assert.equal(response.status, 200);
          await response.arrayBuffer();
        }
        const records = await within(router.sink.waitFor(3), "3 records");
        // Give a late abort signal time to arrive.
        await new Promise((resolve) => setTimeout(resolve, 100));
        assert.equal(mock.aborted, 0);
        for (const record of records) {
          assert.equal(record.status, 200);
          assert.equal(record.error, null);
          assert.deepEqual(record.attempts.map((x) => [x.provider, x.error]), [["a", null]]);
        }
        assert.equal(router.sink.records.length, 3);
      } finally {
        await mock.close();
        await router.close();
      }
    });
  }
}
