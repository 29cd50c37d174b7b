/** FITRIM on one mounted filesystem, as qemu-ga reports it; run on the blocking-calls worker (fstrim.ts). */
import { closeSync, openSync } from "node:fs";
import { ptr } from "bun:ffi";
import { errno, errnoName, libc } from "../platform/linux/libc.ts";
import { strerror, strerrorOf } from "./errors.ts";

/** _IOWR('X', 121, struct fstrim_range) */
const FITRIM = 0xc0185879;

export type TrimOutcome = { trimmed: number } | { error: string };

/** Trims the filesystem mounted at `mountpoint`, blocking until the kernel is done: bytes trimmed, or why it could not be. */
export function trimMountNow(mountpoint: string, minimum: bigint): TrimOutcome {
  let fd: number;
  try {
    fd = openSync(mountpoint, "r");
  } catch (error) {
    return { error: `failed to open: ${strerror(error)}` };
  }
  try {
    // struct fstrim_range { u64 start, len, minlen }; the kernel writes the bytes trimmed into len.
    const range = new BigUint64Array([0n, 0xffff_ffff_ffff_ffffn, minimum]);
    if (libc().ioctl(fd, FITRIM, ptr(range)) === -1) {
      const name = errnoName(errno());
      return name === "ENOTTY" || name === "EOPNOTSUPP" ? { error: "trim not supported" } : { error: `failed to trim: ${strerrorOf(name)}` };
    }
    return { trimmed: Number(range[1]) };
  } finally {
    closeSync(fd);
  }
}
