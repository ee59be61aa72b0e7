/**
 * Command-line flags to a plain object. No I/O, so `main.ts` owns printing and
 * exiting and tests can call `parseCli` with any argument list.
 */
import { parseArgs } from "node:util";
import { CONFIG_ENV_VAR } from "./config.ts";
import { LOG_LEVELS, type LogLevel } from "./ops.ts";
import { VERSION } from "./version.ts";

/** Everything `main.ts` needs to start serving. */
export interface CliOptions {
  kind: "run";
  /** Config file path; `undefined` means read the config from the environment. */
  config: string | undefined;
  host: string;
  /** 0 asks the OS for any free port. */
  port: number;
  logDir: string;
  logLevel: LogLevel;
  /** Reload the config file whenever it changes (SIGHUP always reloads it). */
  watchConfig: boolean;
}

/** A request to print `text` and exit successfully instead of serving. */
export interface CliUsage {
  kind: "help" | "version";
  text: string;
}

/** Bad arguments; `main.ts` prints the message with a hint to run `--help`. */
export class CliError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CliError";
  }
}

/** Shared by the help text and the parser so the two never disagree. */
export const CLI_DEFAULTS = {
  host: "127.0.0.1",
  port: 8000,
  logDir: "logs",
  logLevel: "info",
} as const;

/** Printed for `--help`; documents the environment too since config may come from it. */
export const HELP_TEXT = `Usage: llm-api-router [options]

Routes OpenAI- and Anthropic-format requests to upstream providers in priority order.

Options:
  --config PATH   JSON config file (default: the ${CONFIG_ENV_VAR} variable)
  --host H        Address to listen on (default: ${CLI_DEFAULTS.host})
  --port P        Port to listen on, 0 to 65535; 0 picks any free port (default: ${CLI_DEFAULTS.port})
  --log-dir DIR   Directory for the JSON-lines request log (default: ${CLI_DEFAULTS.logDir})
  --log-level L   Lowest operational message printed on stderr: debug, info, warn, error
                  (default: ${CLI_DEFAULTS.logLevel})
  --watch-config  Reload the config file when it changes (SIGHUP reloads it too)
  -h, --help      Show this help and exit
  -V, --version   Show the version and exit

Environment:
  ${CONFIG_ENV_VAR}   The JSON config text, used when --config is absent
  Config strings may reference variables as \${NAME}; write $\${ for a literal \${`;

/** Throws `CliError` rather than exiting so the caller decides how to report it. */
export function parseCli(args: string[]): CliOptions | CliUsage {
  const values = parseFlags(args);
  if (values.help) return { kind: "help", text: HELP_TEXT };
  if (values.version) return { kind: "version", text: `llm-api-router ${VERSION}` };
  return {
    kind: "run",
    config: values.config === undefined ? undefined : nonEmpty("--config", values.config),
    host: nonEmpty("--host", values.host),
    port: values.port === undefined ? CLI_DEFAULTS.port : parsePort(values.port),
    logDir: nonEmpty("--log-dir", values["log-dir"]),
    logLevel: parseLevel(values["log-level"]),
    watchConfig: values["watch-config"] === true,
  };
}

function parseFlags(args: string[]) {
  try {
    return parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: "string" },
        host: { type: "string", default: CLI_DEFAULTS.host },
        port: { type: "string" },
        "log-dir": { type: "string", default: CLI_DEFAULTS.logDir },
        "log-level": { type: "string", default: CLI_DEFAULTS.logLevel },
        "watch-config": { type: "boolean" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
    }).values;
  } catch (err) {
    // node:util's messages run on with advice about `--`; keep the first sentence.
    const message = err instanceof Error ? err.message.split(/\.\s/)[0].replace(/\.$/, "") : "";
    throw new CliError(message || "Invalid arguments", { cause: err });
  }
}

function parsePort(text: string): number {
  const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
  if (!(port <= 65535)) {
    throw new CliError(`Invalid --port value "${text}": expected an integer from 0 to 65535`);
  }
  return port;
}

function parseLevel(text: string): LogLevel {
  const level = LOG_LEVELS.find((known) => known === text);
  if (level === undefined) {
    throw new CliError(`Invalid --log-level value "${text}": expected ${LOG_LEVELS.join(", ")}`);
  }
  return level;
}

function nonEmpty(flag: string, value: string): string {
  if (value === "") throw new CliError(`Invalid ${flag} value "": expected a non-empty value`);
  return value;
}
