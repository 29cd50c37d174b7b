/**
 * Compiles the agent into one executable per target in dist/.
 * Usage: bun scripts/build.ts [--all | TARGET...]   (default: the host's linux-x64)
 * --all builds every target and writes dist/SHA256SUMS. Cross-compiles fetch the
 * target's runtime (@oven/bun-<target>) from the npm registry once; it is cached after.
 * Never strip the result: strip removes the embedded application.
 */
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";

const ROOT = join(import.meta.dir, "..");
export const DIST = join(ROOT, "dist");
export const TARGETS: Record<string, { bunTarget: string; file: string }> = {
  "linux-x64": { bunTarget: "bun-linux-x64", file: "kvm-manager-agent-linux-x64" },
  "linux-arm64": { bunTarget: "bun-linux-arm64", file: "kvm-manager-agent-linux-arm64" },
  "windows-x64": { bunTarget: "bun-windows-x64", file: "kvm-manager-agent-windows-x64.exe" },
};

export function binaryPath(target = "linux-x64"): string {
  return join(DIST, TARGETS[target]!.file);
}

export async function build(target: string): Promise<string> {
  const spec = TARGETS[target];
  if (!spec) throw new Error(`unknown target '${target}'; known: ${Object.keys(TARGETS).join(", ")}`);
  mkdirSync(DIST, { recursive: true });
  const outfile = binaryPath(target);
  // --format=esm: bytecode compilation rejects top-level await otherwise. Workers are entry points of their own.
  // A standalone executable would otherwise load .env and bunfig.toml from its working directory: a bunfig.toml
  // `preload` there ran its code in the agent, as root.
  const proc = Bun.spawnSync(
    [
      process.execPath,
      "build",
      "--compile",
      "--minify",
      "--bytecode",
      "--format=esm",
      "--no-compile-autoload-dotenv",
      "--no-compile-autoload-bunfig",
      "--no-compile-autoload-tsconfig",
      "--no-compile-autoload-package-json",
      `--target=${spec.bunTarget}`,
      join(ROOT, "src/main.ts"),
      join(ROOT, "src/transport/virtio-serial/event-wait-worker.ts"),
      join(ROOT, "src/runtime/blocking-worker.ts"),
      "--outfile",
      outfile,
    ],
    { cwd: ROOT, stdout: "pipe", stderr: "pipe" },
  );
  if (proc.exitCode !== 0) throw new Error(`bun build for ${target} failed:\n${proc.stdout}${proc.stderr}`);
  return outfile;
}

/** dist/SHA256SUMS over the given files of dist/ (names, not paths), in `sha256sum -c` format. */
export async function writeChecksums(names: string[], dir = DIST): Promise<string> {
  const lines: string[] = [];
  for (const name of [...names].sort()) {
    const hash = createHash("sha256");
    for await (const chunk of Bun.file(join(dir, name)).stream()) hash.update(chunk);
    lines.push(`${hash.digest("hex")}  ${name}`);
  }
  const out = join(dir, "SHA256SUMS");
  writeFileSync(out, lines.map((line) => `${line}\n`).join(""));
  return out;
}

if (import.meta.main) {
  const args = process.argv.slice(2);
  const all = args.includes("--all");
  const targets = all ? Object.keys(TARGETS) : args.length > 0 ? args : ["linux-x64"];
  const built: string[] = [];
  for (const target of targets) {
    const out = await build(target);
    built.push(basename(out));
    console.log(`built ${out}`);
  }
  if (all) console.log(`wrote ${await writeChecksums(built)}`);
}
