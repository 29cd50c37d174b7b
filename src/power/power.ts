/**
 * shutdown / reboot: reply first, then act.
 *
 * Commands, in order; each is resolved to an absolute path in SAFE_PATH at
 * request time, tools that do not exist are dropped, and the first remaining
 * one is what the reply's `command` reports:
 *   graceful: systemctl [--message=M] poweroff|reboot|halt
 *             shutdown -h|-r|-H now | shutdown -h|-r|-H -- now M
 *             poweroff | reboot | halt
 *   force:    poweroff -f | reboot -f | halt -f
 *             systemctl --force --force poweroff|reboot|halt   (the same thing where the plain tool is missing)
 * (halt is reached through QGA's guest-shutdown mode=halt; the native methods are shutdown and reboot.)
 * At run time a command that cannot be spawned, exits non-zero or hangs for
 * COMMAND_TIMEOUT_MS is followed by the next one. Every attempt is logged and
 * audited as event "power" (action, tool, exit_code ...).
 *
 * Timing: the action runs `delay_seconds` after the request, and never sooner
 * than GRACE_MS, so the reply has left the agent before e.g. reboot -f pulls
 * the plug. The timer is deliberately not unref'd: a scheduled power action
 * must happen even if nothing else keeps the agent's event loop alive.
 *
 * A second request while one is scheduled REPLACES it (there is no cancel
 * method: this is how a host turns a delayed shutdown into an immediate
 * reboot, or postpones one); the replacement is logged and audited. A request
 * while commands are already running is refused with OPERATION_FAILED. Once
 * the commands have finished (the system is going down, or every tool
 * failed), a new request is accepted again — e.g. force after a graceful
 * shutdown that systemd accepted but that is stuck.
 */
import { accessSync, constants, statSync } from "node:fs";
import type { AuditLog } from "../log/audit.ts";
import type { Logger } from "../log/logger.ts";
import { RpcError } from "../protocol/errors.ts";
import type { Params, Result } from "../schema/methods.ts";
import type { PowerService } from "../services.ts";

export type PowerAction = "poweroff" | "reboot" | "halt";
export const SAFE_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/** The absolute path of an executable tool in SAFE_PATH (never the caller's PATH), or null. */
export function findTool(name: string): string | null {
  return Bun.which(name, { PATH: SAFE_PATH.join(":") });
}
/** Minimum time between the reply and the first command. */
export const GRACE_MS = 250;
export const COMMAND_TIMEOUT_MS = 60_000;

export interface ExecOutcome {
  /** null when the command could not be spawned, or was killed. */
  exitCode: number | null;
  error?: string;
}
export type PowerExecutor = (argv: string[]) => Promise<ExecOutcome>;

export interface PowerTimers {
  set(callback: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

export interface PowerControllerOptions {
  /** Runs one command; default: spawn it with a clean environment and wait (COMMAND_TIMEOUT_MS at most). */
  executor?: PowerExecutor;
  /** Whether an absolute path is an executable file; default: stat + access(X_OK). */
  exists?: (path: string) => boolean;
  /** Default setTimeout/clearTimeout. */
  timers?: PowerTimers;
  /** Default GRACE_MS. */
  graceMs?: number;
  /** The commands to try in order, already resolved; default: candidateCommands resolved in SAFE_PATH (Windows: src/power/windows.ts). */
  plan?: (action: PowerAction, force: boolean, message: string | undefined) => string[][];
}

interface Pending {
  action: PowerAction;
  force: boolean;
  handle: unknown;
}

export class PowerController implements PowerService {
  private readonly executor: PowerExecutor;
  private readonly exists: (path: string) => boolean;
  private readonly timers: PowerTimers;
  private readonly graceMs: number;
  private readonly plan: (action: PowerAction, force: boolean, message: string | undefined) => string[][];
  private pending: Pending | null = null;
  private running: PowerAction | null = null;
  /** Resolves when the last started run has finished; for tests and shutdown. */
  settled: Promise<void> = Promise.resolve();

  constructor(
    private readonly logger: Logger,
    private readonly audit: AuditLog,
    options: PowerControllerOptions = {},
  ) {
    this.executor = options.executor ?? spawnCommand;
    this.exists = options.exists ?? isExecutable;
    this.timers = options.timers ?? { set: (callback, ms) => setTimeout(callback, ms), clear: (handle) => clearTimeout(handle as Timer) };
    this.graceMs = options.graceMs ?? GRACE_MS;
    this.plan = options.plan ?? ((action, force, message) => resolvePlan(candidateCommands(action, force, message), this.exists));
  }

  request(action: PowerAction, params: Params<"shutdown">): Result<"shutdown"> {
    if (this.running) {
      throw new RpcError("OPERATION_FAILED", `A ${this.running} is already in progress`, { in_progress: this.running });
    }
    const message = params.message === undefined ? undefined : sanitizeMessage(params.message);
    const plan = this.plan(action, params.force, message);
    if (plan.length === 0) {
      const tools = [...new Set(candidateCommands(action, params.force, message).map((argv) => argv[0]))].join(", ");
      throw new RpcError("OPERATION_FAILED", `No tool to ${action} with: none of ${tools} is in ${SAFE_PATH.join(":")}`, { path: SAFE_PATH.join(":") });
    }
    const delaySeconds = params.delay_seconds;
    const base = { action, force: params.force, delay_seconds: delaySeconds, message: message ?? null };

    if (this.pending) {
      this.timers.clear(this.pending.handle);
      this.logger.warn("power action replaced", { previous: this.pending.action, previous_force: this.pending.force, action, force: params.force });
      this.audit.event("power", { phase: "replaced", previous: this.pending.action, ...base });
      this.pending = null;
    }
    const pending: Pending = { action, force: params.force, handle: null };
    pending.handle = this.timers.set(() => {
      if (this.pending !== pending) return;
      this.pending = null;
      this.settled = this.run(action, params.force, plan);
    }, Math.max(this.graceMs, delaySeconds * 1000));
    this.pending = pending;

    this.logger.info("power action scheduled", { ...base, command: plan[0]! });
    this.audit.event("power", { phase: "scheduled", ...base, command: plan[0]!.join(" ") });
    return { accepted: true, action, force: params.force, delay_seconds: delaySeconds, command: plan[0]! };
  }

  /** Try each command until one exits 0. Never throws. */
  private async run(action: PowerAction, force: boolean, plan: string[][]): Promise<void> {
    this.running = action;
    try {
      for (const [i, argv] of plan.entries()) {
        let outcome: ExecOutcome;
        try {
          outcome = await this.executor(argv);
        } catch (error) {
          outcome = { exitCode: null, error: String(error) };
        }
        const fields = { action, force, tool: argv[0]!, command: argv.join(" "), exit_code: outcome.exitCode, attempt: i + 1 };
        if (outcome.exitCode === 0) {
          this.logger.info("power command ran", fields);
          this.audit.event("power", { phase: "ran", ...fields });
          return;
        }
        const next = plan[i + 1];
        this.logger.warn("power command failed", { ...fields, error: outcome.error, next: next?.[0] ?? null });
        this.audit.event("power", { phase: "failed", ...fields, error: outcome.error ?? null });
      }
      this.logger.error("power action failed: every tool failed", { action, force, tried: plan.map((argv) => argv[0]) });
      this.audit.event("power", { phase: "gave_up", action, force, tried: plan.map((argv) => argv[0]).join(" ") });
    } finally {
      this.running = null;
    }
  }
}

/** Commands by tool name, in order of preference. */
export function candidateCommands(action: PowerAction, force: boolean, message?: string): string[][] {
  if (force) return [[action, "-f"], ["systemctl", "--force", "--force", action]];
  const flag = { poweroff: "-h", reboot: "-r", halt: "-H" }[action];
  return [
    message === undefined ? ["systemctl", action] : ["systemctl", `--message=${message}`, action],
    message === undefined ? ["shutdown", flag, "now"] : ["shutdown", flag, "--", "now", message],
    [action],
  ];
}

/** Each command with its tool replaced by the first absolute path in SAFE_PATH that exists; missing tools dropped. */
export function resolvePlan(commands: string[][], exists: (path: string) => boolean): string[][] {
  const found = new Map<string, string | null>();
  const out: string[][] = [];
  for (const [tool, ...args] of commands) {
    if (!found.has(tool!)) found.set(tool!, SAFE_PATH.map((dir) => `${dir}/${tool}`).find((path) => exists(path)) ?? null);
    const path = found.get(tool!);
    if (path) out.push([path, ...args]);
  }
  return out;
}

/** Wall messages reach every terminal: no control characters (escape sequences) besides newline and tab. */
export function sanitizeMessage(message: string): string {
  return message.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, " ");
}

function isExecutable(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

const SPAWN_ENV = { PATH: SAFE_PATH.join(":"), LANG: "C", LC_ALL: "C" };

/** Runs a power command with a fixed environment, at most COMMAND_TIMEOUT_MS. */
export async function spawnCommand(argv: string[], env: Record<string, string> = SPAWN_ENV): Promise<ExecOutcome> {
  let proc: ReturnType<typeof Bun.spawn>;
  try {
    proc = Bun.spawn(argv, { stdin: "ignore", stdout: "ignore", stderr: "pipe", env });
  } catch (error) {
    return { exitCode: null, error: (error as Error).message };
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    proc.kill("SIGKILL");
  }, COMMAND_TIMEOUT_MS);
  try {
    const [exitCode, stderr] = await Promise.all([proc.exited, new Response(proc.stderr as ReadableStream).text().catch(() => "")]);
    if (timedOut) return { exitCode: null, error: `no exit within ${COMMAND_TIMEOUT_MS} ms; killed` };
    if (exitCode === 0) return { exitCode };
    const detail = stderr.trim().slice(0, 500);
    return { exitCode: proc.signalCode ? null : exitCode, error: detail || (proc.signalCode ? `killed by ${proc.signalCode}` : `exit code ${exitCode}`) };
  } finally {
    clearTimeout(timer);
  }
}
