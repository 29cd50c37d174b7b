/**
 * `--install-service` / `--uninstall-service`: the service registered by hand,
 * as the MSI registers it (auto start, LocalSystem, restart on failure), for
 * guests installed without the MSI. The SCM calls are injected for tests.
 */
import { ptr } from "bun:ffi";
import { advapi32, check, lastError, wide, Win32Error } from "./advapi32.ts";
import { SERVICE_NAME, SERVICE_STATE } from "./windows-service.ts";

export const SERVICE_DISPLAY_NAME = "KVM Manager Agent";
export const SERVICE_DESCRIPTION = "Guest agent for KVM/QEMU virtual machines: answers the host on virtio-serial ports (native JSON-RPC and the QEMU guest agent protocol).";
/** Restart 5 s after each of the first three failures in a day, as the MSI's `sc failure` sets it. */
export const RESTART_DELAYS_MS = [5_000, 5_000, 5_000];
export const FAILURE_RESET_SECONDS = 86_400;

export interface ServiceSpec {
  name: string;
  displayName: string;
  description: string;
  /** The full command line the SCM runs, quoted. */
  commandLine: string;
}

export interface ServiceInstaller {
  /** Creates the service (auto start, LocalSystem) with its description and restart-on-failure actions. */
  create(spec: ServiceSpec): void;
  /** Stops the service if it runs, then deletes it. */
  remove(name: string): void;
}

/** `"C:\...\kvm-manager-agent.exe" --service [--config "FILE"]`: what the SCM starts. */
export function serviceCommandLine(exePath: string, configPath?: string): string {
  return `"${exePath}" --service${configPath === undefined ? "" : ` --config "${configPath}"`}`;
}

export function serviceSpec(exePath: string, configPath?: string): ServiceSpec {
  return { name: SERVICE_NAME, displayName: SERVICE_DISPLAY_NAME, description: SERVICE_DESCRIPTION, commandLine: serviceCommandLine(exePath, configPath) };
}

const SC_MANAGER_CONNECT = 0x1;
const SC_MANAGER_CREATE_SERVICE = 0x2;
const SERVICE_ALL_ACCESS = 0xf01ff;
const SERVICE_QUERY_STATUS = 0x4;
const SERVICE_STOP = 0x20;
const DELETE = 0x10000;
const SERVICE_WIN32_OWN_PROCESS = 0x10;
const SERVICE_AUTO_START = 0x2;
const SERVICE_ERROR_NORMAL = 0x1;
const SERVICE_CONFIG_DESCRIPTION = 1;
const SERVICE_CONFIG_FAILURE_ACTIONS = 2;
const SC_ACTION_RESTART = 1;
const SERVICE_CONTROL_STOP = 1;
const ERROR_SERVICE_NOT_ACTIVE = 1062;
const STOP_WAIT_MS = 30_000;

/** SERVICE_FAILURE_ACTIONSW (x64): reset period, reboot message, command, action count, actions. */
export function failureActionsStruct(resetSeconds: number, delaysMs: number[]): { struct: BigUint64Array; actions: Uint32Array } {
  const actions = new Uint32Array(delaysMs.length * 2);
  delaysMs.forEach((delay, i) => {
    actions[i * 2] = SC_ACTION_RESTART;
    actions[i * 2 + 1] = delay;
  });
  const struct = new BigUint64Array(5);
  struct[0] = BigInt(resetSeconds); // DWORD dwResetPeriod, then padding
  struct[3] = BigInt(delaysMs.length); // DWORD cActions, then padding
  if (delaysMs.length > 0) struct[4] = BigInt(ptr(actions));
  return { struct, actions };
}

/** The real SCM, through advapi32 (Windows only; run as an administrator). */
export const scmInstaller: ServiceInstaller = {
  create(spec) {
    const api = advapi32();
    const manager = check("OpenSCManagerW", api.OpenSCManagerW(null, null, SC_MANAGER_CONNECT | SC_MANAGER_CREATE_SERVICE));
    try {
      const service = check(
        "CreateServiceW",
        api.CreateServiceW(
          manager,
          wide(spec.name),
          wide(spec.displayName),
          SERVICE_ALL_ACCESS,
          SERVICE_WIN32_OWN_PROCESS,
          SERVICE_AUTO_START,
          SERVICE_ERROR_NORMAL,
          wide(spec.commandLine),
          null,
          null,
          null,
          null, // LocalSystem
          null,
        ),
      );
      try {
        const description = wide(spec.description);
        const descriptionStruct = BigUint64Array.of(BigInt(ptr(description)));
        if (api.ChangeServiceConfig2W(service, SERVICE_CONFIG_DESCRIPTION, ptr(descriptionStruct)) === 0) throw new Win32Error("ChangeServiceConfig2W(description)", lastError());
        const { struct, actions } = failureActionsStruct(FAILURE_RESET_SECONDS, RESTART_DELAYS_MS);
        if (api.ChangeServiceConfig2W(service, SERVICE_CONFIG_FAILURE_ACTIONS, ptr(struct)) === 0) throw new Win32Error("ChangeServiceConfig2W(failure actions)", lastError());
        void actions; // referenced by the struct until the call returns
      } finally {
        api.CloseServiceHandle(service);
      }
    } finally {
      api.CloseServiceHandle(manager);
    }
  },
  remove(name) {
    const api = advapi32();
    const manager = check("OpenSCManagerW", api.OpenSCManagerW(null, null, SC_MANAGER_CONNECT));
    try {
      const service = check("OpenServiceW", api.OpenServiceW(manager, wide(name), SERVICE_STOP | SERVICE_QUERY_STATUS | DELETE));
      try {
        const status = new Uint32Array(7);
        if (api.ControlService(service, SERVICE_CONTROL_STOP, ptr(status)) !== 0) {
          const deadline = Date.now() + STOP_WAIT_MS;
          while (status[1] !== SERVICE_STATE.stopped && Date.now() < deadline && api.QueryServiceStatus(service, ptr(status)) !== 0) Bun.sleepSync(250);
        } else {
          const code = lastError();
          if (code !== ERROR_SERVICE_NOT_ACTIVE) throw new Win32Error("ControlService(stop)", code);
        }
        if (api.DeleteService(service) === 0) throw new Win32Error("DeleteService", lastError());
      } finally {
        api.CloseServiceHandle(service);
      }
    } finally {
      api.CloseServiceHandle(manager);
    }
  },
};
