/**
 * get_metrics, get_users and the power methods' refusals against the COMPILED
 * agent over a unix socket. No valid shutdown or reboot is ever sent: the
 * agent under test runs on this machine and would power it off.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { AgentRpcError, type AgentClient } from "../../src/client/client.ts";
import { METHODS } from "../../src/schema/methods.ts";
import { checkConventions } from "../fixtures/exposition.ts";
import { connectClient, eventually, startAgentProcess, type AgentProcess, STOP_HOOK_TIMEOUT_MS } from "../helpers/agent-process.ts";

let agent: AgentProcess;
let client: AgentClient;

beforeAll(async () => {
  agent = await startAgentProcess();
  client = await connectClient(agent);
}, 60_000);

afterAll(async () => {
  client?.close();
  await agent?.stop();
}, STOP_HOOK_TIMEOUT_MS);

test("get_metrics (json) validates against the schema, with usage from a real window", async () => {
  await Bun.sleep(60); // Past the 50 ms minimum window since the agent's first sample.
  const first = await client.getMetrics({ format: "json" });
  expect(METHODS.get_metrics.result.parse(first)).toEqual(first);
  await Bun.sleep(60);
  const result = await client.getMetrics();
  expect(METHODS.get_metrics.result.parse(result)).toEqual(result);
  if (result.format !== "json") throw new Error("the default format is json");
  expect(result.cpu.per_cpu.length).toBeGreaterThan(0);
  expect(result.memory.total_bytes).toBeGreaterThan(0);
  expect(result.memory.used_bytes).toBe(result.memory.total_bytes - result.memory.available_bytes);
  expect(result.processes).toBeGreaterThan(1);
  expect(result.filesystems.some((f) => f.mount === "/")).toBe(true);
  expect(result.uptime_seconds).toBeGreaterThan(0);
  expect(Math.abs(result.timestamp_ms - Date.now())).toBeLessThan(60_000);
});

test("get_metrics (prometheus) is valid text exposition format", async () => {
  const result = await client.getMetrics({ format: "prometheus" });
  expect(METHODS.get_metrics.result.parse(result)).toEqual(result);
  if (result.format !== "prometheus") throw new Error("expected prometheus");
  const { samples } = checkConventions(result.text);
  expect(samples.find((s) => s.name === "kma_memory_total_bytes")?.value).toBeGreaterThan(0);
  expect(samples.some((s) => s.name === "kma_cpu_seconds_total" && s.labels.mode === "idle")).toBe(true);
});

test("get_metrics refuses an unknown format", async () => {
  const error = await client.getMetrics({ format: "xml" } as never).catch((caught: unknown) => caught);
  expect(error).toBeInstanceOf(AgentRpcError);
  expect((error as AgentRpcError).code).toBe(-32602);
  expect((error as AgentRpcError).message).toContain("format");
});

test("get_users returns a schema-valid list", async () => {
  const result = await client.getUsers();
  expect(METHODS.get_users.result.parse(result)).toEqual(result);
  expect(Array.isArray(result.users)).toBe(true);
});

test("shutdown and reboot without confirm: true are refused with -32602 naming 'confirm', and nothing runs", async () => {
  for (const method of ["shutdown", "reboot"] as const) {
    for (const params of [{}, { confirm: false }, { force: true, delay_seconds: 5 }]) {
      const error = await client[method](params as never, undefined).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(AgentRpcError);
      expect((error as AgentRpcError).code).toBe(-32602);
      expect((error as AgentRpcError).message).toContain("confirm");
    }
  }
  expect(agent.alive()).toBe(true);
  // Audited as refused calls; no power event was ever written.
  const audit = await eventually(() => {
    const text = readFileSync(agent.auditPath, "utf8");
    return text.split("\n").filter((line) => line.includes('"method":"reboot"')).length === 3 && text;
  });
  const lines = audit.trim().split("\n").map((line) => JSON.parse(line));
  const power = lines.filter((line) => line.method === "shutdown" || line.method === "reboot");
  expect(power).toHaveLength(6);
  expect(power.every((line) => line.outcome === "error" && line.code === -32602)).toBe(true);
  expect(lines.some((line) => line.event === "power")).toBe(false);
});
