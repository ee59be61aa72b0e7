/**
 * Load generators for the benchmark: wrk when installed (or autocannon from npm) for closed-loop
 * throughput, and small Deno clients for what those cannot measure (open-loop latency, time to
 * first byte, many slow streams, long sequential runs).
 */

export interface Throughput {
  rps: number;
  p50_ms: number | null;
  p99_ms: number | null;
  errors: number;
}

export interface LoadRequest {
  url: string;
  body: string;
  /** Sent with every request, besides `content-type: application/json`. */
  headers?: Record<string, string>;
}

function headersOf(request: LoadRequest): Record<string, string> {
  return { "content-type": "application/json", ...request.headers };
}

export function hasWrk(): boolean {
  try {
    return new Deno.Command("wrk", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().code !== 127;
  } catch {
    return false;
  }
}

function parseWrkMs(text: string | undefined): number | null {
  const match = text?.match(/([\d.]+)(us|ms|s)/);
  if (!match) return null;
  const value = Number(match[1]);
  return match[2] === "us" ? value / 1000 : match[2] === "s" ? value * 1000 : value;
}

/** Closed-loop throughput with wrk: `connections` clients as fast as they can. */
async function wrk(
  request: LoadRequest,
  connections: number,
  seconds: number,
): Promise<Throughput> {
  const dir = await Deno.makeTempDir();
  const script = `${dir}/post.lua`;
  await Deno.writeTextFile(`${dir}/body.json`, request.body);
  // A JSON string of ASCII is a valid Lua string literal.
  const headers = Object.entries(headersOf(request))
    .map(([name, value]) => `wrk.headers[${JSON.stringify(name)}] = ${JSON.stringify(value)}\n`);
  await Deno.writeTextFile(
    script,
    `local f = io.open("${dir}/body.json", "rb")\nwrk.method = "POST"\nwrk.body = f:read("*a")\n` +
      `f:close()\n${headers.join("")}`,
  );
  const output = await new Deno.Command("wrk", {
    args: ["-t2", `-c${connections}`, `-d${seconds}s`, "--latency", "-s", script, request.url],
    stdout: "piped",
    stderr: "piped",
  }).output();
  await Deno.remove(dir, { recursive: true });
  const text = new TextDecoder().decode(output.stdout);
  const errors = text.match(/Non-2xx or 3xx responses: (\d+)/)?.[1] ?? "0";
  const socketErrors = text.match(/Socket errors:.*/)?.[0].match(/\d+/g)?.map(Number) ?? [];
  return {
    rps: Number(text.match(/Requests\/sec:\s+([\d.]+)/)?.[1] ?? 0),
    p50_ms: parseWrkMs(text.match(/\s50%\s+(\S+)/)?.[1]),
    p99_ms: parseWrkMs(text.match(/\s99%\s+(\S+)/)?.[1]),
    errors: Number(errors) + socketErrors.reduce((a, b) => a + b, 0),
  };
}

/** Closed-loop throughput with autocannon, for machines without wrk. */
async function autocannon(
  request: LoadRequest,
  connections: number,
  seconds: number,
): Promise<Throughput> {
  const { default: run } = await import("autocannon");
  const result = await run({
    url: request.url,
    method: "POST",
    body: request.body,
    headers: headersOf(request),
    connections,
    duration: seconds,
  });
  return {
    rps: result.requests.average,
    p50_ms: result.latency.p50,
    p99_ms: result.latency.p99,
    errors: result.errors + result.non2xx,
  };
}

export function throughput(
  request: LoadRequest,
  connections: number,
  seconds: number,
): Promise<Throughput> {
  return hasWrk() ? wrk(request, connections, seconds) : autocannon(request, connections, seconds);
}

function percentile(sorted: number[], q: number): number | null {
  return sorted.length === 0 ? null : sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
}

export async function post(request: LoadRequest): Promise<Response> {
  return await fetch(request.url, {
    method: "POST",
    headers: headersOf(request),
    body: request.body,
  });
}

/** Open loop: one request every 1000/rate ms whatever the answers do, latency of each. */
export async function openLoop(
  request: LoadRequest,
  rate: number,
  seconds: number,
): Promise<{ p50_ms: number | null; p99_ms: number | null; errors: number }> {
  const latencies: number[] = [];
  let errors = 0;
  const pending: Promise<void>[] = [];
  const start = performance.now();
  for (let i = 0; i < rate * seconds; i++) {
    const due = start + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    const sent = performance.now();
    pending.push(
      post(request).then(async (response) => {
        await response.arrayBuffer();
        if (!response.ok) errors++;
        latencies.push(performance.now() - sent);
      }, () => void errors++),
    );
  }
  await Promise.all(pending);
  latencies.sort((a, b) => a - b);
  return { p50_ms: percentile(latencies, 0.5), p99_ms: percentile(latencies, 0.99), errors };
}

/**
 * Median time to the first body byte at concurrency 1, for each of `requests`. Each target gets
 * `block` requests back to back, the next sent when the last answer has ended, and the targets
 * take turns block by block, so a drift in the machine's speed reaches all of them alike. Taking
 * turns request by request would leave each process idle while all the others answer, and measure
 * its wake-up from that idle as much as its own work: the router's figure then moved by half a
 * millisecond with whether Portkey, which sleeps 25 ms per stream, was among the targets. The
 * first block of each target is not counted.
 */
export async function firstByte(
  requests: LoadRequest[],
  n: number,
  block = 20,
): Promise<(number | null)[]> {
  const times = requests.map(() => [] as number[]);
  for (let round = 0; round <= Math.ceil(n / block); round++) {
    for (const [i, request] of requests.entries()) {
      for (let k = 0; k < block; k++) {
        const sent = performance.now();
        const response = await post(request);
        const reader = response.body!.getReader();
        await reader.read();
        if (round > 0) times[i].push(performance.now() - sent);
        while (!(await reader.read()).done);
      }
    }
  }
  return times.map((list) => percentile(list.sort((a, b) => a - b), 0.5));
}

/** `n` streams at once, each read to its end; how many completed. */
export async function concurrentStreams(request: LoadRequest, n: number): Promise<number> {
  const done = await Promise.all(
    Array.from({ length: n }, async () => {
      try {
        const response = await post(request);
        await response.arrayBuffer();
        return response.ok ? 1 : 0;
      } catch {
        return 0;
      }
    }),
  );
  return done.reduce<number>((a, b) => a + b, 0);
}

/** `n` requests one after another; `checkpoint(i)` runs after request i (1-based). */
export async function sequential(
  request: LoadRequest,
  n: number,
  checkpoint: (done: number) => Promise<void> | void,
): Promise<void> {
  for (let i = 1; i <= n; i++) {
    const response = await post(request);
    await response.arrayBuffer();
    await checkpoint(i);
  }
}
