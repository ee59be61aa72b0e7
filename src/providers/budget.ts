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

/** How many pieces wait before they are joined into one string. */
const PIECES_PER_JOIN = 64;

/**
 * Text a stream sends in pieces (a delta per event). Appending each piece to a string would keep
 * every piece plus a link between each two, about 32 bytes per delta above the text itself, so a
 * long answer would cost several times its size in memory; pieces are joined in batches instead.
 */
export class TextPieces {
  #joined: string;
  #waiting: string[] = [];

  constructor(start = "") {
    this.#joined = start;
  }

  add(piece: string): void {
    if (piece.length === 0) return;
    if (this.#waiting.push(piece) === PIECES_PER_JOIN) this.#join();
  }

  toString(): string {
    this.#join();
    return this.#joined;
  }

  #join(): void {
    if (this.#waiting.length === 0) return;
    this.#joined += this.#waiting.join("");
    this.#waiting.length = 0;
  }
}
