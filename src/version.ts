import pkg from "../package.json" with { type: "json" };

/** Stamped into the compiled binary by the bundler. */
export const AGENT_VERSION: string = pkg.version;
