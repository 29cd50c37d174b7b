/**
 * The advapi32 calls of the Windows service, its installer and the Event Log
 * sink, through bun:ffi; loaded on first use (only on Windows). Everything
 * above this file takes these calls injected, so that it is unit-tested on Linux.
 */
import { dlopen, FFIType, JSCallback, ptr, type Pointer } from "bun:ffi";

function open() {
  return dlopen("advapi32.dll", {
    RegisterServiceCtrlHandlerExW: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.ptr },
    SetServiceStatus: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    OpenSCManagerW: { args: [FFIType.ptr, FFIType.ptr, FFIType.u32], returns: FFIType.ptr },
    CreateServiceW: {
      args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.u32, FFIType.u32, FFIType.u32, FFIType.u32, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr],
      returns: FFIType.ptr,
    },
    OpenServiceW: { args: [FFIType.ptr, FFIType.ptr, FFIType.u32], returns: FFIType.ptr },
    ChangeServiceConfig2W: { args: [FFIType.ptr, FFIType.u32, FFIType.ptr], returns: FFIType.i32 },
    ControlService: { args: [FFIType.ptr, FFIType.u32, FFIType.ptr], returns: FFIType.i32 },
    QueryServiceStatus: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    DeleteService: { args: [FFIType.ptr], returns: FFIType.i32 },
    CloseServiceHandle: { args: [FFIType.ptr], returns: FFIType.i32 },
    RegisterEventSourceW: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.ptr },
    ReportEventW: {
      args: [FFIType.ptr, FFIType.u16, FFIType.u16, FFIType.u32, FFIType.ptr, FFIType.u16, FFIType.u32, FFIType.ptr, FFIType.ptr],
      returns: FFIType.i32,
    },
    DeregisterEventSource: { args: [FFIType.ptr], returns: FFIType.i32 },
  }).symbols;
}

function openKernel32() {
  return dlopen("kernel32.dll", { GetLastError: { args: [], returns: FFIType.u32 } }).symbols;
}

let symbols: ReturnType<typeof open> | null = null;
let kernel32: ReturnType<typeof openKernel32> | null = null;

export function advapi32(): ReturnType<typeof open> {
  return (symbols ??= open());
}

export function lastError(): number {
  return (kernel32 ??= openKernel32()).GetLastError();
}

/** A NUL-terminated UTF-16LE string, as the W functions take them. */
export function wide(text: string): Buffer {
  return Buffer.from(`${text}\0`, "utf16le");
}

/** A Win32 call that failed, with its GetLastError code. */
export class Win32Error extends Error {
  override name = "Win32Error";
  constructor(
    readonly call: string,
    readonly code: number,
  ) {
    super(`${call} failed: Windows error ${code}`);
  }
}

/** Calls that return a handle: null means failure. */
export function check<T>(call: string, result: T | null | 0): T {
  if (result === null || result === 0) throw new Win32Error(call, lastError());
  return result;
}

/**
 * StartServiceCtrlDispatcherW blocks its thread until the service stops, so it
 * runs in a Worker; the SCM calls ServiceMain on a thread of its own, hence a
 * threadsafe JSCallback, which runs on this (the main) thread. The Worker is
 * made from source text: a compiled executable has no worker file to load.
 */
const DISPATCHER_WORKER = `
import { dlopen, FFIType } from "bun:ffi";
self.onmessage = (event) => {
  const advapi32 = dlopen("advapi32.dll", { StartServiceCtrlDispatcherW: { args: [FFIType.ptr], returns: FFIType.i32 } }).symbols;
  const kernel32 = dlopen("kernel32.dll", { GetLastError: { args: [], returns: FFIType.u32 } }).symbols;
  const ok = advapi32.StartServiceCtrlDispatcherW(event.data.table);
  postMessage({ ok: ok !== 0, error: ok !== 0 ? 0 : kernel32.GetLastError() });
};
`;

/** Runs the service control dispatcher; resolves when it returns (the service reported STOPPED), rejects when it could not start. */
export function runServiceDispatcher(
  name: string,
  serviceMain: () => void,
  handler: (control: number, eventType: number) => void,
): { done: Promise<void>; handlerPointer: Pointer; nameBuffer: Buffer } {
  const nameBuffer = wide(name);
  const main = new JSCallback(() => serviceMain(), { args: [FFIType.u32, FFIType.ptr], returns: FFIType.void, threadsafe: true });
  // HandlerEx's result cannot come back from a threadsafe callback: the SCM reads NO_ERROR, which is right for the controls accepted
  // and lets a device removal proceed. Its event data is not read here: by the time this runs, the SCM may have freed it.
  const handlerEx = new JSCallback((control: number, eventType: number) => handler(control, eventType), {
    args: [FFIType.u32, FFIType.u32, FFIType.ptr, FFIType.ptr],
    returns: FFIType.u32,
    threadsafe: true,
  });
  // SERVICE_TABLE_ENTRYW[2]: { name, ServiceMain }, then the terminating { NULL, NULL }.
  const table = new BigUint64Array(4);
  table[0] = BigInt(ptr(nameBuffer));
  table[1] = BigInt(main.ptr!);
  const worker = new Worker(URL.createObjectURL(new Blob([DISPATCHER_WORKER], { type: "application/javascript" })));
  const done = new Promise<void>((resolve, reject) => {
    worker.onmessage = (event: MessageEvent<{ ok: boolean; error: number }>) => {
      void worker.terminate();
      // Kept alive until here: the SCM holds pointers into both.
      void table;
      main.close();
      handlerEx.close();
      if (event.data.ok) resolve();
      else reject(new Win32Error("StartServiceCtrlDispatcherW", event.data.error));
    };
    worker.onerror = (event) => reject(new Error(`service dispatcher thread failed: ${event.message}`));
  });
  worker.postMessage({ table: Number(ptr(table)) });
  return { done, handlerPointer: handlerEx.ptr!, nameBuffer };
}
