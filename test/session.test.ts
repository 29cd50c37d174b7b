import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import type { Response } from "../src/protocol/jsonrpc.ts";
import { encodeFrame, SYNC_MARKER } from "../src/protocol/framing.ts";
import { RpcSession, type RequestHandler } from "../src/protocol/session.ts";
import { defaultConfig } from "../src/config/schema.ts";
import { FakeConnection } from "./helpers/fake-connection.ts";
import { memorySession } from "./helpers/in-memory.ts";

const ping = (id: unknown, params: unknown = {}) => ({ jsonrpc: "2.0", id, method: "ping", params });

describe("requests and notifications", () => {
  test("a request gets its result with the same id", () => {
    const { sendJson, replies } = memorySession();
    sendJson(ping(7, { payload: { nested: [1, "two"] } }));
    expect(replies).toEqual([{ jsonrpc: "2.0", id: 7, result: { pong: true, payload: { nested: [1, "two"] } } }]);
  });

  test("string, number and null ids are echoed as sent", () => {
    const { sendJson, replies } = memorySession();
    sendJson(ping("abc"));
    sendJson(ping(1.5));
    sendJson(ping(null));
    expect(replies.map((r) => (r as Response).id)).toEqual(["abc", 1.5, null]);
  });

  test("params may be omitted", () => {
    const { sendJson, replies } = memorySession();
    sendJson({ jsonrpc: "2.0", id: 1, method: "get_info" });
    expect((replies[0] as { result: { protocol_version: number } }).result.protocol_version).toBe(1);
  });

  test("a notification runs (and is audited) but gets no reply, even when it fails", () => {
    const { sendJson, replies, audit } = memorySession();
    sendJson({ jsonrpc: "2.0", method: "ping" });
    sendJson({ jsonrpc: "2.0", method: "no_such_method" });
    expect(replies).toEqual([]);
    expect(audit.records.map((r) => [r.method, r.outcome])).toEqual([
      ["ping", "ok"],
      ["no_such_method", "error"],
    ]);
  });
});

describe("errors", () => {
  const cases: [string, string | unknown, number, unknown][] = [
    ["invalid JSON", "{not json", -32700, null],
    ["empty frame", "", -32700, null],
    ["a JSON string", '"ping"', -32600, null],
    ["null", "null", -32600, null],
    ["wrong jsonrpc", { jsonrpc: "1.0", id: 3, method: "ping" }, -32600, 3],
    ["missing jsonrpc", { id: 3, method: "ping" }, -32600, 3],
    ["method not a string", { jsonrpc: "2.0", id: 4, method: 12 }, -32600, 4],
    ["object id", { jsonrpc: "2.0", id: { x: 1 }, method: "ping" }, -32600, null],
    ["params a string", { jsonrpc: "2.0", id: 5, method: "ping", params: "x" }, -32600, 5],
    ["unknown method", { jsonrpc: "2.0", id: 6, method: "reboot_now" }, -32601, 6],
    ["params as an array", { jsonrpc: "2.0", id: 8, method: "ping", params: [1] }, -32602, 8],
    ["unknown param", { jsonrpc: "2.0", id: 9, method: "get_info", params: { verbose: true } }, -32602, 9],
  ];
  for (const [name, message, code, id] of cases) {
    test(`${name} → ${code}, and the next request still works`, () => {
      const { sendJson, sendText, replies } = memorySession();
      if (typeof message === "string") sendText(message);
      else sendJson(message);
      sendJson(ping("after"));
      expect(replies).toHaveLength(2);
      expect(replies[0]).toMatchObject({ jsonrpc: "2.0", id, error: { code } });
      expect(replies[1]).toMatchObject({ id: "after", result: { pong: true } });
    });
  }

  test("invalid UTF-8 is a parse error", () => {
    const { session, replies } = memorySession();
    session.onData(encodeFrame(Uint8Array.of(0x7b, 0xff, 0xfe, 0x7d)));
    expect(replies[0]).toMatchObject({ id: null, error: { code: -32700, message: "Parse error: frame is not valid UTF-8" } });
  });

  test("invalid params name the field", () => {
    const { sendJson, replies } = memorySession();
    sendJson({ jsonrpc: "2.0", id: 1, method: "get_info", params: { colour: "red" } });
    const error = (replies[0] as { error: { message: string; data: { issues: { path: string }[] } } }).error;
    expect(error.message).toContain("'colour'");
    expect(error.data.issues[0]!.path).toBe("colour");
  });

  test("unknown methods carry the method name in data", () => {
    const { sendJson, replies } = memorySession();
    sendJson({ jsonrpc: "2.0", id: 1, method: "rpc.discover" });
    expect(replies[0]).toMatchObject({ error: { code: -32601, data: { method: "rpc.discover" } } });
  });

  test("a handler that throws answers -32603 and the agent keeps serving", () => {
    const { sendJson, replies } = memorySession(
      {},
      {
        osIdentity: () => {
          throw new Error("os probe exploded");
        },
      },
    );
    sendJson({ jsonrpc: "2.0", id: 1, method: "get_info" });
    sendJson(ping(2));
    expect(replies[0]).toMatchObject({ id: 1, error: { code: -32603, message: "Internal error: os probe exploded" } });
    expect(replies[1]).toMatchObject({ id: 2, result: { pong: true } });
  });

  test("a reply above max_frame_bytes becomes -32004 for the same id", () => {
    const { sendJson, replies } = memorySession({ max_frame_bytes: 200 });
    sendJson({ jsonrpc: "2.0", id: 11, method: "get_info" });
    expect(replies[0]).toMatchObject({ id: 11, error: { code: -32004, data: { limit: 200 } } });
  });

  test("an oversized frame is answered at once with -32004 and id null", () => {
    const { session, replies, sendJson } = memorySession({ max_frame_bytes: 1024 });
    const big = encodeFrame(JSON.stringify(ping(1, { payload: "y".repeat(5000) })));
    session.onData(big.subarray(0, 100));
    expect(replies).toHaveLength(1);
    expect(replies[0]).toMatchObject({ id: null, error: { code: -32004, data: { limit: 1024, length: big.length - 4 } } });
    session.onData(big.subarray(100));
    sendJson(ping(2));
    expect(replies[1]).toMatchObject({ id: 2, result: { pong: true } });
  });
});

describe("batches", () => {
  test("mixed requests, notifications and invalid entries get one array reply", () => {
    const { sendJson, replies } = memorySession();
    sendJson([ping(1), { jsonrpc: "2.0", method: "ping" }, 42, { jsonrpc: "2.0", id: "x", method: "nope" }, ping("last")]);
    expect(replies).toHaveLength(1);
    const batch = replies[0] as Response[];
    expect(batch).toHaveLength(4);
    const byId = new Map(batch.map((r) => [JSON.stringify(r.id) + ("error" in r ? r.error.code : "ok"), r]));
    expect([...byId.keys()].sort()).toEqual(['"last"ok', '"x"-32601', "1ok", "null-32600"].sort());
  });

  test("an empty batch is one -32600", () => {
    const { sendText, replies } = memorySession();
    sendText("[]");
    expect(replies).toEqual([{ jsonrpc: "2.0", id: null, error: { code: -32600, message: "Invalid Request: empty batch" } }]);
  });

  test("a batch of only notifications gets no reply", () => {
    const { sendJson, replies, audit } = memorySession();
    sendJson([{ jsonrpc: "2.0", method: "ping" }, { jsonrpc: "2.0", method: "get_info" }]);
    expect(replies).toEqual([]);
    expect(audit.records).toHaveLength(2);
  });

  test("a batch above max_batch_requests is refused whole", () => {
    const { sendJson, replies, audit } = memorySession({ max_batch_requests: 3 });
    sendJson([ping(1), ping(2), ping(3), ping(4)]);
    expect(replies).toEqual([
      { jsonrpc: "2.0", id: null, error: { code: -32004, message: "Batch of 4 requests is above max_batch_requests (3)", data: { limit: 3, length: 4 } } },
    ]);
    expect(audit.records).toHaveLength(0);
  });
});

describe("concurrency", () => {
  /** A handler whose calls finish only when the test says so. */
  function controlledHandler() {
    const pending: { id: unknown; finish: () => void }[] = [];
    const handler: RequestHandler = {
      handle(message) {
        const id = (message as { id: number }).id;
        return new Promise<Response>((resolve) => pending.push({ id, finish: () => resolve({ jsonrpc: "2.0", id, result: id }) }));
      },
    };
    return { handler, pending };
  }

  test("replies come out in completion order, not request order", async () => {
    const { handler, pending } = controlledHandler();
    const connection = new FakeConnection();
    const session = new RpcSession(connection, handler, defaultConfig().limits);
    for (const id of [1, 2, 3]) session.onData(encodeFrame(JSON.stringify(ping(id))));
    pending[2]!.finish();
    pending[0]!.finish();
    pending[1]!.finish();
    await Bun.sleep(0);
    expect(connection.replies.map((r) => (r as Response).id)).toEqual([3, 1, 2]);
  });

  test("past max_in_flight the session pauses reading, queues, and resumes when calls finish", async () => {
    const { handler, pending } = controlledHandler();
    const connection = new FakeConnection();
    const session = new RpcSession(connection, handler, { ...defaultConfig().limits, max_in_flight: 2 });
    const frames = [1, 2, 3, 4, 5].map((id) => encodeFrame(JSON.stringify(ping(id))));
    session.onData(Buffer.concat(frames));
    expect(pending).toHaveLength(2);
    expect(connection.paused).toBe(true);
    pending[0]!.finish();
    await Bun.sleep(0);
    expect(pending).toHaveLength(3);
    expect(connection.paused).toBe(true);
    for (let i = 1; i < 5; i++) {
      pending[i]!.finish();
      await Bun.sleep(0);
    }
    expect(connection.replies.map((r) => (r as Response).id)).toEqual([1, 2, 3, 4, 5]);
    expect(connection.paused).toBe(false);
    expect(connection.pauses).toBe(1);
  });

  test("past max_in_flight_bytes the session pauses too; one call runs whatever its size, and order is kept", async () => {
    const { handler, pending } = controlledHandler();
    const connection = new FakeConnection();
    const session = new RpcSession(connection, handler, { ...defaultConfig().limits, max_in_flight_bytes: 1024 });
    const big = (id: number) => encodeFrame(JSON.stringify({ ...ping(id), params: { payload: "x".repeat(600) } }));
    session.onData(Buffer.concat([big(1), big(2), encodeFrame(JSON.stringify(ping(3)))]));
    // 1 runs; 2 would pass 1024 bytes with 1; 3 is small but waits behind 2 (first come, first run).
    expect(pending).toHaveLength(1);
    expect(connection.paused).toBe(true);
    pending[0]!.finish();
    await Bun.sleep(0);
    expect(pending).toHaveLength(3);
    expect(connection.paused).toBe(false);
    const huge = encodeFrame(JSON.stringify({ ...ping(4), params: { payload: "y".repeat(5000) } }));
    pending[1]!.finish();
    pending[2]!.finish();
    await Bun.sleep(0);
    session.onData(huge);
    expect(pending).toHaveLength(4);
    pending[3]!.finish();
    await Bun.sleep(0);
    expect(connection.replies.map((r) => (r as Response).id)).toEqual([1, 2, 3, 4]);
  });

  test("at the end of input (stdio) the session answers every call in flight before it reports idle", async () => {
    const { handler, pending } = controlledHandler();
    const connection = new FakeConnection();
    const session = new RpcSession(connection, handler, { ...defaultConfig().limits, max_in_flight: 1 });
    session.onData(Buffer.concat([1, 2].map((id) => encodeFrame(JSON.stringify(ping(id))))));
    let idle = false;
    const ended = session.onInputEnd().then(() => (idle = true));
    pending[0]!.finish();
    await Bun.sleep(0);
    expect(idle).toBe(false);
    pending[1]!.finish();
    await ended;
    expect(connection.replies.map((r) => (r as Response).id)).toEqual([1, 2]);
    expect(await session.onInputEnd().then(() => "idle at once")).toBe("idle at once");
  });

  test("an exception escaping the dispatcher is answered with -32603 and the stream goes on", () => {
    let calls = 0;
    const handler: RequestHandler = {
      handle(message) {
        if (++calls === 1) throw new Error("bug");
        return { jsonrpc: "2.0", id: (message as { id: number }).id, result: "fine" };
      },
    };
    const connection = new FakeConnection();
    const session = new RpcSession(connection, handler, defaultConfig().limits);
    session.onData(encodeFrame(JSON.stringify(ping(1))));
    session.onData(encodeFrame(JSON.stringify(ping(2))));
    expect(connection.replies).toEqual([
      { jsonrpc: "2.0", id: null, error: { code: -32603, message: "Internal error while reading the stream; the partial frame was discarded" } },
      { jsonrpc: "2.0", id: 2, result: "fine" },
    ]);
  });

  test("after the connection closes, late replies are dropped", async () => {
    const { handler, pending } = controlledHandler();
    const connection = new FakeConnection();
    const session = new RpcSession(connection, handler, defaultConfig().limits);
    session.onData(encodeFrame(JSON.stringify(ping(1))));
    session.onClose();
    pending[0]!.finish();
    await Bun.sleep(0);
    expect(connection.replies).toEqual([]);
  });
});

describe("audit", () => {
  test("records method, id, outcome, code and duration — never params", () => {
    const { sendJson, audit } = memorySession();
    sendJson(ping(1, { payload: "secret-token-123" }));
    sendJson({ jsonrpc: "2.0", id: 2, method: "get_info", params: { x: 1 } });
    expect(audit.records).toHaveLength(2);
    expect(audit.records[0]).toMatchObject({ method: "ping", id: 1, outcome: "ok", transport: "fake" });
    expect(audit.records[1]).toMatchObject({ method: "get_info", id: 2, outcome: "error", code: -32602 });
    expect(JSON.stringify(audit.records)).not.toContain("secret-token-123");
    expect(audit.records[0]!.duration_ms).toBeGreaterThanOrEqual(0);
  });
});

describe("resync", () => {
  test("the marker is echoed, a stale partial frame dropped, and the next request answered", () => {
    const { session, connection, replies } = memorySession();
    session.onData(encodeFrame(JSON.stringify(ping(1))).subarray(0, 20));
    session.onData(Buffer.concat([SYNC_MARKER, encodeFrame(JSON.stringify(ping(2)))]));
    expect(connection.syncs).toBe(1);
    expect(replies).toEqual([{ jsonrpc: "2.0", id: 2, result: { pong: true } }]);
  });

  test("a reply to a request of the earlier host is not sent after the resync", async () => {
    const pending: { id: number; finish: () => void }[] = [];
    const handler: RequestHandler = {
      handle(message) {
        const id = (message as { id: number }).id;
        return new Promise<Response>((resolve) => pending.push({ id, finish: () => resolve({ jsonrpc: "2.0", id, result: id }) }));
      },
    };
    const connection = new FakeConnection();
    const session = new RpcSession(connection, handler, defaultConfig().limits);
    session.onData(encodeFrame(JSON.stringify(ping(1))));
    session.onData(Buffer.concat([SYNC_MARKER, encodeFrame(JSON.stringify(ping(1)))]));
    pending[0]!.finish(); // the old host's id 1
    pending[1]!.finish(); // the new host's id 1
    await Bun.sleep(0);
    expect(connection.replies).toHaveLength(1);
    expect(connection.syncs).toBe(1);
  });
});

describe("audit lines", () => {
  test("are valid JSON with exactly the record's fields, escaping hostile method names", async () => {
    const { auditLine } = await import("../src/log/audit.ts");
    const line = auditLine({ method: 'x"}\n{"evil":1', id: "a\"b", transport: "unix-listen", outcome: "error", code: -32601, duration_ms: 0.25 });
    expect(line.endsWith("}\n")).toBe(true);
    expect(line.split("\n")).toHaveLength(2);
    const parsed = JSON.parse(line);
    expect(Object.keys(parsed)).toEqual(["ts", "method", "id", "transport", "outcome", "code", "duration_ms"]);
    expect(parsed).toMatchObject({ method: 'x"}\n{"evil":1', id: 'a"b', outcome: "error", code: -32601, duration_ms: 0.25 });
    expect(Number.isNaN(Date.parse(parsed.ts))).toBe(false);
    const notification = JSON.parse(auditLine({ method: "ping", id: undefined, transport: "stdio", outcome: "ok", duration_ms: 1 }));
    expect("id" in notification).toBe(false);
  });
});

describe("write coalescing", () => {
  test("replies to the requests of one read go out in one write", () => {
    const { session, connection } = memorySession();
    const sends: number[] = [];
    const original = connection.send.bind(connection);
    connection.send = (bytes) => {
      sends.push(bytes.length);
      original(bytes);
    };
    session.onData(Buffer.concat([1, 2, 3].map((id) => encodeFrame(JSON.stringify(ping(id))))));
    expect(sends).toHaveLength(1);
    expect(connection.replies.map((r) => (r as Response).id)).toEqual([1, 2, 3]);
  });
});

describe("long base64 params, decoded as their frame is parsed", () => {
  const until = async (done: () => boolean) => {
    for (let i = 0; i < 500 && !done(); i++) await Bun.sleep(10);
    expect(done()).toBe(true);
  };
  const bytes = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7919) % 251));
  const sha256 = (data: Uint8Array) => new Bun.CryptoHasher("sha256").update(data).digest("hex");

  test("copy_to_guest and a chunked upload write the very bytes sent", async () => {
    const { sendJson, replies } = memorySession();
    const dir = mkdtempSync("/tmp/kma-session-");
    try {
      sendJson({ jsonrpc: "2.0", id: 1, method: "copy_to_guest", params: { path: `${dir}/whole`, content_base64: bytes.toString("base64") } });
      await until(() => replies.length === 1);
      expect(replies[0]).toMatchObject({ id: 1, result: { bytes: bytes.length, sha256: sha256(bytes) } });
      expect(readFileSync(`${dir}/whole`).equals(bytes)).toBe(true);

      sendJson({ jsonrpc: "2.0", id: 2, method: "upload_start", params: { path: `${dir}/chunked` } });
      await until(() => replies.length === 2);
      const { upload_id } = (replies[1] as { result: { upload_id: string } }).result;
      const half = 150_000;
      sendJson({ jsonrpc: "2.0", id: 3, method: "upload_chunk", params: { upload_id, offset: 0, content_base64: bytes.subarray(0, half).toString("base64") } });
      sendJson({ jsonrpc: "2.0", id: 4, method: "upload_chunk", params: { upload_id, offset: half, content_base64: bytes.subarray(half).toString("base64") } });
      await until(() => replies.length === 4);
      sendJson({ jsonrpc: "2.0", id: 5, method: "upload_commit", params: { upload_id, sha256: sha256(bytes) } });
      await until(() => replies.length === 5);
      expect(replies.slice(2).map((reply) => "result" in (reply as object))).toEqual([true, true, true]);
      expect(readFileSync(`${dir}/chunked`).equals(bytes)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a long content_base64 that is not base64 is refused by the schema, naming the field", async () => {
    const { sendJson, replies } = memorySession();
    sendJson({ jsonrpc: "2.0", id: 1, method: "copy_to_guest", params: { path: "/tmp/kma-never-written", content_base64: `${bytes.toString("base64")}*AA=` } });
    await until(() => replies.length === 1);
    expect((replies[0] as { error: { code: number; message: string } }).error).toMatchObject({ code: -32602, message: "Invalid params: 'content_base64': Invalid base64-encoded string" });
    expect(existsSync("/tmp/kma-never-written")).toBe(false);
  });
});
