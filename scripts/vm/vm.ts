/**
 * The test VM: a busybox initramfs (scripts/vm/build-initramfs.sh) with our
 * binary and Debian's qemu-ga, booted under TCG with the two virtio-serial
 * ports on host unix sockets, a QMP socket, a small virtio disk and
 * restricted user networking (and, when asked, a second UART on a host socket). Used by test/vm/*.vm.ts and scripts/bench.ts.
 *
 * Everything it starts it stops by PID, also when the test process dies.
 * KVM is broken on these machines: TCG with one vCPU, `-cpu max` (Bun needs AVX2).
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";

const ROOT = join(import.meta.dir, "..", "..");
const CACHE = join(ROOT, ".vm");
export const AGENT_PORT = "org.kvmmanager.agent.0";
export const QGA_PORT = "org.qemu.guest_agent.0";

/**
 * Config of the agent inside the test VM: exec on (busybox applets all resolve
 * to /bin/busybox; the agent's own binary lets a test run the host CLI in the guest).
 */
export const GUEST_CONFIG = `[security]
enable_exec = true
allowed_commands = ["sh", "sleep", "cat", "echo", "true", "false", "kvm-manager-agent"]
allowed_file_paths = ["/tmp", "/mnt"]

# Debian's qemu-ga owns org.qemu.guest_agent.0 in the test VM: it is the benchmark baseline.
[qga]
enabled = false

[logging]
level = "debug"
format = "text"
audit_file = "/tmp/audit.jsonl"
`;

/** The same config, but our agent serves org.qemu.guest_agent.0 itself (booted with `ourQga`). */
const GUEST_CONFIG_OUR_QGA = GUEST_CONFIG.replace("[qga]\nenabled = false", "[qga]\nenabled = true");

/** Where the guest sees the extra UART of `isaSerial` boots: the second 8250 (I/O 0x2f8, IRQ 3). */
export const GUEST_SERIAL_LINE = "/dev/ttyS1";

/** The same config with the native protocol on the guest's serial line instead of its virtio-serial port. */
const GUEST_CONFIG_ISA_SERIAL_NATIVE = `[transport]\ntype = "isa-serial"\npath = "${GUEST_SERIAL_LINE}"\n\n${GUEST_CONFIG}`;

/** The same config with our QGA on the guest's serial line (native stays on virtio-serial, qemu-ga on its port). */
const GUEST_CONFIG_ISA_SERIAL_QGA = GUEST_CONFIG.replace("[qga]\nenabled = false", `[qga]\nenabled = true\ntype = "isa-serial"\npath = "${GUEST_SERIAL_LINE}"`);

/** The key of `hmac` boots, whose agent answers only requests signed with it ([security] hmac_key_file). */
export const GUEST_HMAC_KEY = "the test VM's message authentication key";
const GUEST_HMAC_KEY_FILE = "/etc/kvm-manager-agent/hmac.key";
const GUEST_CONFIG_HMAC = GUEST_CONFIG.replace("[security]\n", `[security]\nhmac_key_file = "${GUEST_HMAC_KEY_FILE}"\n`);

/** The port of the second agent, on vsock-listen, reachable inside the guest over vsock loopback (CID 1). */
export const GUEST_VSOCK_PORT = 9100;

/**
 * Starts qemu-ga on its port, a second agent of ours on vsock-listen (unless
 * kma_no_vsock_agent is on the kernel command line), and our agent on its
 * virtio-serial port, as a distribution's units would.
 */
const GUEST_RUN = `#!/bin/sh
mkdir -p /run/qga
config=/etc/kvm-manager-agent/config.toml
if grep -qw kma_isa_serial=native /proc/cmdline; then
  config=/etc/kvm-manager-agent/config-isa-serial-native.toml
elif grep -qw kma_isa_serial=qga /proc/cmdline; then
  config=/etc/kvm-manager-agent/config-isa-serial-qga.toml
elif grep -qw kma_hmac /proc/cmdline; then
  config=/etc/kvm-manager-agent/config-hmac.toml
fi
if grep -qw kma_qga /proc/cmdline; then
  config=/etc/kvm-manager-agent/config-our-qga.toml
elif [ -x /usr/sbin/qemu-ga ]; then
  /usr/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/${QGA_PORT} -t /run/qga -f /run/qga/qemu-ga.pid -l /tmp/qemu-ga.log &
fi
if ! grep -qw kma_no_vsock_agent /proc/cmdline; then
  /usr/bin/kvm-manager-agent --config /etc/kvm-manager-agent/config.toml --transport vsock-listen --vsock-port ${GUEST_VSOCK_PORT} --log-level warn &
fi
exec /usr/bin/kvm-manager-agent --config $config "$@"
`;

export function newestKernel(): string {
  const kernels = readdirSync("/boot").filter((f) => /^vmlinuz-.*-cloud-amd64$/.test(f)).sort();
  if (kernels.length === 0) throw new Error("no /boot/vmlinuz-*-cloud-amd64: apt-get install linux-image-cloud-amd64");
  return join("/boot", kernels.at(-1)!);
}

/**
 * The initramfs for a given agent binary, cached under .vm/ by the content of
 * its inputs so that every VM of a test run shares one build.
 */
export async function guestImage(agentBinary: string): Promise<string> {
  // Debian's qemu-ga (the benchmark baseline) and chpasswd (set_user_password), copied with their libraries;
  // chpasswd hashes a plain password through PAM, so its config and the modules that config names come too.
  // (libpam looks for modules in /lib/x86_64-linux-gnu/security, which is not /usr/lib in the guest: no merged /usr.)
  const pam = ["/etc/pam.d/chpasswd", "/etc/pam.d/common-password", ...["pam_unix.so", "pam_deny.so", "pam_permit.so"].map((m) => `/lib/x86_64-linux-gnu/security/${m}`)];
  const hostTools = ["/usr/sbin/qemu-ga", "/usr/sbin/chpasswd", ...pam].filter((tool) => existsSync(tool));
  const staging = mkdtempSync(join(tmpdir(), "kma-guest-"));
  try {
    writeFileSync(join(staging, "config.toml"), GUEST_CONFIG);
    writeFileSync(join(staging, "config-our-qga.toml"), GUEST_CONFIG_OUR_QGA);
    writeFileSync(join(staging, "config-isa-serial-native.toml"), GUEST_CONFIG_ISA_SERIAL_NATIVE);
    writeFileSync(join(staging, "config-isa-serial-qga.toml"), GUEST_CONFIG_ISA_SERIAL_QGA);
    writeFileSync(join(staging, "config-hmac.toml"), GUEST_CONFIG_HMAC);
    writeFileSync(join(staging, "hmac.key"), GUEST_HMAC_KEY, { mode: 0o600 });
    const files = [
      `${agentBinary}:/usr/bin/kvm-manager-agent`,
      `${join(staging, "config.toml")}:/etc/kvm-manager-agent/config.toml`,
      `${join(staging, "config-our-qga.toml")}:/etc/kvm-manager-agent/config-our-qga.toml`,
      `${join(staging, "config-isa-serial-native.toml")}:/etc/kvm-manager-agent/config-isa-serial-native.toml`,
      `${join(staging, "config-isa-serial-qga.toml")}:/etc/kvm-manager-agent/config-isa-serial-qga.toml`,
      `${join(staging, "config-hmac.toml")}:/etc/kvm-manager-agent/config-hmac.toml`,
      `${join(staging, "hmac.key")}:${GUEST_HMAC_KEY_FILE}`,
    ];
    for (const tool of hostTools) files.push(`${tool}:${tool}`);
    return await imageWith("guest", files, GUEST_RUN);
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

/**
 * An initramfs with these files (SRC:DEST, as build-initramfs.sh takes them) and `run` as
 * /agent/run, cached under .vm/<kind>-<hash>.cpio; older images of the same kind are
 * removed (each is ~110 MB).
 */
export async function imageWith(kind: string, files: string[], run: string): Promise<string> {
  mkdirSync(CACHE, { recursive: true });
  const script = join(import.meta.dir, "build-initramfs.sh");
  const hash = createHash("sha256");
  // Small files by content (callers stage them afresh in temp dirs), big ones by path, size and time.
  for (const spec of [`${script}:`, ...files]) {
    const [file, dest] = [spec.slice(0, spec.indexOf(":")), spec.slice(spec.indexOf(":") + 1)];
    const st = statSync(file);
    if (st.size < 1_000_000) hash.update(`${dest}:`).update(readFileSync(file));
    else hash.update(`${spec}:${st.size}:${st.mtimeMs}\n`);
  }
  hash.update(run);
  const out = join(CACHE, `${kind}-${hash.digest("hex").slice(0, 16)}.cpio`);
  if (existsSync(out)) return out;
  const staging = mkdtempSync(join(tmpdir(), "kma-image-"));
  try {
    writeFileSync(join(staging, "run"), run, { mode: 0o755 });
    const build = Bun.spawnSync(["bash", script, `${out}.tmp`, ...files, `${join(staging, "run")}:/agent/run`], { stdout: "pipe", stderr: "pipe" });
    if (build.exitCode !== 0) throw new Error(`build-initramfs.sh failed:\n${build.stderr}`);
    for (const old of readdirSync(CACHE)) if (old.startsWith(`${kind}-`) && old.endsWith(".cpio")) rmSync(join(CACHE, old));
    Bun.spawnSync(["mv", `${out}.tmp`, out]);
    return out;
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

export interface BootOptions {
  image: string;
  /** Extra kernel command line, e.g. "agent_args=--log-level,info". */
  append?: string;
  /** Our agent serves org.qemu.guest_agent.0 (qemu-ga is not started). */
  ourQga?: boolean;
  /** Leave out the agent's port at boot (to hot-plug it later). */
  withoutAgentPort?: boolean;
  /** Let a guest reboot restart the VM instead of ending QEMU. */
  allowReboot?: boolean;
  /** Size of the blank virtio disk (/dev/vda) every test VM gets; default 32 MiB, 0 for none. */
  diskMiB?: number;
  memMiB?: number;
  /**
   * Give the guest a second UART (its /dev/ttyS1) on the host socket `serialSocket`,
   * and start our agent with a config serving this protocol on it.
   */
  isaSerial?: "native" | "qga";
  /** Our agent answers only requests signed with GUEST_HMAC_KEY. */
  hmac?: boolean;
  /** The host CPUs QEMU may run on (taskset -c), e.g. the bench's server CPU; default: where the caller may run. */
  hostCpus?: string;
}

const running = new Set<TestVm>();
process.on("exit", () => {
  for (const vm of running) vm.kill();
});

export class TestVm {
  readonly agentSocket: string;
  readonly qgaSocket: string;
  readonly qmpSocket: string;
  readonly consolePath: string;
  /** The host end of the guest's /dev/ttyS1 (boot option isaSerial). */
  readonly serialSocket: string;
  private qmp: Qmp | null = null;

  private constructor(
    readonly dir: string,
    private readonly proc: Subprocess,
    readonly startedAt: number,
  ) {
    this.agentSocket = join(dir, "agent.sock");
    this.qgaSocket = join(dir, "qga.sock");
    this.qmpSocket = join(dir, "qmp.sock");
    this.consolePath = join(dir, "console.log");
    this.serialSocket = join(dir, "serial.sock");
  }

  get pid(): number {
    return this.proc.pid;
  }

  static async boot(options: BootOptions): Promise<TestVm> {
    const dir = mkdtempSync(join(tmpdir(), "kma-vm-"));
    const args = [
      "qemu-system-x86_64",
      ...["-accel", "tcg", "-cpu", process.env.VM_CPU ?? "max", "-smp", "1", "-m", String(options.memMiB ?? 512)],
      ...["-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-monitor", "none"],
      ...(options.allowReboot ? [] : ["-no-reboot"]),
      ...["-kernel", newestKernel(), "-initrd", options.image],
      ...["-append", `console=ttyS0 panic=-1 quiet loglevel=4 ${options.ourQga ? "kma_qga " : ""}${options.isaSerial ? `kma_isa_serial=${options.isaSerial} ` : ""}${options.hmac ? "kma_hmac " : ""}${options.append ?? ""}`],
      ...["-serial", `file:${join(dir, "console.log")}`],
      ...["-qmp", `unix:${join(dir, "qmp.sock")},server=on,wait=off`],
      ...["-device", "virtio-serial-pci,id=vser0"],
      ...["-chardev", `socket,path=${join(dir, "qga.sock")},server=on,wait=off,id=qgachr`],
      ...["-device", `virtserialport,chardev=qgachr,name=${QGA_PORT},id=qgaport`],
      ...["-nic", "user,restrict=on,model=virtio-net-pci"],
    ];
    if (!options.withoutAgentPort) args.push(...TestVm.agentPortArgs(join(dir, "agent.sock")));
    if (options.isaSerial) {
      args.push("-chardev", `socket,path=${join(dir, "serial.sock")},server=on,wait=off,id=serialchr`, "-device", "isa-serial,chardev=serialchr,index=1");
    }
    const diskMiB = options.diskMiB ?? 32;
    if (diskMiB > 0) {
      const disk = join(dir, "disk.raw");
      writeFileSync(disk, "");
      Bun.spawnSync(["truncate", "-s", `${diskMiB}M`, disk]);
      args.push("-drive", `file=${disk},format=raw,if=virtio,cache=unsafe`);
    }
    if (options.hostCpus !== undefined) args.unshift("taskset", "-c", options.hostCpus);
    const proc = Bun.spawn(args, { stdin: "ignore", stdout: Bun.file(join(dir, "qemu.out")), stderr: Bun.file(join(dir, "qemu.err")) });
    const vm = new TestVm(dir, proc, performance.now());
    running.add(vm);
    try {
      const deadline = Date.now() + 10_000;
      while (!existsSync(vm.qmpSocket)) {
        if (proc.exitCode !== null) throw new Error(`qemu exited at start: ${vm.qemuErrors()}`);
        if (Date.now() > deadline) throw new Error("qemu did not create its QMP socket");
        await Bun.sleep(20);
      }
      vm.qmp = await Qmp.connect(vm.qmpSocket);
    } catch (error) {
      await vm.stop();
      throw error;
    }
    return vm;
  }

  private static agentPortArgs(socket: string): string[] {
    return ["-chardev", `socket,path=${socket},server=on,wait=off,id=agentchr`, "-device", `virtserialport,chardev=agentchr,name=${AGENT_PORT},id=agentport`];
  }

  /** Run a QMP command; throws with QEMU's error text. */
  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    return this.qmp!.execute(command, args);
  }

  /** QMP query-status's status: "running", "suspended", ... */
  async status(): Promise<string> {
    return ((await this.execute("query-status")) as { status: string }).status;
  }

  /** Polls query-status until the VM is in `wanted` (e.g. "suspended" after a guest suspend). */
  async waitForStatus(wanted: string, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((await this.status()) !== wanted) {
      if (Date.now() > deadline) throw new Error(`VM never reached ${wanted}: ${await this.status()}\n${this.console().slice(-2000)}`);
      await Bun.sleep(100);
    }
  }

  /** Hot-plug the agent's port (and its chardev) through QMP, as `virsh attach-device` would. */
  async plugAgentPort(): Promise<void> {
    await this.execute("chardev-add", {
      id: "agentchr",
      backend: { type: "socket", data: { addr: { type: "unix", data: { path: this.agentSocket } }, server: true, wait: false } },
    });
    await this.execute("device_add", { driver: "virtserialport", bus: "vser0.0", chardev: "agentchr", name: AGENT_PORT, id: "agentport" });
  }

  async unplugAgentPort(): Promise<void> {
    await this.execute("device_del", { id: "agentport" });
    await this.qmp!.waitForEvent("DEVICE_DELETED", (data) => (data as { device?: string }).device === "agentport", 30_000);
    await this.execute("chardev-remove", { id: "agentchr" });
  }

  console(): string {
    return existsSync(this.consolePath) ? readFileSync(this.consolePath, "utf8") : "";
  }

  /** Waits until the console shows `pattern` (the guest's own words, not a sleep). */
  async waitForConsole(pattern: RegExp, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pattern.test(this.console())) {
      if (this.proc.exitCode !== null) throw new Error(`VM exited while waiting for ${pattern}:\n${this.console().slice(-3000)}`);
      if (Date.now() > deadline) throw new Error(`console never showed ${pattern}:\n${this.console().slice(-3000)}`);
      await Bun.sleep(50);
    }
  }

  /** Resolves with QEMU's exit code once the VM is gone (after a guest poweroff), or throws after timeoutMs. */
  async waitForExit(timeoutMs: number): Promise<number> {
    const timeout = Bun.sleep(timeoutMs).then(() => "timeout" as const);
    const result = await Promise.race([this.proc.exited, timeout]);
    if (result === "timeout") throw new Error(`VM still running after ${timeoutMs} ms`);
    running.delete(this);
    return result;
  }

  qemuErrors(): string {
    const file = join(this.dir, "qemu.err");
    return existsSync(file) ? readFileSync(file, "utf8") : "";
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null) {
      try {
        await Promise.race([this.qmp?.execute("quit"), Bun.sleep(2_000)]);
      } catch {
        // QEMU may close QMP before it answers quit.
      }
      const exited = await Promise.race([this.proc.exited.then(() => true), Bun.sleep(3_000).then(() => false)]);
      if (!exited) this.kill();
      await this.proc.exited;
    }
    this.qmp?.close();
    running.delete(this);
    if (!process.env.KMA_KEEP_VM) rmSync(this.dir, { recursive: true, force: true });
  }

  kill(): void {
    if (this.proc.exitCode === null) this.proc.kill("SIGKILL");
  }
}

/** A minimal QMP client: one command at a time, events kept for waitForEvent. */
class Qmp {
  private buffer = "";
  private readonly pending: { resolve(value: unknown): void; reject(error: Error): void }[] = [];
  private readonly events: { event: string; data: unknown }[] = [];
  private eventWaiters: (() => void)[] = [];

  private constructor(private readonly socket: import("bun").Socket<undefined>) {}

  static async connect(path: string): Promise<Qmp> {
    let qmp!: Qmp;
    let greeted!: () => void;
    const greeting = new Promise<void>((r) => (greeted = r));
    const socket = await Bun.connect({
      unix: path,
      socket: {
        data(_, chunk) {
          qmp.receive(chunk.toString(), greeted);
        },
      },
    });
    qmp = new Qmp(socket);
    await greeting;
    await qmp.execute("qmp_capabilities");
    return qmp;
  }

  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n");
    });
  }

  async waitForEvent(name: string, match: (data: unknown) => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.events.findIndex((e) => e.event === name && match(e.data));
      if (index >= 0) {
        this.events.splice(index, 1);
        return;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`QMP event ${name} did not come within ${timeoutMs} ms`);
      await Promise.race([new Promise<void>((r) => this.eventWaiters.push(r)), Bun.sleep(left)]);
    }
  }

  close(): void {
    this.socket.end();
  }

  private receive(text: string, greeted: () => void): void {
    this.buffer += text;
    let newline: number;
    while ((newline = this.buffer.indexOf("\n")) >= 0) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (!line) continue;
      const message = JSON.parse(line);
      if ("QMP" in message) greeted();
      else if ("event" in message) {
        this.events.push({ event: message.event, data: message.data });
        for (const wake of this.eventWaiters.splice(0)) wake();
      } else if ("return" in message) this.pending.shift()?.resolve(message.return);
      else if ("error" in message) this.pending.shift()?.reject(new Error(`QMP: ${message.error.desc}`));
    }
  }
}
