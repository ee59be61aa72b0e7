import assert from "node:assert/strict";
import { CliError, HELP_TEXT, parseCli } from "../src/cli.ts";
import { VERSION } from "../src/version.ts";

function cliError(args: string[]): CliError {
  try {
    parseCli(args);
  } catch (err) {
    assert.ok(err instanceof CliError, `expected CliError, got ${err}`);
    return err;
  }
  assert.fail(`expected a CliError for ${JSON.stringify(args)}`);
}

Deno.test("cli applies defaults with no flags", () => {
  assert.deepEqual(parseCli([]), {
    kind: "run",
    config: undefined,
    host: "127.0.0.1",
    port: 8000,
    logDir: "logs",
    logLevel: "info",
    watchConfig: false,
  });
});

Deno.test("cli reads every flag", () => {
  const args = [
    "--config",
    "router.json",
    "--host",
    "0.0.0.0",
    "--port",
    "9000",
    "--log-dir",
    "/tmp/l",
    "--log-level",
    "warn",
    "--watch-config",
  ];
  assert.deepEqual(parseCli(args), {
    kind: "run",
    config: "router.json",
    host: "0.0.0.0",
    port: 9000,
    logDir: "/tmp/l",
    logLevel: "warn",
    watchConfig: true,
  });
});

Deno.test("cli accepts --flag=value syntax", () => {
  const options = parseCli(["--config=a.json", "--port=443"]);
  assert.equal(options.kind, "run");
  assert.equal(options.kind === "run" && options.config, "a.json");
  assert.equal(options.kind === "run" && options.port, 443);
});

Deno.test("cli accepts --port 0 for any free port", () => {
  const options = parseCli(["--port", "0"]);
  assert.equal(options.kind === "run" && options.port, 0);
  assert.equal(parseCli(["--port", "65535"]).kind, "run");
});

Deno.test("cli rejects a bad port naming the value", () => {
  for (const port of ["abc", "65536", "-1", "80.5", "1e3", ""]) {
    assert.equal(
      cliError([`--port=${port}`]).message,
      `Invalid --port value "${port}": expected an integer from 0 to 65535`,
    );
  }
});

Deno.test("cli rejects an unknown flag naming it", () => {
  assert.equal(cliError(["--verbose"]).message, "Unknown option '--verbose'");
  assert.equal(cliError(["-x"]).message, "Unknown option '-x'");
});

Deno.test("cli rejects positional arguments", () => {
  assert.equal(cliError(["config.json"]).message, "Unexpected argument 'config.json'");
});

Deno.test("cli rejects a flag missing its value", () => {
  assert.match(cliError(["--config"]).message, /--config/);
});

Deno.test("cli returns help text for --help and -h", () => {
  for (const flag of ["--help", "-h"]) {
    assert.deepEqual(parseCli([flag]), { kind: "help", text: HELP_TEXT });
  }
  // Help wins over values that would otherwise be rejected.
  assert.equal(parseCli(["--port", "nope", "--help"]).kind, "help");
});

Deno.test("cli help text documents every flag and LLM_ROUTER_CONFIG", () => {
  for (
    const word of [
      "--config",
      "--host",
      "--port",
      "--log-dir",
      "--help",
      "--version",
      "LLM_ROUTER_CONFIG",
    ]
  ) {
    assert.ok(HELP_TEXT.includes(word), `help text lacks ${word}`);
  }
});

Deno.test("cli returns the version for --version and -V", () => {
  for (const flag of ["--version", "-V"]) {
    assert.deepEqual(parseCli([flag]), { kind: "version", text: `llm-api-router ${VERSION}` });
  }
});

Deno.test("cli rejects an unknown --log-level naming the levels", () => {
  assert.match(cliError(["--log-level", "loud"]).message, /--log-level value "loud".*debug, info/);
});
