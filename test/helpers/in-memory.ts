import { defaultConfig, type AgentConfig } from "../../src/config/schema.ts";
import type { AuditEvent, AuditLog, AuditRecord } from "../../src/log/audit.ts";
import { silentLogger } from "../../src/log/logger.ts";
import { createServices } from "../../src/create-services.ts";
import { Dispatcher, type DispatcherDeps } from "../../src/protocol/dispatcher.ts";
import { encodeFrame } from "../../src/protocol/framing.ts";
import { RpcSession } from "../../src/protocol/session.ts";
import { PathPolicy } from "../../src/files/paths.ts";
import { QgaDispatcher, type QgaDispatcherDeps } from "../../src/qga/dispatcher.ts";
import { QgaFiles } from "../../src/qga/files.ts";
import { makeTempDir } from "./agent-process.ts";
import { FakeConnection } from "./fake-connection.ts";

export class MemoryAudit implements AuditLog {
  readonly records: AuditRecord[] = [];
  readonly events: ({ event: string } & AuditEvent)[] = [];
  record(entry: AuditRecord): void {
    this.records.push(entry);
  }
  event(name: string, fields: AuditEvent): void {
    this.events.push({ event: name, ...fields });
  }
  async close(): Promise<void> {}
}

/** A session over a fake connection with the real dispatcher. */
export function memorySession(limits: Partial<AgentConfig["limits"]> = {}, deps: Partial<DispatcherDeps> = {}) {
  const config = defaultConfig();
  config.limits = { ...config.limits, ...limits };
  const audit = new MemoryAudit();
  const dispatcher = new Dispatcher({ config, audit, logger: silentLogger, services: createServices(config, silentLogger, audit), ...deps });
  const connection = new FakeConnection();
  const session = new RpcSession(connection, dispatcher, config.limits);
  const sendJson = (value: unknown) => session.onData(encodeFrame(JSON.stringify(value)));
  const sendText = (text: string) => session.onData(encodeFrame(text));
  return { session, connection, audit, dispatcher, sendJson, sendText, replies: connection.replies };
}

/**
 * A QGA dispatcher over the real services of `config` (default: the defaults with a scratch state
 * dir), with exec, file and guest-changing commands on; `deps` replace any of its dependencies.
 */
export function qgaDispatcher(config?: AgentConfig, deps: Partial<QgaDispatcherDeps> = {}): QgaDispatcher {
  if (!config) {
    config = defaultConfig();
    config.qga.state_dir = makeTempDir("kma-qga-state-");
  }
  const audit = new MemoryAudit();
  const services = createServices(config, silentLogger, audit);
  return new QgaDispatcher({
    audit,
    logger: silentLogger,
    users: services.users,
    exec: services.exec,
    execEnabled: true,
    execRecordsMax: 8,
    files: new QgaFiles(new PathPolicy(["/tmp"]), config.qga.state_dir, 4),
    filesEnabled: true,
    systemChangesEnabled: true,
    credentialsEnabled: true,
    power: services.power,
    fsfreeze: services.fsfreeze,
    calls: services.calls,
    blockRpcs: [],
    allowRpcs: [],
    ...deps,
  });
}

