/** RegisterDeviceNotificationW for a port handle, delivered to the service's HandlerEx (user32, through bun:ffi; Windows only). */
import { dlopen, FFIType, ptr, type Pointer } from "bun:ffi";
import type { HandleNotifications } from "../transport/virtio-serial/device-removal.ts";
import { lastError, Win32Error } from "./advapi32.ts";

const DBT_DEVTYP_HANDLE = 6;
const DEVICE_NOTIFY_SERVICE_HANDLE = 1;
/** sizeof(DEV_BROADCAST_HANDLE) on x64, and dbch_handle's offset (checked with mingw-w64's dbt.h). */
const DEV_BROADCAST_HANDLE_BYTES = 56;
const DBCH_HANDLE_OFFSET = 16;

function open() {
  return dlopen("user32.dll", {
    RegisterDeviceNotificationW: { args: [FFIType.ptr, FFIType.ptr, FFIType.u32], returns: FFIType.u64 },
    UnregisterDeviceNotification: { args: [FFIType.u64], returns: FFIType.i32 },
  }).symbols;
}

let symbols: ReturnType<typeof open> | null = null;

/** DEV_BROADCAST_HANDLE for `handle`: dbch_size, dbch_devicetype, then dbch_handle; the rest zero. */
export function devBroadcastHandle(handle: bigint): Uint8Array {
  const struct = new Uint8Array(DEV_BROADCAST_HANDLE_BYTES);
  const view = new DataView(struct.buffer);
  view.setUint32(0, DEV_BROADCAST_HANDLE_BYTES, true);
  view.setUint32(4, DBT_DEVTYP_HANDLE, true);
  view.setBigUint64(DBCH_HANDLE_OFFSET, BigInt.asUintN(64, handle), true);
  return struct;
}

/** Notifications for handles, sent to the service whose status handle is `statusHandle`. */
export function serviceHandleNotifications(statusHandle: Pointer): HandleNotifications {
  return {
    register(handle) {
      const user32 = (symbols ??= open());
      const notification = user32.RegisterDeviceNotificationW(statusHandle, ptr(devBroadcastHandle(handle)), DEVICE_NOTIFY_SERVICE_HANDLE) as bigint;
      if (notification === 0n) throw new Win32Error("RegisterDeviceNotificationW", lastError());
      return notification;
    },
    unregister(notification) {
      (symbols ??= open()).UnregisterDeviceNotification(notification);
    },
  };
}
