/**
 * The two roads to a provider: https through fetch (here trusting a test root), plain http
 * through the router's HTTP/1.1 client. Both must look the same to the router and to the client.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import type { RequestRecord } from "../src/record.ts";
import {
  openaiCompletion,
  openaiStreamChunks,
  sseHeaders,
  startMockUpstream,
} from "../tools/mock_upstream.ts";
import { provider, rawServer, startRouter } from "./harness.ts";
import { attemptsOf } from "./resilience_util.ts";

const TLS = new URL("./fixtures/tls/", import.meta.url);
const cert = await Deno.readTextFile(new URL("cert.pem", TLS));
const key = await Deno.readTextFile(new URL("key.pem", TLS));
/** The test root that signed `cert`; trusted only where a test says so. */
const ca = await Deno.readTextFile(new URL("ca.pem", TLS));

const answer = JSON.stringify(openaiCompletion("gpt-4o", "Hello over TLS"));
/** Stand-in bytes labelled with an encoding neither upstream client undoes. */
const ZSTD_BYTES = new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 250, 251, 252]);
const chunks = openaiStreamChunks("gpt-4o", { text: "Hello over TLS", events: 4 });

async function gzip(text: string): Promise<Uint8Array<ArrayBuffer>> {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** An OpenAI-shaped provider over TLS with the test certificate; it notes what reached it. */
function startTlsProvider(redirectTo?: string) {
  const seen: { path: string; authorization: string | null }[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert, key, onListen() {} },
    async (request) => {
      const body = await request.json();
      seen.push({
        path: new URL(request.url).pathname,
        authorization: request.headers.get("authorization"),
      });
      if (redirectTo !== undefined) {
        return new Response(null, { status: 307, headers: { location: redirectTo } });
      }
      if (body.stream) {
        return new Response(chunks.join(""), { headers: { ...sseHeaders } });
      }
      if (body.messages?.[0]?.content === "zstd") {
        return new Response(ZSTD_BYTES, {
          headers: { "content-type": "application/json", "content-encoding": "zstd" },
        });
      }
      if (body.messages?.[0]?.content === "gzip") {
        return new Response(await gzip(answer), {
          headers: { "content-type": "application/json", "content-encoding": "gzip" },
        });
      }
      return new Response(answer, { headers: { "content-type": "application/json" } });
    },
  );
  return {
    url: `https://127.0.0.1:${server.addr.port}`,
    seen,
    close: () => server.shutdown(),
  };
}

const chat = (content: string, stream = false) =>
  JSON.stringify({ model: "gpt-4o", stream, messages: [{ role: "user", content }] });

function post(url: string, body: string): Promise<Response> {
  return fetch(`${url}/openai/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
}

Deno.test("an https provider answers and streams byte for byte, with its key and usage logged", async () => {
  const tls = startTlsProvider();
  const router = startRouter({ providers: [provider("secure", "openai", tls.url)] }, {
    caCerts: [ca],
  });
  try {
    const plain = await post(router.url, chat("hi"));
    assert.equal(plain.status, 200);
    assert.equal(await plain.text(), answer);
    const streamed = await post(router.url, chat("hi", true));
    assert.equal(await streamed.text(), chunks.join(""));
    const client = new OpenAI({ apiKey: "k", baseURL: `${router.url}/openai`, maxRetries: 0 });
    const completion = await client.chat.completions.create({
      model: "gpt-4o",
      messages: [{ role: "user", content: "hi" }],
    });
    assert.equal(completion.choices[0].message.content, "Hello over TLS");
    const records: RequestRecord[] = await router.sink.waitFor(3);
    assert.deepEqual(records.map((r) => [r.provider, r.status, r.error]), [
      ["secure", 200, null],
      ["secure", 200, null],
      ["secure", 200, null],
    ]);
    assert.equal(records[1].stream_complete, true);
    // The stream carries no usage unless asked for; the two plain answers do.
    assert.equal(records[0].usage?.total_tokens, JSON.parse(answer).usage.total_tokens);
    assert.equal(records[2].usage?.total_tokens, JSON.parse(answer).usage.total_tokens);
    assert.deepEqual(tls.seen.map((s) => [s.path, s.authorization]), [
      ["/v1/chat/completions", "Bearer sk-secure-secret"],
      ["/v1/chat/completions", "Bearer sk-secure-secret"],
      ["/v1/chat/completions", "Bearer sk-secure-secret"],
    ]);
  } finally {
    await router.close();
    await tls.close();
  }
});

Deno.test("a gzip answer from an https provider reaches the client decoded, without content-encoding", async () => {
  const tls = startTlsProvider();
  const router = startRouter({ providers: [provider("secure", "openai", tls.url)] }, {
    caCerts: [ca],
  });
  try {
    const response = await post(router.url, chat("gzip"));
    assert.equal(response.headers.get("content-encoding"), null);
    assert.equal(await response.text(), answer);
    const [record] = await router.sink.waitFor(1);
    assert.deepEqual(record.response, JSON.parse(answer));
  } finally {
    await router.close();
    await tls.close();
  }
});

Deno.test("an https provider whose certificate no trusted root signed is a connection error: the router falls back", async () => {
  const tls = startTlsProvider();
  const plain = startMockUpstream();
  const router = startRouter({
    providers: [
      provider("untrusted", "openai", tls.url),
      provider("plain", "openai", plain.url, { priority: 2 }),
    ],
  });
  try {
    const response = await post(router.url, chat("hi"));
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("x-llm-router-provider"), "plain");
    await response.body?.cancel();
    const [record] = await router.sink.waitFor(1);
    assert.deepEqual(attemptsOf(record), [
      ["untrusted", null, "connect_error"],
      ["plain", 200, null],
    ]);
    assert.equal(tls.seen.length, 0, "nothing was sent over an unverified connection");
  } finally {
    await router.close();
    await plain.close();
    await tls.close();
  }
});

Deno.test("a request aborted on a pooled http connection is not sent to the provider again", async () => {
  let count = 0;
  const mock = startMockUpstream(() => (++count === 1 ? {} : { hang: "headers" }));
  const router = startRouter({ providers: [provider("p", "openai", mock.url)] });
  try {
    const first = await post(router.url, chat("hi"));
    assert.equal(first.status, 200);
    await first.body?.cancel();
    const leaving = new AbortController();
    const second = fetch(`${router.url}/openai/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: chat("hi"),
      signal: leaving.signal,
    }).catch((error: Error) => error);
    while (mock.requests.length < 2) await new Promise((resolve) => setTimeout(resolve, 5));
    leaving.abort();
    assert.equal((await second as Error).name, "AbortError");
    await mock.whenAborted();
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(mock.requests.length, 2, "the aborted request went out once");
    const records: RequestRecord[] = await router.sink.waitFor(2);
    assert.equal(records[1].status, 499);
  } finally {
    await router.close();
    await mock.close();
  }
});

Deno.test("a reason phrase with control bytes still reaches the client as the provider's answer", async () => {
  const body = JSON.stringify(openaiCompletion("gpt-4o", "odd phrase"));
  const odd = rawServer(
    `HTTP/1.1 200 O\x01K\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n` +
      "connection: close\r\n\r\n",
    body,
  );
  const router = startRouter({ providers: [provider("odd", "openai", odd.url)] });
  try {
    const response = await post(router.url, chat("hi"));
    assert.equal(response.status, 200);
    assert.equal(await response.text(), body);
    const [record] = await router.sink.waitFor(1);
    assert.equal(record.error, null);
  } finally {
    await router.close();
    odd.close();
  }
});

Deno.test("a 101 upgrade instead of an answer fails the attempt at once: the router falls back", async () => {
  const upgrade = rawServer(
    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
  );
  const good = startMockUpstream();
  const router = startRouter({
    providers: [
      provider("upgrade", "openai", upgrade.url),
      provider("good", "openai", good.url, { priority: 2 }),
    ],
    timeouts: { first_byte_ms: 5000 },
  });
  try {
    const started = performance.now();
    const response = await post(router.url, chat("hi"));
    const elapsed = performance.now() - started;
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("x-llm-router-provider"), "good");
    await response.body?.cancel();
    assert.ok(elapsed < 2000, `fell back after ${elapsed} ms`);
    const [record] = await router.sink.waitFor(1);
    assert.deepEqual(record.attempts.map((a) => [a.provider, a.error]), [
      ["upgrade", "connect_error"],
      ["good", null],
    ]);
  } finally {
    await router.close();
    await good.close();
    upgrade.close();
  }
});

Deno.test("an https provider's redirect is its answer: the router neither follows it nor sends the key on", async () => {
  const elsewhere = startMockUpstream();
  const tls = startTlsProvider(`${elsewhere.url}/v1/chat/completions`);
  const router = startRouter({ providers: [provider("secure", "openai", tls.url)] }, {
    caCerts: [ca],
  });
  try {
    const response = await fetch(`${router.url}/openai/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: chat("hi"),
      redirect: "manual",
    });
    assert.equal(response.status, 307);
    assert.equal(response.headers.get("location"), `${elsewhere.url}/v1/chat/completions`);
    await response.body?.cancel();
    assert.equal(tls.seen.length, 1);
    assert.equal(elsewhere.requests.length, 0, "nothing went to the redirect's target");
  } finally {
    await router.close();
    await tls.close();
    await elsewhere.close();
  }
});

Deno.test("an encoding the router cannot undo passes through with its header, over http and https", async () => {
  const tls = startTlsProvider();
  const plain = startMockUpstream(() => ({
    body: ZSTD_BYTES,
    headers: { "content-type": "application/json", "content-encoding": "zstd" },
  }));
  for (const url of [tls.url, plain.url]) {
    const router = startRouter({ providers: [provider("p", "openai", url)] }, { caCerts: [ca] });
    try {
      const response = await post(router.url, chat("zstd"));
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("content-encoding"), "zstd", url);
      assert.deepEqual(new Uint8Array(await response.arrayBuffer()), ZSTD_BYTES);
    } finally {
      await router.close();
    }
  }
  await plain.close();
  await tls.close();
});
