/**
 * A pseudo-terminal pair made with bun:ffi and glibc alone (no socat, no
 * python): the slave stands in for a virtio-serial port (/dev/virtio-ports/...),
 * the master for QEMU's end of the chardev.
 *
 * The slave is switched to raw mode (cfmakeraw: no echo, no line editing, no
 * CR/NL translation, VMIN=1) so bytes cross unchanged in both directions. The
 * master is made non-blocking so the test reads it with a poll loop that can
 * time out instead of blocking the test's thread forever.
 */
import { dlopen, FFIType, ptr, CString } from "bun:ffi";
import { closeSync, readSync, writeSync } from "node:fs";
import { FrameCollector } from "./agent-process.ts";

const TCSANOW = 0;
const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;
/** struct termios is 60 bytes on x86_64 glibc; be generous. */
const TERMIOS_BYTES = 256;

const libc = dlopen("libc.so.6", {
  openpty: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  cfmakeraw: { args: [FFIType.ptr], returns: FFIType.void },
  tcgetattr: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  tcsetattr: { args: [FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  ttyname: { args: [FFIType.i32], returns: FFIType.ptr },
  fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
});

export interface Pty {
  /** The test's (QEMU's) side. Non-blocking. */
  readonly master: number;
  /** An fd on the slave held by the test, or -1 once closed with closeSlave(). */
  slave: number;
  /** /dev/pts/N: what the agent opens as its "virtio-serial port". */
  readonly slavePath: string;
  closeSlave(): void;
  close(): void;
}

function check(result: number, what: string): number {
  if (result < 0) throw new Error(`${what} failed (${result})`);
  return result;
}

/** Opens a pty pair with the slave in raw mode and the master non-blocking. */
export function openRawPty(): Pty {
  const pty = openPty();
  const termios = new Uint8Array(TERMIOS_BYTES);
  check(libc.symbols.tcgetattr(pty.slave, ptr(termios)), "tcgetattr");
  libc.symbols.cfmakeraw(ptr(termios));
  check(libc.symbols.tcsetattr(pty.slave, TCSANOW, ptr(termios)), "tcsetattr");
  return pty;
}

/** Opens a pty pair with the slave as the kernel makes it (cooked: echo, line editing, ^C) and the master non-blocking. */
export function openPty(): Pty {
  const fds = new Int32Array(2);
  check(libc.symbols.openpty(ptr(fds), ptr(fds, 4), null, null, null), "openpty");
  const master = fds[0]!;
  const slave = fds[1]!;
  const namePtr = libc.symbols.ttyname(slave);
  if (!namePtr) throw new Error("ttyname failed");
  const slavePath = new CString(namePtr).toString();
  const flags = check(libc.symbols.fcntl(master, F_GETFL, 0), "fcntl(F_GETFL)");
  check(libc.symbols.fcntl(master, F_SETFL, flags | O_NONBLOCK), "fcntl(F_SETFL)");
  const pty: Pty = {
    master,
    slave,
    slavePath,
    closeSlave() {
      if (pty.slave >= 0) closeSync(pty.slave);
      pty.slave = -1;
    },
    close() {
      pty.closeSlave();
      try {
        closeSync(master);
      } catch {
        // Already closed.
      }
    },
  };
  return pty;
}

/**
 * Reads the master in a poll loop and decodes reply frames (or, with
 * decodeFrames false, keeps the bytes in `bytes`, for QGA); write() writes
 * all the bytes (retrying on EAGAIN when the pty buffer is full).
 */
export class PtyPeer extends FrameCollector {
  private running = true;
  private readonly buffer = new Uint8Array(64 * 1024);
  /** Errors other than EAGAIN/EIO seen while reading, for diagnostics. */
  readonly readErrors: string[] = [];
  /** Reads that failed with EIO: no fd on the slave was open at that moment (a hang-up). */
  hangups = 0;
  private readonly loop: Promise<void>;

  /** Everything read, when frames are not decoded. */
  bytes = Buffer.alloc(0);

  constructor(
    private readonly fd: number,
    private readonly decodeFrames = true,
  ) {
    super();
    this.loop = this.readLoop();
  }

  private async readLoop(): Promise<void> {
    while (this.running) {
      let n = 0;
      try {
        n = readSync(this.fd, this.buffer, 0, this.buffer.length, null);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        // EAGAIN: nothing to read. EIO: no slave open right now (hang-up); keep polling.
        if (code === "EIO") this.hangups++;
        else if (code !== "EAGAIN") this.readErrors.push(String(error));
      }
      if (n > 0 && this.decodeFrames) this.push(this.buffer.subarray(0, n));
      else if (n > 0) this.bytes = Buffer.concat([this.bytes, this.buffer.subarray(0, n)]);
      else await Bun.sleep(5);
    }
  }

  async write(bytes: Uint8Array, timeoutMs = 5_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let offset = 0;
    while (offset < bytes.length) {
      try {
        offset += writeSync(this.fd, bytes, offset, bytes.length - offset);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EAGAIN") throw error;
        if (Date.now() > deadline) throw new Error(`pty write stalled with ${bytes.length - offset} bytes left`);
        await Bun.sleep(5);
      }
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}
