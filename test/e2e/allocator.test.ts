/**
 * The compiled agent starts itself again with mimalloc's purge delay set
 * (src/runtime/allocator.ts): same pid, same arguments, the variable in the
 * environment it runs with, and an operator's own value left alone. A
 * one-shot host command starts once.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { AGENT_PURGE_DELAY_MS, PURGE_DELAY_VARIABLE, RESTARTED_VARIABLE } from "../../src/runtime/allocator.ts";
import { BINARY, connectClient, ensureBinary, eventually, makeTempDir, runBinary, startAgentProcess, writeConfig, STOP_HOOK_TIMEOUT_MS, type AgentProcess } from "../helpers/agent-process.ts";

const agents: AgentProcess[] = [];
const dirs: string[] = [];

afterAll(async () => {
  await Promise.all(agents.map((agent) => agent.stop()));
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}, STOP_HOOK_TIMEOUT_MS);

function environOf(pid: number): Map<string, string> {
  const entries = readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").filter(Boolean);
  return new Map(entries.map((entry) => [entry.slice(0, entry.indexOf("=")), entry.slice(entry.indexOf("=") + 1)]));
}

describe("allocator purge delay", () => {
  test("the agent runs with the delay set, as the pid it was started as, and answers", async () => {
    const agent = await startAgentProcess();
    agents.push(agent);
    const environ = environOf(agent.pid);
    expect(environ.get(PURGE_DELAY_VARIABLE)).toBe(AGENT_PURGE_DELAY_MS);
    expect(environ.get(RESTARTED_VARIABLE)).toBe(AGENT_PURGE_DELAY_MS);
    const client = await connectClient(agent);
    try {
      expect(await client.ping()).toMatchObject({ pong: true });
    } finally {
      client.close();
    }
  });

  test("an operator's MIMALLOC_PURGE_DELAY is kept, with no restart", async () => {
    const agent = await startAgentProcess({ env: { [PURGE_DELAY_VARIABLE]: "250" } });
    agents.push(agent);
    const environ = environOf(agent.pid);
    expect(environ.get(PURGE_DELAY_VARIABLE)).toBe("250");
    expect(environ.has(RESTARTED_VARIABLE)).toBe(false);
  });

  test("a one-shot host command runs as it was started, without the delay", async () => {
    await ensureBinary();
    const dir = makeTempDir();
    dirs.push(dir);
    const path = join(dir, "silent.sock");
    let connected = false;
    // Accepts and never answers, so the command is still waiting when its environment is read.
    const silent = Bun.listen({ unix: path, socket: { open: () => void (connected = true), data: () => {} } });
    const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => name !== PURGE_DELAY_VARIABLE && name !== RESTARTED_VARIABLE));
    const command = Bun.spawn([BINARY, "ping", "--socket", path, "--timeout", "20000"], { env, stdout: "ignore", stderr: "ignore" });
    try {
      await eventually(() => connected || null, 10_000);
      const environ = environOf(command.pid);
      expect(environ.has(PURGE_DELAY_VARIABLE)).toBe(false);
      expect(environ.has(RESTARTED_VARIABLE)).toBe(false);
    } finally {
      command.kill();
      await command.exited;
      silent.stop(true);
    }
  });

  test("arguments with spaces and UTF-8 reach the restarted process byte for byte", async () => {
    const dir = join(makeTempDir(), "dir with spaces é ü");
    dirs.push(dir);
    mkdirSync(dir);
    const config = writeConfig(dir, { maxFrameBytes: 123_456 });
    const { exitCode, stdout, stderr } = await runBinary(["--config", config, "--print-config"]);
    expect(stderr).toBe("");
    expect(exitCode).toBe(0);
    expect(stdout).toContain("max_frame_bytes = 123456");
  });
});
