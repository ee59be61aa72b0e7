import { createHandler } from "../src/app.ts";
import { type Config, parseConfig } from "../src/config.ts";
import type { RecordSink } from "../src/log.ts";
import type { RequestRecord } from "../src/record.ts";

/** Keeps records in memory and lets a test wait for the next ones. */
export class MemorySink implements RecordSink {
  records: RequestRecord[] = [];
  writeErrors = 0;
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

/** Starts the router behind a real socket on port 0 with `config` (an object or a Config). */
export function startRouter(config: Config | object): RunningRouter {
  const parsed = parseConfig(JSON.stringify(config), () => undefined);
  const sink = new MemorySink();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    createHandler(() => parsed, { sink }),
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    sink,
    close: () => server.shutdown(),
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
