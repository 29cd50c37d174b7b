/**
 * The isa-serial transport on a real UART: QEMU gives the guest a second
 * 16550 (its /dev/ttyS1, the 8250 driver built into the cloud kernel) backed
 * by a host unix socket, and the agent in the guest is started with a config
 * that serves one protocol on it. A socket chardev has no carrier: the guest
 * never sees a host come or go, so every host starts with the resync of its
 * protocol, and one that drops a request half-written must not upset the next.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { GUEST_SERIAL_LINE, guestImage, TestVm } from "../../scripts/vm/vm.ts";
import { AgentClient } from "../../src/client/client.ts";
import { encodeFrame } from "../../src/protocol/framing.ts";
import { AGENT_VERSION } from "../../src/version.ts";
import { ensureBinary } from "../helpers/agent-process.ts";
import { libvirtSync } from "../helpers/qga-host.ts";

describe("native protocol on the guest's /dev/ttyS1", () => {
  let vm: TestVm;

  beforeAll(async () => {
    vm = await TestVm.boot({ image: await guestImage(await ensureBinary()), isaSerial: "native" });
    await vm.waitForConsole(/agent started.*transport="isa-serial"/, 90_000);
  }, 120_000);

  afterAll(async () => {
    await vm?.stop();
  });

  test("ping and get_info over the serial line, the client's resync first", async () => {
    const client = await AgentClient.connect(vm.serialSocket, { timeoutMs: 30_000 });
    await client.waitReady();
    expect(await client.call("ping", { payload: "over a UART" })).toEqual({ pong: true, payload: "over a UART" });
    const info = await client.call("get_info");
    expect(info.agent_version).toBe(AGENT_VERSION);
    expect(info.methods).toContainEqual({ name: "get_info", enabled: true });
    // The UART as the guest's kernel has it set now: raw, 38400 8N1, no flow control, CLOCAL. stty runs as
    // a child of the shell, not as the session leader exec makes: a leader would take the line as its
    // controlling terminal and hang it up on exit (the last test).
    const stty = await client.call("exec", { command: "sh", args: ["-c", `stty -a -F ${GUEST_SERIAL_LINE}; exit $?`] });
    expect(stty.exit_code).toBe(0);
    const settings = Buffer.from(stty.stdout_base64, "base64").toString();
    expect(settings).toContain("speed 38400 baud");
    expect(settings).toMatch(/min = 1;\s*time = 0;/);
    const flags = settings.split(/[\s;]+/);
    for (const flag of ["-icanon", "-echo", "-isig", "-icrnl", "-ixon", "-ixoff", "-opost", "cs8", "-parenb", "cread", "clocal", "-crtscts"]) expect(flags).toContain(flag);
    client.close();
    expect(vm.console()).toContain(`port open transport="isa-serial" path="${GUEST_SERIAL_LINE}"`);
  }, 120_000);

  test("a host that leaves half a request behind: the next one resyncs and is served", async () => {
    for (let i = 0; i < 3; i++) {
      const cut = await Bun.connect({ unix: vm.serialSocket, socket: { data() {} } });
      cut.write(encodeFrame(JSON.stringify({ jsonrpc: "2.0", id: i, method: "ping" })).subarray(0, 10));
      cut.end();
      const client = await AgentClient.connect(vm.serialSocket, { timeoutMs: 30_000 });
      await client.waitReady();
      expect(await client.call("ping", { payload: i })).toEqual({ pong: true, payload: i });
      client.close();
    }
  }, 180_000);

  test("a guest program that takes the line as its controlling terminal hangs it up on exit: the agent reopens it", async () => {
    const client = await AgentClient.connect(vm.serialSocket, { timeoutMs: 30_000 });
    await client.waitReady();
    const hangups = () => vm.console().match(/serial line hung up; reopening it/g)?.length ?? 0;
    const before = hangups();
    // A session leader (exec's setsid) opening a tty without O_NOCTTY makes it its controlling terminal,
    // and its exit hangs the line up under the agent. A notification: a reply could be lost in the hang-up.
    client.notify("exec", { command: "sh", args: ["-c", `exec stty -F ${GUEST_SERIAL_LINE} -a`] });
    const deadline = Date.now() + 30_000;
    while (hangups() === before && Date.now() < deadline) await Bun.sleep(50);
    expect(hangups()).toBe(before + 1);
    client.close();
    const next = await AgentClient.connect(vm.serialSocket, { timeoutMs: 30_000 });
    await next.waitReady();
    expect(await next.call("ping", { payload: "after the hang-up" })).toEqual({ pong: true, payload: "after the hang-up" });
    next.close();
  }, 180_000);
});

describe("QGA on the guest's /dev/ttyS1", () => {
  let vm: TestVm;

  beforeAll(async () => {
    vm = await TestVm.boot({ image: await guestImage(await ensureBinary()), isaSerial: "qga" });
    await vm.waitForConsole(new RegExp(`agent started.*qga="isa-serial ${GUEST_SERIAL_LINE}"`), 90_000);
  }, 120_000);

  afterAll(async () => {
    await vm?.stop();
  });

  test("libvirt's handshake, guest-ping, guest-info and guest-get-osinfo over the serial line", async () => {
    const agent = await libvirtSync(vm.serialSocket, 1000);
    expect(await agent.send({ execute: "guest-ping" })).toEqual({ return: {} });
    const info = (await agent.send({ execute: "guest-info" })) as { return: { version: string } };
    expect(info.return.version).toBe(AGENT_VERSION);
    const osinfo = (await agent.send({ execute: "guest-get-osinfo" })) as { return: Record<string, string> };
    expect(osinfo.return.machine).toBe("x86_64");
    expect(osinfo.return["kernel-release"]).toMatch(/cloud-amd64$/);
    agent.close();
  }, 120_000);

  test("a host that drops its connection mid-request and comes back resyncs with 0xFF + guest-sync-delimited", async () => {
    for (let i = 0; i < 3; i++) {
      const cut = await Bun.connect({ unix: vm.serialSocket, socket: { data() {} } });
      cut.write(`{"execute":"guest-sync","arguments":{"id":${"9".repeat(1 + i)}`);
      cut.end();
      const agent = await libvirtSync(vm.serialSocket, 2000 + 100 * i);
      expect(await agent.send({ execute: "guest-ping", id: `after-cut-${i}` })).toEqual({ return: {}, id: `after-cut-${i}` });
      agent.close();
    }
  }, 180_000);
});
