/** Turns zod issues into the one-line, path-first messages a config user can act on. */
import { z } from "zod";

/** A JSON path as zod reports it. */
export type Path = readonly PropertyKey[];
/** `path` is already formatted for the user, e.g. `providers[0].api_key`. */
export type Problem = { path: string; message: string };

/** Per-parse error map: zod's default messages don't name the value received. */
export function issueMessage(issue: z.core.$ZodRawIssue): string | undefined {
  const { code, input } = issue;
  if (input === undefined && (code === "invalid_type" || code === "invalid_value")) {
    return "Missing required field";
  }
  if (code === "too_small" && issue.origin !== "number") {
    return issue.minimum === 1 ? "Must not be empty" : undefined;
  }
  const expected = expectation(issue);
  return expected && `Expected ${expected}, received ${describe(input)}`;
}

function expectation(issue: z.core.$ZodRawIssue): string | undefined {
  switch (issue.code) {
    case "invalid_type":
      return issue.inst instanceof z.ZodNumber && issue.inst.isInt ? "integer" : issue.expected;
    case "invalid_value":
      return `one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
    case "too_small":
      return `a number ${issue.inclusive ? ">=" : ">"} ${issue.minimum}`;
    case "invalid_format":
      return issue.format === "url" ? "an http(s) URL" : undefined;
    case "invalid_union":
      return issue.errors.flat().flatMap((i) =>
        i.code === "invalid_type" && i.path.length === 0 ? [i.expected] : []
      ).join(" or ") || undefined;
  }
  return undefined;
}

export function flattenIssues(issues: readonly z.core.$ZodIssue[], prefix: Path): Problem[] {
  return issues.flatMap((issue): Problem[] => {
    const path = [...prefix, ...issue.path];
    const at = formatPath(path);
    if (issue.code === "unrecognized_keys") {
      return issue.keys.map((key) => ({ path: at, message: `Unrecognized key "${key}"` }));
    }
    if (issue.code === "invalid_union") {
      // Report the branch the value was shaped like, not "no branch matched".
      const shaped = issue.errors.filter((branch) =>
        !branch.every((i) => i.code === "invalid_type" && i.path.length === 0)
      );
      if (shaped.length === 1) return flattenIssues(shaped[0], path);
    }
    return [{ path: at, message: issue.message }];
  });
}

export function formatPath(path: Path): string {
  if (path.length === 0) return "config";
  return path.map((key, i) => {
    if (typeof key === "number") return `[${key}]`;
    const name = String(key);
    if (!/^[\w-]+$/.test(name)) return `[${JSON.stringify(name)}]`;
    return i === 0 ? name : `.${name}`;
  }).join("");
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  if (typeof value === "object" && value !== null) return Array.isArray(value) ? "array" : "object";
  const text = JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 57)}..."` : text;
}
