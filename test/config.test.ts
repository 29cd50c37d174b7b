import { describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse as parseToml } from "smol-toml";
import { applyArgs, parseAgentArgs, UsageError } from "../src/cli/agent-args.ts";
import { parseQemuGaArgs, qemuGaConfig } from "../src/cli/qemu-ga.ts";
import { ConfigError, loadConfig, parseConfigText } from "../src/config/load.ts";
import { defaultConfig } from "../src/config/schema.ts";

const FILE = "/etc/kvm-manager-agent/config.toml";

function configError(text: string): string {
  try {
    parseConfigText(text, FILE);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error("expected a ConfigError");
}

describe("config file", () => {
  test("an empty file means the seed's safe defaults", () => {
    const config = parseConfigText("", FILE);
    expect(config.security).toEqual({
      enable_exec: false,
      allowed_commands: [],
      enable_file_copy: true,
      allowed_file_paths: ["/tmp", "/var/tmp"],
      enable_system_changes: true,
      enable_credentials: true,
      hmac_key_file: "",
      hmac_window_seconds: 120,
    });
    expect(config.transport).toEqual({ enabled: true, type: "virtio-serial", path: "/dev/virtio-ports/org.kvmmanager.agent.0", vsock_port: 9100 });
    expect(config.limits.max_frame_bytes).toBe(16 * 1024 * 1024);
  });

  test("values in the file replace defaults, section by section", () => {
    const config = parseConfigText(
      `[security]\nenable_exec = true\nallowed_commands = ["uptime"]\n[limits]\nmax_frame_bytes = 65536\n[transport]\ntype = "unix-listen"\npath = "/run/a.sock"\n`,
      FILE,
    );
    expect(config.security.enable_exec).toBe(true);
    expect(config.security.allowed_commands).toEqual(["uptime"]);
    expect(config.security.enable_file_copy).toBe(true);
    expect(config.limits).toEqual({ ...defaultConfig().limits, max_frame_bytes: 65536 });
    expect(config.transport.type).toBe("unix-listen");
  });

  test("an unknown key is named with its section and the file", () => {
    expect(configError("[security]\nenable_exce = true\n")).toBe(`${FILE}: [security] enable_exce: unknown key`);
    expect(configError("colour = 1\n")).toBe(`${FILE}: colour: unknown key`);
    expect(configError("[network]\nx = 1\n")).toBe(`${FILE}: network: unknown key`);
  });

  test("a wrong type is named with its key and the expected type", () => {
    expect(configError('[security]\nenable_exec = "yes"\n')).toBe(`${FILE}: [security] enable_exec: expected boolean, received string`);
    expect(configError("[limits]\nmax_in_flight = 0\n")).toContain("[limits] max_in_flight");
    expect(configError('[security]\nallowed_file_paths = ["tmp"]\n')).toBe(`${FILE}: [security] allowed_file_paths.0: must be an absolute path`);
    expect(configError('[transport]\ntype = "tcp"\n')).toContain("[transport] type");
  });

  test("QGA block and allow lists: command names only, and not both at once", () => {
    expect(parseConfigText('[qga]\nblock_rpcs = ["guest-exec"]\n', FILE).qga.block_rpcs).toEqual(["guest-exec"]);
    expect(configError('[qga]\nblock_rpcs = ["exec"]\n')).toBe(`${FILE}: [qga] block_rpcs.0: must be a QGA command name like "guest-exec"`);
    expect(configError('[qga]\nblock_rpcs = ["guest-exec"]\nallow_rpcs = ["guest-ping"]\n')).toBe(`${FILE}: [qga] allow_rpcs: block_rpcs and allow_rpcs cannot both be set`);
  });

  test("isa-serial on either port needs the serial device named: the default path is a virtio-serial port", () => {
    expect(configError('[transport]\ntype = "isa-serial"\n')).toBe(`${FILE}: [transport] path: type "isa-serial" needs path = the serial device, e.g. "/dev/ttyS1"`);
    expect(configError('[qga]\ntype = "isa-serial"\n')).toBe(`${FILE}: [qga] path: type "isa-serial" needs path = the serial device, e.g. "/dev/ttyS1"`);
    const config = parseConfigText('[transport]\ntype = "isa-serial"\npath = "/dev/ttyS1"\n[qga]\ntype = "isa-serial"\npath = "/dev/ttyS2"\n', FILE);
    expect([config.transport.type, config.transport.path, config.qga.type, config.qga.path]).toEqual(["isa-serial", "/dev/ttyS1", "isa-serial", "/dev/ttyS2"]);
  });

  test("broken TOML names the file and the line", () => {
    expect(configError("[security]\nenable_exec = \n")).toMatch(/^\/etc\/kvm-manager-agent\/config\.toml: invalid TOML at line 2/);
  });

  test("a missing default file means defaults; a missing named file is an error", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kma-config-"));
    expect(await loadConfig(join(dir, "absent.toml"), { required: false })).toEqual(defaultConfig());
    await expect(loadConfig(join(dir, "absent.toml"), { required: true })).rejects.toThrow(/does not exist/);
    writeFileSync(join(dir, "c.toml"), "[logging]\nlevel = \"debug\"\n");
    expect((await loadConfig(join(dir, "c.toml"), { required: true })).logging.level).toBe("debug");
  });

  test("installers/config.toml documents every key with its real default", async () => {
    const text = await Bun.file(join(import.meta.dir, "../installers/config.toml")).text();
    // As shipped, every key is commented out: the file means the defaults.
    expect(parseConfigText(text, "installers/config.toml")).toEqual(defaultConfig());
    // Switched on, the commented values are exactly the defaults, key for key.
    const switchedOn = text.replace(/^#\s?([a-z_]+ = )/gm, "$1");
    expect(parseToml(switchedOn)).toEqual(defaultConfig());
  });
});

describe("command line", () => {
  test("flags override the file", () => {
    const args = parseAgentArgs(["--transport", "unix-listen", "--path", "/tmp/a.sock", "--log-level", "debug"]);
    const config = applyArgs(defaultConfig(), args);
    expect(config.transport).toEqual({ enabled: true, type: "unix-listen", path: "/tmp/a.sock", vsock_port: 9100 });
    expect(config.logging.level).toBe("debug");
    expect(config.security).toEqual(defaultConfig().security);
  });

  test("qemu-ga's -m isa-serial: the QGA port on /dev/ttyS0 unless -p names another line", () => {
    const noFile = { QGA_CONF: "/nonexistent/qemu-ga.conf" };
    expect(qemuGaConfig(parseQemuGaArgs(["-m", "isa-serial"], noFile)).qga).toMatchObject({ enabled: true, type: "isa-serial", path: "/dev/ttyS0" });
    expect(qemuGaConfig(parseQemuGaArgs(["-m", "isa-serial", "-p", "/dev/ttyS1"], noFile)).qga).toMatchObject({ type: "isa-serial", path: "/dev/ttyS1" });
    expect(qemuGaConfig(parseQemuGaArgs(["--method=isa-serial"], noFile)).transport.enabled).toBe(false);
  });

  test("bad flags are usage errors that say what is wrong", () => {
    expect(() => parseAgentArgs(["--transport", "tcp"])).toThrow("--transport must be one of virtio-serial, isa-serial, unix-listen, vsock-listen, stdio (got 'tcp')");
    expect(() => parseAgentArgs(["--transport", "isa-serial"])).toThrow("--transport isa-serial needs --path DEVICE (e.g. /dev/ttyS1)");
    expect(() => parseAgentArgs(["--transport", "unix-listen"])).toThrow("--transport unix-listen needs --path SOCKET");
    expect(() => parseAgentArgs(["--vsock-port", "x"])).toThrow("--vsock-port must be an integer");
    expect(() => parseAgentArgs(["--bogus"])).toThrow(UsageError);
    expect(() => parseAgentArgs(["--log-level", "loud"])).toThrow("--log-level must be one of");
  });
});
