/**
 * The guest's routes as qemu-ga's guest-network-get-route (qemu 9.1+) builds
 * them: every row of /proc/net/route (the IPv4 main table), then every row of
 * /proc/net/ipv6_route (all IPv6 tables, the kernel's null entry included),
 * parsed with qemu-ga's sscanf formats and their integer types. QGA sends
 * them as they are; the native protocol undoes the C ints (nativeRoute in
 * guest-service.ts).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { failed, strerror } from "./errors.ts";

export interface GuestNetworkRoute {
  iface: string;
  destination: string;
  metric: number;
  gateway?: string;
  mask?: string;
  irtt?: number;
  /** qapi uint64: an IPv6 row's flags are sign-extended from a C int, so they can pass 2^53. */
  flags?: bigint;
  refcnt?: number;
  use?: number;
  window?: number;
  mtu?: number;
  desprefixlen?: string;
  source?: string;
  srcprefixlen?: string;
  nexthop?: string;
  version: 4 | 6;
}

export function guestNetworkRoutes(procNet = "/proc/net"): GuestNetworkRoute[] {
  const routes: GuestNetworkRoute[] = [];
  let failure: Error | undefined;
  for (const [file, parse] of [
    ["route", parseIpv4Routes],
    ["ipv6_route", parseIpv6Routes],
  ] as const) {
    const path = join(procNet, file);
    let text: string;
    try {
      text = readFileSync(path, "latin1");
    } catch (error) {
      // qemu-ga notes the failure and goes on to the other file, but then answers only the error
      // (the first one: a second error_setg on the same errp would abort it).
      failure ??= failed(`open("${path}"): ${strerror(error)}`);
      continue;
    }
    routes.push(...parse(text));
  }
  if (failure) throw failure;
  return routes;
}

/**
 * "Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT",
 * after a header line; addresses are the raw in_addr in host (little-endian) order.
 */
export function parseIpv4Routes(text: string): GuestNetworkRoute[] {
  const out: GuestNetworkRoute[] = [];
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 11) continue;
    const [destination, gateway, flags, mask] = [f[1]!, f[2]!, f[3]!, f[7]!].map(hex32);
    const [refcnt, use, metric, mtu, window, irtt] = [f[4]!, f[5]!, f[6]!, f[8]!, f[9]!, f[10]!].map(dec32);
    if ([destination, gateway, flags, mask, refcnt, use, metric, mtu, window, irtt].includes(undefined)) continue;
    out.push({
      iface: f[0]!,
      destination: ipv4(destination!),
      metric: metric!,
      gateway: ipv4(gateway!),
      mask: ipv4(mask!),
      irtt: irtt!,
      flags: BigInt(flags!),
      refcnt: refcnt!,
      use: use!,
      window: window!,
      mtu: mtu!,
      version: 4,
    });
  }
  return out;
}

/**
 * "dest dest_len src src_len nexthop metric refcnt use flags iface", no header,
 * every number in hex. qemu-ga reads the numbers into C ints: a metric of
 * ffffffff is -1, and flags with bit 31 set (RTF_LOCAL) sign-extend into its uint64.
 */
export function parseIpv6Routes(text: string): GuestNetworkRoute[] {
  const out: GuestNetworkRoute[] = [];
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const [desprefixlen, srcprefixlen, metric, refcnt, use, flags] = [f[1]!, f[3]!, f[5]!, f[6]!, f[7]!, f[8]!].map(hex32);
    if ([desprefixlen, srcprefixlen, metric, refcnt, use, flags].includes(undefined)) continue;
    const destination = ipv6(f[0]!);
    if (destination === undefined) continue;
    out.push({
      iface: f[9]!,
      destination,
      metric: metric! | 0,
      flags: BigInt.asUintN(64, BigInt(flags! | 0)),
      refcnt: refcnt! | 0,
      use: use! | 0,
      desprefixlen: String(desprefixlen! | 0),
      source: ipv6(f[2]!),
      srcprefixlen: String(srcprefixlen! | 0),
      nexthop: ipv6(f[4]!),
      version: 6,
    });
  }
  return out;
}

/** sscanf "%x" into a 32-bit variable; undefined where it would not match. */
function hex32(field: string): number | undefined {
  return /^[0-9a-f]{1,8}$/i.test(field) ? Number.parseInt(field, 16) : undefined;
}

/** sscanf "%d" into an int. */
function dec32(field: string): number | undefined {
  return /^-?\d{1,10}$/.test(field) ? Number(field) | 0 : undefined;
}

/** An in_addr read as a little-endian 32-bit word: its low byte is the first octet. */
function ipv4(word: number): string {
  return [word & 0xff, (word >>> 8) & 0xff, (word >>> 16) & 0xff, word >>> 24].join(".");
}

/** 32 hex digits as glibc's inet_ntop prints the address; undefined where they are not hex. */
function ipv6(hex: string): string | undefined {
  if (!/^[0-9a-f]{32}$/i.test(hex)) return undefined;
  return formatIpv6(Uint8Array.from(hex.match(/../g)!, (pair) => Number.parseInt(pair, 16)));
}

/**
 * glibc's inet_ntop(AF_INET6): lower-case hex without leading zeros, the
 * first longest run of two or more zero groups as "::", and the last 32 bits
 * as a dotted quad for IPv4-compatible (::a.b.c.d) and IPv4-mapped addresses.
 */
export function formatIpv6(bytes: Uint8Array): string {
  const words = Array.from({ length: 8 }, (_, i) => (bytes[2 * i]! << 8) | bytes[2 * i + 1]!);
  let best = { base: -1, len: 0 };
  let cur = { base: -1, len: 0 };
  for (let i = 0; i <= 8; i++) {
    if (i < 8 && words[i] === 0) {
      cur = cur.base === -1 ? { base: i, len: 1 } : { base: cur.base, len: cur.len + 1 };
    } else if (cur.base !== -1) {
      if (best.base === -1 || cur.len > best.len) best = cur;
      cur = { base: -1, len: 0 };
    }
  }
  if (best.len < 2) best = { base: -1, len: 0 };
  let out = "";
  for (let i = 0; i < 8; i++) {
    if (best.base !== -1 && i >= best.base && i < best.base + best.len) {
      if (i === best.base) out += ":";
      continue;
    }
    if (i !== 0) out += ":";
    if (i === 6 && best.base === 0 && (best.len === 6 || (best.len === 5 && words[5] === 0xffff))) {
      return out + Array.from(bytes.subarray(12)).join(".");
    }
    out += words[i]!.toString(16);
  }
  if (best.base !== -1 && best.base + best.len === 8) out += ":";
  return out;
}
