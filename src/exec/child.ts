/**
 * One child process from spawn to result: its own session and process group,
 * both pipes drained to the end, output capped, the whole group killed at the
 * timeout and when the leader exits.
 *
 * Process groups: the child is spawned with Bun's `detached: true`, which calls
 * setsid(), so the child leads a new session and process group whose id is its
 * pid; kill(-pid, sig) then reaches it and every descendant that did not leave
 * the group itself (setsid/setpgid). The group is SIGKILLed
 * - at the timeout (timed_out: true), and
 * - as soon as the leader exits, so a command cannot leave background processes
 *   behind in its group (they would also hold the output pipes open).
 * A descendant that escaped into its own session cannot be reached that way;
 * if it keeps the pipes open, the run still ends at the timeout (plus a short
 * grace to collect what the pipes hold) and stops reading them.
 */
import type { Subprocess } from "bun";
import { constants } from "node:os";
import type { Result } from "../schema/methods.ts";
import { OutputCapture } from "./output.ts";

export type ExecResult = Result<"exec">;
export type StreamName = "stdout" | "stderr";

export interface SpawnRequest {
  /** The real file to execute. */
  file: string;
  /** argv[0] the child sees. */
  argv0: string;
  args: readonly string[];
  env: Record<string, string>;
  cwd: string;
  /** Written to stdin, which is then closed; null: stdin is /dev/null. */
  stdin: Uint8Array | null;
}

export interface ChildExit {
  exitCode: number | null;
  signal: string | null;
}

/** One output pipe of a child, as the runner reads it. */
export interface OutputPipe {
  /**
   * Reads what the pipe holds now, without waiting; `ended` once every writer
   * has closed it and all of it is read. Only a pipe that holds output back
   * while unread has it (a kernel pipe: the child waits while it is full), so
   * the runner may wait before reading and then take a short command's output
   * at once, without a stream.
   */
  readNow?(): { chunks: Uint8Array[]; ended: boolean };
  /** The rest of the output, as a stream; called at most once. */
  stream(): ReadableStream<Uint8Array>;
  /** Called once, when the runner is done with the pipe. */
  close(): void;
}

/** A spawned child as the runner needs it. */
export interface SpawnedChild {
  pid: number;
  stdout: OutputPipe;
  stderr: OutputPipe;
  exited: Promise<ChildExit>;
}

/** The OS calls behind a run (linux.ts, windows.ts); tests may wrap them. */
export interface ProcessOps {
  /** Starts the child as the leader of a new session/process group; throws like Bun.spawn (error.code ENOENT, EACCES, ...). */
  spawn(request: SpawnRequest): SpawnedChild;
  /** kill(-pgid, signal); false when no process of the group is left. */
  killGroup(pgid: number, signal: string): boolean;
}

export function signalName(signal: string | number | null | undefined): string | null {
  if (signal === null || signal === undefined) return null;
  if (typeof signal === "string") return signal;
  for (const [name, value] of Object.entries(constants.signals)) if (value === signal) return name;
  return `SIG${signal}`;
}

/** Bun.spawn of a request, detached (setsid: a new session and process group); stdout and stderr as given. */
export function spawnDetached<Output extends "pipe" | number>(request: SpawnRequest, stdout: Output, stderr: Output): Subprocess<"ignore" | Uint8Array, Output, Output> {
  return Bun.spawn({
    cmd: [request.file, ...request.args],
    argv0: request.argv0,
    env: request.env,
    cwd: request.cwd,
    stdin: request.stdin ?? "ignore",
    stdout,
    stderr,
    detached: true,
  });
}

/** How a spawned process ended, once it has. */
export function exitOf(proc: Subprocess): Promise<ChildExit> {
  return proc.exited.then(
    () => ({ exitCode: proc.signalCode ? null : proc.exitCode, signal: signalName(proc.signalCode) }),
    () => ({ exitCode: proc.exitCode, signal: signalName(proc.signalCode) }),
  );
}

/** Turns one stream's bytes into UTF-8 as they arrive (Windows code pages); `end` flushes a split character. */
export interface Transcoder {
  push(chunk: Uint8Array): Uint8Array;
  end(): Uint8Array;
}

export interface RunOptions {
  timeoutMs: number;
  maxOutputBytes: number;
  /** Output kept per stream for the result: at most what fits one reply frame. */
  resultBytes: number;
  /** After the timeout, how long to keep collecting what the pipes still hold. */
  drainGraceMs: number;
  /** performance.now() just before the spawn, for duration_ms. */
  startedAt: number;
  /** Kept output as it arrives, in order per stream (nothing past the cap). */
  onChunk?: (stream: StreamName, bytes: Uint8Array) => void;
  /** A transcoder per stream, applied before the caps; none: bytes pass as they are. */
  transcoder?: () => Transcoder;
}

interface Drain {
  done: Promise<void>;
  cancel(): void;
}

/**
 * How long a run that streams nothing waits for its child to exit before it
 * reads pipes that can be read without a stream. Most commands are done by
 * then, and their output is taken at once; a stream per pipe would cost Bun
 * a 256 KiB read buffer each, and the garbage collections they bring were
 * most of exec's tail latency (`true` after warm-up, p99: 2.1-2.6 ms with
 * streams, 1.6-1.9 without, qemu-ga 1.7-1.9). Nothing piles up meanwhile: such
 * a pipe holds 64 KiB, and a child that fills it waits.
 */
const EXIT_WAIT_MS = 10;

/** Resolves when `promise` settles (either way) or after `ms`, whichever comes first. */
export function settledOrAfter(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const elapsed = new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)));
  const settled = promise.then(
    () => {},
    () => {},
  );
  return Promise.race([settled, elapsed]).finally(() => clearTimeout(timer));
}

function drain(pipe: OutputPipe, capture: OutputCapture, name: StreamName, onChunk?: RunOptions["onChunk"], transcoder?: Transcoder): Drain {
  const take = (bytes: Uint8Array) => {
    const kept = capture.push(bytes);
    if (kept.length > 0 && onChunk) {
      try {
        onChunk(name, kept);
      } catch {
        // A listener's failure must not stop the draining.
      }
    }
  };
  const finishTranscoding = () => {
    const tail = transcoder?.end();
    if (tail?.length) take(tail);
  };
  if (pipe.readNow) {
    let now;
    try {
      now = pipe.readNow();
    } catch {
      return { done: Promise.resolve(), cancel: () => {} }; // Read error: nothing more to read.
    }
    for (const chunk of now.chunks) take(transcoder ? transcoder.push(chunk) : chunk);
    if (now.ended) {
      finishTranscoding();
      return { done: Promise.resolve(), cancel: () => {} };
    }
  }
  const reader = pipe.stream().getReader();
  const done = (async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return finishTranscoding();
        take(transcoder ? transcoder.push(value) : value);
      }
    } catch {
      // Read error or cancelled: what was read is kept.
    }
  })();
  return { done, cancel: () => void reader.cancel().catch(() => {}) };
}

export class ChildRun {
  readonly pid: number;
  /** The final result, once the process has exited and its output is collected. */
  result: ExecResult | null = null;
  readonly done: Promise<ExecResult>;
  private leaderExited = false;
  private timedOut = false;

  constructor(
    private readonly child: SpawnedChild,
    private readonly ops: ProcessOps,
    options: RunOptions,
  ) {
    this.pid = child.pid;
    this.done = this.finish(options);
    // Keep a rejection (there should be none) from being unhandled.
    this.done.catch(() => {});
  }

  /** True while the leader process has not exited. */
  get alive(): boolean {
    return !this.leaderExited;
  }

  /** Signals the whole process group; false (and nothing sent) once the leader has exited. */
  signal(signal: string): boolean {
    if (this.leaderExited) return false;
    return this.ops.killGroup(this.pid, signal);
  }

  private async finish(options: RunOptions): Promise<ExecResult> {
    const started = options.startedAt;
    const stdout = new OutputCapture(options.maxOutputBytes, options.resultBytes);
    const stderr = new OutputCapture(options.maxOutputBytes, options.resultBytes);
    const { stdout: stdoutPipe, stderr: stderrPipe } = this.child;

    let timeoutFired!: () => void;
    const timedOut = new Promise<void>((resolve) => (timeoutFired = resolve));
    const timer = setTimeout(() => {
      this.timedOut = true;
      this.ops.killGroup(this.pid, "SIGKILL");
      timeoutFired();
    }, options.timeoutMs);

    if (!options.onChunk && stdoutPipe.readNow && stderrPipe.readNow) await settledOrAfter(this.child.exited, EXIT_WAIT_MS);
    const drains = [
      drain(stdoutPipe, stdout, "stdout", options.onChunk, options.transcoder?.()),
      drain(stderrPipe, stderr, "stderr", options.onChunk, options.transcoder?.()),
    ];
    const drained = Promise.all(drains.map((d) => d.done));

    let exit: ChildExit;
    try {
      exit = await this.child.exited;
    } catch {
      exit = { exitCode: null, signal: null };
    }
    this.leaderExited = true;
    // Whatever is left of the group dies with its leader.
    this.ops.killGroup(this.pid, "SIGKILL");

    let graceTimer: ReturnType<typeof setTimeout> | undefined;
    const graceOver = timedOut.then(() => new Promise<void>((resolve) => (graceTimer = setTimeout(resolve, options.drainGraceMs))));
    await Promise.race([drained, graceOver]);
    clearTimeout(timer);
    clearTimeout(graceTimer);
    for (const d of drains) d.cancel();
    stdoutPipe.close();
    stderrPipe.close();

    this.result = {
      exit_code: exit.signal ? null : exit.exitCode,
      signal: exit.signal,
      stdout_base64: stdout.base64(),
      stderr_base64: stderr.base64(),
      stdout_truncated: stdout.truncated,
      stderr_truncated: stderr.truncated,
      timed_out: this.timedOut,
      duration_ms: Math.round((performance.now() - started) * 1000) / 1000,
    };
    return this.result;
  }
}
