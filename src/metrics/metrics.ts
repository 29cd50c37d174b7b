/**
 * get_metrics: CPU, memory, swap, load, disk and network I/O, filesystem
 * usage, uptime and process count, read straight from /proc (and /sys/block,
 * statfs(2)) — no child processes, a few small file reads per call.
 *
 * Decisions (see also docs in the final report):
 * - CPU usage_percent is the busy share (everything but idle and iowait)
 *   between the previous call's sample and this one; the first call compares
 *   with the sample taken at construction. Calls closer than 50 ms to the
 *   previous sample reuse the previous result (and keep the old sample, so the
 *   next window stays meaningful). A CPU with no ticks in the window reports 0.
 * - Disks: whole devices only (the names listed in /sys/block; a name pattern
 *   when /sys is unreadable), so partitions are not counted twice; loop, ram
 *   and zram devices are skipped while they have done no I/O at all.
 * - Filesystems: like df(1) — pseudo filesystems (statfs reports 0 blocks, or a
 *   known pseudo type, which is skipped without a syscall) are left out, tmpfs
 *   and devtmpfs are kept, one entry per block device (the shortest mount
 *   point, as df does for bind mounts), the last mount on a mount point wins
 *   (over-mounts). Network filesystems are NOT statfs'd: a dead NFS server
 *   would block statfs(2), and with it every call on this agent.
 * - processes: numeric entries of /proc (the loadavg "total" counts threads).
 */
import { readdirSync, readFileSync, statfsSync } from "node:fs";
import { RpcError } from "../protocol/errors.ts";
import type { Params, Result } from "../schema/methods.ts";
import type { MetricsService } from "../services.ts";

export type MetricsJson = Extract<Result<"get_metrics">, { format: "json" }>;
type CpuTimes = MetricsJson["cpu"]["total"];

/** What the agent needs from statfs(2); block counts in units of `frsize` (falls back to `bsize`). */
export interface FsStats {
  bsize: number;
  frsize?: number;
  blocks: number;
  bfree: number;
  bavail: number;
}

export interface ProcMetricsOptions {
  /** Default "/proc"; tests point it at fixtures. */
  procRoot?: string;
  /** Default "/sys"; only sys/block is read, to tell whole disks from partitions. */
  sysRoot?: string;
  /** statfs(2) of a mount point; default fs.statfsSync. */
  statfs?: (path: string) => FsStats;
  /** Wall clock for timestamp_ms; default Date.now. */
  now?: () => number;
  /** Monotonic milliseconds for the CPU sample window; default performance.now. */
  monotonic?: () => number;
}

/** USER_HZ is 100 on every Linux ABI the agent runs on (it is part of the ABI, unlike HZ). */
const USER_HZ = 100;
/** Calls closer together than this reuse the previous CPU result: a few ticks make a noisy percentage. */
const MIN_WINDOW_MS = 50;
const SECTOR_BYTES = 512;

const CPU_FIELDS = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"] as const;

/** Types df(1) would show with -a only: known to have no blocks, so no statfs call. */
const PSEUDO_FS = new Set([
  "proc", "sysfs", "cgroup", "cgroup2", "devpts", "securityfs", "pstore", "bpf", "debugfs", "tracefs", "configfs",
  "fusectl", "mqueue", "hugetlbfs", "autofs", "binfmt_misc", "rpc_pipefs", "nsfs", "efivarfs", "selinuxfs",
  "fuse.gvfsd-fuse", "fuse.portal", "nfsd", "rootfs",
]);
/** Remote filesystems: statfs(2) can block for minutes when the server is gone. */
const REMOTE_FS = new Set([
  "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs", "fuse.glusterfs", "fuse.sshfs",
  "fuse.s3fs", "fuse.rclone", "lustre", "gfs2", "ocfs2", "coda",
]);

const PARTITION_NAME = /^(?:(?:[shv]|xv)d[a-z]+\d+|(?:nvme\d+n\d+|mmcblk\d+|nbd\d+|loop\d+|md\d+|zd\d+)p\d+)$/;
const IDLE_SKIPPED_DISK = /^(?:loop|ram|zram)\d+$/;

interface CpuSample {
  /** Ticks per field, in CPU_FIELDS order. */
  ticks: Map<string, number[]>;
  at: number;
}

export class ProcMetrics implements MetricsService {
  private readonly procRoot: string;
  private readonly sysRoot: string;
  private readonly statfs: (path: string) => FsStats;
  private readonly now: () => number;
  private readonly monotonic: () => number;

  private previous: CpuSample;
  /** usage_percent per CPU name ("cpu", "cpu0", ...) from the last window. */
  private lastUsage = new Map<string, number>();

  private wholeDisksKey = "";
  private wholeDisks: ((name: string) => boolean) | null = null;

  constructor(options: ProcMetricsOptions = {}) {
    this.procRoot = options.procRoot ?? "/proc";
    this.sysRoot = options.sysRoot ?? "/sys";
    this.statfs = options.statfs ?? ((path) => statfsSync(path));
    this.now = options.now ?? Date.now;
    this.monotonic = options.monotonic ?? (() => performance.now());
    // Constructed on every platform (Windows answers UNSUPPORTED_OS before collect): never throw here.
    try {
      this.previous = this.sampleCpu();
    } catch {
      this.previous = { ticks: new Map(), at: this.monotonic() };
    }
  }

  collect(params: Params<"get_metrics">): Result<"get_metrics"> {
    let json: MetricsJson;
    try {
      json = this.collectJson();
    } catch (error) {
      const errno = (error as NodeJS.ErrnoException).code;
      throw new RpcError("OPERATION_FAILED", `Cannot read system metrics: ${(error as Error).message}`, { errno: errno ?? null });
    }
    if (params.format === "prometheus") return { format: "prometheus", text: toPrometheus(json) };
    return json;
  }

  collectJson(): MetricsJson {
    const cpu = this.cpu();
    const memInfo = parseMeminfo(this.read("meminfo"));
    return {
      format: "json",
      timestamp_ms: this.now(),
      uptime_seconds: parseUptime(this.read("uptime")),
      cpu,
      memory: memInfo.memory,
      swap: memInfo.swap,
      load: parseLoadavg(this.read("loadavg")),
      disks: this.disks(),
      network: parseNetDev(this.read("net/dev")),
      filesystems: this.filesystems(),
      processes: this.countProcesses(),
    };
  }

  private read(name: string): string {
    return readFileSync(`${this.procRoot}/${name}`, "latin1");
  }

  private sampleCpu(): CpuSample {
    return { ticks: parseStat(this.read("stat")), at: this.monotonic() };
  }

  private cpu(): MetricsJson["cpu"] {
    const current = this.sampleCpu();
    const reuse = current.at - this.previous.at < MIN_WINDOW_MS && this.lastUsage.size > 0;
    const usage = new Map<string, number>();
    for (const [name, ticks] of current.ticks) {
      const before = this.previous.ticks.get(name);
      const reused = reuse ? this.lastUsage.get(name) : undefined;
      usage.set(name, reused ?? (before ? busyPercent(before, ticks) : 0));
    }
    if (!reuse) {
      this.previous = current;
      this.lastUsage = usage;
    }
    const times = (name: string, ticks: number[]): CpuTimes => {
      const out = { usage_percent: usage.get(name) ?? 0 } as CpuTimes;
      CPU_FIELDS.forEach((field, i) => (out[field] = ticks[i]! / USER_HZ));
      return out;
    };
    const per_cpu: MetricsJson["cpu"]["per_cpu"] = [];
    let total: CpuTimes | null = null;
    for (const [name, ticks] of current.ticks) {
      if (name === "cpu") total = times(name, ticks);
      else per_cpu.push({ ...times(name, ticks), cpu: name.slice(3) });
    }
    return { total: total ?? times("cpu", new Array(CPU_FIELDS.length).fill(0)), per_cpu };
  }

  private disks(): MetricsJson["disks"] {
    const rows = parseDiskstats(this.read("diskstats"));
    const key = rows.map((row) => row.device).join(" ");
    if (key !== this.wholeDisksKey || !this.wholeDisks) {
      this.wholeDisksKey = key;
      this.wholeDisks = this.loadWholeDisks();
    }
    const isWhole = this.wholeDisks;
    return rows.filter((row) => isWhole(row.device) && !(IDLE_SKIPPED_DISK.test(row.device) && row.reads === 0 && row.writes === 0));
  }

  /** /sys/block lists whole devices; re-read only when the set of devices in diskstats changes. */
  private loadWholeDisks(): (name: string) => boolean {
    try {
      const names = new Set(readdirSync(`${this.sysRoot}/block`));
      if (names.size > 0) return (name) => names.has(name);
    } catch {
      // No sysfs (a container, a test): tell partitions by name.
    }
    return (name) => !PARTITION_NAME.test(name);
  }

  private filesystems(): MetricsJson["filesystems"] {
    const byMount = new Map<string, { device: string; fstype: string }>();
    for (const line of this.read("self/mounts").split("\n")) {
      if (line === "") continue;
      const [device, mount, fstype] = line.split(" ");
      if (device === undefined || mount === undefined || fstype === undefined) continue;
      if (PSEUDO_FS.has(fstype) || REMOTE_FS.has(fstype)) {
        byMount.delete(unescapeMount(mount)); // Over-mounted by a pseudo filesystem: the one below is hidden.
        continue;
      }
      const path = unescapeMount(mount);
      byMount.delete(path); // Re-insert so the last (visible) mount keeps its position at the end.
      byMount.set(path, { device: unescapeMount(device), fstype });
    }
    const out: MetricsJson["filesystems"] = [];
    const byDevice = new Map<string, number>();
    for (const [mount, { device, fstype }] of byMount) {
      let stats: FsStats;
      try {
        stats = this.statfs(mount);
      } catch {
        continue; // Unmounted since, or not ours to see.
      }
      if (!(stats.blocks > 0)) continue;
      const unit = stats.frsize || stats.bsize;
      const entry = {
        mount,
        device,
        fstype,
        size_bytes: stats.blocks * unit,
        used_bytes: Math.max(0, stats.blocks - stats.bfree) * unit,
        available_bytes: Math.max(0, stats.bavail) * unit,
      };
      if (device.startsWith("/")) {
        const seen = byDevice.get(device);
        if (seen !== undefined) {
          if (mount.length < out[seen]!.mount.length) out[seen] = entry;
          continue;
        }
        byDevice.set(device, out.length);
      }
      out.push(entry);
    }
    return out;
  }

  private countProcesses(): number {
    let count = 0;
    for (const name of readdirSync(this.procRoot)) {
      const c = name.charCodeAt(0);
      if (c >= 48 && c <= 57) count++;
    }
    return count;
  }
}

// ---------------------------------------------------------------- parsers

/** cpu lines of /proc/stat: name → ticks in CPU_FIELDS order (guest time is already inside user/nice). */
export function parseStat(text: string): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const line of text.split("\n")) {
    if (!line.startsWith("cpu")) continue;
    const parts = line.split(/\s+/);
    const ticks = CPU_FIELDS.map((_, i) => toCount(parts[i + 1]));
    out.set(parts[0]!, ticks);
  }
  return out;
}

/** Busy share of the ticks between two samples; counters that went backwards (iowait can) count as 0. */
function busyPercent(before: number[], after: number[]): number {
  let total = 0;
  let idle = 0;
  for (let i = 0; i < CPU_FIELDS.length; i++) {
    const delta = Math.max(0, after[i]! - before[i]!);
    total += delta;
    if (i === 3 || i === 4) idle += delta; // idle, iowait
  }
  if (total === 0) return 0;
  return Math.min(100, Math.max(0, Math.round(((total - idle) / total) * 10_000) / 100));
}

export function parseMeminfo(text: string): Pick<MetricsJson, "memory" | "swap"> {
  const kb = new Map<string, number>();
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) kb.set(line.slice(0, colon), toCount(line.slice(colon + 1).trim().split(/\s+/)[0]));
  }
  const bytes = (key: string) => (kb.get(key) ?? 0) * 1024;
  const total = bytes("MemTotal");
  const free = bytes("MemFree");
  const buffers = bytes("Buffers");
  const cached = bytes("Cached");
  // MemAvailable exists since Linux 3.14; before that, free + buffers + cache is the usual estimate.
  const available = Math.min(total, kb.has("MemAvailable") ? bytes("MemAvailable") : free + buffers + cached);
  const swapTotal = bytes("SwapTotal");
  const swapFree = Math.min(swapTotal, bytes("SwapFree"));
  return {
    memory: { total_bytes: total, available_bytes: available, used_bytes: total - available, free_bytes: free, buffers_bytes: buffers, cached_bytes: cached },
    swap: { total_bytes: swapTotal, used_bytes: swapTotal - swapFree, free_bytes: swapFree },
  };
}

export function parseLoadavg(text: string): MetricsJson["load"] {
  const [l1, l5, l15, tasks] = text.trim().split(/\s+/);
  const [running, total] = (tasks ?? "0/0").split("/");
  return { load1: toFloat(l1), load5: toFloat(l5), load15: toFloat(l15), running: toCount(running), total: toCount(total) };
}

export function parseUptime(text: string): number {
  return toFloat(text.trim().split(/\s+/)[0]);
}

/** Every row of /proc/diskstats (filtering is the caller's). */
export function parseDiskstats(text: string): MetricsJson["disks"] {
  const out: MetricsJson["disks"] = [];
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 14) continue;
    out.push({
      device: f[2]!,
      reads: toCount(f[3]),
      read_bytes: toCount(f[5]) * SECTOR_BYTES,
      writes: toCount(f[7]),
      write_bytes: toCount(f[9]) * SECTOR_BYTES,
      io_ms: toCount(f[12]),
    });
  }
  return out;
}

export function parseNetDev(text: string): MetricsJson["network"] {
  const out: MetricsJson["network"] = [];
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":"); // Interface names cannot contain ':' (dev_valid_name).
    if (colon < 0 || line.includes("|")) continue;
    const f = line.slice(colon + 1).trim().split(/\s+/);
    if (f.length < 16) continue;
    out.push({
      interface: line.slice(0, colon).trim(),
      rx_bytes: toCount(f[0]),
      rx_packets: toCount(f[1]),
      rx_errors: toCount(f[2]),
      rx_dropped: toCount(f[3]),
      tx_bytes: toCount(f[8]),
      tx_packets: toCount(f[9]),
      tx_errors: toCount(f[10]),
      tx_dropped: toCount(f[11]),
    });
  }
  return out;
}

/** /proc/self/mounts escapes space, tab, newline and backslash as \ooo. */
export function unescapeMount(field: string): string {
  return field.includes("\\") ? field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8))) : field;
}

function toCount(text: string | undefined): number {
  const n = Number(text);
  return Number.isFinite(n) && n >= 0 ? Math.floor(n) : 0;
}

function toFloat(text: string | undefined): number {
  const n = Number(text);
  return Number.isFinite(n) ? n : 0;
}

// ---------------------------------------------------------------- Prometheus text format 0.0.4

type Labels = Record<string, string>;

class Exposition {
  private out = "";

  family(name: string, type: "counter" | "gauge", help: string, samples: [Labels, number][]): void {
    if (samples.length === 0) return;
    this.out += `# HELP ${name} ${help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}\n# TYPE ${name} ${type}\n`;
    for (const [labels, value] of samples) this.out += `${name}${formatLabels(labels)} ${formatValue(value)}\n`;
  }

  text(): string {
    return this.out;
  }
}

function formatLabels(labels: Labels): string {
  const keys = Object.keys(labels);
  if (keys.length === 0) return "";
  return `{${keys.map((key) => `${key}="${escapeLabel(labels[key]!)}"`).join(",")}}`;
}

export function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

/** The JSON metrics as a Prometheus scrape, under the kma_ prefix, named after node_exporter's families. */
export function toPrometheus(m: MetricsJson): string {
  const e = new Exposition();
  e.family(
    "kma_cpu_seconds_total",
    "counter",
    "Seconds each CPU spent in each mode since boot.",
    m.cpu.per_cpu.flatMap((t) => CPU_FIELDS.map((mode): [Labels, number] => [{ cpu: t.cpu, mode }, t[mode]])),
  );
  e.family("kma_cpu_usage_percent", "gauge", "Busy share of each CPU between the previous get_metrics call and this one.", m.cpu.per_cpu.map((t) => [{ cpu: t.cpu }, t.usage_percent]));
  e.family("kma_cpu_overall_usage_percent", "gauge", "Busy share of all CPUs together between the previous get_metrics call and this one.", [[{}, m.cpu.total.usage_percent]]);

  const mem = m.memory;
  e.family("kma_memory_total_bytes", "gauge", "MemTotal from /proc/meminfo.", [[{}, mem.total_bytes]]);
  e.family("kma_memory_available_bytes", "gauge", "MemAvailable from /proc/meminfo.", [[{}, mem.available_bytes]]);
  e.family("kma_memory_used_bytes", "gauge", "MemTotal minus MemAvailable.", [[{}, mem.used_bytes]]);
  e.family("kma_memory_free_bytes", "gauge", "MemFree from /proc/meminfo.", [[{}, mem.free_bytes]]);
  e.family("kma_memory_buffers_bytes", "gauge", "Buffers from /proc/meminfo.", [[{}, mem.buffers_bytes]]);
  e.family("kma_memory_cached_bytes", "gauge", "Cached from /proc/meminfo.", [[{}, mem.cached_bytes]]);
  e.family("kma_swap_total_bytes", "gauge", "SwapTotal from /proc/meminfo.", [[{}, m.swap.total_bytes]]);
  e.family("kma_swap_used_bytes", "gauge", "SwapTotal minus SwapFree.", [[{}, m.swap.used_bytes]]);
  e.family("kma_swap_free_bytes", "gauge", "SwapFree from /proc/meminfo.", [[{}, m.swap.free_bytes]]);

  e.family("kma_load1", "gauge", "1-minute load average.", [[{}, m.load.load1]]);
  e.family("kma_load5", "gauge", "5-minute load average.", [[{}, m.load.load5]]);
  e.family("kma_load15", "gauge", "15-minute load average.", [[{}, m.load.load15]]);
  e.family("kma_tasks_running", "gauge", "Runnable scheduling entities (threads), from /proc/loadavg.", [[{}, m.load.running]]);
  e.family("kma_tasks", "gauge", "All scheduling entities (threads), from /proc/loadavg.", [[{}, m.load.total]]);

  const disk = (device: string): Labels => ({ device });
  e.family("kma_disk_reads_completed_total", "counter", "Reads completed per whole disk.", m.disks.map((d) => [disk(d.device), d.reads]));
  e.family("kma_disk_read_bytes_total", "counter", "Bytes read per whole disk.", m.disks.map((d) => [disk(d.device), d.read_bytes]));
  e.family("kma_disk_writes_completed_total", "counter", "Writes completed per whole disk.", m.disks.map((d) => [disk(d.device), d.writes]));
  e.family("kma_disk_written_bytes_total", "counter", "Bytes written per whole disk.", m.disks.map((d) => [disk(d.device), d.write_bytes]));
  e.family("kma_disk_io_time_seconds_total", "counter", "Seconds the disk spent doing I/O.", m.disks.map((d) => [disk(d.device), d.io_ms / 1000]));

  const nic = (name: string): Labels => ({ interface: name });
  const net = m.network;
  e.family("kma_network_receive_bytes_total", "counter", "Bytes received per interface.", net.map((n) => [nic(n.interface), n.rx_bytes]));
  e.family("kma_network_receive_packets_total", "counter", "Packets received per interface.", net.map((n) => [nic(n.interface), n.rx_packets]));
  e.family("kma_network_receive_errs_total", "counter", "Receive errors per interface.", net.map((n) => [nic(n.interface), n.rx_errors]));
  e.family("kma_network_receive_drop_total", "counter", "Received packets dropped per interface.", net.map((n) => [nic(n.interface), n.rx_dropped]));
  e.family("kma_network_transmit_bytes_total", "counter", "Bytes transmitted per interface.", net.map((n) => [nic(n.interface), n.tx_bytes]));
  e.family("kma_network_transmit_packets_total", "counter", "Packets transmitted per interface.", net.map((n) => [nic(n.interface), n.tx_packets]));
  e.family("kma_network_transmit_errs_total", "counter", "Transmit errors per interface.", net.map((n) => [nic(n.interface), n.tx_errors]));
  e.family("kma_network_transmit_drop_total", "counter", "Transmitted packets dropped per interface.", net.map((n) => [nic(n.interface), n.tx_dropped]));

  const fs = (f: MetricsJson["filesystems"][number]): Labels => ({ mountpoint: f.mount, device: f.device, fstype: f.fstype });
  e.family("kma_filesystem_size_bytes", "gauge", "Filesystem size.", m.filesystems.map((f) => [fs(f), f.size_bytes]));
  e.family("kma_filesystem_used_bytes", "gauge", "Filesystem space in use (size minus free blocks).", m.filesystems.map((f) => [fs(f), f.used_bytes]));
  e.family("kma_filesystem_avail_bytes", "gauge", "Filesystem space available to unprivileged users.", m.filesystems.map((f) => [fs(f), f.available_bytes]));

  e.family("kma_uptime_seconds", "gauge", "Seconds since boot, from /proc/uptime.", [[{}, m.uptime_seconds]]);
  e.family("kma_processes", "gauge", "Processes (numeric entries of /proc).", [[{}, m.processes]]);
  return e.text();
}
