/**
 * guest-fstrim as qemu-ga does it: FITRIM on every block-backed mount, each
 * mount's outcome reported on its own (one that cannot trim does not fail
 * the others), listed last-mounted first as qemu-ga lists them.
 *
 * FITRIM blocks until the kernel has discarded every free extent, seconds or
 * more on a large disk; qemu-ga answers nothing meanwhile. The ioctls run on
 * the blocking-calls worker thread here, one mount after another, so pings
 * and other calls are still answered while a trim runs.
 */
import { runBlocking } from "../runtime/blocking-calls.ts";
import type { TrimOutcome } from "./fitrim.ts";
import { blockMounts } from "./inventory.ts";

export interface FstrimResult {
  path: string;
  trimmed?: number;
  minimum?: number;
  error?: string;
}

/** Trims one mounted filesystem: bytes trimmed, or why it could not be. */
export type TrimMount = (mountpoint: string, minimum: bigint) => Promise<TrimOutcome>;

/** FITRIM of one mount on the worker thread. */
const trimOnWorker: TrimMount = (mountpoint, minimum) => runBlocking("fitrim", { mountpoint, minimum });

export async function guestFstrim(
  minimum: number | undefined,
  mountpoints = blockMounts().map((m) => m.mountpoint),
  trim: TrimMount = trimOnWorker,
): Promise<{ paths: FstrimResult[] }> {
  const minlen = BigInt.asUintN(64, BigInt(minimum ?? 0));
  const paths: FstrimResult[] = [];
  for (const path of mountpoints) {
    const outcome = await trim(path, minlen);
    paths.push("error" in outcome ? { path, error: outcome.error } : { path, trimmed: outcome.trimmed, minimum: Number(BigInt.asIntN(64, minlen)) });
  }
  return { paths: paths.reverse() };
}
