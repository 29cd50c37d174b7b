/**
 * QGA commands with qemu-ga's exact argument and return names and types (as
 * qga/qapi-schema.json defines them): the single source the QGA dispatcher
 * validates with and guest-info lists. More commands join as they are built.
 */
import { z } from "zod";

/** qapi "int": a JSON integer. */
const int = z.number().int();

export const QGA_COMMANDS = {
  "guest-sync-delimited": {
    args: z.strictObject({ id: int }),
    returns: int,
    successResponse: true,
  },
  "guest-sync": {
    args: z.strictObject({ id: int }),
    returns: int,
    successResponse: true,
  },
  "guest-ping": {
    args: z.strictObject({}),
    returns: z.strictObject({}),
    successResponse: true,
  },
  "guest-get-host-name": {
    args: z.strictObject({}),
    returns: z.strictObject({ "host-name": z.string() }),
    successResponse: true,
  },
  "guest-get-time": {
    args: z.strictObject({}),
    returns: z.bigint().describe("Nanoseconds since the epoch"),
    successResponse: true,
  },
  "guest-set-time": {
    // Nanoseconds since the epoch are above 2^53: JSON.parse gives a double, and z.int() would refuse it.
    args: z.strictObject({ time: z.number().refine(Number.isInteger, "must be an integer").optional().describe("Nanoseconds since the epoch") }),
    returns: z.strictObject({}),
    successResponse: true,
  },
  "guest-get-timezone": {
    args: z.strictObject({}),
    returns: z.strictObject({ zone: z.string().optional(), offset: int.describe("Seconds east of UTC") }),
    successResponse: true,
  },
  "guest-get-osinfo": {
    args: z.strictObject({}),
    returns: z.strictObject({
      "kernel-release": z.string().optional(),
      "kernel-version": z.string().optional(),
      machine: z.string().optional(),
      id: z.string().optional(),
      name: z.string().optional(),
      "pretty-name": z.string().optional(),
      version: z.string().optional(),
      "version-id": z.string().optional(),
      variant: z.string().optional(),
      "variant-id": z.string().optional(),
    }),
    successResponse: true,
  },
  "guest-get-users": {
    args: z.strictObject({}),
    returns: z.array(z.strictObject({ user: z.string(), "login-time": z.number(), domain: z.string().optional() })),
    successResponse: true,
  },
  "guest-get-vcpus": {
    args: z.strictObject({}),
    returns: z.array(z.strictObject({ "logical-id": int, online: z.boolean(), "can-offline": z.boolean() })),
    successResponse: true,
  },
  "guest-set-vcpus": {
    args: z.strictObject({ vcpus: z.array(z.strictObject({ "logical-id": int, online: z.boolean(), "can-offline": z.boolean().optional() })) }),
    returns: int.describe("How many entries were processed"),
    successResponse: true,
  },
  "guest-get-load": {
    args: z.strictObject({}),
    returns: z.strictObject({ load1: z.number(), load5: z.number(), load15: z.number() }),
    successResponse: true,
  },
  "guest-network-get-interfaces": {
    args: z.strictObject({}),
    returns: z.array(
      z.strictObject({
        name: z.string(),
        "hardware-address": z.string().optional(),
        "ip-addresses": z.array(z.strictObject({ "ip-address": z.string(), "ip-address-type": z.enum(["ipv4", "ipv6"]), prefix: int })).optional(),
        statistics: z
          .strictObject({
            "rx-bytes": int,
            "rx-packets": int,
            "rx-errs": int,
            "rx-dropped": int,
            "tx-bytes": int,
            "tx-packets": int,
            "tx-errs": int,
            "tx-dropped": int,
          })
          .optional(),
      }),
    ),
    successResponse: true,
  },
  "guest-network-get-route": {
    args: z.strictObject({}),
    returns: z
      .array(
        z.strictObject({
          iface: z.string(),
          destination: z.string(),
          metric: int,
          gateway: z.string().optional().describe("IPv4"),
          mask: z.string().optional().describe("IPv4"),
          irtt: int.optional().describe("IPv4"),
          flags: z.bigint().optional().describe("qapi uint64"),
          refcnt: int.optional(),
          use: int.optional(),
          window: int.optional().describe("IPv4"),
          mtu: int.optional().describe("IPv4"),
          desprefixlen: z.string().optional().describe("IPv6"),
          source: z.string().optional().describe("IPv6"),
          srcprefixlen: z.string().optional().describe("IPv6"),
          nexthop: z.string().optional().describe("IPv6"),
          version: int.describe("4 or 6"),
        }),
      )
      .describe("GuestNetworkRoute (qemu 9.1): /proc/net/route, then /proc/net/ipv6_route"),
    successResponse: true,
  },
  "guest-get-cpustats": {
    args: z.strictObject({}),
    returns: z.array(z.record(z.string(), z.union([z.string(), int]))).describe("GuestCpuStats: type 'linux', cpu, and times in ms"),
    successResponse: true,
  },
  "guest-get-diskstats": {
    args: z.strictObject({}),
    returns: z.array(z.strictObject({ name: z.string(), major: int, minor: int, stats: z.record(z.string(), int) })),
    successResponse: true,
  },
  "guest-get-fsinfo": {
    args: z.strictObject({}),
    returns: z.array(
      z.strictObject({
        name: z.string(),
        mountpoint: z.string(),
        type: z.string(),
        "used-bytes": int.optional(),
        "total-bytes": int.optional(),
        disk: z.array(z.record(z.string(), z.unknown())).describe("GuestDiskAddress: pci-controller, bus-type, bus, target, unit, serial, dev"),
      }),
    ),
    successResponse: true,
  },
  "guest-get-disks": {
    args: z.strictObject({}),
    returns: z.array(
      z.strictObject({
        name: z.string(),
        partition: z.boolean(),
        dependencies: z.array(z.string()).optional(),
        address: z.record(z.string(), z.unknown()).optional(),
        alias: z.string().optional(),
      }),
    ),
    successResponse: true,
  },
  "guest-get-memory-blocks": {
    args: z.strictObject({}),
    returns: z.array(z.strictObject({ "phys-index": int, online: z.boolean(), "can-offline": z.boolean().optional() })),
    successResponse: true,
  },
  "guest-get-memory-block-info": {
    args: z.strictObject({}),
    returns: z.strictObject({ size: int }),
    successResponse: true,
  },
  "guest-set-memory-blocks": {
    args: z.strictObject({
      "mem-blks": z.array(z.strictObject({ "phys-index": int, online: z.boolean(), "can-offline": z.boolean().optional() })),
    }),
    returns: z.array(
      z.strictObject({
        "phys-index": int,
        response: z.enum(["success", "not-found", "operation-not-supported", "operation-failed"]),
        "error-code": int.optional(),
      }),
    ),
    successResponse: true,
  },
  "guest-shutdown": {
    args: z.strictObject({ mode: z.string().optional() }),
    returns: z.strictObject({}),
    successResponse: false,
  },
  "guest-suspend-disk": {
    args: z.strictObject({}),
    returns: z.strictObject({}),
    successResponse: false,
  },
  "guest-suspend-ram": {
    args: z.strictObject({}),
    returns: z.strictObject({}),
    successResponse: false,
  },
  "guest-suspend-hybrid": {
    args: z.strictObject({}),
    returns: z.strictObject({}),
    successResponse: false,
  },
  "guest-exec": {
    args: z.strictObject({
      path: z.string(),
      arg: z.array(z.string()).optional(),
      env: z.array(z.string()).optional(),
      "input-data": z.string().optional(),
      "capture-output": z.boolean().optional(),
    }),
    returns: z.strictObject({ pid: int }),
    successResponse: true,
  },
  "guest-exec-status": {
    args: z.strictObject({ pid: int }),
    returns: z.strictObject({
      exited: z.boolean(),
      exitcode: int.optional(),
      signal: int.optional(),
      "out-data": z.string().optional(),
      "err-data": z.string().optional(),
      "out-truncated": z.boolean().optional(),
      "err-truncated": z.boolean().optional(),
    }),
    successResponse: true,
  },
  "guest-file-open": {
    args: z.strictObject({ path: z.string(), mode: z.string().optional() }),
    returns: int,
    successResponse: true,
  },
  "guest-file-close": {
    args: z.strictObject({ handle: int }),
    returns: z.strictObject({}),
    successResponse: true,
  },
  "guest-file-read": {
    args: z.strictObject({ handle: int, count: int.optional() }),
    returns: z.strictObject({ count: int, "buf-b64": z.string(), eof: z.boolean() }),
    successResponse: true,
  },
  "guest-file-write": {
    args: z.strictObject({ handle: int, "buf-b64": z.string().describe("base64, checked after the handle as qemu-ga checks it"), count: int.optional() }),
    returns: z.strictObject({ count: int, eof: z.boolean() }),
    successResponse: true,
  },
  "guest-file-seek": {
    args: z.strictObject({ handle: int, offset: int, whence: z.union([int, z.enum(["set", "cur", "end"])]) }),
    returns: z.strictObject({ position: int, eof: z.boolean() }),
    successResponse: true,
  },
  "guest-file-flush": {
    args: z.strictObject({ handle: int }),
    returns: z.strictObject({}),
    successResponse: true,
  },
  "guest-fstrim": {
    args: z.strictObject({ minimum: int.optional().describe("Smallest free extent worth discarding, in bytes") }),
    returns: z.strictObject({
      paths: z.array(z.strictObject({ path: z.string(), trimmed: int.optional(), minimum: int.optional(), error: z.string().optional() })),
    }),
    successResponse: true,
  },
  "guest-fsfreeze-status": {
    args: z.strictObject({}),
    returns: z.enum(["thawed", "frozen"]),
    successResponse: true,
  },
  "guest-fsfreeze-freeze": {
    args: z.strictObject({}),
    returns: int.describe("How many filesystems froze"),
    successResponse: true,
  },
  "guest-fsfreeze-freeze-list": {
    args: z.strictObject({ mountpoints: z.array(z.string()).optional().describe("Only these mountpoints; every block-backed one when absent") }),
    returns: int.describe("How many filesystems froze"),
    successResponse: true,
  },
  "guest-fsfreeze-thaw": {
    args: z.strictObject({}),
    returns: int.describe("How many filesystems were frozen and are thawed now"),
    successResponse: true,
  },
  "guest-set-user-password": {
    args: z.strictObject({ username: z.string(), password: z.string().describe("base64"), crypted: z.boolean() }),
    returns: z.strictObject({}),
    successResponse: true,
  },
  "guest-ssh-get-authorized-keys": {
    args: z.strictObject({ username: z.string() }),
    returns: z.strictObject({ keys: z.array(z.string()) }),
    successResponse: true,
  },
  "guest-ssh-add-authorized-keys": {
    args: z.strictObject({ username: z.string(), keys: z.array(z.string()), reset: z.boolean().optional() }),
    returns: z.strictObject({}),
    successResponse: true,
  },
  "guest-ssh-remove-authorized-keys": {
    args: z.strictObject({ username: z.string(), keys: z.array(z.string()) }),
    returns: z.strictObject({}),
    successResponse: true,
  },
  "guest-info": {
    args: z.strictObject({}),
    returns: z.strictObject({
      version: z.string(),
      supported_commands: z.array(z.strictObject({ name: z.string(), enabled: z.boolean(), "success-response": z.boolean() })),
    }),
    successResponse: true,
  },
} as const;

export type QgaCommandName = keyof typeof QGA_COMMANDS;
/** A command's arguments after validation, typed from its schema. */
export type QgaArgs<C extends QgaCommandName> = z.output<(typeof QGA_COMMANDS)[C]["args"]>;
export const QGA_COMMAND_NAMES = Object.keys(QGA_COMMANDS) as QgaCommandName[];

export function isQgaCommand(name: string): name is QgaCommandName {
  return Object.hasOwn(QGA_COMMANDS, name);
}

/** qemu's type name in "Invalid parameter type for 'x', expected: <type>" (every numeric argument so far is a qapi int). */
export function qapiTypeName(zodExpected: string): string {
  return zodExpected === "number" ? "integer" : zodExpected;
}
