#!/usr/bin/env bun
/**
 * kvm-manager-agent: the guest agent, and on the host the CLI that drives it.
 * `kvm-manager-agent [--transport ...]` runs the agent; a first word that is a
 * verb (`call`, `methods`, a method name) runs a host command instead.
 */
// First: on Linux it may start the process again, with its allocator's options set, before anything else runs.
import "./runtime/agent-allocator.ts";
import { spawn } from "node:child_process";
import { appendFileSync, existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { stringify as toToml } from "smol-toml";
import { startAgent, type RunningAgent } from "./agent.ts";
import { applyArgs, parseAgentArgs, UsageError, type AgentArgs } from "./cli/agent-args.ts";
import { HOST_USAGE, hostMethod, listMethods, runHostCommand } from "./cli/host.ts";
import { dumpQemuGaConf, invokedAsQemuGa, parseQemuGaArgs, QEMU_GA_USAGE, qemuGaConfig } from "./cli/qemu-ga.ts";
import { runSelfTest } from "./cli/self-test.ts";
import { runWindowsServiceCommand } from "./service/command.ts";
import { runTransferCommand } from "./cli/transfer.ts";
import { hostVerbOf, isTransferVerb } from "./cli/verbs.ts";
import { ConfigError, loadConfig } from "./config/load.ts";
import { DEFAULT_CONFIG_PATH, DEFAULT_VIRTIO_PORT } from "./config/schema.ts";
import { createHoldableLogger, type Logger } from "./log/logger.ts";
import { PROTOCOL_VERSION } from "./schema/methods.ts";
import { loadHmacKey } from "./security/hmac.ts";
import { AGENT_VERSION } from "./version.ts";

const AGENT_USAGE = `Usage: kvm-manager-agent [options]       run the guest agent

  -t, --transport TYPE   virtio-serial (default) | isa-serial | unix-listen | vsock-listen | stdio
  -p, --path PATH        device of virtio-serial (default ${DEFAULT_VIRTIO_PORT}),
                         serial device of isa-serial (e.g. /dev/ttyS1) or socket of unix-listen
      --vsock-port N     port of vsock-listen
  -c, --config FILE      config file (default ${DEFAULT_CONFIG_PATH}; missing means safe defaults)
      --log-level LEVEL  debug | info | warn | error
      --check-config     validate the config and exit
      --print-config     print the effective config as TOML and exit
      --self-test        check config, ports, permissions and platform; print a report
                         (exit status 1 when something is wrong)
      --install-service  Windows: register the agent as the service kvm-manager-agent
                         (auto start, LocalSystem, restart on failure; with --config FILE, that file)
      --uninstall-service  Windows: stop and remove the service
      --service          Windows: run as the service (the installed command line passes it)
  -h, --help             this text
  -V, --version          agent and protocol version
`;

async function main(argv: string[]): Promise<number> {
  if (invokedAsQemuGa(process.argv0)) return runAsQemuGa(argv);
  const verb = hostVerbOf(argv);
  if (verb !== undefined) {
    if (verb === "methods") {
      console.log(listMethods());
      return 0;
    }
    if (verb === "call" || hostMethod(verb)) return runHostCommand(verb, argv.slice(1));
    if (isTransferVerb(verb)) return runTransferCommand(verb, argv.slice(1));
    throw new UsageError(`unknown command '${verb}' (see --help)`);
  }
  const args = parseAgentArgs(argv);
  if (args.help) {
    console.log(`${AGENT_USAGE}\n${HOST_USAGE}`);
    return 0;
  }
  if (args.version) {
    console.log(`kvm-manager-agent ${AGENT_VERSION} (protocol ${PROTOCOL_VERSION})`);
    return 0;
  }
  if (args.installService || args.uninstallService || args.service) return runWindowsServiceCommand(args);
  return runAgent(args);
}

async function runAgent(args: AgentArgs): Promise<number> {
  const configPath = args.configPath ?? DEFAULT_CONFIG_PATH;
  if (args.selfTest) {
    const report = await runSelfTest(args, configPath);
    process.stdout.write(report.text);
    return report.failures === 0 ? 0 : 1;
  }
  const config = applyArgs(await loadConfig(configPath, { required: args.configPath !== undefined }), args);
  if (args.checkConfig) {
    if (config.security.hmac_key_file) loadHmacKey(config.security.hmac_key_file);
    console.log(`config OK: ${configPath}`);
    return 0;
  }
  if (args.printConfig) {
    process.stdout.write(toToml(config) + "\n");
    return 0;
  }
  const { logger, lines } = createHoldableLogger(config.logging.level, config.logging.format);
  const agent = await startAgent(config, logger, lines);
  stopOnSignals(agent, logger, () => {});
  return new Promise<number>(() => {}); // Serve until a signal or the end of stdin.
}

/** Invoked as qemu-ga: its flags, its config file, its messages and exit codes. */
async function runAsQemuGa(argv: string[]): Promise<number> {
  let options;
  let config;
  try {
    options = parseQemuGaArgs(argv);
    if (options.help) {
      console.log(QEMU_GA_USAGE);
      return 0;
    }
    if (options.version) {
      console.log(`QEMU Guest Agent ${AGENT_VERSION} (kvm-manager-agent)`);
      return 0;
    }
    if (options.dumpConf) {
      process.stdout.write(dumpQemuGaConf(options));
      return 0;
    }
    config = qemuGaConfig(options);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`qemu-ga: ${error.message}\nUnknown option, try 'qemu-ga --help' for more information.`);
    return 1;
  }
  if (options.daemon) {
    // A daemon as qemu-ga -d makes one: the same command without -d, detached; this process returns at once.
    const child = spawn(process.execPath, argv.filter((arg) => arg !== "-d" && arg !== "--daemonize"), { argv0: process.argv0, detached: true, stdio: "ignore" });
    child.unref();
    return 0;
  }
  if (existsSync(options.pidfile)) {
    const pid = Number(readFileSync(options.pidfile, "utf8").trim());
    if (pid > 0 && pid !== process.pid && processAlive(pid)) {
      console.error(`qemu-ga: pidfile ${options.pidfile} names a running agent (pid ${pid})`);
      return 1;
    }
  }
  const logfile = options.logfile;
  const { logger, lines } = createHoldableLogger(config.logging.level, "text", logfile ? (line) => appendFileSync(logfile, line) : undefined);
  const agent = await startAgent(config, logger, lines);
  const pidfile = options.pidfile;
  // Started frozen: the pidfile may sit on a frozen filesystem, so it waits for the thaw, as qemu-ga's does.
  agent.fsfreeze.whenThawed(() => writeFileSync(pidfile, `${process.pid}\n`));
  stopOnSignals(agent, logger, () => rmSync(pidfile, { force: true }));
  return new Promise<number>(() => {});
}

/**
 * SIGTERM/SIGINT stop the agent, except while filesystems are frozen: then it
 * keeps running (as qemu-ga does), since dying would leave them frozen with no
 * one to thaw them, and a graceful stop would block on its own writes.
 */
function stopOnSignals(agent: RunningAgent, logger: Logger, cleanup: () => void): void {
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      if (agent.fsfreeze.status === "frozen") {
        logger.warn("not stopping while filesystems are frozen: thaw them first (fsfreeze_thaw or guest-fsfreeze-thaw)", { signal });
        return;
      }
      void agent.stop(signal).then(() => {
        cleanup();
        process.exit(0);
      });
    });
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (error) {
  if (error instanceof UsageError || error instanceof ConfigError) {
    console.error(`kvm-manager-agent: ${error.message}`);
    process.exit(2);
  }
  console.error(`kvm-manager-agent: ${(error as Error).stack ?? String(error)}`);
  process.exit(1);
}
