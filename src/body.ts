/**
 * Replaces the top-level `"model"` string of a JSON request body in its raw bytes, so everything
 * else (key order, whitespace, number spelling, escapes, integers beyond 2^53) reaches the
 * provider exactly as the client wrote it.
 */

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const COLON = 0x3a;
const COMMA = 0x2c;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A byte range `[start, end)` in the body. */
interface Span {
  start: number;
  end: number;
}

function skipWhitespace(bytes: Uint8Array, i: number): number {
  while (i < bytes.length) {
    const b = bytes[i];
    if (b !== 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0d) break;
    i++;
  }
  return i;
}

/** Returns the index just past the closing quote of the string that starts at `i`. */
function skipString(bytes: Uint8Array, i: number): number {
  i++;
  while (i < bytes.length) {
    const b = bytes[i];
    if (b === BACKSLASH) i += 2;
    else if (b === QUOTE) return i + 1;
    else i++;
  }
  return i;
}

/** Returns the index just past the JSON value that starts at `i`. */
function skipValue(bytes: Uint8Array, i: number): number {
  const first = bytes[i];
  if (first === QUOTE) return skipString(bytes, i);
  if (first !== OPEN_BRACE && first !== OPEN_BRACKET) {
    while (i < bytes.length) {
      const b = bytes[i];
      if (b === COMMA || b === CLOSE_BRACE || b === CLOSE_BRACKET || b <= 0x20) break;
      i++;
    }
    return i;
  }
  let depth = 0;
  while (i < bytes.length) {
    const b = bytes[i];
    if (b === QUOTE) {
      i = skipString(bytes, i);
      continue;
    }
    if (b === OPEN_BRACE || b === OPEN_BRACKET) depth++;
    else if (b === CLOSE_BRACE || b === CLOSE_BRACKET) {
      depth--;
      if (depth === 0) return i + 1;
    }
    i++;
  }
  return i;
}

/** True when the key string at `span` (quotes included) means `name`, escapes and all. */
function keyIs(bytes: Uint8Array, span: Span, name: string): boolean {
  const raw = bytes.subarray(span.start, span.end);
  if (raw.indexOf(BACKSLASH) === -1) {
    return raw.length === name.length + 2 && decoder.decode(raw) === `"${name}"`;
  }
  return JSON.parse(decoder.decode(raw)) === name;
}

/** One top-level `"key": value` pair: where the key starts and where the value lies. */
interface Member {
  key: Span;
  value: Span;
}

/**
 * Finds every top-level member named `name`. The body must already be known to be a valid JSON
 * object (the caller parsed a copy). With duplicate keys every occurrence is returned, so the
 * provider sees an edit whichever occurrence its parser keeps.
 */
function findMembers(bytes: Uint8Array, name: string): Member[] {
  const members: Member[] = [];
  const bom = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;
  let i = skipWhitespace(bytes, bom);
  if (bytes[i] !== OPEN_BRACE) return members;
  i++;
  while (i < bytes.length) {
    i = skipWhitespace(bytes, i);
    if (bytes[i] !== QUOTE) break;
    const key: Span = { start: i, end: skipString(bytes, i) };
    i = skipWhitespace(bytes, key.end);
    if (bytes[i] !== COLON) break;
    i = skipWhitespace(bytes, i + 1);
    const value: Span = { start: i, end: skipValue(bytes, i) };
    if (keyIs(bytes, key, name)) members.push({ key, value });
    i = skipWhitespace(bytes, value.end);
    if (bytes[i] !== COMMA) break;
    i++;
  }
  return members;
}

/** The spans of every top-level `"model"` value that is a string. */
export function findModelSpans(bytes: Uint8Array): Span[] {
  return findMembers(bytes, "model")
    .filter((member) => bytes[member.value.start] === QUOTE)
    .map((member) => member.value);
}

/** Returns `bytes` with each span replaced by `replacement`; spans must be in order. */
function replaceSpans(
  bytes: Uint8Array<ArrayBuffer>,
  spans: readonly Span[],
  replacement: Uint8Array,
): Uint8Array<ArrayBuffer> {
  if (spans.length === 0) return bytes;
  const removed = spans.reduce((sum, span) => sum + span.end - span.start, 0);
  const out = new Uint8Array(bytes.length - removed + spans.length * replacement.length);
  let from = 0;
  let to = 0;
  for (const span of spans) {
    out.set(bytes.subarray(from, span.start), to);
    to += span.start - from;
    out.set(replacement, to);
    to += replacement.length;
    from = span.end;
  }
  out.set(bytes.subarray(from), to);
  return out;
}

/** Returns the body with every top-level `"model"` string value replaced by `model`. */
export function spliceModel(
  bytes: Uint8Array<ArrayBuffer>,
  model: string,
): Uint8Array<ArrayBuffer> {
  return replaceSpans(bytes, findModelSpans(bytes), encoder.encode(JSON.stringify(model)));
}

/**
 * Sets a top-level member to `json` (already serialized): replaces its value where the key
 * exists, otherwise inserts it as the first member. Everything else keeps its bytes.
 */
export function setMember(
  bytes: Uint8Array<ArrayBuffer>,
  name: string,
  json: string,
): Uint8Array<ArrayBuffer> {
  const members = findMembers(bytes, name);
  if (members.length > 0) {
    return replaceSpans(bytes, members.map((member) => member.value), encoder.encode(json));
  }
  const open = bytes.indexOf(OPEN_BRACE);
  const empty = bytes[skipWhitespace(bytes, open + 1)] === CLOSE_BRACE;
  const member = encoder.encode(`${JSON.stringify(name)}:${json}${empty ? "" : ","}`);
  return replaceSpans(bytes, [{ start: open + 1, end: open + 1 }], member);
}

/**
 * Removes every top-level member named `name` whose value is exactly `null`, with its comma,
 * or returns null when there is none.
 */
export function removeNullMember(
  bytes: Uint8Array<ArrayBuffer>,
  name: string,
): Uint8Array<ArrayBuffer> | null {
  const spans: Span[] = [];
  for (const { key, value } of findMembers(bytes, name)) {
    if (
      value.end - value.start !== 4 ||
      decoder.decode(bytes.subarray(value.start, value.end)) !== "null"
    ) {
      continue;
    }
    let start = key.start;
    let before = start - 1;
    while (before > 0 && bytes[before] <= 0x20) before--;
    let end = value.end;
    if (bytes[before] === COMMA) start = before;
    else {
      const after = skipWhitespace(bytes, end);
      if (bytes[after] === COMMA) end = after + 1;
    }
    spans.push({ start, end });
  }
  return spans.length === 0 ? null : replaceSpans(bytes, spans, new Uint8Array(0));
}
