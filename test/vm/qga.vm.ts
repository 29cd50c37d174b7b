/**
 * Our agent speaking the QEMU guest agent protocol on a real
 * org.qemu.guest_agent.0 port (qemu-ga not started in this guest): the way
 * libvirt finds and resynchronises with an agent, including after a host that
 * dropped its connection in the middle of a request.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { guestImage, TestVm } from "../../scripts/vm/vm.ts";
import { AGENT_VERSION } from "../../src/version.ts";
import { AgentClient } from "../../src/client/client.ts";
import { ensureBinary } from "../helpers/agent-process.ts";
import { libvirtSync } from "../helpers/qga-host.ts";

let vm: TestVm;

beforeAll(async () => {
  vm = await TestVm.boot({ image: await guestImage(await ensureBinary()), ourQga: true });
  await vm.waitForConsole(/agent started.*qga="virtio-serial/, 90_000);
}, 120_000);

afterAll(async () => {
  await vm?.stop();
});

test("libvirt's handshake, guest-ping and guest-info over a real org.qemu.guest_agent.0", async () => {
  const agent = await libvirtSync(vm.qgaSocket, 1234567);
  expect(await agent.send({ execute: "guest-ping" })).toEqual({ return: {} });
  const info = (await agent.send({ execute: "guest-info" })) as { return: { version: string } };
  expect(info.return.version).toBe(AGENT_VERSION);
  expect(await agent.send({ execute: "guest-sync", arguments: { id: 9 } })).toEqual({ return: 9 });
  agent.close();
}, 60_000);

test("inventory from the guest itself: osinfo, vcpus, network interfaces", async () => {
  const agent = await libvirtSync(vm.qgaSocket, 7);
  const osinfo = (await agent.send({ execute: "guest-get-osinfo" })) as { return: Record<string, string> };
  expect(osinfo.return.machine).toBe("x86_64");
  expect(osinfo.return["kernel-release"]).toMatch(/cloud-amd64$/);
  expect(await agent.send({ execute: "guest-get-vcpus" })).toEqual({ return: [{ "logical-id": 0, online: true, "can-offline": false }] });
  const interfaces = (await agent.send({ execute: "guest-network-get-interfaces" })) as { return: { name: string; "hardware-address": string }[] };
  expect(interfaces.return.map((i) => i.name)).toEqual(["lo", "eth0"]);
  expect(interfaces.return[1]!["hardware-address"]).toBe("52:54:00:12:34:56"); // QEMU's default NIC address
  expect(await agent.send({ execute: "guest-get-host-name" })).toEqual({ return: { "host-name": "guest" } });
  const { return: load } = (await agent.send({ execute: "guest-get-load" })) as { return: Record<string, number> };
  expect(Object.keys(load).sort()).toEqual(["load1", "load15", "load5"]);
  // The one vCPU stays online; taking it offline is refused as qemu-ga refuses it.
  expect(await agent.send({ execute: "guest-set-vcpus", arguments: { vcpus: [{ "logical-id": 0, online: true }] } })).toEqual({ return: 1 });
  expect(await agent.send({ execute: "guest-set-vcpus", arguments: { vcpus: [{ "logical-id": 0, online: false }] } })).toEqual({
    error: { class: "GenericError", desc: "logical processor #0 can't be offlined" },
  });
  agent.close();
}, 60_000);

test("a host that drops its connection mid-request and comes back resyncs with 0xFF + guest-sync-delimited", async () => {
  for (let i = 0; i < 10; i++) {
    const cut = await Bun.connect({ unix: vm.qgaSocket, socket: { data() {} } });
    cut.write(`{"execute":"guest-sync","arguments":{"id":${"9".repeat(1 + i)}`); // no closing braces
    cut.end();
    const agent = await libvirtSync(vm.qgaSocket, 1000 + i);
    expect(await agent.send({ execute: "guest-ping", id: `after-cut-${i}` })).toEqual({ return: {}, id: `after-cut-${i}` });
    agent.close();
  }
}, 120_000);

test("guest-shutdown answers nothing and powers the VM off; mode=reboot brings the agent back", async () => {
  const image = await guestImage(await ensureBinary());
  const off = await TestVm.boot({ image, ourQga: true });
  const reboots = await TestVm.boot({ image, ourQga: true, allowReboot: true });
  try {
    const agent = await libvirtSync(off.qgaSocket, 11);
    expect(await agent.sendNoReply({ execute: "guest-shutdown" }, 200)).toBe("");
    expect(await off.waitForExit(60_000)).toBe(0);
    expect(off.console()).toContain("poweroff requested");

    const rebooting = await libvirtSync(reboots.qgaSocket, 12);
    expect(await rebooting.sendNoReply({ execute: "guest-shutdown", arguments: { mode: "reboot" } }, 200)).toBe("");
    rebooting.close();
    await reboots.waitForConsole(/reboot requested/, 60_000);
    await reboots.waitForConsole(/agent started[\s\S]*agent started/, 120_000);
    const again = await libvirtSync(reboots.qgaSocket, 13);
    expect(await again.send({ execute: "guest-ping" })).toEqual({ return: {} });
    again.close();
  } finally {
    await off.stop();
    await reboots.stop();
  }
}, 240_000);

test("guest-suspend-ram: no reply, QEMU sees the guest suspended (S3), system_wakeup resumes it and the agent answers again", async () => {
  const sleeper = await TestVm.boot({ image: await guestImage(await ensureBinary()), ourQga: true });
  try {
    await sleeper.waitForConsole(/agent started.*qga="virtio-serial/, 90_000);
    const native = await AgentClient.connect(sleeper.agentSocket, { timeoutMs: 30_000 });
    await native.waitReady({ timeoutMs: 30_000 });
    const states = await native.exec({ command: "cat", args: ["/sys/power/state"] }, { timeoutMs: 30_000 });
    native.close();
    // The cloud kernel offers S3 ("mem") and hibernation ("disk"); QEMU's PIIX4 PM has S3 on by default.
    expect(Buffer.from(states.stdout_base64, "base64").toString().trim().split(" ")).toEqual(["freeze", "mem", "disk"]);

    const agent = await libvirtSync(sleeper.qgaSocket, 81);
    expect(await agent.sendNoReply({ execute: "guest-suspend-ram" }, 200)).toBe("");
    await sleeper.waitForStatus("suspended");
    // Sent while the guest sleeps, so that everything the agent writes after the resume is seen:
    // only the ping's reply, none for the suspend.
    const pinged = agent.send({ execute: "guest-ping", id: "after-resume" });
    await sleeper.execute("system_wakeup");
    await sleeper.waitForStatus("running");
    expect(await pinged).toEqual({ return: {}, id: "after-resume" });
    agent.close();
    const again = await libvirtSync(sleeper.qgaSocket, 82);
    // No systemd or pm-utils in this guest, and the kernel has no hybrid state: qemu-ga's words.
    expect(await again.send({ execute: "guest-suspend-hybrid" })).toEqual({
      error: { class: "GenericError", desc: "the requested suspend mode is not supported by the guest" },
    });
    // Hibernation is offered, so it is tried (as qemu-ga tries it): the kernel makes the image, finds no
    // swap to write it to, and the write to /sys/power/state fails with ENODEV.
    expect(await again.send({ execute: "guest-suspend-disk" })).toEqual({
      error: { class: "GenericError", desc: "suspend: cannot write to '/sys/power/state': No such device" },
    });
    const kernel = await AgentClient.connect(sleeper.agentSocket, { timeoutMs: 30_000 });
    await kernel.waitReady({ timeoutMs: 30_000 });
    const dmesg = await kernel.exec({ command: "sh", args: ["-c", "dmesg"] }, { timeoutMs: 30_000 });
    kernel.close();
    expect(Buffer.from(dmesg.stdout_base64, "base64").toString()).toMatch(
      /PM: suspend entry \(deep\)[\s\S]*Waking up from system sleep state S3[\s\S]*PM: suspend exit[\s\S]*PM: Cannot find swap device/,
    );
    expect(await sleeper.status()).toBe("running");
    expect(await again.send({ execute: "guest-ping" })).toEqual({ return: {} });
    again.close();
  } finally {
    await sleeper.stop();
  }
}, 300_000);

test("a guest booted with nohibernate offers no \"disk\": guest-suspend-disk is qemu-ga's unsupported error, and nothing is tried", async () => {
  const awake = await TestVm.boot({ image: await guestImage(await ensureBinary()), ourQga: true, append: "nohibernate" });
  try {
    await awake.waitForConsole(/agent started.*qga="virtio-serial/, 90_000);
    const agent = await libvirtSync(awake.qgaSocket, 85);
    expect(await agent.send({ execute: "guest-suspend-disk" })).toEqual({
      error: { class: "GenericError", desc: "the requested suspend mode is not supported by the guest" },
    });
    agent.close();
    const native = await AgentClient.connect(awake.agentSocket, { timeoutMs: 30_000 });
    await native.waitReady({ timeoutMs: 30_000 });
    const checked = await native.exec({ command: "sh", args: ["-c", "cat /sys/power/state; dmesg | grep -c 'hibernation entry'"] }, { timeoutMs: 30_000 });
    native.close();
    expect(Buffer.from(checked.stdout_base64, "base64").toString()).toBe("freeze mem\n0\n");
  } finally {
    await awake.stop();
  }
}, 300_000);

test("guest-network-get-route: the guest's routes, after it brought eth0 up with an address and a default route", async () => {
  const native = await AgentClient.connect(vm.agentSocket, { timeoutMs: 30_000 });
  await native.waitReady({ timeoutMs: 30_000 });
  const configured = await native.exec(
    { command: "sh", args: ["-c", "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 metric 50"] },
    { timeoutMs: 30_000 },
  );
  native.close();
  expect(configured.exit_code).toBe(0);
  const agent = await libvirtSync(vm.qgaSocket, 91);
  const { return: routes } = (await agent.send({ execute: "guest-network-get-route" })) as { return: Record<string, unknown>[] };
  const v4 = routes.filter((route) => route.version === 4).map(({ iface, destination, gateway, mask, metric }) => ({ iface, destination, gateway, mask, metric }));
  expect(v4).toContainEqual({ iface: "eth0", destination: "0.0.0.0", gateway: "10.0.2.2", mask: "0.0.0.0", metric: 50 });
  expect(v4).toContainEqual({ iface: "eth0", destination: "10.0.2.0", gateway: "0.0.0.0", mask: "255.255.255.0", metric: 0 });
  expect(v4).toHaveLength(2);
  const v6 = routes.filter((route) => route.version === 6).map(({ iface, destination, desprefixlen }) => `${destination}/${desprefixlen} ${iface}`);
  expect(v6).toContain("::1/128 lo");
  agent.close();
}, 60_000);

test("guest-set-time sets the guest's clock (and its RTC); guest-get-time reads it back", async () => {
  const agent = await libvirtSync(vm.qgaSocket, 21);
  const target = 1_900_000_000_000_000_000; // 2030-03-17, nanoseconds
  expect(await agent.send({ execute: "guest-set-time", arguments: { time: target } })).toEqual({ return: {} });
  const { return: now } = (await agent.send({ execute: "guest-get-time" })) as { return: number };
  expect(Math.abs(now - target)).toBeLessThan(30e9);
  const refused = (await agent.send({ execute: "guest-set-time", arguments: { time: 1e20 } })) as { error: { desc: string } };
  expect(refused.error.desc).toContain("Invalid time");
  agent.close();
}, 60_000);

test("memory blocks: listed with their size, taken offline and back online (or refused with a reason)", async () => {
  const agent = await libvirtSync(vm.qgaSocket, 31);
  const { return: blocks } = (await agent.send({ execute: "guest-get-memory-blocks" })) as { return: { "phys-index": number; online: boolean; "can-offline": boolean }[] };
  expect(blocks.length).toBeGreaterThan(0);
  const { return: info } = (await agent.send({ execute: "guest-get-memory-block-info" })) as { return: { size: number } };
  expect(info.size).toBeGreaterThan(0);
  const candidate = blocks.filter((b) => b.online && b["can-offline"]).sort((a, b) => b["phys-index"] - a["phys-index"])[0];
  if (candidate) {
    const index = candidate["phys-index"];
    const set = async (online: boolean) =>
      ((await agent.send({ execute: "guest-set-memory-blocks", arguments: { "mem-blks": [{ "phys-index": index, online }] } })) as { return: { response: string }[] }).return[0]!;
    const offline = await set(false);
    expect(["success", "operation-failed"]).toContain(offline.response);
    if (offline.response === "success") {
      const after = (await agent.send({ execute: "guest-get-memory-blocks" })) as { return: { "phys-index": number; online: boolean }[] };
      expect(after.return.find((b) => b["phys-index"] === index)!.online).toBe(false);
      expect((await set(true)).response).toBe("success");
    }
  }
  expect(await agent.send({ execute: "guest-set-memory-blocks", arguments: { "mem-blks": [{ "phys-index": 999999, online: true }] } })).toEqual({
    return: [{ "phys-index": 999999, response: "not-found", "error-code": 2 }],
  });
  agent.close();
}, 60_000);

test("guest-get-fsinfo shows the guest's virtio disk once it holds a filesystem", async () => {
  // Through the native port: format and mount the harness's blank disk.
  const native = await AgentClient.connect(vm.agentSocket, { timeoutMs: 30_000 });
  await native.waitReady({ timeoutMs: 30_000 });
  const mounted = await native.exec({ command: "sh", args: ["-c", "mke2fs -q /dev/vda && mkdir -p /mnt/data && mount -t ext2 /dev/vda /mnt/data"] }, { timeoutMs: 30_000 });
  native.close();
  expect(mounted.exit_code).toBe(0);
  const agent = await libvirtSync(vm.qgaSocket, 41);
  const { return: filesystems } = (await agent.send({ execute: "guest-get-fsinfo" })) as { return: Record<string, any>[] };
  const data = filesystems.find((fs) => fs.mountpoint === "/mnt/data")!;
  expect(data).toMatchObject({ name: "vda", type: "ext2" });
  expect(data["total-bytes"]).toBeGreaterThan(20 * 1024 * 1024);
  expect(data.disk).toHaveLength(1);
  expect(data.disk[0]).toMatchObject({ "bus-type": "virtio", bus: 0, target: 0, unit: 0, dev: "/dev/vda" });
  expect(data.disk[0]["pci-controller"]).toMatchObject({ domain: 0, bus: 0 });
  agent.close();
}, 60_000);

test("guest-ssh-*-authorized-keys edit root's ~/.ssh in the guest as sshd needs it", async () => {
  const agent = await libvirtSync(vm.qgaSocket, 51);
  const keyA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA host-a";
  const keyB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB host-b";
  expect(await agent.send({ execute: "guest-ssh-add-authorized-keys", arguments: { username: "root", keys: [keyA, keyB] } })).toEqual({ return: {} });
  expect(await agent.send({ execute: "guest-ssh-add-authorized-keys", arguments: { username: "root", keys: [keyA] } })).toEqual({ return: {} });
  expect(await agent.send({ execute: "guest-ssh-get-authorized-keys", arguments: { username: "root" } })).toEqual({ return: { keys: [keyB, keyA] } });

  const native = await AgentClient.connect(vm.agentSocket, { timeoutMs: 30_000 });
  await native.waitReady({ timeoutMs: 30_000 });
  const listing = await native.exec({ command: "sh", args: ["-c", "stat -c '%a %u %n' /root/.ssh /root/.ssh/authorized_keys && ls -A /root/.ssh"] }, { timeoutMs: 30_000 });
  expect(Buffer.from(listing.stdout_base64, "base64").toString()).toBe("700 0 /root/.ssh\n600 0 /root/.ssh/authorized_keys\nauthorized_keys\n");

  expect(await agent.send({ execute: "guest-ssh-remove-authorized-keys", arguments: { username: "root", keys: [keyA] } })).toEqual({ return: {} });
  expect(await agent.send({ execute: "guest-ssh-get-authorized-keys", arguments: { username: "root" } })).toEqual({ return: { keys: [keyB] } });
  const file = await native.exec({ command: "cat", args: ["/root/.ssh/authorized_keys"] }, { timeoutMs: 30_000 });
  expect(Buffer.from(file.stdout_base64, "base64").toString()).toBe(keyB);
  native.close();

  expect(await agent.send({ execute: "guest-ssh-get-authorized-keys", arguments: { username: "nobody" } })).toEqual({
    error: { class: "GenericError", desc: "failed to lookup user 'nobody': Success" },
  });
  agent.close();
}, 60_000);

test("guest-fstrim trims the guest's mounted virtio disk and reports the bytes", async () => {
  const agent = await libvirtSync(vm.qgaSocket, 61);
  const { return: report } = (await agent.send({ execute: "guest-fstrim", arguments: { minimum: 4096 } })) as { return: { paths: Record<string, unknown>[] } };
  const data = report.paths.find((entry) => entry.path === "/mnt/data")!;
  expect(data).toMatchObject({ minimum: 4096 });
  expect(data.trimmed).toBeGreaterThan(1024 * 1024);
  agent.close();
}, 60_000);

test("guest-set-user-password sets root's password in the guest through chpasswd", async () => {
  const agent = await libvirtSync(vm.qgaSocket, 71);
  const hash = "$6$kmasalt$Kh1ZWvX9Rr2d5lwzJ2V8kWq0z3rPq1mZ2n4b5c6d7e8f9g0h1i2j3k4l5m6n7o8p9q0r1s2t3u4v5w6x7y8z9A0B"; // sha512-crypt shaped
  const set = await agent.send({ execute: "guest-set-user-password", arguments: { username: "root", password: Buffer.from(hash).toString("base64"), crypted: true } });
  expect(set).toEqual({ return: {} });
  const native = await AgentClient.connect(vm.agentSocket, { timeoutMs: 30_000 });
  await native.waitReady({ timeoutMs: 30_000 });
  const stored = await native.exec({ command: "sh", args: ["-c", "cat /etc/shadow /etc/passwd 2>/dev/null | grep '^root:'"] }, { timeoutMs: 30_000 });
  expect(Buffer.from(stored.stdout_base64, "base64").toString()).toContain(`root:${hash}:`);
  native.close();
  expect(await agent.send({ execute: "guest-set-user-password", arguments: { username: "kma-nobody", password: "cHc=", crypted: false } })).toEqual({
    error: { class: "GenericError", desc: "child process has failed to set user password" },
  });
  agent.close();
}, 60_000);

test("guest-fsfreeze-freeze-list freezes the guest's disk: a write waits for the thaw, and both ports keep the frozen rules meanwhile", async () => {
  const native = await AgentClient.connect(vm.agentSocket, { timeoutMs: 30_000 });
  await native.waitReady({ timeoutMs: 30_000 });
  // A writer that starts writing a second after the agent marks itself frozen (the mark comes just before FIFREEZE).
  const writer = await native.call("exec_start", {
    command: "sh",
    args: ["-c", "until [ -e /var/lib/kvm-manager-agent/qga.state.isfrozen ]; do sleep 0.05; done; sleep 1; echo written > /mnt/data/probe; date +%s > /tmp/probe-written"],
  });
  const agent = await libvirtSync(vm.qgaSocket, 81);
  expect(await agent.send({ execute: "guest-fsfreeze-freeze-list", arguments: { mountpoints: ["/mnt/data"] } })).toEqual({ return: 1 });
  expect(await agent.send({ execute: "guest-fsfreeze-status" })).toEqual({ return: "frozen" });
  expect(await agent.send({ execute: "guest-get-osinfo" })).toEqual({
    error: { class: "CommandNotFound", desc: "Command guest-get-osinfo has been disabled: the agent is in frozen state" },
  });
  await expect(native.call("exec", { command: "true" })).rejects.toMatchObject({ code: -32006 });
  expect(await native.call("fsfreeze_status", {})).toEqual({ status: "frozen" });
  await Bun.sleep(3_000);
  expect(await agent.send({ execute: "guest-fsfreeze-thaw" })).toEqual({ return: 1 });
  const { return: thawedAt } = (await agent.send({ execute: "guest-get-time" })) as { return: number };
  const done = await native.call("exec_status", { handle: writer.handle, wait_ms: 30_000 });
  expect(done.result?.exit_code).toBe(0);
  const written = await native.exec({ command: "cat", args: ["/tmp/probe-written", "/mnt/data/probe"] }, { timeoutMs: 30_000 });
  const [writtenAt, content] = Buffer.from(written.stdout_base64, "base64").toString().trim().split("\n");
  // Unfrozen, the write would have landed about 3 s before the thaw; frozen, it waited for it.
  expect(Number(writtenAt)).toBeGreaterThanOrEqual(Math.floor(thawedAt / 1e9) - 1);
  expect(content).toBe("written");

  // Without a list: every block-backed filesystem of the guest (here the one disk; the initramfs root is not one).
  expect(await native.call("fsfreeze_freeze", {})).toEqual({ frozen: 1 });
  expect(await agent.send({ execute: "guest-fsfreeze-status" })).toEqual({ return: "frozen" });
  expect(await native.call("fsfreeze_thaw", {})).toEqual({ thawed: 1 });
  expect(await agent.send({ execute: "guest-fsfreeze-thaw" })).toEqual({ return: 0 });
  native.close();
  agent.close();
}, 90_000);
