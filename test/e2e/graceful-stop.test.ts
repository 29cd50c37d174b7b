/**
 * SIGTERM: calls already running finish and answer, new ones are refused with
 * -32009 meanwhile, the audit log is flushed, and the agent exits 0 — or, past
 * [limits] stop_grace_seconds, stops anyway.
 */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { connectClient, eventually, processGone, startAgentProcess } from "../helpers/agent-process.ts";

const EXEC = `[security]\nenable_exec = true\nallowed_commands = ["sleep"]\n`;

test("a running call finishes and answers after SIGTERM; a new one is refused; the audit has both", async () => {
  const agent = await startAgentProcess({ extraToml: EXEC });
  try {
    const running = await connectClient(agent);
    const late = await connectClient(agent);
    const sleeping = running.exec({ command: "sleep", args: ["1"] }, { timeoutMs: 10_000 });
    await Bun.sleep(200);
    agent.proc.kill("SIGTERM");
    await eventually(() => agent.stderr().includes("stopping"), 5_000, 10);
    const refused = late.ping({});
    await expect(refused).rejects.toMatchObject({ code: -32009 });
    expect((await sleeping).exit_code).toBe(0);
    expect(await agent.proc.exited).toBe(0);
    const audit = readFileSync(agent.auditPath, "utf8").trim().split("\n").map((line) => JSON.parse(line));
    expect(audit.find((line) => line.method === "exec")).toMatchObject({ outcome: "ok" });
    expect(audit.find((line) => line.code === -32009)).toMatchObject({ method: "ping", outcome: "error" });
  } finally {
    await agent.stop();
  }
}, 30_000);

test("a command started with exec_start (not a running call) does not hold the stop, and dies with the agent", async () => {
  const agent = await startAgentProcess({ extraToml: `stop_grace_seconds = 1\n${EXEC}` });
  try {
    const client = await connectClient(agent);
    const started = await client.execStart({ command: "sleep", args: ["30"] });
    agent.proc.kill("SIGTERM");
    const t0 = performance.now();
    expect(await agent.proc.exited).toBe(0);
    expect(performance.now() - t0).toBeLessThan(5_000);
    await eventually(() => processGone(started.pid), 5_000);
    client.close();
  } finally {
    await agent.stop();
  }
}, 30_000);

test("a call longer than stop_grace_seconds does not hold the stop", async () => {
  const agent = await startAgentProcess({ extraToml: `stop_grace_seconds = 1\n${EXEC}` });
  try {
    const client = await connectClient(agent);
    const long = client.exec({ command: "sleep", args: ["30"] }, { timeoutMs: 60_000 }).then(
      () => "answered",
      (error: Error) => error.message,
    );
    await Bun.sleep(200);
    const t0 = performance.now();
    agent.proc.kill("SIGTERM");
    expect(await agent.proc.exited).toBe(0);
    expect(performance.now() - t0).toBeLessThan(10_000);
    expect(await long).toBe("connection to the agent closed");
    expect(agent.stderr()).toContain("grace period is over");
  } finally {
    await agent.stop();
  }
}, 30_000);
