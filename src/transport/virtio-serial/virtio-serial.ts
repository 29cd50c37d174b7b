/**
 * A virtio-serial port (/dev/virtio-ports/NAME) — one host connection at a time.
 *
 * The port exists whether or not a host is connected to its chardev, so the
 * loop is: wait for the device node (hot-plug, slow boot), open it once, then
 * for each host: wait for it without spinning, serve it with a fresh session
 * (fresh framing state) until its stream ends, and start again. A read or
 * device error (unplug) closes the port and goes back to waiting for it.
 */
import type { Logger } from "../../log/logger.ts";
import { BufferedConnection } from "../buffered-connection.ts";
import { DeviceTransport, devicePresent } from "../device-transport.ts";
import type { AcceptConnection } from "../transport.ts";
import { LinuxPortDevice } from "./linux.ts";
import { PortRemovalError, WindowsPortDevice } from "./windows.ts";

/** The OS half of the transport: one open port. */
export interface PortDevice {
  /** False while no host is connected to the chardev; throws when the port is gone (unplugged). */
  hostConnected(): boolean;
  /** Resolves when a host connects (or when stillWanted() turns false), without spinning; throws when the port is gone. */
  waitForHost(stillWanted: () => boolean): Promise<void>;
  /** Ends when the host disconnects; errors when the device fails. */
  readStream(): ReadableStream<Uint8Array>;
  /** Bytes taken now; 0 when the port cannot take more yet. Throws when the device is broken. */
  writeSome(bytes: Uint8Array): number;
  close(): void;
}

export type OpenPort = (path: string) => PortDevice;

/**
 * After Windows asked to remove the port's device, reopening at once could
 * catch it before the removal and veto it again: wait this long first (a
 * removal that was refused after all is served again then).
 */
const REOPEN_AFTER_REMOVAL_MS = 2_000;

const openPlatformPort: OpenPort = process.platform === "win32" ? (path) => WindowsPortDevice.open(path) : (path) => LinuxPortDevice.open(path);

export class VirtioSerialTransport extends DeviceTransport<PortDevice> {
  readonly name = "virtio-serial";

  constructor(path: string, logger: Logger, openPort: OpenPort = openPlatformPort, present: (path: string) => boolean = devicePresent) {
    super(path, logger, "port", openPort, present);
  }

  protected async serveDevice(port: PortDevice, accept: AcceptConnection): Promise<void> {
    this.lastProblem = "";
    this.backoff.reset();
    this.logger.info("port open", { transport: this.name, path: this.path });
    try {
      await this.serveHosts(port, accept);
    } catch (error) {
      if (this.running) this.problem(`port failed; reopening: ${(error as Error).message}`);
      await Bun.sleep(error instanceof PortRemovalError ? REOPEN_AFTER_REMOVAL_MS : this.backoff.next());
    } finally {
      port.close();
    }
  }

  /** One host after another on an open port; throws when the device fails. */
  private async serveHosts(port: PortDevice, accept: AcceptConnection): Promise<void> {
    while (this.running) {
      if (!port.hostConnected()) {
        this.logger.debug("waiting for a host", { transport: this.name });
        await port.waitForHost(() => this.running);
        continue;
      }
      const connection = new PortConnection(this.name, port);
      connection.handler = accept(connection);
      try {
        await connection.pump(port.readStream());
      } finally {
        connection.markClosed();
      }
      this.logger.debug("host disconnected", { transport: this.name });
      // A stream that ends at once while poll() says connected must not become a busy loop.
      if (connection.received === 0) await Bun.sleep(this.backoff.next());
      else this.backoff.reset();
    }
  }
}

/** One host's connection on the port (or on a serial line); output waits in the queue while the port is full. */
export class PortConnection extends BufferedConnection {
  private resumeReading: { promise: Promise<void>; resolve: () => void } | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private retryDelayMs = 1;
  /** Bytes the host sent on this connection. */
  received = 0;

  constructor(
    transport: string,
    private readonly port: Pick<PortDevice, "writeSome">,
  ) {
    super(transport);
  }

  /**
   * Feeds the session from `stream` until it ends (counting into `received`).
   * Waits for the session only while it is full: a virtio-serial read is at
   * most 4 KiB (one driver buffer), so an extra await per read is felt.
   */
  async pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    const reader = stream.getReader();
    try {
      for (;;) {
        if (this.resumeReading) await this.resumeReading.promise;
        const { done, value } = await reader.read();
        if (done) return;
        this.received += value.length;
        this.handler?.onData(value);
      }
    } finally {
      reader.releaseLock();
    }
  }

  protected writeSome(bytes: Uint8Array): number {
    const written = this.port.writeSome(bytes);
    if (written > 0) this.retryDelayMs = 1;
    return written;
  }

  /** The driver gives no signal when it can take output again: retry soon, backing off to 16 ms. */
  protected retryLater(): void {
    if (this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.flush();
    }, this.retryDelayMs);
    this.retryDelayMs = Math.min(this.retryDelayMs * 2, 16);
  }

  protected setReadPaused(paused: boolean): void {
    if (paused) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.resumeReading = { promise, resolve };
    } else {
      this.resumeReading?.resolve();
      this.resumeReading = null;
    }
  }

  /** The port stays open for the next host; only this connection ends. */
  protected endTransport(): void {}

  override markClosed(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.setReadPaused(false);
    super.markClosed();
  }
}
