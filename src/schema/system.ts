import { z } from "zod";

const count = z.number().int().nonnegative();

const cpuTimes = z.strictObject({
  usage_percent: z.number().min(0).max(100).describe("Busy share since the previous sample"),
  user: z.number().nonnegative().describe("Seconds since boot (USER_HZ ticks / 100)"),
  nice: z.number().nonnegative(),
  system: z.number().nonnegative(),
  idle: z.number().nonnegative(),
  iowait: z.number().nonnegative(),
  irq: z.number().nonnegative(),
  softirq: z.number().nonnegative(),
  steal: z.number().nonnegative(),
});

export const metricsJson = z.strictObject({
  format: z.literal("json"),
  timestamp_ms: z.number().int(),
  uptime_seconds: z.number().nonnegative(),
  cpu: z.strictObject({ total: cpuTimes, per_cpu: z.array(cpuTimes.extend({ cpu: z.string() })) }),
  memory: z.strictObject({ total_bytes: count, available_bytes: count, used_bytes: count, free_bytes: count, buffers_bytes: count, cached_bytes: count }),
  swap: z.strictObject({ total_bytes: count, used_bytes: count, free_bytes: count }),
  load: z.strictObject({ load1: z.number(), load5: z.number(), load15: z.number(), running: count, total: count }),
  disks: z.array(
    z.strictObject({
      device: z.string(),
      reads: count,
      read_bytes: count,
      writes: count,
      write_bytes: count,
      io_ms: count,
    }),
  ),
  network: z.array(
    z.strictObject({
      interface: z.string(),
      rx_bytes: count,
      rx_packets: count,
      rx_errors: count,
      rx_dropped: count,
      tx_bytes: count,
      tx_packets: count,
      tx_errors: count,
      tx_dropped: count,
    }),
  ),
  filesystems: z
    .array(z.strictObject({ mount: z.string(), device: z.string(), fstype: z.string(), size_bytes: count, used_bytes: count, available_bytes: count }))
    .describe("Real filesystems, each device once at its shortest mount point, as df(1) lists them; network filesystems are left out (statfs on a dead server would block)"),
  processes: count,
});

const powerParams = z.strictObject({
  confirm: z.literal(true, { error: "must be true: power actions are never taken by accident" }),
  force: z.boolean().default(false).describe("Skip the orderly shutdown (poweroff -f / reboot -f)"),
  delay_seconds: z.number().int().min(0).max(86_400).default(0).describe("Act this long after replying"),
  message: z.string().max(512).optional().describe("Told to logged-in users (wall) and logged"),
});

const powerResult = z.strictObject({
  accepted: z.literal(true),
  action: z.enum(["poweroff", "reboot", "halt"]).describe("halt only through QGA's guest-shutdown"),
  force: z.boolean(),
  delay_seconds: z.number().int(),
  command: z.array(z.string()).describe("The command the agent will run first; fallbacks are logged and audited"),
});

export const SYSTEM_METHODS = {
  get_metrics: {
    summary:
      "CPU, memory, swap, load, disk and network I/O, filesystem usage, uptime and process count, read from /proc without child processes. On Windows from Win32 calls (GetSystemTimes, GlobalMemoryStatusEx, GetDiskFreeSpaceExW per fixed drive, GetIfTable2, EnumProcesses): load is 0 and disks is empty.",
    params: z.strictObject({ format: z.enum(["json", "prometheus"]).default("json") }),
    result: z.discriminatedUnion("format", [
      metricsJson,
      z.strictObject({ format: z.literal("prometheus"), text: z.string().describe("Prometheus text exposition format 0.0.4") }),
    ]),
  },
  get_users: {
    summary:
      "Logged-in users from utmp (user, tty, host, login time): live sessions only, one entry per tty, as who(1) shows them. On Windows the terminal-services sessions with a user: tty is the window station, host the RDP client, pid the session id.",
    params: z.strictObject({}),
    result: z.strictObject({
      users: z.array(
        z.strictObject({
          user: z.string(),
          tty: z.string(),
          host: z.string().describe("Remote host, or empty for a local login"),
          login_time: z.number().describe("Seconds since the epoch"),
          pid: z.number().int(),
        }),
      ),
    }),
  },
  shutdown: {
    summary:
      "Power the guest off: replies first, then (at least 250 ms later) runs systemctl poweroff, falling back to shutdown -h now, then poweroff; force runs poweroff -f. On Windows: ExitWindowsEx (SeShutdownPrivilege enabled; force is EWX_FORCE), then shutdown.exe /s. A request while another is scheduled replaces it; while one runs it is refused with -32000.",
    params: powerParams,
    result: powerResult,
  },
  reboot: {
    summary:
      "Reboot the guest: replies first, then (at least 250 ms later) runs systemctl reboot, falling back to shutdown -r now, then reboot; force runs reboot -f. On Windows: ExitWindowsEx (SeShutdownPrivilege enabled; force is EWX_FORCE), then shutdown.exe /r. A request while another is scheduled replaces it; while one runs it is refused with -32000.",
    params: powerParams,
    result: powerResult,
  },
} as const;
