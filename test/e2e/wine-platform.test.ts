/**
 * The Windows platform layer's real Win32 calls, in the Windows exe under Wine
 * (test/helpers/wine.ts), over stdio: get_info reads the registry (with values
 * added to this file's prefix to prove the Windows 11 rule end to end),
 * get_metrics, get_users, exec of cmd.exe with output decoded from the code
 * page, copy to and from C:\, and the Windows path refusals. A smoke test of
 * the calls, not proof for real Windows: Wine's WTS functions list no sessions,
 * and its volumes are the host's.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { decodeFrames, frame } from "../helpers/agent-process.ts";
import { prepareWine, runUnderWine, runWineProgram, stopWine, WINE_CONFIG, wineAvailable } from "../helpers/wine.ts";
import { SYNC_MARKER } from "../../src/protocol/framing.ts";
import { METHODS } from "../../src/schema/methods.ts";

afterAll(stopWine);

const KEY = "HKLM\\Software\\Microsoft\\Windows NT\\CurrentVersion";

/** Sends each request over stdio to a fresh agent; replies by id. */
async function call(requests: { method: string; params?: unknown }[], config = WINE_CONFIG): Promise<Map<number, any>> {
  const input = Buffer.concat([SYNC_MARKER, ...requests.map((request, i) => frame({ jsonrpc: "2.0", id: i + 1, ...request }))]);
  const { exitCode, stdout, stderr } = await runUnderWine(["--transport", "stdio", "--config", config], { stdin: input });
  expect({ exitCode, errors: stderr.split("\n").filter((line) => line.includes('"level":"error"')) }).toEqual({ exitCode: 0, errors: [] });
  return new Map(decodeFrames(stdout).map((reply: any) => [reply.id, reply]));
}

beforeAll(async () => {
  if (!wineAvailable) return;
  // Wine's registry says Windows 7; make it say what Windows 11 23H2 says (ProductName still "Windows 10").
  for (const [name, type, data] of [
    ["ProductName", "REG_SZ", "Windows 10 Pro"],
    ["CurrentBuildNumber", "REG_SZ", "22631"],
    ["DisplayVersion", "REG_SZ", "23H2"],
    ["UBR", "REG_DWORD", "4460"],
  ]) {
    const { exitCode, stderr } = await runWineProgram(["reg", "add", KEY, "/v", name!, "/t", type!, "/d", data!, "/f"]);
    if (exitCode !== 0) throw new Error(`reg add ${name} failed: ${stderr}`);
  }
}, 180_000);

test.skipIf(!wineAvailable)("get_info reads the registry through advapi32 and names build 22631 Windows 11", async () => {
  const replies = await call([{ method: "get_info" }]);
  const info = METHODS.get_info.result.parse(replies.get(1).result);
  expect(info).toMatchObject({ os_type: "windows", os_name: "Windows 11 Pro", os_version: "23H2", os_pretty_name: "Windows 11 Pro 23H2 (build 22631.4460)", kernel_version: "22631.4460" });
  expect(info.methods.filter((m) => ["get_metrics", "get_users", "shutdown", "reboot"].includes(m.name)).every((m) => m.enabled)).toBe(true);
}, 180_000);

test.skipIf(!wineAvailable)("get_metrics (JSON and Prometheus) and get_users answer from Win32 calls", async () => {
  const replies = await call([{ method: "get_metrics" }, { method: "get_metrics", params: { format: "prometheus" } }, { method: "get_users" }]);
  const metrics = METHODS.get_metrics.result.parse(replies.get(1).result);
  if (metrics.format !== "json") throw new Error("json expected");
  expect(metrics.memory.total_bytes).toBeGreaterThan(0);
  expect(metrics.cpu.total.user + metrics.cpu.total.system + metrics.cpu.total.idle).toBeGreaterThan(0);
  expect(metrics.cpu.per_cpu.length).toBeGreaterThan(0);
  expect(metrics.processes).toBeGreaterThan(0);
  expect(metrics.filesystems).toContainEqual(expect.objectContaining({ mount: "C:\\", device: "C:" }));
  expect(metrics.filesystems.every((fs) => fs.size_bytes > 0 && /^[A-Z]:\\$/.test(fs.mount))).toBe(true);
  // Wine's GetIfTable2 reports the host's interfaces under their Linux names, with their counters.
  const hostInterfaces = readFileSync("/proc/net/dev", "utf8").split("\n").slice(2).map((line) => line.split(":")[0]!.trim()).filter(Boolean);
  expect(metrics.network.length).toBeGreaterThan(0);
  expect(metrics.network.map((n) => n.interface).filter((name) => !hostInterfaces.includes(name))).toEqual([]);
  expect(metrics.network.some((n) => n.rx_bytes > 0 && n.rx_packets > 0)).toBe(true);
  expect(replies.get(2).result.text).toContain('kma_filesystem_size_bytes{mountpoint="C:\\\\",device="C:"');
  // Wine's WTSEnumerateSessionsW lists no sessions: the call works and says nobody.
  expect(METHODS.get_users.result.parse(replies.get(3).result)).toEqual({ users: [] });
}, 180_000);

/** exec on (cmd.exe only), file copy confined to C:\kma-files. */
const EXEC_FILES_CONFIG = "exec-files.toml";

async function prepareExecFiles(): Promise<string> {
  const { dir, env } = await prepareWine();
  writeFileSync(
    join(dir, EXEC_FILES_CONFIG),
    '[qga]\nenabled = false\n[logging]\naudit_file = ""\n[security]\nenable_exec = true\nallowed_commands = ["cmd.exe"]\nallowed_file_paths = ["C:\\\\kma-files"]\n',
  );
  const files = join(env.WINEPREFIX!, "drive_c", "kma-files");
  mkdirSync(files, { recursive: true });
  return files;
}

const text = (base64: string) => Buffer.from(base64, "base64").toString("utf8");

test.skipIf(!wineAvailable)("exec runs cmd.exe without a shell of its own; output comes back as UTF-8 from the code page; Windows refusals", async () => {
  await prepareExecFiles();
  const replies = await call(
    [
      { method: "exec", params: { command: "cmd.exe", args: ["/c", "echo", "héllo", "wörld"] } },
      { method: "exec", params: { command: "CMD", args: ["/c", "cd"], cwd: "c:\\kma-files" } },
      { method: "exec", params: { command: "C:cmd.exe", args: [] } },
      { method: "exec", params: { command: "\\\\server\\share\\cmd.exe", args: [] } },
      { method: "exec", params: { command: "cmd.exe", args: ["/c", "echo"], env: { ComSpec: "C:\\evil.exe" } } },
      { method: "exec", params: { command: "hostname", args: [] } },
    ],
    EXEC_FILES_CONFIG,
  );
  const echo = replies.get(1).result;
  expect({ exit: echo.exit_code, stdout: text(echo.stdout_base64) }).toEqual({ exit: 0, stdout: "héllo wörld\r\n" });
  expect(text(replies.get(2).result.stdout_base64).toLowerCase()).toBe("c:\\kma-files\r\n");
  expect(replies.get(3).error).toMatchObject({ code: -32001, message: "Command 'C:cmd.exe' is refused: the path must not be drive-relative (C:foo); use C:\\foo" });
  expect(replies.get(4).error.message).toContain("must not be a UNC path");
  expect(replies.get(5).error.message).toBe("Environment variable 'ComSpec' is refused: it makes programs load code from elsewhere");
  expect(replies.get(6).error).toMatchObject({ code: -32001, message: "Command 'hostname' is not in allowed_commands" });
}, 180_000);

test.skipIf(!wineAvailable)("copy_to_guest and copy_from_guest under C:\\, case-insensitively; drive-relative, device, UNC, stream, device-name and outside paths refused", async () => {
  const files = await prepareExecFiles();
  const content = Buffer.from("Grüße aus Wine\n");
  const base64 = content.toString("base64");
  const sha256 = createHash("sha256").update(content).digest("hex");
  const refused = ["C:kma-files\\a.txt", "\\\\?\\C:\\kma-files\\a.txt", "\\\\.\\C:\\kma-files\\a.txt", "\\\\server\\share\\a.txt", "C:\\kma-files\\a.txt:hidden", "C:\\kma-files\\NUL.txt", "C:\\windows\\win.ini"];
  // Calls on one connection run concurrently: the write is in before the reads start.
  const written = await call([{ method: "copy_to_guest", params: { path: "c:\\KMA-FILES\\sub\\a.txt", content_base64: base64, create_dirs: true } }], EXEC_FILES_CONFIG);
  expect(written.get(1).result).toEqual({ path: "C:\\kma-files\\sub\\a.txt", bytes: content.length, sha256 });
  const replies = await call(
    [
      { method: "copy_to_guest", params: { path: "C:\\kma-files\\sub\\a.txt", content_base64: base64, overwrite: false } },
      { method: "copy_from_guest", params: { path: "C:/kma-files/SUB/A.TXT" } },
      ...refused.map((path) => ({ method: "copy_from_guest", params: { path } })),
      { method: "copy_to_guest", params: { path: "C:\\kma-files\\a.txt:hidden", content_base64: base64 } },
    ],
    EXEC_FILES_CONFIG,
  );
  expect(readFileSync(join(files, "sub", "a.txt"))).toEqual(content);
  expect(replies.get(1).error).toMatchObject({ code: -32001, data: { reason: "exists" } });
  expect(replies.get(2).result).toEqual({ content_base64: base64, bytes: content.length, sha256, size: content.length, eof: true });
  const reasons = refused.map((_, i) => replies.get(3 + i).error?.data?.reason);
  expect(reasons).toEqual(["drive_relative", "device_path", "device_path", "unc", "alternate_data_stream", "reserved_name", "outside_allowed_paths"]);
  expect(replies.get(3 + refused.length).error).toMatchObject({ code: -32001, data: { reason: "alternate_data_stream" } });
}, 180_000);
