/** The blocking-calls worker thread: runs one job per message, in order, and answers each when it returns. */
import { BLOCKING_JOBS, type BlockingJobName } from "./blocking-jobs.ts";

declare const self: Worker;

self.onmessage = (message: MessageEvent<{ name: BlockingJobName; args: never }>) => {
  self.postMessage(BLOCKING_JOBS[message.data.name](message.data.args));
};
