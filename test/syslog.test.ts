/** The audit trail to syslog: RFC 5424 datagrams on a unix socket, read back here from a socket bound like /dev/log. */
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { libc } from "../src/platform/linux/libc.ts";
import { openSyslogAudit, syslogMessage } from "../src/log/syslog.ts";
import { AF_UNIX, sockaddrUn } from "../src/transport/vsock/ffi.ts";
import { connectClient, eventually, makeTempDir, startAgentProcess } from "./helpers/agent-process.ts";

const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const dir = makeTempDir("kma-syslog-");
const bound: number[] = [];

afterAll(() => bound.forEach((fd) => libc().close(fd)));

/** What a syslog daemon does: bind a datagram socket at `path`. */
function fakeDevLog(path: string): { received(): string[] } {
  const fd = libc().socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  const address = sockaddrUn(path);
  expect(libc().bind(fd, address, address.length)).toBe(0);
  bound.push(fd);
  return {
    received() {
      const out: string[] = [];
      const buffer = new Uint8Array(65536);
      for (;;) {
        const n = Number(libc().recv(fd, buffer, buffer.length, 0));
        if (n < 0) return out;
        out.push(new TextDecoder().decode(buffer.subarray(0, n)));
      }
    },
  };
}

const RFC5424 = /^<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) kvm-manager-agent (\d+) (\S+) - (\{.*\})$/;

test("each record is one RFC 5424 message: authpriv, info for ok and notice for errors, the audit line as its text", () => {
  const path = join(dir, "log1");
  const daemon = fakeDevLog(path);
  const audit = openSyslogAudit(path);
  audit.record({ method: "ping", id: 1, transport: "unix-listen", outcome: "ok", duration_ms: 0.1 });
  audit.record({ method: "exec", id: "x", transport: "virtio-serial", outcome: "error", code: -32001, duration_ms: 2 });
  audit.event("power", { action: "reboot", tool: "/usr/bin/systemctl" });
  const messages = daemon.received().map((message) => RFC5424.exec(message));
  expect(messages.map((m) => [m?.[1], m?.[4], m?.[5]])).toEqual([
    ["86", String(process.pid), "call"],
    ["85", String(process.pid), "call"],
    ["85", String(process.pid), "event"],
  ]);
  expect(JSON.parse(messages[0]![6]!)).toMatchObject({ method: "ping", id: 1, transport: "unix-listen", outcome: "ok", duration_ms: 0.1 });
  expect(JSON.parse(messages[1]![6]!)).toMatchObject({ method: "exec", outcome: "error", code: -32001 });
  expect(JSON.parse(messages[2]![6]!)).toEqual({ event: "power", action: "reboot", tool: "/usr/bin/systemctl" });
});

test("no daemon: nothing blocks or throws; once one listens, the next message says how many were dropped", () => {
  const path = join(dir, "log2");
  const audit = openSyslogAudit(path);
  for (let i = 0; i < 3; i++) audit.record({ method: "ping", id: i, transport: "t", outcome: "ok", duration_ms: 0 });
  const daemon = fakeDevLog(path);
  audit.record({ method: "get_info", id: 9, transport: "t", outcome: "ok", duration_ms: 0 });
  const texts = daemon.received().map((message) => JSON.parse(RFC5424.exec(message)![6]!));
  expect(texts).toEqual([expect.objectContaining({ method: "get_info" }), { event: "audit_messages_dropped", count: 3 }]);
});

test("held while filesystems are frozen, sent in order on the thaw", async () => {
  const path = join(dir, "log3");
  const daemon = fakeDevLog(path);
  const audit = openSyslogAudit(path);
  await audit.hold();
  audit.record({ method: "fsfreeze_status", id: 1, transport: "t", outcome: "ok", duration_ms: 0 });
  expect(daemon.received()).toEqual([]);
  audit.release();
  expect(daemon.received().map((message) => JSON.parse(RFC5424.exec(message)![6]!).method)).toEqual(["fsfreeze_status"]);
});

test("the message format, with a fixed clock and host", () => {
  expect(syslogMessage("info", "call", '{"a":1}', "guest1", new Date(Date.UTC(2026, 10, 21, 8, 0, 0, 5)))).toBe(
    `<86>1 2026-11-21T08:00:00.005Z guest1 kvm-manager-agent ${process.pid} call - {"a":1}`,
  );
});

test("the compiled agent with audit_syslog sends each call to the socket, beside its audit file", async () => {
  const path = join(dir, "agent-log");
  const daemon = fakeDevLog(path);
  const agent = await startAgentProcess({ loggingToml: `audit_syslog = true\nsyslog_socket = ${JSON.stringify(path)}` });
  try {
    const client = await connectClient(agent);
    await client.ping({ payload: "to syslog" });
    client.close();
    const texts = await eventually(() => {
      const got = daemon.received().map((message) => JSON.parse(RFC5424.exec(message)![6]!));
      return got.length > 0 ? got : undefined;
    });
    expect(texts.map((text) => text.method)).toContain("ping");
    expect(agent.stderr()).toContain(`syslog ${path}`);
  } finally {
    await agent.stop();
  }
});
