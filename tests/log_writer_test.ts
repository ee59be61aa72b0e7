import assert from "node:assert/strict";
import { type Config, parseConfig } from "../src/config.ts";
import { createRecordSink, type LineTarget, QueuedLineWriter, RotatingFile } from "../src/log.ts";
import { recordLineParts, serializeRecord } from "../src/log_line.ts";
import type { LogLevel } from "../src/ops.ts";
import type { RequestRecord } from "../src/record.ts";
import { startServer } from "../src/server.ts";
import {
  anthropicMessage,
  anthropicStreamChunks,
  closedPort,
  type MockReply,
  openaiCompletion,
  openaiStreamChunks,
  startMockUpstream,
} from "../tools/mock_upstream.ts";
import { provider } from "./harness.ts";

const encoder = new TextEncoder();
const OPENAI = "/openai/v1/chat/completions";
const ANTHROPIC = "/anthropic/v1/messages";
/** The sink's fixed retry delay after a failed write is one second. */
const RETRY_WAIT_MS = 1300;

// ---------------------------------------------------------------------------------------------
// Helpers

function makeRecord(id: string, fields: Partial<RequestRecord> = {}): RequestRecord {
  return {
    ts: "2025-01-01T00:00:00.000Z",
    request_id: id,
    endpoint: "openai",
    path: OPENAI,
    client: null,
    model: "gpt-test",
    upstream_model: "gpt-test",
    provider: "p",
    stream: false,
    status: 200,
    duration_ms: 1,
    ttfb_ms: 1,
    attempts: [],
    skipped: [],
    retries: 0,
    usage: null,
    request: { model: "gpt-test", messages: [] },
    response: { ok: true },
    stream_events: null,
    stream_complete: null,
    error: null,
    ...fields,
  } as RequestRecord;
}

function logging(fields: Partial<Config["logging"]> = {}): Config["logging"] {
  return {
    enabled: true,
    target: "file",
    max_bytes: 50 * 1024 * 1024,
    max_files: 10,
    max_body_bytes: 1024 * 1024,
    ...fields,
  };
}

/** The longest prefix of `text` whose UTF-8 form fits in `cap` bytes, cut between characters. */
function utf8Prefix(text: string, cap: number): string {
  let out = "";
  let bytes = 0;
  for (const char of text) {
    const size = encoder.encode(char).length;
    if (bytes + size > cap) break;
    out += char;
    bytes += size;
  }
  return out;
}

/** Every request log file in `dir` by name, as lines; each must end in a newline. */
async function readLogFiles(dir: string): Promise<Map<string, string[]>> {
  const files = new Map<string, string[]>();
  for await (const entry of Deno.readDir(dir)) {
    if (!/^requests\.jsonl(\.\d+)?$/.test(entry.name)) continue;
    const text = await Deno.readTextFile(`${dir}/${entry.name}`);
    assert.ok(text === "" || text.endsWith("\n"), `${entry.name} ends with a whole line`);
    files.set(entry.name, text === "" ? [] : text.slice(0, -1).split("\n"));
  }
  return files;
}

/** Parses every line, naming the file of any line that is not one whole JSON object. */
function parseLines(name: string, lines: string[]): RequestRecord[] {
  return lines.map((line, i) => {
    try {
      return JSON.parse(line);
    } catch {
      assert.fail(`${name} line ${i + 1} is not valid JSON: ${line.slice(0, 200)}`);
    }
  });
}

/** All request ids in the log directory, oldest file first (`.N` ... `.1`, then the live file). */
async function idsInOrder(dir: string): Promise<string[]> {
  const files = await readLogFiles(dir);
  const rank = (name: string) => name === "requests.jsonl" ? 0 : Number(name.split(".").pop());
  const names = [...files.keys()].sort((a, b) => rank(b) - rank(a));
  return names.flatMap((name) => parseLines(name, files.get(name)!).map((r) => r.request_id));
}

/** `idsInOrder` for polling while the writer may rotate a file between listing and reading. */
async function loggedIds(dir: string): Promise<string[]> {
  for (let tries = 1;; tries++) {
    try {
      return await idsInOrder(dir);
    } catch (error) {
      if (tries === 20) throw error;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

async function eventually<T>(
  probe: () => T | undefined | Promise<T | undefined>,
  what: string,
  ms = 4000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

interface OpsLine {
  level: LogLevel;
  msg: string;
}

interface LoggedRouter {
  url: string;
  ops: OpsLine[];
  stop(): Promise<void>;
}

/** The real server of `main.ts` (`startServer`) on port 0, its ops messages kept in memory. */
function startLogged(config: object, logDir: string): LoggedRouter {
  const parsed = parseConfig(JSON.stringify(config), () => undefined);
  const ops: OpsLine[] = [];
  const server = startServer(parsed, {
    host: "127.0.0.1",
    port: 0,
    logDir,
    ops: { log: (level, msg) => void ops.push({ level, msg }) },
    onListen() {},
  });
  return { url: `http://127.0.0.1:${server.port}`, ops, stop: () => server.stop() };
}

interface Exchange {
  status: number;
  id: string;
  text: string;
}

async function post(
  url: string,
  body: object | string,
  headers: Record<string, string> = {},
): Promise<Exchange> {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, id: response.headers.get("x-request-id") ?? "", text };
}

// ---------------------------------------------------------------------------------------------
// serializeRecord

Deno.test("serializeRecord writes every field with request and response and their flags last", () => {
  const record = makeRecord("r1");
  const line = serializeRecord(record, { maxBodyBytes: 100, secrets: [] });
  assert.ok(!line.includes("\n"), "one line");
  const parsed = JSON.parse(line);
  const keys = Object.keys(parsed);
  assert.deepEqual(keys.slice(-4), [
    "request",
    "request_truncated",
    "response",
    "response_truncated",
  ]);
  assert.deepEqual(new Set(keys), new Set([...Object.keys(record), ...keys.slice(-4)]));
  assert.deepEqual(parsed.request, record.request);
  assert.deepEqual(parsed.response, record.response);
  assert.equal(parsed.request_truncated, false);
  assert.equal(parsed.response_truncated, false);
  assert.equal(parsed.error, null);
  assert.equal(parsed.usage, null);
});

Deno.test("serializeRecord redacts secrets holding quotes and backslashes and stays valid JSON", () => {
  const quoted = 'sk-"quoted"-secret';
  const slashed = "sk-back\\slash\\secret";
  const both = 'sk-\\"both"\\';
  const record = makeRecord("r-secret", {
    request: `raw body with ${quoted} and ${slashed}`,
    response: { error: { message: `Invalid key ${both}`, echo: [quoted, { deep: slashed }] } },
    error: { type: "http_status", message: `Provider said ${quoted}` },
  });
  const line = serializeRecord(record, {
    maxBodyBytes: 0,
    secrets: [quoted, slashed, both],
  });
  const parsed = JSON.parse(line);
  for (const secret of [quoted, slashed, both]) {
    assert.ok(!line.includes(secret), `raw ${secret} absent`);
    assert.ok(!line.includes(JSON.stringify(secret).slice(1, -1)), `escaped ${secret} absent`);
  }
  assert.equal(parsed.request, "raw body with [REDACTED] and [REDACTED]");
  assert.deepEqual(parsed.response, {
    error: { message: "Invalid key [REDACTED]", echo: ["[REDACTED]", { deep: "[REDACTED]" }] },
  });
  assert.equal(parsed.error.message, "Provider said [REDACTED]");
  assert.equal(parsed.request_id, "r-secret");
});

Deno.test("serializeRecord redacts secrets holding a control character or a lone surrogate, which JSON spells as escapes", () => {
  const tabbed = "sk-tab\there-secret";
  const surrogate = "sk-lone-\ud800-secret";
  const record = makeRecord("r-escaped", {
    response: { error: { message: `Invalid key ${tabbed}`, echo: surrogate } },
  });
  const line = serializeRecord(record, { maxBodyBytes: 0, secrets: [tabbed, surrogate] });
  for (const secret of [tabbed, surrogate]) {
    assert.ok(!line.includes(JSON.stringify(secret).slice(1, -1)), `escaped ${secret} absent`);
  }
  assert.deepEqual(JSON.parse(line).response, {
    error: { message: "Invalid key [REDACTED]", echo: "[REDACTED]" },
  });
});

Deno.test("a body JSON cannot spell is logged as null, and the line stays valid", async () => {
  const unspellable = { toJSON: () => undefined };
  const record = makeRecord("r-unspellable", { response: unspellable });
  for (const secrets of [[], ["sk-some-secret"]]) {
    const line = serializeRecord(record, { maxBodyBytes: 0, secrets });
    assert.equal(JSON.parse(line).response, null);
  }
  const dir = await Deno.makeTempDir();
  const sink = createRecordSink(logging({ max_body_bytes: 0 }), {
    dir,
    secrets: [],
    onError: assert.fail,
  });
  sink.write(record);
  sink.write(makeRecord("after"));
  await sink.close();
  assert.deepEqual(await idsInOrder(dir), ["r-unspellable", "after"]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("serializeRecord redacts a secret used as an object key in a body", () => {
  const secret = "sk-key-as-name-0123456789";
  const record = makeRecord("r-key", { response: { headers: { [secret]: true } } });
  const line = serializeRecord(record, { maxBodyBytes: 0, secrets: [secret] });
  JSON.parse(line);
  assert.ok(!line.includes(secret), line);
});

Deno.test("serializeRecord leaves no near-whole secret when the body cap cuts through it", () => {
  const secret = "sk-live-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  // The cap falls two characters before the secret's end.
  const before = '{"echo":"';
  const cap = encoder.encode(before).length + secret.length - 2;
  const record = makeRecord("r-cut", { response: { echo: secret, more: "x".repeat(50) } });
  const line = serializeRecord(record, { maxBodyBytes: cap, secrets: [secret] });
  const parsed = JSON.parse(line);
  assert.equal(parsed.response_truncated, true);
  assert.ok(
    !line.includes(secret.slice(0, -2)),
    `the log holds all but 2 characters of the secret: ${parsed.response}`,
  );
});

Deno.test("serializeRecord cuts a body over max_body_bytes to a string at a character boundary", () => {
  const cap = 100;
  for (const char of ["é", "€", "😀"]) {
    const size = encoder.encode(char).length;
    for (let into = 0; into < size; into++) {
      // A string body: the cap counts its own UTF-8 bytes.
      const text = "a".repeat(cap - into) + char.repeat(40);
      // An object body: the cap counts its JSON text.
      const object = { t: "b".repeat(cap - 6 - into) + char.repeat(40) };
      const line = serializeRecord(makeRecord("r", { request: text, response: object }), {
        maxBodyBytes: cap,
        secrets: [],
      });
      const parsed = JSON.parse(line);
      const what = `${char} cut ${into} bytes in`;
      assert.equal(parsed.request_truncated, true, what);
      assert.equal(parsed.response_truncated, true, what);
      assert.equal(parsed.request, utf8Prefix(text, cap), what);
      assert.equal(parsed.response, utf8Prefix(JSON.stringify(object), cap), what);
      for (const logged of [parsed.request, parsed.response]) {
        assert.ok(encoder.encode(logged).length <= cap, what);
        assert.ok(!logged.includes("\uFFFD"), `${what}: no replacement character`);
        assert.ok(!/[\uD800-\uDFFF]$/.test(logged.at(-1) ?? ""), `${what}: no lone surrogate`);
      }
    }
  }
});

Deno.test("serializeRecord keeps a body of exactly max_body_bytes whole and 0 means no cap", () => {
  const exact = "€".repeat(33) + "a"; // 100 bytes
  const atCap = JSON.parse(
    serializeRecord(makeRecord("r", { request: exact }), { maxBodyBytes: 100, secrets: [] }),
  );
  assert.equal(atCap.request, exact);
  assert.equal(atCap.request_truncated, false);
  const big = { messages: [{ content: "z".repeat(5000) }] };
  const uncapped = JSON.parse(
    serializeRecord(makeRecord("r", { request: big, response: big }), {
      maxBodyBytes: 0,
      secrets: [],
    }),
  );
  assert.deepEqual(uncapped.request, big);
  assert.deepEqual(uncapped.response, big);
  assert.equal(uncapped.request_truncated, false);
  assert.equal(uncapped.response_truncated, false);
});

// ---------------------------------------------------------------------------------------------
// RotatingFile

Deno.test("RotatingFile shifts rotated files up from .1 and deletes the one beyond max_files", async () => {
  const dir = await Deno.makeTempDir();
  const file = new RotatingFile(dir, { maxBytes: 16, maxFiles: 2 });
  const line = (n: number) => `{"n":${String(n).padStart(2, "0")}}\n`; // 9 bytes
  // Each file takes one 9-byte line: a second would pass 16 bytes.
  for (let n = 1; n <= 5; n++) await file.append(encoder.encode(line(n)));
  assert.deepEqual(
    Object.fromEntries(await readLogFiles(dir)),
    {
      "requests.jsonl": [line(5).trim()],
      "requests.jsonl.1": [line(4).trim()],
      "requests.jsonl.2": [line(3).trim()],
    },
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("RotatingFile fills a file up to max_bytes before rotating", async () => {
  const dir = await Deno.makeTempDir();
  const file = new RotatingFile(dir, { maxBytes: 16, maxFiles: 5 });
  for (const text of ["1234567\n", "abcdefg\n", "ABCDEFG\n"]) {
    await file.append(encoder.encode(text));
  }
  assert.equal(await Deno.readTextFile(`${dir}/requests.jsonl.1`), "1234567\nabcdefg\n");
  assert.equal(await Deno.readTextFile(`${dir}/requests.jsonl`), "ABCDEFG\n");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("RotatingFile counts the size of a log left by an earlier run", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/requests.jsonl`, "earlier-run-line\n"); // 17 bytes
  const file = new RotatingFile(dir, { maxBytes: 20, maxFiles: 3 });
  await file.append(encoder.encode("new\n"));
  assert.equal(await Deno.readTextFile(`${dir}/requests.jsonl.1`), "earlier-run-line\n");
  assert.equal(await Deno.readTextFile(`${dir}/requests.jsonl`), "new\n");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("RotatingFile cuts a batch only between lines, and keeps an overlong line whole", async () => {
  const dir = await Deno.makeTempDir();
  const file = new RotatingFile(dir, { maxBytes: 12, maxFiles: 5 });
  await file.append(encoder.encode("small\n"));
  await file.append(encoder.encode("tiny\nfirst-line-of-batch\nsecond\n"));
  await file.append(encoder.encode("after\n"));
  assert.equal(await Deno.readTextFile(`${dir}/requests.jsonl.3`), "small\ntiny\n");
  assert.equal(await Deno.readTextFile(`${dir}/requests.jsonl.2`), "first-line-of-batch\n");
  assert.equal(await Deno.readTextFile(`${dir}/requests.jsonl.1`), "second\n");
  assert.equal(await Deno.readTextFile(`${dir}/requests.jsonl`), "after\n");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("RotatingFile with max_files 0 keeps only the live file", async () => {
  const dir = await Deno.makeTempDir();
  const file = new RotatingFile(dir, { maxBytes: 4, maxFiles: 0 });
  for (const text of ["one\n", "two\n", "three\n"]) await file.append(encoder.encode(text));
  assert.deepEqual(Object.fromEntries(await readLogFiles(dir)), { "requests.jsonl": ["three"] });
  await Deno.remove(dir, { recursive: true });
});

// ---------------------------------------------------------------------------------------------
// createRecordSink

Deno.test("record sink rotates without losing, duplicating or cutting a line", async () => {
  const dir = await Deno.makeTempDir();
  const errors: string[] = [];
  const sink = createRecordSink(logging({ max_bytes: 1500, max_files: 100 }), {
    dir,
    secrets: [],
    onError: (message) => errors.push(message),
  });
  const written: string[] = [];
  for (let batch = 0; batch < 12; batch++) {
    // A burst of writes becomes one batch; close() waits until it is on disk.
    for (let i = 0; i < 1 + (batch % 4); i++) {
      const id = `b${batch}-r${i}`;
      written.push(id);
      sink.write(makeRecord(id, { response: { text: "y".repeat(200 + 37 * i) } }));
    }
    await sink.close();
  }
  const files = await readLogFiles(dir);
  assert.ok(files.size > 3, `rotated into ${files.size} files`);
  assert.deepEqual(await idsInOrder(dir), written, "every record once, in order, oldest first");
  assert.deepEqual(errors, []);
  assert.equal(sink.writeErrors, 0);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("record sink writes batches large and small, with multi-byte text, each line whole and nothing left from an earlier batch", async () => {
  const dir = await Deno.makeTempDir();
  const sink = createRecordSink(logging({ max_body_bytes: 0 }), {
    dir,
    secrets: [],
    onError: (message) => assert.fail(message),
  });
  // A large batch, then smaller ones reusing its buffer, then lines past the buffer's kept size.
  const texts = [
    ["é€😀".repeat(20_000), "x".repeat(50_000)],
    ["short"],
    ["ü".repeat(300), "😀"],
    ["y".repeat(5 * 1024 * 1024)],
    ["z"],
  ];
  const expected = texts.flat();
  // First all in one batch, then batch by batch.
  for (const [n, text] of expected.entries()) {
    sink.write(makeRecord(`all-${n}`, { response: { text } }));
  }
  await sink.close();
  for (const [b, batch] of texts.entries()) {
    for (const [n, text] of batch.entries()) {
      sink.write(makeRecord(`b${b}-${n}`, { response: { text } }));
    }
    await sink.close();
  }
  const lines = (await readLogFiles(dir)).get("requests.jsonl") ?? [];
  const records = parseLines("requests.jsonl", lines);
  assert.deepEqual(
    records.map((record) => (record.response as { text: string }).text),
    [...expected, ...expected],
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("record sink runs one drain at a time: a retry due while close() drains waits, and no batch overwrites another", async () => {
  const decoder = new TextDecoder();
  const appended: string[] = [];
  let appends = 0;
  const target: LineTarget = {
    name: "slow target",
    async append(bytes) {
      const call = ++appends;
      const before = decoder.decode(bytes);
      // The first write fails; the second, the retry close() starts, takes longer than the
      // writer's one-second retry timer.
      await new Promise((resolve) => setTimeout(resolve, call === 1 ? 10 : call === 2 ? 1500 : 0));
      if (call === 1) throw new Error("disk full");
      assert.equal(decoder.decode(bytes), before, "the bytes did not change under the write");
      appended.push(before);
    },
    reset() {},
  };
  const sink = new QueuedLineWriter(target, { maxBodyBytes: 0, secrets: [] }, {
    onError() {},
  });
  sink.write(makeRecord("r1"));
  await new Promise((resolve) => setTimeout(resolve, 25));
  const closing = sink.close();
  sink.write(makeRecord("r2"));
  await new Promise((resolve) => setTimeout(resolve, 1100));
  sink.write(makeRecord("r3"));
  await closing;
  await sink.close();
  const ids = appended.join("").split("\n").filter((line) => line !== "").map((line) =>
    JSON.parse(line).request_id
  );
  assert.deepEqual(ids.toSorted(), ["r1", "r2", "r3"], "each record once");
});

Deno.test("record sink writes a record queued while a drain is ending, without waiting for another", async () => {
  const decoder = new TextDecoder();
  const appended: string[] = [];
  const target: LineTarget = {
    name: "memory",
    append(bytes) {
      appended.push(decoder.decode(bytes));
      // Two microtasks on, the drain has found nothing more to write and has not ended yet.
      if (appended.length === 1) {
        queueMicrotask(() => queueMicrotask(() => sink.write(makeRecord("r2"))));
      }
      return Promise.resolve();
    },
    reset() {},
  };
  const sink = new QueuedLineWriter(target, { maxBodyBytes: 0, secrets: [] }, { onError() {} });
  sink.write(makeRecord("r1"));
  await new Promise((resolve) => setTimeout(resolve, 300));
  const ids = appended.join("").split("\n").filter((line) => line !== "").map((line) =>
    JSON.parse(line).request_id
  );
  assert.deepEqual(ids, ["r1", "r2"], "r2 is written by the writer itself, not by close()");
  await sink.close();
});

/** A target that fails until `recover()`, then keeps each batch's size and its records' ids. */
function fullDisk() {
  const decoder = new TextDecoder();
  const written = { sizes: [] as number[], ids: [] as string[], failing: true };
  const target: LineTarget = {
    name: "full disk",
    append(bytes) {
      if (written.failing) return Promise.reject(new Error("no space left on device"));
      written.sizes.push(bytes.length);
      for (const line of decoder.decode(bytes).split("\n")) {
        if (line !== "") written.ids.push(JSON.parse(line).request_id);
      }
      return Promise.resolve();
    },
    reset() {},
  };
  return { target, written, recover: () => void (written.failing = false) };
}

Deno.test("record sink survives a fault of its own in a drain: reported, nothing lost, no crash", async () => {
  const { target: disk, written: { ids }, recover } = fullDisk();
  // The first write fails, and so does the reset after it, which ends the failure.
  const target: LineTarget = {
    ...disk,
    reset() {
      recover();
      throw new Error("reset failed");
    },
  };
  const errors: string[] = [];
  const sink = new QueuedLineWriter(target, { maxBodyBytes: 0, secrets: [] }, {
    onError: (message) => errors.push(message),
  });
  sink.write(makeRecord("r1"));
  await new Promise((resolve) => setTimeout(resolve, RETRY_WAIT_MS));
  await sink.close();
  assert.match(errors.join("\n"), /reset failed/);
  assert.deepEqual(ids, ["r1"]);
});

Deno.test("record sink writes a backlog in batches of bounded size once the log is writable again", async () => {
  const { target, written: { sizes, ids }, recover } = fullDisk();
  const sink = new QueuedLineWriter(target, { maxBodyBytes: 0, secrets: [] }, { onError() {} });
  const body = { text: "x".repeat(1024 * 1024) };
  sink.write(makeRecord("r0", { response: body }));
  await new Promise((resolve) => setTimeout(resolve, 50));
  for (let i = 1; i < 40; i++) sink.write(makeRecord(`r${i}`, { response: body }));
  recover();
  await sink.close();
  assert.deepEqual(ids, Array.from({ length: 40 }, (_, i) => `r${i}`), "every record, in order");
  assert.ok(sizes.length >= 3, `a 40 MB backlog in several batches, got ${sizes.length}`);
  assert.ok(Math.max(...sizes) < 20 * 1024 * 1024, `batches stay bounded: ${sizes}`);
});

Deno.test("record sink holds a bounded queue while the log cannot be written: the oldest records go, counted and reported once", async () => {
  const { target, written: { ids }, recover } = fullDisk();
  const errors: string[] = [];
  const sink = new QueuedLineWriter(target, { maxBodyBytes: 0, secrets: [] }, {
    onError: (message) => errors.push(message),
  });
  // 8 Mi characters each: 20 of them are over the queue's 64 Mi.
  const body = { text: "x".repeat(8 * 1024 * 1024) };
  sink.write(makeRecord("r0", { response: body }));
  await new Promise((resolve) => setTimeout(resolve, 50));
  for (let i = 1; i < 20; i++) sink.write(makeRecord(`r${i}`, { response: body }));
  recover();
  await sink.close();
  assert.ok(sink.droppedRecords > 0, "some records were let go");
  assert.equal(ids.length + sink.droppedRecords, 20, "each record written or counted");
  assert.equal(ids[0], "r0", "the batch already taken is written on recovery");
  const kept = ids.slice(1).map((id) => Number(id.slice(1)));
  assert.deepEqual(kept, kept.toSorted((a, b) => a - b), "in order");
  assert.equal(kept.at(-1), 19, "the newest are kept");
  assert.equal(errors.filter((message) => /queue is full/.test(message)).length, 1);
});

Deno.test("RotatingFile ends a line an earlier run left unfinished before it writes its own", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/requests.jsonl`, '{"a":1}\n{"cut":"mid-wr');
  const file = new RotatingFile(dir, { maxBytes: 1024, maxFiles: 1 });
  await file.append(encoder.encode('{"b":2}\n'));
  await file.append(encoder.encode('{"c":3}\n'));
  const text = await Deno.readTextFile(`${dir}/requests.jsonl`);
  await Deno.remove(dir, { recursive: true });
  assert.equal(text, '{"a":1}\n{"cut":"mid-wr\n{"b":2}\n{"c":3}\n');
});

Deno.test("RotatingFile finishes a line a failed write began in the same file, even past max_bytes", async () => {
  const dir = await Deno.makeTempDir();
  const file = new RotatingFile(dir, { maxBytes: 16, maxFiles: 3 });
  const line = encoder.encode(`{"a":"${"x".repeat(30)}"}\n`);
  // The disk fills after the first 10 bytes of the line.
  const open = Deno.open;
  Deno.open = async (...args: Parameters<typeof Deno.open>) => {
    const real = await open(...args);
    Deno.open = open;
    let writes = 0;
    return {
      write: (bytes: Uint8Array) =>
        writes++ === 0
          ? real.write(bytes.subarray(0, 10))
          : Promise.reject(new Error("no space left on device")),
      close: () => real.close(),
    } as unknown as Deno.FsFile;
  };
  let written = 0;
  try {
    await file.append(line);
  } catch (error) {
    written = (error as { written: number }).written;
  } finally {
    Deno.open = open;
  }
  assert.equal(written, 10);
  file.reset();
  await file.append(line.subarray(written));
  await file.append(encoder.encode('{"b":1}\n'));
  const files = await readLogFiles(dir);
  await Deno.remove(dir, { recursive: true });
  const all = [...files.values()].flat();
  assert.deepEqual(all.map((text) => JSON.parse(text)).map(Object.keys), [["a"], ["b"]]);
});

Deno.test("record sink's close() tells how many records it could not write, the queued ones too", async () => {
  const target: LineTarget = {
    name: "broken",
    append: () => Promise.reject(new Error("disk full")),
    reset() {},
  };
  const errors: string[] = [];
  const sink = new QueuedLineWriter(target, { maxBodyBytes: 0, secrets: [] }, {
    onError: (message) => errors.push(message),
  });
  sink.write(makeRecord("a"));
  await new Promise((resolve) => setTimeout(resolve, 50));
  for (const id of ["b", "c", "d"]) sink.write(makeRecord(id));
  await sink.close();
  assert.equal(errors.at(-1), "4 request log records could not be written before it closed");
});

Deno.test("serializeRecord redacts a secret quoted as JSON inside a text body", () => {
  const secret = 'sk-a"bcdef';
  const text = 'data: {"error":"bad key sk-a\\"bcdef"}';
  assert.ok(text.includes(JSON.stringify(secret).slice(1, -1)), "the text holds it escaped once");
  const line = serializeRecord(makeRecord("r", { response: text }), {
    maxBodyBytes: 0,
    secrets: [secret],
  });
  assert.equal(JSON.parse(line).response, 'data: {"error":"bad key [REDACTED]"}');
});

Deno.test("serializeRecord leaves nothing of a secret that holds or overlaps another", () => {
  const cases: [secrets: string[], text: string, logged: string][] = [
    [["sk-live-abc", "sk-live-abcdefghij"], "key sk-live-abcdefghij!", "key [REDACTED]!"],
    [["sk-live-abcdefghij", "sk-live-abc"], "key sk-live-abcdefghij!", "key [REDACTED]!"],
    [["xxxxxxYYYY", "YYYYzzzzzz"], "a xxxxxxYYYYzzzzzz b", "a [REDACTED] b"],
    [["secret-one", "secret-two"], "secret-one secret-two", "[REDACTED] [REDACTED]"],
  ];
  for (const [secrets, text, logged] of cases) {
    const line = serializeRecord(makeRecord("r", { response: text }), {
      maxBodyBytes: 0,
      secrets,
    });
    assert.equal(JSON.parse(line).response, logged, line);
  }
});

Deno.test("serializeRecord keeps a body whole and valid with a secret that ends in a backslash or a quote", () => {
  for (
    const [secret, body] of [
      ["sk-abcdef\\", { key: "sk-abcdef\\", pad: "p".repeat(40) }],
      ['abcdef"', { key: "abcdef", pad: "p".repeat(40) }],
    ] as const
  ) {
    // Between a third of the cap and the cap: scrubbed before it is measured, then kept whole.
    const line = serializeRecord(makeRecord("r", { response: body }), {
      maxBodyBytes: 100,
      secrets: [secret],
    });
    const logged = JSON.parse(line);
    assert.equal(logged.response_truncated, false);
    assert.equal(logged.response.pad, body.pad, `the body is kept: ${line}`);
    assert.ok(!JSON.stringify(logged).includes(JSON.stringify(secret).slice(1, -1)));
    assert.equal(logged.response.key, body.key === secret ? "[REDACTED]" : body.key);
  }
});

Deno.test("record sink writes a line in pieces and still redacts a secret in any of them, in the head, either body, or holding a seam character", async () => {
  const dir = await Deno.makeTempDir();
  const plain = "sk-plain-secret-1234";
  const colon = "sk-colon:secret-5678";
  const sink = createRecordSink(logging(), { dir, secrets: [plain], onError: assert.fail });
  const records = [
    makeRecord("clean", { request: { model: "m", messages: [{ content: "x".repeat(300_000) }] } }),
    makeRecord("head", { error: { type: "http_status", message: `bad key ${plain}` } }),
    makeRecord("request", { request: { model: "m", key: plain } }),
    makeRecord("response", { response: { echo: `${colon} and ${plain}` } }),
  ];
  // The colon secret is the last request's own; the others are searched piece by piece.
  for (const record of records) sink.write(record, record === records[3] ? [colon] : []);
  await sink.close();
  const lines = (await readLogFiles(dir)).get("requests.jsonl") ?? [];
  const text = lines.join("\n");
  assert.ok(!text.includes(plain) && !text.includes(colon), "no secret in the log");
  const written = parseLines("requests.jsonl", lines);
  assert.deepEqual(written.map((record) => record.request_id), [
    "clean",
    "head",
    "request",
    "response",
  ]);
  assert.equal(
    JSON.stringify(written[0]),
    JSON.stringify(JSON.parse(serializeRecord(records[0], {
      maxBodyBytes: 1024 * 1024,
      secrets: [],
    }))),
  );
  assert.equal(written[1].error?.message, "bad key [REDACTED]");
  assert.deepEqual(written[2].request, { model: "m", key: "[REDACTED]" });
  assert.deepEqual(written[3].response, { echo: "[REDACTED] and [REDACTED]" });
  // Only a line with no secret in it, and no secret holding a seam's `,` or `:`, stays in pieces.
  const pieces = (record: RequestRecord, secrets: string[]) =>
    recordLineParts(record, { maxBodyBytes: 1024 * 1024, secrets }).length;
  assert.equal(pieces(records[0], [plain]), 6);
  assert.equal(pieces(records[1], [plain]), 1);
  assert.equal(pieces(records[0], [plain, colon]), 1);
  assert.equal(pieces(records[0], ["sk-comma,secret"]), 1);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("record sink keeps max_files rotated files and deletes older ones", async () => {
  const dir = await Deno.makeTempDir();
  const sink = createRecordSink(logging({ max_bytes: 1, max_files: 3 }), {
    dir,
    secrets: [],
    onError: (message) => assert.fail(message),
  });
  for (let n = 1; n <= 7; n++) {
    sink.write(makeRecord(`r${n}`));
    await sink.close();
  }
  const files = await readLogFiles(dir);
  const ids = (name: string) =>
    parseLines(name, files.get(name) ?? []).map((record) => record.request_id);
  assert.deepEqual([...files.keys()].sort(), [
    "requests.jsonl",
    "requests.jsonl.1",
    "requests.jsonl.2",
    "requests.jsonl.3",
  ]);
  assert.deepEqual(ids("requests.jsonl"), ["r7"]);
  assert.deepEqual(ids("requests.jsonl.1"), ["r6"], ".1 is the newest rotated file");
  assert.deepEqual(ids("requests.jsonl.2"), ["r5"]);
  assert.deepEqual(ids("requests.jsonl.3"), ["r4"]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("record sink reports a blocked log path once and writes the queue once it is fixed", async () => {
  const root = await Deno.makeTempDir();
  const dir = `${root}/logs`;
  const errors: string[] = [];
  const recoveries: string[] = [];
  const sink = createRecordSink(logging(), {
    dir,
    secrets: [],
    onError: (message) => errors.push(message),
    onRecover: (message) => recoveries.push(message),
  });
  sink.write(makeRecord("before"));
  await sink.close();
  assert.deepEqual(await idsInOrder(dir), ["before"]);

  // A regular file where the directory was: mkdir fails even as root.
  await Deno.remove(dir, { recursive: true });
  await Deno.writeTextFile(dir, "not a directory");
  sink.write(makeRecord("q1"));
  sink.write(makeRecord("q2"));
  await eventually(() => errors.length > 0 || undefined, "the first write error");
  await new Promise((resolve) => setTimeout(resolve, 2 * RETRY_WAIT_MS));
  sink.write(makeRecord("q3"));
  assert.equal(errors.length, 1, `reported once: ${JSON.stringify(errors)}`);
  assert.match(errors[0], /Cannot write request log/);
  assert.ok(errors[0].includes(dir), "names the path");
  assert.ok(sink.writeErrors >= 2, `retried and counted: ${sink.writeErrors}`);

  await Deno.remove(dir);
  await eventually(
    async () => (await exists(`${dir}/requests.jsonl`)) && (await loggedIds(dir)).length === 3,
    "the queued records after the path is fixed",
  );
  await sink.close();
  assert.deepEqual(await idsInOrder(dir), ["q1", "q2", "q3"], "none lost or duplicated");
  assert.equal(errors.length, 1, "the recovery is no error");
  assert.equal(recoveries.length, 1);
  assert.match(recoveries[0], /writable again/);
  await Deno.remove(root, { recursive: true });
});

Deno.test("record sink recreates a removed log directory and loses nothing", async () => {
  const root = await Deno.makeTempDir();
  const dir = `${root}/logs`;
  const errors: string[] = [];
  const sink = createRecordSink(logging(), {
    dir,
    secrets: [],
    onError: (message) => errors.push(message),
  });
  sink.write(makeRecord("r1"));
  await sink.close();
  await Deno.remove(dir, { recursive: true });
  sink.write(makeRecord("r2"));
  sink.write(makeRecord("r3"));
  await eventually(
    async () => (await exists(`${dir}/requests.jsonl`)) || undefined,
    "the recreated log",
  );
  await sink.close();
  assert.deepEqual(await idsInOrder(dir), ["r2", "r3"]);
  assert.ok(errors.filter((m) => /Cannot write/.test(m)).length <= 1, JSON.stringify(errors));
  await Deno.remove(root, { recursive: true });
});

Deno.test("record sink stops retrying once closed with an unwritable log path", async () => {
  const root = await Deno.makeTempDir();
  const dir = `${root}/logs`;
  await Deno.writeTextFile(dir, "not a directory");
  const errors: string[] = [];
  const sink = createRecordSink(logging(), {
    dir,
    secrets: [],
    onError: (message) => errors.push(message),
  });
  sink.write(makeRecord("lost"));
  await sink.close();
  assert.equal(errors.length, 2, errors.join("\n"));
  assert.match(errors[0], /Cannot write request log/);
  // What close() could not write is said, not dropped in silence.
  assert.match(errors[1], /^1 request log records could not be written before it closed$/);
  // Fix the path after close: a sink that still has a retry timer would now write.
  await Deno.remove(dir);
  await new Promise((resolve) => setTimeout(resolve, RETRY_WAIT_MS));
  const wroteAfterClose = await exists(dir);
  await Deno.remove(root, { recursive: true });
  assert.equal(wroteAfterClose, false, "no retry timer outlives close()");
});

// ---------------------------------------------------------------------------------------------
// Through the router (startServer)

Deno.test("router log rotates by size: .1 newest, older shifted up, beyond max_files deleted", async () => {
  const mock = startMockUpstream();
  const dir = await Deno.makeTempDir();
  const router = startLogged({
    providers: [provider("only", "openai", mock.url)],
    logging: { max_bytes: 1, max_files: 3 },
  }, dir);
  const ids: string[] = [];
  for (let n = 0; n < 6; n++) {
    const exchange = await post(`${router.url}${OPENAI}`, { model: "gpt-test", messages: [] });
    assert.equal(exchange.status, 200);
    ids.push(exchange.id);
    // Wait for each record so each lands in a batch of its own.
    await eventually(
      async () => (await loggedIds(dir)).includes(exchange.id) || undefined,
      `record ${n}`,
    );
  }
  await router.stop();
  const files = await readLogFiles(dir);
  const idsOf = (name: string) =>
    parseLines(name, files.get(name) ?? []).map((record) => record.request_id);
  assert.deepEqual([...files.keys()].sort(), [
    "requests.jsonl",
    "requests.jsonl.1",
    "requests.jsonl.2",
    "requests.jsonl.3",
  ]);
  assert.deepEqual(idsOf("requests.jsonl"), [ids[5]]);
  assert.deepEqual(idsOf("requests.jsonl.1"), [ids[4]]);
  assert.deepEqual(idsOf("requests.jsonl.2"), [ids[3]]);
  assert.deepEqual(idsOf("requests.jsonl.3"), [ids[2]]);
  await mock.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("router log rotation under 20 concurrent clients loses, duplicates and splits no line", async () => {
  const mock = startMockUpstream();
  const dir = await Deno.makeTempDir();
  const router = startLogged({
    providers: [provider("oa", "openai", mock.url), provider("an", "anthropic", mock.url)],
    logging: { max_bytes: 2048, max_files: 1000 },
  }, dir);
  const perClient = 5;
  const client = async (c: number): Promise<string[]> => {
    const ids: string[] = [];
    for (let i = 0; i < perClient; i++) {
      const kind = (c + i) % 3;
      const exchange = kind === 2
        ? await post(`${router.url}${ANTHROPIC}`, {
          model: "claude-test",
          max_tokens: 16,
          messages: [{ role: "user", content: `client ${c} request ${i}` }],
        })
        : await post(`${router.url}${OPENAI}`, {
          model: "gpt-test",
          stream: kind === 1,
          messages: [{ role: "user", content: `client ${c} request ${i}` }],
        });
      assert.equal(exchange.status, 200);
      ids.push(exchange.id);
    }
    return ids;
  };
  const sent = (await Promise.all(Array.from({ length: 20 }, (_, c) => client(c)))).flat();
  await router.stop();
  const files = await readLogFiles(dir);
  assert.ok(files.size >= 2, `rotated into ${files.size} files`);
  const records = [...files].flatMap(([name, lines]) => parseLines(name, lines));
  assert.equal(records.length, 20 * perClient, "one line per request across all files");
  assert.deepEqual(
    records.map((record) => record.request_id).sort(),
    [...sent].sort(),
    "every request exactly once",
  );
  assert.ok(records.every((record) => record.status === 200));
  await mock.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("router keeps answering through a log write error, reports it once, counts it, resumes", async () => {
  const mock = startMockUpstream();
  const root = await Deno.makeTempDir();
  const dir = `${root}/logs`;
  const router = startLogged({ providers: [provider("only", "openai", mock.url)] }, dir);
  const request = { model: "gpt-test", messages: [] };
  const first = await post(`${router.url}${OPENAI}`, request);
  await eventually(
    async () => (await exists(`${dir}/requests.jsonl`)) || undefined,
    "the first record",
  );
  await Deno.remove(dir, { recursive: true });
  await Deno.writeTextFile(dir, "a file where the log directory was");

  const during: string[] = [];
  for (let i = 0; i < 3; i++) {
    const exchange = await post(`${router.url}${OPENAI}`, request);
    assert.equal(exchange.status, 200, "the request succeeds");
    assert.equal(JSON.parse(exchange.text).object, "chat.completion");
    during.push(exchange.id);
  }
  const errorLines = () => router.ops.filter((line) => /Cannot write/.test(line.msg));
  await eventually(() => errorLines().length > 0 || undefined, "the ops error line");
  await new Promise((resolve) => setTimeout(resolve, 2 * RETRY_WAIT_MS));
  const stream = await post(`${router.url}${OPENAI}`, { ...request, stream: true });
  assert.equal(stream.status, 200);
  during.push(stream.id);
  assert.equal(errorLines().length, 1, `reported once: ${JSON.stringify(router.ops)}`);
  assert.equal(errorLines()[0].level, "error");

  const stats = await (await fetch(`${router.url}/stats`)).json();
  assert.ok(stats.log_write_errors > 0, `log_write_errors is ${stats.log_write_errors}`);
  const metrics = await (await fetch(`${router.url}/metrics`)).text();
  assert.ok(metrics.length > 0);

  await Deno.remove(dir);
  await eventually(
    async () =>
      (await exists(`${dir}/requests.jsonl`)) &&
        (await loggedIds(dir)).length === during.length || undefined,
    "the queued records once the path is fixed",
  );
  await router.stop();
  const logged = await idsInOrder(dir);
  assert.deepEqual(logged, during, "queued records written once each, in order");
  assert.ok(!logged.includes(first.id));
  const recovery = router.ops.find((line) => /writable again/.test(line.msg));
  assert.ok(recovery !== undefined, "the recovery is reported");
  assert.notEqual(recovery.level, "error", "a recovery is not a second error");
  await mock.close();
  await Deno.remove(root, { recursive: true });
});

// ---------------------------------------------------------------------------------------------
// Body cap through the router

Deno.test("router keeps redacting a provider key that a config reload dropped", async () => {
  const oldKey = "sk-old-rotated-key-1234";
  const newKey = "sk-new-fresh-key-5678";
  // A provider's error that quotes the key it was sent, as OpenAI's 401 does.
  const mock = startMockUpstream(() => ({
    status: 401,
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ error: { message: `Incorrect API key provided: ${oldKey}` } }),
  }));
  const dir = await Deno.makeTempDir();
  const config = (key: string) =>
    parseConfig(
      JSON.stringify({ providers: [provider("only", "openai", mock.url, { api_key: key })] }),
      () => undefined,
    );
  const server = startServer(config(oldKey), {
    host: "127.0.0.1",
    port: 0,
    logDir: dir,
    ops: { log() {} },
    onListen() {},
  });
  server.reload(config(newKey));
  const answer = await post(`http://127.0.0.1:${server.port}${OPENAI}`, {
    model: "gpt-test",
    messages: [{ role: "user", content: "hi" }],
  });
  await server.stop();
  await mock.close();
  const files = await readLogFiles(dir);
  await Deno.remove(dir, { recursive: true });
  const lines = files.get("requests.jsonl") ?? [];
  assert.equal(answer.status, 401);
  assert.equal(lines.length, 1);
  assert.ok(!lines[0].includes(oldKey), `the dropped key is still redacted: ${lines[0]}`);
  assert.match(lines[0], /Incorrect API key provided: \[REDACTED\]/);
});

Deno.test("router logs bodies over max_body_bytes cut and flagged, and the client gets them whole", async () => {
  const longText = "The quick brown fox jumps over the lazy dog. ".repeat(12);
  const completion = JSON.stringify(openaiCompletion("gpt-test", longText));
  const chunks = openaiStreamChunks("gpt-test", { text: longText, events: 6 });
  const mock = startMockUpstream((req) => {
    const json = req.json as { stream?: boolean; messages?: { content: string }[] };
    if (json.messages?.[0]?.content === "small") {
      return { headers: { "content-type": "application/json" }, body: '{"ok":true}' };
    }
    if (json.stream) return { chunks };
    return { headers: { "content-type": "application/json" }, body: completion };
  });
  const big = JSON.stringify({
    model: "gpt-test",
    messages: [{ role: "user", content: "question ".repeat(40) }],
  });
  const bigStream = JSON.stringify({ ...JSON.parse(big), stream: true });
  const small = { model: "gpt-test", messages: [{ role: "user", content: "small" }] };

  const run = async (cap: number) => {
    const dir = await Deno.makeTempDir();
    const router = startLogged({
      providers: [provider("only", "openai", mock.url)],
      logging: { max_body_bytes: cap },
    }, dir);
    const plain = await post(`${router.url}${OPENAI}`, big);
    const streamed = await post(`${router.url}${OPENAI}`, bigStream);
    const tiny = await post(`${router.url}${OPENAI}`, small);
    await router.stop();
    const files = await readLogFiles(dir);
    const records = parseLines("requests.jsonl", files.get("requests.jsonl") ?? []);
    const byId = (id: string) => records.find((record) => record.request_id === id)!;
    await Deno.remove(dir, { recursive: true });
    return {
      plain,
      streamed,
      tiny,
      plainRecord: byId(plain.id) as unknown as Record<string, unknown>,
      streamRecord: byId(streamed.id) as unknown as Record<string, unknown>,
      tinyRecord: byId(tiny.id) as unknown as Record<string, unknown>,
    };
  };

  const capped = await run(100);
  assert.equal(capped.plain.text, completion, "client gets the whole body byte-exact");
  assert.equal(capped.streamed.text, chunks.join(""), "client gets the whole stream byte-exact");
  for (const record of [capped.plainRecord, capped.streamRecord]) {
    assert.equal(record.request_truncated, true);
    assert.equal(record.response_truncated, true);
    assert.equal(typeof record.request, "string");
    assert.equal(typeof record.response, "string");
    assert.equal(encoder.encode(record.request as string).length, 100);
    assert.equal(encoder.encode(record.response as string).length, 100);
  }
  assert.equal(capped.plainRecord.request, utf8Prefix(big, 100));
  assert.equal(capped.plainRecord.response, utf8Prefix(completion, 100));
  assert.equal(capped.streamRecord.request, utf8Prefix(bigStream, 100));
  assert.deepEqual(capped.tinyRecord.request, small);
  assert.deepEqual(capped.tinyRecord.response, { ok: true });
  assert.equal(capped.tinyRecord.request_truncated, false);
  assert.equal(capped.tinyRecord.response_truncated, false);

  const uncapped = await run(0);
  assert.deepEqual(uncapped.plainRecord.request, JSON.parse(big));
  assert.deepEqual(uncapped.plainRecord.response, JSON.parse(completion));
  assert.equal(uncapped.plainRecord.request_truncated, false);
  assert.equal(uncapped.plainRecord.response_truncated, false);
  const assembled = uncapped.streamRecord.response as {
    choices: { message: { content: string } }[];
  };
  assert.equal(assembled.choices[0].message.content, longText, "0 logs the whole reassembly");
  assert.equal(uncapped.streamRecord.response_truncated, false);
  assert.equal(
    capped.streamRecord.response,
    utf8Prefix(JSON.stringify(assembled), 100),
    "the capped stream log is the start of the reassembled object",
  );
  await mock.close();
});

Deno.test("router cuts a logged body inside a multi-byte character without breaking the line", async () => {
  const mock = startMockUpstream();
  const dir = await Deno.makeTempDir();
  const router = startLogged({
    providers: [provider("only", "anthropic", mock.url)],
    logging: { max_body_bytes: 100 },
  }, dir);
  const head = '{"model":"claude-test","max_tokens":8,"messages":[{"role":"user","content":"';
  // Pad so that byte 100 falls two bytes into a 4-byte emoji.
  const pad = "a".repeat((100 - encoder.encode(head).length - 2 + 400) % 4);
  const body = `${head}${pad}${"😀".repeat(30)}"}]}`;
  assert.equal((100 - encoder.encode(head + pad).length - 2) % 4, 0);
  const exchange = await post(`${router.url}${ANTHROPIC}`, body);
  assert.equal(exchange.status, 200);
  assert.deepEqual(JSON.parse(exchange.text).type, "message");
  await router.stop();
  const [record] = parseLines("requests.jsonl", (await readLogFiles(dir)).get("requests.jsonl")!);
  assert.equal(record.request, utf8Prefix(body, 100));
  assert.ok(!(record.request as string).includes("\uFFFD"));
  assert.equal((record as unknown as Record<string, unknown>).request_truncated, true);
  await mock.close();
  await Deno.remove(dir, { recursive: true });
});

// ---------------------------------------------------------------------------------------------
// Secrets

Deno.test("no provider or client secret reaches the log directory on any error path", async () => {
  const keys = {
    err: "sk-err-7f3a9c1e5b2d4f6a8c0e",
    ok: 'sk-ok-"q\\uote-2b4d6f8a0c1e',
    plain401: "sk-401-plaintext-echo-9e8d7c6b",
    down1: "sk-down1-1a2b3c4d5e6f",
    down2: "sk-down2-6f5e4d3c2b1a",
    hang: "sk-hang-0f9e8d7c6b5a",
    stream: "sk-stream-4e5f6a7b8c9d",
    antErr: "sk-ant-err-3c4d5e6f7a8b",
    antOk: "sk-ant-ok-8b7a6f5e4d3c",
  };
  const clientBearer = "client-secret-bearer-5a6b7c8d";
  const clientKey = "client-secret-xkey-8d9e0f1a";
  const mock = startMockUpstream((req): MockReply => {
    const key = req.headers.get("authorization")?.replace(/^Bearer /, "") ??
      req.headers.get("x-api-key") ?? "";
    const json = (req.json ?? {}) as { model?: string; stream?: boolean };
    const model = json.model ?? "m";
    const echo = { received: Object.fromEntries(req.headers), key };
    switch (key) {
      case keys.err:
        return { status: 500, body: { error: { message: `Bad key ${key}`, echo } } };
      case keys.ok:
        if (json.stream) {
          return { chunks: openaiStreamChunks(model, { text: `your key is ${key}`, events: 4 }) };
        }
        return { body: { ...openaiCompletion(model, `your key is ${key}`), echo } };
      case keys.plain401:
        return {
          status: 401,
          headers: { "content-type": "text/plain" },
          body: `Incorrect API key provided: ${key}`,
        };
      case keys.hang:
        return { hang: "headers" };
      case keys.stream:
        return {
          chunks: openaiStreamChunks(model, { text: `key ${key}`, events: 3 }).slice(0, 3),
          reset: true,
        };
      case keys.antErr:
        return {
          status: 529,
          body: { type: "error", error: { type: "overloaded_error", message: `For ${key}` } },
        };
      case keys.antOk:
        if (json.stream) return { chunks: anthropicStreamChunks(model, { text: `key ${key}` }) };
        return { body: { ...anthropicMessage(model, `key ${key}`), echo } };
    }
    return { status: 418, body: { unexpected: key } };
  });
  const down = `http://127.0.0.1:${closedPort()}`;
  const dir = await Deno.makeTempDir();
  const router = startLogged({
    providers: [
      provider("p-err", "openai", mock.url, { api_key: keys.err, models: ["echo"] }),
      provider("p-ok", "openai", mock.url, { api_key: keys.ok, models: ["echo"], priority: 2 }),
      provider("p-401", "openai", mock.url, { api_key: keys.plain401, models: ["only-401"] }),
      provider("p-down1", "openai", down, { api_key: keys.down1, models: ["all-fail"] }),
      provider("p-down2", "openai", down, { api_key: keys.down2, models: ["all-fail"] }),
      provider("p-hang", "openai", mock.url, {
        api_key: keys.hang,
        models: ["slow"],
        timeout_ms: 200,
      }),
      provider("p-stream", "openai", mock.url, { api_key: keys.stream, models: ["cut"] }),
      provider("a-err", "anthropic", mock.url, { api_key: keys.antErr, models: ["claude-echo"] }),
      provider("a-ok", "anthropic", mock.url, {
        api_key: keys.antOk,
        models: ["claude-echo"],
        priority: 2,
      }),
    ],
  }, dir);
  const headers = { authorization: `Bearer ${clientBearer}`, "x-api-key": clientKey };
  const openai = (body: object | string) => post(`${router.url}${OPENAI}`, body, headers);
  const anthropic = (body: object) => post(`${router.url}${ANTHROPIC}`, body, headers);
  const messages = [{ role: "user", content: "hi" }];
  const results = [
    await openai({ model: "echo", messages }),
    await openai({ model: "echo", stream: true, messages }),
    await openai({ model: "only-401", messages }),
    await openai({ model: "all-fail", messages }),
    await openai({ model: "slow", messages }),
    await openai("{this is not json"),
    await openai({ model: 42, messages }),
    await openai({ model: "cut", stream: true, messages }),
    await anthropic({ model: "claude-echo", max_tokens: 8, stream: true, messages }),
    await anthropic({ model: "claude-echo", max_tokens: 8, messages }),
    await openai({
      model: "echo",
      messages: [{ role: "user", content: `my key ${clientBearer}` }],
    }),
  ];
  assert.deepEqual(results.map((r) => r.status), [
    200,
    200,
    401,
    502,
    504,
    400,
    400,
    200,
    200,
    200,
    200,
  ]);
  assert.ok(results[0].text.includes("your key is"), "the client itself gets the echo");
  await router.stop();

  const files = await readLogFiles(dir);
  const records = [...files].flatMap(([name, lines]) => parseLines(name, lines));
  assert.equal(records.length, results.length);
  const errorTypes = new Set(records.map((record) => record.error?.type));
  for (const type of ["http_status", "upstream_unavailable", "upstream_timeout", "invalid_body"]) {
    assert.ok(errorTypes.has(type), `the run covered ${type}: ${[...errorTypes]}`);
  }
  assert.ok(errorTypes.has("stream_interrupted"), `stream cut covered: ${[...errorTypes]}`);
  for await (const entry of Deno.readDir(dir)) {
    const text = await Deno.readTextFile(`${dir}/${entry.name}`);
    for (const secret of [...Object.values(keys), clientBearer, clientKey]) {
      assert.ok(!text.includes(secret), `${secret} found in ${entry.name}`);
      const escaped = JSON.stringify(secret).slice(1, -1);
      assert.ok(!text.includes(escaped), `${escaped} found in ${entry.name}`);
    }
  }
  assert.ok(
    records.some((record) => JSON.stringify(record).includes("[REDACTED]")),
    "the echoes were there to redact",
  );
  await mock.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("router logs compact bodies as the exact text sent, and pretty ones on one line", async () => {
  // 1.0 and the key order survive only if the log writes the text the client and provider sent.
  const answer = '{"id":"chatcmpl-x","object":"chat.completion","model":"gpt-test",' +
    '"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1.0,"total_tokens":4}}';
  const mock = startMockUpstream(() => ({
    headers: { "content-type": "application/json" },
    body: answer,
  }));
  const compact =
    '{"temperature":1.0,"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}';
  const pretty = JSON.stringify(JSON.parse(compact), null, 2);
  const dir = await Deno.makeTempDir();
  const router = startLogged({ providers: [provider("only", "openai", mock.url)] }, dir);
  const first = await post(`${router.url}${OPENAI}`, compact);
  const second = await post(`${router.url}${OPENAI}`, pretty);
  await router.stop();
  await mock.close();
  const lines = (await readLogFiles(dir)).get("requests.jsonl") ?? [];
  await Deno.remove(dir, { recursive: true });
  assert.equal(lines.length, 2, "one line per request");
  const [compactLine, prettyLine] = [first.id, second.id].map((id) =>
    lines.find((line) => line.includes(id))!
  );
  assert.ok(compactLine.includes(`"request":${compact},`), compactLine);
  assert.ok(compactLine.includes(`"response":${answer},`), compactLine);
  assert.deepEqual(JSON.parse(prettyLine).request, JSON.parse(compact));
  assert.equal((JSON.parse(compactLine) as RequestRecord).usage?.total_tokens, 4);
});
