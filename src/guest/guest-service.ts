/**
 * The native protocol's view of the guest: the same operations QGA runs
 * (src/guest), shaped as its schemas say — lists wrapped in an object, the
 * clock as seconds and nanoseconds (JSON numbers lose nanoseconds past 2^53),
 * routes with the kernel's numbers, the password a plain string, and suspend
 * answered before the guest sleeps.
 */
import type { Params, Result } from "../schema/methods.ts";
import type { GuestService } from "../services.ts";
import { guestFstrim } from "./fstrim.ts";
import {
  guestDisks,
  guestDiskStats,
  guestFsInfo,
  guestMemoryBlockInfo,
  guestMemoryBlocks,
  guestNetworkInterfaces,
  guestOsInfo,
  guestSetMemoryBlocks,
  guestSetVcpus,
  guestVcpus,
} from "./inventory.ts";
import { errnoOf } from "../files/fsx.ts";
import { failed, GuestError } from "./errors.ts";
import { setUserPassword } from "./password.ts";
import { guestNetworkRoutes, type GuestNetworkRoute } from "./route.ts";
import { SuspendController, type SuspendLog } from "./suspend.ts";
import { SshKeys } from "./ssh.ts";
import { realtimeNs, setTime } from "./time.ts";
import { guestTimezone } from "./timezone.ts";

type Timespec = Result<"get_time">;

export function timespecOf(ns: bigint): Timespec {
  return { seconds: Number(ns / 1_000_000_000n), nanoseconds: Number(ns % 1_000_000_000n) };
}

export function nanosecondsOf({ seconds, nanoseconds = 0 }: { seconds: number; nanoseconds?: number }): bigint {
  return BigInt(seconds) * 1_000_000_000n + BigInt(nanoseconds);
}

/** A read of /proc or /sys that fails (a kernel without memory hotplug has no /sys/devices/system/memory) is the OS's failure, not the agent's. */
export function fromOs<T>(what: string, read: () => T): T {
  try {
    return read();
  } catch (error) {
    if (error instanceof GuestError || errnoOf(error) === undefined) throw error;
    throw failed(String(error), `cannot read ${what}: ${(error as Error).message}`);
  }
}

type Route = Result<"get_network_routes">["routes"][number];

/**
 * A route with qemu-ga's C ints undone: every number as the kernel keeps it
 * (unsigned 32-bit; an IPv6 row's flags are sign-extended to 64 bits for
 * QGA), prefix lengths as numbers rather than qapi's strings.
 */
export function nativeRoute(route: GuestNetworkRoute): Route {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(route)) {
    if (typeof value === "bigint") out[key] = Number(BigInt.asUintN(32, value));
    else if (key === "desprefixlen" || key === "srcprefixlen") out[key] = Number(value);
    else if (typeof value === "number" && key !== "version") out[key] = value >>> 0;
    else out[key] = value;
  }
  return out as Route;
}

export interface LinuxGuestOptions {
  /** Whose ~/.ssh the ssh_* methods edit; tests point it at a scratch home. */
  sshKeys?: SshKeys;
  /** How suspend reaches the guest's tools and /sys/power/state; tests inject their own. */
  suspend?: SuspendController;
}

export class LinuxGuest implements GuestService {
  private readonly sshKeys: SshKeys;
  private readonly suspender: SuspendController;

  constructor(log: SuspendLog, options: LinuxGuestOptions = {}) {
    this.sshKeys = options.sshKeys ?? new SshKeys();
    this.suspender = options.suspend ?? new SuspendController(log);
  }

  getTime(): Timespec {
    return timespecOf(realtimeNs());
  }

  async setTime(params: Params<"set_time">): Promise<Timespec> {
    await setTime(params.seconds === undefined ? undefined : nanosecondsOf({ seconds: params.seconds, nanoseconds: params.nanoseconds }));
    return this.getTime();
  }

  getTimezone(): Result<"get_timezone"> {
    return guestTimezone();
  }

  getOsInfo(): Result<"get_os_info"> {
    return guestOsInfo();
  }

  getVcpus(): Result<"get_vcpus"> {
    return { vcpus: fromOs("the CPUs", () => guestVcpus()) };
  }

  setVcpus(params: Params<"set_vcpus">): Result<"set_vcpus"> {
    return { processed: guestSetVcpus(params.vcpus) };
  }

  getNetworkInterfaces(): Result<"get_network_interfaces"> {
    return { interfaces: fromOs("the network interfaces", () => guestNetworkInterfaces()) };
  }

  getNetworkRoutes(): Result<"get_network_routes"> {
    return { routes: guestNetworkRoutes().map(nativeRoute) };
  }

  getFsinfo(): Result<"get_fsinfo"> {
    return { filesystems: fromOs("the filesystems", () => guestFsInfo()) };
  }

  getDisks(): Result<"get_disks"> {
    return { disks: fromOs("the disks", () => guestDisks()) };
  }

  getDiskstats(): Result<"get_diskstats"> {
    return { disks: fromOs("/proc/diskstats", () => guestDiskStats()) };
  }

  getMemoryBlocks(): Result<"get_memory_blocks"> {
    return { blocks: fromOs("the memory blocks", () => guestMemoryBlocks()) };
  }

  getMemoryBlockInfo(): Result<"get_memory_block_info"> {
    return fromOs("the memory block size", () => guestMemoryBlockInfo());
  }

  setMemoryBlocks(params: Params<"set_memory_blocks">): Result<"set_memory_blocks"> {
    return { results: guestSetMemoryBlocks(params.blocks) };
  }

  fstrim(params: Params<"fstrim">): Promise<Result<"fstrim">> {
    return guestFstrim(params.minimum);
  }

  suspend(params: Params<"suspend">): Promise<Result<"suspend">> {
    return this.suspender.request(params.mode);
  }

  async setUserPassword(params: Params<"set_user_password">): Promise<Result<"set_user_password">> {
    await setUserPassword(params.username, Buffer.from(params.password, "utf8"), params.crypted);
    return {};
  }

  sshGetAuthorizedKeys(params: Params<"ssh_get_authorized_keys">): Result<"ssh_get_authorized_keys"> {
    return this.sshKeys.get(params.username);
  }

  sshAddAuthorizedKeys(params: Params<"ssh_add_authorized_keys">): Result<"ssh_add_authorized_keys"> {
    return this.sshKeys.add(params.username, params.keys, params.reset);
  }

  sshRemoveAuthorizedKeys(params: Params<"ssh_remove_authorized_keys">): Result<"ssh_remove_authorized_keys"> {
    return this.sshKeys.remove(params.username, params.keys);
  }
}
