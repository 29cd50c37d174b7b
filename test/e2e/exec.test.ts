/**
 * exec against the COMPILED agent over a unix socket: off by default, then an
 * agent with enable_exec and a small allowlist, driven through AgentClient.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { AgentClient, AgentRpcError } from "../../src/client/client.ts";
import type { NotificationParams } from "../../src/schema/methods.ts";
import { resultFitBytes } from "../../src/exec/output.ts";

/** max_frame_bytes of the exec agent: small, so that results overflow it. */
const FRAME_BYTES = 65_536;
import { connectClient, eventually, processGone, startAgentProcess, type AgentProcess, STOP_HOOK_TIMEOUT_MS } from "../helpers/agent-process.ts";

const FORBIDDEN = -32001;
const NOT_FOUND = -32002;

const EXEC_TOML = [
  "exec_timeout_ms = 20000",
  "",
  "[security]",
  "enable_exec = true",
  'allowed_commands = ["echo", "true", "false", "sh", "sleep", "cat", "not-a-command-kma"]',
].join("\n");

let disabledAgent: AgentProcess;
let agent: AgentProcess;
const clients: AgentClient[] = [];
const strays: number[] = [];

async function client(target: AgentProcess = agent): Promise<AgentClient> {
  const c = await connectClient(target, 30_000);
  clients.push(c);
  return c;
}

async function rpcError(promise: Promise<unknown>): Promise<AgentRpcError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof AgentRpcError) return error;
    throw error;
  }
  throw new Error("expected an AgentRpcError");
}

const text = (b64: string) => Buffer.from(b64, "base64").toString("utf8");


beforeAll(async () => {
  [disabledAgent, agent] = await Promise.all([startAgentProcess(), startAgentProcess({ extraToml: EXEC_TOML, maxFrameBytes: FRAME_BYTES })]);
}, 120_000);

afterAll(async () => {
  for (const c of clients) c.close();
  for (const pid of strays) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Gone.
    }
  }
  const codes = await Promise.all([disabledAgent?.stop(), agent?.stop()]);
  expect(codes).toEqual([0, 0]);
}, STOP_HOOK_TIMEOUT_MS);

describe("exec disabled (the default)", () => {
  test("every exec method answers -32001", async () => {
    const c = await client(disabledAgent);
    const errors = await Promise.all(
      [
        c.exec({ command: "true" }, {}),
        c.execStart({ command: "true" }, {}),
        c.execStatus({ handle: "x" }, {}),
        c.execKill({ handle: "x" }, {}),
      ].map(rpcError),
    );
    for (const error of errors) {
      expect(error.code).toBe(FORBIDDEN);
      expect(error.message).toContain("disabled");
    }
    expect(disabledAgent.alive()).toBe(true);
  });
});

describe("exec enabled", () => {
  test("the allowlist entry that resolves to nothing was logged at start-up", () => {
    expect(agent.stderr()).toContain("not-a-command-kma");
  });

  test("echo, true, false", async () => {
    const c = await client();
    const echo = await c.exec({ command: "echo", args: ["hello", "from the guest"] }, {});
    expect(echo).toMatchObject({ exit_code: 0, signal: null, stdout_truncated: false, timed_out: false });
    expect(text(echo.stdout_base64)).toBe("hello from the guest\n");
    expect((await c.exec({ command: "true" }, {})).exit_code).toBe(0);
    expect((await c.exec({ command: "/bin/false" }, {})).exit_code).toBe(1);
  });

  test("/dev/stdout and /dev/stderr can be opened by the command, as under qemu-ga (kernel pipes, not sockets)", async () => {
    const c = await client();
    const result = await c.exec({ command: "sh", args: ["-c", "echo out > /dev/stdout && echo err | cat > /dev/stderr"] }, {});
    expect([result.exit_code, text(result.stdout_base64), text(result.stderr_base64)]).toEqual([0, "out\n", "err\n"]);
  });

  test("stdin, env and cwd reach the command", async () => {
    const c = await client();
    const cat = await c.exec({ command: "cat", stdin_base64: Buffer.from("piped in").toString("base64") }, {});
    expect(text(cat.stdout_base64)).toBe("piped in");
    const sh = await c.exec({ command: "sh", args: ["-c", 'echo "$GREETING:$(pwd):$PATH"'], env: { GREETING: "hi" }, cwd: "/tmp" }, {});
    expect(text(sh.stdout_base64)).toBe("hi:/tmp:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
  });

  test("policy refusals come back as -32001 naming the command or variable", async () => {
    const c = await client();
    const notAllowed = await rpcError(c.exec({ command: "id" }, {}));
    expect(notAllowed.code).toBe(FORBIDDEN);
    expect(notAllowed.message).toContain("'id'");
    expect((await rpcError(c.exec({ command: "./echo" }, {}))).code).toBe(FORBIDDEN);
    const loader = await rpcError(c.exec({ command: "true", env: { LD_PRELOAD: "/tmp/evil.so" } }, {}));
    expect(loader.code).toBe(FORBIDDEN);
    expect(loader.message).toContain("LD_PRELOAD");
    expect((await rpcError(c.exec({ command: "true", cwd: "/no/such/dir" }, {}))).code).toBe(NOT_FOUND);
  });

  test("the timeout kills the whole process group, grandchildren included", async () => {
    const c = await client();
    const started = Date.now();
    const result = await c.exec({ command: "sh", args: ["-c", "sleep 100 & echo $!; sleep 100"], timeout_ms: 500 }, {});
    expect(Date.now() - started).toBeLessThan(20_000);
    expect(result).toMatchObject({ timed_out: true, signal: "SIGKILL", exit_code: null });
    const grandchild = Number(text(result.stdout_base64).trim());
    expect(grandchild).toBeGreaterThan(1);
    strays.push(grandchild);
    await eventually(() => processGone(grandchild), 10_000);
  });

  /** Collects this client's notifications for one handle. */
  function collect(c: AgentClient) {
    const outputs: NotificationParams<"exec_output">[] = [];
    const exits: NotificationParams<"exec_exit">[] = [];
    c.onNotification("exec_output", (params) => outputs.push(params));
    c.onNotification("exec_exit", (params) => exits.push(params));
    return {
      outputs: (handle: string) => outputs.filter((o) => o.handle === handle),
      exits: (handle: string) => exits.filter((e) => e.handle === handle),
      joined: (handle: string, stream: "stdout" | "stderr") =>
        Buffer.concat(outputs.filter((o) => o.handle === handle && o.stream === stream).map((o) => Buffer.from(o.data_base64, "base64"))),
    };
  }

  test("streaming: exec_output chunks in order up to the cap, then exec_exit; exec_status agrees", async () => {
    const c = await client();
    const seen = collect(c);
    const script = "for i in 1 2 3; do echo line$i; echo warn$i >&2; sleep 0.05; done; head -c 200000 /dev/zero";
    const { handle, pid } = await c.execStart({ command: "sh", args: ["-c", script], stream: true, max_output_bytes: 40_000 }, {});
    expect(pid).toBeGreaterThan(1);
    const status = await c.execStatus({ handle, wait_ms: 30_000 }, { timeoutMs: 40_000 });
    expect(status.running).toBe(false);
    await eventually(() => seen.exits(handle).length === 1, 10_000);
    const mine = seen.outputs(handle);
    expect(mine.map((o) => o.seq)).toEqual(mine.map((_, i) => i));
    expect(seen.joined(handle, "stderr").toString()).toBe("warn1\nwarn2\nwarn3\n");
    const stdout = seen.joined(handle, "stdout");
    expect(stdout.subarray(0, 18).toString()).toBe("line1\nline2\nline3\n");
    // Nothing is pushed past the cap; the result says the output was truncated.
    expect(stdout.length).toBe(40_000);
    expect(status.result).toMatchObject({ exit_code: 0, stdout_truncated: true, stderr_truncated: false });
    // The result keeps what fits one reply frame of this agent (64 KiB frames: 23,040 bytes per stream).
    expect(status.result!.stdout_base64).toBe(stdout.subarray(0, resultFitBytes(FRAME_BYTES)).toString("base64"));
    expect(seen.exits(handle)).toEqual([{ handle, result: status.result! }]);
  });

  test("streaming more than a frame holds: every byte is streamed in pieces; the result keeps what fits one frame", async () => {
    const c = await client();
    const seen = collect(c);
    const { handle } = await c.execStart({ command: "sh", args: ["-c", "head -c 300000 /dev/zero; echo end"], stream: true }, {});
    await eventually(() => seen.exits(handle).length === 1, 30_000);
    expect(seen.joined(handle, "stdout").length).toBe(300_004);
    expect(seen.outputs(handle).length).toBeGreaterThan(6); // 48 KiB pieces at most
    const [exit] = seen.exits(handle);
    const kept = seen.joined(handle, "stdout").subarray(0, resultFitBytes(FRAME_BYTES)).toString("base64");
    expect(exit!.result).toMatchObject({ exit_code: 0, stdout_base64: kept, stdout_truncated: true, timed_out: false });
    // exec_status answers too (it used to overflow a 64 KiB frame and fail with -32004).
    expect((await c.execStatus({ handle })).result).toEqual(exit!.result);
  });

  test("exec_start, long-poll exec_status, exec_kill", async () => {
    const c = await client();
    const { handle, pid } = await c.execStart({ command: "sleep", args: ["60"] }, {});
    strays.push(pid);
    expect(await c.execStatus({ handle }, {})).toEqual({ handle, pid, running: true, result: null });
    expect(await c.execKill({ handle, signal: "SIGTERM" }, {})).toEqual({ handle, signal: "SIGTERM", running: true });
    const done = await c.execStatus({ handle, wait_ms: 20_000 }, { timeoutMs: 30_000 });
    expect(done.running).toBe(false);
    expect(done.result).toMatchObject({ exit_code: null, signal: "SIGTERM", timed_out: false });
    expect((await rpcError(c.execStatus({ handle: "00000000-0000-4000-8000-000000000000" }, {}))).code).toBe(NOT_FOUND);
  });

  test("a host that disconnects during a streamed run breaks nothing", async () => {
    const first = await client();
    first.onNotification("exec_output", () => {});
    const { handle } = await first.execStart({ command: "sh", args: ["-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick$i; sleep 0.05; done"], stream: true }, {});
    first.close();
    const second = await client();
    const status = await second.execStatus({ handle, wait_ms: 20_000 }, { timeoutMs: 30_000 });
    expect(status.running).toBe(false);
    expect(text(status.result!.stdout_base64)).toBe(Array.from({ length: 10 }, (_, i) => `tick${i + 1}\n`).join(""));
    expect(await second.ping()).toMatchObject({ pong: true });
    expect(agent.alive()).toBe(true);
  });
});
