import http from "node:http";

/** One request to a provider: the body is known in full, the signal ends it at any point. */
export interface UpstreamRequest {
  url: string;
  /** Lower-case names; the client adds the body's length. */
  headers: Record<string, string>;
  body: Uint8Array;
  signal: AbortSignal;
}

/** A provider's answer: status and headers as received, the body as it arrives. */
export interface UpstreamResponse {
  status: number;
  statusText: string;
  headers: Headers;
  /** Null for statuses that carry no body (204, 205, 304). */
  body: ReadableStream<Uint8Array<ArrayBuffer>> | null;
  /** The client undid the body's content encoding: `content-encoding` no longer describes it. */
  decoded: boolean;
}

export type UpstreamClient = (request: UpstreamRequest) => Promise<UpstreamResponse>;

/** Bytes the body stream buffers ahead of its reader before the socket is paused. */
const READ_AHEAD_BYTES = 64 * 1024;

const NO_BODY_STATUSES = new Set([204, 205, 304]);

/**
 * The upstream client. Plain-http providers (local model servers, sidecars, gateways on the same
 * network) go through `node:http` with a keep-alive pool per origin: relaying a streamed answer
 * through it costs far less CPU per chunk than through `fetch`'s body. https providers go through
 * `fetch`: Deno's `node:https` needs `--allow-sys` (to read root certificates), which the router's
 * permissions leave out. Both hand the router plain bytes: `fetch` undoes a content encoding
 * itself, and the http client asks for none and undoes one a provider applies anyway.
 * `caCerts` adds trusted roots for https providers (a private CA).
 */
export function createHttpClient(
  options: { caCerts?: string[] } = {},
): UpstreamClient & { close(): void } {
  const plain = nodeHttpClient();
  const tls = options.caCerts === undefined
    ? undefined
    : Deno.createHttpClient({ caCerts: options.caCerts });
  return Object.assign(
    (request: UpstreamRequest) =>
      request.url.slice(0, 5).toLowerCase() === "http:"
        ? plain(request)
        : fetchUpstream(request, tls),
    {
      close() {
        plain.close();
        tls?.close();
      },
    },
  );
}

async function fetchUpstream(
  request: UpstreamRequest,
  client: Deno.HttpClient | undefined,
): Promise<UpstreamResponse> {
  const response = await fetch(request.url, {
    method: "POST",
    headers: request.headers,
    body: request.body as Uint8Array<ArrayBuffer>,
    signal: request.signal,
    client,
    // A redirect is the provider's answer: following it would send the key and prompt elsewhere.
    redirect: "manual",
  });
  const { status, statusText, headers, body } = response;
  return { status, statusText, headers, body, decoded: FETCH_DECODES.has(encodingOf(headers)) };
}

/** The content encodings Deno's fetch undoes by itself. */
const FETCH_DECODES = new Set(["gzip", "br"]);

function encodingOf(headers: Headers): string {
  return (headers.get("content-encoding") ?? "").trim().toLowerCase();
}

/**
 * Deno's `node:http` itself sends a request once more when a pooled connection fails before an
 * answer (the provider closed it while idle), so the router adds no retry of its own here.
 */
function nodeHttpClient(): UpstreamClient & { close(): void } {
  const agent = new http.Agent({ keepAlive: true });
  const send = (request: UpstreamRequest) =>
    new Promise<UpstreamResponse>((resolve, reject) => {
      const { signal } = request;
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const headers = request.headers;
      headers["content-length"] = String(request.body.byteLength);
      // Compression would only cost CPU on both ends of what is mostly a short JSON answer.
      headers["accept-encoding"] = "identity";
      const outgoing = http.request(request.url, { method: "POST", headers, agent });
      let body: BodyFeed | null = null;
      let settled = false;
      const fail = (error: unknown) => {
        settled = true;
        reject(error);
      };
      const onAbort = () => {
        fail(signal.reason);
        body?.fail(signal.reason);
        // Not a pooled connection to resend on: node would send an aborted request again.
        outgoing.reusedSocket = false;
        // Destroyed without an error: node would re-emit one on a socket nobody listens to.
        outgoing.destroy();
      };
      signal.addEventListener("abort", onAbort, { once: true });
      const done = () => signal.removeEventListener("abort", onAbort);
      outgoing.on("error", (error) => {
        body?.fail(error);
        done();
        fail(error);
      });
      // A connection that closes with no answer and no error (a 101 upgrade, say) ends the attempt.
      outgoing.on("close", () => {
        if (settled) return;
        done();
        fail(new Error("Upstream connection closed without an answer"));
      });
      outgoing.on("response", (incoming: http.IncomingMessage) => {
        if (settled) {
          outgoing.destroy();
          return;
        }
        settled = true;
        const status = incoming.statusCode ?? 0;
        const headers = headersOf(incoming.rawHeaders);
        const format = decompression(encodingOf(headers));
        if (NO_BODY_STATUSES.has(status)) {
          incoming.resume();
          done();
        } else {
          body = new BodyFeed(incoming, outgoing, format, done);
        }
        resolve({
          status,
          statusText: incoming.statusMessage ?? "",
          headers,
          body: body?.stream ?? null,
          decoded: body !== null && format !== null,
        });
      });
      outgoing.end(request.body);
    });
  return Object.assign(send, { close: () => agent.destroy() });
}

function headersOf(raw: string[]): Headers {
  const headers = new Headers();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    try {
      headers.append(raw[i], raw[i + 1]);
    } catch {
      // A header Headers cannot hold is not forwarded.
    }
  }
  return headers;
}

/** The format a response's content encoding is undone with; null when it has none we know. */
function decompression(encoding: string): CompressionFormat | null {
  if (encoding === "gzip" || encoding === "x-gzip") return "gzip";
  if (encoding === "deflate") return "deflate";
  if (encoding === "br") return "brotli" as CompressionFormat;
  return null;
}

/**
 * The answer's body as a byte stream fed from the socket: chunks are handed over without a
 * copy, the socket pauses while the reader is behind (backpressure reaches the provider), and
 * a connection that closes before the body's end errors the stream.
 */
class BodyFeed {
  readonly stream: ReadableStream<Uint8Array<ArrayBuffer>>;
  #controller!: ReadableByteStreamController;
  #finished = false;
  #done: () => void;

  /** `format` undoes the body's content encoding; null leaves the bytes as they came. */
  constructor(
    incoming: http.IncomingMessage,
    outgoing: http.ClientRequest,
    format: CompressionFormat | null,
    done: () => void,
  ) {
    this.#done = done;
    const raw = new ReadableStream({
      type: "bytes",
      start: (controller) => {
        this.#controller = controller;
      },
      pull: () => {
        incoming.resume();
      },
      cancel: () => {
        this.#finish();
        outgoing.destroy();
      },
    }, { highWaterMark: READ_AHEAD_BYTES });
    this.stream = format === null ? raw : raw.pipeThrough(new DecompressionStream(format));
    incoming.on("data", (chunk: Uint8Array) => {
      if (this.#finished) return;
      const whole = chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength;
      // A Buffer's own slice() is a view; a part of a larger buffer is copied before handover.
      this.#controller.enqueue(whole ? new Uint8Array(chunk.buffer) : new Uint8Array(chunk));
      if ((this.#controller.desiredSize ?? 0) <= 0) incoming.pause();
    });
    incoming.on("end", () => {
      if (this.#finish()) this.#controller.close();
    });
    incoming.on("error", (error) => this.fail(error));
    incoming.on("close", () => {
      this.fail(new Error("Upstream connection closed before the body ended"));
    });
  }

  /** Ends the stream with `error`, unless it has already ended. */
  fail(error: unknown): void {
    if (this.#finish()) this.#controller.error(error);
  }

  #finish(): boolean {
    if (this.#finished) return false;
    this.#finished = true;
    this.#done();
    return true;
  }
}
