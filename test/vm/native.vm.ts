/**
 * The agent inside a real VM, driven over QEMU's chardev socket of a real
 * virtio-serial port — the path a host uses in production.
 * Run with `npm run test:vm` (needs qemu-system-x86, linux-image-cloud-amd64, busybox-static).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { GUEST_VSOCK_PORT, guestImage, newestKernel, TestVm } from "../../scripts/vm/vm.ts";
import { AgentClient } from "../../src/client/client.ts";
import { pullFile, pushFile } from "../../src/client/transfer.ts";
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

/** The agent's resident memory, read inside the guest through exec (the child's parent is the agent). */
async function agentRssKiB(client: AgentClient): Promise<number> {
  const result = await client.exec({ command: "sh", args: ["-c", "grep VmRSS /proc/$PPID/status"] });
  const match = /VmRSS:\s+(\d+) kB/.exec(Buffer.from(result.stdout_base64, "base64").toString());
  if (!match) throw new Error(`no VmRSS in ${JSON.stringify(result)}`);
  return Number(match[1]);
}

test("exec in the guest: output (through pipes a command can reopen), exit status, and a timeout that kills the whole process group", async () => {
  const client = await connected();
  try {
    const echo = await client.exec({ command: "echo", args: ["hello", "from the guest"] });
    expect(Buffer.from(echo.stdout_base64, "base64").toString()).toBe("hello from the guest\n");
    expect(echo.exit_code).toBe(0);
    // The output pipes can be opened by path (they are pipes, not sockets); no udev here, so no /dev/stdout link.
    const reopened = await client.exec({ command: "sh", args: ["-c", "echo out > /proc/self/fd/1 && echo err > /proc/self/fd/2"] });
    expect([reopened.exit_code, Buffer.from(reopened.stdout_base64, "base64").toString(), Buffer.from(reopened.stderr_base64, "base64").toString()]).toEqual([0, "out\n", "err\n"]);
    const slow = await client.exec({ command: "sh", args: ["-c", "sleep 100 & sleep 100"], timeout_ms: 1_000 }, { timeoutMs: 30_000 });
    expect(slow).toMatchObject({ timed_out: true, exit_code: null, signal: "SIGKILL" });
    const left = await client.exec({ command: "sh", args: ["-c", "ps -o comm | grep -c '^sleep$' || true"] });
    expect(Buffer.from(left.stdout_base64, "base64").toString().trim()).toBe("0");
  } finally {
    client.close();
  }
}, 60_000);

test("a 64 MiB file pushed and pulled over virtio-serial keeps its sha256", async () => {
  const dir = mkdtempSync(join(tmpdir(), "kma-vm-files-"));
  const client = await connected();
  try {
    const data = randomBytes(64 * 1024 * 1024);
    writeFileSync(join(dir, "out.bin"), data);
    const pushed = await pushFile(client, join(dir, "out.bin"), "/tmp/big.bin");
    const pulled = await pullFile(client, "/tmp/big.bin", join(dir, "back.bin"));
    const sha = createHash("sha256").update(data).digest("hex");
    expect(pushed.sha256).toBe(sha);
    expect(pulled.sha256).toBe(sha);
    expect(createHash("sha256").update(readFileSync(join(dir, "back.bin"))).digest("hex")).toBe(sha);
    console.log(`64 MiB over virtio-serial: push ${(pushed.elapsedMs / 1000).toFixed(1)} s, pull ${(pulled.elapsedMs / 1000).toFixed(1)} s`);
  } finally {
    client.close();
    rmSync(dir, { recursive: true, force: true });
  }
}, 180_000);

test("100 connects and disconnects leave the agent answering, with no error logged and no memory growth", async () => {
  const probe = await connected();
  const rssBefore = await agentRssKiB(probe);
  probe.close();
  for (let i = 0; i < 100; i++) {
    const client = await AgentClient.connect(vm.agentSocket, { timeoutMs: 10_000 });
    await client.waitReady({ timeoutMs: 10_000 });
    expect((await client.ping({ payload: i })).payload).toBe(i);
    client.close();
  }
  const client = await connected();
  expect((await client.getInfo()).protocol_version).toBe(1);
  const rssAfter = await agentRssKiB(client);
  client.close();
  expect(vm.console()).not.toMatch(/ error /);
  // A leak per connection would show as megabytes; allow for JIT and heap growth on first use.
  expect(rssAfter - rssBefore).toBeLessThan(16 * 1024);
  console.log(`agent RSS in the guest: ${rssBefore} KiB before, ${rssAfter} KiB after 100 connections`);
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

test("vsock-listen end to end: our CLI in the guest reaches a second agent over vsock loopback", async () => {
  const client = await connected();
  try {
    const run = await client.exec({ command: "kvm-manager-agent", args: ["get_info", "--socket", `vsock:1:${GUEST_VSOCK_PORT}`, "--json"] }, { timeoutMs: 30_000 });
    expect(Buffer.from(run.stderr_base64, "base64").toString()).toBe("");
    expect(run.exit_code).toBe(0);
    const info = JSON.parse(Buffer.from(run.stdout_base64, "base64").toString());
    expect(info).toMatchObject({ hostname: "guest", protocol_version: 1 });
  } finally {
    client.close();
  }
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
