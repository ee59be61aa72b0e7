/**
 * `deno task bench`: the mock upstream, a bare Deno pass-through proxy and the router (full
 * logging on), each in its own process on loopback, driven side by side in one run, targets
 * alternating. Prints one Markdown table and writes JSON under bench/results/. Ratios to the
 * bare proxy are the figures to read: the machine's speed drifts, the ratios hold.
 * `--quick` shortens every scenario for a smoke run; `--with nginx,portkey` adds those proxies
 * (bench/extra_proxies.ts) as further columns when they are installed.
 */
import { parseArgs } from "node:util";
import {
  concurrentStreams,
  firstByte,
  hasWrk,
  type LoadRequest,
  openLoop,
  sequential,
  throughput,
} from "./load.ts";
import { type ExtraName, extraNames, startExtras, type Target } from "./extra_proxies.ts";
import { startTaskV8Flags } from "./start_task.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { quick: { type: "boolean" }, with: { type: "string" } },
});
const quick = values.quick === true;
const wanted = (values.with ?? "").split(",").map((name) => name.trim()).filter((name) => name);
for (const name of wanted) {
  if (!(extraNames as readonly string[]).includes(name)) {
    console.error(`--with: unknown proxy "${name}"; known: ${extraNames.join(", ")}`);
    Deno.exit(2);
  }
}
const SECONDS = quick ? 2 : 3;
const ROUNDS = quick ? 1 : 4;
const root = new URL("..", import.meta.url).pathname;
const work = await Deno.makeTempDir({ prefix: "llm-router-bench-" });

interface Proc extends Target {
  url: string;
}

/**
 * Starts a Deno program and waits for its `listening on URL` line; it takes OpenAI chat
 * completions at `chatPath`.
 */
async function start(args: string[], chatPath: string): Promise<Proc> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...args],
    cwd: root,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  let url: string | undefined;
  while (url === undefined) {
    const { done, value } = await reader.read();
    if (done) throw new Error(`${args.join(" ")} exited: ${seen}`);
    seen += value;
    url = seen.match(/listening on (http:\/\/[\d.:]+)/)?.[1];
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  (async () => {
    while (!(await reader.read().catch(() => ({ done: true }))).done);
  })();
  return {
    url,
    pid: child.pid,
    request: (body) => ({ url: `${url}${chatPath}`, body }),
    async stop() {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

function mock(extra: string[] = []): Promise<Proc> {
  return start(
    ["--allow-net", "tools/mock_upstream.ts", "--port", "0", ...extra],
    "/v1/chat/completions",
  );
}

function bare(upstream: Proc): Promise<Proc> {
  return start(
    ["--allow-net", "bench/bare_proxy.ts", "--upstream", upstream.url],
    "/openai/chat/completions",
  );
}

const routerV8Flags = await startTaskV8Flags();

async function router(upstream: Proc, logging = true): Promise<Proc> {
  const name = `router-${crypto.randomUUID()}`;
  const config = {
    providers: [
      { name: "openai", type: "openai", api_key: "bench-key", base_url: `${upstream.url}/v1` },
      { name: "anthropic", type: "anthropic", api_key: "bench-key", base_url: upstream.url },
    ],
    logging: { enabled: logging },
  };
  await Deno.writeTextFile(`${work}/${name}.json`, JSON.stringify(config));
  return start([
    ...routerV8Flags,
    "--allow-net",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    "main.ts",
    "--config",
    `${work}/${name}.json`,
    "--port",
    "0",
    "--log-dir",
    `${work}/${name}-logs`,
    "--log-level",
    "warn",
  ], "/openai/chat/completions");
}

/** Resident memory of a process in MB (`ps`, since Deno reads /proc only with --allow-all). */
async function rss(pid: number): Promise<number> {
  const output = await new Deno.Command("ps", { args: ["-o", "rss=", "-p", String(pid)] }).output();
  return Number(new TextDecoder().decode(output.stdout).trim()) / 1024;
}

/** The highest RSS seen while `work` runs, sampled every 100 ms. */
async function peakRss(pid: number, work: Promise<unknown>): Promise<number> {
  let peak = await rss(pid);
  let running = true;
  work.finally(() => running = false);
  while (running) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    peak = Math.max(peak, await rss(pid));
  }
  await work;
  return peak;
}

const chat = (stream: boolean, content = "Hello") =>
  JSON.stringify({
    model: "gpt-4o-mini",
    stream,
    messages: [{ role: "user", content }],
  });

type Column = "direct" | "bare" | "router" | ExtraName;
type Figures = Partial<Record<Column, number | null>>;

/**
 * `target` is what the router's figure is held to, in words. `ratio`, when measured in rounds,
 * is the median of each round's router / bare (`roundRatios`, in round order); otherwise the
 * ratio of the two figures.
 */
type Row = { scenario: string; metric: string } & Figures & {
  target: string;
  ratio?: number | null;
  roundRatios?: number[];
};

const rows: Row[] = [];

/**
 * Runs `measure` against each target in rounds, alternating, and keeps each one's mean, plus the
 * median of each round's router / bare: the two are measured back to back in every round (the
 * order reverses each round), so a burst of load from elsewhere on a shared machine, which can
 * move one measurement by a third, moves one round's ratio and not the median. Right before each
 * measurement the target gets a second of the same requests, unmeasured: a process left idle while
 * the others were measured runs its first seconds slower (about 20% for the router after 20 s),
 * and a long-running router is to be measured at its steady state.
 */
async function sideBySide(
  targets: Partial<Record<Column, Target>>,
  body: string,
  measure: (request: LoadRequest) => Promise<number | null>,
): Promise<Figures & { ratio: number | null; roundRatios: number[] }> {
  const names = Object.keys(targets) as Column[];
  const samples = new Map(names.map((name) => [name, [] as (number | null)[]]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of round % 2 === 1 ? names.toReversed() : names) {
      const request = targets[name]!.request(body);
      await throughput(request, 16, 1);
      samples.get(name)!.push(await measure(request));
    }
  }
  const mean = (list: (number | null)[]) => {
    const values = list.filter((value) => value !== null);
    return values.length === 0 ? null : values.reduce((a, b) => a + b, 0) / values.length;
  };
  const bare = samples.get("bare") ?? [];
  const ratios = (samples.get("router") ?? []).flatMap((router, round) => {
    const base = bare[round];
    return router !== null && base ? [router / base] : [];
  });
  return {
    ...Object.fromEntries(names.map((name) => [name, mean(samples.get(name)!)])),
    ratio: median(ratios),
    roundRatios: ratios,
  };
}

function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const sorted = values.toSorted((a, b) => a - b);
  const middle = sorted.length / 2;
  return Number.isInteger(middle)
    ? (sorted[middle - 1] + sorted[middle]) / 2
    : sorted[Math.floor(middle)];
}

const fast = await mock(["--events", "51"]);
const bareFast = await bare(fast);
const routerFast = await router(fast);
const extras = await startExtras(wanted as ExtraName[], fast.url, work);
const targets: Partial<Record<Column, Target>> = {
  direct: fast,
  bare: bareFast,
  router: routerFast,
  ...Object.fromEntries(extras.map((extra) => [extra.name, extra.running])),
};

// (a) non-streaming, small body, 64 connections
const a = await sideBySide(
  targets,
  chat(false),
  async (request) => (await throughput(request, 64, SECONDS)).rps,
);
rows.push({ scenario: "a", metric: "non-streaming req/s, c=64", ...a, target: ">= 0.85x bare" });

// (b) open loop at 200 requests/s
for (const q of ["p50", "p99"] as const) {
  const b = await sideBySide(
    targets,
    chat(false),
    async (request) => (await openLoop(request, 200, SECONDS))[`${q}_ms`],
  );
  const budget = q === "p50" ? "<= bare + 0.3 ms" : "<= bare + 2 ms";
  rows.push({ scenario: "b", metric: `open loop 200/s ${q} ms`, ...b, target: budget });
}

// (c) 200 KB request bodies
const big = chat(false, "x".repeat(200 * 1024));
const c = await sideBySide(
  targets,
  big,
  async (request) => (await throughput(request, 16, SECONDS)).rps,
);
rows.push({ scenario: "c", metric: "200 KB bodies req/s, c=16", ...c, target: "-" });

// (d) streaming, 54 events per response
const d = await sideBySide(
  targets,
  chat(true),
  async (request) => (await throughput(request, 64, SECONDS)).rps,
);
rows.push({ scenario: "d", metric: "54-event streams req/s, c=64", ...d, target: ">= 0.8x bare" });
const ttfbTargets = Object.entries(targets);
const ttfbTimes = await firstByte(
  ttfbTargets.map(([, target]) => target.request(chat(true))),
  quick ? 100 : 500,
);
const ttfb = Object.fromEntries(ttfbTargets.map(([name], i) => [name, ttfbTimes[i]]));
rows.push({
  scenario: "d",
  metric: "stream first byte ms, c=1",
  ...ttfb,
  target: "<= bare + 0.5 ms",
});

// (g) logging on versus off
const routerQuiet = await router(fast, false);
const g = await sideBySide(
  { bare: routerQuiet, router: routerFast },
  chat(false),
  async (request) => (await throughput(request, 64, SECONDS)).rps,
);
rows.push({
  scenario: "g",
  metric: "req/s logging on (router) vs off (bare column)",
  direct: null,
  bare: g.bare,
  router: g.router,
  ratio: g.ratio,
  roundRatios: g.roundRatios,
  target: "close to 1.0x",
});
await routerQuiet.stop();

// (f) sequential requests: memory must not grow with the count
const total = quick ? 20_000 : 100_000;
const checkpoint = total / 10;
const freshRouter = await router(fast);
let early = 0;
let late = 0;
await sequential(freshRouter.request(chat(false)), total, async (done) => {
  if (done === checkpoint) early = await rss(freshRouter.pid);
  if (done === total) late = await rss(freshRouter.pid);
});
rows.push({
  scenario: "f",
  metric: `RSS MB after ${checkpoint} (bare col) and ${total} (router col) requests`,
  direct: null,
  bare: early,
  router: late,
  target: "<= 1.1x",
});
await freshRouter.stop();
await Promise.all(
  [bareFast, routerFast, ...extras.map((extra) => extra.running)].map((target) => target.stop()),
);

// (e) 1,000 concurrent slow streams: one event every 100 ms for 10 s
const streams = quick ? 200 : 1000;
const slow = await mock(["--events", quick ? "17" : "97", "--chunk-delay-ms", "100"]);
const e: Figures = {};
const slowStarts: [Column, () => Promise<Target>][] = [
  ["bare", () => bare(slow)],
  ["router", () => router(slow)],
];
for (const extra of extras) slowStarts.push([extra.name, () => extra.start(slow.url)]);
for (const [name, startProxy] of slowStarts) {
  const proxy = await startProxy();
  const run = concurrentStreams(proxy.request(chat(true)), streams);
  e[name] = await peakRss(proxy.pid, run);
  const completed = await run;
  if (completed !== streams) console.error(`${name}: ${completed}/${streams} streams completed`);
  await proxy.stop();
}
rows.push({
  scenario: "e",
  metric: `peak RSS MB, ${streams} concurrent slow streams`,
  direct: null,
  ...e,
  target: "< 150 MB",
});
await Promise.all([fast.stop(), slow.stop()]);

const format = (value: number | null | undefined) =>
  value == null ? "-" : value.toFixed(value < 10 ? 2 : 0);
/** The lowest and highest round's router / bare: how far the machine's noise moved the ratio. */
const spread = (ratios: number[] | undefined) =>
  ratios === undefined || ratios.length < 2
    ? "-"
    : `${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}`;
const extraColumns = extras.map((extra) => extra.name);
const columns: Column[] = ["direct", "bare", "router", ...extraColumns];
const heads = ["direct", "bare proxy", "router", ...extraColumns];
const lines = [
  `Load generator: ${hasWrk() ? "wrk" : "autocannon"}; ${SECONDS} s per measurement, ` +
  `${ROUNDS} round(s); ${Deno.build.os} ${Deno.build.arch}, ${navigator.hardwareConcurrency} CPUs, ` +
  `Deno ${Deno.version.deno}; router started with ${routerV8Flags.join(" ") || "no V8 flags"}`,
  "",
  `| scenario | metric | ${heads.join(" | ")} | router / bare | rounds | target |`,
  `| --- | --- | ${heads.map(() => "---:").join(" | ")} | ---: | ---: | --- |`,
  ...rows.map((row) => {
    const ratio = row.ratio !== undefined
      ? format(row.ratio)
      : row.router != null && row.bare
      ? (row.router / row.bare).toFixed(2)
      : "-";
    const figures = columns.map((column) => format(row[column])).join(" | ");
    const rounds = spread(row.roundRatios);
    return `| ${row.scenario} | ${row.metric} | ${figures} | ${ratio} | ${rounds} | ${row.target} |`;
  }),
];
console.log(lines.join("\n"));
await Deno.mkdir(`${root}/bench/results`, { recursive: true });
const stamp = new Date().toISOString().replaceAll(":", "-").slice(0, 19);
await Deno.writeTextFile(
  `${root}/bench/results/${stamp}.json`,
  JSON.stringify({ quick, seconds: SECONDS, rounds: ROUNDS, routerV8Flags, rows }, null, 2) + "\n",
);
await Deno.remove(work, { recursive: true });
