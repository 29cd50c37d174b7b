/**
 * The host verbs of the same compiled binary (`kvm-manager-agent ping --socket S`,
 * `call METHOD ...`) against a running agent on unix-listen, and their exit codes:
 * 0 success, 1 agent error, 2 usage error, 3 agent unreachable.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { METHODS } from "../../src/schema/methods.ts";
import { runBinary, startAgentProcess, type AgentProcess, STOP_HOOK_TIMEOUT_MS } from "../helpers/agent-process.ts";

let agent: AgentProcess;

beforeAll(async () => {
  agent = await startAgentProcess();
});

afterAll(async () => {
  await agent?.stop();
}, STOP_HOOK_TIMEOUT_MS);

test("ping --socket S", async () => {
  const result = await runBinary(["ping", "--socket", agent.socketPath]);
  expect(result.stderr).toBe("");
  expect(result.exitCode).toBe(0);
  expect(result.stdout).toContain("pong: true");
});

test("ping with a payload and --json echoes it", async () => {
  const result = await runBinary(["ping", '{"payload":{"a":[1,2]}}', "--socket", agent.socketPath, "--json"]);
  expect(result.exitCode).toBe(0);
  expect(JSON.parse(result.stdout)).toEqual({ pong: true, payload: { a: [1, 2] } });
});

test("get_info --socket S --json prints a result that matches the schema", async () => {
  const result = await runBinary(["get_info", "--socket", agent.socketPath, "--json"]);
  expect(result.exitCode).toBe(0);
  const parsed = METHODS.get_info.result.safeParse(JSON.parse(result.stdout));
  if (!parsed.success) throw new Error(parsed.error.message);
  expect(parsed.data.methods).toContainEqual({ name: "ping", enabled: true });
  expect(parsed.data.methods).toContainEqual({ name: "get_info", enabled: true });
});

test("call get-info --socket S (kebab-case) renders for humans", async () => {
  const result = await runBinary(["call", "get-info", "--socket", agent.socketPath]);
  expect(result.exitCode).toBe(0);
  expect(result.stdout).toContain("os_type: linux");
  expect(result.stdout).toContain("protocol_version: 1");
  expect(result.stdout).toMatch(/methods:\n\s+- name: ping/);
});

test("--wait waits for the agent and then calls", async () => {
  const result = await runBinary(["call", "ping", "--socket", agent.socketPath, "--wait", "5000", "--json"]);
  expect(result.exitCode).toBe(0);
  expect(JSON.parse(result.stdout)).toEqual({ pong: true });
});

test("an agent error (invalid params) exits 1 with the message", async () => {
  const result = await runBinary(["call", "ping", '{"bogus":1}', "--socket", agent.socketPath]);
  expect(result.exitCode).toBe(1);
  expect(result.stderr).toContain("-32602");
  expect(result.stderr).toContain("bogus");
  expect(result.stdout).toBe("");
});

test("usage errors exit 2: unknown method, bad PARAMS_JSON, missing --socket, unknown flag", async () => {
  const cases: [string[], string][] = [
    [["call", "no_such_method", "--socket", agent.socketPath], "no_such_method"],
    [["call", "--socket", agent.socketPath], "METHOD"],
    [["ping", "{not json", "--socket", agent.socketPath], "PARAMS_JSON"],
    [["ping", "[1]", "--socket", agent.socketPath], "PARAMS_JSON"],
    [["ping"], "--socket"],
    [["ping", "--socket", agent.socketPath, "--timeout", "-5"], "--timeout"],
    [["ping", "--socket", agent.socketPath, "--frobnicate"], "frobnicate"],
    [["frobnicate"], "frobnicate"],
  ];
  for (const [args, mention] of cases) {
    const result = await runBinary(args);
    expect({ args, exitCode: result.exitCode }).toEqual({ args, exitCode: 2 });
    expect(result.stderr).toContain(mention);
  }
});

test("a socket that does not exist exits 3", async () => {
  const missing = join(agent.dir, "no-such.sock");
  const result = await runBinary(["ping", "--socket", missing]);
  expect(result.exitCode).toBe(3);
  expect(result.stderr).toContain(missing);
});

test("methods lists every method", async () => {
  const result = await runBinary(["methods"]);
  expect(result.exitCode).toBe(0);
  for (const name of Object.keys(METHODS)) expect(result.stdout).toContain(name);
});
