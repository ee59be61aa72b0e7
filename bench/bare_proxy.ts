/**
 * The floor any Deno router stands on: `Deno.serve` -> `fetch` -> `new Response(upstream.body)`,
 * with nothing else. The benchmark reports the router as a ratio to this.
 * `deno run --allow-net bench/bare_proxy.ts --upstream http://127.0.0.1:9001 --port 0`
 */
import { parseArgs } from "node:util";

const { values } = parseArgs({
  args: Deno.args,
  options: { upstream: { type: "string" }, port: { type: "string", default: "0" } },
});
const upstream = values.upstream;
if (upstream === undefined) throw new Error("--upstream URL is required");

// The router's paths map onto the mock's like this: /openai/... -> /v1/..., /anthropic/... -> /...
function target(path: string): string {
  if (path.startsWith("/openai/")) return `${upstream}/v1/${path.slice("/openai/".length)}`;
  return `${upstream}${path.slice("/anthropic".length)}`;
}

Deno.serve({
  hostname: "127.0.0.1",
  port: Number(values.port),
  onListen: ({ port }) => console.log(`listening on http://127.0.0.1:${port}`),
}, async (request) => {
  const url = new URL(request.url);
  const response = await fetch(target(url.pathname) + url.search, {
    method: request.method,
    headers: request.headers,
    body: request.body,
  });
  return new Response(response.body, { status: response.status, headers: response.headers });
});
