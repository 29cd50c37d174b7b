/**
 * Host verbs `push` and `pull`: whole files to and from the guest, with
 * progress on stderr and a summary line on stdout.
 *
 *   kvm-manager-agent push LOCAL GUEST --socket S [--mode 0644] [--create-dirs] [--no-overwrite]
 *   kvm-manager-agent pull GUEST LOCAL --socket S
 */

import { pullFile, pushFile, type TransferProgress, type TransferResult } from "../client/transfer.ts";
import { UsageError } from "./agent-args.ts";
import { CONNECTION_OPTIONS, parseVerbArgs, withAgent } from "./host.ts";

export const TRANSFER_USAGE = `  kvm-manager-agent push LOCAL GUEST --socket PATH [--mode 0644] [--create-dirs] [--no-overwrite] [--quiet]
  kvm-manager-agent pull GUEST LOCAL --socket PATH [--quiet]
                  copy a whole file to / from the guest (chunked, SHA-256 checked); progress on stderr`;

export interface TransferIo {
  out?: (line: string) => void;
  /** Raw stderr writes (progress uses "\r" on a terminal). */
  err?: (text: string) => void;
  isTty?: boolean;
}

/** Runs push or pull; returns the exit code (0 ok, 1 transfer failed, 3 agent unreachable; usage errors throw UsageError). */
export async function runTransferCommand(verb: "push" | "pull", argv: string[], io: TransferIo = {}): Promise<number> {
  const out = io.out ?? ((line: string) => console.log(line));
  const err = io.err ?? ((text: string) => void process.stderr.write(text));
  const isTty = io.isTty ?? Boolean(process.stderr.isTTY);
  const parsed = parseVerbArgs(argv, {
    ...CONNECTION_OPTIONS,
    mode: { type: "string" },
    "create-dirs": { type: "boolean" },
    "no-overwrite": { type: "boolean" },
    quiet: { type: "boolean", short: "q" },
  });
  const [from, to, ...extra] = parsed.positionals;
  if (from === undefined || to === undefined) throw new UsageError(verb === "push" ? "push needs LOCAL and GUEST paths" : "pull needs GUEST and LOCAL paths");
  if (extra.length > 0) throw new UsageError(`unexpected arguments: ${extra.join(" ")}`);
  const mode = parsed.values.mode;
  if (mode !== undefined) {
    if (verb === "pull") throw new UsageError("--mode applies to push only");
    if (!/^0?[0-7]{3,4}$/.test(mode)) throw new UsageError(`--mode must be an octal mode like 0644 (got '${mode}')`);
  }
  if (verb === "pull" && (parsed.values["create-dirs"] || parsed.values["no-overwrite"])) {
    throw new UsageError("--create-dirs and --no-overwrite apply to push only");
  }
  const reporter = parsed.values.quiet ? undefined : progressReporter(verb, err, isTty);
  const fail = (message: string) => {
    reporter?.done();
    err(`kvm-manager-agent: ${verb} failed: ${message}\n`);
  };
  return withAgent(parsed.values, fail, async (client) => {
    const result: TransferResult =
      verb === "push"
        ? await pushFile(client, from, to, {
            onProgress: reporter?.update,
            ...(mode !== undefined ? { mode } : {}),
            createDirs: parsed.values["create-dirs"] ?? false,
            overwrite: !parsed.values["no-overwrite"],
          })
        : await pullFile(client, from, to, { onProgress: reporter?.update });
    reporter?.done();
    const seconds = result.elapsedMs / 1000;
    const rate = seconds > 0 ? result.bytes / 1e6 / seconds : 0;
    out(
      `${verb === "push" ? "pushed" : "pulled"} ${from} -> ${verb === "push" ? result.path : to}: ${result.bytes} bytes in ${seconds.toFixed(2)} s (${rate.toFixed(1)} MB/s), sha256 ${result.sha256}`,
    );
    return 0;
  });
}

/** Progress on stderr: one rewritten line on a terminal, else a line at most every 2 s. */
function progressReporter(verb: string, err: (text: string) => void, isTty: boolean) {
  let last = 0;
  let shown = false;
  let latest: TransferProgress | null = null;
  const line = (p: TransferProgress) => {
    const percent = p.total > 0 ? Math.min(100, (p.bytes / p.total) * 100) : 100;
    const seconds = p.elapsedMs / 1000;
    const rate = seconds > 0 ? p.bytes / 1e6 / seconds : 0;
    return `${verb}: ${percent.toFixed(0).padStart(3)}% ${(p.bytes / 1048576).toFixed(1)}/${(p.total / 1048576).toFixed(1)} MiB ${rate.toFixed(1)} MB/s`;
  };
  return {
    update(p: TransferProgress) {
      latest = p;
      const now = performance.now();
      if (now - last < (isTty ? 100 : 2000) && p.bytes < p.total) return;
      last = now;
      shown = true;
      err(isTty ? `\r${line(p)}\x1b[K` : `${line(p)}\n`);
    },
    done() {
      if (!shown && latest === null) return;
      if (isTty) err(`\r${line(latest!)}\x1b[K\n`);
      shown = false;
    },
  };
}

