/**
 * The router as a process: flags and config in, a listening server out, and a clean exit on
 * SIGINT/SIGTERM once in-flight requests have finished and every log line is written.
 */
import { CliError, parseCli } from "./src/cli.ts";
import { ConfigError, loadConfig } from "./src/config.ts";
import { stderrOpsLog } from "./src/ops.ts";
import { startServer } from "./src/server.ts";

const EXIT_USAGE = 2;

/**
 * Calls `onChange` after `path` changes, once per burst of events. The directory is watched,
 * not the file, since editors replace a file rather than write it in place.
 */
function watchFile(path: string, onChange: () => void): void {
  const slash = path.lastIndexOf("/");
  const dir = slash === -1 ? "." : path.slice(0, slash) || "/";
  const name = path.slice(slash + 1);
  let timer: ReturnType<typeof setTimeout> | undefined;
  (async () => {
    for await (const event of Deno.watchFs(dir, { recursive: false })) {
      if (!event.paths.some((changed) => changed.endsWith(`/${name}`))) continue;
      clearTimeout(timer);
      timer = setTimeout(onChange, 100);
    }
  })();
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
  const env = (name: string) => {
    try {
      return Deno.env.get(name);
    } catch {
      throw new ConfigError(
        `Environment variable ${name} may not be read: allow it with --allow-env=${name}`,
      );
    }
  };
  let config;
  try {
    config = await loadConfig({ path: cli.config, env });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`Invalid config:\n${error.message}`);
    return EXIT_USAGE;
  }
  const logsToFile = config.logging.enabled && config.logging.target === "file";
  const canWrite = Deno.permissions.querySync({ name: "write", path: cli.logDir });
  if (logsToFile && canWrite.state !== "granted") {
    console.error(
      `No permission to write the log directory "${cli.logDir}": run with ` +
        `--allow-write=${cli.logDir}, or set logging.target to "stdout"`,
    );
    return EXIT_USAGE;
  }
  const ops = stderrOpsLog(cli.logLevel);
  if (!isLoopback(cli.host) && config.auth.api_keys.length === 0) {
    ops.log(
      "warn",
      "Listening beyond loopback without auth.api_keys: anyone who can reach " +
        "this address can spend the providers' keys",
      { host: cli.host },
    );
  }

  // Signals are heard before the socket opens, so a stop right after start is still graceful.
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
  let reload = (_cause: string) => {};
  if (Deno.build.os !== "windows") Deno.addSignalListener("SIGHUP", () => reload("SIGHUP"));

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
  reload = async (cause) => {
    try {
      const next = await loadConfig({ path: cli.config, env });
      server.reload(next);
      ops.log("info", "Config reloaded", { cause, providers: next.providers.length });
    } catch (error) {
      const problems = error instanceof ConfigError ? error.problems : [String(error)];
      ops.log("error", "Config reload rejected, the running config stays", { cause, problems });
    }
  };
  if (cli.watchConfig && cli.config !== undefined) {
    watchFile(cli.config, () => reload("file changed"));
  }

  const signal = await stopping.promise;
  ops.log("info", "Shutting down: finishing in-flight requests", { signal });
  await server.stop();
  ops.log("info", "Stopped");
  return 0;
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || host.startsWith("127.");
}

if (import.meta.main) Deno.exit(await main());
