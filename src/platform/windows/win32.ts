/**
 * The few Win32 calls Bun has no API for (registry, system times, memory and
 * disk space, terminal-services sessions, shutdown privilege), opened once on
 * first use through bun:ffi. Only loaded on Windows; callers inject fakes in tests.
 */
import { dlopen, FFIType, ptr, toArrayBuffer, type Pointer } from "bun:ffi";

function openKernel32() {
  return dlopen("kernel32.dll", {
    GetSystemTimes: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    GlobalMemoryStatusEx: { args: [FFIType.ptr], returns: FFIType.i32 },
    GetDiskFreeSpaceExW: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    GetLogicalDriveStringsW: { args: [FFIType.u32, FFIType.ptr], returns: FFIType.u32 },
    GetDriveTypeW: { args: [FFIType.ptr], returns: FFIType.u32 },
    GetVolumeInformationW: {
      args: [FFIType.ptr, FFIType.ptr, FFIType.u32, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.u32],
      returns: FFIType.i32,
    },
    K32EnumProcesses: { args: [FFIType.ptr, FFIType.u32, FFIType.ptr], returns: FFIType.i32 },
    GetConsoleOutputCP: { args: [], returns: FFIType.u32 },
    GetACP: { args: [], returns: FFIType.u32 },
    GetSystemDirectoryW: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.u32 },
    GetCurrentProcess: { args: [], returns: FFIType.ptr },
    CloseHandle: { args: [FFIType.ptr], returns: FFIType.i32 },
    GetLastError: { args: [], returns: FFIType.u32 },
  }).symbols;
}

function openAdvapi32() {
  return dlopen("advapi32.dll", {
    RegOpenKeyExW: { args: [FFIType.u64, FFIType.ptr, FFIType.u32, FFIType.u32, FFIType.ptr], returns: FFIType.i32 },
    RegQueryValueExW: { args: [FFIType.u64, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    RegCloseKey: { args: [FFIType.u64], returns: FFIType.i32 },
    OpenProcessToken: { args: [FFIType.ptr, FFIType.u32, FFIType.ptr], returns: FFIType.i32 },
    LookupPrivilegeValueW: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    AdjustTokenPrivileges: { args: [FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.u32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  }).symbols;
}

function openUser32() {
  return dlopen("user32.dll", {
    ExitWindowsEx: { args: [FFIType.u32, FFIType.u32], returns: FFIType.i32 },
  }).symbols;
}

function openWtsapi32() {
  return dlopen("wtsapi32.dll", {
    WTSEnumerateSessionsW: { args: [FFIType.u64, FFIType.u32, FFIType.u32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    WTSQuerySessionInformationW: { args: [FFIType.u64, FFIType.u32, FFIType.u32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    WTSFreeMemory: { args: [FFIType.ptr], returns: FFIType.void },
  }).symbols;
}

function openIphlpapi() {
  return dlopen("iphlpapi.dll", {
    GetIfTable2: { args: [FFIType.ptr], returns: FFIType.u32 },
    FreeMibTable: { args: [FFIType.ptr], returns: FFIType.void },
    GetAdaptersAddresses: { args: [FFIType.u32, FFIType.u32, FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.u32 },
  }).symbols;
}

let kernel32Symbols: ReturnType<typeof openKernel32> | null = null;
let advapi32Symbols: ReturnType<typeof openAdvapi32> | null = null;
let user32Symbols: ReturnType<typeof openUser32> | null = null;
let wtsapi32Symbols: ReturnType<typeof openWtsapi32> | null = null;
let iphlpapiSymbols: ReturnType<typeof openIphlpapi> | null = null;

export const kernel32 = () => (kernel32Symbols ??= openKernel32());
export const advapi32 = () => (advapi32Symbols ??= openAdvapi32());
export const user32 = () => (user32Symbols ??= openUser32());
export const wtsapi32 = () => (wtsapi32Symbols ??= openWtsapi32());
export const iphlpapi = () => (iphlpapiSymbols ??= openIphlpapi());

/** A NUL-terminated UTF-16LE string for a W function. */
export function wide(text: string): Buffer {
  return Buffer.from(`${text}\0`, "utf16le");
}

/** UTF-16LE up to the first NUL. */
export function fromWide(bytes: Uint8Array): string {
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength & ~1).toString("utf16le");
  const end = text.indexOf("\0");
  return end < 0 ? text : text.slice(0, end);
}

/** A NUL-terminated UTF-16 string the OS allocated, read in place (at most `maxChars`). */
export function readWideAt(address: Pointer, maxChars = 4096): string {
  const view = new Uint16Array(toArrayBuffer(address, 0, maxChars * 2));
  let end = 0;
  while (end < view.length && view[end] !== 0) end++;
  return Buffer.from(view.buffer, view.byteOffset, end * 2).toString("utf16le");
}

export function lastError(): number {
  return kernel32().GetLastError();
}

// --- Registry -----------------------------------------------------------------------------------

export const HKEY_LOCAL_MACHINE = 0x80000002;
const KEY_READ = 0x20019;
const KEY_WOW64_64KEY = 0x0100;
const REG_SZ = 1;
const REG_EXPAND_SZ = 2;
const REG_DWORD = 4;

export type RegistryValue = string | number;

/** Every value of `names` under HKLM\`subkey` that exists and is a string or a DWORD; missing values are left out. */
export function readRegistryValues(subkey: string, names: readonly string[]): Map<string, RegistryValue> {
  const out = new Map<string, RegistryValue>();
  const handleOut = new BigUint64Array(1);
  const status = advapi32().RegOpenKeyExW(HKEY_LOCAL_MACHINE, wide(subkey), 0, KEY_READ | KEY_WOW64_64KEY, ptr(handleOut));
  if (status !== 0) throw new Error(`RegOpenKeyExW(HKLM\\${subkey}) failed with error ${status}`);
  const key = handleOut[0]!;
  try {
    const type = new Uint32Array(1);
    const size = new Uint32Array(1);
    const data = new Uint8Array(1024);
    for (const name of names) {
      size[0] = data.byteLength;
      if (advapi32().RegQueryValueExW(key, wide(name), null, ptr(type), ptr(data), ptr(size)) !== 0) continue;
      if (type[0] === REG_SZ || type[0] === REG_EXPAND_SZ) out.set(name, fromWide(data.subarray(0, size[0])));
      else if (type[0] === REG_DWORD && size[0] === 4) out.set(name, new DataView(data.buffer).getUint32(0, true));
    }
  } finally {
    advapi32().RegCloseKey(key);
  }
  return out;
}

/** "C:\\Windows\\system32": where the system's own tools live, whatever PATH says. */
export function systemDirectory(): string {
  const buffer = new Uint16Array(512);
  const length = kernel32().GetSystemDirectoryW(ptr(buffer), buffer.length);
  if (length === 0 || length >= buffer.length) throw new Error(`GetSystemDirectoryW failed with error ${lastError()}`);
  return Buffer.from(buffer.buffer, 0, length * 2).toString("utf16le");
}

// --- Shutdown -----------------------------------------------------------------------------------

const TOKEN_ADJUST_PRIVILEGES = 0x20;
const TOKEN_QUERY = 0x8;
const SE_PRIVILEGE_ENABLED = 0x2;
const ERROR_NOT_ALL_ASSIGNED = 1300;

/** Enables SeShutdownPrivilege on this process's token (LocalSystem holds it disabled), then ExitWindowsEx. Returns the Win32 error, 0 on success. */
export function exitWindows(flags: number, reason: number): number {
  const token = new BigUint64Array(1);
  if (!advapi32().OpenProcessToken(kernel32().GetCurrentProcess(), TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY, ptr(token))) return lastError();
  const tokenHandle = Number(token[0]) as Pointer;
  try {
    // TOKEN_PRIVILEGES with one LUID_AND_ATTRIBUTES: count u32, LUID (u32 low, i32 high), attributes u32.
    const privileges = new Uint32Array(4);
    privileges[0] = 1;
    if (!advapi32().LookupPrivilegeValueW(null, wide("SeShutdownPrivilege"), ptr(privileges, 4))) return lastError();
    privileges[3] = SE_PRIVILEGE_ENABLED;
    if (!advapi32().AdjustTokenPrivileges(tokenHandle, 0, ptr(privileges), 0, null, null)) return lastError();
    // Success with ERROR_NOT_ALL_ASSIGNED means the account does not hold the privilege at all.
    const adjusted = lastError();
    if (adjusted === ERROR_NOT_ALL_ASSIGNED) return adjusted;
  } finally {
    kernel32().CloseHandle(tokenHandle);
  }
  return user32().ExitWindowsEx(flags, reason) ? 0 : lastError();
}
