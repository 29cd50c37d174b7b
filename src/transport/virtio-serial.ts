/**
 * A virtio-serial port (/dev/virtio-ports/NAME) — one host connection at a time.
 *
 * The guest driver lets only one open() of a port exist (a second gets
 * EBUSY), so one read-write fd serves both directions. While no host is
 * connected to the chardev, read() returns 0 at once; the loop then backs off
 * instead of spinning, and the next read that returns data is a new
 * connection with fresh framing state. A missing device is waited for (the
 * port may be hot-plugged later) and read errors reopen it, both with back-off.
 */
import { closeSync, constants, existsSync, openSync, read, write } from "node:fs";
import { promisify } from "node:util";
import type { Logger } from "../log/logger.ts";
import type { AcceptConnection, Connection, ConnectionHandler, Transport } from "./transport.ts";

const readAsync = promisify(read);
const writeAsync = promisify(write);

const READ_BUFFER_BYTES = 256 * 1024;

/** Delays for polling a missing device or an absent host: quick at first, then at most once a second. */
export class Backoff {
  private delay: number;

  constructor(
    private readonly initialMs = 20,
    private readonly maxMs = 1_000,
  ) {
    this.delay = initialMs;
  }

  next(): number {
    const current = this.delay;
    this.delay = Math.min(this.delay * 2, this.maxMs);
    return current;
  }

  reset(): void {
    this.delay = this.initialMs;
  }
}

export class VirtioSerialTransport implements Transport {
  readonly name = "virtio-serial";
  private running = false;
  private fd: number | null = null;

  constructor(
    private readonly path: string,
    private readonly logger: Logger,
    private readonly backoff = new Backoff(),
  ) {}

  async start(accept: AcceptConnection): Promise<void> {
    this.running = true;
    void this.serve(accept);
  }

  async close(): Promise<void> {
    this.running = false;
    this.closeFd();
  }

  private async serve(accept: AcceptConnection): Promise<void> {
    let loggedMissing = false;
    while (this.running) {
      if (!existsSync(this.path)) {
        if (!loggedMissing) this.logger.warn("port not present yet; waiting for it", { transport: this.name, path: this.path });
        loggedMissing = true;
        await Bun.sleep(this.backoff.next());
        continue;
      }
      try {
        this.fd = openSync(this.path, constants.O_RDWR | constants.O_NOCTTY);
      } catch (error) {
        this.logger.warn("cannot open port; retrying", { transport: this.name, path: this.path, error: (error as Error).message });
        await Bun.sleep(this.backoff.next());
        continue;
      }
      loggedMissing = false;
      this.logger.info("port open", { transport: this.name, path: this.path });
      await this.readUntilError(this.fd, accept);
      this.closeFd();
    }
  }

  /** Serves connection after connection on one fd; returns when the fd fails. */
  private async readUntilError(fd: number, accept: AcceptConnection): Promise<void> {
    const buffer = new Uint8Array(READ_BUFFER_BYTES);
    let session: PortConnection | null = null;
    while (this.running) {
      if (session) await session.readable();
      let n: number;
      try {
        ({ bytesRead: n } = await readAsync(fd, buffer, 0, buffer.length, null));
      } catch (error) {
        session?.end();
        if (this.running) this.logger.warn("port read failed; reopening", { transport: this.name, error: (error as Error).message });
        await Bun.sleep(this.backoff.next());
        return;
      }
      if (n === 0) {
        // No host on the other side (or it just left): end that connection, wait without spinning.
        if (session) {
          session.end();
          session = null;
          this.logger.debug("host disconnected", { transport: this.name });
        }
        await Bun.sleep(this.backoff.next());
        continue;
      }
      this.backoff.reset();
      session ??= new PortConnection(this.name, fd, accept, this.logger);
      session.deliver(buffer.subarray(0, n));
    }
  }

  private closeFd(): void {
    if (this.fd === null) return;
    try {
      closeSync(this.fd);
    } catch {
      // Already gone with the device.
    }
    this.fd = null;
  }
}

/** One host connection on the port: writes are serialised on the shared fd. */
class PortConnection implements Connection {
  private readonly handler: ConnectionHandler;
  private writing: Promise<void> = Promise.resolve();
  private ended = false;
  private paused: { promise: Promise<void>; resolve: () => void } | null = null;

  constructor(
    readonly transport: string,
    private readonly fd: number,
    accept: AcceptConnection,
    private readonly logger: Logger,
  ) {
    this.handler = accept(this);
  }

  deliver(chunk: Uint8Array): void {
    this.handler.onData(chunk);
  }

  /** Resolves when the session can take more data. */
  readable(): Promise<void> {
    return this.paused?.promise ?? Promise.resolve();
  }

  send(bytes: Uint8Array): void {
    if (this.ended) return;
    this.writing = this.writing.then(() => this.writeAll(bytes));
  }

  pause(): void {
    if (this.paused) return;
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.paused = { promise, resolve };
  }

  resume(): void {
    this.paused?.resolve();
    this.paused = null;
  }

  close(): void {
    this.end();
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.resume();
    this.handler.onClose();
  }

  private async writeAll(bytes: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < bytes.length && !this.ended) {
      try {
        const { bytesWritten } = await writeAsync(this.fd, bytes, offset, bytes.length - offset, null);
        offset += bytesWritten;
      } catch (error) {
        this.logger.warn("port write failed; reply dropped", { transport: this.transport, error: (error as Error).message });
        return;
      }
    }
  }
}
