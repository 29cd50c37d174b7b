/**
 * The compiled agent invoked as `qemu-ga` (a symlink, as a package that
 * replaces qemu-ga would install): qemu-ga's command line, config file,
 * pidfile, logfile and daemon mode, serving the QGA protocol only.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureBinary, eventually, processGone } from "../helpers/agent-process.ts";

const dir = mkdtempSync(join(tmpdir(), "kma-qemu-ga-mode-"));
const asQemuGa = join(dir, "qemu-ga");
const REAL_QEMU_GA = "/usr/sbin/qemu-ga";

beforeAll(async () => {
  symlinkSync(await ensureBinary(), asQemuGa);
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function run(args: string[], env: Record<string, string> = {}) {
  const result = Bun.spawnSync([asQemuGa, ...args], { env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" });
  return { code: result.exitCode, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

async function qgaCall(socket: string, request: object): Promise<unknown> {
  let received = "";
  const connection = await Bun.connect({ unix: socket, socket: { data: (_, chunk) => void (received += chunk.toString()) } });
  connection.write(JSON.stringify(request));
  const line = await eventually(() => (received.includes("\n") ? received.split("\n")[0] : undefined), 5_000);
  connection.end();
  return JSON.parse(line!);
}

describe.skipIf(!existsSync(REAL_QEMU_GA))("-D dumps the config file qemu-ga would", () => {
  const flagSets = [
    [],
    ["-m", "unix-listen", "-p", "/tmp/x.sock", "-l", "/tmp/qga.log", "-f", "/tmp/qga.pid", "-F/etc/hook.sh", "-t", "/tmp/state", "-v", "-r", "-b", "guest-ping,guest-exec"],
    ["--method=vsock-listen", "--path", "3:1234", "-F", "--statedir=/var/lib/qga", "--block-rpcs=guest-shutdown"],
    ["-m", "isa-serial"],
    ["-m", "isa-serial", "-p", "/dev/ttyS1"],
  ];
  for (const flags of flagSets) {
    test(`qemu-ga -D ${flags.join(" ")}`, () => {
      const mine = run(["-D", ...flags]);
      const reference = Bun.spawnSync([REAL_QEMU_GA, "-D", ...flags]).stdout.toString();
      expect(mine.code).toBe(0);
      expect(mine.stdout).toBe(reference);
    });
  }
});

test("runs as qemu-ga would: the QGA port only, pidfile, logfile, -b; a second instance is refused", async () => {
  const socket = join(dir, "qga.sock");
  const pidfile = join(dir, "qga.pid");
  const logfile = join(dir, "qga.log");
  const proc = Bun.spawn([asQemuGa, "-m", "unix-listen", "-p", socket, "-t", join(dir, "state"), "-f", pidfile, "-l", logfile, "-b", "guest-ping"], {
    stdout: "ignore",
    stderr: "pipe",
  });
  try {
    await eventually(() => existsSync(socket) && existsSync(pidfile), 10_000);
    expect(readFileSync(pidfile, "utf8").trim()).toBe(String(proc.pid));
    expect(await qgaCall(socket, { execute: "guest-ping" })).toEqual({ error: { class: "CommandNotFound", desc: "Command guest-ping has been disabled" } });
    expect(await qgaCall(socket, { execute: "guest-sync", arguments: { id: 5 } })).toEqual({ return: 5 });
    await eventually(() => readFileSync(logfile, "utf8").includes("agent started"), 5_000);
    expect(readFileSync(logfile, "utf8")).toContain('transport="off"'); // no native port in qemu-ga mode
    const second = run(["-m", "unix-listen", "-p", join(dir, "other.sock"), "-f", pidfile]);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`pidfile ${pidfile} names a running agent (pid ${proc.pid})`);
  } finally {
    proc.kill("SIGTERM");
    await proc.exited;
  }
  expect(existsSync(pidfile)).toBe(false);
});

test("-d returns at once and leaves a daemon serving; qemu-ga's config file is read", async () => {
  const socket = join(dir, "daemon.sock");
  const pidfile = join(dir, "daemon.pid");
  const conf = join(dir, "qemu-ga.conf");
  writeFileSync(conf, `[general]\nmethod=unix-listen\npath=${socket}\nstatedir=${join(dir, "daemon-state")}\npidfile=${pidfile}\n`);
  const started = run(["-d"], { QGA_CONF: conf });
  expect(started.code).toBe(0);
  const pid = Number(await eventually(() => existsSync(pidfile) && readFileSync(pidfile, "utf8").trim(), 10_000));
  try {
    await eventually(() => existsSync(socket), 10_000);
    expect(await qgaCall(socket, { execute: "guest-ping" })).toEqual({ return: {} });
  } finally {
    process.kill(pid, "SIGTERM");
    await eventually(() => processGone(pid), 10_000);
  }
});

test("bad command lines fail as qemu-ga's do", () => {
  for (const [args, message] of [
    [["--bogus"], "qemu-ga: unrecognized option '--bogus'"],
    [["-x"], "qemu-ga: invalid option -- 'x'"],
    [["-m", "tcp"], "qemu-ga: invalid method 'tcp'"],
    [["-m", "vsock-listen", "-p", "nonsense"], "vsock-listen path must be <cid>:<port>"],
  ] as const) {
    const result = run([...args]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(message);
    expect(result.stderr).toContain("try 'qemu-ga --help'");
  }
});
