/**
 * Bad input from both sides. Upstream garbage (a non-JSON 200, broken SSE events, invalid UTF-8
 * split across chunks, CRLF line endings) passes through byte for byte and the record says what
 * it could read; client mistakes (too large, wrong content type, wrong method, unknown path) get
 * a clear error in the endpoint's format and a record. The upstream never sees a refused request.
 */
import assert from "node:assert/strict";
import { defaultReply, type MockReply } from "../tools/mock_upstream.ts";
import { concat } from "./harness.ts";
import {
  type Api,
  APIS,
  attemptsOf,
  bytesOf,
  MODEL,
  onlyRecord,
  post,
  requestText,
  ROUTE,
  sleep,
  sseHeaders,
  streamChunks,
  utf8,
  within,
  withMocks,
} from "./resilience_util.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

const sse = (chunks: (string | Uint8Array)[]): MockReply => ({
  headers: { ...sseHeaders },
  chunks,
});

/** Asserts `body` is the router's own error in `api`'s format, with this message pattern. */
function assertErrorFormat(api: Api, body: Json, message: RegExp): void {
  if (api === "openai") {
    assert.deepEqual(Object.keys(body), ["error"]);
    assert.match(body.error.message, message);
    assert.equal(typeof body.error.type, "string");
  } else {
    assert.equal(body.type, "error");
    assert.match(body.error.message, message);
    assert.equal(typeof body.error.type, "string");
  }
}

// Upstream garbage.

for (const api of APIS) {
  Deno.test(`${api}: a non-JSON 200 body passes through unchanged, logged as malformed_response`, async () => {
    const garbage = "<html><body>502 Bad Gateway</body></html>\n\x00\x01 not json";
    await withMocks(
      api,
      [() => ({ status: 200, headers: { "content-type": "application/json" }, body: garbage })],
      {},
      async (
        { router },
      ) => {
        const response = await within(post(router.url, api), "the response");
        assert.equal(response.status, 200);
        assert.equal(await response.text(), garbage);
        const record = await onlyRecord(router);
        assert.equal(record.status, 200);
        assert.equal(record.provider, "a");
        assert.deepEqual(attemptsOf(record), [["a", 200, null]]);
        assert.equal(record.error?.type, "malformed_response");
        assert.equal(record.response, garbage);
        assert.equal(record.usage, null);
        assert.equal(record.bytes_forwarded, utf8(garbage).length);
      },
    );
  });
}

for (const api of APIS) {
  Deno.test(`${api}: a 400 labelled text/event-stream is a plain answer: passed on unchanged, no fallback`, async () => {
    const error = api === "openai"
      ? '{"error":{"message":"max_tokens is too large","type":"invalid_request_error"}}'
      : '{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens is too large"}}';
    await withMocks(
      api,
      [
        () => ({ status: 400, headers: { "content-type": "text/event-stream" }, body: error }),
        defaultReply,
      ],
      {},
      async ({ router, mocks: [, b] }) => {
        const response = await within(post(router.url, api, { stream: true }), "the response");
        assert.equal(response.status, 400);
        assert.equal(await response.text(), error);
        const record = await onlyRecord(router);
        assert.deepEqual(attemptsOf(record), [["a", 400, "http_status"]]);
        assert.equal(b.requests.length, 0);
      },
    );
  });

  Deno.test(`${api}: a media type is case-insensitive: Text/Event-Stream is read as a stream`, async () => {
    const chunks = streamChunks(api, 3);
    await withMocks(
      api,
      [() => ({ headers: { "content-type": "Text/Event-Stream; charset=utf-8" }, chunks })],
      {},
      async ({ router }) => {
        const response = await within(post(router.url, api, { stream: true }), "the response");
        assert.equal(await response.text(), chunks.join(""));
        const record = await onlyRecord(router);
        assert.equal(record.error, null);
        assert.equal(record.stream_complete, true);
        assert.equal(record.stream_events, chunks.length);
      },
    );
  });
}

Deno.test('openai: a chunk with "error": null is output, not an error event', async () => {
  const chunks = streamChunks("openai", 3).map((chunk) =>
    chunk.startsWith('data: {"') ? chunk.replace('data: {"', 'data: {"error":null,"') : chunk
  );
  assert.ok(chunks.some((chunk) => chunk.includes('"error":null')));
  await withMocks("openai", [() => sse(chunks), defaultReply], {}, async ({ router }) => {
    const response = await within(post(router.url, "openai", { stream: true }), "the response");
    assert.equal(response.headers.get("x-llm-router-provider"), "a");
    assert.equal(await response.text(), chunks.join(""));
    const record = await onlyRecord(router);
    assert.equal(record.error, null);
    assert.deepEqual(attemptsOf(record), [["a", 200, null]]);
  });
});

Deno.test("openai: an `event: error` after output is the provider's error event, passed on as sent", async () => {
  const chunks = [
    ...streamChunks("openai", 3).slice(0, 2),
    'event: error\ndata: {"message":"overloaded"}\n\n',
  ];
  await withMocks("openai", [() => sse(chunks)], {}, async ({ router }) => {
    const response = await within(post(router.url, "openai", { stream: true }), "the response");
    assert.equal(await response.text(), chunks.join(""), "no error event of the router's added");
    const record = await onlyRecord(router);
    assert.equal(record.error?.type, "error_event");
  });
});

const BROKEN_EVENT: Record<Api, string> = {
  openai: 'data: {"choices":[{"index":0,"delta":{"content":"cut\n\n',
  anthropic: 'event: content_block_delta\ndata: {"type":"content_block_delta","ind\n\n',
};

for (const api of APIS) {
  Deno.test(`${api}: broken SSE events pass through unchanged, logged as malformed_stream`, async () => {
    const chunks = streamChunks(api, 3);
    const at = chunks.length - 2;
    const sent = [...chunks.slice(0, at), BROKEN_EVENT[api], ...chunks.slice(at)];
    await withMocks(api, [() => sse(sent)], {}, async ({ router }) => {
      const response = await within(post(router.url, api, { stream: true }), "the response");
      assert.equal(response.status, 200);
      assert.equal(await response.text(), sent.join(""));
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 200, null]]);
      assert.equal(record.error?.type, "malformed_stream");
      assert.equal(record.stream_complete, true);
      assert.equal(record.stream_events, sent.length);
      const response_ = record.response as Json;
      const textOut = api === "openai"
        ? response_.choices[0].message.content
        : response_.content[0].text;
      assert.equal(textOut, "Hello from the mock", "the tap kept what it could read");
    });
  });
}

/** Cuts `bytes` at each offset, so chunk edges fall inside characters and line endings. */
function cutAt(bytes: Uint8Array, offsets: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let from = 0;
  for (const to of [...offsets, bytes.length]) {
    out.push(bytes.slice(from, to));
    from = to;
  }
  return out;
}

Deno.test("openai: invalid UTF-8 and characters split across chunks pass through byte for byte", async () => {
  const head = 'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",' +
    '"choices":[{"index":0,"delta":{"content":"caf';
  // "é" (C3 A9), then two bytes that are never valid UTF-8, then "€" (E2 82 AC).
  const odd = new Uint8Array([0xc3, 0xa9, 0xff, 0xfe, 0xe2, 0x82, 0xac]);
  const tail = '"},"finish_reason":null}]}\n\n' +
    'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",' +
    '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
  const whole = concat([head, odd, tail]);
  const start = utf8(head).length;
  const chunks = cutAt(whole, [start + 1, start + 3, start + 5, start + 6, whole.length - 3]);
  await withMocks("openai", [() => sse(chunks)], {}, async ({ router }) => {
    const response = await within(post(router.url, "openai", { stream: true }), "the response");
    assert.equal(response.status, 200);
    assert.deepEqual(await bytesOf(response), whole);
    const record = await onlyRecord(router);
    assert.deepEqual(attemptsOf(record), [["a", 200, null]]);
    assert.equal(record.stream_complete, true);
    assert.equal(record.error, null);
    assert.equal((record.response as Json).choices[0].message.content, "café\uFFFD\uFFFD€");
  });
});

for (const api of APIS) {
  Deno.test(`${api}: CRLF line endings split across chunks pass through byte for byte`, async () => {
    const crlf = streamChunks(api, 3).map((chunk) => chunk.replaceAll("\n", "\r\n"));
    const whole = utf8(crlf.join(""));
    // Cut inside every "\r\n\r\n" at each of its three inner positions in turn.
    const offsets: number[] = [];
    let n = 0;
    for (let i = 0; i + 3 < whole.length; i++) {
      if (whole[i] === 13 && whole[i + 1] === 10 && whole[i + 2] === 13 && whole[i + 3] === 10) {
        offsets.push(i + 1 + (n++ % 3));
      }
    }
    await withMocks(api, [() => sse(cutAt(whole, offsets))], {}, async ({ router }) => {
      const response = await within(post(router.url, api, { stream: true }), "the response");
      assert.equal(response.status, 200);
      assert.deepEqual(await bytesOf(response), whole);
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 200, null]]);
      assert.equal(record.error, null);
      assert.equal(record.stream_complete, true);
      assert.equal(record.stream_events, crlf.length);
      assert.equal(record.bytes_forwarded, whole.length);
    });
  });
}

// Client mistakes.

const LIMIT = 1000;

/** A valid body for `api` padded with spaces to exactly `size` bytes. */
function paddedBody(api: Api, size: number): string {
  const text = requestText(api);
  return text.slice(0, -1) + " ".repeat(size - utf8(text).length) + "}";
}

for (const api of APIS) {
  Deno.test(`${api}: a body over limits.max_request_bytes with content-length gets 413 in the endpoint's format`, async () => {
    await withMocks(
      api,
      [defaultReply],
      { config: { limits: { max_request_bytes: LIMIT } } },
      async (
        { router, mocks: [a] },
      ) => {
        const atLimit = await fetch(router.url + ROUTE[api], {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: paddedBody(api, LIMIT),
        });
        await atLimit.body?.cancel();
        assert.equal(atLimit.status, 200, "exactly the limit is accepted");
        const response = await fetch(router.url + ROUTE[api], {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: paddedBody(api, LIMIT + 1),
        });
        assert.equal(response.status, 413);
        assertErrorFormat(api, await response.json(), /larger than the limit of 1000 bytes/);
        const [, record] = await router.sink.waitFor(2);
        assert.equal(record.status, 413);
        assert.equal(record.error?.type, "request_too_large");
        assert.deepEqual(record.attempts, []);
        assert.equal(a.requests.length, 1, "the upstream saw only the request at the limit");
      },
    );
  });
}

Deno.test("a streamed body (no content-length) over the limit gets 413 without being read whole", async () => {
  await withMocks("anthropic", [defaultReply], {
    config: { limits: { max_request_bytes: LIMIT } },
  }, async ({ router, mocks: [a] }) => {
    let pulled = 0;
    const piece = new Uint8Array(64 * 1024).fill(0x20);
    piece.set(utf8('{"model":"x","pad":"'));
    const total = 64 * 1024 * 1024;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (pulled >= total) return controller.close();
        pulled += piece.length;
        controller.enqueue(piece);
      },
    }, { highWaterMark: 0 });
    let status: number | null = null;
    // How much the client had sent when the router answered or closed the connection.
    let sent = 0;
    try {
      const response = await fetch(router.url + ROUTE.anthropic, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      });
      sent = pulled;
      status = response.status;
      assertErrorFormat("anthropic", await response.json(), /larger than the limit/);
    } catch (error) {
      sent = pulled;
      // A client may also see the connection close while it is still sending; the record counts.
      console.log(`  client saw: ${error}`);
    }
    const record = await onlyRecord(router);
    assert.equal(record.status, 413);
    assert.equal(record.error?.type, "request_too_large");
    if (status !== null) assert.equal(status, 413);
    assert.ok(sent < 16 * 1024 * 1024, `the client sent ${sent} of ${total} bytes`);
    assert.equal(a.requests.length, 0);
  });
});

for (const api of APIS) {
  Deno.test(`${api}: content-type text/plain with a non-JSON body gets 415, with a JSON body 200`, async () => {
    await withMocks(api, [defaultReply], {}, async ({ router, mocks: [a] }) => {
      const refused = await fetch(router.url + ROUTE[api], {
        method: "POST",
        headers: { "content-type": "text/plain" },
        body: "model=gpt-4o&prompt=hi",
      });
      assert.equal(refused.status, 415);
      assertErrorFormat(api, await refused.json(), /Content-Type: application\/json/);
      const [first] = await router.sink.waitFor(1);
      assert.equal(first.status, 415);
      assert.equal(first.error?.type, "unsupported_media_type");
      assert.equal(first.request, "model=gpt-4o&prompt=hi");
      assert.equal(a.requests.length, 0);

      const accepted = await fetch(router.url + ROUTE[api], {
        method: "POST",
        headers: { "content-type": "text/plain" },
        body: requestText(api),
      });
      assert.equal(accepted.status, 200);
      assert.equal((await accepted.json()).model, MODEL[api]);
      const [, second] = await router.sink.waitFor(2);
      assert.deepEqual(attemptsOf(second), [["a", 200, null]]);

      const untyped = await fetch(router.url + ROUTE[api], {
        method: "POST",
        body: utf8(requestText(api)),
      });
      assert.equal(untyped.status, 200, "no content type, JSON body: accepted");
      await untyped.body?.cancel();
      const untypedGarbage = await fetch(router.url + ROUTE[api], {
        method: "POST",
        body: utf8("hello"),
      });
      assert.equal(untypedGarbage.status, 415, "no content type, non-JSON body: 415");
      await untypedGarbage.body?.cancel();
      assert.equal(a.requests.length, 2);
    });
  });
}

Deno.test("an accepted text/plain JSON body goes upstream as application/json", async () => {
  await withMocks("anthropic", [defaultReply], {}, async ({ router, mocks: [a] }) => {
    const response = await fetch(router.url + ROUTE.anthropic, {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: requestText("anthropic"),
    });
    assert.equal(response.status, 200);
    await response.body?.cancel();
    // The providers' APIs take JSON only: the router vouched for the body, so it says what it is.
    assert.equal(a.requests[0].headers.get("content-type"), "application/json");
  });
});

for (const api of APIS) {
  Deno.test(`${api}: bad bodies get 400 in the endpoint's format and a record`, async () => {
    const cases: [string, string, RegExp][] = [
      ["{not json", "invalid_body", /valid JSON/],
      ["[1,2]", "invalid_body", /a JSON object/],
      ['{"model":42}', "invalid_model", /string "model"/],
      ['{"model":"m","stream":"yes"}', "invalid_stream", /"stream" must be a boolean/],
    ];
    await withMocks(api, [defaultReply], {}, async ({ router, mocks: [a] }) => {
      for (const [i, [body, code, message]] of cases.entries()) {
        const response = await fetch(router.url + ROUTE[api], {
          method: "POST",
          headers: { "content-type": "application/json" },
          body,
        });
        assert.equal(response.status, 400, body);
        assertErrorFormat(api, await response.json(), message);
        const records = await router.sink.waitFor(i + 1);
        assert.equal(records[i].status, 400);
        assert.equal(records[i].error?.type, code);
        // The id each API's SDK reports with an error is the record's.
        for (const name of ["x-request-id", REQUEST_ID_HEADER[api]]) {
          assert.equal(response.headers.get(name), records[i].request_id, name);
        }
      }
      assert.equal(a.requests.length, 0);
    });
  });

  Deno.test(`${api}: "stream": null is taken as not streaming, as the API takes it`, async () => {
    await withMocks(api, [defaultReply], {}, async ({ router, mocks: [a] }) => {
      const body = JSON.parse(requestText(api));
      const response = await fetch(router.url + ROUTE[api], {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ ...body, stream: null }),
      });
      assert.equal(response.status, 200);
      assert.match(response.headers.get("content-type") ?? "", /application\/json/);
      await response.body?.cancel();
      const [record] = await router.sink.waitFor(1);
      assert.equal(record.stream, false);
      assert.equal(JSON.parse(new TextDecoder().decode(a.requests[0].body)).stream, null);
    });
  });
}

const REQUEST_ID_HEADER: Record<Api, string> = { openai: "x-request-id", anthropic: "request-id" };

for (const api of APIS) {
  Deno.test(`${api}: a wrong method gets 405 with Allow and a wrong path 404 JSON, both logged`, async () => {
    await withMocks(api, [defaultReply], {}, async ({ router, mocks: [a] }) => {
      const wrongMethod = await fetch(router.url + ROUTE[api], { method: "GET" });
      assert.equal(wrongMethod.status, 405);
      assert.equal(wrongMethod.headers.get("allow"), "POST");
      assertErrorFormat(api, await wrongMethod.json(), /Method GET is not allowed/);
      const [first] = await router.sink.waitFor(1);
      assert.equal(first.status, 405);
      assert.equal(first.error?.type, "method_not_allowed");
      assert.equal(first.endpoint, api);

      const path = api === "openai" ? "/openai/v1/no-such-endpoint" : "/anthropic/v1/complete";
      const wrongPath = await fetch(router.url + path, { method: "POST", body: "{}" });
      assert.equal(wrongPath.status, 404);
      assert.match(wrongPath.headers.get("content-type") ?? "", /application\/json/);
      assertErrorFormat(api, await wrongPath.json(), /No route for POST/);
      const [, second] = await router.sink.waitFor(2);
      assert.equal(second.status, 404);
      assert.equal(second.error?.type, "not_found");
      assert.equal(second.path, path);
      assert.equal(a.requests.length, 0);
    });
  });
}

Deno.test("an unknown path outside the API prefixes gets 404 JSON and a record", async () => {
  await withMocks("openai", [defaultReply], {}, async ({ router }) => {
    // A client configured without the /openai prefix: a common mistake worth a log line.
    const response = await fetch(`${router.url}/v1/chat/completions`, {
      method: "POST",
      body: requestText("openai"),
    });
    assert.equal(response.status, 404);
    assertErrorFormat("openai", await response.json(), /No route for POST \/v1\/chat\/completions/);
    await sleep(200);
    const records = router.sink.records;
    assert.equal(records.length, 1, "the 404 is logged");
    assert.equal(records[0].status, 404);
    assert.equal(records[0].path, "/v1/chat/completions");
  });
});

Deno.test("a wrong method on an operator page gets 405 with Allow and a record", async () => {
  await withMocks("openai", [defaultReply], {}, async ({ router }) => {
    const response = await fetch(`${router.url}/health`, { method: "POST", body: "{}" });
    assert.equal(response.status, 405);
    assert.equal(response.headers.get("allow"), "GET, HEAD");
    assertErrorFormat("openai", await response.json(), /Method POST is not allowed/);
    await sleep(200);
    const records = router.sink.records;
    assert.equal(records.length, 1, "the 405 is logged");
    assert.equal(records[0].status, 405);
  });
});
