/**
 * QGA on the Windows exe under Wine, over a pty-backed
 * \\.\Global\org.qemu.guest_agent.0 (see wine-transport.test.ts): the
 * registry made to say what Windows 11 23H2 says ("Windows 10 Pro", build
 * 22631), guest-get-osinfo names it Windows 11 where qemu-ga says Windows 10;
 * exec and files run through the Windows code. A smoke test, not proof for
 * real Windows.
 */
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { eventually } from "../helpers/agent-process.ts";
import { openRawPty, PtyPeer } from "../helpers/pty.ts";
import { prepareWine, runUnderWine, runWineProgram, startUnderWine, stopWine, wineAvailable, type WineAgent } from "../helpers/wine.ts";
import { lineAfterDelimiter } from "../helpers/qga-host.ts";

afterAll(stopWine);

const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const KEY = "HKLM\\Software\\Microsoft\\Windows NT\\CurrentVersion";
const UNSUPPORTED = { error: { class: "GenericError", desc: "this feature or command is not currently supported" } };

let prefix = "";

beforeAll(async () => {
  if (!wineAvailable) return;
  const { env } = await prepareWine();
  prefix = env.WINEPREFIX!;
  if (!existsSync(join(prefix, "system.reg"))) expect((await runUnderWine(["--version"])).exitCode).toBe(0);
  // Wine says Windows 7; make it say what Windows 11 23H2 says (ProductName still "Windows 10").
  for (const [name, type, data] of [
    ["ProductName", "REG_SZ", "Windows 10 Pro"],
    ["CurrentBuildNumber", "REG_SZ", "22631"],
    ["CurrentMajorVersionNumber", "REG_DWORD", "10"],
    ["CurrentMinorVersionNumber", "REG_DWORD", "0"],
    ["InstallationType", "REG_SZ", "Client"],
  ]) {
    const { exitCode, stderr } = await runWineProgram(["reg", "add", KEY, "/v", name!, "/t", type!, "/d", data!, "/f"]);
    if (exitCode !== 0) throw new Error(`reg add ${name} failed: ${stderr}`);
  }
  mkdirSync(join(prefix, "drive_c", "qga-files"), { recursive: true });
  mkdirSync(join(prefix, "dosdevices", "global"), { recursive: true });
}, 180_000);

/** The QGA port's host side: a raw pty linked as \\.\Global\org.qemu.guest_agent.0. */
function plugQgaPort(): PtyPeer {
  const link = join(prefix, "dosdevices", "global", "org.qemu.guest_agent.0");
  const pty = openRawPty();
  const peer = new PtyPeer(pty.master, false);
  rmSync(link, { force: true });
  symlinkSync(pty.slavePath, link);
  cleanups.push(async () => {
    rmSync(link, { force: true });
    await peer.stop();
    pty.close();
  });
  return peer;
}

async function startAgent(): Promise<WineAgent> {
  const { dir } = await prepareWine();
  writeFileSync(
    join(dir, "qga.toml"),
    '[transport]\nenabled = false\n[qga]\nstate_dir = "C:\\\\qga-state"\n' +
      '[security]\nenable_exec = true\nallowed_commands = ["cmd.exe"]\nallowed_file_paths = ["C:\\\\qga-files"]\n[logging]\naudit_file = ""\n',
  );
  const agent = await startUnderWine(["--config", "qga.toml"]);
  cleanups.push(() => agent.stop());
  return agent;
}

/** guest-sync-delimited first, then one request at a time; each reply is the next line. */
async function qgaSession(peer: PtyPeer): Promise<(execute: string, args?: object) => Promise<any>> {
  peer.bytes = Buffer.alloc(0);
  await peer.write(Buffer.concat([Uint8Array.of(0xff), Buffer.from(JSON.stringify({ execute: "guest-sync-delimited", arguments: { id: 9 } }))]));
  const synced = await eventually(() => lineAfterDelimiter(peer.bytes), 60_000);
  expect(JSON.parse(synced)).toEqual({ return: 9 });
  return async (execute, args) => {
    peer.bytes = Buffer.alloc(0);
    await peer.write(Buffer.from(JSON.stringify(args ? { execute, arguments: args } : { execute })));
    return JSON.parse(await eventually(() => (peer.bytes.includes(0x0a) ? peer.bytes.toString() : undefined), 30_000));
  };
}

test.skipIf(!wineAvailable)("guest-get-osinfo says Windows 11 for build 22631 whose registry says \"Windows 10 Pro\"; host name, time, users, interfaces answer; the rest is unsupported", async () => {
  const peer = plugQgaPort();
  const agent = await startAgent();
  const qga = await qgaSession(peer);
  expect(await qga("guest-get-osinfo")).toEqual({
    return: {
      "kernel-release": "22631",
      "kernel-version": "10.0",
      machine: "x86_64",
      id: "mswindows",
      name: "Microsoft Windows",
      "pretty-name": "Windows 11 Pro",
      version: "Microsoft Windows 11",
      "version-id": "11",
      variant: "client",
      "variant-id": "client",
    },
  });
  expect((await qga("guest-get-host-name")).return["host-name"]).toBeString();
  expect((await qga("guest-get-time")).return).toBeGreaterThan(1.7e18); // nanoseconds since 1970
  expect(Array.isArray((await qga("guest-get-users")).return)).toBe(true);
  const interfaces = (await qga("guest-network-get-interfaces")).return;
  // Wine lists the host's interfaces: the loopback with its address and prefix, counters from GetIfTable2.
  const loopback = interfaces.find((i: any) => i["ip-addresses"]?.some((a: any) => a["ip-address"] === "127.0.0.1"));
  expect(loopback["ip-addresses"]).toContainEqual({ "ip-address": "127.0.0.1", "ip-address-type": "ipv4", prefix: 8 });
  expect(loopback.statistics["rx-bytes"]).toBeGreaterThan(0);
  expect(await qga("guest-get-fsinfo")).toEqual(UNSUPPORTED);
  expect(agent.log()).not.toContain('"level":"error"');
}, 240_000);

test.skipIf(!wineAvailable)("guest-exec runs cmd.exe and guest-exec-status returns its output; guest-file-* write and read back under allowed_file_paths, and refuse outside it", async () => {
  const peer = plugQgaPort();
  await startAgent();
  const qga = await qgaSession(peer);
  const { pid } = (await qga("guest-exec", { path: "cmd.exe", arg: ["/c", "echo hello"], "capture-output": true })).return;
  const status = await eventually(async () => {
    const reply = (await qga("guest-exec-status", { pid })).return;
    return reply.exited ? reply : undefined;
  }, 60_000);
  expect(status.exitcode).toBe(0);
  expect(Buffer.from(status["out-data"], "base64").toString()).toBe("hello\r\n");

  const path = "C:\\qga-files\\Note.txt";
  const write = (await qga("guest-file-open", { path, mode: "w" })).return;
  expect((await qga("guest-file-write", { handle: write, "buf-b64": Buffer.from("from the host").toString("base64") })).return).toEqual({ count: 13, eof: false });
  expect(await qga("guest-file-close", { handle: write })).toEqual({ return: {} });
  expect(readFileSync(join(prefix, "drive_c", "qga-files", "Note.txt"), "utf8")).toBe("from the host");
  // Case-insensitive, as Windows paths are.
  const read = (await qga("guest-file-open", { path: "c:\\QGA-FILES\\note.txt" })).return;
  const chunk = (await qga("guest-file-read", { handle: read, count: 100 })).return;
  expect({ ...chunk, "buf-b64": Buffer.from(chunk["buf-b64"], "base64").toString() }).toEqual({ count: 13, "buf-b64": "from the host", eof: true });
  expect(await qga("guest-file-close", { handle: read })).toEqual({ return: {} });
  const refused = await qga("guest-file-open", { path: "C:\\windows\\win.ini" });
  expect(refused.error.desc).toContain("refused: it is outside allowed_file_paths");
}, 240_000);
