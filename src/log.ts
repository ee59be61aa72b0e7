import type { Config } from "./config.ts";
import { recordLineParts } from "./log_line.ts";
import type { RequestRecord } from "./record.ts";

/** Where finished request records go. `write` never waits; `close` drains what is queued. */
export interface RecordSink {
  /** `secrets` are this request's own (the client's credentials), redacted with the global ones. */
  write(record: RequestRecord, secrets?: readonly string[]): void;
  close(): Promise<void>;
  /** Batches that could not be written, for the statistics. */
  readonly writeErrors: number;
  /** Records let go unwritten because the queue was full, for the statistics. */
  readonly droppedRecords: number;
}

const encoder = new TextEncoder();
const LF = 0x0a;
/** The batch buffer is kept for the next batch up to this size; a larger one is let go. */
const KEPT_BUFFER_BYTES = 4 * 1024 * 1024;
/** A batch stops taking lines once it may need this many bytes. */
const BATCH_BYTES = 16 * 1024 * 1024;
/**
 * The most text (UTF-16 units) the queue holds: past it the oldest records are let go, so a log
 * that cannot be written (a full disk) costs the router some records, never all its memory.
 */
const MAX_QUEUED_CHARS = 64 * 1024 * 1024;
const RETRY_MS = 1000;
/** Lines up to this many UTF-16 units are encoded joined (at most 64 KB of string). */
const JOIN_LINE_CHARS = 32 * 1024;
/**
 * How long records gather before a batch is written: one timer and one write per batch rather
 * than per request, which at low load would cost each request more than its own record.
 */
const FLUSH_MS = 20;

/** Where batches of lines end up. */
export interface LineTarget {
  readonly name: string;
  append(bytes: Uint8Array): Promise<void>;
  /** Forgets cached state after a failure, so the next try starts afresh. */
  reset(): void;
}

/** How the writer tells the operator about trouble with the log, and its end. */
export interface SinkReports {
  onError(message: string): void;
  onRecover?(message: string): void;
}

/**
 * Lines queue in memory and one writer drains them in batches, so no response ever waits for
 * the disk. A record becomes its line as it arrives, which is after its answer has gone out (see
 * after_response.ts), so its bodies and objects are let go at once rather than kept until the
 * drain. A failed batch stays queued and is retried; the failure is reported once, and its end
 * once more.
 */
export class QueuedLineWriter implements RecordSink {
  writeErrors = 0;
  droppedRecords = 0;
  /** Lines waiting for the next batch, serialized as their records arrive, each in its pieces. */
  #queue: string[][] = [];
  #queuedChars = 0;
  #dropping = false;
  /** The writer itself failed (not the target) in the last drain. */
  #faulted = false;
  #failed: Uint8Array | null = null;
  #buffer = new Uint8Array(0);
  #draining: Promise<void> | null = null;
  #scheduled: ReturnType<typeof setTimeout> | undefined;
  #failing = false;
  #closed = false;

  constructor(
    private readonly target: LineTarget,
    private readonly options: { maxBodyBytes: number; secrets: readonly string[] },
    private readonly reports: SinkReports,
  ) {}

  write(record: RequestRecord, secrets: readonly string[] = []): void {
    const line = this.#line(record, secrets);
    this.#queue.push(line);
    this.#queuedChars += lineChars(line);
    while (this.#queuedChars > MAX_QUEUED_CHARS && this.#queue.length > 1) {
      this.#queuedChars -= lineChars(this.#queue.shift()!);
      this.droppedRecords++;
      if (!this.#dropping) {
        this.#report("Request log queue is full: the oldest records are dropped until it drains");
      }
      this.#dropping = true;
    }
    this.#closed = false;
    this.#schedule(FLUSH_MS);
  }

  #schedule(ms: number): void {
    if (this.#closed || this.#draining !== null || this.#scheduled !== undefined) return;
    this.#scheduled = setTimeout(() => {
      this.#scheduled = undefined;
      // A drain that `close` started meanwhile takes whatever is queued.
      if (this.#draining === null) this.#startDrain();
    }, ms);
  }

  /**
   * One drain at a time, which the batch buffer relies on; `#draining` is cleared by the drain
   * that set it, whenever it ends.
   */
  #startDrain(): Promise<void> {
    const run = this.#drain().catch((error) => {
      // A fault of the writer's own, not of the target: what is queued stays queued, and is
      // tried again as a failed write would be.
      if (!this.#faulted) this.#report(`Request log writer failed: ${error}`);
      this.#faulted = true;
    }).finally(() => {
      if (this.#draining === run) this.#draining = null;
      if (this.#failed !== null || this.#faulted) this.#schedule(RETRY_MS);
      // A record queued after the drain found the queue empty, but before it ended, found no
      // timer to set.
      else if (this.#queue.length > 0) this.#schedule(FLUSH_MS);
    });
    this.#draining = run;
    return run;
  }

  #report(message: string, recovered = false): void {
    try {
      if (recovered) this.reports.onRecover?.(message);
      else this.reports.onError(message);
    } catch {
      // Whoever listens must not take the writer down with it.
    }
  }

  /** Writes what is queued and stops retrying; a later `write` starts the writer again. */
  async close(): Promise<void> {
    this.#closed = true;
    // A timer due meanwhile finds the drain running and leaves the queue to it.
    while (this.#draining !== null) await this.#draining;
    clearTimeout(this.#scheduled);
    this.#scheduled = undefined;
    if (this.#queue.length > 0 || this.#failed !== null) await this.#startDrain();
    let lost = this.#queue.length;
    for (const byte of this.#failed ?? []) if (byte === LF) lost++;
    if (lost > 0) this.#report(`${lost} request log records could not be written before it closed`);
  }

  async #drain(): Promise<void> {
    while (this.#failed !== null || this.#queue.length > 0) {
      const bytes = this.#failed ?? this.#serialize();
      this.#failed = null;
      try {
        await this.target.append(bytes);
      } catch (error) {
        // Retry only what did not reach the file, so no line is written twice.
        const written = error instanceof PartialWrite ? error.written : 0;
        // A copy: the batch buffer is the next batch's.
        this.#failed = bytes.slice(written);
        this.writeErrors++;
        this.target.reset();
        if (!this.#failing) this.#report(`Cannot write request log ${this.target.name}: ${error}`);
        this.#failing = true;
        return;
      }
      if (this.#failing) this.#report(`Request log is writable again: ${this.target.name}`, true);
      this.#failing = false;
      this.#faulted = false;
    }
  }

  /**
   * Encodes the queued lines into the batch buffer: `encodeInto` a buffer kept between batches
   * costs a few microseconds for a 200 KB line, where `encode` spends hundreds mapping a fresh
   * result. A short line is joined and encoded in one call, which costs half of encoding its
   * pieces one by one; a long one goes piece by piece, since joining would copy its body into
   * fresh memory. The bytes returned are a view on that buffer: a batch is written, or copied to
   * `#failed`, before the single drain serializes the next one. A batch takes lines up to about
   * `BATCH_BYTES` (at least one), so a backlog left by a log that could not be written goes out in
   * several, not in one buffer as large as all of it.
   */
  #serialize(): Uint8Array {
    let bound = 0;
    let count = 0;
    for (const parts of this.#queue) {
      if (count > 0 && bound > BATCH_BYTES) break;
      bound += lineChars(parts) * 3 + 1;
      count++;
    }
    let buffer = this.#buffer;
    if (buffer.length < bound) {
      buffer = new Uint8Array(bound);
      if (bound <= KEPT_BUFFER_BYTES) this.#buffer = buffer;
    }
    const lines = this.#queue.splice(0, count);
    for (const parts of lines) this.#queuedChars -= lineChars(parts);
    if (this.#queuedChars < MAX_QUEUED_CHARS / 2) this.#dropping = false;
    let at = 0;
    for (const parts of lines) {
      if (lineChars(parts) <= JOIN_LINE_CHARS) {
        at += encoder.encodeInto(parts.join(""), buffer.subarray(at)).written;
      } else {
        for (const part of parts) at += encoder.encodeInto(part, buffer.subarray(at)).written;
      }
      buffer[at++] = LF;
    }
    return buffer.subarray(0, at);
  }

  #line(record: RequestRecord, secrets: readonly string[]): string[] {
    const all = secrets.length === 0 ? this.options.secrets : [...this.options.secrets, ...secrets];
    const options = { maxBodyBytes: this.options.maxBodyBytes, secrets: all };
    try {
      return recordLineParts(record, options);
    } catch (error) {
      // A record too odd to serialize loses its bodies, never the writer or the process.
      const bare = { ...record, request: null, response: null };
      bare.error ??= {
        type: "log_error",
        message: `Record could not be written whole: ${error}`,
      };
      return recordLineParts(bare, options);
    }
  }
}

function lineChars(parts: string[]): number {
  let chars = 0;
  for (const part of parts) chars += part.length;
  return chars;
}

/** A failed append that had already written its first `written` bytes. */
class PartialWrite extends Error {
  constructor(readonly written: number, options: ErrorOptions) {
    super(`Failed after ${written} bytes: ${options.cause}`, options);
  }
}

/**
 * `<dir>/requests.jsonl`, rotated by size as a classic rotating file handler does: past
 * `maxBytes` it becomes `requests.jsonl.1` (the newest rotated file), older ones shift up, and the
 * one beyond `maxFiles` is deleted. Batches are cut only between lines, so no line is ever split,
 * and a file outgrows `maxBytes` only by a single line longer than that. The file is opened per
 * write, so a removed directory or an outside rotation is noticed.
 */
export class RotatingFile implements LineTarget {
  readonly name: string;
  #size: number | null = null;
  /** The last write ended inside a line. */
  #midLine = false;

  constructor(
    private readonly dir: string,
    private readonly rotation: { maxBytes: number; maxFiles: number },
  ) {
    this.name = `${dir}/requests.jsonl`;
  }

  async append(bytes: Uint8Array): Promise<void> {
    let written = 0;
    try {
      let size = this.#size ?? await this.#open();
      while (written < bytes.length) {
        const rest = bytes.subarray(written);
        const room = this.rotation.maxBytes - size;
        // The rest of a line a failed write began goes into the same file, whatever its size.
        let cut = this.#midLine
          ? rest.indexOf(LF) + 1 || rest.length
          : rest.length <= room
          ? rest.length
          : room > 0
          ? rest.lastIndexOf(LF, room - 1) + 1
          : 0;
        if (cut === 0) {
          if (size > 0) {
            size = await this.#rotate();
            continue;
          }
          cut = rest.indexOf(LF) + 1 || rest.length;
        }
        // Counted write by write, so a failure partway (a full disk) retries only the rest.
        const file = await Deno.open(this.name, { append: true, create: true });
        try {
          for (let done = 0; done < cut;) {
            const count = await file.write(rest.subarray(done, cut));
            if (count === 0) throw new Error("The file took no bytes");
            done += count;
            written += count;
            this.#size = size += count;
            this.#midLine = rest[done - 1] !== LF;
          }
        } finally {
          file.close();
        }
      }
    } catch (error) {
      throw new PartialWrite(written, { cause: error });
    }
  }

  async #open(): Promise<number> {
    await Deno.mkdir(this.dir, { recursive: true });
    let size = await Deno.stat(this.name).then((info) => info.size, () => 0);
    // A line an earlier run left unfinished (it stopped mid-write) is ended first, so the next
    // line starts on its own rather than glued to it.
    if (size > 0 && !this.#midLine && !(await this.#endsWithNewline(size))) {
      await Deno.writeFile(this.name, new Uint8Array([LF]), { append: true });
      size++;
    }
    return this.#size = size;
  }

  async #endsWithNewline(size: number): Promise<boolean> {
    try {
      using file = await Deno.open(this.name, { read: true });
      await file.seek(size - 1, Deno.SeekMode.Start);
      const last = new Uint8Array(1);
      return await file.read(last) !== 1 || last[0] === LF;
    } catch {
      // Not readable: nothing is changed.
      return true;
    }
  }

  reset(): void {
    this.#size = null;
  }

  async #rotate(): Promise<number> {
    const { maxFiles } = this.rotation;
    await Deno.remove(`${this.name}.${maxFiles}`).catch(() => {});
    for (let n = maxFiles - 1; n >= 1; n--) {
      await Deno.rename(`${this.name}.${n}`, `${this.name}.${n + 1}`).catch(() => {});
    }
    if (maxFiles >= 1) await Deno.rename(this.name, `${this.name}.1`);
    else await Deno.remove(this.name);
    return this.#size = 0;
  }
}

const stdoutTarget: LineTarget = {
  name: "stdout",
  async append(bytes) {
    let at = 0;
    try {
      while (at < bytes.length) {
        const count = await Deno.stdout.write(bytes.subarray(at));
        if (count === 0) throw new Error("stdout took no bytes");
        at += count;
      }
    } catch (error) {
      throw new PartialWrite(at, { cause: error });
    }
  },
  reset() {},
};

const disabledSink: RecordSink = {
  write() {},
  close: () => Promise.resolve(),
  writeErrors: 0,
  droppedRecords: 0,
};

/** The request log the config asks for: a rotating file, stdout, or nothing. */
export function createRecordSink(
  logging: Config["logging"],
  options: SinkReports & {
    dir: string;
    /** The config's secrets, read at every record: the owner may update the array on reload. */
    secrets: readonly string[];
  },
): RecordSink {
  if (!logging.enabled) return disabledSink;
  const target = logging.target === "stdout"
    ? stdoutTarget
    : new RotatingFile(options.dir, { maxBytes: logging.max_bytes, maxFiles: logging.max_files });
  return new QueuedLineWriter(
    target,
    { maxBodyBytes: logging.max_body_bytes, secrets: options.secrets },
    options,
  );
}
