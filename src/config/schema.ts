/**
 * config.toml: parsed with smol-toml, validated here. Every key has a safe
 * default, so a missing file means a locked-down agent on the default port.
 */
import { z } from "zod";
import { DEFAULT_MAX_FRAME_BYTES, MAX_FRAME_BYTES_LIMIT } from "../protocol/framing.ts";

export const TRANSPORT_TYPES = ["virtio-serial", "isa-serial", "unix-listen", "vsock-listen", "stdio"] as const;
export type TransportType = (typeof TRANSPORT_TYPES)[number];

export const DEFAULT_VIRTIO_PORT = process.platform === "win32"
  ? "\\\\.\\Global\\org.kvmmanager.agent.0"
  : "/dev/virtio-ports/org.kvmmanager.agent.0";

export const DEFAULT_QGA_PORT = process.platform === "win32"
  ? "\\\\.\\Global\\org.qemu.guest_agent.0"
  : "/dev/virtio-ports/org.qemu.guest_agent.0";

export const DEFAULT_QGA_VSOCK_PORT = 9101;

const DEFAULT_STATE_DIR = process.platform === "win32"
  ? `${process.env.ProgramData ?? "C:\\ProgramData"}\\kvm-manager-agent\\state`
  : "/var/lib/kvm-manager-agent";

export const DEFAULT_CONFIG_PATH = process.platform === "win32"
  ? `${process.env.ProgramData ?? "C:\\ProgramData"}\\kvm-manager-agent\\config.toml`
  : "/etc/kvm-manager-agent/config.toml";

const DEFAULT_AUDIT_FILE = process.platform === "win32"
  ? `${process.env.ProgramData ?? "C:\\ProgramData"}\\kvm-manager-agent\\audit.jsonl`
  : "/var/log/kvm-manager-agent/audit.jsonl";

export const DEFAULT_VSOCK_PORT = 9100;

const qgaCommandName = z.string().regex(/^guest-[a-z0-9-]+$/, "must be a QGA command name like \"guest-exec\"");

/** The default path of a port is a virtio-serial port: a serial line must be named. */
const serialLineNamed = (defaultPath: string) => (port: { type: string; path: string }) => port.type !== "isa-serial" || port.path !== defaultPath;
const SERIAL_LINE_UNNAMED = { message: 'type "isa-serial" needs path = the serial device, e.g. "/dev/ttyS1"', path: ["path"] };

/** Windows: one directory of the agent's own (there is no world-writable /tmp to share). */
const DEFAULT_WINDOWS_FILES_DIR = `${process.env.ProgramData ?? "C:\\ProgramData"}\\kvm-manager-agent\\files`;

const absolutePath = z.string().min(1).refine((p) => /^(\/|[A-Za-z]:\\)/.test(p), "must be an absolute path");

export const configSchema = z.strictObject({
  transport: z
    .strictObject({
      enabled: z.boolean().default(true).describe("Serve the native protocol (the QGA port has its own switch in [qga])"),
      type: z.enum(TRANSPORT_TYPES).default("virtio-serial"),
      path: z.string().min(1).default(DEFAULT_VIRTIO_PORT).describe("Device path (virtio-serial, isa-serial) or socket path (unix-listen)"),
      vsock_port: z.number().int().min(1).max(0xffffffff).default(DEFAULT_VSOCK_PORT),
    })
    .refine(serialLineNamed(DEFAULT_VIRTIO_PORT), SERIAL_LINE_UNNAMED)
    .prefault({}),
  qga: z
    .strictObject({
      enabled: z.boolean().default(true).describe("Also serve the QEMU guest agent protocol, for libvirt, Proxmox, OpenStack and KubeVirt"),
      type: z.enum(["virtio-serial", "isa-serial", "unix-listen", "vsock-listen"]).default("virtio-serial"),
      path: z.string().min(1).default(DEFAULT_QGA_PORT),
      vsock_port: z.number().int().min(1).max(0xffffffff).default(DEFAULT_QGA_VSOCK_PORT),
      state_dir: z.string().min(1).default(DEFAULT_STATE_DIR).describe("Where state that must survive a restart is kept: the QGA file handle counter, and the mark that filesystems are frozen (both protocols)"),
      block_rpcs: z.array(qgaCommandName).default([]).describe("QGA commands to switch off, as qemu-ga's --block-rpcs"),
      allow_rpcs: z.array(qgaCommandName).default([]).describe("When not empty, the only QGA commands left on, as qemu-ga's --allow-rpcs"),
    })
    .refine(serialLineNamed(DEFAULT_QGA_PORT), SERIAL_LINE_UNNAMED)
    .refine((qga) => qga.block_rpcs.length === 0 || qga.allow_rpcs.length === 0, {
      message: "block_rpcs and allow_rpcs cannot both be set",
      path: ["allow_rpcs"],
    })
    .prefault({}),
  fsfreeze: z
    .strictObject({
      hook: z.union([z.literal(""), absolutePath]).default("").describe("Script run with 'freeze' before filesystems are frozen and 'thaw' after they are thawed (qemu-ga's --fsfreeze-hook); empty: none"),
    })
    .prefault({}),
  security: z
    .strictObject({
      enable_exec: z.boolean().default(false),
      allowed_commands: z.array(z.string().min(1)).default([]),
      enable_file_copy: z.boolean().default(true),
      allowed_file_paths: z.array(absolutePath).default(process.platform === "win32" ? [DEFAULT_WINDOWS_FILES_DIR] : ["/tmp", "/var/tmp"]),
      enable_system_changes: z
        .boolean()
        .default(true)
        .describe("set_time, set_vcpus, set_memory_blocks, fstrim, suspend and their QGA commands (qemu-ga serves them by default)"),
      enable_credentials: z
        .boolean()
        .default(true)
        .describe("set_user_password, ssh_add/remove_authorized_keys and their QGA commands (qemu-ga serves them by default)"),
      hmac_key_file: z
        .union([z.literal(""), absolutePath])
        .default("")
        .describe("When set, every native request must be signed with this key (docs/protocol.md); root's, mode 0600. The QGA port cannot be signed"),
      hmac_window_seconds: z.number().int().min(1).max(86_400).default(120).describe("How far a signed request's timestamp may be from the agent's clock"),
    })
    .prefault({}),
  limits: z
    .strictObject({
      max_frame_bytes: z.number().int().min(1024).max(MAX_FRAME_BYTES_LIMIT).default(DEFAULT_MAX_FRAME_BYTES).describe("Up to 1 GiB: a header never starts with 0xFF, which keeps the resync marker unambiguous"),
      max_in_flight: z.number().int().min(1).max(4096).default(64),
      max_in_flight_bytes: z
        .number()
        .int()
        .min(1024)
        .default(128 * 1024 * 1024)
        .describe("Frame bytes of one connection's running calls; past it the agent stops reading until calls finish (one call always runs)"),
      max_batch_requests: z.number().int().min(1).max(100_000).default(1024),
      exec_timeout_ms: z.number().int().min(1).max(86_400_000).default(30_000),
      exec_max_output_bytes: z.number().int().min(0).default(16 * 1024 * 1024),
      exec_max_concurrent: z.number().int().min(1).max(1024).default(16),
      exec_records_max: z.number().int().min(1).max(100_000).default(256),
      exec_records_ttl_seconds: z.number().int().min(1).default(600),
      copy_chunk_bytes: z.number().int().min(4096).default(8 * 1024 * 1024),
      upload_max_bytes: z.number().int().min(1).default(4 * 1024 * 1024 * 1024),
      upload_max_open: z.number().int().min(1).max(1024).default(16),
      upload_staging_max_bytes: z.number().int().min(1).default(8 * 1024 * 1024 * 1024).describe("Bytes all open uploads may hold together in temp files"),
      upload_idle_timeout_seconds: z.number().int().min(1).default(300),
      qga_max_open_files: z.number().int().min(1).max(65_536).default(128),
      stop_grace_seconds: z.number().int().min(0).max(3_600).default(10).describe("On SIGTERM, how long calls already running may take to finish before the agent stops anyway"),
    })
    .prefault({}),
  logging: z
    .strictObject({
      level: z.enum(["debug", "info", "warn", "error"]).default("info"),
      format: z.enum(["json", "text"]).default("json"),
      audit_file: z.string().default(DEFAULT_AUDIT_FILE).describe("JSON-lines audit log; empty string turns the file off"),
      audit_syslog: z.boolean().default(false).describe("Also send each audit record to the system log (RFC 5424, facility authpriv)"),
      syslog_socket: absolutePath.default("/dev/log").describe("The system log's unix datagram socket"),
      audit_eventlog: z
        .boolean()
        .default(process.platform === "win32")
        .describe("Windows: also write each audit record to the Event Log (Application, source kvm-manager-agent); on by default there"),
    })
    .prefault({}),
});

export type AgentConfig = z.output<typeof configSchema>;

/** An agent that serves nothing is a config mistake, not a choice. */
export const servesSomething = (config: AgentConfig) => config.transport.enabled || config.qga.enabled;

export function defaultConfig(): AgentConfig {
  return configSchema.parse({});
}
