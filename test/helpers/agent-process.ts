/**
 * End-to-end helpers: run the COMPILED agent (dist/kvm-manager-agent-linux-x64)
 * as a child process in a private temp dir, and talk raw frames to it.
 *
 * The binary is built once per test process when it is missing or older than
 * any file under src/ (`npm test` builds it first, so normally this is a no-op).
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket, Subprocess } from "bun";
import { AgentClient } from "../../src/client/client.ts";
import { FrameDecoder, encodeFrame } from "../../src/protocol/framing.ts";

export const ROOT = join(import.meta.dir, "..", "..");
export const BINARY = join(ROOT, "dist", "kvm-manager-agent-linux-x64");

// ---------------------------------------------------------------- the binary

function newestMtimeMs(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtimeMs(path) : statSync(path).mtimeMs);
  }
  return newest;
}

function binaryIsFresh(): boolean {
  let built: number;
  try {
    built = statSync(BINARY).mtimeMs;
  } catch {
    return false;
  }
  return built >= newestMtimeMs(join(ROOT, "src"));
}

let building: Promise<string> | null = null;

/**
 * Path of a private snapshot of the compiled agent, building dist/ first if it
 * is missing or stale.
 *
 * Other people rebuild dist/ while tests run: spawning a file that is being
 * written fails with ETXTBSY, and our running agents would make *their* build
 * fail the same way. So the tests run a copy in a temp dir, taken when the
 * file is quiet and checked with --version (see SNAPSHOT_DIR below).
 */
export function ensureBinary(): Promise<string> {
  return (building ??= (async () => {
    if (!binaryIsFresh()) {
      const proc = Bun.spawn([process.execPath, join(ROOT, "scripts", "build.ts")], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
      const [code, out, err] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
      if (code !== 0) throw new Error(`bun scripts/build.ts failed (${code}):\n${out}${err}`);
    }
    return snapshotBinary();
  })());
}

/**
 * Snapshots live in one cache dir, keyed by the build's mtime and size, so
 * repeated runs reuse one 100 MiB copy; copies of older builds are removed
 * once they are an hour old (a run still using one keeps working: Linux lets a
 * running executable be unlinked).
 */
const SNAPSHOT_DIR = join(tmpdir(), "kma-e2e-binaries");
const SNAPSHOT_MAX_AGE_MS = 60 * 60 * 1000;

async function snapshotBinary(): Promise<string> {
  mkdirSync(SNAPSHOT_DIR, { recursive: true });
  let lastError = "";
  for (let attempt = 0; attempt < 60; attempt++) {
    try {
      const before = statSync(BINARY);
      const copy = join(SNAPSHOT_DIR, `kvm-manager-agent-${Math.round(before.mtimeMs)}-${before.size}`);
      if (existsSync(copy) && statSync(copy).size === before.size) return copy;
      if (Date.now() - before.mtimeMs > 300) {
        const partial = `${copy}.${process.pid}.partial`;
        copyFileSync(BINARY, partial);
        chmodSync(partial, 0o755);
        const after = statSync(BINARY);
        if (after.size === before.size && after.mtimeMs === before.mtimeMs && statSync(partial).size === before.size) {
          const check = Bun.spawnSync([partial, "--version"], { stdout: "pipe", stderr: "pipe" });
          if (check.exitCode === 0) {
            renameSync(partial, copy);
            removeOldSnapshots(copy);
            return copy;
          }
          lastError = `--version exited ${check.exitCode}: ${check.stderr.toString()}`;
        }
        rmSync(partial, { force: true });
      }
    } catch (error) {
      lastError = String(error);
    }
    await Bun.sleep(250); // Someone is writing dist/ right now.
  }
  throw new Error(`could not take a stable copy of ${BINARY}: ${lastError}`);
}

function removeOldSnapshots(keep: string): void {
  for (const name of readdirSync(SNAPSHOT_DIR)) {
    const path = join(SNAPSHOT_DIR, name);
    if (path === keep) continue;
    try {
      if (Date.now() - statSync(path).mtimeMs > SNAPSHOT_MAX_AGE_MS) rmSync(path, { force: true });
    } catch {
      // Removed by a concurrent run.
    }
  }
}

/** Run the binary to completion (for --help, --check-config, host verbs ...). */
export async function runBinary(
  args: string[],
  { timeoutMs = 20_000, stdin, cwd }: { timeoutMs?: number; stdin?: string; cwd?: string } = {},
): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const binary = await ensureBinary();
  const proc = Bun.spawn([binary, ...args], {
    cwd,
    stdin: stdin === undefined ? "ignore" : new TextEncoder().encode(stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  try {
    const [exitCode, stdout, stderr] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
    return { exitCode, stdout, stderr };
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------- temp dirs and config

export function makeTempDir(prefix = "kma-e2e-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export interface ConfigOptions {
  /** [limits] max_frame_bytes; default 65536 so the frame-limit edges are cheap to reach. */
  maxFrameBytes?: number;
  /** Extra TOML appended verbatim, right after the `[limits]` section's keys (so bare keys land in [limits]). */
  extraToml?: string;
  /** More keys of the `[logging]` section. */
  loggingToml?: string;
}

/**
 * Writes `<dir>/config.toml` with the audit file inside `dir` and debug
 * logging; returns its path. The QGA port is off unless extraToml sets [qga]:
 * the host has no org.qemu.guest_agent.0 to serve.
 */
export function writeConfig(dir: string, { maxFrameBytes = 65_536, extraToml = "", loggingToml = "" }: ConfigOptions = {}): string {
  const path = join(dir, "config.toml");
  writeFileSync(
    path,
    [
      // First: extraToml may go on with keys of [limits] without a header.
      extraToml.includes("[qga]") ? "" : "[qga]\nenabled = false\n",
      "[logging]",
      'level = "debug"',
      `audit_file = ${JSON.stringify(join(dir, "audit.jsonl"))}`,
      loggingToml,
      "",
      "[limits]",
      `max_frame_bytes = ${maxFrameBytes}`,
      "",
      extraToml,
    ].join("\n"),
  );
  return path;
}

// ---------------------------------------------------------------- a running agent

/** Reads a child's pipe to the end in the background, so the child never blocks on a full pipe. */
export function collectText(stream: ReadableStream<Uint8Array>): { text(): string; ended(): Promise<void> } {
  let text = "";
  const decoder = new TextDecoder();
  const done = (async () => {
    for await (const chunk of stream) text += decoder.decode(chunk, { stream: true });
  })().catch(() => {});
  // Awaited once the process has exited, so the stream is at its end; yet under load a hook once waited 15 s for
  // the iteration to end (the agent spawns no children that could hold the pipe): wait a bounded time.
  return { text: () => text, ended: () => Promise.race([done, Bun.sleep(2_000)]) };
}

export interface AgentProcess {
  readonly proc: Subprocess;
  readonly pid: number;
  readonly dir: string;
  readonly configPath: string;
  readonly socketPath: string;
  readonly auditPath: string;
  /** The key requests are signed with, for an agent started with [security] hmac_key_file. */
  readonly hmacKey?: Uint8Array;
  /** Everything the agent logged on stderr so far. */
  stderr(): string;
  /** VmRSS of the agent in bytes. */
  rss(): number;
  /** True while the process has not exited. */
  alive(): boolean;
  /** SIGTERM, wait for exit (SIGKILL after 3 s); resolves with the exit code. Removes the temp dir. */
  stop(): Promise<number | null>;
}

export function readRss(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const match = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

/**
 * For the afterAll hooks that stop agents: bun gives hooks 5 s, not bunfig's test timeout, and one agent's stop()
 * may take terminate's 3 s grace, the kill, and 2 s more for its stderr; some hooks stop two or three agents.
 */
export const STOP_HOOK_TIMEOUT_MS = 15_000;

/** SIGTERM, then SIGKILL if the process is still there after `graceMs` (said on stderr: it is worth knowing why). */
export async function terminate(proc: Subprocess, graceMs = 3_000): Promise<number | null> {
  if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
  proc.kill("SIGTERM");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const killed = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), graceMs)));
  const outcome = await Promise.race([proc.exited, killed]);
  clearTimeout(timer);
  if (outcome === "timeout") {
    console.warn(`pid ${proc.pid} was still running ${graceMs} ms after SIGTERM: SIGKILL`);
    proc.kill("SIGKILL");
    await proc.exited;
  }
  return proc.exitCode;
}

/**
 * Start the compiled agent on `--transport unix-listen --path <tmp>/agent.sock`
 * and wait until it answers a ping.
 */
/**
 * `env` adds variables for the agent. (Bun.spawn passes the environment this
 * process started with, not later changes to process.env: set them here.)
 */
export async function startAgentProcess(
  options: ConfigOptions & { startTimeoutMs?: number; env?: Record<string, string>; hmacKey?: Uint8Array } = {},
): Promise<AgentProcess> {
  const binary = await ensureBinary();
  const dir = makeTempDir();
  const configPath = writeConfig(dir, options);
  const socketPath = join(dir, "agent.sock");
  const auditPath = join(dir, "audit.jsonl");
  const proc = Bun.spawn([binary, "--config", configPath, "--transport", "unix-listen", "--path", socketPath], {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
    env: { ...process.env, ...options.env },
  });
  const stderr = collectText(proc.stderr);
  const agent: AgentProcess = {
    proc,
    pid: proc.pid,
    dir,
    configPath,
    socketPath,
    auditPath,
    hmacKey: options.hmacKey,
    stderr: stderr.text,
    rss: () => readRss(proc.pid),
    alive: () => proc.exitCode === null && proc.signalCode === null,
    async stop() {
      const code = await terminate(proc);
      await stderr.ended();
      rmSync(dir, { recursive: true, force: true });
      return code;
    },
  };
  try {
    await waitUntilAnswering(agent, options.startTimeoutMs ?? 15_000);
  } catch (error) {
    await agent.stop();
    throw new Error(`agent did not come up: ${(error as Error).message}\nstderr:\n${stderr.text()}`);
  }
  return agent;
}

async function waitUntilAnswering(agent: AgentProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown = null;
  while (Date.now() < deadline) {
    if (!agent.alive()) throw new Error(`agent exited with ${agent.proc.exitCode ?? agent.proc.signalCode}`);
    try {
      const client = await AgentClient.connect(agent.socketPath, { timeoutMs: 2_000, hmacKey: agent.hmacKey });
      try {
        await client.waitReady({ timeoutMs: Math.max(deadline - Date.now(), 1), attemptMs: 1_000 });
        return;
      } finally {
        client.close();
      }
    } catch (error) {
      lastError = error; // Not listening yet.
    }
    await Bun.sleep(25);
  }
  throw new Error(`no answer within ${timeoutMs} ms: ${String(lastError)}`);
}

/** Connect a typed client to a running agent. */
export function connectClient(agent: AgentProcess, timeoutMs = 10_000): Promise<AgentClient> {
  return AgentClient.connect(agent.socketPath, { timeoutMs, hmacKey: agent.hmacKey });
}

// ---------------------------------------------------------------- raw frames

const utf8 = new TextDecoder();

/** Every reply frame in a byte stream (resync echoes skipped), JSON-parsed. */
export function decodeFrames(bytes: Uint8Array): any[] {
  const replies: any[] = [];
  const decoder = new FrameDecoder({ onFrame: (payload) => replies.push(JSON.parse(utf8.decode(payload))), onOversizedFrame() {}, onSync() {} });
  decoder.push(bytes);
  return replies;
}

/** Build a frame: header = payload length (or `declaredLength` to lie on purpose). */
export function frame(payload: string | Uint8Array | object, declaredLength?: number): Uint8Array {
  const bytes = typeof payload === "string" || payload instanceof Uint8Array ? payload : JSON.stringify(payload);
  const out = encodeFrame(bytes);
  if (declaredLength !== undefined) new DataView(out.buffer, out.byteOffset).setUint32(0, declaredLength);
  return out;
}

export function concatBytes(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * Collects decoded reply frames from any byte stream, with `next(timeoutMs)`
 * that rejects when no frame arrives in time. Shared by the socket, pty and
 * stdio helpers.
 */
export class FrameCollector {
  private readonly frames: Uint8Array[] = [];
  private waiter: { resolve(frame: Uint8Array): void; reject(error: Error): void } | null = null;
  private closedError: Error | null = null;
  private readonly decoder: FrameDecoder;
  /** Total frames decoded so far. */
  received = 0;
  /** SYNC_MARKER echoes received so far. */
  syncs = 0;

  constructor(maxFrameBytes = 1024 * 1024 * 1024) {
    this.decoder = new FrameDecoder(
      {
        onFrame: (payload) => {
          this.received++;
          const copy = payload.slice(); // The view is only valid during the call.
          if (this.waiter) {
            const waiter = this.waiter;
            this.waiter = null;
            waiter.resolve(copy);
          } else this.frames.push(copy);
        },
        onOversizedFrame: (length) => this.fail(new Error(`peer sent an oversized frame of ${length} bytes`)),
        onSync: () => this.syncs++,
      },
      maxFrameBytes,
    );
  }

  push(chunk: Uint8Array): void {
    this.decoder.push(chunk);
  }

  /** True when a partial frame is buffered. */
  get midFrame(): boolean {
    return !this.decoder.idle;
  }

  get queued(): number {
    return this.frames.length;
  }

  fail(error: Error): void {
    this.closedError ??= error;
    if (this.waiter) {
      const waiter = this.waiter;
      this.waiter = null;
      waiter.reject(error);
    }
  }

  /** The next reply frame's raw payload. */
  nextRaw(timeoutMs = 5_000): Promise<Uint8Array> {
    const queued = this.frames.shift();
    if (queued) return Promise.resolve(queued);
    if (this.closedError) return Promise.reject(this.closedError);
    if (this.waiter) return Promise.reject(new Error("next() is already waiting"));
    return new Promise<Uint8Array>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`no frame within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = {
        resolve: (frame) => {
          clearTimeout(timer);
          resolve(frame);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
    });
  }

  /** The next reply frame, JSON-parsed. */
  async next(timeoutMs = 5_000): Promise<any> {
    return JSON.parse(utf8.decode(await this.nextRaw(timeoutMs)));
  }

  /** Resolves if no frame arrives within `ms`; rejects with the frame otherwise. */
  async expectSilence(ms: number): Promise<void> {
    try {
      const frame = await this.nextRaw(ms);
      throw new UnexpectedFrame(utf8.decode(frame));
    } catch (error) {
      if (error instanceof UnexpectedFrame) throw error;
    }
  }
}

class UnexpectedFrame extends Error {
  constructor(text: string) {
    super(`unexpected frame: ${text.slice(0, 500)}`);
  }
}

/** A raw unix-socket connection to the agent: arbitrary bytes out, decoded frames in. */
export class RawConnection extends FrameCollector {
  private socket: Socket<undefined> | null = null;
  private readonly queue: Uint8Array[] = [];
  private drained: (() => void)[] = [];
  closed = false;

  static async connect(path: string): Promise<RawConnection> {
    const raw = new RawConnection();
    raw.socket = await Bun.connect<undefined>({
      unix: path,
      socket: {
        binaryType: "uint8array",
        data: (_socket, chunk) => raw.push(chunk),
        drain: () => raw.flush(),
        close: () => raw.onClosed(),
        error: (_socket, error) => raw.fail(error),
      },
    });
    return raw;
  }

  private onClosed(): void {
    this.closed = true;
    this.fail(new Error("connection closed by the agent"));
    for (const resolve of this.drained.splice(0)) resolve();
  }

  /** Queue bytes; resolves once the kernel has taken all of them. */
  write(bytes: Uint8Array | string): Promise<void> {
    const data = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
    if (data.length > 0) this.queue.push(data);
    this.flush();
    if (this.queue.length === 0) return Promise.resolve();
    return new Promise<void>((resolve) => this.drained.push(resolve));
  }

  /** Write a JSON value (or string) as one frame. */
  send(message: unknown): Promise<void> {
    return this.write(frame(typeof message === "string" ? message : JSON.stringify(message)));
  }

  /** Write `bytes` in chunks of `chunkBytes`, yielding to the event loop between them. */
  async writeChunked(bytes: Uint8Array, chunkBytes: number, pauseMs = 0): Promise<void> {
    for (let at = 0; at < bytes.length; at += chunkBytes) {
      await this.write(bytes.subarray(at, at + chunkBytes));
      if (pauseMs > 0) await Bun.sleep(pauseMs);
      else await Promise.resolve();
    }
  }

  private flush(): void {
    const socket = this.socket;
    if (!socket || this.closed) return;
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      const written = socket.write(head);
      if (written < head.length) {
        if (written > 0) this.queue[0] = head.subarray(written);
        return;
      }
      this.queue.shift();
    }
    for (const resolve of this.drained.splice(0)) resolve();
  }

  /** Send a request and wait for the next frame (only use with nothing else in flight). */
  async request(message: unknown, timeoutMs = 5_000): Promise<any> {
    await this.send(message);
    return this.next(timeoutMs);
  }

  close(): void {
    this.closed = true;
    this.socket?.end();
  }

  /** Drop the connection at once, whatever is buffered. */
  abort(): void {
    this.closed = true;
    this.socket?.terminate();
  }
}

/** A JSON-RPC ping request. */
export function pingRequest(id: string | number | null, payload?: unknown): object {
  return payload === undefined ? { jsonrpc: "2.0", id, method: "ping" } : { jsonrpc: "2.0", id, method: "ping", params: { payload } };
}

/** Poll `check` until it returns a truthy value or `timeoutMs` passes. */
export async function eventually<T>(
  check: () => T | null | undefined | false | Promise<T | null | undefined | false>,
  timeoutMs = 5_000,
  stepMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await Bun.sleep(stepMs);
  }
}

/** A process is gone once /proc has no entry or it is a zombie (reparented to a PID 1 that may not reap). */
export function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}
