/**
 * Security (issue 5), end to end on real sockets: inbound keys on both endpoints and the pages,
 * key names in records and stats, nothing secret crossing the router in either direction, CORS,
 * the concurrency and body-size limits, and a secret grep over the log after every error path.
 * The spawned-process permission tests live in permissions_test.ts.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { parseConfig } from "../src/config.ts";
import type { RequestRecord } from "../src/record.ts";
import { startServer } from "../src/server.ts";
import {
  anthropicStreamChunks,
  closedPort,
  defaultReply,
  failureReply,
  type MockReply,
  type MockRequest,
  type MockScript,
  type MockUpstream,
  openaiStreamChunks,
  sseHeaders,
  startMockUpstream,
} from "../tools/mock_upstream.ts";
import { provider, type RunningRouter, startRouter, within } from "./harness.ts";

// deno-lint-ignore no-explicit-any
type Json = any;
type Api = "openai" | "anthropic";

const APIS: readonly Api[] = ["openai", "anthropic"];
const ROUTE: Record<Api, string> = {
  openai: "/openai/v1/chat/completions",
  anthropic: "/anthropic/v1/messages",
};
const MODEL: Record<Api, string> = { openai: "gpt-sec", anthropic: "claude-sec" };

/** A bare key (named `key-1`, first in the list) and a named one. */
const BARE_KEY = "rk-bare-inbound-8c1d4e6f2a";
const TEAM_KEY = "rk-team-a-inbound-3f9d2c7b1e";
const WRONG_KEY = "rk-wrong-presented-5a6b7c8d9e";
const API_KEYS = [BARE_KEY, { name: "team-a", key: TEAM_KEY }];
/** A header value the router's own messages must never echo. */
const PROBE = "hv-probe-header-value-0f1e2d3c";

const PAGES_PROTECTED = ["/stats", "/metrics", "/health/providers"];

function requestText(api: Api, model = MODEL[api], extra: object = {}): string {
  const messages = [{ role: "user", content: "Hello" }];
  return JSON.stringify(
    api === "openai"
      ? { model, messages, ...extra }
      : { model, max_tokens: 32, messages, ...extra },
  );
}

function post(
  router: { url: string },
  api: Api,
  headers: Record<string, string> = {},
  body = requestText(api),
): Promise<Response> {
  return fetch(router.url + ROUTE[api], {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body,
  });
}

const bearer = (key: string) => ({ authorization: `Bearer ${key}` });
const xApiKey = (key: string) => ({ "x-api-key": key });

/** The router's own error in the endpoint's format: exactly the API's error shape. */
function assertErrorFormat(api: Api, body: Json, status: number, code: string): void {
  if (api === "openai") {
    assert.deepEqual(Object.keys(body), ["error"]);
    assert.deepEqual(Object.keys(body.error).sort(), ["code", "message", "param", "type"]);
    assert.equal(body.error.code, code);
    assert.equal(body.error.type, status >= 500 ? "upstream_error" : "invalid_request_error");
    assert.equal(typeof body.error.message, "string");
    return;
  }
  const types: Record<number, string> = {
    401: "authentication_error",
    413: "request_too_large",
    429: "rate_limit_error",
  };
  assert.deepEqual(Object.keys(body).sort(), ["error", "type"]);
  assert.equal(body.type, "error");
  assert.deepEqual(Object.keys(body.error).sort(), ["message", "type"]);
  assert.equal(body.error.type, types[status] ?? "invalid_request_error");
  assert.equal(typeof body.error.message, "string");
}

function assertNoCorsHeaders(response: Response): void {
  for (const [name] of response.headers) {
    assert.ok(!name.startsWith("access-control-"), `unexpected ${name}`);
  }
}

/** Every value of a response a client sees: status line aside, headers and body text. */
async function visible(response: Response): Promise<string> {
  const headers = [...response.headers].map(([k, v]) => `${k}: ${v}`).join("\n");
  return `${headers}\n\n${await response.text()}`;
}

function assertAbsent(text: string, secrets: readonly string[], where: string): void {
  for (const secret of secrets) {
    assert.ok(!text.includes(secret), `${where} contains ${secret}`);
  }
}

interface Setup {
  router: RunningRouter;
  mock: MockUpstream;
}

/** A router with one provider of each type in front of one mock, closed after `body`. */
async function withRouter(
  config: object,
  body: (setup: Setup) => Promise<void>,
  script: MockScript = defaultReply,
): Promise<void> {
  const mock = startMockUpstream(script);
  const router = startRouter({
    providers: [provider("oa", "openai", mock.url), provider("an", "anthropic", mock.url)],
    ...config,
  });
  try {
    await body({ router, mock });
  } finally {
    await mock.close();
    await router.close();
  }
}

const PROVIDER_KEY: Record<Api, string> = { openai: "sk-oa-secret", anthropic: "sk-an-secret" };

// ---------------------------------------------------------------------------------------------
// Inbound authentication on the API endpoints

for (const api of APIS) {
  Deno.test(`${api}: no key, a wrong key or a key outside both headers gets 401 in the endpoint's format and reaches no provider`, async () => {
    await withRouter({ auth: { api_keys: API_KEYS } }, async ({ router, mock }) => {
      const cases: Record<string, string>[] = [
        {},
        bearer(WRONG_KEY),
        xApiKey(WRONG_KEY),
        { authorization: TEAM_KEY }, // the right key, but not as a Bearer token
        { authorization: `Basic ${btoa(`user:${TEAM_KEY}`)}` },
        { authorization: "Bearer ", "x-api-key": "" },
        { cookie: `key=${TEAM_KEY}`, "x-auth": TEAM_KEY },
        bearer(`${TEAM_KEY}x`),
        xApiKey(TEAM_KEY.slice(0, -1)),
      ];
      for (const headers of cases) {
        const response = await post(router, api, { ...headers, "x-probe": PROBE });
        const text = await response.text();
        assert.equal(response.status, 401, JSON.stringify(headers));
        assertErrorFormat(api, JSON.parse(text), 401, "invalid_api_key");
        assertAbsent(text, [WRONG_KEY, TEAM_KEY, PROBE], "the 401 body");
      }
      const records = await within(router.sink.waitFor(cases.length), "the records");
      assert.equal(mock.requests.length, 0, "no provider saw any of them");
      for (const record of records) {
        assert.equal(record.status, 401);
        assert.equal(record.client, null);
        assert.equal(record.error?.type, "invalid_api_key");
        assert.deepEqual(record.attempts, []);
        assert.equal(record.request, null, "the body was not read");
      }
      assertAbsent(JSON.stringify(records), [WRONG_KEY, TEAM_KEY, PROBE], "the records");
    });
  });

  Deno.test(`${api}: the router key is accepted as Authorization Bearer and as x-api-key, and only the provider's key goes upstream`, async () => {
    await withRouter({ auth: { api_keys: API_KEYS } }, async ({ router, mock }) => {
      const cases: [Record<string, string>, string][] = [
        [bearer(TEAM_KEY), "team-a"],
        [xApiKey(TEAM_KEY), "team-a"],
        [bearer(BARE_KEY), "key-1"],
        [xApiKey(BARE_KEY), "key-1"],
        [{ authorization: `bearer ${BARE_KEY}` }, "key-1"],
      ];
      for (const [headers] of cases) {
        const response = await post(router, api, headers);
        assert.equal(response.status, 200, JSON.stringify(headers));
        assert.equal((await response.json()).model, MODEL[api]);
      }
      const records = await within(router.sink.waitFor(cases.length), "the records");
      assert.deepEqual(records.map((r) => r.client), cases.map(([, name]) => name));
      assertAbsent(JSON.stringify(records), [TEAM_KEY, BARE_KEY], "the records");
      assert.equal(mock.requests.length, cases.length);
      for (const request of mock.requests) {
        if (api === "openai") {
          assert.equal(request.headers.get("authorization"), `Bearer ${PROVIDER_KEY.openai}`);
          assert.equal(request.headers.get("x-api-key"), null);
        } else {
          assert.equal(request.headers.get("x-api-key"), PROVIDER_KEY.anthropic);
          assert.equal(request.headers.get("authorization"), null);
        }
        assertAbsent(JSON.stringify([...request.headers]), [TEAM_KEY, BARE_KEY], "upstream");
      }
    });
  });

  Deno.test(`${api}: client credentials never reach a provider that has no key of its own`, async () => {
    const mock = startMockUpstream();
    const keyless = {
      name: "free",
      type: api,
      base_url: api === "openai" ? `${mock.url}/v1` : mock.url,
    };
    const router = startRouter({ providers: [keyless], auth: { api_keys: API_KEYS } });
    try {
      const response = await post(router, api, { ...bearer(TEAM_KEY), ...xApiKey(BARE_KEY) });
      assert.equal(response.status, 200);
      await response.body?.cancel();
      assert.equal(mock.requests.length, 1);
      const headers = mock.requests[0].headers;
      assert.equal(headers.get("authorization"), null);
      assert.equal(headers.get("x-api-key"), null);
      assertAbsent(JSON.stringify([...headers]), [TEAM_KEY, BARE_KEY], "upstream headers");
    } finally {
      await mock.close();
      await router.close();
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The official SDKs

/** A fetch for an SDK that notes the headers of every request it sends. */
function capturing(sent: Headers[]): typeof fetch {
  return (input, init) => {
    const fromRequest = input instanceof Request ? input.headers : undefined;
    sent.push(new Headers(init?.headers ?? fromRequest));
    return fetch(input, init);
  };
}

Deno.test("OpenAI SDK: the router key as apiKey goes as Bearer and works; a wrong one raises AuthenticationError 401", async () => {
  await withRouter({ auth: { api_keys: API_KEYS } }, async ({ router, mock }) => {
    const sent: Headers[] = [];
    const client = (apiKey: string) =>
      new OpenAI({
        apiKey,
        baseURL: `${router.url}/openai`,
        maxRetries: 0,
        fetch: capturing(sent),
      });
    const messages = [{ role: "user" as const, content: "Hello" }];
    const completion = await client(TEAM_KEY).chat.completions.create({
      model: MODEL.openai,
      messages,
    });
    assert.equal(completion.model, MODEL.openai);
    assert.equal(sent[0].get("authorization"), `Bearer ${TEAM_KEY}`);
    await assert.rejects(
      client(WRONG_KEY).chat.completions.create({ model: MODEL.openai, messages }),
      (error: unknown) => {
        assert.ok(error instanceof OpenAI.AuthenticationError, String(error));
        assert.equal(error.status, 401);
        assert.equal(error.code, "invalid_api_key");
        assert.ok(!error.message.includes(WRONG_KEY));
        return true;
      },
    );
    assert.equal(mock.requests.length, 1, "only the good call went upstream");
    const records = await within(router.sink.waitFor(2), "the records");
    assert.deepEqual(records.map((r) => [r.status, r.client]), [[200, "team-a"], [401, null]]);
  });
});

Deno.test("Anthropic SDK: the router key works in whichever header the SDK sends; a wrong one raises AuthenticationError 401", async () => {
  await withRouter({ auth: { api_keys: API_KEYS } }, async ({ router, mock }) => {
    const baseURL = `${router.url}/anthropic`;
    const params = {
      model: MODEL.anthropic,
      max_tokens: 32,
      messages: [{ role: "user" as const, content: "Hello" }],
    };
    // As the SDK sends it by default, however this version does it.
    const sentDefault: Headers[] = [];
    const asConfigured = new Anthropic({
      apiKey: TEAM_KEY,
      baseURL,
      maxRetries: 0,
      fetch: capturing(sentDefault),
    });
    assert.equal((await asConfigured.messages.create(params)).model, MODEL.anthropic);
    const presented = [sentDefault[0].get("authorization"), sentDefault[0].get("x-api-key")];
    assert.ok(
      presented.includes(`Bearer ${TEAM_KEY}`) || presented.includes(TEAM_KEY),
      `the SDK presents the key: ${presented}`,
    );
    // x-api-key alone, as Anthropic clients traditionally send it.
    const sentApiKey: Headers[] = [];
    const viaApiKeyHeader = new Anthropic({
      apiKey: null,
      authToken: null,
      baseURL,
      maxRetries: 0,
      defaultHeaders: { "x-api-key": BARE_KEY, authorization: null },
      fetch: capturing(sentApiKey),
    });
    assert.equal((await viaApiKeyHeader.messages.create(params)).model, MODEL.anthropic);
    assert.equal(sentApiKey[0].get("x-api-key"), BARE_KEY);
    assert.equal(sentApiKey[0].get("authorization"), null);
    // Authorization: Bearer alone.
    const sentBearer: Headers[] = [];
    const viaBearer = new Anthropic({
      apiKey: null,
      authToken: BARE_KEY,
      baseURL,
      maxRetries: 0,
      fetch: capturing(sentBearer),
    });
    assert.equal((await viaBearer.messages.create(params)).model, MODEL.anthropic);
    assert.equal(sentBearer[0].get("authorization"), `Bearer ${BARE_KEY}`);
    assert.equal(sentBearer[0].get("x-api-key"), null);

    await assert.rejects(
      new Anthropic({ apiKey: WRONG_KEY, baseURL, maxRetries: 0 }).messages.create(params),
      (error: unknown) => {
        assert.ok(error instanceof Anthropic.AuthenticationError, String(error));
        assert.equal(error.status, 401);
        assert.equal((error.error as Json)?.error?.type, "authentication_error");
        assert.ok(!error.message.includes(WRONG_KEY));
        return true;
      },
    );
    assert.equal(mock.requests.length, 3, "only the good calls went upstream");
    for (const request of mock.requests) {
      assert.equal(request.headers.get("x-api-key"), PROVIDER_KEY.anthropic);
      assert.equal(request.headers.get("authorization"), null);
    }
    const records = await within(router.sink.waitFor(4), "the records");
    assert.deepEqual(records.map((r) => [r.status, r.client]), [
      [200, "team-a"],
      [200, "key-1"],
      [200, "key-1"],
      [401, null],
    ]);
  });
});

// ---------------------------------------------------------------------------------------------
// Key names in records and stats

async function readPages(router: RunningRouter): Promise<{ stats: string; metrics: string }> {
  const get = async (path: string) => {
    const response = await fetch(router.url + path, { headers: bearer(TEAM_KEY) });
    assert.equal(response.status, 200, path);
    return await response.text();
  };
  return { stats: await get("/stats"), metrics: await get("/metrics") };
}

/** One success per key per endpoint, and a 401, so every client shows in the stats. */
async function useEveryKey(router: RunningRouter): Promise<RequestRecord[]> {
  for (const api of APIS) {
    for (const headers of [bearer(TEAM_KEY), xApiKey(BARE_KEY), bearer(WRONG_KEY)]) {
      await (await post(router, api, headers)).body?.cancel();
    }
  }
  return await within(router.sink.waitFor(6), "the records");
}

Deno.test("record.client is the key's name (key-1 for a bare key), and neither /stats nor /metrics shows a key", async () => {
  await withRouter({ auth: { api_keys: API_KEYS } }, async ({ router }) => {
    const records = await useEveryKey(router);
    assert.deepEqual(records.map((r) => [r.endpoint, r.status, r.client]), [
      ["openai", 200, "team-a"],
      ["openai", 200, "key-1"],
      ["openai", 401, null],
      ["anthropic", 200, "team-a"],
      ["anthropic", 200, "key-1"],
      ["anthropic", 401, null],
    ]);
    assertAbsent(JSON.stringify(records), [TEAM_KEY, BARE_KEY, WRONG_KEY], "the records");
    const { stats, metrics } = await readPages(router);
    assert.equal(JSON.parse(stats).requests, 6, "the stats saw the requests");
    assertAbsent(stats, [TEAM_KEY, BARE_KEY, WRONG_KEY], "/stats");
    assertAbsent(metrics, [TEAM_KEY, BARE_KEY, WRONG_KEY], "/metrics");
  });
});

Deno.test("/stats and /metrics tell clients apart by their key's name", async () => {
  await withRouter({ auth: { api_keys: API_KEYS } }, async ({ router }) => {
    await useEveryKey(router);
    const { stats, metrics } = await readPages(router);
    for (const name of ["team-a", "key-1"]) {
      assert.ok(stats.includes(`"${name}"`), `/stats names client ${name}: ${stats}`);
      assert.ok(metrics.includes(`="${name}"`), `/metrics labels client ${name}`);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// The pages

Deno.test("with keys set, /stats, /metrics and /health/providers need a key in either header; /health stays open", async () => {
  await withRouter({ auth: { api_keys: API_KEYS } }, async ({ router, mock }) => {
    for (const path of PAGES_PROTECTED) {
      for (const headers of [{}, bearer(WRONG_KEY), xApiKey(WRONG_KEY)]) {
        const response = await fetch(router.url + path, { headers });
        const text = await response.text();
        assert.equal(response.status, 401, `${path} ${JSON.stringify(headers)}`);
        assertErrorFormat("openai", JSON.parse(text), 401, "invalid_api_key");
        assertAbsent(text, [WRONG_KEY], path);
      }
      for (const headers of [bearer(TEAM_KEY), xApiKey(BARE_KEY)]) {
        const response = await fetch(router.url + path, { headers });
        assert.equal(response.status, 200, `${path} ${JSON.stringify(headers)}`);
        await response.body?.cancel();
      }
    }
    for (const headers of [{}, bearer(WRONG_KEY)]) {
      const health = await fetch(`${router.url}/health`, { headers });
      assert.equal(health.status, 200);
      assert.equal((await health.json()).status, "ok");
    }
    assert.equal(mock.requests.length, 0);
  });
});

Deno.test("with auth.protect_pages false the pages are open while the API endpoints still need a key", async () => {
  await withRouter(
    { auth: { api_keys: API_KEYS, protect_pages: false } },
    async ({ router }) => {
      for (const path of [...PAGES_PROTECTED, "/health"]) {
        const response = await fetch(router.url + path);
        assert.equal(response.status, 200, path);
        await response.body?.cancel();
      }
      for (const api of APIS) {
        const response = await post(router, api);
        assert.equal(response.status, 401);
        await response.body?.cancel();
      }
    },
  );
});

Deno.test("without auth.api_keys every endpoint and page is open and record.client is null", async () => {
  await withRouter({}, async ({ router }) => {
    for (const path of [...PAGES_PROTECTED, "/health"]) {
      const response = await fetch(router.url + path);
      assert.equal(response.status, 200, path);
      await response.body?.cancel();
    }
    for (const api of APIS) {
      const response = await post(router, api, bearer(WRONG_KEY));
      assert.equal(response.status, 200);
      await response.body?.cancel();
    }
    const records = await within(router.sink.waitFor(2), "the records");
    assert.deepEqual(records.map((r) => r.client), [null, null]);
  });
});

// ---------------------------------------------------------------------------------------------
// Nothing leaks to the client

for (const api of APIS) {
  Deno.test(`${api}: the router's own errors (400, 404, 405, 502, 504) carry no provider key, client key or header value`, async () => {
    const dead = closedPort();
    const mock = startMockUpstream(() => ({ hang: "headers" }));
    const base = (url: string) => api === "openai" ? `${url}/v1` : url;
    const router = startRouter({
      providers: [
        {
          name: "dead",
          type: api,
          api_key: "sk-dead-provider-9a8b7c",
          base_url: base(`http://127.0.0.1:${dead}`),
          models: ["m-dead"],
        },
        {
          name: "slow",
          type: api,
          api_key: "sk-slow-provider-6d5e4f",
          base_url: base(mock.url),
          models: ["m-slow"],
          timeout_ms: 100,
        },
      ],
      auth: { api_keys: API_KEYS },
    });
    const secrets = ["sk-dead-provider-9a8b7c", "sk-slow-provider-6d5e4f", TEAM_KEY, PROBE];
    const headers = {
      "content-type": "application/json",
      ...bearer(TEAM_KEY),
      "x-probe": PROBE,
      "x-api-key": TEAM_KEY,
    };
    try {
      const cases: [string, RequestInit, number][] = [
        [ROUTE[api], { method: "POST", headers, body: "{not json" }, 400],
        [ROUTE[api], { method: "POST", headers, body: JSON.stringify({ messages: [] }) }, 400],
        [ROUTE[api], { method: "POST", headers, body: requestText(api, "m-unknown") }, 404],
        [`/${api}/v1/nowhere`, { method: "POST", headers, body: requestText(api) }, 404],
        ["/nowhere", { headers }, 404],
        [ROUTE[api], { method: "GET", headers }, 405],
        [ROUTE[api], { method: "POST", headers, body: requestText(api, "m-dead") }, 502],
        [ROUTE[api], { method: "POST", headers, body: requestText(api, "m-slow") }, 504],
      ];
      for (const [path, init, status] of cases) {
        const response = await fetch(router.url + path, init);
        assert.equal(response.status, status, `${init.method} ${path}`);
        const text = await visible(response);
        assertAbsent(text, [...secrets, "Bearer"], `the ${status} answer`);
      }
      // Every case leaves a record (the page's 404 too); only the API paths' are checked here.
      const records = (await within(router.sink.waitFor(cases.length), "the records"))
        .filter((r) => r.path.startsWith(`/${api}/`));
      assert.deepEqual(records.map((r) => r.status), [400, 400, 404, 404, 405, 502, 504]);
      assertAbsent(JSON.stringify(records), secrets, "the records");
    } finally {
      await mock.close();
      await router.close();
    }
  });

  Deno.test(`${api}: a provider's set-cookie and access-control-* headers never reach the client`, async () => {
    const harmful = {
      "set-cookie": "session=provider-session; Path=/; HttpOnly",
      "access-control-allow-origin": "*",
      "access-control-allow-credentials": "true",
      "access-control-expose-headers": "set-cookie",
      "x-provider-note": "kept",
    };
    const script: MockScript = (req, n) => {
      const reply = n === 2 ? failureReply(req.path, 401) : defaultReply(req);
      return { ...reply, headers: { ...reply.headers, ...harmful } };
    };
    await withRouter({}, async ({ router }) => {
      const answers = [
        await post(router, api, { origin: "https://app.example" }),
        await post(
          router,
          api,
          { origin: "https://app.example" },
          requestText(api, MODEL[api], { stream: true }),
        ),
        await post(router, api, { origin: "https://app.example" }), // the provider's 401, passed through
      ];
      assert.deepEqual(answers.map((r) => r.status), [200, 200, 401]);
      for (const response of answers) {
        assert.equal(response.headers.get("set-cookie"), null);
        assertNoCorsHeaders(response);
        assert.equal(response.headers.get("x-provider-note"), "kept");
        await response.body?.cancel();
      }
    }, script);
  });
}

// ---------------------------------------------------------------------------------------------
// CORS

const ALLOWED_ORIGIN = "https://app.example";

Deno.test("with cors.origins the router grants only a listed Origin, on its own terms, whatever the provider sends", async () => {
  const script: MockScript = (req) => {
    const reply = defaultReply(req);
    const headers = {
      ...reply.headers,
      "access-control-allow-origin": "*",
      vary: "accept-encoding",
    };
    return { ...reply, headers };
  };
  await withRouter(
    { auth: { api_keys: API_KEYS }, cors: { origins: [ALLOWED_ORIGIN] } },
    async ({ router }) => {
      for (const api of APIS) {
        const allowed = await post(router, api, { ...bearer(TEAM_KEY), origin: ALLOWED_ORIGIN });
        assert.equal(allowed.status, 200);
        assert.equal(allowed.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN);
        // The provider's vary still holds; origin joins it.
        assert.equal(allowed.headers.get("vary"), "accept-encoding, origin");
        assert.equal(allowed.headers.get("access-control-allow-credentials"), null);
        await allowed.body?.cancel();
        // A 401 from an allowed origin is readable by the page too, and still a 401.
        const refused = await post(router, api, { origin: ALLOWED_ORIGIN });
        assert.equal(refused.status, 401);
        assert.equal(refused.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN);
        await refused.body?.cancel();
        for (const origin of ["https://evil.example", "null", `${ALLOWED_ORIGIN}.evil.example`]) {
          const other = await post(router, api, { ...bearer(TEAM_KEY), origin });
          assert.equal(other.status, 200);
          assertNoCorsHeaders(other);
          assert.equal(other.headers.get("vary"), "accept-encoding");
          await other.body?.cancel();
        }
        const noOrigin = await post(router, api, bearer(TEAM_KEY));
        assertNoCorsHeaders(noOrigin);
        await noOrigin.body?.cancel();
      }
    },
    script,
  );
});

Deno.test("with cors.origins a preflight from a listed Origin gets 204 with the allowed methods, without a key and without reaching a provider", async () => {
  await withRouter(
    { auth: { api_keys: API_KEYS }, cors: { origins: [ALLOWED_ORIGIN] } },
    async ({ router, mock }) => {
      for (const api of APIS) {
        const preflight = await fetch(router.url + ROUTE[api], {
          method: "OPTIONS",
          headers: {
            origin: ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, x-api-key",
          },
        });
        assert.equal(preflight.status, 204);
        assert.equal(preflight.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN);
        const methods = (preflight.headers.get("access-control-allow-methods") ?? "").split(/,\s*/);
        assert.ok(methods.includes("POST"), `allowed methods: ${methods}`);
        const allowHeaders = (preflight.headers.get("access-control-allow-headers") ?? "")
          .toLowerCase();
        for (const name of ["authorization", "content-type", "x-api-key"]) {
          assert.ok(allowHeaders.includes(name), `allowed headers: ${allowHeaders}`);
        }
        await preflight.body?.cancel();
        const stranger = await fetch(router.url + ROUTE[api], {
          method: "OPTIONS",
          headers: { origin: "https://evil.example", "access-control-request-method": "POST" },
        });
        assert.notEqual(stranger.status, 204);
        assertNoCorsHeaders(stranger);
        await stranger.body?.cancel();
      }
      assert.equal(mock.requests.length, 0);
    },
  );
});

Deno.test("with cors.origins a preflight for a model list or one model gets 204 allowing GET, and the GET is readable", async () => {
  await withRouter(
    { auth: { api_keys: API_KEYS }, cors: { origins: [ALLOWED_ORIGIN] } },
    async ({ router, mock }) => {
      for (const path of ["/openai/v1/models", "/openai/models/gpt-sec", "/anthropic/v1/models"]) {
        const preflight = await fetch(router.url + path, {
          method: "OPTIONS",
          headers: {
            origin: ALLOWED_ORIGIN,
            "access-control-request-method": "GET",
            "access-control-request-headers": "authorization, x-stainless-os",
          },
        });
        assert.equal(preflight.status, 204, path);
        assert.equal(preflight.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN);
        assert.equal(preflight.headers.get("access-control-allow-methods"), "GET, HEAD");
        await preflight.body?.cancel();
        const listed = await fetch(router.url + path, {
          headers: { ...bearer(TEAM_KEY), origin: ALLOWED_ORIGIN },
        });
        assert.equal(listed.status, 200, path);
        assert.equal(listed.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN);
        await listed.body?.cancel();
      }
      assert.equal(mock.requests.length, 0);
    },
  );
});

Deno.test("with cors.origins a page may read the request ids and retry hints the SDKs use", async () => {
  const script: MockScript = (req) => {
    const reply = failureReply(req.path, 429);
    const headers = { ...reply.headers, "retry-after": "7", "request-id": "req_provider_1" };
    return { ...reply, headers };
  };
  await withRouter(
    {
      auth: { api_keys: API_KEYS },
      cors: { origins: [ALLOWED_ORIGIN] },
      // A Retry-After past the request's time: the 429 goes out at once.
      timeouts: { total_ms: 5_000 },
    },
    async ({ router }) => {
      for (const api of APIS) {
        const limited = await post(router, api, { ...bearer(TEAM_KEY), origin: ALLOWED_ORIGIN });
        assert.equal(limited.status, 429);
        assert.equal(limited.headers.get("retry-after"), "7");
        const exposed = (limited.headers.get("access-control-expose-headers") ?? "")
          .split(/,\s*/);
        for (const name of ["retry-after", "request-id", "x-request-id", "x-should-retry"]) {
          assert.ok(exposed.includes(name), `${name} not in ${exposed}`);
        }
        // Requests without credentials, the SDKs' kind, may read every header.
        assert.ok(exposed.includes("*"));
        await limited.body?.cancel();
      }
    },
    script,
  );
});

Deno.test("without cors config the router sets no CORS header and answers OPTIONS with 405", async () => {
  await withRouter({ auth: { api_keys: API_KEYS } }, async ({ router, mock }) => {
    for (const api of APIS) {
      const preflight = await fetch(router.url + ROUTE[api], {
        method: "OPTIONS",
        headers: { origin: ALLOWED_ORIGIN, "access-control-request-method": "POST" },
      });
      assert.equal(preflight.status, 405);
      assert.equal(preflight.headers.get("allow"), "POST");
      assertNoCorsHeaders(preflight);
      await preflight.body?.cancel();
      const response = await post(router, api, { ...bearer(TEAM_KEY), origin: ALLOWED_ORIGIN });
      assert.equal(response.status, 200);
      assertNoCorsHeaders(response);
      await response.body?.cancel();
    }
    for (const path of ["/health", "/stats"]) {
      const page = await fetch(router.url + path, {
        headers: { ...bearer(TEAM_KEY), origin: ALLOWED_ORIGIN },
      });
      assertNoCorsHeaders(page);
      await page.body?.cancel();
    }
    assert.equal(mock.requests.length, 2);
  });
});

// ---------------------------------------------------------------------------------------------
// limits.max_concurrent

/** A stream's first events, up to and including its first output, then a body that hangs. */
function openStream(api: Api, model: string): MockReply {
  const chunks = api === "openai"
    ? openaiStreamChunks(model).slice(0, 2)
    : anthropicStreamChunks(model).slice(0, 4);
  return { headers: { ...sseHeaders }, chunks, hang: "body" };
}

for (const api of APIS) {
  Deno.test(`${api}: with max_concurrent 1 a second request gets 429 with retry-after while a stream is in flight, and the next one after it passes`, async () => {
    const script: MockScript = (req) => {
      if ((req.json as Json)?.stream !== true) return defaultReply(req);
      return { ...defaultReply(req), chunkDelayMs: 40 };
    };
    await withRouter({ limits: { max_concurrent: 1 } }, async ({ router, mock }) => {
      const first = await post(router, api, {}, requestText(api, MODEL[api], { stream: true }));
      assert.equal(first.status, 200);
      const reader = first.body!.getReader();
      await reader.read(); // committed and streaming
      const second = await post(router, api);
      assert.equal(second.status, 429);
      assert.match(second.headers.get("retry-after") ?? "", /^\d+$/);
      assertErrorFormat(api, await second.json(), 429, "too_many_requests");
      assert.equal(mock.requests.length, 1, "the refused request reached no provider");
      while (!(await reader.read()).done) { /* drain the first stream */ }
      const records = await within(router.sink.waitFor(2), "both records");
      assert.deepEqual(records.map((r) => [r.status, r.error?.type ?? null]), [
        [429, "too_many_requests"],
        [200, null],
      ]);
      const third = await post(router, api);
      assert.equal(third.status, 200);
      await third.body?.cancel();
    }, script);
  });
}

Deno.test("requests refused after admission (400, 404, 413) and a client that left free their max_concurrent slot", async () => {
  const script: MockScript = (req) =>
    (req.json as Json)?.stream === true ? openStream("openai", MODEL.openai) : defaultReply(req);
  const mock = startMockUpstream(script);
  const router = startRouter({
    providers: [provider("oa", "openai", mock.url, { models: [MODEL.openai] })],
    limits: { max_concurrent: 1, max_request_bytes: 2048 },
  });
  try {
    const refusals: [string, number][] = [
      ["{not json", 400],
      [requestText("openai", "not-served"), 404],
      [requestText("openai", MODEL.openai, { pad: "x".repeat(4096) }), 413],
    ];
    for (const [body, status] of refusals) {
      const response = await post(router, "openai", {}, body);
      assert.equal(response.status, status);
      await response.body?.cancel();
    }
    const controller = new AbortController();
    const leaving = await fetch(router.url + ROUTE.openai, {
      method: "POST",
      body: requestText("openai", MODEL.openai, { stream: true }),
      signal: controller.signal,
    });
    const reader = leaving.body!.getReader();
    await reader.read();
    controller.abort();
    await reader.cancel().catch(() => {});
    const records = await within(router.sink.waitFor(4), "the records");
    assert.deepEqual(records.map((r) => r.status), [400, 404, 413, 499]);
    const next = await post(router, "openai");
    assert.equal(next.status, 200, "the slot is free again");
    await next.body?.cancel();
  } finally {
    await mock.close();
    await router.close();
  }
});

// ---------------------------------------------------------------------------------------------
// Reading the body: the size limit while reading, and the key check before it

const PIECE_BYTES = 1024;
/** Where an "endless" body gives up: far beyond what a router that stops reading would take. */
const ENDLESS_CAP = 256 * 1024;

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

/** Reads one HTTP/1.1 answer with a content-length (the router's own errors have one). */
async function readAnswer(conn: Deno.Conn): Promise<{ status: number; body: string }> {
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(16 * 1024);
  let text = "";
  for (;;) {
    const n = await conn.read(buffer).catch(() => null);
    if (n !== null) text += decoder.decode(buffer.subarray(0, n), { stream: true });
    const end = text.indexOf("\r\n\r\n");
    if (end !== -1) {
      const head = text.slice(0, end);
      const length = Number(head.match(/^content-length:\s*(\d+)/im)?.[1] ?? NaN);
      const body = text.slice(end + 4);
      if (n === null || body.length >= length) {
        return { status: Number(head.split(" ")[1]), body };
      }
    }
    if (n === null) throw new Error(`Connection ended without an answer: ${JSON.stringify(text)}`);
  }
}

/**
 * POSTs a chunked body, with no content-length, pulled from a ReadableStream one piece at a
 * time (JSON whitespace, as long as the client goes on), and stops pulling as soon as an answer
 * arrives. Returns the answer and how many bytes of the stream were pulled by then.
 */
async function postEndless(
  url: string,
  path: string,
  headers: Record<string, string>,
): Promise<{ status: number; body: string; pulled: number }> {
  const { hostname, port } = new URL(url);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  const encoder = new TextEncoder();
  let pulled = 0;
  const piece = encoder.encode(" ".repeat(PIECE_BYTES));
  const source = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (pulled >= ENDLESS_CAP) return controller.close();
      pulled += piece.length;
      controller.enqueue(piece);
    },
  }, { highWaterMark: 0 });
  const head = [
    `POST ${path} HTTP/1.1`,
    `host: ${hostname}:${port}`,
    "content-type: application/json",
    "transfer-encoding: chunked",
    ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`),
    "",
    "",
  ].join("\r\n");
  let answered = false;
  try {
    await writeAll(conn, encoder.encode(head));
    const answer = readAnswer(conn);
    answer.then(() => answered = true, () => answered = true);
    const reader = source.getReader();
    while (!answered) {
      const { done, value } = await reader.read();
      try {
        if (done) {
          await writeAll(conn, encoder.encode("0\r\n\r\n"));
          break;
        }
        await writeAll(conn, encoder.encode(`${value.length.toString(16)}\r\n`));
        await writeAll(conn, value);
        await writeAll(conn, encoder.encode("\r\n"));
      } catch {
        break; // the router closed the connection
      }
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    await reader.cancel();
    return { ...await within(answer, "the answer"), pulled };
  } finally {
    conn.close();
  }
}

for (const api of APIS) {
  Deno.test(`${api}: a streamed body without content-length over max_request_bytes gets 413 before the client has sent much of it`, async () => {
    await withRouter({ limits: { max_request_bytes: 2048 } }, async ({ router, mock }) => {
      const answer = await postEndless(router.url, ROUTE[api], {});
      assert.equal(answer.status, 413);
      assertErrorFormat(api, JSON.parse(answer.body), 413, "request_too_large");
      assert.ok(answer.pulled < 32 * 1024, `the client had to supply ${answer.pulled} bytes`);
      const [record] = await within(router.sink.waitFor(1), "the record");
      assert.equal(record.status, 413);
      assert.equal(record.request, null, "nothing of the body is logged");
      assert.equal(mock.requests.length, 0);
    });
  });

  Deno.test(`${api}: a request without a valid key gets 401 before its body is read`, async () => {
    await withRouter({ auth: { api_keys: API_KEYS } }, async ({ router, mock }) => {
      const answer = await postEndless(router.url, ROUTE[api], bearer(WRONG_KEY));
      assert.equal(answer.status, 401);
      assertErrorFormat(api, JSON.parse(answer.body), 401, "invalid_api_key");
      assert.ok(answer.pulled < 32 * 1024, `the client had to supply ${answer.pulled} bytes`);
      assert.equal(mock.requests.length, 0);
    });
  });

  Deno.test(`${api}: a declared content-length over max_request_bytes gets 413 and reaches no provider`, async () => {
    await withRouter({ limits: { max_request_bytes: 1024 } }, async ({ router, mock }) => {
      const body = requestText(api, MODEL[api], { pad: "x".repeat(2048) });
      const response = await post(router, api, {}, body);
      assert.equal(response.status, 413);
      assertErrorFormat(api, await response.json(), 413, "request_too_large");
      const [record] = await within(router.sink.waitFor(1), "the record");
      assert.equal(record.status, 413);
      assert.equal(record.request, null);
      assert.equal(mock.requests.length, 0);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The leaked-secret grep

/** Upstream behaviours, chosen by the first path segment of a provider's base URL. */
const BEHAVIOURS: Record<string, (req: MockRequest, api: Api) => MockReply> = {
  ok: (req) => defaultReply(req),
  e401: (req) => failureReply(req.path, 401),
  e429: (req) => failureReply(req.path, 429),
  e500: (req) => failureReply(req.path, 500),
  slow: (req) => ({ ...defaultReply(req), chunkDelayMs: 30 }),
  reset: (req, api) => ({
    ...openStream(api, String((req.json as Json)?.model)),
    hang: undefined,
    reset: true,
  }),
  open: (req, api) => openStream(api, String((req.json as Json)?.model)),
  hang: () => ({ hang: "headers" }),
};

Deno.test("no secret appears in any log file, client answer or operator message after every error path", async () => {
  const mock = startMockUpstream((req) => {
    const [, behaviour] = req.path.split("/");
    const api: Api = req.path.endsWith("/messages") ? "anthropic" : "openai";
    return BEHAVIOURS[behaviour](req, api);
  });
  const dead = closedPort();
  const logDir = await Deno.makeTempDir({ prefix: "security-log-" });
  const providerKeys: string[] = [];
  const providers: object[] = [];
  const mapping: Record<string, object[]> = {};
  for (const api of APIS) {
    const at = (behaviour: string) => {
      const root = behaviour === "dead" ? `http://127.0.0.1:${dead}` : `${mock.url}/${behaviour}`;
      return api === "openai" ? `${root}/v1` : root;
    };
    for (const behaviour of [...Object.keys(BEHAVIOURS), "dead"]) {
      const name = `${api}-${behaviour}`;
      const key = `sk-${name}-PROVKEY-5b1e9c`;
      providerKeys.push(key);
      providers.push({
        name,
        type: api,
        api_key: behaviour === "ok" ? `\${LEAK_TEST_${api.toUpperCase()}_KEY}` : key,
        base_url: at(behaviour),
        models: ["never-asked-for"],
        // The answering provider comes last, so a fallback goes through the failing ones first.
        priority: behaviour === "ok" ? 2 : 1,
        ...(behaviour === "hang" ? { timeout_ms: 100 } : {}),
      });
    }
    const only = (behaviour: string) => [{ provider: `${api}-${behaviour}`, model: "upstream-m" }];
    mapping[`fallback-${api}`] = ["e401", "e429", "e500", "ok"].flatMap(only);
    for (const behaviour of ["e401", "slow", "reset", "open", "hang", "dead", "ok"]) {
      mapping[`${behaviour}-${api}`] = only(behaviour);
    }
  }
  const env: Record<string, string> = {
    LEAK_TEST_OPENAI_KEY: "sk-openai-ok-PROVKEY-5b1e9c",
    LEAK_TEST_ANTHROPIC_KEY: "sk-anthropic-ok-PROVKEY-5b1e9c",
    LEAK_TEST_TEAM_KEY: TEAM_KEY,
  };
  const config = parseConfig(
    JSON.stringify({
      providers,
      model_mapping: mapping,
      auth: { api_keys: [BARE_KEY, { name: "team-a", key: "${LEAK_TEST_TEAM_KEY}" }] },
      limits: { max_concurrent: 1, max_request_bytes: 4096 },
      shutdown: { grace_ms: 500 },
    }),
    (name) => env[name],
  );
  const WRONG_BEARER = "ck-wrong-bearer-7e6d5c4b3a";
  const WRONG_API_KEY = "ck-wrong-x-api-key-2b3c4d5e6f";
  const secrets = [...providerKeys, BARE_KEY, TEAM_KEY, WRONG_BEARER, WRONG_API_KEY, PROBE];
  const operatorMessages: string[] = [];
  /** Models of the finished records: a slot is free again once its record is finished. */
  const finished: (string | null)[] = [];
  const finishedFor = (model: string) =>
    within(
      (async () => {
        while (!finished.includes(model)) await new Promise((wake) => setTimeout(wake, 5));
      })(),
      `the record of ${model}`,
    );
  const server = startServer(config, {
    host: "127.0.0.1",
    port: 0,
    logDir,
    ops: {
      log: (level, msg, fields) => operatorMessages.push(JSON.stringify({ level, msg, fields })),
    },
    onListen() {},
    onRecord: (record) => finished.push(record.model),
  });
  const url = `http://127.0.0.1:${server.port}`;
  const seen: string[] = [];
  const expected: number[] = [];
  const good = { ...bearer(TEAM_KEY), "x-probe": PROBE };
  /** A body that quotes every secret the router knows, as a careless client might. */
  const quoting = (api: Api, model: string, extra: object = {}) =>
    requestText(api, model, {
      metadata: { pasted: [...providerKeys, BARE_KEY, TEAM_KEY] },
      ...extra,
    });
  const call = async (path: string, init: RequestInit, status: number) => {
    const response = await fetch(url + path, init);
    assert.equal(response.status, status, `${init.method ?? "GET"} ${path}`);
    seen.push(await visible(response));
    if (path.startsWith("/openai/") || path.startsWith("/anthropic/")) expected.push(status);
  };
  try {
    for (const api of APIS) {
      const route = ROUTE[api];
      const postTo = (headers: Record<string, string>, body: string): RequestInit => ({
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body,
      });
      await call(route, postTo({ "x-probe": PROBE }, quoting(api, `ok-${api}`)), 401);
      await call(route, postTo(bearer(WRONG_BEARER), quoting(api, `ok-${api}`)), 401);
      await call(route, postTo(xApiKey(WRONG_API_KEY), quoting(api, `ok-${api}`)), 401);
      await call(route, postTo(good, `{"model": "${TEAM_KEY}", not json`), 400);
      await call(route, postTo(good, JSON.stringify({ messages: [TEAM_KEY] })), 400);
      await call(route, postTo(good, quoting(api, "no-such-model")), 404);
      await call(`/${api}/v1/elsewhere`, postTo(good, quoting(api, `ok-${api}`)), 404);
      await call(route, { method: "GET", headers: good }, 405);
      await call(route, { method: "OPTIONS", headers: good }, 405);
      await call(route, postTo(good, quoting(api, `ok-${api}`, { pad: "x".repeat(8192) })), 413);
      await call(route, postTo(good, quoting(api, `fallback-${api}`)), 200);
      await call(route, postTo(good, quoting(api, `e401-${api}`)), 401);
      await call(route, postTo(good, quoting(api, `dead-${api}`)), 502);
      await call(route, postTo(good, quoting(api, `hang-${api}`)), 504);
      await call(route, postTo(good, quoting(api, `reset-${api}`, { stream: true })), 200);
      // 429 from the concurrency limit, while a slow stream holds the only slot.
      const holding = await fetch(
        url + route,
        postTo(good, quoting(api, `slow-${api}`, { stream: true })),
      );
      const holder = holding.body!.getReader();
      await holder.read();
      await call(route, postTo(good, quoting(api, `ok-${api}`)), 429);
      let streamed = "";
      for (;;) {
        const { done, value } = await holder.read();
        if (done) break;
        streamed += new TextDecoder().decode(value);
      }
      seen.push(streamed);
      expected.push(200);
      await finishedFor(`slow-${api}`);
      // A client that leaves mid-stream.
      const controller = new AbortController();
      const leaving = await fetch(url + route, {
        ...postTo(good, quoting(api, `open-${api}`, { stream: true })),
        signal: controller.signal,
      });
      const reader = leaving.body!.getReader();
      await reader.read();
      controller.abort();
      await reader.cancel().catch(() => {});
      expected.push(499);
      await finishedFor(`open-${api}`);
      // Pages: refused without a key, then shown with one.
      await call("/stats", { headers: bearer(WRONG_BEARER) }, 401);
      await call("/metrics", { headers: xApiKey(BARE_KEY) }, 200);
      await call("/health/providers", { headers: good }, 200);
      await call("/nowhere", { headers: good }, 404);
    }
  } finally {
    await server.stop();
    await mock.close();
  }
  try {
    const files: string[] = [];
    for await (const entry of Deno.readDir(logDir)) files.push(entry.name);
    assert.ok(files.includes("requests.jsonl"), `log files: ${files}`);
    let logText = "";
    for (const name of files) {
      const text = await Deno.readTextFile(`${logDir}/${name}`);
      assertAbsent(text, secrets, `log file ${name}`);
      logText += text;
    }
    const records: RequestRecord[] = logText.trim().split("\n")
      .map((line) => JSON.parse(line))
      .filter((r: RequestRecord) => /^\/(openai|anthropic)\//.test(r.path));
    // The grep is only worth something if every path was logged, and a quoted secret scrubbed.
    assert.deepEqual(records.map((r) => r.status).sort(), [...expected].sort());
    assert.ok(logText.includes("[REDACTED]"), "the quoted secrets were in the log, redacted");
    const fallbacks = records.filter((r) => String(r.model).startsWith("fallback-"));
    assert.deepEqual(fallbacks.map((r) => r.attempts.map((a) => a.status)), [
      [401, 429, 500, 200],
      [401, 429, 500, 200],
    ]);
    const errors = new Set(records.map((r) => r.error?.type ?? "none"));
    for (const type of ["stream_interrupted", "client_aborted", "too_many_requests"]) {
      assert.ok(errors.has(type), `a record with error ${type}: ${[...errors]}`);
    }
    assertAbsent(seen.join("\n"), secrets, "the client answers");
    assertAbsent(operatorMessages.join("\n"), secrets, "the operator messages");
  } finally {
    await Deno.remove(logDir, { recursive: true });
  }
});
