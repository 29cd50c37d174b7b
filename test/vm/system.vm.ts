/**
 * Power and inventory on a real guest: shutdown powers the VM off (QEMU
 * exits), reboot restarts it and the agent answers again, metrics and users
 * come from the guest's own /proc and utmp.
 */
import { afterEach, expect, test } from "bun:test";
import { guestImage, TestVm, type BootOptions } from "../../scripts/vm/vm.ts";
import { AgentClient } from "../../src/client/client.ts";
import { METHODS } from "../../src/schema/methods.ts";
import { ensureBinary } from "../helpers/agent-process.ts";

const vms: TestVm[] = [];
afterEach(async () => {
  for (const vm of vms.splice(0)) await vm.stop();
});

async function bootReady(options: Partial<BootOptions> = {}): Promise<{ vm: TestVm; client: AgentClient }> {
  const vm = await TestVm.boot({ image: await guestImage(await ensureBinary()), ...options });
  vms.push(vm);
  const client = await AgentClient.connect(vm.agentSocket, { timeoutMs: 15_000 });
  await client.waitReady({ timeoutMs: 90_000 });
  return { vm, client };
}

test("get_metrics and get_users read the guest itself", async () => {
  const { client } = await bootReady();
  const metrics = await client.getMetrics();
  const parsed = METHODS.get_metrics.result.parse(metrics);
  if (parsed.format !== "json") throw new Error("expected JSON metrics");
  expect(parsed.cpu.per_cpu).toHaveLength(1); // the VM has one vCPU
  expect(parsed.memory.total_bytes).toBeGreaterThan(400 * 1024 * 1024);
  expect(parsed.memory.total_bytes).toBeLessThanOrEqual(512 * 1024 * 1024);
  expect(parsed.network.map((n) => n.interface)).toContain("eth0");
  expect(parsed.disks.map((d) => d.device)).toContain("vda"); // the harness's virtio disk
  const prometheus = await client.getMetrics({ format: "prometheus" });
  expect(prometheus.format === "prometheus" && prometheus.text).toContain("# TYPE kma_cpu_seconds_total counter");
  expect(await client.getUsers()).toEqual({ users: [] }); // nobody logs in to the test VM
  client.close();
}, 150_000);

test("shutdown answers first, then powers the VM off", async () => {
  const { vm, client } = await bootReady();
  const reply = await client.shutdown({ confirm: true });
  expect(reply).toMatchObject({ accepted: true, action: "poweroff", force: false });
  expect(await vm.waitForExit(60_000)).toBe(0);
  // busybox has no systemctl or shutdown: the agent fell back to poweroff, which asked init to power off.
  expect(vm.console()).toContain("poweroff requested");
  client.close();
}, 150_000);

test("shutdown without confirm is refused and the VM keeps running", async () => {
  const { vm, client } = await bootReady();
  const error = await client.call("shutdown", {} as never).catch((e) => e);
  expect(error.code).toBe(-32602);
  expect(error.message).toContain("'confirm'");
  await Bun.sleep(1_000);
  expect((await client.ping()).pong).toBe(true);
  expect(vm.console()).not.toContain("poweroff requested");
  client.close();
}, 150_000);

test("reboot restarts the guest and the agent answers again", async () => {
  const { vm, client } = await bootReady({ allowReboot: true });
  expect(await client.reboot({ confirm: true })).toMatchObject({ accepted: true, action: "reboot" });
  client.close();
  await vm.waitForConsole(/reboot requested/, 60_000);
  await vm.waitForConsole(/agent started[\s\S]*agent started/, 120_000);
  const again = await AgentClient.connect(vm.agentSocket, { timeoutMs: 15_000 });
  await again.waitReady({ timeoutMs: 60_000 });
  expect((await again.getInfo()).uptime_seconds).toBeLessThan(120);
  again.close();
}, 240_000);
