/**
 * guest-network-get-route from fixtures of /proc/net/route and
 * /proc/net/ipv6_route (the latter this machine's own, plus rows for the
 * corner cases), read as qemu-ga's sscanf formats read them.
 */
import { expect, test } from "bun:test";
import { join } from "node:path";
import { nativeRoute } from "../src/guest/guest-service.ts";
import { formatIpv6, guestNetworkRoutes, parseIpv4Routes } from "../src/guest/route.ts";
import { METHODS } from "../src/schema/methods.ts";
import { qmpStringify } from "../src/qga/json.ts";
import { makeTempDir } from "./helpers/agent-process.ts";
import { writeFileSync } from "node:fs";

const FIXTURE = join(import.meta.dir, "fixtures", "proc", "routes", "net");
/** An IPv6 row's flags with RTF_LOCAL (bit 31) set, sign-extended from a C int as qemu-ga's uint64 carries them. */
const LOCAL_FLAGS = 2n ** 64n - 2n ** 32n + 0x80200001n;

test("IPv4 rows: addresses in host byte order, decimal counters, the header and unparsable rows skipped", () => {
  const v4 = guestNetworkRoutes(FIXTURE).filter((route) => route.version === 4);
  const common = { refcnt: 0, use: 0, irtt: 0, window: 0, version: 4 as const };
  expect(v4).toEqual([
    { iface: "eth0", destination: "0.0.0.0", metric: 100, gateway: "192.0.2.1", mask: "0.0.0.0", flags: 3n, mtu: 0, ...common },
    { iface: "eth0", destination: "192.0.2.0", metric: 0, gateway: "0.0.0.0", mask: "255.255.255.0", flags: 1n, mtu: 0, ...common },
    { iface: "wg0", destination: "10.0.0.10", metric: 0, gateway: "0.0.0.0", mask: "255.255.255.255", flags: 5n, mtu: 1420, ...common },
    // An unreachable route: the kernel names no interface ("*") and sets RTF_REJECT.
    { iface: "*", destination: "192.168.0.0", metric: 0, gateway: "0.0.0.0", mask: "255.255.0.0", flags: 0x201n, mtu: 0, ...common },
  ]);
});

test("IPv6 rows: hex prefix lengths as decimal strings, int-typed metric and flags, rows without a hex destination skipped", () => {
  const v6 = guestNetworkRoutes(FIXTURE).filter((route) => route.version === 6);
  const none = "::";
  const row = (iface: string, destination: string, prefix: string, nexthop: string, metric: number, refcnt: number, flags: bigint) => ({
    iface,
    destination,
    metric,
    flags,
    refcnt,
    use: 0,
    desprefixlen: prefix,
    source: none,
    srcprefixlen: "0",
    nexthop,
    version: 6 as const,
  });
  expect(v6).toEqual([
    row("eth0", "fd00::", "64", none, 256, 1, 1n),
    row("eth0", "fe80::", "64", none, 256, 2, 1n),
    row("eth0", "::", "0", "fd00::1", 1024, 2, 3n),
    row("lo", "::1", "128", none, 0, 2, LOCAL_FLAGS),
    row("eth0", "fd00::2", "128", none, 0, 3, LOCAL_FLAGS),
    row("eth0", "fe80::fc:ff:fe00:1", "128", none, 0, 2, LOCAL_FLAGS),
    row("eth0", "ff00::", "8", none, 256, 3, 1n),
    // The kernel's null entry: metric ffffffff is -1 in qemu-ga's int.
    row("lo", "::", "0", none, -1, 1, 0x200200n),
    row("eth0", "2001:db8::", "48", "::ffff:192.0.2.1", 100, 0, 3n),
  ]);
});

test("flags past 2^53 are printed whole in the reply, as qemu's uint64", () => {
  const local = guestNetworkRoutes(FIXTURE).find((route) => route.destination === "::1");
  const line = qmpStringify(local);
  expect(line).toContain('"flags": 18446744071564165121');
  expect(line).not.toContain('"gateway"'); // IPv4-only members are absent from an IPv6 row, not null
});

test("a missing route file is qemu-ga's open() error, even when the other file was read", () => {
  const dir = makeTempDir("kma-routes-");
  writeFileSync(join(dir, "route"), "Iface\tDestination\n");
  expect(() => guestNetworkRoutes(dir)).toThrow(`open("${join(dir, "ipv6_route")}"): No such file or directory`);
  expect(() => guestNetworkRoutes(join(dir, "none"))).toThrow(`open("${join(dir, "none", "route")}"): No such file or directory`);
});

test("IPv6 text as glibc's inet_ntop writes it", () => {
  const v6 = (hex: string) => formatIpv6(Uint8Array.from(hex.match(/../g)!, (pair) => Number.parseInt(pair, 16)));
  expect(v6("00000000000000000000000000000000")).toBe("::");
  expect(v6("00000000000000000000000000000001")).toBe("::1");
  expect(v6("20010db8000000010001000100010001")).toBe("2001:db8:0:1:1:1:1:1"); // one zero group stays
  expect(v6("00010000000000010000000000000000")).toBe("1:0:0:1::"); // the longest run
  expect(v6("00010000000000010000000000010001")).toBe("1::1:0:0:1:1"); // the first of equal runs
  expect(v6("00000000000000000000ffffc0000201")).toBe("::ffff:192.0.2.1"); // IPv4-mapped
  expect(v6("000000000000000000000000c0000201")).toBe("::192.0.2.1"); // IPv4-compatible
  expect(v6("0000000000000000000000000000ABCD")).toBe("::abcd");
  expect(v6("fe8000000000000000fc00fffe000001")).toBe("fe80::fc:ff:fe00:1");
});

test("the native shape undoes qemu-ga's C ints: the kernel's unsigned numbers, prefix lengths as numbers, members in the same order", () => {
  const routes = guestNetworkRoutes(FIXTURE);
  const native = routes.map(nativeRoute);
  expect(METHODS.get_network_routes.result.parse({ routes: native })).toEqual({ routes: native });
  const at = (destination: string, version: 4 | 6) => native.find((route) => route.destination === destination && route.version === version)!;
  expect(at("::1", 6)).toEqual({
    iface: "lo",
    destination: "::1",
    metric: 0,
    flags: 0x80200001, // RTF_LOCAL as the kernel has it, not sign-extended
    refcnt: 2,
    use: 0,
    desprefixlen: 128,
    source: "::",
    srcprefixlen: 0,
    nexthop: "::",
    version: 6,
  });
  // The null entry's metric: ffffffff in the file, -1 for QGA.
  expect(native.find((route) => route.metric === 0xffff_ffff)).toMatchObject({ iface: "lo", destination: "::", flags: 0x200200 });
  expect(at("0.0.0.0", 4)).toEqual({ iface: "eth0", destination: "0.0.0.0", metric: 100, gateway: "192.0.2.1", mask: "0.0.0.0", irtt: 0, flags: 3, refcnt: 0, use: 0, window: 0, mtu: 0, version: 4 });
  native.forEach((route, i) => expect(Object.keys(route)).toEqual(Object.keys(routes[i]!)));
});

test("an IPv4 metric past 2^31, which the kernel prints as a negative %d, is the unsigned metric natively", () => {
  const [route] = parseIpv4Routes("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\neth0\t00000000\t0102000A\t0003\t0\t0\t-1\t00000000\t0\t0\t0\n");
  expect(route!.metric).toBe(-1);
  expect(nativeRoute(route!).metric).toBe(0xffff_ffff);
});
