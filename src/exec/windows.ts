/**
 * exec on Windows: what differs from Linux, as a CommandPlatform (policy.ts)
 * and the output decoder; the allowlist rules are the same.
 *
 * - Commands: a name is looked up in the system directories only
 *   (System32, the Windows directory, System32\Wbem, PowerShell's), never
 *   in PATH; an absolute path must be a drive path (`C:\...`). Only .exe and
 *   .com files run, and a name without extension means name.exe or name.com:
 *   batch files and scripts would run through cmd.exe, a shell the allowlist
 *   did not name — allow cmd.exe itself and pass `/c` for that.
 *   Drive-relative (`C:foo`), `\\?\`, `\\.\`, UNC and relative paths are refused.
 *   Real paths compare case-insensitively.
 * - Environment: the child gets a fixed minimal one (SystemRoot, windir,
 *   ComSpec, Path, PATHEXT, TEMP, TMP, SystemDrive: without SystemRoot much of
 *   Win32 fails in the child). Refused besides the interpreter hooks Linux
 *   refuses: PATH, PATHEXT, ComSpec, SystemRoot, windir (where programs load
 *   code from), PSModulePath, __COMPAT_LAYER (compatibility shims such as
 *   RunAsInvoker), and the .NET profiler and start-up hooks (COR_*, CORECLR_*,
 *   COMPlus_*, DOTNET_*), each of which loads a DLL of the caller's choice.
 * - Output: console programs write in the console's code page (see
 *   consoleOutputCodePage): it is decoded and passed on as UTF-8, so
 *   stdout_base64 holds UTF-8 like on Linux.
 */
import { win32 } from "node:path";
import { kernel32, systemDirectory } from "../platform/windows/win32.ts";
import { exitOf, spawnDetached, type ProcessOps, type Transcoder } from "./child.ts";
import type { ExecDeps } from "./exec-service.ts";
import { FORBIDDEN_ENV, POSIX_COMMANDS, type CommandPlatform } from "./policy.ts";

const RUNNABLE = /\.(exe|com)$/i;
/** Refused in a request's env on Windows, upper-cased; the interpreter hooks of FORBIDDEN_ENV come on top. */
export const WINDOWS_FORBIDDEN_ENV = new Set(["PATH", "PATHEXT", "COMSPEC", "SYSTEMROOT", "WINDIR", "PSMODULEPATH", "__COMPAT_LAYER"]);
const WINDOWS_FORBIDDEN_PREFIXES = ["COR_", "CORECLR_", "COMPLUS_", "DOTNET_"];
/** FORBIDDEN_ENV's entries that name programs Windows runs as well (not the glibc and shell ones). */
const INTERPRETER_ENV = [...FORBIDDEN_ENV].filter((name) => /^(PYTHON|PERL|RUBY|NODE_|JAVA_|_JAVA|JDK_)/.test(name));

export function windowsForbiddenEnvReason(name: string): string | null {
  const upper = name.toUpperCase();
  if (upper === "PATH") return "PATH is fixed to the agent's safe path";
  if (WINDOWS_FORBIDDEN_ENV.has(upper) || WINDOWS_FORBIDDEN_PREFIXES.some((prefix) => upper.startsWith(prefix))) return "it makes programs load code from elsewhere";
  if (INTERPRETER_ENV.includes(upper)) return "it makes programs load code from elsewhere";
  return null;
}

/** Why `path` is not a plain absolute drive path (C:\...), or null. Device, UNC and drive-relative forms are refused by name. */
export function windowsPathProblem(path: string): string | null {
  if (/^[\\/]{2}[?.][\\/]/.test(path)) return "must not be a \\\\?\\ or \\\\.\\ device path";
  if (/^[\\/]{2}/.test(path)) return "must not be a UNC path (\\\\server\\share)";
  if (/^[A-Za-z]:(?![\\/])/.test(path)) return "must not be drive-relative (C:foo); use C:\\foo";
  if (!/^[A-Za-z]:[\\/]/.test(path)) return "must be an absolute path with a drive (C:\\...)";
  return null;
}

/** The command rules for a Windows whose system directory is `system32` (C:\Windows\System32). */
export function windowsCommandPlatform(system32: string): CommandPlatform {
  const windowsDir = win32.dirname(system32);
  const searched = [system32, windowsDir, win32.join(system32, "Wbem"), win32.join(system32, "WindowsPowerShell", "v1.0")];
  const safePath = searched.join(";");
  const drive = windowsDir.slice(0, 2);
  const temp = win32.join(windowsDir, "Temp");
  const named = (file: string) => (RUNNABLE.test(file) ? [file] : [`${file}.exe`, `${file}.com`]);
  return {
    safePath,
    baseEnv: { SystemRoot: windowsDir, windir: windowsDir, SystemDrive: drive, ComSpec: win32.join(system32, "cmd.exe"), Path: safePath, PATHEXT: ".COM;.EXE", TEMP: temp, TMP: temp },
    forbiddenEnvReason: windowsForbiddenEnvReason,
    candidates(command) {
      if (/[\\/]/.test(command) || /^[A-Za-z]:/.test(command)) {
        const problem = windowsPathProblem(command);
        return problem === null ? named(win32.normalize(command)) : { refused: `the path ${problem}` };
      }
      return searched.flatMap((dir) => named(win32.join(dir, command)));
    },
    caseInsensitive: true,
    basename: (path) => win32.basename(path),
    cwdProblem: windowsPathProblem,
    defaultCwd: system32,
  };
}

/** Code pages with a WHATWG decoder in Bun's TextDecoder. */
const WHATWG_CODE_PAGES: Record<number, string> = {
  866: "ibm866", 874: "windows-874", 932: "shift_jis", 936: "gbk", 949: "euc-kr", 950: "big5", 54936: "gb18030",
  1250: "windows-1250", 1251: "windows-1251", 1252: "windows-1252", 1253: "windows-1253", 1254: "windows-1254",
  1255: "windows-1255", 1256: "windows-1256", 1257: "windows-1257", 1258: "windows-1258",
};

/** The upper halves of the OEM code pages that WHATWG lacks (the lower halves are ASCII). */
const OEM_UPPER_HALVES: Record<number, string> = {
  437:
    "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0",
  850:
    "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜø£Ø×ƒáíóúñÑªº¿®¬½¼¡«»░▒▓│┤ÁÂÀ©╣║╗╝¢¥┐└┴┬├─┼ãÃ╚╔╩╦╠═╬¤ðÐÊËÈıÍÎÏ┘┌█▄¦Ì▀ÓßÔÒõÕµþÞÚÛÙýÝ¯´\u00ad±‗¾¶§÷¸°¨·¹³²■\u00a0",
};

const CP_UTF8 = 65001;

/**
 * A decoder from `codePage` to UTF-8 for one output stream (multi-byte
 * characters split across chunks are kept for the next one), or null when the
 * output passes as it is: UTF-8 already, or a code page with no decoder here.
 */
export function codePageTranscoder(codePage: number): (() => Transcoder) | null {
  if (codePage === CP_UTF8) return null;
  const encoder = new TextEncoder();
  const upper = OEM_UPPER_HALVES[codePage];
  if (upper !== undefined) {
    const table = Array.from({ length: 256 }, (_, byte) => (byte < 0x80 ? String.fromCharCode(byte) : upper[byte - 0x80]!));
    return () => ({
      push: (chunk) => encoder.encode(Array.from(chunk, (byte) => table[byte]).join("")),
      end: () => new Uint8Array(0),
    });
  }
  const label = WHATWG_CODE_PAGES[codePage];
  if (label === undefined) return null;
  return () => {
    const decoder = new TextDecoder(label as ConstructorParameters<typeof TextDecoder>[0]); // Bun's type lists fewer labels than it decodes
    return { push: (chunk) => encoder.encode(decoder.decode(chunk, { stream: true })), end: () => encoder.encode(decoder.decode()) };
  };
}

/**
 * The code page a child's console output comes in. Children run detached, without
 * a console, so GetConsoleOutputCP is 0 in them, and cmd.exe then writes in CP_ACP
 * (measured under Wine: `echo é` gives 0xE9, windows-1252): the agent's console
 * code page where it has a console, else the ANSI one.
 */
export function consoleOutputCodePage(): number {
  return kernel32().GetConsoleOutputCP() || kernel32().GetACP();
}

/**
 * Bun's own pipes, streamed from the start; and the single process on Windows,
 * which has no process groups: TerminateProcess reaches the command itself,
 * not what it started (a job object would).
 */
export const windowsProcessOps: ProcessOps = {
  spawn(request) {
    const proc = spawnDetached(request, "pipe", "pipe");
    return {
      pid: proc.pid,
      stdout: { stream: () => proc.stdout, close: () => {} },
      stderr: { stream: () => proc.stderr, close: () => {} },
      exited: exitOf(proc),
    };
  },
  killGroup(pid, signal) {
    if (!Number.isInteger(pid) || pid <= 0) return false;
    try {
      process.kill(pid, signal as NodeJS.Signals);
      return true;
    } catch {
      return false; // Gone already.
    }
  },
};

/** ExecManager's Windows dependencies, from the running system. */
export function windowsExecDeps(): Partial<ExecDeps> {
  return { platform: windowsCommandPlatform(systemDirectory()), processes: windowsProcessOps, transcoder: codePageTranscoder(consoleOutputCodePage()) };
}

/** The command rules of the OS the agent runs on (for the self-test's allowlist check). */
export function runningCommandPlatform(): CommandPlatform {
  return process.platform === "win32" ? windowsCommandPlatform(systemDirectory()) : POSIX_COMMANDS;
}
