/**
 * Bun's allocator, mimalloc, gives memory back to the system 10 ms after it
 * is freed (its purge_delay). A file transfer frees and allocates multi-MB
 * buffers and strings every few milliseconds, so each chunk faulted its pages
 * in again: on the bench machine, a PVM guest where a page fault is costly,
 * that was most of a transfer's CPU. With a delay of a second, memory freed
 * during a transfer is used again (back-to-back 64 MiB round trips there:
 * writes 135-190 MiB/s after the first, against 75-105; reads 250-270
 * against 85-95), and what a quiet agent no longer needs still goes back:
 * RSS 5 s after a transfer was 81.5 MiB, as with 10 ms (never purging, it
 * stayed at the 127 MiB peak).
 *
 * mimalloc reads its options from the environment once, as the process
 * starts, before any JavaScript runs, so on Linux the agent starts itself
 * again with the option set: execve keeps the pid, the arguments (from
 * /proc/self/cmdline) and every descriptor, so systemd, socket activation and
 * the stdio transport see the same process. A MIMALLOC_PURGE_DELAY already in
 * the environment is the operator's, and kept. agent-allocator.ts calls this
 * as the first thing main.ts imports, so that nothing else has run when the
 * process is replaced.
 */
import { readFileSync } from "node:fs";
import { hostVerbOf, isTransferVerb } from "../cli/verbs.ts";

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

export const PURGE_DELAY_VARIABLE = "MIMALLOC_PURGE_DELAY";
/** The purge delay of the agent and of the CLI's push and pull, in ms. */
export const AGENT_PURGE_DELAY_MS = "1000";
/** Set across the execve, so the restarted process knows the variable is ours and does not start again. */
export const RESTARTED_VARIABLE = "KVM_MANAGER_AGENT_ALLOCATOR_SET";

/**
 * What to do at start-up, given the environment: start again with `env`, or
 * go on (having dropped our own variables, so that the commands the agent
 * runs do not inherit them).
 */
export function allocatorStep(env: Record<string, string | undefined>, delayMs: string): { restartWith: Record<string, string> } | { dropFromEnv: string[] } {
  if (env[RESTARTED_VARIABLE] === delayMs) return { dropFromEnv: [RESTARTED_VARIABLE, PURGE_DELAY_VARIABLE] };
  if (env[PURGE_DELAY_VARIABLE] !== undefined) return { dropFromEnv: [] };
  const restartWith: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) if (value !== undefined) restartWith[name] = value;
  restartWith[PURGE_DELAY_VARIABLE] = delayMs;
  restartWith[RESTARTED_VARIABLE] = delayMs;
  return { restartWith };
}

/**
 * Whether a run with these arguments (main.ts's, without the executable) is
 * worth the second start, about 45 ms here: the agent, whose options all start
 * with "-" (qemu-ga's too), and push / pull, which move a file chunk by chunk.
 * A one-shot host command (ping, a single copy_from_guest, methods) frees no
 * buffer it would allocate again, so it starts once.
 */
export function movesBulkData(args: readonly string[]): boolean {
  const verb = hostVerbOf(args);
  return verb === undefined || isTransferVerb(verb);
}

/** Makes this process run with mimalloc's purge delay at `delayMs` (-1: never purge), restarting it once if need be. */
export function runWithPurgeDelay(delayMs: string): void {
  if (process.platform !== "linux") return; // No execve on Windows; the default stays.
  const step = allocatorStep(process.env, delayMs);
  if ("dropFromEnv" in step) {
    for (const name of step.dropFromEnv) delete process.env[name];
    return;
  }
  let argv: string[];
  try {
    // The process's own argv: in a compiled binary, process.argv[1] is a virtual path, not an argument.
    // Not valid UTF-8 (an argument execve would not pass back byte for byte), or no /proc: run with the default.
    argv = strictUtf8.decode(readFileSync("/proc/self/cmdline")).split("\0").slice(0, -1);
  } catch {
    return;
  }
  if (argv.length === 0) return;
  try {
    process.execve!(process.execPath, argv, step.restartWith);
  } catch {
    // execve failed and this process goes on unchanged, with the default purge delay.
  }
}
