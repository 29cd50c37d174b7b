/**
 * A serial line on Linux (/dev/ttyS1, or a pty slave in tests), opened as
 * qemu-ga opens its isa-serial channel: O_RDWR|O_NOCTTY|O_NONBLOCK, then
 * raw mode (termios.ts). Measured with Bun 1.4 on a pty:
 *  - Bun.file(fd).stream() on the O_NONBLOCK fd reads through epoll, no thread
 *    parked in read(); on a blocking fd it fails with ESPIPE (it tries pread);
 *  - Bun.file(path).stream() opens the device a second time without
 *    O_NOCTTY: a session leader (an agent under systemd) would make the line
 *    its controlling terminal and get SIGHUP when it hangs up, so it is not used;
 *  - when a pty's master closes, the stream ends (EIO/POLLHUP on the slave).
 */
import { closeSync, constants, openSync } from "node:fs";
import { NonBlockingCharDevice } from "../char-device.ts";
import type { SerialLine } from "./isa-serial.ts";
import { configureSerialLine } from "./termios.ts";

export class LinuxSerialLine extends NonBlockingCharDevice implements SerialLine {
  static open(path: string): LinuxSerialLine {
    const fd = openSync(path, constants.O_RDWR | constants.O_NOCTTY | constants.O_NONBLOCK);
    try {
      configureSerialLine(fd);
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    return new LinuxSerialLine(fd);
  }
}
