/**
 * guest-network-get-route from the compiled agent on this machine, checked
 * against what the kernel tells iproute2 (`ip -j route`). Debian's qemu-ga
 * 7.2 predates the command (qemu 9.1), so there is nothing to diff it with.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { makeTempDir, startAgentProcess, type AgentProcess, STOP_HOOK_TIMEOUT_MS } from "../helpers/agent-process.ts";

const dir = makeTempDir("kma-qga-route-");
const socket = join(dir, "qga.sock");
let agent: AgentProcess;

beforeAll(async () => {
  agent = await startAgentProcess({ extraToml: `[qga]\ntype = "unix-listen"\npath = ${JSON.stringify(socket)}\nstate_dir = ${JSON.stringify(join(dir, "state"))}\n` });
  const deadline = Date.now() + 10_000;
  while (!existsSync(socket) && Date.now() < deadline) await Bun.sleep(20);
});

afterAll(async () => {
  await agent?.stop();
}, STOP_HOOK_TIMEOUT_MS);

async function request(line: string): Promise<string> {
  let received = "";
  const connection = await Bun.connect({ unix: socket, socket: { data: (_, chunk) => void (received += chunk.toString()) } });
  connection.write(line);
  const deadline = Date.now() + 5_000;
  while (!received.includes("\n") && Date.now() < deadline) await Bun.sleep(10);
  connection.end();
  return received;
}

interface IpRoute {
  type?: string;
  dst: string;
  gateway?: string;
  dev: string;
  metric?: number;
}

function ipRoutes(...args: string[]): IpRoute[] {
  const ip = Bun.spawnSync(["ip", "-j", ...args], { stdout: "pipe", stderr: "pipe" });
  if (ip.exitCode !== 0) throw new Error(`ip ${args.join(" ")}: ${ip.stderr}`);
  return JSON.parse(ip.stdout.toString());
}

/** "dst/prefix via gateway dev metric", the same words for both sides. */
function key(dst: string, prefix: number, gateway: string | undefined, dev: string, metric: number): string {
  return `${dst}/${prefix} via ${gateway ?? "-"} dev ${dev} metric ${metric}`;
}

function fromIp(route: IpRoute, family: 4 | 6): string {
  const [address, prefix] = route.dst === "default" ? [family === 4 ? "0.0.0.0" : "::", "0"] : route.dst.split("/");
  return key(address!, Number(prefix ?? (family === 4 ? 32 : 128)), route.gateway, route.dev, route.metric ?? 0);
}

const prefixOfMask = (mask: string) => mask.split(".").reduce((bits, octet) => bits + Number(octet).toString(2).replace(/0/g, "").length, 0);

test("the routes are the kernel's, as ip shows them: IPv4 main table and every IPv6 table", async () => {
  const reply = await request('{"execute":"guest-network-get-route"}');
  // Flags of local IPv6 routes pass 2^53: read them as text.
  const routes: Record<string, string | number>[] = JSON.parse(reply.replace(/"flags": (\d+)/g, '"flags": "$1"')).return;
  expect(routes.length).toBeGreaterThan(0);

  const ours4 = routes
    .filter((r) => r.version === 4)
    .map((r) => key(r.destination as string, prefixOfMask(r.mask as string), r.gateway === "0.0.0.0" ? undefined : (r.gateway as string), r.iface as string, r.metric as number));
  expect(ours4.sort()).toEqual(ipRoutes("-4", "route", "show", "table", "main").map((r) => fromIp(r, 4)).sort());

  const ours6 = routes
    .filter((r) => r.version === 6)
    .map((r) => key(r.destination as string, Number(r.desprefixlen), r.nexthop === "::" ? undefined : (r.nexthop as string), r.iface as string, r.metric as number));
  const kernel6 = ipRoutes("-6", "route", "show", "table", "all").map((r) => fromIp(r, 6));
  // /proc/net/ipv6_route also holds the kernel's null entry, which ip leaves out.
  expect(ours6.filter((route) => route !== key("::", 0, undefined, "lo", -1)).sort()).toEqual(kernel6.sort());

  for (const route of routes) expect(Object.keys(route).sort()).toEqual(
    route.version === 4
      ? ["destination", "flags", "gateway", "iface", "irtt", "mask", "metric", "mtu", "refcnt", "use", "version", "window"]
      : ["desprefixlen", "destination", "flags", "iface", "metric", "nexthop", "refcnt", "source", "srcprefixlen", "use", "version"],
  );
});

test("guest-network-get-route takes no arguments, as qemu-ga's input visitor says", async () => {
  expect(await request('{"execute":"guest-network-get-route","arguments":{"all":true}}')).toBe(
    '{"error": {"class": "GenericError", "desc": "Parameter \'all\' is unexpected"}}\n',
  );
});
