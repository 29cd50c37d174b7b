import { closeSync, writeSync } from "node:fs";

/**
 * A character device (virtio-serial port, serial line) open O_RDWR|O_NONBLOCK:
 * read through Bun's epoll-driven stream, written without ever blocking.
 */
export class NonBlockingCharDevice {
  private closed = false;

  protected constructor(protected readonly fd: number) {}

  readStream(): ReadableStream<Uint8Array> {
    return Bun.file(this.fd).stream();
  }

  /** Bytes the device took now; 0 when it is full (EAGAIN). */
  writeSome(bytes: Uint8Array): number {
    try {
      return writeSync(this.fd, bytes);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "EAGAIN") return 0;
      throw error;
    }
  }

  /** Once only: after the first close the fd number may already belong to another file. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      closeSync(this.fd);
    } catch {
      // Already gone with the device.
    }
  }
}
