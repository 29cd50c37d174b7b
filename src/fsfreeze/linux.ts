/** FIFREEZE / FITHAW through bun:ffi on the mounts qemu-ga would freeze (block-backed, as guest-fstrim trims). */
import { closeSync, openSync } from "node:fs";
import { constants } from "node:os";
import { errno, errnoName, libc } from "../platform/linux/libc.ts";
import { RpcError } from "../protocol/errors.ts";
import { strerror, strerrorOf } from "../guest/errors.ts";
import { blockMounts } from "../guest/inventory.ts";
import type { FreezeOps } from "./fsfreeze.ts";

/** _IOWR('X', 119, int) and _IOWR('X', 120, int). */
const FIFREEZE = 0xc0045877;
const FITHAW = 0xc0045878;

function openMount(mountpoint: string): number {
  try {
    return openSync(mountpoint, "r");
  } catch (error) {
    throw new RpcError("OPERATION_FAILED", `failed to open ${mountpoint}: ${strerror(error)}`);
  }
}

export const linuxFreezeOps: FreezeOps = {
  mounts: () => blockMounts().map((mount) => mount.mountpoint),
  freeze(mountpoint) {
    const fd = openMount(mountpoint);
    try {
      if (libc().ioctl(fd, FIFREEZE, null) === 0) return true;
      const code = errno();
      if (code === constants.errno.EOPNOTSUPP || code === constants.errno.EBUSY) return false;
      throw new RpcError("OPERATION_FAILED", `failed to freeze ${mountpoint}: ${strerrorOf(errnoName(code))}`);
    } finally {
      closeSync(fd);
    }
  },
  thaw(mountpoint) {
    let fd: number;
    try {
      fd = openSync(mountpoint, "r");
    } catch {
      return false; // qemu-ga skips a mount it cannot open on thaw
    }
    try {
      // A filesystem frozen n times needs n thaws; the first failure means it is thawed.
      let thawed = false;
      while (libc().ioctl(fd, FITHAW, null) === 0) thawed = true;
      return thawed;
    } finally {
      closeSync(fd);
    }
  },
};
