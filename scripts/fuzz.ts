/**
 * The long fuzz run: `npm run fuzz -- --seconds N [--seed S]` (default 60 s).
 *
 * One compiled agent serves both protocols on unix sockets (commands that would
 * change this machine blocked on the QGA port); the loops of test/fuzz/run.ts
 * take turns on it — native payloads, lying frame headers, QGA stream pieces —
 * each round with its own seed (printed), until the time is up. Any wrong
 * reply, hang, desync or dead agent stops the run with the seed and case that
 * reproduce it (exit 1); so does RSS growing more than RSS_SLACK above its
 * level after the first round (a leak).
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { makeTempDir, startAgentProcess } from "../test/helpers/agent-process.ts";
import { QGA_FUZZ_BLOCKED } from "../test/fuzz/qga.ts";
import { Rng } from "../test/fuzz/random.ts";
import { describeStats, fuzzNativeFraming, fuzzNativeFrames, fuzzQga, FuzzFinding, type FuzzStats } from "../test/fuzz/run.ts";

const MAX_FRAME = 65_536;
const MAX_BATCH = 64;
const MIB = 1024 * 1024;
const RSS_SLACK = 96 * MIB;

const { values } = parseArgs({ options: { seconds: { type: "string", default: "60" }, seed: { type: "string" } } });
const seconds = Number(values.seconds);
if (!(seconds > 0)) throw new Error(`--seconds must be a positive number (got '${values.seconds}')`);
const baseSeed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);

const dir = makeTempDir("kma-fuzz-");
const qgaSocket = join(dir, "qga.sock");
const agent = await startAgentProcess({
  maxFrameBytes: MAX_FRAME,
  extraToml:
    `max_batch_requests = ${MAX_BATCH}\n` +
    `[qga]\ntype = "unix-listen"\npath = ${JSON.stringify(qgaSocket)}\nstate_dir = ${JSON.stringify(join(dir, "state"))}\nblock_rpcs = ${JSON.stringify(QGA_FUZZ_BLOCKED)}\n`,
});

const totals = new Map<string, FuzzStats>();
const add = (name: string, stats: FuzzStats) => {
  const total = totals.get(name) ?? { executions: 0, replies: 0, kinds: new Map() };
  total.executions += stats.executions;
  total.replies += stats.replies;
  for (const [kind, n] of stats.kinds) total.kinds.set(kind, (total.kinds.get(kind) ?? 0) + n);
  totals.set(name, total);
};

const started = Date.now();
const deadline = started + seconds * 1000;
let round = 0;
let baselineRss = 0;
let peakRss = 0;
let status = 0;
try {
  while (Date.now() < deadline) {
    const seed = baseSeed + round * 3;
    add("native frames", await fuzzNativeFrames(agent.socketPath, new Rng(seed), { maxFrame: MAX_FRAME, maxBatch: MAX_BATCH }, { count: 5_000, deadline }));
    add("native framing", await fuzzNativeFraming(agent.socketPath, new Rng(seed + 1), MAX_FRAME, { count: 200, deadline }));
    add("QGA stream", await fuzzQga(qgaSocket, new Rng(seed + 2), { count: 5_000, deadline }));
    const rss = agent.rss();
    peakRss = Math.max(peakRss, rss);
    if (round === 0) baselineRss = rss;
    else if (rss > baselineRss + RSS_SLACK) throw new FuzzFinding(`RSS grew from ${(baselineRss / MIB).toFixed(1)} to ${(rss / MIB).toFixed(1)} MiB by round ${round} (seed ${seed})`);
    if (!agent.alive()) throw new FuzzFinding(`the agent died in round ${round} (seed ${seed})`);
    round++;
    if (round % 10 === 0) console.log(`fuzz: ${((Date.now() - started) / 1000).toFixed(0)} s, ${round} rounds, RSS ${(rss / MIB).toFixed(1)} MiB`);
  }
} catch (error) {
  status = 1;
  console.error(`fuzz: FINDING (base seed ${baseSeed}, round ${round}): ${(error as Error).message}`);
  if (!agent.alive()) console.error(`fuzz: the agent exited (${agent.proc.exitCode ?? agent.proc.signalCode}); its stderr ends:\n${agent.stderr().slice(-3000)}`);
} finally {
  await agent.stop();
}
const executions = [...totals.values()].reduce((n, s) => n + s.executions, 0);
for (const [name, stats] of totals) console.log(describeStats(name, stats));
console.log(
  `fuzz: ${executions} executions in ${((Date.now() - started) / 1000).toFixed(0)} s (base seed ${baseSeed}, ${round} rounds); ` +
    `RSS after the first round ${(baselineRss / MIB).toFixed(1)} MiB, peak ${(peakRss / MIB).toFixed(1)} MiB; ${status === 0 ? "no findings" : "FINDING above"}`,
);
process.exit(status);
