/**
 * Where a connection keeps copies of the bytes a peer could not take yet.
 * The caller of send() may reuse its buffer at once (response-frames.ts does),
 * so unsent bytes must be copied; a fresh allocation per partial write (most
 * large replies: a unix socket takes ~200 kB at a time) left megabytes of
 * garbage per reply and grew a long transfer's RSS by 100 MB. Copies go into
 * one ring instead, one after another, each in one piece (a copy that does
 * not fit at the end starts again at the front), and leave it in the order
 * they came (the connection's queue is FIFO). The ring is made four times
 * the first copy it must hold (up to maxBytes): two replies waiting together,
 * with room to spare for where the front wraps.
 */
export class SpillRing {
  private ring = new Uint8Array(0);
  /** Offset of the oldest byte still queued. */
  private start = 0;
  /** Where the next copy goes. */
  private end = 0;
  /** Set once a copy started again at the front: [start, highEnd) then [0, end) hold the bytes. */
  private wrapped = false;
  private highEnd = 0;
  private pending = 0;

  /** `maxBytes`: the largest ring kept; copies that do not fit get memory of their own. */
  constructor(private readonly maxBytes: number) {}

  /** A copy of `bytes`: in the ring when it fits, else of its own. */
  copy(bytes: Uint8Array): Uint8Array {
    const n = bytes.length;
    if (this.pending === 0) {
      this.start = this.end = 0;
      this.wrapped = false;
      if (this.ring.length < n && n <= this.maxBytes) this.ring = new Uint8Array(Math.min(this.maxBytes, Math.max(4 * n, 64 * 1024)));
    }
    let at: number;
    if (!this.wrapped && this.ring.length - this.end >= n) at = this.end;
    else if (!this.wrapped && this.start >= n) {
      this.wrapped = true;
      this.highEnd = this.end;
      at = 0;
    } else if (this.wrapped && this.start - this.end >= n) at = this.end;
    else return new Uint8Array(bytes); // Not slice(): on a Buffer that is a view.
    const copy = this.ring.subarray(at, at + n);
    copy.set(bytes);
    this.end = at + n;
    this.pending += n;
    return copy;
  }

  /** True when `bytes` is (part of) a copy this ring made. */
  holds(bytes: Uint8Array): boolean {
    return bytes.buffer === this.ring.buffer;
  }

  /** The oldest `n` bytes in the ring were written to the peer. */
  consumed(n: number): void {
    this.pending -= n;
    this.start += n;
    if (this.wrapped && this.start === this.highEnd) {
      this.start = 0;
      this.wrapped = false;
    }
  }

  /** Drop everything (the connection closed) and the memory with it. */
  clear(): void {
    this.ring = new Uint8Array(0);
    this.start = this.end = this.pending = 0;
    this.wrapped = false;
  }
}
