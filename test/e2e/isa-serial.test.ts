/**
 * The compiled agent on the isa-serial transport, a pty's slave standing in
 * for /dev/ttyS1 and the test playing QEMU's end on the master. The pty
 * starts cooked (echo, line editing, ^C): the agent must put the line in raw
 * mode itself, as qemu-ga does. The agent opens a symlink, so the "serial
 * port" can be taken away and given back; the test waits for the agent's
 * "port open" before writing, since opening the line flushes what was queued.
 */
import { afterEach, expect, test } from "bun:test";
import { readFileSync, rmSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { METHODS } from "../../src/schema/methods.ts";
import { collectText, ensureBinary, eventually, frame, makeTempDir, pingRequest, terminate, writeConfig } from "../helpers/agent-process.ts";
import { openPty, PtyPeer } from "../helpers/pty.ts";
import { lineAfterDelimiter } from "../helpers/qga-host.ts";

const cleanups: (() => Promise<unknown> | void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Line {
  peer: PtyPeer;
  /** The host goes away: the link is removed and the master closed. */
  unplug(): Promise<void>;
}

/** A cooked pty at `link`; decodeFrames false keeps the raw bytes (QGA). */
function plugLine(link: string, decodeFrames: boolean): Line {
  const pty = openPty();
  const peer = new PtyPeer(pty.master, decodeFrames);
  symlinkSync(pty.slavePath, link);
  let closed = false;
  const unplug = async () => {
    if (closed) return;
    closed = true;
    rmSync(link, { force: true }); // first, so that nothing opens a pts number someone else gets next
    await peer.stop();
    pty.close();
  };
  cleanups.push(unplug);
  return { peer, unplug };
}

/** The agent (or `command`, a qemu-ga link to it) with stderr collected; waitForOpen(n) resolves once it has opened the line n times. */
async function spawnAgent(args: string[], command?: string) {
  const proc = Bun.spawn([command ?? (await ensureBinary()), ...args], { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
  const stderr = collectText(proc.stderr);
  cleanups.push(() => terminate(proc));
  const opens = () => stderr.text().match(/port open/g)?.length ?? 0;
  return {
    proc,
    stderr,
    waitForOpen: (count: number) => eventually(() => opens() >= count, 10_000),
  };
}

/** user+system CPU seconds of a process, from /proc/PID/stat (clock ticks of 10 ms). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function request(peer: PtyPeer, message: object): Promise<any> {
  await peer.write(frame(message));
  return peer.next(10_000);
}

/** libvirt's way in: 0xFF, guest-sync-delimited, and the one line after the last 0xFF; then one QGA request at a time. */
async function qgaHandshake(peer: PtyPeer, id: number): Promise<(request: object) => Promise<unknown>> {
  peer.bytes = Buffer.alloc(0);
  await peer.write(Buffer.concat([Uint8Array.of(0xff), Buffer.from(JSON.stringify({ execute: "guest-sync-delimited", arguments: { id } }))]));
  const reply = await eventually(() => lineAfterDelimiter(peer.bytes), 10_000);
  expect(JSON.parse(reply)).toEqual({ return: id });
  return async (message) => {
    peer.bytes = Buffer.alloc(0);
    await peer.write(Buffer.from(JSON.stringify(message)));
    const line = await eventually(() => (peer.bytes.includes(0x0a) ? peer.bytes.toString() : undefined), 10_000);
    return JSON.parse(line);
  };
}

test("native: a cooked pty is put in raw mode by the agent; ping, get_info, control bytes and a payload larger than the tty buffer", async () => {
  const dir = makeTempDir();
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const link = join(dir, "ttyS1");
  const { peer } = plugLine(link, true);
  const agent = await spawnAgent(["--config", writeConfig(dir), "--transport", "isa-serial", "--path", link]);
  await agent.waitForOpen(1);
  expect(await request(peer, pingRequest(1))).toEqual({ jsonrpc: "2.0", id: 1, result: { pong: true } });
  const info = await request(peer, { jsonrpc: "2.0", id: "info", method: "get_info" });
  const parsed = METHODS.get_info.result.safeParse(info.result);
  if (!parsed.success) throw new Error(parsed.error.message);
  // ^C, ^D, ^Q, ^S, CR, NL, DEL would be signals, flow control or translations on a cooked line.
  const tricky = Array.from({ length: 128 }, (_, i) => String.fromCharCode(i)).join("") + "\r\n\u007f\u00ff";
  expect(await request(peer, pingRequest("bytes", tricky))).toEqual({ jsonrpc: "2.0", id: "bytes", result: { pong: true, payload: tricky } });
  const big = "z".repeat(40_000);
  expect((await request(peer, pingRequest("big", big))).result.payload).toBe(big);
  expect(agent.stderr.text()).toMatch(/"msg":"agent started".*"transport":"isa-serial"/);
  expect(peer.readErrors).toEqual([]);
});

test("QGA: 0xFF + guest-sync-delimited, guest-ping and guest-get-osinfo over the serial line", async () => {
  const dir = makeTempDir();
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const link = join(dir, "ttyS1");
  const { peer } = plugLine(link, false);
  const config = writeConfig(dir, {
    extraToml: `[transport]\nenabled = false\n\n[qga]\ntype = "isa-serial"\npath = ${JSON.stringify(link)}\nstate_dir = ${JSON.stringify(join(dir, "state"))}\n`,
  });
  const agent = await spawnAgent(["--config", config]);
  await agent.waitForOpen(1);
  const send = await qgaHandshake(peer, 4242);
  expect(await send({ execute: "guest-ping" })).toEqual({ return: {} });
  const osinfo = (await send({ execute: "guest-get-osinfo" })) as { return: Record<string, string> };
  expect(osinfo.return["kernel-release"]).toBe(readFileSync("/proc/sys/kernel/osrelease", "utf8").trim());
  // A host that left a request half-written: the next one resyncs with 0xFF.
  await peer.write(Buffer.from('{"execute":"guest-sync","arguments":{"id":'));
  const again = await qgaHandshake(peer, 77);
  expect(await again({ execute: "guest-sync", arguments: { id: 5 } })).toEqual({ return: 5 });
  expect(agent.stderr.text()).toMatch(/"msg":"agent started".*"qga":"isa-serial /);
});

test("the host goes away (the pty's master closes) and comes back: the agent waits without spinning and serves the new line", async () => {
  const dir = makeTempDir();
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const link = join(dir, "ttyS1");
  const first = plugLine(link, true);
  const agent = await spawnAgent(["--config", writeConfig(dir), "--transport", "isa-serial", "--path", link]);
  await agent.waitForOpen(1);
  expect((await request(first.peer, pingRequest("before"))).id).toBe("before");
  // Half a frame left behind: the next host starts with the sync marker.
  await first.peer.write(frame(pingRequest("cut")).subarray(0, 9));
  await first.unplug();
  await eventually(() => agent.stderr.text().includes("serial line hung up"), 10_000);
  await eventually(() => agent.stderr.text().includes("serial device not present yet"), 10_000);
  const before = cpuSeconds(agent.proc.pid);
  await Bun.sleep(2_000);
  // Retrying with back-off (capped at 1 s) costs a few ms; a busy loop would burn ~2 s.
  expect(cpuSeconds(agent.proc.pid) - before).toBeLessThan(0.2);
  expect(agent.stderr.text().match(/serial device not present yet/g)).toHaveLength(1);

  const second = plugLine(link, true);
  await agent.waitForOpen(2);
  await second.peer.write(new Uint8Array(8).fill(0xff));
  await eventually(() => second.peer.syncs === 1, 10_000);
  expect(await request(second.peer, pingRequest("after"))).toEqual({ jsonrpc: "2.0", id: "after", result: { pong: true } });
  expect(second.peer.readErrors).toEqual([]);
});

test("invoked as qemu-ga: -m isa-serial -p DEVICE serves QGA", async () => {
  const dir = makeTempDir();
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const asQemuGa = join(dir, "qemu-ga");
  symlinkSync(await ensureBinary(), asQemuGa);
  const link = join(dir, "ttyS1");
  const { peer } = plugLine(link, false);
  const agent = await spawnAgent(["-m", "isa-serial", "-p", link, "-t", join(dir, "state"), "-f", join(dir, "qemu-ga.pid")], asQemuGa);
  await agent.waitForOpen(1);
  const send = await qgaHandshake(peer, 31337);
  expect(await send({ execute: "guest-ping" })).toEqual({ return: {} });
  expect(agent.stderr.text()).toContain("port open");
});
