import { errnoOf } from "../files/fsx.ts";

/** qemu-ga's error classes; every other failure is a GenericError with a human desc. */
export type QgaErrorClass = "GenericError" | "CommandNotFound";

export class QgaError extends Error {
  constructor(
    readonly errorClass: QgaErrorClass,
    readonly desc: string,
  ) {
    super(desc);
    this.name = "QgaError";
  }
}

export const genericError = (desc: string) => new QgaError("GenericError", desc);

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
};

/** strerror(3) of an errno name ("EPERM"), the name itself where the table lacks it. */
export function strerrorOf(name: string): string {
  return STRERROR[name] ?? name;
}

export function strerror(error: unknown): string {
  const code = errnoOf(error);
  return (code && STRERROR[code]) ?? (error as Error).message;
}
