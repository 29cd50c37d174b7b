/** Imported first by main.ts, for its side effect: see allocator.ts. */
import { AGENT_PURGE_DELAY_MS, runWithPurgeDelay } from "./allocator.ts";

runWithPurgeDelay(AGENT_PURGE_DELAY_MS);
