/**
 * What the QGA inventory commands report on Linux, in qemu-ga's shapes and
 * field order (qapi schema order; qmpStringify puts them in qemu's QDict order).
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { OS_RELEASE_PATHS } from "../info/linux.ts";
import { parseOsRelease } from "../info/os-release.ts";

/** guest-get-time: nanoseconds since the epoch, at the microsecond precision qemu-ga has (beyond 2^53, hence a bigint). */
export function guestTime(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;
}

/**
 * guest-get-osinfo. QGA_OS_RELEASE names another os-release file, as qemu-ga
 * honours it (its own tests use it); it is read per call, as qemu-ga does.
 */
export function guestOsInfo(env: Record<string, string | undefined> = process.env): Record<string, string> {
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
  const info: Record<string, string> = { "kernel-release": os.release(), "kernel-version": os.version(), machine: os.machine() };
  const fields: [string, string][] = [
    ["id", "ID"],
    ["name", "NAME"],
    ["pretty-name", "PRETTY_NAME"],
    ["version", "VERSION"],
    ["version-id", "VERSION_ID"],
    ["variant", "VARIANT"],
    ["variant-id", "VARIANT_ID"],
  ];
  for (const [field, key] of fields) if (release[key] !== undefined) info[field] = release[key]!;
  return info;
}

export interface GuestVcpu {
  "logical-id": number;
  online: boolean;
  "can-offline": boolean;
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
    if (!existsSync(online)) return { "logical-id": id, online: true, "can-offline": false };
    return { "logical-id": id, online: readFileSync(online, "utf8").trim() === "1", "can-offline": true };
  });
}
