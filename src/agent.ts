/** Wires config, audit, dispatcher and transport together and runs until stopped. */
import type { AgentConfig } from "./config/schema.ts";
import { createServices } from "./create-services.ts";
import type { FsFreeze, Holdable } from "./fsfreeze/fsfreeze.ts";
import { openAuditFile, teeAudit } from "./log/audit.ts";
import { openSyslogAudit } from "./log/syslog.ts";
import { eventLogWriter, openEventLogAudit } from "./log/eventlog.ts";
import type { Logger } from "./log/logger.ts";
import { Dispatcher } from "./protocol/dispatcher.ts";
import { RpcSession } from "./protocol/session.ts";
import { QgaDispatcher } from "./qga/dispatcher.ts";
import { QgaSession } from "./qga/session.ts";
import { isQgaCommand } from "./qga/schema.ts";
import { QgaFiles } from "./qga/files.ts";
import { WindowsPathPolicy } from "./files/windows.ts";
import { PathPolicy } from "./files/paths.ts";
import { loadHmacKey, RequestAuthenticator } from "./security/hmac.ts";
import { StdioTransport } from "./transport/stdio.ts";
import type { Transport } from "./transport/transport.ts";
import { UnixListenTransport } from "./transport/unix-listen.ts";
import { IsaSerialTransport } from "./transport/isa-serial/isa-serial.ts";
import { VirtioSerialTransport } from "./transport/virtio-serial/virtio-serial.ts";
import { VsockListenTransport } from "./transport/vsock/vsock-listen.ts";
import { AGENT_VERSION } from "./version.ts";

export interface RunningAgent {
  stop(reason: string): Promise<void>;
  /** Frozen filesystems keep the agent from stopping and from writing its pidfile. */
  fsfreeze: FsFreeze;
}

/** `logLines`: the logger's writer, held with the audit while filesystems are frozen. */
export async function startAgent(config: AgentConfig, logger: Logger, logLines?: Holdable): Promise<RunningAgent> {
  const { hmac_key_file: keyFile, hmac_window_seconds: windowSeconds } = config.security;
  const authenticator = keyFile ? new RequestAuthenticator(loadHmacKey(keyFile), windowSeconds * 1000) : undefined;
  const { audit_file: auditFile, audit_syslog: auditSyslog, syslog_socket: syslogSocket, audit_eventlog: auditEventLog } = config.logging;
  const eventLog = auditEventLog && process.platform === "win32";
  const audit = teeAudit([
    ...(auditFile ? [openAuditFile(auditFile)] : []),
    ...(auditSyslog ? [openSyslogAudit(syslogSocket)] : []),
    ...(eventLog ? [openEventLogAudit(eventLogWriter)] : []),
  ]);
  const services = createServices(config, logger, audit);
  const { fsfreeze } = services;
  if (logLines) fsfreeze.addHoldable(logLines);
  fsfreeze.addHoldable(audit);
  if (fsfreeze.status === "frozen") {
    logger.warn("a previous instance exited with filesystems frozen: writes are held and only frozen-safe calls served until a thaw", {
      state_file: fsfreeze.stateFilePath,
    });
  }
  const dispatcher = new Dispatcher({ config, audit, logger, services, authenticator });
  let stopping: Promise<void> | null = null;
  const stop = (reason: string) =>
    (stopping ??= (async () => {
      const { calls } = services;
      const graceSeconds = config.limits.stop_grace_seconds;
      logger.info("stopping", { reason, calls_running: calls.active });
      // Calls already running finish and answer (new ones are refused), up to the grace period.
      calls.stopping = true;
      if (!(await calls.drained(graceSeconds * 1000))) {
        logger.warn("stopping with calls still running: the grace period is over", { calls_running: calls.active, grace_seconds: graceSeconds });
      }
      // The last call ended in the dispatcher; its session writes the reply in a later microtask: let it.
      await new Promise((resolve) => setImmediate(resolve));
      await transport?.close();
      await qgaTransport?.close();
      services.exec.killAll();
      services.files.close();
      qgaFiles?.closeAll();
      await audit.close();
    })());
  let transport: Transport | null = null;
  if (config.transport.enabled) {
    transport = createTransport(config.transport, logger, () => void stop("stdin closed").then(() => process.exit(0)));
    await transport.start((connection) => {
      logger.debug("host connected", { transport: connection.transport });
      return new RpcSession(connection, dispatcher, config.limits, logger);
    });
  }
  // The QEMU guest agent protocol, on its own port, for libvirt and friends.
  let qgaTransport: Transport | null = null;
  let qgaFiles: QgaFiles | null = null;
  if (config.qga.enabled) {
    const policy = process.platform === "win32" ? new WindowsPathPolicy(config.security.allowed_file_paths, undefined, logger) : new PathPolicy(config.security.allowed_file_paths, logger);
    qgaFiles = new QgaFiles(policy, config.qga.state_dir, config.limits.qga_max_open_files);
    const qgaDispatcher = new QgaDispatcher({
      audit,
      logger,
      users: services.users,
      exec: services.exec,
      execEnabled: config.security.enable_exec,
      execRecordsMax: config.limits.exec_records_max,
      files: qgaFiles,
      filesEnabled: config.security.enable_file_copy,
      systemChangesEnabled: config.security.enable_system_changes,
      credentialsEnabled: config.security.enable_credentials,
      power: services.power,
      fsfreeze,
      calls: services.calls,
      blockRpcs: config.qga.block_rpcs,
      allowRpcs: config.qga.allow_rpcs,
    });
    for (const name of [...config.qga.block_rpcs, ...config.qga.allow_rpcs]) {
      if (!isQgaCommand(name)) logger.warn("QGA command in block_rpcs/allow_rpcs is not served by this agent", { command: name });
    }
    qgaTransport = createTransport(config.qga, logger, () => {});
    await qgaTransport.start((connection) => {
      logger.debug("QGA host connected", { transport: connection.transport });
      return new QgaSession(connection, qgaDispatcher);
    });
  }
  logger.info("agent started", {
    version: AGENT_VERSION,
    transport: transport?.name ?? "off",
    qga: qgaTransport ? `${config.qga.type} ${config.qga.type === "vsock-listen" ? config.qga.vsock_port : config.qga.path}` : "off",
    audit: [auditFile, auditSyslog ? `syslog ${syslogSocket}` : "", eventLog ? "Event Log" : ""].filter(Boolean).join(", ") || "off",
  });
  return { stop, fsfreeze };
}

function createTransport(
  { type, path, vsock_port }: { type: AgentConfig["transport"]["type"]; path: string; vsock_port: number },
  logger: Logger,
  onStdinEnd: () => void,
): Transport {
  switch (type) {
    case "virtio-serial":
      return new VirtioSerialTransport(path, logger);
    case "isa-serial":
      return new IsaSerialTransport(path, logger);
    case "unix-listen":
      return new UnixListenTransport(path, logger);
    case "vsock-listen":
      return new VsockListenTransport(vsock_port, logger);
    case "stdio":
      return new StdioTransport(logger, onStdinEnd);
  }
}
