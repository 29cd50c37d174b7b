/**
 * `--transport stdio`: frames in on stdin, frames out on stdout (logs stay on
 * stderr), and the end of stdin stops the agent with exit status 0.
 */
import { afterEach, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import type { Subprocess } from "bun";
import { collectText, concatBytes, ensureBinary, frame, FrameCollector, makeTempDir, pingRequest, terminate, writeConfig } from "../helpers/agent-process.ts";

interface StdioAgent {
  proc: Subprocess<"pipe", "pipe", "pipe">;
  replies: FrameCollector;
  stderr(): string;
  write(bytes: Uint8Array): Promise<void>;
  request(message: unknown): Promise<any>;
}

const cleanups: (() => Promise<unknown>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

async function startStdioAgent(): Promise<StdioAgent> {
  const binary = await ensureBinary();
  const dir = makeTempDir();
  const config = writeConfig(dir);
  const proc = Bun.spawn([binary, "--config", config, "--transport", "stdio"], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  const replies = new FrameCollector();
  const stdoutDone = (async () => {
    for await (const chunk of proc.stdout) replies.push(chunk);
    replies.fail(new Error("stdout closed"));
  })();
  const stderr = collectText(proc.stderr);
  cleanups.push(async () => {
    await terminate(proc);
    await Promise.all([stdoutDone, stderr.ended()]);
    rmSync(dir, { recursive: true, force: true });
  });
  const write = async (bytes: Uint8Array) => {
    proc.stdin.write(bytes);
    await proc.stdin.flush();
  };
  return {
    proc,
    replies,
    stderr: stderr.text,
    write,
    async request(message) {
      await write(frame(message as object));
      return replies.next(10_000);
    },
  };
}

test("ping and get_info over stdin/stdout", async () => {
  const agent = await startStdioAgent();
  expect(await agent.request(pingRequest(1, "over stdio"))).toEqual({ jsonrpc: "2.0", id: 1, result: { pong: true, payload: "over stdio" } });
  const info = await agent.request({ jsonrpc: "2.0", id: "i", method: "get_info" });
  expect(info.result.methods).toContainEqual({ name: "ping", enabled: true });
  // Logs go to stderr, never into the frame stream on stdout.
  expect(agent.stderr()).toContain("serving on stdin/stdout");
});

test("edges over stdio: split frame, several frames at once, parse error, oversized frame", async () => {
  const agent = await startStdioAgent();
  const bytes = frame(pingRequest("split"));
  await agent.write(bytes.subarray(0, 3));
  await Bun.sleep(50);
  await agent.write(bytes.subarray(3));
  expect((await agent.replies.next()).id).toBe("split");

  await agent.write(concatBytes([frame("{oops"), frame(pingRequest("a")), frame(pingRequest("b"))]));
  expect((await agent.replies.next()).error.code).toBe(-32700);
  expect((await agent.replies.next()).id).toBe("a");
  expect((await agent.replies.next()).id).toBe("b");

  await agent.write(frame(new Uint8Array(65_537)));
  expect(await agent.replies.next()).toMatchObject({ id: null, error: { code: -32004 } });
  expect((await agent.request(pingRequest("after"))).id).toBe("after");
});

test("closing stdin makes the agent exit 0", async () => {
  const agent = await startStdioAgent();
  expect((await agent.request(pingRequest("before-eof"))).result).toEqual({ pong: true });
  await agent.proc.stdin.end();
  const code = await Promise.race([agent.proc.exited, Bun.sleep(10_000).then(() => "still running")]);
  expect(code).toBe(0);
});

test("a request right before EOF is still answered before the exit", async () => {
  const agent = await startStdioAgent();
  agent.proc.stdin.write(frame(pingRequest("last-words", "bye")));
  await agent.proc.stdin.end();
  expect(await agent.replies.next(10_000)).toEqual({ jsonrpc: "2.0", id: "last-words", result: { pong: true, payload: "bye" } });
  expect(await agent.proc.exited).toBe(0);
});
