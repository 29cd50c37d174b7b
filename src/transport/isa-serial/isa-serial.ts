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
import { DeviceTransport, devicePresent } from "../device-transport.ts";
import type { AcceptConnection } from "../transport.ts";
import { PortConnection } from "../virtio-serial/virtio-serial.ts";
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

export class IsaSerialTransport extends DeviceTransport<SerialLine> {
  readonly name = "isa-serial";

  constructor(path: string, logger: Logger, openLine: OpenLine = openPlatformLine, present: (path: string) => boolean = devicePresent) {
    super(path, logger, "serial device", openLine, present);
  }

  protected async serveDevice(line: SerialLine, accept: AcceptConnection): Promise<void> {
    // Reopening a line that hung up again at once is not news.
    this.logger[this.lastProblem === HUNG_UP ? "debug" : "info"]("port open", { transport: this.name, path: this.path });
    const { received, failure } = await this.serveLine(line, accept);
    line.close();
    if (!this.running) return;
    if (received > 0) {
      this.backoff.reset();
      this.lastProblem = "";
    }
    this.problem(failure === undefined ? HUNG_UP : `serial line failed; reopening it: ${failure}`);
    await Bun.sleep(this.backoff.next());
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
}
