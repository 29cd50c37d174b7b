/**
 * The agent's port appears after boot (QMP device_add, as `virsh attach-device`
 * does), disappears (device_del) and comes back: the agent waits for it
 * without crash-looping and serves it each time.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { guestImage, TestVm } from "../../scripts/vm/vm.ts";
import { AgentClient } from "../../src/client/client.ts";
import { ensureBinary } from "../helpers/agent-process.ts";

let vm: TestVm;

beforeAll(async () => {
  vm = await TestVm.boot({ image: await guestImage(await ensureBinary()), withoutAgentPort: true });
}, 120_000);

afterAll(async () => {
  await vm?.stop();
});

async function pingOverPort(payload: string): Promise<unknown> {
  const client = await AgentClient.connect(vm.agentSocket, { timeoutMs: 10_000 });
  try {
    await client.waitReady({ timeoutMs: 30_000 });
    return (await client.ping({ payload })).payload;
  } finally {
    client.close();
  }
}

test("a port missing at boot is waited for (logged once) and served once hot-plugged", async () => {
  await vm.waitForConsole(/port not present yet/, 90_000);
  await vm.waitForConsole(/agent started/);
  await vm.plugAgentPort();
  expect(await pingOverPort("plugged")).toBe("plugged");
  expect(vm.console().match(/port not present yet/g)).toHaveLength(1);
}, 120_000);

test("unplugged and plugged again, the agent reopens the port and answers", async () => {
  await vm.unplugAgentPort();
  await vm.waitForConsole(/port failed; reopening|port not present yet[\s\S]*port not present yet/, 30_000);
  await vm.plugAgentPort();
  expect(await pingOverPort("replugged")).toBe("replugged");
  await vm.unplugAgentPort();
  await vm.plugAgentPort();
  expect(await pingOverPort("twice")).toBe("twice");
  expect(vm.console()).not.toMatch(/AGENT-EXIT/);
}, 120_000);
