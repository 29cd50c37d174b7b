/** FIFREEZE on one mounted filesystem; run on the blocking-calls worker, as it waits for the filesystem's writers. */
import { closeSync, openSync } from "node:fs";
import { constants } from "node:os";
import { errno, errnoName, libc } from "../platform/linux/libc.ts";
import { strerror, strerrorOf } from "../guest/errors.ts";

/** _IOWR('X', 119, int) */
const FIFREEZE = 0xc0045877;

/** frozen: false when the filesystem cannot be frozen (EOPNOTSUPP) or already is (EBUSY); error: qemu-ga's words for any other failure. */
export type FreezeOutcome = { frozen: boolean } | { error: string };

export function freezeMountNow(mountpoint: string): FreezeOutcome {
  let fd: number;
  try {
    fd = openSync(mountpoint, "r");
  } catch (error) {
    return { error: `failed to open ${mountpoint}: ${strerror(error)}` };
  }
  try {
    if (libc().ioctl(fd, FIFREEZE, null) === 0) return { frozen: true };
    const code = errno();
    if (code === constants.errno.EOPNOTSUPP || code === constants.errno.EBUSY) return { frozen: false };
    return { error: `failed to freeze ${mountpoint}: ${strerrorOf(errnoName(code))}` };
  } finally {
    closeSync(fd);
  }
}
