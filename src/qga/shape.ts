/**
 * QGA's view of the guest data in src/guest: the same objects with qapi's
 * names (snake_case fields become qemu's kebab-case), members kept in the
 * order given, which qmpStringify turns into qemu's QDict order.
 */
export function qapiNames(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(qapiNames);
  if (value === null || typeof value !== "object") return value;
  const out: Record<string, unknown> = {};
  for (const [key, member] of Object.entries(value)) out[key.replaceAll("_", "-")] = qapiNames(member);
  return out;
}

/** guest-set-memory-blocks' responses are qapi enum values: kebab-case too. */
export function qapiMemoryBlockResponses(results: { phys_index: number; response: string; error_code?: number }[]): unknown {
  return qapiNames(results.map((result) => ({ ...result, response: result.response.replaceAll("_", "-") })));
}
