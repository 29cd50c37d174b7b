/**
 * A serial line (qemu-ga's isa-serial method: /dev/ttyS1, COM1): one byte
 * stream with no connect or disconnect, so one session serves every host
 * that comes and goes on the other end. A host arriving may find stale bytes
 * of the one before it; both protocols resync over that (the native sync
 * marker, QGA's 0xFF + guest-sync-delimited), as on a virtio-serial port
 * whose host left unseen.
 *
 * The loop: wait for the device node, open it (raw mode), serve it until its
 * input ends — a hang-up, as when a pty's master closes — or fails, then
 * close it and open it again after a back-off that only resets once bytes
 * have flowed, so a line that stays hung up is retried at most once a second.
 */
import type { Logger } from "../../log/logger.ts";
import type { AcceptConnection, Transport } from "../transport.ts";
import { Backoff, deviceMissing, devicePresent, PortConnection } from "../virtio-serial/virtio-serial.ts";
import { LinuxSerialLine } from "./linux.ts";
import { openWindowsLine } from "./windows.ts";

/** The OS half of the transport: one open, configured line. */
export interface SerialLine {
  /** Ends when the line hangs up; errors when the device fails. */
  readStream(): ReadableStream<Uint8Array>;
  /** Bytes taken now; 0 when the line cannot take more yet. Throws when the device is broken. */
  writeSome(bytes: Uint8Array): number;
  close(): void;
}

export type OpenLine = (path: string) => SerialLine;

const HUNG_UP = "serial line hung up; reopening it";

const openPlatformLine: OpenLine = process.platform === "win32" ? (path) => openWindowsLine(path) : (path) => LinuxSerialLine.open(path);

export class IsaSerialTransport implements Transport {
  readonly name = "isa-serial";
  private running = false;
  private line: SerialLine | null = null;
  private readonly backoff = new Backoff();
  /** Each distinct problem is logged once until it changes, not once per retry. */
  private lastProblem = "";

  constructor(
    private readonly path: string,
    private readonly logger: Logger,
    private readonly openLine: OpenLine = openPlatformLine,
    private readonly present: (path: string) => boolean = devicePresent,
  ) {}

  async start(accept: AcceptConnection): Promise<void> {
    this.running = true;
    void this.serve(accept);
  }

  async close(): Promise<void> {
    this.running = false;
    this.line?.close();
    this.line = null;
  }

  private async serve(accept: AcceptConnection): Promise<void> {
    while (this.running) {
      if (!this.present(this.path)) {
        this.problem("serial device not present yet; waiting for it");
        await Bun.sleep(this.backoff.next());
        continue;
      }
      let line: SerialLine;
      try {
        line = this.openLine(this.path);
      } catch (error) {
        this.problem(deviceMissing(error) ? "serial device not present yet; waiting for it" : `cannot open serial device: ${(error as Error).message}`);
        await Bun.sleep(this.backoff.next());
        continue;
      }
      this.line = line;
      // Reopening a line that hung up again at once is not news.
      this.logger[this.lastProblem === HUNG_UP ? "debug" : "info"]("port open", { transport: this.name, path: this.path });
      const { received, failure } = await this.serveLine(line, accept);
      line.close();
      this.line = null;
      if (!this.running) break;
      if (received > 0) {
        this.backoff.reset();
        this.lastProblem = "";
      }
      this.problem(failure === undefined ? HUNG_UP : `serial line failed; reopening it: ${failure}`);
      await Bun.sleep(this.backoff.next());
    }
  }

  /** One session for as long as the line is up. */
  private async serveLine(line: SerialLine, accept: AcceptConnection): Promise<{ received: number; failure?: string }> {
    const connection = new PortConnection(this.name, line);
    connection.handler = accept(connection);
    try {
      await connection.pump(line.readStream());
      return { received: connection.received };
    } catch (error) {
      return { received: connection.received, failure: (error as Error).message };
    } finally {
      connection.markClosed();
    }
  }

  private problem(message: string): void {
    if (message === this.lastProblem) return;
    this.lastProblem = message;
    this.logger.warn(message, { transport: this.name, path: this.path });
  }
}
