/**
 * guest-set-time as qemu-ga does it: with a time, check it, set the system
 * clock and write it to the hardware clock (hwclock -w); without one, set the
 * system clock from the hardware clock (hwclock -s). No hwclock: unsupported.
 */
import { ptr } from "bun:ffi";
import { errno, errnoName, libc } from "../platform/linux/libc.ts";
import { findTool, SAFE_PATH } from "../power/power.ts";
import { genericError, strerrorOf } from "./errors.ts";

/** qapi's QERR_UNSUPPORTED, as qemu-ga answers it. */
export const UNSUPPORTED = "this feature or command is not currently supported";

export async function guestSetTime(timeNs: bigint | undefined): Promise<Record<string, never>> {
  const hwclock = findTool("hwclock");
  if (!hwclock) throw genericError(UNSUPPORTED);
  if (timeNs !== undefined) {
    const seconds = timeNs / 1_000_000_000n;
    const year = new Date(Number(seconds) * 1000).getUTCFullYear();
    if (!(year >= 1970 && year < 2070)) throw genericError(`Invalid time ${timeNs}: the year must be from 1970 to 2069`);
    const timeval = new BigInt64Array([seconds, (timeNs % 1_000_000_000n) / 1000n]);
    if (libc().settimeofday(ptr(timeval), null) !== 0) {
      throw genericError(`Failed to set time to guest: ${strerrorOf(errnoName(errno()))}`); // error_setg_errno: strerror's words
    }
  }
  const child = Bun.spawn([hwclock, timeNs === undefined ? "-s" : "-w"], {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "ignore",
    env: { PATH: SAFE_PATH.join(":") },
  });
  if ((await child.exited) !== 0) {
    throw genericError(timeNs === undefined ? "hwclock failed to set system time from hardware clock" : "hwclock failed to set hardware clock to system time");
  }
  return {};
}
