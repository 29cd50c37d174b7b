/**
 * The freeze rules with the ioctls injected: nothing here freezes a real
 * filesystem (the VM test does that, on the guest's own disk).
 */
import { describe, expect, test } from "bun:test";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defaultConfig } from "../src/config/schema.ts";
import { createServices } from "../src/create-services.ts";
import { FROZEN_STATE_FILE, FsFreeze, type FreezeOps, type Holdable } from "../src/fsfreeze/fsfreeze.ts";
import { HeldLines, MAX_HELD_LINES } from "../src/log/held-lines.ts";
import { silentLogger } from "../src/log/logger.ts";
import { RpcError } from "../src/protocol/errors.ts";
import { makeTempDir } from "./helpers/agent-process.ts";
import { MemoryAudit, memorySession, qgaDispatcher } from "./helpers/in-memory.ts";

/** Mounts in mount order; `fail` names a mount whose FIFREEZE fails, `unsupported` ones answer EOPNOTSUPP. */
function fakeOps(mounts: string[], options: { fail?: string; unsupported?: string[] } = {}) {
  const calls: string[] = [];
  const frozen = new Set<string>();
  const ops: FreezeOps = {
    mounts: () => [...mounts],
    async freeze(mountpoint) {
      calls.push(`freeze ${mountpoint}`);
      if (mountpoint === options.fail) throw new RpcError("OPERATION_FAILED", `failed to freeze ${mountpoint}: Input/output error`);
      if (options.unsupported?.includes(mountpoint)) return false;
      frozen.add(mountpoint);
      return true;
    },
    thaw(mountpoint) {
      calls.push(`thaw ${mountpoint}`);
      return frozen.delete(mountpoint);
    },
  };
  return { ops, calls, frozen };
}

/** A writer that records when it was held and released, in the same log as the ioctls. */
function recordingHoldable(calls: string[]): Holdable {
  return {
    async hold() {
      calls.push("hold");
    },
    release() {
      calls.push("release");
    },
  };
}

function hookScript(dir: string, failOn?: "freeze" | "thaw", status = 3): { path: string; log: string } {
  const log = join(dir, "hook.log");
  const path = join(dir, "hook.sh");
  writeFileSync(path, `#!/bin/sh\necho "$1" >> ${log}\n${failOn ? `[ "$1" = ${failOn} ] && exit ${status}\n` : ""}exit 0\n`, { mode: 0o755 });
  return { path, log };
}

const hookRuns = (log: string) => (existsSync(log) ? readFileSync(log, "utf8").trim().split("\n") : []);

describe("FsFreeze", () => {
  test("freezes last-mounted first after holding the writers, and thaws in mount order before releasing them", async () => {
    const state = makeTempDir("kma-freeze-");
    const { ops, calls } = fakeOps(["/", "/boot", "/data"]);
    const freeze = new FsFreeze(state, undefined, ops, silentLogger);
    freeze.addHoldable(recordingHoldable(calls));
    expect(await freeze.freeze()).toBe(3);
    expect(freeze.status).toBe("frozen");
    expect(existsSync(join(state, FROZEN_STATE_FILE))).toBe(true);
    expect(await freeze.thaw()).toBe(3);
    expect(freeze.status).toBe("thawed");
    expect(existsSync(join(state, FROZEN_STATE_FILE))).toBe(false);
    expect(calls).toEqual(["hold", "freeze /data", "freeze /boot", "freeze /", "thaw /", "thaw /boot", "thaw /data", "release"]);
  });

  test("a list freezes only the mountpoints it names; one that cannot freeze (EOPNOTSUPP) is skipped, not counted", async () => {
    const { ops, calls } = fakeOps(["/", "/boot", "/data", "/srv"], { unsupported: ["/srv"] });
    const freeze = new FsFreeze(makeTempDir("kma-freeze-"), undefined, ops, silentLogger);
    expect(await freeze.freeze(["/srv", "/boot", "/not-mounted"])).toBe(1);
    expect(calls).toEqual(["freeze /srv", "freeze /boot"]);
    expect(freeze.status).toBe("frozen");
  });

  test("when nothing froze the agent stays thawed and writes go on", async () => {
    const state = makeTempDir("kma-freeze-");
    const { ops, calls } = fakeOps(["/", "/data"]);
    const freeze = new FsFreeze(state, undefined, ops, silentLogger);
    freeze.addHoldable(recordingHoldable(calls));
    expect(await freeze.freeze([])).toBe(0);
    expect(freeze.status).toBe("thawed");
    expect(existsSync(join(state, FROZEN_STATE_FILE))).toBe(false);
    expect(calls).toEqual(["hold", "release"]);
  });

  test("a freeze that fails half-way thaws what froze, reports the failure and leaves the agent thawed", async () => {
    const state = makeTempDir("kma-freeze-");
    const { ops, calls, frozen } = fakeOps(["/", "/boot", "/data"], { fail: "/boot" });
    const freeze = new FsFreeze(state, undefined, ops, silentLogger);
    await expect(freeze.freeze()).rejects.toThrow("failed to freeze /boot: Input/output error");
    expect(calls).toEqual(["freeze /data", "freeze /boot", "thaw /", "thaw /boot", "thaw /data"]);
    expect(frozen.size).toBe(0);
    expect(freeze.status).toBe("thawed");
    expect(existsSync(join(state, FROZEN_STATE_FILE))).toBe(false);
  });

  test("the state file survives the agent: a new instance starts frozen, holds its writers at once and runs deferred work on the thaw", async () => {
    const state = makeTempDir("kma-freeze-");
    const first = fakeOps(["/data"]);
    await new FsFreeze(state, undefined, first.ops, silentLogger).freeze();
    const second = fakeOps(["/data"]);
    const restarted = new FsFreeze(state, undefined, second.ops, silentLogger);
    expect(restarted.status).toBe("frozen");
    restarted.addHoldable(recordingHoldable(second.calls));
    const deferred: string[] = [];
    restarted.whenThawed(() => deferred.push("pidfile"));
    expect(deferred).toEqual([]);
    expect(second.calls).toEqual(["hold"]);
    await restarted.thaw();
    expect(deferred).toEqual(["pidfile"]);
    expect(second.calls).toEqual(["hold", "thaw /data", "release"]);
    restarted.whenThawed(() => deferred.push("now"));
    expect(deferred).toEqual(["pidfile", "now"]);
  });

  test("a freeze queued behind another does not count zero and thaw what the first froze", async () => {
    const { ops } = fakeOps(["/data"]);
    const freeze = new FsFreeze(makeTempDir("kma-freeze-"), undefined, ops, silentLogger);
    const [first, second] = await Promise.allSettled([freeze.freeze(), freeze.freeze()]);
    expect(first).toEqual({ status: "fulfilled", value: 1 });
    expect(second.status).toBe("rejected");
    expect(String((second as PromiseRejectedResult).reason)).toContain("filesystems are already frozen");
    expect(freeze.status).toBe("frozen");
  });

  test("the hook runs with 'freeze' before anything freezes and with 'thaw' after the thaw", async () => {
    const dir = makeTempDir("kma-freeze-");
    const hook = hookScript(dir);
    const { ops } = fakeOps(["/data"]);
    const freeze = new FsFreeze(dir, hook.path, ops, silentLogger);
    await freeze.freeze();
    expect(hookRuns(hook.log)).toEqual(["freeze"]);
    await freeze.thaw();
    expect(hookRuns(hook.log)).toEqual(["freeze", "thaw"]);
  });

  test("a failing freeze hook stops the freeze before any filesystem is touched, in qemu-ga's words", async () => {
    const dir = makeTempDir("kma-freeze-");
    const hook = hookScript(dir, "freeze", 3);
    const { ops, calls } = fakeOps(["/data"]);
    const freeze = new FsFreeze(dir, hook.path, ops, silentLogger);
    await expect(freeze.freeze()).rejects.toThrow("fsfreeze hook has failed with status 3");
    expect(calls).toEqual([]);
    expect(freeze.status).toBe("thawed");
  });

  test("a failing thaw hook is reported, but the filesystems are thawed and the agent with them", async () => {
    const dir = makeTempDir("kma-freeze-");
    const hook = hookScript(dir, "thaw", 4);
    const { ops, frozen } = fakeOps(["/data"]);
    const freeze = new FsFreeze(dir, hook.path, ops, silentLogger);
    await freeze.freeze();
    await expect(freeze.thaw()).rejects.toThrow("fsfreeze hook has failed with status 4");
    expect(frozen.size).toBe(0);
    expect(freeze.status).toBe("thawed");
  });

  test("a hook that cannot be run, or dies of a signal, is named", async () => {
    const dir = makeTempDir("kma-freeze-");
    const hook = hookScript(dir);
    chmodSync(hook.path, 0o644);
    const freeze = new FsFreeze(dir, hook.path, fakeOps(["/data"]).ops, silentLogger);
    await expect(freeze.freeze()).rejects.toThrow(`can't access fsfreeze hook '${hook.path}': Permission denied`);
    const missing = new FsFreeze(dir, join(dir, "nope"), fakeOps(["/data"]).ops, silentLogger);
    await expect(missing.freeze()).rejects.toThrow(`can't access fsfreeze hook '${join(dir, "nope")}': No such file or directory`);
    const killer = join(dir, "killer.sh");
    writeFileSync(killer, "#!/bin/sh\nkill -KILL $$\n", { mode: 0o755 });
    await expect(new FsFreeze(dir, killer, fakeOps(["/data"]).ops, silentLogger).freeze()).rejects.toThrow("fsfreeze hook has terminated abnormally");
  });

  test("an unreadable state directory stops the agent at start rather than guessing", () => {
    const dir = makeTempDir("kma-freeze-");
    const notADir = join(dir, "file");
    writeFileSync(notADir, "");
    expect(() => new FsFreeze(notADir, undefined, fakeOps([]).ops, silentLogger)).toThrow(`cannot access the frozen-state file ${notADir}/${FROZEN_STATE_FILE}: Not a directory`);
  });
});

describe("HeldLines", () => {
  test("writes through, keeps lines while held (after flushing), writes them in order on release", async () => {
    const out: string[] = [];
    const flushed: number[] = [];
    const lines = new HeldLines((line) => out.push(line), (count) => `dropped ${count}`, () => flushed.push(out.length));
    lines.write("a");
    await lines.hold();
    expect(flushed).toEqual([1]);
    lines.write("b");
    lines.write("c");
    expect(out).toEqual(["a"]);
    lines.release();
    expect(out).toEqual(["a", "b", "c"]);
    lines.write("d");
    expect(out).toEqual(["a", "b", "c", "d"]);
  });

  test("past its bound it counts instead of keeping, and says so on release", async () => {
    const out: string[] = [];
    const lines = new HeldLines((line) => out.push(line), (count) => `dropped ${count}`);
    await lines.hold();
    for (let i = 0; i < MAX_HELD_LINES + 5; i++) lines.write(String(i));
    lines.release();
    expect(out.length).toBe(MAX_HELD_LINES + 1);
    expect(out.at(-2)).toBe(String(MAX_HELD_LINES - 1));
    expect(out.at(-1)).toBe("dropped 5");
  });
});

describe("frozen state in the dispatchers", () => {
  function frozenServices() {
    const config = defaultConfig();
    config.qga.state_dir = makeTempDir("kma-freeze-");
    writeFileSync(join(config.qga.state_dir, FROZEN_STATE_FILE), "");
    const audit = new MemoryAudit();
    return { config, audit, services: createServices(config, silentLogger, audit) };
  }

  test("QGA: only sync, ping, info and fsfreeze status/thaw run, the rest are disabled in qemu-ga's words and guest-info says so", async () => {
    const qga = qgaDispatcher(frozenServices().config, { execEnabled: false, blockRpcs: ["guest-get-time", "guest-sync"] });
    const line = async (execute: string, args?: object) => (await qga.handle({ execute, arguments: args }, "test"))!.line;
    expect(await line("guest-fsfreeze-status")).toBe('{"return": "frozen"}');
    expect(await line("guest-ping")).toBe('{"return": {}}');
    expect(await line("guest-get-osinfo")).toBe('{"error": {"class": "CommandNotFound", "desc": "Command guest-get-osinfo has been disabled: the agent is in frozen state"}}');
    expect(await line("guest-fsfreeze-freeze")).toBe('{"error": {"class": "CommandNotFound", "desc": "Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state"}}');
    // Blocked and not frozen-safe: the freeze's reason wins, as in qemu-ga; blocked and frozen-safe: still blocked.
    expect(await line("guest-get-time")).toBe('{"error": {"class": "CommandNotFound", "desc": "Command guest-get-time has been disabled: the agent is in frozen state"}}');
    expect(await line("guest-sync", { id: 1 })).toBe('{"error": {"class": "CommandNotFound", "desc": "Command guest-sync has been disabled"}}');
    const info = JSON.parse(await line("guest-info")).return.supported_commands as { name: string; enabled: boolean }[];
    expect(info.filter((c) => c.enabled).map((c) => c.name).sort()).toEqual(["guest-fsfreeze-status", "guest-fsfreeze-thaw", "guest-info", "guest-ping", "guest-sync-delimited"]);
  });

  test("native: writing methods answer -32006 naming the method, reads of /proc and utmp still answer", async () => {
    const { config, services } = frozenServices();
    const { sendJson, replies } = memorySession({}, { config, services });
    sendJson({ jsonrpc: "2.0", id: 1, method: "copy_to_guest", params: { path: "/tmp/x", content_base64: "" } });
    sendJson({ jsonrpc: "2.0", id: 2, method: "get_metrics", params: {} });
    sendJson({ jsonrpc: "2.0", id: 3, method: "fsfreeze_status" });
    sendJson({ jsonrpc: "2.0", id: 4, method: "fsfreeze_freeze" });
    sendJson({ jsonrpc: "2.0", id: 5, method: "get_network_routes" });
    // A mode that does not exist: were the freeze not checked first, this would be -32602, never a suspend of this machine.
    sendJson({ jsonrpc: "2.0", id: 6, method: "suspend", params: { mode: "none" } });
    while (replies.length < 6) await Bun.sleep(5);
    const byId = new Map((replies as { id: number; result?: any; error?: any }[]).map((reply) => [reply.id, reply]));
    expect(byId.get(1)!.error).toEqual({
      code: -32006,
      message: "Method 'copy_to_guest' is refused while filesystems are frozen: call fsfreeze_thaw first",
      data: { method: "copy_to_guest" },
    });
    expect(byId.get(2)!.result.format).toBe("json");
    expect(byId.get(3)!.result).toEqual({ status: "frozen" });
    expect(byId.get(4)!.error.code).toBe(-32006);
    expect(byId.get(5)!.result.routes.length).toBeGreaterThan(0);
    expect(byId.get(6)!.error.code).toBe(-32006);
  });
});
