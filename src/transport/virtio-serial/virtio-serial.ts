/**
 * A virtio-serial port (/dev/virtio-ports/NAME) — one host connection at a time.
 *
 * The port exists whether or not a host is connected to its chardev, so the
 * loop is: wait for the device node (hot-plug, slow boot), open it once, then
 * for each host: wait for it without spinning, serve it with a fresh session
 * (fresh framing state) until its stream ends, and start again. A read or
 * device error (unplug) closes the port and goes back to waiting for it.
 */
import { existsSync } from "node:fs";
import type { Logger } from "../../log/logger.ts";
import { BufferedConnection } from "../buffered-connection.ts";
import type { AcceptConnection, Transport } from "../transport.ts";
import { LinuxPortDevice } from "./linux.ts";
import { PortRemovalError, Win32Error, WindowsPortDevice } from "./windows.ts";

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

/** Delays for polling a missing device: quick at first, then at most once a second. */
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

/** Windows has no device node to look for: CreateFileW itself says whether the port is there (Win32Error.deviceMissing). */
export const devicePresent = process.platform === "win32" ? () => true : existsSync;

/** True when opening failed only because the device is not there (yet, or any more). */
export function deviceMissing(error: unknown): boolean {
  return error instanceof Win32Error && error.deviceMissing;
}

const openPlatformPort: OpenPort = process.platform === "win32" ? (path) => WindowsPortDevice.open(path) : (path) => LinuxPortDevice.open(path);

export class VirtioSerialTransport implements Transport {
  readonly name = "virtio-serial";
  private running = false;
  private port: PortDevice | null = null;
  private readonly backoff = new Backoff();
  /** Each distinct problem is logged once until it changes, not once per retry. */
  private lastProblem = "";

  constructor(
    private readonly path: string,
    private readonly logger: Logger,
    private readonly openPort: OpenPort = openPlatformPort,
    private readonly present: (path: string) => boolean = devicePresent,
  ) {}

  async start(accept: AcceptConnection): Promise<void> {
    this.running = true;
    void this.serve(accept);
  }

  async close(): Promise<void> {
    this.running = false;
    this.port?.close();
    this.port = null;
  }

  private async serve(accept: AcceptConnection): Promise<void> {
    while (this.running) {
      if (!this.present(this.path)) {
        this.problem("port not present yet; waiting for it");
        await Bun.sleep(this.backoff.next());
        continue;
      }
      let port: PortDevice;
      try {
        port = this.openPort(this.path);
      } catch (error) {
        this.problem(deviceMissing(error) ? "port not present yet; waiting for it" : `cannot open port: ${(error as Error).message}`);
        await Bun.sleep(this.backoff.next());
        continue;
      }
      this.port = port;
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
        this.port = null;
      }
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

  private problem(message: string): void {
    if (message === this.lastProblem) return;
    this.lastProblem = message;
    this.logger.warn(message, { transport: this.name, path: this.path });
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
