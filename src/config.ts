/**
 * Router config: one zod schema over JSON whose `${NAME}` references are resolved
 * first, so secrets can stay in the environment instead of the file.
 */
import { z } from "zod";
import {
  flattenIssues,
  formatPath,
  issueMessage,
  type Path,
  type Problem,
} from "./config_errors.ts";

/** The variable that carries the JSON config text when no `--config` path is given. */
export const CONFIG_ENV_VAR = "LLM_ROUTER_CONFIG";

/** Injected instead of `Deno.env.get` so parsing stays pure and testable. */
export type EnvLookup = (name: string) => string | undefined;

const DEFAULT_BASE_URLS = {
  openai: "https://api.openai.com/v1",
  anthropic: "https://api.anthropic.com",
} as const;

const duration = () => z.int().positive();

/**
 * How long an attempt may take: to its commit point (response headers; for streams, the first
 * output event), between two chunks of its body, and in all from the request's arrival.
 */
const timeoutsSchema = z.strictObject({
  first_byte_ms: duration().default(60_000),
  idle_ms: duration().default(120_000),
  total_ms: duration().default(600_000),
});

/** A provider's own timeouts: only what it sets, the rest comes from the global ones. */
const timeoutOverridesSchema = z.strictObject({
  first_byte_ms: duration(),
  idle_ms: duration(),
  total_ms: duration(),
}).partial();

const providerSchema = z.strictObject({
  name: z.string().min(1),
  type: z.enum(["openai", "anthropic"]),
  api_key: z.string().optional(),
  base_url: z.url({ protocol: /^https?$/ }).refine(
    (url) => !/^[a-z]+:\/\/[^/?#]*@/i.test(url),
    "must not carry credentials (user:password@host): set the provider's key as api_key",
  ).optional(),
  priority: z.int().default(1),
  models: z.array(z.string().min(1)).optional(),
  /** Shorthand for `timeouts.first_byte_ms`. */
  timeout_ms: duration().optional(),
  timeouts: timeoutOverridesSchema.optional(),
}).transform((p) => ({
  ...p,
  base_url: (p.base_url ?? DEFAULT_BASE_URLS[p.type]).replace(/\/+$/, ""),
}));

/** A bare string keeps the router's provider order; an object pins one provider. */
const mappingTargetSchema = z.union([
  z.string().min(1),
  z.strictObject({ provider: z.string().min(1), model: z.string().min(1).optional() })
    .transform((t) => ({ provider: t.provider, model: t.model ?? null })),
]);

const MIB = 1024 * 1024;

/** The request log; see the README's "Request log". */
const loggingSchema = z.strictObject({
  enabled: z.boolean().default(true),
  target: z.enum(["file", "stdout"]).default("file"),
  max_bytes: z.int().positive().default(50 * MIB),
  max_files: z.int().min(0).default(10),
  /** Bodies larger than this are logged cut, with `*_truncated: true`; 0 logs them whole. */
  max_body_bytes: z.int().min(0).default(MIB),
});

/** When a failing provider is passed over for a while, and how long at most. */
const cooldownSchema = z.strictObject({
  failures: z.int().positive().default(3),
  window_ms: duration().default(60_000),
  duration_ms: duration().default(30_000),
  /** Caps a provider's own `Retry-After`, and so the longest the router waits for one. */
  max_retry_after_ms: duration().default(60_000),
});

/** Same-provider retries for connection errors and 5xx, before falling back. */
const retriesSchema = z.strictObject({
  per_provider: z.int().min(0).default(0),
  backoff_ms: duration().default(200),
  max_backoff_ms: duration().default(2_000),
});

const limitsSchema = z.strictObject({
  max_request_bytes: z.int().positive().default(32 * MIB),
  /** Requests in flight at once; past it clients get 429. Unset: no limit. */
  max_concurrent: z.int().positive().optional(),
});

/** An inbound key; a bare string gets the name `key-N` (its place in the list). */
const apiKeySchema = z.union([
  z.string().min(1),
  z.strictObject({ name: z.string().min(1), key: z.string().min(1) }),
]);

/** Who may spend the providers' keys: holders of one of these, or anyone when there are none. */
const authSchema = z.strictObject({
  api_keys: z.array(apiKeySchema).default([]).transform((keys) =>
    keys.map((entry, i) => typeof entry === "string" ? { name: `key-${i + 1}`, key: entry } : entry)
  ),
  /** `/stats`, `/metrics` and `/health/providers` need a key too when keys are set. */
  protect_pages: z.boolean().default(true),
});

const corsSchema = z.strictObject({
  origins: z.array(z.string().min(1)).default([]),
});

const shutdownSchema = z.strictObject({
  grace_ms: z.int().min(0).default(30_000),
});

/** Behaviour specific to the OpenAI endpoint. */
const openaiSchema = z.strictObject({
  /** `inject` asks upstream for stream usage the client did not ask for, and hides it again. */
  stream_usage: z.enum(["off", "inject"]).default("off"),
});

// Each top-level section is its own schema with its defaults, so `{}` is always valid for it.
const configSchema = z.strictObject({
  model_mapping: z.record(z.string(), z.array(mappingTargetSchema).min(1)).default({}),
  providers: z.array(providerSchema).min(1),
  timeouts: timeoutsSchema.default(timeoutsSchema.parse({})),
  cooldown: cooldownSchema.default(cooldownSchema.parse({})),
  retries: retriesSchema.default(retriesSchema.parse({})),
  limits: limitsSchema.default(limitsSchema.parse({})),
  shutdown: shutdownSchema.default(shutdownSchema.parse({})),
  auth: authSchema.default(authSchema.parse({})),
  cors: corsSchema.default(corsSchema.parse({})),
  logging: loggingSchema.default(loggingSchema.parse({})),
  openai: openaiSchema.default(openaiSchema.parse({})),
}).superRefine((config, ctx) => {
  const names = new Set<string>();
  const fail = (path: PropertyKey[], message: string) =>
    ctx.addIssue({ code: "custom", path, message });
  config.providers.forEach(({ name }, i) => {
    if (names.has(name)) fail(["providers", i, "name"], `Duplicate provider name "${name}"`);
    names.add(name);
  });
  for (const [model, targets] of Object.entries(config.model_mapping)) {
    targets.forEach((t, i) => {
      if (typeof t === "string" || names.has(t.provider)) return;
      fail(["model_mapping", model, i, "provider"], `Unknown provider "${t.provider}"`);
    });
  }
}).transform(({ providers, ...config }) => ({
  ...config,
  // Each provider's effective timeouts: its own, else its `timeout_ms`, else the global ones.
  providers: providers.map(({ timeout_ms, timeouts, ...provider }) => ({
    ...provider,
    timeouts: {
      first_byte_ms: timeouts?.first_byte_ms ?? timeout_ms ?? config.timeouts.first_byte_ms,
      idle_ms: timeouts?.idle_ms ?? config.timeouts.idle_ms,
      total_ms: timeouts?.total_ms ?? config.timeouts.total_ms,
    },
  })),
}));

/** The validated config with every default filled in: the only shape the app sees. */
export type Config = z.output<typeof configSchema>;
/** One upstream, with `base_url`, `priority` and its effective `timeouts` always present. */
export type ProviderConfig = Config["providers"][number];

/** Carries every problem found, one per line, so a user can fix a config in one pass. */
export class ConfigError extends Error {
  readonly problems: readonly string[];

  constructor(problems: string | readonly string[], options?: ErrorOptions) {
    const list = typeof problems === "string" ? [problems] : problems;
    super(list.join("\n"), options);
    this.name = "ConfigError";
    this.problems = list;
  }
}

/** Pure so tests and `deploy.ts` can validate config text without touching disk or env. */
export function parseConfig(text: string, env: EnvLookup): Config {
  const problems: Problem[] = [];
  const resolved = substituteEnv(parseJson(text), { env, path: [], problems });
  const result = configSchema.safeParse(resolved, { error: issueMessage });
  if (result.success && problems.length === 0) return result.data;
  // A value with an unset variable would only produce a second, misleading error.
  const unresolved = new Set(problems.map((p) => p.path));
  const schemaProblems = result.success ? [] : flattenIssues(result.error.issues, []);
  problems.push(...schemaProblems.filter((p) => !unresolved.has(p.path)));
  throw new ConfigError([...new Set(problems.map((p) => `${p.path}: ${p.message}`))]);
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`Config is not valid JSON: ${errorText(err)}`, { cause: err });
  }
}

/** The one place config I/O happens, so `main.ts` and `deploy.ts` agree on precedence. */
export async function loadConfig(opts: { path?: string; env: EnvLookup }): Promise<Config> {
  const { path, env } = opts;
  if (path === undefined) {
    const text = env(CONFIG_ENV_VAR);
    if (!text?.trim()) {
      throw new ConfigError(`No config: pass --config PATH or set ${CONFIG_ENV_VAR}`);
    }
    return parseConfig(text, env);
  }
  const text = await Deno.readTextFile(path).catch((err: unknown) => {
    throw new ConfigError(`Cannot read config file "${path}": ${errorText(err)}`, { cause: err });
  });
  return parseConfig(text, env);
}

// `$${` escapes a literal `${`; otherwise `${NAME}` is a reference.
const ENV_REF = /\$\$\{|\$\{([^}]*)\}/g;

function substituteEnv(
  value: unknown,
  ctx: { env: EnvLookup; path: Path; problems: Problem[] },
): unknown {
  const { env, path, problems } = ctx;
  if (typeof value === "string") {
    return value.replace(ENV_REF, (match, name: string | undefined) => {
      if (name === undefined) return "${";
      const found = env(name);
      if (found !== undefined) return found;
      problems.push({ path: formatPath(path), message: `Environment variable ${name} is not set` });
      return match;
    });
  }
  if (Array.isArray(value)) {
    return value.map((item, i) => substituteEnv(item, { ...ctx, path: [...path, i] }));
  }
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, substituteEnv(v, { ...ctx, path: [...path, k] })]),
    );
  }
  return value;
}

const errorText = (err: unknown) => err instanceof Error ? err.message : String(err);

/** Every secret the config holds, so no log line can carry one. */
export function configSecrets(config: Config): string[] {
  return [
    ...config.providers.flatMap((provider) => provider.api_key ? [provider.api_key] : []),
    ...config.auth.api_keys.map((entry) => entry.key),
  ];
}
