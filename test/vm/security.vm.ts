/**
 * Message authentication in a real guest, over its real virtio-serial port:
 * the guest's agent has [security] hmac_key_file, and its audit trail shows
 * the refusals.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { GUEST_HMAC_KEY, guestImage, TestVm } from "../../scripts/vm/vm.ts";
import { AgentClient } from "../../src/client/client.ts";
import { ensureBinary } from "../helpers/agent-process.ts";

const key = Buffer.from(GUEST_HMAC_KEY);
let vm: TestVm;

beforeAll(async () => {
  vm = await TestVm.boot({ image: await guestImage(await ensureBinary()), hmac: true });
  await vm.waitForConsole(/agent started/, 90_000);
}, 120_000);

afterAll(async () => {
  await vm?.stop();
});

test("signed requests are served over virtio-serial; unsigned and wrongly signed ones get -32008, and the guest's audit says so", async () => {
  const signed = await AgentClient.connect(vm.agentSocket, { timeoutMs: 30_000, hmacKey: key });
  await signed.waitReady({ timeoutMs: 60_000 });
  expect(await signed.ping({ payload: "signed in the guest" })).toEqual({ pong: true, payload: "signed in the guest" });
  signed.close();

  for (const [hmacKey, reason] of [
    [undefined, "missing"],
    [Buffer.from("a key the guest does not have, long enough"), "bad_mac"],
  ] as const) {
    const stranger = await AgentClient.connect(vm.agentSocket, { timeoutMs: 30_000, hmacKey });
    await expect(stranger.ping({}, { timeoutMs: 30_000 })).rejects.toMatchObject({ code: -32008, data: { reason } });
    stranger.close();
  }

  const again = await AgentClient.connect(vm.agentSocket, { timeoutMs: 30_000, hmacKey: key });
  await again.waitReady({ timeoutMs: 30_000 });
  const audit = await again.exec({ command: "cat", args: ["/tmp/audit.jsonl"] }, { timeoutMs: 30_000 });
  const lines = Buffer.from(audit.stdout_base64, "base64").toString().trim().split("\n").map((line) => JSON.parse(line));
  const refusals = lines.filter((line) => line.code === -32008).map((line) => [line.method, line.outcome, line.transport]);
  expect(refusals).toEqual([
    ["ping", "error", "virtio-serial"],
    ["ping", "error", "virtio-serial"],
  ]);
  again.close();
}, 180_000);
