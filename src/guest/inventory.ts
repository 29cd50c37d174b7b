/**
 * What the guest is made of, read from /proc and /sys on Linux: the data
 * behind QGA's inventory commands and their native counterparts. Fields are
 * qemu-ga's (qapi) names in snake_case, each object's members in qapi schema
 * order, so QGA only renames them (src/qga/shape.ts) and its replies stay
 * byte for byte qemu-ga's.
 */
import { existsSync, readdirSync, readFileSync, realpathSync, statfsSync, writeFileSync } from "node:fs";
import os, { constants } from "node:os";
import { join } from "node:path";
import { OS_RELEASE_PATHS } from "../info/linux.ts";
import { parseOsRelease } from "../info/os-release.ts";
import type { Result } from "../schema/methods.ts";
import { failed, GuestError } from "./errors.ts";

type DiskAddress = Result<"get_disks">["disks"][number]["address"] & {};
type NetworkInterface = Result<"get_network_interfaces">["interfaces"][number];

/**
 * guest-get-osinfo. QGA_OS_RELEASE names another os-release file, as qemu-ga
 * honours it (its own tests use it); it is read per call, as qemu-ga does.
 */
export function guestOsInfo(env: Record<string, string | undefined> = process.env): Result<"get_os_info"> {
  const override = env.QGA_OS_RELEASE;
  let release: Record<string, string> = {};
  for (const path of override ? [override] : OS_RELEASE_PATHS) {
    try {
      release = parseOsRelease(readFileSync(path, "utf8"));
      break;
    } catch {
      // Not there: the next location, or uname fields only.
    }
  }
  const info: Record<string, string> = { kernel_release: os.release(), kernel_version: os.version(), machine: os.machine() };
  const fields: [string, string][] = [
    ["id", "ID"],
    ["name", "NAME"],
    ["pretty_name", "PRETTY_NAME"],
    ["version", "VERSION"],
    ["version_id", "VERSION_ID"],
    ["variant", "VARIANT"],
    ["variant_id", "VARIANT_ID"],
  ];
  for (const [field, key] of fields) if (release[key] !== undefined) info[field] = release[key]!;
  return info as Result<"get_os_info">;
}

export interface GuestVcpu {
  logical_id: number;
  online: boolean;
  can_offline: boolean;
}

/**
 * guest-get-vcpus from sysfs: a CPU without an `online` file (cpu0 on x86) is
 * online and cannot go offline. qemu-ga lists them from the highest id down.
 */
export function guestVcpus(cpuRoot = "/sys/devices/system/cpu"): GuestVcpu[] {
  const ids = readdirSync(cpuRoot)
    .map((name) => /^cpu(\d+)$/.exec(name)?.[1])
    .filter((id): id is string => id !== undefined)
    .map(Number)
    .sort((a, b) => b - a);
  return ids.map((id) => {
    const online = join(cpuRoot, `cpu${id}`, "online");
    if (!existsSync(online)) return { logical_id: id, online: true, can_offline: false };
    return { logical_id: id, online: readFileSync(online, "utf8").trim() === "1", can_offline: true };
  });
}

/**
 * guest-network-get-interfaces as qemu-ga builds it from getifaddrs: every
 * interface in ifindex order with its hardware address (zeros when it has
 * none), its IPv4 then IPv6 addresses, and /proc/net/dev statistics — the
 * latter only for interfaces that have an address, as qemu-ga fetches them.
 */
export function guestNetworkInterfaces(sysNet = "/sys/class/net", procNetDev = "/proc/net/dev"): Result<"get_network_interfaces">["interfaces"] {
  const addresses = os.networkInterfaces();
  const stats = parseNetDev(readFileSync(procNetDev, "utf8"));
  const names = readdirSync(sysNet)
    .map((name) => ({ name, index: Number(readOptional(join(sysNet, name, "ifindex")) ?? Number.MAX_SAFE_INTEGER) }))
    .sort((a, b) => a.index - b.index)
    .map(({ name }) => name);
  return names.map((name) => {
    const entry: NetworkInterface = { name, hardware_address: readOptional(join(sysNet, name, "address")) || "00:00:00:00:00:00" };
    const ips = (addresses[name] ?? []).map((a) => ({
      ip_address: a.address,
      ip_address_type: a.family === "IPv4" ? ("ipv4" as const) : ("ipv6" as const),
      prefix: Number(a.cidr?.split("/")[1] ?? 0),
    }));
    if (ips.length > 0) {
      entry.ip_addresses = ips;
      const counters = stats.get(name);
      if (counters) entry.statistics = counters;
    }
    return entry;
  });
}

function readOptional(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8").trim();
  } catch {
    return undefined;
  }
}

/** /proc/net/dev: "name: rx bytes packets errs drop fifo frame compressed multicast tx bytes packets errs drop ...". */
function parseNetDev(text: string): Map<string, NetworkInterface["statistics"] & {}> {
  const out = new Map<string, NetworkInterface["statistics"] & {}>();
  for (const line of text.split("\n").slice(2)) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const f = line.slice(colon + 1).trim().split(/\s+/).map(Number);
    out.set(line.slice(0, colon).trim(), {
      rx_bytes: f[0]!,
      rx_packets: f[1]!,
      rx_errs: f[2]!,
      rx_dropped: f[3]!,
      tx_bytes: f[8]!,
      tx_packets: f[9]!,
      tx_errs: f[10]!,
      tx_dropped: f[11]!,
    });
  }
  return out;
}

/** USER_HZ: /proc/stat counts in these ticks (100 on every Linux qemu-ga runs on; glibc's sysconf(_SC_CLK_TCK) is fixed there). */
const CLK_TCK = 100;

/** guest-get-cpustats: one entry per CPU (not the aggregate line), times in milliseconds, as many fields as the kernel gives. */
export function guestCpuStats(procStat = "/proc/stat"): Record<string, unknown>[] {
  const names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guestnice"];
  const out: Record<string, unknown>[] = [];
  for (const line of readFileSync(procStat, "utf8").split("\n")) {
    const [label, ...values] = line.trim().split(/\s+/);
    if (!label || !/^cpu\d+$/.test(label)) continue;
    const entry: Record<string, unknown> = { type: "linux", cpu: Number(label.slice(3)) };
    values.slice(0, names.length).forEach((value, i) => (entry[names[i]!] = Math.floor((Number(value) * 1000) / CLK_TCK)));
    out.push(entry);
  }
  return out;
}

/**
 * guest-get-diskstats: every line of /proc/diskstats (loop devices included,
 * as qemu-ga lists them), with the fields that line's format has: 4 for the
 * old partition format, 11 from the classic one, discard from 18 columns on,
 * flush from 20.
 */
export function guestDiskStats(procDiskstats = "/proc/diskstats"): Result<"get_diskstats">["disks"] {
  const out: Result<"get_diskstats">["disks"] = [];
  for (const line of readFileSync(procDiskstats, "utf8").split("\n")) {
    const [major, minor, name, ...rest] = line.trim().split(/\s+/);
    const v = rest.map(Number);
    if (!name || v.length < 4) continue;
    const stats: Result<"get_diskstats">["disks"][number]["stats"] = {};
    if (v.length === 4) {
      Object.assign(stats, { read_sectors: v[1]!, read_ios: v[0]!, write_sectors: v[3]!, write_ios: v[2]! });
    } else if (v.length >= 11) {
      Object.assign(stats, {
        read_sectors: v[2]!,
        read_ios: v[0]!,
        read_merges: v[1]!,
        write_sectors: v[6]!,
        write_ios: v[4]!,
        write_merges: v[5]!,
      });
      if (v.length >= 15) Object.assign(stats, { discard_sectors: v[13]!, discard_ios: v[11]!, discard_merges: v[12]! });
      if (v.length >= 17) stats.flush_ios = v[15]!;
      Object.assign(stats, { read_ticks: v[3]!, write_ticks: v[7]! });
      if (v.length >= 15) stats.discard_ticks = v[14]!;
      if (v.length >= 17) stats.flush_ticks = v[16]!;
      Object.assign(stats, { ios_pgr: v[8]!, total_ticks: v[9]!, weight_ticks: v[10]! });
    }
    out.push({ name, major: Number(major), minor: Number(minor), stats });
  }
  return out;
}

const MEMORY_ROOT = "/sys/devices/system/memory";

export interface GuestMemoryBlock {
  phys_index: number;
  online: boolean;
  can_offline: boolean;
}

/** One memory block from sysfs: `state` says online, `removable` whether it may go offline (no file: it may not). */
function memoryBlock(root: string, index: number): GuestMemoryBlock {
  const state = readOptional(join(root, `memory${index}`, "state"));
  if (state === undefined) return { phys_index: index, online: true, can_offline: false };
  const removable = readOptional(join(root, `memory${index}`, "removable"));
  return { phys_index: index, online: state.startsWith("online"), can_offline: removable !== undefined && removable !== "0" };
}

/** guest-get-memory-blocks, in directory order as qemu-ga's readdir gives it. */
export function guestMemoryBlocks(root = MEMORY_ROOT): GuestMemoryBlock[] {
  return readdirSync(root, { withFileTypes: true })
    .filter((entry) => entry.isDirectory() && /^memory\d+$/.test(entry.name))
    .map((entry) => memoryBlock(root, Number(entry.name.slice(6))));
}

/** guest-get-memory-block-info: block_size_bytes is hexadecimal in sysfs. */
export function guestMemoryBlockInfo(root = MEMORY_ROOT): { size: number } {
  return { size: Number.parseInt(readFileSync(join(root, "block_size_bytes"), "utf8").trim(), 16) };
}

export interface MemoryBlockResponse {
  phys_index: number;
  response: "success" | "not_found" | "operation_not_supported" | "operation_failed";
  error_code?: number;
}

/** guest-set-memory-blocks: each block brought online or offline through its `state` file; one response per request. */
export function guestSetMemoryBlocks(requests: { phys_index: number; online: boolean }[], root = MEMORY_ROOT): MemoryBlockResponse[] {
  return requests.map(({ phys_index: index, online }) => {
    const dir = join(root, `memory${index}`);
    if (!existsSync(dir)) return { phys_index: index, response: "not_found", error_code: constants.errno.ENOENT };
    const current = memoryBlock(root, index);
    if (current.online === online) return { phys_index: index, response: "success" };
    if (!online && !current.can_offline) return { phys_index: index, response: "operation_not_supported" };
    try {
      writeFileSync(join(dir, "state"), online ? "online" : "offline");
      return { phys_index: index, response: "success" };
    } catch (error) {
      const errno = constants.errno[(error as NodeJS.ErrnoException).code as keyof typeof constants.errno];
      return { phys_index: index, response: "operation_failed", error_code: errno ?? -1 };
    }
  });
}

export interface MountEntry {
  major: number;
  minor: number;
  mountpoint: string;
  type: string;
}

/** /proc/self/mountinfo, block-backed mounts only (major 0 is a virtual filesystem), as qemu-ga lists them. */
export function blockMounts(mountinfo = "/proc/self/mountinfo"): MountEntry[] {
  const unescape = (text: string) => text.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
  const out: MountEntry[] = [];
  for (const line of readFileSync(mountinfo, "utf8").split("\n")) {
    const fields = line.split(" ");
    const dash = fields.indexOf("-");
    if (fields.length < 7 || dash < 0) continue;
    const [major, minor] = fields[2]!.split(":").map(Number) as [number, number];
    if (major === 0) continue;
    out.push({ major, minor, mountpoint: unescape(fields[4]!), type: fields[dash + 1]! });
  }
  return out;
}

const PCI_ADDRESS = /^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/;
const SCSI_ADDRESS = /^(\d+):(\d+):(\d+):(\d+)$/;

/** Where a disk sits, from its sysfs path: the PCI function it hangs off, and its bus and address on it. */
function diskAddress(sysBlock: string): DiskAddress {
  const real = realpathSync(sysBlock);
  const parts = real.split("/");
  const pci = parts.map((part) => PCI_ADDRESS.exec(part)).filter((m) => m !== null).at(-1);
  const scsi = parts.map((part) => SCSI_ADDRESS.exec(part)).filter((m) => m !== null).at(-1);
  const busType = scsi ? (real.includes("/ata") ? "sata" : "scsi") : real.includes("/virtio") ? "virtio" : real.includes("/nvme") ? "nvme" : "unknown";
  const name = parts.at(-1)!;
  const address: DiskAddress = {
    pci_controller: pci
      ? { domain: Number.parseInt(pci[1]!, 16), bus: Number.parseInt(pci[2]!, 16), slot: Number.parseInt(pci[3]!, 16), function: Number(pci[4]) }
      : { domain: -1, bus: -1, slot: -1, function: -1 },
    bus_type: busType,
    bus: scsi ? Number(scsi[2]) : 0,
    target: scsi ? Number(scsi[3]) : 0,
    unit: scsi ? Number(scsi[4]) : 0,
  };
  const serial = readOptional(join(real, "serial")) || readOptional(join(real, "device", "serial"));
  if (serial) address.serial = serial;
  address.dev = `/dev/${name}`;
  return address;
}

/** The disks under a block device: itself (or its whole disk, for a partition), or the slaves of a dm/md device. */
function disksOf(sysDev: string): DiskAddress[] {
  const dir = realpathSync(sysDev);
  const slaves = existsSync(join(dir, "slaves")) ? readdirSync(join(dir, "slaves")) : [];
  if (slaves.length > 0) return slaves.flatMap((slave) => disksOf(join(dir, "slaves", slave)));
  return [diskAddress(existsSync(join(dir, "partition")) ? join(dir, "..") : dir)];
}

/** guest-get-fsinfo: each block-backed mount, its usage (without root-reserved space) and the disks under it. */
export function guestFsInfo(): Result<"get_fsinfo">["filesystems"] {
  return blockMounts().map(({ major, minor, mountpoint, type }) => {
    const sysDev = `/sys/dev/block/${major}:${minor}`;
    const name = existsSync(sysDev) ? realpathSync(sysDev).split("/").at(-1)! : `${major}:${minor}`;
    let sizes: { used_bytes: number; total_bytes: number } | {} = {};
    try {
      const fs = statfsSync(mountpoint);
      sizes = { used_bytes: (fs.blocks - fs.bfree) * fs.bsize, total_bytes: (fs.blocks - fs.bfree + fs.bavail) * fs.bsize };
    } catch {
      // Not reachable: qemu-ga leaves the sizes out too.
    }
    return { name, mountpoint, type, ...sizes, disk: existsSync(sysDev) ? disksOf(sysDev) : [] };
  });
}

/**
 * guest-get-disks: every disk and partition qemu-ga would list — block devices
 * that are not virtual (loop, ram, zram) — with what each depends on (a
 * partition on its disk, a dm/md device on its slaves) and, for a real disk,
 * its address.
 */
export function guestDisks(sysBlock = "/sys/block"): Result<"get_disks">["disks"] {
  const out: Result<"get_disks">["disks"] = [];
  for (const name of readdirSync(sysBlock)) {
    const dir = realpathSync(join(sysBlock, name));
    if (dir.includes("/devices/virtual/block/") && !existsSync(join(dir, "dm"))) continue;
    const slaves = existsSync(join(dir, "slaves")) ? readdirSync(join(dir, "slaves")) : [];
    const disk: Result<"get_disks">["disks"][number] = { name: `/dev/${name}`, partition: false, dependencies: slaves.map((slave) => `/dev/${slave}`) };
    const alias = readOptional(join(dir, "dm", "name"));
    if (alias) disk.alias = alias;
    if (slaves.length === 0) disk.address = diskAddress(dir);
    out.push(disk);
    for (const part of readdirSync(dir).filter((entry) => existsSync(join(dir, entry, "partition")))) {
      out.push({ name: `/dev/${part}`, partition: true, dependencies: [`/dev/${name}`] });
    }
  }
  return out;
}

/** guest-get-load (qemu 8.2+): the 1, 5 and 15 minute load averages from /proc/loadavg. */
export function guestLoad(procLoadavg = "/proc/loadavg"): { load1: number; load5: number; load15: number } {
  const [load1, load5, load15] = readFileSync(procLoadavg, "utf8").split(/\s+/).map(Number) as [number, number, number];
  return { load1, load5, load15 };
}

/**
 * guest-set-vcpus: each CPU's sysfs `online` file set as asked. Like qemu-ga,
 * it stops at the first failure and answers how many it processed; failing on
 * the very first is an error naming the CPU.
 */
export function guestSetVcpus(requests: { logical_id: number; online: boolean }[], cpuRoot = "/sys/devices/system/cpu"): number {
  let processed = 0;
  for (const { logical_id: id, online } of requests) {
    const file = join(cpuRoot, `cpu${id}`, "online");
    const problem = ((): GuestError | null => {
      if (!existsSync(join(cpuRoot, `cpu${id}`))) {
        return new GuestError("not_found", `open("${join(cpuRoot, `cpu${id}`)}/"): No such file or directory`, `no logical processor #${id}`); // qemu-ga's words
      }
      if (!existsSync(file)) return online ? null : failed(`logical processor #${id} can't be offlined`);
      try {
        if ((readFileSync(file, "utf8").trim() === "1") !== online) writeFileSync(file, online ? "1" : "0");
        return null;
      } catch (error) {
        return failed(`cannot set logical processor #${id} ${online ? "online" : "offline"}: ${(error as Error).message}`);
      }
    })();
    if (problem) {
      if (processed === 0) throw problem;
      break;
    }
    processed++;
  }
  return processed;
}
