/**
 * The audit trail to the system log as well: RFC 5424 messages on /dev/log
 * (a unix datagram socket, made through bun:ffi since Bun has no unix
 * datagrams), facility authpriv, each message the same JSON as the audit
 * file's line. Sends never block: a syslog daemon that cannot keep up, or is
 * not there, costs dropped messages (counted, and said once it is back), never
 * a stalled agent.
 */
import { hostname } from "node:os";
import { constants } from "node:os";
import { errno, libc } from "../platform/linux/libc.ts";
import { AF_UNIX, sockaddrUn } from "../transport/vsock/ffi.ts";
import type { Holdable } from "../fsfreeze/fsfreeze.ts";
import { auditLine, type AuditEvent, type AuditLog, type AuditRecord } from "./audit.ts";
import { HeldLines, MAX_HELD_LINES } from "./held-lines.ts";

const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const SOCK_NONBLOCK = 0o4000;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
/** authpriv (10): security and authorisation messages. */
const FACILITY = 10;
const SEVERITY = { info: 6, notice: 5 } as const;
const APP_NAME = "kvm-manager-agent";

/** One RFC 5424 message: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG. */
export function syslogMessage(severity: keyof typeof SEVERITY, msgid: string, json: string, host = hostname(), now = new Date()): string {
  return `<${FACILITY * 8 + SEVERITY[severity]}>1 ${now.toISOString()} ${host || "-"} ${APP_NAME} ${process.pid} ${msgid} - ${json}`;
}

class DatagramSocket {
  private fd = -1;
  private readonly address: Uint8Array;

  constructor(path: string) {
    this.address = sockaddrUn(path);
  }

  /** True when the message went out; false when it was dropped (no daemon, or its queue is full). */
  send(message: Uint8Array): boolean {
    if (this.fd < 0 && !this.connect()) return false;
    if (Number(libc().send(this.fd, message, message.length, MSG_DONTWAIT | MSG_NOSIGNAL)) >= 0) return true;
    const code = errno();
    // The daemon restarted (its socket is new): reconnect once and try again.
    if (code === constants.errno.ECONNREFUSED || code === constants.errno.ENOTCONN) {
      this.close();
      return this.connect() && Number(libc().send(this.fd, message, message.length, MSG_DONTWAIT | MSG_NOSIGNAL)) >= 0;
    }
    return false;
  }

  private connect(): boolean {
    const lib = libc();
    const fd = lib.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return false;
    if (lib.connect(fd, this.address, this.address.length) !== 0) {
      lib.close(fd);
      return false;
    }
    this.fd = fd;
    return true;
  }

  close(): void {
    if (this.fd >= 0) libc().close(this.fd);
    this.fd = -1;
  }
}

/** Audit records and events as syslog messages on `socketPath` (/dev/log). */
export function openSyslogAudit(socketPath: string): AuditLog & Holdable {
  const socket = new DatagramSocket(socketPath);
  const encoder = new TextEncoder();
  let dropped = 0;
  const deliver = (message: string) => {
    if (!socket.send(encoder.encode(message))) {
      dropped++;
      return;
    }
    if (dropped > 0) {
      const count = dropped;
      dropped = 0;
      deliver(syslogMessage("notice", "dropped", JSON.stringify({ event: "audit_messages_dropped", count })));
    }
  };
  const lines = new HeldLines(deliver, (count) =>
    syslogMessage("notice", "dropped", JSON.stringify({ event: "audit_messages_dropped", count, reason: `more than ${MAX_HELD_LINES} while filesystems were frozen` })),
  );
  return {
    record(entry: AuditRecord) {
      lines.write(syslogMessage(entry.outcome === "ok" ? "info" : "notice", "call", auditLine(entry).trimEnd()));
    },
    event(name: string, fields: AuditEvent) {
      lines.write(syslogMessage("notice", "event", JSON.stringify({ event: name, ...fields })));
    },
    async close() {
      socket.close();
    },
    hold: () => lines.hold(),
    release: () => lines.release(),
  };
}
