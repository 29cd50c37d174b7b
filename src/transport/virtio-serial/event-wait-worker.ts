/**
 * Waits on a Win32 event for the port's overlapped reads (windows.ts): each
 * message is an event handle; the worker blocks in WaitForSingleObject, off
 * the event loop, and answers once it is signalled.
 */
import { dlopen, FFIType } from "bun:ffi";

declare const self: Worker;

const INFINITE = 0xffffffff;
const kernel32 = dlopen("kernel32.dll", { WaitForSingleObject: { args: [FFIType.i64, FFIType.u32], returns: FFIType.u32 } }).symbols;

self.onmessage = (message: MessageEvent<string>) => {
  self.postMessage(kernel32.WaitForSingleObject(BigInt(message.data), INFINITE));
};
