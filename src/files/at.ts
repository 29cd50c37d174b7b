/**
 * Directory-fd file calls node:fs lacks, through libc (bun:ffi): openat2 with
 * RESOLVE_* flags, openat, mkdirat, renameat2, linkat, unlinkat. Failures
 * throw ErrnoExceptions with node:fs's `code` names, so osError maps them.
 */
import { closeSync, constants, fstatSync, type Stats } from "node:fs";
import { errno, errnoName, libc } from "../platform/linux/libc.ts";

export const AT_FDCWD = -100;
/** Not exported by Bun's constants; Linux value. Keeps our fds out of children that exec spawns. */
export const O_CLOEXEC = (constants as Record<string, number>).O_CLOEXEC ?? 0o2000000;
/** Not in Bun's constants; Linux values. */
export const O_PATH = 0o10000000;
export const RESOLVE_NO_MAGICLINKS = 0x02;
export const RESOLVE_NO_SYMLINKS = 0x04;
export const RESOLVE_BENEATH = 0x08;
export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;
const AT_REMOVEDIR = 0x200;

/** openat2's number on x86_64 and aarch64 (the generic table); other architectures fall back. */
const SYS_OPENAT2: Record<string, bigint> = { x64: 437n, arm64: 437n };

const cString = (s: string) => Buffer.from(`${s}\0`, "utf8");

export function errnoException(code: number, call: string, path: string): NodeJS.ErrnoException {
  const name = errnoName(code);
  const error = new Error(`${name}: ${call} '${path}'`) as NodeJS.ErrnoException;
  error.code = name;
  error.errno = code;
  error.syscall = call;
  return error;
}

function check(rc: number | bigint, call: string, path: string): number {
  if (Number(rc) < 0) throw errnoException(errno(), call, path);
  return Number(rc);
}

/** openat2(2): the whole resolution of `path` is confined by `resolve` (RESOLVE_*). */
export function openat2(dirfd: number, path: string, flags: number, mode: number, resolve: number): number {
  const nr = SYS_OPENAT2[process.arch];
  if (nr === undefined) throw errnoException(38 /* ENOSYS */, "openat2", path);
  // openat2 refuses a mode without O_CREAT (EINVAL), where openat ignores it.
  const how = new BigUint64Array([BigInt(flags | O_CLOEXEC), BigInt(flags & constants.O_CREAT ? mode : 0), BigInt(resolve)]);
  return check(libc().syscall(nr, BigInt(dirfd), cString(path), how, 24n), "openat2", path);
}

/** True when this kernel has openat2 and no seccomp filter refuses it. Probed once. */
let openat2Works: boolean | undefined;
export function hasOpenat2(): boolean {
  if (openat2Works !== undefined) return openat2Works;
  try {
    const fd = openat2(AT_FDCWD, "/", O_PATH | constants.O_DIRECTORY, 0, RESOLVE_NO_SYMLINKS);
    libc().close(fd);
    openat2Works = true;
  } catch {
    openat2Works = false; // ENOSYS (kernel < 5.6), EPERM (seccomp), or no libc to call it through.
  }
  return openat2Works;
}

export function openat(dirfd: number, path: string, flags: number, mode = 0): number {
  return check(libc().openat(dirfd, cString(path), flags | O_CLOEXEC, mode), "openat", path);
}

export function mkdirat(dirfd: number, name: string, mode: number): void {
  check(libc().mkdirat(dirfd, cString(name), mode), "mkdirat", name);
}

export function renameat2(fromDir: number, from: string, toDir: number, to: string, flags: number): void {
  check(libc().renameat2(fromDir, cString(from), toDir, cString(to), flags), "renameat2", to);
}

export function linkat(fromDir: number, from: string, toDir: number, to: string): void {
  check(libc().linkat(fromDir, cString(from), toDir, cString(to), 0), "linkat", to);
}

export function unlinkat(dirfd: number, name: string, directory = false): void {
  check(libc().unlinkat(dirfd, cString(name), directory ? AT_REMOVEDIR : 0), "unlinkat", name);
}

/** lstat of `name` in the directory `dirfd` (never following a symlink there), or null when it does not exist. */
export function lstatAt(dirfd: number, name: string): Stats | null {
  let fd: number;
  try {
    fd = openat(dirfd, name, O_PATH | constants.O_NOFOLLOW);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
  try {
    return fstatSync(fd);
  } finally {
    closeSync(fd);
  }
}
