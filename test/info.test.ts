import { describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getInfo } from "../src/info/info.ts";
import { linuxOsIdentity } from "../src/info/linux.ts";
import { parseOsRelease } from "../src/info/os-release.ts";
import { windowsOsIdentity } from "../src/info/windows.ts";
import { METHODS } from "../src/schema/methods.ts";

const FIXTURE = `# comment
NAME="Fedora Linux"
VERSION="39 (Server Edition)"
ID=fedora
VERSION_ID=39
PRETTY_NAME="Fedora Linux 39 (Server \\"Edition\\")"
CPE_NAME='cpe:/o:fedoraproject:fedora:39'
BROKEN LINE
`;

describe("os-release", () => {
  test("quoted, unquoted, single-quoted and escaped values", () => {
    const fields = parseOsRelease(FIXTURE);
    expect(fields).toEqual({
      NAME: "Fedora Linux",
      VERSION: "39 (Server Edition)",
      ID: "fedora",
      VERSION_ID: "39",
      PRETTY_NAME: 'Fedora Linux 39 (Server "Edition")',
      CPE_NAME: "cpe:/o:fedoraproject:fedora:39",
    });
  });

  test("linux identity reads the first os-release that exists", () => {
    const dir = mkdtempSync(join(tmpdir(), "kma-osr-"));
    writeFileSync(join(dir, "os-release"), FIXTURE);
    const identity = linuxOsIdentity([join(dir, "missing"), join(dir, "os-release")]);
    expect(identity).toMatchObject({ os_type: "linux", os_id: "fedora", os_name: "Fedora Linux", os_version: "39" });
    expect(identity.kernel_release.length).toBeGreaterThan(0);
  });

  test("no os-release at all still answers", () => {
    expect(linuxOsIdentity(["/nonexistent/os-release"])).toMatchObject({ os_id: "linux", os_name: "Linux", os_version: "" });
  });
});

describe("get_info", () => {
  test("the result matches its schema on this host", () => {
    const info = getInfo([{ name: "ping", enabled: true }]);
    expect(METHODS.get_info.result.parse(info)).toEqual(info);
    expect(info.ip_addresses.every((a) => a.interface !== "lo")).toBe(true);
  });

  test("the windows platform layer produces a schema-valid identity", () => {
    const info = getInfo([], windowsOsIdentity);
    expect(METHODS.get_info.result.parse(info).os_type).toBe("windows");
  });
});

describe("refreshedEvery", () => {
  test("runs the probe once per period and again after it", async () => {
    const { refreshedEvery } = await import("../src/info/info.ts");
    let calls = 0;
    const probe = refreshedEvery(30, () => ++calls);
    expect([probe(), probe(), probe()]).toEqual([1, 1, 1]);
    await Bun.sleep(40);
    expect(probe()).toBe(2);
  });
});
