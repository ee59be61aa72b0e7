/**
 * The V8 flags `deno task start` gives the router, read from deno.json, so the benchmark measures
 * the process users run and not Deno's defaults. (Its permissions stay the benchmark's own: the
 * config and logs live in a temporary directory.)
 */
export async function startTaskV8Flags(): Promise<string[]> {
  const denoJson = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const start: string = denoJson.tasks.start;
  return start.split(/\s+/).filter((word) => word.startsWith("--v8-flags="));
}
