/**
 * The Windows port logic (src/transport/virtio-serial/windows.ts) with the
 * Win32 handle replaced by a scripted one: CreateFileW failing then
 * succeeding, reads that fail (the device removed by a driver update) and
 * are reopened, empty reads, and writes that complete partly or stay
 * pending. The overlapped kernel32 calls themselves run under Wine in
 * test/e2e/wine-transport.test.ts.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { IsaSerialTransport } from "../src/transport/isa-serial/isa-serial.ts";
import { comDevicePath, openWindowsLine } from "../src/transport/isa-serial/windows.ts";
import { createLogger } from "../src/log/logger.ts";
import type { Connection, ConnectionHandler, Transport } from "../src/transport/transport.ts";
import { VirtioSerialTransport } from "../src/transport/virtio-serial/virtio-serial.ts";
import { Win32Error, WindowsPortDevice, type PortHandle } from "../src/transport/virtio-serial/windows.ts";
import { DBT, DeviceRemovalWatch, type HandleNotifications } from "../src/transport/virtio-serial/device-removal.ts";

const ERROR_FILE_NOT_FOUND = 2;
const ERROR_ACCESS_DENIED = 5;
const ERROR_DEVICE_REMOVED = 1617;

let handlesMade = 0;

/** A handle whose reads the test feeds or fails, and whose writes it completes when it likes. */
class ScriptedHandle implements PortHandle {
  readonly win32Handle = BigInt(0x100 + 4 * ++handlesMade);
  reads = 0;
  closed = false;
  written: number[] = [];
  /** What each write() call was given, by length. */
  writeCalls: number[] = [];
  /** How write() behaves: take all, take `n`, or leave the write pending. */
  writeMode: { kind: "all" } | { kind: "some"; n: number } | { kind: "pending" } = { kind: "all" };
  private pending: Uint8Array | null = null;
  private pendingDone: number | null = null;
  private readWaiter: { resolve(n: number): void; reject(error: Error): void; into: Uint8Array } | null = null;

  read(into: Uint8Array): Promise<number> {
    this.reads++;
    return new Promise((resolve, reject) => (this.readWaiter = { resolve, reject, into }));
  }
  write(bytes: Uint8Array): number | "pending" {
    this.writeCalls.push(bytes.length);
    const mode = this.writeMode;
    if (mode.kind === "pending") {
      this.pending = bytes.slice();
      return "pending";
    }
    const n = mode.kind === "all" ? bytes.length : Math.min(mode.n, bytes.length);
    this.written.push(...bytes.subarray(0, n));
    return n;
  }
  writeResult(): number | "pending" {
    if (this.pendingDone === null) return "pending";
    const done = this.pendingDone;
    this.pendingDone = null;
    this.pending = null;
    return done;
  }
  close(): void {
    this.closed = true;
    this.readWaiter?.resolve(0);
  }

  /** Completes the outstanding read with `bytes`. */
  feed(bytes: number[]): void {
    const waiter = this.readWaiter!;
    this.readWaiter = null;
    waiter.into.set(bytes);
    waiter.resolve(bytes.length);
  }
  failRead(code: number): void {
    const waiter = this.readWaiter!;
    this.readWaiter = null;
    waiter.reject(new Win32Error("ReadFile", code));
  }
  get readWaiting(): boolean {
    return this.readWaiter !== null;
  }
  /** The pending write finishes having sent its first `n` bytes. */
  completeWrite(n: number): void {
    this.written.push(...this.pending!.subarray(0, n));
    this.pendingDone = n;
  }
}

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

const until = async (condition: () => boolean, timeoutMs = 3000) => {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not reached");
    await Bun.sleep(5);
  }
};

const transports: Transport[] = [];
afterEach(async () => {
  for (const transport of transports.splice(0)) await transport.close();
});

/** The virtio-serial transport over Windows devices whose handles `openHandle` makes. */
function startVirtio(openHandle: (path: string) => PortHandle, removalWatch = new DeviceRemovalWatch()) {
  const lines: string[] = [];
  const logger = createLogger("debug", "text", (line) => lines.push(line));
  const transport = new VirtioSerialTransport(
    "\\\\.\\Global\\org.kvmmanager.agent.0",
    logger,
    (path) => WindowsPortDevice.open(path, openHandle, removalWatch),
    () => true,
  );
  transports.push(transport);
  const { sessions, accept } = recordingAccept();
  void transport.start(accept);
  return { lines, sessions, transport };
}

/** A watch enabled as the service enables it, with RegisterDeviceNotificationW recorded (or failing). */
function serviceWatch({ failWith }: { failWith?: number } = {}) {
  const lines: string[] = [];
  const events: string[] = [];
  const api: HandleNotifications = {
    register(handle) {
      if (failWith !== undefined) throw new Win32Error("RegisterDeviceNotificationW", failWith);
      events.push(`register ${handle}`);
      return handle + 0x1000n;
    },
    unregister: (notification) => void events.push(`unregister ${notification - 0x1000n}`),
  };
  const watch = new DeviceRemovalWatch();
  watch.enable(api, createLogger("debug", "text", (line) => lines.push(line)));
  return { watch, events, lines };
}

test("a port CreateFileW cannot find yet is waited for (logged once as not present) and served once it opens", async () => {
  const handle = new ScriptedHandle();
  const paths: string[] = [];
  const { lines, sessions } = startVirtio((path) => {
    paths.push(path);
    if (paths.length < 4) throw new Win32Error("CreateFileW", ERROR_FILE_NOT_FOUND);
    return handle;
  });
  await until(() => sessions.length === 1 && handle.readWaiting);
  expect(paths).toEqual(Array(4).fill("\\\\.\\Global\\org.kvmmanager.agent.0"));
  expect(lines.filter((line) => line.includes("port not present yet"))).toHaveLength(1);
  expect(lines.some((line) => line.includes("cannot open port"))).toBe(false);
  handle.feed([1, 2, 3]);
  await until(() => sessions[0]!.data.length === 3);
});

test("any other open failure is reported with its Win32 error, once, and retried", async () => {
  let attempts = 0;
  const handle = new ScriptedHandle();
  const { lines, sessions } = startVirtio(() => {
    if (++attempts < 3) throw new Win32Error("CreateFileW", ERROR_ACCESS_DENIED);
    return handle;
  });
  await until(() => sessions.length === 1);
  expect(lines.filter((line) => line.includes("cannot open port: CreateFileW failed: ERROR_ACCESS_DENIED (5)"))).toHaveLength(1);
});

test("a failed read (the device removed by a driver update) closes the handle and opens the port again with a fresh session", async () => {
  const handles: ScriptedHandle[] = [];
  let removed = false;
  const { lines, sessions } = startVirtio(() => {
    if (removed) throw new Win32Error("CreateFileW", ERROR_FILE_NOT_FOUND);
    const handle = new ScriptedHandle();
    handles.push(handle);
    return handle;
  });
  await until(() => handles[0]?.readWaiting === true);
  handles[0]!.feed([0, 0, 0, 9]);
  await until(() => sessions[0]?.data.length === 4);
  removed = true;
  handles[0]!.failRead(ERROR_DEVICE_REMOVED);
  await until(() => lines.some((line) => line.includes("port not present yet")));
  // Nothing of ours holds the device while it is away.
  expect(handles[0]!.closed).toBe(true);
  expect(sessions[0]!.closed).toBe(true);
  expect(lines.some((line) => line.includes("port failed; reopening: ReadFile failed: ERROR_DEVICE_REMOVED (1617)"))).toBe(true);
  removed = false;
  await until(() => handles[1]?.readWaiting === true);
  handles[1]!.feed([7]);
  await until(() => sessions[1]?.data.length === 1);
  expect(sessions[1]!.data).toEqual([7]);
});

test("empty reads (a read timeout with nothing to read) are retried after a doubling delay, reset by data", async () => {
  const handle = new ScriptedHandle();
  const delays: number[] = [];
  const device = new WindowsPortDevice(handle, async (ms) => void delays.push(ms));
  const reader = device.readStream().getReader();
  const chunk = reader.read();
  for (let i = 0; i < 8; i++) {
    await until(() => handle.readWaiting);
    handle.feed([]);
  }
  await until(() => handle.readWaiting);
  handle.feed([5]);
  expect((await chunk).value).toEqual(Uint8Array.of(5));
  const next = reader.read();
  await until(() => handle.readWaiting);
  handle.feed([]);
  await until(() => handle.readWaiting);
  handle.feed([6]);
  expect((await next).value).toEqual(Uint8Array.of(6));
  expect(delays).toEqual([10, 20, 40, 80, 160, 320, 640, 1000, 10]);
});

test("no read is outstanding while the session is paused", async () => {
  const handle = new ScriptedHandle();
  const { sessions } = startVirtio(() => handle);
  await until(() => sessions.length === 1 && handle.readWaiting);
  sessions[0]!.connection.pause();
  handle.feed([1]);
  await Bun.sleep(50);
  expect(handle.readWaiting).toBe(false);
  sessions[0]!.connection.resume();
  await until(() => handle.readWaiting);
  expect(sessions[0]!.data).toEqual([1]);
});

test("a partial write: the rest goes out next, in order", async () => {
  const handle = new ScriptedHandle();
  const device = new WindowsPortDevice(handle);
  handle.writeMode = { kind: "some", n: 2 };
  expect(device.writeSome(Uint8Array.of(1, 2, 3, 4, 5))).toBe(2);
  handle.writeMode = { kind: "all" };
  expect(device.writeSome(Uint8Array.of(3, 4, 5))).toBe(3);
  expect(handle.written).toEqual([1, 2, 3, 4, 5]);
});

test("a pending write holds its bytes: nothing new is taken until it completes, and a tail it left is sent first", async () => {
  const handle = new ScriptedHandle();
  const device = new WindowsPortDevice(handle);
  handle.writeMode = { kind: "pending" };
  expect(device.writeSome(Uint8Array.of(1, 2, 3, 4))).toBe(4);
  expect(device.writeSome(Uint8Array.of(5, 6))).toBe(0);
  // The pending write completes having sent only two bytes: 3 and 4 go before 5 and 6.
  handle.completeWrite(2);
  handle.writeMode = { kind: "all" };
  expect(device.writeSome(Uint8Array.of(5, 6))).toBe(0);
  expect(device.writeSome(Uint8Array.of(5, 6))).toBe(2);
  expect(handle.written).toEqual([1, 2, 3, 4, 5, 6]);
  expect(handle.writeCalls).toEqual([4, 2, 2]);
});

test("a write error reaches the connection, which closes; writing to a closed device throws", async () => {
  const handles: ScriptedHandle[] = [];
  const { sessions } = startVirtio(() => {
    const handle = new ScriptedHandle();
    handles.push(handle);
    return handle;
  });
  await until(() => sessions.length === 1);
  handles[0]!.write = () => {
    throw new Win32Error("WriteFile", ERROR_DEVICE_REMOVED);
  };
  sessions[0]!.connection.send(Uint8Array.of(1));
  expect(sessions[0]!.closed).toBe(true);
  const device = new WindowsPortDevice(new ScriptedHandle());
  device.close();
  expect(() => device.writeSome(Uint8Array.of(1))).toThrow("port closed");
});

test("COMn is opened through the device namespace (COM10 and up need it); other paths are left alone", () => {
  expect(comDevicePath("COM1")).toBe("\\\\.\\COM1");
  expect(comDevicePath("com12")).toBe("\\\\.\\COM12");
  expect(comDevicePath("\\\\.\\COM3")).toBe("\\\\.\\COM3");
  const opened: string[] = [];
  openWindowsLine("COM2", (path) => (opened.push(path), new ScriptedHandle()));
  expect(opened).toEqual(["\\\\.\\COM2"]);
});

test("isa-serial on Windows: COM1 missing is waited for, then served; a read error reopens the line", async () => {
  const handles: ScriptedHandle[] = [];
  let missing = 2;
  const lines: string[] = [];
  const logger = createLogger("debug", "text", (line) => lines.push(line));
  const transport = new IsaSerialTransport(
    "COM1",
    logger,
    (path) =>
      openWindowsLine(path, () => {
        if (missing-- > 0) throw new Win32Error("CreateFileW", ERROR_FILE_NOT_FOUND);
        const handle = new ScriptedHandle();
        handles.push(handle);
        return handle;
      }),
    () => true,
  );
  transports.push(transport);
  const { sessions, accept } = recordingAccept();
  void transport.start(accept);
  await until(() => handles[0]?.readWaiting === true);
  expect(lines.filter((line) => line.includes("serial device not present yet"))).toHaveLength(1);
  handles[0]!.failRead(31);
  await until(() => handles[1]?.readWaiting === true);
  expect(handles[0]!.closed).toBe(true);
  expect(lines.some((line) => line.includes("serial line failed; reopening it: ReadFile failed: ERROR_GEN_FAILURE (31)"))).toBe(true);
  handles[1]!.feed([9]);
  await until(() => sessions[1]?.data.length === 1);
});

describe("device removal (a service's SERVICE_CONTROL_DEVICEEVENT)", () => {
  test("each opened handle is registered, unregistered before it is closed, and the reopened one registered again", async () => {
    const service = serviceWatch();
    const handles: ScriptedHandle[] = [];
    const { sessions, transport } = startVirtio(() => {
      const handle = new ScriptedHandle();
      handles.push(handle);
      return handle;
    }, service.watch);
    await until(() => handles[0]?.readWaiting === true);
    expect(service.events).toEqual([`register ${handles[0]!.win32Handle}`]);
    handles[0]!.failRead(ERROR_DEVICE_REMOVED);
    await until(() => handles[1]?.readWaiting === true);
    expect(service.events).toEqual([`register ${handles[0]!.win32Handle}`, `unregister ${handles[0]!.win32Handle}`, `register ${handles[1]!.win32Handle}`]);
    expect(sessions).toHaveLength(2);
    // Stopping the agent unregisters the open handle, then closes it.
    await transport.close();
    expect(service.events.at(-1)).toBe(`unregister ${handles[1]!.win32Handle}`);
    expect(handles[1]!.closed).toBe(true);
  });

  for (const [name, event] of [
    ["query-remove", DBT.queryRemove],
    ["remove-pending", DBT.removePending],
    ["remove-complete", DBT.removeComplete],
  ] as const) {
    test(`${name} closes the handle at once; the transport waits, then opens the port again once it is back`, async () => {
      const service = serviceWatch();
      const handles: ScriptedHandle[] = [];
      let present = true;
      const { lines, sessions } = startVirtio(() => {
        if (!present) throw new Win32Error("CreateFileW", ERROR_FILE_NOT_FOUND);
        const handle = new ScriptedHandle();
        handles.push(handle);
        return handle;
      }, service.watch);
      await until(() => handles[0]?.readWaiting === true);
      present = false;
      service.watch.deviceEvent(event);
      // Closed before the event is answered: nothing of ours vetoes the removal.
      expect(handles[0]!.closed).toBe(true);
      expect(service.events.at(-1)).toBe(`unregister ${handles[0]!.win32Handle}`);
      await until(() => sessions[0]!.closed && lines.some((line) => line.includes("port failed; reopening: the port's device is being removed")));
      expect(handles).toHaveLength(1);
      await until(() => lines.some((line) => line.includes("port not present yet")), 10_000);
      // The device is back (the driver update added it again): opened, registered and served.
      present = true;
      await until(() => handles[1]?.readWaiting === true);
      expect(service.events.at(-1)).toBe(`register ${handles[1]!.win32Handle}`);
      handles[1]!.feed([5]);
      await until(() => sessions[1]?.data.length === 1);
    }, 15_000);
  }

  test("other device events (arrival, a refused removal) close nothing", async () => {
    const service = serviceWatch();
    const handle = new ScriptedHandle();
    startVirtio(() => handle, service.watch);
    await until(() => handle.readWaiting);
    service.watch.deviceEvent(0x8000); // DBT_DEVICEARRIVAL
    service.watch.deviceEvent(DBT.queryRemoveFailed);
    expect(handle.closed).toBe(false);
    expect(service.events).toEqual([`register ${handle.win32Handle}`]);
  });

  test("a registration that fails is logged once and the ports are served anyway", async () => {
    const service = serviceWatch({ failWith: 120 });
    const handles: ScriptedHandle[] = [];
    const { sessions } = startVirtio(() => {
      const handle = new ScriptedHandle();
      handles.push(handle);
      return handle;
    }, service.watch);
    await until(() => handles[0]?.readWaiting === true);
    handles[0]!.failRead(ERROR_DEVICE_REMOVED);
    await until(() => handles[1]?.readWaiting === true);
    handles[1]!.feed([1]);
    await until(() => sessions[1]?.data.length === 1);
    expect(service.lines.filter((line) => line.includes("device removal notifications unavailable"))).toHaveLength(1);
    expect(service.lines.some((line) => line.includes("RegisterDeviceNotificationW failed: Win32 error (120)"))).toBe(true);
  });
});
