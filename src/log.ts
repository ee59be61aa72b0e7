import type { Config } from "./config.ts";
import type { RequestRecord } from "./record.ts";

/** Where finished request records go. `write` never waits; `close` drains what is queued. */
export interface RecordSink {
  /** `secrets` are this request's own (the client's credentials), redacted with the global ones. */
  write(record: RequestRecord, secrets?: readonly string[]): void;
  close(): Promise<void>;
  /** Batches that could not be written, for the statistics. */
  readonly writeErrors: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const REDACTED = "[REDACTED]";
const RETRY_MS = 1000;
/** Shorter "secrets" (test keys like "k") would scrub ordinary words out of every line. */
const MIN_SECRET_LENGTH = 6;

/** A body for the log: its JSON text, cut to `cap` bytes (as a string) when larger. */
function bodyJson(value: unknown, cap: number): { json: string; truncated: boolean } {
  const text = typeof value === "string" ? value : JSON.stringify(value ?? null);
  // A UTF-8 byte is at most 3 per UTF-16 unit, so short texts need no encoding to measure.
  if (cap === 0 || text.length * 3 <= cap) {
    return { json: typeof value === "string" ? JSON.stringify(value) : text, truncated: false };
  }
  const bytes = encoder.encode(text);
  if (bytes.length <= cap) {
    return { json: typeof value === "string" ? JSON.stringify(value) : text, truncated: false };
  }
  const cut = decoder.decode(bytes.subarray(0, cap)).replace(/\uFFFD$/, "");
  return { json: JSON.stringify(cut), truncated: true };
}

/**
 * Turns a record into one JSON line: bodies over `maxBodyBytes` are cut, the large `request`
 * and `response` go last for readability, and no secret survives. A secret is looked for with
 * one native search per secret; only a line that contains one is serialized again with every
 * string value scrubbed, which keeps the line valid JSON whatever the secret looks like.
 */
export function serializeRecord(
  record: RequestRecord,
  options: { maxBodyBytes: number; secrets: readonly string[] },
): string {
  const { request, response, ...rest } = record;
  const req = bodyJson(request, options.maxBodyBytes);
  const res = bodyJson(response, options.maxBodyBytes);
  const head = JSON.stringify(rest);
  const line = `${head.slice(0, -1)},"request":${req.json},"request_truncated":${req.truncated}` +
    `,"response":${res.json},"response_truncated":${res.truncated}}`;
  const found = options.secrets.filter((secret) =>
    secret.length >= MIN_SECRET_LENGTH &&
    (line.includes(secret) || line.includes(JSON.stringify(secret).slice(1, -1)))
  );
  if (found.length === 0) return line;
  return JSON.stringify(JSON.parse(line), (_key, value) => {
    if (typeof value !== "string") return value;
    return found.reduce((text, secret) => text.replaceAll(secret, REDACTED), value);
  });
}

/** Where batches of lines end up. */
interface LineTarget {
  readonly name: string;
  append(bytes: Uint8Array): Promise<void>;
  /** Forgets cached state after a failure, so the next try starts afresh. */
  reset(): void;
}

/**
 * Records queue in memory and one writer drains them in batches, so no response ever waits for
 * the disk. Serialization happens here too, off the response path. A failed batch stays queued
 * and is retried; the failure is reported once, and again when writing works again.
 */
class QueuedLineWriter implements RecordSink {
  writeErrors = 0;
  #queue: { record: RequestRecord; secrets: readonly string[] }[] = [];
  #failed: Uint8Array | null = null;
  #draining: Promise<void> | null = null;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #failing = false;

  constructor(
    private readonly target: LineTarget,
    private readonly options: { maxBodyBytes: number; secrets: readonly string[] },
    private readonly onError: (message: string) => void,
  ) {}

  write(record: RequestRecord, secrets: readonly string[] = []): void {
    this.#queue.push({ record, secrets });
    if (this.#draining === null && this.#retryTimer === undefined) this.#draining = this.#drain();
  }

  async close(): Promise<void> {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    await this.#draining;
    if (this.#queue.length > 0 || this.#failed !== null) await this.#drain();
  }

  async #drain(): Promise<void> {
    try {
      while (this.#failed !== null || this.#queue.length > 0) {
        const bytes = this.#failed ?? this.#serialize();
        this.#failed = null;
        try {
          await this.target.append(bytes);
        } catch (error) {
          this.#failed = bytes;
          this.#fail(error);
          return;
        }
        if (this.#failing) this.onError(`Request log is writable again: ${this.target.name}`);
        this.#failing = false;
      }
    } finally {
      this.#draining = null;
    }
  }

  #serialize(): Uint8Array {
    const batch = this.#queue;
    this.#queue = [];
    let text = "";
    for (const { record, secrets } of batch) {
      const all = secrets.length === 0
        ? this.options.secrets
        : [...this.options.secrets, ...secrets];
      text += serializeRecord(record, { maxBodyBytes: this.options.maxBodyBytes, secrets: all }) +
        "\n";
    }
    return encoder.encode(text);
  }

  #fail(error: unknown): void {
    this.writeErrors++;
    this.target.reset();
    if (!this.#failing) this.onError(`Cannot write request log ${this.target.name}: ${error}`);
    this.#failing = true;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.#draining = this.#drain();
    }, RETRY_MS);
  }
}

/**
 * `<dir>/requests.jsonl`, rotated by size as a classic rotating file handler does: past
 * `maxBytes` it becomes `requests.jsonl.1` (the newest rotated file), older ones shift up, and the
 * one beyond `maxFiles` is deleted. A batch is never split across files, so no line is cut. The
 * file is opened per batch, so a removed directory or an outside rotation is noticed.
 */
export class RotatingFile implements LineTarget {
  readonly name: string;
  #size: number | null = null;

  constructor(
    private readonly dir: string,
    private readonly rotation: { maxBytes: number; maxFiles: number },
  ) {
    this.name = `${dir}/requests.jsonl`;
  }

  async append(bytes: Uint8Array): Promise<void> {
    if (this.#size === null) {
      await Deno.mkdir(this.dir, { recursive: true });
      this.#size = await Deno.stat(this.name).then((info) => info.size, () => 0);
    }
    if (this.#size > 0 && this.#size + bytes.length > this.rotation.maxBytes) await this.#rotate();
    await Deno.writeFile(this.name, bytes, { append: true, create: true });
    this.#size += bytes.length;
  }

  reset(): void {
    this.#size = null;
  }

  async #rotate(): Promise<void> {
    const { maxFiles } = this.rotation;
    await Deno.remove(`${this.name}.${maxFiles}`).catch(() => {});
    for (let n = maxFiles - 1; n >= 1; n--) {
      await Deno.rename(`${this.name}.${n}`, `${this.name}.${n + 1}`).catch(() => {});
    }
    if (maxFiles >= 1) await Deno.rename(this.name, `${this.name}.1`);
    else await Deno.remove(this.name);
    this.#size = 0;
  }
}

const stdoutTarget: LineTarget = {
  name: "stdout",
  async append(bytes) {
    for (let at = 0; at < bytes.length;) at += await Deno.stdout.write(bytes.subarray(at));
  },
  reset() {},
};

const disabledSink: RecordSink = {
  write() {},
  close: () => Promise.resolve(),
  writeErrors: 0,
};

/** The request log the config asks for: a rotating file, stdout, or nothing. */
export function createRecordSink(
  logging: Config["logging"],
  options: {
    dir: string;
    /** The config's secrets, read at every batch: the owner may update the array on reload. */
    secrets: readonly string[];
    onError: (message: string) => void;
  },
): RecordSink {
  if (!logging.enabled) return disabledSink;
  const target = logging.target === "stdout"
    ? stdoutTarget
    : new RotatingFile(options.dir, { maxBytes: logging.max_bytes, maxFiles: logging.max_files });
  return new QueuedLineWriter(
    target,
    { maxBodyBytes: logging.max_body_bytes, secrets: options.secrets },
    options.onError,
  );
}
