/**
 * The router's life around a request: a client that leaves (the upstream sees the abort within
 * 100 ms), a client that reads slowly (backpressure reaches the upstream), shutdown with a grace
 * period (in-process `startServer`, and a second signal to `main.ts`), and config reload by
 * SIGHUP and --watch-config while a stream is in flight.
 */
import assert from "node:assert/strict";
import { parseConfig } from "../src/config.ts";
import { startServer } from "../src/server.ts";
import { defaultReply, type MockReply, startMockUpstream } from "../tools/mock_upstream.ts";
import { provider } from "./harness.ts";
import {
  answerText,
  type Api,
  APIS,
  attemptsOf,
  onlyRecord,
  post,
  sleep,
  splitAtFirstOutput,
  sseHeaders,
  streamChunks,
  until,
  utf8,
  within,
  withMocks,
} from "./resilience_util.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

/** The brief's bound: from the client's abort to the upstream seeing its request end. */
const ABORT_BOUND_MS = 100;

// Client disconnect.

interface AbortCase {
  name: string;
  stream: boolean;
  reply: (api: Api) => MockReply;
  /** Bytes of the body the client reads before it leaves (0: leaves before headers). */
  readFirst: number;
  attempt: (api: Api) => [string, number | null, string];
}

const ABORT_CASES: AbortCase[] = [
  {
    name: "non-streaming, before headers",
    stream: false,
    reply: () => ({ hang: "headers" }),
    readFirst: 0,
    attempt: () => ["a", null, "client_aborted"],
  },
  {
    name: "non-streaming, while the router reads the body",
    stream: false,
    reply: (api) => ({
      headers: { "content-type": "application/json" },
      chunks: answerText(api).match(/.{1,40}/gs)!,
      chunkDelayMs: 40,
    }),
    readFirst: 0,
    attempt: () => ["a", 200, "client_aborted"],
  },
  {
    name: "streaming, before the first output event",
    stream: true,
    reply: (api) => ({
      headers: { ...sseHeaders },
      chunks: splitAtFirstOutput(api, streamChunks(api))[0],
      hang: "body",
    }),
    readFirst: 0,
    attempt: () => ["a", 200, "client_aborted"],
  },
  {
    name: "streaming, mid-stream",
    stream: true,
    reply: (api) => ({
      headers: { ...sseHeaders },
      chunks: streamChunks(api, 60),
      chunkDelayMs: 30,
    }),
    readFirst: 1,
    attempt: () => ["a", 200, "client_aborted"],
  },
];

for (const api of APIS) {
  for (const c of ABORT_CASES) {
    Deno.test(`${api} ${c.name}: a client leaving aborts the upstream within ${ABORT_BOUND_MS} ms`, async () => {
      await withMocks(api, [() => c.reply(api), defaultReply], {
        config: { timeouts: { first_byte_ms: 5000 } },
      }, async ({ router, mocks: [a, b] }) => {
        const controller = new AbortController();
        const pending = post(router.url, api, { stream: c.stream, signal: controller.signal });
        // Settled either way at once, so an early rejection is never unhandled.
        const outcome = pending.then(() => null, (error: Error) => error);
        let received = 0;
        if (c.readFirst === 0) {
          while (a.requests.length === 0) await sleep(5);
          await sleep(50);
        } else {
          const response = await pending;
          assert.equal(response.status, 200);
          const reader = response.body!.getReader();
          while (received < c.readFirst) received += (await reader.read()).value?.length ?? 0;
        }
        const aborted = performance.now();
        controller.abort();
        await within(a.whenAborted(), "the upstream to see the abort", 2000);
        const took = performance.now() - aborted;
        console.log(`  ${api} ${c.name}: upstream saw the abort after ${took.toFixed(1)} ms`);
        assert.ok(took < ABORT_BOUND_MS, `the upstream saw the abort after ${took} ms`);
        if (c.readFirst === 0) assert.equal((await outcome)?.name, "AbortError");
        const record = await onlyRecord(router);
        assert.equal(record.status, 499);
        assert.equal(record.error?.type, "client_aborted");
        assert.deepEqual(attemptsOf(record), [c.attempt(api)]);
        if (c.readFirst > 0) {
          assert.ok(
            record.bytes_forwarded >= received,
            `bytes_forwarded ${record.bytes_forwarded}`,
          );
          assert.ok(record.bytes_forwarded > 0);
        }
        assert.equal(b.requests.length, 0, "no fallback for a client that has left");
      });
    });
  }
}

// Backpressure.

/** An upstream that makes SSE events only as fast as they are read, counting the bytes made. */
function startGenerator(totalBytes: number) {
  const content = "x".repeat(16 * 1024);
  const event = utf8(
    `data: ${
      JSON.stringify({
        id: "chatcmpl-big",
        object: "chat.completion.chunk",
        created: 1,
        model: "gpt-4o",
        choices: [{ index: 0, delta: { content }, finish_reason: null }],
      })
    }\n\n`,
  );
  const state = { generated: 0, cancelled: false };
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (request) => {
    await request.arrayBuffer();
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (state.generated >= totalBytes) {
          controller.enqueue(utf8("data: [DONE]\n\n"));
          controller.close();
          return;
        }
        state.generated += event.length;
        controller.enqueue(event);
      },
      cancel() {
        state.cancelled = true;
      },
    }, { highWaterMark: 0 });
    return new Response(body, { headers: { ...sseHeaders } });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    state,
    close: () => server.shutdown(),
  };
}

const MIB = 1024 * 1024;

/** Reads at least `bytes` from `reader`; returns how many it read. */
async function readAtLeast(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  bytes: number,
): Promise<{ read: number; last: Uint8Array }> {
  let read = 0;
  let last: Uint8Array = new Uint8Array();
  while (read < bytes) {
    const { done, value } = await reader.read();
    if (done) break;
    read += value.length;
    last = value;
  }
  return { read, last };
}

Deno.test("a slow reader of a 50 MB stream: the upstream makes no more than consumed + 16 MB", async () => {
  const upstream = startGenerator(50 * MIB);
  await withMocks("openai", [], { urls: [upstream.url] }, async ({ router }) => {
    const response = await post(router.url, "openai", { stream: true });
    assert.equal(response.status, 200);
    const reader = response.body!.getReader();
    let consumed = 0;
    for (let pause = 1; pause <= 4; pause++) {
      consumed += (await readAtLeast(reader, MIB)).read;
      await sleep(400);
      const generated = upstream.state.generated;
      console.log(
        `  pause ${pause}: consumed ${(consumed / MIB).toFixed(1)} MB, ` +
          `generated ${(generated / MIB).toFixed(1)} MB`,
      );
      assert.ok(generated < consumed + 16 * MIB, `generated ${generated}, consumed ${consumed}`);
    }
    await reader.cancel();
    const record = await onlyRecord(router);
    assert.equal(record.error?.type, "client_aborted");
    await until(() => upstream.state.cancelled, "the upstream to see the cancel");
  });
  await upstream.close();
});

Deno.test("a reader pausing longer than idle_ms does not end a healthy upstream stream", async () => {
  // The upstream is never idle: it makes events as fast as they are read. Only the client waits.
  const upstream = startGenerator(50 * MIB);
  await withMocks("openai", [], {
    urls: [upstream.url],
    config: { timeouts: { idle_ms: 300 } },
  }, async ({ router }) => {
    const response = await post(router.url, "openai", { stream: true });
    assert.equal(response.status, 200);
    const reader = response.body!.getReader();
    await readAtLeast(reader, MIB);
    await sleep(700);
    const after = await readAtLeast(reader, 4 * MIB);
    const tail = new TextDecoder().decode(after.last);
    await reader.cancel();
    assert.ok(!tail.includes('"error"'), `the stream went on, but ended with ${tail.slice(-160)}`);
    assert.equal(after.read >= 4 * MIB, true, "the stream went on after the pause");
    const record = await onlyRecord(router);
    assert.equal(record.error?.type, "client_aborted", "the client, not a timeout, ended it");
    const health = await (await fetch(`${router.url}/health/providers`)).json();
    assert.equal(health.providers[0].last_error, null, "the provider is not blamed");
  });
  await upstream.close();
});

// Processes: main.ts with piped output read as it comes.

const root = new URL("..", import.meta.url).pathname;
const RUN_FLAGS = ["run", "--allow-net", "--allow-env", "--allow-read", "--allow-write"];

/** Lines of a child's output as they arrive, so a test can wait for one. */
class Lines {
  lines: string[] = [];
  done: Promise<void>;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      let carry = "";
      for await (const text of stream.pipeThrough(new TextDecoderStream())) {
        const parts = (carry + text).split("\n");
        carry = parts.pop()!;
        this.lines.push(...parts);
      }
      if (carry !== "") this.lines.push(carry);
    })();
  }

  /** The first line matching `pattern` after the first `from` lines. */
  async waitFor(pattern: RegExp, what: string, from = 0): Promise<string> {
    return await within(
      (async () => {
        for (;;) {
          const line = this.lines.slice(from).find((l) => pattern.test(l));
          if (line !== undefined) return line;
          await sleep(10);
        }
      })(),
      what,
    );
  }
}

interface RouterProcess {
  url: string;
  child: Deno.ChildProcess;
  stdout: Lines;
  stderr: Lines;
}

async function spawnRouter(args: string[]): Promise<RouterProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...RUN_FLAGS, "main.ts", "--port", "0", ...args],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdout = new Lines(child.stdout);
  const stderr = new Lines(child.stderr);
  const line = await stdout.waitFor(/^listening on /, "the router to listen");
  return {
    url: line.slice("listening on ".length),
    child,
    stdout,
    stderr,
  };
}

async function records(logDir: string): Promise<Json[]> {
  const text = await Deno.readTextFile(`${logDir}/requests.jsonl`);
  return text.trim().split("\n").map((line) => JSON.parse(line));
}

/** Reads a stream body to its end as text, or to the point where the connection broke. */
async function readUntilEnd(response: Response): Promise<{ text: string; broke: boolean }> {
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { text, broke: false };
      text += value;
    }
  } catch {
    return { text, broke: true };
  }
}

/** The peak resident memory of a process so far, in bytes (Linux only; `cat` needs no --allow-all). */
async function peakMemory(pid: number): Promise<number> {
  const output = await new Deno.Command("cat", { args: [`/proc/${pid}/status`] }).output();
  const status = new TextDecoder().decode(output.stdout);
  return Number(status.match(/^VmHWM:\s+(\d+) kB$/m)![1]) * 1024;
}

Deno.test({
  name: "the router's memory does not grow with a stream's size: 200 MB raise its peak by < 100 MB",
  ignore: Deno.build.os !== "linux",
  async fn() {
    // The peak after a 50 MB stream includes garbage the collector has not yet freed; a stream
    // four times longer may add little to it, while one the router buffered would add 200 MB.
    const small = startGenerator(50 * MIB);
    const big = startGenerator(200 * MIB);
    const dir = await Deno.makeTempDir();
    await writeConfig(`${dir}/config.json`, {
      providers: [
        provider("small", "openai", small.url, { models: ["small"] }),
        provider("big", "openai", big.url, { models: ["big"] }),
      ],
    });
    const router = await spawnRouter([
      "--config",
      `${dir}/config.json`,
      "--log-dir",
      `${dir}/logs`,
    ]);
    const readAll = async (model: string) => {
      const response = await post(router.url, "openai", { stream: true, model });
      let read = 0;
      for await (const chunk of response.body!) read += chunk.length;
      return read;
    };
    try {
      const warmUp = await fetch(`${router.url}/health`);
      await warmUp.body?.cancel();
      const before = await peakMemory(router.child.pid);
      assert.ok(await readAll("small") > 50 * MIB);
      const afterSmall = await peakMemory(router.child.pid);
      assert.ok(await readAll("big") > 200 * MIB);
      const afterBig = await peakMemory(router.child.pid);
      const log = `${dir}/logs/requests.jsonl`;
      const logged = async () =>
        ((await Deno.readTextFile(log).catch(() => "")).match(/\n/g) ?? []).length === 2;
      await within(
        (async () => {
          while (!(await logged())) await sleep(20);
        })(),
        "the records",
      );
      const afterRecords = await peakMemory(router.child.pid);
      const mb = (bytes: number) => (bytes / MIB).toFixed(0);
      console.log(
        `  peak memory: ${mb(before)} MB before, ${mb(afterSmall)} MB after 50 MB, ` +
          `${mb(afterBig)} MB after 200 MB, ${mb(afterRecords)} MB after the records`,
      );
      assert.ok(
        afterBig - afterSmall < 100 * MIB,
        `the 200 MB stream raised the peak by ${mb(afterBig - afterSmall)} MB`,
      );
      assert.ok(
        afterRecords - afterSmall < 100 * MIB,
        `the records raised the peak by ${mb(afterRecords - afterSmall)} MB`,
      );
    } finally {
      router.child.kill("SIGTERM");
      await router.child.status;
      await Promise.all([router.stdout.done, router.stderr.done]);
      await Promise.all([small.close(), big.close()]);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

// Shutdown.

Deno.test("stop() aborts a stream still running after grace_ms, ends it with an error event and logs it", async () => {
  const chunks = streamChunks("openai", 50);
  const mock = startMockUpstream(() => ({ headers: { ...sseHeaders }, chunks, chunkDelayMs: 100 }));
  const logDir = await Deno.makeTempDir();
  const ops: { level: string; msg: string }[] = [];
  const config = parseConfig(
    JSON.stringify({
      providers: [provider("a", "openai", mock.url)],
      shutdown: { grace_ms: 300 },
    }),
    () => undefined,
  );
  const server = startServer(config, {
    host: "127.0.0.1",
    port: 0,
    logDir,
    ops: { log: (level, msg) => void ops.push({ level, msg }) },
    onListen() {},
  });
  const url = `http://127.0.0.1:${server.port}`;
  try {
    const response = await post(url, "openai", { stream: true });
    assert.equal(response.status, 200);
    const reading = readUntilEnd(response);
    await sleep(250);
    const stopping = performance.now();
    await within(server.stop(), "stop()", 3000);
    const took = performance.now() - stopping;
    console.log(`  stop() with a 5 s stream in flight and grace_ms 300: ${took.toFixed(0)} ms`);
    assert.ok(took >= 290 && took < 1500, `stop() took ${took} ms`);
    const { text, broke } = await reading;
    assert.equal(broke, false, "the client's stream ends cleanly");
    const cut = text.lastIndexOf('data: {"error"');
    assert.ok(cut > 0 && chunks.join("").startsWith(text.slice(0, cut)));
    assert.match(text.slice(cut), /^data: \{"error":\{.*\}\}\n\n$/);
    assert.ok(ops.some((o) => o.level === "warn" && /Grace period over/.test(o.msg)));
    const [record, ...rest] = await records(logDir);
    assert.equal(rest.length, 0);
    assert.equal(record.status, 200);
    assert.equal(record.provider, "a");
    assert.equal(record.stream_complete, false);
    assert.notEqual(record.error, null, "the record says the stream was cut");
    console.log(`  the cut stream's record error: ${JSON.stringify(record.error)}`);
    assert.equal(record.bytes_forwarded, utf8(text).length);
  } finally {
    await mock.close();
    await Deno.remove(logDir, { recursive: true });
  }
});

/** A router in front of one Anthropic mock, with its log in a fresh directory, to be stopped. */
async function startStoppable(mockUrl: string, graceMs: number) {
  const logDir = await Deno.makeTempDir();
  const config = parseConfig(
    JSON.stringify({
      providers: [provider("a", "anthropic", mockUrl)],
      shutdown: { grace_ms: graceMs },
    }),
    () => undefined,
  );
  const server = startServer(config, {
    host: "127.0.0.1",
    port: 0,
    logDir,
    ops: { log() {} },
    onListen() {},
  });
  return { server, logDir, url: `http://127.0.0.1:${server.port}` };
}

Deno.test("stop() returns as soon as in-flight requests finish within grace_ms, and refuses new ones", async () => {
  const chunks = streamChunks("anthropic", 4);
  const mock = startMockUpstream(() => ({ headers: { ...sseHeaders }, chunks, chunkDelayMs: 40 }));
  const { server, logDir, url } = await startStoppable(mock.url, 3000);
  try {
    const response = await post(url, "anthropic", { stream: true });
    const reading = readUntilEnd(response);
    const stopping = performance.now();
    const stopped = server.stop();
    await sleep(20);
    await assert.rejects(
      fetch(`${url}/health`, { headers: { connection: "close" } }),
      "a new connection is refused",
    );
    await within(stopped, "stop()", 3000);
    const took = performance.now() - stopping;
    assert.ok(took < 1500, `stop() took ${took} ms`);
    assert.deepEqual(await reading, { text: chunks.join(""), broke: false });
    const [record] = await records(logDir);
    assert.equal(record.stream_complete, true);
    assert.equal(record.error, null);
  } finally {
    await mock.close();
    await Deno.remove(logDir, { recursive: true });
  }
});

async function writeConfig(path: string, config: object): Promise<void> {
  // Written to a temp file and renamed, as editors do, so the router never reads half a file.
  await Deno.writeTextFile(`${path}.tmp`, JSON.stringify(config));
  await Deno.rename(`${path}.tmp`, path);
}

Deno.test("main exits 0 after grace_ms with a stream still running, and logs it", async () => {
  const chunks = streamChunks("openai", 50);
  const mock = startMockUpstream(() => ({ headers: { ...sseHeaders }, chunks, chunkDelayMs: 100 }));
  const dir = await Deno.makeTempDir();
  await writeConfig(`${dir}/config.json`, {
    providers: [provider("a", "openai", mock.url)],
    shutdown: { grace_ms: 300 },
  });
  const router = await spawnRouter(["--config", `${dir}/config.json`, "--log-dir", `${dir}/logs`]);
  try {
    const response = await post(router.url, "openai", { stream: true });
    const reading = readUntilEnd(response);
    await sleep(150);
    const signalled = performance.now();
    router.child.kill("SIGTERM");
    const status = await within(router.child.status, "the router to exit", 3000);
    const took = performance.now() - signalled;
    assert.equal(status.code, 0);
    assert.ok(took < 1500, `exited after ${took} ms`);
    const { text } = await reading;
    assert.match(text, /data: \{"error":.*\n\n$/);
    const [record] = await records(`${dir}/logs`);
    assert.equal(record.status, 200);
    assert.equal(record.stream_complete, false);
    await Promise.all([router.stdout.done, router.stderr.done]);
  } finally {
    await mock.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a second SIGTERM makes main exit at once with a non-zero code while a stream is in flight", async () => {
  const chunks = streamChunks("openai", 50);
  const mock = startMockUpstream(() => ({ headers: { ...sseHeaders }, chunks, chunkDelayMs: 100 }));
  const dir = await Deno.makeTempDir();
  await writeConfig(`${dir}/config.json`, { providers: [provider("a", "openai", mock.url)] });
  const router = await spawnRouter(["--config", `${dir}/config.json`, "--log-dir", `${dir}/logs`]);
  try {
    const response = await post(router.url, "openai", { stream: true });
    const reading = readUntilEnd(response);
    await sleep(150);
    router.child.kill("SIGTERM");
    await router.stderr.waitFor(/Shutting down/, "the first signal to be heard");
    await sleep(100);
    assert.equal(
      await Promise.race([
        router.child.status.then(() => "exited"),
        sleep(0).then(() => "running"),
      ]),
      "running",
      "the first signal waits for the stream (grace_ms defaults to 30 s)",
    );
    const signalled = performance.now();
    router.child.kill("SIGTERM");
    const status = await within(router.child.status, "the router to exit", 2000);
    const took = performance.now() - signalled;
    console.log(`  exit after the second SIGTERM: ${took.toFixed(0)} ms, code ${status.code}`);
    assert.notEqual(status.code, 0);
    assert.ok(took < 1000, `exited after ${took} ms`);
    const { text } = await reading;
    assert.ok(text.length < chunks.join("").length, "the stream did not finish");
    await Promise.all([router.stdout.done, router.stderr.done]);
  } finally {
    await mock.close();
    await Deno.remove(dir, { recursive: true });
  }
});

// Reload.

Deno.test("SIGHUP reloads the config: new requests use it, a stream in flight keeps its provider", async () => {
  const chunks = streamChunks("openai", 8, "gpt-old");
  const a = startMockUpstream((req) =>
    (req.json as Json).stream
      ? { headers: { ...sseHeaders }, chunks, chunkDelayMs: 80 }
      : defaultReply(req)
  );
  const b = startMockUpstream(defaultReply);
  const dir = await Deno.makeTempDir();
  const path = `${dir}/config.json`;
  await writeConfig(path, { providers: [provider("a", "openai", a.url)] });
  const router = await spawnRouter(["--config", path, "--log-dir", `${dir}/logs`]);
  try {
    const streaming = await post(router.url, "openai", { stream: true, model: "gpt-old" });
    assert.equal(streaming.headers.get("x-llm-router-provider"), "a");
    const reading = readUntilEnd(streaming);
    // The new config drops a altogether and maps gpt-old to b's gpt-new.
    await writeConfig(path, {
      providers: [provider("b", "openai", b.url)],
      model_mapping: { "gpt-old": [{ provider: "b", model: "gpt-new" }] },
    });
    router.child.kill("SIGHUP");
    const reloaded = await router.stderr.waitFor(/Config reloaded/, "the reload");
    assert.equal(JSON.parse(reloaded).cause, "SIGHUP");
    const fresh = await post(router.url, "openai", { model: "gpt-old" });
    assert.equal(fresh.status, 200);
    assert.equal(fresh.headers.get("x-llm-router-provider"), "b");
    assert.equal((await fresh.json()).model, "gpt-new");
    assert.deepEqual(await reading, { text: chunks.join(""), broke: false });
    assert.equal(a.requests.length, 1);
    router.child.kill("SIGTERM");
    assert.equal((await router.child.status).code, 0);
    const logged = await records(`${dir}/logs`);
    const byProvider = Object.fromEntries(logged.map((r) => [r.provider, r]));
    assert.equal(byProvider.a.stream_complete, true);
    assert.equal(byProvider.a.error, null);
    assert.equal(byProvider.b.upstream_model, "gpt-new");
    await Promise.all([router.stdout.done, router.stderr.done]);
  } finally {
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an invalid new config is rejected with an error line and the old one keeps serving", async () => {
  const a = startMockUpstream(defaultReply);
  const dir = await Deno.makeTempDir();
  const path = `${dir}/config.json`;
  await writeConfig(path, { providers: [provider("a", "openai", a.url)] });
  const router = await spawnRouter(["--config", path, "--log-dir", `${dir}/logs`]);
  try {
    for (
      const [broken, problem] of [
        ["{ not json", /not valid JSON/],
        [JSON.stringify({ providers: [{ name: "b", type: "gemini" }] }), /providers\[0\]\.type/],
      ] as const
    ) {
      await Deno.writeTextFile(path, broken);
      const from = router.stderr.lines.length;
      router.child.kill("SIGHUP");
      const line = await router.stderr.waitFor(/reload rejected/, "the rejection", from);
      const entry = JSON.parse(line);
      assert.equal(entry.level, "error");
      assert.equal(entry.cause, "SIGHUP");
      assert.ok(entry.problems.some((p: string) => problem.test(p)), line);
      const response = await post(router.url, "openai");
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("x-llm-router-provider"), "a");
      await response.body?.cancel();
    }
    router.child.kill("SIGTERM");
    assert.equal((await router.child.status).code, 0);
    await Promise.all([router.stdout.done, router.stderr.done]);
  } finally {
    await a.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--watch-config picks up a changed config file without SIGHUP", async () => {
  const a = startMockUpstream(defaultReply);
  const b = startMockUpstream(defaultReply);
  const dir = await Deno.makeTempDir();
  const path = `${dir}/config.json`;
  await writeConfig(path, { providers: [provider("a", "openai", a.url)] });
  const router = await spawnRouter([
    "--config",
    path,
    "--log-dir",
    `${dir}/logs`,
    "--watch-config",
  ]);
  try {
    await sleep(100);
    await writeConfig(path, { providers: [provider("b", "openai", b.url)] });
    const line = await router.stderr.waitFor(/Config reloaded/, "the file change to be seen");
    assert.equal(JSON.parse(line).cause, "file changed");
    const response = await post(router.url, "openai");
    assert.equal(response.headers.get("x-llm-router-provider"), "b");
    await response.body?.cancel();
    assert.equal(a.requests.length, 0);
    assert.equal(b.requests.length, 1);
    router.child.kill("SIGTERM");
    assert.equal((await router.child.status).code, 0);
    await Promise.all([router.stdout.done, router.stderr.done]);
  } finally {
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a client still sending its body when the router stops gets 503 shutting_down, and a record", async () => {
  const mock = startMockUpstream();
  const { server, logDir, url } = await startStoppable(mock.url, 2000);
  try {
    // Half a body, then nothing: the client is still sending when the router stops.
    let upload!: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        upload = controller;
        controller.enqueue(new TextEncoder().encode('{"model":"claude-x",'));
      },
    });
    const pending = fetch(`${url}/anthropic/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    await sleep(50);
    const stopped = server.stop();
    const response = await within(pending, "the response", 3000);
    assert.equal(response.status, 503);
    const answer = await response.json();
    assert.equal(answer.type, "error");
    assert.match(answer.error.message, /shutting down/);
    // The client gives up its upload; Deno's graceful shutdown waits for that.
    upload.close();
    await within(stopped, "stop()", 3000);
    const [record] = await records(logDir);
    assert.equal(record.status, 503);
    assert.equal(record.error?.type, "shutting_down");
    assert.equal(mock.requests.length, 0);
  } finally {
    await mock.close();
    await Deno.remove(logDir, { recursive: true });
  }
});

Deno.test("a body of declared length still arriving when the router stops gets 503 shutting_down", async () => {
  const mock = startMockUpstream();
  const { server, logDir, url } = await startStoppable(mock.url, 2000);
  const { hostname, port } = new URL(url);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  try {
    const head = "POST /anthropic/v1/messages HTTP/1.1\r\nhost: x\r\n" +
      "content-type: application/json\r\ncontent-length: 100\r\n\r\n" + '{"model":"claude-x",';
    await conn.write(new TextEncoder().encode(head));
    await sleep(50);
    const stopped = server.stop();
    const buffer = new Uint8Array(4096);
    const read = await within(conn.read(buffer), "the response", 3000);
    const answer = new TextDecoder().decode(buffer.subarray(0, read ?? 0));
    assert.match(answer, /^HTTP\/1.1 503 /);
    assert.match(answer, /shutting down/);
    conn.close();
    await within(stopped, "stop()", 3000);
    const [record] = await records(logDir);
    assert.equal(record.error?.type, "shutting_down");
    assert.equal(mock.requests.length, 0);
  } finally {
    try {
      conn.close();
    } catch {
      // Closed above.
    }
    await mock.close();
    await Deno.remove(logDir, { recursive: true });
  }
});
