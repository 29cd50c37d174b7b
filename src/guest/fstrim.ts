/**
 * guest-fstrim as qemu-ga does it: FITRIM on every block-backed mount, each
 * mount's outcome reported on its own (one that cannot trim does not fail
 * the others), listed last-mounted first as qemu-ga lists them.
 */
import { closeSync, openSync } from "node:fs";
import { ptr } from "bun:ffi";
import { errno, errnoName, libc } from "../platform/linux/libc.ts";
import { strerror, strerrorOf } from "./errors.ts";
import { blockMounts } from "./inventory.ts";

/** _IOWR('X', 121, struct fstrim_range) */
const FITRIM = 0xc0185879;

export interface FstrimResult {
  path: string;
  trimmed?: number;
  minimum?: number;
  error?: string;
}

/** Trims one mounted filesystem: bytes trimmed, or why it could not be. */
export type TrimMount = (mountpoint: string, minimum: bigint) => { trimmed: number } | { error: string };

export function trimMount(mountpoint: string, minimum: bigint): { trimmed: number } | { error: string } {
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

export function guestFstrim(minimum: number | undefined, mountpoints = blockMounts().map((m) => m.mountpoint), trim: TrimMount = trimMount): { paths: FstrimResult[] } {
  const minlen = BigInt.asUintN(64, BigInt(minimum ?? 0));
  const paths = mountpoints.map((path): FstrimResult => {
    const outcome = trim(path, minlen);
    return "error" in outcome ? { path, error: outcome.error } : { path, trimmed: outcome.trimmed, minimum: Number(BigInt.asIntN(64, minlen)) };
  });
  return { paths: paths.reverse() };
}
