/**
 * Fault injection, time and broken connections: hangs before headers and mid-stream, the idle and
 * total timeouts after the commit point, streams that close or reset, a slow drip, 529 and an
 * error event as the first SSE event. Each test states status, provider, attempts and record.
 */
import assert from "node:assert/strict";
import { failureReply, type MockReply } from "../tools/mock_upstream.ts";
import {
  answerText,
  type Api,
  APIS,
  attemptsOf,
  onlyRecord,
  post,
  splitAtFirstOutput,
  sseHeaders,
  streamChunks,
  within,
  withMocks,
} from "./resilience_util.ts";

const FIRST_BYTE_MS = 300;
/** The loose bound of the brief: a fallback costs the first-byte timeout plus well under 1 s. */
const FALLBACK_BOUND_MS = FIRST_BYTE_MS + 1000;

const json = (body: string, status = 200): MockReply => ({
  status,
  body,
  headers: { "content-type": "application/json" },
});
const stream = (chunks: string[], extra: Partial<MockReply> = {}): MockReply => ({
  headers: { ...sseHeaders },
  chunks,
  ...extra,
});

/** Asserts `tail` is exactly one error event in the API's stream format. */
function assertOneErrorEvent(api: Api, tail: string): void {
  const match = api === "openai"
    ? tail.match(/^data: (\{.*\})\n\n$/)
    : tail.match(/^event: error\ndata: (\{.*\})\n\n$/);
  assert.ok(match, `one ${api} error event, got ${JSON.stringify(tail)}`);
  const body = JSON.parse(match[1]);
  if (api === "openai") assert.equal(typeof body.error.message, "string");
  else {
    assert.equal(body.type, "error");
    assert.equal(typeof body.error.message, "string");
  }
}

for (const api of APIS) {
  for (const streaming of [false, true]) {
    const kind = streaming ? "streaming" : "non-streaming";
    Deno.test(`${api} ${kind}: a provider hanging before headers falls back after first_byte_ms`, async () => {
      const answer = streaming ? streamChunks(api) : [answerText(api)];
      const second = streaming ? stream(answer) : json(answer[0]);
      await withMocks(api, [() => ({ hang: "headers" }), () => second], {
        config: { timeouts: { first_byte_ms: FIRST_BYTE_MS } },
      }, async ({ router, mocks: [a, b] }) => {
        const started = performance.now();
        const response = await within(post(router.url, api, { stream: streaming }), "the response");
        const body = await within(response.text(), "the body");
        const elapsed = performance.now() - started;
        console.log(`  fallback past a hanging ${api} ${kind} provider: ${elapsed.toFixed(0)} ms`);
        assert.equal(response.status, 200);
        assert.equal(response.headers.get("x-llm-router-provider"), "b");
        assert.equal(body, answer.join(""), "the client gets b's bytes unchanged");
        assert.ok(elapsed >= FIRST_BYTE_MS - 5, `waited for the timeout (${elapsed} ms)`);
        assert.ok(elapsed < FALLBACK_BOUND_MS, `fallback took ${elapsed} ms`);
        const record = await onlyRecord(router);
        assert.deepEqual(attemptsOf(record), [["a", null, "timeout"], ["b", 200, null]]);
        assert.equal(record.provider, "b");
        assert.equal(record.status, 200);
        assert.equal(record.error, null);
        await within(a.whenAborted(), "the hanging upstream to see its request aborted");
        assert.equal(a.aborted, 1);
        assert.equal(b.requests.length, 1);
      });
    });
  }
}

for (
  const [form, extra] of [
    ["timeout_ms", { timeout_ms: FIRST_BYTE_MS }],
    ["timeouts.first_byte_ms", { timeouts: { first_byte_ms: FIRST_BYTE_MS } }],
  ] as const
) {
  Deno.test(`a provider's own ${form} overrides the global first-byte timeout`, async () => {
    await withMocks("openai", [() => ({ hang: "headers" }), () => json(answerText("openai"))], {
      config: { timeouts: { first_byte_ms: 60_000 } },
      extra: [extra],
    }, async ({ router }) => {
      const started = performance.now();
      const response = await within(post(router.url, "openai"), "the response");
      await response.body?.cancel();
      const elapsed = performance.now() - started;
      assert.equal(response.status, 200);
      assert.ok(elapsed < FALLBACK_BOUND_MS, `fallback took ${elapsed} ms`);
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", null, "timeout"], ["b", 200, null]]);
    });
  });
}

for (const api of APIS) {
  Deno.test(`${api}: every provider hanging before headers ends in a 504 in the endpoint's format`, async () => {
    await withMocks(api, [() => ({ hang: "headers" }), () => ({ hang: "headers" })], {
      config: { timeouts: { first_byte_ms: 200 } },
    }, async ({ router }) => {
      const started = performance.now();
      const response = await within(post(router.url, api), "the response");
      const body = await response.json();
      assert.equal(response.status, 504);
      assert.ok(performance.now() - started < 400 + 1000);
      if (api === "openai") assert.equal(body.error.code, "upstream_timeout");
      else assert.deepEqual([body.type, body.error.type], ["error", "timeout_error"]);
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", null, "timeout"], ["b", null, "timeout"]]);
      assert.equal(record.status, 504);
      assert.equal(record.error?.type, "upstream_timeout");
    });
  });
}

for (const api of APIS) {
  Deno.test(`${api}: a stream hanging before its first output event falls back after first_byte_ms`, async () => {
    const [before] = splitAtFirstOutput(api, streamChunks(api));
    const answer = streamChunks(api, 4);
    await withMocks(api, [() => stream(before, { hang: "body" }), () => stream(answer)], {
      config: { timeouts: { first_byte_ms: FIRST_BYTE_MS } },
    }, async ({ router, mocks: [a] }) => {
      const started = performance.now();
      const response = await within(post(router.url, api, { stream: true }), "the response");
      const body = await within(response.text(), "the body");
      const elapsed = performance.now() - started;
      console.log(
        `  fallback past a ${api} stream hanging before output: ${elapsed.toFixed(0)} ms`,
      );
      assert.equal(response.status, 200);
      assert.equal(body, answer.join(""), "nothing of a's held events reaches the client");
      assert.ok(elapsed < FALLBACK_BOUND_MS, `fallback took ${elapsed} ms`);
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 200, "timeout"], ["b", 200, null]]);
      assert.equal(record.provider, "b");
      assert.equal(record.stream_complete, true);
      await within(a.whenAborted(), "a to see its stream cancelled");
    });
  });
}

for (const api of APIS) {
  Deno.test(`${api}: idle_ms ends a committed stream that hangs with one error event, logged as timeout`, async () => {
    const chunks = streamChunks(api, 4);
    const sent = chunks.slice(0, chunks.length - 3);
    await withMocks(api, [() => stream(sent, { hang: "body" }), () => stream(chunks)], {
      config: { timeouts: { first_byte_ms: 5000, idle_ms: 300 } },
    }, async ({ router, mocks: [a, b] }) => {
      const started = performance.now();
      const response = await within(post(router.url, api, { stream: true }), "the response");
      assert.equal(response.status, 200);
      const body = await within(response.text(), "the body");
      const elapsed = performance.now() - started;
      assert.ok(body.startsWith(sent.join("")), "a's bytes pass through unchanged");
      assertOneErrorEvent(api, body.slice(sent.join("").length));
      assert.ok(elapsed >= 300 && elapsed < 300 + 1000, `ended after ${elapsed} ms`);
      const record = await onlyRecord(router);
      assert.equal(record.status, 200);
      assert.equal(record.provider, "a");
      assert.deepEqual(attemptsOf(record), [["a", 200, "timeout"]]);
      assert.equal(record.error?.type, "timeout");
      assert.equal(record.stream_complete, false);
      assert.equal(record.bytes_forwarded, new TextEncoder().encode(body).length);
      assert.equal(b.requests.length, 0, "no fallback after the commit point");
      await within(a.whenAborted(), "a to see its stream cancelled");
    });
  });
}

for (const api of APIS) {
  Deno.test(`${api}: total_ms ends a long committed stream with one error event, logged as timeout`, async () => {
    const chunks = streamChunks(api, 40);
    await withMocks(api, [() => stream(chunks, { chunkDelayMs: 50 })], {
      config: { timeouts: { first_byte_ms: 5000, idle_ms: 5000, total_ms: 700 } },
    }, async ({ router }) => {
      const started = performance.now();
      const response = await within(post(router.url, api, { stream: true }), "the response");
      assert.equal(response.status, 200);
      const body = await within(response.text(), "the body");
      const elapsed = performance.now() - started;
      assert.ok(elapsed >= 650 && elapsed < 700 + 1000, `ended after ${elapsed} ms`);
      const cut = body.lastIndexOf(api === "openai" ? 'data: {"error"' : "event: error\n");
      assert.ok(cut > 0, "an error event at the end");
      assert.ok(chunks.join("").startsWith(body.slice(0, cut)), "whole events pass through");
      assertOneErrorEvent(api, body.slice(cut));
      const record = await onlyRecord(router);
      assert.equal(record.status, 200);
      assert.deepEqual(attemptsOf(record), [["a", 200, "timeout"]]);
      assert.equal(record.error?.type, "timeout");
      assert.equal(record.stream_complete, false);
    });
  });
}

for (const api of APIS) {
  for (const fault of ["close", "reset"] as const) {
    const extra = fault === "reset" ? { reset: true } : {};
    Deno.test(`${api}: a stream that ends by ${fault} before output falls back`, async () => {
      const [before] = splitAtFirstOutput(api, streamChunks(api));
      const answer = streamChunks(api);
      await withMocks(api, [() => stream(before, extra), () => stream(answer)], {}, async (
        { router },
      ) => {
        const response = await within(post(router.url, api, { stream: true }), "the response");
        assert.equal(response.status, 200);
        assert.equal(await response.text(), answer.join(""));
        const record = await onlyRecord(router);
        assert.deepEqual(attemptsOf(record), [["a", 200, "stream_interrupted"], ["b", 200, null]]);
        assert.equal(record.provider, "b");
        assert.equal(record.error, null);
      });
    });

    Deno.test(`${api}: a committed stream cut by ${fault} ends with one error event`, async () => {
      const chunks = streamChunks(api, 4);
      const sent = chunks.slice(0, chunks.length - 3);
      await withMocks(api, [() => stream(sent, extra), () => stream(chunks)], {}, async (
        { router, mocks: [, b] },
      ) => {
        const response = await within(post(router.url, api, { stream: true }), "the response");
        assert.equal(response.status, 200);
        const body = await within(response.text(), "the body");
        assert.ok(body.startsWith(sent.join("")));
        assertOneErrorEvent(api, body.slice(sent.join("").length));
        const record = await onlyRecord(router);
        assert.equal(record.status, 200);
        assert.deepEqual(attemptsOf(record), [["a", 200, "stream_interrupted"]]);
        assert.equal(record.error?.type, "stream_interrupted");
        assert.equal(record.stream_complete, false);
        assert.equal(b.requests.length, 0);
      });
    });
  }
}

Deno.test("a non-streaming body reset mid-way is a failed attempt: the router falls back", async () => {
  const answer = answerText("openai");
  const half = answer.slice(0, 40);
  const broken = () => ({
    headers: { "content-type": "application/json" },
    chunks: [half],
    reset: true,
  });
  await withMocks("openai", [broken, () => json(answer)], {}, async ({ router, mocks: [, b] }) => {
    const response = await within(post(router.url, "openai"), "the response");
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("x-llm-router-provider"), "b");
    assert.equal(await response.text(), answer);
    const record = await onlyRecord(router);
    assert.deepEqual(attemptsOf(record), [["a", 200, "stream_interrupted"], ["b", 200, null]]);
    assert.equal(b.requests.length, 1);
  });
  await withMocks("openai", [broken], {}, async ({ router }) => {
    const response = await within(post(router.url, "openai"), "the response");
    assert.equal(response.status, 502, "nothing of the broken body reached the client");
    assert.equal((await response.json()).error.code, "upstream_unavailable");
    const record = await onlyRecord(router);
    assert.deepEqual(attemptsOf(record), [["a", 200, "stream_interrupted"]]);
  });
});

Deno.test("a non-streaming body too long to hold, reset mid-way, errors the client's body and is logged", async () => {
  // Past 256 KiB read ahead the router commits and relays the rest as it comes.
  const head = `{"id":"chatcmpl-long","object":"chat.completion","padding":"${"x".repeat(300_000)}`;
  await withMocks(
    "openai",
    [
      () => ({ headers: { "content-type": "application/json" }, chunks: [head], reset: true }),
      () => json(answerText("openai")),
    ],
    {},
    async ({ router, mocks: [, b] }) => {
      const response = await within(post(router.url, "openai"), "the response");
      assert.equal(response.status, 200, "the held part was the commit point");
      await assert.rejects(response.text());
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 200, "stream_interrupted"]]);
      assert.equal(record.error?.type, "stream_interrupted");
      // A reset may discard what the socket had not yet handed over.
      assert.ok(record.bytes_forwarded > 256 * 1024 && record.bytes_forwarded <= head.length);
      assert.equal(b.requests.length, 0);
    },
  );
});

for (const api of APIS) {
  Deno.test(`${api}: a slow drip (a chunk every 50 ms, longer in all than idle_ms) passes through`, async () => {
    const chunks = streamChunks(api, 12);
    await withMocks(api, [() => stream(chunks, { chunkDelayMs: 50 })], {
      config: { timeouts: { first_byte_ms: 500, idle_ms: 500 } },
    }, async ({ router }) => {
      const started = performance.now();
      const response = await within(post(router.url, api, { stream: true }), "the response");
      const body = await within(response.text(), "the body");
      const elapsed = performance.now() - started;
      assert.ok(elapsed > 500, `the stream lasted longer than idle_ms (${elapsed} ms)`);
      assert.equal(response.status, 200);
      assert.equal(body, chunks.join(""));
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 200, null]]);
      assert.equal(record.error, null);
      assert.equal(record.stream_complete, true);
      assert.equal(record.stream_events, chunks.length);
    });
  });
}

Deno.test("anthropic: a 529 falls back to the next provider", async () => {
  const answer = answerText("anthropic");
  await withMocks(
    "anthropic",
    [
      () => failureReply("/v1/messages", 529),
      () => json(answer),
    ],
    {},
    async ({ router }) => {
      const response = await within(post(router.url, "anthropic"), "the response");
      assert.equal(response.status, 200);
      assert.equal(await response.text(), answer);
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 529, "http_status"], ["b", 200, null]]);
      assert.equal(record.provider, "b");
    },
  );
});

const FIRST_EVENT_ERROR: Record<Api, string> = {
  openai: `data: ${
    JSON.stringify({ error: { message: "Overloaded", type: "server_error", code: null } })
  }\n\n`,
  anthropic: await Deno.readTextFile(
    new URL("./fixtures/anthropic_stream_overloaded.sse", import.meta.url),
  ),
};

for (const api of APIS) {
  Deno.test(`${api}: an error event as the first SSE event falls back`, async () => {
    const answer = streamChunks(api);
    await withMocks(api, [() => stream([FIRST_EVENT_ERROR[api]]), () => stream(answer)], {}, async (
      { router },
    ) => {
      const response = await within(post(router.url, api, { stream: true }), "the response");
      assert.equal(response.status, 200);
      assert.equal(await response.text(), answer.join(""));
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 200, "error_event"], ["b", 200, null]]);
      assert.equal(record.provider, "b");
      assert.equal(record.error, null);
    });
  });

  Deno.test(`${api}: an error event as the only provider's first event passes through`, async () => {
    await withMocks(api, [() => stream([FIRST_EVENT_ERROR[api]])], {}, async ({ router }) => {
      const response = await within(post(router.url, api, { stream: true }), "the response");
      assert.equal(response.status, 200);
      assert.equal(await response.text(), FIRST_EVENT_ERROR[api], "the bytes pass through");
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 200, "error_event"]]);
      assert.equal(record.error?.type, "error_event");
    });
  });
}

Deno.test("a plain answer of unknown length still arriving after 1 s is committed and relayed as it comes", async () => {
  // A gateway keeping a long non-streaming call alive with early whitespace.
  const answer = answerText("openai");
  await withMocks(
    "openai",
    [() => ({
      headers: { "content-type": "application/json" },
      chunks: ["\n", "\n", answer],
      chunkDelayMs: 700,
    })],
    {},
    async ({ router }) => {
      const started = performance.now();
      const response = await within(post(router.url, "openai"), "the response");
      const headersAfter = performance.now() - started;
      assert.equal(response.status, 200);
      assert.ok(headersAfter > 900 && headersAfter < 1400, `headers after ${headersAfter} ms`);
      assert.equal(await response.text(), "\n\n" + answer);
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 200, null]]);
      assert.equal(record.usage?.total_tokens, JSON.parse(answer).usage.total_tokens);
    },
  );
});

Deno.test("the last provider's fallback answer stalling past total_ms gives 504, and its attempt says timeout", async () => {
  await withMocks(
    "openai",
    [() => ({
      status: 503,
      headers: { "content-type": "application/json" },
      chunks: ['{"error":'],
      hang: "body",
    })],
    { config: { timeouts: { total_ms: 300 } } },
    async ({ router }) => {
      const response = await within(post(router.url, "openai"), "the response");
      assert.equal(response.status, 504);
      assert.equal((await response.json()).error.code, "upstream_timeout");
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 503, "timeout"]]);
    },
  );
});

Deno.test("a plain answer whose headers came but whose body never starts is a failed attempt: the router falls back", async () => {
  const answer = answerText("openai");
  await withMocks(
    "openai",
    [
      () => ({ headers: { "content-type": "application/json" }, hang: "body" }),
      () => json(answer),
    ],
    { config: { timeouts: { idle_ms: 1500 } } },
    async ({ router }) => {
      const response = await within(post(router.url, "openai"), "the response", 5000);
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("x-llm-router-provider"), "b");
      assert.equal(await response.text(), answer);
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 200, "timeout"], ["b", 200, null]]);
    },
  );
});
