import { expect, test } from "bun:test";
import { createServices } from "../src/create-services.ts";
import { defaultConfig } from "../src/config/schema.ts";
import { PathPolicy } from "../src/files/paths.ts";
import { silentLogger } from "../src/log/logger.ts";
import { QgaDispatcher } from "../src/qga/dispatcher.ts";
import { QgaFiles } from "../src/qga/files.ts";
import { makeTempDir } from "./helpers/agent-process.ts";
import { MemoryAudit } from "./helpers/in-memory.ts";

function dispatcher(platform: NodeJS.Platform, switches: { systemChangesEnabled?: boolean; credentialsEnabled?: boolean } = {}) {
  const config = defaultConfig();
  config.qga.state_dir = makeTempDir("kma-qga-state-");
  const audit = new MemoryAudit();
  const services = createServices(config, silentLogger, audit);
  return new QgaDispatcher({
    audit,
    logger: silentLogger,
    users: services.users,
    exec: services.exec,
    execEnabled: true,
    execRecordsMax: 8,
    files: new QgaFiles(new PathPolicy(["/tmp"]), makeTempDir("kma-qga-state-"), 4),
    filesEnabled: true,
    systemChangesEnabled: true,
    credentialsEnabled: true,
    power: services.power,
    fsfreeze: services.fsfreeze,
    calls: services.calls,
    blockRpcs: [],
    allowRpcs: [],
    platform,
    ...switches,
  });
}

test("on Windows, until its platform layer lands: sync, ping and info answer; the rest say unsupported as qemu-ga does", async () => {
  const windows = dispatcher("win32");
  expect(await windows.handle({ execute: "guest-ping" }, "test")).toEqual({ line: '{"return": {}}', delimited: false });
  expect((await windows.handle({ execute: "guest-sync-delimited", arguments: { id: 3 } }, "test"))!.delimited).toBe(true);
  for (const execute of ["guest-get-osinfo", "guest-get-fsinfo", "guest-exec", "guest-file-open", "guest-shutdown", "guest-suspend-ram", "guest-network-get-route"]) {
    const reply = await windows.handle({ execute, arguments: execute === "guest-exec" ? { path: "cmd.exe" } : execute === "guest-file-open" ? { path: "C:\\x" } : {} }, "test");
    expect(reply!.line).toBe('{"error": {"class": "GenericError", "desc": "this feature or command is not currently supported"}}');
  }
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
