/**
 * Audit trail: one JSON line per call — when, which connection, which method
 * and id, the outcome and how long it took. Params and results are never
 * written: they may hold file contents or secrets.
 */
import { mkdirSync, openSync } from "node:fs";
import { dirname } from "node:path";
import type { FileSink } from "bun";
import type { Holdable } from "../fsfreeze/fsfreeze.ts";
import { HeldLines, MAX_HELD_LINES } from "./held-lines.ts";

export interface AuditRecord {
  method: string;
  id: string | number | null | undefined;
  transport: string;
  outcome: "ok" | "error";
  code?: number;
  duration_ms: number;
}

/** Something a call set in motion after its reply, e.g. which tool a shutdown ran. */
export type AuditEvent = Record<string, string | number | boolean | null>;

export interface AuditLog {
  record(entry: AuditRecord): void;
  event(name: string, fields: AuditEvent): void;
  /** Flush buffered lines; called on shutdown. */
  close(): Promise<void>;
}

export const noAudit: AuditLog = { record() {}, event() {}, async close() {} };

const FLUSH_INTERVAL_MS = 200;

/**
 * Append-only JSON-lines file; lines are buffered and flushed every 200 ms.
 * While filesystems are frozen the lines are held in memory and written on the thaw.
 */
export function openAuditFile(path: string): AuditLog & Holdable {
  mkdirSync(dirname(path), { recursive: true, mode: 0o750 });
  // Bun's writer truncates a path it opens itself; an O_APPEND fd keeps old records.
  const sink: FileSink = Bun.file(openSync(path, "a", 0o640)).writer({ highWaterMark: 64 * 1024 });
  let pending = false;
  const eventLine = (name: string, fields: AuditEvent) => `${JSON.stringify({ ts: isoNow(), event: name, ...fields })}\n`;
  const lines = new HeldLines(
    (line) => {
      sink.write(line);
      pending = true;
    },
    (count) => eventLine("audit_records_dropped", { count, reason: `more than ${MAX_HELD_LINES} records while filesystems were frozen` }),
    () => sink.flush(),
  );
  const timer = setInterval(() => {
    if (pending && !lines.holding) {
      pending = false;
      void sink.flush();
    }
  }, FLUSH_INTERVAL_MS);
  timer.unref();
  return {
    record(entry) {
      lines.write(auditLine(entry));
    },
    event(name, fields) {
      lines.write(eventLine(name, fields));
    },
    async close() {
      clearInterval(timer);
      await sink.end();
    },
    hold: () => lines.hold(),
    release: () => lines.release(),
  };
}

/** The audit sinks in use (file, syslog) as one; with none, it records nothing. */
export function teeAudit(sinks: (AuditLog & Holdable)[]): AuditLog & Holdable {
  return {
    record: (entry) => sinks.forEach((sink) => sink.record(entry)),
    event: (name, fields) => sinks.forEach((sink) => sink.event(name, fields)),
    close: async () => void (await Promise.all(sinks.map((sink) => sink.close()))),
    hold: async () => void (await Promise.all(sinks.map((sink) => sink.hold()))),
    release: () => sinks.forEach((sink) => sink.release()),
  };
}

/** Built by hand: this runs on every call, and JSON.stringify of a spread object costs more than the call itself. */
export function auditLine(entry: AuditRecord): string {
  let line = `{"ts":"${isoNow()}","method":${JSON.stringify(entry.method)}`;
  if (entry.id !== undefined) line += `,"id":${JSON.stringify(entry.id)}`;
  line += `,"transport":"${entry.transport}","outcome":"${entry.outcome}"`;
  if (entry.code !== undefined) line += `,"code":${entry.code}`;
  return `${line},"duration_ms":${entry.duration_ms}}\n`;
}

let isoMs = 0;
let isoText = "";

/** toISOString() once per millisecond at most. */
function isoNow(): string {
  const ms = Date.now();
  if (ms !== isoMs) {
    isoMs = ms;
    isoText = new Date(ms).toISOString();
  }
  return isoText;
}
