/**
 * `kvm-manager-agent --self-test`: what would stop the agent from serving, as a
 * report a user can paste into a bug. Exit status 1 when any check fails.
 */
import { accessSync, closeSync, constants, existsSync, openSync, readdirSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { arch, release } from "node:os";
import { basename, dirname } from "node:path";
import { ConfigError, loadConfig } from "../config/load.ts";
import type { AgentConfig } from "../config/schema.ts";
import { buildAllowlist } from "../exec/policy.ts";
import { runningCommandPlatform } from "../exec/windows.ts";
import { OS_RELEASE_PATHS } from "../info/linux.ts";
import { parseOsRelease } from "../info/os-release.ts";
import { PROTOCOL_VERSION } from "../schema/methods.ts";
import { AGENT_VERSION } from "../version.ts";
import { applyArgs, type AgentArgs } from "./agent-args.ts";

type Status = "ok" | "warn" | "FAIL";

interface Check {
  status: Status;
  name: string;
  detail: string;
}

export interface SelfTestReport {
  text: string;
  failures: number;
}

/** The ways to give a VM the port, for a report that says one is missing. */
function addPortHint(name: string): string {
  const proxmox = name === "org.qemu.guest_agent.0" ? "; Proxmox: agent: 1" : "";
  return `add it to the VM (QEMU: -device virtserialport,name=${name}; libvirt: <channel> with <target type='virtio' name='${name}'/>${proxmox}; see install.md)`;
}

export async function runSelfTest(args: AgentArgs, configPath: string): Promise<SelfTestReport> {
  const checks: Check[] = [];
  let config: AgentConfig | null = null;
  try {
    config = applyArgs(await loadConfig(configPath, { required: args.configPath !== undefined }), args);
    checks.push({ status: "ok", name: "config", detail: existsSync(configPath) ? `${configPath} is valid` : `${configPath} is absent: built-in defaults` });
    checks.push(...configFileChecks(configPath));
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    checks.push({ status: "FAIL", name: "config", detail: error.message });
  }
  if (config) {
    checks.push(isRoot());
    if (config.transport.enabled) checks.push(portCheck("native port", config.transport));
    else checks.push({ status: "ok", name: "native port", detail: "off ([transport] enabled = false)" });
    if (config.qga.enabled) {
      checks.push(portCheck("QGA port", config.qga));
      checks.push(writableDir("QGA state", config.qga.state_dir));
    } else checks.push({ status: "ok", name: "QGA port", detail: "off ([qga] enabled = false)" });
    if (config.logging.audit_file) checks.push(writableDir("audit log", dirname(config.logging.audit_file)));
    if (config.security.enable_exec) checks.push(execCheck(config.security.allowed_commands));
  } else {
    checks.push({ status: "warn", name: "ports", detail: "not checked: the config must be valid first" });
  }
  checks.push(probes());

  const failures = checks.filter((check) => check.status === "FAIL").length;
  const width = Math.max(...checks.map((check) => check.name.length));
  const lines = [
    `kvm-manager-agent ${AGENT_VERSION} (protocol ${PROTOCOL_VERSION}) self-test`,
    `platform: ${platformLine()}`,
    ...checks.map((check) => `${check.status.padEnd(4)}  ${check.name.padEnd(width)}  ${check.detail}`),
    failures === 0 ? "result: ok" : `result: ${failures} ${failures === 1 ? "problem" : "problems"} (FAIL above)`,
  ];
  return { text: lines.join("\n") + "\n", failures };
}

function platformLine(): string {
  let os = process.platform as string;
  for (const path of OS_RELEASE_PATHS) {
    try {
      os = parseOsRelease(readFileSync(path, "utf8")).PRETTY_NAME ?? os;
      break;
    } catch {
      // Not here (Windows, or a minimal image): the next path, or the platform name.
    }
  }
  return `${os}; kernel ${release()}; ${arch()}; uid ${process.getuid?.() ?? "n/a"}`;
}

function errnoCode(error: unknown): string {
  return (error as NodeJS.ErrnoException).code ?? String(error);
}

/** The config decides whether exec runs: nobody but root may be able to change it. */
function configFileChecks(path: string): Check[] {
  let st;
  try {
    st = statSync(path);
  } catch {
    return [];
  }
  if (st.mode & 0o002) return [{ status: "FAIL", name: "config mode", detail: `${path} is writable by every user (mode ${(st.mode & 0o777).toString(8)}): chmod 644 it` }];
  if (process.getuid?.() === 0 && st.uid !== 0) return [{ status: "warn", name: "config mode", detail: `${path} is owned by uid ${st.uid}, not root` }];
  return [];
}

function isRoot(): Check {
  const uid = process.getuid?.();
  if (uid === undefined || uid === 0) return { status: "ok", name: "user", detail: uid === 0 ? "root" : "n/a" };
  return { status: "warn", name: "user", detail: `uid ${uid}: the service runs as root; ports, power and other users' files need it` };
}

function portCheck(name: string, transport: { type: string; path: string; vsock_port: number }): Check {
  switch (transport.type) {
    case "virtio-serial":
      return virtioPortCheck(name, transport.path);
    case "unix-listen":
      try {
        accessSync(dirname(transport.path), constants.W_OK);
        return { status: "ok", name, detail: `unix-listen ${transport.path} (directory writable)` };
      } catch (error) {
        return { status: "FAIL", name, detail: `unix-listen ${transport.path}: cannot create the socket there (${errnoCode(error)})` };
      }
    case "vsock-listen":
      return existsSync("/dev/vsock")
        ? { status: "ok", name, detail: `vsock-listen port ${transport.vsock_port} (/dev/vsock present)` }
        : { status: "FAIL", name, detail: `vsock-listen port ${transport.vsock_port}: no /dev/vsock (no vsock device, or the vmw_vsock_virtio_transport module is not loaded)` };
    default:
      return { status: "ok", name, detail: transport.type };
  }
}

function virtioPortCheck(name: string, path: string): Check {
  const portName = basename(path);
  let st;
  try {
    st = statSync(path);
  } catch {
    const noController = process.platform === "linux" && !existsSync("/sys/class/virtio-ports");
    const why = noController ? "this VM has no virtio-serial device at all (or virtio_console is not loaded)" : `this VM has no virtio-serial port named ${portName}`;
    return { status: "FAIL", name, detail: `${path} is absent: ${why}; ${addPortHint(portName)}` };
  }
  if (!st.isCharacterDevice()) return { status: "FAIL", name, detail: `${path} is not a character device` };
  try {
    closeSync(openSync(path, constants.O_RDWR | constants.O_NONBLOCK | constants.O_NOCTTY));
    return { status: "ok", name, detail: `${path} present and openable` };
  } catch (error) {
    const code = errnoCode(error);
    if (code === "EBUSY") {
      // A virtio-serial port has one opener at a time: say who.
      const holders = holdersOf(path);
      const agent = holders.find((holder) => holder.exe === process.execPath || holder.comm.startsWith("kvm-manager-age"));
      if (agent) return { status: "ok", name, detail: `${path} present, served by the running agent (pid ${agent.pid})` };
      const who = holders.length > 0 ? holders.map((holder) => `pid ${holder.pid} (${holder.comm})`).join(", ") : "another process";
      return { status: "FAIL", name, detail: `${path} is held by ${who}: a port has one user at a time; stop it (qemu-guest-agent?) or switch this port off in the config` };
    }
    if (code === "EACCES" || code === "EPERM") return { status: "FAIL", name, detail: `${path}: permission denied (${code}); run as root` };
    return { status: "FAIL", name, detail: `${path} cannot be opened: ${code}` };
  }
}

/** Processes with `path` open, from /proc/<pid>/fd. */
function holdersOf(path: string): { pid: number; comm: string; exe: string }[] {
  let device: string;
  try {
    device = statSync(path).rdev.toString();
  } catch {
    return [];
  }
  const holders: { pid: number; comm: string; exe: string }[] = [];
  let pids: string[];
  try {
    pids = readdirSync("/proc").filter((entry) => /^\d+$/.test(entry));
  } catch {
    return [];
  }
  for (const pid of pids) {
    try {
      const fds = readdirSync(`/proc/${pid}/fd`);
      if (!fds.some((fd) => isDevice(`/proc/${pid}/fd/${fd}`, device))) continue;
      const comm = readFileSync(`/proc/${pid}/comm`, "utf8").trim();
      let exe = "";
      try {
        exe = readlinkSync(`/proc/${pid}/exe`);
      } catch {
        // Another user's process: the name will do.
      }
      holders.push({ pid: Number(pid), comm, exe });
    } catch {
      // Gone, or not ours to look at.
    }
  }
  return holders;
}

function isDevice(fdPath: string, rdev: string): boolean {
  try {
    const st = statSync(fdPath);
    return st.isCharacterDevice() && st.rdev.toString() === rdev;
  } catch {
    return false;
  }
}

/** A directory the agent writes: there and writable, or creatable under its nearest existing parent. */
function writableDir(name: string, dir: string): Check {
  let existing = dir;
  while (!existsSync(existing) && dirname(existing) !== existing) existing = dirname(existing);
  try {
    accessSync(existing, constants.W_OK);
    return { status: "ok", name, detail: existing === dir ? `${dir} writable` : `${dir} will be created` };
  } catch (error) {
    return { status: "FAIL", name, detail: `${dir}: ${existing} is not writable (${errnoCode(error)})` };
  }
}

function execCheck(allowed: readonly string[]): Check {
  const allowlist = buildAllowlist(allowed, undefined, runningCommandPlatform());
  if (allowlist.ignored.length === 0) return { status: "ok", name: "exec", detail: `on; ${allowlist.byReal.size} allowed command(s) found` };
  const missing = allowlist.ignored.map((entry) => `'${entry.configured}': ${entry.reason}`).join("; ");
  return { status: "warn", name: "exec", detail: `on; ignored in allowed_commands: ${missing}` };
}

/** What the inventory methods read; a missing one makes its method fail or answer less. */
function probes(): Check {
  if (process.platform !== "linux") return { status: "ok", name: "probes", detail: `none on ${process.platform}` };
  const readable = (path: string) => {
    try {
      accessSync(path, constants.R_OK);
      return true;
    } catch {
      return false;
    }
  };
  const required = ["/proc/stat", "/proc/meminfo", "/proc/loadavg", "/proc/self/mountinfo", "/proc/net/dev", "/sys/class/net"];
  const missing = required.filter((path) => !readable(path));
  if (missing.length > 0) return { status: "FAIL", name: "probes", detail: `cannot read ${missing.join(", ")}` };
  const notes: string[] = [];
  if (!OS_RELEASE_PATHS.some(readable)) notes.push("no /etc/os-release: get_info and guest-get-osinfo name the OS less precisely");
  if (!readable("/run/utmp") && !readable("/var/run/utmp")) notes.push("no utmp: get_users and guest-get-users answer an empty list");
  const detail = `${required.length} /proc and /sys sources readable`;
  return notes.length > 0 ? { status: "warn", name: "probes", detail: `${detail}; ${notes.join("; ")}` } : { status: "ok", name: "probes", detail };
}
