/**
 * Starts the two servers under test in a temp dir and stops them by PID.
 * Cleanup is synchronous so it also works from SIGINT and process "exit".
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { nativeEndpoint, qgaEndpoint, type Endpoint } from "./raw-conn.ts";

/** The baseline; BENCH_QEMU_GA points elsewhere (or at a missing path to bench ours only). */
export const QEMU_GA = process.env.BENCH_QEMU_GA ?? "/usr/sbin/qemu-ga";
const TASKSET = "/usr/bin/taskset";

export interface Server {
  label: string;
  /** Base name of its .out/.err files in the temp dir. */
  files: string;
  proc: Subprocess;
  socket: string;
  logFile: string;
  protocol: "native" | "qga";
}

/**
 * CPU placement. On a small VM the round trip of a sequential call is dominated by waking the
 * other side on another CPU, so placement is pinned to make runs comparable:
 *  - split (default with >= 2 CPUs): bench client on CPU 0, servers on the last CPU
 *  - same: client and servers all on CPU 0 (shows the software path without cross-CPU wakeups)
 *  - none: let the scheduler decide
 */
export type Placement = "split" | "same" | "none";

export function choosePlacement(requested: string | undefined, cpuCount: number): Placement {
  const wanted = (requested ?? "split") as Placement;
  if (!["split", "same", "none"].includes(wanted)) throw new Error(`BENCH_PIN must be split, same or none (got '${requested}')`);
  if (wanted === "none" || !existsSync(TASKSET)) return "none";
  if (wanted === "split" && cpuCount < 2) return "same";
  return wanted;
}


/** Pin this process (all its threads) to `cpu`. */
export function pinSelf(cpu: number): void {
  const r = Bun.spawnSync([TASKSET, "-a", "-p", "-c", String(cpu), String(process.pid)], { stdout: "ignore", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`taskset failed: ${r.stderr.toString()}`);
}

export class Servers {
  readonly dir = mkdtempSync(join(tmpdir(), "kma-bench-"));
  /** CPU the servers are pinned to, or null. */
  serverCpu: number | null = null;
  private readonly running: Server[] = [];
  private cleaned = false;

  /**
   * Our compiled agent on unix-listen, audit log on (as in production), level warn; exec of `true` and file copy in
   * the temp dir allowed. Its QGA port listens beside it (see qgaPortOf).
   */
  startAgent(binary: string): Server {
    const socket = join(this.dir, "agent.sock");
    const config = join(this.dir, "agent.toml");
    writeFileSync(
      config,
      [
        "[security]",
        "enable_exec = true",
        'allowed_commands = ["true"]',
        `allowed_file_paths = [${JSON.stringify(this.dir)}]`,
        "[qga]",
        'type = "unix-listen"',
        `path = ${JSON.stringify(join(this.dir, "agent-qga.sock"))}`,
        `state_dir = ${JSON.stringify(join(this.dir, "agent-state"))}`,
        "[logging]",
        'level = "warn"',
        `audit_file = ${JSON.stringify(join(this.dir, "audit.jsonl"))}`,
        "",
      ].join("\n"),
    );
    return this.spawn("kvm-manager-agent", [binary, "--transport", "unix-listen", "--path", socket, "--config", config], socket, "native");
  }

  /** The QGA port of an agent startAgent started: the same process, qemu-ga's protocol. */
  qgaPortOf(agent: Server): Server {
    return { ...agent, label: "kvm-manager-agent (QGA)", socket: join(this.dir, "agent-qga.sock"), protocol: "qga" };
  }

  /** Debian's qemu-ga on unix-listen with its state, pid and log files in the temp dir. */
  startQga(): Server {
    const socket = join(this.dir, "qga.sock");
    const stateDir = join(this.dir, "qga-state");
    mkdirSync(stateDir);
    const logFile = join(this.dir, "qga.log");
    return this.spawn(
      "qemu-ga",
      [QEMU_GA, "-m", "unix-listen", "-p", socket, "-t", stateDir, "-f", join(this.dir, "qga.pid"), "-l", logFile],
      socket,
      "qga",
      logFile,
    );
  }

  private spawn(label: string, cmd: string[], socket: string, protocol: Server["protocol"], logFile = join(this.dir, `${label}.log`)): Server {
    if (this.serverCpu !== null) cmd = [TASKSET, "-c", String(this.serverCpu), ...cmd];
    const proc = Bun.spawn(cmd, { stdin: "ignore", stdout: Bun.file(join(this.dir, `${label}.out`)), stderr: Bun.file(join(this.dir, `${label}.err`)) });
    const server = { label, files: label, proc, socket, logFile, protocol };
    this.running.push(server);
    return server;
  }

  /** Connect and get one good answer (ping / guest-sync), retrying until `timeoutMs`. */
  async connect(server: Server, timeoutMs = 10_000): Promise<Endpoint> {
    const deadline = Date.now() + timeoutMs;
    let last: unknown = null;
    while (Date.now() < deadline) {
      if (server.proc.exitCode !== null || server.proc.signalCode !== null) {
        throw new Error(`${server.label} exited (${server.proc.exitCode ?? server.proc.signalCode}) before answering:\n${this.logsOf(server)}`);
      }
      if (existsSync(server.socket)) {
        try {
          return server.protocol === "qga" ? await qgaEndpoint(server.socket, server.proc.pid, 5_000, server.label) : await nativeEndpoint(server.socket, server.proc.pid);
        } catch (error) {
          last = error;
        }
      }
      await Bun.sleep(50);
    }
    throw new Error(`${server.label} did not answer on ${server.socket} within ${timeoutMs} ms: ${String(last)}\n${this.logsOf(server)}`);
  }

  logsOf(server: Server): string {
    const read = (path: string) => (existsSync(path) ? readFileSync(path, "utf8").trim() : "");
    return [read(join(this.dir, `${server.files}.err`)), read(join(this.dir, `${server.files}.out`)), read(server.logFile)]
      .filter(Boolean)
      .join("\n")
      .slice(-2000);
  }

  /** SIGTERM each server by PID, SIGKILL what is still there, remove the temp dir. */
  cleanup(): void {
    if (this.cleaned) return;
    this.cleaned = true;
    for (const { proc } of this.running) {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
    }
    const deadline = Date.now() + 1_000;
    for (const { proc } of this.running) {
      while (proc.exitCode === null && proc.signalCode === null && isAlive(proc.pid) && Date.now() < deadline) Bun.sleepSync(10);
      if (isAlive(proc.pid)) proc.kill("SIGKILL");
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function isAlive(pid: number): boolean {
  try {
    // A zombie (exited, not reaped yet) is as good as gone.
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}
