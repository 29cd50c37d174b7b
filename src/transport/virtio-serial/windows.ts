/**
 * A virtio-serial port on Windows (\\.\Global\org.kvmmanager.agent.0, from
 * the vioser driver), and the same handle logic for a COM port (isa-serial).
 *
 * Overlapped I/O, not a Worker parked in ReadFile: on a handle opened without
 * FILE_FLAG_OVERLAPPED, Windows serialises all I/O on it, so a WriteFile waits
 * behind a ReadFile that waits for the host — and vioser is not a COM port, so
 * read timeouts cannot be relied on to break that up. With the flag:
 *  - one ReadFile is outstanding at a time; a Worker blocks in
 *    WaitForSingleObject on its event and posts back when it is signalled, so
 *    the event loop never waits and nothing polls while the port is idle
 *    (measured under Wine: RegisterWaitForSingleObject with a threadsafe
 *    JSCallback instead cost ~7% of a CPU while idle, the Worker ~0.1%);
 *  - WriteFile returns at once; a write still pending is checked without
 *    waiting the next time output is sent (the connection retries every few ms
 *    while output waits), so the event loop never stalls on a slow host;
 *  - SetCommTimeouts(ReadIntervalTimeout = 1 ms) is tried, best-effort: a real
 *    COM port (and Wine, which treats a pty-backed \\.\Global\ port as one)
 *    would otherwise hold a read until the whole buffer is full; vioser, not
 *    a COM port, may refuse it (the result is ignored): its reads complete
 *    with whatever has arrived;
 *  - share mode 0: like the Linux driver, vioser takes one opener at a time.
 * Any failed read or write (the device removed by a driver update, a host
 * gone for good) errors the stream; the transport then closes the handle — so
 * nothing of ours holds the device — and polls for it to come back. In a
 * service, the handle is also closed as soon as Windows asks whether its
 * device may be removed (device-removal.ts), before any I/O fails.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { deviceRemovalWatch, type DeviceRemovalWatch } from "./device-removal.ts";
import { workerUrl } from "../../runtime/worker-url.ts";
import type { PortDevice } from "./virtio-serial.ts";

const GENERIC_READ = 0x80000000;
const GENERIC_WRITE = 0x40000000;
const OPEN_EXISTING = 3;
const FILE_FLAG_OVERLAPPED = 0x40000000;
const INVALID_HANDLE_VALUE = -1n;
const ERROR_FILE_NOT_FOUND = 2;
const ERROR_PATH_NOT_FOUND = 3;
const ERROR_IO_INCOMPLETE = 996;
const ERROR_TIMEOUT = 1460;
const ERROR_IO_PENDING = 997;
/** sizeof(OVERLAPPED) on x64: Internal, InternalHigh, Offset/OffsetHigh, hEvent at 24. */
const OVERLAPPED_BYTES = 32;
const READ_BUFFER_BYTES = 64 * 1024;
const WRITE_BUFFER_BYTES = 64 * 1024;

const ERROR_NAMES: Record<number, string> = {
  2: "ERROR_FILE_NOT_FOUND",
  3: "ERROR_PATH_NOT_FOUND",
  5: "ERROR_ACCESS_DENIED",
  6: "ERROR_INVALID_HANDLE",
  21: "ERROR_NOT_READY",
  31: "ERROR_GEN_FAILURE",
  32: "ERROR_SHARING_VIOLATION",
  995: "ERROR_OPERATION_ABORTED",
  1460: "ERROR_TIMEOUT",
  1167: "ERROR_DEVICE_NOT_CONNECTED",
  1617: "ERROR_DEVICE_REMOVED",
};

export class Win32Error extends Error {
  constructor(
    readonly call: string,
    readonly code: number,
  ) {
    super(`${call} failed: ${ERROR_NAMES[code] ?? "Win32 error"} (${code})`);
  }

  /** The device does not exist (yet, or any more): wait for it rather than report a failure. */
  get deviceMissing(): boolean {
    return this.code === ERROR_FILE_NOT_FOUND || this.code === ERROR_PATH_NOT_FOUND;
  }
}

/** One open handle, as the device logic needs it; the real one is overlapped kernel32 I/O, tests inject others. */
export interface PortHandle {
  /** The Win32 HANDLE, for device notifications. */
  readonly win32Handle: bigint;
  /** Resolves with the bytes read into `into` (0 when a read timed out empty); rejects with Win32Error. */
  read(into: Uint8Array): Promise<number>;
  /** Starts writing `bytes`: the count written at once, or "pending" (the bytes are the handle's until writeResult() says). */
  write(bytes: Uint8Array): number | "pending";
  /** The pending write's count once done, or "pending"; throws Win32Error. */
  writeResult(): number | "pending";
  /** Cancels what is outstanding and closes the handle. */
  close(): void;
}

export type OpenHandle = (path: string) => PortHandle;

/** What a port's stream errors with when Windows is removing its device: the transport reopens it later. */
export class PortRemovalError extends Error {
  constructor() {
    super("the port's device is being removed (a driver update or a disabled device)");
  }
}

/** Empty reads in a row (a read timeout with nothing to read) back off up to this, so they cannot spin. */
const EMPTY_READ_MAX_DELAY_MS = 1_000;

/**
 * The port over any PortHandle: reads as a pull stream (one read outstanding,
 * and none while the session is paused), writes through one pending write
 * whose unsent tail is finished before new bytes are taken.
 */
export class WindowsPortDevice implements PortDevice {
  private readonly readBuffer = new Uint8Array(READ_BUFFER_BYTES);
  /** Bytes handed to a pending write, and how many of them it had sent when it last completed. */
  private pendingWrite: Uint8Array | null = null;
  private closed = false;
  private removing = false;
  private readonly unwatch: () => void;

  constructor(
    private readonly handle: PortHandle,
    private readonly sleep: (ms: number) => Promise<unknown> = Bun.sleep,
    removalWatch: DeviceRemovalWatch = deviceRemovalWatch,
  ) {
    this.unwatch = removalWatch.watch(handle.win32Handle, () => {
      this.removing = true;
      this.close();
    });
  }

  static open(path: string, openHandle: OpenHandle = openOverlapped, removalWatch: DeviceRemovalWatch = deviceRemovalWatch): WindowsPortDevice {
    return new WindowsPortDevice(openHandle(path), Bun.sleep, removalWatch);
  }

  /** vioser does not tell a connected host from an absent one here: a session lasts as long as the handle, and resyncs over host changes. */
  hostConnected(): boolean {
    return true;
  }

  async waitForHost(): Promise<void> {}

  readStream(): ReadableStream<Uint8Array> {
    let emptyDelay = 0;
    return new ReadableStream<Uint8Array>(
      {
        pull: async (controller) => {
          for (;;) {
            if (this.removing) return controller.error(new PortRemovalError());
            if (this.closed) return controller.close();
            const n = await this.handle.read(this.readBuffer);
            if (this.removing) return controller.error(new PortRemovalError());
            if (this.closed) return controller.close();
            if (n > 0) {
              emptyDelay = 0;
              return controller.enqueue(this.readBuffer.slice(0, n));
            }
            emptyDelay = Math.min(Math.max(emptyDelay * 2, 10), EMPTY_READ_MAX_DELAY_MS);
            await this.sleep(emptyDelay);
          }
        },
      },
      { highWaterMark: 0 },
    );
  }

  writeSome(bytes: Uint8Array): number {
    if (this.closed) throw new Error("port closed");
    if (this.pendingWrite) {
      const done = this.handle.writeResult();
      if (done === "pending") return 0;
      const rest = this.pendingWrite.subarray(done);
      this.pendingWrite = null;
      // The handle took all of the earlier bytes: their unsent tail goes before anything new.
      if (rest.length > 0) {
        this.startWrite(rest);
        return 0;
      }
    }
    return this.startWrite(bytes.subarray(0, WRITE_BUFFER_BYTES));
  }

  /** Bytes taken: written now, or all of them when the write is left pending. */
  private startWrite(bytes: Uint8Array): number {
    const copy = bytes.slice();
    const result = this.handle.write(copy);
    if (result !== "pending") return result;
    this.pendingWrite = copy;
    return copy.length;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    // Unregistered first: a notification must not outlive the handle it names.
    this.unwatch();
    this.handle.close();
  }
}

function openKernel32() {
  return dlopen("kernel32.dll", {
    CreateFileW: { args: [FFIType.ptr, FFIType.u32, FFIType.u32, FFIType.ptr, FFIType.u32, FFIType.u32, FFIType.i64], returns: FFIType.i64 },
    ReadFile: { args: [FFIType.i64, FFIType.ptr, FFIType.u32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    WriteFile: { args: [FFIType.i64, FFIType.ptr, FFIType.u32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    GetOverlappedResult: { args: [FFIType.i64, FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    CancelIoEx: { args: [FFIType.i64, FFIType.ptr], returns: FFIType.i32 },
    CloseHandle: { args: [FFIType.i64], returns: FFIType.i32 },
    CreateEventW: { args: [FFIType.ptr, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i64 },
    SetCommTimeouts: { args: [FFIType.i64, FFIType.ptr], returns: FFIType.i32 },
    GetLastError: { args: [], returns: FFIType.u32 },
  }).symbols;
}

let kernel32Symbols: ReturnType<typeof openKernel32> | null = null;
function kernel32(): ReturnType<typeof openKernel32> {
  return (kernel32Symbols ??= openKernel32());
}

/** Opens `path` for overlapped I/O with the read timeouts a serial port needs (best-effort). */
export function openOverlapped(path: string): PortHandle {
  const k = kernel32();
  const name = Buffer.from(`${path}\0`, "utf16le");
  const handle = k.CreateFileW(ptr(name), GENERIC_READ | GENERIC_WRITE, 0, null, OPEN_EXISTING, FILE_FLAG_OVERLAPPED, 0n) as bigint;
  if (handle === INVALID_HANDLE_VALUE) throw new Win32Error("CreateFileW", k.GetLastError());
  // ReadIntervalTimeout 1 ms, no total timeout: wait for the first byte, then return what came.
  k.SetCommTimeouts(handle, ptr(new Uint32Array([1, 0, 0, 0, 0])));
  try {
    return new OverlappedHandle(handle);
  } catch (error) {
    k.CloseHandle(handle);
    throw error;
  }
}

class OverlappedHandle implements PortHandle {
  private readonly k = kernel32();
  /** OVERLAPPED structs, counts and the write buffer stay referenced here until the handle is closed. */
  private readonly readOverlapped = new BigUint64Array(OVERLAPPED_BYTES / 8);
  private readonly writeOverlapped = new BigUint64Array(OVERLAPPED_BYTES / 8);
  private readonly count = new Uint32Array(1);
  private readonly waiter: Worker;
  private signalled: (() => void) | null = null;
  private readonly readEvent: bigint;
  private readonly writeEvent: bigint;
  private writeBuffer: Uint8Array | null = null;
  private readPending = false;
  private closed = false;

  constructor(readonly win32Handle: bigint) {
    this.readEvent = this.createEvent();
    try {
      this.writeEvent = this.createEvent();
    } catch (error) {
      this.k.CloseHandle(this.readEvent);
      throw error;
    }
    this.readOverlapped[3] = BigInt.asUintN(64, this.readEvent);
    this.writeOverlapped[3] = BigInt.asUintN(64, this.writeEvent);
    // Kept referenced: it is what keeps the event loop waiting for the port (measured under Wine, an event
    // loop with nothing referenced spins at most of a CPU instead of sleeping).
    try {
      this.waiter = new Worker(workerUrl("transport/virtio-serial/event-wait-worker"));
    } catch (error) {
      this.k.CloseHandle(this.readEvent);
      this.k.CloseHandle(this.writeEvent);
      throw error;
    }
    this.waiter.onmessage = () => {
      const wake = this.signalled;
      this.signalled = null;
      wake?.();
    };
  }

  private createEvent(): bigint {
    const event = this.k.CreateEventW(null, 1, 0, null) as bigint;
    if (event === 0n) throw new Win32Error("CreateEventW", this.k.GetLastError());
    return event;
  }

  async read(into: Uint8Array): Promise<number> {
    this.readOverlapped.fill(0n, 0, 3);
    if (this.k.ReadFile(this.win32Handle, ptr(into), into.length, null, ptr(this.readOverlapped))) return this.readResult();
    const error = this.k.GetLastError();
    if (error !== ERROR_IO_PENDING) throw new Win32Error("ReadFile", error);
    this.readPending = true;
    await new Promise<void>((resolve) => {
      this.signalled = resolve;
      this.waiter.postMessage(String(this.readEvent));
    });
    this.readPending = false;
    if (this.closed) return 0;
    return this.readResult();
  }

  private readResult(): number {
    if (!this.k.GetOverlappedResult(this.win32Handle, ptr(this.readOverlapped), ptr(this.count), 0)) {
      const error = this.k.GetLastError();
      // Wine ends a read cut short by the interval timeout with STATUS_TIMEOUT, the bytes read still counted.
      if (error !== ERROR_TIMEOUT) throw new Win32Error("ReadFile", error);
    }
    return this.count[0]!;
  }

  write(bytes: Uint8Array): number | "pending" {
    this.writeOverlapped.fill(0n, 0, 3);
    this.writeBuffer = bytes;
    if (this.k.WriteFile(this.win32Handle, ptr(bytes), bytes.length, null, ptr(this.writeOverlapped))) return this.finishedWrite();
    const error = this.k.GetLastError();
    if (error === ERROR_IO_PENDING) return "pending";
    throw new Win32Error("WriteFile", error);
  }

  writeResult(): number | "pending" {
    if (this.k.GetOverlappedResult(this.win32Handle, ptr(this.writeOverlapped), ptr(this.count), 0)) return this.finishedWrite();
    const error = this.k.GetLastError();
    if (error === ERROR_IO_INCOMPLETE) return "pending";
    throw new Win32Error("WriteFile", error);
  }

  private finishedWrite(): number {
    if (!this.k.GetOverlappedResult(this.win32Handle, ptr(this.writeOverlapped), ptr(this.count), 0)) {
      throw new Win32Error("WriteFile", this.k.GetLastError());
    }
    this.writeBuffer = null;
    return this.count[0]!;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.k.CancelIoEx(this.win32Handle, null);
    // The kernel may write into our buffers until a cancelled operation completes: wait for that (it is immediate).
    if (this.readPending) this.k.GetOverlappedResult(this.win32Handle, ptr(this.readOverlapped), ptr(this.count), 1);
    if (this.writeBuffer) this.k.GetOverlappedResult(this.win32Handle, ptr(this.writeOverlapped), ptr(this.count), 1);
    // The cancelled read signalled its event, so the worker is not left blocked on a handle about to close.
    this.waiter.terminate();
    this.signalled?.();
    this.k.CloseHandle(this.win32Handle);
    this.k.CloseHandle(this.readEvent);
    this.k.CloseHandle(this.writeEvent);
  }
}
