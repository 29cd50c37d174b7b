/**
 * What every byte-stream Connection shares: writes the peer cannot take yet
 * are queued and retried, and reading pauses while the session is full or
 * too much output is waiting — so a host that never reads its replies cannot
 * grow the agent's memory.
 */
import { SpillRing } from "./spill-ring.ts";
import type { Connection, ConnectionHandler } from "./transport.ts";

/** Above this many unsent bytes, stop reading requests until the peer catches up. */
export const OUTPUT_HIGH_WATER_BYTES = 4 * 1024 * 1024;

/** The largest spill ring kept: room for two 2 MiB chunks' replies (2.8 MB each) waiting together. */
const SPILL_RING_BYTES = 8 * 1024 * 1024;

export abstract class BufferedConnection implements Connection {
  handler: ConnectionHandler | null = null;
  private readonly queue: Uint8Array[] = [];
  private queuedBytes = 0;
  /** Copies of what is queued (unless handed over): the caller of send() may reuse its buffer. */
  private readonly spill = new SpillRing(SPILL_RING_BYTES);
  private pausedBySession = false;
  private readPaused = false;
  protected closed = false;

  constructor(readonly transport: string) {}

  /** Write what the peer takes now; return the count (0 when it is full). Throws when the connection is broken. */
  protected abstract writeSome(bytes: Uint8Array): number;
  /** Arrange for flush() to run when the peer may take more. */
  protected abstract retryLater(): void;
  protected abstract setReadPaused(paused: boolean): void;
  protected abstract endTransport(): void;

  send(bytes: Uint8Array, handedOver = false): void {
    if (this.closed) return;
    if (this.queue.length === 0) {
      const written = this.writeWhileTaken(bytes);
      if (written === bytes.length || this.closed) return;
      bytes = bytes.subarray(written);
    }
    if (!handedOver) bytes = this.spill.copy(bytes);
    this.queue.push(bytes);
    this.queuedBytes += bytes.length;
    if (this.queue.length === 1) this.retryLater();
    this.updateReading();
  }

  flush(): void {
    while (this.queue.length > 0 && !this.closed) {
      const head = this.queue[0]!;
      const written = this.writeWhileTaken(head);
      this.queuedBytes -= written;
      if (this.spill.holds(head)) this.spill.consumed(written);
      if (written < head.length) {
        this.queue[0] = head.subarray(written);
        if (!this.closed) this.retryLater();
        break;
      }
      this.queue.shift();
    }
    this.updateReading();
  }

  pause(): void {
    this.pausedBySession = true;
    this.updateReading();
  }

  resume(): void {
    this.pausedBySession = false;
    this.updateReading();
  }

  close(): void {
    if (this.closed) return;
    this.endTransport();
    this.markClosed();
  }

  /** The peer is gone: drop what was queued and tell the session once. */
  markClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.spill.clear();
    this.handler?.onClose();
  }

  /**
   * Writes as much of `bytes` as the peer takes now. One write is not that:
   * a virtio-serial port takes at most 32 KiB per write(), so a 2.8 MB reply
   * written once per retry tick took 86 ticks (a third of a VM read's time).
   */
  private writeWhileTaken(bytes: Uint8Array): number {
    let total = 0;
    while (total < bytes.length && !this.closed) {
      const written = this.tryWrite(total === 0 ? bytes : bytes.subarray(total));
      if (written === 0) break;
      total += written;
    }
    return total;
  }

  private tryWrite(bytes: Uint8Array): number {
    try {
      return Math.max(this.writeSome(bytes), 0);
    } catch {
      this.markClosed();
      return 0;
    }
  }

  private updateReading(): void {
    const shouldPause = this.pausedBySession || this.queuedBytes > OUTPUT_HIGH_WATER_BYTES;
    if (shouldPause === this.readPaused || this.closed) return;
    this.readPaused = shouldPause;
    this.setReadPaused(shouldPause);
  }
}
