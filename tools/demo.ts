/**
 * `deno task demo`: the router in front of two mock providers, one of which fails every other
 * request, so a newcomer with no API key can send requests and watch a fallback in the log.
 */
import { parseArgs } from "node:util";
import { parseConfig } from "../src/config.ts";
import type { RequestRecord } from "../src/record.ts";
import { stderrOpsLog } from "../src/ops.ts";
import { startServer } from "../src/server.ts";
import { defaultReply, failureReply, startMockUpstream } from "./mock_upstream.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    port: { type: "string", default: "8000" },
    "log-dir": { type: "string", default: "logs" },
  },
});

const flaky = startMockUpstream((req, n) =>
  n % 2 === 0
    ? failureReply(req.path, req.path.endsWith("/messages") ? 529 : 503)
    : defaultReply(req, n)
);
const steady = startMockUpstream();
const urls: Record<string, string> = { DEMO_FLAKY_URL: flaky.url, DEMO_STEADY_URL: steady.url };
const configText = await Deno.readTextFile(new URL("./demo.config.json", import.meta.url));
const config = parseConfig(configText, (name) => urls[name]);

function summary(record: RequestRecord): string {
  const attempts = record.attempts
    .map((a) => `${a.provider} ${a.status ?? a.error}`)
    .join(" -> ");
  const usage = record.usage === null ? "" : ` usage=${JSON.stringify(record.usage)}`;
  return `${record.status} ${record.path} model=${record.model} via ${attempts} ` +
    `(${record.duration_ms} ms)${usage}`;
}

const server = startServer(config, {
  host: "127.0.0.1",
  port: Number(values.port),
  logDir: values["log-dir"],
  onListen: (url) => {
    console.log(`listening on ${url}

Two mock providers stand behind it; the "flaky" one fails every other request, so watch the
attempts below fall back to the "steady" one. Full records go to ${
      values["log-dir"]
    }/requests.jsonl.

Try:
  curl -s ${url}/openai/chat/completions -H 'content-type: application/json' \\
    -d '{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}'
  curl -sN ${url}/anthropic/v1/messages -H 'content-type: application/json' \\
    -d '{"model":"claude-sonnet","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hi"}]}'

Or with the official clients (any API key works here):
  new OpenAI({ baseURL: "${url}/openai", apiKey: "any" })
  new Anthropic({ baseURL: "${url}/anthropic", apiKey: "any" })

Ctrl-C stops the demo.
`);
  },
  ops: stderrOpsLog("warn"),
  onRecord: (record) => console.log(summary(record)),
});

const stop = async () => {
  Deno.removeSignalListener("SIGINT", stop);
  await server.stop();
  await Promise.all([flaky.close(), steady.close()]);
  console.log("demo stopped");
};
Deno.addSignalListener("SIGINT", stop);
