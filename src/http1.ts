/**
 * A small HTTP/1.1 client on Deno's own TCP connections, for plain-http providers. It does what
 * a router needs and no more: one POST with a body known in full, the answer's head parsed from
 * the socket's bytes, the body handed over as it arrives (content-length, chunked, or up to the
 * connection's end), and a keep-alive pool per origin.
 */
import { concatBytes } from "./bytes.ts";

/** An answer's head: status line and headers, everything in it as received. */
export interface Http1Answer {
  status: number;
  statusText: string;
  headers: Headers;
  /** Null when the status carries no body (204, 205, 304). */
  body: BodyReader | null;
}

/**
 * An answer's body, read in order, one read at a time; `cancel` gives up on the rest, never
 * rejects, and settles a waiting read as the end. A stream's `ReadableStreamDefaultReader` is one
 * (`fetch` hands one over). This client hands over its own, with no stream in between: the relay
 * is the body's only reader, and a stream would add its machinery to every chunk.
 */
export interface BodyReader {
  read(): Promise<ReadableStreamReadResult<Uint8Array<ArrayBuffer>>>;
  cancel(reason?: unknown): Promise<void>;
}

const DONE: ReadableStreamReadDoneResult<Uint8Array<ArrayBuffer>> = Object.freeze({
  done: true,
  value: undefined,
});

/** The cap on an answer's head, and on a chunk-size or trailer line. */
const HEAD_LIMIT_BYTES = 16 * 1024;
/**
 * A connection's read buffer starts small, since a stream waiting for its next event holds it the
 * whole time, and doubles up to the largest size when reads fill it (a large body).
 */
const FIRST_BUFFER_BYTES = 4 * 1024;
const LARGEST_BUFFER_BYTES = 64 * 1024;
/** Bodies above this go out in a write of their own rather than copied behind the head. */
const JOIN_BODY_MAX_BYTES = 64 * 1024;
/**
 * A pooled connection idle longer than this is closed, not reused: servers commonly drop idle
 * keep-alive connections after 5 s. A shorter `keep-alive: timeout` from the server wins.
 */
const IDLE_REUSE_MS = 4000;
const MAX_IDLE_PER_ORIGIN = 256;
/** How soon after a pooled connection is taken its failure still counts as a stale connection. */
const STALE_WINDOW_MS = 100;
const NO_BODY_STATUSES = new Set([204, 205, 304]);

/** One TCP connection and the bytes read from it that nobody has taken yet. */
class Wire {
  readonly conn: Deno.TcpConn;
  buffer = new Uint8Array(FIRST_BUFFER_BYTES);
  start = 0;
  end = 0;
  /** Bytes received for the current request. */
  received = 0;
  idleUntil = 0;
  closed = false;
  /** The last read took all the room it had: more is likely waiting. */
  filledLast = false;
  /** In the pool: anything read now was not asked for. */
  parked = false;
  sent = false;

  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  get available(): number {
    return this.end - this.start;
  }

  /**
   * Reads more bytes from the socket; false at its end. There is one read at a time: a read
   * started while the connection sat in the pool is the one the next request's reader awaits.
   */
  fill(): Promise<boolean> {
    this.#reading ??= this.#read().finally(() => this.#reading = null);
    return this.#reading;
  }

  #reading: Promise<boolean> | null = null;

  async #read(): Promise<boolean> {
    // What is left unread (part of a line, a chunk's CRLF) moves to the front, so each read has
    // the whole buffer but that: a read that fills it then means a large body, not a small room.
    if (this.start > 0) {
      this.buffer.copyWithin(0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
    }
    // Unread bytes fill the whole buffer (a head or line longer than it): only a larger one helps.
    const full = this.end === this.buffer.length;
    if ((full || this.filledLast) && this.buffer.length < LARGEST_BUFFER_BYTES) {
      const larger = new Uint8Array(this.buffer.length * 2);
      larger.set(this.buffer.subarray(0, this.end));
      this.buffer = larger;
    }
    const space = this.buffer.length - this.end;
    const read = await this.conn.read(this.buffer.subarray(this.end));
    if (read === null) return false;
    this.filledLast = read === space;
    this.end += read;
    this.received += read;
    return true;
  }

  /**
   * Readies an emptied connection for the pool: a buffer grown for a large answer goes back to
   * the first size, and a read waits on the socket, so that bytes or a close from the server
   * while nobody asked for anything end the connection there and then.
   */
  park(onUnasked: () => void): void {
    if (this.buffer.length > FIRST_BUFFER_BYTES) this.buffer = new Uint8Array(FIRST_BUFFER_BYTES);
    this.filledLast = false;
    this.start = this.end = 0;
    this.parked = true;
    // A pooled connection never keeps the process alive.
    this.conn.unref();
    this.fill().then(() => {
      if (this.parked) onUnasked();
    }, () => {
      if (this.parked) onUnasked();
    });
  }

  /** The next `n` unread bytes, as a buffer of their own. */
  take(n: number): Uint8Array<ArrayBuffer> {
    return this.view(n).slice();
  }

  /** The next `n` unread bytes, as a view on the buffer: valid only until the next read. */
  view(n: number): Uint8Array<ArrayBuffer> {
    const viewed = this.buffer.subarray(this.start, this.start + n);
    this.start += n;
    return viewed;
  }

  /** The next line without its CR LF (a bare LF also ends it), or null until it is whole. */
  line(): string | null {
    const lf = this.buffer.indexOf(10, this.start);
    const whole = lf !== -1 && lf < this.end;
    if ((whole ? lf - this.start : this.available) >= HEAD_LIMIT_BYTES) {
      throw new Error(`Upstream sent a line longer than ${HEAD_LIMIT_BYTES} bytes`);
    }
    if (!whole) return null;
    const end = lf > this.start && this.buffer[lf - 1] === 13 ? lf - 1 : lf;
    const text = latin1(this.buffer.subarray(this.start, end));
    this.start = lf + 1;
    return text;
  }

  /** Sends a request; `sent` says when all of it has gone out. */
  async write(parts: Uint8Array[]): Promise<void> {
    this.sent = false;
    for (const bytes of parts) {
      for (let written = 0; written < bytes.length;) {
        written += await this.conn.write(bytes.subarray(written));
      }
    }
    this.sent = true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.conn.close();
    } catch {
      // Already closed by a failed read or write.
    }
  }
}

const asciiDecoder = new TextDecoder();

/** Bytes as the characters of the same codes, as HTTP's field values are read. */
function latin1(bytes: Uint8Array): string {
  let ascii = true;
  for (let i = 0; i < bytes.length && ascii; i++) ascii = bytes[i] < 0x80;
  if (ascii) return asciiDecoder.decode(bytes);
  let text = "";
  // In slices: a spread of too many arguments overflows the stack.
  for (let at = 0; at < bytes.length; at += 4096) {
    text += String.fromCharCode(...bytes.subarray(at, at + 4096));
  }
  return text;
}

interface Head {
  status: number;
  statusText: string;
  headers: Headers;
  framing: Framing;
  keepAlive: boolean;
  /** How long the server says it keeps an idle connection, if it says. */
  idleMs: number | null;
}

type Framing = { kind: "length"; length: number } | { kind: "chunked" } | { kind: "close" };

const STATUS_LINE = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** Parses one head from the wire's unread bytes; null until the blank line that ends it. */
function parseHead(wire: Wire): Head | null {
  const { buffer } = wire;
  let at = wire.start;
  for (;;) {
    const lf = buffer.indexOf(10, at);
    if (lf === -1 || lf >= wire.end) {
      if (wire.available >= HEAD_LIMIT_BYTES) {
        throw new Error(`Upstream answer's head exceeds ${HEAD_LIMIT_BYTES} bytes`);
      }
      return null;
    }
    const blank = lf === at || (lf === at + 1 && buffer[at] === 13);
    if (blank && at === wire.start) {
      // Empty lines before a status line are passed over (RFC 9112 section 2.2).
      wire.start = at = lf + 1;
      continue;
    }
    at = lf + 1;
    if (blank) break;
  }
  if (at - wire.start > HEAD_LIMIT_BYTES) {
    throw new Error(`Upstream answer's head exceeds ${HEAD_LIMIT_BYTES} bytes`);
  }
  const lines = latin1(buffer.subarray(wire.start, at)).split("\n");
  wire.start = at;
  const statusLine = STATUS_LINE.exec(lines[0].replace(/\r$/, ""));
  if (statusLine === null) throw new Error("Upstream answer is not HTTP/1.x");
  const fields: [string, string][] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, "");
    if (line === "") continue;
    if (line[0] === " " || line[0] === "\t") {
      // A folded line continues the field before it (RFC 9112 section 5.2).
      if (fields.length > 0) fields[fields.length - 1][1] += " " + line.trim();
      continue;
    }
    const colon = line.indexOf(":");
    const name = colon > 0 ? line.slice(0, colon) : "";
    // A malformed field line (no colon, space before it) could hide how the body is framed.
    if (!TOKEN.test(name)) {
      throw new Error("Upstream answer has a malformed header line");
    }
    fields.push([name.toLowerCase(), line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "")]);
  }
  const headers = new Headers();
  for (const [name, value] of fields) {
    try {
      headers.append(name, value);
    } catch {
      // A value Headers cannot hold is not forwarded.
    }
  }
  const http10 = statusLine[1] === "0";
  const connection = (headers.get("connection") ?? "").toLowerCase();
  let keepAlive = http10 ? connection.includes("keep-alive") : !connection.includes("close");
  let framing: Framing;
  const transferEncoding = headers.get("transfer-encoding");
  const contentLength = headers.get("content-length");
  if (transferEncoding !== null) {
    framing = /(^|,)\s*chunked\s*$/i.test(transferEncoding)
      ? { kind: "chunked" }
      : { kind: "close" };
    // Both framings at once is how request smuggling starts, and HTTP/1.0 has no chunked
    // framing: either way the connection is not reused.
    if (contentLength !== null || http10) keepAlive = false;
  } else if (contentLength !== null) {
    const lengths = new Set(contentLength.split(",").map((part) => part.trim()));
    const [length] = lengths;
    if (lengths.size !== 1 || !/^\d{1,15}$/.test(length)) {
      throw new Error("Upstream answer has an invalid content-length");
    }
    framing = { kind: "length", length: Number(length) };
  } else {
    framing = { kind: "close" };
  }
  const status = Number(statusLine[2]);
  if (status < 100) throw new Error(`Upstream answered with status ${status}`);
  // An answer that ends with its connection leaves nothing to reuse; 204 and 304 have no body.
  if (framing.kind === "close" && status !== 204 && status !== 304) keepAlive = false;
  const timeout = /(?:^|,)\s*timeout=(\d+)/i.exec(headers.get("keep-alive") ?? "");
  return {
    status,
    statusText: statusLine[3] ?? "",
    headers,
    framing,
    keepAlive,
    idleMs: timeout === null ? null : Number(timeout[1]) * 1000,
  };
}

/** The parts of a body, as it comes off the wire. */
interface BodyDecoder {
  /** The next bytes of the body, or null at its end. */
  next(): Promise<Uint8Array<ArrayBuffer> | null>;
  /** The body has ended and the wire is left at the next message. */
  readonly done: boolean;
}

const BODY_CUT = "Upstream connection closed before the body ended";

class LengthBody implements BodyDecoder {
  #wire: Wire;
  #left: number;

  constructor(wire: Wire, length: number) {
    this.#wire = wire;
    this.#left = length;
  }

  get done(): boolean {
    return this.#left === 0;
  }

  async next(): Promise<Uint8Array<ArrayBuffer> | null> {
    if (this.#left === 0) return null;
    if (this.#wire.available === 0 && !(await this.#wire.fill())) throw new Error(BODY_CUT);
    const piece = this.#wire.take(Math.min(this.#left, this.#wire.available));
    this.#left -= piece.length;
    return piece;
  }
}

class UntilCloseBody implements BodyDecoder {
  #wire: Wire;
  done = false;

  constructor(wire: Wire) {
    this.#wire = wire;
  }

  async next(): Promise<Uint8Array<ArrayBuffer> | null> {
    if (this.done) return null;
    if (this.#wire.available === 0 && !(await this.#wire.fill())) {
      this.done = true;
      return null;
    }
    return this.#wire.take(this.#wire.available);
  }
}

/**
 * `transfer-encoding: chunked`. Every chunk already read is handed over at once, joined: the
 * chunk boundaries of HTTP/1.1 carry no meaning, so a burst of small chunks costs one handover.
 */
class ChunkedBody implements BodyDecoder {
  #wire: Wire;
  #state: "size" | "data" | "data-end" | "trailers" | "done" = "size";
  #left = 0;

  constructor(wire: Wire) {
    this.#wire = wire;
  }

  get done(): boolean {
    return this.#state === "done";
  }

  async next(): Promise<Uint8Array<ArrayBuffer> | null> {
    for (;;) {
      const parts: Uint8Array[] = [];
      this.#decodeBuffered(parts);
      // One copy out of the wire's buffer, however many chunks the read brought.
      if (parts.length === 1) return parts[0].slice();
      if (parts.length > 1) return concatBytes(parts);
      if (this.#state === "done") return null;
      if (!(await this.#wire.fill())) throw new Error(BODY_CUT);
    }
  }

  #decodeBuffered(parts: Uint8Array[]): void {
    const wire = this.#wire;
    for (;;) {
      if (this.#state === "data") {
        const n = Math.min(this.#left, wire.available);
        if (n === 0) return;
        parts.push(wire.view(n));
        this.#left -= n;
        if (this.#left === 0) this.#state = "data-end";
        continue;
      }
      if (this.#state === "done") return;
      const line = wire.line();
      if (line === null) return;
      if (this.#state === "size") {
        const size = /^([0-9a-fA-F]{1,12})[ \t]*(?:;.*)?$/.exec(line);
        if (size === null) throw new Error("Upstream sent an invalid chunk size");
        this.#left = parseInt(size[1], 16);
        this.#state = this.#left === 0 ? "trailers" : "data";
      } else if (this.#state === "data-end") {
        if (line !== "") throw new Error("Upstream chunk is longer than its size");
        this.#state = "size";
      } else if (line === "") {
        this.#state = "done";
      }
    }
  }
}

function decoderFor(wire: Wire, framing: Framing): BodyDecoder {
  if (framing.kind === "length") return new LengthBody(wire, framing.length);
  if (framing.kind === "chunked") return new ChunkedBody(wire);
  return new UntilCloseBody(wire);
}

/** The request's head and body as bytes, in one buffer unless the body is large. */
function encodeRequest(
  url: URL,
  headers: Record<string, string>,
  body: Uint8Array,
): Uint8Array[] {
  let head = `POST ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`;
  for (const name in headers) {
    const value = headers[name];
    if (!TOKEN.test(name) || /[\r\n\0]/.test(value)) {
      throw new TypeError(`Header ${JSON.stringify(name)} cannot be sent`);
    }
    head += `${name}: ${value}\r\n`;
  }
  head += `content-length: ${body.byteLength}\r\n\r\n`;
  const joined = body.byteLength <= JOIN_BODY_MAX_BYTES;
  const out = new Uint8Array(head.length + (joined ? body.byteLength : 0));
  for (let i = 0; i < head.length; i++) {
    const code = head.charCodeAt(i);
    if (code > 0xff) throw new TypeError("A header holds a character beyond Latin-1");
    out[i] = code;
  }
  if (!joined) return [out, body];
  out.set(body, head.length);
  return [out];
}

/** Keep-alive connections per origin, most recently used first out. */
export class Http1Pool {
  #idle = new Map<string, Wire[]>();
  #sweep: ReturnType<typeof setInterval> | undefined;
  #closed = false;

  /**
   * Sends one POST: rejects on any failure before the answer's head is whole. A pooled connection
   * that fails at once (the server dropped it while idle) costs one more send on a new connection;
   * a request whose signal has fired is never sent again.
   */
  async send(
    url: URL,
    headers: Record<string, string>,
    body: Uint8Array,
    signal: AbortSignal,
  ): Promise<Http1Answer> {
    const message = encodeRequest(url, headers, body);
    const origin = url.host;
    const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
    const port = Number(url.port || 80);
    let wire: Wire | null = null;
    const onAbort = () => wire?.close();
    signal.addEventListener("abort", onAbort, { once: true });
    const done = () => signal.removeEventListener("abort", onAbort);
    try {
      for (;;) {
        signal.throwIfAborted();
        const pooled = this.#take(origin);
        const taken = performance.now();
        wire = pooled ?? new Wire(await connect(hostname, port, signal));
        if (signal.aborted) {
          wire.close();
          throw signal.reason;
        }
        wire.received = 0;
        // The answer is read while the body goes out: a provider may answer (a 413, say) and
        // stop reading a large body, or close the connection on it.
        wire.write(message).catch(() => {});
        let head: Head | null = null;
        try {
          head = await readHead(wire);
        } catch (error) {
          wire.close();
          if (wire.received > 0 || !this.#closedAsTaken(pooled, taken, signal)) throw error;
        }
        // A server ending an idle connection may say so with a 408 as the request goes out.
        if (head !== null && head.status === 408 && this.#closedAsTaken(pooled, taken, signal)) {
          wire.close();
          head = null;
        }
        if (head !== null) return this.#answer(origin, wire, head, signal, done);
        this.#dropIdle(origin);
      }
    } catch (error) {
      done();
      throw signal.aborted ? signal.reason : error;
    }
  }

  /**
   * Whether a pooled connection failed the way one the server closed while idle does: at once,
   * before any other byte of an answer. Such a request is sent once more on a new connection
   * (the origin's other idle connections are dropped with it). A request that failed later may
   * have been read and worked on, and is not sent again.
   */
  #closedAsTaken(pooled: Wire | null, taken: number, signal: AbortSignal): boolean {
    return pooled !== null && !signal.aborted && performance.now() - taken < STALE_WINDOW_MS;
  }

  #answer(
    origin: string,
    wire: Wire,
    head: Head,
    signal: AbortSignal,
    done: () => void,
  ): Http1Answer {
    const { status, statusText, headers } = head;
    let finished = false;
    /** Ends the exchange: the connection goes back to the pool only after a whole answer. */
    const finish = (whole: boolean) => {
      if (finished) return;
      finished = true;
      done();
      // An answer that came before the whole request went out leaves the connection mid-request.
      if (whole && wire.sent && head.keepAlive && wire.available === 0 && !wire.closed) {
        this.#put(origin, wire, head.idleMs);
      } else {
        wire.close();
      }
    };
    const decoder = decoderFor(wire, head.framing);
    if (NO_BODY_STATUSES.has(status)) {
      // 204 and 304 never carry content; a 205 leaves the connection usable only if it says so.
      finish(status !== 205 || decoder.done);
      return { status, statusText, headers, body: null };
    }
    // After the end or a cancel, reads see the end; after a failure, its error (held in an
    // object, so that even an undefined reason counts).
    let ended = false;
    let failure: { reason: unknown } | null = null;
    const body: BodyReader = {
      read: async () => {
        if (failure !== null) throw failure.reason;
        if (ended) return DONE;
        try {
          const piece = await decoder.next();
          // A cancel while the read waited ends the body there, whatever came in meanwhile.
          if (ended) return DONE;
          if (piece === null || decoder.done) {
            ended = true;
            finish(true);
          }
          return piece === null ? DONE : { done: false, value: piece };
        } catch (error) {
          if (ended) return DONE;
          ended = true;
          finish(false);
          failure = { reason: signal.aborted ? signal.reason : error };
          throw failure.reason;
        }
      },
      cancel: () => {
        ended = true;
        finish(false);
        return Promise.resolve();
      },
    };
    if (decoder.done) finish(true);
    return { status, statusText, headers, body };
  }

  #take(origin: string): Wire | null {
    const idle = this.#idle.get(origin);
    const now = Date.now();
    while (idle !== undefined && idle.length > 0) {
      const wire = idle.pop()!;
      wire.parked = false;
      if (wire.idleUntil > now && !wire.closed) {
        wire.conn.ref();
        return wire;
      }
      wire.close();
    }
    return null;
  }

  #put(origin: string, wire: Wire, serverIdleMs: number | null): void {
    const keep = serverIdleMs === null
      ? IDLE_REUSE_MS
      : Math.min(IDLE_REUSE_MS, serverIdleMs - 1000);
    let idle = this.#idle.get(origin);
    if (idle === undefined) this.#idle.set(origin, idle = []);
    if (this.#closed || keep <= 0 || idle.length >= MAX_IDLE_PER_ORIGIN) {
      wire.close();
      return;
    }
    wire.idleUntil = Date.now() + keep;
    idle.push(wire);
    wire.park(() => {
      wire.close();
      const at = idle.indexOf(wire);
      if (at !== -1) idle.splice(at, 1);
    });
    this.#sweep ??= this.#startSweep();
  }

  /** One pooled connection turned out dead: the others of its origin are likely dead too. */
  #dropIdle(origin: string): void {
    for (const wire of this.#idle.get(origin) ?? []) wire.close();
    this.#idle.delete(origin);
  }

  /** Closes connections idle past their time, so none lingers after a provider goes quiet. */
  #startSweep(): ReturnType<typeof setInterval> {
    const timer = setInterval(() => {
      const now = Date.now();
      let left = 0;
      for (const [origin, idle] of this.#idle) {
        for (let i = idle.length - 1; i >= 0; i--) {
          if (idle[i].idleUntil <= now || idle[i].closed) idle.splice(i, 1)[0].close();
        }
        if (idle.length === 0) this.#idle.delete(origin);
        left += idle.length;
      }
      if (left === 0) {
        clearInterval(timer);
        this.#sweep = undefined;
      }
    }, IDLE_REUSE_MS);
    Deno.unrefTimer(timer);
    return timer;
  }

  /** Closes the idle connections; those still in use close when their answers end. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#sweep);
    this.#sweep = undefined;
    for (const idle of this.#idle.values()) for (const wire of idle) wire.close();
    this.#idle.clear();
  }
}

/**
 * Opens a connection; a signal that fires first wins, and the late connection is closed. The
 * signal is not handed to `Deno.connect`: a connection it completes in the same turn as an abort
 * is then lost without being closed.
 */
function connect(hostname: string, port: number, signal: AbortSignal): Promise<Deno.TcpConn> {
  return new Promise((resolve, reject) => {
    let abandoned = false;
    const onAbort = () => {
      abandoned = true;
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    Deno.connect({ hostname, port }).then((conn) => {
      signal.removeEventListener("abort", onAbort);
      if (abandoned) {
        conn.close();
        return;
      }
      conn.setNoDelay(true);
      resolve(conn);
    }, (error) => {
      signal.removeEventListener("abort", onAbort);
      reject(error);
    });
  });
}

/** Reads up to a final answer's head: 1xx interim answers are passed over, 101 fails. */
async function readHead(wire: Wire): Promise<Head> {
  for (;;) {
    const head = parseHead(wire);
    if (head !== null) {
      if (head.status === 101) {
        throw new Error("Upstream switched protocols instead of answering");
      }
      if (head.status >= 200) return head;
      continue;
    }
    if (!(await wire.fill())) {
      throw new Error(
        wire.received === 0
          ? "Upstream closed the connection without an answer"
          : "Upstream closed the connection inside the answer's head",
      );
    }
  }
}
