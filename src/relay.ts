import type { AttemptError } from "./attempt.ts";
import type { BodyReader } from "./http_client.ts";
import { concatBytes } from "./bytes.ts";
import { asObject, type JsonObject, parseBody, tryParseJson } from "./json.ts";
import type { Dialect, EventFilter, EventRole, StreamAssembler } from "./providers/mod.ts";
import type { EventSourceMessage } from "eventsource-parser";
import { type Framed, SseEventReader, SseFramer } from "./sse.ts";

/** Events held before commit, at most; past it the router commits and sends them. */
const HOLD_LIMIT_BYTES = 64 * 1024;

/** What the tap learned from a body that has ended, for the log record. */
export interface RelayEnd {
  /** Null when the body ended as the API says it should. */
  error: AttemptError | null;
  message: string | null;
  /**
   * The body as the record shows it, with its usage: read when asked, which the router leaves
   * until the answer has gone out.
   */
  read(): BodyRead;
  streamEvents: number | null;
  streamComplete: boolean | null;
  /** Body bytes handed to the client. */
  bytesForwarded: number;
  /** Stream events whose data the tap could not parse; null for plain bodies. */
  malformedEvents: number | null;
}

/** What the tap reads from a body: the answer for the record (parsed, or its text) and usage. */
export interface BodyRead {
  usage: JsonObject | null;
  response: unknown;
}

/** Callbacks the router gives a relay for the client-facing part of its life. */
export interface RelayHooks {
  onFirstByte(): void;
  /** A read from upstream starts (true) or ends (false): the idle timeout runs in between. */
  onReading(pending: boolean): void;
  /** Names what a failed upstream read ran into (timeout, client gone, broken connection). */
  failureKind(): AttemptError;
  onEnd(end: RelayEnd): void;
}

/** How a stream's reading ahead before commit came out. */
export type CommitVerdict = "commit" | "error_event" | "stream_interrupted";

const encoder = new TextEncoder();

/**
 * Enqueues into a byte stream, which hands the chunk's whole buffer over to the stream (Deno then
 * writes it without another copy). A view on part of a buffer that other bytes still use (the
 * framer keeps an unfinished event there) is copied first.
 */
function enqueueOwned(controller: ReadableByteStreamController, bytes: Uint8Array): void {
  if (bytes.byteLength === 0) return;
  const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
  controller.enqueue(whole ? bytes : bytes.slice());
}

/**
 * Relays an SSE body: reads it in whole events, holds them until the router commits, then passes
 * the provider's bytes through unchanged while the dialect's assembler reads a copy.
 */
export class SseRelay {
  #reader: BodyReader;
  #dialect: Dialect;
  #assembler: StreamAssembler;
  #framer = new SseFramer();
  #events = new SseEventReader();
  #ready: Uint8Array[] = [];
  #readyBytes = 0;
  #count = 0;
  #sawOutput = false;
  #errorMessage: string | null = null;
  /** Called once, at the first event that carries model output. */
  onFirstOutput: () => void = () => {};

  #filter: EventFilter | null;
  #onReading: (pending: boolean) => void;
  #forwarded = 0;
  /**
   * After commit, the chunk queued for the client whose events the tap has yet to read: `next`
   * indexes its event ends, `from` is the byte offset where that event starts. Each pull reads
   * what is left of it before taking in the next chunk, so there is never more than one.
   */
  #untapped: { framed: Framed; next: number; from: number } | null = null;
  /** The end has been reported: what the record says must not change after that. */
  #summarized = false;

  /**
   * `filter`, when given, may rewrite or drop each event after the tap has read it;
   * `onReading` hears when a read from upstream starts and ends (for the idle timeout).
   */
  constructor(
    body: BodyReader,
    dialect: Dialect,
    options: {
      filter: EventFilter | null;
      onReading: (pending: boolean) => void;
      /** How much text the reassembly keeps for the log (0: all). */
      textLimit: number;
    },
  ) {
    this.#reader = body;
    this.#dialect = dialect;
    this.#assembler = dialect.newAssembler(options.textLimit);
    this.#filter = options.filter;
    this.#onReading = options.onReading;
  }

  /** Reads ahead until an event decides the commit. A failed read throws. */
  async awaitCommit(): Promise<CommitVerdict> {
    for (;;) {
      const { done, value } = await this.#read();
      if (done) return this.#ingestRest() === "output" ? "commit" : "stream_interrupted";
      const role = this.#ingest(this.#framer.push(value));
      if (role === "output") return "commit";
      if (role === "error") return "error_event";
      if (this.#readyBytes > HOLD_LIMIT_BYTES) return "commit";
    }
  }

  async #read(): Promise<ReadableStreamReadResult<Uint8Array>> {
    this.#onReading(true);
    try {
      return await this.#reader.read();
    } finally {
      this.#onReading(false);
    }
  }

  /** Gives up on this stream: frees the upstream connection. */
  async discard(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }

  /** The client's body: held events first, then the rest of the stream as it arrives. */
  clientStream(hooks: RelayHooks): ReadableStream<Uint8Array> {
    return new ReadableStream({
      type: "bytes",
      pull: async (controller) => {
        try {
          this.#tap();
        } catch (error) {
          this.#endWithError(controller, hooks, "stream_interrupted", String(error));
          return;
        }
        for (;;) {
          if (this.#ready.length > 0) {
            this.#flush(controller, hooks);
            return;
          }
          let result: ReadableStreamReadResult<Uint8Array>;
          try {
            result = await this.#read();
          } catch (error) {
            // A provider that drops the connection after its end marker sent the whole answer.
            if (this.#completeSoFar()) {
              this.#endOfStream(controller, hooks);
            } else {
              this.#endWithError(controller, hooks, hooks.failureKind(), String(error));
            }
            return;
          }
          if (result.done) {
            this.#endOfStream(controller, hooks);
            return;
          }
          try {
            this.#pass(this.#framer.push(result.value));
          } catch (error) {
            this.#endWithError(controller, hooks, "stream_interrupted", String(error));
            return;
          }
        }
      },
      cancel: async () => {
        // A client may stop at the end marker and hang up before the provider closes the body
        // (the SDKs stop at [DONE]): it had the whole answer.
        hooks.onEnd(
          this.#completeSoFar()
            ? this.#summary(null, null)
            : this.#summary("client_aborted", "Client closed the connection"),
        );
        await this.#reader.cancel().catch(() => {});
      },
    });
  }

  /**
   * Queues framed bytes and folds their events in at once; returns the first decisive role among
   * them. Used before commit (the roles decide it) and with a filter (which needs each event read
   * before its bytes go out).
   */
  #ingest(framed: Framed | null): EventRole {
    if (framed === null) return "hold";
    const filter = this.#filter;
    if (filter === null) this.#queue(framed.bytes);
    let decisive: EventRole = "hold";
    let from = 0;
    for (const end of framed.ends) {
      const raw = framed.bytes.subarray(from, end);
      let out: Uint8Array | null = raw;
      for (const event of this.#events.read(raw)) {
        const role = this.#take(event);
        if (decisive === "hold") decisive = role;
        if (filter !== null && out !== null) out = filter(out, event.data);
      }
      if (filter !== null && out !== null) this.#queue(out);
      from = end;
    }
    return decisive;
  }

  /**
   * Queues framed bytes for the client after commit. Past the first output event (the commit
   * point of a last candidate), the tap reads a chunk of several events only once its bytes have
   * gone out, at the next pull: the client does not wait for their parsing.
   */
  #pass(framed: Framed | null): void {
    if (framed === null) return;
    if (this.#filter !== null) {
      this.#ingest(framed);
      return;
    }
    this.#untapped = { framed, next: 0, from: 0 };
    // A lone event is read at once: there is nothing for it to wait behind.
    if (!this.#sawOutput || framed.ends.length === 1) this.#tap(!this.#sawOutput);
    // The client's stream takes over the buffer it is given, so what the tap has yet to read
    // goes out as a copy.
    this.#queue(this.#untapped === null ? framed.bytes : framed.bytes.slice());
  }

  /** Folds in the queued events the tap has not read, all of them or up to the first output. */
  #tap(untilOutput = false): void {
    const untapped = this.#untapped;
    if (untapped === null) return;
    const { bytes, ends } = untapped.framed;
    while (untapped.next < ends.length) {
      const end = ends[untapped.next++];
      for (const event of this.#events.read(bytes.subarray(untapped.from, end))) {
        this.#take(event);
      }
      untapped.from = end;
      if (untilOutput && this.#sawOutput) return;
    }
    this.#untapped = null;
  }

  #flush(controller: ReadableByteStreamController, hooks: RelayHooks): void {
    for (const bytes of this.#ready) enqueueOwned(controller, bytes);
    this.#forwarded += this.#readyBytes;
    this.#ready = [];
    this.#readyBytes = 0;
    hooks.onFirstByte();
  }

  #queue(bytes: Uint8Array): void {
    this.#ready.push(bytes);
    this.#readyBytes += bytes.length;
  }

  /** Folds one event into the tap; nothing more is taken in once the end has been reported. */
  #take(event: EventSourceMessage): EventRole {
    if (this.#summarized) return "hold";
    return this.#fold(event.data, this.#assembler.add(event));
  }

  #fold(data: string, role: EventRole): EventRole {
    this.#count++;
    if (role === "output" && !this.#sawOutput) {
      this.#sawOutput = true;
      this.onFirstOutput();
    }
    if (role === "error") this.#errorMessage ??= errorMessageOf(data);
    return role;
  }

  /**
   * Folds in an event that ended at end of stream without its blank line. It is queued for the
   * client only if it completes the stream: a cut-off tail followed by the router's error event
   * would put that event mid-line.
   */
  #ingestRest(): EventRole {
    this.#tap();
    const rest = this.#framer.flush();
    if (rest === null) return "hold";
    let decisive: EventRole = "hold";
    for (const event of this.#events.readLast(rest)) {
      const role = this.#take(event);
      if (decisive === "hold") decisive = role;
    }
    if (this.#assembler.complete || this.#errorMessage !== null) this.#queue(rest);
    return decisive;
  }

  #endOfStream(controller: ReadableByteStreamController, hooks: RelayHooks): void {
    this.#ingestRest();
    if (this.#ready.length > 0) this.#flush(controller, hooks);
    if (this.#assembler.complete || this.#errorMessage !== null) {
      controller.close();
      const error = this.#errorMessage === null ? null : "error_event";
      hooks.onEnd(this.#summary(error, this.#errorMessage));
      return;
    }
    const message = "Upstream stream ended before its end marker";
    this.#endWithError(controller, hooks, "stream_interrupted", message);
  }

  /** Ends the client's stream with one error event in the API's format, on a fresh boundary. */
  #endWithError(
    controller: ReadableByteStreamController,
    hooks: RelayHooks,
    kind: AttemptError,
    message: string,
  ): void {
    if (kind !== "client_aborted" && this.#errorMessage === null) {
      const event = encoder.encode(this.#dialect.streamErrorEvent(message));
      this.#forwarded += event.length;
      controller.enqueue(event);
      hooks.onFirstByte();
    }
    controller.close();
    hooks.onEnd(this.#summary(kind, message));
  }

  /** Whether the events passed to the client so far make a whole answer. */
  #completeSoFar(): boolean {
    try {
      this.#tap();
    } catch {
      return false;
    }
    return this.#assembler.complete && this.#errorMessage === null && this.#ready.length === 0;
  }

  #summary(error: AttemptError | null, message: string | null): RelayEnd {
    try {
      this.#tap();
    } catch {
      // The end is being reported already; the tap keeps what it read.
    }
    this.#summarized = true;
    return {
      error,
      message,
      read: () => ({ usage: this.#assembler.usage, response: this.#assembler.response() }),
      streamEvents: this.#count,
      streamComplete: this.#assembler.complete,
      bytesForwarded: this.#forwarded,
      malformedEvents: this.#assembler.malformed,
    };
  }
}

/** The message of an API's error event: under `error` (chat, Anthropic), at the top (Responses' `error`), or under `response.error` (`response.failed`). */
function errorMessageOf(data: string): string {
  const event = asObject(tryParseJson(data));
  const error = asObject(event?.error) ?? asObject(asObject(event?.response)?.error);
  const message = error?.message ?? event?.message;
  return typeof message === "string" ? message : data;
}

const decoder = new TextDecoder();

/** Of a plain answer, the router reads this much before it commits (fully, for most). */
const PLAIN_HOLD_BYTES = 256 * 1024;
/**
 * How long the router reads ahead an answer of unknown length before it commits anyway: a
 * gateway that keeps a long call alive with early whitespace must reach the client as it comes.
 */
const PLAIN_HOLD_MS = 1000;

/** A plain body as read before commit: whole when `ended`, otherwise its first part. */
export interface PlainHead {
  chunks: Uint8Array[];
  bytes: number;
  ended: boolean;
  reader: BodyReader;
  /** A read still under way when the hold ran out; the relay takes it up first. */
  pending: Promise<ReadableStreamReadResult<Uint8Array>> | null;
}

/**
 * Reads a plain body ahead, until it ends, passes `PLAIN_HOLD_BYTES` or, when the provider did
 * not say how long it is, has taken `PLAIN_HOLD_MS` and sent something. A body that breaks off
 * here, or has sent nothing yet, is a failed attempt the router can still fall back from. A
 * failed read throws.
 */
export async function readPlainHead(
  reader: BodyReader,
  declaredLength: number | null,
  onReading: (pending: boolean) => void,
): Promise<PlainHead> {
  const head: PlainHead = { chunks: [], bytes: 0, ended: false, reader, pending: null };
  // Only a body of unknown length needs the time bound (and so a timer).
  let expired: Promise<"expired"> | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  if (declaredLength === null) {
    expired = new Promise((resolve) => timer = setTimeout(() => resolve("expired"), PLAIN_HOLD_MS));
  }
  // Set once the hold ran out before anything came: the first bytes are then the commit point.
  let late = false;
  try {
    while (head.bytes <= PLAIN_HOLD_BYTES) {
      onReading(true);
      const read = reader.read();
      let result: ReadableStreamReadResult<Uint8Array> | "expired";
      try {
        result = await (expired === null ? read : Promise.race([read, expired]));
        if (result === "expired" && head.bytes === 0) {
          // Nothing to send yet: keep waiting (the idle timeout still runs).
          late = true;
          expired = null;
          result = await read;
        }
      } finally {
        onReading(false);
      }
      if (result === "expired") {
        // Settled either way when the relay takes it up; never an unhandled rejection meanwhile.
        read.catch(() => {});
        head.pending = read;
        break;
      }
      if (result.done) {
        head.ended = true;
        break;
      }
      head.chunks.push(result.value);
      head.bytes += result.value.length;
      if (late) break;
    }
  } finally {
    clearTimeout(timer);
  }
  return head;
}

/** How a plain body ended; the tap parses it only when the record asks. */
function plainSummary(
  dialect: Dialect,
  kept: Uint8Array,
  forwarded: number,
  error: AttemptError | null,
  message: string | null,
): RelayEnd {
  return {
    error,
    message,
    read() {
      const text = decoder.decode(kept);
      const parsed = parseBody(text);
      return { usage: dialect.usageOf(parsed), response: parsed === undefined ? text : parsed };
    },
    streamEvents: null,
    streamComplete: null,
    bytesForwarded: forwarded,
    malformedEvents: null,
  };
}

/**
 * The client's body for a plain answer. A body read whole goes out as bytes (Deno then writes
 * it with its length, no stream machinery). A longer one is relayed chunk by chunk as it arrives,
 * keeping a copy (up to about `keepLimit` bytes, so memory stays bounded) for the record.
 */
export function relayPlainBody(
  head: PlainHead,
  dialect: Dialect,
  hooks: RelayHooks,
  keepLimit: number,
): Uint8Array<ArrayBuffer> | ReadableStream<Uint8Array> {
  if (head.ended) {
    const bytes = concatBytes(head.chunks);
    hooks.onFirstByte();
    hooks.onEnd(plainSummary(dialect, bytes, bytes.length, null, null));
    return bytes;
  }
  const { reader } = head;
  let pending = head.pending;
  // Enqueuing hands a buffer over, so the tap keeps copies.
  const kept = head.chunks.map((chunk) => chunk.slice());
  let forwarded = 0;
  let held: Uint8Array[] | null = head.chunks;
  const summary = (error: AttemptError | null, message: string | null) =>
    plainSummary(dialect, concatBytes(kept), forwarded, error, message);
  return new ReadableStream({
    type: "bytes",
    async pull(controller) {
      if (held !== null) {
        for (const chunk of held) enqueueOwned(controller, chunk);
        forwarded += head.bytes;
        held = null;
        if (head.bytes > 0) {
          hooks.onFirstByte();
          return;
        }
      }
      let result: ReadableStreamReadResult<Uint8Array>;
      hooks.onReading(true);
      try {
        result = await (pending ?? reader.read());
        pending = null;
      } catch (error) {
        hooks.onEnd(summary(hooks.failureKind(), String(error)));
        controller.error(error);
        return;
      } finally {
        hooks.onReading(false);
      }
      if (result.done) {
        hooks.onFirstByte();
        controller.close();
        hooks.onEnd(summary(null, null));
        return;
      }
      const chunk = result.value;
      if (forwarded < keepLimit) kept.push(chunk.slice());
      forwarded += chunk.length;
      enqueueOwned(controller, chunk);
      hooks.onFirstByte();
    },
    async cancel() {
      hooks.onEnd(summary("client_aborted", "Client closed the connection"));
      await reader.cancel().catch(() => {});
    },
  });
}
