/**
 * Non-streaming fallback, candidate planning and header handling, end to end: a real router on
 * port 0 in front of scripted mock upstreams, driven by plain fetch and by the official SDKs.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import type { RequestRecord } from "../src/record.ts";
import {
  anthropicMessage,
  closedPort,
  failureReply,
  type MockReply,
  type MockScript,
  type MockUpstream,
  openaiCompletion,
  startMockUpstream,
} from "../tools/mock_upstream.ts";
import { provider, recordAt, type RunningRouter, startRouter } from "./harness.ts";

// deno-lint-ignore no-explicit-any
type Json = any;
type Api = "openai" | "anthropic";

const APIS: readonly Api[] = ["openai", "anthropic"];
const ROUTE: Record<Api, string> = {
  openai: "/openai/chat/completions",
  anthropic: "/anthropic/v1/messages",
};
const UPSTREAM_PATH: Record<Api, string> = {
  openai: "/v1/chat/completions",
  anthropic: "/v1/messages",
};
const CLIENT_KEY = "sk-client-key-must-not-leak";

const ERRORS: Json = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/errors.json", import.meta.url)),
);

/** A request body as a client would send it, with the model first. */
function requestText(api: Api, model: string): string {
  const rest = api === "openai"
    ? { messages: [{ role: "user", content: "Hello" }] }
    : { max_tokens: 32, messages: [{ role: "user", content: "Hello" }] };
  return JSON.stringify({ model, ...rest });
}

/** A successful answer in the API's format, fixed so the client's bytes can be compared. */
function successText(api: Api, model: string, text = "answer from the second provider"): string {
  return JSON.stringify(
    api === "openai" ? openaiCompletion(model, text) : anthropicMessage(model, text),
  );
}

const jsonReply = (
  body: string,
  status = 200,
  headers: Record<string, string> = {},
): MockReply => ({
  status,
  body,
  headers: { "content-type": "application/json", ...headers },
});

/** The API's real error body for `status` when the fixtures have one, else the mock's. */
function errorReply(api: Api, status: number): MockReply {
  const fixture = ERRORS[api][String(status)];
  if (fixture === undefined) return failureReply(UPSTREAM_PATH[api], status);
  return jsonReply(JSON.stringify(fixture), status);
}

function post(
  router: RunningRouter,
  api: Api,
  body: string,
  headers: Record<string, string> = {},
  search = "",
): Promise<Response> {
  const auth: Record<string, string> = api === "openai"
    ? { authorization: `Bearer ${CLIENT_KEY}` }
    : { "x-api-key": CLIENT_KEY };
  return fetch(router.url + ROUTE[api] + search, {
    method: "POST",
    headers: { "content-type": "application/json", ...auth, ...headers },
    body,
  });
}

/** Starts the router, runs `fn`, and closes the mocks (ending their hangs) and the router. */
async function withRouter(
  config: object,
  mocks: MockUpstream[],
  fn: (router: RunningRouter) => Promise<void>,
): Promise<void> {
  let router: RunningRouter | undefined;
  try {
    router = startRouter(config);
    await fn(router);
  } finally {
    for (const mock of mocks) await mock.close();
    await router?.close();
  }
}

/** The attempts without their timings, which are checked to be numbers. */
function attemptsOf(record: RequestRecord): object[] {
  return record.attempts.map(({ duration_ms, ...rest }) => {
    assert.equal(typeof duration_ms, "number");
    assert.ok(duration_ms >= 0);
    return rest;
  });
}

const decoder = new TextDecoder();
const upstreamText = (mock: MockUpstream, i = 0) => decoder.decode(mock.requests[i].body);
const upstreamModels = (mock: MockUpstream) =>
  mock.requests.map((r) => (r.json as Json)?.model as unknown);

/** A mock that answers every request with the same reply. */
const always = (reply: MockReply) => startMockUpstream(() => reply);

// ---------------------------------------------------------------------------------------------
// Every fallback trigger, for both APIs

interface Trigger {
  name: string;
  /** The first provider's config extras and mock; null mock means nothing listens. */
  first(api: Api): { extra: object; mock: MockUpstream | null };
  status: number | null;
  error: string;
}

const TRIGGERS: Trigger[] = [
  {
    name: "connection refused",
    first: () => ({ extra: {}, mock: null }),
    status: null,
    error: "connect_error",
  },
  {
    name: "timeout",
    first: () => ({ extra: { timeout_ms: 200 }, mock: always({ hang: "headers" }) }),
    status: null,
    error: "timeout",
  },
  ...[401, 403, 404, 408, 409, 429, 500, 502, 503, 504, 529].map((status): Trigger => ({
    name: `HTTP ${status}`,
    first: (api) => ({ extra: {}, mock: always(errorReply(api, status)) }),
    status,
    error: "http_status",
  })),
];

for (const api of APIS) {
  for (const trigger of TRIGGERS) {
    Deno.test(`${api} endpoint falls back on ${trigger.name}`, async () => {
      const model = "model-fallback";
      const answer = successText(api, model);
      const { extra, mock: firstMock } = trigger.first(api);
      const second = always(jsonReply(answer));
      const mocks = firstMock === null ? [second] : [firstMock, second];
      const firstUrl = firstMock?.url ?? `http://127.0.0.1:${closedPort()}`;
      const config = {
        providers: [
          provider("first", api, firstUrl, extra),
          provider("second", api, second.url),
        ],
      };
      await withRouter(config, mocks, async (router) => {
        const res = await post(router, api, requestText(api, model));
        assert.equal(await res.text(), answer);
        assert.equal(res.status, 200);
        assert.equal(res.headers.get("x-llm-router-provider"), "second");
        assert.equal(res.headers.get("x-llm-router-attempts"), "2");
        const record = await recordAt(router);
        assert.deepEqual(attemptsOf(record), [
          { provider: "first", model, status: trigger.status, error: trigger.error },
          { provider: "second", model, status: 200, error: null },
        ]);
        assert.equal(record.provider, "second");
        assert.equal(record.upstream_model, model);
        assert.equal(record.retries, 1);
        assert.equal(record.status, 200);
        assert.equal(record.error, null);
        if (firstMock !== null) assert.equal(firstMock.requests.length, 1);
        assert.equal(second.requests.length, 1);
      });
    });
  }
}

for (const api of APIS) {
  Deno.test(`${api} SDK gets the second provider's answer after a 529`, async () => {
    const model = "model-sdk";
    const answer = successText(api, model);
    const first = always(errorReply(api, 529));
    const second = always(jsonReply(answer));
    const config = {
      providers: [provider("first", api, first.url), provider("second", api, second.url)],
    };
    await withRouter(config, [first, second], async (router) => {
      const result = await sdkCall(router, api, model);
      assert.deepEqual(result, JSON.parse(answer));
      const record = await recordAt(router);
      assert.equal(record.provider, "second");
      assert.equal(record.retries, 1);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Client errors are returned at once

const NO_FALLBACK: Record<Api, Record<number, string>> = {
  openai: {
    400: JSON.stringify(ERRORS.openai["400"], null, 2),
    413: '{"error":{"message":"Request too large","type":"invalid_request_error","param":null,' +
      '"code":"request_too_large"}}',
    422: '{ "error": { "message": "Unprocessable: 1.50e+01", "type": "invalid_request_error" } }',
  },
  anthropic: {
    400: JSON.stringify(ERRORS.anthropic["400"], null, 2),
    413: JSON.stringify(ERRORS.anthropic["413"]),
    422:
      '{"type":"error","error":{"type":"invalid_request_error","message":"Unprocessable \\u00e9"}}',
  },
};

for (const api of APIS) {
  for (const status of [400, 413, 422]) {
    Deno.test(`${api} endpoint returns ${status} unchanged without fallback`, async () => {
      const body = NO_FALLBACK[api][status];
      const first = always(jsonReply(body, status, { "x-upstream-note": "kept" }));
      const second = always(jsonReply(successText(api, "m")));
      const config = {
        providers: [provider("first", api, first.url), provider("second", api, second.url)],
      };
      await withRouter(config, [first, second], async (router) => {
        const res = await post(router, api, requestText(api, "model-bad"));
        const bytes = new Uint8Array(await res.arrayBuffer());
        assert.equal(res.status, status);
        assert.deepEqual(bytes, new TextEncoder().encode(body));
        assert.equal(res.headers.get("content-type"), "application/json");
        assert.equal(res.headers.get("x-upstream-note"), "kept");
        assert.equal(res.headers.get("x-llm-router-provider"), "first");
        assert.equal(res.headers.get("x-llm-router-attempts"), "1");
        assert.equal(second.requests.length, 0);
        const record = await recordAt(router);
        assert.equal(record.status, status);
        assert.equal(record.provider, "first");
        assert.equal(record.retries, 0);
        assert.deepEqual(
          record.attempts.map(({ provider, model, status }) => ({ provider, model, status })),
          [{ provider: "first", model: "model-bad", status }],
        );
      });
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Every attempt fails

for (const api of APIS) {
  Deno.test(`${api} endpoint returns the last HTTP failure unchanged when all fail`, async () => {
    const body = JSON.stringify(ERRORS[api]["429"], null, 1);
    const headers = ERRORS.headers[`${api}_429`];
    const first = always(errorReply(api, 503));
    const second = always(jsonReply(body, 429, headers));
    const config = {
      providers: [provider("first", api, first.url), provider("second", api, second.url)],
      // Shorter than the Retry-After, so the router does not wait for the second to recover.
      timeouts: { total_ms: 1500 },
    };
    await withRouter(config, [first, second], async (router) => {
      const res = await post(router, api, requestText(api, "model-x"));
      assert.equal(await res.text(), body);
      assert.equal(res.status, 429);
      for (const [name, value] of Object.entries(headers)) {
        assert.equal(res.headers.get(name), value, name);
      }
      assert.equal(res.headers.get("x-llm-router-provider"), "second");
      assert.equal(res.headers.get("x-llm-router-attempts"), "2");
      const record = await recordAt(router);
      assert.equal(record.status, 429);
      assert.equal(record.provider, "second");
      assert.equal(record.retries, 1);
      assert.deepEqual(attemptsOf(record), [
        { provider: "first", model: "model-x", status: 503, error: "http_status" },
        { provider: "second", model: "model-x", status: 429, error: "http_status" },
      ]);
    });
  });
}

/** Checks the router's own error body shape for `api` and returns its message. */
function routerErrorMessage(api: Api, body: Json): string {
  if (api === "openai") {
    assert.deepEqual(Object.keys(body), ["error"]);
    assert.equal(typeof body.error.type, "string");
    assert.equal(typeof body.error.code, "string");
    assert.equal(typeof body.error.message, "string");
    return body.error.message;
  }
  assert.equal(body.type, "error");
  assert.equal(typeof body.error.type, "string");
  assert.equal(typeof body.error.message, "string");
  return body.error.message;
}

interface AllFailCase {
  name: string;
  status: number;
  /** The second (last) provider's extras and mock; null mock means nothing listens. */
  last(): { extra: object; mock: MockUpstream | null };
  firstReason: RegExp;
  lastReason: RegExp;
  lastError: string;
}

const ALL_FAIL: AllFailCase[] = [
  {
    name: "502 when the last attempt could not connect",
    status: 502,
    last: () => ({ extra: {}, mock: null }),
    firstReason: /503/,
    lastReason: /connect/i,
    lastError: "connect_error",
  },
  {
    name: "504 when the last attempt timed out",
    status: 504,
    last: () => ({ extra: { timeout_ms: 200 }, mock: always({ hang: "headers" }) }),
    firstReason: /503/,
    lastReason: /time/i,
    lastError: "timeout",
  },
];

for (const api of APIS) {
  for (const c of ALL_FAIL) {
    const setup = () => {
      const first = always(errorReply(api, 503));
      const { extra, mock } = c.last();
      const lastUrl = mock?.url ?? `http://127.0.0.1:${closedPort()}`;
      const config = {
        providers: [provider("first", api, first.url), provider("second", api, lastUrl, extra)],
      };
      return { config, mocks: mock === null ? [first] : [first, mock] };
    };

    Deno.test(`${api} endpoint answers ${c.name}`, async () => {
      const { config, mocks } = setup();
      await withRouter(config, mocks, async (router) => {
        const res = await post(router, api, requestText(api, "model-y"));
        const text = await res.text();
        assert.equal(res.status, c.status);
        assert.match(res.headers.get("content-type") ?? "", /application\/json/);
        for (const key of ["sk-first-secret", "sk-second-secret", CLIENT_KEY]) {
          assert.ok(!text.includes(key), `the body leaks ${key}: ${text}`);
        }
        const message = routerErrorMessage(api, JSON.parse(text));
        const [firstPart, lastPart] = message.split("second");
        assert.ok(lastPart !== undefined, `"second" is not named: ${message}`);
        assert.match(firstPart, /first/);
        assert.match(firstPart, c.firstReason);
        assert.match(lastPart, c.lastReason);
        const record = await recordAt(router);
        assert.equal(res.headers.get("x-request-id"), record.request_id);
        assert.equal(record.status, c.status);
        assert.equal(record.retries, 1);
        assert.notEqual(record.error, null);
        assert.deepEqual(attemptsOf(record), [
          { provider: "first", model: "model-y", status: 503, error: "http_status" },
          { provider: "second", model: "model-y", status: null, error: c.lastError },
        ]);
      });
    });

    Deno.test(`${api} SDK raises APIError ${c.status} when all attempts fail`, async () => {
      const { config, mocks } = setup();
      await withRouter(config, mocks, async (router) => {
        const error = await sdkCall(router, api, "model-y").then(
          () => assert.fail("the SDK call succeeded"),
          (err: unknown) => err,
        );
        const ApiError = api === "openai" ? OpenAI.APIError : Anthropic.APIError;
        assert.ok(error instanceof ApiError, `not an APIError: ${error}`);
        assert.equal(error.status, c.status);
        assert.match(error.message, /first/);
        await recordAt(router);
      });
    });
  }
}

async function sdkCall(router: RunningRouter, api: Api, model: string): Promise<unknown> {
  const messages = [{ role: "user" as const, content: "Hello" }];
  if (api === "openai") {
    const client = new OpenAI({
      apiKey: CLIENT_KEY,
      baseURL: `${router.url}/openai`,
      maxRetries: 0,
    });
    return await client.chat.completions.create({ model, messages });
  }
  const client = new Anthropic({
    apiKey: CLIENT_KEY,
    baseURL: `${router.url}/anthropic`,
    maxRetries: 0,
  });
  return await client.messages.create({ model, max_tokens: 32, messages });
}

// ---------------------------------------------------------------------------------------------
// Candidate order and model mapping

/** One mock per provider name; `script` decides per provider and request. */
function mocksFor(
  names: string[],
  script: (name: string, model: string, api: Api) => MockReply,
  api: Api = "openai",
): Record<string, MockUpstream> {
  return Object.fromEntries(names.map((name) => {
    const fn: MockScript = (req) => script(name, String((req.json as Json)?.model), api);
    return [name, startMockUpstream(fn)];
  }));
}

Deno.test("providers are tried by ascending priority, ties in config order", async () => {
  const names = ["p3", "p2a", "pdefault", "p2b", "p1", "p0"];
  const answer = successText("openai", "m");
  const mocks = mocksFor(
    names,
    (name) => name === "p3" ? jsonReply(answer) : errorReply("openai", 503),
  );
  const priorities: Record<string, number | undefined> = {
    p3: 3,
    p2a: 2,
    pdefault: undefined,
    p2b: 2,
    p1: 1,
    p0: 0,
  };
  const config = {
    providers: names.map((name) =>
      provider(
        name,
        "openai",
        mocks[name].url,
        priorities[name] === undefined ? {} : { priority: priorities[name] },
      )
    ),
  };
  await withRouter(config, Object.values(mocks), async (router) => {
    const res = await post(router, "openai", requestText("openai", "m"));
    assert.equal(await res.text(), answer);
    assert.equal(res.headers.get("x-llm-router-attempts"), "6");
    const record = await recordAt(router);
    assert.deepEqual(record.attempts.map((a) => a.provider), [
      "p0",
      "pdefault",
      "p1",
      "p2a",
      "p2b",
      "p3",
    ]);
    assert.equal(record.retries, 5);
    for (const name of names) assert.equal(mocks[name].requests.length, 1, name);
  });
});

Deno.test("model_mapping tries string targets per provider and object targets on their provider", async () => {
  const answer = successText("openai", "gpt-4o-mini");
  const mocks = mocksFor(
    ["primary", "azure-east"],
    (name, model) =>
      name === "azure-east" && model === "gpt-4o-mini"
        ? jsonReply(answer)
        : errorReply("openai", 503),
  );
  const anthropicMock = always(jsonReply(successText("anthropic", "x")));
  const config = {
    model_mapping: {
      "gpt-4": ["gpt-4o", { provider: "azure-east", model: "gpt-4-prod" }, "gpt-4o-mini"],
    },
    providers: [
      provider("azure-east", "openai", mocks["azure-east"].url, { priority: 2 }),
      provider("claude", "anthropic", anthropicMock.url, { priority: 0 }),
      provider("primary", "openai", mocks.primary.url),
    ],
  };
  const sent = '{ "model" : "gpt-4", "messages": [{"role": "user", "content": "Hi"}], "n": 1.0 }';
  await withRouter(config, [...Object.values(mocks), anthropicMock], async (router) => {
    const res = await post(router, "openai", sent);
    assert.equal(await res.text(), answer);
    assert.equal(res.status, 200);
    const record = await recordAt(router);
    assert.deepEqual(
      record.attempts.map(({ provider, model, status }) => [provider, model, status]),
      [
        ["primary", "gpt-4o", 503],
        ["primary", "gpt-4o-mini", 503],
        ["azure-east", "gpt-4o", 503],
        ["azure-east", "gpt-4-prod", 503],
        ["azure-east", "gpt-4o-mini", 200],
      ],
    );
    assert.deepEqual(upstreamModels(mocks.primary), ["gpt-4o", "gpt-4o-mini"]);
    assert.deepEqual(upstreamModels(mocks["azure-east"]), ["gpt-4o", "gpt-4-prod", "gpt-4o-mini"]);
    assert.equal(
      upstreamText(mocks["azure-east"], 1),
      sent.replace('"gpt-4"', '"gpt-4-prod"'),
      "only the model value changes in the forwarded bytes",
    );
    assert.equal(anthropicMock.requests.length, 0);
    assert.equal(record.model, "gpt-4");
    assert.equal(record.upstream_model, "gpt-4o-mini");
    assert.equal(record.provider, "azure-east");
  });
});

Deno.test("an object target without a model pins its provider under the client's model name", async () => {
  const answer = successText("anthropic", "claude-x");
  const mocks = mocksFor(["anth-a", "anth-b"], () => jsonReply(answer), "anthropic");
  const config = {
    model_mapping: { "claude-x": [{ provider: "anth-b" }] },
    providers: [
      provider("anth-a", "anthropic", mocks["anth-a"].url),
      provider("anth-b", "anthropic", mocks["anth-b"].url),
    ],
  };
  await withRouter(config, Object.values(mocks), async (router) => {
    const res = await post(router, "anthropic", requestText("anthropic", "claude-x"));
    assert.equal(await res.text(), answer);
    assert.equal(res.headers.get("x-llm-router-provider"), "anth-b");
    assert.equal(mocks["anth-a"].requests.length, 0);
    assert.deepEqual(upstreamModels(mocks["anth-b"]), ["claude-x"]);
    const record = await recordAt(router);
    assert.deepEqual(attemptsOf(record), [
      { provider: "anth-b", model: "claude-x", status: 200, error: null },
    ]);
  });
});

Deno.test("a provider's models list filters string targets but not a pinned target", async () => {
  const answer = successText("openai", "gpt-4o-mini");
  const mocks = mocksFor(
    ["limited", "open"],
    (name, model) =>
      name === "open" && model === "gpt-4o-mini" ? jsonReply(answer) : errorReply("openai", 503),
  );
  const config = {
    model_mapping: {
      "gpt-4": ["gpt-4o", "gpt-4o-mini", { provider: "limited", model: "pinned-model" }],
    },
    providers: [
      provider("limited", "openai", mocks.limited.url, { models: ["gpt-4o-mini"] }),
      provider("open", "openai", mocks.open.url, { priority: 2 }),
    ],
  };
  await withRouter(config, Object.values(mocks), async (router) => {
    const res = await post(router, "openai", requestText("openai", "gpt-4"));
    assert.equal(await res.text(), answer);
    const record = await recordAt(router);
    assert.deepEqual(
      record.attempts.map(({ provider, model }) => [provider, model]),
      [
        ["limited", "gpt-4o-mini"],
        ["limited", "pinned-model"],
        ["open", "gpt-4o"],
        ["open", "gpt-4o-mini"],
      ],
    );
    assert.deepEqual(upstreamModels(mocks.limited), ["gpt-4o-mini", "pinned-model"]);
  });
});

Deno.test("a provider's models list also filters an unmapped model", async () => {
  const answer = successText("openai", "other-model");
  const mocks = mocksFor(["limited", "open"], () => jsonReply(answer));
  const config = {
    providers: [
      provider("limited", "openai", mocks.limited.url, { models: ["gpt-4o"] }),
      provider("open", "openai", mocks.open.url, { priority: 2 }),
    ],
  };
  await withRouter(config, Object.values(mocks), async (router) => {
    const res = await post(router, "openai", requestText("openai", "other-model"));
    assert.equal(await res.text(), answer);
    assert.equal(res.headers.get("x-llm-router-provider"), "open");
    assert.equal(mocks.limited.requests.length, 0);
  });
});

Deno.test("each (provider, model) pair is tried at most once", async () => {
  const last = JSON.stringify(ERRORS.openai["500"]);
  const mocks = mocksFor(
    ["p1", "p2"],
    (name) => name === "p2" ? jsonReply(last, 500) : errorReply("openai", 503),
  );
  const config = {
    model_mapping: { dup: ["same", { provider: "p1", model: "same" }, "same", "same"] },
    providers: [
      provider("p1", "openai", mocks.p1.url),
      provider("p2", "openai", mocks.p2.url),
    ],
  };
  await withRouter(config, Object.values(mocks), async (router) => {
    const res = await post(router, "openai", requestText("openai", "dup"));
    assert.equal(await res.text(), last);
    assert.equal(res.status, 500);
    const record = await recordAt(router);
    assert.deepEqual(attemptsOf(record), [
      { provider: "p1", model: "same", status: 503, error: "http_status" },
      { provider: "p2", model: "same", status: 500, error: "http_status" },
    ]);
    assert.equal(mocks.p1.requests.length, 1);
    assert.equal(mocks.p2.requests.length, 1);
  });
});

for (const api of APIS) {
  Deno.test(`${api} endpoint forwards an unmapped model and the body byte for byte`, async () => {
    const answer = successText(api, "plain-model");
    const mock = always(jsonReply(answer));
    const config = {
      model_mapping: { "other": ["elsewhere"] },
      providers: [provider("only", api, mock.url)],
    };
    const sent = `{"model":"plain-model",  "max_tokens":32,"big":12345678901234567890,` +
      `"x":1.10,"s":"\\u00e9\\n","messages":[{"role":"user","content":"Hi"}]}\n`;
    await withRouter(config, [mock], async (router) => {
      const res = await post(router, api, sent);
      assert.equal(await res.text(), answer);
      assert.equal(mock.requests.length, 1);
      assert.equal(mock.requests[0].path, UPSTREAM_PATH[api]);
      assert.equal(upstreamText(mock), sent);
      const record = await recordAt(router);
      assert.equal(record.model, "plain-model");
      assert.equal(record.upstream_model, "plain-model");
    });
  });
}

for (const api of APIS) {
  const other: Api = api === "openai" ? "anthropic" : "openai";

  Deno.test(`${api} endpoint answers 404 naming the model when no provider has its type`, async () => {
    const mock = always(jsonReply(successText(other, "m")));
    const config = { providers: [provider("wrong-type", other, mock.url)] };
    await withRouter(config, [mock], async (router) => {
      const res = await post(router, api, requestText(api, "lonely-model"));
      assert.equal(res.status, 404);
      const message = routerErrorMessage(api, await res.json());
      assert.match(message, /lonely-model/);
      assert.equal(mock.requests.length, 0);
      const record = await recordAt(router);
      assert.equal(record.status, 404);
      assert.deepEqual(record.attempts, []);
    });
  });

  Deno.test(`${api} endpoint answers 404 naming the model when no provider serves it`, async () => {
    const mock = always(jsonReply(successText(api, "m")));
    const config = {
      model_mapping: { "mapped": ["served-elsewhere"] },
      providers: [provider("picky", api, mock.url, { models: ["only-this-one"] })],
    };
    await withRouter(config, [mock], async (router) => {
      for (const model of ["unserved-model", "mapped"]) {
        const res = await post(router, api, requestText(api, model));
        assert.equal(res.status, 404);
        const message = routerErrorMessage(api, await res.json());
        assert.ok(message.includes(model), `${model} is not named: ${message}`);
      }
      assert.equal(mock.requests.length, 0);
    });
  });
}

Deno.test("timeout fallback finishes quickly when the first provider hangs", async () => {
  const answer = successText("openai", "m");
  const first = always({ hang: "headers" });
  const second = always(jsonReply(answer));
  const config = {
    providers: [
      provider("first", "openai", first.url, { timeout_ms: 200 }),
      provider("second", "openai", second.url),
    ],
  };
  await withRouter(config, [first, second], async (router) => {
    const started = performance.now();
    const res = await post(router, "openai", requestText("openai", "m"));
    assert.equal(await res.text(), answer);
    const elapsed = performance.now() - started;
    assert.ok(elapsed < 2000, `took ${elapsed} ms`);
    const record = await recordAt(router);
    assert.equal(record.attempts[0].error, "timeout");
    assert.ok(record.attempts[0].duration_ms >= 150, "the timeout fired early");
  });
});

Deno.test("a slow first provider (delayMs past timeout_ms) falls back as a timeout", async () => {
  const answer = successText("anthropic", "m");
  const first = always({ ...jsonReply(successText("anthropic", "late")), delayMs: 3000 });
  const second = always(jsonReply(answer));
  const config = {
    providers: [
      provider("first", "anthropic", first.url, { timeout_ms: 200 }),
      provider("second", "anthropic", second.url),
    ],
  };
  await withRouter(config, [first, second], async (router) => {
    const started = performance.now();
    const res = await post(router, "anthropic", requestText("anthropic", "m"));
    assert.equal(await res.text(), answer);
    assert.ok(performance.now() - started < 2000);
    const record = await recordAt(router);
    assert.deepEqual(attemptsOf(record), [
      { provider: "first", model: "m", status: null, error: "timeout" },
      { provider: "second", model: "m", status: 200, error: null },
    ]);
  });
});

// ---------------------------------------------------------------------------------------------
// Request headers

/** Headers a client may send that describe its connection, not the message. */
const HOP_HEADERS: Record<string, string> = {
  connection: "keep-alive, x-connection-scoped",
  "x-connection-scoped": "1",
  "keep-alive": "timeout=5",
  "proxy-authorization": "Basic cHJveHk6c2VjcmV0",
  te: "trailers",
  "accept-encoding": "identity;q=1, x-client-encoding",
};

function assertNoClientCredentials(headers: Headers): void {
  for (const [name, value] of headers) {
    assert.ok(!value.includes(CLIENT_KEY), `${name} carries the client's key`);
  }
}

function assertHopHeadersDropped(headers: Headers): void {
  for (const name of ["x-connection-scoped", "keep-alive", "proxy-authorization"]) {
    assert.equal(headers.get(name), null, name);
  }
  // The router's own connection to the provider may say keep-alive; the client's tokens stay out.
  assert.ok(!(headers.get("connection") ?? "").includes("x-connection-scoped"));
  assert.notEqual(headers.get("te"), "trailers");
  assert.ok(!(headers.get("accept-encoding") ?? "").includes("x-client-encoding"));
}

Deno.test("openai upstream gets the provider's bearer key and end-to-end headers only", async () => {
  const mock = always(jsonReply(successText("openai", "m")));
  const config = { providers: [provider("prov", "openai", mock.url)] };
  await withRouter(config, [mock], async (router) => {
    const res = await post(router, "openai", requestText("openai", "m"), {
      ...HOP_HEADERS,
      "x-api-key": CLIENT_KEY,
      "x-custom": "1",
      "openai-organization": "org-123",
    }, "?api-version=2024-10-21");
    await res.body?.cancel();
    const [req] = mock.requests;
    assert.equal(req.path, "/v1/chat/completions");
    assert.equal(req.search, "?api-version=2024-10-21");
    assert.equal(req.headers.get("authorization"), "Bearer sk-prov-secret");
    assert.equal(req.headers.get("x-api-key"), null);
    assert.equal(req.headers.get("x-custom"), "1");
    assert.equal(req.headers.get("openai-organization"), "org-123");
    assert.equal(req.headers.get("content-type"), "application/json");
    assert.equal(req.headers.get("host"), new URL(mock.url).host);
    assertHopHeadersDropped(req.headers);
    assertNoClientCredentials(req.headers);
    await recordAt(router);
  });
});

Deno.test("anthropic upstream gets the provider's x-api-key, version, betas and query", async () => {
  const mock = always(jsonReply(successText("anthropic", "m")));
  const config = { providers: [provider("prov", "anthropic", mock.url)] };
  await withRouter(config, [mock], async (router) => {
    const beta = "prompt-caching-2024-07-31,output-128k-2025-02-19";
    const first = await post(router, "anthropic", requestText("anthropic", "m"), {
      ...HOP_HEADERS,
      authorization: `Bearer ${CLIENT_KEY}`,
      "anthropic-beta": beta,
      "x-custom": "1",
    }, "?beta=true");
    await first.body?.cancel();
    const second = await post(router, "anthropic", requestText("anthropic", "m"), {
      "anthropic-version": "2023-01-01",
    });
    await second.body?.cancel();
    const [withBeta, withVersion] = mock.requests;
    assert.equal(withBeta.path, "/v1/messages");
    assert.equal(withBeta.search, "?beta=true");
    assert.equal(withBeta.headers.get("x-api-key"), "sk-prov-secret");
    assert.equal(withBeta.headers.get("authorization"), null);
    assert.equal(withBeta.headers.get("anthropic-version"), "2023-06-01");
    assert.equal(withBeta.headers.get("anthropic-beta"), beta);
    assert.equal(withBeta.headers.get("x-custom"), "1");
    assertHopHeadersDropped(withBeta.headers);
    assertNoClientCredentials(withBeta.headers);
    assert.equal(withVersion.search, "");
    assert.equal(withVersion.headers.get("anthropic-version"), "2023-01-01");
    assert.equal(withVersion.headers.get("x-api-key"), "sk-prov-secret");
    assertNoClientCredentials(withVersion.headers);
    await recordAt(router, 1);
  });
});

Deno.test("anthropic SDK beta call reaches the upstream with its betas and the provider key", async () => {
  const answer = successText("anthropic", "claude-x");
  const mock = always(jsonReply(answer));
  const config = { providers: [provider("prov", "anthropic", mock.url)] };
  await withRouter(config, [mock], async (router) => {
    const client = new Anthropic({
      apiKey: CLIENT_KEY,
      baseURL: `${router.url}/anthropic`,
      maxRetries: 0,
    });
    const message = await client.beta.messages.create({
      model: "claude-x",
      max_tokens: 32,
      messages: [{ role: "user", content: "Hello" }],
      betas: ["token-efficient-tools-2025-02-19"],
    });
    assert.deepEqual(message, JSON.parse(answer));
    const [req] = mock.requests;
    assert.equal(req.path, "/v1/messages");
    assert.match(req.headers.get("anthropic-beta") ?? "", /token-efficient-tools-2025-02-19/);
    assert.equal(req.headers.get("x-api-key"), "sk-prov-secret");
    assert.notEqual(req.headers.get("anthropic-version"), null, "the SDK's version is kept");
    assertNoClientCredentials(req.headers);
    await recordAt(router);
  });
});

// ---------------------------------------------------------------------------------------------
// Response headers

async function gzip(text: string): Promise<Uint8Array> {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

for (const api of APIS) {
  Deno.test(`${api} endpoint drops hop-by-hop, encoding and cookie response headers`, async () => {
    const answer = successText(api, "m");
    const mock = always({
      body: await gzip(answer),
      headers: {
        "content-type": "application/json",
        "content-encoding": "gzip",
        "set-cookie": "__cf_bm=abc; path=/; HttpOnly",
        connection: "close",
        "keep-alive": "timeout=5",
        "x-ratelimit-remaining-tokens": "29100",
        "openai-processing-ms": "412",
        "request-id": "req_upstream_anthropic",
        "x-request-id": "req_upstream_123",
        // The router's own headers take the place of a provider's.
        "x-llm-router-provider": "spoofed",
      },
    });
    const config = { providers: [provider("prov", api, mock.url)] };
    await withRouter(config, [mock], async (router) => {
      const res = await post(router, api, requestText(api, "m"));
      assert.equal(await res.text(), answer);
      assert.equal(res.status, 200);
      for (const name of ["content-encoding", "set-cookie", "connection", "keep-alive"]) {
        assert.equal(res.headers.get(name), null, name);
      }
      assert.equal(res.headers.get("content-type"), "application/json");
      assert.equal(res.headers.get("x-ratelimit-remaining-tokens"), "29100");
      assert.equal(res.headers.get("openai-processing-ms"), "412");
      assert.equal(res.headers.get("request-id"), "req_upstream_anthropic");
      assert.equal(res.headers.get("x-llm-router-upstream-request-id"), "req_upstream_123");
      assert.equal(res.headers.get("x-llm-router-provider"), "prov");
      assert.equal(res.headers.get("x-llm-router-attempts"), "1");
      const record = await recordAt(router);
      assert.equal(res.headers.get("x-request-id"), record.request_id);
      assert.notEqual(record.request_id, "req_upstream_123");
      assert.deepEqual(record.response, JSON.parse(answer));
    });
  });
}

Deno.test("a provider's 204 reaches the client without a body, with the provider's and the router's headers", async () => {
  for (const api of APIS) {
    const mock = always({ status: 204, headers: { "x-provider-note": "none" } });
    await withRouter({ providers: [provider("prov", api, mock.url)] }, [mock], async (router) => {
      const res = await post(router, api, requestText(api, "m"));
      assert.equal(res.status, 204);
      assert.equal(await res.text(), "");
      assert.equal(res.headers.get("x-provider-note"), "none");
      assert.equal(res.headers.get("x-llm-router-provider"), "prov");
      assert.equal(res.headers.get("x-request-id"), (await recordAt(router)).request_id);
    });
  }
});

Deno.test("x-request-id is the record's id even when the upstream sends none", async () => {
  // A provider's own x-llm-router-* header is not passed on as if the router had set it.
  const spoof = { "x-llm-router-upstream-request-id": "spoofed" };
  const mock = always(jsonReply(successText("openai", "m"), 200, spoof));
  const config = { providers: [provider("prov", "openai", mock.url)] };
  await withRouter(config, [mock], async (router) => {
    const ids: (string | null)[] = [];
    for (let i = 0; i < 2; i++) {
      const res = await post(router, "openai", requestText("openai", "m"));
      await res.body?.cancel();
      ids.push(res.headers.get("x-request-id"));
      assert.equal(res.headers.get("x-llm-router-upstream-request-id"), null);
    }
    const records = [await recordAt(router, 0), await recordAt(router, 1)];
    assert.deepEqual(ids, records.map((r) => r.request_id));
    assert.notEqual(ids[0], ids[1]);
  });
});

Deno.test("a passed-through 429 keeps retry-after and rate-limit headers", async () => {
  const headers = ERRORS.headers.openai_429;
  const body = JSON.stringify(ERRORS.openai["429"]);
  const mock = always(jsonReply(body, 429, headers));
  const config = { providers: [provider("only", "openai", mock.url)] };
  await withRouter(config, [mock], async (router) => {
    const res = await post(router, "openai", requestText("openai", "m"));
    assert.equal(await res.text(), body);
    assert.equal(res.status, 429);
    assert.equal(res.headers.get("retry-after"), "2");
    assert.equal(res.headers.get("x-ratelimit-remaining-tokens"), "200");
    assert.equal(res.headers.get("x-ratelimit-reset-tokens"), "1.8s");
    const record = await recordAt(router);
    assert.equal(record.provider, "only");
    assert.equal(record.status, 429);
  });
});
