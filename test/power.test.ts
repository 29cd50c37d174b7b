import { describe, expect, test } from "bun:test";
import { defaultConfig } from "../src/config/schema.ts";
import type { Logger } from "../src/log/logger.ts";
import { silentLogger } from "../src/log/logger.ts";
import { Dispatcher } from "../src/protocol/dispatcher.ts";
import { RpcError } from "../src/protocol/errors.ts";
import { type ExecOutcome, GRACE_MS, type PowerAction, PowerController, type PowerTimers, sanitizeMessage } from "../src/power/power.ts";
import { METHODS, type ParamsInput } from "../src/schema/methods.ts";
import { createServices } from "../src/create-services.ts";
import { MemoryAudit } from "./helpers/in-memory.ts";

/** Timers the test fires by hand. */
class ManualTimers implements PowerTimers {
  private next = 1;
  readonly pending = new Map<number, { callback: () => void; ms: number }>();
  set(callback: () => void, ms: number): unknown {
    const id = this.next++;
    this.pending.set(id, { callback, ms });
    return id;
  }
  clear(handle: unknown): void {
    this.pending.delete(handle as number);
  }
  /** Fire every pending timer; returns their delays. */
  fireAll(): number[] {
    const due = [...this.pending.entries()];
    this.pending.clear();
    for (const [, timer] of due) timer.callback();
    return due.map(([, timer]) => timer.ms);
  }
}

class MemoryLogger implements Logger {
  readonly lines: { level: string; msg: string; fields?: Record<string, unknown> }[] = [];
  debug(msg: string, fields?: Record<string, unknown>) {
    this.lines.push({ level: "debug", msg, fields });
  }
  info(msg: string, fields?: Record<string, unknown>) {
    this.lines.push({ level: "info", msg, fields });
  }
  warn(msg: string, fields?: Record<string, unknown>) {
    this.lines.push({ level: "warn", msg, fields });
  }
  error(msg: string, fields?: Record<string, unknown>) {
    this.lines.push({ level: "error", msg, fields });
  }
}

type Tools = Record<string, string>; // tool → directory it lives in

const SYSTEMD: Tools = { systemctl: "/usr/bin", shutdown: "/usr/sbin", poweroff: "/usr/sbin", reboot: "/usr/sbin" };
const SYSVINIT: Tools = { shutdown: "/sbin", poweroff: "/sbin", reboot: "/sbin" };
const BUSYBOX: Tools = { poweroff: "/bin", reboot: "/bin" };
const SYSTEMCTL_ONLY: Tools = { systemctl: "/bin" };

function setup({ tools = SYSTEMD, outcomes = {} as Record<string, ExecOutcome | (() => Promise<ExecOutcome>)> } = {}) {
  const timers = new ManualTimers();
  const audit = new MemoryAudit();
  const logger = new MemoryLogger();
  const ran: string[][] = [];
  const executor = async (argv: string[]): Promise<ExecOutcome> => {
    ran.push(argv);
    const tool = argv[0]!.split("/").pop()!;
    const outcome = outcomes[tool] ?? { exitCode: 0 };
    return typeof outcome === "function" ? outcome() : outcome;
  };
  const exists = (path: string) => {
    const slash = path.lastIndexOf("/");
    return tools[path.slice(slash + 1)] === path.slice(0, slash);
  };
  const power = new PowerController(logger, audit, { executor, exists, timers });
  const request = (action: PowerAction, params: ParamsInput<"shutdown">) => power.request(action, METHODS.shutdown.params.parse(params));
  const runAll = async () => {
    const delays = timers.fireAll();
    await power.settled;
    return delays;
  };
  return { power, timers, audit, logger, ran, request, runAll };
}

describe("the command chosen first", () => {
  const cases: [string, Tools, PowerAction, boolean, string | undefined, string[]][] = [
    ["systemd", SYSTEMD, "poweroff", false, undefined, ["/usr/bin/systemctl", "poweroff"]],
    ["systemd", SYSTEMD, "reboot", false, undefined, ["/usr/bin/systemctl", "reboot"]],
    ["systemd", SYSTEMD, "poweroff", false, "maintenance at 5", ["/usr/bin/systemctl", "--message=maintenance at 5", "poweroff"]],
    ["systemd", SYSTEMD, "reboot", false, "kernel update", ["/usr/bin/systemctl", "--message=kernel update", "reboot"]],
    ["systemd", SYSTEMD, "poweroff", true, undefined, ["/usr/sbin/poweroff", "-f"]],
    ["systemd", SYSTEMD, "reboot", true, "ignored when forced", ["/usr/sbin/reboot", "-f"]],
    ["sysvinit", SYSVINIT, "poweroff", false, undefined, ["/sbin/shutdown", "-h", "now"]],
    ["sysvinit", SYSVINIT, "reboot", false, undefined, ["/sbin/shutdown", "-r", "now"]],
    ["sysvinit", SYSVINIT, "poweroff", false, "-k looks like an option", ["/sbin/shutdown", "-h", "--", "now", "-k looks like an option"]],
    ["sysvinit", SYSVINIT, "reboot", false, "bye", ["/sbin/shutdown", "-r", "--", "now", "bye"]],
    ["sysvinit", SYSVINIT, "reboot", true, undefined, ["/sbin/reboot", "-f"]],
    ["busybox", BUSYBOX, "poweroff", false, undefined, ["/bin/poweroff"]],
    ["busybox", BUSYBOX, "reboot", false, "no wall here", ["/bin/reboot"]],
    ["busybox", BUSYBOX, "poweroff", true, undefined, ["/bin/poweroff", "-f"]],
    ["systemctl only", SYSTEMCTL_ONLY, "poweroff", true, undefined, ["/bin/systemctl", "--force", "--force", "poweroff"]],
    ["systemctl only", SYSTEMCTL_ONLY, "reboot", true, undefined, ["/bin/systemctl", "--force", "--force", "reboot"]],
    ["/usr/local first", { ...SYSTEMD, systemctl: "/usr/local/sbin" }, "reboot", false, undefined, ["/usr/local/sbin/systemctl", "reboot"]],
    // halt: QGA's guest-shutdown mode=halt
    ["systemd", SYSTEMD, "halt", false, undefined, ["/usr/bin/systemctl", "halt"]],
    ["systemd", SYSTEMD, "halt", true, undefined, ["/usr/bin/systemctl", "--force", "--force", "halt"]],
    ["sysvinit", SYSVINIT, "halt", false, "bye", ["/sbin/shutdown", "-H", "--", "now", "bye"]],
    ["busybox", { ...BUSYBOX, halt: "/bin" }, "halt", false, undefined, ["/bin/halt"]],
    ["busybox", { ...BUSYBOX, halt: "/bin" }, "halt", true, undefined, ["/bin/halt", "-f"]],
  ];
  for (const [system, tools, action, force, message, expected] of cases) {
    test(`${system}: ${action}${force ? " force" : ""}${message ? " with message" : ""} → ${expected.join(" ")}`, async () => {
      const { request, ran, runAll } = setup({ tools });
      const result = request(action, { confirm: true, force, message });
      expect(result).toEqual({ accepted: true, action, force, delay_seconds: 0, command: expected });
      expect(METHODS.shutdown.result.parse(result)).toEqual(result);
      await runAll();
      expect(ran).toEqual([expected]);
    });
  }

  test("no tool at all: an error before anything is scheduled", () => {
    const { request, timers } = setup({ tools: {} });
    expect(() => request("reboot", { confirm: true })).toThrow(RpcError);
    try {
      request("reboot", { confirm: true });
    } catch (error) {
      expect((error as RpcError).code).toBe(-32000);
      expect((error as RpcError).message).toContain("systemctl, shutdown, reboot");
    }
    expect(timers.pending.size).toBe(0);
  });

  test("control characters in the message become spaces (wall writes it to every terminal)", () => {
    expect(sanitizeMessage("a\u001b[2Jb\u0000c\u009bd\ttab\nline")).toBe("a [2Jb c d\ttab\nline");
    const { request } = setup();
    expect(request("poweroff", { confirm: true, message: "x\u0007y" }).command).toEqual(["/usr/bin/systemctl", "--message=x y", "poweroff"]);
  });
});

describe("fallbacks at run time", () => {
  test("a failing systemctl is followed by shutdown, then poweroff; each attempt logged and audited", async () => {
    const { request, ran, runAll, audit, logger } = setup({
      outcomes: { systemctl: { exitCode: 1, error: "Failed to connect to bus" }, shutdown: { exitCode: null, error: "spawn ENOEXEC" } },
    });
    const result = request("poweroff", { confirm: true, message: "bye" });
    expect(result.command).toEqual(["/usr/bin/systemctl", "--message=bye", "poweroff"]);
    await runAll();
    expect(ran).toEqual([
      ["/usr/bin/systemctl", "--message=bye", "poweroff"],
      ["/usr/sbin/shutdown", "-h", "--", "now", "bye"],
      ["/usr/sbin/poweroff"],
    ]);
    const events = audit.events.filter((e) => e.event === "power");
    expect(events.map((e) => [e.phase, e.tool ?? null, e.exit_code ?? null])).toEqual([
      ["scheduled", null, null],
      ["failed", "/usr/bin/systemctl", 1],
      ["failed", "/usr/sbin/shutdown", null],
      ["ran", "/usr/sbin/poweroff", 0],
    ]);
    expect(events[0]).toMatchObject({ action: "poweroff", force: false, delay_seconds: 0, message: "bye", command: "/usr/bin/systemctl --message=bye poweroff" });
    expect(events[1]).toMatchObject({ action: "poweroff", error: "Failed to connect to bus", attempt: 1 });
    expect(logger.lines.filter((l) => l.level === "warn").map((l) => [l.fields?.tool, l.fields?.exit_code, l.fields?.next])).toEqual([
      ["/usr/bin/systemctl", 1, "/usr/sbin/shutdown"],
      ["/usr/sbin/shutdown", null, "/usr/sbin/poweroff"],
    ]);
    expect(logger.lines.find((l) => l.msg === "power command ran")?.fields).toMatchObject({ tool: "/usr/sbin/poweroff", exit_code: 0 });
  });

  test("an executor that throws counts as a failure too; when every tool fails it is logged as an error", async () => {
    const { request, ran, runAll, audit, logger } = setup({
      tools: BUSYBOX,
      outcomes: { reboot: () => Promise.reject(new Error("EACCES")) },
    });
    request("reboot", { confirm: true, force: true });
    await runAll();
    expect(ran).toEqual([["/bin/reboot", "-f"]]);
    expect(audit.events.map((e) => e.phase)).toEqual(["scheduled", "failed", "gave_up"]);
    expect(audit.events[1]).toMatchObject({ tool: "/bin/reboot", exit_code: null, error: "Error: EACCES" });
    expect(logger.lines.some((l) => l.level === "error" && l.msg.includes("every tool failed"))).toBe(true);
  });

  test("tools missing at request time are not tried at run time", async () => {
    const { request, ran, runAll } = setup({ tools: { systemctl: "/usr/bin", reboot: "/sbin" }, outcomes: { systemctl: { exitCode: 1 } } });
    request("reboot", { confirm: true });
    await runAll();
    expect(ran).toEqual([["/usr/bin/systemctl", "reboot"], ["/sbin/reboot"]]);
  });
});

describe("timing: reply first, then act", () => {
  test("nothing runs until the timer fires, which is never sooner than the grace period", async () => {
    const { request, ran, timers, power } = setup();
    const result = request("reboot", { confirm: true });
    await Promise.resolve(result);
    await Bun.sleep(5);
    expect(ran).toEqual([]);
    expect([...timers.pending.values()].map((t) => t.ms)).toEqual([GRACE_MS]);
    timers.fireAll();
    await power.settled;
    expect(ran).toEqual([["/usr/bin/systemctl", "reboot"]]);
  });

  test("delay_seconds sets the timer", async () => {
    const { request, ran, runAll } = setup();
    expect(request("poweroff", { confirm: true, delay_seconds: 90 }).delay_seconds).toBe(90);
    expect(ran).toEqual([]);
    expect(await runAll()).toEqual([90_000]);
    expect(ran).toHaveLength(1);
  });

  test("with real timers the executor runs after the reply, and the timer is not unref'd", async () => {
    const ran: string[][] = [];
    const power = new PowerController(silentLogger, new MemoryAudit(), {
      exists: (path) => path === "/usr/bin/systemctl",
      executor: async (argv) => {
        ran.push(argv);
        return { exitCode: 0 };
      },
      graceMs: 20,
    });
    const realSetTimeout = globalThis.setTimeout;
    const handles: ReturnType<typeof setTimeout>[] = [];
    globalThis.setTimeout = ((fn: () => void, ms: number) => {
      const handle = realSetTimeout(fn, ms);
      handles.push(handle);
      return handle;
    }) as typeof setTimeout;
    try {
      power.request("reboot", METHODS.reboot.params.parse({ confirm: true }));
    } finally {
      globalThis.setTimeout = realSetTimeout;
    }
    expect(ran).toEqual([]);
    expect(handles).toHaveLength(1);
    expect(handles[0]!.hasRef()).toBe(true);
    for (let i = 0; i < 200 && ran.length === 0; i++) await Bun.sleep(10);
    await power.settled;
    expect(ran).toEqual([["/usr/bin/systemctl", "reboot"]]);
  });
});

describe("a second request", () => {
  test("while one is scheduled: replaces it (this is how a delayed shutdown becomes an immediate reboot)", async () => {
    const { request, ran, runAll, timers, audit } = setup();
    request("poweroff", { confirm: true, delay_seconds: 3600 });
    const second = request("reboot", { confirm: true, force: true });
    expect(second.command).toEqual(["/usr/sbin/reboot", "-f"]);
    expect(timers.pending.size).toBe(1);
    await runAll();
    expect(ran).toEqual([["/usr/sbin/reboot", "-f"]]);
    expect(audit.events.map((e) => e.phase)).toEqual(["scheduled", "replaced", "scheduled", "ran"]);
    expect(audit.events[1]).toMatchObject({ previous: "poweroff", action: "reboot", force: true });
  });

  test("while commands are running: refused with OPERATION_FAILED; accepted again once they finished", async () => {
    let finish!: (outcome: ExecOutcome) => void;
    const { request, ran, timers, power } = setup({
      outcomes: { systemctl: () => new Promise<ExecOutcome>((resolve) => (finish = resolve)) },
    });
    request("poweroff", { confirm: true });
    timers.fireAll();
    await Bun.sleep(1);
    expect(ran).toHaveLength(1);
    let refused: unknown;
    try {
      request("reboot", { confirm: true, force: true });
    } catch (error) {
      refused = error;
    }
    expect(refused).toBeInstanceOf(RpcError);
    expect((refused as RpcError).code).toBe(-32000);
    expect((refused as RpcError).message).toBe("A poweroff is already in progress");
    expect(timers.pending.size).toBe(0);

    finish({ exitCode: 0 });
    await power.settled;
    // systemd accepted the poweroff but the guest is stuck: the host may escalate.
    expect(request("poweroff", { confirm: true, force: true }).command).toEqual(["/usr/sbin/poweroff", "-f"]);
  });
});

describe("through the dispatcher", () => {
  test("without confirm: true nothing is scheduled and the error names 'confirm'", () => {
    const config = defaultConfig();
    const audit = new MemoryAudit();
    const dispatcher = new Dispatcher({ config, audit, logger: silentLogger, services: createServices(config, silentLogger, audit) });
    const context = { transport: "test", notify() {} };
    for (const params of [{}, { confirm: false }, { confirm: "yes" }]) {
      for (const method of ["shutdown", "reboot"]) {
        const reply = dispatcher.handle({ jsonrpc: "2.0", id: 1, method, params }, context) as { error: { code: number; message: string } };
        expect(reply.error.code).toBe(-32602);
        expect(reply.error.message).toContain("confirm");
      }
    }
    expect(audit.events).toEqual([]);
  });
});
