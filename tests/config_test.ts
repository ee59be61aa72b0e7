import assert from "node:assert/strict";
import { type Config, ConfigError, loadConfig, parseConfig } from "../src/config.ts";

const SEED = {
  model_mapping: {
    "gpt-4": ["gpt-4o", { provider: "azure-east", model: "gpt-4-prod" }],
    "claude-3-opus": ["claude-3-opus-20240229"],
  },
  providers: [
    {
      name: "openai-primary",
      type: "openai",
      api_key: "${OPENAI_API_KEY}",
      base_url: "https://api.openai.com/v1",
      priority: 1,
    },
    {
      name: "azure-east",
      type: "openai",
      api_key: "${AZURE_KEY}",
      base_url: "https://example.openai.azure.com/openai/v1",
      priority: 2,
    },
    { name: "anthropic-main", type: "anthropic", api_key: "${ANTHROPIC_API_KEY}", priority: 1 },
  ],
};

const ENV: Record<string, string> = {
  OPENAI_API_KEY: "sk-openai",
  AZURE_KEY: "az-key",
  ANTHROPIC_API_KEY: "sk-ant",
};
const env = (name: string): string | undefined => ENV[name];
const noEnv = (): string | undefined => undefined;

/** The smallest valid config, with `extra` merged into its only provider. */
function oneProvider(extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ providers: [{ name: "p", type: "openai", ...extra }] });
}

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`);
    return err;
  }
  assert.fail("expected a ConfigError");
}

async function configErrorAsync(promise: Promise<unknown>): Promise<ConfigError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`);
    return err;
  }
  assert.fail("expected a ConfigError");
}

const DEFAULT_TIMEOUTS = { first_byte_ms: 60000, idle_ms: 120000, total_ms: 600000 };

Deno.test("config parses the seed example and applies defaults", () => {
  const config: Config = parseConfig(JSON.stringify(SEED), env);
  assert.deepEqual(config, {
    model_mapping: {
      "gpt-4": ["gpt-4o", { provider: "azure-east", model: "gpt-4-prod" }],
      "claude-3-opus": ["claude-3-opus-20240229"],
    },
    providers: [
      {
        name: "openai-primary",
        type: "openai",
        api_key: "sk-openai",
        base_url: "https://api.openai.com/v1",
        priority: 1,
        timeouts: DEFAULT_TIMEOUTS,
      },
      {
        name: "azure-east",
        type: "openai",
        api_key: "az-key",
        base_url: "https://example.openai.azure.com/openai/v1",
        priority: 2,
        timeouts: DEFAULT_TIMEOUTS,
      },
      {
        name: "anthropic-main",
        type: "anthropic",
        api_key: "sk-ant",
        base_url: "https://api.anthropic.com",
        priority: 1,
        timeouts: DEFAULT_TIMEOUTS,
      },
    ],
    timeouts: DEFAULT_TIMEOUTS,
    cooldown: { failures: 3, window_ms: 60000, duration_ms: 30000, max_retry_after_ms: 60000 },
    retries: { per_provider: 0, backoff_ms: 200, max_backoff_ms: 2000 },
    limits: { max_request_bytes: 32 * 1024 * 1024 },
    shutdown: { grace_ms: 30000 },
    auth: { api_keys: [], protect_pages: true },
    cors: { origins: [] },
    logging: {
      enabled: true,
      target: "file",
      max_bytes: 50 * 1024 * 1024,
      max_files: 10,
      max_body_bytes: 1024 * 1024,
    },
    openai: { stream_usage: "off" },
  });
});

Deno.test("config rejects unknown keys inside sections and bad section values", () => {
  const err = configError(() =>
    parseConfig(
      JSON.stringify({
        ...SEED,
        logging: { target: "syslog", max_files: -1, max_bytez: 1 },
        openai: { stream_usage: "always" },
      }),
      env,
    )
  );
  assert.match(err.message, /logging: Unrecognized key "max_bytez"/);
  assert.match(err.message, /logging\.target: Expected one of "file", "stdout"/);
  assert.match(err.message, /logging\.max_files: Expected a number >= 0/);
  assert.match(err.message, /openai\.stream_usage: Expected one of "off", "inject"/);
});

Deno.test("config defaults model_mapping to empty and fills the openai base_url", () => {
  const config = parseConfig(oneProvider(), noEnv);
  assert.deepEqual(config.model_mapping, {});
  assert.equal(config.providers[0].base_url, "https://api.openai.com/v1");
  assert.equal(config.providers[0].priority, 1);
  assert.equal(config.providers[0].api_key, undefined);
});

Deno.test("config strips trailing slashes from base_url", () => {
  const config = parseConfig(oneProvider({ base_url: "http://localhost:11434/v1//" }), noEnv);
  assert.equal(config.providers[0].base_url, "http://localhost:11434/v1");
});

Deno.test("config refuses credentials in base_url", () => {
  for (const base_url of ["http://user:secret@localhost:8080/v1", "https://user@gateway.example"]) {
    const error = configError(() => parseConfig(oneProvider({ base_url }), noEnv));
    assert.match(error.message, /base_url: must not carry credentials/);
  }
  const plain = parseConfig(oneProvider({ base_url: "http://localhost:8080/v1?k=a@b" }), noEnv);
  assert.equal(plain.providers[0].base_url, "http://localhost:8080/v1?k=a@b");
});

Deno.test("config maps an object target without model to model null", () => {
  const text = JSON.stringify({
    model_mapping: { fast: [{ provider: "p" }] },
    providers: [{ name: "p", type: "openai" }],
  });
  assert.deepEqual(parseConfig(text, noEnv).model_mapping, {
    fast: [{ provider: "p", model: null }],
  });
});

Deno.test("config rejects unknown keys naming them and their path", () => {
  const err = configError(() => parseConfig(oneProvider({ priorty: 2 }), noEnv));
  assert.equal(err.message, 'providers[0]: Unrecognized key "priorty"');
  const top = configError(() =>
    parseConfig(JSON.stringify({ providers: [{ name: "p", type: "openai" }], loging: {} }), noEnv)
  );
  assert.equal(top.message, 'config: Unrecognized key "loging"');
});

Deno.test("config rejects unknown keys inside a mapping target", () => {
  const text = JSON.stringify({
    model_mapping: { "gpt-4": ["gpt-4o", { provider: "p", modle: "x" }] },
    providers: [{ name: "p", type: "openai" }],
  });
  const err = configError(() => parseConfig(text, noEnv));
  assert.equal(err.message, 'model_mapping.gpt-4[1]: Unrecognized key "modle"');
});

Deno.test("config substitutes env variables in nested strings", () => {
  const text = JSON.stringify({
    model_mapping: { "${ALIAS}": ["${MODEL}-mini"] },
    providers: [{
      name: "p",
      type: "openai",
      base_url: "https://${HOST}/v1",
      models: ["a", "pre-${MODEL}-post"],
    }],
  });
  const vars: Record<string, string> = { HOST: "example.com", MODEL: "gpt-4o", ALIAS: "x" };
  const config = parseConfig(text, (name) => vars[name]);
  assert.equal(config.providers[0].base_url, "https://example.com/v1");
  assert.deepEqual(config.providers[0].models, ["a", "pre-gpt-4o-post"]);
  // Keys are never substituted.
  assert.deepEqual(config.model_mapping, { "${ALIAS}": ["gpt-4o-mini"] });
});

Deno.test("config writes a literal ${ for $${ without looking the variable up", () => {
  const looked: string[] = [];
  const config = parseConfig(oneProvider({ api_key: "$${X}and$${Y" }), (name) => {
    looked.push(name);
    return "bad";
  });
  assert.equal(config.providers[0].api_key, "${X}and${Y");
  assert.deepEqual(looked, []);
});

Deno.test("config reports every missing env variable with its path", () => {
  const err = configError(() =>
    parseConfig(JSON.stringify(SEED), (n) => n === "AZURE_KEY" ? "k" : undefined)
  );
  assert.deepEqual(err.problems, [
    "providers[0].api_key: Environment variable OPENAI_API_KEY is not set",
    "providers[2].api_key: Environment variable ANTHROPIC_API_KEY is not set",
  ]);
  assert.equal(err.message, err.problems.join("\n"));
});

Deno.test("config does not add a schema error for a value with a missing variable", () => {
  const err = configError(() => parseConfig(oneProvider({ base_url: "${BASE_URL}" }), noEnv));
  assert.deepEqual(err.problems, [
    "providers[0].base_url: Environment variable BASE_URL is not set",
  ]);
});

Deno.test("config reports bad JSON", () => {
  const err = configError(() => parseConfig("{ providers: [", noEnv));
  assert.match(err.message, /^Config is not valid JSON: /);
});

Deno.test("config rejects duplicate provider names", () => {
  const text = JSON.stringify({
    providers: [
      { name: "x", type: "openai" },
      { name: "y", type: "anthropic" },
      { name: "x", type: "anthropic" },
    ],
  });
  const err = configError(() => parseConfig(text, noEnv));
  assert.equal(err.message, 'providers[2].name: Duplicate provider name "x"');
});

Deno.test("config rejects a mapping target naming an unknown provider", () => {
  const seed = structuredClone(SEED);
  seed.providers.splice(1, 1);
  const err = configError(() => parseConfig(JSON.stringify(seed), env));
  assert.equal(err.message, 'model_mapping.gpt-4[1].provider: Unknown provider "azure-east"');
});

Deno.test("config rejects an unknown provider type naming the value", () => {
  const err = configError(() => parseConfig(oneProvider({ type: "azure" }), noEnv));
  assert.equal(
    err.message,
    'providers[0].type: Expected one of "openai", "anthropic", received "azure"',
  );
});

Deno.test("config rejects a non-integer priority", () => {
  const err = configError(() => parseConfig(oneProvider({ priority: 1.5 }), noEnv));
  assert.equal(err.message, "providers[0].priority: Expected integer, received 1.5");
  const str = configError(() => parseConfig(oneProvider({ priority: "2" }), noEnv));
  assert.equal(str.message, 'providers[0].priority: Expected integer, received "2"');
});

Deno.test("config rejects a non-positive timeout_ms", () => {
  const err = configError(() => parseConfig(oneProvider({ timeout_ms: 0 }), noEnv));
  assert.equal(err.message, "providers[0].timeout_ms: Expected a number > 0, received 0");
});

Deno.test("config rejects a base_url that is not an http(s) URL", () => {
  for (const base_url of ["ftp://example.com", "not a url"]) {
    const err = configError(() => parseConfig(oneProvider({ base_url }), noEnv));
    assert.equal(
      err.message,
      `providers[0].base_url: Expected an http(s) URL, received ${JSON.stringify(base_url)}`,
    );
  }
});

Deno.test("config lists every problem, one per line", () => {
  const text = JSON.stringify({
    model_mapping: { "gpt-4": [], o1: [42] },
    providers: [{ name: "", type: "openai", priority: 1.5 }, { type: "anthropic" }],
  });
  const err = configError(() => parseConfig(text, noEnv));
  assert.deepEqual(err.problems, [
    "model_mapping.gpt-4: Must not be empty",
    "model_mapping.o1[0]: Expected string or object, received 42",
    "providers[0].name: Must not be empty",
    "providers[0].priority: Expected integer, received 1.5",
    "providers[1].name: Missing required field",
  ]);
});

Deno.test("config requires at least one provider", () => {
  assert.equal(
    configError(() => parseConfig('{"providers": []}', noEnv)).message,
    "providers: Must not be empty",
  );
  assert.equal(
    configError(() => parseConfig("{}", noEnv)).message,
    "providers: Missing required field",
  );
  assert.equal(
    configError(() => parseConfig("[]", noEnv)).message,
    "config: Expected object, received array",
  );
});

Deno.test("loadConfig reads a config file", async () => {
  const path = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await Deno.writeTextFile(path, JSON.stringify(SEED));
    const config = await loadConfig({ path, env });
    assert.equal(config.providers.length, 3);
    assert.equal(config.providers[0].api_key, "sk-openai");
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("loadConfig prefers the file over LLM_ROUTER_CONFIG", async () => {
  const path = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await Deno.writeTextFile(path, oneProvider());
    const config = await loadConfig({
      path,
      env: (n) => n === "LLM_ROUTER_CONFIG" ? "{" : undefined,
    });
    assert.equal(config.providers[0].name, "p");
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("loadConfig reads LLM_ROUTER_CONFIG when no path is given", async () => {
  const vars: Record<string, string> = { LLM_ROUTER_CONFIG: JSON.stringify(SEED), ...ENV };
  const config = await loadConfig({ env: (name) => vars[name] });
  assert.equal(config.providers[2].api_key, "sk-ant");
});

Deno.test("loadConfig explains how to supply a config when there is none", async () => {
  const err = await configErrorAsync(loadConfig({ env: noEnv }));
  assert.equal(err.message, "No config: pass --config PATH or set LLM_ROUTER_CONFIG");
});

Deno.test("loadConfig names an unreadable path and the reason", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/missing.json`;
    const err = await configErrorAsync(loadConfig({ path, env: noEnv }));
    assert.ok(err.message.startsWith(`Cannot read config file "${path}": `), err.message);
    assert.match(err.message, /No such file or directory/);
    assert.ok(err.cause instanceof Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config resolves each provider's timeouts: its own, its timeout_ms, then the global", () => {
  const config = parseConfig(
    JSON.stringify({
      timeouts: { first_byte_ms: 5000, idle_ms: 7000 },
      providers: [
        { name: "a", type: "openai" },
        { name: "b", type: "openai", timeout_ms: 1000 },
        {
          name: "c",
          type: "openai",
          timeout_ms: 1000,
          timeouts: { first_byte_ms: 2000, total_ms: 9000 },
        },
      ],
    }),
    noEnv,
  );
  assert.deepEqual(config.providers.map((p) => p.timeouts), [
    { first_byte_ms: 5000, idle_ms: 7000, total_ms: 600000 },
    { first_byte_ms: 1000, idle_ms: 7000, total_ms: 600000 },
    { first_byte_ms: 2000, idle_ms: 7000, total_ms: 9000 },
  ]);
});
