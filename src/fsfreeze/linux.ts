/**
 * FIFREEZE / FITHAW through bun:ffi on the mounts qemu-ga would freeze
 * (block-backed, as guest-fstrim trims). FIFREEZE waits for the filesystem's
 * writers to finish, so it runs on the blocking-calls worker (fifreeze.ts);
 * FITHAW returns at once, and runs here.
 */
import { closeSync, openSync } from "node:fs";
import { libc } from "../platform/linux/libc.ts";
import { RpcError } from "../protocol/errors.ts";
import { blockMounts } from "../guest/inventory.ts";
import { runBlocking } from "../runtime/blocking-calls.ts";
import type { FreezeOps } from "./fsfreeze.ts";

/** _IOWR('X', 120, int) */
const FITHAW = 0xc0045878;

export const linuxFreezeOps: FreezeOps = {
  mounts: () => blockMounts().map((mount) => mount.mountpoint),
  async freeze(mountpoint) {
    const outcome = await runBlocking("fifreeze", { mountpoint });
    if ("error" in outcome) throw new RpcError("OPERATION_FAILED", outcome.error);
    return outcome.frozen;
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
