/**
 * A serial line on Windows (COM1, COM2, ...): the same overlapped handle as a
 * virtio-serial port (virtio-serial/windows.ts), whose read-interval timeout a
 * real COM port does honour. The line's speed and framing stay as Windows has
 * them: QEMU's isa-serial chardev ignores both.
 */
import { openOverlapped, WindowsPortDevice } from "../virtio-serial/windows.ts";
import type { SerialLine } from "./isa-serial.ts";

/** "COM1" as CreateFileW needs it: COM10 and above only open through the \\.\ device namespace, so every COMn goes through it. */
export function comDevicePath(path: string): string {
  return /^COM\d+$/i.test(path) ? `\\\\.\\${path.toUpperCase()}` : path;
}

export function openWindowsLine(path: string, openHandle = openOverlapped): SerialLine {
  return WindowsPortDevice.open(comDevicePath(path), openHandle);
}
