import { z } from "zod";
import { base64 } from "./common.ts";

/** Signals a host may send with exec_kill. */
export const EXEC_SIGNALS = ["SIGTERM", "SIGKILL", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGSTOP", "SIGCONT"] as const;

const execParams = {
  command: z.string().min(1).describe("A name or absolute path that must resolve to an allowed command; never run through a shell"),
  args: z.array(z.string()).max(4096).default([]).describe("Arguments, passed as they are"),
  env: z
    .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "must be a variable name"), z.string())
    .default({})
    .describe("Extra environment variables; loader variables (LD_PRELOAD, LD_LIBRARY_PATH, ...) are refused"),
  cwd: z.string().min(1).optional().describe("Working directory (absolute); default /"),
  stdin_base64: base64.optional().describe("Bytes written to the process's stdin, which is then closed"),
  timeout_ms: z.number().int().min(1).max(86_400_000).optional().describe("Kill the whole process group after this long; default [limits] exec_timeout_ms"),
  max_output_bytes: z
    .number()
    .int()
    .min(0)
    .optional()
    .describe("Cap per stream; default and ceiling [limits] exec_max_output_bytes, and at most what fits one reply frame (about 6 MiB per stream at 16 MiB frames)"),
};

export const execResult = z.strictObject({
  exit_code: z.number().int().nullable().describe("Exit status, or null when a signal ended the process"),
  signal: z.string().nullable().describe("Name of the signal that ended the process, or null"),
  stdout_base64: z.string(),
  stderr_base64: z.string(),
  stdout_truncated: z.boolean(),
  stderr_truncated: z.boolean(),
  timed_out: z.boolean(),
  duration_ms: z.number().nonnegative(),
});

const handle = z.string().min(1).max(64).describe("Handle from exec_start");

export const EXEC_METHODS = {
  exec: {
    summary: "Run an allowlisted command to completion and return its exit status and output (needs enable_exec).",
    params: z.strictObject(execParams),
    result: execResult,
  },
  exec_start: {
    summary: "Start an allowlisted command and return a handle at once; with stream, output arrives as exec_output notifications.",
    params: z.strictObject({
      ...execParams,
      stream: z.boolean().default(false).describe("Push output chunks as exec_output notifications, and exec_exit at the end"),
    }),
    result: z.strictObject({ handle, pid: z.number().int() }),
  },
  exec_status: {
    summary: "State of a started command; waits up to wait_ms for it to finish. Finished records are kept for a bounded time and count.",
    params: z.strictObject({
      handle,
      wait_ms: z.number().int().min(0).max(600_000).default(0).describe("Long-poll: return as soon as the process exits, or after this long"),
    }),
    result: z.strictObject({
      handle,
      pid: z.number().int(),
      running: z.boolean(),
      result: execResult.nullable().describe("Exit status and output once the process has finished; null while it runs"),
    }),
  },
  exec_kill: {
    summary: "Send a signal to the whole process group of a started command.",
    params: z.strictObject({ handle, signal: z.enum(EXEC_SIGNALS).default("SIGTERM") }),
    result: z.strictObject({ handle, signal: z.enum(EXEC_SIGNALS), running: z.boolean().describe("Whether the process was still running when signalled") }),
  },
} as const;

/** Messages the agent pushes without a request (JSON-RPC notifications). */
export const EXEC_NOTIFICATIONS = {
  exec_output: {
    summary: "A chunk of output of a command started with stream: true, in order per stream.",
    params: z.strictObject({
      handle,
      stream: z.enum(["stdout", "stderr"]),
      seq: z.number().int().nonnegative().describe("Counts chunks of this handle from 0, both streams together"),
      data_base64: z.string(),
    }),
  },
  exec_exit: {
    summary: "A command started with stream: true has finished; the same result exec_status gives.",
    params: z.strictObject({ handle, result: execResult }),
  },
} as const;
