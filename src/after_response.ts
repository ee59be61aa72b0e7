/**
 * Work that can wait until an answer has gone out: reading usage from a plain body, the
 * statistics and the log record. It runs on a later turn of the event loop (a zero-delay timer),
 * after the handler has handed the answer to Deno, in one batch for everything queued meanwhile.
 * `flush` runs what is queued at once, for pages that show the statistics and for shutdown.
 */
export class AfterResponse {
  #tasks: (() => void)[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;

  /** `onError` hears of a task that threw; the other tasks still run. */
  constructor(private readonly onError: (error: unknown) => void) {}

  run(task: () => void): void {
    if (this.#tasks.push(task) === 1) this.#timer = setTimeout(() => this.flush(), 0);
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
