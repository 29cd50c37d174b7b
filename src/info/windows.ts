import os from "node:os";
import { readRegistryValues, type RegistryValue } from "../platform/windows/win32.ts";
import type { OsIdentity } from "./os-identity.ts";

export const CURRENT_VERSION_KEY = "SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion";
export const CURRENT_VERSION_VALUES = ["ProductName", "CurrentBuildNumber", "CurrentBuild", "DisplayVersion", "ReleaseId", "UBR"] as const;

/** The first Windows 11 build; the registry's ProductName still says "Windows 10" there (qemu-ga reports it so to this day). */
export const WINDOWS_11_FIRST_BUILD = 22000;

export interface WindowsIdentityProbes {
  /** HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion's values; throws when the key cannot be read. */
  currentVersion: () => Map<string, RegistryValue>;
  /** "10.0.22631" (RtlGetVersion, which no compatibility shim lies to). */
  release: () => string;
  machine: () => string;
  /** The product name libuv found, for when the registry cannot be read. */
  fallbackProductName: () => string;
}

const SYSTEM_PROBES: WindowsIdentityProbes = {
  currentVersion: () => readRegistryValues(CURRENT_VERSION_KEY, CURRENT_VERSION_VALUES),
  release: () => os.release(),
  machine: () => os.machine(),
  fallbackProductName: () => os.version(),
};

/** "Windows 10 Pro" on build 22000 or later is Windows 11 Pro; anything else is left as the registry says. */
export function correctedProductName(productName: string, build: number): string {
  return build >= WINDOWS_11_FIRST_BUILD ? productName.replace(/^(Microsoft )?Windows 10\b/, "$1Windows 11") : productName;
}

/** Product name from the registry (corrected for Windows 11), feature update and build; no child processes. */
export function windowsOsIdentity(probes: WindowsIdentityProbes = SYSTEM_PROBES): OsIdentity {
  const release = probes.release();
  let values: Map<string, RegistryValue>;
  try {
    values = probes.currentVersion();
  } catch {
    values = new Map();
  }
  const text = (name: string) => {
    const value = values.get(name);
    return value === undefined ? "" : String(value).trim();
  };
  const build = text("CurrentBuildNumber") || text("CurrentBuild") || release.split(".")[2] || "";
  const productName = correctedProductName(text("ProductName") || probes.fallbackProductName(), Number(build) || 0);
  const ubr = values.get("UBR");
  const fullBuild = typeof ubr === "number" ? `${build}.${ubr}` : build;
  const featureUpdate = text("DisplayVersion") || text("ReleaseId");
  return {
    os_type: "windows",
    os_id: "windows",
    os_name: productName,
    os_version: featureUpdate || fullBuild,
    os_pretty_name: [productName, featureUpdate, fullBuild ? `(build ${fullBuild})` : ""].filter(Boolean).join(" "),
    kernel_release: release,
    kernel_version: fullBuild,
    arch: probes.machine(),
  };
}
