/**
 * exec, exec_start, exec_status, exec_kill: allowlisted commands, never a shell.
 * The dispatcher has already checked [security] enable_exec and the params'
 * schema; everything else is decided here (see policy.ts for the rules on
 * commands and environment, child.ts for process groups and output).
 *
 * Error codes:
 * - FORBIDDEN: command not allowlisted (or missing: no existence oracle),
 *   relative command path, refused environment variable.
 * - INVALID_PARAMS: relative cwd, NUL bytes in args/env/cwd.
 * - NOT_FOUND: cwd missing or not a directory; unknown or expired handle;
 *   the allowlisted file vanished since start-up (spawn ENOENT).
 * - TOO_LARGE: exec_max_concurrent processes already running (data.limit).
 * - OPERATION_FAILED: spawn refused by the OS (data.errno, e.g. EACCES).
 */
import type { AgentConfig } from "../config/schema.ts";
import type { Logger } from "../log/logger.ts";
import { base64Buffer } from "../protocol/base64.ts";
import { RpcError } from "../protocol/errors.ts";
import type { Params, Result } from "../schema/methods.ts";
import type { CallContext, ExecService } from "../services.ts";
import { ChildRun, settledOrAfter, type ExecResult, type ProcessOps, type StreamName, type Transcoder } from "./child.ts";
import { linuxProcessOps } from "./linux.ts";
import { notificationPieceBytes, resultFitBytes, splitBytes } from "./output.ts";
import {
  authorizeCommand,
  buildAllowlist,
  buildChildEnv,
  checkArgs,
  checkCwd,
  nodeFsProbe,
  POSIX_COMMANDS,
  type AllowedEntry,
  type Allowlist,
  type CommandPlatform,
  type FsProbe,
} from "./policy.ts";

export interface ExecDeps {
  fs: FsProbe;
  processes: ProcessOps;
  /** Clock for record expiry (ms). */
  now(): number;
  /** Handles for exec_start. */
  newHandle(): string;
  /** After a timeout, how long to keep reading what the pipes still hold. */
  drainGraceMs: number;
  /** Search path, path syntax and environment rules (Windows: exec/windows.ts). */
  platform: CommandPlatform;
  /** Output in another encoding than UTF-8 (a Windows code page) is re-encoded per stream; null: as it is. */
  transcoder: (() => Transcoder) | null;
}

interface ExecRecord {
  handle: string;
  run: ChildRun;
  /** deps.now() when the run finished; null while it runs. */
  finishedAt: number | null;
}

type ExecParams = Params<"exec">;

interface Prepared {
  entry: AllowedEntry;
  args: string[];
  env: Record<string, string>;
  cwd: string;
  stdin: Uint8Array | null;
  timeoutMs: number;
  maxOutputBytes: number;
}

export class ExecManager implements ExecService {
  readonly allowlist: Allowlist;
  private readonly deps: ExecDeps;
  private readonly records = new Map<string, ExecRecord>();
  /** Runs (exec and exec_start) whose result is not in yet. */
  private readonly active = new Set<ChildRun>();

  constructor(
    private readonly config: AgentConfig,
    private readonly logger: Logger,
    deps: Partial<ExecDeps> = {},
  ) {
    this.deps = {
      fs: deps.fs ?? nodeFsProbe,
      processes: deps.processes ?? linuxProcessOps,
      now: deps.now ?? Date.now,
      newHandle: deps.newHandle ?? (() => crypto.randomUUID()),
      drainGraceMs: deps.drainGraceMs ?? 1_000,
      platform: deps.platform ?? POSIX_COMMANDS,
      transcoder: deps.transcoder ?? null,
    };
    this.allowlist = buildAllowlist(config.security.allowed_commands, this.deps.fs, this.deps.platform);
    for (const { configured, reason } of this.allowlist.ignored) {
      this.logger.warn("allowed_commands entry ignored", { command: configured, reason });
    }
  }

  /** Processes running now (they count against exec_max_concurrent). */
  get runningCount(): number {
    return this.active.size;
  }

  /** Handles kept (running or finished and not yet expired). */
  get recordCount(): number {
    return this.records.size;
  }

  async run(params: ExecParams): Promise<Result<"exec">> {
    const run = this.launch(this.prepare(params), "exec");
    return run.done;
  }

  start(params: Params<"exec_start">, context: CallContext): Result<"exec_start"> {
    const prepared = this.prepare(params);
    this.prune();
    const handle = this.deps.newHandle();
    const onChunk = params.stream ? this.streamer(handle, context) : undefined;
    const run = this.launch(prepared, "exec_start", handle, onChunk);
    const record: ExecRecord = { handle, run, finishedAt: null };
    this.records.set(handle, record);
    void run.done.then((result) => {
      record.finishedAt = this.deps.now();
      if (params.stream) safeNotify(context, this.logger, () => context.notify("exec_exit", { handle, result }));
      this.prune();
      // Free the output at the TTL even if no call comes to prune it (setTimeout's ceiling is 2^31-1 ms).
      setTimeout(() => this.prune(), Math.min(this.config.limits.exec_records_ttl_seconds * 1000 + 50, 0x7fffffff)).unref?.();
    }).catch((error) => this.logger.error("exec record bookkeeping failed", { handle, error: String(error) }));
    return { handle, pid: run.pid };
  }

  async status(params: Params<"exec_status">): Promise<Result<"exec_status">> {
    const record = this.find(params.handle);
    if (record.run.result === null && params.wait_ms > 0) await settledOrAfter(record.run.done, params.wait_ms);
    return { handle: record.handle, pid: record.run.pid, running: record.run.result === null, result: record.run.result };
  }

  kill(params: Params<"exec_kill">): Result<"exec_kill"> {
    const record = this.find(params.handle);
    const running = record.run.alive;
    if (running) record.run.signal(params.signal);
    this.logger.info("exec_kill", { handle: record.handle, pid: record.run.pid, signal: params.signal, running });
    return { handle: record.handle, signal: params.signal, running };
  }

  /** SIGKILLs every running process group (for agent shutdown); records stay until they expire. */
  killAll(): void {
    for (const run of this.active) run.signal("SIGKILL");
  }

  // ---------------------------------------------------------------- internals

  private prepare(params: ExecParams): Prepared {
    const entry = authorizeCommand(params.command, this.allowlist, this.deps.fs, this.deps.platform);
    checkArgs(params.args);
    const env = buildChildEnv(params.env, this.deps.platform);
    const cwd = checkCwd(params.cwd, this.deps.fs, this.deps.platform);
    const limits = this.config.limits;
    return {
      entry,
      args: params.args,
      env,
      cwd,
      stdin: params.stdin_base64 === undefined ? null : base64Buffer(params.stdin_base64),
      timeoutMs: params.timeout_ms ?? limits.exec_timeout_ms,
      maxOutputBytes: Math.min(params.max_output_bytes ?? limits.exec_max_output_bytes, limits.exec_max_output_bytes),
    };
  }

  private launch(prepared: Prepared, method: string, handle?: string, onChunk?: (stream: StreamName, bytes: Uint8Array) => void): ChildRun {
    const limit = this.config.limits.exec_max_concurrent;
    if (this.active.size >= limit) {
      throw new RpcError("TOO_LARGE", `Too many commands running: exec_max_concurrent is ${limit}; wait for one to finish`, { limit });
    }
    const { entry } = prepared;
    const startedAt = performance.now();
    let child;
    try {
      child = this.deps.processes.spawn({
        file: entry.real,
        argv0: entry.path,
        args: prepared.args,
        env: prepared.env,
        cwd: prepared.cwd,
        stdin: prepared.stdin,
      });
    } catch (error) {
      throw spawnError(entry, error);
    }
    const run = new ChildRun(child, this.deps.processes, {
      timeoutMs: prepared.timeoutMs,
      maxOutputBytes: prepared.maxOutputBytes,
      resultBytes: resultFitBytes(this.config.limits.max_frame_bytes),
      drainGraceMs: this.deps.drainGraceMs,
      startedAt,
      onChunk,
      transcoder: this.deps.transcoder ?? undefined,
    });
    this.active.add(run);
    this.logger.info("exec started", { method, handle, command: entry.path, pid: run.pid, args: prepared.args.length, cwd: prepared.cwd });
    void run.done.finally(() => this.active.delete(run)).then((result) => {
      this.logger.info("exec finished", {
        method,
        handle,
        pid: run.pid,
        exit_code: result.exit_code,
        signal: result.signal,
        timed_out: result.timed_out,
        duration_ms: result.duration_ms,
      });
    }).catch((error) => this.logger.error("exec bookkeeping failed", { pid: run.pid, error: String(error) }));
    return run;
  }

  /** Pushes kept output as exec_output notifications, split to fit max_frame_bytes, numbered across both streams. */
  private streamer(handle: string, context: CallContext): (stream: StreamName, bytes: Uint8Array) => void {
    const pieceBytes = notificationPieceBytes(this.config.limits.max_frame_bytes);
    let seq = 0;
    return (stream, bytes) => {
      for (const piece of splitBytes(bytes, pieceBytes)) {
        const params = { handle, stream, seq: seq++, data_base64: Buffer.from(piece).toString("base64") };
        safeNotify(context, this.logger, () => context.notify("exec_output", params));
      }
    };
  }

  private find(handle: string): ExecRecord {
    this.prune();
    const record = this.records.get(handle);
    if (!record) throw new RpcError("NOT_FOUND", `No exec handle '${handle}' (unknown, or its record has expired)`, { handle });
    return record;
  }

  /** Drops finished records past the TTL, then the oldest finished ones above exec_records_max. Running ones stay. */
  private prune(): void {
    const { exec_records_ttl_seconds: ttlSeconds, exec_records_max: max } = this.config.limits;
    const now = this.deps.now();
    const finished: ExecRecord[] = [];
    for (const record of this.records.values()) {
      if (record.finishedAt === null) continue;
      if (now - record.finishedAt >= ttlSeconds * 1000) this.records.delete(record.handle);
      else finished.push(record);
    }
    if (finished.length <= max) return;
    finished.sort((a, b) => a.finishedAt! - b.finishedAt!);
    for (const record of finished.slice(0, finished.length - max)) this.records.delete(record.handle);
  }
}

function safeNotify(context: CallContext, logger: Logger, send: () => void): void {
  try {
    send();
  } catch (error) {
    // The host may be gone; the process runs on and its result stays available through exec_status.
    logger.debug("exec notification dropped", { transport: context.transport, error: String(error) });
  }
}

function spawnError(entry: AllowedEntry, error: unknown): RpcError {
  const code = (error as { code?: string })?.code;
  const detail = (error as Error)?.message ?? String(error);
  if (code === "ENOENT") {
    return new RpcError("NOT_FOUND", `Command '${entry.configured}' (${entry.real}) could not be started: it no longer exists`, { command: entry.configured, errno: code });
  }
  return new RpcError("OPERATION_FAILED", `Command '${entry.configured}' (${entry.real}) could not be started: ${detail}`, {
    command: entry.configured,
    errno: code,
  });
}

export type { ExecResult };
