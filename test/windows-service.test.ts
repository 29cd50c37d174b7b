/**
 * The Windows service with the SCM injected: the states it reports on start,
 * stop, shutdown and a failed start, and what --install-service and
 * --uninstall-service ask of the SCM. The real advapi32 calls run under Wine
 * in test/e2e/wine-service.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { parseAgentArgs, UsageError } from "../src/cli/agent-args.ts";
import { silentLogger } from "../src/log/logger.ts";
import { runWindowsServiceCommand } from "../src/service/command.ts";
import { failureActionsStruct, serviceCommandLine, serviceSpec, type ServiceInstaller, type ServiceSpec } from "../src/service/install.ts";
import {
  runService,
  SERVICE_CONTROL,
  SERVICE_STATE,
  serviceStatusStruct,
  type ServiceControlManager,
  type ServiceStatus,
  type StoppableAgent,
} from "../src/service/windows-service.ts";
import { devBroadcastHandle } from "../src/service/device-notifications.ts";
import { DBT, DeviceRemovalWatch } from "../src/transport/virtio-serial/device-removal.ts";

const STATE_NAME = Object.fromEntries(Object.entries(SERVICE_STATE).map(([name, value]) => [value, name]));

/** An SCM that records every status and lets the test start the service and send controls. */
function fakeScm() {
  const statuses: ServiceStatus[] = [];
  let release!: () => void;
  let started!: () => void;
  let control!: (control: number, eventType: number) => void;
  /** RegisterDeviceNotificationW as the service would make it: what it registered, and what it unregistered. */
  const registered: bigint[] = [];
  const unregistered: bigint[] = [];
  const scm: ServiceControlManager = {
    dispatch(onStart, onControl) {
      started = onStart;
      control = onControl;
      return new Promise<void>((resolve) => (release = resolve));
    },
    setStatus(status) {
      statuses.push(status);
      if (status.state === SERVICE_STATE.stopped) release();
    },
    handleNotifications: () => ({
      register: (handle) => (registered.push(handle), handle + 0x1000n),
      unregister: (notification) => void unregistered.push(notification),
    }),
  };
  return {
    scm,
    watch: new DeviceRemovalWatch(),
    registered,
    unregistered,
    statuses,
    states: () => statuses.map((status) => STATE_NAME[status.state]),
    start: () => started(),
    control: (code: number, eventType = 0) => control(code, eventType),
  };
}

/** An agent whose stop waits until the test lets it finish, as calls still running do. */
function slowAgent() {
  const stops: string[] = [];
  let finish!: () => void;
  const agent: StoppableAgent = {
    stop(reason) {
      stops.push(reason);
      return new Promise<void>((resolve) => (finish = resolve));
    },
  };
  return { agent, stops, finish: () => finish() };
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

describe("service state machine", () => {
  test("start: START_PENDING at once, RUNNING once the agent is up, accepting stop, preshutdown and shutdown", async () => {
    const fake = fakeScm();
    let resolveStart!: (agent: StoppableAgent) => void;
    const done = runService(fake.scm, () => new Promise((resolve) => (resolveStart = resolve)), silentLogger, () => 10, fake.watch);
    fake.start();
    expect(fake.states()).toEqual(["startPending"]);
    expect(fake.statuses[0]).toMatchObject({ controlsAccepted: 0, checkPoint: 1, waitHintMs: 30_000 });
    resolveStart({ stop: async () => {} });
    await settle();
    expect(fake.states()).toEqual(["startPending", "running"]);
    expect(fake.statuses[1]).toEqual({ state: SERVICE_STATE.running, controlsAccepted: 0x1 | 0x4 | 0x100, win32ExitCode: 0, serviceExitCode: 0, checkPoint: 0, waitHintMs: 0 });
    fake.control(SERVICE_CONTROL.stop);
    expect(await done).toBe(0);
  });

  test("stop: STOP_PENDING for the grace period and a margin, the agent's graceful stop, then STOPPED and exit code 0", async () => {
    const fake = fakeScm();
    const slow = slowAgent();
    const done = runService(fake.scm, async () => slow.agent, silentLogger, () => 7, fake.watch);
    fake.start();
    await settle();
    fake.control(SERVICE_CONTROL.stop);
    await settle();
    expect(slow.stops).toEqual(["service stop"]);
    expect(fake.states()).toEqual(["startPending", "running", "stopPending"]);
    expect(fake.statuses[2]).toMatchObject({ controlsAccepted: 0, checkPoint: 2, waitHintMs: 17_000 });
    // A second stop while stopping changes nothing.
    fake.control(SERVICE_CONTROL.stop);
    await settle();
    expect(slow.stops).toEqual(["service stop"]);
    slow.finish();
    expect(await done).toBe(0);
    expect(fake.states()).toEqual(["startPending", "running", "stopPending", "stopped"]);
    expect(fake.statuses[3]).toMatchObject({ win32ExitCode: 0, serviceExitCode: 0 });
  });

  test("preshutdown and shutdown stop the agent the same way, with the reason logged as a shutdown", async () => {
    for (const control of [SERVICE_CONTROL.preshutdown, SERVICE_CONTROL.shutdown]) {
      const fake = fakeScm();
      const slow = slowAgent();
      const done = runService(fake.scm, async () => slow.agent, silentLogger, () => 10, fake.watch);
      fake.start();
      await settle();
      fake.control(control);
      await settle();
      slow.finish();
      expect(await done).toBe(0);
      expect(slow.stops).toEqual(["system shutdown"]);
      expect(fake.states()).toEqual(["startPending", "running", "stopPending", "stopped"]);
    }
  });

  test("a stop that comes while the agent is still starting waits for the start, then stops it", async () => {
    const fake = fakeScm();
    const slow = slowAgent();
    let resolveStart!: (agent: StoppableAgent) => void;
    const done = runService(fake.scm, () => new Promise((resolve) => (resolveStart = resolve)), silentLogger, () => 10, fake.watch);
    fake.start();
    fake.control(SERVICE_CONTROL.stop);
    await settle();
    expect(fake.states()).toEqual(["startPending"]);
    resolveStart(slow.agent);
    await settle();
    await settle();
    expect(slow.stops).toEqual(["service stop"]);
    slow.finish();
    expect(await done).toBe(0);
    expect(fake.states()).toEqual(["startPending", "running", "stopPending", "stopped"]);
  });

  test("a start that fails reports STOPPED with a service-specific exit code (the SCM's failure actions see it)", async () => {
    const fake = fakeScm();
    const logged: string[] = [];
    const logger = { ...silentLogger, error: (msg: string, fields?: object) => void logged.push(`${msg} ${JSON.stringify(fields)}`) };
    const done = runService(fake.scm, async () => { throw new Error("config.toml: [transport] type: bad"); }, logger, () => 10, fake.watch);
    fake.start();
    expect(await done).toBe(1);
    expect(fake.states()).toEqual(["startPending", "stopped"]);
    expect(fake.statuses[1]).toMatchObject({ win32ExitCode: 1066, serviceExitCode: 1 });
    expect(logged).toEqual(['the service could not start {"error":"config.toml: [transport] type: bad"}']);
  });

  test("INTERROGATE reports the current status again; other controls are ignored", async () => {
    const fake = fakeScm();
    const slow = slowAgent();
    void runService(fake.scm, async () => slow.agent, silentLogger, () => 10, fake.watch);
    fake.start();
    await settle();
    fake.control(SERVICE_CONTROL.interrogate);
    fake.control(0x2); // PAUSE: not accepted
    expect(fake.states()).toEqual(["startPending", "running", "running"]);
    expect(slow.stops).toEqual([]);
  });

  test("the service enables device notifications before the agent opens its ports; DEVICEEVENT reaches the watch", async () => {
    const fake = fakeScm();
    const removals: string[] = [];
    void runService(
      fake.scm,
      async () => {
        // What a port does once open: it is registered with the service's status handle.
        fake.watch.watch(0x44n, () => removals.push("port"));
        return slowAgent().agent;
      },
      silentLogger,
      () => 10,
      fake.watch,
    );
    fake.start();
    await settle();
    expect(fake.registered).toEqual([0x44n]);
    fake.control(SERVICE_CONTROL.deviceEvent, DBT.queryRemove);
    expect(removals).toEqual(["port"]);
    expect(fake.states()).toEqual(["startPending", "running"]);
  });

  test("DEV_BROADCAST_HANDLE is x64's 56 bytes: size, DBT_DEVTYP_HANDLE, then the handle at offset 16", () => {
    const struct = new DataView(devBroadcastHandle(0x1234_5678_9abcn).buffer);
    expect(struct.byteLength).toBe(56);
    expect([struct.getUint32(0, true), struct.getUint32(4, true), struct.getBigUint64(16, true)]).toEqual([56, 6, 0x1234_5678_9abcn]);
    expect(new Uint8Array(struct.buffer, 24).every((byte) => byte === 0)).toBe(true);
  });

  test("SERVICE_STATUS is seven DWORDs in Windows' order", () => {
    const status: ServiceStatus = { state: SERVICE_STATE.stopPending, controlsAccepted: 5, win32ExitCode: 1066, serviceExitCode: 3, checkPoint: 2, waitHintMs: 20_000 };
    expect([...serviceStatusStruct(status)]).toEqual([0x10, 3, 5, 1066, 3, 2, 20_000]);
  });
});

describe("install and uninstall", () => {
  function recordingInstaller() {
    const created: ServiceSpec[] = [];
    const removed: string[] = [];
    const installer: ServiceInstaller = { create: (spec) => void created.push(spec), remove: (name) => void removed.push(name) };
    return { installer, created, removed };
  }

  test("--install-service registers the exe with --service, quoted, and the config it was given", async () => {
    const { installer, created } = recordingInstaller();
    const args = parseAgentArgs(["--install-service", "--config", "D:\\agent\\config.toml"]);
    const exePath = "C:\\Program Files\\KVM Manager Agent\\kvm-manager-agent.exe";
    expect(await runWindowsServiceCommand(args, { platform: "win32", installer, exePath })).toBe(0);
    expect(created).toEqual([
      {
        name: "kvm-manager-agent",
        displayName: "KVM Manager Agent",
        description: expect.stringContaining("Guest agent for KVM/QEMU virtual machines"),
        commandLine: '"C:\\Program Files\\KVM Manager Agent\\kvm-manager-agent.exe" --service --config "D:\\agent\\config.toml"',
      },
    ]);
    expect(serviceCommandLine(exePath)).toBe(`"${exePath}" --service`);
    expect(serviceSpec(exePath).commandLine).toBe(`"${exePath}" --service`);
  });

  test("--uninstall-service removes the service by name", async () => {
    const { installer, removed, created } = recordingInstaller();
    expect(await runWindowsServiceCommand(parseAgentArgs(["--uninstall-service"]), { platform: "win32", installer })).toBe(0);
    expect(removed).toEqual(["kvm-manager-agent"]);
    expect(created).toEqual([]);
  });

  test("the service flags are Windows-only and go one at a time", async () => {
    const { installer, created, removed } = recordingInstaller();
    await expect(runWindowsServiceCommand(parseAgentArgs(["--install-service"]), { platform: "linux", installer })).rejects.toThrow(
      new UsageError("--service, --install-service and --uninstall-service are for Windows"),
    );
    await expect(runWindowsServiceCommand(parseAgentArgs(["--install-service", "--uninstall-service"]), { platform: "win32", installer })).rejects.toThrow(
      "--service, --install-service and --uninstall-service go one at a time",
    );
    expect([created, removed]).toEqual([[], []]);
  });

  test("restart on failure: SERVICE_FAILURE_ACTIONSW with one SC_ACTION_RESTART per delay", () => {
    const { struct, actions } = failureActionsStruct(86_400, [5_000, 6_000, 7_000]);
    expect(struct.length).toBe(5); // 40 bytes on x64
    expect([struct[0], struct[1], struct[2], struct[3]]).toEqual([86_400n, 0n, 0n, 3n]);
    expect(struct[4]).not.toBe(0n);
    expect([...actions]).toEqual([1, 5_000, 1, 6_000, 1, 7_000]);
  });
});
