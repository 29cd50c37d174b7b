/**
 * guest-fstrim as qemu-ga does it: FITRIM on every block-backed mount, each
 * mount's outcome reported on its own (one that cannot trim does not fail
 * the others), listed last-mounted first as qemu-ga lists them.
 *
 * FITRIM blocks until the kernel has discarded every free extent, seconds or
 * more on a large disk; qemu-ga answers nothing meanwhile. The ioctls run on
 * a worker thread here, one mount after another, so pings and other calls
 * are still answered while a trim runs.
 */
import { workerUrl } from "../runtime/worker-url.ts";
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

/** A worker thread that runs FITRIM (fstrim-worker.ts), one mount at a time, until closed. */
class TrimWorker {
  private readonly worker = new Worker(workerUrl("guest/fstrim-worker"));

  trim(mountpoint: string, minimum: bigint): Promise<TrimOutcome> {
    return new Promise((resolve, reject) => {
      this.worker.onmessage = (message: MessageEvent<TrimOutcome>) => resolve(message.data);
      this.worker.onerror = (event) => reject(new Error(`the fstrim worker failed: ${event.message}`));
      this.worker.postMessage({ mountpoint, minimum });
    });
  }

  close(): void {
    this.worker.terminate();
  }
}

/** `trim` replaces the worker (tests). */
export async function guestFstrim(minimum: number | undefined, mountpoints = blockMounts().map((m) => m.mountpoint), trim?: TrimMount): Promise<{ paths: FstrimResult[] }> {
  const minlen = BigInt.asUintN(64, BigInt(minimum ?? 0));
  const worker = trim || mountpoints.length === 0 ? null : new TrimWorker();
  const trimMount = trim ?? ((path: string, min: bigint) => worker!.trim(path, min));
  try {
    const paths: FstrimResult[] = [];
    for (const path of mountpoints) {
      const outcome = await trimMount(path, minlen);
      paths.push("error" in outcome ? { path, error: outcome.error } : { path, trimmed: outcome.trimmed, minimum: Number(BigInt.asIntN(64, minlen)) });
    }
    return { paths: paths.reverse() };
  } finally {
    worker?.close();
  }
}
