import os from "node:os";
import { PROTOCOL_VERSION, type Result } from "../schema/methods.ts";
import { AGENT_VERSION } from "../version.ts";
import { linuxOsIdentity } from "./linux.ts";
import type { OsIdentity } from "./os-identity.ts";
import { windowsOsIdentity } from "./windows.ts";

export const currentOsIdentity: () => OsIdentity = process.platform === "win32" ? windowsOsIdentity : () => linuxOsIdentity();

type IpAddress = Result<"get_info">["ip_addresses"][number];

export function ipAddresses(): IpAddress[] {
  const out: IpAddress[] = [];
  for (const [name, addresses] of Object.entries(os.networkInterfaces())) {
    for (const entry of addresses ?? []) {
      if (entry.internal) continue;
      out.push({
        interface: name,
        address: entry.address,
        family: entry.family === "IPv4" ? "ipv4" : "ipv6",
        prefix: Number(entry.cidr?.split("/")[1] ?? 0),
      });
    }
  }
  return out;
}

export function getInfo(
  methods: Result<"get_info">["methods"],
  identity: () => OsIdentity = currentOsIdentity,
): Result<"get_info"> {
  return {
    ...identity(),
    hostname: os.hostname(),
    ip_addresses: ipAddresses(),
    uptime_seconds: os.uptime(),
    agent_version: AGENT_VERSION,
    protocol_version: PROTOCOL_VERSION,
    methods,
  };
}
