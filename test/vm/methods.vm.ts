/**
 * The rest of the native methods on a real guest, over real virtio-serial:
 * streamed exec, small atomic copies, an aborted upload, an archive
 * swapped in atomically, the guest's routes, and the guest methods that
 * change the guest (its clock, CPUs, memory blocks, disk, root's password and
 * ssh keys, and suspend, in a VM of its own), checked from inside it. (ping,
 * get_info, exec, push/pull, metrics, users and power have their own VM tests.)
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { guestImage, TestVm } from "../../scripts/vm/vm.ts";
import { AgentClient, AgentRpcError } from "../../src/client/client.ts";
import type { NotificationParams } from "../../src/schema/methods.ts";
import { ensureBinary } from "../helpers/agent-process.ts";

let vm: TestVm;
let client: AgentClient;

beforeAll(async () => {
  vm = await TestVm.boot({ image: await guestImage(await ensureBinary()) });
  client = await AgentClient.connect(vm.agentSocket, { timeoutMs: 20_000 });
  await client.waitReady({ timeoutMs: 90_000 });
}, 120_000);

afterAll(async () => {
  client?.close();
  await vm?.stop();
});

const text = (base64: string) => Buffer.from(base64, "base64").toString();

test("exec_start streams output as notifications, exec_status long-polls, exec_kill stops a process", async () => {
  const chunks: NotificationParams<"exec_output">[] = [];
  const exits: NotificationParams<"exec_exit">[] = [];
  const stopOutput = client.onNotification("exec_output", (p) => chunks.push(p));
  const stopExit = client.onNotification("exec_exit", (p) => exits.push(p));
  try {
    const { handle } = await client.execStart({ command: "sh", args: ["-c", "echo one; sleep 0.2; echo two >&2; echo three"], stream: true });
    const status = await client.execStatus({ handle, wait_ms: 20_000 }, { timeoutMs: 30_000 });
    expect(status.running).toBe(false);
    expect(text(status.result!.stdout_base64)).toBe("one\nthree\n");
    const deadline = Date.now() + 10_000;
    while (exits.length === 0 && Date.now() < deadline) await Bun.sleep(20);
    const streamed = (stream: "stdout" | "stderr") => chunks.filter((c) => c.handle === handle && c.stream === stream).map((c) => text(c.data_base64)).join("");
    expect(streamed("stdout")).toBe("one\nthree\n");
    expect(streamed("stderr")).toBe("two\n");
    expect(exits).toEqual([{ handle, result: status.result! }]);

    const sleeper = await client.execStart({ command: "sleep", args: ["600"] });
    expect(await client.execKill({ handle: sleeper.handle, signal: "SIGKILL" })).toMatchObject({ running: true });
    const killed = await client.execStatus({ handle: sleeper.handle, wait_ms: 10_000 }, { timeoutMs: 20_000 });
    expect(killed.result).toMatchObject({ exit_code: null, signal: "SIGKILL" });
  } finally {
    stopOutput();
    stopExit();
  }
}, 60_000);

test("copy_to_guest writes atomically and refuses what policy forbids; copy_from_guest reads it back", async () => {
  const written = await client.copyToGuest({ path: "/tmp/hello.txt", content_base64: Buffer.from("hello guest\n").toString("base64"), mode: "0600" });
  expect(written).toMatchObject({ path: "/tmp/hello.txt", bytes: 12 });
  const back = await client.copyFromGuest({ path: "/tmp/hello.txt" });
  expect(text(back.content_base64)).toBe("hello guest\n");
  expect(back).toMatchObject({ bytes: 12, size: 12, eof: true, sha256: written.sha256 });
  for (const path of ["/etc/passwd", "/tmp/../etc/passwd", "relative.txt"]) {
    const error = await client.copyToGuest({ path, content_base64: "eA==" }).catch((e) => e);
    expect(error).toBeInstanceOf(AgentRpcError);
    expect([-32001, -32602]).toContain(error.code);
  }
}, 60_000);

test("an aborted upload leaves the old file and no temp file behind", async () => {
  await client.copyToGuest({ path: "/tmp/keep.txt", content_base64: Buffer.from("old\n").toString("base64") });
  const { upload_id } = await client.uploadStart({ path: "/tmp/keep.txt" });
  await client.uploadChunk({ upload_id, offset: 0, content_base64: Buffer.from("new and half").toString("base64") });
  expect(await client.uploadAbort({ upload_id })).toEqual({ upload_id, aborted: true });
  expect(text((await client.copyFromGuest({ path: "/tmp/keep.txt" })).content_base64)).toBe("old\n");
  const listing = await client.exec({ command: "sh", args: ["-c", "ls -a /tmp"] });
  expect(text(listing.stdout_base64).split("\n").filter((name) => name.includes("keep.txt"))).toEqual(["keep.txt"]);
}, 60_000);

test("copy_archive_to_guest unpacks a .tar.gz into place, and refuses an archive with an escaping entry", async () => {
  const local = mkdtempSync(join(tmpdir(), "kma-vm-archive-"));
  try {
    mkdirSync(join(local, "app", "conf"), { recursive: true });
    writeFileSync(join(local, "app", "conf", "app.toml"), "port = 8080\n");
    writeFileSync(join(local, "app", "README"), "hello\n");
    expect(Bun.spawnSync(["tar", "czf", join(local, "app.tgz"), "-C", join(local, "app"), "."]).exitCode).toBe(0);
    const archive = Buffer.from(await Bun.file(join(local, "app.tgz")).arrayBuffer()).toString("base64");
    expect(await client.copyArchiveToGuest({ dir: "/tmp/app", archive_base64: archive })).toMatchObject({ dir: "/tmp/app", files: 2, replaced: false });
    expect(text((await client.copyFromGuest({ path: "/tmp/app/conf/app.toml" })).content_base64)).toBe("port = 8080\n");

    expect(Bun.spawnSync(["tar", "czf", join(local, "evil.tgz"), "-C", local, "--transform", "s,^app,../escape,", "app/README"]).exitCode).toBe(0);
    const evil = Buffer.from(await Bun.file(join(local, "evil.tgz")).arrayBuffer()).toString("base64");
    const error = await client.copyArchiveToGuest({ dir: "/tmp/app", archive_base64: evil }).catch((e) => e);
    expect(error.code).toBe(-32001);
    expect(JSON.stringify(error.data)).toContain("../escape/README");
    // The earlier tree is untouched.
    expect(text((await client.copyFromGuest({ path: "/tmp/app/README" })).content_base64)).toBe("hello\n");
  } finally {
    rmSync(local, { recursive: true, force: true });
  }
}, 60_000);

/** A command's stdout in the guest (exec is on in the test VM). */
async function inGuest(script: string): Promise<string> {
  const run = await client.exec({ command: "sh", args: ["-c", script] }, { timeoutMs: 30_000 });
  expect(run.exit_code).toBe(0);
  return text(run.stdout_base64);
}

const refusal = (call: Promise<unknown>) => call.then(() => { throw new Error("expected a refusal"); }, (error: AgentRpcError) => error);

test("guest inventory from inside the guest: OS, vCPUs, interfaces, disks, memory blocks", async () => {
  expect(await client.getOsInfo()).toMatchObject({ machine: "x86_64", kernel_release: expect.stringMatching(/cloud-amd64$/) });
  expect(await client.getVcpus()).toEqual({ vcpus: [{ logical_id: 0, online: true, can_offline: false }] });
  const { interfaces } = await client.getNetworkInterfaces();
  expect(interfaces.map((i) => i.name)).toEqual(["lo", "eth0"]);
  expect(interfaces[1]!.hardware_address).toBe("52:54:00:12:34:56"); // QEMU's default NIC address
  expect((await client.getDisks()).disks).toContainEqual(expect.objectContaining({ name: "/dev/vda", partition: false }));
  expect((await client.getDiskstats()).disks.map((d) => d.name)).toContain("vda");
  const { blocks } = await client.getMemoryBlocks();
  expect(blocks.length).toBeGreaterThan(0);
  expect((await client.getMemoryBlockInfo()).size).toBeGreaterThan(0);
  expect(await client.setMemoryBlocks({ blocks: [{ phys_index: 999_999, online: true }] })).toEqual({
    results: [{ phys_index: 999_999, response: "not_found", error_code: 2 }],
  });
  // The highest removable block offline and back, when the kernel lets it go (it may refuse: operation_failed).
  const candidate = blocks.filter((b) => b.online && b.can_offline).sort((a, b) => b.phys_index - a.phys_index)[0];
  if (candidate) {
    const set = async (online: boolean) => (await client.setMemoryBlocks({ blocks: [{ phys_index: candidate.phys_index, online }] })).results[0]!;
    const offline = await set(false);
    expect(["success", "operation_failed"]).toContain(offline.response);
    if (offline.response === "success") {
      expect((await inGuest(`cat /sys/devices/system/memory/memory${candidate.phys_index}/state`)).trim()).toBe("offline");
      expect((await set(true)).response).toBe("success");
    }
  }
}, 60_000);

test("set_vcpus: the one vCPU stays online; taking it offline, or a CPU that is not there, is refused", async () => {
  expect(await client.setVcpus({ vcpus: [{ logical_id: 0, online: true }] })).toEqual({ processed: 1 });
  const offline = await refusal(client.setVcpus({ vcpus: [{ logical_id: 0, online: false }] }));
  expect(offline).toMatchObject({ code: -32000 });
  expect(offline.message).toContain("logical processor #0 can't be offlined");
  expect(await refusal(client.setVcpus({ vcpus: [{ logical_id: 3, online: true }] }))).toMatchObject({ code: -32002 });
  expect((await inGuest("cat /sys/devices/system/cpu/online")).trim()).toBe("0");
}, 60_000);

test("fstrim trims the guest's mounted virtio disk; get_fsinfo shows it with its address", async () => {
  await inGuest("mke2fs -q /dev/vda && mkdir -p /mnt/data && mount -t ext2 /dev/vda /mnt/data && echo ok");
  const { filesystems } = await client.getFsinfo();
  const data = filesystems.find((fs) => fs.mountpoint === "/mnt/data")!;
  expect(data).toMatchObject({ name: "vda", type: "ext2", disk: [expect.objectContaining({ bus_type: "virtio", dev: "/dev/vda" })] });
  const { paths } = await client.fstrim({ minimum: 4096 });
  const trimmed = paths.find((entry) => entry.path === "/mnt/data")!;
  expect(trimmed.minimum).toBe(4096);
  expect(trimmed.trimmed).toBeGreaterThan(1024 * 1024);
}, 60_000);

test("ssh_*_authorized_keys edit root's ~/.ssh as sshd needs it", async () => {
  const keyA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA native-a";
  const keyB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB native-b";
  expect(await client.sshAddAuthorizedKeys({ username: "root", keys: [keyA, keyB], reset: true })).toEqual({});
  expect(await client.sshAddAuthorizedKeys({ username: "root", keys: [keyA] })).toEqual({});
  expect(await client.sshGetAuthorizedKeys({ username: "root" })).toEqual({ keys: [keyB, keyA] });
  expect(await inGuest("stat -c '%a %u %n' /root/.ssh /root/.ssh/authorized_keys")).toBe("700 0 /root/.ssh\n600 0 /root/.ssh/authorized_keys\n");
  expect(await client.sshRemoveAuthorizedKeys({ username: "root", keys: [keyA] })).toEqual({});
  expect(await inGuest("cat /root/.ssh/authorized_keys")).toBe(keyB);
  expect(await refusal(client.sshGetAuthorizedKeys({ username: "kma-nobody" }))).toMatchObject({ code: -32002 });
}, 60_000);

test("set_user_password sets root's password in the guest: a crypt(3) hash as given, a plain one hashed by chpasswd", async () => {
  // The image has no /etc/shadow, which pam_unix (chpasswd's way to hash a plain password) needs: give it one, as a distribution has.
  await inGuest("echo 'root:*:20000:0:99999:7:::' > /etc/shadow && chmod 600 /etc/shadow");
  const shadowRoot = async () => (await inGuest("grep '^root:' /etc/shadow")).split(":")[1]!;
  const hash = "$6$kmanative$0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ./0123456789abcdefghijk";
  expect(await client.setUserPassword({ username: "root", password: hash, crypted: true })).toEqual({});
  expect(await shadowRoot()).toBe(hash);
  expect(await client.setUserPassword({ username: "root", password: "kma plain pässword" })).toEqual({});
  const stored = await shadowRoot();
  expect(stored).not.toBe(hash);
  expect(stored).toMatch(/^\$\w+\$/);
  expect(await refusal(client.setUserPassword({ username: "kma-nobody", password: "x" }))).toMatchObject({ code: -32000 });
  expect(await inGuest("cat /tmp/audit.jsonl")).not.toContain("pässword");
}, 60_000);

test("set_time sets the guest's clock and its RTC; set_time without seconds reads the RTC back", async () => {
  const target = 1_900_000_000; // 2030-03-17
  const set = await client.setTime({ seconds: target, nanoseconds: 500_000_000 });
  expect(Math.abs(set.seconds - target)).toBeLessThan(30);
  // The system clock back to the host's time, then from the RTC, which set_time wrote: 2030 again.
  const now = await client.setTime({ seconds: Math.floor(Date.now() / 1000) });
  expect(Math.abs(now.seconds - Date.now() / 1000)).toBeLessThan(30);
  await client.setTime({ seconds: target });
  const host = Math.floor(Date.now() / 1000);
  await inGuest(`date -s @${host} >/dev/null && echo ok`);
  const fromRtc = await client.setTime({});
  expect(Math.abs(fromRtc.seconds - target)).toBeLessThan(30);
  expect(Math.abs((await client.getTime()).seconds - target)).toBeLessThan(30);
  await client.setTime({ seconds: Math.floor(Date.now() / 1000) });
  expect(await refusal(client.setTime({ seconds: 4_102_444_800 }))).toMatchObject({ code: -32602 });
}, 60_000);

test("get_network_routes: the guest's routes after it brought eth0 up, with the kernel's numbers", async () => {
  await inGuest("ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 metric 50 && echo ok");
  const { routes } = await client.getNetworkRoutes();
  const v4 = routes.filter((route) => route.version === 4).map(({ iface, destination, gateway, mask, metric, flags }) => ({ iface, destination, gateway, mask, metric, flags }));
  expect(v4).toEqual([
    { iface: "eth0", destination: "0.0.0.0", gateway: "10.0.2.2", mask: "0.0.0.0", metric: 50, flags: 3 }, // RTF_UP | RTF_GATEWAY
    { iface: "eth0", destination: "10.0.2.0", gateway: "0.0.0.0", mask: "255.255.255.0", metric: 0, flags: 1 },
  ]);
  // The loopback route is local (RTF_LOCAL, bit 31): whole and unsigned here, where QGA sign-extends it past 2^53.
  const loopback = routes.find((route) => route.version === 6 && route.destination === "::1")!;
  expect(loopback).toMatchObject({ iface: "lo", desprefixlen: 128, srcprefixlen: 0, nexthop: "::" });
  expect(loopback.flags! >>> 31).toBe(1);
  expect(loopback.flags!).toBeLessThan(2 ** 32);
}, 60_000);

test("suspend {mode: ram} replies first (the kernel's /sys/power/state, as the guest has no systemd or pm-utils), QEMU sees it suspended, system_wakeup brings the agent back", async () => {
  const sleeper = await TestVm.boot({ image: await guestImage(await ensureBinary()) });
  const native = await AgentClient.connect(sleeper.agentSocket, { timeoutMs: 60_000 });
  try {
    await native.waitReady({ timeoutMs: 90_000 });
    // What the guest cannot do is refused before anything is tried: the kernel has no hybrid state.
    const hybrid = await refusal(native.suspend({ mode: "hybrid" }));
    expect(hybrid.code).toBe(-32007);
    expect(hybrid.message).toContain("the guest cannot suspend to hybrid");
    expect(await sleeper.status()).toBe("running");

    expect(await native.suspend({ mode: "ram" })).toEqual({ accepted: true, mode: "ram", method: "sysfs", state: "mem" });
    await sleeper.waitForStatus("suspended");
    // Sent while the guest sleeps: answered once it has resumed.
    const pinged = native.ping({ payload: "after-resume" });
    await sleeper.execute("system_wakeup");
    await sleeper.waitForStatus("running");
    expect(await pinged).toEqual({ pong: true, payload: "after-resume" });
    // The suspend is over once the write to /sys/power/state has returned, after the resume: from then on a
    // request is looked at afresh (hybrid refused for its own reason), no longer refused as one in progress (-32000).
    let after = await refusal(native.suspend({ mode: "hybrid" }));
    for (const deadline = Date.now() + 30_000; after.code === -32000 && Date.now() < deadline; ) {
      await Bun.sleep(100);
      after = await refusal(native.suspend({ mode: "hybrid" }));
    }
    expect(after.code).toBe(-32007);
    const log = await native.exec({ command: "sh", args: ["-c", "dmesg; cat /tmp/audit.jsonl"] }, { timeoutMs: 30_000 });
    const text = Buffer.from(log.stdout_base64, "base64").toString();
    expect(text).toMatch(/PM: suspend entry \(deep\)[\s\S]*Waking up from system sleep state S3[\s\S]*PM: suspend exit/);
    expect(text).toContain('"phase":"scheduled","action":"ram","method":"sysfs","state":"mem"');
  } finally {
    native.close();
    await sleeper.stop();
  }
}, 300_000);
