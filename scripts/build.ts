/**
 * Compiles the agent into one executable per target in dist/.
 * Usage: bun scripts/build.ts [TARGET...]   (default: the host's linux-x64)
 * Never strip the result: strip removes the embedded application.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const TARGETS: Record<string, { bunTarget: string; file: string }> = {
  "linux-x64": { bunTarget: "bun-linux-x64", file: "kvm-manager-agent-linux-x64" },
  "linux-arm64": { bunTarget: "bun-linux-arm64", file: "kvm-manager-agent-linux-arm64" },
  "windows-x64": { bunTarget: "bun-windows-x64", file: "kvm-manager-agent-windows-x64.exe" },
};

export function binaryPath(target = "linux-x64"): string {
  return join(ROOT, "dist", TARGETS[target]!.file);
}

export async function build(target: string): Promise<string> {
  const spec = TARGETS[target];
  if (!spec) throw new Error(`unknown target '${target}'; known: ${Object.keys(TARGETS).join(", ")}`);
  mkdirSync(join(ROOT, "dist"), { recursive: true });
  const outfile = binaryPath(target);
  // --format=esm: bytecode compilation rejects top-level await otherwise.
  const proc = Bun.spawnSync(
    [process.execPath, "build", "--compile", "--minify", "--bytecode", "--format=esm", `--target=${spec.bunTarget}`, join(ROOT, "src/main.ts"), "--outfile", outfile],
    { cwd: ROOT, stdout: "pipe", stderr: "pipe" },
  );
  if (proc.exitCode !== 0) throw new Error(`bun build for ${target} failed:\n${proc.stdout}${proc.stderr}`);
  return outfile;
}

if (import.meta.main) {
  const targets = process.argv.slice(2);
  for (const target of targets.length > 0 ? targets : ["linux-x64"]) {
    const out = await build(target);
    console.log(`built ${out}`);
  }
}
