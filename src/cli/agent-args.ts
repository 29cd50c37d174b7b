/** Command line of the agent itself (not the host verbs). */
import { parseArgs } from "node:util";
import { TRANSPORT_TYPES, type AgentConfig, type TransportType } from "../config/schema.ts";

export class UsageError extends Error {
  override name = "UsageError";
}

export interface AgentArgs {
  configPath: string | undefined;
  transport: TransportType | undefined;
  path: string | undefined;
  vsockPort: number | undefined;
  logLevel: AgentConfig["logging"]["level"] | undefined;
  checkConfig: boolean;
  printConfig: boolean;
  selfTest: boolean;
  /** Windows: run under the service control manager (the command line the service is installed with). */
  service: boolean;
  installService: boolean;
  uninstallService: boolean;
  help: boolean;
  version: boolean;
}

const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;

export function parseAgentArgs(argv: string[]): AgentArgs {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: "string", short: "c" },
        transport: { type: "string", short: "t" },
        path: { type: "string", short: "p" },
        "vsock-port": { type: "string" },
        "log-level": { type: "string" },
        "check-config": { type: "boolean" },
        "print-config": { type: "boolean" },
        "self-test": { type: "boolean" },
        service: { type: "boolean" },
        "install-service": { type: "boolean" },
        "uninstall-service": { type: "boolean" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const transport = values.transport;
  if (transport !== undefined && !(TRANSPORT_TYPES as readonly string[]).includes(transport)) {
    throw new UsageError(`--transport must be one of ${TRANSPORT_TYPES.join(", ")} (got '${transport}')`);
  }
  if (transport === "unix-listen" && values.path === undefined) throw new UsageError("--transport unix-listen needs --path SOCKET");
  if (transport === "isa-serial" && values.path === undefined) throw new UsageError("--transport isa-serial needs --path DEVICE (e.g. /dev/ttyS1)");
  const logLevel = values["log-level"];
  if (logLevel !== undefined && !(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(", ")} (got '${logLevel}')`);
  }
  let vsockPort: number | undefined;
  if (values["vsock-port"] !== undefined) {
    vsockPort = Number(values["vsock-port"]);
    if (!Number.isInteger(vsockPort) || vsockPort < 1 || vsockPort > 0xffffffff) {
      throw new UsageError(`--vsock-port must be an integer from 1 to 4294967295 (got '${values["vsock-port"]}')`);
    }
  }
  return {
    configPath: values.config,
    transport: transport as TransportType | undefined,
    path: values.path,
    vsockPort,
    logLevel: logLevel as AgentArgs["logLevel"],
    checkConfig: values["check-config"] ?? false,
    printConfig: values["print-config"] ?? false,
    selfTest: values["self-test"] ?? false,
    service: values.service ?? false,
    installService: values["install-service"] ?? false,
    uninstallService: values["uninstall-service"] ?? false,
    help: values.help ?? false,
    version: values.version ?? false,
  };
}

/** Command-line flags win over the file. */
export function applyArgs(config: AgentConfig, args: AgentArgs): AgentConfig {
  return {
    ...config,
    transport: {
      ...config.transport,
      type: args.transport ?? config.transport.type,
      path: args.path ?? config.transport.path,
      vsock_port: args.vsockPort ?? config.transport.vsock_port,
    },
    logging: { ...config.logging, level: args.logLevel ?? config.logging.level },
  };
}
