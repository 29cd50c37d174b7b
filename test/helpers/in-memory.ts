import { defaultConfig, type AgentConfig } from "../../src/config/schema.ts";
import type { AuditLog, AuditRecord } from "../../src/log/audit.ts";
import { silentLogger } from "../../src/log/logger.ts";
import { Dispatcher, type DispatcherDeps } from "../../src/protocol/dispatcher.ts";
import { encodeFrame } from "../../src/protocol/framing.ts";
import { RpcSession } from "../../src/protocol/session.ts";
import { FakeConnection } from "./fake-connection.ts";

export class MemoryAudit implements AuditLog {
  readonly records: AuditRecord[] = [];
  record(entry: AuditRecord): void {
    this.records.push(entry);
  }
  async close(): Promise<void> {}
}

/** A session over a fake connection with the real dispatcher. */
export function memorySession(limits: Partial<AgentConfig["limits"]> = {}, deps: Partial<DispatcherDeps> = {}) {
  const config = defaultConfig();
  config.limits = { ...config.limits, ...limits };
  const audit = new MemoryAudit();
  const dispatcher = new Dispatcher({ config, audit, logger: silentLogger, ...deps });
  const connection = new FakeConnection();
  const session = new RpcSession(connection, dispatcher, config.limits);
  const sendJson = (value: unknown) => session.onData(encodeFrame(JSON.stringify(value)));
  const sendText = (text: string) => session.onData(encodeFrame(text));
  return { session, connection, audit, dispatcher, sendJson, sendText, replies: connection.replies };
}
