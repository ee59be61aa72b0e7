/**
 * Least privilege (issue 5): `main.ts` run under exactly the flags of `deno task start`, read
 * from deno.json, serves both endpoints and writes its log under ./logs, and nothing more: a log
 * directory or a config variable outside the grant is a clear start-up error (exit 2).
 */
import assert from "node:assert/strict";
import { type MockRequest, startMockUpstream } from "../tools/mock_upstream.ts";
import { startTaskV8Flags } from "../bench/start_task.ts";
import { type RouterOutput, type RouterProcess, runRouter, spawnRouter } from "./harness.ts";

const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const decoder = new TextDecoder();

/** Splits a shell command line into words, honouring single and double quotes (no escapes). */
function shellWords(line: string): string[] {
  const words: string[] = [];
  let word: string | null = null;
  let quote: string | null = null;
  for (const char of line) {
    if (quote !== null) {
      if (char === quote) quote = null;
      else word += char;
    } else if (char === "'" || char === '"') {
      quote = char;
      word ??= "";
    } else if (/\s/.test(char)) {
      if (word !== null) words.push(word);
      word = null;
    } else {
      word = (word ?? "") + char;
    }
  }
  assert.equal(quote, null, `unbalanced quote in ${line}`);
  if (word !== null) words.push(word);
  return words;
}

const denoJson = JSON.parse(await Deno.readTextFile(`${root}/deno.json`));
const START: string = denoJson.tasks.start;
/** `deno task start` as words, without the leading `deno`: `run`, the flags, `main.ts`. */
const START_ARGS = shellWords(START).slice(1);

Deno.test("the start task's command line parses to deno run <flags> main.ts", () => {
  assert.equal(shellWords(START)[0], "deno");
  assert.equal(START_ARGS[0], "run");
  assert.equal(START_ARGS.at(-1), "main.ts");
  assert.deepEqual(shellWords(`a --x='b,c*' "d e" f`), ["a", "--x=b,c*", "d e", "f"]);
});

Deno.test("the start task asks for no --allow-all, -A or --allow-run, and scopes read, write and env", () => {
  const flags = START_ARGS.slice(1, -1);
  for (const flag of flags) {
    assert.ok(flag.startsWith("--"), `unexpected argument ${flag}`);
    assert.notEqual(flag, "-A");
    assert.ok(!flag.startsWith("--allow-all"), flag);
    assert.ok(!flag.startsWith("--allow-run"), flag);
    assert.ok(!flag.startsWith("--allow-ffi"), flag);
    assert.ok(!flag.startsWith("--allow-sys"), flag);
    assert.ok(!/^-[a-zA-Z]*A/.test(flag), flag);
  }
  assert.ok(!/(^|\s)(-A|--allow-all|--allow-run)(\s|=|$)/.test(START), START);
  const value = (name: string) => {
    const flag = flags.find((f) => f === name || f.startsWith(`${name}=`));
    assert.ok(flag !== undefined, `${name} is granted`);
    return flag.slice(name.length + 1);
  };
  assert.equal(value("--allow-write"), "logs", "write only the default log directory");
  assert.notEqual(value("--allow-read"), "", "read is scoped");
  const env = value("--allow-env").split(",");
  assert.ok(env.length > 0 && !env.includes(""), "env is a list of names");
  for (const name of ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"]) assert.ok(env.includes(name));
  assert.ok(
    env.includes("LLM_ROUTER_CONFIG") || env.includes("LLM_ROUTER_*"),
    "the config variable may be read",
  );
});

/** The task's own flags: everything between `deno` and `main.ts`. */
const START_FLAGS = { flags: START_ARGS.slice(0, -1) };

/** Starts the router under the task's flags and waits for its `listening on` line. */
function start(args: string[], env: Record<string, string> = {}): Promise<RouterProcess> {
  return spawnRouter(args, { ...START_FLAGS, env });
}

/** Runs the router to its exit; one that starts serving instead is killed after 3 s. */
function runToEnd(args: string[]): Promise<RouterOutput> {
  return runRouter(args, { ...START_FLAGS, timeoutMs: 3000 });
}

/** A config file in a fresh directory inside the project (what `--allow-read=.` covers). */
async function withConfig(
  config: object,
  body: (relativePath: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ dir: root, prefix: ".permissions-test-" });
  const path = `${dir}/config.json`;
  await Deno.writeTextFile(path, JSON.stringify(config));
  try {
    await body(path.slice(root.length + 1));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("the compiled binary gets the start task's V8 flags and permissions", () => {
  const compile = shellWords(denoJson.tasks.compile);
  assert.deepEqual(compile.slice(0, 2), ["deno", "compile"]);
  const output = compile.indexOf("--output");
  assert.ok(output > 0, "the binary is named");
  const words = [...compile.slice(2, output), ...compile.slice(output + 2)];
  assert.deepEqual(words, START_ARGS.slice(1));
});

Deno.test("the start task bounds V8's young generation and old-generation growth, and the benchmark runs the router with the same V8 flags", async () => {
  const v8Flags = START_ARGS.filter((word) => word.startsWith("--v8-flags="));
  assert.equal(v8Flags.length, 1);
  const names = v8Flags[0].slice("--v8-flags=".length).split(",").map((flag) => flag.split("=")[0]);
  assert.deepEqual(names.sort(), ["--heap-growing-percent", "--max-semi-space-size"]);
  assert.deepEqual(await startTaskV8Flags(), v8Flags);
});

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

async function size(path: string): Promise<number | null> {
  return await Deno.stat(path).then((info) => info.size, () => null);
}

Deno.test("under exactly the start task's flags the router serves both endpoints, reads its named variables and writes its log under ./logs", async () => {
  const mock = startMockUpstream();
  const marker = crypto.randomUUID().slice(0, 8);
  const models = { openai: `perm-gpt-${marker}`, anthropic: `perm-claude-${marker}` };
  const env = {
    LLM_ROUTER_PERMISSION_TEST_KEY: `sk-perm-openai-${marker}`,
    ANTHROPIC_API_KEY: `sk-perm-anthropic-${marker}`,
  };
  const config = {
    providers: [
      {
        name: "oa",
        type: "openai",
        api_key: "${LLM_ROUTER_PERMISSION_TEST_KEY}",
        base_url: `${mock.url}/v1`,
      },
      { name: "an", type: "anthropic", api_key: "${ANTHROPIC_API_KEY}", base_url: mock.url },
    ],
  };
  const logs = `${root}/logs`;
  const logFile = `${logs}/requests.jsonl`;
  const hadLogs = await exists(logs);
  const sizeBefore = await size(logFile);
  try {
    await withConfig(config, async (configPath) => {
      const router = await start(["--config", configPath, "--port", "0"], env);
      try {
        const openai = await fetch(`${router.url}/openai/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: models.openai, messages: [] }),
        });
        assert.equal(openai.status, 200);
        assert.equal((await openai.json()).model, models.openai);
        const anthropic = await fetch(`${router.url}/anthropic/v1/messages`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            model: models.anthropic,
            max_tokens: 8,
            stream: true,
            messages: [],
          }),
        });
        assert.equal(anthropic.status, 200);
        assert.match(await anthropic.text(), /event: message_stop/);
      } finally {
        router.child.kill("SIGTERM");
      }
      const result = await router.finished;
      assert.equal(result.code, 0, result.stderr);
      assert.doesNotMatch(result.stderr, /"level":"(warn|error)"/, "no warning or log failure");
    });
    const byApi = (path: string): MockRequest => mock.requests.find((r) => r.path === path)!;
    assert.equal(
      byApi("/v1/chat/completions").headers.get("authorization"),
      `Bearer ${env.LLM_ROUTER_PERMISSION_TEST_KEY}`,
      "a LLM_ROUTER_* variable was read",
    );
    assert.equal(byApi("/v1/messages").headers.get("x-api-key"), env.ANTHROPIC_API_KEY);
    const text = await Deno.readTextFile(logFile);
    const ours = text.slice(sizeBefore ?? 0).split("\n").filter((line) => line.includes(marker));
    const records = ours.map((line) => JSON.parse(line));
    assert.deepEqual(
      records.map((r) => [r.endpoint, r.model, r.provider, r.status]).sort(),
      [["anthropic", models.anthropic, "an", 200], ["openai", models.openai, "oa", 200]],
    );
    for (const line of ours) {
      assert.ok(!line.includes(env.LLM_ROUTER_PERMISSION_TEST_KEY));
      assert.ok(!line.includes(env.ANTHROPIC_API_KEY));
    }
  } finally {
    await mock.close();
    await removeOurLines(logFile, sizeBefore, marker);
    if (!hadLogs) await Deno.remove(logs, { recursive: true }).catch(() => {});
  }
});

/**
 * Takes this test's records out of ./logs/requests.jsonl again: the file is cut back to its
 * old size when only our lines were appended, else only lines carrying our marker are removed.
 */
async function removeOurLines(path: string, sizeBefore: number | null, marker: string) {
  const text = await Deno.readTextFile(path).catch(() => null);
  if (text === null) return;
  if (sizeBefore === null) {
    const others = text.split("\n").filter((line) => line !== "" && !line.includes(marker));
    if (others.length === 0) await Deno.remove(path);
    else await Deno.writeTextFile(path, others.join("\n") + "\n");
    return;
  }
  const added = new TextEncoder().encode(text).subarray(sizeBefore);
  const addedLines = decoder.decode(added).split("\n").filter((line) => line !== "");
  if (addedLines.every((line) => line.includes(marker))) {
    await Deno.truncate(path, sizeBefore);
    return;
  }
  const kept = text.split("\n").filter((line) => !line.includes(marker));
  await Deno.writeTextFile(path, kept.join("\n"));
}

const PLAIN = { providers: [{ name: "oa", type: "openai", api_key: "sk-plain-provider-key" }] };

Deno.test("under the start task's flags a --log-dir outside ./logs is refused with exit 2 naming --allow-write, and nothing is written there", async () => {
  const outside = await Deno.makeTempDir({ prefix: "router-log-outside-" });
  try {
    await withConfig(PLAIN, async (configPath) => {
      const result = await runToEnd(["--config", configPath, "--port", "0", "--log-dir", outside]);
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, /--allow-write/);
      assert.ok(result.stderr.includes(outside), "the message names the directory");
      assert.doesNotMatch(result.stderr, /^\s+at /m, "no stack trace");
      assert.doesNotMatch(result.stdout, /listening on/);
    });
    assert.deepEqual([...Deno.readDirSync(outside)], []);
  } finally {
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("under the start task's flags a config referencing ${HOME} exits 2 naming --allow-env", async () => {
  const config = { providers: [{ name: "oa", type: "openai", api_key: "${HOME}" }] };
  await withConfig(config, async (configPath) => {
    // HOME is set in the inherited environment; the grant does not cover it.
    assert.ok(Deno.env.get("HOME"), "HOME is set for this test");
    const result = await runToEnd(["--config", configPath, "--port", "0"]);
    assert.equal(result.code, 2, result.stderr);
    assert.match(result.stderr, /--allow-env/);
    assert.match(result.stderr, /HOME/);
    assert.doesNotMatch(result.stderr, /^\s+at /m, "no stack trace");
    assert.doesNotMatch(result.stdout, /listening on/);
  });
});

Deno.test("under the start task's flags a config file outside the project cannot be read: exit 2", async () => {
  const dir = await Deno.makeTempDir({ prefix: "router-config-outside-" });
  try {
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(PLAIN));
    const result = await runToEnd(["--config", `${dir}/config.json`, "--port", "0"]);
    assert.equal(result.code, 2, result.stderr);
    assert.match(result.stderr, /Cannot read config file/);
    assert.match(result.stderr, /--allow-read/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const WARNING = /beyond loopback without auth\.api_keys/;

/** Starts on `host` under the task's flags, stops at once, and returns stderr. */
async function startAndStop(host: string, config: object): Promise<string> {
  let stderr = "";
  await withConfig(config, async (configPath) => {
    const router = await start(["--config", configPath, "--host", host, "--port", "0"]);
    router.child.kill("SIGTERM");
    const result = await router.finished;
    assert.equal(result.code, 0, result.stderr);
    stderr = result.stderr;
  });
  return stderr;
}

Deno.test("binding --host 0.0.0.0 without auth.api_keys prints a warning on stderr", async () => {
  const stderr = await startAndStop("0.0.0.0", PLAIN);
  const warning = stderr.split("\n").find((line) => WARNING.test(line));
  assert.ok(warning !== undefined, stderr);
  assert.equal(JSON.parse(warning).level, "warn");
});

Deno.test("binding --host 0.0.0.0 with auth.api_keys, or loopback without, prints no warning", async () => {
  const withKeys = { ...PLAIN, auth: { api_keys: ["rk-permission-test-key"] } };
  assert.doesNotMatch(await startAndStop("0.0.0.0", withKeys), WARNING);
  assert.doesNotMatch(await startAndStop("127.0.0.1", PLAIN), WARNING);
});

Deno.test("under exactly the start task's flags the router reaches an https provider", async () => {
  // https needs no permission beyond --allow-net (Deno's node:https would want --allow-sys).
  const tls = new URL("./fixtures/tls/", import.meta.url);
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: await Deno.readTextFile(new URL("cert.pem", tls)),
    key: await Deno.readTextFile(new URL("key.pem", tls)),
    onListen() {},
  }, async (request) => {
    await request.body?.cancel();
    return Response.json({ id: "chatcmpl-tls", object: "chat.completion", choices: [] });
  });
  const config = {
    providers: [{
      name: "secure",
      type: "openai",
      api_key: "sk-tls-test-key",
      base_url: `https://127.0.0.1:${server.addr.port}/v1`,
    }],
    logging: { enabled: false },
  };
  try {
    await withConfig(config, async (configPath) => {
      // DENO_CERT adds the test root to the runtime's trust store.
      const router = await start(["--config", configPath, "--port", "0"], {
        DENO_CERT: new URL("ca.pem", tls).pathname,
      });
      try {
        const response = await fetch(`${router.url}/openai/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "gpt-4o", messages: [] }),
        });
        assert.equal(response.status, 200);
        assert.equal((await response.json()).id, "chatcmpl-tls");
        assert.equal(response.headers.get("x-llm-router-provider"), "secure");
      } finally {
        router.child.kill("SIGTERM");
        const result = await router.finished;
        assert.equal(result.code, 0, result.stderr);
      }
    });
  } finally {
    await server.shutdown();
  }
});
