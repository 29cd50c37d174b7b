/**
 * The native port under fuzz (test/fuzz/): 10,000 random, malformed and
 * mutated payloads in well-formed frames, each checked against what it must
 * produce, then 300 frames whose headers lie about their length, each cut off
 * by the resync marker. Seeded: set FUZZ_SEED to reproduce another run;
 * `npm run fuzz -- --seconds N` runs the same loops for longer.
 *
 * Afterwards the same process (same pid) still answers, and its RSS is back
 * near the level measured after a warm-up of 1,000 pings.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { connectClient, pingRequest, RawConnection, startAgentProcess, type AgentProcess, STOP_HOOK_TIMEOUT_MS } from "../helpers/agent-process.ts";
import { Rng } from "../fuzz/random.ts";
import { describeStats, fuzzNativeFraming, fuzzNativeFrames } from "../fuzz/run.ts";

const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed_2026);
const FRAMES = 10_000;
const FRAMING_ROUNDS = 300;
const MAX_FRAME = 65_536;
const MAX_BATCH = 64;
const MIB = 1024 * 1024;
/** A leak of a few hundred bytes per frame over 10,000 frames (plus 10,000 markers) would cross this. */
const RSS_SLACK = 64 * MIB;

let agent: AgentProcess;

beforeAll(async () => {
  // extraToml lands in the [limits] section of the generated config.
  agent = await startAgentProcess({ maxFrameBytes: MAX_FRAME, extraToml: `max_batch_requests = ${MAX_BATCH}` });
});

afterAll(async () => {
  await agent?.stop();
}, STOP_HOOK_TIMEOUT_MS);

test(`${FRAMES} fuzz frames and ${FRAMING_ROUNDS} lying headers (seed ${SEED}): every reply is right, the agent survives and does not leak`, async () => {
  const pid = agent.pid;

  // Warm-up: 1,000 pings so the JIT, allocator and buffers reach their steady state.
  const client = await connectClient(agent);
  for (let i = 0; i < 10; i++) await Promise.all(Array.from({ length: 100 }, (_, j) => client.ping({ payload: [i, j] })));
  client.close();
  await Bun.sleep(300);
  const warmRss = agent.rss();

  const frames = await fuzzNativeFrames(agent.socketPath, new Rng(SEED), { maxFrame: MAX_FRAME, maxBatch: MAX_BATCH }, { count: FRAMES });
  const framing = await fuzzNativeFraming(agent.socketPath, new Rng(SEED + 1), MAX_FRAME, { count: FRAMING_ROUNDS });
  expect(frames.executions).toBe(FRAMES);
  expect(framing.executions).toBe(FRAMING_ROUNDS);

  // Same process, still serving, on the old kind of connection and a new one.
  expect(agent.alive()).toBe(true);
  expect(agent.pid).toBe(pid);
  const after = await connectClient(agent);
  expect(await after.ping({ payload: "after the fuzz" })).toEqual({ pong: true, payload: "after the fuzz" });
  after.close();

  await Bun.sleep(1_000); // Settle: let the agent's GC run on an idle loop.
  const fuzzRss = agent.rss();
  console.log(
    `fuzz seed=${SEED}: ${describeStats("frames", frames)}; ${describeStats("framing", framing)}; ` +
      `RSS warm ${(warmRss / MIB).toFixed(1)} MiB, after fuzz ${(fuzzRss / MIB).toFixed(1)} MiB (bound ${((warmRss + RSS_SLACK) / MIB).toFixed(1)} MiB)`,
  );
  expect(fuzzRss).toBeLessThan(warmRss + RSS_SLACK);
  expect(agent.stderr()).not.toContain('"level":"error"');
}, 120_000);

/**
 * Regression: a ping payload nested ~40,000+ deep parses and validates, but
 * JSON.stringify of the echo overflows the stack. It used to escape
 * RpcSession.send and kill the connection (unix-listen) or the read loop
 * (virtio-serial, stdio); now that request gets -32603 and the stream goes on.
 * The 64 KiB fuzz limit above cannot reach that depth, hence 16 MiB here.
 */
test("a reply too deep to serialise still gets an answer and the connection keeps working", async () => {
  const big = await startAgentProcess({ maxFrameBytes: 16 * MIB });
  try {
    const connection = await RawConnection.connect(big.socketPath);
    const depth = 100_000;
    await connection.send(`{"jsonrpc":"2.0","id":"deep","method":"ping","params":{"payload":${"[".repeat(depth)}${"]".repeat(depth)}}}`);
    const reply = await connection.next(3_000);
    expect(reply).toMatchObject({ id: "deep", error: { code: -32603 } });
    expect(await connection.request(pingRequest("after-deep"), 3_000)).toEqual({ jsonrpc: "2.0", id: "after-deep", result: { pong: true } });
    connection.close();
  } finally {
    await big.stop();
  }
});
