/**
 * The router as a process: flags and config in, a listening server out, and a clean exit on
 * SIGINT/SIGTERM once in-flight requests have finished and every log line is written.
 */
import { CliError, parseCli } from "./src/cli.ts";
import { ConfigError, loadConfig } from "./src/config.ts";
import { startServer } from "./src/server.ts";

const EXIT_USAGE = 2;

function operational(level: "info" | "warn" | "error", msg: string, fields: object = {}): void {
  console.error(JSON.stringify({ ts: new Date().toISOString(), level, msg, ...fields }));
}

async function main(): Promise<number> {
  let cli;
  try {
    cli = parseCli(Deno.args);
  } catch (error) {
    if (!(error instanceof CliError)) throw error;
    console.error(`${error.message}\nRun with --help for usage.`);
    return EXIT_USAGE;
  }
  if (cli.kind !== "run") {
    console.log(cli.text);
    return 0;
  }
  let config;
  try {
    config = await loadConfig({ path: cli.config, env: (name) => Deno.env.get(name) });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`Invalid config:\n${error.message}`);
    return EXIT_USAGE;
  }
  const server = startServer(config, {
    host: cli.host,
    port: cli.port,
    logDir: cli.logDir,
    onListen: (url) => console.log(`listening on ${url}`),
    onWarning: (message) => operational("error", message),
  });

  const stopping = Promise.withResolvers<Deno.Signal>();
  let signalled = false;
  const signals: Deno.Signal[] = Deno.build.os === "windows"
    ? ["SIGINT", "SIGBREAK"]
    : ["SIGINT", "SIGTERM"];
  for (const signal of signals) {
    Deno.addSignalListener(signal, () => {
      if (signalled) Deno.exit(1);
      signalled = true;
      stopping.resolve(signal);
    });
  }
  const signal = await stopping.promise;
  operational("info", "Shutting down: finishing in-flight requests", { signal });
  await server.stop();
  operational("info", "Stopped");
  return 0;
}

if (import.meta.main) Deno.exit(await main());
