/**
 * The virtio-serial transport's state machine, with the OS half replaced by a
 * scripted port. The real device is exercised by test/e2e/pty.test.ts (a pty
 * standing in for the port) and by the VM tests.
 */
import { afterEach, expect, test } from "bun:test";
import { closeSync, fstatSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "../src/log/logger.ts";
import type { Connection, ConnectionHandler } from "../src/transport/transport.ts";
import { Backoff } from "../src/transport/device-transport.ts";
import { LinuxPortDevice } from "../src/transport/virtio-serial/linux.ts";
import { VirtioSerialTransport, type PortDevice } from "../src/transport/virtio-serial/virtio-serial.ts";

/** A port whose host the test plugs in and out, and whose reads and writes it scripts. */
class ScriptedPort implements PortDevice {
  connected = false;
  waits = 0;
  streams = 0;
  written: number[] = [];
  /** writeSome takes nothing while true (the host is not reading). */
  full = false;
  closed = false;
  private controller: ReadableStreamDefaultController<Uint8Array> | null = null;
  private wakeHost: (() => void) | null = null;

  hostConnected(): boolean {
    return this.connected;
  }
  async waitForHost(stillWanted: () => boolean): Promise<void> {
    this.waits++;
    while (stillWanted() && !this.connected) await new Promise<void>((r) => (this.wakeHost = r));
  }
  readStream(): ReadableStream<Uint8Array> {
    this.streams++;
    return new ReadableStream({ start: (c) => void (this.controller = c) });
  }
  writeSome(bytes: Uint8Array): number {
    if (this.full) return 0;
    this.written.push(...bytes);
    return bytes.length;
  }
  close(): void {
    this.closed = true;
  }

  connect(): void {
    this.connected = true;
    this.wakeHost?.();
  }
  send(bytes: number[]): void {
    this.controller!.enqueue(Uint8Array.from(bytes));
  }
  disconnect(): void {
    this.connected = false;
    this.controller?.close();
  }
  fail(): void {
    this.controller?.error(new Error("ENODEV: no such device"));
  }
}

/** Records what each connection's handler saw. */
function recordingAccept() {
  const sessions: { connection: Connection; data: number[]; closed: boolean }[] = [];
  const accept = (connection: Connection): ConnectionHandler => {
    const session = { connection, data: [] as number[], closed: false };
    sessions.push(session);
    return {
      onData: (chunk) => session.data.push(...chunk),
      onInputEnd: async () => {},
      onClose: () => void (session.closed = true),
    };
  };
  return { sessions, accept };
}

function logCollector() {
  const lines: string[] = [];
  return { lines, logger: createLogger("debug", "text", (line) => lines.push(line)) };
}

const until = async (condition: () => boolean, timeoutMs = 3000) => {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not reached");
    await Bun.sleep(5);
  }
};

const transports: VirtioSerialTransport[] = [];
afterEach(async () => {
  for (const t of transports.splice(0)) await t.close();
});

function start(path: string, open: (path: string) => PortDevice) {
  const { lines, logger } = logCollector();
  const transport = new VirtioSerialTransport(path, logger, open);
  transports.push(transport);
  const { sessions, accept } = recordingAccept();
  void transport.start(accept);
  return { transport, lines, sessions };
}

function existingPath(): string {
  const dir = mkdtempSync(join(tmpdir(), "kma-vport-"));
  const path = join(dir, "org.kvmmanager.agent.0");
  writeFileSync(path, "");
  return path;
}

test("a port that is missing at start is waited for, logged once, and served when it appears", async () => {
  const dir = mkdtempSync(join(tmpdir(), "kma-vport-"));
  const path = join(dir, "org.kvmmanager.agent.0");
  const port = new ScriptedPort();
  let opens = 0;
  const { lines, sessions } = start(path, () => (opens++, port));
  await Bun.sleep(400);
  expect(opens).toBe(0);
  expect(lines.filter((l) => l.includes("port not present yet"))).toHaveLength(1);
  writeFileSync(path, "");
  port.connected = true;
  await until(() => sessions.length === 1);
  port.send([1, 2, 3]);
  await until(() => sessions[0]!.data.length === 3);
  expect(opens).toBe(1);
  rmSync(dir, { recursive: true });
});

test("EBUSY at open is retried and logged once", async () => {
  const port = new ScriptedPort();
  let attempts = 0;
  const { lines, sessions } = start(existingPath(), () => {
    if (++attempts < 4) throw new Error("EBUSY: resource busy or locked, open");
    port.connected = true;
    return port;
  });
  await until(() => sessions.length === 1);
  expect(attempts).toBe(4);
  expect(lines.filter((l) => l.includes("EBUSY"))).toHaveLength(1);
});

test("with no host, the transport sleeps in waitForHost instead of reading", async () => {
  const port = new ScriptedPort();
  const { sessions } = start(existingPath(), () => port);
  await Bun.sleep(200);
  expect(port.waits).toBe(1);
  expect(port.streams).toBe(0);
  expect(sessions).toHaveLength(0);
  port.connect();
  await until(() => sessions.length === 1);
});

test("each host gets a fresh connection; the earlier one is closed when its stream ends", async () => {
  const port = new ScriptedPort();
  port.connected = true;
  const { sessions } = start(existingPath(), () => port);
  await until(() => sessions.length === 1);
  port.send([0, 0, 0, 9, 1]); // a partial frame from the first host
  await until(() => sessions[0]!.data.length === 5);
  port.disconnect();
  await until(() => sessions[0]!.closed);
  await Bun.sleep(50);
  expect(sessions).toHaveLength(1);
  expect(port.waits).toBe(1);
  port.connect();
  await until(() => sessions.length === 2);
  port.send([7]);
  await until(() => sessions[1]!.data.length === 1);
  expect(sessions[1]!.data).toEqual([7]);
  expect(sessions[1]!.closed).toBe(false);
});

test("a device error closes the port and opens it again", async () => {
  const ports: ScriptedPort[] = [];
  const { sessions, lines } = start(existingPath(), () => {
    const port = new ScriptedPort();
    port.connected = true;
    ports.push(port);
    return port;
  });
  await until(() => sessions.length === 1);
  ports[0]!.fail();
  await until(() => ports.length === 2 && sessions.length === 2);
  expect(ports[0]!.closed).toBe(true);
  expect(sessions[0]!.closed).toBe(true);
  expect(lines.some((l) => l.includes("port failed; reopening") && l.includes("ENODEV"))).toBe(true);
});

test("output the port cannot take yet is queued and delivered in order", async () => {
  const port = new ScriptedPort();
  port.connected = true;
  const { sessions } = start(existingPath(), () => port);
  await until(() => sessions.length === 1);
  const connection = sessions[0]!.connection;
  connection.send(Uint8Array.of(1, 2));
  port.full = true;
  connection.send(Uint8Array.of(3));
  connection.send(Uint8Array.of(4, 5));
  await Bun.sleep(30);
  expect(port.written).toEqual([1, 2]);
  port.full = false;
  await until(() => port.written.length === 5);
  expect(port.written).toEqual([1, 2, 3, 4, 5]);
});

test("a stream that ends at once while the host looks connected does not spin", async () => {
  const port = new ScriptedPort();
  port.connected = true;
  port.readStream = function () {
    this.streams++;
    return new ReadableStream({ start: (c) => c.close() });
  };
  start(existingPath(), () => port);
  await Bun.sleep(500);
  // Back-off 20, 40, 80, 160... ms: a handful of streams in half a second, not thousands.
  expect(port.streams).toBeGreaterThan(1);
  expect(port.streams).toBeLessThan(10);
});

test("Backoff doubles up to its ceiling and resets", () => {
  const backoff = new Backoff(10, 50);
  expect([backoff.next(), backoff.next(), backoff.next(), backoff.next()]).toEqual([10, 20, 40, 50]);
  backoff.reset();
  expect(backoff.next()).toBe(10);
});

test("closing a port twice leaves alone the file that got its fd number meanwhile", () => {
  const port = LinuxPortDevice.open("/dev/null");
  port.close();
  const other = openSync("/dev/zero", "r"); // The lowest free fd: most likely the port's old one.
  try {
    port.close();
    expect(() => fstatSync(other)).not.toThrow();
  } finally {
    closeSync(other);
  }
});
