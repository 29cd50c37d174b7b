/**
 * The audit to the Windows Event Log, with the writer injected: one event per
 * record, the audit file's JSON as its text, and a bounded queue that drops
 * and counts rather than block. The real ReportEventW runs under Wine in
 * test/e2e/wine-service.test.ts.
 */
import { expect, test } from "bun:test";
import { auditLine, type AuditRecord } from "../src/log/audit.ts";
import { EVENT_ID, EVENT_TYPE, MAX_QUEUED, openEventLogAudit, type EventLogEntry } from "../src/log/eventlog.ts";

function fakeWriter() {
  const written: EventLogEntry[] = [];
  let done!: () => void;
  let closed = 0;
  const open = (onDone: () => void) => {
    done = onDone;
    return { write: (entry: EventLogEntry) => void written.push(entry), close: async () => void closed++ };
  };
  return { open, written, done: () => done(), closed: () => closed };
}

const record = (outcome: AuditRecord["outcome"], id: number): AuditRecord => ({ method: "exec", id, transport: "virtio-serial", outcome, code: outcome === "error" ? -32001 : undefined, duration_ms: 3 });

test("each record is one event: information for ok, warning for errors, the audit line's JSON as its text", () => {
  const fake = fakeWriter();
  const audit = openEventLogAudit(fake.open);
  audit.record(record("ok", 1));
  audit.record(record("error", 2));
  audit.event("shutdown_started", { tool: "shutdown.exe" });
  expect(fake.written.map(({ type, id }) => [type, id])).toEqual([
    [EVENT_TYPE.information, EVENT_ID.call],
    [EVENT_TYPE.warning, EVENT_ID.call],
    [EVENT_TYPE.information, EVENT_ID.event],
  ]);
  const first = JSON.parse(fake.written[0]!.text);
  expect(fake.written[0]!.text).toBe(auditLine(record("ok", 1)).trimEnd().replace(/"ts":"[^"]+"/, `"ts":"${first.ts}"`));
  expect(first).toMatchObject({ method: "exec", id: 1, transport: "virtio-serial", outcome: "ok", duration_ms: 3 });
  expect(JSON.parse(fake.written[1]!.text)).toMatchObject({ outcome: "error", code: -32001 });
  expect(JSON.parse(fake.written[2]!.text)).toEqual({ event: "shutdown_started", tool: "shutdown.exe" });
});

test("never blocks: past MAX_QUEUED unwritten events it drops and counts, and reports the count once the log catches up", () => {
  const fake = fakeWriter();
  const audit = openEventLogAudit(fake.open);
  for (let i = 0; i < MAX_QUEUED + 5; i++) audit.record(record("ok", i));
  expect(fake.written.length).toBe(MAX_QUEUED);
  fake.done(); // one written: room for the notice
  expect(fake.written.length).toBe(MAX_QUEUED + 1);
  const notice = fake.written.at(-1)!;
  expect({ type: notice.type, id: notice.id, text: JSON.parse(notice.text) }).toEqual({
    type: EVENT_TYPE.warning,
    id: EVENT_ID.dropped,
    text: { event: "audit_events_dropped", count: 5 },
  });
  audit.record(record("ok", -1));
  expect(fake.written.length).toBe(MAX_QUEUED + 1); // full again until the next one is written
});

test("held while filesystems are frozen, in order, and written on release; close closes the writer", async () => {
  const fake = fakeWriter();
  const audit = openEventLogAudit(fake.open);
  await audit.hold();
  audit.record(record("ok", 1));
  audit.event("thaw_pending", {});
  expect(fake.written).toEqual([]);
  audit.release();
  expect(fake.written.map((entry) => entry.id)).toEqual([EVENT_ID.call, EVENT_ID.event]);
  await audit.close();
  expect(fake.closed()).toBe(1);
});
