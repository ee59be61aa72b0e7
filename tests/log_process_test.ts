import assert from "node:assert/strict";
import { LOG_LEVELS } from "../src/ops.ts";
import {
  anthropicStreamChunks,
  defaultReply,
  openaiCompletion,
  openaiStreamChunks,
  startMockUpstream,
} from "../tools/mock_upstream.ts";
import { provider, type RouterProcess, spawnRouter } from "./harness.ts";

const OPENAI = "/openai/v1/chat/completions";
const ANTHROPIC = "/anthropic/v1/messages";

/** Starts `main.ts` on port 0 with `config` in LLM_ROUTER_CONFIG (see `spawnRouter`). */
function spawnWithConfig(config: object, args: string[]): Promise<RouterProcess> {
  const env = { LLM_ROUTER_CONFIG: JSON.stringify(config) };
  return spawnRouter(["--port", "0", ...args], { env });
}

async function post(url: string, body: object): Promise<{ status: number; id: string }> {
  const response = await fetch(url, { method: "POST", body: JSON.stringify(body) });
  await response.body?.cancel();
  return { status: response.status, id: response.headers.get("x-request-id") ?? "" };
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** The lines of every request log file in `dir`, each parsed as one JSON object. */
async function logRecords(dir: string): Promise<Record<string, unknown>[]> {
  const records: Record<string, unknown>[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.name.startsWith("requests.jsonl")) continue;
    const text = await Deno.readTextFile(`${dir}/${entry.name}`);
    assert.ok(text.endsWith("\n"), `${entry.name} ends with a whole line`);
    for (const line of text.slice(0, -1).split("\n")) records.push(JSON.parse(line));
  }
  return records;
}

interface OpsLine {
  ts: string;
  level: string;
  msg: string;
  [field: string]: unknown;
}

/** Every stderr line must be one JSON object with a known level and a message. */
function opsLines(stderr: string): OpsLine[] {
  return stderr.split("\n").filter((line) => line.trim() !== "").map((line) => {
    let parsed: OpsLine;
    try {
      parsed = JSON.parse(line);
    } catch {
      assert.fail(`stderr line is not JSON: ${line}`);
    }
    assert.ok((LOG_LEVELS as readonly string[]).includes(parsed.level), line);
    assert.equal(typeof parsed.msg, "string", line);
    assert.ok(!Number.isNaN(Date.parse(parsed.ts)), line);
    return parsed;
  });
}

Deno.test("logging.target stdout prints one JSON record per request on stdout and no file", async () => {
  const mock = startMockUpstream();
  const tmp = await Deno.makeTempDir();
  const logDir = `${tmp}/logs`;
  const router = await spawnWithConfig({
    providers: [provider("oa", "openai", mock.url), provider("an", "anthropic", mock.url)],
    logging: { target: "stdout" },
  }, ["--log-dir", logDir]);
  const sent = [
    await post(`${router.url}${OPENAI}`, { model: "gpt-test", messages: [] }),
    await post(`${router.url}${OPENAI}`, { model: "gpt-test", stream: true, messages: [] }),
    await post(`${router.url}${ANTHROPIC}`, { model: "claude-test", max_tokens: 8, messages: [] }),
  ];
  assert.deepEqual(sent.map((s) => s.status), [200, 200, 200]);
  router.child.kill("SIGTERM");
  const result = await router.finished;
  assert.equal(result.code, 0);
  const lines = result.stdout.split("\n").filter((line) => line !== "");
  assert.match(lines[0], /^listening on http:\/\/127\.0\.0\.1:\d+$/);
  const records = lines.slice(1).map((line) => JSON.parse(line));
  assert.equal(records.length, 3, `one line per request: ${result.stdout}`);
  assert.deepEqual(records.map((r) => r.request_id).sort(), sent.map((s) => s.id).sort());
  assert.deepEqual(records.map((r) => r.provider).sort(), ["an", "oa", "oa"]);
  assert.equal(await exists(logDir), false, "no log directory is created");
  assert.ok(!result.stderr.includes(sent[0].id), "records do not go to stderr");
  await mock.close();
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("logging.enabled false writes no request log anywhere", async () => {
  const mock = startMockUpstream();
  const tmp = await Deno.makeTempDir();
  const logDir = `${tmp}/logs`;
  const router = await spawnWithConfig({
    providers: [provider("oa", "openai", mock.url)],
    logging: { enabled: false },
  }, ["--log-dir", logDir]);
  const sent = await post(`${router.url}${OPENAI}`, { model: "gpt-test", messages: [] });
  assert.equal(sent.status, 200);
  router.child.kill("SIGTERM");
  const result = await router.finished;
  assert.equal(result.code, 0);
  assert.deepEqual(
    result.stdout.split("\n").filter((line) => line !== "").map((l) => l.split(" ")[0]),
    ["listening"],
  );
  assert.ok(!result.stderr.includes(sent.id));
  assert.equal(await exists(logDir), false);
  await mock.close();
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("SIGTERM with streams in flight exits 0 after logging exactly every request", async () => {
  const openaiChunks = openaiStreamChunks("slow-stream", { events: 10 });
  const anthropicChunks = anthropicStreamChunks("slow-claude", { events: 8 });
  // The streams end last; their large logged requests make the last batch slow to write, so an
  // exit that does not wait for the queue loses them.
  const messages = [{ role: "user", content: "All work and no play. ".repeat(400_000) }];
  const mock = startMockUpstream((req, n) => {
    const model = (req.json as { model?: string } | undefined)?.model;
    if (model === "slow-stream") return { chunks: openaiChunks, chunkDelayMs: 80 };
    if (model === "slow-claude") return { chunks: anthropicChunks, chunkDelayMs: 80 };
    if (model === "late") return { body: openaiCompletion("late"), delayMs: 400 };
    return defaultReply(req, n);
  });
  const tmp = await Deno.makeTempDir();
  const logDir = `${tmp}/logs`;
  const router = await spawnWithConfig({
    providers: [provider("oa", "openai", mock.url), provider("an", "anthropic", mock.url)],
    logging: { max_body_bytes: 0 },
  }, ["--log-dir", logDir]);

  const ids: string[] = [];
  for (let i = 0; i < 3; i++) {
    const done = await post(`${router.url}${OPENAI}`, { model: "gpt-test", messages: [] });
    assert.equal(done.status, 200);
    ids.push(done.id);
  }
  const openStream = async (path: string, model: string, expected: string) => {
    const response = await fetch(`${router.url}${path}`, {
      method: "POST",
      body: JSON.stringify({ model, stream: true, max_tokens: 8, messages }),
    });
    assert.equal(response.status, 200);
    ids.push(response.headers.get("x-request-id") ?? "");
    const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    const first = await reader.read();
    return {
      expected,
      rest: (async () => {
        let text = first.value ?? "";
        for (;;) {
          const { done, value } = await reader.read();
          if (done) return text;
          text += value;
        }
      })(),
    };
  };
  const late = Array.from({ length: 3 }, () =>
    fetch(`${router.url}${OPENAI}`, {
      method: "POST",
      body: JSON.stringify({ model: "late", messages: [] }),
    }));
  const streams = await Promise.all([
    openStream(OPENAI, "slow-stream", openaiChunks.join("")),
    openStream(OPENAI, "slow-stream", openaiChunks.join("")),
    openStream(ANTHROPIC, "slow-claude", anthropicChunks.join("")),
    openStream(ANTHROPIC, "slow-claude", anthropicChunks.join("")),
  ]);
  while (mock.requests.length < 10) await new Promise((resolve) => setTimeout(resolve, 10));

  router.child.kill("SIGTERM");
  for (const stream of streams) {
    assert.equal(await stream.rest, stream.expected, "each stream finishes after the signal");
  }
  for (const response of await Promise.all(late)) {
    assert.equal(response.status, 200);
    ids.push(response.headers.get("x-request-id") ?? "");
    assert.equal((await response.json()).model, "late");
  }
  const result = await router.finished;
  assert.equal(result.code, 0, result.stderr);
  const records = await logRecords(logDir);
  assert.equal(records.length, 10, "exactly one record per request");
  assert.deepEqual(records.map((r) => r.request_id).sort(), [...ids].sort());
  const streamed = records.filter((r) => r.stream === true);
  assert.equal(streamed.length, 4);
  assert.ok(streamed.every((r) => r.stream_complete === true && r.status === 200));
  await mock.close();
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("ops messages are JSON lines on stderr with a level; --log-level error hides info", async () => {
  const mock = startMockUpstream();
  const config = { providers: [provider("oa", "openai", mock.url)] };
  const tmp = await Deno.makeTempDir();

  const chatty = await spawnWithConfig(config, ["--log-dir", tmp]);
  assert.equal(
    (await post(`${chatty.url}${OPENAI}`, { model: "gpt-test", messages: [] })).status,
    200,
  );
  chatty.child.kill("SIGTERM");
  const chattyResult = await chatty.finished;
  assert.equal(chattyResult.code, 0);
  const lines = opsLines(chattyResult.stderr);
  const started = lines.find((line) => line.msg === "Started");
  assert.ok(started !== undefined, chattyResult.stderr);
  assert.equal(started.level, "info");
  assert.equal(started.url, chatty.url);
  assert.ok(lines.some((line) => line.level === "info" && line.msg === "Stopped"));
  assert.ok(!chattyResult.stdout.includes('"level"'), "ops lines stay off stdout");

  const quiet = await spawnWithConfig(config, ["--log-dir", tmp, "--log-level", "error"]);
  assert.equal(
    (await post(`${quiet.url}${OPENAI}`, { model: "gpt-test", messages: [] })).status,
    200,
  );
  quiet.child.kill("SIGTERM");
  const quietResult = await quiet.finished;
  assert.equal(quietResult.code, 0);
  assert.match(quietResult.stdout, /^listening on /);
  const quietLines = opsLines(quietResult.stderr);
  assert.deepEqual(quietLines.filter((line) => line.level !== "error"), []);
  assert.ok(!quietLines.some((line) => line.msg === "Started"));
  await mock.close();
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("an unwritable --log-dir is reported once on stderr and requests still succeed", async () => {
  const mock = startMockUpstream();
  const tmp = await Deno.makeTempDir();
  const blocked = `${tmp}/not-a-dir`;
  await Deno.writeTextFile(blocked, "a regular file");
  const router = await spawnWithConfig({ providers: [provider("oa", "openai", mock.url)] }, [
    "--log-dir",
    blocked,
  ]);
  for (let i = 0; i < 3; i++) {
    const sent = await post(`${router.url}${OPENAI}`, { model: "gpt-test", messages: [] });
    assert.equal(sent.status, 200);
    await new Promise((resolve) => setTimeout(resolve, 600));
  }
  router.child.kill("SIGTERM");
  const result = await router.finished;
  assert.equal(result.code, 0);
  const errors = opsLines(result.stderr).filter((line) => /Cannot write/.test(line.msg));
  assert.equal(errors.length, 1, result.stderr);
  assert.equal(errors[0].level, "error");
  assert.ok(errors[0].msg.includes(blocked), "names the path");
  assert.equal(await Deno.readTextFile(blocked), "a regular file");
  await mock.close();
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("SIGTERM right after the listening line still shuts down gracefully with exit 0", async () => {
  const mock = startMockUpstream();
  const tmp = await Deno.makeTempDir();
  for (let i = 0; i < 5; i++) {
    const router = await spawnWithConfig({ providers: [provider("oa", "openai", mock.url)] }, [
      "--log-dir",
      tmp,
    ]);
    // A supervisor may stop the process as soon as it announces readiness.
    router.child.kill("SIGTERM");
    const result = await router.finished;
    assert.equal(result.code, 0, `run ${i}: killed by the signal instead of handling it`);
    assert.ok(opsLines(result.stderr).some((line) => line.msg === "Stopped"), result.stderr);
  }
  await mock.close();
  await Deno.remove(tmp, { recursive: true });
});
