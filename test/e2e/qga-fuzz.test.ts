/**
 * The QGA port under 10,000 random, malformed and mutated messages
 * (test/fuzz/qga.ts; seeded, so a failure reproduces): the agent must never
 * crash, never hang, never answer with anything but a QGA reply, and never
 * lose its place — every resync marker interleaved with the garbage is
 * answered, in order. Commands that would change this machine are blocked.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { makeTempDir, readRss, startAgentProcess, type AgentProcess, STOP_HOOK_TIMEOUT_MS } from "../helpers/agent-process.ts";
import { QGA_FUZZ_BLOCKED } from "../fuzz/qga.ts";
import { Rng } from "../fuzz/random.ts";
import { describeStats, fuzzQga } from "../fuzz/run.ts";

const SEED = Number(process.env.FUZZ_SEED ?? 20261121);
const MESSAGES = 10_000;
let agent: AgentProcess;
let socket: string;

beforeAll(async () => {
  const dir = makeTempDir("kma-qga-fuzz-");
  socket = join(dir, "qga.sock");
  agent = await startAgentProcess({
    extraToml: `[qga]\ntype = "unix-listen"\npath = ${JSON.stringify(socket)}\nstate_dir = ${JSON.stringify(join(dir, "state"))}\nblock_rpcs = ${JSON.stringify(QGA_FUZZ_BLOCKED)}\n`,
  });
});

afterAll(() => agent?.stop(), STOP_HOOK_TIMEOUT_MS);

test(`${MESSAGES} fuzz QGA messages (seed ${SEED}): no crash, no hang, only QGA replies, every marker answered in order`, async () => {
  const rssBefore = readRss(agent.pid);
  const stats = await fuzzQga(socket, new Rng(SEED), { count: MESSAGES });
  console.log(describeStats("QGA", stats));
  expect(stats.executions).toBe(MESSAGES);
  expect(agent.alive()).toBe(true);
  // Still serving a fresh connection, and memory did not run away.
  let reply = "";
  const fresh = await Bun.connect({ unix: socket, socket: { data: (_, chunk) => void (reply += chunk.toString()) } });
  fresh.write('{"execute":"guest-ping","id":"after"}');
  const until = Date.now() + 5_000;
  while (!reply.includes("\n") && Date.now() < until) await Bun.sleep(5);
  fresh.end();
  expect(reply).toBe('{"return": {}, "id": "after"}\n');
  expect(readRss(agent.pid) - rssBefore).toBeLessThan(64 * 1024 * 1024);
  expect(agent.stderr()).not.toMatch(/ level=error|"level":"error"/);
}, 120_000);
