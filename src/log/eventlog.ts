/**
 * The audit trail to the Windows Event Log as well (Application log, source
 * "kvm-manager-agent"): one event per audit record, its text the same JSON as
 * the audit file's line. ReportEventW is an RPC to the Event Log service, so
 * it runs on a Worker thread of its own and never blocks a call: past
 * MAX_QUEUED events not yet written, events are counted and dropped, and the
 * count is reported once the log keeps up again.
 */
import type { Holdable } from "../fsfreeze/fsfreeze.ts";
import { auditLine, type AuditEvent, type AuditLog, type AuditRecord } from "./audit.ts";
import { HeldLines, MAX_HELD_LINES } from "./held-lines.ts";

export const EVENT_SOURCE = "kvm-manager-agent";
export const EVENT_TYPE = { warning: 2, information: 4 } as const;
/** Event ids: a call's record, an event a call set in motion, a count of events dropped. */
export const EVENT_ID = { call: 1, event: 2, dropped: 3 } as const;
export const MAX_QUEUED = 10_000;

export interface EventLogEntry {
  type: (typeof EVENT_TYPE)[keyof typeof EVENT_TYPE];
  id: (typeof EVENT_ID)[keyof typeof EVENT_ID];
  text: string;
}

/** Writes events without blocking; `done` is called once per entry written (or failed), from the writer's side. */
export interface EventLogWriter {
  write(entry: EventLogEntry): void;
  close(): Promise<void>;
}

/** Audit records and events as Event Log events through `open(onDone)`, the writer (injected in tests). */
export function openEventLogAudit(open: (onDone: () => void) => EventLogWriter): AuditLog & Holdable {
  let queued = 0;
  let dropped = 0;
  const writer = open(() => {
    queued--;
    if (dropped > 0 && queued < MAX_QUEUED) {
      const count = dropped;
      dropped = 0;
      deliver({ type: EVENT_TYPE.warning, id: EVENT_ID.dropped, text: JSON.stringify({ event: "audit_events_dropped", count }) });
    }
  });
  const deliver = (entry: EventLogEntry) => {
    if (queued >= MAX_QUEUED) {
      dropped++;
      return;
    }
    queued++;
    writer.write(entry);
  };
  // Entries travel as JSON lines while held; the Event Log is not on a frozen filesystem, but the records keep their order with the file's.
  const lines = new HeldLines(
    (line) => deliver(JSON.parse(line) as EventLogEntry),
    (count) => JSON.stringify({ type: EVENT_TYPE.warning, id: EVENT_ID.dropped, text: JSON.stringify({ event: "audit_events_dropped", count, reason: `more than ${MAX_HELD_LINES} while filesystems were frozen` }) }),
  );
  const put = (entry: EventLogEntry) => (lines.holding ? lines.write(JSON.stringify(entry)) : deliver(entry));
  return {
    record(entry: AuditRecord) {
      put({ type: entry.outcome === "ok" ? EVENT_TYPE.information : EVENT_TYPE.warning, id: EVENT_ID.call, text: auditLine(entry).trimEnd() });
    },
    event(name: string, fields: AuditEvent) {
      put({ type: EVENT_TYPE.information, id: EVENT_ID.event, text: JSON.stringify({ event: name, ...fields }) });
    },
    close: () => writer.close(),
    hold: () => lines.hold(),
    release: () => lines.release(),
  };
}

/** RegisterEventSourceW/ReportEventW on a Worker thread; made from source text, as a compiled executable has no worker file. */
const EVENT_LOG_WORKER = `
import { dlopen, FFIType, ptr } from "bun:ffi";
const api = dlopen("advapi32.dll", {
  RegisterEventSourceW: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.ptr },
  ReportEventW: { args: [FFIType.ptr, FFIType.u16, FFIType.u16, FFIType.u32, FFIType.ptr, FFIType.u16, FFIType.u32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  DeregisterEventSource: { args: [FFIType.ptr], returns: FFIType.i32 },
}).symbols;
let source = null;
self.onmessage = (event) => {
  const message = event.data;
  if (message.source !== undefined) {
    source = api.RegisterEventSourceW(null, Buffer.from(message.source + "\\0", "utf16le"));
    return;
  }
  if (message.close) {
    if (source) api.DeregisterEventSource(source);
    postMessage({ closed: true });
    return;
  }
  if (source) {
    const text = Buffer.from(message.text + "\\0", "utf16le");
    const strings = new BigUint64Array([BigInt(ptr(text))]);
    api.ReportEventW(source, message.type, 0, message.id, null, 1, 0, ptr(strings), null);
  }
  postMessage({ done: true });
};
`;

const CLOSE_WAIT_MS = 2_000;

/** The real Event Log (Windows only). */
export function eventLogWriter(onDone: () => void, source = EVENT_SOURCE): EventLogWriter {
  const worker = new Worker(URL.createObjectURL(new Blob([EVENT_LOG_WORKER], { type: "application/javascript" })));
  worker.unref();
  let closed: (() => void) | null = null;
  worker.onmessage = (event: MessageEvent<{ done?: true; closed?: true }>) => {
    if (event.data.done) onDone();
    else if (event.data.closed) closed?.();
  };
  worker.postMessage({ source });
  return {
    write: (entry) => worker.postMessage(entry),
    async close() {
      // Events already queued are written first (the worker takes messages in order), within a bound.
      await new Promise<void>((resolve) => {
        closed = resolve;
        worker.postMessage({ close: true });
        setTimeout(resolve, CLOSE_WAIT_MS).unref();
      });
      void worker.terminate();
    },
  };
}
