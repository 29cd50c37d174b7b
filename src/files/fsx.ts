/**
 * Low-level file helpers for the file service: OS errors mapped to RpcErrors,
 * open flags, an async handle over a raw fd, directory fsync and renames in a
 * directory fd with RENAME_EXCHANGE / RENAME_NOREPLACE (renameat2 from at.ts).
 */
import { createHash } from "node:crypto";
import { close, constants, fchmod, fchown, fstat, fsync, promises as fsp, read, write, type Stats } from "node:fs";
import { promisify } from "node:util";
import { Base64Bytes } from "../protocol/base64.ts";
import { RpcError } from "../protocol/errors.ts";
import type { FileChunk } from "../services.ts";
import { errnoException, linkat, lstatAt, O_CLOEXEC, RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2, unlinkat } from "./at.ts";

export const O_RDONLY = constants.O_RDONLY;
export const O_WRONLY = constants.O_WRONLY;
export const O_CREAT = constants.O_CREAT;
export const O_EXCL = constants.O_EXCL;
export const O_TRUNC = constants.O_TRUNC;
export const O_NOFOLLOW = constants.O_NOFOLLOW ?? 0o400000;
export const O_NONBLOCK = constants.O_NONBLOCK ?? 0o4000;
export const O_DIRECTORY = constants.O_DIRECTORY ?? 0o200000;
export { O_CLOEXEC };

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

/** fsync an open directory, so a rename in it survives a crash. */
export async function fsyncFd(fd: number): Promise<void> {
  try {
    await new FdHandle(fd).sync();
  } catch (error) {
    // Some filesystems refuse fsync on directories; the rename itself is done.
    if (errnoOf(error) !== "EINVAL") throw error;
  }
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

/**
 * The part of node's FileHandle the file services use, over an fd that
 * openat/openat2 returned (node cannot wrap a raw fd in a FileHandle).
 */
export class FdHandle {
  private static readonly ops = {
    read: promisify(read),
    write: promisify(write),
    fsync: promisify(fsync),
    fchown: promisify(fchown),
    fchmod: promisify(fchmod),
    fstat: promisify(fstat),
    close: promisify(close),
  };

  constructor(readonly fd: number) {}

  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }> {
    return FdHandle.ops.read(this.fd, buffer, offset, length, position);
  }

  write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }> {
    return FdHandle.ops.write(this.fd, buffer, offset, length, position);
  }

  sync(): Promise<void> {
    return FdHandle.ops.fsync(this.fd);
  }

  chown(uid: number, gid: number): Promise<void> {
    return FdHandle.ops.fchown(this.fd, uid, gid);
  }

  chmod(mode: number): Promise<void> {
    return FdHandle.ops.fchmod(this.fd, mode);
  }

  stat(): Promise<Stats> {
    return FdHandle.ops.fstat(this.fd);
  }

  close(): Promise<void> {
    return FdHandle.ops.close(this.fd);
  }
}

export async function ignoreErrors(work: () => Promise<unknown>): Promise<void> {
  try {
    await work();
  } catch {
    // Best-effort cleanup.
  }
}

// ---------------------------------------------------------------- renames in a directory fd

/**
 * rename within the directory `dirFd` that fails with EEXIST when `to`
 * exists: RENAME_NOREPLACE where the kernel and filesystem have it; else
 * link + unlink for files (as atomic against a concurrent creator), or
 * check-then-rename for directories.
 */
export function renameNoReplaceAt(dirFd: number, from: string, to: string, isDirectory: boolean): void {
  try {
    renameat2(dirFd, from, dirFd, to, RENAME_NOREPLACE);
    return;
  } catch (error) {
    if (errnoOf(error) !== "EINVAL" && errnoOf(error) !== "ENOSYS") throw error;
  }
  if (!isDirectory) {
    linkat(dirFd, from, dirFd, to);
    unlinkat(dirFd, from);
    return;
  }
  if (lstatAt(dirFd, to)) throw errnoException(17, "rename", to);
  renameat2(dirFd, from, dirFd, to, 0);
}

/** Atomically swap two names in `dirFd` (RENAME_EXCHANGE); false where the kernel or filesystem cannot. */
export function exchangeAt(dirFd: number, a: string, b: string): boolean {
  try {
    renameat2(dirFd, a, dirFd, b, RENAME_EXCHANGE);
    return true;
  } catch (error) {
    if (errnoOf(error) === "EINVAL" || errnoOf(error) === "ENOSYS") return false;
    throw error;
  }
}

/**
 * copy_from_guest's answer for one chunk: up to `want` bytes read at `offset` into `buffer` (fewer when
 * the file shrank meanwhile), with their SHA-256 and whether they reach the end of a file of `size` bytes.
 * The content is a view of `buffer`; `release` runs once the reply no longer needs it.
 */
export async function readChunk(
  handle: { read(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }> },
  buffer: Buffer,
  offset: number,
  want: number,
  size: number,
  release?: () => void,
): Promise<FileChunk> {
  let filled = 0;
  while (filled < want) {
    const { bytesRead } = await handle.read(buffer, filled, want - filled, offset + filled);
    if (bytesRead === 0) break; // The file shrank under us.
    filled += bytesRead;
  }
  const chunk = buffer.subarray(0, filled);
  return {
    content_base64: new Base64Bytes(chunk, release),
    bytes: filled,
    sha256: createHash("sha256").update(chunk).digest("hex"),
    size,
    eof: offset + filled >= size,
  };
}

