/**
 * `deno task bench`: the mock upstream, a bare Deno pass-through proxy and the router (full
 * logging on), each in its own process on loopback, driven side by side in one run, targets
 * alternating. Prints one Markdown table and writes JSON under bench/results/. Ratios to the
 * bare proxy are the figures to read: the machine's speed drifts, the ratios hold.
 * `--quick` shortens every scenario for a smoke run.
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

const { values } = parseArgs({ args: Deno.args, options: { quick: { type: "boolean" } } });
const quick = values.quick === true;
const SECONDS = quick ? 2 : 5;
const ROUNDS = quick ? 1 : 2;
const root = new URL("..", import.meta.url).pathname;
const work = await Deno.makeTempDir({ prefix: "llm-router-bench-" });

interface Proc {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/** Starts a Deno program and waits for its `listening on URL` line. */
async function start(args: string[]): Promise<Proc> {
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
    async stop() {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

function mock(extra: string[] = []): Promise<Proc> {
  return start(["--allow-net", "tools/mock_upstream.ts", "--port", "0", ...extra]);
}

function bare(upstream: Proc): Promise<Proc> {
  return start(["--allow-net", "bench/bare_proxy.ts", "--upstream", upstream.url]);
}

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
  ]);
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

/** The URL a scenario calls on each kind of target for OpenAI chat completions. */
function chatUrl(target: Proc, direct: boolean): string {
  return direct ? `${target.url}/v1/chat/completions` : `${target.url}/openai/chat/completions`;
}

interface Row {
  scenario: string;
  metric: string;
  direct: number | null;
  bare: number | null;
  router: number | null;
  /** What the router's figure is held to, in words. */
  target: string;
}

const rows: Row[] = [];

/** Runs `measure` against direct, bare and router, alternating, and keeps each one's mean. */
async function sideBySide(
  targets: { direct: Proc | null; bare: Proc; router: Proc },
  measure: (url: string) => Promise<number | null>,
  path: (target: Proc, direct: boolean) => string,
): Promise<{ direct: number | null; bare: number | null; router: number | null }> {
  const sums = { direct: [] as number[], bare: [] as number[], router: [] as number[] };
  for (let round = 0; round < ROUNDS; round++) {
    const order = (["direct", "bare", "router"] as const).slice();
    if (round % 2 === 1) order.reverse();
    for (const name of order) {
      const target = targets[name];
      if (target === null) continue;
      const value = await measure(path(target, name === "direct"));
      if (value !== null) sums[name].push(value);
    }
  }
  const mean = (list: number[]) =>
    list.length === 0 ? null : list.reduce((a, b) => a + b, 0) / list.length;
  return { direct: mean(sums.direct), bare: mean(sums.bare), router: mean(sums.router) };
}

const fast = await mock(["--events", "51"]);
const bareFast = await bare(fast);
const routerFast = await router(fast);
const targets = { direct: fast, bare: bareFast, router: routerFast };
const req = (url: string, body: string): LoadRequest => ({ url, body });

// (a) non-streaming, small body, 64 connections
const a = await sideBySide(
  targets,
  async (url) => (await throughput(req(url, chat(false)), 64, SECONDS)).rps,
  chatUrl,
);
rows.push({ scenario: "a", metric: "non-streaming req/s, c=64", ...a, target: ">= 0.85x bare" });

// (b) open loop at 200 requests/s
for (const q of ["p50", "p99"] as const) {
  const b = await sideBySide(
    targets,
    async (url) => (await openLoop(req(url, chat(false)), 200, SECONDS))[`${q}_ms`],
    chatUrl,
  );
  const budget = q === "p50" ? "<= bare + 0.3 ms" : "<= bare + 2 ms";
  rows.push({ scenario: "b", metric: `open loop 200/s ${q} ms`, ...b, target: budget });
}

// (c) 200 KB request bodies
const big = chat(false, "x".repeat(200 * 1024));
const c = await sideBySide(
  targets,
  async (url) => (await throughput(req(url, big), 16, SECONDS)).rps,
  chatUrl,
);
rows.push({ scenario: "c", metric: "200 KB bodies req/s, c=16", ...c, target: "-" });

// (d) streaming, 54 events per response
const d = await sideBySide(
  targets,
  async (url) => (await throughput(req(url, chat(true)), 64, SECONDS)).rps,
  chatUrl,
);
rows.push({ scenario: "d", metric: "54-event streams req/s, c=64", ...d, target: ">= 0.8x bare" });
const [ttfbDirect, ttfbBare, ttfbRouter] = await firstByte(
  [chatUrl(fast, true), chatUrl(bareFast, false), chatUrl(routerFast, false)].map((url) =>
    req(url, chat(true))
  ),
  quick ? 100 : 500,
);
const ttfb = { direct: ttfbDirect, bare: ttfbBare, router: ttfbRouter };
rows.push({
  scenario: "d",
  metric: "stream first byte ms, c=1",
  ...ttfb,
  target: "<= bare + 0.5 ms",
});

// (g) logging on versus off
const routerQuiet = await router(fast, false);
const g = await sideBySide(
  { direct: null, bare: routerQuiet, router: routerFast },
  async (url) => (await throughput(req(url, chat(false)), 64, SECONDS)).rps,
  chatUrl,
);
rows.push({
  scenario: "g",
  metric: "req/s logging on (router) vs off (bare column)",
  direct: null,
  bare: g.bare,
  router: g.router,
  target: "close to 1.0x",
});
await routerQuiet.stop();

// (f) sequential requests: memory must not grow with the count
const total = quick ? 20_000 : 100_000;
const checkpoint = total / 10;
const freshRouter = await router(fast);
let early = 0;
let late = 0;
await sequential(req(chatUrl(freshRouter, false), chat(false)), total, async (done) => {
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
await Promise.all([bareFast.stop(), routerFast.stop()]);

// (e) 1,000 concurrent slow streams: one event every 100 ms for 10 s
const streams = quick ? 200 : 1000;
const slow = await mock(["--events", quick ? "17" : "97", "--chunk-delay-ms", "100"]);
const e: Record<string, number> = {};
for (const [name, proxy] of [["bare", await bare(slow)], ["router", await router(slow)]] as const) {
  const run = concurrentStreams(req(chatUrl(proxy, false), chat(true)), streams);
  e[name] = await peakRss(proxy.pid, run);
  const completed = await run;
  if (completed !== streams) console.error(`${name}: ${completed}/${streams} streams completed`);
  await proxy.stop();
}
rows.push({
  scenario: "e",
  metric: `peak RSS MB, ${streams} concurrent slow streams`,
  direct: null,
  bare: e.bare,
  router: e.router,
  target: "< 150 MB",
});
await Promise.all([fast.stop(), slow.stop()]);

const format = (value: number | null) => value === null ? "-" : value.toFixed(value < 10 ? 2 : 0);
const lines = [
  `Load generator: ${hasWrk() ? "wrk" : "autocannon"}; ${SECONDS} s per measurement, ` +
  `${ROUNDS} round(s); ${Deno.build.os} ${Deno.build.arch}, ${navigator.hardwareConcurrency} CPUs, ` +
  `Deno ${Deno.version.deno}`,
  "",
  "| scenario | metric | direct | bare proxy | router | router / bare | target |",
  "| --- | --- | ---: | ---: | ---: | ---: | --- |",
  ...rows.map((row) => {
    const ratio = row.router !== null && row.bare ? (row.router / row.bare).toFixed(2) : "-";
    return `| ${row.scenario} | ${row.metric} | ${format(row.direct)} | ${format(row.bare)} | ` +
      `${format(row.router)} | ${ratio} | ${row.target} |`;
  }),
];
console.log(lines.join("\n"));
await Deno.mkdir(`${root}/bench/results`, { recursive: true });
const stamp = new Date().toISOString().replaceAll(":", "-").slice(0, 19);
await Deno.writeTextFile(
  `${root}/bench/results/${stamp}.json`,
  JSON.stringify({ quick, seconds: SECONDS, rounds: ROUNDS, rows }, null, 2) + "\n",
);
await Deno.remove(work, { recursive: true });
