import { AfterResponse } from "../src/after_response.ts";
import { createHandler } from "../src/app.ts";
import { concatBytes } from "../src/bytes.ts";
import { createHttpClient } from "../src/http_client.ts";
import { InFlight } from "../src/upstream.ts";
import { type Config, parseConfig } from "../src/config.ts";
import type { RecordSink } from "../src/log.ts";
import type { RequestRecord } from "../src/record.ts";

/** Keeps records in memory and lets a test wait for the next ones. */
export class MemorySink implements RecordSink {
  records: RequestRecord[] = [];
  writeErrors = 0;
  droppedRecords = 0;
  #waiters: { count: number; resolve: () => void }[] = [];

  write(record: RequestRecord): void {
    this.records.push(structuredClone(record));
    this.#waiters = this.#waiters.filter((waiter) => {
      if (this.records.length < waiter.count) return true;
      waiter.resolve();
      return false;
    });
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  /** Resolves once `count` records in all have been written. */
  waitFor(count: number): Promise<RequestRecord[]> {
    if (this.records.length >= count) return Promise.resolve(this.records);
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#waiters.push({ count, resolve });
    return promise.then(() => this.records);
  }
}

export interface RunningRouter {
  url: string;
  sink: MemorySink;
  close(): Promise<void>;
}

/**
 * Starts the router behind a real socket on port 0 with `config` (an object or a Config);
 * `caCerts` are roots its https client trusts besides the usual ones.
 */
export function startRouter(
  config: Config | object,
  options: { caCerts?: string[] } = {},
): RunningRouter {
  const parsed = parseConfig(JSON.stringify(config), () => undefined);
  const sink = new MemorySink();
  const upstream = createHttpClient(options);
  const inFlight = new InFlight();
  const recordFailures: unknown[] = [];
  const afterResponse = new AfterResponse((error) => recordFailures.push(error));
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    createHandler(() => parsed, { sink, upstream, inFlight, afterResponse }),
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    sink,
    async close() {
      await server.shutdown();
      inFlight.close();
      upstream.close();
      afterResponse.flush();
      if (recordFailures.length > 0) {
        throw new Error(`A finished request could not be recorded: ${recordFailures[0]}`);
      }
    },
  };
}

/** A provider entry pointing at a mock upstream. */
export function provider(
  name: string,
  type: "openai" | "anthropic",
  url: string,
  extra: object = {},
): object {
  const base = type === "openai" ? `${url}/v1` : url;
  return { name, type, api_key: `sk-${name}-secret`, base_url: base, ...extra };
}

export async function readText(response: Response): Promise<string> {
  return await response.text();
}

/** Settles as `promise` does, or rejects with `message` once `ms` have passed. */
async function deadline<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Fails the test instead of hanging it when `promise` never settles. */
export function within<T>(promise: Promise<T>, what: string, ms = 3000): Promise<T> {
  return deadline(promise, ms, `Timed out waiting for ${what}`);
}

/** The `index`th log record; fails instead of hanging when it never comes. */
export async function recordAt(router: RunningRouter, index = 0): Promise<RequestRecord> {
  const records = await deadline(
    router.sink.waitFor(index + 1),
    5000,
    `No log record #${index} within 5 s`,
  );
  return records[index];
}

const encoder = new TextEncoder();

/** The parts one after another as bytes; strings are encoded as UTF-8. */
export function concat(parts: (string | Uint8Array)[]): Uint8Array<ArrayBuffer> {
  return concatBytes(
    parts.map((part) => typeof part === "string" ? encoder.encode(part) : part),
  );
}

// Spawned router processes: `main.ts` run by a child deno, from the project root.

const root = new URL("..", import.meta.url).pathname;
/** Deno's flags for tests that are not about permissions: everything the router may use. */
const RUN_FLAGS = ["run", "--allow-net", "--allow-env", "--allow-read", "--allow-write"];

export interface RouterOptions {
  /** Variables added to the inherited environment. */
  env?: Record<string, string>;
  /** Deno's arguments before `main.ts` (`run` and the permission flags); RUN_FLAGS by default. */
  flags?: string[];
}

export interface RouterOutput {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RouterProcess {
  url: string;
  child: Deno.ChildProcess;
  /** All of stdout (with the `listening on` line) and stderr, once the process has exited. */
  finished: Promise<RouterOutput>;
}

function routerCommand(args: string[], options: RouterOptions, signal?: AbortSignal) {
  return new Deno.Command(Deno.execPath(), {
    args: [...(options.flags ?? RUN_FLAGS), "main.ts", ...args],
    cwd: root,
    env: options.env ?? {},
    signal,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

/** Starts `main.ts` with `args` and waits for its `listening on` line. */
export async function spawnRouter(
  args: string[],
  options: RouterOptions = {},
): Promise<RouterProcess> {
  const child = routerCommand(args, options).spawn();
  const [forUrl, forRest] = child.stdout.tee();
  const stderr = new Response(child.stderr).text();
  const rest = new Response(forRest).text();
  const reader = forUrl.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  let url: string | undefined;
  while (url === undefined) {
    const { done, value } = await reader.read();
    if (done) {
      await child.status;
      throw new Error(`Router exited before listening: ${seen} ${await stderr} ${await rest}`);
    }
    seen += value;
    url = seen.match(/^listening on (http:\/\/\S+:\d+)$/m)?.[1];
  }
  await reader.cancel();
  const finished = child.status.then(async (status) => ({
    code: status.code,
    stdout: await rest,
    stderr: await stderr,
  }));
  return { url, child, finished };
}

/** Runs `main.ts` with `args` to its exit; with `timeoutMs`, one still running then is killed. */
export async function runRouter(
  args: string[],
  options: RouterOptions & { timeoutMs?: number } = {},
): Promise<RouterOutput> {
  const signal = options.timeoutMs === undefined
    ? undefined
    : AbortSignal.timeout(options.timeoutMs);
  const output = await routerCommand(args, options, signal).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/**
 * A raw HTTP/1.1 server answering every request with `head` and `body`, then closing: for what
 * Deno.serve cannot send (odd statuses, reason phrases, upgrades).
 */
export function rawServer(head: string, body = ""): { url: string; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of listener) {
      (async () => {
        await conn.read(new Uint8Array(64 * 1024)).catch(() => null);
        await conn.write(new TextEncoder().encode(head + body)).catch(() => 0);
        conn.close();
      })();
    }
  })().catch(() => {});
  const { port } = listener.addr as Deno.NetAddr;
  return { url: `http://127.0.0.1:${port}`, close: () => listener.close() };
}
