/**
 * The Windows build under Debian's Wine 8.0: a smoke test of the Windows
 * executable, not proof for real Windows (docs say which is which).
 *
 * Caveats measured here: Wine 8.0 lacks bcryptprimitives.dll's ProcessPrng,
 * which Bun's runtime imports, so a test-only stand-in (test/windows/
 * bcryptprimitives.c, built with mingw) goes next to the exe; output must go to
 * files (piping Wine's output hangs); one wineserver (-p) per test process.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "./agent-process.ts";

const MINGW = "/usr/bin/x86_64-w64-mingw32-gcc";
const WINE = "/usr/bin/wine";

/** Wine and mingw are installed (CI installs both; elsewhere the Wine tests say they are skipped). */
export const wineAvailable = existsSync(WINE) && existsSync(MINGW);

/** A config next to the exe (pass `--config ${WINE_CONFIG}`): no QGA port, no audit file. */
export const WINE_CONFIG = "config.toml";

export interface WineDir {
  /** A private dir holding the exe and the stand-in DLL. */
  dir: string;
  exe: string;
  env: Record<string, string>;
}

let prepared: Promise<WineDir> | null = null;

/** Builds the Windows exe and the stand-in DLL once per test process, in a private dir with its own WINEPREFIX. */
export function prepareWine(): Promise<WineDir> {
  return (prepared ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), "kma-wine-"));
    const build = Bun.spawnSync([process.execPath, join(ROOT, "scripts", "build.ts"), "windows-x64"], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
    if (build.exitCode !== 0) throw new Error(`windows build failed:\n${build.stdout}${build.stderr}`);
    const exe = join(dir, "kvm-manager-agent.exe");
    writeFileSync(exe, readFileSync(join(ROOT, "dist", "kvm-manager-agent-windows-x64.exe")));
    const dll = Bun.spawnSync([MINGW, "-shared", "-O2", "-o", join(dir, "bcryptprimitives.dll"), join(ROOT, "test", "windows", "bcryptprimitives.c"), "-ladvapi32"], {
      stdout: "pipe",
      stderr: "pipe",
    });
    if (dll.exitCode !== 0) throw new Error(`mingw failed:\n${dll.stderr}`);
    writeFileSync(join(dir, WINE_CONFIG), '[qga]\nenabled = false\n[logging]\naudit_file = ""\n');
    const prefix = join(dir, "prefix");
    mkdirSync(prefix);
    const env = { ...process.env, WINEPREFIX: prefix, WINEDEBUG: "-all" } as Record<string, string>;
    // A persistent wineserver: every wine start after the first is then fast. It daemonizes and keeps
    // whatever outputs it was given: pipes here would never reach EOF.
    Bun.spawnSync(["wineserver", "-p"], { env, stdin: "ignore", stdout: "ignore", stderr: "ignore" });
    return { dir, exe, env };
  })());
}

/** Call from afterAll: kills this test file's wineserver and the Windows processes it keeps (winedevice.exe ...). */
export async function stopWine(): Promise<void> {
  if (!prepared) return;
  const { dir, env } = await prepared;
  // bun test shares modules between test files: the next file must get a prefix (and wineserver -p) of its own.
  prepared = null;
  Bun.spawnSync(["wineserver", "-k"], { env, stdin: "ignore", stdout: "ignore", stderr: "ignore" });
  Bun.spawnSync(["wineserver", "-w"], { env, stdin: "ignore", stdout: "ignore", stderr: "ignore" });
  // The prefix and the exe are ~1 GB: left behind, a few dozen runs fill the disk.
  rmSync(dir, { recursive: true, force: true });
}

export interface WineRunOptions {
  stdin?: Uint8Array;
  timeoutMs?: number;
  /** Wine's debug channels, e.g. "+eventlog" (default: none). */
  wineDebug?: string;
}

/** Runs the exe under Wine to completion, stdin from `stdin` (bytes) and both outputs through files. */
export async function runUnderWine(args: string[], options: WineRunOptions = {}) {
  const { exe } = await prepareWine();
  return runWineProgram([exe, ...args], options);
}

/** Any Windows program in this test file's prefix (`reg`, `cmd`, `sc`, `msiexec` ...), the same way as runUnderWine. */
export async function runWineProgram(argv: string[], { stdin, timeoutMs = 120_000, wineDebug }: WineRunOptions = {}) {
  const { dir, env } = await prepareWine();
  const run = mkdtempSync(join(dir, "run-"));
  const [input, out, err] = ["stdin", "stdout", "stderr"].map((name) => join(run, name)) as [string, string, string];
  writeFileSync(input, stdin ?? new Uint8Array(0));
  const proc = Bun.spawn([WINE, ...argv], {
    cwd: dir,
    env: wineDebug === undefined ? env : { ...env, WINEDEBUG: wineDebug },
    stdin: Bun.file(input),
    stdout: Bun.file(out),
    stderr: Bun.file(err),
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const exitCode = await proc.exited;
  clearTimeout(timer);
  return { exitCode, stdout: readFileSync(out), stderr: readFileSync(err, "utf8") };
}

export interface WineAgent {
  proc: ReturnType<typeof Bun.spawn>;
  /** What the agent has logged so far (its stderr, read back from the file). */
  log(): string;
  stop(): Promise<void>;
}

/** Starts the exe under Wine and leaves it running (outputs through files); stop() kills it. */
export async function startUnderWine(args: string[]): Promise<WineAgent> {
  const { dir, exe, env } = await prepareWine();
  const run = mkdtempSync(join(dir, "run-"));
  const [out, err] = ["stdout", "stderr"].map((name) => join(run, name)) as [string, string];
  const proc = Bun.spawn([WINE, exe, ...args], { cwd: dir, env, stdin: "ignore", stdout: Bun.file(out), stderr: Bun.file(err) });
  return {
    proc,
    log: () => (existsSync(err) ? readFileSync(err, "utf8") : ""),
    async stop() {
      proc.kill("SIGKILL");
      await proc.exited;
    },
  };
}

/** A Linux path as Wine's Windows programs name it (drive Z: is /). */
export function winePath(path: string): string {
  return `Z:${path.replaceAll("/", "\\")}`;
}

/**
 * The prefix's C:\windows\system32, where the stand-in DLL goes for an exe installed elsewhere
 * (by the MSI): the loader finds it there, as Wine has no bcryptprimitives.dll of its own.
 */
export async function installStandInDll(): Promise<void> {
  const { dir, env } = await prepareWine();
  // The prefix is created by the first Wine program; make sure it exists.
  await runWineProgram(["cmd", "/c", "exit"]);
  writeFileSync(join(env.WINEPREFIX!, "drive_c", "windows", "system32", "bcryptprimitives.dll"), readFileSync(join(dir, "bcryptprimitives.dll")));
}
