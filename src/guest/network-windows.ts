/**
 * guest-network-get-interfaces on Windows, as qemu-ga's commands-win32.c
 * answers it: one entry per adapter of GetAdaptersAddresses (name = its
 * FriendlyName, hardware-address when it has one, the unicast addresses with
 * their OnLinkPrefixLength, IPv6 with "%scope" as WSAAddressToString writes
 * it), and GetIfEntry2's counters for it (unicast packets only, as qemu-ga
 * counts them) — read here from one GetIfTable2 by interface index.
 */
import { ptr, read, type Pointer } from "bun:ffi";
import { iphlpapi, readWideAt } from "../platform/windows/win32.ts";

export interface WindowsAdapter {
  name: string;
  /** IfIndex: the row of GetIfTable2 with its counters. */
  index: number;
  /** PhysicalAddress (empty: none). */
  mac: number[];
  addresses: { family: "ipv4" | "ipv6"; bytes: number[]; scopeId: number; prefix: number }[];
}

export interface InterfaceCounters {
  inOctets: number;
  inUcastPkts: number;
  inErrors: number;
  inDiscards: number;
  outOctets: number;
  outUcastPkts: number;
  outErrors: number;
  outDiscards: number;
}

export interface WindowsNetworkProbes {
  adapters: () => WindowsAdapter[];
  /** By interface index. */
  counters: () => Map<number, InterfaceCounters>;
}

const SYSTEM_PROBES: WindowsNetworkProbes = { adapters: adaptersAddresses, counters: interfaceCounters };

const hex2 = (byte: number) => byte.toString(16).padStart(2, "0");

/** RFC 5952 text, as RtlIpv6AddressToString writes it (longest run of two or more zero groups as "::"), then "%scope". */
export function ipv6Text(bytes: number[], scopeId: number): string {
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[2 * i]! << 8) | bytes[2 * i + 1]!);
  let best = { at: -1, length: 1 };
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > best.length) best = { at: i, length: j - i };
    i = j === i ? i + 1 : j;
  }
  const text = (part: number[]) => part.map((group) => group.toString(16)).join(":");
  const address = best.at < 0 ? text(groups) : `${text(groups.slice(0, best.at))}::${text(groups.slice(best.at + best.length))}`;
  return scopeId ? `${address}%${scopeId}` : address;
}

export function windowsQgaInterfaces(probes: WindowsNetworkProbes = SYSTEM_PROBES) {
  const counters = probes.counters();
  return probes.adapters().map((adapter) => {
    const stats = counters.get(adapter.index);
    return {
      name: adapter.name,
      // qemu-ga prints the first six bytes whatever the length.
      "hardware-address": adapter.mac.length > 0 ? Array.from({ length: 6 }, (_, i) => hex2(adapter.mac[i] ?? 0)).join(":") : undefined,
      "ip-addresses":
        adapter.addresses.length > 0
          ? adapter.addresses.map((address) => ({
              "ip-address": address.family === "ipv4" ? address.bytes.join(".") : ipv6Text(address.bytes, address.scopeId),
              "ip-address-type": address.family,
              prefix: address.prefix,
            }))
          : undefined,
      statistics: stats && {
        "rx-bytes": stats.inOctets,
        "rx-packets": stats.inUcastPkts,
        "rx-errs": stats.inErrors,
        "rx-dropped": stats.inDiscards,
        "tx-bytes": stats.outOctets,
        "tx-packets": stats.outUcastPkts,
        "tx-errs": stats.outErrors,
        "tx-dropped": stats.outDiscards,
      },
    };
  });
}

// ---------------------------------------------------------------- Win32

const AF_UNSPEC = 0;
const AF_INET = 2;
const AF_INET6 = 23;
const GAA_FLAG_INCLUDE_PREFIX = 0x10;
const ERROR_BUFFER_OVERFLOW = 111;
/** IP_ADAPTER_ADDRESSES_LH on x64 (iptypes.h). */
const ADAPTER = { ifIndex: 4, next: 8, firstUnicast: 24, friendlyName: 72, physicalAddress: 80, physicalAddressLength: 88 } as const;
/** IP_ADAPTER_UNICAST_ADDRESS_LH on x64: Next, Address.lpSockaddr, OnLinkPrefixLength. */
const UNICAST = { next: 8, sockaddr: 16, prefixLength: 56 } as const;
/** MIB_IF_ROW2 (see metrics/windows.ts): InterfaceIndex after the 8-byte LUID; the counters qemu-ga reads. */
const IF_ROW = { bytes: 1352, first: 8, index: 8, inOctets: 1208, inUcastPkts: 1216, inDiscards: 1232, inErrors: 1240, outOctets: 1280, outUcastPkts: 1288, outDiscards: 1304, outErrors: 1312 } as const;

function adaptersAddresses(): WindowsAdapter[] {
  const length = new Uint32Array([16 * 1024]);
  let buffer = new BigUint64Array(length[0]! / 8);
  let status = iphlpapi().GetAdaptersAddresses(AF_UNSPEC, GAA_FLAG_INCLUDE_PREFIX, null, ptr(buffer), ptr(length));
  if (status === ERROR_BUFFER_OVERFLOW) {
    buffer = new BigUint64Array(Math.ceil(length[0]! / 8));
    status = iphlpapi().GetAdaptersAddresses(AF_UNSPEC, GAA_FLAG_INCLUDE_PREFIX, null, ptr(buffer), ptr(length));
  }
  if (status !== 0) throw new Error(`failed to get adapters addresses: Win32 error ${status}`);
  const out: WindowsAdapter[] = [];
  for (let at = ptr(buffer) as Pointer; at; at = read.ptr(at, ADAPTER.next) as Pointer) {
    const nameAt = read.ptr(at, ADAPTER.friendlyName) as Pointer;
    const macLength = read.u32(at, ADAPTER.physicalAddressLength);
    const adapter: WindowsAdapter = {
      name: nameAt ? readWideAt(nameAt, 256) : "",
      index: read.u32(at, ADAPTER.ifIndex),
      mac: Array.from({ length: Math.min(macLength, 8) }, (_, i) => read.u8(at, ADAPTER.physicalAddress + i)),
      addresses: [],
    };
    for (let unicast = read.ptr(at, ADAPTER.firstUnicast) as Pointer; unicast; unicast = read.ptr(unicast, UNICAST.next) as Pointer) {
      const sockaddr = read.ptr(unicast, UNICAST.sockaddr) as Pointer;
      const family = sockaddr ? read.u16(sockaddr, 0) : 0;
      const prefix = read.u8(unicast, UNICAST.prefixLength);
      if (family === AF_INET) {
        adapter.addresses.push({ family: "ipv4", bytes: Array.from({ length: 4 }, (_, i) => read.u8(sockaddr, 4 + i)), scopeId: 0, prefix });
      } else if (family === AF_INET6) {
        adapter.addresses.push({ family: "ipv6", bytes: Array.from({ length: 16 }, (_, i) => read.u8(sockaddr, 8 + i)), scopeId: read.u32(sockaddr, 24), prefix });
      }
    }
    out.push(adapter);
  }
  return out;
}

function interfaceCounters(): Map<number, InterfaceCounters> {
  const cell = new BigUint64Array(1);
  const status = iphlpapi().GetIfTable2(ptr(cell));
  const out = new Map<number, InterfaceCounters>();
  if (status !== 0) return out; // qemu-ga leaves statistics out when GetIfEntry2 fails
  const table = Number(cell[0]) as Pointer;
  try {
    for (let i = 0; i < read.u32(table, 0); i++) {
      const row = IF_ROW.first + i * IF_ROW.bytes;
      const u64 = (offset: number) => Number(read.u64(table, row + offset));
      out.set(read.u32(table, row + IF_ROW.index), {
        inOctets: u64(IF_ROW.inOctets),
        inUcastPkts: u64(IF_ROW.inUcastPkts),
        inErrors: u64(IF_ROW.inErrors),
        inDiscards: u64(IF_ROW.inDiscards),
        outOctets: u64(IF_ROW.outOctets),
        outUcastPkts: u64(IF_ROW.outUcastPkts),
        outErrors: u64(IF_ROW.outErrors),
        outDiscards: u64(IF_ROW.outDiscards),
      });
    }
  } finally {
    iphlpapi().FreeMibTable(table);
  }
  return out;
}
