/**
 * The router for `deno serve` and Deno Deploy: the handler as a default export, its whole config
 * from `LLM_ROUTER_CONFIG`, and request records on stdout, so it needs only `--allow-net` and
 * `--allow-env`, no file system.
 */
import { createHandler } from "./src/app.ts";
import { ConfigError, configSecrets, loadConfig } from "./src/config.ts";
import { createRecordSink } from "./src/log.ts";

let config;
try {
  config = await loadConfig({ env: (name) => Deno.env.get(name) });
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  console.error(`Invalid config:\n${error.message}`);
  Deno.exit(2);
}
const sink = createRecordSink({ ...config.logging, target: "stdout" }, {
  dir: "",
  secrets: configSecrets(config),
  onError: (message) => console.error(JSON.stringify({ level: "error", msg: message })),
});

export default {
  fetch: createHandler(() => config, { sink }),
} satisfies Deno.ServeDefaultExport;
