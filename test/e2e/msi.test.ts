/**
 * The MSI as `npm run package` builds it (wixl, then msibuild), read back
 * table by table with msiinfo: where the files go, the service and how it is
 * controlled, the restart-on-failure custom action, the upgrade rows. Installing
 * it is test/e2e/wine-service.test.ts's job.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { buildMsi, readMsiTable } from "../../scripts/package.ts";
import { ROOT, makeTempDir } from "../helpers/agent-process.ts";
import { AGENT_VERSION } from "../../src/version.ts";
import { statSync } from "node:fs";

const msitoolsAvailable = ["wixl", "msibuild", "msiinfo"].every((tool) => Bun.which(tool) !== null);
const UPGRADE_CODE = "{E768A905-4AD0-445F-9974-BFA91FEC3702}";

describe.skipIf(!msitoolsAvailable)("the MSI's tables", () => {
  let msi = "";
  const table = (name: string) => readMsiTable(msi, name);

  beforeAll(() => {
    const build = Bun.spawnSync([process.execPath, join(ROOT, "scripts", "build.ts"), "windows-x64"], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
    if (build.exitCode !== 0) throw new Error(`windows build failed:\n${build.stderr}`);
    msi = buildMsi({ out: makeTempDir("kma-msi-tables-"), version: AGENT_VERSION });
  }, 180_000);

  test("named for its version; the exe in Program Files\\KVM Manager Agent, the config in ProgramData\\kvm-manager-agent", () => {
    expect(msi).toEndWith(`kvm-manager-agent-${AGENT_VERSION}-x64.msi`);
    expect(table("Property")).toEqual(expect.arrayContaining([{ Property: "ProductVersion", Value: AGENT_VERSION }, { Property: "UpgradeCode", Value: UPGRADE_CODE }]));
    expect(table("Directory")).toEqual(
      expect.arrayContaining([
        { Directory: "INSTALLDIR", Directory_Parent: "ProgramFiles64Folder", DefaultDir: "KVM Manager Agent" },
        { Directory: "CONFIGDIR", Directory_Parent: "CommonAppDataFolder", DefaultDir: "kvm-manager-agent" },
        // allowed_file_paths' default root on Windows, created empty.
        { Directory: "FILESDIR", Directory_Parent: "CONFIGDIR", DefaultDir: "files" },
      ]),
    );
    expect(table("CreateFolder")).toEqual([{ Directory_: "FILESDIR", Component_: "FilesRoot" }]);
    expect(table("File").map(({ File, Component_, FileName, FileSize }) => ({ File, Component_, FileName, FileSize }))).toEqual([
      { File: "AgentExe", Component_: "AgentService", FileName: "kvm-manager-agent.exe", FileSize: String(statSync(join(ROOT, "dist", "kvm-manager-agent-windows-x64.exe")).size) },
      { File: "ConfigToml", Component_: "DefaultConfig", FileName: "config.toml", FileSize: String(statSync(join(ROOT, "installers", "config.toml")).size) },
    ]);
  });

  test("components: 64-bit; the config's never overwritten and never removed (an upgrade keeps the admin's edits)", () => {
    const attributes = Object.fromEntries(table("Component").map((row) => [row.Component, Number(row.Attributes)]));
    expect(attributes).toEqual({ AgentService: 0x100, DefaultConfig: 0x100 | 0x80 | 0x10, FilesRoot: 0x100 });
  });

  test("the service: own process, auto start, LocalSystem, run with --service and the installed config; started on install, stopped on upgrade and uninstall, removed on uninstall", () => {
    expect(table("ServiceInstall")).toEqual([
      expect.objectContaining({
        Name: "kvm-manager-agent",
        DisplayName: "KVM Manager Agent",
        ServiceType: "16", // SERVICE_WIN32_OWN_PROCESS
        StartType: "2", // SERVICE_AUTO_START
        ErrorControl: "1",
        StartName: "LocalSystem",
        Arguments: '--service --config "[CONFIGDIR]config.toml"',
        Component_: "AgentService",
      }),
    ]);
    // msidbServiceControlEvent: Start on install (0x1), Stop on install (0x2) and uninstall (0x20), Delete on uninstall (0x80).
    expect(table("ServiceControl")).toEqual([{ ServiceControl: "AgentService", Name: "kvm-manager-agent", Event: String(0x1 | 0x2 | 0x20 | 0x80), Arguments: "", Wait: "1", Component_: "AgentService" }]);
  });

  test("restart on failure: sc failure, deferred, as LocalSystem, after InstallServices, not on uninstall", () => {
    // 50: an exe named by a property; 0x400 deferred; 0x800 no impersonation.
    expect(table("CustomAction")).toEqual([
      { Action: "SetRestartOnFailure", Type: String(50 | 0x400 | 0x800), Source: "SCEXE", Target: "failure kvm-manager-agent reset= 86400 actions= restart/5000/restart/5000/restart/5000", ExtendedType: "" },
    ]);
    expect(table("Property")).toContainEqual({ Property: "SCEXE", Value: "sc.exe" });
    const sequence = table("InstallExecuteSequence");
    const at = (action: string) => sequence.find((row) => row.Action === action)!;
    expect(at("SetRestartOnFailure").Condition).toBe('NOT REMOVE="ALL"');
    expect(Number(at("SetRestartOnFailure").Sequence)).toBeGreaterThan(Number(at("InstallServices").Sequence));
  });

  test("MajorUpgrade: a newer MSI removes an older one, an older one is refused", () => {
    expect(table("Upgrade")).toEqual([
      { UpgradeCode: UPGRADE_CODE, VersionMin: "", VersionMax: AGENT_VERSION, Language: "", Attributes: "1", Remove: "", ActionProperty: "WIX_UPGRADE_DETECTED" },
      { UpgradeCode: UPGRADE_CODE, VersionMin: AGENT_VERSION, VersionMax: "", Language: "", Attributes: "2", Remove: "", ActionProperty: "WIX_DOWNGRADE_DETECTED" },
    ]);
    expect(table("InstallExecuteSequence").map((row) => row.Action)).toContain("RemoveExistingProducts");
  });

  test("the audit's Event Log source is registered, with EventCreate.exe's messages", () => {
    expect(table("Registry").map(({ Root, Key, Name, Value }) => ({ Root, Key, Name, Value }))).toEqual([
      { Root: "2", Key: "SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\kvm-manager-agent\\", Name: "EventMessageFile", Value: "[System64Folder]EventCreate.exe" },
      { Root: "2", Key: "SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\kvm-manager-agent\\", Name: "TypesSupported", Value: "#7" },
    ]);
  });
});
