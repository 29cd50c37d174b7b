/**
 * Low-level file helpers for the file service: OS errors mapped to RpcErrors,
 * open flags, directory fsync and renameat2 (RENAME_EXCHANGE / RENAME_NOREPLACE)
 * through bun:ffi, since node:fs has neither.
 */
import { constants, promises as fsp } from "node:fs";
import { RpcError } from "../protocol/errors.ts";

export const O_RDONLY = constants.O_RDONLY;
export const O_WRONLY = constants.O_WRONLY;
export const O_CREAT = constants.O_CREAT;
export const O_EXCL = constants.O_EXCL;
export const O_TRUNC = constants.O_TRUNC;
export const O_NOFOLLOW = constants.O_NOFOLLOW ?? 0o400000;
export const O_NONBLOCK = constants.O_NONBLOCK ?? 0o4000;
export const O_DIRECTORY = constants.O_DIRECTORY ?? 0o200000;
/** Not exported by Bun's constants; Linux value. Keeps our fds out of children that exec spawns. */
export const O_CLOEXEC = (constants as Record<string, number>).O_CLOEXEC ?? 0o2000000;

export function errnoOf(error: unknown): string | undefined {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/** An OS error as the RpcError the host sees: ENOENT is NOT_FOUND, the rest OPERATION_FAILED with data.errno. */
export function osError(error: unknown, what: string, path?: string): RpcError {
  if (error instanceof RpcError) return error;
  const errno = errnoOf(error);
  if (errno === "ENOENT") return new RpcError("NOT_FOUND", `${what}: no such file or directory${path ? ` (${path})` : ""}`, { errno, path });
  if (errno === "ENOSPC" || errno === "EDQUOT") return new RpcError("OPERATION_FAILED", `${what}: no space left on the guest's filesystem`, { errno, path });
  const message = (error as Error | null)?.message ?? String(error);
  return new RpcError("OPERATION_FAILED", `${what}: ${message}`, { errno: errno ?? null, path });
}

/** fsync a directory, so a rename in it survives a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await fsp.open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  try {
    await handle.sync();
  } catch (error) {
    // Some filesystems refuse fsync on directories; the rename itself is done.
    if (errnoOf(error) !== "EINVAL") throw error;
  } finally {
    await handle.close();
  }
}

export async function ignoreErrors(work: () => Promise<unknown>): Promise<void> {
  try {
    await work();
  } catch {
    // Best-effort cleanup.
  }
}

// ---------------------------------------------------------------- renameat2

const AT_FDCWD = -100;
const RENAME_NOREPLACE = 1;
const RENAME_EXCHANGE = 2;

const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM", 2: "ENOENT", 13: "EACCES", 16: "EBUSY", 17: "EEXIST", 18: "EXDEV", 20: "ENOTDIR", 21: "EISDIR",
  22: "EINVAL", 28: "ENOSPC", 30: "EROFS", 36: "ENAMETOOLONG", 38: "ENOSYS", 39: "ENOTEMPTY", 40: "ELOOP",
};

interface Renameat2 {
  call(from: string, to: string, flags: number): number;
}

let renameat2Lib: Renameat2 | null | undefined;

async function loadRenameat2(): Promise<Renameat2 | null> {
  if (renameat2Lib !== undefined) return renameat2Lib;
  try {
    const { dlopen, FFIType, read } = await import("bun:ffi");
    const lib = dlopen("libc.so.6", {
      renameat2: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
      __errno_location: { args: [], returns: FFIType.ptr },
    });
    const cString = (s: string) => Buffer.from(`${s}\0`, "utf8");
    renameat2Lib = {
      call(from, to, flags) {
        const rc = lib.symbols.renameat2(AT_FDCWD, cString(from), AT_FDCWD, cString(to), flags);
        if (rc === 0) return 0;
        const where = lib.symbols.__errno_location();
        return where ? read.i32(where, 0) : 22;
      },
    };
  } catch {
    renameat2Lib = null; // Not glibc, or no renameat2: callers fall back.
  }
  return renameat2Lib;
}

function errnoError(errno: number, syscall: string, path: string): NodeJS.ErrnoException {
  const name = ERRNO_NAMES[errno] ?? `errno ${errno}`;
  const error = new Error(`${name}: ${syscall} '${path}'`) as NodeJS.ErrnoException;
  error.code = name;
  error.errno = errno;
  return error;
}

/**
 * rename that fails with EEXIST when `to` exists. renameat2(RENAME_NOREPLACE)
 * where the kernel and filesystem have it; else link+unlink for files (also
 * atomic against a concurrent creator) or check-then-rename for directories.
 */
export async function renameNoReplace(from: string, to: string, isDirectory: boolean): Promise<void> {
  const lib = await loadRenameat2();
  if (lib) {
    const errno = lib.call(from, to, RENAME_NOREPLACE);
    if (errno === 0) return;
    if (errno !== 22 && errno !== 38) throw errnoError(errno, "renameat2", to);
  }
  if (!isDirectory) {
    await fsp.link(from, to);
    await fsp.unlink(from);
    return;
  }
  try {
    await fsp.lstat(to);
    throw errnoError(17, "rename", to);
  } catch (error) {
    if (errnoOf(error) !== "ENOENT") throw error;
  }
  await fsp.rename(from, to);
}

/**
 * Atomically swap two paths (RENAME_EXCHANGE). Returns false where the kernel
 * or filesystem cannot, so the caller can fall back.
 */
export async function exchangePaths(a: string, b: string): Promise<boolean> {
  const lib = await loadRenameat2();
  if (!lib) return false;
  const errno = lib.call(a, b, RENAME_EXCHANGE);
  if (errno === 0) return true;
  if (errno === 22 || errno === 38) return false;
  throw errnoError(errno, "renameat2", b);
}
