import type { RequestRecord } from "./record.ts";

/** Where finished request records go. `write` never waits; `close` drains what is queued. */
export interface RecordSink {
  write(record: RequestRecord): void;
  close(): Promise<void>;
}

/** Size-based rotation, as a classic rotating file handler does it. */
export interface RotationOptions {
  maxBytes: number;
  maxFiles: number;
}

const encoder = new TextEncoder();
const RETRY_MS = 1000;

/**
 * Appends records as JSON lines to `<dir>/requests.jsonl`, from an in-memory queue drained by one
 * writer in batches, so no response ever waits for the disk. Past `maxBytes` the file becomes
 * `requests.jsonl.1` (the newest rotated file) and older ones shift up; the one beyond `maxFiles`
 * is deleted. A batch is never split across files, so rotation never cuts a line. The file is
 * opened per batch, so a removed directory or an outside rotation is noticed and recovered from.
 */
export class RotatingJsonLinesFile implements RecordSink {
  readonly path: string;
  #dir: string;
  #rotation: RotationOptions;
  #queue: string[] = [];
  #size: number | null = null;
  #draining: Promise<void> | null = null;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #failing = false;
  #onError: (message: string) => void;
  /** Batches that could not be written, counted for the statistics. */
  writeErrors = 0;

  constructor(dir: string, rotation: RotationOptions, onError: (message: string) => void) {
    this.#dir = dir;
    this.path = `${dir}/requests.jsonl`;
    this.#rotation = rotation;
    this.#onError = onError;
  }

  write(record: RequestRecord): void {
    this.#queue.push(JSON.stringify(record) + "\n");
    if (this.#draining === null && this.#retryTimer === undefined) {
      this.#draining = this.#drain();
    }
  }

  async close(): Promise<void> {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    await this.#draining;
    if (this.#queue.length > 0) await this.#drain();
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue;
        this.#queue = [];
        try {
          await this.#append(encoder.encode(batch.join("")));
          if (this.#failing) this.#onError(`Request log writable again: ${this.path}`);
          this.#failing = false;
        } catch (error) {
          this.#queue = batch.concat(this.#queue);
          this.#size = null;
          this.writeErrors++;
          if (!this.#failing) this.#onError(`Cannot write request log ${this.path}: ${error}`);
          this.#failing = true;
          this.#retryTimer = setTimeout(() => {
            this.#retryTimer = undefined;
            this.#draining = this.#drain();
          }, RETRY_MS);
          return;
        }
      }
    } finally {
      this.#draining = null;
    }
  }

  async #append(bytes: Uint8Array): Promise<void> {
    if (this.#size === null) {
      await Deno.mkdir(this.#dir, { recursive: true });
      this.#size = await Deno.stat(this.path).then((info) => info.size, () => 0);
    }
    if (this.#size > 0 && this.#size + bytes.length > this.#rotation.maxBytes) {
      await this.#rotate();
    }
    await Deno.writeFile(this.path, bytes, { append: true, create: true });
    this.#size += bytes.length;
  }

  async #rotate(): Promise<void> {
    const { maxFiles } = this.#rotation;
    await Deno.remove(`${this.path}.${maxFiles}`).catch(() => {});
    for (let n = maxFiles - 1; n >= 1; n--) {
      await Deno.rename(`${this.path}.${n}`, `${this.path}.${n + 1}`).catch(() => {});
    }
    if (maxFiles >= 1) await Deno.rename(this.path, `${this.path}.1`);
    else await Deno.remove(this.path);
    this.#size = 0;
  }
}
