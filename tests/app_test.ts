/**
 * The route table and request validation, end to end: health, unknown paths, wrong methods,
 * bad bodies, and the shape of the request log record.
 */
import assert from "node:assert/strict";
import type { RequestRecord } from "../src/record.ts";
import {
  anthropicMessage,
  type MockReply,
  type MockUpstream,
  openaiCompletion,
  startMockUpstream,
} from "../tools/mock_upstream.ts";
import { provider, recordAt, type RunningRouter, startRouter } from "./harness.ts";

// deno-lint-ignore no-explicit-any
type Json = any;
type Api = "openai" | "anthropic";

const APIS: readonly Api[] = ["openai", "anthropic"];
const ROUTES: Record<Api, string[]> = {
  openai: ["/openai/chat/completions", "/openai/v1/chat/completions"],
  anthropic: ["/anthropic/v1/messages"],
};

/** Every field DESIGN.md lists for the log record, in its order, and the router's additions. */
const RECORD_FIELDS = [
  "ts",
  "request_id",
  "endpoint",
  "path",
  "client",
  "model",
  "upstream_model",
  "provider",
  "stream",
  "status",
  "duration_ms",
  "ttfb_ms",
  "attempts",
  "skipped",
  "retries",
  "usage",
  "request",
  "response",
  "stream_events",
  "stream_complete",
  "bytes_forwarded",
  "error",
];

/** A mock that answers every request with the same reply. */
const always = (reply: MockReply) => startMockUpstream(() => reply);

/** A router with one provider of each type, both pointing at `mock`, for the test's duration. */
async function withRouter(
  mock: MockUpstream,
  fn: (router: RunningRouter) => Promise<void>,
): Promise<void> {
  let router: RunningRouter | undefined;
  try {
    router = startRouter({
      providers: [provider("oai", "openai", mock.url), provider("ant", "anthropic", mock.url)],
    });
    await fn(router);
  } finally {
    await mock.close();
    await router?.close();
  }
}

function post(router: RunningRouter, path: string, body: string): Promise<Response> {
  return fetch(router.url + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
}

/** Checks the error body is in `api`'s own format and returns its message. */
function errorMessage(api: Api, body: Json): string {
  if (api === "openai") {
    assert.deepEqual(Object.keys(body), ["error"], JSON.stringify(body));
    assert.equal(typeof body.error.type, "string");
    assert.ok("code" in body.error, "an OpenAI error has a code");
    assert.equal(typeof body.error.message, "string");
    return body.error.message;
  }
  assert.equal(body.type, "error", JSON.stringify(body));
  assert.equal(typeof body.error.type, "string");
  assert.equal(typeof body.error.message, "string");
  return body.error.message;
}

function assertAllFields(record: RequestRecord): void {
  assert.deepEqual(Object.keys(record).sort(), [...RECORD_FIELDS].sort());
  for (const field of RECORD_FIELDS) {
    assert.notEqual((record as unknown as Json)[field], undefined, field);
  }
}

Deno.test("GET /health answers 200 JSON", async () => {
  await withRouter(always({}), async (router) => {
    const res = await fetch(`${router.url}/health`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
    const body = await res.json();
    assert.equal(body.status, "ok");
    assert.equal(router.sink.records.length, 0);
  });
});

Deno.test("an unknown path answers 404 JSON", async () => {
  const mock = always({});
  await withRouter(mock, async (router) => {
    const cases: [string, string, Api][] = [
      ["GET", "/", "openai"],
      ["POST", "/v1/chat/completions", "openai"],
      ["POST", "/openai/completions", "openai"],
      ["POST", "/anthropic/v1/complete", "anthropic"],
      ["POST", "/anthropic/v1/message", "anthropic"],
    ];
    for (const [method, path, api] of cases) {
      const res = await fetch(router.url + path, {
        method,
        body: method === "POST" ? '{"model":"m"}' : undefined,
      });
      assert.equal(res.status, 404, path);
      assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
      const message = errorMessage(api, await res.json());
      assert.ok(message.includes(path), `${path} is not named: ${message}`);
    }
    assert.equal(mock.requests.length, 0);
  });
});

for (const api of APIS) {
  for (const path of ROUTES[api]) {
    Deno.test(`a wrong method on ${path} answers 405 with Allow: POST`, async () => {
      const mock = always({});
      await withRouter(mock, async (router) => {
        for (const method of ["GET", "PUT", "DELETE", "PATCH"]) {
          const res = await fetch(router.url + path, { method });
          assert.equal(res.status, 405, method);
          assert.equal(res.headers.get("allow"), "POST");
          assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
          const message = errorMessage(api, await res.json());
          assert.match(message, new RegExp(method));
        }
        assert.equal(mock.requests.length, 0);
      });
    });
  }
}

interface BadBody {
  name: string;
  body: string;
  message: RegExp;
  /** How the record keeps the request: parsed JSON, or the text when it was not JSON. */
  request: unknown;
}

const BAD_BODIES: BadBody[] = [
  {
    name: "a body that is not JSON",
    body: "{model: gpt-4o",
    message: /JSON/,
    request: "{model: gpt-4o",
  },
  { name: "an empty body", body: "", message: /JSON/, request: "" },
  { name: "a JSON array", body: '[{"model":"m"}]', message: /object/, request: [{ model: "m" }] },
  { name: "JSON null", body: "null", message: /object/, request: null },
  {
    name: "a body without model",
    body: '{"messages":[]}',
    message: /model/,
    request: { messages: [] },
  },
  {
    name: "a non-string model",
    body: '{"model":4,"messages":[]}',
    message: /model/,
    request: { model: 4, messages: [] },
  },
  {
    name: 'stream: "yes"',
    body: '{"model":"m","stream":"yes","messages":[]}',
    message: /stream/,
    request: { model: "m", stream: "yes", messages: [] },
  },
];

for (const api of APIS) {
  for (const bad of BAD_BODIES) {
    Deno.test(`${api} endpoint answers 400 in its format for ${bad.name}`, async () => {
      const mock = always({});
      await withRouter(mock, async (router) => {
        const path = ROUTES[api][0];
        const res = await post(router, path, bad.body);
        assert.equal(res.status, 400);
        const message = errorMessage(api, await res.json());
        assert.match(message, bad.message);
        assert.equal(mock.requests.length, 0);
        const record = await recordAt(router);
        assertAllFields(record);
        assert.equal(record.status, 400);
        assert.equal(record.endpoint, api);
        assert.equal(record.path, path);
        assert.equal(typeof record.error?.type, "string");
        assert.equal(record.error?.message, message);
        assert.deepEqual(record.request, bad.request);
        assert.deepEqual(record.attempts, []);
        assert.equal(record.provider, null);
        assert.equal(res.headers.get("x-request-id"), record.request_id);
      });
    });
  }
}

const COMPLETION: Record<Api, (model: string) => Json> = {
  openai: (model) => openaiCompletion(model),
  anthropic: (model) => anthropicMessage(model),
};

const REQUEST: Record<Api, Json> = {
  openai: { model: "m-record", messages: [{ role: "user", content: "Hi" }] },
  anthropic: { model: "m-record", max_tokens: 16, messages: [{ role: "user", content: "Hi" }] },
};

for (const api of APIS) {
  Deno.test(`${api} request record has every DESIGN.md field with its value`, async () => {
    const answer = COMPLETION[api]("m-record");
    const mock = always({ body: answer });
    await withRouter(mock, async (router) => {
      const path = ROUTES[api][0];
      const started = Date.now();
      const res = await post(router, path, JSON.stringify(REQUEST[api]));
      assert.deepEqual(await res.json(), answer);
      const record = await recordAt(router);
      assertAllFields(record);
      const ts = Date.parse(record.ts);
      assert.ok(ts >= started - 1000 && ts <= Date.now() + 1000, record.ts);
      assert.equal(record.request_id, res.headers.get("x-request-id"));
      assert.equal(record.endpoint, api);
      assert.equal(record.path, path);
      assert.equal(record.client, null);
      assert.equal(record.model, "m-record");
      assert.equal(record.upstream_model, "m-record");
      assert.equal(record.provider, api === "openai" ? "oai" : "ant");
      assert.equal(record.stream, false);
      assert.equal(record.status, 200);
      assert.equal(typeof record.duration_ms, "number");
      assert.equal(typeof record.ttfb_ms, "number");
      assert.ok(record.ttfb_ms! <= record.duration_ms!);
      assert.equal(record.attempts.length, 1);
      assert.deepEqual(Object.keys(record.attempts[0]).sort(), [
        "duration_ms",
        "error",
        "model",
        "provider",
        "status",
      ]);
      assert.deepEqual(record.skipped, []);
      assert.equal(record.retries, 0);
      assert.deepEqual(record.usage, answer.usage);
      assert.deepEqual(record.request, REQUEST[api]);
      assert.deepEqual(record.response, answer);
      assert.equal(record.stream_events, null);
      assert.equal(record.stream_complete, null);
      assert.equal(record.error, null);
    });
  });

  for (const usage of ["absent", "null"] as const) {
    Deno.test(`${api} record usage is null when the response's usage is ${usage}`, async () => {
      const answer = COMPLETION[api]("m-record");
      if (usage === "absent") delete answer.usage;
      else answer.usage = null;
      const mock = always({ body: answer });
      await withRouter(mock, async (router) => {
        const res = await post(router, ROUTES[api][0], JSON.stringify(REQUEST[api]));
        assert.deepEqual(await res.json(), answer);
        const record = await recordAt(router);
        assert.equal(record.status, 200);
        assert.strictEqual(record.usage, null);
        assert.deepEqual(record.response, answer);
      });
    });
  }
}

Deno.test("a non-JSON upstream answer is logged as text with null usage", async () => {
  const mock = always({ status: 200, body: "plain text, not JSON" });
  await withRouter(mock, async (router) => {
    const res = await post(router, "/openai/chat/completions", JSON.stringify(REQUEST.openai));
    assert.equal(await res.text(), "plain text, not JSON");
    const record = await recordAt(router);
    assert.equal(record.response, "plain text, not JSON");
    assert.strictEqual(record.usage, null);
  });
});
