/** How many pieces wait before they are joined into one string. */
const PIECES_PER_JOIN = 64;

/**
 * Text a stream sends in pieces (a delta per event). Appending each piece to a string would, in
 * V8, keep every piece plus a 32-byte link between each two (a cons string), so a long answer
 * would hold several times its size in memory; pieces are joined in batches instead.
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
