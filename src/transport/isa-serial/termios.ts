/**
 * Terminal settings of a serial line through glibc's termios calls.
 *
 * glibc's struct termios on Linux (x86_64 and aarch64 both use the generic
 * layout; measured with gcc against glibc 2.36): 60 bytes — c_iflag, c_oflag,
 * c_cflag, c_lflag as 32-bit words at 0, 4, 8, 12, c_line at 16, c_cc[32] at
 * 17, c_ispeed and c_ospeed at 52 and 56. glibc converts it to the kernel's
 * own struct, so only this layout matters here.
 */
import { ptr } from "bun:ffi";
import { errno, libc, LibcError } from "../../platform/linux/libc.ts";

export const TERMIOS_BYTES = 60;
const CC_OFFSET = 17;
const NCCS = 32;

export const VTIME = 5;
export const VMIN = 6;

// c_iflag
const IGNPAR = 0o4;
const INPCK = 0o20;
export const IXON = 0o2000;
const IXANY = 0o4000;
const IXOFF = 0o10000;
const IMAXBEL = 0o20000;
export const ICRNL = 0o400;
// c_cflag
export const CBAUD = 0o10017;
export const B38400 = 0o17;
export const CSIZE = 0o60;
export const CS8 = 0o60;
export const CREAD = 0o200;
export const CLOCAL = 0o4000;
const CRTSCTS = 0o20000000000;
// c_lflag
export const ICANON = 0o2;
export const ECHO = 0o10;

const TCSANOW = 0;
const TCIFLUSH = 0;

export interface TermiosState {
  iflag: number;
  oflag: number;
  cflag: number;
  lflag: number;
  /** c_cc, all NCCS control characters. */
  cc: Uint8Array;
}

function readRaw(fd: number): Uint8Array {
  const bytes = new Uint8Array(TERMIOS_BYTES);
  if (libc().tcgetattr(fd, ptr(bytes)) < 0) throw new LibcError("tcgetattr", errno());
  return bytes;
}

function decode(bytes: Uint8Array): TermiosState {
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, 4);
  return { iflag: words[0]!, oflag: words[1]!, cflag: words[2]!, lflag: words[3]!, cc: bytes.slice(CC_OFFSET, CC_OFFSET + NCCS) };
}

/** The line's current settings (tcgetattr). */
export function readTermios(fd: number): TermiosState {
  return decode(readRaw(fd));
}

/**
 * What qemu-ga does to its isa-serial channel, so bytes cross unchanged:
 * raw mode (cfmakeraw: no echo, no line editing, no CR/NL translation, no
 * signal characters, 8 bits without parity), no software flow control
 * (cfmakeraw leaves IXOFF and IXANY), 38400 baud as qemu-ga, VMIN=1 VTIME=0,
 * and what was queued before we opened the line dropped. Beyond qemu-ga:
 * CLOCAL (the modem lines cannot hang the line up, so a carrier drop on real
 * hardware is not an end of input) and no RTS/CTS flow control.
 */
export function configureSerialLine(fd: number): void {
  const lib = libc();
  const bytes = readRaw(fd);
  lib.cfmakeraw(ptr(bytes));
  const words = new Uint32Array(bytes.buffer, 0, 4);
  words[0] = words[0]! & ~(IXOFF | IXANY | IMAXBEL | INPCK | IGNPAR);
  words[2] = (words[2]! | CLOCAL | CREAD) & ~CRTSCTS;
  if (lib.cfsetspeed(ptr(bytes), B38400) < 0) throw new LibcError("cfsetspeed", errno());
  bytes[CC_OFFSET + VMIN] = 1;
  bytes[CC_OFFSET + VTIME] = 0;
  if (lib.tcflush(fd, TCIFLUSH) < 0) throw new LibcError("tcflush", errno());
  if (lib.tcsetattr(fd, TCSANOW, ptr(bytes)) < 0) throw new LibcError("tcsetattr", errno());
}
