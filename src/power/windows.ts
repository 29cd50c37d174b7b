/**
 * shutdown / reboot on Windows, through the shared PowerController (reply
 * first, then act; replace, refuse, audit): the plan is ExitWindowsEx in
 * process (after enabling SeShutdownPrivilege), then shutdown.exe from the
 * system directory should that fail. The "command" ExitWindowsEx is carried as
 * an argv like any other, so the reply, the log and the audit name it:
 *   graceful: ExitWindowsEx EWX_POWEROFF|EWX_REBOOT|EWX_SHUTDOWN EWX_FORCEIFHUNG
 *             shutdown.exe /s|/r /t 0 [/c message]
 *   force:    ExitWindowsEx ... EWX_FORCE
 *             shutdown.exe /s|/r /t 0 /f [/c message]
 * Windows has no halt: it powers off (EWX_SHUTDOWN stops without powering off
 * where the firmware allows; shutdown.exe has no such mode, so /s).
 */
import { win32 } from "node:path";
import { exitWindows, systemDirectory } from "../platform/windows/win32.ts";
import { spawnCommand, type ExecOutcome, type PowerAction, type PowerControllerOptions, type PowerExecutor } from "./power.ts";

export const EXIT_WINDOWS = "ExitWindowsEx";
export const EWX = { EWX_SHUTDOWN: 0x1, EWX_REBOOT: 0x2, EWX_FORCE: 0x4, EWX_POWEROFF: 0x8, EWX_FORCEIFHUNG: 0x10 } as const;
/** SHTDN_REASON_FLAG_PLANNED | SHTDN_REASON_MAJOR_OTHER | SHTDN_REASON_MINOR_OTHER, as qemu-ga passes it. */
export const SHUTDOWN_REASON = 0x80000000;

const ACTION_FLAG = { poweroff: "EWX_POWEROFF", reboot: "EWX_REBOOT", halt: "EWX_SHUTDOWN" } as const;

export interface WindowsPowerCalls {
  /** ExitWindowsEx with SeShutdownPrivilege enabled: the Win32 error code, 0 on success. */
  exitWindows: (flags: number, reason: number) => number;
  /** C:\Windows\system32 */
  systemDirectory: () => string;
  /** Runs shutdown.exe; default spawnCommand with the system directory as the only PATH. */
  spawn: PowerExecutor;
}

export function windowsPowerCommands(action: PowerAction, force: boolean, message: string | undefined, system32: string): string[][] {
  const tool = [action === "reboot" ? "/r" : "/s", "/t", "0", ...(force ? ["/f"] : []), ...(message === undefined ? [] : ["/c", message])];
  return [
    [EXIT_WINDOWS, ACTION_FLAG[action], force ? "EWX_FORCE" : "EWX_FORCEIFHUNG"],
    [win32.join(system32, "shutdown.exe"), ...tool],
  ];
}

/** The ExitWindowsEx flags an argv names; unknown names are a programming error. */
export function exitWindowsFlags(names: string[]): number {
  return names.reduce((flags, name) => {
    const flag = EWX[name as keyof typeof EWX];
    if (flag === undefined) throw new Error(`unknown ExitWindowsEx flag ${name}`);
    return flags | flag;
  }, 0);
}

export function windowsPowerOptions(calls: Partial<WindowsPowerCalls> = {}): PowerControllerOptions {
  const system32 = calls.systemDirectory ?? systemDirectory;
  const exit = calls.exitWindows ?? exitWindows;
  const spawn = calls.spawn ?? ((argv: string[]) => spawnCommand(argv, { PATH: system32(), SystemRoot: win32.join(system32(), "..") }));
  const executor = async (argv: string[]): Promise<ExecOutcome> => {
    if (argv[0] !== EXIT_WINDOWS) return spawn(argv);
    const error = exit(exitWindowsFlags(argv.slice(1)), SHUTDOWN_REASON);
    return error === 0 ? { exitCode: 0 } : { exitCode: null, error: `ExitWindowsEx failed with Win32 error ${error}` };
  };
  return { executor, plan: (action, force, message) => windowsPowerCommands(action, force, message, system32()) };
}
