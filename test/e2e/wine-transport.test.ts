/**
 * The Windows transports under Wine: \\.\Global\org.kvmmanager.agent.0 and
 * \\.\Global\org.qemu.guest_agent.0 are links in $WINEPREFIX/dosdevices/global
 * to Linux ptys (Wine then treats them as serial ports), and COM1 is
 * dosdevices/com1. The exe runs with its default Windows ports; the test
 * plays QEMU's end on the pty masters. A smoke test of the overlapped I/O
 * path: real vioser is not a serial port, which Wine cannot show.
 */
import { afterAll, afterEach, expect, test } from "bun:test";
import { existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { eventually, frame, pingRequest } from "../helpers/agent-process.ts";
import { openRawPty, PtyPeer } from "../helpers/pty.ts";
import { prepareWine, runUnderWine, startUnderWine, stopWine, wineAvailable, type WineAgent } from "../helpers/wine.ts";
import { lineAfterDelimiter } from "../helpers/qga-host.ts";

afterAll(stopWine);

const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Port {
  peer: PtyPeer;
  /** The host side goes away: the link is removed and the pty closed. */
  unplug(): Promise<void>;
}

/** A raw pty linked at `link`; decodeFrames false keeps the raw bytes (QGA). */
function plug(link: string, decodeFrames: boolean): Port {
  const pty = openRawPty();
  const peer = new PtyPeer(pty.master, decodeFrames);
  rmSync(link, { force: true });
  symlinkSync(pty.slavePath, link);
  let closed = false;
  const unplug = async () => {
    if (closed) return;
    closed = true;
    rmSync(link, { force: true });
    await peer.stop();
    pty.close();
  };
  cleanups.push(unplug);
  return { peer, unplug };
}

/** $WINEPREFIX/dosdevices, once Wine has made the prefix (links made before that would leave it without drive C:). */
async function dosdevices(): Promise<string> {
  const { env } = await prepareWine();
  if (!existsSync(join(env.WINEPREFIX!, "system.reg"))) expect((await runUnderWine(["--version"])).exitCode).toBe(0);
  const dir = join(env.WINEPREFIX!, "dosdevices");
  mkdirSync(join(dir, "global"), { recursive: true });
  return dir;
}

async function startAgent(configToml: string): Promise<WineAgent> {
  const { dir } = await prepareWine();
  // Relative to the exe's dir: a Linux path means nothing to it.
  const config = `transport-${cleanups.length}.toml`;
  writeFileSync(join(dir, config), `${configToml}[logging]\naudit_file = ""\nlevel = "debug"\n`);
  const agent = await startUnderWine(["--config", config]);
  cleanups.push(() => agent.stop());
  agents.push(agent);
  return agent;
}

/** The agents of the running test: a failure shows what they logged. */
const agents: WineAgent[] = [];

function withAgentLog(body: () => Promise<void>): () => Promise<void> {
  return async () => {
    try {
      await body();
    } catch (error) {
      throw new Error(`${(error as Error).message}\nagent log:\n${agents.map((agent) => agent.log()).join("\n")}`);
    } finally {
      agents.length = 0;
    }
  };
}

const opens = (agent: WineAgent) => agent.log().match(/"port open"/g)?.length ?? 0;

async function request(peer: PtyPeer, message: object): Promise<any> {
  await peer.write(frame(message));
  return peer.next(30_000);
}

/** 0xFF, guest-sync-delimited and the line after the last 0xFF; then one request at a time. */
async function qgaHandshake(peer: PtyPeer, id: number): Promise<(message: object) => Promise<any>> {
  peer.bytes = Buffer.alloc(0);
  await peer.write(Buffer.concat([Uint8Array.of(0xff), Buffer.from(JSON.stringify({ execute: "guest-sync-delimited", arguments: { id } }))]));
  const reply = await eventually(() => lineAfterDelimiter(peer.bytes), 30_000);
  expect(JSON.parse(reply)).toEqual({ return: id });
  return async (message) => {
    peer.bytes = Buffer.alloc(0);
    await peer.write(Buffer.from(JSON.stringify(message)));
    return JSON.parse(await eventually(() => (peer.bytes.includes(0x0a) ? peer.bytes.toString() : undefined), 30_000));
  };
}

test.skipIf(!wineAvailable)("default virtio-serial ports: native ping/get_info and QGA sync/ping/info; a host side that goes away and comes back is served again", withAgentLog(async () => {
  const devices = await dosdevices();
  const nativeLink = join(devices, "global", "org.kvmmanager.agent.0");
  const qgaLink = join(devices, "global", "org.qemu.guest_agent.0");
  // The agent starts before its ports exist, and waits for them.
  const agent = await startAgent("");
  await eventually(() => agent.log().includes("port not present yet"), 60_000);
  const native = plug(nativeLink, true);
  const qga = plug(qgaLink, false);
  await eventually(() => opens(agent) >= 2, 30_000);

  expect(await request(native.peer, pingRequest(1, "wine"))).toEqual({ jsonrpc: "2.0", id: 1, result: { pong: true, payload: "wine" } });
  const info = await request(native.peer, { jsonrpc: "2.0", id: 2, method: "get_info" });
  expect(info.result).toMatchObject({ os_type: "windows" });
  // Larger than one read and than the pty's buffer: reads and writes in pieces.
  const big = "w".repeat(200_000);
  expect((await request(native.peer, pingRequest(3, big))).result.payload).toBe(big);

  const send = await qgaHandshake(qga.peer, 4242);
  expect(await send({ execute: "guest-ping" })).toEqual({ return: {} });
  const guestInfo = await send({ execute: "guest-info" });
  expect(guestInfo.return.supported_commands.some((c: { name: string }) => c.name === "guest-ping")).toBe(true);

  // The host side goes away (as when a driver update removes the device): the agent closes the port and waits.
  await native.unplug();
  await qga.unplug();
  await eventually(() => agent.log().includes("reopening"), 30_000);
  const nativeAgain = plug(nativeLink, true);
  const qgaAgain = plug(qgaLink, false);
  await eventually(() => opens(agent) >= 4, 30_000);
  expect(await request(nativeAgain.peer, pingRequest("again"))).toEqual({ jsonrpc: "2.0", id: "again", result: { pong: true } });
  const sendAgain = await qgaHandshake(qgaAgain.peer, 77);
  expect(await sendAgain({ execute: "guest-ping" })).toEqual({ return: {} });
  expect(agent.log()).not.toContain('"level":"error"');
}), 240_000);

test.skipIf(!wineAvailable)('isa-serial on COM1 (dosdevices/com1): native ping over the line', withAgentLog(async () => {
  const devices = await dosdevices();
  const line = plug(join(devices, "com1"), true);
  const agent = await startAgent('[transport]\ntype = "isa-serial"\npath = "COM1"\n[qga]\nenabled = false\n');
  await eventually(() => opens(agent) >= 1, 60_000);
  expect(await request(line.peer, pingRequest("com1", "serial"))).toEqual({ jsonrpc: "2.0", id: "com1", result: { pong: true, payload: "serial" } });
  expect(agent.log()).toMatch(/"msg":"agent started".*"transport":"isa-serial"/);
}), 240_000);
