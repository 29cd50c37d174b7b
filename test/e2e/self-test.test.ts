/**
 * `--self-test` of the compiled agent on this host, which has no virtio-serial
 * ports: absent ports, an invalid config and an unsafe config file are each
 * reported by name with exit status 1; a config whose ports open is "ok".
 * (Ports present in a real VM, and held by the running agent: test/vm/packages.vm.ts.)
 */
import { afterAll, expect, test } from "bun:test";
import { chmodSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PROTOCOL_VERSION } from "../../src/schema/methods.ts";
import { AGENT_VERSION } from "../../src/version.ts";
import { makeTempDir, runBinary } from "../helpers/agent-process.ts";

const dir = makeTempDir("kma-self-test-");
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function config(name: string, toml: string): string {
  const path = join(dir, name);
  writeFileSync(path, toml);
  return path;
}

const paths = `state_dir = "${dir}/state"\n[logging]\naudit_file = "${dir}/log/audit.jsonl"\n`;

test("absent ports: a report naming each port and how to add it, exit status 1", async () => {
  const path = config("absent.toml", `[transport]\npath = "${dir}/org.kvmmanager.agent.0"\n[qga]\npath = "${dir}/org.qemu.guest_agent.0"\n${paths}`);
  const { exitCode, stdout } = await runBinary(["--self-test", "--config", path]);
  expect(exitCode).toBe(1);
  expect(stdout).toStartWith(`kvm-manager-agent ${AGENT_VERSION} (protocol ${PROTOCOL_VERSION}) self-test\nplatform: `);
  expect(stdout).toContain(`ok    config       ${path} is valid\n`);
  expect(stdout).toContain(`FAIL  native port  ${dir}/org.kvmmanager.agent.0 is absent: `);
  expect(stdout).toContain("-device virtserialport,name=org.kvmmanager.agent.0");
  expect(stdout).toContain(`FAIL  QGA port     ${dir}/org.qemu.guest_agent.0 is absent: `);
  expect(stdout).toContain("Proxmox: agent: 1");
  expect(stdout).toContain(`ok    QGA state    ${dir}/state will be created\n`);
  expect(stdout).toEndWith("result: 2 problems (FAIL above)\n");
});

test("an invalid config: the report names the key, and ports are not checked", async () => {
  const path = config("invalid.toml", `[security]\nenable_exec = "yes"\n`);
  const { exitCode, stdout } = await runBinary(["--self-test", "--config", path]);
  expect(exitCode).toBe(1);
  expect(stdout).toContain(`FAIL  config  ${path}: [security] enable_exec: expected boolean, received string\n`);
  expect(stdout).toContain("warn  ports   not checked: the config must be valid first\n");
  expect(stdout).toEndWith("result: 1 problem (FAIL above)\n");
});

test("a config file every user may write fails: it decides whether exec runs", async () => {
  const path = config("open.toml", `[transport]\npath = "/dev/null"\n[qga]\npath = "/dev/null"\n${paths}`);
  chmodSync(path, 0o666);
  const { exitCode, stdout } = await runBinary(["--self-test", "--config", path]);
  expect(exitCode).toBe(1);
  expect(stdout).toContain(`FAIL  config mode  ${path} is writable by every user (mode 666): chmod 644 it\n`);
});

test("ports that open and a sound config: ok, exit status 0; a missing exec command is a warning", async () => {
  // /dev/null stands in for a port: a character device that opens.
  const exec = `[security]\nenable_exec = true\nallowed_commands = ["sh", "no-such-command"]\n`;
  const path = config("ok.toml", `${exec}[transport]\npath = "/dev/null"\n[qga]\npath = "/dev/null"\n${paths}`);
  const { exitCode, stdout } = await runBinary(["--self-test", "--config", path]);
  expect(stdout).toContain("ok    native port  /dev/null present and openable\n");
  expect(stdout).toContain("ok    QGA port     /dev/null present and openable\n");
  expect(stdout).toContain("warn  exec         on; ignored in allowed_commands: 'no-such-command': no executable file of that name");
  expect(stdout).toEndWith("result: ok\n");
  expect(exitCode).toBe(0);
});

test("a port that is not a character device is named as such", async () => {
  const notDevice = join(dir, "plain-file");
  writeFileSync(notDevice, "");
  const path = config("file.toml", `[transport]\npath = "${notDevice}"\n[qga]\nenabled = false\n${paths.replace(/^state_dir.*\n/, "")}`);
  const { exitCode, stdout } = await runBinary(["--self-test", "--config", path]);
  expect(stdout).toContain(`FAIL  native port  ${notDevice} is not a character device\n`);
  expect(stdout).toContain("ok    QGA port     off ([qga] enabled = false)\n");
  expect(exitCode).toBe(1);
});
