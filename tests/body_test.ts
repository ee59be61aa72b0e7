import assert from "node:assert/strict";
import { findModelSpans, spliceModel } from "../src/body.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const bytesOf = (text: string): Uint8Array<ArrayBuffer> => encoder.encode(text);

/** Splices `text` and asserts the result is exactly `expected`, byte for byte. */
function assertSplice(text: string, model: string, expected: string): void {
  const out = spliceModel(bytesOf(text), model);
  assert.deepEqual(out, bytesOf(expected), `got ${decoder.decode(out)}`);
}

Deno.test("spliceModel replaces only the model value in a pretty-printed body", () => {
  const before = `{
  "model": "gpt-4",
  "messages": [
    { "role": "user", "content": "Hi" }
  ],
  "temperature": 0.7
}
`;
  const after = before.replace(`"gpt-4"`, `"gpt-4o"`);
  assertSplice(before, "gpt-4o", after);
});

Deno.test("spliceModel replaces only the model value in a minified body", () => {
  assertSplice(
    `{"messages":[{"role":"user","content":"Hi"}],"model":"gpt-4","stream":true}`,
    "gpt-4o-2024-08-06",
    `{"messages":[{"role":"user","content":"Hi"}],"model":"gpt-4o-2024-08-06","stream":true}`,
  );
});

Deno.test("spliceModel keeps key order when model is the last key", () => {
  assertSplice(
    `{"z":1,"a":2,"m":[3],"model":"old"}`,
    "new",
    `{"z":1,"a":2,"m":[3],"model":"new"}`,
  );
});

Deno.test("spliceModel keeps tabs and CRLF around the colon and commas", () => {
  assertSplice(
    `{\r\n\t"max_tokens"\t:\t10\t,\r\n\t"model"\r\n\t:\r\n\t\t"claude-3-opus"\r\n\t,"x":[]\r\n}\r\n`,
    "claude-3-opus-20240229",
    `{\r\n\t"max_tokens"\t:\t10\t,\r\n\t"model"\r\n\t:\r\n\t\t"claude-3-opus-20240229"\r\n\t,"x":[]\r\n}\r\n`,
  );
  assertSplice(` \n { "model"  :  "a"  } \n `, "b", ` \n { "model"  :  "b"  } \n `);
});

Deno.test("spliceModel keeps \\u escapes and emoji elsewhere in the body as written", () => {
  const tail =
    `"messages":[{"role":"user","content":"caf\\u00e9 \\ud83d\\ude00 😀 日本語 \\n\\t\\"q\\" \\/ \\\\"}],"stop":["\\u0000"]}`;
  assertSplice(`{"model":"gpt-4",${tail}`, "gpt-4o", `{"model":"gpt-4o",${tail}`);
});

Deno.test("spliceModel keeps big integers and number spellings", () => {
  const numbers =
    `"seed":123456789012345678901234567890,"id":9007199254740993,"a":1.0e+10,"b":-0,"c":1E-7,"d":0.10,"e":-0.0,"f":[1.50,2e0]`;
  assertSplice(`{${numbers},"model":"m1"}`, "m2", `{${numbers},"model":"m2"}`);
  assertSplice(`{"model":"m1",${numbers}}`, "m2", `{"model":"m2",${numbers}}`);
});

Deno.test("spliceModel leaves nested model keys inside messages and tools alone", () => {
  const body = `{"messages":[{"role":"user","model":"nested","content":{"model":"deeper"}}],` +
    `"tools":[{"type":"function","function":{"name":"f","parameters":{"properties":{"model":{"type":"string"}}}}}],` +
    `"metadata":{"model":"meta"},"model":"top"}`;
  assertSplice(body, "TOP", body.replace(`"model":"top"`, `"model":"TOP"`));
  const spans = findModelSpans(bytesOf(body));
  assert.equal(spans.length, 1);
});

Deno.test('spliceModel leaves a string containing "model":"x" alone', () => {
  const body =
    `{"content":"say \\"model\\":\\"x\\" and {\\"model\\": \\"y\\"} ] }","model":"real","s":"\\\\"}`;
  assertSplice(body, "mapped", body.replace(`"model":"real"`, `"model":"mapped"`));
  // The key itself may appear inside string values before the real key.
  const tricky = `{"k":"\\",\\"model\\":\\"fake","model":"real"}`;
  assert.equal(JSON.parse(tricky).model, "real");
  assertSplice(tricky, "mapped", `{"k":"\\",\\"model\\":\\"fake","model":"mapped"}`);
});

Deno.test("spliceModel treats an escaped key spelling of model as the model key", () => {
  assertSplice(`{"\\u006dodel":"a","x":1}`, "b", `{"\\u006dodel":"b","x":1}`);
  assertSplice(`{"mod\\u0065l" : "a"}`, "b", `{"mod\\u0065l" : "b"}`);
  // Keys that only look alike are not model.
  const other = `{"models":"a","Model":"a","mode":"a","model ":"a","\\u006dodels":"a"}`;
  assertSplice(other, "b", other);
});

Deno.test("spliceModel replaces every duplicate top-level model key", () => {
  const body = `{"model":"first","x":{"model":"inner"},"model" : "second","model":"third"}`;
  const spans = findModelSpans(bytesOf(body));
  assert.equal(spans.length, 3);
  assertSplice(
    body,
    "new",
    `{"model":"new","x":{"model":"inner"},"model" : "new","model":"new"}`,
  );
  assert.equal(JSON.parse(decoder.decode(spliceModel(bytesOf(body), "new"))).model, "new");
});

Deno.test("spliceModel does not touch a model value that is not a string", () => {
  for (
    const body of [
      `{"model":null,"x":1}`,
      `{"model":42}`,
      `{"model":true}`,
      `{"model":["gpt-4"]}`,
      `{"model":{"name":"gpt-4"}}`,
      `{"x":1}`,
      `{}`,
    ]
  ) {
    const input = bytesOf(body);
    assert.deepEqual(findModelSpans(input), [], body);
    assert.deepEqual(spliceModel(input, "new"), input, body);
  }
  // A non-string model next to a later string one: only the string is replaced.
  assertSplice(`{"model":{"model":"x"},"model":"y"}`, "z", `{"model":{"model":"x"},"model":"z"}`);
});

Deno.test("findModelSpans returns the exact byte range of the value, quotes included", () => {
  const text = `{ "a" : [1, "}"] , "model" :\t"gpt-4" }`;
  const start = text.indexOf(`"gpt-4"`);
  assert.deepEqual(findModelSpans(bytesOf(text)), [{ start, end: start + 7 }]);
  // Offsets are byte offsets, not UTF-16 indexes.
  const multi = `{"é😀":"日本","model":"m"}`;
  const byteStart = bytesOf(multi.slice(0, multi.indexOf(`"m"}`))).length;
  assert.deepEqual(findModelSpans(bytesOf(multi)), [{ start: byteStart, end: byteStart + 3 }]);
});

Deno.test("spliceModel JSON-encodes a new name that needs escaping", () => {
  for (
    const name of [
      `we"ird\\name`,
      "modèle-日本-😀",
      "tab\there\nnewline",
      "\u2028\u2029",
      "",
    ]
  ) {
    const out = spliceModel(bytesOf(`{"model": "old", "n": 1}`), name);
    const text = decoder.decode(out);
    assert.deepEqual(JSON.parse(text), { model: name, n: 1 });
    assert.equal(text, `{"model": ${JSON.stringify(name)}, "n": 1}`);
  }
});

Deno.test("spliceModel with the same name returns identical bytes", () => {
  const body = `{ "model" : "gpt-4o",\n "messages": [] }`;
  const input = bytesOf(body);
  assert.deepEqual(spliceModel(input, "gpt-4o"), input);
});

/** A small deterministic PRNG (mulberry32), so a failing body can be reproduced. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Writes random-ish JSON text with awkward strings, whitespace and number spellings. */
class BodyWriter {
  #random: () => number;
  constructor(seed: number) {
    this.#random = prng(seed);
  }

  int(n: number): number {
    return Math.floor(this.#random() * n);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  ws(): string {
    return this.pick(["", "", " ", "\n  ", "\t", "\r\n", " \t "]);
  }

  string(): string {
    const pieces = [
      "plain",
      "{[",
      "]}",
      '\\"',
      '\\"model\\":\\"x\\"',
      "\\\\",
      '\\\\\\"',
      "\\u0022",
      "\\u005c",
      "\\n",
      "é",
      "😀",
      "\\ud83d\\ude00",
      ",",
      ":",
      "model",
    ];
    let out = "";
    for (let i = this.int(6); i > 0; i--) out += this.pick(pieces);
    return `"${out}"`;
  }

  number(): string {
    return this.pick(["0", "-0", "1.0e+10", "12345678901234567890", "3.14", "-2E-3", "1.50"]);
  }

  value(depth: number): string {
    const kind = depth > 4 ? this.int(3) : this.int(5);
    if (kind === 0) return this.string();
    if (kind === 1) return this.number();
    if (kind === 2) return this.pick(["true", "false", "null"]);
    if (kind === 3) {
      const items = Array.from({ length: this.int(4) }, () => this.ws() + this.value(depth + 1));
      return `[${items.join(`${this.ws()},`)}${this.ws()}]`;
    }
    return this.object(depth + 1);
  }

  member(key: string, value: string): string {
    return `${this.ws()}${key}${this.ws()}:${this.ws()}${value}`;
  }

  object(depth: number): string {
    const keys = ['"model"', '"content"', '"a{"', '"}b"', '"\\"model\\""', '"k"'];
    const members = Array.from(
      { length: this.int(4) },
      () => this.member(this.pick(keys), this.value(depth)),
    );
    return `{${members.join(",")}${this.ws()}}`;
  }
}

Deno.test("spliceModel changes only the model in a large random-ish body", () => {
  for (let seed = 1; seed <= 40; seed++) {
    const writer = new BodyWriter(seed);
    const before: string[] = [];
    for (let i = 0; i < 80; i++) before.push(writer.member(`"f${i}"`, writer.value(0)));
    const after: string[] = [];
    for (let i = 0; i < 80; i++) after.push(writer.member(`"g${i}"`, writer.value(0)));
    const head = `${writer.ws()}{${
      before.join(",")
    },${writer.ws()}"model"${writer.ws()}:${writer.ws()}`;
    const tail = `,${after.join(",")}${writer.ws()}}${writer.ws()}`;
    const input = `${head}"gpt-4"${tail}`;
    const name = seed % 2 === 0 ? "gpt-4o" : 'x"y\\z-é';

    const parsed = JSON.parse(input);
    assert.equal(parsed.model, "gpt-4", `seed ${seed}`);
    assert.ok(input.length > 4000, `seed ${seed} body is only ${input.length} chars`);

    const out = spliceModel(bytesOf(input), name);
    assert.deepEqual(out, bytesOf(`${head}${JSON.stringify(name)}${tail}`), `seed ${seed}`);
    assert.deepEqual(JSON.parse(decoder.decode(out)), { ...parsed, model: name }, `seed ${seed}`);
  }
});

Deno.test("spliceModel replaces the model after a leading byte order mark", () => {
  assertSplice('\uFEFF{"model":"gpt-4"}', "gpt-4o", '\uFEFF{"model":"gpt-4o"}');
});
