/**
 * Benchmark: kvm-manager-agent vs Debian's qemu-ga, same machine, same client.
 *
 * Run:   npm run bench          (builds dist/ first, then runs this file)
 *        bun scripts/bench.ts   (uses the existing dist/kvm-manager-agent-linux-x64)
 *        BENCH_SCALE=0.2 bun scripts/bench.ts   (fewer calls, for a quick check)
 *        BENCH_QEMU_GA=/path/to/qemu-ga          (baseline binary; default /usr/sbin/qemu-ga)
 *        BENCH_PIN=same|split|none              (CPU placement; default split: client on CPU 0,
 *                                               servers on the last CPU; see scripts/bench/procs.ts)
 *
 * What it does, in one run (well under a minute):
 *  1. Starts dist/kvm-manager-agent-linux-x64 --transport unix-listen in a temp dir, with a config
 *     that keeps the audit log ON (audit_file in the temp dir, as in production) and level "warn".
 *  2. Starts /usr/sbin/qemu-ga -m unix-listen with its state/pid/log files in the same temp dir
 *     (if qemu-ga is not installed, says so and benchmarks ours only).
 *  3. Drives both with the same minimal raw client (scripts/bench/raw-conn.ts: Bun.connect, one
 *     JSON.parse per reply; our AgentClient is not used for timing). Every reply is checked: ours
 *     must be a JSON-RPC result for its id, qemu-ga's must carry "return".
 *       - sequential: p50/p99 round trip of ping vs guest-ping and get_info vs guest-info
 *       - pipelined: requests/second with a window of requests outstanding, plus the server's
 *         CPU time per request (from /proc/PID/stat)
 *       - resident memory of each server after the run
 *  4. Prints a table and rewrites the generated block of docs/benchmarks.md (sections outside
 *     the block are kept). Ratios read so that >1 means kvm-manager-agent is better.
 *  5. Stops both servers by PID (also on failure and SIGINT) and removes the temp dir.
 *
 * Adding a comparison: append to HOST_CASES or VM_CASES a latencyCase(...) or throughputCase(...) with our call
 * (JSON-RPC method + params) and qemu-ga's (execute + arguments), or any object with
 * ours(endpoint), theirs(endpoint) and rows(oursSample, theirsSample).
 */
// First: it may restart the bench with its allocator set (see the file).
import "./bench/client-allocator.ts";
import { existsSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import { binaryPath } from "./build.ts";
import { median, percentile, pipelined, rssMiB, sequential, type LatencySample, type ThroughputSample } from "./bench/measure.ts";
import { choosePlacement, pinSelf, QEMU_GA, Servers, type Placement } from "./bench/procs.ts";
import type { Endpoint } from "./bench/raw-conn.ts";
import { CHART_FILE, ratioChart } from "./bench/chart.ts";
import { consoleTable, describeEnvironment, generatedSection, ratio, writeBenchmarksDoc, type Row, type Section } from "./bench/report.ts";
import { startVmTarget } from "./bench/vm-target.ts";
import { execOnce, fileRoundTrip, guestRssMiB, type Transfer } from "./bench/workloads.ts";

const SCALE = Number(process.env.BENCH_SCALE ?? 1) || 1;
const n = (count: number) => Math.max(10, Math.round(count * SCALE));
/**
 * Host loopback calls are cheap; inside the TCG-emulated VM each costs ~10× more, so fewer timed
 * calls there. Sequential calls, exec among them, warm up over 1000 calls everywhere: the agent's JIT
 * compiles a path's functions within about its first 1000 calls (measured for exec: 80 compiles
 * in the first 250 calls, 12 in calls 750-1000, about one per 250 calls after; in the VM, ping's
 * p99 was 7.4 ms over calls 200-1200 and 1.4-2.3 ms after), and a compile shares the agent's CPU
 * with the calls. qemu-ga gets the same warm-up.
 */
const HOST = { latency: { warmup: n(1000), count: n(3000) }, pipeline: { window: 64, warmup: n(2000), repeats: 5 } };
const VM = { latency: { warmup: n(1000), count: n(1000) }, pipeline: { window: 64, warmup: n(500), repeats: 3 } };
type Scale = typeof HOST;

/**
 * One comparison: ours() measures kvm-manager-agent, theirs() measures qemu-ga (skipped when
 * it is not installed), rows() turns the two samples into table rows.
 */
interface Case<S> {
  name: string;
  ours(ep: Endpoint): Promise<S>;
  theirs(ep: Endpoint): Promise<S>;
  rows(ours: S, theirs: S | null): Row[];
  /** Measured `count` times, ours and theirs taking turns (a slow spell of the machine then falls on both), and merged. */
  rounds?: { count: number; merge(samples: S[]): S; /** One round's figures, for the log: how far the rounds spread. */ show(sample: S): string };
  /** Run once per side, untimed, before the measured calls. */
  warmup?(ep: Endpoint): Promise<unknown>;
}

function latencyCase(scale: Scale, name: string, ourCall: object, theirCall: object): Case<LatencySample> {
  const { count, warmup } = scale.latency;
  return {
    name,
    ours: (ep) => sequential(ep, ourCall, count, warmup),
    theirs: (ep) => sequential(ep, theirCall, count, warmup),
    rows: (a, b) =>
      [50, 99].map((p) => ({
        metric: `${name} sequential p${p}`,
        ours: percentile(a.micros, p),
        theirs: b ? percentile(b.micros, p) : null,
        unit: "µs",
        better: "lower",
        decimals: 1,
      })),
  };
}

interface Throughput {
  rps: number;
  cpuMicros: number;
}

async function throughput(scale: Scale, ep: Endpoint, call: object, count: number): Promise<Throughput> {
  const { warmup, window, repeats } = scale.pipeline;
  await pipelined(ep, call, warmup, window);
  const runs: ThroughputSample[] = [];
  for (let i = 0; i < repeats; i++) runs.push(await pipelined(ep, call, count, window));
  return {
    rps: median(runs.map((r) => r.requests / r.seconds)),
    cpuMicros: median(runs.map((r) => (r.serverCpuSeconds / r.requests) * 1e6)),
  };
}

function throughputCase(scale: Scale, name: string, ourCall: object, theirCall: object, count: number, cpuLabel = "server CPU"): Case<Throughput> {
  return {
    name,
    ours: (ep) => throughput(scale, ep, ourCall, n(count)),
    theirs: (ep) => throughput(scale, ep, theirCall, n(count)),
    rows: (a, b) => [
      { metric: `${name} pipelined (window ${scale.pipeline.window})`, ours: a.rps, theirs: b?.rps ?? null, unit: "req/s", better: "higher" },
      { metric: `${name} ${cpuLabel} per request`, ours: a.cpuMicros, theirs: b?.cpuMicros ?? null, unit: "µs", better: "lower", decimals: 1 },
    ],
  };
}

const PING = { method: "ping", params: {} };
const GET_INFO = { method: "get_info", params: {} };

/** exec of `true` start to exit status, one after the other: a sequential case of its own. */
function execCase(scale: Scale, name: string): Case<LatencySample> {
  const { warmup, count } = scale.latency;
  const measure = async (ep: Endpoint) => {
    for (let i = 0; i < warmup; i++) await execOnce(ep);
    const micros: number[] = [];
    for (let i = 0; i < count; i++) {
      const t0 = performance.now();
      await execOnce(ep);
      micros.push((performance.now() - t0) * 1000);
    }
    return { micros: micros.sort((a, b) => a - b) };
  };
  return {
    name,
    ours: measure,
    theirs: measure,
    rows: (a, b) =>
      [50, 99].map((p) => ({ metric: `${name} p${p}`, ours: percentile(a.micros, p), theirs: b ? percentile(b.micros, p) : null, unit: "µs", better: "lower", decimals: 0 })),
  };
}

/**
 * Round trips per side in the file case: one run of either agent moved by as much as 2x between bench runs on this
 * machine, and within one run the rounds of one side spread by a third (in the VM, reads of 17.9-22.2 MiB/s for ours
 * and 7.4-10.5 for qemu-ga's in one run), so the median of three was still one slow round away from another figure.
 */
const FILE_REPEATS = 5;
/**
 * An untimed round trip of this size per side first, as the sequential cases warm up: each agent's first transfer
 * paid for its JIT and for growing its memory to a transfer's working set (ours: 64 MiB writes at 85-90 MiB/s
 * first, 135-190 after).
 */
const FILE_WARMUP_MIB = 16;

/**
 * Write then read back 64 MiB, each side on its endpoint's protocol (see TRANSFER in bench/workloads.ts): upload_* / copy_from_guest
 * natively, guest-file-open/write/read/close over QGA; a FILE_WARMUP_MIB round trip per side, then FILE_REPEATS rounds, the two sides taking turns, the median time of each direction.
 * `dir` is where the files go, on the machine the agents run on.
 */
function fileCase(dir: string, names: { write: string; read: string }): Case<Transfer> {
  const mib = 64;
  const transfer = (ep: Endpoint, size = mib): Promise<Transfer> => fileRoundTrip(ep, `${dir}/bench-${ep.label.replace(/\W+/g, "-")}.bin`, size * 1024 * 1024);
  const median = (values: number[]) => values.sort((a, b) => a - b)[values.length >> 1]!;
  return {
    name: `file write/read ${mib} MiB`,
    ours: transfer,
    theirs: transfer,
    warmup: (ep) => transfer(ep, FILE_WARMUP_MIB),
    rounds: {
      count: FILE_REPEATS,
      merge: (runs) => ({ writeSeconds: median(runs.map((run) => run.writeSeconds)), readSeconds: median(runs.map((run) => run.readSeconds)) }),
      show: (run) => `write ${(mib / run.writeSeconds).toFixed(1)} read ${(mib / run.readSeconds).toFixed(1)} MiB/s`,
    },
    rows: (a, b) => [
      { metric: `file write ${mib} MiB (${names.write})`, ours: mib / a.writeSeconds, theirs: b ? mib / b.writeSeconds : null, unit: "MiB/s", better: "higher", decimals: 1 },
      { metric: `file read ${mib} MiB (${names.read})`, ours: mib / a.readSeconds, theirs: b ? mib / b.readSeconds : null, unit: "MiB/s", better: "higher", decimals: 1 },
    ],
  };
}

const NATIVE_VS_QGA_FILES = { write: "upload_* / guest-file-write", read: "copy_from_guest / guest-file-read" };
const QGA_FILES = { write: "guest-file-write", read: "guest-file-read" };
const GUEST_PING = { execute: "guest-ping" };

// Each case has its own sample type; `any` here only erases it in the list.
const hostCases = (dir: string): Case<any>[] => [
  rssCase("server RSS at start (idle, connected)"),
  latencyCase(HOST, "ping / guest-ping", PING, { execute: "guest-ping" }),
  latencyCase(HOST, "get_info / guest-info", GET_INFO, { execute: "guest-info" }),
  throughputCase(HOST, "ping / guest-ping", PING, { execute: "guest-ping" }, 20_000),
  throughputCase(HOST, "get_info / guest-info", GET_INFO, { execute: "guest-info" }, 10_000),
  execCase(HOST, "exec true / guest-exec + guest-exec-status"),
  fileCase(dir, NATIVE_VS_QGA_FILES),
  rssCase("server RSS after the run"),
];

/** The same qemu-ga, against our agent's QGA port: what libvirt, Proxmox and KubeVirt see when they switch agents. */
const hostQgaCases = (dir: string): Case<any>[] => [
  latencyCase(HOST, "guest-ping", GUEST_PING, GUEST_PING),
  throughputCase(HOST, "guest-ping", GUEST_PING, GUEST_PING, 20_000),
  execCase(HOST, "guest-exec + guest-exec-status of true"),
  fileCase(dir, QGA_FILES),
];

const VM_CASES: Case<any>[] = [
  guestRssCase("agent RSS in the guest, idle"),
  latencyCase(VM, "ping / guest-ping", PING, { execute: "guest-ping" }),
  throughputCase(VM, "ping / guest-ping", PING, { execute: "guest-ping" }, 5_000, "VM CPU (QEMU process)"),
  execCase(VM, "exec true / guest-exec + guest-exec-status"),
  fileCase("/tmp", NATIVE_VS_QGA_FILES),
  guestRssCase("agent RSS in the guest after the run"),
];

function guestRssCase(metric: string): Case<number> {
  return {
    name: metric,
    ours: guestRssMiB,
    theirs: guestRssMiB,
    rows: (a, b) => [{ metric, ours: a, theirs: b, unit: "MiB", better: "lower", decimals: 1 }],
  };
}

/** Runs each case against both endpoints, one after the other. */
async function runCases(section: string, cases: Case<any>[], ours: Endpoint, theirs: Endpoint | null): Promise<Row[]> {
  const rows: Row[] = [];
  for (const c of cases) {
    const t0 = Date.now();
    const a: unknown[] = [];
    const b: unknown[] = [];
    if (c.warmup) {
      await c.warmup(ours);
      if (theirs) await c.warmup(theirs);
    }
    for (let round = 0; round < (c.rounds?.count ?? 1); round++) {
      a.push(await c.ours(ours));
      if (theirs) b.push(await c.theirs(theirs));
    }
    if (c.rounds) {
      const show = (samples: unknown[]) => samples.map((sample) => c.rounds!.show(sample)).join("; ");
      console.log(`bench: [${section}] ${c.name} rounds: ours ${show(a)}${theirs ? ` | ${theirs.label} ${show(b)}` : ""}`);
    }
    const merge = c.rounds?.merge ?? ((samples: unknown[]) => samples[0]);
    rows.push(...c.rows(merge(a), theirs ? merge(b) : null));
    console.log(`bench: [${section}] ${c.name} done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
  return rows;
}

function rssCase(metric: string): Case<number> {
  return {
    name: metric,
    ours: async (ep) => rssMiB(ep.pid),
    theirs: async (ep) => rssMiB(ep.pid),
    rows: (a, b) => [{ metric, ours: a, theirs: b, unit: "MiB", better: "lower", decimals: 1 }],
  };
}

async function main(): Promise<number> {
  const binary = binaryPath();
  if (!existsSync(binary)) {
    console.error(`bench: ${binary} is missing; run \`npm run bench\` (it builds first) or \`bun scripts/build.ts\``);
    return 2;
  }
  const haveQga = existsSync(QEMU_GA);
  const qgaVersion = haveQga ? Bun.spawnSync([QEMU_GA, "-V"]).stdout.toString().split("\n")[0]!.trim() : "not installed";
  const started = Date.now();
  const cpuCount = cpus().length;
  const placement = choosePlacement(process.env.BENCH_PIN, cpuCount);
  // The client on CPU 0, every server (each agent, and QEMU for the VM) on the server CPU.
  const serverCpu = placement === "none" ? null : placement === "same" ? 0 : cpuCount - 1;
  if (placement !== "none") pinSelf(0);
  const sections: Section[] = await hostSections(binary, haveQga, placement, serverCpu);
  if (process.env.BENCH_VM === "0") console.warn("bench: BENCH_VM=0: skipping the in-VM section");
  else if (!haveQga || !existsSync("/usr/bin/qemu-system-x86_64")) console.warn("bench: NOTE qemu-system-x86 or qemu-guest-agent missing: skipping the in-VM section");
  else sections.push(await vmSection(binary, serverCpu));

  const env = describeEnvironment(qgaVersion);
  console.log(`\n${env.date}  ${env.machine}  ${env.cpuModel} (${env.cores} cores)  Bun ${env.bun}  ${env.qemuGa}`);
  for (const section of sections) console.log(`\n${section.title}\n${consoleTable(section.rows)}`);
  console.log("\nratio: latency/CPU/memory = qemu-ga / ours, throughput = ours / qemu-ga; >1 means kvm-manager-agent is better.");
  const docs = join(import.meta.dir, "..", "docs");
  writeFileSync(join(docs, CHART_FILE), ratioChart(sections));
  writeBenchmarksDoc(join(docs, "benchmarks.md"), generatedSection(env, sections));
  console.log(`bench: wrote docs/benchmarks.md and docs/${CHART_FILE} (total ${((Date.now() - started) / 1000).toFixed(1)} s)`);
  for (const section of sections) {
    for (const r of section.rows) {
      const x = ratio(r);
      if (x !== null && x < 1) console.log(`bench: NOTE [${section.title}] kvm-manager-agent is behind qemu-ga on "${r.metric}" (ratio ${x.toFixed(2)})`);
    }
  }
  return 0;
}

/** Both agents as processes on this machine, on unix sockets: our protocol against qemu-ga's, then qemu-ga's on both. */
async function hostSections(binary: string, haveQga: boolean, placement: Placement, serverCpu: number | null): Promise<Section[]> {
  const notes: string[] = [
    `Sequential (exec too): ${HOST.latency.count} timed calls after ${HOST.latency.warmup} warm-up calls, one connection per server.`,
    `Pipelined: ${HOST.pipeline.window} requests outstanding, median of ${HOST.pipeline.repeats} runs after ${HOST.pipeline.warmup} warm-up requests.`,
    "Server CPU per request: user+system time of the server process (all threads) during the pipelined runs, divided by requests; 10 ms tick resolution.",
    "The agent runs with its audit log on (one JSON line per call to a file).",
    `Files: 64 MiB written then read back with 4 MiB in flight on both sides, checked by SHA-256: ours as our client moves files (upload_chunk / copy_from_guest, 2 MiB chunks, two in flight), qemu-ga with 4 MiB guest-file-write / guest-file-read requests one at a time, as hosts drive it. One untimed ${FILE_WARMUP_MIB} MiB round trip per side first, then the median of ${FILE_REPEATS} round trips per side, ours and qemu-ga's taking turns. The client collects its garbage before each timed direction and runs with its allocator never giving memory back (scripts/bench/client-allocator.ts), so its own page faults are timed on neither side.`,
  ];
  if (haveQga) {
    notes.push(
      "qemu-ga reports every command to syslog(3) (strace: socket+connect+close per call), its equivalent of the audit line; its -l log file gets only errors at the default level." +
        (existsSync("/dev/log") ? "" : " There is no /dev/log on this machine, so each syslog attempt fails at connect(); with journald listening qemu-ga would pay more per call."),
      "Reply sizes differ: guest-info lists qemu-ga's ~90 commands (~3.2 kB per reply), get_info carries OS identity and addresses (~0.8 kB); the client parses every reply.",
    );
  } else {
    console.warn(`bench: NOTE ${QEMU_GA} is not installed (apt-get install qemu-guest-agent); benchmarking kvm-manager-agent only.`);
    notes.push(`qemu-ga was not installed on this machine (${QEMU_GA} missing): only our numbers were measured.`);
  }
  const servers = new Servers();
  servers.serverCpu = serverCpu;
  notes.unshift(
    placement === "none"
      ? "CPU placement: not pinned (BENCH_PIN=none or taskset missing); sequential latency then varies with where the scheduler puts client and server."
      : `CPU placement (BENCH_PIN=${placement}): bench client on CPU 0, each server on CPU ${servers.serverCpu} (taskset).` +
          (placement === "split" ? " Sequential latency includes one cross-CPU wakeup each way, as between host and guest." : " No cross-CPU wakeups: sequential latency is the software path."),
  );
  const onSignal = (signal: NodeJS.Signals) => {
    servers.cleanup();
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.on("exit", () => servers.cleanup());

  const eps: { ours: Endpoint | null; oursQga: Endpoint | null; theirs: Endpoint | null } = { ours: null, oursQga: null, theirs: null };
  try {
    const agent = servers.startAgent(binary);
    const qga = haveQga ? servers.startQga() : null;
    eps.ours = await servers.connect(agent);
    eps.oursQga = await servers.connect(servers.qgaPortOf(agent));
    eps.theirs = qga ? await servers.connect(qga) : null;
    console.log(`bench: kvm-manager-agent pid ${agent.proc.pid}${qga ? `, qemu-ga pid ${qga.proc.pid}` : ""}; temp dir ${servers.dir}`);
    const rows = await runCases("host", hostCases(servers.dir), eps.ours, eps.theirs);
    const auditLines = (await Bun.file(join(servers.dir, "audit.jsonl")).text()).split("\n").length - 1;
    notes.push(`Audit lines written by the agent during this run: ${auditLines} (flushed every 200 ms).`);
    const qgaRows = await runCases("host-qga", hostQgaCases(servers.dir), eps.oursQga, eps.theirs);
    const qgaNotes = [
      "The same run, the same qemu-ga process and client; ours is the same agent process, on its QGA port (`[qga] type = \"unix-listen\"`), so both sides get identical requests: what libvirt, Proxmox or KubeVirt would see after switching agents.",
      "guest-exec: guest-exec of /bin/true with capture-output, then guest-exec-status polled back to back until exited. Files: guest-file-open, 4 MiB guest-file-write/guest-file-read chunks one at a time, guest-file-close; SHA-256 checked.",
    ];
    return [
      { title: "Host loopback: kvm-manager-agent vs qemu-ga (unix socket)", rows, notes },
      { title: "Host loopback, QGA protocol on both sides: kvm-manager-agent's QGA port vs qemu-ga", rows: qgaRows, notes: qgaNotes },
    ];
  } finally {
    eps.ours?.conn.close();
    eps.oursQga?.conn.close();
    eps.theirs?.conn.close();
    servers.cleanup();
  }
}

/** Both agents inside one TCG guest, over real virtio-serial ports. */
async function vmSection(binary: string, serverCpu: number | null): Promise<Section> {
  const target = await startVmTarget(binary, serverCpu === null ? undefined : String(serverCpu));
  try {
    console.log(`bench: VM up (qemu pid ${target.vm.pid}); first answers after ${target.firstAnswerMs.ours.toFixed(0)} / ${target.firstAnswerMs.theirs.toFixed(0)} ms`);
    const rows: Row[] = [
      {
        metric: "QEMU start to first answer (boot + agent start-up)",
        ours: target.firstAnswerMs.ours,
        theirs: target.firstAnswerMs.theirs,
        unit: "ms",
        better: "lower",
      },
      ...(await runCases("vm", VM_CASES, target.ours, target.theirs)),
    ];
    const notes = [
      "One guest (TCG, 1 vCPU, `-cpu max`, 512 MiB; Debian cloud kernel, busybox initramfs) runs both agents, started by its init at the same moment: ours on `org.kvmmanager.agent.0`, qemu-ga on `org.qemu.guest_agent.0`. The bench drives both through QEMU's chardev unix sockets, i.e. over real virtio-serial.",
      serverCpu === null
        ? "CPU placement: not pinned; QEMU and the bench client run where the scheduler puts them."
        : `CPU placement: QEMU (its vCPU and I/O threads) on CPU ${serverCpu}, the bench client on CPU 0.`,
      `Sequential (exec too): ${VM.latency.count} timed calls after ${VM.latency.warmup} warm-up calls. Pipelined: ${VM.pipeline.window} outstanding, median of ${VM.pipeline.repeats} runs.`,
      "VM CPU per request is the QEMU process's CPU time (guest and emulation) over the pipelined runs; under TCG every guest instruction is emulated, so absolute numbers are far above what KVM gives, the ratio is what compares.",
      "First answer: from QEMU's start until each agent answered its first request (our resync handshake, qemu-ga's guest-sync); the boot is shared, so the difference is the agents' own start-up.",
      `Files: 64 MiB with 4 MiB in flight on both sides, every transfer checked by SHA-256, one untimed ${FILE_WARMUP_MIB} MiB round trip per side, then the median of ${FILE_REPEATS} round trips per side (taking turns): ours as our client moves files (2 MiB chunks, two in flight), qemu-ga with 4 MiB requests one at a time. Ours computes a SHA-256 of every chunk it returns (copy_from_guest answers with one) and of every byte it receives (upload_commit checks it); qemu-ga does neither. Per 2 MiB in this guest (a script run by our binary as bun): SHA-256 40-42 ms, base64 encoding 13 ms, decoding 10-11 ms (straight from the frame's bytes, in JavaScript: the native decode of a string took 17-19 ms, and making the string 5-14 ms more). A virtio-serial read returns at most one 4 KiB driver buffer and Bun's stream hands over what it has read so far (4-7 KiB on average here), so an upload chunk arrives in several hundred pieces. With two 4 MiB guest-file-write requests in flight, qemu-ga stopped answering in this VM, so qemu-ga is not pipelined.`,
    ];
    return { title: "Inside a VM: kvm-manager-agent vs qemu-ga over virtio-serial", rows, notes };
  } finally {
    target.ours.conn.close();
    target.theirs.conn.close();
    await target.vm.stop();
  }
}

process.exitCode = await main();
