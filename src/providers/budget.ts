/**
 * Bounds how much text a stream's reassembly keeps. The log cuts bodies at
 * `logging.max_body_bytes` anyway, and the router's memory must not grow with a stream's length.
 */
export class TextBudget {
  #left: number;

  /** `limit` in UTF-16 units; 0 keeps everything. */
  constructor(limit: number) {
    this.#left = limit === 0 ? Infinity : limit;
  }

  /** The part of `text` that still fits. */
  take(text: string): string {
    if (text.length <= this.#left) {
      this.#left -= text.length;
      return text;
    }
    const part = text.slice(0, Math.max(0, this.#left));
    this.#left = 0;
    return part;
  }
}
