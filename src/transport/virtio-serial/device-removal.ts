/**
 * Closing the Windows port handles when their device is about to go (a vioser
 * driver update or a disabled device removes it, then adds it back): a handle
 * kept open vetoes the removal, and the update then wants a reboot.
 *
 * When the agent runs as a service, each open port handle is registered with
 * RegisterDeviceNotificationW (DBT_DEVTYP_HANDLE, DEVICE_NOTIFY_SERVICE_HANDLE);
 * Windows then sends SERVICE_CONTROL_DEVICEEVENT to the service's HandlerEx,
 * which hands the event type here. On query-remove, remove-pending or
 * remove-complete every watched port is closed; the transport's wait for the
 * port opens it again once it is back. The event's data is not read: HandlerEx
 * is a threadsafe callback that runs after the SCM's thread has moved on, when
 * the DEV_BROADCAST_HANDLE may be gone — so all ports close (they are children
 * of the same vioser device, which an update removes together), and the ones
 * still there reopen. A console run has no HandlerEx: its ports close on the
 * first failed I/O only.
 */
import type { Logger } from "../../log/logger.ts";

export const DBT = { queryRemove: 0x8001, queryRemoveFailed: 0x8002, removePending: 0x8003, removeComplete: 0x8004 } as const;
const REMOVAL_EVENTS = new Set<number>([DBT.queryRemove, DBT.removePending, DBT.removeComplete]);

/** RegisterDeviceNotificationW / UnregisterDeviceNotification for one handle; `register` throws a Win32 error. */
export interface HandleNotifications {
  register(handle: bigint): bigint;
  unregister(notification: bigint): void;
}

interface Watched {
  notification: bigint | null;
  onRemoval: () => void;
}

export class DeviceRemovalWatch {
  private api: HandleNotifications | null = null;
  private logger: Logger | null = null;
  private registrationFailed = false;
  private readonly watched = new Set<Watched>();

  /** The service calls this once it has its status handle; before (and in a console run) watch() registers nothing. */
  enable(api: HandleNotifications, logger: Logger): void {
    this.api = api;
    this.logger = logger;
  }

  /** Registers `handle`; `onRemoval` runs when its device is to be removed. Returns what unregisters it (call before closing the handle). */
  watch(handle: bigint, onRemoval: () => void): () => void {
    const entry: Watched = { notification: this.register(handle), onRemoval };
    this.watched.add(entry);
    return () => {
      if (!this.watched.delete(entry)) return;
      if (entry.notification !== null) this.api?.unregister(entry.notification);
    };
  }

  private register(handle: bigint): bigint | null {
    if (!this.api) return null;
    try {
      const notification = this.api.register(handle);
      this.logger?.info("port handle registered for device removal events");
      return notification;
    } catch (error) {
      // Logged once: the ports still close on the first failed I/O, as in a console run.
      if (!this.registrationFailed) this.logger?.warn("device removal notifications unavailable", { error: (error as Error).message });
      this.registrationFailed = true;
      return null;
    }
  }

  /** SERVICE_CONTROL_DEVICEEVENT's event type (a DBT_ code). */
  deviceEvent(eventType: number): void {
    if (!REMOVAL_EVENTS.has(eventType) || this.watched.size === 0) return;
    this.logger?.info("port device being removed; closing its handles", { event: `0x${eventType.toString(16)}` });
    for (const entry of [...this.watched]) entry.onRemoval();
  }
}

/** The process's one watch: the service enables it, the Windows ports use it. */
export const deviceRemovalWatch = new DeviceRemovalWatch();
