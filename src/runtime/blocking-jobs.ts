/** What the blocking-calls worker can run (blocking-calls.ts): calls that wait in the kernel for as long as the disk takes. */
import { freezeMountNow } from "../fsfreeze/fifreeze.ts";
import { trimMountNow } from "../guest/fitrim.ts";

export const BLOCKING_JOBS = {
  fitrim: (args: { mountpoint: string; minimum: bigint }) => trimMountNow(args.mountpoint, args.minimum),
  fifreeze: (args: { mountpoint: string }) => freezeMountNow(args.mountpoint),
};

export type BlockingJobName = keyof typeof BLOCKING_JOBS;
export type BlockingArgs<N extends BlockingJobName> = Parameters<(typeof BLOCKING_JOBS)[N]>[0];
export type BlockingResult<N extends BlockingJobName> = ReturnType<(typeof BLOCKING_JOBS)[N]>;
