/**
 * The Windows service under Wine's service control manager, with the real
 * advapi32 calls: sc create / start / query / stop around the exe's
 * --service (answering on a named pipe meanwhile), --install-service and
 * --uninstall-service, the audit reaching ReportEventW, and the MSI installed
 * and removed with msiexec; a service serving a pty-backed virtio-serial port
 * with its handle registered for device notifications. A smoke test, not proof for real Windows
 * (docs/windows.md says which is which).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { buildMsi } from "../../scripts/package.ts";
import { decodeFrames, eventually, frame, makeTempDir, pingRequest } from "../helpers/agent-process.ts";
import { openRawPty, PtyPeer } from "../helpers/pty.ts";
import { installStandInDll, prepareWine, runUnderWine, runWineProgram, stopWine, WINE_CONFIG, wineAvailable, winePath } from "../helpers/wine.ts";
import { SYNC_MARKER } from "../../src/protocol/framing.ts";
import { AGENT_VERSION } from "../../src/version.ts";

afterAll(stopWine);

const msitoolsAvailable = Bun.which("wixl") !== null && Bun.which("msibuild") !== null;

/** `sc query NAME`'s state and exit codes, or null when there is no such service. */
async function query(name: string): Promise<{ state: string; win32ExitCode: number } | null> {
  const { exitCode, stdout } = await runWineProgram(["sc", "query", name]);
  if (exitCode !== 0) return null;
  const text = stdout.toString();
  return { state: /STATE\s+:\s+\d+\s+(\w+)/.exec(text)![1]!, win32ExitCode: Number(/WIN32_EXIT_CODE\s+:\s+(\d+)/.exec(text)![1]) };
}

/** The service's key: Wine's sc has no `qc`, so its config is read where the SCM keeps it. */
async function serviceKey(name: string): Promise<Record<string, string>> {
  const { stdout } = await runWineProgram(["reg", "query", `HKLM\\System\\CurrentControlSet\\Services\\${name}`]);
  const values: Record<string, string> = {};
  for (const match of stdout.toString().matchAll(/^\s{4}(\S+)\s+REG_\w+\s+(.*?)\r?$/gm)) values[match[1]!] = match[2]!;
  return values;
}

/** Polls sc query until the service leaves its pending states; its last answer. */
function settledState(name: string): Promise<Awaited<ReturnType<typeof query>>> {
  return eventually(async () => {
    const status = await query(name);
    return status !== null && !status.state.endsWith("PENDING") && status;
  }, 60_000, 250);
}

const logLines = (path: string) => readFileSync(path, "utf8").trim().split("\n").map((line) => JSON.parse(line));

describe.skipIf(!wineAvailable)("under Wine's SCM", () => {
  test("sc start: START_PENDING then RUNNING, answers on its pipe; sc stop: the graceful stop, then STOPPED with exit code 0", async () => {
    const { dir } = await prepareWine();
    const pipe = `\\\\.\\pipe\\kma-service-${process.pid}`;
    const config = join(dir, "service.toml");
    writeFileSync(config, `[transport]\ntype = "unix-listen"\npath = ${JSON.stringify(pipe)}\n[qga]\nenabled = false\n[logging]\naudit_file = ${JSON.stringify(winePath(join(dir, "service-audit.jsonl")))}\n`);
    const binPath = `${winePath(join(dir, "kvm-manager-agent.exe"))} --service --config ${winePath(config)}`;
    expect((await runWineProgram(["sc", "create", "kma-test", "binPath=", binPath])).exitCode).toBe(0);
    const started = await runWineProgram(["sc", "start", "kma-test"]);
    expect(started.exitCode).toBe(0);
    // What the SCM says right after the start: START_PENDING, or RUNNING already.
    expect(started.stdout.toString()).toMatch(/STATE\s+:\s+(2\s+START_PENDING|4\s+RUNNING)/);
    expect(await settledState("kma-test")).toEqual({ state: "RUNNING", win32ExitCode: 0 });

    const ping = await runUnderWine(["ping", "--socket", pipe, "--json"]);
    expect(JSON.parse(ping.stdout.toString())).toEqual({ pong: true });

    expect((await runWineProgram(["sc", "stop", "kma-test"])).exitCode).toBe(0);
    expect(await settledState("kma-test")).toEqual({ state: "STOPPED", win32ExitCode: 0 });
    const log = logLines(join(dir, "agent.log"));
    const messages = log.map((line) => line.msg);
    expect(messages).toContain("agent started");
    expect(messages.slice(messages.indexOf("agent started"))).toEqual(["agent started", "service control", "stopping", "service stopped"]);
    expect(log.at(-1)).toMatchObject({ msg: "service stopped", exit_code: 0 });
    expect(log.find((line) => line.msg === "stopping")).toMatchObject({ reason: "service stop", calls_running: 0 });
    expect(log.filter((line) => line.level === "error")).toEqual([]);
    expect(logLines(join(dir, "service-audit.jsonl"))).toEqual([expect.objectContaining({ method: "ping", transport: "unix-listen", outcome: "ok" })]);
    expect((await runWineProgram(["sc", "delete", "kma-test"])).exitCode).toBe(0);
  }, 300_000);

  // Wine cannot remove a device, so no DEVICEEVENT comes: what this shows is that registering each port handle
  // (or failing to, logged once) leaves the service's start, serving and stop as they were.
  test("a service on a virtio-serial port (\\\\.\\Global\\, a pty here) registers its handle for device events, serves, and stops cleanly", async () => {
    const { dir, env } = await prepareWine();
    if (!existsSync(join(env.WINEPREFIX!, "system.reg"))) expect((await runUnderWine(["--version"])).exitCode).toBe(0);
    const link = join(env.WINEPREFIX!, "dosdevices", "global", "org.kvmmanager.agent.0");
    mkdirSync(dirname(link), { recursive: true });
    const pty = openRawPty();
    const peer = new PtyPeer(pty.master, true);
    rmSync(link, { force: true });
    symlinkSync(pty.slavePath, link);
    const serviceDir = makeTempDir("kma-wine-port-");
    const config = join(serviceDir, "config.toml");
    writeFileSync(config, `[transport]\ntype = "virtio-serial"\n[qga]\nenabled = false\n[logging]\naudit_file = ""\nlevel = "debug"\n`);
    const binPath = `${winePath(join(dir, "kvm-manager-agent.exe"))} --service --config ${winePath(config)}`;
    try {
      expect((await runWineProgram(["sc", "create", "kma-port", "binPath=", binPath])).exitCode).toBe(0);
      expect((await runWineProgram(["sc", "start", "kma-port"])).exitCode).toBe(0);
      expect(await settledState("kma-port")).toEqual({ state: "RUNNING", win32ExitCode: 0 });
      await peer.write(frame(pingRequest(1, "service")));
      expect(await peer.next(30_000)).toEqual({ jsonrpc: "2.0", id: 1, result: { pong: true, payload: "service" } });
      expect((await runWineProgram(["sc", "stop", "kma-port"])).exitCode).toBe(0);
      expect(await settledState("kma-port")).toEqual({ state: "STOPPED", win32ExitCode: 0 });
      const log = logLines(join(serviceDir, "agent.log"));
      expect(log.filter((line) => line.msg === "port open")).toHaveLength(1);
      // Wine 8.0's user32 accepts the registration with the service's status handle (measured); a refusal would be logged once instead.
      expect(log.filter((line) => /device removal/.test(line.msg)).map((line) => line.msg)).toEqual(["port handle registered for device removal events"]);
      expect(log.filter((line) => line.level === "error")).toEqual([]);
      expect(log.at(-1)).toMatchObject({ msg: "service stopped", exit_code: 0 });
      expect((await runWineProgram(["sc", "delete", "kma-port"])).exitCode).toBe(0);
    } finally {
      rmSync(link, { force: true });
      await peer.stop();
      pty.close();
      rmSync(serviceDir, { recursive: true, force: true });
    }
  }, 300_000);

  test("a start that fails (a bad config) reports STOPPED with error 1066 and logs why", async () => {
    const { dir } = await prepareWine();
    // In a directory of its own: the service's log goes beside its config.
    const badDir = makeTempDir("kma-wine-bad-");
    try {
      const badConfig = join(badDir, "config.toml");
      writeFileSync(badConfig, "[transport]\ntype = \"carrier-pigeon\"\n");
      const binPath = `${winePath(join(dir, "kvm-manager-agent.exe"))} --service --config ${winePath(badConfig)}`;
      expect((await runWineProgram(["sc", "create", "kma-bad", "binPath=", binPath])).exitCode).toBe(0);
      await runWineProgram(["sc", "start", "kma-bad"]);
      expect(await settledState("kma-bad")).toEqual({ state: "STOPPED", win32ExitCode: 1066 });
      const log = logLines(join(badDir, "agent.log"));
      expect(log.find((line) => line.level === "error")).toMatchObject({ msg: "the service could not start", error: expect.stringContaining("config.toml: [transport] type: Invalid option") });
      expect((await runWineProgram(["sc", "delete", "kma-bad"])).exitCode).toBe(0);
    } finally {
      rmSync(badDir, { recursive: true, force: true });
    }
  }, 300_000);

  test("--install-service registers it (auto start, LocalSystem, --service); --uninstall-service removes it", async () => {
    const { dir } = await prepareWine();
    const config = winePath(join(dir, WINE_CONFIG));
    const install = await runUnderWine(["--install-service", "--config", config]);
    expect(install.exitCode).toBe(0);
    expect(install.stdout.toString()).toContain("installed the service kvm-manager-agent");
    expect(await serviceKey("kvm-manager-agent")).toMatchObject({
      ImagePath: `"${winePath(join(dir, "kvm-manager-agent.exe"))}" --service --config "${config}"`,
      Start: "0x2", // auto
      Type: "0x10", // own process
      ObjectName: "LocalSystem",
      DisplayName: "KVM Manager Agent",
      Description: expect.stringContaining("Guest agent for KVM/QEMU virtual machines"),
    });
    expect(await query("kvm-manager-agent")).toEqual({ state: "STOPPED", win32ExitCode: 1077 }); // never started
    // Installing twice is an error that says so.
    const again = await runUnderWine(["--install-service"]);
    expect(again.exitCode).toBe(1);
    expect(again.stderr).toContain("kvm-manager-agent: CreateServiceW failed: Windows error 1073 (the service is installed already: --uninstall-service first)");
    const uninstall = await runUnderWine(["--uninstall-service"]);
    expect(uninstall.exitCode).toBe(0);
    expect(await query("kvm-manager-agent")).toBeNull();
    const twice = await runUnderWine(["--uninstall-service"]);
    expect({ exitCode: twice.exitCode, stderr: twice.stderr.trim().split("\n").at(-1) }).toEqual({
      exitCode: 1,
      stderr: "kvm-manager-agent: OpenServiceW failed: Windows error 1060 (the service is not installed)",
    });
  }, 300_000);

  test("each audit record reaches ReportEventW as one event with the audit line's JSON (Wine traces it on +eventlog)", async () => {
    const input = Buffer.concat([SYNC_MARKER, frame({ jsonrpc: "2.0", id: 41, method: "ping" }), frame({ jsonrpc: "2.0", id: 42, method: "no_such_method" })]);
    const { exitCode, stdout, stderr } = await runUnderWine(["--transport", "stdio", "--config", WINE_CONFIG], { stdin: input, wineDebug: "+eventlog" });
    expect(exitCode).toBe(0);
    expect(decodeFrames(stdout).map((reply: any) => reply.id)).toEqual([41, 42]);
    const events = [...stderr.matchAll(/ReportEventW \([0-9A-F]+,0x(\d{4}),0x0000,0x(\d{8}),.*\n.*(?:trace|warn):eventlog:ReportEventW L"(.*)"/g)].map(([, type, id, text]) => ({
      type: Number(`0x${type}`),
      id: Number(`0x${id}`),
      record: JSON.parse(text!.replaceAll('\\"', '"')),
    }));
    expect(events).toEqual([
      { type: 4, id: 1, record: expect.objectContaining({ method: "ping", id: 41, transport: "stdio", outcome: "ok" }) },
      { type: 2, id: 1, record: expect.objectContaining({ method: "no_such_method", id: 42, outcome: "error", code: -32601 }) },
    ]);
  }, 300_000);
});

/** The versions of KVM Manager Agent that Windows lists as installed (the Uninstall key). */
async function installedVersions(): Promise<string[]> {
  const { stdout } = await runWineProgram(["reg", "query", "HKLM\\Software\\Microsoft\\Windows\\CurrentVersion\\Uninstall", "/s"]);
  const versions: string[] = [];
  for (const entry of stdout.toString().split(/\r?\n(?=HKEY_)/)) {
    if (/DisplayName\s+REG_SZ\s+KVM Manager Agent\r?$/m.test(entry)) versions.push(/DisplayVersion\s+REG_SZ\s+(\S+)/.exec(entry)?.[1] ?? "?");
  }
  return versions;
}

describe.skipIf(!wineAvailable || !msitoolsAvailable)("the MSI under Wine's msiexec", () => {
  test("msiexec /i installs the exe and config and starts the service; a newer MSI upgrades it keeping the config; msiexec /x stops and removes it, keeping the config", async () => {
    const { env } = await prepareWine();
    await installStandInDll();
    const out = makeTempDir("kma-msi-");
    const msi = buildMsi({ out, version: AGENT_VERSION });
    const nextVersion = AGENT_VERSION.replace(/\d+$/, (patch) => String(Number(patch) + 1));
    const nextMsi = buildMsi({ out, version: nextVersion });
    const driveC = join(env.WINEPREFIX!, "drive_c");
    const exe = join(driveC, "Program Files", "KVM Manager Agent", "kvm-manager-agent.exe");
    const dataDir = join(driveC, "ProgramData", "kvm-manager-agent");
    const config = join(dataDir, "config.toml");
    const log = () => logLines(join(dataDir, "agent.log"));
    /** The service's log once it has `msg` (the SCM may say RUNNING a moment before Linux sees the line), or what the directory holds. */
    const logWith = (msg: string) =>
      eventually(() => existsSync(join(dataDir, "agent.log")) && log().some((line) => line.msg === msg) && log(), 30_000, 250).catch(() => {
        throw new Error(`no "${msg}" in ${dataDir}/agent.log; the directory holds: ${existsSync(dataDir) ? readdirSync(dataDir).join(", ") : "nothing"}`);
      });

    expect((await runWineProgram(["msiexec", "/i", winePath(msi), "/qn"], { timeoutMs: 300_000 })).exitCode).toBe(0);
    expect(readFileSync(exe).equals(readFileSync(join(import.meta.dir, "../../dist/kvm-manager-agent-windows-x64.exe")))).toBe(true);
    expect(readFileSync(config, "utf8")).toBe(readFileSync(join(import.meta.dir, "../../installers/config.toml"), "utf8"));
    expect(await settledState("kvm-manager-agent")).toEqual({ state: "RUNNING", win32ExitCode: 0 });
    // Wine's msiexec writes the path unquoted; Windows Installer quotes a path with spaces.
    expect(await serviceKey("kvm-manager-agent")).toMatchObject({ Start: "0x2", ObjectName: "LocalSystem", ImagePath: expect.stringMatching(/KVM Manager Agent\\kvm-manager-agent\.exe"? --service --config "C:\\ProgramData\\kvm-manager-agent\\config\.toml"$/) });
    expect((await logWith("agent started")).find((line) => line.msg === "agent started")).toMatchObject({ version: AGENT_VERSION, transport: "virtio-serial", audit: expect.stringContaining("Event Log") });
    expect(await installedVersions()).toEqual([AGENT_VERSION]);

    writeFileSync(config, "# the admin's own\n");
    expect((await runWineProgram(["msiexec", "/i", winePath(nextMsi), "/qn"], { timeoutMs: 300_000 })).exitCode).toBe(0);
    expect(await installedVersions()).toEqual([nextVersion]);
    expect(readFileSync(config, "utf8")).toBe("# the admin's own\n");
    expect(await settledState("kvm-manager-agent")).toEqual({ state: "RUNNING", win32ExitCode: 0 });
    // The old one was stopped gracefully before the new one started.
    expect(log().filter((line) => ["agent started", "service stopped"].includes(line.msg)).map((line) => line.msg)).toEqual(["agent started", "service stopped", "agent started"]);

    expect((await runWineProgram(["msiexec", "/x", winePath(nextMsi), "/qn"], { timeoutMs: 300_000 })).exitCode).toBe(0);
    expect(await query("kvm-manager-agent")).toBeNull();
    expect(existsSync(exe)).toBe(false);
    expect(await installedVersions()).toEqual([]);
    expect(readFileSync(config, "utf8")).toBe("# the admin's own\n");
    expect(log().at(-1)).toMatchObject({ msg: "service stopped", exit_code: 0 });
  }, 600_000);
});
