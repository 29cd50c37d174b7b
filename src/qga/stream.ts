/**
 * QGA input: a stream of JSON values with no framing, as qemu's json-streamer
 * reads it. A value ends when its braces and brackets balance (a top-level
 * scalar ends at the next delimiter); newlines are optional. A 0xFF byte —
 * never valid in UTF-8 JSON — drops whatever is pending and is reported, which
 * is how hosts resynchronise (guest-sync-delimited). A value above the size
 * limit is reported once and skipped up to its end, never buffered.
 */

export const QGA_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

export interface QgaStreamSink {
  /** The bytes of one complete top-level JSON value (view valid during the call). */
  onMessage(bytes: Uint8Array): void;
  /** A 0xFF byte reset the parser; `pending` is how many bytes were dropped. */
  onReset(pending: number): void;
  /** A value grew past the limit; it is skipped to its end. */
  onTooLarge(limit: number): void;
  /** Unbalanced input: a closing bracket with nothing open. */
  onStray(byte: number): void;
}

const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const RESET = 0xff;

function isSpace(byte: number): boolean {
  return byte === 0x20 || byte === 0x0a || byte === 0x0d || byte === 0x09;
}

function isDelimiter(byte: number): boolean {
  return isSpace(byte) || byte === OPEN_BRACE || byte === CLOSE_BRACE || byte === OPEN_BRACKET || byte === CLOSE_BRACKET || byte === QUOTE || byte === RESET;
}

export class QgaStreamParser {
  private parts: Uint8Array[] = [];
  private size = 0;
  private depth = 0;
  private inString = false;
  private escaped = false;
  /** A top-level scalar (number, keyword) is being read. */
  private inScalar = false;
  /** The current value passed the limit: count nothing, wait for its end. */
  private skipping = false;

  constructor(
    private readonly sink: QgaStreamSink,
    private readonly maxBytes = QGA_MAX_MESSAGE_BYTES,
  ) {}

  /** Forget any partial value: the peer went away. */
  reset(): void {
    this.parts = [];
    this.size = 0;
    this.depth = 0;
    this.inString = false;
    this.escaped = false;
    this.inScalar = false;
    this.skipping = false;
  }

  push(chunk: Uint8Array): void {
    let start = -1; // where the pending value's bytes begin in this chunk
    const active = () => this.depth > 0 || this.inString || this.inScalar;
    if (active()) start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const byte = chunk[i]!;
      if (byte === RESET) {
        const pending = this.size + (start >= 0 ? i - start : 0);
        this.reset();
        start = -1;
        this.sink.onReset(pending);
        continue;
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (byte === BACKSLASH) this.escaped = true;
        else if (byte === QUOTE) {
          this.inString = false;
          if (this.depth === 0) {
            this.finish(chunk, start, i + 1);
            start = -1;
          }
        }
        continue;
      }
      if (this.inScalar) {
        if (!isDelimiter(byte)) continue;
        this.finish(chunk, start, i);
        start = -1;
        // The delimiter itself starts (or is) the next token: fall through.
      }
      if (isSpace(byte)) continue;
      if (byte === OPEN_BRACE || byte === OPEN_BRACKET) {
        if (this.depth === 0) start = i;
        this.depth++;
      } else if (byte === CLOSE_BRACE || byte === CLOSE_BRACKET) {
        if (this.depth === 0) {
          this.sink.onStray(byte);
          continue;
        }
        if (--this.depth === 0) {
          this.finish(chunk, start, i + 1);
          start = -1;
        }
      } else if (byte === QUOTE) {
        if (this.depth === 0) start = i;
        this.inString = true;
      } else if (this.depth === 0) {
        start = i;
        this.inScalar = true;
      }
      if (start >= 0 && !this.skipping && this.size + (i + 1 - start) > this.maxBytes) this.tooLarge();
    }
    if (start >= 0) this.keep(chunk.subarray(start));
  }

  private keep(bytes: Uint8Array): void {
    if (this.skipping) return;
    if (this.size + bytes.length > this.maxBytes) return this.tooLarge();
    this.parts.push(bytes.slice());
    this.size += bytes.length;
  }

  private tooLarge(): void {
    this.skipping = true;
    this.parts = [];
    this.size = 0;
    this.sink.onTooLarge(this.maxBytes);
  }

  private finish(chunk: Uint8Array, start: number, end: number): void {
    const skipped = this.skipping;
    const tail = start >= 0 ? chunk.subarray(start, end) : new Uint8Array(0);
    const parts = this.parts;
    const size = this.size;
    this.parts = [];
    this.size = 0;
    this.inScalar = false;
    this.skipping = false;
    if (skipped) return;
    if (size + tail.length > this.maxBytes) return this.sink.onTooLarge(this.maxBytes);
    if (parts.length === 0) return this.sink.onMessage(tail);
    this.sink.onMessage(Buffer.concat([...parts, tail]));
  }
}
