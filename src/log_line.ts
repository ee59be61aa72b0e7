import { jsonText } from "./json.ts";
import type { RequestRecord } from "./record.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const REDACTED = "[REDACTED]";
/** Shorter "secrets" (test keys like "k") would scrub ordinary words out of every line. */
const MIN_SECRET_LENGTH = 6;

/**
 * Whether JSON spells `text` otherwise inside a string: it holds a quote, a backslash, a control
 * character or a lone surrogate.
 */
function hasEscapes(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x20 || code === 0x22 || code === 0x5c) return true;
  }
  return !text.isWellFormed();
}

/**
 * `covered` with every character of every place `needle` occurs in `text` marked; the marks are
 * made only at a first match. One byte per character whatever the number of matches, so a body
 * full of repeats of a secret costs no more memory than any other.
 */
function cover(text: string, needle: string, covered: Uint8Array | null): Uint8Array | null {
  let marked = 0;
  for (let at = text.indexOf(needle); at !== -1; at = text.indexOf(needle, at + 1)) {
    covered ??= new Uint8Array(text.length);
    const end = at + needle.length;
    covered.fill(1, Math.max(at, marked), end);
    marked = end;
  }
  return covered;
}

/**
 * Replaces every secret in `text`, in its raw and its JSON-escaped spellings. All matches are
 * found in the text as it is and each run of matched characters is replaced as one, so a secret
 * that holds or overlaps another is never left partly in clear by the other's replacement.
 */
function scrub(text: string, secrets: readonly string[]): string {
  let covered: Uint8Array | null = null;
  for (const secret of secrets) {
    covered = cover(text, secret, covered);
    if (!hasEscapes(secret)) continue;
    // Escaped once for a secret in a body, twice for one quoted as JSON inside a text body.
    const escaped = JSON.stringify(secret).slice(1, -1);
    covered = cover(text, escaped, covered);
    covered = cover(text, JSON.stringify(escaped).slice(1, -1), covered);
  }
  if (covered === null) return text;
  const pieces: string[] = [];
  let at = 0;
  for (let start = covered.indexOf(1); start !== -1; start = covered.indexOf(1, at)) {
    const end = covered.indexOf(0, start);
    pieces.push(text.slice(at, start));
    at = end === -1 ? text.length : end;
  }
  pieces.push(text.slice(at));
  return pieces.join(REDACTED);
}

/** Scrubs every string in a parsed value, keys included. */
function scrubDeep(value: unknown, secrets: readonly string[]): unknown {
  if (typeof value === "string") return scrub(value, secrets);
  if (Array.isArray(value)) return value.map((item) => scrubDeep(item, secrets));
  if (value === null || typeof value !== "object") return value;
  return Object.fromEntries(
    Object.entries(value).map(([key, item]) => [scrub(key, secrets), scrubDeep(item, secrets)]),
  );
}

/**
 * A body for the log as JSON text, cut to `cap` bytes (as a string) when larger. A body to be
 * cut is scrubbed first, so a cut can never leave most of a secret behind; a whole one is
 * scrubbed with the rest of the line.
 */
function bodyJson(
  value: unknown,
  cap: number,
  secrets: readonly string[],
): { json: string; truncated: boolean; scrubbed: boolean } {
  const isText = typeof value === "string";
  const raw = isText ? value : jsonText(value);
  const whole = { json: isText ? JSON.stringify(raw) : raw, truncated: false, scrubbed: false };
  // A UTF-8 byte is at most 3 per UTF-16 unit, so short texts need no encoding to measure.
  if (cap === 0 || raw.length * 3 <= cap) return whole;
  const text = scrub(raw, secrets);
  const scrubbed = text !== raw;
  const bytes = encoder.encode(text);
  if (bytes.length <= cap) {
    // Whole after all. JSON text goes as it was and is scrubbed with the line, which keeps the
    // line valid even where a secret's spelling runs across the body's JSON syntax.
    return isText
      ? { json: JSON.stringify(text), truncated: false, scrubbed }
      : { ...whole, scrubbed };
  }
  const cut = decoder.decode(bytes.subarray(0, cap)).replace(/\uFFFD$/, "");
  return { json: JSON.stringify(cut), truncated: true, scrubbed };
}

/**
 * Turns a record into one JSON line: bodies over `maxBodyBytes` are cut, the large `request`
 * and `response` go last for readability, and no secret survives, as a key or a value. Secrets
 * are found with native searches of the text; replacing them in the JSON text keeps it valid (the
 * replacement has no quote or backslash), and should an odd secret ever break the line, it is
 * rebuilt from its parsed form instead.
 */
export function serializeRecord(
  record: RequestRecord,
  options: { maxBodyBytes: number; secrets: readonly string[] },
): string {
  return recordLineParts(record, options).join("");
}

/**
 * `serializeRecord`'s line as the pieces it is made of, so a writer can encode them one by one:
 * joining a large body into one string copies it to fresh memory, which on a virtual machine
 * costs about as much as the rest of the record's work. The pieces are searched for secrets one
 * by one, in both spellings. Every seam between pieces touches a fixed piece where it starts with
 * `,` or ends with `:`, so a secret found across a seam would hold one of the two (and JSON never
 * escapes them). With such a secret, once a secret is found, or when a cut body was scrubbed, the
 * pieces are joined into one line and handled whole.
 */
export function recordLineParts(
  record: RequestRecord,
  options: { maxBodyBytes: number; secrets: readonly string[] },
): string[] {
  const secrets = options.secrets.filter((secret) => secret.length >= MIN_SECRET_LENGTH);
  const { request, response, ...rest } = record;
  const req = bodyJson(request, options.maxBodyBytes, secrets);
  const res = bodyJson(response, options.maxBodyBytes, secrets);
  const head = JSON.stringify(rest);
  const parts = [
    head.slice(0, -1),
    ',"request":',
    req.json,
    `,"request_truncated":${req.truncated},"response":`,
    res.json,
    `,"response_truncated":${res.truncated}}`,
  ];
  const seamless = secrets.every((secret) => !secret.includes(",") && !secret.includes(":"));
  if (
    seamless && !req.scrubbed && !res.scrubbed &&
    parts.every((part) => scrub(part, secrets) === part)
  ) {
    return parts;
  }
  const line = parts.join("");
  const scrubbed = scrub(line, secrets);
  if (scrubbed === line && !req.scrubbed && !res.scrubbed) return [line];
  try {
    JSON.parse(scrubbed);
    return [scrubbed];
  } catch {
    return [JSON.stringify(scrubDeep(JSON.parse(line), secrets))];
  }
}
