/**
 * The agent as a Windows service: it answers the service control manager so
 * that start, stop and shutdown never end in error 1053. START_PENDING at
 * once, RUNNING when the ports are open; STOP, PRESHUTDOWN or SHUTDOWN runs the agent's
 * graceful stop (running calls finish, up to stop_grace_seconds) behind
 * STOP_PENDING, then STOPPED. DEVICEEVENT (a port's device about to be
 * removed) goes to the transports' device-removal watch, which the service
 * enables with its status handle. The SCM's calls are injected (`scmApi` is the
 * real one), so the state machine is unit-tested on Linux.
 */
import type { Logger } from "../log/logger.ts";
import { ptr, type Pointer } from "bun:ffi";
import { deviceRemovalWatch, type DeviceRemovalWatch, type HandleNotifications } from "../transport/virtio-serial/device-removal.ts";
import { advapi32, check, lastError, runServiceDispatcher, Win32Error } from "./advapi32.ts";
import { serviceHandleNotifications } from "./device-notifications.ts";

export const SERVICE_NAME = "kvm-manager-agent";

export const SERVICE_STATE = { stopped: 1, startPending: 2, stopPending: 3, running: 4 } as const;
/** DEVICEEVENT needs no SERVICE_ACCEPT_ flag: Windows sends it for what RegisterDeviceNotificationW registered. */
export const SERVICE_CONTROL = { stop: 1, interrogate: 4, shutdown: 5, deviceEvent: 0xb, preshutdown: 0xf } as const;
const SERVICE_ACCEPT_STOP = 0x1;
const SERVICE_ACCEPT_SHUTDOWN = 0x4;
/** PRESHUTDOWN comes before SHUTDOWN with the service's own time limit (PreshutdownTimeout, 3 min by default), not the few seconds SHUTDOWN leaves. */
const SERVICE_ACCEPT_PRESHUTDOWN = 0x100;
const SERVICE_WIN32_OWN_PROCESS = 0x10;
const ERROR_SERVICE_SPECIFIC_ERROR = 1066;
/** How long the SCM waits for RUNNING before it gives up (the transports only open ports, which is quick). */
const START_WAIT_HINT_MS = 30_000;
/** Beyond the grace period, for closing ports and flushing the audit. */
const STOP_MARGIN_MS = 10_000;

export interface ServiceStatus {
  state: (typeof SERVICE_STATE)[keyof typeof SERVICE_STATE];
  controlsAccepted: number;
  win32ExitCode: number;
  serviceExitCode: number;
  checkPoint: number;
  waitHintMs: number;
}

/** What the service needs of the SCM. */
export interface ServiceControlManager {
  /** Hands the process to the SCM: `onStart` when it starts the service, `onControl` per control (with HandlerEx's dwEventType); settles when the SCM lets the process go. */
  dispatch(onStart: () => void, onControl: (control: number, eventType: number) => void): Promise<void>;
  setStatus(status: ServiceStatus): void;
  /** Device notifications sent to this service's HandlerEx (once the SCM has started it). */
  handleNotifications(): HandleNotifications;
}

export interface StoppableAgent {
  stop(reason: string): Promise<void>;
}

/**
 * Runs `start` as the service and returns the process exit code once the SCM
 * is done. A failed start reports STOPPED with a service-specific exit code,
 * which the SCM shows and its failure actions act on.
 */
export async function runService(
  scm: ServiceControlManager,
  start: () => Promise<StoppableAgent>,
  logger: Logger,
  graceSeconds: () => number,
  removalWatch: Pick<DeviceRemovalWatch, "enable" | "deviceEvent"> = deviceRemovalWatch,
): Promise<number> {
  let checkPoint = 0;
  let current: ServiceStatus | null = null;
  const report = (state: ServiceStatus["state"], extra: Partial<ServiceStatus> = {}) => {
    const pending = state === SERVICE_STATE.startPending || state === SERVICE_STATE.stopPending;
    current = {
      state,
      controlsAccepted: state === SERVICE_STATE.running ? SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN | SERVICE_ACCEPT_PRESHUTDOWN : 0,
      win32ExitCode: 0,
      serviceExitCode: 0,
      checkPoint: pending ? ++checkPoint : 0,
      waitHintMs: 0,
      ...extra,
    };
    scm.setStatus(current);
  };
  let agent: StoppableAgent | null = null;
  let starting: Promise<void> | null = null;
  let stopping: Promise<void> | null = null;
  let exitCode = 0;
  const stop = (reason: string) =>
    (stopping ??= (async () => {
      await starting;
      if (current?.state === SERVICE_STATE.stopped) return;
      report(SERVICE_STATE.stopPending, { waitHintMs: graceSeconds() * 1000 + STOP_MARGIN_MS });
      try {
        await agent?.stop(reason);
      } catch (error) {
        logger.error("the graceful stop failed", { error: (error as Error).message });
      }
      report(SERVICE_STATE.stopped);
    })());
  const onStart = () => {
    starting = (async () => {
      report(SERVICE_STATE.startPending, { waitHintMs: START_WAIT_HINT_MS });
      try {
        // Before the transports open their ports, so that every port handle is registered.
        removalWatch.enable(scm.handleNotifications(), logger);
        agent = await start();
        report(SERVICE_STATE.running);
      } catch (error) {
        logger.error("the service could not start", { error: (error as Error).message });
        exitCode = 1;
        report(SERVICE_STATE.stopped, { win32ExitCode: ERROR_SERVICE_SPECIFIC_ERROR, serviceExitCode: 1 });
      }
    })();
  };
  const onControl = (control: number, eventType: number) => {
    if (control === SERVICE_CONTROL.stop || control === SERVICE_CONTROL.shutdown || control === SERVICE_CONTROL.preshutdown) {
      logger.info("service control", { control: control === SERVICE_CONTROL.stop ? "stop" : "shutdown" });
      void stop(control === SERVICE_CONTROL.stop ? "service stop" : "system shutdown");
    } else if (control === SERVICE_CONTROL.interrogate && current) {
      scm.setStatus(current);
    } else if (control === SERVICE_CONTROL.deviceEvent) {
      removalWatch.deviceEvent(eventType);
    }
  };
  await scm.dispatch(onStart, onControl);
  return exitCode;
}

/** SERVICE_STATUS: seven DWORDs. */
export function serviceStatusStruct(status: ServiceStatus): Uint32Array {
  return Uint32Array.of(
    SERVICE_WIN32_OWN_PROCESS,
    status.state,
    status.controlsAccepted,
    status.win32ExitCode,
    status.serviceExitCode,
    status.checkPoint,
    status.waitHintMs,
  );
}

/** The real SCM, through advapi32 (Windows only). */
export function scmApi(name = SERVICE_NAME): ServiceControlManager {
  let handle: ReturnType<ReturnType<typeof advapi32>["RegisterServiceCtrlHandlerExW"]> = null;
  return {
    dispatch(onStart, onControl) {
      const dispatcher = runServiceDispatcher(
        name,
        () => {
          handle = check("RegisterServiceCtrlHandlerExW", advapi32().RegisterServiceCtrlHandlerExW(dispatcher.nameBuffer, dispatcher.handlerPointer, null));
          onStart();
        },
        onControl,
      );
      return dispatcher.done;
    },
    setStatus(status) {
      if (handle === null) throw new Error("SetServiceStatus before the SCM started the service");
      const struct = serviceStatusStruct(status);
      if (advapi32().SetServiceStatus(handle, ptr(struct)) === 0) throw new Win32Error("SetServiceStatus", lastError());
    },
    handleNotifications() {
      if (handle === null) throw new Error("device notifications before the SCM started the service");
      return serviceHandleNotifications(handle as Pointer);
    },
  };
}
