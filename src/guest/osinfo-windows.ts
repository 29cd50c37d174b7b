/**
 * guest-get-osinfo on Windows, field for field as qemu-ga's commands-win32.c
 * builds it — id "mswindows", name "Microsoft Windows", pretty-name the
 * registry's ProductName, version/version-id from the build and product type,
 * kernel-version "major.minor", kernel-release the build (from the registry,
 * as get_info reads them; qemu-ga asks RtlGetVersion, which agrees) — with one fix:
 * Windows 11 keeps "Windows 10" in its ProductName, which qemu-ga passes on
 * as pretty-name (the long-standing bug); here a client build >= 22000 says
 * Windows 11 there too. Server names are left as the registry has them.
 */
import os from "node:os";
import { readRegistryValues, type RegistryValue } from "../platform/windows/win32.ts";
import { CURRENT_VERSION_KEY, CURRENT_VERSION_VALUES, correctedProductName } from "../info/windows.ts";

export interface WindowsOsInfoProbes {
  /** HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion's values; throws when the key cannot be read. */
  currentVersion: () => Map<string, RegistryValue>;
  /** "10.0.22631" (RtlGetVersion, as qemu-ga reads it). */
  release: () => string;
  machine: () => string;
  /** The product name libuv found, for when the registry cannot be read. */
  fallbackProductName: () => string;
}

const SYSTEM_PROBES: WindowsOsInfoProbes = {
  currentVersion: () => readRegistryValues(CURRENT_VERSION_KEY, [...CURRENT_VERSION_VALUES, "InstallationType", "CurrentMajorVersionNumber", "CurrentMinorVersionNumber"]),
  release: () => os.release(),
  machine: () => os.machine(),
  fallbackProductName: () => os.version(),
};

/** qemu-ga's names for Windows 10.0 builds, by first build: client, then server (Server 2025 added: qemu-ga calls it 2022). */
const CLIENT_VERSIONS = [
  { firstBuild: 10240, version: "Microsoft Windows 10", id: "10" },
  { firstBuild: 22000, version: "Microsoft Windows 11", id: "11" },
] as const;
const SERVER_VERSIONS = [
  { firstBuild: 14393, version: "Microsoft Windows Server 2016", id: "2016" },
  { firstBuild: 17763, version: "Microsoft Windows Server 2019", id: "2019" },
  { firstBuild: 20344, version: "Microsoft Windows Server 2022", id: "2022" },
  { firstBuild: 26100, version: "Microsoft Windows Server 2025", id: "2025" },
] as const;

/** GetNativeSystemInfo's architectures in qemu-ga's words; others as libuv names them. */
const MACHINES: Record<string, string> = { x86_64: "x86_64", i386: "x86", i686: "x86", arm: "arm", ia64: "ia64" };

export interface QgaOsInfo {
  "kernel-release": string;
  "kernel-version": string;
  machine: string;
  id: string;
  name: string;
  "pretty-name": string;
  version: string;
  "version-id": string;
  variant: string;
  "variant-id": string;
}

export function windowsQgaOsInfo(probes: WindowsOsInfoProbes = SYSTEM_PROBES): QgaOsInfo {
  const [releaseMajor = "0", releaseMinor = "0", releaseBuild = "0"] = probes.release().split(".");
  let values: Map<string, RegistryValue>;
  try {
    values = probes.currentVersion();
  } catch {
    values = new Map();
  }
  // The version as get_info reads it (the registry first: Windows 10 and later have these values), so both protocols name the OS alike.
  const registryMajor = values.get("CurrentMajorVersionNumber");
  const registryMinor = values.get("CurrentMinorVersionNumber");
  const [major, minor] = typeof registryMajor === "number" && typeof registryMinor === "number" ? [String(registryMajor), String(registryMinor)] : [releaseMajor, releaseMinor];
  const build = String(values.get("CurrentBuildNumber") ?? values.get("CurrentBuild") ?? "").trim() || releaseBuild;
  const productName = String(values.get("ProductName") ?? "").trim() || probes.fallbackProductName();
  // InstallationType is "Client", "Server" or "Server Core": the registry's word for RtlGetVersion's wProductType.
  const server = /^server/i.test(String(values.get("InstallationType") ?? ""));
  const variant = server ? "server" : "client";
  const buildNumber = Number(build) || 0;
  const known = major === "10" && minor === "0" ? (server ? SERVER_VERSIONS : CLIENT_VERSIONS).filter((v) => buildNumber >= v.firstBuild).at(-1) : undefined;
  const machine = probes.machine();
  return {
    "kernel-release": build,
    "kernel-version": `${major}.${minor}`,
    machine: MACHINES[machine] ?? machine,
    id: "mswindows",
    name: "Microsoft Windows",
    "pretty-name": server ? productName : correctedProductName(productName, buildNumber),
    version: known?.version ?? "N/A",
    "version-id": known?.id ?? "N/A",
    variant,
    "variant-id": variant,
  };
}
