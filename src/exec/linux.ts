/**
 * exec's processes on Linux: the child's stdout and stderr are kernel pipes,
 * as qemu-ga's are. Bun's own "pipe" is a socketpair, and open() refuses a
 * socket, so `echo x > /dev/stdout` or `tee /dev/stderr` in a command would
 * fail with ENXIO.
 *
 * The agent keeps the read ends (non-blocking, close-on-exec): the runner
 * takes what they hold at once when the child is done (readNow) and streams
 * them otherwise (Bun.file(fd).stream() reads a duplicate of the fd, so
 * closing ours is always safe).
 */
import { closeSync, readSync } from "node:fs";
import { ptr } from "bun:ffi";
import { errno, libc, LibcError } from "../platform/linux/libc.ts";
import { constants } from "node:os";
import { exitOf, spawnDetached, type OutputPipe, type ProcessOps } from "./child.ts";

const O_CLOEXEC = 0o2000000;
const O_NONBLOCK = 0o4000;
const F_GETFL = 3;
const F_SETFL = 4;

/** What readNow takes at most per call: a writer that keeps the pipe full must not hold the event loop. */
const READ_NOW_LIMIT = 256 * 1024;
const readBuffer = Buffer.allocUnsafe(64 * 1024);

/** The read end of a pipe a child writes to. */
export class KernelPipe implements OutputPipe {
  private closed = false;

  constructor(readonly fd: number) {}

  readNow(): { chunks: Uint8Array[]; ended: boolean } {
    const chunks: Uint8Array[] = [];
    let total = 0;
    while (total < READ_NOW_LIMIT) {
      let count: number;
      try {
        count = readSync(this.fd, readBuffer, 0, Math.min(readBuffer.length, READ_NOW_LIMIT - total), null);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "EAGAIN") return { chunks, ended: false };
        throw error;
      }
      if (count === 0) return { chunks, ended: true };
      chunks.push(new Uint8Array(readBuffer.subarray(0, count)));
      total += count;
    }
    return { chunks, ended: false };
  }

  stream(): ReadableStream<Uint8Array> {
    return Bun.file(this.fd).stream();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeSync(this.fd);
  }
}

/** pipe2(O_CLOEXEC), the read end made non-blocking (the write end, the child's, stays blocking). */
function openPipe(): { read: number; write: number } {
  const fds = new Int32Array(2);
  if (libc().pipe2(ptr(fds), O_CLOEXEC) !== 0) throw new LibcError("pipe2", errno());
  const [read, write] = [fds[0]!, fds[1]!];
  const flags = libc().fcntl(read, F_GETFL, 0);
  if (flags < 0 || libc().fcntl(read, F_SETFL, flags | O_NONBLOCK) < 0) {
    const code = errno();
    closeFds(read, write);
    throw new LibcError("fcntl", code);
  }
  return { read, write };
}

/**
 * kill(-pgid, signal): the whole process group of a detached child. Through
 * libc, not process.kill: it runs after every exit, when the group is usually
 * gone already, and process.kill throws for that (ESRCH), which in the TCG
 * guest cost more than the kill.
 */
export function killProcessGroup(pgid: number, signal: string): boolean {
  if (!Number.isInteger(pgid) || pgid <= 1) return false; // Never kill(-1) or kill(0).
  const number = constants.signals[signal as keyof typeof constants.signals];
  if (number === undefined) throw new Error(`unknown signal ${signal}`);
  return libc().kill(-pgid, number) === 0; // -1: ESRCH, the group is gone.
}

function closeFds(...fds: number[]): void {
  for (const fd of fds) closeSync(fd);
}

export const linuxProcessOps: ProcessOps = {
  spawn(request) {
    const stdout = openPipe();
    let stderr;
    try {
      stderr = openPipe();
    } catch (error) {
      closeFds(stdout.read, stdout.write);
      throw error;
    }
    try {
      const proc = spawnDetached(request, stdout.write, stderr.write);
      return { pid: proc.pid, stdout: new KernelPipe(stdout.read), stderr: new KernelPipe(stderr.read), exited: exitOf(proc) };
    } catch (error) {
      closeFds(stdout.read, stderr.read);
      throw error;
    } finally {
      closeFds(stdout.write, stderr.write); // The child has its own copies now.
    }
  },
  killGroup: killProcessGroup,
};
