import os from "node:os";
import { PROTOCOL_VERSION, type Result } from "../schema/methods.ts";
import { AGENT_VERSION } from "../version.ts";
import { linuxOsIdentity } from "./linux.ts";
import type { OsIdentity } from "./os-identity.ts";
import { windowsOsIdentity } from "./windows.ts";

/** The OS identity changes only with an upgrade: re-read it at most every 10 s. */
export const currentOsIdentity: () => OsIdentity = refreshedEvery(10_000, process.platform === "win32" ? windowsOsIdentity : () => linuxOsIdentity());

/**
 * Memoise a probe for `ttlMs`: get_info is polled by hosts, and listing
 * interfaces alone costs ~45 µs, more than the whole round trip budget.
 */
export function refreshedEvery<T>(ttlMs: number, probe: () => T): () => T {
  let value: T;
  let takenAt = -Infinity;
  return () => {
    const now = performance.now();
    if (now - takenAt >= ttlMs) {
      value = probe();
      takenAt = now;
    }
    return value;
  };
}

type IpAddress = Result<"get_info">["ip_addresses"][number];

function listIpAddresses(): IpAddress[] {
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

/** Addresses may change at any time (DHCP); a second of staleness is the price of a fast get_info. */
export const ipAddresses = refreshedEvery(1_000, listIpAddresses);

/** os.uptime() once a second; in between, the monotonic clock adds the elapsed time. */
const uptimeBase = refreshedEvery(1_000, () => ({ seconds: os.uptime(), at: performance.now() }));

function uptimeSeconds(): number {
  const base = uptimeBase();
  return Math.round((base.seconds + (performance.now() - base.at) / 1000) * 100) / 100;
}

export function getInfo(
  methods: Result<"get_info">["methods"],
  identity: () => OsIdentity = currentOsIdentity,
): Result<"get_info"> {
  return {
    ...identity(),
    hostname: os.hostname(),
    ip_addresses: ipAddresses(),
    uptime_seconds: uptimeSeconds(),
    agent_version: AGENT_VERSION,
    protocol_version: PROTOCOL_VERSION,
    methods,
  };
}
