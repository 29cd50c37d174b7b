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
 * Adding a comparison: append to CASES a latencyCase(...) or throughputCase(...) with our call
 * (JSON-RPC method + params) and qemu-ga's (execute + arguments), or any object with
 * ours(endpoint), theirs(endpoint) and rows(oursSample, theirsSample).
 */
import { existsSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import { binaryPath } from "./build.ts";
import { median, percentile, pipelined, rssMiB, sequential, type LatencySample, type ThroughputSample } from "./bench/measure.ts";
import { choosePlacement, pinSelf, QEMU_GA, Servers } from "./bench/procs.ts";
import type { Endpoint } from "./bench/raw-conn.ts";
import { consoleTable, describeEnvironment, generatedSection, ratio, writeBenchmarksDoc, type Row } from "./bench/report.ts";

const SCALE = Number(process.env.BENCH_SCALE ?? 1) || 1;
const n = (count: number) => Math.max(10, Math.round(count * SCALE));
const LATENCY = { warmup: n(1000), count: n(3000) };
const PIPELINE = { window: 64, warmup: n(2000), repeats: 5 };

/**
 * One comparison: ours() measures kvm-manager-agent, theirs() measures qemu-ga (skipped when
 * it is not installed), rows() turns the two samples into table rows.
 */
interface Case<S> {
  name: string;
  ours(ep: Endpoint): Promise<S>;
  theirs(ep: Endpoint): Promise<S>;
  rows(ours: S, theirs: S | null): Row[];
}

function latencyCase(name: string, ourCall: object, theirCall: object): Case<LatencySample> {
  return {
    name,
    ours: (ep) => sequential(ep, ourCall, LATENCY.count, LATENCY.warmup),
    theirs: (ep) => sequential(ep, theirCall, LATENCY.count, LATENCY.warmup),
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

async function throughput(ep: Endpoint, call: object, count: number): Promise<Throughput> {
  await pipelined(ep, call, PIPELINE.warmup, PIPELINE.window);
  const runs: ThroughputSample[] = [];
  for (let i = 0; i < PIPELINE.repeats; i++) runs.push(await pipelined(ep, call, count, PIPELINE.window));
  return {
    rps: median(runs.map((r) => r.requests / r.seconds)),
    cpuMicros: median(runs.map((r) => (r.serverCpuSeconds / r.requests) * 1e6)),
  };
}

function throughputCase(name: string, ourCall: object, theirCall: object, count: number): Case<Throughput> {
  return {
    name,
    ours: (ep) => throughput(ep, ourCall, n(count)),
    theirs: (ep) => throughput(ep, theirCall, n(count)),
    rows: (a, b) => [
      { metric: `${name} pipelined (window ${PIPELINE.window})`, ours: a.rps, theirs: b?.rps ?? null, unit: "req/s", better: "higher" },
      { metric: `${name} server CPU per request`, ours: a.cpuMicros, theirs: b?.cpuMicros ?? null, unit: "µs", better: "lower", decimals: 1 },
    ],
  };
}

const PING = { method: "ping", params: {} };
const GET_INFO = { method: "get_info", params: {} };

// Each case has its own sample type; `any` here only erases it in the list.
const CASES: Case<any>[] = [
  rssCase("server RSS at start (idle, connected)"),
  latencyCase("ping / guest-ping", PING, { execute: "guest-ping" }),
  latencyCase("get_info / guest-info", GET_INFO, { execute: "guest-info" }),
  throughputCase("ping / guest-ping", PING, { execute: "guest-ping" }, 20_000),
  throughputCase("get_info / guest-info", GET_INFO, { execute: "guest-info" }, 10_000),
  // Later: file throughput, exec, ... (see the to-do sections of docs/benchmarks.md).
  rssCase("server RSS after the run"),
];

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
  const notes: string[] = [
    `Sequential: ${LATENCY.count} timed calls after ${LATENCY.warmup} warm-up calls, one connection per server.`,
    `Pipelined: ${PIPELINE.window} requests outstanding, median of ${PIPELINE.repeats} runs after ${PIPELINE.warmup} warm-up requests.`,
    "Server CPU per request: user+system time of the server process (all threads) during the pipelined runs, divided by requests; 10 ms tick resolution.",
    "The agent runs with its audit log on (one JSON line per call to a file).",
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
  const cpuCount = cpus().length;
  const placement = choosePlacement(process.env.BENCH_PIN, cpuCount);
  if (placement !== "none") {
    pinSelf(0);
    servers.serverCpu = placement === "same" ? 0 : cpuCount - 1;
  }
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

  const eps: { ours: Endpoint | null; theirs: Endpoint | null } = { ours: null, theirs: null };
  try {
    const started = Date.now();
    const agent = servers.startAgent(binary);
    const qga = haveQga ? servers.startQga() : null;
    const ourEp = await servers.connect(agent);
    eps.ours = ourEp;
    eps.theirs = qga ? await servers.connect(qga) : null;
    console.log(`bench: kvm-manager-agent pid ${agent.proc.pid}${qga ? `, qemu-ga pid ${qga.proc.pid}` : ""}; temp dir ${servers.dir}`);

    const rows: Row[] = [];
    for (const c of CASES) {
      const t0 = Date.now();
      const ours = await c.ours(ourEp);
      const theirs = eps.theirs ? await c.theirs(eps.theirs) : null;
      rows.push(...c.rows(ours, theirs));
      console.log(`bench: ${c.name} done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
    const auditLines = (await Bun.file(join(servers.dir, "audit.jsonl")).text()).split("\n").length - 1;
    notes.push(`Audit lines written by the agent during this run: ${auditLines} (flushed every 200 ms).`);

    const env = describeEnvironment(qgaVersion);
    console.log(`\n${env.date}  ${env.machine}  ${env.cpuModel} (${env.cores} cores)  Bun ${env.bun}  ${env.qemuGa}\n`);
    console.log(consoleTable(rows));
    console.log("\nratio: latency/CPU/memory = qemu-ga / ours, throughput = ours / qemu-ga; >1 means kvm-manager-agent is better.");
    const doc = join(import.meta.dir, "..", "docs", "benchmarks.md");
    writeBenchmarksDoc(doc, generatedSection(env, rows, notes));
    console.log(`bench: wrote ${doc} (total ${((Date.now() - started) / 1000).toFixed(1)} s)`);

    const worse = rows.filter((r) => {
      const x = ratio(r);
      return x !== null && x < 1 && (r.metric.includes("ping") || r.better === "higher");
    });
    for (const r of worse) console.log(`bench: NOTE kvm-manager-agent is behind qemu-ga on "${r.metric}" (ratio ${ratio(r)!.toFixed(2)})`);
    return 0;
  } finally {
    eps.ours?.conn.close();
    eps.theirs?.conn.close();
    servers.cleanup();
  }
}

process.exitCode = await main();
