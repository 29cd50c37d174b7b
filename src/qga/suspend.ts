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
 * SAFE_PATH and spawned without a shell. Success sends no reply
 * (success-response false); writing /sys/power/state returns only after the
 * resume, without holding the event loop (the write is asynchronous).
 */
import { constants, readFileSync } from "node:fs";
import { open } from "node:fs/promises";
import type { AuditLog } from "../log/audit.ts";
import type { Logger } from "../log/logger.ts";
import { findTool, SAFE_PATH } from "../power/power.ts";
import { strerror } from "../guest/errors.ts";
import { genericError } from "./errors.ts";

export type SuspendMode = "disk" | "ram" | "hybrid";

const MODES: Record<SuspendMode, { unit: string; verb: string; pmFlag: string; pmTool: string; kernelState: string | null }> = {
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

export async function guestSuspend(
  mode: SuspendMode,
  log: { logger: Logger; audit: AuditLog },
  system: SuspendSystem = LINUX_SUSPEND,
): Promise<Record<string, never>> {
  const { unit, verb, pmFlag, pmTool, kernelState } = MODES[mode];
  /** qemu-ga's run_process_child: the exit status, or "missing" for a tool it cannot find. */
  const run = async (argv: string[]) => {
    const path = system.findTool(argv[0]!);
    return path ? system.run([path, ...argv.slice(1)]) : ("missing" as const);
  };
  const attempt = (command: string) => {
    log.logger.info("guest suspend", { mode, command });
    log.audit.event("power", { phase: "suspend", action: mode, command });
  };
  /** Runs a suspend tool: null when it succeeded, else qemu-ga's words for why not. */
  const suspendWith = async (argv: string[]): Promise<string | null> => {
    const label = argv.join(" ");
    attempt(label);
    const outcome = await run(argv);
    if (outcome === "missing") return `the helper program '${label}' was not found`;
    if ("error" in outcome) return `failed to create child process, error '${outcome.error}'`;
    return outcome.status === 0 ? null : `the helper program '${label}' returned an unexpected exit status code (${outcome.status})`;
  };
  const failed = (problem: string) => {
    log.logger.warn("guest suspend failed", { mode, error: problem });
    log.audit.event("power", { phase: "failed", action: mode, error: problem });
  };

  let supported = false;
  const systemd = await run(["systemctl", "status", unit]);
  if (systemd !== "missing" && "status" in systemd && systemd.status > 0 && systemd.status < 4) {
    supported = true;
    const problem = await suspendWith(["systemctl", verb]);
    if (problem === null) return {};
    failed(problem);
  }
  const pmUtils = await run(["pm-is-supported", pmFlag]);
  if (pmUtils !== "missing" && "status" in pmUtils && pmUtils.status === 0) {
    supported = true;
    const problem = await suspendWith([pmTool]);
    if (problem === null) return {};
    failed(problem);
  }
  if (kernelState !== null && system.powerState.read()?.includes(kernelState)) {
    attempt(`write ${kernelState} to ${system.powerState.path}`);
    try {
      await system.powerState.write(kernelState);
    } catch (error) {
      const problem = `suspend: cannot write to '${system.powerState.path}': ${strerror(error)}`;
      failed(problem);
      throw genericError(problem);
    }
    return {};
  }
  if (!supported) throw genericError("the requested suspend mode is not supported by the guest");
  // As qemu-ga: a tool that was supported but failed, with no step after it, leaves no error for the host.
  return {};
}
