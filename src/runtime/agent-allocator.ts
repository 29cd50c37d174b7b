/** Imported first by main.ts, for its side effect: see allocator.ts. */
import { AGENT_PURGE_DELAY_MS, movesBulkData, runWithPurgeDelay } from "./allocator.ts";

if (movesBulkData(process.argv.slice(2))) runWithPurgeDelay(AGENT_PURGE_DELAY_MS);
