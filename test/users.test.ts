import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RpcError } from "../src/protocol/errors.ts";
import { METHODS } from "../src/schema/methods.ts";
import { parseUtmp, UT, UTMP_RECORD_BYTES, UtmpUsers } from "../src/users/users.ts";

const dir = mkdtempSync(join(tmpdir(), "kma-utmp-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface UtmpFixture {
  type: number;
  pid?: number;
  line?: string;
  id?: string;
  user?: string;
  host?: string;
  sec?: number;
  usec?: number;
  session?: number;
}

/** One glibc x86_64/aarch64 struct utmp, little-endian; strings that fill their field get no NUL. */
function utmpRecord(r: UtmpFixture): Uint8Array {
  const bytes = new Uint8Array(UTMP_RECORD_BYTES);
  const view = new DataView(bytes.buffer);
  const put = (offset: number, size: number, text = "") => {
    const encoded = new TextEncoder().encode(text);
    if (encoded.length > size) throw new Error(`'${text}' does not fit in ${size} bytes`);
    bytes.set(encoded, offset);
  };
  view.setInt16(0, r.type, true);
  view.setInt32(4, r.pid ?? 0, true);
  put(8, 32, r.line);
  put(40, 4, r.id);
  put(44, 32, r.user);
  put(76, 256, r.host);
  view.setInt32(336, r.session ?? 0, true);
  view.setUint32(340, r.sec ?? 0, true);
  view.setInt32(344, r.usec ?? 0, true);
  view.setUint32(348, 0x0100_007f, true); // ut_addr_v6[0]: 127.0.0.1, ignored
  bytes.fill(0xee, 364, 384); // __unused: garbage must not matter
  return bytes;
}

function writeUtmp(name: string, records: UtmpFixture[], trailing: Uint8Array = new Uint8Array(0)): string {
  const parts = [...records.map(utmpRecord), trailing];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  const path = join(dir, name);
  writeFileSync(path, out);
  return path;
}

const LIVE = new Set([1, 800, 1234, 2345, 3456, 4567, 5678]);
const isAlive = (pid: number) => LIVE.has(pid);

const SYSTEM_RECORDS: UtmpFixture[] = [
  { type: UT.BOOT_TIME, line: "~", id: "~~", user: "reboot", host: "6.1.0-18-amd64", sec: 1_700_000_000 },
  { type: UT.RUN_LVL, pid: 53, line: "~", id: "~~", user: "runlevel", host: "6.1.0-18-amd64", sec: 1_700_000_005 },
  { type: UT.INIT_PROCESS, pid: 800, line: "ttyS0", id: "S0", sec: 1_700_000_006 },
  { type: UT.LOGIN_PROCESS, pid: 801, line: "tty1", id: "tty1", user: "LOGIN", sec: 1_700_000_007 },
];

test("only live USER_PROCESS records with a user, one per tty, in utmp order", () => {
  const path = writeUtmp("mixed", [
    ...SYSTEM_RECORDS,
    { type: UT.USER_PROCESS, pid: 1234, line: "pts/0", id: "ts/0", user: "alice", host: "192.0.2.10", sec: 1_700_000_100, usec: 250_000 },
    { type: UT.DEAD_PROCESS, pid: 999, line: "pts/1", id: "ts/1", user: "bob", host: "198.51.100.7", sec: 1_700_000_150 },
    { type: UT.USER_PROCESS, pid: 2345, line: "ttyS0", id: "S0", user: "root", host: "", sec: 1_700_000_200 },
    // A crashed sshd never wrote DEAD_PROCESS: its pid is gone, who(1) hides it.
    { type: UT.USER_PROCESS, pid: 9999, line: "pts/2", id: "ts/2", user: "mallory", host: "203.0.113.5", sec: 1_700_000_250 },
    // A user name that fills all 32 bytes (no NUL) and a 256-byte host.
    { type: UT.USER_PROCESS, pid: 3456, line: "pts/3", id: "ts/3", user: "u".repeat(32), host: "h".repeat(256), sec: 1_700_000_300 },
    // USER_PROCESS with an empty ut_user is not a login (who skips it).
    { type: UT.USER_PROCESS, pid: 4567, line: "pts/4", id: "ts/4", user: "", sec: 1_700_000_350 },
    { type: UT.ACCOUNTING, pid: 1, line: "pts/5", user: "acct", sec: 1_700_000_400 },
    // Non-ASCII survives as UTF-8; a time after 2038 (tv_sec read unsigned).
    { type: UT.USER_PROCESS, pid: 5678, line: ":0", id: ":0", user: "zoë", host: ":0", sec: 2_200_000_000 },
  ]);
  const result = new UtmpUsers({ path, isAlive }).list();
  expect(METHODS.get_users.result.parse(result)).toEqual(result);
  expect(result.users).toEqual([
    { user: "alice", tty: "pts/0", host: "192.0.2.10", login_time: 1_700_000_100, pid: 1234 },
    { user: "root", tty: "ttyS0", host: "", login_time: 1_700_000_200, pid: 2345 },
    { user: "u".repeat(32), tty: "pts/3", host: "h".repeat(256), login_time: 1_700_000_300, pid: 3456 },
    { user: "zoë", tty: ":0", host: ":0", login_time: 2_200_000_000, pid: 5678 },
  ]);
});

test("two live records for the same tty: the later login wins", () => {
  const path = writeUtmp("duplicate-tty", [
    { type: UT.USER_PROCESS, pid: 1234, line: "pts/0", user: "new", sec: 1_700_000_900 },
    { type: UT.USER_PROCESS, pid: 2345, line: "pts/0", user: "old", sec: 1_700_000_100 },
    { type: UT.USER_PROCESS, pid: 3456, line: "pts/1", user: "carol", sec: 1_700_000_500 },
    { type: UT.USER_PROCESS, pid: 4567, line: "pts/1", user: "carol2", sec: 1_700_000_600 },
  ]);
  expect(new UtmpUsers({ path, isAlive }).list().users.map((u) => `${u.tty}=${u.user}`)).toEqual(["pts/0=new", "pts/1=carol2"]);
});

test("a record without a pid (0) is kept: there is no process to check", () => {
  const path = writeUtmp("no-pid", [{ type: UT.USER_PROCESS, pid: 0, line: "pts/7", user: "dave", sec: 1_700_000_000 }]);
  expect(new UtmpUsers({ path, isAlive: () => false }).list().users.map((u) => u.user)).toEqual(["dave"]);
});

test("a truncated trailing record (a writer caught mid-write) is ignored", () => {
  const full = { type: UT.USER_PROCESS, pid: 1234, line: "pts/0", user: "alice", sec: 1_700_000_100 };
  const partial = utmpRecord({ type: UT.USER_PROCESS, pid: 2345, line: "pts/1", user: "bob", sec: 1_700_000_200 }).subarray(0, 200);
  const path = writeUtmp("truncated", [full], partial);
  expect(new UtmpUsers({ path, isAlive }).list().users.map((u) => u.user)).toEqual(["alice"]);
  expect(parseUtmp(new Uint8Array(UTMP_RECORD_BYTES - 1))).toEqual([]);
});

test("a missing utmp (or a missing directory on the way) means nobody is logged in", () => {
  expect(new UtmpUsers({ path: join(dir, "no-such-utmp") }).list()).toEqual({ users: [] });
  expect(new UtmpUsers({ path: join(dir, "mixed", "utmp") }).list()).toEqual({ users: [] }); // ENOTDIR
  expect(new UtmpUsers({ path: writeUtmp("empty", []) }).list()).toEqual({ users: [] });
});

test("an unreadable utmp is an OPERATION_FAILED error naming the file", () => {
  let error: unknown;
  try {
    new UtmpUsers({ path: dir }).list(); // EISDIR
  } catch (caught) {
    error = caught;
  }
  expect(error).toBeInstanceOf(RpcError);
  expect((error as RpcError).code).toBe(-32000);
  expect((error as RpcError).message).toContain(dir);
});

test("the default liveness check sees this process as alive and a reaped one as gone", async () => {
  const child = Bun.spawn(["true"]);
  await child.exited;
  const path = writeUtmp("real-pids", [
    { type: UT.USER_PROCESS, pid: process.pid, line: "pts/0", user: "me", sec: 1_700_000_000 },
    { type: UT.USER_PROCESS, pid: child.pid, line: "pts/1", user: "gone", sec: 1_700_000_000 },
  ]);
  expect(new UtmpUsers({ path }).list().users.map((u) => u.user)).toEqual(["me"]);
});

test("this machine's utmp (or its absence) gives a schema-valid list", () => {
  const result = new UtmpUsers().list();
  expect(METHODS.get_users.result.parse(result)).toEqual(result);
});
