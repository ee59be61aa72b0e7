/**
 * Provider health under fault injection: Retry-After and retry-after-ms cooldowns (and their cap),
 * cooldown after repeated failures, all candidates cooling, deadline-aware waiting, the
 * /health/providers and /stats views, and same-provider retries. Each test states status,
 * provider, attempts and record.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import type { RequestRecord } from "../src/record.ts";
import { closedPort, failureReply, type MockReply } from "../tools/mock_upstream.ts";
import type { RunningRouter } from "./harness.ts";
import {
  answerText,
  type Api,
  attemptsOf,
  MODEL,
  onlyRecord,
  post,
  sleep,
  sseHeaders,
  streamChunks,
  within,
  withMocks,
} from "./resilience_util.ts";

const json = (body: string, status = 200, headers: Record<string, string> = {}): MockReply => ({
  status,
  body,
  headers: { "content-type": "application/json", ...headers },
});

const UPSTREAM_PATH: Record<Api, string> = {
  openai: "/v1/chat/completions",
  anthropic: "/v1/messages",
};

/** The API's own error body for `status`, with extra headers. */
function failing(api: Api, status: number, headers: Record<string, string> = {}): MockReply {
  const reply = failureReply(UPSTREAM_PATH[api], status);
  return { ...reply, headers: { ...reply.headers, ...headers } };
}

/** Sends one request and returns its status and record (the router's `n`th, 1-based). */
async function send(
  router: RunningRouter,
  api: Api,
  n: number,
  options: { stream?: boolean; model?: string } = {},
): Promise<{ status: number; body: string; record: RequestRecord }> {
  const response = await within(post(router.url, api, options), "the response");
  const body = await within(response.text(), "the body");
  const records = await within(router.sink.waitFor(n), `record ${n}`);
  return { status: response.status, body, record: records[n - 1] };
}

// deno-lint-ignore no-explicit-any
async function getJson(url: string): Promise<any> {
  const response = await fetch(url);
  assert.equal(response.status, 200);
  return await response.json();
}

interface RetryAfterCase {
  name: string;
  api: Api;
  status: number;
  headers: () => Record<string, string>;
  /** How long the provider should cool down, in ms. */
  expected: number;
  tolerance: number;
  cap?: number;
}

const RETRY_AFTER_CASES: RetryAfterCase[] = [
  {
    name: "429 with Retry-After in seconds",
    api: "openai",
    status: 429,
    headers: () => ({ "retry-after": "30" }),
    expected: 30_000,
    tolerance: 1000,
  },
  {
    name: "429 with retry-after-ms",
    api: "openai",
    status: 429,
    headers: () => ({ "retry-after-ms": "7500" }),
    expected: 7500,
    tolerance: 1000,
  },
  {
    name: "429 with Retry-After as an HTTP date",
    api: "anthropic",
    status: 429,
    headers: () => ({ "retry-after": new Date(Date.now() + 20_000).toUTCString() }),
    expected: 20_000,
    tolerance: 2000,
  },
  {
    name: "503 with Retry-After",
    api: "openai",
    status: 503,
    headers: () => ({ "retry-after": "12" }),
    expected: 12_000,
    tolerance: 1000,
  },
  {
    name: "529 with Retry-After",
    api: "anthropic",
    status: 529,
    headers: () => ({ "retry-after": "12" }),
    expected: 12_000,
    tolerance: 1000,
  },
  {
    name: "429 with a Retry-After beyond max_retry_after_ms (capped)",
    api: "openai",
    status: 429,
    headers: () => ({ "retry-after": "3600" }),
    expected: 5000,
    tolerance: 1000,
    cap: 5000,
  },
];

for (const c of RETRY_AFTER_CASES) {
  Deno.test(`${c.name} cools the provider down: the next request skips it`, async () => {
    const answer = answerText(c.api);
    await withMocks(c.api, [
      (_, n) => n === 0 ? failing(c.api, c.status, c.headers()) : json(answer),
      () => json(answer),
    ], {
      // total_ms below the cooldown, so the router never waits for a instead of using b.
      config: {
        timeouts: { total_ms: 3000 },
        cooldown: { max_retry_after_ms: c.cap ?? 60_000 },
      },
    }, async ({ router, mocks: [a, b] }) => {
      const started = Date.now();
      const first = await send(router, c.api, 1);
      assert.equal(first.status, 200);
      assert.deepEqual(attemptsOf(first.record), [["a", c.status, "http_status"], [
        "b",
        200,
        null,
      ]]);
      assert.deepEqual(first.record.skipped, []);

      const second = await send(router, c.api, 2);
      assert.equal(second.status, 200);
      assert.equal(second.body, answer);
      assert.equal(second.record.provider, "b");
      assert.deepEqual(attemptsOf(second.record), [["b", 200, null]]);
      assert.deepEqual(second.record.skipped, [{ provider: "a", reason: "cooldown" }]);
      assert.equal(a.requests.length, 1, "a is not asked while cooling down");
      assert.equal(b.requests.length, 2);

      const health = await getJson(`${router.url}/health/providers`);
      const [stateA, stateB] = health.providers;
      assert.equal(stateA.name, "a");
      assert.equal(stateA.type, c.api);
      assert.equal(stateA.state, "cooling_down");
      const coolsFor = Date.parse(stateA.cooling_until) - started;
      assert.ok(
        Math.abs(coolsFor - c.expected) <= c.tolerance,
        `cooling_until is ${coolsFor} ms ahead, expected about ${c.expected}`,
      );
      assert.equal(stateA.last_error.kind, "http_status");
      assert.equal(stateA.last_error.status, c.status);
      assert.deepEqual(
        [stateB.name, stateB.state, stateB.cooling_until, stateB.last_error],
        ["b", "ok", null, null],
      );
      const stats = await getJson(`${router.url}/stats`);
      assert.deepEqual(stats.cooldowns, [{ provider: "a", until: stateA.cooling_until }]);
    });
  });
}

Deno.test("a provider is tried again once its retry-after-ms cooldown is over", async () => {
  const answer = answerText("openai");
  await withMocks(
    "openai",
    [
      (_, n) => n === 0 ? failing("openai", 429, { "retry-after-ms": "300" }) : json(answer),
      () => json(answer),
    ],
    { config: { timeouts: { total_ms: 200 } } },
    async ({ router }) => {
      const first = await send(router, "openai", 1);
      assert.deepEqual(attemptsOf(first.record), [["a", 429, "http_status"], ["b", 200, null]]);
      const cooling = await send(router, "openai", 2);
      assert.deepEqual(cooling.record.skipped, [{ provider: "a", reason: "cooldown" }]);
      await sleep(350);
      const health = await getJson(`${router.url}/health/providers`);
      assert.equal(health.providers[0].state, "ok");
      const again = await send(router, "openai", 3);
      assert.equal(again.status, 200);
      assert.deepEqual(attemptsOf(again.record), [["a", 200, null]]);
      assert.deepEqual(again.record.skipped, []);
    },
  );
});

Deno.test("3 failures within window_ms cool a provider down for duration_ms", async () => {
  const answer = answerText("openai");
  await withMocks("openai", [() => failing("openai", 503), () => json(answer)], {
    config: { cooldown: { failures: 3, window_ms: 10_000, duration_ms: 20_000 } },
  }, async ({ router, mocks: [a] }) => {
    const started = Date.now();
    for (let n = 1; n <= 3; n++) {
      const { status, record } = await send(router, "openai", n);
      assert.equal(status, 200);
      assert.deepEqual(attemptsOf(record), [["a", 503, "http_status"], ["b", 200, null]]);
      assert.deepEqual(record.skipped, []);
    }
    const fourth = await send(router, "openai", 4);
    assert.equal(fourth.status, 200);
    assert.deepEqual(attemptsOf(fourth.record), [["b", 200, null]]);
    assert.deepEqual(fourth.record.skipped, [{ provider: "a", reason: "cooldown" }]);
    assert.equal(a.requests.length, 3);
    const [stateA] = (await getJson(`${router.url}/health/providers`)).providers;
    assert.equal(stateA.state, "cooling_down");
    const coolsFor = Date.parse(stateA.cooling_until) - started;
    assert.ok(Math.abs(coolsFor - 20_000) < 1000, `cooling ${coolsFor} ms`);
  });
});

Deno.test("timeouts and connection errors count toward the cooldown too", async () => {
  const answer = answerText("openai");
  await withMocks("openai", [() => ({ hang: "headers" }), () => json(answer)], {
    config: { timeouts: { first_byte_ms: 50 }, cooldown: { failures: 2 } },
    urls: [`http://127.0.0.1:${closedPort()}`],
    extra: [{ priority: 1 }, { priority: 3 }, { priority: 2 }],
  }, async ({ router }) => {
    // Order: a (hangs), c (refuses connections), b (answers).
    for (let n = 1; n <= 2; n++) {
      const { record } = await send(router, "openai", n);
      assert.deepEqual(attemptsOf(record), [
        ["a", null, "timeout"],
        ["c", null, "connect_error"],
        ["b", 200, null],
      ]);
    }
    const third = await send(router, "openai", 3);
    assert.deepEqual(attemptsOf(third.record), [["b", 200, null]]);
    assert.deepEqual(third.record.skipped, [
      { provider: "a", reason: "cooldown" },
      { provider: "c", reason: "cooldown" },
    ]);
  });
});

Deno.test("a success resets the failure count", async () => {
  const answer = answerText("openai");
  // a: fail, fail, succeed, fail, fail, succeed. Without the reset the 4th failure would cool it.
  const pattern = [503, 503, 200, 503, 503, 200];
  await withMocks(
    "openai",
    [
      (_, n) => pattern[n] === 200 ? json(answer) : failing("openai", 503),
      () => json(answer),
    ],
    { config: { cooldown: { failures: 3, window_ms: 60_000 } } },
    async ({ router, mocks: [a] }) => {
      for (let n = 1; n <= pattern.length; n++) {
        const { status, record } = await send(router, "openai", n);
        assert.equal(status, 200);
        assert.deepEqual(record.skipped, [], `request ${n} skips nothing`);
        const expected: [string, number, string | null][] = pattern[n - 1] === 200
          ? [["a", 200, null]]
          : [["a", 503, "http_status"], ["b", 200, null]];
        assert.deepEqual(attemptsOf(record), expected, `request ${n}`);
      }
      assert.equal(a.requests.length, pattern.length);
    },
  );
});

Deno.test("failures older than window_ms do not count toward the cooldown", async () => {
  const answer = answerText("openai");
  await withMocks("openai", [() => failing("openai", 500), () => json(answer)], {
    config: { cooldown: { failures: 2, window_ms: 200 } },
  }, async ({ router }) => {
    await send(router, "openai", 1);
    await sleep(250);
    const second = await send(router, "openai", 2);
    assert.deepEqual(attemptsOf(second.record), [["a", 500, "http_status"], ["b", 200, null]]);
    assert.deepEqual(second.record.skipped, []);
    // The second and third failures fall within the window: the fourth request skips a.
    const third = await send(router, "openai", 3);
    assert.deepEqual(attemptsOf(third.record), [["a", 500, "http_status"], ["b", 200, null]]);
    const fourth = await send(router, "openai", 4);
    assert.deepEqual(attemptsOf(fourth.record), [["b", 200, null]]);
    assert.deepEqual(fourth.record.skipped, [{ provider: "a", reason: "cooldown" }]);
  });
});

Deno.test("when every candidate is cooling down the router tries them, soonest recovered first", async () => {
  const answer = answerText("openai");
  await withMocks(
    "openai",
    [
      (_, n) => n === 0 ? failing("openai", 429, { "retry-after-ms": "20000" }) : json(answer),
      (_, n) =>
        n === 0 ? failing("openai", 429, { "retry-after-ms": "10000" }) : failing("openai", 500),
    ],
    { config: { timeouts: { total_ms: 3000 } } },
    async ({ router }) => {
      const first = await send(router, "openai", 1);
      assert.equal(first.status, 429, "the last 429 passes through: waiting would not fit");
      assert.deepEqual(attemptsOf(first.record), [
        ["a", 429, "http_status"],
        ["b", 429, "http_status"],
      ]);
      const health = await getJson(`${router.url}/health/providers`);
      assert.deepEqual(health.providers.map((p: { state: string }) => p.state), [
        "cooling_down",
        "cooling_down",
      ]);
      const second = await send(router, "openai", 2);
      assert.equal(second.status, 200, "no refusal while all are cooling");
      assert.equal(second.body, answer);
      // b recovers first (10 s against 20 s), so it goes first although a has the higher priority.
      assert.deepEqual(attemptsOf(second.record), [["b", 500, "http_status"], ["a", 200, null]]);
      assert.deepEqual(second.record.skipped, []);
      assert.equal(second.record.provider, "a");
    },
  );
});

Deno.test("the last provider's 429 passes through unchanged when another was skipped for cooldown", async () => {
  const answer = answerText("openai");
  await withMocks(
    "openai",
    [
      () => failing("openai", 429, { "retry-after-ms": "20000" }),
      (_, n) => n === 0 ? json(answer) : failing("openai", 429, { "retry-after": "7" }),
    ],
    { config: { timeouts: { total_ms: 3000 } } },
    async ({ router }) => {
      const first = await send(router, "openai", 1);
      assert.deepEqual(attemptsOf(first.record), [["a", 429, "http_status"], ["b", 200, null]]);
      const response = await within(post(router.url, "openai"), "the response");
      const body = await within(response.text(), "the body");
      const [, record] = await within(router.sink.waitFor(2), "record 2");
      assert.deepEqual(record.skipped, [{ provider: "a", reason: "cooldown" }]);
      assert.deepEqual(attemptsOf(record), [["b", 429, "http_status"]]);
      // As without the cooldown: the last attempt got an HTTP answer, so the client gets it.
      assert.equal(response.status, 429, `got ${response.status} ${body}`);
      assert.equal(response.headers.get("retry-after"), "7");
      assert.equal(JSON.parse(body).error.message, "Mock upstream failure with status 429");
      assert.equal(record.provider, "b");
    },
  );
});

Deno.test("deadline-aware waiting: a lone provider's 429 Retry-After 1 is waited out", async () => {
  const answer = answerText("anthropic");
  await withMocks(
    "anthropic",
    [
      (_, n) => n === 0 ? failing("anthropic", 429, { "retry-after": "1" }) : json(answer),
    ],
    {},
    async ({ router, mocks: [a] }) => {
      const started = performance.now();
      const { status, body, record } = await send(router, "anthropic", 1);
      const elapsed = performance.now() - started;
      assert.equal(status, 200);
      assert.equal(body, answer);
      assert.ok(elapsed >= 950 && elapsed < 1800, `answered after ${elapsed} ms`);
      assert.deepEqual(attemptsOf(record), [["a", 429, "http_status"], ["a", 200, null]]);
      assert.equal(record.provider, "a");
      assert.equal(record.retries, 1);
      assert.equal(a.requests.length, 2);
    },
  );
});

Deno.test("deadline-aware waiting: after all fail, the one with a short Retry-After is waited for", async () => {
  const answer = answerText("openai");
  await withMocks(
    "openai",
    [
      (_, n) => n === 0 ? failing("openai", 429, { "retry-after-ms": "400" }) : json(answer),
      () => failing("openai", 503),
    ],
    {},
    async ({ router }) => {
      const started = performance.now();
      const { status, record } = await send(router, "openai", 1);
      const elapsed = performance.now() - started;
      assert.equal(status, 200);
      assert.ok(elapsed >= 380 && elapsed < 1400, `answered after ${elapsed} ms`);
      assert.deepEqual(attemptsOf(record), [
        ["a", 429, "http_status"],
        ["b", 503, "http_status"],
        ["a", 200, null],
      ]);
    },
  );
});

Deno.test("deadline-aware waiting: a Retry-After beyond total_ms passes the 429 through at once", async () => {
  await withMocks(
    "openai",
    [
      (_, n) =>
        n === 0 ? failing("openai", 429, { "retry-after": "1" }) : json(answerText("openai")),
    ],
    { config: { timeouts: { total_ms: 500 } } },
    async ({ router, mocks: [a] }) => {
      const started = performance.now();
      const response = await within(post(router.url, "openai"), "the response");
      const body = await response.json();
      const elapsed = performance.now() - started;
      assert.equal(response.status, 429);
      assert.equal(
        response.headers.get("retry-after"),
        "1",
        "the provider's Retry-After reaches the client",
      );
      assert.equal(body.error.message, "Mock upstream failure with status 429");
      assert.ok(elapsed < 300, `answered after ${elapsed} ms`);
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 429, "http_status"]]);
      assert.equal(record.status, 429);
      assert.equal(record.error?.type, "http_status");
      assert.equal(a.requests.length, 1);
    },
  );
});

Deno.test("deadline-aware waiting: an SDK on a retry of its own gets the 429 at once and waits by itself", async () => {
  await withMocks(
    "openai",
    [() => failing("openai", 429, { "retry-after-ms": "150" })],
    {},
    async ({ router, mocks: [a] }) => {
      const client = new OpenAI({ apiKey: "k", baseURL: `${router.url}/openai`, maxRetries: 2 });
      const create = client.chat.completions.create({
        model: MODEL.openai,
        messages: [{ role: "user", content: "Hi" }],
      });
      await assert.rejects(create, (error: unknown) => {
        assert.ok(error instanceof OpenAI.RateLimitError, String(error));
        return true;
      });
      // The first try is waited out once by the router; the SDK's two retries are not.
      const counts = a.requests.map((r) => r.headers.get("x-stainless-retry-count"));
      assert.deepEqual(counts, ["0", "0", "1", "2"]);
      const records = await router.sink.waitFor(3);
      assert.deepEqual(records.map((r) => r.attempts.length), [2, 1, 1]);
    },
  );
});

Deno.test("a client leaving during a deadline-aware wait ends the wait and is logged 499", async () => {
  await withMocks("openai", [() => failing("openai", 429, { "retry-after": "2" })], {}, async (
    { router, mocks: [a] },
  ) => {
    const controller = new AbortController();
    const response = post(router.url, "openai", { signal: controller.signal });
    while (a.requests.length === 0) await sleep(5);
    await sleep(100);
    const aborted = performance.now();
    controller.abort();
    await assert.rejects(response);
    const record = await onlyRecord(router);
    assert.ok(performance.now() - aborted < 300, "the record is written without waiting 2 s");
    assert.equal(record.status, 499);
    assert.equal(record.error?.type, "client_aborted");
    assert.deepEqual(attemptsOf(record), [["a", 429, "http_status"]]);
    assert.equal(a.requests.length, 1);
  });
});

// Same-provider retries.

const RETRIES = { per_provider: 2, backoff_ms: 10, max_backoff_ms: 20 };

Deno.test("retries.per_provider 2: 503, 503, 200 on the same provider", async () => {
  const answer = answerText("openai");
  await withMocks(
    "openai",
    [
      (_, n) => n < 2 ? failing("openai", 503) : json(answer),
      () => json(answerText("openai", "from b")),
    ],
    { config: { retries: RETRIES } },
    async ({ router, mocks: [a, b] }) => {
      const response = await within(post(router.url, "openai"), "the response");
      assert.equal(response.status, 200);
      assert.equal(await response.text(), answer);
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [
        ["a", 503, "http_status"],
        ["a", 503, "http_status"],
        ["a", 200, null],
      ]);
      assert.equal(record.provider, "a");
      assert.equal(record.retries, 2);
      assert.equal(a.requests.length, 3);
      assert.equal(b.requests.length, 0);
    },
  );
});

for (const status of [429, 400]) {
  Deno.test(`retries.per_provider does not retry a ${status}`, async () => {
    const answer = answerText("openai");
    await withMocks("openai", [() => failing("openai", status), () => json(answer)], {
      config: { retries: RETRIES },
    }, async ({ router, mocks: [a, b] }) => {
      const response = await within(post(router.url, "openai"), "the response");
      await response.body?.cancel();
      const record = await onlyRecord(router);
      assert.equal(a.requests.length, 1);
      if (status === 429) {
        assert.equal(response.status, 200);
        assert.deepEqual(attemptsOf(record), [["a", 429, "http_status"], ["b", 200, null]]);
        assert.equal(b.requests.length, 1);
      } else {
        assert.equal(response.status, 400, "a client error goes back as it is");
        assert.deepEqual(attemptsOf(record), [["a", 400, "http_status"]]);
        assert.equal(b.requests.length, 0);
      }
    });
  });
}

Deno.test("retries.per_provider retries a connection error, then falls back", async () => {
  const answer = answerText("openai");
  await withMocks("openai", [() => json(answer)], {
    config: { retries: RETRIES, cooldown: { failures: 10 } },
    urls: [`http://127.0.0.1:${closedPort()}`],
    extra: [{ priority: 2 }, { priority: 1 }],
  }, async ({ router }) => {
    const response = await within(post(router.url, "openai"), "the response");
    assert.equal(response.status, 200);
    assert.equal(await response.text(), answer);
    const record = await onlyRecord(router);
    // b (the closed port) has priority 1.
    assert.deepEqual(attemptsOf(record), [
      ["b", null, "connect_error"],
      ["b", null, "connect_error"],
      ["b", null, "connect_error"],
      ["a", 200, null],
    ]);
  });
});

Deno.test("retries.per_provider does not retry a timeout", async () => {
  const answer = answerText("openai");
  await withMocks("openai", [() => ({ hang: "headers" }), () => json(answer)], {
    config: { retries: RETRIES, timeouts: { first_byte_ms: 100 } },
  }, async ({ router, mocks: [a] }) => {
    const response = await within(post(router.url, "openai"), "the response");
    assert.equal(response.status, 200);
    await response.body?.cancel();
    const record = await onlyRecord(router);
    assert.deepEqual(attemptsOf(record), [["a", null, "timeout"], ["b", 200, null]]);
    assert.equal(a.requests.length, 1);
  });
});

Deno.test("retries.per_provider never retries after the commit point", async () => {
  const chunks = streamChunks("openai", 4);
  const sent = chunks.slice(0, 3);
  await withMocks(
    "openai",
    [
      () => ({ headers: { ...sseHeaders }, chunks: sent, reset: true }),
      () => ({ headers: { ...sseHeaders }, chunks }),
    ],
    { config: { retries: RETRIES } },
    async ({ router, mocks: [a, b] }) => {
      const response = await within(post(router.url, "openai", { stream: true }), "the response");
      assert.equal(response.status, 200);
      const body = await within(response.text(), "the body");
      assert.ok(body.startsWith(sent.join("")));
      const record = await onlyRecord(router);
      assert.deepEqual(attemptsOf(record), [["a", 200, "stream_interrupted"]]);
      assert.equal(record.error?.type, "stream_interrupted");
      assert.equal(a.requests.length, 1);
      assert.equal(b.requests.length, 0);
    },
  );
});

Deno.test("retries: the last 503 of a lone provider passes through after its retries", async () => {
  await withMocks("openai", [() => failing("openai", 503)], {
    config: { retries: RETRIES, cooldown: { failures: 10 } },
  }, async ({ router, mocks: [a] }) => {
    const response = await within(post(router.url, "openai"), "the response");
    assert.equal(response.status, 503);
    assert.equal((await response.json()).error.message, "Mock upstream failure with status 503");
    const record = await onlyRecord(router);
    assert.deepEqual(attemptsOf(record), [
      ["a", 503, "http_status"],
      ["a", 503, "http_status"],
      ["a", 503, "http_status"],
    ]);
    assert.equal(record.status, 503);
    assert.equal(a.requests.length, 3);
  });
});
