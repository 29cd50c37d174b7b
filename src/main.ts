#!/usr/bin/env bun
/**
 * kvm-manager-agent: the guest agent, and on the host the CLI that drives it.
 * `kvm-manager-agent [--transport ...]` runs the agent; a first word that is a
 * verb (`call`, `methods`, a method name) runs a host command instead.
 */
import { stringify as toToml } from "smol-toml";
import { startAgent } from "./agent.ts";
import { applyArgs, parseAgentArgs, UsageError, type AgentArgs } from "./cli/agent-args.ts";
import { HOST_USAGE, hostMethod, listMethods, runHostCommand } from "./cli/host.ts";
import { isTransferVerb, runTransferCommand } from "./cli/transfer.ts";
import { ConfigError, loadConfig } from "./config/load.ts";
import { DEFAULT_CONFIG_PATH, DEFAULT_VIRTIO_PORT } from "./config/schema.ts";
import { createLogger } from "./log/logger.ts";
import { PROTOCOL_VERSION } from "./schema/methods.ts";
import { AGENT_VERSION } from "./version.ts";

const AGENT_USAGE = `Usage: kvm-manager-agent [options]       run the guest agent

  -t, --transport TYPE   virtio-serial (default) | unix-listen | vsock-listen | stdio
  -p, --path PATH        device of virtio-serial (default ${DEFAULT_VIRTIO_PORT})
                         or socket of unix-listen
      --vsock-port N     port of vsock-listen
  -c, --config FILE      config file (default ${DEFAULT_CONFIG_PATH}; missing means safe defaults)
      --log-level LEVEL  debug | info | warn | error
      --check-config     validate the config and exit
      --print-config     print the effective config as TOML and exit
  -h, --help             this text
  -V, --version          agent and protocol version
`;

async function main(argv: string[]): Promise<number> {
  const verb = argv[0];
  if (verb !== undefined && !verb.startsWith("-")) {
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
  return runAgent(args);
}

async function runAgent(args: AgentArgs): Promise<number> {
  const configPath = args.configPath ?? DEFAULT_CONFIG_PATH;
  const config = applyArgs(await loadConfig(configPath, { required: args.configPath !== undefined }), args);
  if (args.checkConfig) {
    console.log(`config OK: ${configPath}`);
    return 0;
  }
  if (args.printConfig) {
    process.stdout.write(toToml(config) + "\n");
    return 0;
  }
  const logger = createLogger(config.logging.level, config.logging.format);
  const agent = await startAgent(config, logger);
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => void agent.stop(signal).then(() => process.exit(0)));
  }
  return new Promise<number>(() => {}); // Serve until a signal or the end of stdin.
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
