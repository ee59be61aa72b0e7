/**
 * A scriptable fake OpenAI + Anthropic upstream on a real loopback socket.
 *
 * Tests, the demo and the benchmark script it per request (status, delay, exact byte chunks,
 * hang, reset) to drive the router's fallback and streaming paths without live keys.
 * CLI: `deno run --allow-net tools/mock_upstream.ts --port 9001 --fail-every 3`.
 * @module
 */
import { parseArgs } from "node:util";
import { defaultReply, failureReply, sseHeaders } from "./mock_wire.ts";

export * from "./mock_wire.ts";

export interface MockRequest {
  method: string;
  path: string;
  search: string;
  headers: Headers;
  body: Uint8Array;
  /** The parsed body, or undefined when it is empty or not JSON. */
  json: unknown;
}

export interface MockReply {
  status?: number; // default 200
  headers?: Record<string, string>;
  /** An object is sent as JSON; with `chunks` the body is sent first, as its own write. */
  body?: string | Uint8Array | object;
  /** Each element is enqueued as its own write; content-type defaults to text/event-stream. */
  chunks?: (string | Uint8Array)[];
  chunkDelayMs?: number; // sleep before each chunk
  delayMs?: number; // sleep before sending headers
  /** "headers": never answer; "body": send headers and chunks, then never close. */
  hang?: "headers" | "body";
  /** After the chunks, error the body stream, as a dropped connection would. */
  reset?: boolean;
}

export type MockScript = (req: MockRequest, n: number) => MockReply | Promise<MockReply>;

export interface MockUpstream {
  url: string; // "http://127.0.0.1:PORT"
  port: number;
  requests: MockRequest[];
  /** Requests whose client went away before the reply finished; late signals are not counted. */
  aborted: number;
  /** Resolves at once if any abort was seen, otherwise at the next one. */
  whenAborted(): Promise<void>;
  /** Ends hangs (a header hang answers 503, a body hang errors) and shuts the server down. */
  close(): Promise<void>;
}

const encoder = new TextEncoder();

function toBytes(body: string | Uint8Array | object): Uint8Array<ArrayBuffer> {
  if (body instanceof Uint8Array) return new Uint8Array(body);
  return encoder.encode(typeof body === "string" ? body : JSON.stringify(body));
}

function parseJson(body: Uint8Array): unknown {
  try {
    return body.length ? JSON.parse(new TextDecoder().decode(body)) : undefined;
  } catch {
    return undefined;
  }
}

/** Resolve after ms (never, without ms) or as soon as signal aborts; callers check signal. */
function until(signal: AbortSignal, ms?: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = ms === undefined ? undefined : setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    if (signal.aborted) done();
    else signal.addEventListener("abort", done, { once: true });
  });
}

/** Marks the streams the mock breaks on purpose, so onError stays quiet about them. */
class MockDrop extends Error {}

interface Exchange {
  /** Ends the mock's own waits: the client went away or close() was called. */
  signal: AbortSignal;
  /** The reply is complete: later aborts are Deno's post-response signal, not the client. */
  finish(): void;
  /** The client went away: counted once, unless the reply had finished. */
  gone(): void;
}

function respond(reply: MockReply, ex: Exchange): Response {
  const headers = new Headers(reply.headers);
  const { body, chunks = [] } = reply;
  const isObject = body !== undefined && typeof body !== "string" && !(body instanceof Uint8Array);
  if (isObject && !headers.has("content-type")) headers.set("content-type", "application/json");
  const init = { status: reply.status ?? 200, headers };
  if (!reply.chunks && !reply.hang && !reply.reset) {
    ex.finish();
    return new Response(body === undefined ? null : toBytes(body), init);
  }
  if (reply.chunks && !headers.has("content-type")) {
    headers.set("content-type", sseHeaders["content-type"]);
  }
  const pieces = [...(body === undefined ? [] : [body]), ...chunks].map(toBytes);
  let i = 0;
  const stream = new ReadableStream<Uint8Array<ArrayBuffer>>({
    async pull(controller) {
      const more = i < pieces.length;
      if (more && reply.chunkDelayMs) await until(ex.signal, reply.chunkDelayMs);
      if (!more && reply.hang === "body") await until(ex.signal);
      if (ex.signal.aborted || (!more && reply.reset)) {
        ex.finish();
        controller.error(new MockDrop("Mock upstream dropped the connection"));
      } else if (more) {
        controller.enqueue(pieces[i++]);
      } else {
        ex.finish();
        controller.close();
      }
    },
    cancel: () => ex.gone(),
  }, { highWaterMark: 0 });
  return new Response(stream, init);
}

/** Start a scripted upstream on loopback; port 0 (the default) picks a free port. */
export function startMockUpstream(
  script: MockScript = defaultReply,
  opts: {
    port?: number;
    hostname?: string;
    /** Keep every request in `requests` (the default); a long-running mock leaves this off. */
    record?: boolean;
  } = {},
): MockUpstream {
  const record = opts.record ?? true;
  let count = 0;
  const closing = new AbortController();
  const waiters: (() => void)[] = [];
  let closed: Promise<void> | undefined;

  async function handle(req: Request, info: Deno.ServeHandlerInfo): Promise<Response> {
    let settled = false;
    const stop = new AbortController();
    const ex: Exchange = {
      signal: AbortSignal.any([stop.signal, closing.signal]),
      finish: () => void (settled = true),
      gone() {
        if (!settled && !closing.signal.aborted) {
          upstream.aborted++;
          for (const wake of waiters.splice(0)) wake();
        }
        settled = true;
        stop.abort();
      },
    };
    info.completed.catch(ex.gone);
    const bytes = await req.arrayBuffer().catch(() => undefined);
    if (!bytes) return new Response("Request body could not be read", { status: 400 });
    const [{ method, headers }, { pathname: path, search }] = [req, new URL(req.url)];
    const body = new Uint8Array(bytes);
    const recorded: MockRequest = { method, path, search, headers, body, json: parseJson(body) };
    if (record) upstream.requests.push(recorded);
    const reply = await script(recorded, count++);
    if (reply.delayMs || reply.hang === "headers") {
      // Only a wait before the headers needs request.signal: once read, Deno's legacy abort mode
      // fires it after every successful response too, and warns about that.
      if (req.signal.aborted) ex.gone();
      req.signal.addEventListener("abort", ex.gone, { once: true });
      if (reply.delayMs) await until(ex.signal, reply.delayMs);
      if (reply.hang === "headers") await until(ex.signal);
    }
    if (ex.signal.aborted) return new Response("Mock upstream closed", { status: 503 });
    return respond(reply, ex);
  }

  function onError(err: unknown): Response {
    if (!(err instanceof MockDrop)) console.error("Mock upstream script failed:", err);
    return new Response(`Mock upstream script failed: ${err}`, { status: 500 });
  }

  const hostname = opts.hostname ?? "127.0.0.1";
  const server = Deno.serve({ port: opts.port ?? 0, hostname, onListen() {}, onError }, handle);
  const port = server.addr.port;
  const upstream: MockUpstream = {
    url: `http://${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`,
    port,
    requests: [],
    aborted: 0,
    whenAborted: () =>
      upstream.aborted > 0 ? Promise.resolve() : new Promise((wake) => waiters.push(wake)),
    close() {
      closing.abort();
      return closed ??= server.shutdown();
    },
  };
  return upstream;
}

/** A port with nothing listening, for connection-refused tests. */
export function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

function main(args: string[]): void {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: "string", default: "9001" },
      host: { type: "string", default: "127.0.0.1" },
      "fail-every": { type: "string", default: "0" },
      "fail-status": { type: "string", default: "503" },
      "delay-ms": { type: "string", default: "0" },
      "chunk-delay-ms": { type: "string", default: "0" },
      events: { type: "string", default: "3" },
    },
  });
  const num = (name: Exclude<keyof typeof values, "host">): number => {
    const value = Number(values[name]);
    if (!Number.isInteger(value) || value < 0) {
      throw new Error(`Invalid --${name}: ${values[name]}`);
    }
    return value;
  };
  const [failEvery, failStatus, events] = [num("fail-every"), num("fail-status"), num("events")];
  const timing = { delayMs: num("delay-ms"), chunkDelayMs: num("chunk-delay-ms") };
  const upstream = startMockUpstream((req, n) => {
    const fail = failEvery > 0 && (n + 1) % failEvery === 0;
    return {
      ...(fail ? failureReply(req.path, failStatus) : defaultReply(req, n, { events })),
      ...timing,
    };
  }, { port: num("port"), hostname: values.host, record: false });
  console.log(`mock upstream listening on ${upstream.url}`);
  const stop = () => {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
    upstream.close();
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}

if (import.meta.main) {
  try {
    main(Deno.args);
  } catch (err) {
    console.error(err instanceof Error ? err.message : err);
    Deno.exit(2);
  }
}
