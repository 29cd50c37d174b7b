/**
 * Calls that wait in the kernel for as long as a disk takes (FITRIM on a
 * large disk, FIFREEZE behind busy writers): run on one worker thread
 * (blocking-worker.ts), so the event loop goes on answering meanwhile. The
 * worker starts with the first call and stops after a second without one,
 * so an idle agent keeps no thread (a worker holds ~7 MiB), and a freeze's
 * mounts, frozen one after another, share one start.
 */
import type { BlockingArgs, BlockingJobName, BlockingResult } from "./blocking-jobs.ts";
import { workerUrl } from "./worker-url.ts";

const IDLE_MS = 1_000;

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

let worker: Worker | null = null;
/** Answers come back in the order the calls went out. */
const pending: Pending[] = [];
let idleTimer: ReturnType<typeof setTimeout> | null = null;

function startWorker(): Worker {
  const started = new Worker(workerUrl("runtime/blocking-worker"));
  started.onmessage = (message: MessageEvent<unknown>) => {
    pending.shift()?.resolve(message.data);
    if (pending.length === 0) armIdleTimer();
  };
  started.onerror = (event) => {
    stopWorker();
    for (const call of pending.splice(0)) call.reject(new Error(`the blocking-calls worker failed: ${event.message}`));
  };
  started.unref();
  return started;
}

function stopWorker(): void {
  if (idleTimer) clearTimeout(idleTimer);
  idleTimer = null;
  worker?.terminate();
  worker = null;
}

function armIdleTimer(): void {
  if (idleTimer) clearTimeout(idleTimer);
  idleTimer = setTimeout(stopWorker, IDLE_MS);
  idleTimer.unref();
}

/** Runs the job `name` on the worker thread; resolves with what it returned. */
export function runBlocking<N extends BlockingJobName>(name: N, args: BlockingArgs<N>): Promise<BlockingResult<N>> {
  if (idleTimer) clearTimeout(idleTimer);
  idleTimer = null;
  worker ??= startWorker();
  const target = worker;
  return new Promise((resolve, reject) => {
    pending.push({ resolve: resolve as (value: unknown) => void, reject });
    target.postMessage({ name, args });
  });
}
