/**
 * The Windows platform layer with its OS calls injected: the registry, system
 * times, memory, volumes, sessions and ExitWindowsEx are fakes here, so these
 * run on Linux. test/e2e/wine-platform.test.ts runs the real calls under Wine.
 */
import { describe, expect, test } from "bun:test";
import type os from "node:os";
import { getInfo } from "../src/info/info.ts";
import { correctedProductName, windowsOsIdentity, type WindowsIdentityProbes } from "../src/info/windows.ts";
import { silentLogger } from "../src/log/logger.ts";
import { toPrometheus } from "../src/metrics/metrics.ts";
import { WindowsMetrics, type WindowsMetricsProbes } from "../src/metrics/windows.ts";
import type { RegistryValue } from "../src/platform/windows/win32.ts";
import { PowerController, type ExecOutcome, type PowerTimers } from "../src/power/power.ts";
import { EWX, exitWindowsFlags, SHUTDOWN_REASON, windowsPowerOptions } from "../src/power/windows.ts";
import { RpcError } from "../src/protocol/errors.ts";
import { METHODS } from "../src/schema/methods.ts";
import { filetimeToEpochSeconds, WindowsUsers, type WtsSession } from "../src/users/windows.ts";
import { MemoryAudit } from "./helpers/in-memory.ts";

describe("get_info on Windows", () => {
  const probes = (values: Record<string, RegistryValue>, overrides: Partial<WindowsIdentityProbes> = {}): WindowsIdentityProbes => ({
    currentVersion: () => new Map(Object.entries(values)),
    release: () => "10.0.22631",
    machine: () => "x86_64",
    fallbackProductName: () => "Windows 10 Pro",
    ...overrides,
  });

  test("build 22631 with the registry saying Windows 10 Pro is Windows 11 Pro, with feature update and UBR", () => {
    const identity = windowsOsIdentity(probes({ ProductName: "Windows 10 Pro", CurrentBuildNumber: "22631", DisplayVersion: "23H2", UBR: 4460 }));
    expect(identity).toEqual({
      os_type: "windows",
      os_id: "windows",
      os_name: "Windows 11 Pro",
      os_version: "23H2",
      os_pretty_name: "Windows 11 Pro 23H2 (build 22631.4460)",
      kernel_release: "10.0.22631",
      kernel_version: "22631.4460",
      arch: "x86_64",
    });
    expect(METHODS.get_info.result.parse(getInfo([], () => identity)).os_name).toBe("Windows 11 Pro");
  });

  test("the rule starts at build 22000 and leaves Windows 10 and servers alone", () => {
    expect(correctedProductName("Windows 10 Enterprise", 22000)).toBe("Windows 11 Enterprise");
    expect(correctedProductName("Windows 10 Enterprise", 21999)).toBe("Windows 10 Enterprise");
    expect(correctedProductName("Windows 10 Pro", 19045)).toBe("Windows 10 Pro");
    expect(correctedProductName("Microsoft Windows 10 Home", 26100)).toBe("Microsoft Windows 11 Home");
    expect(correctedProductName("Windows 10 Education N", 26100)).toBe("Windows 11 Education N");
    expect(correctedProductName("Windows Server 2022 Datacenter", 20348)).toBe("Windows Server 2022 Datacenter");
    expect(correctedProductName("Windows Server 2025 Standard", 26100)).toBe("Windows Server 2025 Standard");
    expect(correctedProductName("Windows 11 Pro", 22631)).toBe("Windows 11 Pro"); // a registry that got it right stays right
    expect(correctedProductName("Windows 100", 22631)).toBe("Windows 100");
  });

  test("CurrentBuild stands in for CurrentBuildNumber, ReleaseId for DisplayVersion; no UBR, no dot", () => {
    const identity = windowsOsIdentity(probes({ ProductName: "Windows 10 Pro", CurrentBuild: "19044", ReleaseId: "2009" }, { release: () => "10.0.19044" }));
    expect(identity).toMatchObject({ os_name: "Windows 10 Pro", os_version: "2009", os_pretty_name: "Windows 10 Pro 2009 (build 19044)", kernel_version: "19044" });
  });

  test("Windows 7 (Wine's default registry): no feature update, so the version is the build", () => {
    const identity = windowsOsIdentity(probes({ ProductName: "Microsoft Windows 7", CurrentBuildNumber: "7601" }, { release: () => "6.1.7601" }));
    expect(identity).toMatchObject({ os_name: "Microsoft Windows 7", os_version: "7601", os_pretty_name: "Microsoft Windows 7 (build 7601)", kernel_release: "6.1.7601" });
  });

  test("an unreadable registry falls back to libuv's product name and RtlGetVersion's build, still with the Windows 11 rule", () => {
    const identity = windowsOsIdentity(
      probes({}, {
        currentVersion: () => {
          throw new Error("RegOpenKeyExW failed with error 5");
        },
      }),
    );
    expect(identity).toMatchObject({ os_name: "Windows 11 Pro", os_version: "22631", os_pretty_name: "Windows 11 Pro (build 22631)", kernel_release: "10.0.22631" });
  });
});

describe("get_metrics on Windows", () => {
  const cpu = (user: number, sys: number, idle: number, irq = 0): os.CpuInfo => ({ model: "x", speed: 1, times: { user, nice: 0, sys, idle, irq } });
  function fake(overrides: Partial<WindowsMetricsProbes> = {}) {
    let mono = 1_000;
    let sample = 0;
    // Two samples: construction, then the first call. 100-ns units for GetSystemTimes, ms for os.cpus().
    const times = [
      { idle: 100e7, kernel: 150e7, user: 50e7 },
      { idle: 103e7, kernel: 154e7, user: 56e7 }, // +3 s idle, +1 s system, +6 s user: 70 % busy
    ];
    const cpus = [
      [cpu(10_000, 5_000, 50_000), cpu(20_000, 5_000, 40_000)],
      [cpu(11_000, 5_000, 51_000), cpu(20_000, 5_000, 42_000, 500)], // cpu0 50 % busy; cpu1: 0.5 s irq of 2.5 s = 20 %
    ];
    const probes: WindowsMetricsProbes = {
      systemTimes: () => times[Math.min(sample, 1)]!,
      cpus: () => cpus[Math.min(sample++, 1)]!,
      memory: () => ({ totalPhys: 8 * 2 ** 30, availPhys: 6 * 2 ** 30, totalPageFile: 10 * 2 ** 30, availPageFile: 7 * 2 ** 30 }),
      volumes: () => [{ root: "C:\\", fstype: "NTFS", size: 100 * 2 ** 30, free: 40 * 2 ** 30, available: 39 * 2 ** 30 }],
      processCount: () => 123,
      network: () => [{ interface: "Ethernet", rx_bytes: 1000, rx_packets: 10, rx_errors: 0, rx_dropped: 1, tx_bytes: 500, tx_packets: 5, tx_errors: 0, tx_dropped: 0 }],
      uptime: () => 3600.5,
      now: () => 1_700_000_000_000,
      monotonic: () => (mono += 1_000),
      ...overrides,
    };
    return new WindowsMetrics(probes);
  }

  test("CPU from GetSystemTimes deltas (kernel includes idle) and os.cpus(); memory, page file, volumes, processes", () => {
    const result = fake().collect({ format: "json" });
    expect(METHODS.get_metrics.result.parse(result)).toEqual(result);
    if (result.format !== "json") throw new Error("json expected");
    expect(result.cpu.total).toEqual({ usage_percent: 70, user: 56, nice: 0, system: 51, idle: 103, iowait: 0, irq: 0, softirq: 0, steal: 0 });
    expect(result.cpu.per_cpu.map((c) => [c.cpu, c.usage_percent, c.irq])).toEqual([["0", 50, 0], ["1", 20, 0.5]]);
    expect(result.memory).toEqual({ total_bytes: 8 * 2 ** 30, available_bytes: 6 * 2 ** 30, used_bytes: 2 * 2 ** 30, free_bytes: 6 * 2 ** 30, buffers_bytes: 0, cached_bytes: 0 });
    expect(result.swap).toEqual({ total_bytes: 2 * 2 ** 30, used_bytes: 2 ** 30, free_bytes: 2 ** 30 });
    expect(result.filesystems).toEqual([{ mount: "C:\\", device: "C:", fstype: "NTFS", size_bytes: 100 * 2 ** 30, used_bytes: 60 * 2 ** 30, available_bytes: 39 * 2 ** 30 }]);
    expect({ processes: result.processes, uptime: result.uptime_seconds, disks: result.disks }).toEqual({ processes: 123, uptime: 3600.5, disks: [] });
    expect(result.network.map((n) => [n.interface, n.rx_bytes, n.tx_packets])).toEqual([["Ethernet", 1000, 5]]);
    expect(toPrometheus(result)).toContain('kma_network_receive_bytes_total{interface="Ethernet"} 1000');
    expect(toPrometheus(result)).toContain('kma_filesystem_avail_bytes{mountpoint="C:\\\\",device="C:",fstype="NTFS"} 41875931136');
  });

  test("calls within 50 ms of the last sample reuse its usage instead of a noisy few-tick window", () => {
    let mono = 0;
    const metrics = fake({ monotonic: () => (mono += 10) });
    const first = metrics.collect({ format: "json" });
    const second = metrics.collect({ format: "json" });
    if (first.format !== "json" || second.format !== "json") throw new Error("json expected");
    expect(first.cpu.total.usage_percent).toBe(70); // since construction, as on Linux
    expect(second.cpu.total.usage_percent).toBe(70); // the same samples again would say 0
  });

  test("a failing Win32 call is OPERATION_FAILED naming it, and prometheus text is served", () => {
    const failing = fake({
      memory: () => {
        throw new Error("GlobalMemoryStatusEx failed with error 8");
      },
    });
    expect(() => failing.collect({ format: "json" })).toThrow(new RpcError("OPERATION_FAILED", "Cannot read system metrics: GlobalMemoryStatusEx failed with error 8"));
    const text = fake().collect({ format: "prometheus" });
    expect(text.format === "prometheus" && text.text).toContain("kma_processes 123");
  });
});

describe("get_users on Windows", () => {
  const at = (epochSeconds: number) => BigInt(epochSeconds) * 10_000_000n + 116_444_736_000_000_000n;
  const sessions: WtsSession[] = [
    { sessionId: 0, station: "Services", user: "", domain: "", client: "", logonTime: 0n },
    { sessionId: 1, station: "Console", user: "Administrator", domain: "WIN11", client: "", logonTime: at(1_700_000_000) },
    { sessionId: 2, station: "RDP-Tcp#3", user: "alice", domain: "CORP", client: "LAPTOP-7", logonTime: at(1_700_000_100) },
    { sessionId: 3, station: "", user: "Administrator", domain: "WIN11", client: "", logonTime: at(1_699_999_000) }, // disconnected
  ];

  test("sessions with a user, as tty/host/login_time/pid (the session id); session 0 left out", () => {
    const result = new WindowsUsers(() => sessions).list();
    expect(METHODS.get_users.result.parse(result)).toEqual(result);
    expect(result.users).toEqual([
      { user: "Administrator", tty: "Console", host: "", login_time: 1_700_000_000, pid: 1 },
      { user: "alice", tty: "RDP-Tcp#3", host: "LAPTOP-7", login_time: 1_700_000_100, pid: 2 },
      { user: "Administrator", tty: "", host: "", login_time: 1_699_999_000, pid: 3 },
    ]);
  });

  test("guest-get-users: one entry per user with the earliest login and the domain, in qemu-ga's order", () => {
    const users = new WindowsUsers(() => sessions).qgaUsers();
    expect(users).toEqual([
      { user: "Administrator", "login-time": 1_699_999_000, domain: "WIN11" },
      { user: "alice", "login-time": 1_700_000_100, domain: "CORP" },
    ]);
    expect(Object.keys(users[0]!)).toEqual(["user", "login-time", "domain"]);
  });

  test("FILETIME conversion keeps sub-second precision and maps 0 to 0; a failing enumeration is OPERATION_FAILED", () => {
    expect(filetimeToEpochSeconds(at(1_700_000_000) + 5_000_000n)).toBe(1_700_000_000.5);
    expect(filetimeToEpochSeconds(0n)).toBe(0);
    const broken = new WindowsUsers(() => {
      throw new Error("WTSEnumerateSessionsW failed with error 5");
    });
    expect(() => broken.list()).toThrow(new RpcError("OPERATION_FAILED", "Cannot list sessions: WTSEnumerateSessionsW failed with error 5"));
  });
});

describe("shutdown/reboot on Windows", () => {
  function setup(exitError = 0) {
    const exits: [number, number][] = [];
    const spawned: string[][] = [];
    const timers: PowerTimers & { fire(): void } = {
      due: [] as (() => void)[],
      set(callback: () => void) {
        this.due.push(callback);
        return this.due.length;
      },
      clear() {},
      fire() {
        for (const callback of this.due.splice(0)) callback();
      },
    } as PowerTimers & { fire(): void; due: (() => void)[] };
    const options = windowsPowerOptions({
      exitWindows: (flags, reason) => (exits.push([flags, reason]), exitError),
      systemDirectory: () => "C:\\Windows\\system32",
      spawn: async (argv): Promise<ExecOutcome> => (spawned.push(argv), { exitCode: 0 }),
    });
    const audit = new MemoryAudit();
    const power = new PowerController(silentLogger, audit, { ...options, timers });
    return { power, exits, spawned, timers, audit };
  }
  const params = (force: boolean, message?: string) => METHODS.shutdown.params.parse({ confirm: true, force, message });

  test("poweroff: ExitWindowsEx(EWX_POWEROFF | EWX_FORCEIFHUNG, planned) after the reply; shutdown.exe untouched", async () => {
    const { power, exits, spawned, timers } = setup();
    expect(power.request("poweroff", params(false)).command).toEqual(["ExitWindowsEx", "EWX_POWEROFF", "EWX_FORCEIFHUNG"]);
    expect(exits).toEqual([]);
    timers.fire();
    await power.settled;
    expect(exits).toEqual([[EWX.EWX_POWEROFF | EWX.EWX_FORCEIFHUNG, SHUTDOWN_REASON]]);
    expect(spawned).toEqual([]);
  });

  test("reboot force: EWX_REBOOT | EWX_FORCE; when ExitWindowsEx fails, shutdown.exe from the system directory", async () => {
    const { power, exits, spawned, timers, audit } = setup(1314);
    expect(power.request("reboot", params(true, "patch day")).command).toEqual(["ExitWindowsEx", "EWX_REBOOT", "EWX_FORCE"]);
    timers.fire();
    await power.settled;
    expect(exits).toEqual([[EWX.EWX_REBOOT | EWX.EWX_FORCE, SHUTDOWN_REASON]]);
    expect(spawned).toEqual([["C:\\Windows\\system32\\shutdown.exe", "/r", "/t", "0", "/f", "/c", "patch day"]]);
    expect(audit.events.map((e) => [e.phase, e.error ?? null])).toContainEqual(["failed", "ExitWindowsEx failed with Win32 error 1314"]);
  });

  test("halt (QGA's guest-shutdown mode=halt) is EWX_SHUTDOWN, shutdown.exe /s as fallback; flag names are checked", async () => {
    const { power, spawned, timers } = setup(5);
    power.request("halt", params(false));
    timers.fire();
    await power.settled;
    expect(spawned).toEqual([["C:\\Windows\\system32\\shutdown.exe", "/s", "/t", "0"]]);
    expect(exitWindowsFlags(["EWX_SHUTDOWN", "EWX_FORCEIFHUNG"])).toBe(0x11);
    expect(() => exitWindowsFlags(["EWX_LOGOFF"])).toThrow("unknown ExitWindowsEx flag EWX_LOGOFF");
  });
});
