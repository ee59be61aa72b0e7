/**
 * The router as a process: flags and config in, a listening server out, and a clean exit on
 * SIGINT/SIGTERM once in-flight requests have finished and every log line is written.
 */
import { createHandler } from "./src/app.ts";
import { CliError, parseCli } from "./src/cli.ts";
import { ConfigError, loadConfig } from "./src/config.ts";
import { RotatingJsonLinesFile } from "./src/log.ts";

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
  const sink = new RotatingJsonLinesFile(
    cli.logDir,
    { maxBytes: 50 * 1024 * 1024, maxFiles: 10 },
    (message) => operational("error", message),
  );
  const handler = createHandler(config, { sink });
  const server = Deno.serve({
    hostname: cli.host,
    port: cli.port,
    onListen: ({ hostname, port }) => {
      const host = hostname.includes(":") ? `[${hostname}]` : hostname;
      console.log(`listening on http://${host}:${port}`);
    },
  }, handler);

  const stopped = Promise.withResolvers<void>();
  let stopping = false;
  const stop = (signal: Deno.Signal) => {
    if (stopping) Deno.exit(1);
    stopping = true;
    operational("info", "Shutting down: finishing in-flight requests", { signal });
    stopped.resolve();
  };
  const signals: Deno.Signal[] = Deno.build.os === "windows"
    ? ["SIGINT", "SIGBREAK"]
    : ["SIGINT", "SIGTERM"];
  for (const signal of signals) Deno.addSignalListener(signal, () => stop(signal));
  await stopped.promise;
  await server.shutdown();
  await sink.close();
  operational("info", "Stopped");
  return 0;
}

if (import.meta.main) Deno.exit(await main());
