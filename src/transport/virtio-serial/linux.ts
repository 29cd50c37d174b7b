/**
 * A virtio-serial port on Linux, as measured in a real guest:
 *  - the driver allows one open() at a time (a second gets EBUSY), so one
 *    O_RDWR|O_NONBLOCK fd serves both directions;
 *  - Bun.file(fd).stream() reads it through epoll (on a blocking fd it fails
 *    with ESPIPE); the stream ends when the host disconnects;
 *  - writeSync never blocks (EAGAIN when the host is away or not reading), so
 *    no thread of Bun's small I/O pool is ever parked on the port;
 *  - while no host is connected, read() returns 0 and poll() reports POLLHUP
 *    at once, so neither can wait; the driver sends SIGIO on host connect and
 *    disconnect when O_ASYNC is set, which is what waitForHost() sleeps on;
 *  - after a hot-unplug poll() still reports POLLHUP, but read() fails with
 *    ENODEV: that is how a removed port is told from an absent host.
 */
import { constants, openSync, readSync } from "node:fs";
import { ptr } from "bun:ffi";
import { errno, libc, LibcError } from "../../platform/linux/libc.ts";
import { NonBlockingCharDevice } from "../char-device.ts";
import type { PortDevice } from "./virtio-serial.ts";

const F_GETFL = 3;
const F_SETFL = 4;
const F_SETOWN = 8;
const O_ASYNC = 0o20000;
const POLLIN = 0x1;
const POLLOUT = 0x4;
const POLLERR = 0x8;
const POLLHUP = 0x10;
const POLLNVAL = 0x20;

/** SIGIO can be lost or coalesced; look again at least this often. */
const HOST_RECHECK_MS = 2_000;

const sigioWaiters = new Set<() => void>();
let sigioInstalled = false;

/** The default action of SIGIO ends the process: the handler must be in place before any O_ASYNC. */
function installSigioHandler(): void {
  if (sigioInstalled) return;
  sigioInstalled = true;
  process.on("SIGIO", () => {
    for (const wake of [...sigioWaiters]) wake();
  });
}

export class LinuxPortDevice extends NonBlockingCharDevice implements PortDevice {
  private readonly scratch = new Uint8Array(4096);


  static open(path: string): LinuxPortDevice {
    return new LinuxPortDevice(openSync(path, constants.O_RDWR | constants.O_NONBLOCK | constants.O_NOCTTY));
  }

  hostConnected(): boolean {
    const pollfd = new Int16Array(4);
    new Int32Array(pollfd.buffer)[0] = this.fd;
    pollfd[2] = POLLIN | POLLOUT;
    if (libc().poll(ptr(pollfd), 1, 0) < 0) throw new LibcError("poll", errno());
    const revents = pollfd[3]!;
    if (revents & (POLLERR | POLLNVAL)) throw new Error(`port is in error (poll revents 0x${revents.toString(16)})`);
    if ((revents & POLLHUP) === 0) return true;
    // No host, or no port any more: a non-blocking read tells which (ENODEV throws).
    for (;;) {
      let n: number;
      try {
        n = readSync(this.fd, this.scratch);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "EAGAIN") return true; // a host connected meanwhile
        throw error;
      }
      if (n === 0) return false;
      // Bytes a departed host sent last: the next host starts a fresh stream (and resyncs), so drop them.
    }
  }

  async waitForHost(stillWanted: () => boolean): Promise<void> {
    installSigioHandler();
    const lib = libc();
    const flags = lib.fcntl(this.fd, F_GETFL, 0);
    if (flags < 0 || lib.fcntl(this.fd, F_SETOWN, process.pid) < 0 || lib.fcntl(this.fd, F_SETFL, flags | O_ASYNC) < 0) {
      throw new LibcError("fcntl", errno());
    }
    try {
      while (stillWanted() && !this.hostConnected()) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(wake, HOST_RECHECK_MS);
          function wake() {
            clearTimeout(timer);
            sigioWaiters.delete(wake);
            resolve();
          }
          sigioWaiters.add(wake);
        });
      }
    } finally {
      // While connected, a signal per arriving message would only cost wake-ups.
      lib.fcntl(this.fd, F_SETFL, flags);
    }
  }
}
