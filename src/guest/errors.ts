/**
 * Why a guest operation failed, in words for both protocols: QGA answers
 * qemu-ga's exact text (`qemuDesc`, a GenericError), the native protocol the
 * error code of `reason` with `message` (the same text unless qemu-ga's
 * wording would mislead, as its "Success" for an unknown user does).
 */
import { errnoOf } from "../files/fsx.ts";

/** failed: the OS refused or failed it; unsupported: the guest has no way to do it at all. */
export type GuestFailure = "failed" | "not_found" | "invalid" | "unsupported";

export class GuestError extends Error {
  constructor(
    readonly reason: GuestFailure,
    readonly qemuDesc: string,
    message: string = qemuDesc,
  ) {
    super(message);
    this.name = "GuestError";
  }
}

/** qapi's QERR_UNSUPPORTED, as qemu-ga words it. */
export const UNSUPPORTED = "this feature or command is not currently supported";

export const failed = (desc: string, message?: string) => new GuestError("failed", desc, message);

/** strerror(3) wording, as qemu-ga's messages carry it. */
export const STRERROR: Record<string, string> = {
  ENOENT: "No such file or directory",
  EACCES: "Permission denied",
  EISDIR: "Is a directory",
  ENOTDIR: "Not a directory",
  EEXIST: "File exists",
  ELOOP: "Too many levels of symbolic links",
  EBADF: "Bad file descriptor",
  ENOSPC: "No space left on device",
  EROFS: "Read-only file system",
  EINVAL: "Invalid argument",
  EPERM: "Operation not permitted",
  EIO: "Input/output error",
  EBUSY: "Device or resource busy",
  ENODEV: "No such device",
  ENOMEM: "Cannot allocate memory",
  ENAMETOOLONG: "File name too long",
  ENXIO: "No such device or address",
};

/** strerror(3) of an errno name ("EPERM"), the name itself where the table lacks it. */
export function strerrorOf(name: string): string {
  return STRERROR[name] ?? name;
}

export function strerror(error: unknown): string {
  const code = errnoOf(error);
  return (code && STRERROR[code]) ?? (error as Error).message;
}
