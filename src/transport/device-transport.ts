/**
 * What the virtio-serial and isa-serial transports share: wait for the
 * device (hot-plug, slow boot), open it, serve it, and after it fails or goes
 * away wait for it and open it again, polling with a back-off and logging each
 * distinct problem once. What serving an open device means is each one's own.
 */
import { existsSync } from "node:fs";
import type { Logger } from "../log/logger.ts";
import type { AcceptConnection, Transport } from "./transport.ts";
import { Win32Error } from "./virtio-serial/windows.ts";

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

export abstract class DeviceTransport<Device extends { close(): void }> implements Transport {
  abstract readonly name: string;
  protected running = false;
  private device: Device | null = null;
  protected readonly backoff = new Backoff();
  /** Each distinct problem is logged once until it changes, not once per retry. */
  protected lastProblem = "";

  /** `noun` names the device in the log: "port", "serial device". */
  constructor(
    protected readonly path: string,
    protected readonly logger: Logger,
    private readonly noun: string,
    private readonly openDevice: (path: string) => Device,
    private readonly present: (path: string) => boolean,
  ) {}

  async start(accept: AcceptConnection): Promise<void> {
    this.running = true;
    void this.serve(accept);
  }

  async close(): Promise<void> {
    this.running = false;
    this.device?.close();
    this.device = null;
  }

  /** Serves the open device until it fails or hangs up, closing it (and waiting before the next open) as it needs. */
  protected abstract serveDevice(device: Device, accept: AcceptConnection): Promise<void>;

  protected problem(message: string): void {
    if (message === this.lastProblem) return;
    this.lastProblem = message;
    this.logger.warn(message, { transport: this.name, path: this.path });
  }

  private async serve(accept: AcceptConnection): Promise<void> {
    while (this.running) {
      if (!this.present(this.path)) {
        this.problem(`${this.noun} not present yet; waiting for it`);
        await Bun.sleep(this.backoff.next());
        continue;
      }
      let device: Device;
      try {
        device = this.openDevice(this.path);
      } catch (error) {
        this.problem(deviceMissing(error) ? `${this.noun} not present yet; waiting for it` : `cannot open ${this.noun}: ${(error as Error).message}`);
        await Bun.sleep(this.backoff.next());
        continue;
      }
      this.device = device;
      try {
        await this.serveDevice(device, accept);
      } finally {
        this.device = null;
      }
    }
  }
}
