import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startAgent, type RunningAgent } from "../src/agent.ts";
import { AgentClient, AgentConnectionError, AgentRpcError, AgentTimeoutError } from "../src/client/client.ts";
import { pullFile } from "../src/client/transfer.ts";
import { defaultConfig } from "../src/config/schema.ts";
import { silentLogger } from "../src/log/logger.ts";
import { encodeFrame, FrameDecoder, SYNC_MARKER } from "../src/protocol/framing.ts";

const dir = mkdtempSync(join(tmpdir(), "kma-client-"));
const socket = join(dir, "agent.sock");
let agent: RunningAgent;

beforeAll(async () => {
  const config = defaultConfig();
  config.transport = { ...config.transport, type: "unix-listen", path: socket };
  config.logging.audit_file = "";
  agent = await startAgent(config, silentLogger);
});
afterAll(() => agent.stop("test done"));

/** A fake agent: answers each request with whatever `reply` returns (undefined = stay silent). */
function fakeAgent(reply: (request: { id: number; method: string }, count: number) => unknown) {
  const path = join(dir, `fake-${Math.random().toString(36).slice(2)}.sock`);
  let count = 0;
  let last: { write(b: Uint8Array): void } | undefined;
  const listener = Bun.listen<{ decoder: FrameDecoder }>({
    unix: path,
    socket: {
      open(s) {
        last = s;
        s.data = {
          decoder: new FrameDecoder(
            {
              onFrame(payload) {
                const answer = reply(JSON.parse(new TextDecoder().decode(payload)), ++count);
                if (answer !== undefined) s.write(encodeFrame(JSON.stringify(answer)));
              },
              onOversizedFrame() {},
              onSync: () => s.write(SYNC_MARKER),
            },
            1 << 20,
          ),
        };
      },
      data(s, chunk) {
        s.data.decoder.push(chunk);
      },
    },
  });
  return { path, stop: () => listener.stop(true), lastSocket: () => last };
}

describe("typed calls against a real agent", () => {
  test("one method per RPC, typed from the schemas", async () => {
    const client = await AgentClient.connect(socket);
    try {
      const pong = await client.ping({ payload: [1, { a: "b" }] });
      expect(pong).toEqual({ pong: true, payload: [1, { a: "b" }] });
      const info = await client.getInfo();
      expect(info.methods).toContainEqual({ name: "get_info", enabled: true });
      expect(typeof info.uptime_seconds).toBe("number");
    } finally {
      client.close();
    }
  });

  test("agent errors carry the JSON-RPC code, message and data", async () => {
    const client = await AgentClient.connect(socket);
    try {
      const error = await client.call("get_info", { verbose: true } as never).catch((e) => e);
      expect(error).toBeInstanceOf(AgentRpcError);
      expect(error.code).toBe(-32602);
      expect(error.method).toBe("get_info");
      expect(error.message).toContain("'verbose': unknown field");
      expect(error.data.issues[0].path).toBe("verbose");
    } finally {
      client.close();
    }
  });

  test("concurrent calls are matched to their replies by id", async () => {
    const client = await AgentClient.connect(socket);
    try {
      const results = await Promise.all(Array.from({ length: 200 }, (_, i) => client.ping({ payload: i })));
      expect(results.map((r) => r.payload)).toEqual(Array.from({ length: 200 }, (_, i) => i));
    } finally {
      client.close();
    }
  });

  test("a request frame above the agent's max_frame_bytes fails at once with -32004, not by timeout", async () => {
    const client = await AgentClient.connect(socket, { timeoutMs: 20_000 });
    try {
      const started = performance.now();
      const error = await client.ping({ payload: "x".repeat(17 * 1024 * 1024) }).catch((e) => e);
      expect(error).toBeInstanceOf(AgentRpcError);
      expect(error.code).toBe(-32004);
      expect(performance.now() - started).toBeLessThan(15_000);
      expect(await client.ping({ payload: "still in sync" })).toEqual({ pong: true, payload: "still in sync" });
    } finally {
      client.close();
    }
  });

  test("waitReady resolves at once on a live agent", async () => {
    const client = await AgentClient.connect(socket);
    await client.waitReady({ timeoutMs: 5000 });
    client.close();
  });
});

describe("failures the host must be told about", () => {
  test("a socket that does not exist is a connection error naming the path", async () => {
    const error = await AgentClient.connect(join(dir, "nope.sock")).catch((e) => e);
    expect(error).toBeInstanceOf(AgentConnectionError);
    expect(error.message).toContain("nope.sock");
  });

  test("a slow agent times the call out; its late reply does not answer the next call", async () => {
    const fake = fakeAgent((request) => {
      const params = (request as unknown as { params: { payload: string } }).params;
      // The first reply arrives after its caller gave up, while the second call waits.
      setTimeout(() => fakeReply(request.id, params.payload), request.id === 1 ? 200 : 250);
      return undefined;
    });
    let fakeReply: (id: number, payload: string) => void = () => {};
    const client = await AgentClient.connect(fake.path);
    try {
      const sockets: { write(b: Uint8Array): void }[] = [];
      fakeReply = (id, payload) => sockets[0]?.write(encodeFrame(JSON.stringify({ jsonrpc: "2.0", id, result: { pong: true, payload } })));
      sockets.push(fake.lastSocket()!);
      const error = await client.ping({ payload: "first" }, { timeoutMs: 100 }).catch((e) => e);
      expect(error).toBeInstanceOf(AgentTimeoutError);
      expect(error.message).toBe("ping: no answer from the agent within 100 ms");
      expect(await client.ping({ payload: "second" }, { timeoutMs: 2000 })).toEqual({ pong: true, payload: "second" });
    } finally {
      client.close();
      fake.stop();
    }
  });

  test("waitReady keeps pinging until the guest answers (the VM is still booting)", async () => {
    const fake = fakeAgent((request, count) => (count >= 3 ? { jsonrpc: "2.0", id: request.id, result: { pong: true } } : undefined));
    const client = await AgentClient.connect(fake.path);
    try {
      await client.waitReady({ timeoutMs: 5000, attemptMs: 50 });
      expect(await client.ping()).toEqual({ pong: true });
    } finally {
      client.close();
      fake.stop();
    }
  });

  test("waitReady gives up with a timeout error", async () => {
    const fake = fakeAgent(() => undefined);
    const client = await AgentClient.connect(fake.path);
    try {
      await expect(client.waitReady({ timeoutMs: 200, attemptMs: 50 })).rejects.toBeInstanceOf(AgentTimeoutError);
    } finally {
      client.close();
      fake.stop();
    }
  });

  test("pull refuses a chunk whose base64 is broken or whose bytes do not match its sha256, and leaves no file behind", async () => {
    const good = Buffer.from("the chunk the guest sent");
    const sha = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");
    const chunk = (content_base64: string, sha256 = sha(good)) => ({ content_base64, bytes: good.length, sha256, size: good.length, eof: true });
    const cases = [
      chunk(good.toString("base64")),
      chunk(`${good.toString("base64").slice(0, -4)}!!!!`),
      chunk(` ${good.toString("base64").slice(1)}`),
      chunk(good.toString("base64"), sha(Buffer.from("something else"))),
    ];
    for (const [i, result] of cases.entries()) {
      const fake = fakeAgent((request) => ({ jsonrpc: "2.0", id: request.id, result }));
      const client = await AgentClient.connect(fake.path);
      const local = join(dir, `pulled-${i}.bin`);
      try {
        const pulling = pullFile(client, "/tmp/x", local);
        if (i === 0) {
          expect((await pulling).sha256).toBe(sha(good));
          expect(readFileSync(local).equals(good)).toBe(true);
        } else {
          await expect(pulling).rejects.toThrow("chunk at offset 0 of /tmp/x arrived corrupted");
          expect(existsSync(local)).toBe(false);
        }
        expect(readdirSync(dir).filter((name) => name.endsWith(".part"))).toEqual([]);
      } finally {
        client.close();
        fake.stop();
      }
    }
  });

  test("a reply that does not match the result schema is refused", async () => {
    const fake = fakeAgent((request) => ({ jsonrpc: "2.0", id: request.id, result: { pong: "yes" } }));
    const client = await AgentClient.connect(fake.path);
    try {
      const error = await client.ping().catch((e) => e);
      expect(error).toBeInstanceOf(AgentConnectionError);
      expect(error.message).toContain("'pong'");
    } finally {
      client.close();
      fake.stop();
    }
  });

  test("before the echo, a stale reply's tail and an echo arriving a byte at a time (a serial line) are skipped", async () => {
    const path = join(dir, "serial-line.sock");
    const listener = Bun.listen<{ decoder: FrameDecoder }>({
      unix: path,
      socket: {
        open(s) {
          s.data = {
            decoder: new FrameDecoder(
              {
                onFrame(payload) {
                  const request = JSON.parse(new TextDecoder().decode(payload));
                  s.write(encodeFrame(JSON.stringify({ jsonrpc: "2.0", id: request.id, result: { pong: true } })));
                },
                onOversizedFrame() {},
                onSync: async () => {
                  s.write(new TextEncoder().encode("ZZZZ")); // reads as a header of 0x5A5A5A5A bytes, above the client's 1 GiB
                  for (const byte of SYNC_MARKER) {
                    await Bun.sleep(10);
                    s.write(Uint8Array.of(byte));
                  }
                },
              },
              1 << 20,
            ),
          };
        },
        data(s, chunk) {
          s.data.decoder.push(chunk);
        },
      },
    });
    const client = await AgentClient.connect(path);
    try {
      await client.waitReady({ timeoutMs: 5000, attemptMs: 1000 });
      expect(await client.ping()).toEqual({ pong: true });
    } finally {
      client.close();
      listener.stop(true);
    }
  });

  test("pending calls fail when the agent closes the connection", async () => {
    const path = join(dir, "closing.sock");
    const listener = Bun.listen({ unix: path, socket: { data(s) { s.end(); } } });
    const client = await AgentClient.connect(path);
    try {
      const error = await client.ping({}, { timeoutMs: 5000 }).catch((e) => e);
      expect(error).toBeInstanceOf(AgentConnectionError);
      await expect(client.ping()).rejects.toBeInstanceOf(AgentConnectionError);
    } finally {
      client.close();
      listener.stop(true);
    }
  });
});
