/**
 * The guest's clock, hardware, disks and accounts: the native counterparts of
 * qemu-ga's commands, served by the same code (src/guest). Fields carry
 * qemu-ga's names in snake_case; lists are wrapped in an object.
 */
import { z } from "zod";

const int = z.number().int();
const count = int.nonnegative();

const timespec = {
  seconds: int.describe("Whole seconds since the epoch (UTC)"),
  nanoseconds: int.min(0).max(999_999_999).describe("Nanoseconds past those seconds"),
};

/** 1970-01-01 up to the end of 2069: the years qemu-ga accepts (src/guest/time.ts). */
const SETTABLE_SECONDS_END = Date.UTC(2070, 0, 1) / 1000;

const username = z
  .string()
  .min(1)
  .refine((name) => !name.includes(":") && !name.includes("\n"), "must not contain ':' or a newline")
  .describe("A user of the guest (from /etc/passwd, or NSS through getent)");

const sshKey = z
  .string()
  .refine((key) => !key.startsWith("#") && !key.includes("\n"), "must be one OpenSSH public key line, not a comment")
  .describe("One authorized_keys line, e.g. 'ssh-ed25519 AAAA... user@host'");

const diskAddress = z.strictObject({
  pci_controller: z
    .strictObject({ domain: int, bus: int, slot: int, function: int })
    .describe("The PCI function the disk hangs off; -1 in every field when it is not on PCI"),
  bus_type: z.string().describe("virtio, scsi, sata, nvme or unknown"),
  bus: int,
  target: int,
  unit: int,
  serial: z.string().optional().describe("Disk serial from sysfs, when it has one"),
  dev: z.string().optional().describe("Device node, e.g. /dev/vda"),
});

const vcpu = z.strictObject({
  logical_id: count,
  online: z.boolean(),
  can_offline: z.boolean().describe("False for a CPU the kernel cannot take offline (no sysfs online file, e.g. cpu0 on x86)"),
});

const memoryBlock = z.strictObject({
  phys_index: count,
  online: z.boolean(),
  can_offline: z.boolean().describe("The kernel says the block is removable"),
});

const emptyResult = z.strictObject({});

/** The kernel keeps these as unsigned 32-bit numbers (qemu-ga reads them into C ints, so QGA may show them negative). */
const u32 = count.max(0xffff_ffff);

const route = z.strictObject({
  iface: z.string().describe("Interface name; '*' for an IPv4 route without one (unreachable)"),
  destination: z.string().describe("Destination network address"),
  metric: u32,
  gateway: z.string().optional().describe("IPv4: next hop, 0.0.0.0 for none"),
  mask: z.string().optional().describe("IPv4: destination netmask"),
  irtt: u32.optional().describe("IPv4: initial round-trip time"),
  flags: u32.optional().describe("RTF_* flags (RTF_UP 0x1, RTF_GATEWAY 0x2, RTF_HOST 0x4, ...)"),
  refcnt: u32.optional(),
  use: u32.optional(),
  window: u32.optional().describe("IPv4"),
  mtu: u32.optional().describe("IPv4"),
  desprefixlen: count.max(128).optional().describe("IPv6: destination prefix length"),
  source: z.string().optional().describe("IPv6: source address, :: for any"),
  srcprefixlen: count.max(128).optional().describe("IPv6: source prefix length"),
  nexthop: z.string().optional().describe("IPv6: next hop, :: for none"),
  version: z.union([z.literal(4), z.literal(6)]),
});

const suspendMode = z.enum(["ram", "disk", "hybrid"]);

export const GUEST_METHODS = {
  get_time: {
    summary: "The guest's real-time clock (guest-get-time).",
    params: z.strictObject({}),
    result: z.strictObject(timespec),
  },
  set_time: {
    summary:
      "Set the guest's clock and write it to the hardware clock (hwclock -w); without seconds, set the clock from the hardware clock (hwclock -s), e.g. after a resume (guest-set-time). Answers the clock as it then reads. Switched by [security] enable_system_changes.",
    params: z
      .strictObject({
        seconds: int
          .min(0)
          .max(SETTABLE_SECONDS_END - 1)
          .optional()
          .describe("Seconds since the epoch, 1970 to the end of 2069; leave out to read the hardware clock instead"),
        nanoseconds: int.min(0).max(999_999_999).optional().describe("Added to seconds (microsecond precision reaches the clock)"),
      })
      .refine((params) => params.nanoseconds === undefined || params.seconds !== undefined, {
        message: "needs seconds",
        path: ["nanoseconds"],
      }),
    result: z.strictObject(timespec),
  },
  get_timezone: {
    summary: "The guest's time zone now: its abbreviation and offset, from TZ or /etc/localtime (guest-get-timezone).",
    params: z.strictObject({}),
    result: z.strictObject({
      zone: z.string().optional().describe("Abbreviation in effect now, e.g. CET or CEST"),
      offset: int.describe("Seconds east of UTC"),
    }),
  },
  get_os_info: {
    summary:
      "os-release(5) and uname fields as qemu-ga reports them (guest-get-osinfo); unlike get_info it has VERSION, VARIANT and VARIANT_ID, and leaves out what the file lacks.",
    params: z.strictObject({}),
    result: z.strictObject({
      kernel_release: z.string().describe("uname -r"),
      kernel_version: z.string().describe("uname -v"),
      machine: z.string().describe("uname -m"),
      id: z.string().optional().describe("ID"),
      name: z.string().optional().describe("NAME"),
      pretty_name: z.string().optional().describe("PRETTY_NAME"),
      version: z.string().optional().describe("VERSION"),
      version_id: z.string().optional().describe("VERSION_ID"),
      variant: z.string().optional().describe("VARIANT"),
      variant_id: z.string().optional().describe("VARIANT_ID"),
    }),
  },
  get_vcpus: {
    summary: "Every logical CPU, whether it is online and whether it can go offline, from sysfs (guest-get-vcpus).",
    params: z.strictObject({}),
    result: z.strictObject({ vcpus: z.array(vcpu).describe("Highest logical id first, as qemu-ga lists them") }),
  },
  set_vcpus: {
    summary:
      "Bring logical CPUs online or offline through sysfs, in order, stopping at the first that fails (guest-set-vcpus): answers how many were done, or the error when the first fails. Switched by [security] enable_system_changes.",
    params: z.strictObject({
      vcpus: z.array(z.strictObject({ logical_id: count, online: z.boolean() })).min(1),
    }),
    result: z.strictObject({ processed: count.describe("Entries done before the first failure (all of them on success)") }),
  },
  get_network_interfaces: {
    summary:
      "Every network interface in ifindex order with its hardware address, addresses and, where it has an address, its /proc/net/dev counters (guest-network-get-interfaces).",
    params: z.strictObject({}),
    result: z.strictObject({
      interfaces: z.array(
        z.strictObject({
          name: z.string(),
          hardware_address: z.string().optional().describe("MAC address; 00:00:00:00:00:00 when it has none"),
          ip_addresses: z
            .array(z.strictObject({ ip_address: z.string(), ip_address_type: z.enum(["ipv4", "ipv6"]), prefix: count.describe("Prefix length (CIDR)") }))
            .optional(),
          statistics: z
            .strictObject({
              rx_bytes: count,
              rx_packets: count,
              rx_errs: count,
              rx_dropped: count,
              tx_bytes: count,
              tx_packets: count,
              tx_errs: count,
              tx_dropped: count,
            })
            .optional(),
        }),
      ),
    }),
  },
  get_network_routes: {
    summary:
      "The guest's routes (guest-network-get-route): the IPv4 main table from /proc/net/route, then every IPv6 table from /proc/net/ipv6_route, the kernel's null entry included. Unlike QGA, numbers are the kernel's unsigned values and prefix lengths are numbers (qemu-ga reads them into C ints and strings).",
    params: z.strictObject({}),
    result: z.strictObject({ routes: z.array(route) }),
  },
  get_fsinfo: {
    summary: "Every block-backed mount: device, type, usage (without root-reserved space) and the disks under it (guest-get-fsinfo).",
    params: z.strictObject({}),
    result: z.strictObject({
      filesystems: z.array(
        z.strictObject({
          name: z.string().describe("Block device name, e.g. vda1 or dm-0"),
          mountpoint: z.string(),
          type: z.string().describe("Filesystem type, e.g. ext4"),
          used_bytes: count.optional(),
          total_bytes: count.optional().describe("Used plus what an unprivileged user may still use"),
          disk: z.array(diskAddress).describe("The disks under the device (a dm or md device's slaves)"),
        }),
      ),
    }),
  },
  get_disks: {
    summary: "Every disk and partition that is not virtual (loop, ram, zram), with what it depends on and, for a real disk, its address (guest-get-disks).",
    params: z.strictObject({}),
    result: z.strictObject({
      disks: z.array(
        z.strictObject({
          name: z.string().describe("Device node, e.g. /dev/vda1"),
          partition: z.boolean(),
          dependencies: z.array(z.string()).optional().describe("A partition's disk, a dm or md device's slaves"),
          address: diskAddress.optional(),
          alias: z.string().optional().describe("A device-mapper device's name"),
        }),
      ),
    }),
  },
  get_diskstats: {
    summary:
      "/proc/diskstats in full (guest-get-diskstats): every device and partition with merges, per-direction ticks, discard and flush counters — what get_metrics' per-disk totals leave out.",
    params: z.strictObject({}),
    result: z.strictObject({
      disks: z.array(
        z.strictObject({
          name: z.string(),
          major: count,
          minor: count,
          stats: z
            .strictObject({
              read_sectors: count.optional(),
              read_ios: count.optional(),
              read_merges: count.optional(),
              write_sectors: count.optional(),
              write_ios: count.optional(),
              write_merges: count.optional(),
              discard_sectors: count.optional(),
              discard_ios: count.optional(),
              discard_merges: count.optional(),
              flush_ios: count.optional(),
              read_ticks: count.optional().describe("Milliseconds spent reading"),
              write_ticks: count.optional(),
              discard_ticks: count.optional(),
              flush_ticks: count.optional(),
              ios_pgr: count.optional().describe("I/Os in progress"),
              total_ticks: count.optional().describe("Milliseconds the device was busy"),
              weight_ticks: count.optional(),
            })
            .describe("As many counters as the kernel's line has"),
        }),
      ),
    }),
  },
  get_memory_blocks: {
    summary: "Every memory block in sysfs, whether it is online and whether it can go offline (guest-get-memory-blocks).",
    params: z.strictObject({}),
    result: z.strictObject({ blocks: z.array(memoryBlock) }),
  },
  get_memory_block_info: {
    summary: "The size of one memory block (guest-get-memory-block-info).",
    params: z.strictObject({}),
    result: z.strictObject({ size: count.describe("Bytes") }),
  },
  set_memory_blocks: {
    summary:
      "Bring memory blocks online or offline through sysfs (guest-set-memory-blocks): one result per block, in order. Switched by [security] enable_system_changes.",
    params: z.strictObject({
      blocks: z.array(z.strictObject({ phys_index: count, online: z.boolean() })).min(1),
    }),
    result: z.strictObject({
      results: z.array(
        z.strictObject({
          phys_index: count,
          response: z.enum(["success", "not_found", "operation_not_supported", "operation_failed"]),
          error_code: int.optional().describe("errno of a failure"),
        }),
      ),
    }),
  },
  fstrim: {
    summary:
      "Discard unused blocks (FITRIM) on every block-backed mount (guest-fstrim): each mount's bytes trimmed or why not, one failing mount not stopping the others. Switched by [security] enable_system_changes.",
    params: z.strictObject({
      minimum: count.optional().describe("Smallest free extent worth discarding, in bytes (default 0: all)"),
    }),
    result: z.strictObject({
      paths: z.array(
        z.strictObject({
          path: z.string(),
          trimmed: count.optional().describe("Bytes trimmed"),
          minimum: count.optional(),
          error: z.string().optional(),
        }),
      ),
    }),
  },
  suspend: {
    summary:
      "Suspend the guest (guest-suspend-ram, -disk, -hybrid): replies first, then (at least 250 ms later) suspends the way qemu-ga would — systemd if it has the unit, else pm-utils if pm-is-supported says so, else a write to /sys/power/state — falling through to the next way when one fails (logged and audited). A mode the guest has no way to do is refused with -32007 before anything runs; a request while one is under way with -32000. The host wakes the guest (QMP system_wakeup, virsh dompmwakeup). Switched by [security] enable_system_changes.",
    params: z.strictObject({
      mode: suspendMode.describe("ram: suspend to RAM (S3); disk: hibernate (S4); hybrid: both, through systemd or pm-utils only"),
    }),
    result: z.strictObject({
      accepted: z.literal(true),
      mode: suspendMode,
      method: z.enum(["systemd", "pm-utils", "sysfs"]).describe("The way tried first"),
      command: z.array(z.string()).optional().describe("systemd, pm-utils: the tool (absolute path) and its arguments"),
      state: z.enum(["mem", "disk"]).optional().describe("sysfs: the word written to /sys/power/state"),
    }),
  },
  set_user_password: {
    summary:
      "Set a user's password through chpasswd's stdin, never a command line or a log (guest-set-user-password). The password is a plain JSON string; crypted takes a crypt(3) hash instead. Switched by [security] enable_credentials.",
    params: z.strictObject({
      username,
      password: z
        .string()
        .min(1)
        .refine((password) => !password.includes("\n") && !password.includes("\0"), "must not contain a newline or a NUL")
        .describe("The new password as text (or its crypt(3) hash with crypted); never logged or audited"),
      crypted: z.boolean().default(false).describe("password is already a crypt(3) hash (chpasswd -e)"),
    }),
    result: emptyResult,
  },
  ssh_get_authorized_keys: {
    summary: "The public keys in a user's ~/.ssh/authorized_keys, without comments or blank lines, last first as qemu-ga lists them.",
    params: z.strictObject({ username }),
    result: z.strictObject({ keys: z.array(z.string()) }),
  },
  ssh_add_authorized_keys: {
    summary:
      "Add keys to a user's ~/.ssh/authorized_keys (none twice), or replace them all with reset; ~/.ssh and the file are created owned by the user (0700/0600), a symlink is refused, the new file replaces the old one whole. Switched by [security] enable_credentials.",
    params: z.strictObject({
      username,
      keys: z.array(sshKey),
      reset: z.boolean().default(false).describe("Replace every key in the file"),
    }),
    result: emptyResult,
  },
  ssh_remove_authorized_keys: {
    summary:
      "Remove keys from a user's ~/.ssh/authorized_keys (every copy), keeping comments and other lines; no file is no error. Switched by [security] enable_credentials.",
    params: z.strictObject({ username, keys: z.array(sshKey) }),
    result: emptyResult,
  },
} as const;
