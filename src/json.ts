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

/** A count from a usage object, 0 when absent or not a number. */
export function count(value: unknown): number {
  return typeof value === "number" && Number.isFinite(value) ? value : 0;
}
