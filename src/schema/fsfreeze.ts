import { z } from "zod";

const count = z.number().int().nonnegative();

export const FSFREEZE_METHODS = {
  fsfreeze_status: {
    summary: "Whether the agent holds the guest's filesystems frozen.",
    params: z.strictObject({}),
    result: z.strictObject({ status: z.enum(["thawed", "frozen"]) }),
  },
  fsfreeze_freeze: {
    summary:
      "Freeze block-backed filesystems (FIFREEZE, last-mounted first) for a consistent snapshot, after running the fsfreeze hook with 'freeze'. " +
      "Until fsfreeze_thaw, both protocols answer only the calls that cannot write to disk (ping, get_info, get_metrics, get_users, the get_* inventory reads, fsfreeze_status, fsfreeze_thaw), " +
      "the audit and log are held in memory, and the agent will not stop. A failure thaws what froze.",
    params: z.strictObject({
      mountpoints: z.array(z.string().min(1)).optional().describe("Only these mountpoints (exact paths as mounted); all block-backed filesystems when absent"),
    }),
    result: z.strictObject({ frozen: count.describe("Filesystems frozen; 0 leaves the agent thawed") }),
  },
  fsfreeze_thaw: {
    summary: "Thaw every frozen filesystem (FITHAW), write what was held, then run the fsfreeze hook with 'thaw'.",
    params: z.strictObject({}),
    result: z.strictObject({ thawed: count.describe("Filesystems that were frozen") }),
  },
} as const;
