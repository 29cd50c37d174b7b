/**
 * fstrim.ts's worker thread: trims one mount per message and answers with
 * the outcome once FITRIM returns, which on a large disk takes seconds.
 */
import { trimMountNow } from "./fitrim.ts";

declare const self: Worker;

self.onmessage = (message: MessageEvent<{ mountpoint: string; minimum: bigint }>) => {
  self.postMessage(trimMountNow(message.data.mountpoint, message.data.minimum));
};
