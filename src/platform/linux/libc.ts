/**
 * The few libc calls Bun has no API for (AF_VSOCK sockets, fcntl flags, poll,
 * pipes, termios, the directory-fd *at calls and the openat2 syscall), and
 * kill, whose Bun form throws when the process is gone; opened once on first
 * use through bun:ffi.
 */
import { dlopen, FFIType, read, type Pointer } from "bun:ffi";
import { constants } from "node:os";

function open() {
  return dlopen("libc.so.6", {
    socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    listen: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    connect: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
    send: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i64 },
    recv: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i64 },
    fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    pipe2: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    poll: { args: [FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
    kill: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    settimeofday: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    clock_gettime: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    ioctl: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
    tcgetattr: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    tcsetattr: { args: [FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    tcflush: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    cfmakeraw: { args: [FFIType.ptr], returns: FFIType.void },
    cfsetspeed: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    syscall: { args: [FFIType.i64, FFIType.i64, FFIType.ptr, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
    openat: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.u32], returns: FFIType.i32 },
    mkdirat: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    renameat2: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    linkat: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    unlinkat: { args: [FFIType.i32, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    __errno_location: { args: [], returns: FFIType.ptr },
  }).symbols;
}

let symbols: ReturnType<typeof open> | null = null;

export function libc(): ReturnType<typeof open> {
  return (symbols ??= open());
}

/** errno of the last failed call on this thread; read it right after the call. */
export function errno(): number {
  return read.i32(libc().__errno_location() as Pointer, 0);
}

/** Second names of a code, which os.constants.errno may list first (it lists ENOTSUP before EOPNOTSUPP). */
const ALIASES = new Set(["ENOTSUP", "EWOULDBLOCK", "EDEADLOCK"]);

/** The name Linux's headers and strerror go by: "EOPNOTSUPP" for 95, as callers compare against it. */
export function errnoName(code: number): string {
  for (const [name, value] of Object.entries(constants.errno)) if (value === code && !ALIASES.has(name)) return name;
  return "unknown error";
}

/** A failed libc call, named with its errno: "fcntl() failed: EBADF (errno 9)". */
export class LibcError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
  ) {
    super(`${call}() failed: ${errnoName(errno)} (errno ${errno})`);
    this.name = "LibcError";
  }
}
