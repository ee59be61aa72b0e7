/**
 * The router for `deno serve` and Deno Deploy: the handler as a default export, its whole config
 * from `LLM_ROUTER_CONFIG`, and request records on stdout, so it needs only `--allow-net` and
 * `--allow-env`, no file system.
 */
import { createHandler } from "./src/app.ts";
import { configSecrets, loadConfig } from "./src/config.ts";
import { createRecordSink } from "./src/log.ts";

const config = await loadConfig({ env: (name) => Deno.env.get(name) });
const sink = createRecordSink({ ...config.logging, target: "stdout" }, {
  dir: "",
  secrets: configSecrets(config),
  onError: (message) => console.error(JSON.stringify({ level: "error", msg: message })),
});

export default {
  fetch: createHandler(() => config, { sink }),
} satisfies Deno.ServeDefaultExport;
