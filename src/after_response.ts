/**
 * How long work waits, at most, before it runs. A zero-delay timer per answer cost about as much
 * as the work it moved (CPU under load, and latency at concurrency 1); one timer for all answers
 * in a few milliseconds costs next to nothing.
 */
const BATCH_MS = 10;

/**
 * Work that can wait until an answer has gone out: reading usage from a plain body, the
 * statistics and the log record. It runs on a later turn of the event loop, after the handler has
 * handed the answer to Deno, in one batch for everything queued within `BATCH_MS`. `flush` runs
 * what is queued at once, for pages that show the statistics and for shutdown.
 */
export class AfterResponse {
  #tasks: (() => void)[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;

  /** `onError` hears of a task that threw; the other tasks still run. */
  constructor(private readonly onError: (error: unknown) => void) {}

  run(task: () => void): void {
    if (this.#tasks.push(task) === 1) this.#timer = setTimeout(() => this.flush(), BATCH_MS);
  }

  flush(): void {
    clearTimeout(this.#timer);
    const tasks = this.#tasks;
    this.#tasks = [];
    for (const task of tasks) {
      try {
        task();
      } catch (error) {
        this.onError(error);
      }
    }
  }
}
