/** A JSON object as an API sent it (a usage block, a response body). */
export type JsonObject = Record<string, unknown>;

/** Narrows an unknown JSON value to an object, or null. */
export function asObject(value: unknown): JsonObject | null {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? value as JsonObject
    : null;
}

/** Parses JSON without throwing: a malformed event or body is recorded as what it was, not fatal. */
export function tryParseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Far above any real token count, and far enough below 2^53 that sums of it stay exact. */
const MAX_COUNT = 2 ** 40;

/**
 * A count from a usage object: 0 when absent, not a number, negative, or so large that adding it
 * up would leave the integers a counter can hold. A provider's odd number must not make a
 * Prometheus counter fall or read `Infinity`.
 */
export function count(value: unknown): number {
  return typeof value === "number" && value >= 0 && value <= MAX_COUNT ? value : 0;
}

/** The compact text a parsed body came from, so the log can write it without serializing again. */
const sourceTexts = new WeakMap<object, string>();

/**
 * Parses a body's JSON text and remembers the text for the log, when it fits on one log line
 * as it is (no line breaks) and spells every string plainly (no `\u` or `\/` escape, which
 * could hide a secret from the log's scrubbing).
 */
export function parseBody(text: string): unknown {
  const value = tryParseJson(text);
  if (typeof value === "object" && value !== null && !/[\r\n]|\\[u/]/.test(text)) {
    sourceTexts.set(value, text);
  }
  return value;
}

/**
 * The JSON text of a value parsed by `parseBody`, or a fresh serialization of it; `null` for what
 * JSON cannot spell (a function, or an object whose `toJSON` gives nothing).
 */
export function jsonText(value: unknown): string {
  return (typeof value === "object" && value !== null ? sourceTexts.get(value) : undefined) ??
    JSON.stringify(value ?? null) ?? "null";
}
