/**
 * Imported first by bench.ts, for its side effect. The bench client is the
 * instrument, and drives both agents: it runs with mimalloc never giving
 * memory back (see src/runtime/allocator.ts), so that its own page faults
 * after each quiet spell (the other agent's turn) are not timed on either
 * side. With the agent's 1 s delay, the client took 19k faults and 0.35 s of
 * CPU in each 64 MiB upload it timed; never purging, under 1k and 0.05 s.
 */
import { runWithPurgeDelay } from "../../src/runtime/allocator.ts";

runWithPurgeDelay("-1");
