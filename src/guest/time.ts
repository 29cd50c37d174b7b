/**
 * The guest's clock. Setting it is done as qemu-ga does it: with a time,
 * check it, set the system clock and write it to the hardware clock
 * (hwclock -w); without one, set the system clock from the hardware clock
 * (hwclock -s). No hwclock: not supported, and nothing is changed.
 */
import { ptr } from "bun:ffi";
import { errno, errnoName, libc } from "../platform/linux/libc.ts";
import { findTool, SAFE_PATH } from "../power/power.ts";
import { failed, GuestError, strerrorOf, UNSUPPORTED } from "./errors.ts";

const CLOCK_REALTIME = 0;

/** The real-time clock now (so a change shows at once), in nanoseconds since the epoch (beyond 2^53, hence a bigint). */
export function realtimeNs(): bigint {
  const timespec = new BigInt64Array(2);
  if (libc().clock_gettime(CLOCK_REALTIME, ptr(timespec)) !== 0) return BigInt(Date.now()) * 1_000_000n;
  return timespec[0]! * 1_000_000_000n + timespec[1]!;
}

/** The wall clock in nanoseconds, in 100 ns steps as Windows' FILETIME has it (no libc there). */
export function systemTimeNs(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 10_000)) * 100n;
}

/** The years qemu-ga accepts (it refuses what a 32-bit time_t or the RTC cannot hold). */
const SETTABLE_YEARS = { from: 1970, before: 2070 } as const;

export async function setTime(timeNs: bigint | undefined): Promise<void> {
  const hwclock = findTool("hwclock");
  if (!hwclock) throw failed(UNSUPPORTED, "cannot set the time: the guest has no hwclock");
  if (timeNs !== undefined) {
    const seconds = timeNs / 1_000_000_000n;
    const year = new Date(Number(seconds) * 1000).getUTCFullYear();
    if (!(year >= SETTABLE_YEARS.from && year < SETTABLE_YEARS.before)) {
      throw new GuestError("invalid", `Invalid time ${timeNs}: the year must be from 1970 to 2069`);
    }
    const timeval = new BigInt64Array([seconds, (timeNs % 1_000_000_000n) / 1000n]);
    if (libc().settimeofday(ptr(timeval), null) !== 0) {
      throw failed(`Failed to set time to guest: ${strerrorOf(errnoName(errno()))}`); // error_setg_errno: strerror's words
    }
  }
  const child = Bun.spawn([hwclock, timeNs === undefined ? "-s" : "-w"], {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "ignore",
    env: { PATH: SAFE_PATH.join(":") },
  });
  if ((await child.exited) !== 0) {
    throw failed(timeNs === undefined ? "hwclock failed to set system time from hardware clock" : "hwclock failed to set hardware clock to system time");
  }
}
