import { createParser, type EventSourceMessage, type EventSourceParser } from "eventsource-parser";
import { concatBytes } from "./bytes.ts";

const LF = 0x0a;
const CR = 0x0d;
/** One event larger than this is no event a model API sends; holding it would hold memory. */
const MAX_EVENT_BYTES = 16 * 1024 * 1024;

/** The bytes of whole events, ready to forward, with each event's end offset inside them. */
export interface Framed {
  bytes: Uint8Array;
  ends: number[];
}

/**
 * Cuts a byte stream at SSE event boundaries (blank lines ending in LF, CRLF or CR) without
 * changing a byte. The router forwards whole events only, so an error event it adds after an
 * upstream failure always starts on a fresh boundary, and it can hold or drop events before commit.
 * Framing works on bytes because boundaries are ASCII and a multi-byte character never spans one.
 */
export class SseFramer {
  #carry: Uint8Array[] = [];
  #carryLength = 0;
  #atLineStart = true;
  #afterCR = false;

  /**
   * Takes the next chunk; returns the whole events it completes, or null when none. Throws when
   * an unfinished event outgrows MAX_EVENT_BYTES.
   */
  push(chunk: Uint8Array): Framed | null {
    const ends: number[] = [];
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i];
      if (this.#afterCR) {
        this.#afterCR = false;
        if (b === LF) continue;
      }
      if (b === LF || b === CR) {
        let end = i + 1;
        if (b === CR) {
          if (i + 1 < chunk.length) {
            if (chunk[i + 1] === LF) end = ++i + 1;
          } else this.#afterCR = true;
        }
        if (this.#atLineStart) ends.push(end);
        this.#atLineStart = true;
      } else {
        this.#atLineStart = false;
      }
    }
    if (ends.length === 0) {
      this.#keep(chunk);
      return null;
    }
    const last = ends[ends.length - 1];
    let bytes = chunk.subarray(0, last);
    if (this.#carryLength > 0) {
      const offset = this.#carryLength;
      bytes = this.#take(bytes);
      for (let i = 0; i < ends.length; i++) ends[i] += offset;
    }
    if (last < chunk.length) this.#keep(chunk.subarray(last));
    return { bytes, ends };
  }

  /** Returns the bytes of an unfinished last event at the end of the stream, or null. */
  flush(): Uint8Array | null {
    if (this.#carryLength === 0) return null;
    return this.#take(new Uint8Array(0));
  }

  #keep(bytes: Uint8Array): void {
    this.#carry.push(bytes);
    this.#carryLength += bytes.length;
    if (this.#carryLength > MAX_EVENT_BYTES) {
      throw new Error(`An SSE event grew past ${MAX_EVENT_BYTES} bytes without ending`);
    }
  }

  #take(tail: Uint8Array): Uint8Array {
    const out = concatBytes([...this.#carry, tail]);
    this.#carry = [];
    this.#carryLength = 0;
    return out;
  }
}

/**
 * Parses whole events handed over by the framer. One decoder and one parser per stream; the
 * parser keeps SSE field rules (multi-line data, comments, BOM) in one well-tested place.
 */
export class SseEventReader {
  #decoder = new TextDecoder();
  #parser: EventSourceParser;
  #parsed: EventSourceMessage[] = [];

  constructor() {
    this.#parser = createParser({ onEvent: (message) => this.#parsed.push(message) });
  }

  /** Returns the events contained in `bytes`, which must end on an event boundary. */
  read(bytes: Uint8Array): EventSourceMessage[] {
    this.#parser.feed(this.#decoder.decode(bytes));
    const parsed = this.#parsed;
    this.#parsed = [];
    return parsed;
  }

  /** Reads an event that ended at end of stream without its blank line. */
  readLast(bytes: Uint8Array): EventSourceMessage[] {
    this.#parser.feed(this.#decoder.decode(bytes) + "\n\n");
    const parsed = this.#parsed;
    this.#parsed = [];
    return parsed;
  }
}
