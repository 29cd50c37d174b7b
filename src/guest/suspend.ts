/**
 * guest-suspend-disk / -ram / -hybrid as qemu-ga (qga/commands-linux.c) does
 * them, trying in order:
 *   1. systemd: `systemctl status systemd-hibernate|systemd-suspend|systemd-hybrid-sleep`
 *      exiting 1..3 (LSB codes: the unit exists) → `systemctl hibernate|suspend|hybrid-sleep`;
 *   2. pm-utils: `pm-is-supported --hibernate|--suspend|--suspend-hybrid` exiting 0
 *      → `pm-hibernate|pm-suspend|pm-suspend-hybrid`;
 *   3. the kernel: "disk" or "mem" among the first 31 bytes of /sys/power/state → written there
 *      (there is no hybrid mode at this step).
 * A supported step that fails falls through to the next. Tools are found in
 * SAFE_PATH and spawned without a shell. Writing /sys/power/state returns
 * only after the resume, without holding the event loop (the write is
 * asynchronous).
 *
 * QGA's guest-suspend-* run this and send no reply on success
 * (success-response false). The native `suspend` replies first: it looks for
 * the first supported step before it answers (so that a mode the guest cannot
 * do is an error, and the reply names the way), then runs from that step on
 * GRACE_MS later, as shutdown and reboot do.
 */
import { constants, readFileSync } from "node:fs";
import { open } from "node:fs/promises";
import type { AuditLog } from "../log/audit.ts";
import type { Logger } from "../log/logger.ts";
import { findTool, GRACE_MS, SAFE_PATH, type PowerTimers } from "../power/power.ts";
import type { Result } from "../schema/methods.ts";
import { failed, GuestError, strerror } from "./errors.ts";

export type SuspendMode = "disk" | "ram" | "hybrid";

const MODES: Record<SuspendMode, { unit: string; verb: string; pmFlag: string; pmTool: string; kernelState: "mem" | "disk" | null }> = {
  disk: { unit: "systemd-hibernate", verb: "hibernate", pmFlag: "--hibernate", pmTool: "pm-hibernate", kernelState: "disk" },
  ram: { unit: "systemd-suspend", verb: "suspend", pmFlag: "--suspend", pmTool: "pm-suspend", kernelState: "mem" },
  hybrid: { unit: "systemd-hybrid-sleep", verb: "hybrid-sleep", pmFlag: "--suspend-hybrid", pmTool: "pm-suspend-hybrid", kernelState: null },
};

/** A child's exit status, or why it could not be started. */
export type SuspendRun = (argv: string[]) => Promise<{ status: number } | { error: string }>;

/** /sys/power/state: its first bytes, null when unreadable; write() rejects with the errno of the write. */
export interface PowerStateFile {
  readonly path: string;
  read(): string | null;
  write(state: string): Promise<void>;
}

export interface SuspendSystem {
  findTool(name: string): string | null;
  run: SuspendRun;
  powerState: PowerStateFile;
}

export function powerStateFile(path = "/sys/power/state"): PowerStateFile {
  return {
    path,
    read() {
      try {
        return readFileSync(path, "latin1").slice(0, 31); // qemu-ga reads into a 32-byte buffer
      } catch {
        return null;
      }
    },
    async write(state) {
      const file = await open(path, constants.O_WRONLY);
      try {
        await file.write(state);
      } finally {
        await file.close();
      }
    },
  };
}

/** Spawns without a shell, output discarded, and waits; a child killed by a signal reads 0, as WEXITSTATUS gives qemu-ga. */
const spawnAndWait: SuspendRun = async (argv) => {
  try {
    const child = Bun.spawn(argv, { stdin: "ignore", stdout: "ignore", stderr: "ignore", env: { PATH: SAFE_PATH.join(":"), LANG: "C", LC_ALL: "C" } });
    await child.exited;
    return { status: child.exitCode ?? 0 };
  } catch (error) {
    return { error: (error as Error).message };
  }
};

export const LINUX_SUSPEND: SuspendSystem = { findTool, run: spawnAndWait, powerState: powerStateFile() };

export interface SuspendLog {
  logger: Logger;
  audit: AuditLog;
}

/** A way to suspend that the guest supports: a tool's command line (resolved when it runs), or a word for /sys/power/state. */
export type SuspendStep = { method: "systemd" | "pm-utils"; argv: string[] } | { method: "sysfs"; state: "mem" | "disk" };

/** qemu-ga's run_process_child: the exit status, or "missing" for a tool it cannot find. */
async function runTool(system: SuspendSystem, argv: string[]) {
  const path = system.findTool(argv[0]!);
  return path ? system.run([path, ...argv.slice(1)]) : ("missing" as const);
}

/** The first step after `after` that the guest supports for `mode`, checked as qemu-ga checks it; null when none is left. */
export async function nextSuspendStep(mode: SuspendMode, system: SuspendSystem, after?: SuspendStep["method"]): Promise<SuspendStep | null> {
  const { unit, verb, pmFlag, pmTool, kernelState } = MODES[mode];
  if (after === undefined) {
    const systemd = await runTool(system, ["systemctl", "status", unit]);
    if (systemd !== "missing" && "status" in systemd && systemd.status > 0 && systemd.status < 4) return { method: "systemd", argv: ["systemctl", verb] };
  }
  if (after === undefined || after === "systemd") {
    const pmUtils = await runTool(system, ["pm-is-supported", pmFlag]);
    if (pmUtils !== "missing" && "status" in pmUtils && pmUtils.status === 0) return { method: "pm-utils", argv: [pmTool] };
  }
  if (after !== "sysfs" && kernelState !== null && system.powerState.read()?.includes(kernelState)) return { method: "sysfs", state: kernelState };
  return null;
}

/** qemu-ga's answer when no step supports the mode; the native message names the mode and what was looked for. */
export function unsupportedMode(mode: SuspendMode): GuestError {
  const { unit, pmFlag, kernelState } = MODES[mode];
  const kernel = kernelState === null ? "the kernel has no hybrid state" : `/sys/power/state does not offer '${kernelState}'`;
  return new GuestError(
    "unsupported",
    "the requested suspend mode is not supported by the guest",
    `the guest cannot suspend to ${mode}: neither systemd (${unit}) nor pm-utils (pm-is-supported ${pmFlag}) offers it, and ${kernel}`,
  );
}

/**
 * Suspends by `step`, and by each later supported step while they fail, as
 * qemu-ga does. Resolves once a tool has done it (or the guest has resumed,
 * for /sys/power/state); rejects only when the write to /sys/power/state fails.
 */
export async function suspendFrom(mode: SuspendMode, first: SuspendStep, log: SuspendLog, system: SuspendSystem = LINUX_SUSPEND): Promise<void> {
  const attempt = (command: string) => {
    log.logger.info("guest suspend", { mode, command });
    log.audit.event("power", { phase: "suspend", action: mode, command });
  };
  const failure = (problem: string) => {
    log.logger.warn("guest suspend failed", { mode, error: problem });
    log.audit.event("power", { phase: "failed", action: mode, error: problem });
  };
  for (let step: SuspendStep | null = first; step !== null; step = await nextSuspendStep(mode, system, step.method)) {
    if (step.method === "sysfs") {
      attempt(`write ${step.state} to ${system.powerState.path}`);
      try {
        await system.powerState.write(step.state);
      } catch (error) {
        const problem = `suspend: cannot write to '${system.powerState.path}': ${strerror(error)}`;
        failure(problem);
        throw failed(problem);
      }
      return;
    }
    const label = step.argv.join(" ");
    attempt(label);
    const outcome = await runTool(system, step.argv);
    if (outcome !== "missing" && "status" in outcome && outcome.status === 0) return;
    failure(
      outcome === "missing"
        ? `the helper program '${label}' was not found`
        : "error" in outcome
          ? `failed to create child process, error '${outcome.error}'`
          : `the helper program '${label}' returned an unexpected exit status code (${outcome.status})`,
    );
  }
  // As qemu-ga: a tool that was supported but failed, with no step after it, leaves no error for the host.
}

/** guest-suspend-disk / -ram / -hybrid: the whole of it before the (absent) reply. */
export async function guestSuspend(mode: SuspendMode, log: SuspendLog, system: SuspendSystem = LINUX_SUSPEND): Promise<Record<string, never>> {
  const first = await nextSuspendStep(mode, system);
  if (first === null) throw unsupportedMode(mode);
  await suspendFrom(mode, first, log, system);
  return {};
}

export interface SuspendControllerOptions {
  system?: SuspendSystem;
  /** Default setTimeout/clearTimeout. */
  timers?: PowerTimers;
  /** Default GRACE_MS. */
  graceMs?: number;
}

/** The native `suspend`: reply first, then suspend; one at a time. */
export class SuspendController {
  private readonly system: SuspendSystem;
  private readonly timers: PowerTimers;
  private readonly graceMs: number;
  /** From the request until the guest has resumed (or every step failed). */
  private busy: SuspendMode | null = null;
  /** Resolves when the last suspend has finished; for tests. */
  settled: Promise<void> = Promise.resolve();

  constructor(
    private readonly log: SuspendLog,
    options: SuspendControllerOptions = {},
  ) {
    this.system = options.system ?? LINUX_SUSPEND;
    this.timers = options.timers ?? { set: (callback, ms) => setTimeout(callback, ms), clear: (handle) => clearTimeout(handle as Timer) };
    this.graceMs = options.graceMs ?? GRACE_MS;
  }

  private scheduled(mode: SuspendMode, way: { method: SuspendStep["method"]; command?: string; state?: string }): void {
    this.log.logger.info("guest suspend scheduled", { mode, ...way });
    this.log.audit.event("power", { phase: "scheduled", action: mode, ...way });
  }

  async request(mode: SuspendMode): Promise<Result<"suspend">> {
    if (this.busy) throw failed(`a suspend to ${this.busy} is already in progress`);
    this.busy = mode;
    let step: SuspendStep | null = null;
    try {
      step = await nextSuspendStep(mode, this.system);
      if (step === null) throw unsupportedMode(mode);
    } finally {
      if (step === null) this.busy = null;
    }
    // Not unref'd: a suspend the host was told of must happen even if nothing else keeps the agent alive.
    const first = step;
    this.timers.set(() => {
      this.settled = suspendFrom(mode, first, this.log, this.system)
        .catch(() => {}) // the failure is logged and audited; the host had its reply
        .finally(() => {
          this.busy = null;
        });
    }, this.graceMs);
    if (step.method === "sysfs") {
      this.scheduled(mode, { method: step.method, state: step.state });
      return { accepted: true, mode, method: step.method, state: step.state };
    }
    const command = [this.system.findTool(step.argv[0]!) ?? step.argv[0]!, ...step.argv.slice(1)];
    this.scheduled(mode, { method: step.method, command: command.join(" ") });
    return { accepted: true, mode, method: step.method, command };
  }
}
