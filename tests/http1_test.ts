/**
 * The HTTP/1.1 client plain-http providers are reached through, against a TCP server that writes
 * exactly the bytes each test gives it: framing, interim answers, pooling and failures.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { type BodyReader, Http1Pool } from "../src/http1.ts";
import { openaiStreamChunks } from "../tools/mock_upstream.ts";
import { concat, provider, startRouter, within } from "./harness.ts";

interface Exchange {
  /** Which connection (0-based, in order of arrival) carried the request. */
  connection: number;
  head: string;
  body: Uint8Array;
}

interface Answer {
  /** Written one after another, each in a write of its own, a little apart. */
  parts: (string | Uint8Array)[];
  /** Close the connection after the answer. */
  close?: boolean;
  /** Wait this long before answering. */
  delayMs?: number;
}

const encoder = new TextEncoder();

/** A server that answers request i with `script(exchange, i)`, and notes every request. */
function scriptedServer(script: (exchange: Exchange, index: number) => Answer) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const exchanges: Exchange[] = [];
  const open = new Set<Deno.Conn>();
  let connections = 0;
  (async () => {
    for await (const conn of listener) {
      const connection = connections++;
      open.add(conn);
      serveConnection(conn, connection).catch(() => {}).finally(() => {
        open.delete(conn);
        try {
          conn.close();
        } catch {
          // Closed already.
        }
      });
    }
  })().catch(() => {});
  async function serveConnection(conn: Deno.Conn, connection: number) {
    let buffered = new Uint8Array(0);
    const more = async () => {
      const chunk = new Uint8Array(64 * 1024);
      const n = await conn.read(chunk);
      if (n === null) return false;
      const joined = new Uint8Array(buffered.length + n);
      joined.set(buffered);
      joined.set(chunk.subarray(0, n), buffered.length);
      buffered = joined;
      return true;
    };
    for (;;) {
      let end: number;
      while ((end = new TextDecoder().decode(buffered).indexOf("\r\n\r\n")) === -1) {
        if (!(await more())) return;
      }
      const head = new TextDecoder().decode(buffered.subarray(0, end));
      const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
      while (buffered.length < end + 4 + length) {
        if (!(await more())) return;
      }
      const exchange = {
        connection,
        head,
        body: buffered.slice(end + 4, end + 4 + length),
      };
      buffered = buffered.slice(end + 4 + length);
      exchanges.push(exchange);
      const answer = script(exchange, exchanges.length - 1);
      if (answer.delayMs) await new Promise((resolve) => setTimeout(resolve, answer.delayMs));
      for (const [i, part] of answer.parts.entries()) {
        if (i > 0) await new Promise((resolve) => setTimeout(resolve, 2));
        await conn.write(typeof part === "string" ? encoder.encode(part) : part);
      }
      if (answer.close) return;
    }
  }
  const { port } = listener.addr as Deno.NetAddr;
  return {
    url: new URL(`http://127.0.0.1:${port}/v1/chat/completions`),
    exchanges,
    get connections() {
      return connections;
    },
    close() {
      listener.close();
      for (const conn of open) conn.close();
    },
  };
}

/** One POST through `pool`; the answer's body read whole, piece by piece. */
async function send(
  pool: Http1Pool,
  url: URL,
  options: { headers?: Record<string, string>; body?: Uint8Array; signal?: AbortSignal } = {},
) {
  const answer = await pool.send(
    url,
    options.headers ?? { "content-type": "application/json" },
    options.body ?? encoder.encode("{}"),
    options.signal ?? new AbortController().signal,
  );
  const pieces: Uint8Array<ArrayBuffer>[] = [];
  for (let read = await answer.body?.read(); read && !read.done; read = await answer.body!.read()) {
    pieces.push(read.value);
  }
  const text = new TextDecoder().decode(await new Blob(pieces).arrayBuffer());
  return { ...answer, pieces, text };
}

/** Splits `text` into one-byte parts, so every parser state meets a read boundary. */
function bytewise(text: string): string[] {
  return [...text];
}

async function withServer(
  script: (exchange: Exchange, index: number) => Answer,
  test: (server: ReturnType<typeof scriptedServer>, pool: Http1Pool) => Promise<void>,
) {
  const server = scriptedServer(script);
  const pool = new Http1Pool();
  try {
    await test(server, pool);
  } finally {
    pool.close();
    server.close();
  }
}

Deno.test("a chunked answer with extensions and trailers, split at every byte, arrives whole and leaves the connection reusable", async () => {
  const wire = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n" +
    "5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n";
  await withServer(() => ({ parts: bytewise(wire) }), async (server, pool) => {
    const first = await send(pool, server.url);
    assert.equal(first.status, 200);
    assert.equal(first.text, "hello, world");
    assert.equal(first.headers.get("content-type"), "text/plain");
    const second = await send(pool, server.url);
    assert.equal(second.text, "hello, world");
    assert.equal(server.connections, 1, "both requests went over one connection");
  });
});

Deno.test("chunks that arrive together are handed over as one piece", async () => {
  const events = openaiStreamChunks("gpt-4o", { text: "one two three four five", events: 8 });
  const body = events.map((event) => `${event.length.toString(16)}\r\n${event}\r\n`).join("") +
    "0\r\n\r\n";
  const head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" +
    "transfer-encoding: chunked\r\n\r\n";
  await withServer(() => ({ parts: [head + body] }), async (server, pool) => {
    const answer = await send(pool, server.url);
    assert.equal(answer.text, events.join(""));
    assert.equal(answer.pieces.length, 1, `${answer.pieces.length} pieces`);
  });
});

Deno.test("a large answer is read in growing pieces, not in the small ones a waiting stream keeps", async () => {
  const body = "z".repeat(300_000);
  await withServer(
    () => ({ parts: [`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n${body}`] }),
    async (server, pool) => {
      const answer = await send(pool, server.url);
      assert.equal(answer.text, body);
      // In 4 KiB reads this would take 74 pieces.
      assert.ok(answer.pieces.length < 20, `${answer.pieces.length} pieces`);
      // Back in the pool the connection's buffer is small again.
      const again = await send(pool, server.url);
      assert.equal(server.connections, 1);
      assert.ok(again.pieces[0].length <= 4096, `first piece ${again.pieces[0].length} bytes`);
    },
  );
});

Deno.test("a stream of small events keeps its small buffer when each read leaves a byte behind", async () => {
  // Every write ends inside a chunk's CRLF, so a byte stays unread after each: the buffer must
  // not take the small room left at its end for a read that filled it.
  const data = "d".repeat(100);
  const small = Array.from({ length: 100 }, () => `64\r\n${data}\r`).join("\n") + "\n";
  const big = "b".repeat(6000);
  const parts = [
    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
    ...small.split(/(?<=\r)(?=\n64)/),
    `${big.length.toString(16)}\r\n${big}\r\n0\r\n\r\n`,
  ];
  await withServer(() => ({ parts }), async (server, pool) => {
    const answer = await send(pool, server.url);
    assert.equal(answer.text, data.repeat(100) + big);
    const largest = Math.max(...answer.pieces.map((piece) => piece.length));
    assert.ok(largest <= 4096, `a piece of ${largest} bytes`);
  });
});

Deno.test("a content-length answer split across writes arrives whole; the request carries host and length", async () => {
  const body = JSON.stringify({ text: "x".repeat(40_000) });
  await withServer(
    () => ({
      parts: [
        `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n${body.slice(0, 10)}`,
        body.slice(10, 30_000),
        body.slice(30_000),
      ],
    }),
    async (server, pool) => {
      const answer = await send(pool, server.url, { headers: { "x-test": "1" } });
      assert.equal(answer.text, body);
      const [exchange] = server.exchanges;
      assert.match(exchange.head, /^POST \/v1\/chat\/completions HTTP\/1\.1\r\n/);
      assert.match(exchange.head, new RegExp(`\r\nhost: ${server.url.host}\r\n`));
      assert.match(exchange.head, /\r\ncontent-length: 2(\r\n|$)/);
      assert.match(exchange.head, /\r\nx-test: 1(\r\n|$)/);
      await send(pool, server.url);
      assert.equal(server.connections, 1);
    },
  );
});

Deno.test("a large request body arrives intact", async () => {
  const big = encoder.encode(JSON.stringify({ padding: "y".repeat(300_000) }));
  await withServer(
    () => ({ parts: ["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"] }),
    async (server, pool) => {
      assert.equal((await send(pool, server.url, { body: big })).text, "ok");
      assert.deepEqual(server.exchanges[0].body, big);
    },
  );
});

Deno.test("an answer without framing runs to the connection's end", async () => {
  await withServer(
    () => ({
      parts: ["HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall ", "of it"],
      close: true,
    }),
    async (server, pool) => {
      assert.equal((await send(pool, server.url)).text, "all of it");
      assert.equal((await send(pool, server.url)).text, "all of it");
      assert.deepEqual(server.exchanges.map((exchange) => exchange.connection), [0, 1]);
    },
  );
});

Deno.test("connection: close, or bytes past the answer's end, keep a connection out of the pool", async () => {
  const answers = [
    "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
    // HTTP/1.0 has no chunked framing: whatever it says of keep-alive, this is not reused.
    "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n" +
    "2\r\nok\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
  ];
  await withServer((_, i) => ({ parts: [answers[i]] }), async (server, pool) => {
    for (let i = 0; i < answers.length; i++) {
      assert.equal((await send(pool, server.url)).text, "ok");
    }
    assert.deepEqual(server.exchanges.map((exchange) => exchange.connection), [0, 1, 2, 3, 3]);
  });
});

Deno.test("interim 100 and 103 answers are passed over; a 204 without framing leaves the connection reusable", async () => {
  const answers = [
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" +
    "HTTP/1.1 201 Created\r\nx-final: yes\r\ncontent-length: 4\r\n\r\ndone",
    "HTTP/1.1 204 No Content\r\n\r\n",
    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
  ];
  await withServer((_, i) => ({ parts: [answers[i]] }), async (server, pool) => {
    const first = await send(pool, server.url);
    assert.equal(first.status, 201);
    assert.equal(first.text, "done");
    assert.equal(first.headers.get("x-final"), "yes");
    assert.equal(first.headers.get("link"), null);
    const second = await send(pool, server.url);
    assert.equal(second.status, 204);
    assert.equal(second.body, null);
    assert.equal((await send(pool, server.url)).text, "ok");
    assert.equal(server.connections, 1);
  });
});

Deno.test("a pooled connection the server dropped while idle leaves the pool: the next request goes out once, on a new one", async () => {
  // The server closes each connection after its answer without saying so.
  await withServer(
    () => ({ parts: ["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], close: true }),
    async (server, pool) => {
      assert.equal((await send(pool, server.url)).text, "ok");
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal((await send(pool, server.url)).text, "ok");
      assert.deepEqual(server.exchanges.map((exchange) => exchange.connection), [0, 1]);
    },
  );
});

Deno.test("a keep-alive timeout shorter than the pool's own is honoured", async () => {
  await withServer(
    () => ({ parts: ["HTTP/1.1 200 OK\r\nkeep-alive: timeout=1\r\ncontent-length: 2\r\n\r\nok"] }),
    async (server, pool) => {
      await send(pool, server.url);
      await send(pool, server.url);
      assert.equal(server.connections, 2);
    },
  );
});

Deno.test("field values keep their Latin-1 bytes, and a folded line continues its field", async () => {
  const head = concat([
    "HTTP/1.1 200 OK\r\nx-name: caf",
    new Uint8Array([0xe9]),
    "\r\nx-folded: one\r\n  two\r\ncontent-length: 0\r\n\r\n",
  ]);
  await withServer(() => ({ parts: [head] }), async (server, pool) => {
    const answer = await send(pool, server.url);
    assert.equal(answer.headers.get("x-name"), "caf\u00e9");
    assert.equal(answer.headers.get("x-folded"), "one two");
  });
});

Deno.test("a request header that would break the head is refused before anything is sent", async () => {
  await withServer(
    () => ({ parts: ["HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"] }),
    async (server, pool) => {
      await assert.rejects(
        send(pool, server.url, { headers: { "x-evil": "a\r\nx-injected: b" } }),
        TypeError,
      );
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(server.exchanges.length, 0);
    },
  );
});

for (
  const [what, wire, message] of [
    [
      "a head over 16 KiB",
      `HTTP/1.1 200 OK\r\nx-big: ${"a".repeat(17_000)}\r\n\r\n`,
      /head exceeds/,
    ],
    [
      "two different lengths",
      "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
      /content-length/,
    ],
    ["a status line that is not HTTP/1.x", "ICY 200 OK\r\n\r\n", /not HTTP/],
    ["a status under 100", "HTTP/1.1 099 Odd\r\ncontent-length: 0\r\n\r\n", /status 99/],
    [
      "a field line with a space before its colon",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\ncontent-length: 0\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
      /malformed header line/,
    ],
    ["no answer at all", "", /without an answer/],
  ]
) {
  Deno.test(`${what} fails the request`, async () => {
    await withServer(() => ({ parts: [wire as string], close: true }), async (server, pool) => {
      await assert.rejects(send(pool, server.url), message as RegExp);
    });
  });
}

Deno.test("a chunk-size line over 16 KiB errors the body, however it arrives", async () => {
  const long = new Uint8Array([0x32, 0x3b, ...new Uint8Array(30_000).fill(0xe9), 0x0d, 0x0a]);
  await withServer(
    () => ({
      parts: [
        // A large chunk first grows the read buffer, so the long line can arrive in one read.
        `HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n186a0\r\n${"x".repeat(100_000)}\r\n`,
        concat([long, "hi\r\n0\r\n\r\n"]),
      ],
    }),
    async (server, pool) => {
      await assert.rejects(send(pool, server.url), /line longer than 16384 bytes/);
    },
  );
});

Deno.test("a chunked answer whose chunk runs past its size errors the body", async () => {
  await withServer(
    () => ({
      parts: ["HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"],
    }),
    async (server, pool) => {
      await assert.rejects(send(pool, server.url), /longer than its size/);
    },
  );
});

Deno.test("a body cut short errors the stream, and the connection is not reused", async () => {
  const answers = [
    { parts: ["HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"], close: true },
    { parts: ["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"] },
  ];
  await withServer((_, i) => answers[i], async (server, pool) => {
    await assert.rejects(send(pool, server.url), /closed before the body ended/);
    assert.equal((await send(pool, server.url)).text, "ok");
    assert.equal(server.connections, 2);
  });
});

Deno.test("a body ended while a read waits: an abort fails the read with the signal's reason, a cancel ends it; later reads see the same, and the connection is not reused", async () => {
  const ways = [
    {
      end: (leaving: AbortController) => leaving.abort(new Error("client left")),
      check: (read: Promise<unknown>, why: string) => assert.rejects(read, /client left/, why),
    },
    {
      end: (_: AbortController, reader: BodyReader) => reader.cancel(),
      check: async (read: Promise<unknown>, why: string) =>
        assert.deepEqual(await read, { done: true, value: undefined }, why),
    },
  ];
  for (const { end, check } of ways) {
    await withServer(
      (_, i) => ({
        parts: [
          i === 0
            ? "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n"
            : "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ],
      }),
      async (server, pool) => {
        const leaving = new AbortController();
        const answer = await pool.send(server.url, {}, encoder.encode("{}"), leaving.signal);
        const reader = answer.body!;
        assert.equal(new TextDecoder().decode((await reader.read()).value), "hi");
        const pending = reader.read();
        await end(leaving, reader);
        await check(pending, "the waiting read");
        await check(reader.read(), "a later read");
        assert.equal((await send(pool, server.url)).text, "ok");
        assert.equal(server.connections, 2, "the ended connection was not reused");
      },
    );
  }
});

const ok = { parts: ["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"] };

Deno.test("a pooled connection closed as its request went out: the request is sent once more, on a new connection, however many are pooled", async () => {
  await withServer((_, i) => (i < 5 ? ok : { parts: [], close: true }), async (server, pool) => {
    // Five requests at once leave five connections in the pool.
    await Promise.all(Array.from({ length: 5 }, () => send(pool, server.url)));
    assert.equal(server.connections, 5);
    await assert.rejects(send(pool, server.url), /without an answer/);
    const resends = server.exchanges.slice(5).map((exchange) => exchange.connection);
    assert.equal(resends.length, 2, "the dropped request was sent twice in all");
    assert.equal(resends[1], 5, "the second time on a new connection");
  });
});

Deno.test("a request a server took, worked on and then dropped is not sent again", async () => {
  const script = (_: Exchange, i: number): Answer =>
    i === 0 ? ok : { parts: [new Uint8Array(0)], close: true, delayMs: 300 };
  await withServer(script, async (server, pool) => {
    await send(pool, server.url);
    await assert.rejects(send(pool, server.url), /without an answer/);
    assert.equal(server.exchanges.length, 2);
  });
});

Deno.test("a 408 as a pooled connection's request goes out is the server closing it: the request goes out again on a new one", async () => {
  const script = (exchange: Exchange): Answer =>
    exchange.connection === 0 && exchange.head.includes("second")
      ? { parts: ["HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\r\n"], close: true }
      : ok;
  await withServer(script, async (server, pool) => {
    await send(pool, server.url);
    const second = await send(pool, server.url, { headers: { "x-which": "second" } });
    assert.equal(second.status, 200);
    assert.deepEqual(server.exchanges.map((exchange) => exchange.connection), [0, 0, 1]);
  });
});

Deno.test("a request is never sent again once any byte of an answer came", async () => {
  const answers = [
    { parts: ["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"] },
    { parts: ["HTTP/1.1 200 OK\r\ncontent-"], close: true },
  ];
  await withServer((_, i) => answers[i] ?? answers[0], async (server, pool) => {
    await send(pool, server.url);
    await assert.rejects(send(pool, server.url), /inside the answer's head/);
    assert.equal(server.exchanges.length, 2);
  });
});

Deno.test("bytes a server sends on an idle pooled connection end it: the next request gets its own answer", async () => {
  await withServer(
    (exchange) => ({
      parts: exchange.connection === 0
        ? [
          "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst",
          "HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n",
        ]
        : ["HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond"],
    }),
    async (server, pool) => {
      assert.equal((await send(pool, server.url)).text, "first");
      await new Promise((resolve) => setTimeout(resolve, 50));
      const next = await send(pool, server.url);
      assert.equal(next.status, 200);
      assert.equal(next.text, "second");
      // The idle connection was ended by what it was sent: the request went out once, on a new one.
      assert.deepEqual(server.exchanges.map((exchange) => exchange.connection), [0, 1]);
    },
  );
});

/** A server that answers as soon as a request's head is in and never reads its body. */
function earlyAnswerServer(close: boolean) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      (async () => {
        let seen = "";
        const chunk = new Uint8Array(16 * 1024);
        while (!seen.includes("\r\n\r\n")) {
          const n = await conn.read(chunk);
          if (n === null) return;
          seen += new TextDecoder().decode(chunk.subarray(0, n));
        }
        await conn.write(encoder.encode(
          "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\r\ntoo large",
        ));
        if (close) conn.close();
      })().catch(() => {});
    }
  })().catch(() => {});
  const { port } = listener.addr as Deno.NetAddr;
  return {
    url: new URL(`http://127.0.0.1:${port}/v1/chat/completions`),
    get connections() {
      return conns.length;
    },
    close() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch {
          // Closed by the server already.
        }
      }
    },
  };
}

for (const close of [true, false]) {
  Deno.test(`an answer before the whole body went out reaches the caller (server ${close ? "closes" : "stops reading"})`, async () => {
    const server = earlyAnswerServer(close);
    const pool = new Http1Pool();
    try {
      const big = new Uint8Array(24 * 1024 * 1024).fill(0x61);
      const answer = await within(send(pool, server.url, { body: big }), "the early answer");
      assert.equal(answer.status, 413);
      assert.equal(answer.text, "too large");
      // The connection is left mid-request: the next request needs a connection of its own.
      const next = await within(send(pool, server.url), "the next answer");
      assert.equal(next.status, 413);
      assert.equal(server.connections, 2);
    } finally {
      pool.close();
      server.close();
    }
  });
}

Deno.test("a stream in chunks split at every byte reaches the OpenAI SDK through the router, event for event", async () => {
  const events = openaiStreamChunks("gpt-4o", { text: "split at every byte", events: 3 });
  const body = events.map((event) => `${event.length.toString(16)}\r\n${event}\r\n`).join("") +
    "0\r\n\r\n";
  const server = scriptedServer(() => ({
    parts: [
      "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
      ...bytewise(body),
    ],
  }));
  const router = startRouter({ providers: [provider("raw", "openai", server.url.origin)] });
  try {
    const client = new OpenAI({ baseURL: `${router.url}/openai`, apiKey: "unused" });
    const stream = await client.chat.completions.create({
      model: "gpt-4o",
      messages: [{ role: "user", content: "hi" }],
      stream: true,
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    assert.equal(text, "split at every byte");
    const [record] = await router.sink.waitFor(1);
    assert.equal(record.status, 200);
    assert.equal(record.error, null);
  } finally {
    await router.close();
    server.close();
  }
});
