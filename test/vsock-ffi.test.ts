/**
 * The AF_VSOCK transport's ffi layer. Nothing here opens a vsock socket: this
 * host's vsock peer is not ours. The same socket/bind/listen calls are proven
 * with AF_UNIX, and the handed-over fd is served by Bun.listen({ fd }) exactly
 * as vsock-listen serves its own.
 */
import { describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AgentClient } from "../src/client/client.ts";
import { defaultConfig } from "../src/config/schema.ts";
import { silentLogger } from "../src/log/logger.ts";
import { Dispatcher } from "../src/protocol/dispatcher.ts";
import { RpcSession } from "../src/protocol/session.ts";
import { socketHandlers } from "../src/transport/socket-connection.ts";
import { LibcError } from "../src/platform/linux/libc.ts";
import { AF_UNIX, AF_VSOCK, connectStreamSocket, listenStreamSocket, sockaddrUn, sockaddrVm, VMADDR_CID_ANY } from "../src/transport/vsock/ffi.ts";
import { encodeFrame } from "../src/protocol/framing.ts";
import { noAudit } from "../src/log/audit.ts";
import { createServices } from "../src/create-services.ts";

describe("sockaddr encoding", () => {
  test("sockaddr_vm is 16 bytes: family, reserved, port, cid, flags", () => {
    const bytes = sockaddrVm(0x01020304, 3);
    expect(bytes.length).toBe(16);
    expect([...bytes]).toEqual([AF_VSOCK, 0, 0, 0, 4, 3, 2, 1, 3, 0, 0, 0, 0, 0, 0, 0]);
    expect(new DataView(sockaddrVm(9100).buffer).getUint32(8, true)).toBe(VMADDR_CID_ANY);
  });

  test("sockaddr_un is family + NUL-terminated path, and refuses paths the kernel would cut", () => {
    expect([...sockaddrUn("/a")]).toEqual([AF_UNIX, 0, 0x2f, 0x61, 0]);
    expect(() => sockaddrUn(`/${"x".repeat(200)}`)).toThrow("longer than 107 bytes");
  });
});

describe("listenStreamSocket", () => {
  test("a socket made through ffi is served by Bun.listen({ fd }) end to end", async () => {
    const path = join(mkdtempSync(join(tmpdir(), "kma-ffi-")), "s");
    const fd = listenStreamSocket(AF_UNIX, sockaddrUn(path));
    expect(fd).toBeGreaterThan(2);
    const config = defaultConfig();
    const dispatcher = new Dispatcher({ config, audit: noAudit, logger: silentLogger, services: createServices(config, silentLogger, noAudit) });
    const listen = Bun.listen as unknown as (o: { fd: number; socket: unknown }) => { stop(force: boolean): void };
    const listener = listen({ fd, socket: socketHandlers("ffi", (c) => new RpcSession(c, dispatcher, config.limits)) });
    const client = await AgentClient.connect(path);
    try {
      expect(await client.ping({ payload: "over an ffi socket" })).toEqual({ pong: true, payload: "over an ffi socket" });
    } finally {
      client.close();
      listener.stop(true);
    }
  });

  test("a socket connected through ffi is driven by Bun.connect({ fd }), as the vsock client does", async () => {
    const path = join(mkdtempSync(join(tmpdir(), "kma-ffi-")), "s");
    const config = defaultConfig();
    const dispatcher = new Dispatcher({ config, audit: noAudit, logger: silentLogger, services: createServices(config, silentLogger, noAudit) });
    const listener = Bun.listen({ unix: path, socket: socketHandlers("unix", (c) => new RpcSession(c, dispatcher, config.limits)) });
    try {
      const fd = connectStreamSocket(AF_UNIX, sockaddrUn(path));
      let reply = new Uint8Array(0);
      const connect = Bun.connect as unknown as (o: { fd: number; socket: unknown }) => Promise<{ write(b: Uint8Array): number; end(): void }>;
      const socket = await connect({
        fd,
        socket: {
          data(_: unknown, chunk: Uint8Array) {
            reply = Buffer.concat([reply, chunk]);
          },
        },
      });
      socket.write(encodeFrame(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "ping", params: { payload: "via connect()" } })));
      const deadline = Date.now() + 5_000;
      while (reply.length < 4 && Date.now() < deadline) await Bun.sleep(10);
      await Bun.sleep(20);
      expect(JSON.parse(Buffer.from(reply.subarray(4)).toString())).toEqual({ jsonrpc: "2.0", id: 1, result: { pong: true, payload: "via connect()" } });
      socket.end();
    } finally {
      listener.stop(true);
    }
  });

  test("connect() to nothing is reported by name and errno", () => {
    expect(() => connectStreamSocket(AF_UNIX, sockaddrUn("/nonexistent-dir/x.sock"))).toThrow("connect() failed: ENOENT (errno 2)");
  });

  test("a failing call is reported by name and errno", () => {
    const error = (() => {
      try {
        listenStreamSocket(AF_UNIX, sockaddrUn("/nonexistent-dir/x.sock"));
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(LibcError);
    expect((error as LibcError).call).toBe("bind");
    expect((error as Error).message).toBe("bind() failed: ENOENT (errno 2)");
  });

  test("an unknown address family fails at socket()", () => {
    expect(() => listenStreamSocket(250, new Uint8Array(16))).toThrow(/^socket\(\) failed: EAFNOSUPPORT/);
  });
});
