/**
 * The native guest methods (get_time ... ssh_*_authorized_keys) against the
 * COMPILED agent over a unix socket, beside its QGA port: the native answer
 * is the QGA answer of the same agent in snake_case. Nothing here changes
 * this machine: the changing methods are only sent with params that are
 * refused before anything runs, to an agent with them switched off, or where
 * they can only fail (a CPU or memory block that does not exist, a user
 * without a home). The VM test (test/vm/methods.vm.ts) makes the changes in
 * a real guest.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { AgentRpcError, type AgentClient } from "../../src/client/client.ts";
import { GUEST_METHODS } from "../../src/schema/guest.ts";
import { connectClient, eventually, runBinary, startAgentProcess, type AgentProcess, STOP_HOOK_TIMEOUT_MS } from "../helpers/agent-process.ts";

let agent: AgentProcess;
let client: AgentClient;
let locked: AgentProcess;
let lockedClient: AgentClient;
const qgaSocket = join(os.tmpdir(), `kma-guest-e2e-${process.pid}.sock`);
const lockedQgaSocket = join(os.tmpdir(), `kma-guest-e2e-locked-${process.pid}.sock`);

beforeAll(async () => {
  agent = await startAgentProcess({ extraToml: `[qga]\ntype = "unix-listen"\npath = ${JSON.stringify(qgaSocket)}\n` });
  client = await connectClient(agent);
  locked = await startAgentProcess({
    extraToml: `[qga]\ntype = "unix-listen"\npath = ${JSON.stringify(lockedQgaSocket)}\n[security]\nenable_system_changes = false\nenable_credentials = false\n`,
  });
  lockedClient = await connectClient(locked);
}, 60_000);

afterAll(async () => {
  client?.close();
  lockedClient?.close();
  await agent?.stop();
  await locked?.stop();
}, STOP_HOOK_TIMEOUT_MS);

/** One QGA request on an agent's QGA port; its reply line as sent. */
async function qgaLine(request: object, socketPath = qgaSocket): Promise<string> {
  let received = "";
  const socket = await Bun.connect({
    unix: socketPath,
    socket: {
      data(_, chunk) {
        received += chunk.toString();
      },
    },
  });
  socket.write(JSON.stringify(request));
  await eventually(() => received.includes("\n"));
  socket.end();
  return received;
}

/** One QGA command on the agent's QGA port; its `return` (or error). */
async function qga(execute: string): Promise<any> {
  return JSON.parse(await qgaLine({ execute }));
}

const snake = (value: unknown): unknown =>
  Array.isArray(value)
    ? value.map(snake)
    : value !== null && typeof value === "object"
      ? Object.fromEntries(Object.entries(value).map(([key, member]) => [key.replaceAll("-", "_"), snake(member)]))
      : value;

async function refused(call: Promise<unknown>): Promise<AgentRpcError> {
  const error = await call.then(
    () => null,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(AgentRpcError);
  return error as AgentRpcError;
}

test("get_vcpus, get_os_info, get_fsinfo, get_disks, get_memory_blocks and get_memory_block_info are QGA's answers in snake_case", async () => {
  expect(await client.getVcpus()).toEqual({ vcpus: snake((await qga("guest-get-vcpus")).return) as never });
  expect((await client.getVcpus()).vcpus).toHaveLength(os.cpus().length);
  expect(await client.getOsInfo()).toEqual(snake((await qga("guest-get-osinfo")).return) as never);
  expect((await client.getOsInfo()).machine).toBe(os.machine());
  // Usage moves between two calls on a busy machine: compare the rest, and check the sizes are there.
  const { filesystems } = await client.getFsinfo();
  const withoutUsage = (list: Record<string, unknown>[]) => list.map(({ used_bytes: _, total_bytes: __, ...rest }) => rest);
  expect(withoutUsage(filesystems)).toEqual(withoutUsage(snake((await qga("guest-get-fsinfo")).return) as Record<string, unknown>[]));
  expect(filesystems.find((fs) => fs.mountpoint === "/")!.total_bytes).toBeGreaterThan(0);
  expect(await client.getDisks()).toEqual({ disks: snake((await qga("guest-get-disks")).return) as never });
  expect(await client.getMemoryBlocks()).toEqual({ blocks: snake((await qga("guest-get-memory-blocks")).return) as never });
  expect(await client.getMemoryBlockInfo()).toEqual((await qga("guest-get-memory-block-info")).return);
  expect(await client.getTimezone()).toEqual((await qga("guest-get-timezone")).return);
});

test("get_network_interfaces: QGA's interfaces and addresses, with counters", async () => {
  const native = await client.getNetworkInterfaces();
  const theirs = (await qga("guest-network-get-interfaces")).return as Record<string, unknown>[];
  const withoutCounters = (list: Record<string, unknown>[]) => list.map(({ statistics: _, ...rest }) => rest);
  expect(withoutCounters(native.interfaces)).toEqual(withoutCounters(snake(theirs) as Record<string, unknown>[]));
  const lo = native.interfaces.find((i) => i.name === "lo")!;
  expect(lo.ip_addresses).toContainEqual({ ip_address: "127.0.0.1", ip_address_type: "ipv4", prefix: 8 });
  expect(lo.statistics!.rx_packets).toBeGreaterThanOrEqual(0);
});

test("get_network_routes: QGA's routes with qemu-ga's C ints undone — the kernel's unsigned numbers, prefix lengths as numbers", async () => {
  const { routes } = await client.getNetworkRoutes();
  // Flags of local IPv6 routes pass 2^53 in QGA's reply: read them as text.
  const line = await qgaLine({ execute: "guest-network-get-route" });
  const theirs = JSON.parse(line.replace(/"flags": (\d+)/g, '"flags": "$1"')).return as Record<string, string | number>[];
  const kernels = (route: Record<string, string | number>) =>
    Object.fromEntries(
      Object.entries(route).map(([key, value]) => [
        key,
        key === "flags" ? Number(BigInt(value) & 0xffff_ffffn) : key.endsWith("prefixlen") ? Number(value) : key === "version" ? value : typeof value === "number" ? value >>> 0 : value,
      ]),
    );
  // A route's reference and use counts move with the traffic between the two calls.
  const withoutCounts = (list: Record<string, unknown>[]) => list.map(({ refcnt: _, use: __, ...rest }) => rest);
  expect(withoutCounts(routes)).toEqual(withoutCounts(theirs.map(kernels)));
  expect(routes.filter((route) => route.version === 4).length).toBe(readFileSync("/proc/net/route", "utf8").trim().split("\n").length - 1);
  const local = routes.find((route) => route.destination === "::1");
  if (local) expect(local.flags! & 0x8000_0000).not.toBe(0); // RTF_LOCAL, whole and unsigned (QGA's is 2^64 - 2^32 + flags)
});

test("get_diskstats lists every /proc/diskstats line with its counters", async () => {
  const { disks } = await client.getDiskstats();
  const lines = readFileSync("/proc/diskstats", "utf8").trim().split("\n");
  expect(disks.map((d) => d.name)).toEqual(lines.map((line) => line.trim().split(/\s+/)[2]!));
  expect(disks.every((d) => d.stats.read_ios !== undefined && d.stats.write_sectors !== undefined)).toBe(true);
});

test("get_time is this machine's clock, exact to the nanosecond field", async () => {
  const before = Date.now();
  const { seconds, nanoseconds } = await client.getTime();
  const after = Date.now();
  const ms = seconds * 1000 + Math.floor(nanoseconds / 1e6);
  expect(ms).toBeGreaterThanOrEqual(before - 1);
  expect(ms).toBeLessThanOrEqual(after + 1);
});

test("bad params of every changing method are refused with -32602 naming the field, before anything runs", async () => {
  const cases: [() => Promise<unknown>, string][] = [
    [() => client.setTime({ nanoseconds: 1 }), "nanoseconds"],
    [() => client.setTime({ seconds: 4_102_444_800 }), "seconds"], // 2100
    [() => client.setVcpus({ vcpus: [] }), "vcpus"],
    [() => client.setVcpus({ vcpus: [{ logical_id: 0 }] } as never), "vcpus.0.online"],
    [() => client.setMemoryBlocks({ blocks: [] }), "blocks"],
    [() => client.fstrim({ minimum: -1 }), "minimum"],
    [() => client.fstrim({ minimum: "4096" } as never), "minimum"],
    [() => client.setUserPassword({ username: "root" } as never), "password"],
    [() => client.setUserPassword({ username: "root:x", password: "kma-secret-e2e" }), "username"],
    [() => client.setUserPassword({ username: "root", password: "kma-secret-e2e\n" }), "password"],
    [() => client.sshAddAuthorizedKeys({ username: "root", keys: ["# not a key"] }), "keys.0"],
    [() => client.sshRemoveAuthorizedKeys({ username: "root", keys: ["two\nlines"] }), "keys.0"],
    [() => client.getVcpus({ all: true } as never), "all"],
    [() => client.getNetworkRoutes({ table: "all" } as never), "table"],
    // Never a valid mode here: it would suspend this machine.
    [() => client.suspend({} as never), "mode"],
    [() => client.suspend({ mode: "standby" } as never), "mode"],
    [() => client.suspend({ mode: "ram", delay_seconds: 1 } as never), "delay_seconds"],
  ];
  for (const [call, field] of cases) {
    const error = await refused(call());
    expect(error.code).toBe(-32602);
    expect(error.message).toContain(`'${field}'`);
  }
});

test("what the guest itself refuses: a CPU or a user that does not exist is -32002, a memory block that does not exist is reported per block", async () => {
  const cpu = await refused(client.setVcpus({ vcpus: [{ logical_id: 4095, online: true }] }));
  expect(cpu.code).toBe(-32002);
  expect(cpu.message).toContain("no logical processor #4095");
  expect(await client.setMemoryBlocks({ blocks: [{ phys_index: 999_999, online: true }] })).toEqual({
    results: [{ phys_index: 999_999, response: "not_found", error_code: 2 }],
  });
  for (const call of [
    () => client.sshGetAuthorizedKeys({ username: "kma-no-such-user" }),
    () => client.sshAddAuthorizedKeys({ username: "kma-no-such-user", keys: ["ssh-ed25519 AAAA x"] }),
    () => client.sshRemoveAuthorizedKeys({ username: "kma-no-such-user", keys: [] }),
  ]) {
    const error = await refused(call());
    expect(error.code).toBe(-32002);
    expect(error.message).toEndWith(": no such user 'kma-no-such-user' (code -32002)");
  }
  // nobody's home (/nonexistent) has no ~/.ssh: nothing to read, and nothing can be created there.
  expect((await refused(client.sshGetAuthorizedKeys({ username: "nobody" }))).code).toBe(-32002);
  expect((await refused(client.sshAddAuthorizedKeys({ username: "nobody", keys: ["ssh-ed25519 AAAA x"] }))).code).toBe(-32000);
});

test("switched off in [security], every changing method answers -32001 and get_info says so; reads still answer", async () => {
  const switched = ["set_time", "set_vcpus", "set_memory_blocks", "fstrim", "suspend", "set_user_password", "ssh_add_authorized_keys", "ssh_remove_authorized_keys"] as const;
  for (const method of switched) {
    // Params that are valid where it matters: if the switch failed, these would run (all but suspend's: it gets none, and would be -32602).
    const error = await refused(lockedClient.call(method, (method === "set_user_password" ? { username: "root", password: "kma-secret-e2e" } : {}) as never));
    expect(error.code).toBe(-32001);
  }
  const { methods } = await lockedClient.getInfo();
  const names = Object.keys(GUEST_METHODS);
  expect(methods.filter((m) => names.includes(m.name) && !m.enabled).map((m) => m.name).sort()).toEqual([...switched].sort());
  expect((await lockedClient.getVcpus()).vcpus.length).toBeGreaterThan(0);
  // The QGA port follows the same switch, in qemu-ga -b's words. (An unexpected argument: were the switch
  // not looked at first, the answer would be "Parameter 'bogus' is unexpected", never a suspend of this machine.)
  for (const execute of ["guest-suspend-ram", "guest-suspend-disk", "guest-suspend-hybrid", "guest-set-time"]) {
    expect(await qgaLine({ execute, arguments: { bogus: 1 } }, lockedQgaSocket)).toBe(`{"error": {"class": "CommandNotFound", "desc": "Command ${execute} has been disabled"}}\n`);
  }
  const { supported_commands } = JSON.parse(await qgaLine({ execute: "guest-info" }, lockedQgaSocket)).return as { supported_commands: { name: string; enabled: boolean }[] };
  expect(supported_commands.filter((c) => c.name.startsWith("guest-suspend-"))).toEqual([
    { name: "guest-suspend-disk", enabled: false, "success-response": false },
    { name: "guest-suspend-ram", enabled: false, "success-response": false },
    { name: "guest-suspend-hybrid", enabled: false, "success-response": false },
  ] as never);
});

test("no password reaches the audit log or the agent's log", async () => {
  await refused(lockedClient.setUserPassword({ username: "root", password: "kma-secret-audit" }));
  await refused(client.setUserPassword({ username: "root:x", password: "kma-secret-audit" }));
  for (const process of [agent, locked]) {
    const audit = await eventually(() => {
      const text = readFileSync(process.auditPath, "utf8");
      return text.includes('"method":"set_user_password"') && text;
    });
    expect(audit).not.toContain("kma-secret");
    expect(process.stderr()).not.toContain("kma-secret");
  }
});

test("the host CLI has a verb per method, and takes params on stdin ('-') to keep them off the command line", async () => {
  const time = await runBinary(["get_time", "--socket", agent.socketPath, "--json"]);
  expect(time.exitCode).toBe(0);
  expect(Object.keys(JSON.parse(time.stdout))).toEqual(["seconds", "nanoseconds"]);
  const password = await runBinary(["set_user_password", "-", "--socket", locked.socketPath], { stdin: JSON.stringify({ username: "root", password: "kma-secret-cli" }) });
  expect(password.exitCode).toBe(1);
  expect(password.stderr).toContain("-32001");
  const keys = await runBinary(["ssh-get-authorized-keys", "-", "--socket", agent.socketPath], { stdin: '{"username":"kma-no-such-user"}' });
  expect(keys.exitCode).toBe(1);
  expect(keys.stderr).toContain("no such user 'kma-no-such-user' (code -32002)");
});
