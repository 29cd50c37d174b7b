/**
 * The Windows build under Debian's Wine 8.0: a smoke test of the Windows
 * executable, not proof for real Windows (docs say which is which).
 *
 * Caveats measured here: Wine 8.0 lacks bcryptprimitives.dll's ProcessPrng,
 * which Bun's runtime imports, so a test-only stand-in (test/windows/
 * bcryptprimitives.c, built with mingw) goes next to the exe; output must go to
 * files (piping Wine's output hangs); one wineserver (-p) per test process.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
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
  const { env } = await prepared;
  Bun.spawnSync(["wineserver", "-k"], { env, stdin: "ignore", stdout: "ignore", stderr: "ignore" });
  Bun.spawnSync(["wineserver", "-w"], { env, stdin: "ignore", stdout: "ignore", stderr: "ignore" });
}

/** Runs the exe under Wine to completion, stdin from `stdin` (bytes) and both outputs through files. */
export async function runUnderWine(args: string[], options: { stdin?: Uint8Array; timeoutMs?: number } = {}) {
  const { exe } = await prepareWine();
  return runWineProgram([exe, ...args], options);
}

/** Any Windows program in this test file's prefix (`reg`, `cmd` ...), the same way as runUnderWine. */
export async function runWineProgram(argv: string[], { stdin, timeoutMs = 120_000 }: { stdin?: Uint8Array; timeoutMs?: number } = {}) {
  const { dir, env } = await prepareWine();
  const run = mkdtempSync(join(dir, "run-"));
  const [input, out, err] = ["stdin", "stdout", "stderr"].map((name) => join(run, name)) as [string, string, string];
  writeFileSync(input, stdin ?? new Uint8Array(0));
  const proc = Bun.spawn([WINE, ...argv], { cwd: dir, env, stdin: Bun.file(input), stdout: Bun.file(out), stderr: Bun.file(err) });
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
