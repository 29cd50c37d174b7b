/**
 * The compiled agent on `--transport unix-listen`: every JSON-RPC and framing
 * edge as it looks on the wire, the audit file, and the agent's own command line.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parse as parseToml } from "smol-toml";
import { METHODS } from "../../src/schema/methods.ts";
import {
  concatBytes,
  connectClient,
  eventually,
  frame,
  makeTempDir,
  pingRequest,
  RawConnection,
  runBinary,
  startAgentProcess,
  writeConfig,
  type AgentProcess,
  STOP_HOOK_TIMEOUT_MS,
} from "../helpers/agent-process.ts";

const MAX_FRAME = 65_536;

let agent: AgentProcess;
const connections: RawConnection[] = [];
const scratchDirs: string[] = [];

function scratchDir(): string {
  const dir = makeTempDir();
  scratchDirs.push(dir);
  return dir;
}

async function raw(): Promise<RawConnection> {
  const connection = await RawConnection.connect(agent.socketPath);
  connections.push(connection);
  return connection;
}

/** After an edge case: the same connection still answers a ping correctly (the stream is in sync). */
async function expectInSync(connection: RawConnection, id: string | number = "sync"): Promise<void> {
  expect(await connection.request(pingRequest(id, "still here"))).toEqual({ jsonrpc: "2.0", id, result: { pong: true, payload: "still here" } });
}

beforeAll(async () => {
  agent = await startAgentProcess({ maxFrameBytes: MAX_FRAME });
});

afterAll(async () => {
  for (const connection of connections) connection.close();
  for (const dir of scratchDirs) rmSync(dir, { recursive: true, force: true });
  const code = await agent?.stop();
  // SIGTERM is a clean shutdown.
  expect(code).toBe(0);
}, STOP_HOOK_TIMEOUT_MS);

describe("methods", () => {
  test("ping without and with a payload (typed client)", async () => {
    const client = await connectClient(agent);
    try {
      expect(await client.ping()).toEqual({ pong: true });
      const payload = { nested: [1, "two", null, { three: 3.5 }], unicode: "héllo ✓ 🐧" };
      expect(await client.ping({ payload })).toEqual({ pong: true, payload });
    } finally {
      client.close();
    }
  });

  test("ping echoes every JSON payload type on the raw wire", async () => {
    const c = await raw();
    for (const [i, payload] of [0, -1.5, "", "x", true, false, null, [], {}, [[[]]], { a: { b: "c" } }].entries()) {
      expect(await c.request(pingRequest(i, payload))).toEqual({ jsonrpc: "2.0", id: i, result: { pong: true, payload } });
    }
  });

  test("get_info matches its result schema and lists ping and get_info enabled", async () => {
    const c = await raw();
    const reply = await c.request({ jsonrpc: "2.0", id: "info", method: "get_info" });
    expect(reply.id).toBe("info");
    const parsed = METHODS.get_info.result.safeParse(reply.result);
    if (!parsed.success) throw new Error(`get_info result does not match the schema: ${parsed.error.message}`);
    const info = parsed.data;
    expect(info.os_type).toBe("linux");
    expect(info.protocol_version).toBe(1);
    expect(info.methods).toContainEqual({ name: "ping", enabled: true });
    expect(info.methods).toContainEqual({ name: "get_info", enabled: true });
    // Also via the typed client (which validates against the same schema).
    const client = await connectClient(agent);
    try {
      expect((await client.getInfo()).agent_version).toBe(info.agent_version);
    } finally {
      client.close();
    }
  });
});

describe("JSON-RPC on the wire", () => {
  test("a notification gets no reply: only the following request is answered", async () => {
    const c = await raw();
    await c.write(concatBytes([frame({ jsonrpc: "2.0", method: "ping" }), frame({ jsonrpc: "2.0", method: "ping", params: { payload: 1 } })]));
    // Even a failing notification (unknown method, bad params) stays silent.
    await c.send({ jsonrpc: "2.0", method: "no_such_method" });
    await c.send({ jsonrpc: "2.0", method: "ping", params: { bogus: true } });
    await c.send(pingRequest("after-notifications"));
    expect(await c.next()).toEqual({ jsonrpc: "2.0", id: "after-notifications", result: { pong: true } });
    await c.expectSilence(200);
  });

  test("batch: requests, notifications and an invalid element give an array with the right ids", async () => {
    const c = await raw();
    await c.send([
      pingRequest(1, "a"),
      { jsonrpc: "2.0", method: "ping" }, // notification: no entry
      42, // invalid element: -32600 with id null
      { jsonrpc: "2.0", id: "b", method: "get_info" },
      { jsonrpc: "2.0", id: 3, method: "nope" },
      { jsonrpc: "2.0", id: 4, method: "ping", params: { extra: 1 } },
    ]);
    const reply = await c.next();
    expect(Array.isArray(reply)).toBe(true);
    expect(reply).toHaveLength(5);
    const byId = new Map<unknown, any>(reply.map((r: any) => [r.id, r]));
    expect([...byId.keys()].sort((a, b) => String(a).localeCompare(String(b)))).toEqual([1, 3, 4, "b", null]);
    expect(byId.get(1)).toEqual({ jsonrpc: "2.0", id: 1, result: { pong: true, payload: "a" } });
    expect(byId.get(null).error.code).toBe(-32600);
    expect(METHODS.get_info.result.safeParse(byId.get("b").result).success).toBe(true);
    expect(byId.get(3).error.code).toBe(-32601);
    expect(byId.get(4).error.code).toBe(-32602);
    await expectInSync(c);
  });

  test("an empty batch is -32600", async () => {
    const c = await raw();
    const reply = await c.request([]);
    expect(reply.id).toBeNull();
    expect(reply.error.code).toBe(-32600);
    await expectInSync(c);
  });

  test("a batch of only notifications gets no reply at all", async () => {
    const c = await raw();
    await c.send([
      { jsonrpc: "2.0", method: "ping" },
      { jsonrpc: "2.0", method: "get_info" },
      { jsonrpc: "2.0", method: "missing" },
    ]);
    await c.send(pingRequest("after-batch"));
    expect((await c.next()).id).toBe("after-batch");
    await c.expectSilence(200);
  });

  test("string, number and null ids are echoed exactly", async () => {
    const c = await raw();
    for (const id of ["abc", "", "ünïcödé 🐧", "1", 0, -7, 1.5, 2 ** 53 - 1, 1e21, null]) {
      const reply = await c.request(pingRequest(id));
      expect(reply).toEqual({ jsonrpc: "2.0", id, result: { pong: true } });
    }
  });

  test("invalid JSON is -32700 with id null and the stream stays in sync", async () => {
    const c = await raw();
    for (const text of ["{", "{\"jsonrpc\":\"2.0\",", "not json", "{'a':1}", "[1,]", "\u0000"]) {
      const reply = await c.request(text);
      expect(reply.id).toBeNull();
      expect(reply.error.code).toBe(-32700);
      await expectInSync(c);
    }
  });

  test("invalid UTF-8 is -32700 and the stream stays in sync", async () => {
    const c = await raw();
    for (const bytes of [
      [0xff, 0xfe],
      [0x7b, 0xc3], // '{' then a truncated 2-byte sequence
      [0xed, 0xa0, 0x80], // an encoded surrogate
      [0xc0, 0xaf], // overlong '/'
    ]) {
      await c.write(frame(new Uint8Array(bytes)));
      const reply = await c.next();
      expect(reply).toMatchObject({ jsonrpc: "2.0", id: null, error: { code: -32700 } });
      expect(reply.error.message).toContain("UTF-8");
      await expectInSync(c);
    }
  });

  test("-32600 for a non-object, a wrong jsonrpc, a bad id, a bad method or params", async () => {
    const c = await raw();
    const cases: [unknown, unknown][] = [
      [42, null],
      [JSON.stringify("a string"), null], // raw text: a JSON string value
      [null, null],
      [true, null],
      [{ id: 1, method: "ping" }, 1],
      [{ jsonrpc: "1.0", id: 2, method: "ping" }, 2],
      [{ jsonrpc: 2, id: 3, method: "ping" }, 3],
      [{ jsonrpc: "2.0", id: {}, method: "ping" }, null],
      [{ jsonrpc: "2.0", id: [1], method: "ping" }, null],
      [{ jsonrpc: "2.0", id: true, method: "ping" }, null],
      [{ jsonrpc: "2.0", id: 4 }, 4],
      [{ jsonrpc: "2.0", id: 5, method: 5 }, 5],
      [{ jsonrpc: "2.0", id: 6, method: "ping", params: "x" }, 6],
      [{ jsonrpc: "2.0", id: 7, method: "ping", params: null }, 7],
    ];
    for (const [message, id] of cases) {
      const reply = await c.request(message);
      expect(reply).toMatchObject({ jsonrpc: "2.0", id, error: { code: -32600 } });
    }
    await expectInSync(c);
  });

  test("-32601 for an unknown method, naming it", async () => {
    const c = await raw();
    for (const method of ["nope", "PING", "toString", "__proto__", "constructor", ""]) {
      const reply = await c.request({ jsonrpc: "2.0", id: method, method });
      expect(reply).toMatchObject({ jsonrpc: "2.0", id: method, error: { code: -32601 } });
      expect(reply.error.message).toContain(`'${method}'`);
    }
  });

  test("-32602 names the bad field", async () => {
    const c = await raw();
    let reply = await c.request({ jsonrpc: "2.0", id: 1, method: "ping", params: { payload: 1, colour: "red" } });
    expect(reply.error.code).toBe(-32602);
    expect(reply.error.message).toContain("colour");
    expect(reply.error.data.issues).toEqual([{ path: "colour", message: "unknown field" }]);

    reply = await c.request({ jsonrpc: "2.0", id: 2, method: "get_info", params: { verbose: true } });
    expect(reply.error.code).toBe(-32602);
    expect(reply.error.message).toContain("verbose");

    reply = await c.request({ jsonrpc: "2.0", id: 3, method: "ping", params: [1, 2] });
    expect(reply.error.code).toBe(-32602);
    expect(reply.error.message).toContain("named params");
    await expectInSync(c);
  });
});

describe("framing on the wire", () => {
  test("a zero-length frame is a parse error and the stream stays in sync", async () => {
    const c = await raw();
    await c.write(new Uint8Array(4));
    expect(await c.next()).toMatchObject({ id: null, error: { code: -32700 } });
    await expectInSync(c);
  });

  test("a frame of exactly max_frame_bytes is processed", async () => {
    const c = await raw();
    const empty = JSON.stringify(pingRequest("max", ""));
    const payload = "p".repeat(MAX_FRAME - Buffer.byteLength(empty));
    const text = JSON.stringify(pingRequest("max", payload));
    expect(Buffer.byteLength(text)).toBe(MAX_FRAME);
    await c.send(text);
    const reply = await c.next();
    expect(reply.id).toBe("max");
    expect(reply.result.payload).toBe(payload);
    await expectInSync(c);
  });

  test("a frame of max+1 bytes streamed in small chunks is -32004 with id null; the next ping works", async () => {
    const c = await raw();
    const body = JSON.stringify(pingRequest("too-big", "q".repeat(MAX_FRAME + 1 - Buffer.byteLength(JSON.stringify(pingRequest("too-big", ""))))));
    expect(Buffer.byteLength(body)).toBe(MAX_FRAME + 1);
    await c.writeChunked(frame(body), 1_000);
    const reply = await c.next();
    expect(reply).toMatchObject({ jsonrpc: "2.0", id: null, error: { code: -32004, data: { limit: MAX_FRAME, length: MAX_FRAME + 1 } } });
    await expectInSync(c, "after-too-big");
  });

  test("a huge declared length (4 GiB - 1) is refused at once without waiting for the payload", async () => {
    const c = await raw();
    await c.write(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x7b]));
    expect(await c.next()).toMatchObject({ id: null, error: { code: -32004, data: { length: 0xffffffff } } });
    c.close();
  });

  test("a frame split byte by byte across writes", async () => {
    const c = await raw();
    const bytes = frame(pingRequest("bytewise", "split"));
    for (const byte of bytes) {
      await c.write(new Uint8Array([byte]));
      await Bun.sleep(1);
    }
    expect(await c.next()).toEqual({ jsonrpc: "2.0", id: "bytewise", result: { pong: true, payload: "split" } });
  });

  test("many frames in one write are all answered in order", async () => {
    const c = await raw();
    const ids = Array.from({ length: 50 }, (_, i) => `one-write-${i}`);
    await c.write(concatBytes(ids.map((id) => frame(pingRequest(id)))));
    for (const id of ids) expect((await c.next()).id).toBe(id);
  });

  test("500 pipelined pings all get replies", async () => {
    const c = await raw();
    const count = 500;
    // Half in one write, half as separate writes without waiting.
    await c.write(concatBytes(Array.from({ length: count / 2 }, (_, i) => frame(pingRequest(i, i)))));
    const writes: Promise<void>[] = [];
    for (let i = count / 2; i < count; i++) writes.push(c.send(pingRequest(i, i)));
    await Promise.all(writes);
    const seen = new Set<number>();
    for (let i = 0; i < count; i++) {
      const reply = await c.next(10_000);
      expect(reply.result).toEqual({ pong: true, payload: reply.id });
      seen.add(reply.id);
    }
    expect(seen.size).toBe(count);
    await c.expectSilence(100);
  });

  test("two concurrent connections are served independently", async () => {
    const [a, b] = await Promise.all([raw(), raw()]);
    // Interleave partial frames on both connections.
    const fa = frame(pingRequest("a", "from a"));
    const fb = frame(pingRequest("b", "from b"));
    await a.write(fa.subarray(0, 7));
    await b.write(fb.subarray(0, 3));
    await b.write(fb.subarray(3));
    expect(await b.next()).toEqual({ jsonrpc: "2.0", id: "b", result: { pong: true, payload: "from b" } });
    await a.write(fa.subarray(7));
    expect(await a.next()).toEqual({ jsonrpc: "2.0", id: "a", result: { pong: true, payload: "from a" } });
    // And in parallel with typed clients.
    const clients = await Promise.all([connectClient(agent), connectClient(agent)]);
    try {
      const results = await Promise.all(clients.flatMap((client, n) => Array.from({ length: 20 }, (_, i) => client.ping({ payload: [n, i] }))));
      expect(results.map((r) => r.payload)).toEqual(clients.flatMap((_, n) => Array.from({ length: 20 }, (_, i) => [n, i])));
    } finally {
      for (const client of clients) client.close();
    }
  });

  test("a client disconnecting mid-frame does not disturb the next client", async () => {
    const c = await raw();
    const bytes = frame(pingRequest("cut", "x".repeat(1000)));
    await c.write(bytes.subarray(0, 500));
    c.abort();
    const header = await raw();
    await header.write(new Uint8Array([0, 0])); // half a header
    header.close();
    await Bun.sleep(50);
    const next = await raw();
    await expectInSync(next, "new-client");
    expect(agent.alive()).toBe(true);
  });
});

describe("audit file", () => {
  test("one JSON line per call with method, id and outcome; never the params", async () => {
    const secret = "SECRET-PAYLOAD-7f3a9c1e";
    const c = await raw();
    await c.request(pingRequest("audit-ok", secret));
    await c.request({ jsonrpc: "2.0", id: "audit-err", method: "ping", params: { [secret]: secret } });
    await c.request({ jsonrpc: "2.0", id: "audit-missing", method: "nope", params: { secret } });
    await c.send({ jsonrpc: "2.0", method: "ping", params: { payload: secret } }); // notification: audited without id
    await c.request(pingRequest("audit-last"));

    const lines = await eventually(() => {
      const records = readFileSync(agent.auditPath, "utf8")
        .split("\n")
        .filter((line) => line.length > 0);
      return records.some((line) => line.includes("audit-last")) ? records : null;
    });
    const text = lines.join("\n");
    expect(text).not.toContain(secret);
    const records = lines.map((line) => JSON.parse(line));
    for (const record of records) {
      expect(typeof record.ts).toBe("string");
      expect(typeof record.method).toBe("string");
      expect(["ok", "error"]).toContain(record.outcome);
      expect(record.transport).toBe("unix-listen");
      expect(Object.keys(record)).not.toContain("params");
      expect(Object.keys(record)).not.toContain("result");
    }
    const byId = (id: string) => records.filter((r) => r.id === id);
    expect(byId("audit-ok")).toEqual([expect.objectContaining({ method: "ping", outcome: "ok" })]);
    expect(byId("audit-err")).toEqual([expect.objectContaining({ method: "ping", outcome: "error", code: -32602 })]);
    expect(byId("audit-missing")).toEqual([expect.objectContaining({ method: "nope", outcome: "error", code: -32601 })]);
    expect(byId("audit-last")).toHaveLength(1);
    // The notification between the two is audited too, without an id.
    const lastIndex = records.findIndex((r) => r.id === "audit-last");
    expect(records[lastIndex - 1]).toMatchObject({ method: "ping", outcome: "ok" });
    expect(records[lastIndex - 1].id).toBeUndefined();
  });
});

describe("agent command line", () => {
  test("--check-config accepts a good file", async () => {
    const dir = scratchDir();
    const config = writeConfig(dir);
    const result = await runBinary(["--check-config", "--config", config]);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain(config);
  });

  test("--check-config rejects an unknown key with exit 2, naming the key and the file", async () => {
    const dir = scratchDir();
    const config = join(dir, "bad-key.toml");
    writeFileSync(config, '[logging]\nlevel = "info"\nverbosity_knob = 3\n');
    const result = await runBinary(["--check-config", "--config", config]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain("verbosity_knob");
    expect(result.stderr).toContain(config);

    writeFileSync(config, "[nonsense]\na = 1\n");
    const section = await runBinary(["--check-config", "--config", config]);
    expect(section.exitCode).toBe(2);
    expect(section.stderr).toContain("nonsense");
    expect(section.stderr).toContain(config);
  });

  test("--check-config rejects a wrong type with exit 2, naming the key and the file", async () => {
    const dir = scratchDir();
    const config = join(dir, "bad-type.toml");
    writeFileSync(config, '[limits]\nmax_frame_bytes = "lots"\n');
    const result = await runBinary(["--check-config", "--config", config]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain("max_frame_bytes");
    expect(result.stderr).toContain(config);
  });

  test("--check-config on a missing explicit file and on invalid TOML exits 2", async () => {
    const dir = scratchDir();
    const missing = await runBinary(["--check-config", "--config", join(dir, "absent.toml")]);
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toContain("absent.toml");
    const config = join(dir, "broken.toml");
    writeFileSync(config, "[limits\n");
    const broken = await runBinary(["--check-config", "--config", config]);
    expect(broken.exitCode).toBe(2);
    expect(broken.stderr).toContain(config);
  });

  test("--print-config prints the effective config as TOML", async () => {
    const dir = scratchDir();
    const config = writeConfig(dir, { maxFrameBytes: 123_456 });
    const result = await runBinary(["--print-config", "--config", config, "--transport", "stdio"]);
    expect(result.exitCode).toBe(0);
    const printed = parseToml(result.stdout) as any;
    expect(printed.limits.max_frame_bytes).toBe(123_456);
    expect(printed.logging.level).toBe("debug");
    expect(printed.logging.audit_file).toBe(join(dir, "audit.jsonl"));
    expect(printed.transport.type).toBe("stdio");
    expect(printed.security.enable_exec).toBe(false);
  });

  test("--help and --version", async () => {
    const help = await runBinary(["--help"]);
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toContain("Usage: kvm-manager-agent");
    expect(help.stdout).toContain("--transport");
    expect(help.stdout).toContain("Host commands");
    const version = await runBinary(["--version"]);
    expect(version.exitCode).toBe(0);
    expect(version.stdout.trim()).toMatch(/^kvm-manager-agent \d+\.\d+\.\d+\S* \(protocol 1\)$/);
    const short = await runBinary(["-V"]);
    expect(short.stdout).toBe(version.stdout);
  });

  test("--transport bogus exits 2 with a clear message", async () => {
    const result = await runBinary(["--transport", "bogus"]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain("--transport must be one of");
    expect(result.stderr).toContain("bogus");
    expect(result.stdout).toBe("");
  });

  test("unknown flags and a unix-listen without --path exit 2", async () => {
    const flag = await runBinary(["--frobnicate"]);
    expect(flag.exitCode).toBe(2);
    expect(flag.stderr).toContain("frobnicate");
    const noPath = await runBinary(["--transport", "unix-listen"]);
    expect(noPath.exitCode).toBe(2);
    expect(noPath.stderr).toContain("--path");
  });
});
