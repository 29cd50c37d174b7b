/**
 * get_users: logged-in users, read from utmp directly (no who(1) child).
 *
 * struct utmp on x86_64 and aarch64 glibc is 384 bytes, little-endian:
 *   0 ut_type int16 (+2 pad) | 4 ut_pid int32 | 8 ut_line char[32] | 40 ut_id char[4]
 *   44 ut_user char[32] | 76 ut_host char[256] | 332 ut_exit 2×int16 | 336 ut_session int32
 *   340 ut_tv {int32 sec, int32 usec} | 348 ut_addr_v6 4×int32 | 364 unused[20]
 *
 * What counts as a logged-in user — as coreutils who(1) does when it reads
 * the system utmp (read_utmp with READ_UTMP_CHECK_PIDS):
 * - USER_PROCESS (7) records with a non-empty ut_user only;
 * - records whose process is gone (kill(pid, 0) fails with ESRCH) are stale
 *   (a crashed sshd never wrote its DEAD_PROCESS) and left out;
 * - one entry per tty: should two live records name the same line, the later
 *   login wins (records without a line are keyed by pid instead).
 * Entries keep utmp's order. ut_tv.tv_sec is read unsigned, so times after
 * 2038 still come out right. A missing utmp (containers, minimal images)
 * means nobody is logged in: an empty list, not an error.
 */
import { readFileSync } from "node:fs";
import { RpcError } from "../protocol/errors.ts";
import type { Result } from "../schema/methods.ts";
import type { UsersService } from "../services.ts";

export const UTMP_RECORD_BYTES = 384;
export const UT = {
  EMPTY: 0,
  RUN_LVL: 1,
  BOOT_TIME: 2,
  NEW_TIME: 3,
  OLD_TIME: 4,
  INIT_PROCESS: 5,
  LOGIN_PROCESS: 6,
  USER_PROCESS: 7,
  DEAD_PROCESS: 8,
  ACCOUNTING: 9,
} as const;

export type LoggedInUser = Result<"get_users">["users"][number];

export interface UtmpUsersOptions {
  /** Default /var/run/utmp. */
  path?: string;
  /** Whether a login's process still exists; default kill(pid, 0) (EPERM counts as alive). */
  isAlive?: (pid: number) => boolean;
}

export class UtmpUsers implements UsersService {
  private readonly path: string;
  private readonly isAlive: (pid: number) => boolean;

  constructor(options: UtmpUsersOptions = {}) {
    this.path = options.path ?? "/var/run/utmp";
    this.isAlive = options.isAlive ?? processExists;
  }

  list(): Result<"get_users"> {
    return { users: loggedInUsers(this.records(), this.isAlive) };
  }

  /**
   * guest-get-users: one entry per user with the earliest login, as qemu-ga
   * lists them — but, like who(1), only sessions whose process is alive.
   */
  qgaUsers(): { user: string; "login-time": number }[] {
    const byUser = new Map<string, number>();
    for (const r of this.records()) {
      if (r.type !== UT.USER_PROCESS || r.user === "" || (r.pid > 0 && !this.isAlive(r.pid))) continue;
      const loginTime = r.tv_sec + r.tv_usec / 1e6;
      const earliest = byUser.get(r.user);
      if (earliest === undefined || loginTime < earliest) byUser.set(r.user, loginTime);
    }
    return [...byUser].map(([user, loginTime]) => ({ user, "login-time": loginTime }));
  }

  private records(): UtmpRecord[] {
    let bytes: Uint8Array;
    try {
      bytes = readFileSync(this.path);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") return [];
      throw new RpcError("OPERATION_FAILED", `cannot read ${this.path}: ${(error as Error).message}`, { errno: code ?? null, path: this.path });
    }
    return parseUtmp(bytes);
  }
}

export interface UtmpRecord {
  type: number;
  pid: number;
  line: string;
  id: string;
  user: string;
  host: string;
  session: number;
  tv_sec: number;
  tv_usec: number;
}

const text = new TextDecoder("utf-8", { fatal: false });

function cString(bytes: Uint8Array, offset: number, length: number): string {
  let end = offset;
  const limit = offset + length;
  while (end < limit && bytes[end] !== 0) end++;
  return text.decode(bytes.subarray(offset, end));
}

/** Every complete record; a truncated trailing record (a writer caught mid-write) is ignored. */
export function parseUtmp(bytes: Uint8Array): UtmpRecord[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: UtmpRecord[] = [];
  for (let at = 0; at + UTMP_RECORD_BYTES <= bytes.length; at += UTMP_RECORD_BYTES) {
    out.push({
      type: view.getInt16(at, true),
      pid: view.getInt32(at + 4, true),
      line: cString(bytes, at + 8, 32),
      id: cString(bytes, at + 40, 4),
      user: cString(bytes, at + 44, 32),
      host: cString(bytes, at + 76, 256),
      session: view.getInt32(at + 336, true),
      tv_sec: view.getUint32(at + 340, true),
      tv_usec: view.getInt32(at + 344, true),
    });
  }
  return out;
}

export function loggedInUsers(records: UtmpRecord[], isAlive: (pid: number) => boolean): LoggedInUser[] {
  const byKey = new Map<string, LoggedInUser>();
  for (const r of records) {
    if (r.type !== UT.USER_PROCESS || r.user === "") continue;
    if (r.pid > 0 && !isAlive(r.pid)) continue;
    const entry: LoggedInUser = { user: r.user, tty: r.line, host: r.host, login_time: r.tv_sec, pid: r.pid };
    const key = r.line !== "" ? `line:${r.line}` : `pid:${r.pid}`;
    const seen = byKey.get(key);
    if (seen && seen.login_time > entry.login_time) continue;
    byKey.delete(key); // Keep the survivor at the position of the later record.
    byKey.set(key, entry);
  }
  return [...byKey.values()];
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== "ESRCH";
  }
}
