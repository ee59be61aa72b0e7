import { concatBytes } from "./bytes.ts";
import { asObject, type JsonObject, parseBody } from "./json.ts";
import type { Deadline, InFlight } from "./upstream.ts";

/** A client body that passed the router's checks. */
export interface ClientBody {
  bytes: Uint8Array<ArrayBuffer>;
  fields: JsonObject;
  /** What the record logs: the parsed body, or its text when it is not JSON. */
  logged: unknown;
}

/** Why a body was refused: the status, a clear message, and a code for the record. */
export interface Refusal {
  status: number;
  message: string;
  code: string;
  logged: unknown;
}

const decoder = new TextDecoder();

export const SHUTTING_DOWN = "The router is shutting down; send the request again";

const TIMED_OUT = Symbol("timed out");
const STOPPING = Symbol("router stopping");

type Cut = typeof TIMED_OUT | typeof STOPPING;

/**
 * Watches a body read for its deadline and for shutdown past the grace period. Either one calls
 * `cut` once, with what cut the read short, and stops the watch; `stop` ends it when the read is
 * over.
 */
function watchRead(
  deadlines: InFlight,
  deadlineMs: number,
  cut: (why: Cut) => void,
): { stop(): void } {
  const due = deadlines.now() + deadlineMs;
  const end = (why: Cut) => {
    deadlines.delete(deadline);
    cut(why);
  };
  const deadline: Deadline = {
    check(now) {
      if (now < due) return due;
      end(TIMED_OUT);
      return Infinity;
    },
    abandon: () => end(STOPPING),
  };
  deadlines.add(deadline, due);
  return { stop: () => deadlines.delete(deadline) };
}

/**
 * Reads at most `limit` bytes within `deadlineMs`: a declared or actual size beyond the limit
 * is refused without reading the rest into memory (null), and a client that stops sending is
 * not waited for (TIMED_OUT), so it cannot hold a concurrency slot or a shutdown open.
 */
async function readLimited(
  request: Request,
  limit: number,
  deadlineMs: number,
  deadlines: InFlight,
): Promise<Uint8Array<ArrayBuffer> | null | Cut> {
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (declared > limit) return null;
  // Before `request.body` is touched: making its stream costs more than reading a short body.
  if (declared <= Math.min(limit, WHOLE_READ_BYTES)) {
    const bytes = await readDeclared(request, deadlineMs, deadlines);
    // Deno.serve holds a body to its declared length; a Request built in code need not.
    return typeof bytes !== "symbol" && bytes.length > limit ? null : bytes;
  }
  if (request.body === null) return new Uint8Array(0);
  const parts: Uint8Array[] = [];
  let size = 0;
  const reader = request.body.getReader();
  let cutShort: Cut | null = null;
  const watch = watchRead(deadlines, deadlineMs, (why) => {
    cutShort = why;
    reader.cancel().catch(() => {});
  });
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (cutShort !== null) return cutShort;
      if (done) break;
      size += value.length;
      if (size > limit) {
        await reader.cancel().catch(() => {});
        return null;
      }
      parts.push(value);
    }
  } catch (error) {
    if (cutShort !== null) return cutShort;
    throw error;
  } finally {
    watch.stop();
  }
  return concatBytes(parts);
}

/**
 * Bodies declared this long or shorter are read in one piece. Deno sets aside the declared length
 * before the first byte arrives and such a read cannot be cancelled, so longer ones go through a
 * stream reader: a client that declares a large body and sends little would otherwise hold that
 * much memory until it hangs up.
 */
const WHOLE_READ_BYTES = 64 * 1024;

/**
 * A short body of declared length (HTTP framing keeps it to that length) is read in one piece,
 * which costs far less than reading it through a stream. The read cannot be cancelled: a deadline
 * or a shutdown settles the result without it.
 */
function readDeclared(
  request: Request,
  deadlineMs: number,
  deadlines: InFlight,
): Promise<Uint8Array<ArrayBuffer> | Cut> {
  return new Promise((resolve, reject) => {
    const watch = watchRead(deadlines, deadlineMs, resolve);
    request.bytes().then(resolve, reject).finally(watch.stop);
  });
}

function isJsonType(contentType: string | null): boolean {
  if (contentType === null) return false;
  const type = contentType.split(";")[0].trim().toLowerCase();
  return type === "application/json" || type.endsWith("+json");
}

/**
 * Reads and checks a client's body: size, time (the first-byte timeout, the time a provider
 * would get to start its answer), JSON, an object with a string `model` and, if present, a
 * boolean (or null) `stream`. A missing or non-JSON content type is accepted when the body parses;
 * otherwise it is what the client got wrong (415).
 */
export async function readClientBody(
  request: Request,
  limits: { maxBytes: number; deadlineMs: number },
  deadlines: InFlight,
): Promise<ClientBody | Refusal> {
  const { maxBytes, deadlineMs } = limits;
  const bytes = await readLimited(request, maxBytes, deadlineMs, deadlines);
  if (bytes === STOPPING) {
    return { status: 503, message: SHUTTING_DOWN, code: "shutting_down", logged: null };
  }
  if (bytes === TIMED_OUT) {
    const message = `Request body did not arrive within ${deadlineMs} ms`;
    return { status: 408, message, code: "request_timeout", logged: null };
  }
  if (bytes === null) {
    const message = `Request body is larger than the limit of ${maxBytes} bytes`;
    return { status: 413, message, code: "request_too_large", logged: null };
  }
  const text = decoder.decode(bytes);
  const json = parseBody(text);
  const logged = json === undefined ? text : json;
  const fields = asObject(json);
  if (json === undefined && !isJsonType(request.headers.get("content-type"))) {
    const message = "Request body must be JSON sent as Content-Type: application/json";
    return { status: 415, message, code: "unsupported_media_type", logged };
  }
  if (fields === null) {
    const what = json === undefined ? "valid JSON" : "a JSON object";
    return { status: 400, message: `Request body must be ${what}`, code: "invalid_body", logged };
  }
  if (typeof fields.model !== "string") {
    const message = 'Request body needs a string "model" field';
    return { status: 400, message, code: "invalid_model", logged };
  }
  // The OpenAI API takes null for "not streaming", and its SDKs' types allow it.
  if (fields.stream != null && typeof fields.stream !== "boolean") {
    const message = '"stream" must be a boolean';
    return { status: 400, message, code: "invalid_stream", logged };
  }
  return { bytes, fields, logged };
}
