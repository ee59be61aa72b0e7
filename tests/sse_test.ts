import assert from "node:assert/strict";
import type { EventSourceMessage } from "eventsource-parser";
import { SseEventReader, SseFramer } from "../src/sse.ts";
import { concat } from "./harness.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const FIXTURES = [
  "openai_chat_stream_usage.sse",
  "openai_chat_stream_tool_calls.sse",
  "anthropic_messages_stream.sse",
  "anthropic_messages_stream_tool_use.sse",
  "anthropic_stream_overloaded.sse",
];

const LF = 0x0a;
const CR = 0x0d;

async function fixtureText(name: string): Promise<string> {
  return decoder.decode(await Deno.readFile(new URL(`./fixtures/${name}`, import.meta.url)));
}

type Ending = "LF" | "CRLF" | "CR";
const ENDINGS: Ending[] = ["LF", "CRLF", "CR"];

function withEnding(text: string, ending: Ending): Uint8Array {
  const eol = ending === "LF" ? "\n" : ending === "CRLF" ? "\r\n" : "\r";
  return encoder.encode(text.replaceAll("\n", eol));
}

/**
 * Reference event boundaries of a whole stream: the offset just past every blank line, where a
 * line ends in LF, CRLF or CR. Written independently of the framer, on the unsplit bytes.
 */
function boundaries(bytes: Uint8Array): number[] {
  const out: number[] = [];
  let lineStart = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== LF && bytes[i] !== CR) continue;
    const blank = i === lineStart;
    if (bytes[i] === CR && bytes[i + 1] === LF) i++;
    if (blank) out.push(i + 1);
    lineStart = i + 1;
  }
  return out;
}

function cutAt(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [0, ...cuts, bytes.length];
  return points.slice(1).map((end, i) => bytes.slice(points[i], end));
}

function cutEvery(bytes: Uint8Array, size: number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) chunks.push(bytes.slice(i, i + size));
  return chunks;
}

interface Framing {
  /** Everything `push` and `flush` returned, in order. */
  output: Uint8Array;
  /** Absolute event end offsets in `output`, from all pushes. */
  ends: number[];
  /** For each pushed chunk, the absolute ends its push returned (empty when it returned null). */
  endsPerPush: number[][];
  flushed: Uint8Array | null;
  /** Events parsed by one SseEventReader, event by event as the framer cut them. */
  events: EventSourceMessage[];
}

function frame(chunks: Uint8Array[]): Framing {
  const framer = new SseFramer();
  const reader = new SseEventReader();
  const parts: Uint8Array[] = [];
  const ends: number[] = [];
  const endsPerPush: number[][] = [];
  const events: EventSourceMessage[] = [];
  let emitted = 0;
  for (const chunk of chunks) {
    const framed = framer.push(chunk);
    if (framed === null) {
      endsPerPush.push([]);
      continue;
    }
    assert.ok(framed.ends.length > 0, "a non-null push carries at least one event");
    assert.equal(framed.ends.at(-1), framed.bytes.length, "bytes stop at the last event end");
    let from = 0;
    for (const end of framed.ends) {
      assert.ok(end > from, `ends must increase: ${framed.ends}`);
      events.push(...reader.read(framed.bytes.subarray(from, end)));
      from = end;
    }
    endsPerPush.push(framed.ends.map((end) => emitted + end));
    ends.push(...framed.ends.map((end) => emitted + end));
    parts.push(framed.bytes);
    emitted += framed.bytes.length;
  }
  const flushed = framer.flush();
  if (flushed !== null) {
    parts.push(flushed);
    events.push(...reader.readLast(flushed));
  }
  return { output: concat(parts), ends, endsPerPush, flushed, events };
}

/**
 * What the framer must return after each chunk: every boundary the bytes so far complete, and
 * none beyond. One deliberate exception: when a chunk ends on the CR of a blank line's CRLF, the
 * framer cannot know an LF follows and cuts right after the CR (a bare CR is a complete
 * terminator); that LF then starts the next piece. Holding the CR instead would delay every
 * event of a CR-only stream until the next one arrived.
 */
function expectedEndsPerPush(bytes: Uint8Array, chunks: Uint8Array[]): number[][] {
  const cuts = new Set<number>();
  let at = 0;
  for (const chunk of chunks) cuts.add(at += chunk.length);
  const adjusted = boundaries(bytes).map((end) =>
    bytes[end - 1] === LF && bytes[end - 2] === CR && cuts.has(end - 1) ? end - 1 : end
  );
  const out: number[][] = [];
  let from = 0;
  for (const chunk of chunks) {
    const to = from + chunk.length;
    out.push(adjusted.filter((end) => end > from && end <= to));
    from = to;
  }
  return out;
}

function assertFraming(bytes: Uint8Array, chunks: Uint8Array[], reference: Framing, label: string) {
  const result = frame(chunks);
  assert.deepEqual(result.output, bytes, `${label}: output bytes differ from input`);
  const expected = expectedEndsPerPush(bytes, chunks);
  assert.deepEqual(result.endsPerPush, expected, `${label}: ends`);
  // Nothing is left after the last blank line, except the LF of a CRLF cut after its CR.
  const rest = bytes.slice(expected.flat().at(-1));
  assert.deepEqual(result.flushed, rest.length === 0 ? null : rest, `${label}: flush`);
  assert.deepEqual(result.events, reference.events, `${label}: parsed events`);
}

/** The parse of the unsplit LF fixture, straight from one reader: what every variant must give. */
function referenceOf(text: string): Framing {
  const reference = frame([encoder.encode(text)]);
  assert.ok(reference.events.length > 0);
  return reference;
}

Deno.test("SseFramer returns a whole LF fixture in one push, cut at every blank line", async () => {
  for (const name of FIXTURES) {
    const text = await fixtureText(name);
    const bytes = encoder.encode(text);
    const result = frame([bytes]);
    assert.deepEqual(result.output, bytes, name);
    assert.equal(result.flushed, null, name);
    // Independent of the reference helper: events are the text between "\n\n" separators.
    const pieces = text.split("\n\n").slice(0, -1).map((piece) => `${piece}\n\n`);
    const expected: number[] = [];
    let at = 0;
    for (const piece of pieces) expected.push(at += encoder.encode(piece).length);
    assert.deepEqual(result.ends, expected, name);
    assert.equal(result.events.length, pieces.length, name);
  }
});

Deno.test("SseFramer frames every two-chunk split of every fixture exactly", async () => {
  for (const name of FIXTURES) {
    const text = await fixtureText(name);
    const reference = referenceOf(text);
    for (const ending of ENDINGS) {
      const bytes = withEnding(text, ending);
      for (let cut = 0; cut <= bytes.length; cut++) {
        assertFraming(bytes, cutAt(bytes, [cut]), reference, `${name} ${ending} cut ${cut}`);
      }
    }
  }
});

Deno.test("SseFramer frames fixtures fed in chunks of 1, 2, 3 and 7 bytes", async () => {
  for (const name of FIXTURES) {
    const text = await fixtureText(name);
    const reference = referenceOf(text);
    for (const ending of ENDINGS) {
      const bytes = withEnding(text, ending);
      for (const size of [1, 2, 3, 7]) {
        assertFraming(bytes, cutEvery(bytes, size), reference, `${name} ${ending} size ${size}`);
      }
    }
  }
});

Deno.test("SseFramer cuts CRLF and CR-only streams at the same events as LF", async () => {
  for (const name of FIXTURES) {
    const text = await fixtureText(name);
    const lf = frame([withEnding(text, "LF")]);
    for (const ending of ["CRLF", "CR"] as const) {
      const bytes = withEnding(text, ending);
      const result = frame([bytes]);
      assert.equal(result.ends.length, lf.ends.length, `${name} ${ending}`);
      assert.deepEqual(result.events, lf.events, `${name} ${ending}`);
      // Each framed event is the LF event with its line endings swapped.
      let from = 0;
      let lfFrom = 0;
      for (let i = 0; i < result.ends.length; i++) {
        const event = decoder.decode(result.output.subarray(from, result.ends[i]));
        const lfEvent = decoder.decode(lf.output.subarray(lfFrom, lf.ends[i]));
        assert.equal(event, lfEvent.replaceAll("\n", ending === "CR" ? "\r" : "\r\n"));
        from = result.ends[i];
        lfFrom = lf.ends[i];
      }
    }
  }
});

Deno.test("SseFramer cuts after the CR when a chunk ends inside a blank line's CRLF", () => {
  const framer = new SseFramer();
  assert.equal(framer.push(encoder.encode("data: a\r")), null);
  const first = framer.push(encoder.encode("\n\r"));
  assert.ok(first !== null);
  assert.equal(decoder.decode(first.bytes), "data: a\r\n\r");
  assert.deepEqual(first.ends, [10]);
  // The LF that completes the CRLF is not a second blank line.
  assert.equal(framer.push(encoder.encode("\n")), null);
  const second = framer.push(encoder.encode("data: b\r\n\r\n"));
  assert.ok(second !== null);
  assert.equal(decoder.decode(second.bytes), "\ndata: b\r\n\r\n");
  assert.deepEqual(second.ends, [12]);
  assert.equal(framer.flush(), null);
});

Deno.test("SseFramer returns nothing until a blank line arrives", () => {
  const framer = new SseFramer();
  for (const piece of ["event: ping\n", "data: {}", "\n", "data: more\r\n", ": comment\r"]) {
    assert.equal(framer.push(encoder.encode(piece)), null, JSON.stringify(piece));
  }
  assert.equal(framer.push(new Uint8Array(0)), null);
  const framed = framer.push(encoder.encode("\n\r\n"));
  assert.ok(framed !== null);
  assert.equal(
    decoder.decode(framed.bytes),
    "event: ping\ndata: {}\ndata: more\r\n: comment\r\n\r\n",
  );
  assert.deepEqual(framed.ends, [framed.bytes.length]);
});

Deno.test("SseFramer keeps a multi-byte character split across chunks", async () => {
  const text = await fixtureText("anthropic_messages_stream.sse");
  const bytes = encoder.encode(text);
  const reference = referenceOf(text);
  const wave = encoder.encode("👋");
  const at = bytes.findIndex((_, i) => wave.every((b, j) => bytes[i + j] === b));
  assert.ok(at > 0);
  for (let cut = at + 1; cut < at + wave.length; cut++) {
    const result = frame(cutAt(bytes, [cut]));
    assert.deepEqual(result.output, bytes);
    assert.deepEqual(result.events, reference.events);
  }
  const deltas = reference.events
    .filter((event) => event.event === "content_block_delta")
    .map((event) => JSON.parse(event.data).delta.text);
  assert.deepEqual(deltas, ["Bonjour", " à vous 👋"]);

  const openai = await fixtureText("openai_chat_stream_usage.sse");
  const openaiBytes = encoder.encode(openai);
  const content = (events: EventSourceMessage[]) =>
    events.filter((event) => event.data !== "[DONE]")
      .map((event) => JSON.parse(event.data).choices[0]?.delta?.content ?? "").join("");
  assert.equal(content(referenceOf(openai).events), "Bonjour à vous 👋");
  for (const size of [1, 2, 3, 7]) {
    assert.equal(content(frame(cutEvery(openaiBytes, size)).events), "Bonjour à vous 👋");
  }
});

Deno.test("SseFramer flush returns a last event without its blank line and readLast parses it", async () => {
  for (const name of FIXTURES) {
    const text = await fixtureText(name);
    const reference = referenceOf(text);
    const previous = text.slice(0, -2).lastIndexOf("\n\n");
    const lastStart = previous === -1 ? 0 : previous + 2;
    for (const trimmed of [text.slice(0, -1), text.slice(0, -2)]) {
      for (const ending of ENDINGS) {
        const bytes = withEnding(trimmed, ending);
        const lastEvent = withEnding(trimmed.slice(lastStart), ending);
        for (const size of [1, 3, 7, bytes.length]) {
          const label = `${name} ${ending} ${JSON.stringify(trimmed.slice(-6))} size ${size}`;
          const chunks = cutEvery(bytes, size);
          const result = frame(chunks);
          assert.deepEqual(result.output, bytes, label);
          assert.deepEqual(result.endsPerPush, expectedEndsPerPush(bytes, chunks), label);
          // The last cut is the blank line before the last event (or its CR, see above).
          const lastEnd = result.ends.at(-1) ?? 0;
          const start = bytes.length - lastEvent.length;
          assert.ok(lastEnd === start || (ending === "CRLF" && lastEnd === start - 1), label);
          assert.deepEqual(result.flushed, bytes.slice(lastEnd), label);
          assert.deepEqual(result.events, reference.events, label);
        }
      }
    }
  }
});

Deno.test("SseFramer flush returns null at a boundary and after a flush", () => {
  const framer = new SseFramer();
  assert.equal(framer.flush(), null);
  assert.ok(framer.push(encoder.encode("data: x\n\n")) !== null);
  assert.equal(framer.flush(), null);
  assert.equal(framer.push(encoder.encode("data: y")), null);
  assert.equal(decoder.decode(framer.flush()!), "data: y");
  assert.equal(framer.flush(), null);
});

Deno.test("SseEventReader reads multi-line data, comments and the last event", () => {
  const reader = new SseEventReader();
  const events = reader.read(encoder.encode(": keep-alive\n\nevent: e\ndata: a\ndata: b\n\n"));
  assert.deepEqual(events.map(({ event, data }) => ({ event, data })), [
    { event: "e", data: "a\nb" },
  ]);
  assert.deepEqual(reader.readLast(encoder.encode("data: half\r")).map((event) => event.data), [
    "half",
  ]);
  assert.deepEqual(reader.readLast(encoder.encode("data: [DONE]")).map((event) => event.data), [
    "[DONE]",
  ]);
});
