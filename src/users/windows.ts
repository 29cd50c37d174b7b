/**
 * get_users on Windows: the terminal-services sessions (WTSEnumerateSessionsW)
 * that have a user name, through bun:ffi — no quser/query user child.
 *
 * Fields as the Linux utmp entries carry them: tty is the window station
 * ("Console", "RDP-Tcp#3"), host the RDP client's name (empty at the console),
 * login_time the session's LogonTime, and pid the session id (a Windows session
 * has no login process). Disconnected sessions are still logged in and listed,
 * as qemu-ga lists them.
 */
import { ptr, read, type Pointer } from "bun:ffi";
import { RpcError } from "../protocol/errors.ts";
import type { Result } from "../schema/methods.ts";
import type { UsersService } from "../services.ts";
import { lastError, readWideAt, wtsapi32 } from "../platform/windows/win32.ts";

export interface WtsSession {
  sessionId: number;
  station: string;
  user: string;
  /** The user's domain (the machine name for a local account); qemu-ga's guest-get-users reports it. */
  domain: string;
  client: string;
  /** LogonTime as a FILETIME (100 ns since 1601), 0 when unknown. */
  logonTime: bigint;
}

const FILETIME_UNIX_EPOCH = 116_444_736_000_000_000n;

/** FILETIME to seconds since the Unix epoch (0 stays 0: unknown). */
export function filetimeToEpochSeconds(filetime: bigint): number {
  if (filetime <= FILETIME_UNIX_EPOCH) return 0;
  return Number(filetime - FILETIME_UNIX_EPOCH) / 10_000_000;
}

export class WindowsUsers implements UsersService {
  constructor(private readonly sessions: () => WtsSession[] = wtsSessions) {}

  list(): Result<"get_users"> {
    return {
      users: this.loggedIn().map((s) => ({
        user: s.user,
        tty: s.station,
        host: s.client,
        login_time: Math.floor(filetimeToEpochSeconds(s.logonTime)),
        pid: s.sessionId,
      })),
    };
  }

  /** As qemu-ga's Windows guest-get-users: keyed by user name, earliest login, the first session's domain. */
  qgaUsers(): { user: string; "login-time": number; domain: string }[] {
    const byUser = new Map<string, { user: string; "login-time": number; domain: string }>();
    for (const s of this.loggedIn()) {
      const loginTime = filetimeToEpochSeconds(s.logonTime);
      const seen = byUser.get(s.user);
      if (!seen) byUser.set(s.user, { user: s.user, "login-time": loginTime, domain: s.domain });
      else if (loginTime < seen["login-time"]) seen["login-time"] = loginTime;
    }
    return [...byUser.values()];
  }

  private loggedIn(): WtsSession[] {
    let all: WtsSession[];
    try {
      all = this.sessions();
    } catch (error) {
      throw new RpcError("OPERATION_FAILED", `Cannot list sessions: ${(error as Error).message}`, {});
    }
    return all.filter((s) => s.user !== "");
  }
}

// ---------------------------------------------------------------- Win32

const WTS_CURRENT_SERVER_HANDLE = 0;
const SESSION_INFO_BYTES = 24; // WTS_SESSION_INFOW: DWORD id, LPWSTR station, enum state (x64)
const WTS = { UserName: 5, DomainName: 7, ClientName: 10, SessionInfo: 24 } as const;
/** WTSINFOW.LogonTime: after 8 DWORDs and WinStationName[32], Domain[17], UserName[21] WCHARs, 8-aligned, then 3 LARGE_INTEGERs. */
const WTSINFO_LOGON_TIME_OFFSET = 200;

function queryInfo<T>(sessionId: number, infoClass: number, decode: (at: Pointer, bytes: number) => T, fallback: T): T {
  const out = new BigUint64Array(1);
  const bytes = new Uint32Array(1);
  if (!wtsapi32().WTSQuerySessionInformationW(WTS_CURRENT_SERVER_HANDLE, sessionId, infoClass, ptr(out), ptr(bytes))) return fallback;
  const at = Number(out[0]) as Pointer;
  if (!at) return fallback;
  try {
    return decode(at, bytes[0]!);
  } finally {
    wtsapi32().WTSFreeMemory(at);
  }
}

const queryText = (sessionId: number, infoClass: number) => queryInfo(sessionId, infoClass, (at) => readWideAt(at, 256), "");

function wtsSessions(): WtsSession[] {
  const list = new BigUint64Array(1);
  const count = new Uint32Array(1);
  if (!wtsapi32().WTSEnumerateSessionsW(WTS_CURRENT_SERVER_HANDLE, 0, 1, ptr(list), ptr(count))) {
    throw new Error(`WTSEnumerateSessionsW failed with error ${lastError()}`);
  }
  const base = Number(list[0]) as Pointer;
  const out: WtsSession[] = [];
  try {
    for (let i = 0; i < count[0]!; i++) {
      const at = i * SESSION_INFO_BYTES;
      const sessionId = read.u32(base, at);
      const stationAt = read.ptr(base, at + 8) as Pointer;
      out.push({
        sessionId,
        station: stationAt ? readWideAt(stationAt, 64) : "",
        user: queryText(sessionId, WTS.UserName),
        domain: queryText(sessionId, WTS.DomainName),
        client: queryText(sessionId, WTS.ClientName),
        logonTime: queryInfo(sessionId, WTS.SessionInfo, (info, bytes) => (bytes >= WTSINFO_LOGON_TIME_OFFSET + 8 ? read.u64(info, WTSINFO_LOGON_TIME_OFFSET) : 0n), 0n),
      });
    }
  } finally {
    if (base) wtsapi32().WTSFreeMemory(base);
  }
  return out;
}
