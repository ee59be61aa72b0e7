/**
 * `deploy.ts` as Deno Deploy and `deno serve` run it: a real `deno serve` process under
 * `--allow-net --allow-env` alone, its whole config from `LLM_ROUTER_CONFIG`, request records as
 * JSON lines on stdout, called through both official clients.
 */
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { startMockUpstream } from "../tools/mock_upstream.ts";
import { provider } from "./harness.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

const root = new URL("..", import.meta.url).pathname;
/** Exactly the permissions Deno Deploy grants: network and environment, no file system. */
const SERVE_ARGS = [
  "serve",
  "--allow-net",
  "--allow-env",
  "--host",
  "127.0.0.1",
  "--port",
  "0",
  "deploy.ts",
];

/** A child's output stream as it grows, with a way to wait for what it should contain. */
class Output {
  text = "";
  closed = false;
  #wake: (() => void)[] = [];
  readonly done: Promise<void>;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        this.text += chunk;
        for (const wake of this.#wake.splice(0)) wake();
      }
      this.closed = true;
      for (const wake of this.#wake.splice(0)) wake();
    })();
  }

  /** Resolves once `found` returns a value; rejects if the stream ends first. */
  async until<T>(found: (text: string) => T | undefined): Promise<T> {
    for (;;) {
      const value = found(this.text);
      if (value !== undefined) return value;
      if (this.closed) throw new Error(`Output ended without it:\n${this.text}`);
      await new Promise<void>((wake) => this.#wake.push(wake));
    }
  }
}

/** The request records among stdout's lines: JSON objects with a `request_id`. */
function recordsIn(stdout: string): Json[] {
  return stdout.split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line))
    .filter((value) => typeof value?.request_id === "string");
}

function serve(config: string): { child: Deno.ChildProcess; stdout: Output; stderr: Output } {
  const child = new Deno.Command(Deno.execPath(), {
    args: SERVE_ARGS,
    cwd: root,
    env: { LLM_ROUTER_CONFIG: config, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(4_000),
  }).spawn();
  return { child, stdout: new Output(child.stdout), stderr: new Output(child.stderr) };
}

const LISTENING = /deno serve: Listening on (http:\/\/127\.0\.0\.1:\d+)\//;

Deno.test("deno serve deploy.ts under --allow-net --allow-env serves both APIs and logs to stdout", async () => {
  const openaiMock = startMockUpstream();
  const anthropicMock = startMockUpstream();
  // `target: "file"` is overridden: with no write permission a file log would fail on stderr.
  const config = JSON.stringify({
    providers: [
      provider("oa", "openai", openaiMock.url),
      provider("an", "anthropic", anthropicMock.url),
    ],
    model_mapping: { fast: ["gpt-upstream"] },
    logging: { target: "file" },
  });
  const { child, stdout, stderr } = serve(config);
  try {
    const url = await Promise.race(
      [stdout, stderr].map((out) => out.until((text) => text.match(LISTENING)?.[1])),
    );

    const openai = new OpenAI({ apiKey: "sk-client", baseURL: `${url}/openai`, maxRetries: 0 });
    const chat = await openai.chat.completions.create({
      model: "fast",
      messages: [{ role: "user", content: "Hi" }],
    }).withResponse();
    assert.equal(chat.response.status, 200);
    assert.equal(chat.data.choices[0].message.content, "Hello from the mock");
    assert.equal(chat.data.model, "gpt-upstream");

    const anthropic = new Anthropic({
      apiKey: "sk-client",
      baseURL: `${url}/anthropic`,
      maxRetries: 0,
    });
    const streamed = await anthropic.messages.create({
      model: "claude-x",
      max_tokens: 32,
      messages: [{ role: "user", content: "Hi" }],
      stream: true,
    }).withResponse();
    assert.equal(streamed.response.status, 200);
    let text = "";
    for await (const event of streamed.data) {
      if (event.type === "content_block_delta" && event.delta.type === "text_delta") {
        text += event.delta.text;
      }
    }
    assert.equal(text, "Hello from the mock");

    const records = await stdout.until((out) => {
      const found = recordsIn(out);
      return found.length >= 2 ? found : undefined;
    });
    const byEndpoint = Object.fromEntries(records.map((r) => [r.endpoint, r]));
    assert.deepEqual(
      [byEndpoint.openai.path, byEndpoint.openai.provider, byEndpoint.openai.status],
      ["/openai/chat/completions", "oa", 200],
    );
    assert.deepEqual(
      [byEndpoint.openai.model, byEndpoint.openai.upstream_model],
      ["fast", "gpt-upstream"],
    );
    assert.deepEqual(byEndpoint.openai.usage, chat.data.usage);
    assert.deepEqual(
      [byEndpoint.anthropic.path, byEndpoint.anthropic.provider, byEndpoint.anthropic.status],
      ["/anthropic/v1/messages", "an", 200],
    );
    assert.equal(byEndpoint.anthropic.stream, true);
    assert.equal(byEndpoint.anthropic.stream_complete, true);
    assert.equal(byEndpoint.anthropic.usage.output_tokens, 3);
    assert.notEqual(records[0].request_id, records[1].request_id);
    assert.ok(!stdout.text.includes("sk-oa-secret") && !stdout.text.includes("sk-an-secret"));

    child.kill("SIGTERM");
    const status = await child.status;
    await Promise.all([stdout.done, stderr.done]);
    assert.equal(status.code, 0, stderr.text);
    assert.equal(recordsIn(stdout.text).length, 2, "one record per request, no more");
    assert.doesNotMatch(stderr.text, /"level":"error"|NotCapable|Requires (read|write) access/);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
    await child.status;
    await Promise.all([stdout.done, stderr.done]);
    await openaiMock.close();
    await anthropicMock.close();
  }
});

Deno.test("deno serve deploy.ts flushes the last record when stopped right after a response", async () => {
  const mock = startMockUpstream();
  const config = JSON.stringify({ providers: [provider("oa", "openai", mock.url)] });
  const { child, stdout, stderr } = serve(config);
  try {
    const url = await Promise.race(
      [stdout, stderr].map((out) => out.until((text) => text.match(LISTENING)?.[1])),
    );
    const response = await fetch(`${url}/openai/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "gpt-x", messages: [] }),
    });
    assert.equal(response.status, 200);
    await response.arrayBuffer();
    child.kill("SIGTERM");
    const status = await child.status;
    await Promise.all([stdout.done, stderr.done]);
    assert.equal(status.code, 0, stderr.text);
    assert.equal(recordsIn(stdout.text).length, 1, "the record was lost at shutdown");
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
    await child.status;
    await Promise.all([stdout.done, stderr.done]);
    await mock.close();
  }
});

const INVALID: Record<string, { config: string; message: RegExp }> = {
  "not JSON": { config: "{not json", message: /Config is not valid JSON/ },
  "no providers": { config: '{"providers": []}', message: /providers: Must not be empty/ },
  "a bad field": {
    config: JSON.stringify({ providers: [{ name: "a", type: "azure" }] }),
    message: /providers\[0\]\.type/,
  },
  "empty": { config: "  ", message: /LLM_ROUTER_CONFIG/ },
};

for (const [name, { config, message }] of Object.entries(INVALID)) {
  Deno.test(`deno serve deploy.ts fails to start on an invalid LLM_ROUTER_CONFIG (${name})`, async () => {
    const { child, stdout, stderr } = serve(config);
    const status = await child.status;
    await Promise.all([stdout.done, stderr.done]);
    assert.notEqual(status.code, 0);
    assert.equal(status.signal, null, "it exited by itself, not by the test's timeout");
    assert.equal(status.code, 2);
    assert.match(stderr.text, /^Invalid config:\n/);
    assert.match(stderr.text, message);
    assert.doesNotMatch(stderr.text, /^\s+at /m, "no stack trace");
    assert.doesNotMatch(stdout.text + stderr.text, /Listening on/);
  });
}
