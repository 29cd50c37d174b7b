/**
 * The termios layer through bun:ffi against real ptys on this machine, read
 * back with stty (which goes through the kernel, not through our layout).
 */
import { afterEach, expect, test } from "bun:test";
import { ptr } from "bun:ffi";
import { closeSync, openSync, readSync, writeSync } from "node:fs";
import { join } from "node:path";
import { libc } from "../src/platform/linux/libc.ts";
import {
  B38400,
  CBAUD,
  CLOCAL,
  configureSerialLine,
  CREAD,
  CS8,
  CSIZE,
  ECHO,
  ICANON,
  ICRNL,
  IXON,
  readTermios,
  TERMIOS_BYTES,
  VMIN,
  VTIME,
} from "../src/transport/isa-serial/termios.ts";
import { makeTempDir } from "./helpers/agent-process.ts";
import { openPty, type Pty } from "./helpers/pty.ts";

const ptys: Pty[] = [];
afterEach(() => {
  for (const pty of ptys.splice(0)) pty.close();
});

function pty(): Pty {
  const opened = openPty();
  ptys.push(opened);
  return opened;
}

function stty(path: string, ...args: string[]): string {
  const result = Bun.spawnSync(["stty", "-F", path, ...args], { stdout: "pipe", stderr: "pipe" });
  if (result.exitCode !== 0) throw new Error(`stty ${args.join(" ")}: ${result.stderr}`);
  return result.stdout.toString();
}

test("tcgetattr fills exactly 60 bytes (glibc's struct termios), no more", () => {
  const { slave } = pty();
  const buffer = new Uint8Array(256).fill(0xaa);
  expect(libc().tcgetattr(slave, ptr(buffer))).toBe(0);
  expect(buffer.subarray(TERMIOS_BYTES).every((b) => b === 0xaa)).toBe(true);
  // c_ispeed and c_ospeed, the last two words, hold the speed glibc reports (B38400 on a new pty).
  expect(new Uint32Array(buffer.buffer, TERMIOS_BYTES - 8, 2)).toEqual(Uint32Array.of(B38400, B38400));
});

test("a new pty decodes as the kernel's defaults: cooked flags and the control characters at c_cc", () => {
  const { slave } = pty();
  const termios = readTermios(slave);
  expect(termios.iflag & (ICRNL | IXON)).toBe(ICRNL | IXON);
  expect(termios.lflag & (ICANON | ECHO)).toBe(ICANON | ECHO);
  expect(termios.cflag & CBAUD).toBe(B38400);
  expect(termios.cflag & (CSIZE | CREAD)).toBe(CS8 | CREAD);
  // INIT_C_CC: ^C ^\ DEL ^U ^D, VTIME 0, VMIN 1, ...
  expect([...termios.cc.subarray(0, 7)]).toEqual([0x03, 0x1c, 0x7f, 0x15, 0x04, 0, 1]);
  expect(termios.cc).toHaveLength(32);
});

test("configureSerialLine: raw 8N1 at 38400 with CLOCAL, no flow control, VMIN 1 VTIME 0, as stty reads it", () => {
  const { slave, slavePath } = pty();
  // Start from everything it must undo (a pty keeps cs8 -parenb whatever is asked).
  stty(slavePath, "9600", "-clocal", "crtscts", "ixoff", "ixany", "imaxbel", "inpck", "ignpar", "min", "5", "time", "3");
  expect(stty(slavePath, "-a")).toContain("speed 9600 baud");
  configureSerialLine(slave);
  const settings = stty(slavePath, "-a");
  expect(settings).toContain("speed 38400 baud");
  expect(settings).toContain("min = 1; time = 0;");
  for (const flag of ["-parenb", "cs8", "cread", "clocal", "-crtscts"]) expect(settings.split(/\s+/)).toContain(flag);
  for (const flag of ["-ignbrk", "-brkint", "-ignpar", "-parmrk", "-inpck", "-istrip", "-inlcr", "-igncr", "-icrnl", "-ixon", "-ixoff", "-ixany", "-imaxbel"]) {
    expect(settings.split(/\s+/)).toContain(flag);
  }
  for (const flag of ["-opost", "-isig", "-icanon", "-echo", "-iexten"]) expect(settings.split(/\s+/)).toContain(flag);
  const termios = readTermios(slave);
  expect(termios.cflag & (CLOCAL | CREAD)).toBe(CLOCAL | CREAD);
  expect([termios.cc[VMIN], termios.cc[VTIME]]).toEqual([1, 0]);
});

test("configureSerialLine drops input queued before it, and bytes then cross unchanged", () => {
  const { master, slave } = pty();
  writeSync(master, Buffer.from("stale\n"));
  configureSerialLine(slave);
  const reader = openSync(`/proc/self/fd/${slave}`, "r+");
  try {
    const tricky = Uint8Array.from([0x03, 0x04, 0x0d, 0x0a, 0x11, 0x13, 0x1a, 0x7f, 0xff]);
    writeSync(master, tricky);
    const buffer = new Uint8Array(64);
    // The queued "stale\n" is gone; ^C, ^D, CR, ^Q, ^S, ^Z and DEL arrive as bytes.
    expect([...buffer.subarray(0, readSync(reader, buffer))]).toEqual([...tricky]);
  } finally {
    closeSync(reader);
  }
});

test("a device that is not a terminal is refused by name", () => {
  const dir = makeTempDir();
  const fd = openSync(join(dir, "not-a-tty"), "w+");
  try {
    expect(() => configureSerialLine(fd)).toThrow("tcgetattr() failed: ENOTTY (errno 25)");
  } finally {
    closeSync(fd);
  }
});
