/**
 * guest-suspend-*: which tool runs, or what is written to /sys/power/state,
 * in each situation qemu-ga tells apart — with an injected executor and
 * power-state file, so nothing here ever suspends this machine.
 */
import { expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { GuestError } from "../src/guest/errors.ts";
import { silentLogger } from "../src/log/logger.ts";
import { guestSuspend, LINUX_SUSPEND, powerStateFile, SuspendController, type SuspendMode, type SuspendSystem } from "../src/guest/suspend.ts";
import { makeTempDir } from "./helpers/agent-process.ts";
import { MemoryAudit } from "./helpers/in-memory.ts";

interface Guest {
  /** Tools installed, by name. */
  tools: string[];
  /** Exit status by command line (tool name and arguments); 0 when not listed. */
  status?: Record<string, number>;
  /** Command lines that cannot be spawned. */
  unspawnable?: string[];
  /** What /sys/power/state holds; null when it cannot be read. */
  state: string | null;
  /** errno code a write to /sys/power/state fails with. */
  writeFails?: string;
}

/** A guest's tools and /sys/power/state as `guest` describes them, recording what runs and what is written. */
function fakeSystem(guest: Guest) {
  const ran: string[] = [];
  const written: string[] = [];
  const system: SuspendSystem = {
    findTool: (name) => (guest.tools.includes(name) ? `/usr/bin/${name}` : null),
    async run(argv) {
      const line = [argv[0]!.replace("/usr/bin/", ""), ...argv.slice(1)].join(" ");
      expect(argv[0]).toStartWith("/usr/bin/"); // always the path findTool gave, never a bare name
      ran.push(line);
      if (guest.unspawnable?.includes(line)) return { error: "Permission denied" };
      return { status: guest.status?.[line] ?? 0 };
    },
    powerState: {
      path: "/sys/power/state",
      read: () => guest.state,
      async write(state) {
        written.push(state);
        if (guest.writeFails) throw Object.assign(new Error(guest.writeFails), { code: guest.writeFails });
      },
    },
  };
  return { system, ran, written };
}

async function suspend(mode: SuspendMode, guest: Guest) {
  const { system, ran, written } = fakeSystem(guest);
  const audit = new MemoryAudit();
  let outcome: unknown;
  try {
    outcome = await guestSuspend(mode, { logger: silentLogger, audit }, system);
  } catch (error) {
    outcome = { error: (error as GuestError).qemuDesc }; // QGA's words (the native ones are checked below)
  }
  return { outcome, ran, written, events: audit.events };
}

const KERNEL = "freeze mem disk\n";
const UNSUPPORTED = { error: "the requested suspend mode is not supported by the guest" };

test("with systemd: `systemctl status systemd-<unit>` answering 1..3 means the unit exists, then systemctl suspends", async () => {
  for (const [mode, unit, verb] of [
    ["ram", "systemd-suspend", "suspend"],
    ["disk", "systemd-hibernate", "hibernate"],
    ["hybrid", "systemd-hybrid-sleep", "hybrid-sleep"],
  ] as const) {
    const result = await suspend(mode, { tools: ["systemctl"], status: { [`systemctl status ${unit}`]: 3 }, state: KERNEL });
    expect(result).toMatchObject({ outcome: {}, ran: [`systemctl status ${unit}`, `systemctl ${verb}`], written: [] });
    expect(result.events).toEqual([{ event: "power", phase: "suspend", action: mode, command: `systemctl ${verb}` }]);
  }
});

test("systemd without the unit (status 4) or with the unit running (0) is passed over for pm-utils", async () => {
  for (const status of [0, 4]) {
    const result = await suspend("ram", { tools: ["systemctl", "pm-is-supported", "pm-suspend"], status: { "systemctl status systemd-suspend": status }, state: KERNEL });
    expect(result).toMatchObject({ outcome: {}, ran: ["systemctl status systemd-suspend", "pm-is-supported --suspend", "pm-suspend"], written: [] });
  }
  const hybrid = await suspend("hybrid", { tools: ["pm-is-supported", "pm-suspend-hybrid"], state: KERNEL });
  expect(hybrid).toMatchObject({ outcome: {}, ran: ["pm-is-supported --suspend-hybrid", "pm-suspend-hybrid"] });
});

test("without systemd or pm-utils (our busybox guest), the kernel's /sys/power/state: mem for ram, disk for disk", async () => {
  expect(await suspend("ram", { tools: [], state: KERNEL })).toMatchObject({ outcome: {}, ran: [], written: ["mem"] });
  expect(await suspend("disk", { tools: [], state: KERNEL })).toMatchObject({ outcome: {}, ran: [], written: ["disk"] });
  // pm-is-supported saying no (1) is not support.
  expect(await suspend("ram", { tools: ["pm-is-supported"], status: { "pm-is-supported --suspend": 1 }, state: KERNEL })).toMatchObject({ written: ["mem"] });
});

test("a mode nothing supports is qemu-ga's error, and nothing is written", async () => {
  expect(await suspend("disk", { tools: [], state: "freeze mem\n" })).toEqual({ outcome: UNSUPPORTED, ran: [], written: [], events: [] });
  expect(await suspend("ram", { tools: [], state: null })).toMatchObject({ outcome: UNSUPPORTED, written: [] });
  // The kernel has no hybrid mode.
  expect(await suspend("hybrid", { tools: [], state: KERNEL })).toMatchObject({ outcome: UNSUPPORTED, written: [] });
  // A check that cannot even be spawned is no support either.
  expect(await suspend("ram", { tools: ["systemctl"], unspawnable: ["systemctl status systemd-suspend"], state: "" })).toMatchObject({ outcome: UNSUPPORTED });
});

test("a write that fails is qemu-ga's error with strerror's words", async () => {
  expect(await suspend("disk", { tools: [], state: KERNEL, writeFails: "ENODEV" })).toMatchObject({
    outcome: { error: "suspend: cannot write to '/sys/power/state': No such device" },
    written: ["disk"],
  });
});

test("a tool that fails falls through to the next way; the audit trail names each attempt and failure", async () => {
  const result = await suspend("ram", {
    tools: ["systemctl", "pm-is-supported", "pm-suspend"],
    status: { "systemctl status systemd-suspend": 3, "systemctl suspend": 1, "pm-suspend": 2 },
    state: KERNEL,
  });
  expect(result).toMatchObject({
    outcome: {},
    ran: ["systemctl status systemd-suspend", "systemctl suspend", "pm-is-supported --suspend", "pm-suspend"],
    written: ["mem"],
  });
  expect(result.events.filter((e) => e.phase === "failed").map((e) => e.error)).toEqual([
    "the helper program 'systemctl suspend' returned an unexpected exit status code (1)",
    "the helper program 'pm-suspend' returned an unexpected exit status code (2)",
  ]);
  const unspawnable = await suspend("ram", { tools: ["systemctl"], status: { "systemctl status systemd-suspend": 3 }, unspawnable: ["systemctl suspend"], state: KERNEL });
  expect(unspawnable.events.find((e) => e.phase === "failed")?.error).toBe("failed to create child process, error 'Permission denied'");
  expect(unspawnable.written).toEqual(["mem"]);
});

test("as qemu-ga: a supported tool that failed, with no later way, answers success (its error only logged)", async () => {
  const result = await suspend("hybrid", { tools: ["systemctl"], status: { "systemctl status systemd-hybrid-sleep": 3, "systemctl hybrid-sleep": 1 }, state: KERNEL });
  expect(result.outcome).toEqual({});
  expect(result.events.at(-1)).toMatchObject({ phase: "failed", error: "the helper program 'systemctl hybrid-sleep' returned an unexpected exit status code (1)" });
});

test("the power-state file: its first 31 bytes read (qemu-ga's buffer), the mode's word written, unreadable when missing", async () => {
  const dir = makeTempDir("kma-power-");
  const file = powerStateFile(join(dir, "state"));
  expect(file.read()).toBeNull();
  writeFileSync(join(dir, "state"), `${"x".repeat(28)}mem disk\n`);
  expect(file.read()).toBe(`${"x".repeat(28)}mem`);
  writeFileSync(join(dir, "state"), "");
  await file.write("mem");
  expect(readFileSync(join(dir, "state"), "utf8")).toBe("mem");
  await expect(powerStateFile(join(dir, "missing")).write("mem")).rejects.toMatchObject({ code: "ENOENT" });
});

test("the write waits for the kernel without holding the event loop (a FIFO stands in for a suspend that has not returned yet)", async () => {
  const fifo = join(makeTempDir("kma-power-"), "state");
  expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
  let written = false;
  const write = powerStateFile(fifo).write("mem").then(() => (written = true));
  await new Promise((resolve) => setTimeout(resolve, 20)); // a timer still fires while the write is blocked
  expect(written).toBe(false);
  const reader = Bun.spawn(["cat", fifo], { stdout: "pipe" });
  await write;
  expect(await new Response(reader.stdout).text()).toBe("mem");
});

test("the real executor reports a tool's exit status, or why it could not start (spawned here only with harmless commands)", async () => {
  expect(await LINUX_SUSPEND.run(["/bin/sh", "-c", "exit 3"])).toEqual({ status: 3 });
  expect(await LINUX_SUSPEND.run(["/bin/sh", "-c", "kill -TERM $$"])).toEqual({ status: 0 }); // WEXITSTATUS of a signalled child
  expect(await LINUX_SUSPEND.run([join(makeTempDir("kma-none-"), "no-such-tool")])).toHaveProperty("error");
});

/** The native suspend over a fake guest, with a timer the test fires by hand. */
function nativeSuspend(guest: Guest) {
  const fake = fakeSystem(guest);
  const audit = new MemoryAudit();
  const timers: { callback: () => void; ms: number }[] = [];
  const controller = new SuspendController(
    { logger: silentLogger, audit },
    { system: fake.system, timers: { set: (callback, ms) => timers.push({ callback, ms }), clear() {} }, graceMs: 250 },
  );
  /** Fires the scheduled suspend and waits until it is over. */
  const fire = async () => {
    timers.shift()!.callback();
    await controller.settled;
  };
  return { controller, audit, timers, fire, ...fake };
}

test("native suspend replies first, naming the way it will try: the support checks run before the reply, the suspend only when the timer fires", async () => {
  const native = nativeSuspend({ tools: ["systemctl"], status: { "systemctl status systemd-suspend": 3 }, state: KERNEL });
  expect(await native.controller.request("ram")).toEqual({ accepted: true, mode: "ram", method: "systemd", command: ["/usr/bin/systemctl", "suspend"] });
  expect(native.ran).toEqual(["systemctl status systemd-suspend"]);
  expect(native.timers.map((t) => t.ms)).toEqual([250]);
  await native.fire();
  expect(native.ran).toEqual(["systemctl status systemd-suspend", "systemctl suspend"]);
  expect(native.audit.events.map((e) => e.phase)).toEqual(["scheduled", "suspend"]);
  expect(native.audit.events[0]).toEqual({ event: "power", phase: "scheduled", action: "ram", method: "systemd", command: "/usr/bin/systemctl suspend" });

  const pm = nativeSuspend({ tools: ["pm-is-supported", "pm-hibernate"], state: KERNEL });
  expect(await pm.controller.request("disk")).toEqual({ accepted: true, mode: "disk", method: "pm-utils", command: ["/usr/bin/pm-hibernate"] });

  const kernel = nativeSuspend({ tools: [], state: KERNEL });
  expect(await kernel.controller.request("ram")).toEqual({ accepted: true, mode: "ram", method: "sysfs", state: "mem" });
  expect(kernel.written).toEqual([]);
  await kernel.fire();
  expect(kernel.written).toEqual(["mem"]);
});

test("native suspend: after the reply, a failing way falls through to the next as for QGA, and a failed write is logged and audited, not thrown", async () => {
  const native = nativeSuspend({
    tools: ["systemctl", "pm-is-supported", "pm-suspend"],
    status: { "systemctl status systemd-suspend": 3, "systemctl suspend": 1, "pm-suspend": 2 },
    state: KERNEL,
    writeFails: "EBUSY",
  });
  expect((await native.controller.request("ram")).method).toBe("systemd");
  await native.fire();
  expect(native.ran).toEqual(["systemctl status systemd-suspend", "systemctl suspend", "pm-is-supported --suspend", "pm-suspend"]);
  expect(native.written).toEqual(["mem"]);
  expect(native.audit.events.filter((e) => e.phase === "failed").map((e) => e.error)).toEqual([
    "the helper program 'systemctl suspend' returned an unexpected exit status code (1)",
    "the helper program 'pm-suspend' returned an unexpected exit status code (2)",
    "suspend: cannot write to '/sys/power/state': Device or resource busy",
  ]);
});

test("native suspend of a mode the guest cannot do is refused as unsupported, naming the mode and what was looked for, and nothing is scheduled", async () => {
  const cases: [SuspendMode, Guest, string][] = [
    ["hybrid", { tools: [], state: KERNEL }, "the kernel has no hybrid state"],
    ["disk", { tools: ["systemctl"], status: { "systemctl status systemd-hibernate": 4 }, state: "freeze mem\n" }, "/sys/power/state does not offer 'disk'"],
  ];
  for (const [mode, guest, kernel] of cases) {
    const native = nativeSuspend(guest);
    const error = await native.controller.request(mode).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(GuestError);
    expect(error).toMatchObject({ reason: "unsupported", qemuDesc: UNSUPPORTED.error });
    expect((error as GuestError).message).toStartWith(`the guest cannot suspend to ${mode}: neither systemd`);
    expect((error as GuestError).message).toEndWith(kernel);
    expect(native.timers).toEqual([]);
    expect(native.written).toEqual([]);
    expect(native.audit.events).toEqual([]);
    // Refused is not busy: the next request is looked at afresh.
    expect(await native.controller.request(mode).catch((caught: GuestError) => caught.reason)).toBe("unsupported");
  }
});

test("one native suspend at a time: a second request is refused until the first is over (the guest has resumed)", async () => {
  const native = nativeSuspend({ tools: [], state: KERNEL });
  await native.controller.request("ram");
  const second = await native.controller.request("disk").catch((caught: GuestError) => caught);
  expect(second).toMatchObject({ reason: "failed", message: "a suspend to ram is already in progress" });
  expect(native.timers).toHaveLength(1);
  await native.fire();
  expect(await native.controller.request("disk")).toMatchObject({ method: "sysfs", state: "disk" });
});
