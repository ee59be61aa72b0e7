import assert from "node:assert/strict";
import { openaiStreamChunks, startMockUpstream } from "../tools/mock_upstream.ts";
import { provider, runRouter, spawnRouter } from "./harness.ts";

Deno.test("main prints help and version", async () => {
  const help = await runRouter(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--config PATH/);
  assert.match(help.stdout, /LLM_ROUTER_CONFIG/);
  const version = await runRouter(["--version"]);
  assert.equal(version.code, 0);
  assert.match(version.stdout, /^llm-api-router \d+\.\d+\.\d+/);
});

Deno.test("main exits 2 naming the JSON path when the config is invalid", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/config.json`;
  await Deno.writeTextFile(
    path,
    JSON.stringify({
      providers: [{ name: "a", type: "openai", api_key: "${MISSING_KEY_FOR_TEST}" }],
    }),
  );
  const result = await runRouter(["--config", path]);
  assert.equal(result.code, 2);
  assert.match(result.stderr, /providers\[0\]\.api_key: Environment variable MISSING_KEY_FOR_TEST/);
  assert.doesNotMatch(result.stderr, /^\s+at /m, "no stack trace");
  const badJson = await runRouter([], { env: { LLM_ROUTER_CONFIG: "{not json" } });
  assert.equal(badJson.code, 2);
  assert.match(badJson.stderr, /not valid JSON/);
  const unknown = await runRouter(["--bogus"]);
  assert.equal(unknown.code, 2);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("main serves from LLM_ROUTER_CONFIG and writes the request log to --log-dir", async () => {
  const mock = startMockUpstream();
  const logDir = await Deno.makeTempDir();
  const config = { providers: [provider("only", "openai", mock.url)] };
  const router = await spawnRouter(["--port", "0", "--log-dir", logDir], {
    env: { LLM_ROUTER_CONFIG: JSON.stringify(config) },
  });
  const response = await fetch(`${router.url}/openai/chat/completions`, {
    method: "POST",
    body: JSON.stringify({ model: "gpt-test", messages: [] }),
  });
  assert.equal(response.status, 200);
  assert.equal((await response.json()).model, "gpt-test");
  router.child.kill("SIGTERM");
  const result = await router.finished;
  assert.equal(result.code, 0);
  const lines = (await Deno.readTextFile(`${logDir}/requests.jsonl`)).trim().split("\n");
  assert.equal(lines.length, 1);
  const record = JSON.parse(lines[0]);
  assert.equal(record.provider, "only");
  assert.deepEqual(record.usage, { prompt_tokens: 12, completion_tokens: 4, total_tokens: 16 });
  await mock.close();
  await Deno.remove(logDir, { recursive: true });
});

Deno.test("main finishes a stream in flight on SIGTERM, logs it, and exits 0", async () => {
  const chunks = openaiStreamChunks("gpt-test", { events: 8 });
  const mock = startMockUpstream(() => ({ chunks, chunkDelayMs: 60 }));
  const logDir = await Deno.makeTempDir();
  const configPath = `${logDir}/config.json`;
  await Deno.writeTextFile(
    configPath,
    JSON.stringify({ providers: [provider("only", "openai", mock.url)] }),
  );
  const router = await spawnRouter([
    "--config",
    configPath,
    "--port",
    "0",
    "--log-dir",
    `${logDir}/logs`,
  ]);
  const response = await fetch(`${router.url}/openai/chat/completions`, {
    method: "POST",
    body: JSON.stringify({ model: "gpt-test", stream: true, messages: [] }),
  });
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  let received = (await reader.read()).value ?? "";
  router.child.kill("SIGTERM");
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    received += value;
  }
  assert.equal(received, chunks.join(""), "the whole stream arrives after the signal");
  const result = await router.finished;
  assert.equal(result.code, 0);
  const record = JSON.parse(await Deno.readTextFile(`${logDir}/logs/requests.jsonl`));
  assert.equal(record.stream_complete, true);
  assert.equal(record.status, 200);
  await mock.close();
  await Deno.remove(logDir, { recursive: true });
});
