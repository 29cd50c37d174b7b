/** Wires config, audit, dispatcher and transport together and runs until stopped. */
import type { AgentConfig } from "./config/schema.ts";
import { createServices } from "./create-services.ts";
import { noAudit, openAuditFile } from "./log/audit.ts";
import type { Logger } from "./log/logger.ts";
import { Dispatcher } from "./protocol/dispatcher.ts";
import { RpcSession } from "./protocol/session.ts";
import { StdioTransport } from "./transport/stdio.ts";
import type { Transport } from "./transport/transport.ts";
import { UnixListenTransport } from "./transport/unix-listen.ts";
import { VirtioSerialTransport } from "./transport/virtio-serial/virtio-serial.ts";
import { VsockListenTransport } from "./transport/vsock/vsock-listen.ts";
import { AGENT_VERSION } from "./version.ts";

export interface RunningAgent {
  stop(reason: string): Promise<void>;
}

export async function startAgent(config: AgentConfig, logger: Logger): Promise<RunningAgent> {
  const auditFile = config.logging.audit_file;
  const audit = auditFile ? openAuditFile(auditFile) : noAudit;
  const services = createServices(config, logger, audit);
  const dispatcher = new Dispatcher({ config, audit, logger, services });
  let stopping: Promise<void> | null = null;
  const stop = (reason: string) =>
    (stopping ??= (async () => {
      logger.info("stopping", { reason });
      await transport.close();
      services.exec.killAll();
      services.files.close();
      await audit.close();
    })());
  const transport = createTransport(config, logger, () => void stop("stdin closed").then(() => process.exit(0)));
  await transport.start((connection) => {
    logger.debug("host connected", { transport: connection.transport });
    return new RpcSession(connection, dispatcher, config.limits, logger);
  });
  logger.info("agent started", { version: AGENT_VERSION, transport: transport.name, audit: auditFile || "off" });
  return { stop };
}

function createTransport(config: AgentConfig, logger: Logger, onStdinEnd: () => void): Transport {
  const { type, path, vsock_port } = config.transport;
  switch (type) {
    case "virtio-serial":
      return new VirtioSerialTransport(path, logger);
    case "unix-listen":
      return new UnixListenTransport(path, logger);
    case "vsock-listen":
      return new VsockListenTransport(vsock_port, logger);
    case "stdio":
      return new StdioTransport(logger, onStdinEnd);
  }
}
