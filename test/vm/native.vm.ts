/**
 * The agent inside a real VM, driven over QEMU's chardev socket of a real
 * virtio-serial port — the path a host uses in production.
 * Run with `npm run test:vm` (needs qemu-system-x86, linux-image-cloud-amd64, busybox-static).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { basename } from "node:path";
import { guestImage, newestKernel, TestVm } from "../../scripts/vm/vm.ts";
import { AgentClient } from "../../src/client/client.ts";
import { encodeFrame } from "../../src/protocol/framing.ts";
import { METHODS } from "../../src/schema/methods.ts";
import { ensureBinary } from "../helpers/agent-process.ts";

let vm: TestVm;

beforeAll(async () => {
  vm = await TestVm.boot({ image: await guestImage(await ensureBinary()) });
  // The agent starts long before any host connects: wait for its own words, not a sleep.
  await vm.waitForConsole(/agent started/, 90_000);
}, 120_000);

afterAll(async () => {
  await vm?.stop();
});

async function connected(): Promise<AgentClient> {
  const client = await AgentClient.connect(vm.agentSocket, { timeoutMs: 10_000 });
  await client.waitReady({ timeoutMs: 30_000 });
  return client;
}

test("a host that connects after the agent started is served: ping and get_info over virtio-serial", async () => {
  const client = await connected();
  try {
    expect(await client.ping({ payload: { from: "host" } })).toEqual({ pong: true, payload: { from: "host" } });
    const info = await client.getInfo();
    expect(METHODS.get_info.result.parse(info)).toEqual(info);
    expect(info.hostname).toBe("guest");
    expect(info.kernel_release).toBe(basename(newestKernel()).replace(/^vmlinuz-/, ""));
    expect(info.methods).toContainEqual({ name: "ping", enabled: true });
  } finally {
    client.close();
  }
}, 60_000);

test("100 connects and disconnects leave the agent answering, with no error logged", async () => {
  for (let i = 0; i < 100; i++) {
    const client = await AgentClient.connect(vm.agentSocket, { timeoutMs: 10_000 });
    await client.waitReady({ timeoutMs: 10_000 });
    expect((await client.ping({ payload: i })).payload).toBe(i);
    client.close();
  }
  const client = await connected();
  expect((await client.getInfo()).protocol_version).toBe(1);
  client.close();
  expect(vm.console()).not.toMatch(/ error /);
}, 120_000);

test("a host that closes in the middle of a frame and reconnects at once gets the next call answered", async () => {
  for (let i = 0; i < 20; i++) {
    const cut = await Bun.connect({ unix: vm.agentSocket, socket: { data() {} } });
    const frame = encodeFrame(JSON.stringify({ jsonrpc: "2.0", id: "cut", method: "ping", params: { payload: "x".repeat(300) } }));
    cut.write(frame.subarray(0, 5 + ((i * 53) % 300)));
    cut.end();
    const client = await connected();
    expect((await client.ping({ payload: `after cut ${i}` })).payload).toBe(`after cut ${i}`);
    client.close();
  }
}, 120_000);

test("two hosts one after the other never see each other's replies", async () => {
  const first = await connected();
  const slow = first.ping({ payload: "first host" });
  first.close();
  await slow.catch(() => {});
  const second = await connected();
  expect(await second.ping({ payload: "second host" })).toEqual({ pong: true, payload: "second host" });
  second.close();
}, 60_000);

test("Debian's qemu-ga runs beside it in the same VM (the benchmark baseline)", async () => {
  let reply = "";
  const socket = await Bun.connect({
    unix: vm.qgaSocket,
    socket: {
      data(_, chunk) {
        reply += chunk.toString();
      },
    },
  });
  const deadline = Date.now() + 30_000;
  while (!reply.includes('"return"') && Date.now() < deadline) {
    socket.write('{"execute":"guest-ping"}\n');
    await Bun.sleep(500);
  }
  socket.end();
  expect(reply).toContain('{"return": {}}');
}, 60_000);
