/**
 * The router as a process: flags and config in, a listening server out, and a clean exit on
 * SIGINT/SIGTERM once in-flight requests have finished and every log line is written.
 */
import { CliError, parseCli } from "./src/cli.ts";
import { ConfigError, loadConfig } from "./src/config.ts";
import { stderrOpsLog } from "./src/ops.ts";
import { startServer } from "./src/server.ts";

const EXIT_USAGE = 2;

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
  const ops = stderrOpsLog(cli.logLevel);
  const server = startServer(config, {
    host: cli.host,
    port: cli.port,
    logDir: cli.logDir,
    ops,
    onListen: (url) => {
      console.log(`listening on ${url}`);
      ops.log("info", "Started", { url, providers: config.providers.length });
    },
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
  ops.log("info", "Shutting down: finishing in-flight requests", { signal });
  await server.stop();
  ops.log("info", "Stopped");
  return 0;
}

if (import.meta.main) Deno.exit(await main());
