/**
 * The packages in a real guest. The guest is a busybox initramfs without
 * systemd or dpkg, so this proves what can be proven there: the .deb's payload
 * (binary and packaged config, unpacked at /) passes --self-test with both ports
 * present; the tarball's install.sh takes its init-script path and starts the
 * agent, which answers on both ports from the host with the packaged defaults;
 * then --self-test sees both ports held by the running agent, and a killed agent
 * is started again by the init script (as Restart=always does under systemd),
 * whose stop ends supervisor and agent. Beside Debian's qemu-ga holding
 * org.qemu.guest_agent.0, --self-test names it.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { buildPackages } from "../../scripts/package.ts";
import { guestImage, imageWith, TestVm } from "../../scripts/vm/vm.ts";
import { AgentClient } from "../../src/client/client.ts";
import { AGENT_VERSION } from "../../src/version.ts";
import { ensureBinary, makeTempDir } from "../helpers/agent-process.ts";
import { lineAfterDelimiter } from "../helpers/qga-host.ts";

const TARBALL_DIR = "/opt/kvm-manager-agent-tarball";

/** Self-test of the deb's binary; install.sh as an admin would run it; self-test again once the agent holds both ports. */
const RUN = `#!/bin/sh
echo SELFTEST-BEFORE-BEGIN
/usr/bin/kvm-manager-agent --self-test
echo "SELFTEST-BEFORE-END rc=$?"
# The tarball's binary is the deb's byte for byte (test/e2e/packages.test.ts): one copy keeps the image small.
ln -s /usr/bin/kvm-manager-agent ${TARBALL_DIR}/kvm-manager-agent
${TARBALL_DIR}/install.sh --prefix /usr
echo "INSTALL-SH-END rc=$?"
until [ "$(cat /var/log/kvm-manager-agent/agent.log 2>/dev/null | grep -c 'port open')" -ge 2 ]; do sleep 0.2; done
echo SELFTEST-AFTER-BEGIN
/usr/bin/kvm-manager-agent --self-test
echo "SELFTEST-AFTER-END rc=$?"
# When the host asks (a file copied in), kill the agent: the init script's supervisor must start it again.
until [ -e /tmp/kill-agent ]; do sleep 0.2; done
# The agent is the supervisor's child (pidof would name the init script's shell too; no pgrep here).
supervisor=$(cat /run/kvm-manager-agent.pid)
agent() { cat /proc/[0-9]*/stat 2>/dev/null | awk -v parent="$supervisor" '$4 == parent && $2 != "(sleep)" { print $1 }'; }
killed=$(agent)
kill -9 $killed
until [ "$(grep -c 'agent started' /var/log/kvm-manager-agent/agent.log)" -ge 2 ]; do sleep 0.2; done
respawned=$(agent)
echo "RESPAWNED killed=$killed now=$respawned"
# When the host asks again: stop takes the supervisor and the agent down.
until [ -e /tmp/stop-agent ]; do sleep 0.2; done
/etc/init.d/kvm-manager-agent stop
while kill -0 $respawned 2>/dev/null; do sleep 0.2; done
/etc/init.d/kvm-manager-agent status
echo "STOPPED status-rc=$?"
exec sleep 2147483647
`;

const dir = makeTempDir("kma-packages-vm-");
let vm: TestVm;

function filesUnder(root: string, dest: string): string[] {
  return readdirSync(root, { recursive: true })
    .map(String)
    .filter((rel) => statSync(join(root, rel)).isFile())
    .map((rel) => `${join(root, rel)}:${join(dest, relative(root, join(root, rel)))}`);
}

beforeAll(async () => {
  await ensureBinary();
  const packages = buildPackages({ arches: ["x64"], out: join(dir, "out"), version: AGENT_VERSION, fast: true }).x64!;
  const deb = join(dir, "deb");
  const tarball = join(dir, "tarball");
  mkdirSync(tarball);
  for (const argv of [
    ["dpkg-deb", "-x", packages.deb, deb],
    ["tar", "-xzf", packages.tarball, "-C", tarball, "--exclude=*/kvm-manager-agent"],
  ]) {
    const proc = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe" });
    if (proc.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${proc.stderr}`);
  }
  const files = [...filesUnder(deb, "/"), ...filesUnder(join(tarball, `kvm-manager-agent-${AGENT_VERSION}-linux-x64`), TARBALL_DIR)];
  vm = await TestVm.boot({ image: await imageWith("packages", files, RUN), memMiB: 1024 });
}, 240_000);

afterAll(async () => {
  await vm?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function section(name: string): string {
  const console = vm.console();
  return console.slice(console.indexOf(`${name}-BEGIN`), console.indexOf(`${name}-END`));
}

test("the deb's binary and config pass --self-test in a VM with both ports", async () => {
  await vm.waitForConsole(/SELFTEST-BEFORE-END rc=\d+/, 120_000);
  const report = section("SELFTEST-BEFORE");
  expect(report).toContain("ok    config       /etc/kvm-manager-agent/config.toml is valid");
  expect(report).toContain("ok    native port  /dev/virtio-ports/org.kvmmanager.agent.0 present and openable");
  expect(report).toContain("ok    QGA port     /dev/virtio-ports/org.qemu.guest_agent.0 present and openable");
  expect(report).toContain("result: ok");
  expect(vm.console()).toContain("SELFTEST-BEFORE-END rc=0");
}, 150_000);

test("install.sh takes the init-script path, keeps the packaged config and starts the agent", async () => {
  await vm.waitForConsole(/INSTALL-SH-END rc=\d+/, 60_000);
  const console = vm.console();
  expect(console).toContain("installed /usr/bin/kvm-manager-agent");
  expect(console).toContain("kept /etc/kvm-manager-agent/config.toml");
  expect(console).toContain("installed /etc/init.d/kvm-manager-agent");
  expect(console).toMatch(/kvm-manager-agent started \(pid \d+, log \/var\/log\/kvm-manager-agent\/agent.log\)/);
  expect(console).toContain("INSTALL-SH-END rc=0");
}, 90_000);

test("the agent answers on both ports from the host, with the packaged defaults", async () => {
  const client = await AgentClient.connect(vm.agentSocket, { timeoutMs: 15_000 });
  await client.waitReady({ timeoutMs: 90_000 });
  const info = await client.getInfo();
  expect(info.agent_version).toBe(AGENT_VERSION);
  // The packaged config leaves exec off.
  expect(info.methods.find((method) => method.name === "exec")?.enabled).toBe(false);
  client.close();

  let received = Buffer.alloc(0);
  const qga = await Bun.connect({ unix: vm.qgaSocket, socket: { data: (_, chunk) => void (received = Buffer.concat([received, chunk])) } });
  const deadline = Date.now() + 60_000;
  let synced = false;
  while (!synced && Date.now() < deadline) {
    received = Buffer.alloc(0);
    qga.write(Buffer.concat([Uint8Array.of(0xff), Buffer.from(JSON.stringify({ execute: "guest-sync-delimited", arguments: { id: 4242 } }))]));
    const until = Date.now() + 1_000;
    while (!synced && Date.now() < until) {
      const line = lineAfterDelimiter(received);
      synced = line !== undefined && JSON.parse(line).return === 4242;
      await Bun.sleep(20);
    }
  }
  expect(synced).toBe(true);
  received = Buffer.alloc(0);
  qga.write(JSON.stringify({ execute: "guest-sync", arguments: { id: 99 } }));
  while (!received.toString().includes('{"return": 99}\n') && Date.now() < deadline) await Bun.sleep(20);
  received = Buffer.alloc(0);
  qga.write(JSON.stringify({ execute: "guest-info" }));
  while (!received.includes(0x0a) && Date.now() < deadline) await Bun.sleep(20);
  expect((JSON.parse(received.toString()) as { return: { version: string } }).return.version).toBe(AGENT_VERSION);
  qga.end();
}, 150_000);

test("--self-test while the agent runs: both ports held by it, still ok", async () => {
  await vm.waitForConsole(/SELFTEST-AFTER-END rc=\d+/, 90_000);
  const report = section("SELFTEST-AFTER");
  expect(report).toMatch(/ok {4}native port {2}\/dev\/virtio-ports\/org\.kvmmanager\.agent\.0 present, served by the running agent \(pid \d+\)/);
  expect(report).toMatch(/ok {4}QGA port {5}\/dev\/virtio-ports\/org\.qemu\.guest_agent\.0 present, served by the running agent \(pid \d+\)/);
  expect(vm.console()).toContain("SELFTEST-AFTER-END rc=0");
}, 120_000);

test("a killed agent is started again by the init script's supervisor and answers again; stop ends both", async () => {
  const client = await AgentClient.connect(vm.agentSocket, { timeoutMs: 15_000 });
  await client.waitReady({ timeoutMs: 30_000 });
  await client.copyToGuest({ path: "/tmp/kill-agent", content_base64: "" });
  client.close();
  await vm.waitForConsole(/RESPAWNED killed=\d+ now=\d+/, 60_000);
  const [, killed, now] = /RESPAWNED killed=(\d+) now=(\d+)/.exec(vm.console())!;
  expect(now).not.toBe(killed);
  const again = await AgentClient.connect(vm.agentSocket, { timeoutMs: 15_000 });
  await again.waitReady({ timeoutMs: 60_000 });
  expect((await again.ping()).pong).toBe(true);
  await again.copyToGuest({ path: "/tmp/stop-agent", content_base64: "" });
  again.close();
  // The guest waits until the stopped agent's process is gone, then asks the init script.
  await vm.waitForConsole(/STOPPED status-rc=\d+/, 60_000);
  expect(vm.console()).toMatch(/kvm-manager-agent stopped\r?\nkvm-manager-agent is not running\r?\nSTOPPED status-rc=3/);
}, 120_000);

test("beside qemu-ga holding org.qemu.guest_agent.0, --self-test names it and fails", async () => {
  // The harness's usual guest: Debian's qemu-ga on the QGA port, our agent (exec on) on the native port.
  const withQemuGa = await TestVm.boot({ image: await guestImage(await ensureBinary()) });
  try {
    const client = await AgentClient.connect(withQemuGa.agentSocket, { timeoutMs: 15_000 });
    await client.waitReady({ timeoutMs: 90_000 });
    const run = await client.exec({ command: "kvm-manager-agent", args: ["--self-test", "--config", "/etc/kvm-manager-agent/config-our-qga.toml"] });
    const report = Buffer.from(run.stdout_base64, "base64").toString();
    expect(report).toMatch(/ok {4}native port {2}\/dev\/virtio-ports\/org\.kvmmanager\.agent\.0 present, served by the running agent \(pid \d+\)\n/);
    expect(report).toMatch(/FAIL {2}QGA port {5}\/dev\/virtio-ports\/org\.qemu\.guest_agent\.0 is held by pid \d+ \(qemu-ga\): a port has one user at a time/);
    expect(report).toEndWith("result: 1 problem (FAIL above)\n");
    expect(run.exit_code).toBe(1);
    client.close();
  } finally {
    await withQemuGa.stop();
  }
}, 180_000);
