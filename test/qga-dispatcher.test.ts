import { expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { qmpStringify } from "../src/qga/json.ts";
import { QgaSession } from "../src/qga/session.ts";
import type { Connection } from "../src/transport/transport.ts";
import { QgaFiles } from "../src/qga/files.ts";
import type { WindowsOsInfoProbes } from "../src/guest/osinfo-windows.ts";
import type { RegistryValue } from "../src/platform/windows/win32.ts";
import type { UsersService } from "../src/services.ts";
import { WindowsUsers } from "../src/users/windows.ts";
import { WindowsPathPolicy } from "../src/files/windows.ts";
import { ipv6Text, type WindowsNetworkProbes } from "../src/guest/network-windows.ts";
import type { QgaError } from "../src/qga/errors.ts";
import { makeTempDir } from "./helpers/agent-process.ts";
import { qgaDispatcher } from "./helpers/in-memory.ts";

interface Overrides {
  systemChangesEnabled?: boolean;
  credentialsEnabled?: boolean;
  windowsOsInfoProbes?: WindowsOsInfoProbes;
  windowsNetworkProbes?: WindowsNetworkProbes;
  users?: UsersService;
}

function dispatcher(platform: NodeJS.Platform, overrides: Overrides = {}) {
  return qgaDispatcher(undefined, { platform, ...overrides });
}

const UNSUPPORTED_LINE = '{"error": {"class": "GenericError", "desc": "this feature or command is not currently supported"}}';

/** A Windows registry and RtlGetVersion as the OS calls would give them. */
function windowsOs(release: string, values: Record<string, RegistryValue>): WindowsOsInfoProbes {
  return {
    currentVersion: () => new Map(Object.entries(values)),
    release: () => release,
    machine: () => "x86_64",
    fallbackProductName: () => "Windows 10 Pro",
  };
}

const osinfoLine = async (probes: WindowsOsInfoProbes) => (await dispatcher("win32", { windowsOsInfoProbes: probes }).handle({ execute: "guest-get-osinfo" }, "test"))!.line;

test("on Windows: sync, ping and info answer; what has no Windows implementation says unsupported as qemu-ga does", async () => {
  const windows = dispatcher("win32");
  expect(await windows.handle({ execute: "guest-ping" }, "test")).toEqual({ line: '{"return": {}}', delimited: false });
  expect((await windows.handle({ execute: "guest-sync-delimited", arguments: { id: 3 } }, "test"))!.delimited).toBe(true);
  for (const execute of ["guest-get-fsinfo", "guest-suspend-ram", "guest-network-get-route", "guest-get-timezone", "guest-get-vcpus"]) {
    const reply = await windows.handle({ execute }, "test");
    expect(reply!.line).toBe(UNSUPPORTED_LINE);
  }
});

test("Windows guest-get-osinfo: build 22631 with the registry's \"Windows 10 Pro\" says Windows 11 where qemu-ga says Windows 10 (pretty-name)", async () => {
  const win11 = windowsOs("10.0.22631", { ProductName: "Windows 10 Pro", CurrentBuildNumber: "22631", DisplayVersion: "23H2", UBR: 4460, InstallationType: "Client" });
  expect(await osinfoLine(win11)).toBe(
    // Members in qemu's QDict order, as qemu-ga writes them.
    '{"return": {"name": "Microsoft Windows", "kernel-release": "22631", "version": "Microsoft Windows 11", "variant": "client", "pretty-name": "Windows 11 Pro", ' +
      '"version-id": "11", "variant-id": "client", "kernel-version": "10.0", "machine": "x86_64", "id": "mswindows"}}',
  );
});

test("Windows guest-get-osinfo: Windows 10 and servers keep the registry's names; the version follows qemu-ga's build tables", async () => {
  const win10 = JSON.parse(await osinfoLine(windowsOs("10.0.19045", { ProductName: "Windows 10 Enterprise", InstallationType: "Client" }))).return;
  expect([win10["pretty-name"], win10.version, win10["version-id"], win10.variant]).toEqual(["Windows 10 Enterprise", "Microsoft Windows 10", "10", "client"]);
  const server = JSON.parse(await osinfoLine(windowsOs("10.0.20348", { ProductName: "Windows Server 2022 Datacenter", InstallationType: "Server Core" }))).return;
  expect([server["pretty-name"], server.version, server["version-id"], server.variant, server["variant-id"], server["kernel-release"]]).toEqual([
    "Windows Server 2022 Datacenter", "Microsoft Windows Server 2022", "2022", "server", "server", "20348",
  ]);
  // A server build >= 22000 is not a Windows 11: its name is left alone.
  const server2025 = JSON.parse(await osinfoLine(windowsOs("10.0.26100", { ProductName: "Windows Server 2025 Standard", InstallationType: "Server" }))).return;
  expect([server2025["pretty-name"], server2025.version, server2025["version-id"]]).toEqual(["Windows Server 2025 Standard", "Microsoft Windows Server 2025", "2025"]);
  // The registry's version values win over what RtlGetVersion says (as get_info reads them; under Wine they differ).
  const registryVersion = windowsOs("6.1.7601", { ProductName: "Windows 10 Pro", CurrentMajorVersionNumber: 10, CurrentMinorVersionNumber: 0, CurrentBuildNumber: "22631" });
  const fromRegistry = JSON.parse(await osinfoLine(registryVersion)).return;
  expect([fromRegistry["kernel-version"], fromRegistry["kernel-release"], fromRegistry["pretty-name"], fromRegistry["version-id"]]).toEqual(["10.0", "22631", "Windows 11 Pro", "11"]);
  // Before Windows 10 (Bun does not run there) qemu-ga's older tables are not kept: the version is "N/A".
  expect(JSON.parse(await osinfoLine(windowsOs("6.1.7601", { ProductName: "Windows 7 Professional" }))).return.version).toBe("N/A");
  // No readable registry: libuv's product name, corrected the same way.
  const unreadable: WindowsOsInfoProbes = { ...windowsOs("10.0.22000", {}), currentVersion: () => { throw new Error("access denied"); } };
  expect(JSON.parse(await osinfoLine(unreadable)).return["pretty-name"]).toBe("Windows 11 Pro");
});

test("Windows guest-get-users has qemu-ga's Windows fields (user, login-time, domain); host name and time answer", async () => {
  const at = (epochSeconds: number) => BigInt(epochSeconds) * 10_000_000n + 116_444_736_000_000_000n;
  const users = new WindowsUsers(() => [{ sessionId: 1, station: "Console", user: "Administrator", domain: "WIN11", client: "", logonTime: at(1_700_000_000) }]);
  const windows = dispatcher("win32", { users });
  expect((await windows.handle({ execute: "guest-get-users" }, "test"))!.line).toBe('{"return": [{"login-time": 1700000000, "domain": "WIN11", "user": "Administrator"}]}');
  expect(JSON.parse((await windows.handle({ execute: "guest-get-host-name" }, "test"))!.line).return["host-name"]).toBeString();
  const time = BigInt(/"return": (\d+)/.exec((await windows.handle({ execute: "guest-get-time" }, "test"))!.line)![1]!);
  expect(time % 100n).toBe(0n);
  expect(time / 1_000_000_000n).toBeGreaterThan(1_700_000_000n);
});

test("on Linux the same commands run", async () => {
  const reply = await dispatcher("linux").handle({ execute: "guest-get-osinfo" }, "test");
  expect(JSON.parse(reply!.line).return.machine).toBeString();
});

test("[security] switches: system changes and credentials off answer as qemu-ga's -b does, and guest-info says so", async () => {
  const qga = dispatcher("linux", { systemChangesEnabled: false, credentialsEnabled: false });
  const switched = [
    "guest-set-time", "guest-set-vcpus", "guest-set-memory-blocks", "guest-fstrim", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid",
    "guest-set-user-password", "guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys",
  ];
  for (const execute of switched) {
    expect((await qga.handle({ execute, arguments: { bogus: 1 } }, "test"))!.line).toBe(`{"error": {"class": "CommandNotFound", "desc": "Command ${execute} has been disabled"}}`);
  }
  const info = JSON.parse((await qga.handle({ execute: "guest-info" }, "test"))!.line).return.supported_commands as { name: string; enabled: boolean }[];
  expect(info.filter((c) => !c.enabled).map((c) => c.name).sort()).toEqual(switched.sort());
});

test("Windows guest-file-open goes through the Windows path policy: refusals keep its words, in qemu-ga's failed-to-open form", async () => {
  const files = new QgaFiles(new WindowsPathPolicy(["C:\\Data"], (path) => path), makeTempDir("kma-qga-state-"), 4);
  const open = (path: string, mode = "r") => files.open(path, mode).then(() => "opened", (error: QgaError) => error.desc);
  expect(await open("C:\\Windows\\win.ini")).toBe("failed to open file 'C:\\Windows\\win.ini' (mode: 'r'): Path 'C:\\Windows\\win.ini' refused: it is outside allowed_file_paths");
  expect(await open("C:\\Data\\notes.txt:hidden", "w")).toContain("names an alternate data stream");
  expect(await open("\\\\?\\C:\\Data\\x")).toContain("device path");
  expect(await open("\\\\server\\share\\x")).toContain("UNC");
  expect(await open("C:\\Data\\NUL.txt", "a")).toContain("reserved device name");
  expect(await open("c:\\data\\..\\Windows\\win.ini")).toContain("'..' components are not allowed");
});

test("IPv6 text as WSAAddressToString writes it: the longest zero run (two groups or more) as ::, then %scope", () => {
  const bytes = (text: string) => text.split(":").flatMap((group) => [parseInt(group, 16) >> 8, parseInt(group, 16) & 0xff]);
  expect(ipv6Text(bytes("fe80:0:0:0:1c2d:3e4f:5a6b:7c8d"), 12)).toBe("fe80::1c2d:3e4f:5a6b:7c8d%12");
  expect(ipv6Text(bytes("0:0:0:0:0:0:0:1"), 0)).toBe("::1");
  expect(ipv6Text(bytes("2001:db8:0:1:0:0:0:1"), 0)).toBe("2001:db8:0:1::1");
  expect(ipv6Text(bytes("2001:db8:0:1:1:1:1:1"), 0)).toBe("2001:db8:0:1:1:1:1:1");
  expect(ipv6Text(bytes("0:0:0:0:0:0:0:0"), 0)).toBe("::");
});

test("Windows guest-network-get-interfaces: qemu-ga's fields from the adapters, statistics by interface index (left out when missing)", async () => {
  const probes: WindowsNetworkProbes = {
    adapters: () => [
      {
        name: "Ethernet",
        index: 4,
        mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
        addresses: [
          { family: "ipv6", bytes: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x1c, 0x2d, 0x3e, 0x4f, 0x5a, 0x6b, 0x7c, 0x8d], scopeId: 4, prefix: 64 },
          { family: "ipv4", bytes: [10, 0, 2, 15], scopeId: 0, prefix: 24 },
        ],
      },
      { name: "Loopback Pseudo-Interface 1", index: 1, mac: [], addresses: [{ family: "ipv4", bytes: [127, 0, 0, 1], scopeId: 0, prefix: 8 }] },
    ],
    counters: () =>
      new Map([[4, { inOctets: 1000, inUcastPkts: 10, inErrors: 1, inDiscards: 2, outOctets: 2000, outUcastPkts: 20, outErrors: 3, outDiscards: 4 }]]),
  };
  const reply = JSON.parse((await dispatcher("win32", { windowsNetworkProbes: probes }).handle({ execute: "guest-network-get-interfaces" }, "test"))!.line);
  expect(reply.return).toEqual([
    {
      name: "Ethernet",
      "hardware-address": "52:54:00:12:34:56",
      "ip-addresses": [
        { "ip-address": "fe80::1c2d:3e4f:5a6b:7c8d%4", "ip-address-type": "ipv6", prefix: 64 },
        { "ip-address": "10.0.2.15", "ip-address-type": "ipv4", prefix: 24 },
      ],
      statistics: { "rx-bytes": 1000, "rx-packets": 10, "rx-errs": 1, "rx-dropped": 2, "tx-bytes": 2000, "tx-packets": 20, "tx-errs": 3, "tx-dropped": 4 },
    },
    { name: "Loopback Pseudo-Interface 1", "ip-addresses": [{ "ip-address": "127.0.0.1", "ip-address-type": "ipv4", prefix: 8 }] },
  ]);
});

test("guest-file-read replies are the line qmpStringify gives for the base64 string, for any count, also across the encoder's 6 MiB steps", async () => {
  const dir = mkdtempSync(join("/tmp", "kma-qga-read-"));
  try {
    const data = randomBytes(20 * 1024 * 1024 + 2);
    const path = join(dir, "data.bin");
    writeFileSync(path, data);
    const sent: Buffer[] = [];
    const connection: Connection = { transport: "test", send: (bytes) => void sent.push(Buffer.from(bytes)), pause() {}, resume() {}, close() {} };
    const session = new QgaSession(connection, qgaDispatcher());
    const call = async (execute: string, args: object): Promise<string> => {
      sent.length = 0;
      session.onData(Buffer.from(JSON.stringify({ execute, arguments: args })));
      for (let i = 0; i < 200 && sent.length === 0; i++) await Bun.sleep(5);
      const line = Buffer.concat(sent).toString("latin1");
      expect(line.endsWith("\n")).toBe(true);
      return line.slice(0, -1);
    };
    const handle = JSON.parse(await call("guest-file-open", { path })).return;
    let position = 0;
    for (const count of [0, 1, 2, 3, 4096, 12 * 1024 + 1, 13 * 1024 * 1024, 6 * 1024 * 1024 + 1, 6 * 1024 * 1024]) {
      const bytes = data.subarray(position, position + count);
      position += bytes.length;
      const expected = qmpStringify({ return: { count: bytes.length, "buf-b64": bytes.toString("base64"), eof: bytes.length < count } });
      expect(await call("guest-file-read", { handle, count })).toBe(expected);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
