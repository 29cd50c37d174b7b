/**
 * Invoked as `qemu-ga`, the agent takes qemu-ga's own command line and config
 * file, so unit files and scripts written for qemu-ga keep working: it then
 * serves the QGA protocol only, where qemu-ga would.
 */
import { existsSync, readFileSync } from "node:fs";
import { basename } from "node:path";
import { defaultConfig, type AgentConfig } from "../config/schema.ts";
import { AGENT_VERSION } from "../version.ts";
import { UsageError } from "./agent-args.ts";

export interface QemuGaOptions {
  daemon: boolean;
  method: string;
  path: string | undefined;
  logfile: string | undefined;
  pidfile: string;
  fsfreezeHook: string | undefined;
  statedir: string;
  verbose: boolean;
  retryPath: boolean;
  blockRpcs: string[];
  allowRpcs: string[];
  dumpConf: boolean;
  help: boolean;
  version: boolean;
}

const DEFAULT_FSFREEZE_HOOK = "/etc/qemu/fsfreeze-hook";
const DEFAULT_PATHS: Record<string, string> = {
  "virtio-serial": "/dev/virtio-ports/org.qemu.guest_agent.0",
  "isa-serial": process.platform === "win32" ? "COM1" : "/dev/ttyS0",
};

export function invokedAsQemuGa(argv0: string): boolean {
  return /^qemu-ga(\.exe)?$/i.test(basename(argv0));
}

export const QEMU_GA_USAGE = `Usage: qemu-ga [-m <method> -p <path>] [<options>]
QEMU Guest Agent compatible mode of kvm-manager-agent ${AGENT_VERSION}

  -m, --method      transport method: one of unix-listen, virtio-serial,
                    isa-serial or vsock-listen (virtio-serial is the default)
  -p, --path        device/socket path (the default for virtio-serial is:
                    ${DEFAULT_PATHS["virtio-serial"]},
                    the default for isa-serial is: ${DEFAULT_PATHS["isa-serial"]});
                    for vsock-listen <cid>:<port>
  -l, --logfile     set logfile path, logs to stderr by default
  -f, --pidfile     specify pidfile (default is /var/run/qemu-ga.pid)
  -F, --fsfreeze-hook[=PATH]
                    fsfreeze hook script (default ${DEFAULT_FSFREEZE_HOOK})
  -t, --statedir    dir to store state information (default /var/run)
  -v, --verbose     log extra debugging information
  -V, --version     print version information and exit
  -d, --daemonize   become a daemon
  -b, --block-rpcs  comma-separated list of RPCs to disable
  -a, --allow-rpcs  comma-separated list of RPCs to enable (all others disabled)
  -c, --config      config file (default $QGA_CONF or /etc/qemu/qemu-ga.conf)
  -D, --dump-conf   dump a qemu-ga config file based on current config to stdout
  -r, --retry-path  reopen the path when it goes away (always on here)
  -h, --help        display this help and exit`;

const SHORT: Record<string, string> = { m: "method", p: "path", l: "logfile", f: "pidfile", t: "statedir", b: "block-rpcs", a: "allow-rpcs", c: "config" };
const FLAGS: Record<string, string> = { v: "verbose", V: "version", d: "daemonize", D: "dump-conf", r: "retry-path", h: "help" };
const LONG_VALUE = new Set(["method", "path", "logfile", "pidfile", "statedir", "block-rpcs", "allow-rpcs", "config"]);
const LONG_FLAG = new Set(["verbose", "version", "daemonize", "dump-conf", "retry-path", "help"]);

/** qemu-ga's getopt: -xVALUE or -x VALUE, --long=VALUE or --long VALUE; -F takes its value only attached. */
export function parseQemuGaArgs(argv: string[], env: Record<string, string | undefined> = process.env): QemuGaOptions {
  const given = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const long = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (long) {
      const [, name, value] = long as unknown as [string, string, string | undefined];
      if (name === "fsfreeze-hook") given.set(name, value ?? true);
      else if (LONG_FLAG.has(name) && value === undefined) given.set(name, true);
      else if (LONG_VALUE.has(name)) {
        const v = value ?? argv[++i];
        if (v === undefined) throw new UsageError(`option '--${name}' requires an argument`);
        given.set(name, v);
      } else throw new UsageError(`unrecognized option '${arg}'`);
      continue;
    }
    const short = /^-([A-Za-z])(.*)$/.exec(arg);
    if (!short) throw new UsageError(`unexpected argument '${arg}'`);
    const [, letter, rest] = short as unknown as [string, string, string];
    if (letter === "F") given.set("fsfreeze-hook", rest || true);
    else if (SHORT[letter]) {
      const v = rest || argv[++i];
      if (v === undefined) throw new UsageError(`option requires an argument -- '${letter}'`);
      given.set(SHORT[letter]!, v);
    } else if (FLAGS[letter] && rest === "") given.set(FLAGS[letter]!, true);
    else throw new UsageError(`invalid option -- '${letter}'`);
  }

  // The config file first, the command line over it, as qemu-ga.
  const configPath = (given.get("config") as string | undefined) ?? env.QGA_CONF ?? "/etc/qemu/qemu-ga.conf";
  const file = existsSync(configPath) ? parseIni(readFileSync(configPath, "utf8"), configPath) : new Map<string, string>();
  if (given.has("config") && !existsSync(configPath)) throw new UsageError(`config file ${configPath} does not exist`);
  const value = (key: string): string | undefined => {
    const v = given.get(key);
    return typeof v === "string" ? v : file.get(key);
  };
  const flag = (key: string, fileKey = key): boolean => given.get(key) === true || file.get(fileKey) === "true";
  const list = (key: string) => (value(key) ?? "").split(",").filter(Boolean);

  const method = value("method") ?? "virtio-serial";
  if (!["virtio-serial", "unix-listen", "vsock-listen", "isa-serial"].includes(method)) {
    throw new UsageError(`invalid method '${method}': one of unix-listen, virtio-serial, isa-serial or vsock-listen`);
  }
  const hook = given.get("fsfreeze-hook") ?? file.get("fsfreeze-hook");
  return {
    daemon: flag("daemonize", "daemon"),
    method,
    path: value("path") ?? DEFAULT_PATHS[method],
    logfile: value("logfile"),
    pidfile: value("pidfile") ?? "/var/run/qemu-ga.pid",
    fsfreezeHook: hook === true ? DEFAULT_FSFREEZE_HOOK : hook,
    statedir: value("statedir") ?? "/var/run",
    verbose: flag("verbose"),
    retryPath: flag("retry-path"),
    blockRpcs: list("block-rpcs"),
    allowRpcs: list("allow-rpcs"),
    dumpConf: given.get("dump-conf") === true,
    help: given.get("help") === true,
    version: given.get("version") === true,
  };
}

/** qemu-ga's config file: an ini file with a [general] group. */
function parseIni(text: string, path: string): Map<string, string> {
  const values = new Map<string, string>();
  let group = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      group = section[1]!;
      continue;
    }
    const eq = line.indexOf("=");
    if (eq < 0) throw new UsageError(`${path}: not a key=value line: ${line}`);
    if (group === "general") values.set(line.slice(0, eq).trim(), line.slice(eq + 1).trim());
  }
  return values;
}

/** -D: the config file qemu-ga would write for these options (its lists come out in reverse order, as qemu-ga's do). */
export function dumpQemuGaConf(options: QemuGaOptions): string {
  const lines = ["[general]", `daemon=${options.daemon}`, `method=${options.method}`];
  if (options.path !== undefined) lines.push(`path=${options.path}`);
  if (options.logfile !== undefined) lines.push(`logfile=${options.logfile}`);
  lines.push(`pidfile=${options.pidfile}`);
  if (options.fsfreezeHook !== undefined) lines.push(`fsfreeze-hook=${options.fsfreezeHook}`);
  lines.push(`statedir=${options.statedir}`, `verbose=${options.verbose}`, `retry-path=${options.retryPath}`);
  lines.push(`block-rpcs=${[...options.blockRpcs].reverse().join(",")}`);
  if (options.allowRpcs.length > 0) lines.push(`allow-rpcs=${[...options.allowRpcs].reverse().join(",")}`);
  return `${lines.join("\n")}\n`;
}

/** The agent's config for qemu-ga's options: the QGA port only, on qemu-ga's channel. */
export function qemuGaConfig(options: QemuGaOptions): AgentConfig {
  if (options.path === undefined) throw new UsageError("must specify a path for this channel");
  if (options.blockRpcs.length > 0 && options.allowRpcs.length > 0) throw new UsageError("--block-rpcs and --allow-rpcs cannot be used together");
  const config = defaultConfig();
  let vsockPort = config.qga.vsock_port;
  if (options.method === "vsock-listen") {
    const address = /^(\d+):(\d+)$/.exec(options.path);
    if (!address) throw new UsageError(`vsock-listen path must be <cid>:<port> (got '${options.path}')`);
    vsockPort = Number(address[2]);
  }
  return {
    ...config,
    transport: { ...config.transport, enabled: false },
    qga: {
      ...config.qga,
      enabled: true,
      type: options.method as AgentConfig["qga"]["type"],
      path: options.path,
      vsock_port: vsockPort,
      state_dir: options.statedir,
      block_rpcs: options.blockRpcs,
      allow_rpcs: options.allowRpcs,
    },
    fsfreeze: { hook: options.fsfreezeHook ?? "" },
    logging: { ...config.logging, level: options.verbose ? "debug" : "info", format: "text" },
  };
}
