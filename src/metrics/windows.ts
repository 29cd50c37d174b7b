/**
 * get_metrics on Windows, in the same shape as Linux's (src/metrics/metrics.ts),
 * through Win32 calls in-process — no child processes (systeminformation would
 * spawn PowerShell/wmic for most of this, seconds per call).
 *
 * How the Linux fields map:
 * - cpu.total from GetSystemTimes (kernel time includes idle: system = kernel
 *   - idle); per_cpu from os.cpus() (NtQuerySystemInformation): user, system,
 *   idle and irq; nice, iowait, softirq and steal do not exist and stay 0.
 *   usage_percent is the busy share since the previous call (the first: since
 *   construction), with Linux's 50 ms minimum window.
 * - memory from GlobalMemoryStatusEx: available = free = ullAvailPhys (the
 *   standby list is inside it; there is no separate cache or buffer figure, so
 *   those are 0); swap = the page file: commit limit minus physical memory.
 * - load: Windows keeps no load average: all 0.
 * - network from GetIfTable2: every interface but the filter-driver layers
 *   (the NDIS lightweight filters each NIC shows once per filter); packets are
 *   unicast plus non-unicast.
 * - disks (I/O counters): empty; per-disk counters need IOCTL_DISK_PERFORMANCE
 *   on each physical drive.
 * - filesystems: every fixed or RAM drive letter (GetLogicalDriveStringsW,
 *   GetDriveTypeW) with GetVolumeInformationW's filesystem name and
 *   GetDiskFreeSpaceExW's sizes; network drives are not asked (a dead server
 *   blocks the call), and a drive without media (an empty DVD drive) is skipped.
 * - processes: K32EnumProcesses.
 */
import os from "node:os";
import { ptr, read, type Pointer } from "bun:ffi";
import { RpcError } from "../protocol/errors.ts";
import type { Params, Result } from "../schema/methods.ts";
import type { MetricsService } from "../services.ts";
import { fromWide, iphlpapi, kernel32, lastError, readWideAt, wide } from "../platform/windows/win32.ts";
import { toPrometheus, type MetricsJson } from "./metrics.ts";

type CpuTimes = MetricsJson["cpu"]["total"];

/** GetSystemTimes, in 100-ns units since boot; kernel includes idle. */
export interface SystemTimes {
  idle: number;
  kernel: number;
  user: number;
}

export interface MemoryStatus {
  totalPhys: number;
  availPhys: number;
  /** The commit limit: physical memory plus page files. */
  totalPageFile: number;
  availPageFile: number;
}

export interface VolumeSpace {
  /** "C:\" */
  root: string;
  fstype: string;
  size: number;
  free: number;
  /** Free to the caller (quotas). */
  available: number;
}

export interface WindowsMetricsProbes {
  systemTimes: () => SystemTimes;
  network: () => MetricsJson["network"];
  cpus: () => os.CpuInfo[];
  memory: () => MemoryStatus;
  volumes: () => VolumeSpace[];
  processCount: () => number;
  uptime: () => number;
  now: () => number;
  monotonic: () => number;
}

const MIN_WINDOW_MS = 50;
const HUNDRED_NS_PER_SECOND = 10_000_000;

interface CpuSample {
  total: number[];
  perCpu: number[][];
  at: number;
}

/** [user, system, idle, irq] in seconds. */
function busyPercent(before: number[] | undefined, after: number[]): number {
  if (!before) return 0;
  const delta = after.map((value, i) => Math.max(0, value - (before[i] ?? 0)));
  const all = delta.reduce((sum, value) => sum + value, 0);
  if (all <= 0) return 0;
  return Math.round(((all - delta[2]!) / all) * 10000) / 100;
}

function cpuTimes(seconds: number[], usage: number): CpuTimes {
  const [user, system, idle, irq] = seconds as [number, number, number, number];
  return { usage_percent: usage, user, nice: 0, system, idle, iowait: 0, irq, softirq: 0, steal: 0 };
}

export class WindowsMetrics implements MetricsService {
  private readonly probes: WindowsMetricsProbes;
  private previous: CpuSample | null = null;
  private lastUsage: { total: number; perCpu: number[] } | null = null;

  constructor(probes: Partial<WindowsMetricsProbes> = {}) {
    this.probes = { ...SYSTEM_PROBES, ...probes };
    // The first call's window starts here, as on Linux; a failing probe fails that call instead.
    try {
      this.previous = this.sample();
    } catch {
      this.previous = null;
    }
  }

  collect(params: Params<"get_metrics">): Result<"get_metrics"> {
    let json: MetricsJson;
    try {
      json = this.collectJson();
    } catch (error) {
      throw new RpcError("OPERATION_FAILED", `Cannot read system metrics: ${(error as Error).message}`, {});
    }
    if (params.format === "prometheus") return { format: "prometheus", text: toPrometheus(json) };
    return json;
  }

  collectJson(): MetricsJson {
    const memory = this.probes.memory();
    const swapTotal = Math.max(0, memory.totalPageFile - memory.totalPhys);
    const swapFree = Math.min(swapTotal, Math.max(0, memory.availPageFile - memory.availPhys));
    return {
      format: "json",
      timestamp_ms: this.probes.now(),
      uptime_seconds: this.probes.uptime(),
      cpu: this.cpu(),
      memory: {
        total_bytes: memory.totalPhys,
        available_bytes: memory.availPhys,
        used_bytes: Math.max(0, memory.totalPhys - memory.availPhys),
        free_bytes: memory.availPhys,
        buffers_bytes: 0,
        cached_bytes: 0,
      },
      swap: { total_bytes: swapTotal, used_bytes: swapTotal - swapFree, free_bytes: swapFree },
      load: { load1: 0, load5: 0, load15: 0, running: 0, total: 0 },
      disks: [],
      network: this.probes.network(),
      filesystems: this.probes.volumes().map((volume) => ({
        mount: volume.root,
        device: volume.root.replace(/\\$/, ""),
        fstype: volume.fstype,
        size_bytes: volume.size,
        used_bytes: Math.max(0, volume.size - volume.free),
        available_bytes: volume.available,
      })),
      processes: this.probes.processCount(),
    };
  }

  private sample(): CpuSample {
    const times = this.probes.systemTimes();
    const seconds = (value: number) => value / HUNDRED_NS_PER_SECOND;
    return {
      total: [seconds(times.user), seconds(Math.max(0, times.kernel - times.idle)), seconds(times.idle), 0],
      perCpu: this.probes.cpus().map(({ times: t }) => [t.user / 1000, t.sys / 1000, t.idle / 1000, t.irq / 1000]),
      at: this.probes.monotonic(),
    };
  }

  private cpu(): MetricsJson["cpu"] {
    const current = this.sample();
    const previous = this.previous;
    let usage = this.lastUsage;
    if (!previous || !usage || current.at - previous.at >= MIN_WINDOW_MS) {
      usage = {
        total: busyPercent(previous?.total, current.total),
        perCpu: current.perCpu.map((times, i) => busyPercent(previous?.perCpu[i], times)),
      };
      this.previous = current;
      this.lastUsage = usage;
    }
    return {
      total: cpuTimes(current.total, usage.total),
      per_cpu: current.perCpu.map((times, i) => ({ ...cpuTimes(times, usage.perCpu[i] ?? 0), cpu: String(i) })),
    };
  }
}

// ---------------------------------------------------------------- Win32 probes

const DRIVE_FIXED = 3;
const DRIVE_RAMDISK = 6;

function filetimes(): SystemTimes {
  const cells = new BigUint64Array(3);
  if (!kernel32().GetSystemTimes(ptr(cells, 0), ptr(cells, 8), ptr(cells, 16))) throw new Error(`GetSystemTimes failed with error ${lastError()}`);
  return { idle: Number(cells[0]), kernel: Number(cells[1]), user: Number(cells[2]) };
}

function memoryStatus(): MemoryStatus {
  const status = new BigUint64Array(8); // MEMORYSTATUSEX: 64 bytes
  new Uint32Array(status.buffer)[0] = 64;
  if (!kernel32().GlobalMemoryStatusEx(ptr(status))) throw new Error(`GlobalMemoryStatusEx failed with error ${lastError()}`);
  return { totalPhys: Number(status[1]), availPhys: Number(status[2]), totalPageFile: Number(status[3]), availPageFile: Number(status[4]) };
}

/** "A:\", "C:\", ... */
export function driveRoots(): string[] {
  const buffer = new Uint16Array(512);
  const length = kernel32().GetLogicalDriveStringsW(buffer.length, ptr(buffer));
  if (length === 0 || length > buffer.length) throw new Error(`GetLogicalDriveStringsW failed with error ${lastError()}`);
  return Buffer.from(buffer.buffer, 0, length * 2).toString("utf16le").split("\0").filter(Boolean);
}

function volumes(): VolumeSpace[] {
  const out: VolumeSpace[] = [];
  for (const root of driveRoots()) {
    const name = wide(root);
    const type = kernel32().GetDriveTypeW(name);
    if (type !== DRIVE_FIXED && type !== DRIVE_RAMDISK) continue;
    const sizes = new BigUint64Array(3);
    if (!kernel32().GetDiskFreeSpaceExW(name, ptr(sizes, 0), ptr(sizes, 8), ptr(sizes, 16))) continue;
    const fsName = new Uint8Array(64);
    const fstype = kernel32().GetVolumeInformationW(name, null, 0, null, null, null, ptr(fsName), fsName.length / 2) ? fromWide(fsName) : "";
    out.push({ root, fstype, available: Number(sizes[0]), size: Number(sizes[1]), free: Number(sizes[2]) });
  }
  return out;
}

function processCount(): number {
  let ids = new Uint32Array(1024);
  const needed = new Uint32Array(1);
  for (;;) {
    if (!kernel32().K32EnumProcesses(ptr(ids), ids.byteLength, ptr(needed))) throw new Error(`EnumProcesses failed with error ${lastError()}`);
    // A full buffer may have been too small: grow until it is not.
    if (needed[0]! < ids.byteLength) return needed[0]! / 4;
    ids = new Uint32Array(ids.length * 2);
  }
}

/**
 * MIB_IF_TABLE2: NumEntries, then MIB_IF_ROW2s from offset 8. Offsets of
 * MIB_IF_ROW2 (1352 bytes on x64) as mingw-w64's netioapi.h lays it out,
 * printed with offsetof() by a test program run under Wine.
 */
const IF_ROW = {
  bytes: 1352,
  first: 8,
  alias: 28,
  flags: 1152,
  inOctets: 1208,
  inUcastPkts: 1216,
  inNUcastPkts: 1224,
  inDiscards: 1232,
  inErrors: 1240,
  outOctets: 1280,
  outUcastPkts: 1288,
  outNUcastPkts: 1296,
  outDiscards: 1304,
  outErrors: 1312,
} as const;
/** InterfaceAndOperStatusFlags.FilterInterface: an NDIS filter layered on a NIC, not an interface of its own. */
const FILTER_INTERFACE = 0x2;

function networkCounters(): MetricsJson["network"] {
  const cell = new BigUint64Array(1);
  const status = iphlpapi().GetIfTable2(ptr(cell));
  if (status !== 0) throw new Error(`GetIfTable2 failed with error ${status}`);
  const table = Number(cell[0]) as Pointer;
  try {
    const out: MetricsJson["network"] = [];
    const count = read.u32(table, 0);
    for (let i = 0; i < count; i++) {
      const row = IF_ROW.first + i * IF_ROW.bytes;
      if (read.u8(table, row + IF_ROW.flags) & FILTER_INTERFACE) continue;
      const u64 = (offset: number) => Number(read.u64(table, row + offset));
      out.push({
        interface: readWideAt((table + row + IF_ROW.alias) as Pointer, 257),
        rx_bytes: u64(IF_ROW.inOctets),
        rx_packets: u64(IF_ROW.inUcastPkts) + u64(IF_ROW.inNUcastPkts),
        rx_errors: u64(IF_ROW.inErrors),
        rx_dropped: u64(IF_ROW.inDiscards),
        tx_bytes: u64(IF_ROW.outOctets),
        tx_packets: u64(IF_ROW.outUcastPkts) + u64(IF_ROW.outNUcastPkts),
        tx_errors: u64(IF_ROW.outErrors),
        tx_dropped: u64(IF_ROW.outDiscards),
      });
    }
    return out;
  } finally {
    iphlpapi().FreeMibTable(table);
  }
}

const SYSTEM_PROBES: WindowsMetricsProbes = {
  systemTimes: filetimes,
  network: networkCounters,
  cpus: () => os.cpus(),
  memory: memoryStatus,
  volumes,
  processCount,
  uptime: () => os.uptime(),
  now: Date.now,
  monotonic: () => performance.now(),
};
