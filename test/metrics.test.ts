import { afterAll, describe, expect, test } from "bun:test";
import { cpSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type FsStats, parseMeminfo, ProcMetrics, type ProcMetricsOptions, toPrometheus } from "../src/metrics/metrics.ts";
import { RpcError } from "../src/protocol/errors.ts";
import { METHODS } from "../src/schema/methods.ts";
import { checkConventions, parseExposition } from "./fixtures/exposition.ts";

const FIXTURE_PROC = join(import.meta.dir, "fixtures", "proc", "basic");
const FIXTURE_SYS = join(import.meta.dir, "fixtures", "sys");
const GIB = 1024 ** 3;

const STATFS: Record<string, FsStats> = {
  "/": { bsize: 4096, frsize: 4096, blocks: 2_621_440, bfree: 1_310_720, bavail: 1_048_576 }, // 10 GiB, 5 GiB free, 4 GiB avail
  "/dev": { bsize: 4096, frsize: 4096, blocks: 250, bfree: 250, bavail: 250 },
  "/run": { bsize: 4096, frsize: 4096, blocks: 51_200, bfree: 51_000, bavail: 51_000 },
  "/var/lib/containers/bind": { bsize: 4096, frsize: 4096, blocks: 2_621_440, bfree: 1_310_720, bavail: 1_048_576 },
  "/mnt/my data": { bsize: 4096, frsize: 1024, blocks: 1_048_576, bfree: 524_288, bavail: 524_288 }, // frsize wins over bsize
  "/srv": { bsize: 4096, frsize: 4096, blocks: 100, bfree: 100, bavail: 100 },
  "/var/lib/lxcfs": { bsize: 4096, frsize: 4096, blocks: 0, bfree: 0, bavail: 0 }, // pseudo: df leaves it out
  '/mnt/q"uote\\back\nnl': { bsize: 512, blocks: 2048, bfree: 1024, bavail: 1000 }, // no frsize: bsize
};

function fixtureOptions(overrides: Partial<ProcMetricsOptions> = {}) {
  let wall = 1_700_000_000_000;
  let mono = 1_000;
  const statfsCalls: string[] = [];
  const options: ProcMetricsOptions = {
    procRoot: FIXTURE_PROC,
    sysRoot: FIXTURE_SYS,
    now: () => wall,
    monotonic: () => mono,
    statfs: (path) => {
      statfsCalls.push(path);
      const stats = STATFS[path];
      if (!stats) throw Object.assign(new Error(`ENOENT: ${path}`), { code: "ENOENT" });
      return stats;
    },
    ...overrides,
  };
  return {
    options,
    statfsCalls,
    advance(ms: number) {
      wall += ms;
      mono += ms;
    },
  };
}

const ZERO_TIMES = { usage_percent: 0 };

const EXPECTED_JSON = {
  format: "json",
  timestamp_ms: 1_700_000_001_000,
  uptime_seconds: 12345.67,
  cpu: {
    total: { ...ZERO_TIMES, user: 10, nice: 0.2, system: 3, idle: 50, iowait: 1, irq: 0, softirq: 0.5, steal: 0.1 },
    per_cpu: [
      { ...ZERO_TIMES, user: 5, nice: 0.1, system: 1.5, idle: 25, iowait: 0.5, irq: 0, softirq: 0.25, steal: 0.05, cpu: "0" },
      { ...ZERO_TIMES, user: 5, nice: 0.1, system: 1.5, idle: 25, iowait: 0.5, irq: 0, softirq: 0.25, steal: 0.05, cpu: "1" },
    ],
  },
  memory: {
    total_bytes: 2_048_000 * 1024,
    available_bytes: 1_536_000 * 1024,
    used_bytes: 512_000 * 1024,
    free_bytes: 512_000 * 1024,
    buffers_bytes: 64_000 * 1024,
    cached_bytes: 768_000 * 1024,
  },
  swap: { total_bytes: 1_048_576 * 1024, used_bytes: 48_576 * 1024, free_bytes: 1_000_000 * 1024 },
  load: { load1: 0.52, load5: 0.58, load15: 0.59, running: 3, total: 421 },
  disks: [
    { device: "loop1", reads: 50, read_bytes: 100 * 512, writes: 0, write_bytes: 0, io_ms: 10 },
    { device: "vda", reads: 1000, read_bytes: 20_000 * 512, writes: 2000, write_bytes: 40_000 * 512, io_ms: 1200 },
    { device: "nvme0n1", reads: 300, read_bytes: 6000 * 512, writes: 400, write_bytes: 8000 * 512, io_ms: 70 },
    { device: "dm-0", reads: 10, read_bytes: 80 * 512, writes: 20, write_bytes: 160 * 512, io_ms: 3 },
    { device: "sr0", reads: 0, read_bytes: 0, writes: 0, write_bytes: 0, io_ms: 0 },
  ],
  network: [
    { interface: "lo", rx_bytes: 3193, rx_packets: 29, rx_errors: 0, rx_dropped: 0, tx_bytes: 3193, tx_packets: 29, tx_errors: 0, tx_dropped: 0 },
    { interface: "eth0", rx_bytes: 250_095_992, rx_packets: 5548, rx_errors: 1, rx_dropped: 2, tx_bytes: 258_078, tx_packets: 3105, tx_errors: 3, tx_dropped: 4 },
    { interface: "eth1", rx_bytes: 12_345_678_901, rx_packets: 99, rx_errors: 0, rx_dropped: 0, tx_bytes: 5, tx_packets: 1, tx_errors: 0, tx_dropped: 0 },
  ],
  filesystems: [
    { mount: "/", device: "/dev/vda1", fstype: "ext4", size_bytes: 10 * GIB, used_bytes: 5 * GIB, available_bytes: 4 * GIB },
    { mount: "/dev", device: "devtmpfs", fstype: "devtmpfs", size_bytes: 1_024_000, used_bytes: 0, available_bytes: 1_024_000 },
    { mount: "/run", device: "tmpfs", fstype: "tmpfs", size_bytes: 209_715_200, used_bytes: 819_200, available_bytes: 208_896_000 },
    { mount: "/mnt/my data", device: "/dev/vdb1", fstype: "xfs", size_bytes: GIB, used_bytes: GIB / 2, available_bytes: GIB / 2 },
    { mount: "/srv", device: "tmpfs", fstype: "tmpfs", size_bytes: 409_600, used_bytes: 0, available_bytes: 409_600 },
    { mount: '/mnt/q"uote\\back\nnl', device: "/dev/vde", fstype: "ext4", size_bytes: 1_048_576, used_bytes: 524_288, available_bytes: 512_000 },
  ],
  processes: 3,
};

describe("get_metrics on fixture /proc files", () => {
  test("exact JSON", () => {
    const clock = fixtureOptions();
    const metrics = new ProcMetrics(clock.options);
    clock.advance(1000);
    const result = metrics.collect({ format: "json" });
    expect(result).toEqual(EXPECTED_JSON as typeof result);
    expect(METHODS.get_metrics.result.parse(result)).toEqual(result);
  });

  test("pseudo and network filesystems are never statfs'd; 0-block and vanished mounts are left out", () => {
    const clock = fixtureOptions();
    new ProcMetrics(clock.options).collect({ format: "json" });
    expect(clock.statfsCalls).not.toContain("/proc");
    expect(clock.statfsCalls).not.toContain("/sys");
    expect(clock.statfsCalls).not.toContain("/sys/fs/cgroup");
    expect(clock.statfsCalls).not.toContain("/mnt/nfs");
    expect(clock.statfsCalls).toContain("/var/lib/lxcfs");
    expect(clock.statfsCalls).toContain("/gone");
  });

  test("without /sys, partitions are told apart by name with the same result", () => {
    const clock = fixtureOptions({ sysRoot: join(FIXTURE_PROC, "no-such-sys") });
    const result = new ProcMetrics(clock.options).collectJson();
    expect(result.disks).toEqual(EXPECTED_JSON.disks);
  });

  test("no /proc at all: construction still succeeds (Windows builds construct it too); collect is OPERATION_FAILED", () => {
    const metrics = new ProcMetrics({ procRoot: join(FIXTURE_PROC, "no-such-proc") });
    let error: unknown;
    try {
      metrics.collect({ format: "json" });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(RpcError);
    expect((error as RpcError).code).toBe(-32000);
    expect((error as RpcError).data).toEqual({ errno: "ENOENT" });
  });

  test("meminfo without MemAvailable (Linux < 3.14) estimates it as free + buffers + cached", () => {
    const { memory } = parseMeminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n");
    expect(memory).toEqual({ total_bytes: 1_024_000, available_bytes: 409_600, used_bytes: 614_400, free_bytes: 102_400, buffers_bytes: 51_200, cached_bytes: 256_000 });
  });
});

describe("CPU usage from /proc/stat deltas", () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  function tempProc(): string {
    const dir = mkdtempSync(join(tmpdir(), "kma-metrics-"));
    dirs.push(dir);
    cpSync(FIXTURE_PROC, dir, { recursive: true });
    return dir;
  }

  const stat = (cpu: number[], cpu0: number[], cpu1: number[]) =>
    `cpu  ${cpu.join(" ")} 0 0\ncpu0 ${cpu0.join(" ")} 0 0\ncpu1 ${cpu1.join(" ")} 0 0\nctxt 1\n`;

  test("usage_percent is the busy share between consecutive samples; calls < 50 ms apart reuse the last window", () => {
    const proc = tempProc();
    const clock = fixtureOptions({ procRoot: proc });
    const metrics = new ProcMetrics(clock.options); // First sample: the fixture.

    // cpu0: +60 user +20 system +20 idle → 80 % busy; cpu1: +80 idle +20 iowait → 0 %; all: 80 / 200 → 40 %.
    writeFileSync(join(proc, "stat"), stat([1060, 20, 320, 5100, 120, 0, 50, 10], [560, 10, 170, 2520, 50, 0, 25, 5], [500, 10, 150, 2580, 70, 0, 25, 5]));
    clock.advance(1000);
    const first = metrics.collectJson();
    expect(first.cpu.total.usage_percent).toBe(40);
    expect(first.cpu.per_cpu.map((c) => c.usage_percent)).toEqual([80, 0]);
    expect(first.cpu.total.user).toBe(10.6);

    // 10 ms later: the counters moved, but the window is too short — the last result stands, the times are fresh.
    writeFileSync(join(proc, "stat"), stat([1070, 20, 320, 5100, 120, 0, 50, 10], [570, 10, 170, 2520, 50, 0, 25, 5], [500, 10, 150, 2580, 70, 0, 25, 5]));
    clock.advance(10);
    const quick = metrics.collectJson();
    expect(quick.cpu.total.usage_percent).toBe(40);
    expect(quick.cpu.per_cpu.map((c) => c.usage_percent)).toEqual([80, 0]);
    expect(quick.cpu.total.user).toBe(10.7);

    // The next window runs from the second sample (the quick call did not replace it):
    // all: +10+30 user, +0 idle vs 1060 → busy 70 of 70+30 idle.
    writeFileSync(join(proc, "stat"), stat([1130, 20, 320, 5130, 120, 0, 50, 10], [600, 10, 170, 2530, 50, 0, 25, 5], [530, 10, 150, 2600, 70, 0, 25, 5]));
    clock.advance(990);
    const second = metrics.collectJson();
    expect(second.cpu.total.usage_percent).toBe(70);
    expect(second.cpu.per_cpu.map((c) => c.usage_percent)).toEqual([80, 60]);
  });

  test("counters that go backwards (iowait does) never give a negative or > 100 % share", () => {
    const proc = tempProc();
    const clock = fixtureOptions({ procRoot: proc });
    const metrics = new ProcMetrics(clock.options);
    writeFileSync(join(proc, "stat"), stat([1100, 20, 300, 5000, 50, 0, 50, 10], [600, 10, 150, 2500, 0, 0, 25, 5], [500, 10, 150, 2500, 50, 0, 25, 5]));
    clock.advance(1000);
    const result = metrics.collectJson();
    expect(result.cpu.total.usage_percent).toBe(100);
    expect(result.cpu.per_cpu.map((c) => c.usage_percent)).toEqual([100, 0]);
    expect(METHODS.get_metrics.result.safeParse(result).success).toBe(true);
  });

  test("a CPU that appears between samples (hotplug) reports 0 until it has a window", () => {
    const proc = tempProc();
    const clock = fixtureOptions({ procRoot: proc });
    const metrics = new ProcMetrics(clock.options);
    writeFileSync(join(proc, "stat"), `${stat([1000, 20, 300, 5000, 100, 0, 50, 10], [500, 10, 150, 2500, 50, 0, 25, 5], [500, 10, 150, 2500, 50, 0, 25, 5])}cpu2 7 0 0 3 0 0 0 0 0 0\n`.replace("ctxt 1\n", ""));
    clock.advance(1000);
    const result = metrics.collectJson();
    expect(result.cpu.per_cpu.map((c) => [c.cpu, c.usage_percent])).toEqual([["0", 0], ["1", 0], ["2", 0]]);
  });
});

// ---------------------------------------------------------------- Prometheus text exposition format 0.0.4

describe("prometheus format", () => {
  test("the fixture scrape parses, with escaped labels that round-trip", () => {
    const clock = fixtureOptions();
    const metrics = new ProcMetrics(clock.options);
    const result = metrics.collect({ format: "prometheus" });
    expect(result.format).toBe("prometheus");
    if (result.format !== "prometheus") return;
    expect(METHODS.get_metrics.result.parse(result)).toEqual(result);
    const { samples, types } = checkConventions(result.text);
    const get = (name: string, labels: Record<string, string> = {}) =>
      samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;

    expect(types.get("kma_cpu_seconds_total")).toBe("counter");
    expect(get("kma_cpu_seconds_total", { cpu: "1", mode: "idle" })).toBe(25);
    expect(samples.filter((s) => s.name === "kma_cpu_seconds_total")).toHaveLength(16);
    expect(get("kma_memory_used_bytes")).toBe(512_000 * 1024);
    expect(get("kma_load1")).toBe(0.52);
    expect(get("kma_tasks")).toBe(421);
    expect(get("kma_disk_read_bytes_total", { device: "vda" })).toBe(20_000 * 512);
    expect(get("kma_disk_io_time_seconds_total", { device: "vda" })).toBe(1.2);
    expect(get("kma_network_receive_bytes_total", { interface: "eth1" })).toBe(12_345_678_901);
    expect(get("kma_filesystem_size_bytes", { mountpoint: "/mnt/my data" })).toBe(GIB);
    expect(get("kma_filesystem_avail_bytes", { mountpoint: '/mnt/q"uote\\back\nnl', device: "/dev/vde" })).toBe(512_000);
    expect(get("kma_uptime_seconds")).toBe(12345.67);
    expect(get("kma_processes")).toBe(3);
    expect(result.text).toContain('mountpoint="/mnt/q\\"uote\\\\back\\nnl"');
  });

  test("families with no samples (no disks, no network) are left out entirely", () => {
    const clock = fixtureOptions();
    const json = new ProcMetrics(clock.options).collectJson();
    const text = toPrometheus({ ...json, disks: [], network: [], filesystems: [] });
    const { types } = checkConventions(text);
    expect([...types.keys()].some((name) => name.startsWith("kma_disk_") || name.startsWith("kma_network_") || name.startsWith("kma_filesystem_"))).toBe(false);
  });

  test("the parser itself rejects what Prometheus rejects", () => {
    const bad = [
      "kma_x 1\n", // no TYPE
      "# TYPE kma_x gauge\nkma_x{a=\"b\\q\"} 1\n", // bad escape
      "# TYPE kma_x gauge\n# TYPE kma_x gauge\nkma_x 1\n", // TYPE twice
      "# TYPE kma_x gauge\nkma_x one\n", // not a float
      "# TYPE 1kma gauge\n", // bad name
      "# TYPE kma_x gauge\nkma_x 1", // no final newline
    ];
    for (const text of bad) expect(() => parseExposition(text)).toThrow();
    expect(parseExposition('# TYPE kma_x gauge\nkma_x{a="\\"\\\\\\n"} -1.5e3\n').samples[0]).toEqual({ name: "kma_x", labels: { a: '"\\\n' }, value: -1500 });
  });
});

describe("this machine's /proc", () => {
  test("gives a schema-valid JSON result and a valid scrape", async () => {
    const metrics = new ProcMetrics();
    await Bun.sleep(60);
    const json = metrics.collect({ format: "json" });
    expect(METHODS.get_metrics.result.parse(json)).toEqual(json);
    if (json.format !== "json") throw new Error("expected json");
    expect(json.cpu.per_cpu.length).toBeGreaterThan(0);
    expect(json.memory.total_bytes).toBeGreaterThan(0);
    expect(json.processes).toBeGreaterThan(0);
    expect(json.filesystems.some((f) => f.mount === "/")).toBe(true);
    const prom = metrics.collect({ format: "prometheus" });
    if (prom.format !== "prometheus") throw new Error("expected prometheus");
    checkConventions(prom.text);
  });
});
