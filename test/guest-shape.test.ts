/**
 * One set of guest data, two shapes: QGA renames it to qapi's kebab-case
 * (its bytes must stay qemu-ga's), the native protocol wraps it as its
 * schemas say. And the native dispatcher's side of the guest methods: the
 * config switches, the error codes, Windows, and params (with defaults)
 * handed on as validated — with an injected guest, so nothing here touches
 * this machine's clock, CPUs, disks or accounts.
 */
import { expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultConfig } from "../src/config/schema.ts";
import { createServices } from "../src/create-services.ts";
import { GuestError } from "../src/guest/errors.ts";
import { fromOs, LinuxGuest, nanosecondsOf, timespecOf } from "../src/guest/guest-service.ts";
import { guestVcpus } from "../src/guest/inventory.ts";
import { SshKeys } from "../src/guest/ssh.ts";
import { silentLogger } from "../src/log/logger.ts";
import { Dispatcher } from "../src/protocol/dispatcher.ts";
import { qmpStringify } from "../src/qga/json.ts";
import { qapiMemoryBlockResponses, qapiNames } from "../src/qga/shape.ts";
import { GUEST_METHODS } from "../src/schema/guest.ts";
import { METHODS, type MethodName } from "../src/schema/methods.ts";
import type { GuestService } from "../src/services.ts";
import { MemoryAudit } from "./helpers/in-memory.ts";

test("QGA's names: every snake_case field becomes qapi's kebab-case, values untouched, members in the order given", () => {
  const filesystem = {
    name: "vda1",
    mountpoint: "/",
    type: "ext4",
    used_bytes: 1,
    total_bytes: 2,
    disk: [{ pci_controller: { domain: 0, bus: 0, slot: 4, function: 0 }, bus_type: "virtio", bus: 0, target: 0, unit: 0, serial: "a_b", dev: "/dev/vda" }],
  };
  expect(qmpStringify(qapiNames([filesystem]))).toBe(
    qmpStringify([
      {
        name: "vda1",
        mountpoint: "/",
        type: "ext4",
        "used-bytes": 1,
        "total-bytes": 2,
        disk: [{ "pci-controller": { domain: 0, bus: 0, slot: 4, function: 0 }, "bus-type": "virtio", bus: 0, target: 0, unit: 0, serial: "a_b", dev: "/dev/vda" }],
      },
    ]),
  );
  expect(qapiMemoryBlockResponses([{ phys_index: 7, response: "operation_not_supported" }, { phys_index: 8, response: "not_found", error_code: 2 }])).toEqual([
    { "phys-index": 7, response: "operation-not-supported" },
    { "phys-index": 8, response: "not-found", "error-code": 2 },
  ]);
});

test("the native shape of the same data passes its schema", () => {
  const guest = new LinuxGuest({ logger: silentLogger, audit: new MemoryAudit() });
  expect(METHODS.get_vcpus.result.parse(guest.getVcpus())).toEqual({ vcpus: guestVcpus() });
  const reads: [MethodName, () => unknown][] = [
    ["get_os_info", () => guest.getOsInfo()],
    ["get_network_interfaces", () => guest.getNetworkInterfaces()],
    ["get_network_routes", () => guest.getNetworkRoutes()],
    ["get_fsinfo", () => guest.getFsinfo()],
    ["get_disks", () => guest.getDisks()],
    ["get_diskstats", () => guest.getDiskstats()],
    ["get_memory_blocks", () => guest.getMemoryBlocks()],
    ["get_memory_block_info", () => guest.getMemoryBlockInfo()],
    ["get_timezone", () => guest.getTimezone()],
    ["get_time", () => guest.getTime()],
  ];
  for (const [name, read] of reads) {
    const parsed = METHODS[name].result.safeParse(read());
    if (!parsed.success) throw new Error(`${name}: ${parsed.error.message}`);
  }
});

test("a /proc or /sys read the OS refuses is an operation failure naming what was read; the agent's own bugs stay internal", () => {
  const missing = Object.assign(new Error("ENOENT: no such file or directory, scandir '/sys/devices/system/memory'"), { code: "ENOENT" });
  expect(() => fromOs("the memory blocks", () => { throw missing; })).toThrow(
    expect.objectContaining({ reason: "failed", message: "cannot read the memory blocks: ENOENT: no such file or directory, scandir '/sys/devices/system/memory'" }),
  );
  expect(() => fromOs("x", () => { throw new TypeError("bug"); })).toThrow(TypeError);
});

test("the clock as seconds and nanoseconds, exact past 2^53 nanoseconds", () => {
  const ns = 1_900_000_000_123_456_789n;
  expect(timespecOf(ns)).toEqual({ seconds: 1_900_000_000, nanoseconds: 123_456_789 });
  expect(nanosecondsOf(timespecOf(ns))).toBe(ns);
  expect(nanosecondsOf({ seconds: 5 })).toBe(5_000_000_000n);
});

test("ssh keys through the native service: params as validated, the file edited as for QGA", () => {
  const home = mkdtempSync(join(tmpdir(), "kma-native-ssh-"));
  try {
    const guest = new LinuxGuest({ logger: silentLogger, audit: new MemoryAudit() }, { sshKeys: new SshKeys((name) => (name === "tester" ? { uid: process.getuid!(), gid: process.getgid!(), home } : null)) });
    const add = METHODS.ssh_add_authorized_keys.params.parse({ username: "tester", keys: ["ssh-ed25519 AAAA a", "ssh-ed25519 BBBB b"] });
    expect(add.reset).toBe(false);
    expect(guest.sshAddAuthorizedKeys(add)).toEqual({});
    expect(guest.sshRemoveAuthorizedKeys({ username: "tester", keys: ["ssh-ed25519 AAAA a"] })).toEqual({});
    expect(guest.sshGetAuthorizedKeys({ username: "tester" })).toEqual({ keys: ["ssh-ed25519 BBBB b"] });
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

/** A guest that records what it was asked and answers from `answers`, or throws what they hold. */
function fakeGuest(answers: Partial<Record<keyof GuestService, unknown>> = {}) {
  const calls: [string, unknown][] = [];
  const guest = new Proxy({} as GuestService, {
    get: (_, name: string) => (params: unknown) => {
      calls.push([name, params]);
      const answer = answers[name as keyof GuestService];
      if (answer instanceof Error) throw answer;
      return answer ?? {};
    },
  });
  return { guest, calls };
}

function nativeDispatcher(guest: GuestService, { platform = "linux" as NodeJS.Platform, systemChanges = true, credentials = true } = {}) {
  const config = defaultConfig();
  config.security.enable_system_changes = systemChanges;
  config.security.enable_credentials = credentials;
  const audit = new MemoryAudit();
  const services = { ...createServices(config, silentLogger, audit), guest };
  const dispatcher = new Dispatcher({ config, audit, logger: silentLogger, services, platform });
  const call = async (method: string, params: unknown = {}) =>
    (await dispatcher.handle({ jsonrpc: "2.0", id: 1, method, params }, { transport: "test", notify() {} })) as {
      result?: unknown;
      error?: { code: number; message: string };
    };
  return { call, audit };
}

test("params reach the guest validated, defaults filled in; results come back as they are", async () => {
  const { guest, calls } = fakeGuest({ setVcpus: { processed: 1 } });
  const { call } = nativeDispatcher(guest);
  expect((await call("set_vcpus", { vcpus: [{ logical_id: 1, online: false }] })).result).toEqual({ processed: 1 });
  await call("set_user_password", { username: "alice", password: "pw" });
  await call("ssh_add_authorized_keys", { username: "alice", keys: [] });
  await call("set_time", {});
  await call("suspend", { mode: "disk" }); // a fake guest: nothing here suspends this machine
  expect(calls).toEqual([
    ["setVcpus", { vcpus: [{ logical_id: 1, online: false }] }],
    ["setUserPassword", { username: "alice", password: "pw", crypted: false }],
    ["sshAddAuthorizedKeys", { username: "alice", keys: [], reset: false }],
    ["setTime", {}],
    ["suspend", { mode: "disk" }],
  ]);
});

test("bad params are refused before the guest is asked, naming the field", async () => {
  const { guest, calls } = fakeGuest();
  const { call } = nativeDispatcher(guest);
  const refusals: [string, unknown, string][] = [
    ["get_time", { now: true }, "'now': unknown field"],
    ["set_time", { nanoseconds: 5 }, "'nanoseconds': needs seconds"],
    ["set_time", { seconds: Date.UTC(2070, 0, 1) / 1000 }, "'seconds'"],
    ["set_time", { seconds: -1 }, "'seconds'"],
    ["set_vcpus", { vcpus: [] }, "'vcpus'"],
    ["set_vcpus", { vcpus: [{ logical_id: -1, online: true }] }, "'vcpus.0.logical_id'"],
    ["set_memory_blocks", { blocks: [{ phys_index: 1 }] }, "'blocks.0.online'"],
    ["fstrim", { minimum: -1 }, "'minimum'"],
    ["set_user_password", { username: "root" }, "'password'"],
    ["set_user_password", { username: "a:b", password: "x" }, "'username': must not contain ':' or a newline"],
    ["set_user_password", { username: "root", password: "a\nb" }, "'password': must not contain a newline or a NUL"],
    ["set_user_password", { username: "root", password: "" }, "'password'"],
    ["ssh_add_authorized_keys", { username: "root", keys: ["# a comment"] }, "'keys.0': must be one OpenSSH public key line"],
    ["ssh_remove_authorized_keys", { username: "", keys: [] }, "'username'"],
    ["suspend", {}, "'mode'"],
    ["suspend", { mode: "standby" }, "'mode'"],
    ["suspend", { mode: "ram", delay_seconds: 5 }, "'delay_seconds': unknown field"],
    ["get_network_routes", { table: "all" }, "'table': unknown field"],
  ];
  for (const [method, params, expected] of refusals) {
    const reply = await call(method, params);
    expect(reply.error?.code).toBe(-32602);
    expect(reply.error?.message).toContain(expected);
  }
  expect(calls).toEqual([]);
});

test("a guest failure answers the native code of its reason, with the native message", async () => {
  const answers = {
    setVcpus: new GuestError("not_found", 'open("/sys/devices/system/cpu/cpu9/"): No such file or directory', "no logical processor #9"),
    sshGetAuthorizedKeys: new GuestError("invalid", "invalid OpenSSH public key: '#'"),
    fstrim: new GuestError("failed", "qemu words", "native words"),
    suspend: new GuestError("unsupported", "the requested suspend mode is not supported by the guest", "the guest cannot suspend to hybrid: ..."),
  };
  const { call } = nativeDispatcher(fakeGuest(answers).guest);
  expect((await call("set_vcpus", { vcpus: [{ logical_id: 9, online: true }] })).error).toEqual({ code: -32002, message: "no logical processor #9" });
  expect((await call("ssh_get_authorized_keys", { username: "root" })).error).toEqual({ code: -32602, message: "invalid OpenSSH public key: '#'" });
  expect((await call("fstrim")).error).toEqual({ code: -32000, message: "native words" });
  expect((await call("suspend", { mode: "hybrid" })).error).toEqual({ code: -32007, message: "the guest cannot suspend to hybrid: ..." });
});

test("the switches: system changes and credentials off answer -32001 (before params are looked at), reads stay on", async () => {
  const { guest, calls } = fakeGuest();
  const { call } = nativeDispatcher(guest, { systemChanges: false, credentials: false });
  for (const method of ["set_time", "set_vcpus", "set_memory_blocks", "fstrim", "suspend", "set_user_password", "ssh_add_authorized_keys", "ssh_remove_authorized_keys"]) {
    expect((await call(method, { bogus: 1 })).error).toMatchObject({ code: -32001, message: `Method '${method}' is disabled by the agent's config` });
  }
  await call("get_time");
  await call("ssh_get_authorized_keys", { username: "root" });
  expect(calls.map(([name]) => name)).toEqual(["getTime", "sshGetAuthorizedKeys"]);
  const info = (await call("get_info")).result as { methods: { name: string; enabled: boolean }[] };
  expect(info.methods.filter((m) => !m.enabled).map((m) => m.name)).toContain("set_user_password");
  expect(info.methods).toContainEqual({ name: "get_vcpus", enabled: true });
});

test("on Windows every guest method answers -32005 until its platform layer lands", async () => {
  const { guest, calls } = fakeGuest();
  const { call } = nativeDispatcher(guest, { platform: "win32" });
  for (const method of Object.keys(GUEST_METHODS)) expect((await call(method)).error?.code).toBe(-32005);
  expect(calls).toEqual([]);
});

test("a password is never in the audit record, whatever the outcome", async () => {
  const { call, audit } = nativeDispatcher(fakeGuest({ setUserPassword: new GuestError("failed", "child process has failed to set user password") }).guest);
  await call("set_user_password", { username: "root", password: "kma-secret-1" });
  await call("set_user_password", { username: "a:b", password: "kma-secret-2" });
  expect(audit.records.map((r) => r.outcome)).toEqual(["error", "error"]);
  expect(JSON.stringify(audit.records)).not.toContain("kma-secret");
});
