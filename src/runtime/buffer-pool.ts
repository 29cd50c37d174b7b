/**
 * Buffers kept between calls for multi-MB chunks (file reads, decoded
 * uploads): a fresh allocation per chunk costs page faults on every chunk. A
 * call takes a buffer for itself and gives it back when done, so calls never
 * share one; a call finding none big enough gets a new one of the size it
 * needs, which may then be kept in place of a smaller one.
 */
export class BufferPool {
  private readonly kept: Buffer[] = [];

  constructor(
    /** How many buffers stay resident. */
    private readonly keep: number,
    /** Larger buffers are not kept: one outsized call must not pin its memory. */
    private readonly keptMaxBytes = Number.POSITIVE_INFINITY,
  ) {}

  /** A kept buffer of at least `bytes`, or a new one of exactly that size. */
  take(bytes: number): Buffer {
    const fits = this.kept.findIndex((buffer) => buffer.length >= bytes);
    if (fits >= 0) return this.kept.splice(fits, 1)[0]!;
    if (bytes <= this.keptMaxBytes) this.kept.shift(); // Room for the bigger one this call will give back.
    return Buffer.allocUnsafe(bytes);
  }

  giveBack(buffer: Buffer): void {
    if (this.kept.length < this.keep && buffer.length <= this.keptMaxBytes) this.kept.push(buffer);
  }
}
