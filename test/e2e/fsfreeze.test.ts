/**
 * The frozen state of the compiled agent, on this machine: started frozen from
 * the state file a previous instance left (as qemu-ga's qga.state.isfrozen),
 * then thawed. Nothing here freezes a filesystem of this machine: the thaw's
 * FITHAW on a filesystem that is not frozen is a no-op (EINVAL), and the only
 * freezes sent name no mountpoint or one that does not exist. The VM test
 * freezes a real disk.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { FROZEN_STATE_FILE } from "../../src/fsfreeze/fsfreeze.ts";
import { connectClient, ensureBinary, eventually, makeTempDir, startAgentProcess, terminate, type AgentProcess, STOP_HOOK_TIMEOUT_MS } from "../helpers/agent-process.ts";

const QEMU_GA = "/usr/sbin/qemu-ga";
const dir = makeTempDir("kma-fsfreeze-");

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A state dir as a previous instance leaves it when it exits with filesystems frozen. */
function frozenStateDir(name: string): string {
  const state = join(dir, name);
  mkdirSync(state, { recursive: true });
  writeFileSync(join(state, FROZEN_STATE_FILE), "");
  return state;
}

/** A hook that logs its argument, and fails with status 3 on a phase whose flag file exists. */
function hook(name: string): { path: string; runs(): string[]; failOn(phase: string): void } {
  const path = join(dir, `${name}-hook.sh`);
  const log = join(dir, `${name}-hook.log`);
  writeFileSync(path, `#!/bin/sh\necho "$1" >> ${log}\n[ -e ${dir}/${name}-fail-$1 ] && exit 3\nexit 0\n`, { mode: 0o755 });
  return {
    path,
    runs: () => (existsSync(log) ? readFileSync(log, "utf8").trim().split("\n") : []),
    failOn: (phase) => writeFileSync(join(dir, `${name}-fail-${phase}`), ""),
  };
}

/** One connection, one request at a time, as libvirt talks to the agent. */
async function qgaConversation(socket: string) {
  let received = "";
  const connection = await Bun.connect({ unix: socket, socket: { data: (_, chunk) => void (received += chunk.toString("latin1")) } });
  let answered = 0;
  return {
    async send(request: object): Promise<string> {
      connection.write(JSON.stringify(request));
      const line = await eventually(() => received.split("\n")[answered], 10_000);
      answered++;
      return line!;
    },
    close: () => connection.end(),
  };
}

describe.skipIf(!existsSync(QEMU_GA))("the frozen state, next to Debian's qemu-ga", () => {
  let ours: AgentProcess;
  let theirs: ReturnType<typeof Bun.spawn>;
  const oursSocket = join(dir, "ours.sock");
  const theirsSocket = join(dir, "theirs.sock");
  const oursHook = hook("ours");
  const theirsHook = hook("theirs");

  beforeAll(async () => {
    const theirsState = frozenStateDir("theirs-state");
    theirs = Bun.spawn([QEMU_GA, "-m", "unix-listen", "-p", theirsSocket, "-t", theirsState, "-l", join(theirsState, "log"), `-F${theirsHook.path}`], {
      stdout: "ignore",
      stderr: "ignore",
    });
    ours = await startAgentProcess({
      extraToml: `[qga]\ntype = "unix-listen"\npath = ${JSON.stringify(oursSocket)}\nstate_dir = ${JSON.stringify(frozenStateDir("ours-state"))}\n[fsfreeze]\nhook = ${JSON.stringify(oursHook.path)}\n`,
    });
    await eventually(() => existsSync(theirsSocket) || undefined, 10_000);
  });

  afterAll(async () => {
    await ours?.stop();
    if (theirs) await terminate(theirs as never);
  }, STOP_HOOK_TIMEOUT_MS);

  test("the same replies, byte for byte, from a frozen start through the thaw and the hook's failures", async () => {
    const steps: [object, (() => void)?][] = [
      [{ execute: "guest-fsfreeze-status" }],
      [{ execute: "guest-get-time" }],
      // Never a freeze that could reach this machine's filesystems, even if the frozen state were lost.
      [{ execute: "guest-fsfreeze-freeze-list", arguments: { mountpoints: ["/kma-not-a-mountpoint"] } }],
      [{ execute: "guest-ping", id: 1 }],
      [{ execute: "guest-sync", arguments: { id: 42 } }],
      [{ execute: "guest-fsfreeze-thaw" }],
      [{ execute: "guest-fsfreeze-status" }],
      [{ execute: "guest-get-host-name" }],
      // Nothing listed: nothing freezes, and the agent is thawed again at once.
      [{ execute: "guest-fsfreeze-freeze-list", arguments: { mountpoints: [] } }],
      [{ execute: "guest-fsfreeze-freeze-list", arguments: { mountpoints: ["/kma-not-a-mountpoint"] } }],
      [{ execute: "guest-fsfreeze-freeze-list", arguments: { mountpoints: "/kma-not-a-mountpoint" } }],
      [{ execute: "guest-fsfreeze-freeze-list", arguments: { mountpoints: [], extra: 1 } }],
      [{ execute: "guest-fsfreeze-status" }],
      [
        { execute: "guest-fsfreeze-thaw" },
        () => {
          oursHook.failOn("thaw");
          theirsHook.failOn("thaw");
        },
      ],
      [{ execute: "guest-fsfreeze-status" }],
      [
        { execute: "guest-fsfreeze-freeze-list", arguments: { mountpoints: [] } },
        () => {
          oursHook.failOn("freeze");
          theirsHook.failOn("freeze");
        },
      ],
      [
        { execute: "guest-fsfreeze-freeze-list", arguments: { mountpoints: [] } },
        () => {
          chmodSync(oursHook.path, 0o644);
          chmodSync(theirsHook.path, 0o644);
        },
      ],
      [{ execute: "guest-fsfreeze-status" }],
    ];
    const mine = await qgaConversation(oursSocket);
    const reference = await qgaConversation(theirsSocket);
    for (const [request, before] of steps) {
      before?.();
      const [a, b] = await Promise.all([mine.send(request), reference.send(request)]);
      expect({ request, reply: a.replaceAll(oursHook.path, "HOOK") }).toEqual({ request, reply: b.replaceAll(theirsHook.path, "HOOK") });
    }
    mine.close();
    reference.close();
    expect(oursHook.runs()).toEqual(theirsHook.runs());
    expect(oursHook.runs()).toEqual(["thaw", "freeze", "freeze", "thaw", "freeze"]);
  });
});

describe("the compiled agent started frozen", () => {
  test("holds its audit and log, refuses writing calls and SIGTERM, and writes everything held on the thaw", async () => {
    const agent = await startAgentProcess({ extraToml: `[qga]\nenabled = false\nstate_dir = ${JSON.stringify(frozenStateDir("native-state"))}\n` });
    try {
      const client = await connectClient(agent);
      expect(await client.call("fsfreeze_status", {})).toEqual({ status: "frozen" });
      const refused = client.call("copy_to_guest", { path: join(agent.dir, "x"), content_base64: "" });
      await expect(refused).rejects.toMatchObject({ code: -32006 });
      await expect(refused).rejects.toThrow("Method 'copy_to_guest' is refused while filesystems are frozen: call fsfreeze_thaw first");
      expect((await client.call("get_metrics", {})).format).toBe("json");
      agent.proc.kill("SIGTERM");
      // Longer than the audit's 200 ms flush: a record or log line written through would show by now.
      await Bun.sleep(600);
      expect(agent.alive()).toBe(true);
      const auditWhileFrozen = existsSync(agent.auditPath) ? readFileSync(agent.auditPath, "utf8") : "";
      expect(auditWhileFrozen).not.toContain("copy_to_guest");
      expect(agent.stderr()).not.toContain("not stopping while filesystems are frozen");

      expect(await client.call("fsfreeze_thaw", {})).toEqual({ thawed: 0 });
      const audit = await eventually(() => {
        const text = existsSync(agent.auditPath) ? readFileSync(agent.auditPath, "utf8") : "";
        return text.includes('"fsfreeze_thaw"') ? text : undefined;
      }, 5_000);
      const methods = audit!.trim().split("\n").map((line) => JSON.parse(line).method).filter((m) => m !== "ping" && m !== undefined);
      expect(methods).toEqual(["fsfreeze_status", "copy_to_guest", "get_metrics", "fsfreeze_thaw"]);
      await eventually(() => agent.stderr().includes("not stopping while filesystems are frozen") || undefined, 5_000);
      expect(await client.call("fsfreeze_status", {})).toEqual({ status: "thawed" });
      client.close();
      expect(await agent.stop()).toBe(0);
    } finally {
      await agent.stop();
    }
  });

  test("as qemu-ga, it writes its pidfile only once filesystems are thawed", async () => {
    const asQemuGa = join(dir, "qemu-ga");
    symlinkSync(await ensureBinary(), asQemuGa);
    const socket = join(dir, "qemu-ga-mode.sock");
    const pidfile = join(dir, "qemu-ga-mode.pid");
    const proc = Bun.spawn([asQemuGa, "-m", "unix-listen", "-p", socket, "-t", frozenStateDir("qemu-ga-mode-state"), "-f", pidfile], { stdout: "ignore", stderr: "ignore" });
    try {
      await eventually(() => existsSync(socket) || undefined, 10_000);
      const conversation = await qgaConversation(socket);
      expect(await conversation.send({ execute: "guest-fsfreeze-status" })).toBe('{"return": "frozen"}');
      expect(existsSync(pidfile)).toBe(false);
      expect(await conversation.send({ execute: "guest-fsfreeze-thaw" })).toBe('{"return": 0}');
      expect(readFileSync(pidfile, "utf8")).toBe(`${proc.pid}\n`);
      conversation.close();
    } finally {
      await terminate(proc);
    }
  });
});
