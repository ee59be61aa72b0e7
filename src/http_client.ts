import { type BodyReader, Http1Pool } from "./http1.ts";

export type { BodyReader };

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
  /** Null for statuses that carry no body (204, 205, 304). Read it, or cancel it to let it go. */
  body: BodyReader | null;
  /** The client undid the body's content encoding: `content-encoding` no longer describes it. */
  decoded: boolean;
}

export type UpstreamClient = (request: UpstreamRequest) => Promise<UpstreamResponse>;

/**
 * The upstream client. Plain-http providers (local model servers, sidecars, gateways on the same
 * network) go through the router's own HTTP/1.1 client on Deno's TCP connections (src/http1.ts),
 * with a keep-alive pool per origin: it costs less CPU per request and per streamed chunk than
 * `fetch` or `node:http`. https providers go through `fetch`, which also brings HTTP/2, proxy
 * settings from the environment and Deno's certificate store. Both hand the router plain bytes:
 * `fetch` undoes a content encoding itself, and the http client asks for none and undoes one a
 * provider applies anyway. `caCerts` adds trusted roots for https providers (a private CA).
 */
export function createHttpClient(
  options: { caCerts?: string[] } = {},
): UpstreamClient & { close(): void } {
  const plain = plainHttpClient();
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
  const { status, statusText, headers } = response;
  return {
    status,
    statusText,
    headers,
    body: response.body?.getReader() ?? null,
    decoded: FETCH_DECODES.has(encodingOf(headers)),
  };
}

/** The content encodings Deno's fetch undoes by itself. */
const FETCH_DECODES = new Set(["gzip", "br"]);

function encodingOf(headers: Headers): string {
  return (headers.get("content-encoding") ?? "").trim().toLowerCase();
}

function plainHttpClient(): UpstreamClient & { close(): void } {
  const pool = new Http1Pool();
  const send = async (request: UpstreamRequest): Promise<UpstreamResponse> => {
    // Compression would only cost CPU on both ends of what is mostly a short JSON answer.
    request.headers["accept-encoding"] = "identity";
    const answer = await pool.send(
      new URL(request.url),
      request.headers,
      request.body,
      request.signal,
    );
    const { status, statusText, headers, body } = answer;
    const format = body === null ? null : decompression(encodingOf(headers));
    return {
      status,
      statusText,
      headers,
      body: format === null
        ? body
        : streamOf(body!).pipeThrough(new DecompressionStream(format)).getReader(),
      decoded: format !== null,
    };
  };
  return Object.assign(send, { close: () => pool.close() });
}

/** The format a response's content encoding is undone with; null when it has none we know. */
function decompression(encoding: string): CompressionFormat | null {
  if (encoding === "gzip" || encoding === "x-gzip") return "gzip";
  if (encoding === "deflate") return "deflate";
  if (encoding === "br") return "brotli" as CompressionFormat;
  return null;
}

/** A body reader as a stream, to pipe through a decompressor. */
function streamOf(body: BodyReader): ReadableStream<Uint8Array<ArrayBuffer>> {
  return new ReadableStream({
    async pull(controller) {
      const result = await body.read();
      if (result.done) controller.close();
      else controller.enqueue(result.value);
    },
    cancel: (reason) => body.cancel(reason),
  }, { highWaterMark: 0 });
}
