/**
 * How the first argument picks a host command over the agent. Imports
 * nothing, so that runtime/agent-allocator.ts can ask before the rest of the
 * program is loaded.
 */

/** The host command that `args` (without the executable) names, or undefined when they run the agent. */
export function hostVerbOf(args: readonly string[]): string | undefined {
  const first = args[0];
  return first !== undefined && !first.startsWith("-") ? first : undefined;
}

export function isTransferVerb(verb: string): verb is "push" | "pull" {
  return verb === "push" || verb === "pull";
}
