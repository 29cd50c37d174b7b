/**
 * A racer for check-then-use tests: swaps pairs of names in a directory with
 * renameat2(RENAME_EXCHANGE) as fast as it can, so each name is always there
 * and flips between, say, a real directory and a symlink out of the root.
 * Run as a process of its own (`startFlipRacer`) so the flips go on while the
 * code under test is inside a system call.
 */
import type { Subprocess } from "bun";

/** Starts the racer on `dir`, exchanging each [a, b] pair in turn; kill it when done. */
export function startFlipRacer(dir: string, pairs: [string, string][]): Subprocess {
  return Bun.spawn([process.execPath, import.meta.path, dir, ...pairs.flat()], { stdout: "ignore", stderr: "inherit" });
}

if (import.meta.main) {
  const { dlopen, FFIType } = await import("bun:ffi");
  const { renameat2 } = dlopen("libc.so.6", {
    renameat2: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
  }).symbols;
  const AT_FDCWD = -100;
  const RENAME_EXCHANGE = 2;
  const [dir, ...names] = process.argv.slice(2);
  const pairs: [Buffer, Buffer][] = [];
  for (let i = 0; i + 1 < names.length; i += 2) pairs.push([Buffer.from(`${dir}/${names[i]}\0`), Buffer.from(`${dir}/${names[i + 1]}\0`)]);
  for (;;) for (const [a, b] of pairs) renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
}
