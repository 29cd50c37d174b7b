/**
 * One zod schema per method, for params and result: the single source of truth.
 * The dispatcher validates with it, the host client is typed from it and
 * docs/protocol.md is generated from it (test/protocol-doc.test.ts fails on drift).
 */
import { z } from "zod";
import { EXEC_METHODS, EXEC_NOTIFICATIONS } from "./exec.ts";
import { FILE_METHODS } from "./files.ts";
import { FSFREEZE_METHODS } from "./fsfreeze.ts";
import { GUEST_METHODS } from "./guest.ts";
import { SYSTEM_METHODS } from "./system.ts";

/** Bumped when a method changes shape incompatibly; new methods show up in get_info instead. */
export const PROTOCOL_VERSION = 1;


const ipAddress = z.strictObject({
  interface: z.string().describe("Interface name, e.g. eth0"),
  address: z.string().describe("The address without prefix length"),
  family: z.enum(["ipv4", "ipv6"]),
  prefix: z.number().int().min(0).max(128).describe("Prefix length (CIDR)"),
});

const CORE_METHODS = {
  ping: {
    summary: "Liveness check. Echoes the optional payload back unchanged.",
    params: z.strictObject({
      payload: z.unknown().optional().describe("Any JSON value; returned as is"),
    }),
    result: z.strictObject({
      pong: z.literal(true),
      payload: z.unknown().optional().describe("The payload of the request, when one was sent"),
    }),
  },
  get_info: {
    summary: "Guest identity, agent and protocol versions, and the methods this agent serves with their enabled flag.",
    params: z.strictObject({}),
    result: z.strictObject({
      os_type: z.enum(["linux", "windows"]),
      os_id: z.string().describe("ID from /etc/os-release (e.g. debian), or 'windows'"),
      os_name: z.string().describe("NAME from /etc/os-release, or the Windows product name"),
      os_version: z.string().describe("VERSION_ID from /etc/os-release, or the Windows version"),
      os_pretty_name: z.string().describe("PRETTY_NAME from /etc/os-release, or the Windows product name and version"),
      kernel_release: z.string().describe("Kernel release (uname -r), or the Windows build"),
      kernel_version: z.string().describe("Kernel version string (uname -v)"),
      arch: z.string().describe("Machine architecture as uname -m prints it (x86_64, aarch64)"),
      hostname: z.string(),
      ip_addresses: z.array(ipAddress).describe("Addresses of every interface but loopback"),
      uptime_seconds: z.number().nonnegative(),
      agent_version: z.string(),
      protocol_version: z.number().int(),
      methods: z
        .array(z.strictObject({ name: z.string(), enabled: z.boolean() }))
        .describe("Every method this agent knows; enabled is false when the config switches it off"),
    }),
  },
} as const;

export const METHODS = { ...CORE_METHODS, ...SYSTEM_METHODS, ...EXEC_METHODS, ...FILE_METHODS, ...GUEST_METHODS, ...FSFREEZE_METHODS };

/** What the agent sends unasked, as JSON-RPC notifications. */
export const NOTIFICATIONS = { ...EXEC_NOTIFICATIONS };
export type NotificationName = keyof typeof NOTIFICATIONS;
export type NotificationParams<N extends NotificationName> = z.output<(typeof NOTIFICATIONS)[N]["params"]>;

export type MethodName = keyof typeof METHODS;
export const METHOD_NAMES = Object.keys(METHODS) as MethodName[];

/** What a caller sends (defaults still optional). */
export type ParamsInput<M extends MethodName> = z.input<(typeof METHODS)[M]["params"]>;
/** What a handler receives after validation. */
export type Params<M extends MethodName> = z.output<(typeof METHODS)[M]["params"]>;
export type Result<M extends MethodName> = z.output<(typeof METHODS)[M]["result"]>;

export function isMethodName(name: string): name is MethodName {
  return Object.hasOwn(METHODS, name);
}

export interface FieldIssue {
  /** Dotted path of the bad field, e.g. "options.size"; "" for the params object itself. */
  path: string;
  message: string;
}

/** One entry per bad field; an unknown key is reported at its own path. */
export function fieldIssues(error: z.ZodError): FieldIssue[] {
  return error.issues.flatMap((issue) =>
    issue.code === "unrecognized_keys"
      ? issue.keys.map((key) => ({ path: [...issue.path, key].join("."), message: "unknown field" }))
      : [{ path: issue.path.join("."), message: issue.message.replace(/^Invalid input: /, "") }],
  );
}

/** "'payload.size': expected number, received string; 'colour': unknown field" */
export function describeIssues(error: z.ZodError): string {
  return fieldIssues(error)
    .map(({ path, message }) => `${path ? `'${path}'` : "params"}: ${message}`)
    .join("; ");
}
